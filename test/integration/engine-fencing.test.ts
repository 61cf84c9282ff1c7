// Rule 4 (one writer per volume): a copy refuses writes from an epoch lower than the highest it has
// seen, and an engine refused that way fences itself: nothing it does completes any more. And two
// processes can never open the same local copy at once.

import assert from "node:assert/strict";
import { join } from "node:path";
import { VolumeEngine } from "../../src/engine/engine.js";
import { replicaOpener } from "../../src/replica/open-replica.js";
import { ReplicaServer } from "../../src/replica/replica-server.js";
import { LocalReplicaPort } from "../../src/replica/local-port.js";
import { tempDir } from "../helpers/server-process.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** Each test here takes under half a second; one still running after this bound is hung, not slow. */
const test = boundedTest(30_000);

const SECRET = Buffer.from("fencing-test-secret-0123456789");
const MiB = 1024 * 1024;

test("rule 4: a deposed engine's writes are refused by the copies, and it fences itself", async () => {
  const dir = tempDir("haven-fence-");
  const server = new ReplicaServer({ directory: join(dir.path, "remote"), secret: SECRET, log: () => undefined });
  const address = await server.listen("127.0.0.1", 0);
  const opener = replicaOpener({ secret: SECRET, requestTimeoutMs: 5000, connectTimeoutMs: 2000 });
  const logs: string[] = [];
  /** Every engine made, stopped in the end whatever happened (an engine left running retries its copies). */
  const engines: VolumeEngine[] = [];
  const make = (epoch?: number): VolumeEngine => {
    const engine = new VolumeEngine({
      name: "vol",
      locations: [`tcp://${address}`],
      opener,
      sizeBytes: 8 * MiB,
      ...(epoch !== undefined && { epoch }),
      log: (line) => logs.push(line),
    });
    engines.push(engine);
    return engine;
  };
  try {
    const old = make();
    await old.start();
    assert.equal(old.epoch, 1);
    await old.write(0, Buffer.alloc(4096, 1));
    await assert.rejects(make(0).start(), /epoch 0 is stale: a copy has seen epoch 1/);
    const successor = make();
    await successor.start();
    assert.equal(successor.epoch, 2, "a new engine takes an epoch above any the copies have seen");
    await successor.write(0, Buffer.alloc(4096, 2));
    await assert.rejects(old.write(0, Buffer.alloc(4096, 3)), /volume fenced: a copy refused epoch 1/);
    await assert.rejects(old.flush(), /volume fenced/);
    assert.equal(old.status().state, "failed");
    assert.ok(logs.some((line) => /FENCED/.test(line)));
    const check = Buffer.alloc(4096);
    await successor.read(0, check);
    assert.ok(check.equals(Buffer.alloc(4096, 2)), "the deposed engine's write never landed");
    await old.stop();
    await successor.stop();
  } finally {
    await Promise.allSettled(engines.map((engine) => engine.stop()));
    await server.stop();
    dir.remove();
  }
});

test("rule 4: a local copy is held by one process at a time; a second opener is refused", async () => {
  const dir = tempDir("haven-lock-");
  try {
    const create = { volumeId: "00000000000000c1", sizeBytes: MiB, regionBytes: 65536 };
    const first = await LocalReplicaPort.open(dir.path, "vol", create);
    await assert.rejects(LocalReplicaPort.open(dir.path, "vol", undefined), /in use by another Haven process/);
    await first.close();
    const again = await LocalReplicaPort.open(dir.path, "vol", undefined);
    await again.close();
  } finally {
    dir.remove();
  }
});
