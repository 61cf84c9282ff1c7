// Starting a volume from a subset of its copies (start-plan.ts), over real local copies: the story of
// the bug it fixes. A and B were in sync; A failed and B went on alone; then B is unreachable and the
// operator starts the volume from A with --degraded-start. A missed B's writes: the start is refused
// (HAVEN_ERR_UNSAFE_START). --force starts from A anyway, with a warning, and B then comes back as the
// split brain it is. B alone, on the other hand, starts: its metadata shows A was left behind.

import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { VolumeEngine, type EngineOptions } from "../../src/engine/engine.js";
import { Switchboard } from "../helpers/fault-port.js";
import { failsWith } from "../helpers/errors.js";
import { tempDir } from "../helpers/server-process.js";

const MiB = 1024 * 1024;

test("a copy that missed another's writes does not start alone with --degraded-start; --force does, and the other returns as a split brain", async () => {
  const root = tempDir("haven-degraded-");
  const [a, b] = [join(root.path, "a"), join(root.path, "b")];
  const board = new Switchboard();
  const logs: string[] = [];
  const engine = (options: Partial<EngineOptions> = {}): VolumeEngine =>
    new VolumeEngine({
      name: "vol",
      locations: [a, b],
      opener: board.opener,
      sizeBytes: 16 * MiB,
      reconnectMs: 20,
      startupWaitMs: 0,
      log: (line) => logs.push(line),
      ...options,
    });
  const read = async (volume: VolumeEngine, offset: number): Promise<number> => {
    const target = Buffer.alloc(4096);
    await volume.read(offset, target);
    return target[0]!;
  };
  try {
    let volume = engine();
    await volume.start();
    await volume.write(0, Buffer.alloc(4096, 1));
    board.broken.add(a); // A fails; B goes on alone and takes a write A misses
    await volume.write(MiB, Buffer.alloc(4096, 2));
    assert.equal(volume.status().replicas[0]!.state, "faulted");
    await volume.stop();
    board.broken.delete(a);
    board.broken.add(b); // now B is unreachable

    await assert.rejects(
      engine().start(),
      failsWith("HAVEN_ERR_IO", /not every copy of volume vol is reachable .*cannot show otherwise/s),
    );
    await assert.rejects(
      engine({ degradedStart: true }).start(),
      failsWith("HAVEN_ERR_UNSAFE_START", /cannot start from .*\/a alone: .*Bring .*\/b back.*--force/s),
    );

    // B alone (A away) starts: its metadata shows A was left behind.
    board.broken.delete(b);
    board.broken.add(a);
    volume = engine({ degradedStart: true });
    await volume.start();
    assert.equal(await read(volume, MiB), 2, "B holds its write");
    assert.ok(logs.some((line) => /degraded start without .*\/a: .*\/b was last in sync only with copies/.test(line)));
    await volume.stop();

    // --force starts from A, B's write is lost to it, and B comes back as a split brain.
    board.broken.delete(a);
    board.broken.add(b);
    volume = engine({ force: true });
    await volume.start();
    assert.ok(logs.some((line) => /^WARNING: forced start without .*\/b/.test(line)));
    assert.equal(await read(volume, MiB), 0, "A never had B's write");
    await volume.write(2 * MiB, Buffer.alloc(4096, 3));
    board.broken.delete(b);
    for (let i = 0; i < 400 && volume.status().replicas[1]!.state !== "split-brain"; i++)
      await new Promise((resolve) => setTimeout(resolve, 5)); // the engine retries B on a timer
    assert.equal(volume.status().replicas[1]!.state, "split-brain");
    await volume.stop();
  } finally {
    root.remove();
  }
});
