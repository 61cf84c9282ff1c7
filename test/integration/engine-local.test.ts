// The engine over real local copies (directories with raw data files), in process, with copies made
// to fail on cue: each data-safety rule of DESIGN.md checked on the files themselves.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { openSync, readFileSync, writeSync, closeSync } from "node:fs";
import { join } from "node:path";
import { VolumeEngine, type EngineOptions } from "../../src/engine/engine.js";
import type { VolumeStatus } from "../../src/engine/status.js";
import { Switchboard } from "../helpers/fault-port.js";
import { tempDir } from "../helpers/server-process.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** The longest test here takes about 2 s; one still running after this bound is hung, not slow. */
const test = boundedTest(30_000);

const MiB = 1024 * 1024;
const NAME = "vol";

function setup(copies = 2): {
  dirs: string[];
  board: Switchboard;
  logs: string[];
  engine(options?: Partial<EngineOptions>): VolumeEngine;
  dataOf(dir: string): Buffer;
  /** Stops every engine made (one left running would retry its copies forever), then removes the copies. */
  remove(): Promise<void>;
} {
  const root = tempDir("haven-engine-");
  const dirs = Array.from({ length: copies }, (_, i) => join(root.path, `copy${i}`));
  const board = new Switchboard();
  const logs: string[] = [];
  const engines: VolumeEngine[] = [];
  return {
    dirs,
    board,
    logs,
    engine: (options = {}) => {
      const engine = new VolumeEngine({
        name: NAME,
        locations: dirs,
        opener: board.opener,
        sizeBytes: 16 * MiB,
        reconnectMs: 20,
        startupWaitMs: 200,
        log: (line) => logs.push(line),
        ...options,
      });
      engines.push(engine);
      return engine;
    },
    dataOf: (dir) => readFileSync(join(dir, NAME, "data.raw")),
    remove: async () => {
      await Promise.allSettled(engines.map((engine) => engine.stop()));
      root.remove();
    },
  };
}

async function until(engine: VolumeEngine, predicate: (s: VolumeStatus) => boolean, what: string): Promise<void> {
  for (let i = 0; i < 2000; i++) {
    if (predicate(engine.status())) return;
    await new Promise((resolve) => setTimeout(resolve, 5)); // the engine's resync runs on timers
  }
  assert.fail(`timed out waiting for ${what}: ${JSON.stringify(engine.status().replicas)}`);
}

const readBack = async (engine: VolumeEngine, offset: number, length: number): Promise<Buffer> => {
  const target = Buffer.alloc(length);
  await engine.read(offset, target);
  return target;
};

test("rule 1: a completed write is on every in-sync copy's data file", async () => {
  const t = setup(3);
  try {
    const engine = t.engine();
    await engine.start();
    const data = randomBytes(3 * 65536);
    await engine.write(5 * MiB + 512, data);
    for (const dir of t.dirs)
      assert.ok(
        t
          .dataOf(dir)
          .subarray(5 * MiB + 512, 5 * MiB + 512 + data.length)
          .equals(data),
      );
    await engine.stop();
  } finally {
    await t.remove();
  }
});

test("rule 2: a failing copy leaves the in-sync set before the write completes, then resyncs exactly what it missed", async () => {
  const t = setup();
  try {
    const engine = t.engine();
    await engine.start();
    await engine.write(0, Buffer.alloc(MiB, 1));
    await engine.flush(); // otherwise that unflushed MiB counts as possibly missed too
    t.board.broken.add(t.dirs[1]!);
    const missed = randomBytes(65536);
    await engine.write(8 * MiB, missed); // completes: one in-sync copy took it
    const status = engine.status();
    assert.equal(status.state, "degraded");
    assert.equal(status.replicas[1]!.state, "faulted");
    assert.match(status.replicas[1]!.reason ?? "", /WRITE failed: .*injected I\/O error/);
    assert.equal(status.replicas[1]!.outOfSyncBytes, 65536, "exactly the missed region is tracked");
    const persisted = JSON.stringify(t.board.ports.get(t.dirs[0]!)!.metadata.changedSince);
    assert.notEqual(persisted, "{}", "the change bitmap was persisted on the surviving copy");
    await engine.write(9 * MiB, Buffer.alloc(4096, 2)); // a write while degraded is tracked too
    t.board.broken.delete(t.dirs[1]!);
    await until(engine, (s) => s.state === "healthy", "the copy to catch up");
    assert.ok(
      t.logs.some((l) => /incremental resync of 131072 bytes \(rule 4/.test(l)),
      t.logs.join("\n"),
    );
    await engine.stop();
    assert.ok(t.dataOf(t.dirs[0]!).equals(t.dataOf(t.dirs[1]!)), "copies identical after the resync");
  } finally {
    await t.remove();
  }
});

test("rule 2: with no in-sync copy left, I/O fails with EIO rather than lying; the last copy serves again when back", async () => {
  const t = setup(1);
  try {
    const engine = t.engine();
    await engine.start();
    await engine.write(0, Buffer.alloc(4096, 7));
    t.board.broken.add(t.dirs[0]!);
    await assert.rejects(engine.write(4096, Buffer.alloc(4096, 8)), /HAVEN_ERR_IO|no in-sync copy/);
    await assert.rejects(readBack(engine, 0, 4096), /no in-sync copy/);
    assert.equal(engine.status().state, "failed");
    t.board.broken.delete(t.dirs[0]!);
    await until(engine, (s) => s.state === "healthy", "the copy to come back");
    assert.ok((await readBack(engine, 0, 4096)).equals(Buffer.alloc(4096, 7)));
    await engine.stop();
  } finally {
    await t.remove();
  }
});

test("rule 5: copies that took writes apart are refused at start, and --survivor names the one that stays", async () => {
  const t = setup();
  try {
    let engine = t.engine();
    await engine.start();
    await engine.write(0, Buffer.alloc(65536, 1));
    await engine.stop();
    // Each copy takes writes alone, with the other unreachable.
    for (const [alone, away, fill] of [
      [0, 1, 0xaa],
      [1, 0, 0xbb],
    ] as const) {
      t.board.broken.add(t.dirs[away]!);
      engine = t.engine({ allowDegradedStart: true });
      await engine.start();
      await engine.write(MiB * (alone + 1), Buffer.alloc(65536, fill));
      await engine.stop();
      t.board.broken.delete(t.dirs[away]!);
      assert.ok(t.dataOf(t.dirs[alone]!)[MiB * (alone + 1)] === fill);
    }
    await assert.rejects(t.engine().start(), /split brain: the copies of vol took writes apart .*--survivor/);
    engine = t.engine({ survivor: t.dirs[1]! });
    await engine.start();
    await until(engine, (s) => s.state === "healthy", "the other copy's rebuild");
    await engine.stop();
    const survivor = t.dataOf(t.dirs[1]!);
    assert.ok(survivor.equals(t.dataOf(t.dirs[0]!)), "the loser was rebuilt from the survivor");
    assert.equal(survivor[2 * MiB], 0xbb, "the survivor's writes stay");
    assert.equal(survivor[MiB], 0, "the loser's writes are gone, by the operator's choice");
  } finally {
    await t.remove();
  }
});

test("rule 5: a copy that comes back diverged is reported as split brain with sizes, and resolve-split-brain rebuilds it", async () => {
  const t = setup();
  try {
    let engine = t.engine();
    await engine.start();
    await engine.stop();
    t.board.broken.add(t.dirs[1]!);
    engine = t.engine({ allowDegradedStart: true });
    await engine.start();
    await engine.write(0, Buffer.alloc(3 * 65536, 0xaa));
    await engine.stop();
    t.board.broken.delete(t.dirs[1]!);
    t.board.broken.add(t.dirs[0]!);
    engine = t.engine({ allowDegradedStart: true });
    await engine.start();
    await engine.write(4 * MiB, Buffer.alloc(65536, 0xbb));
    await engine.stop();
    // Copy 0 serves; copy 1 comes back later, diverged.
    engine = t.engine({ allowDegradedStart: true, startupWaitMs: 0 });
    t.board.broken.delete(t.dirs[0]!);
    t.board.broken.add(t.dirs[1]!);
    await engine.start();
    t.board.broken.delete(t.dirs[1]!);
    await until(engine, (s) => s.replicas[1]!.state === "split-brain", "split brain to be detected");
    const split = engine.status().replicas[1]!;
    assert.match(split.reason ?? "", /rule [57]/);
    assert.deepEqual(split.splitBrain, { volumeChangedBytes: 3 * 65536, copyChangedBytes: 65536 });
    await assert.rejects(engine.resolveSplitBrain("/nowhere"), /not a replica of this volume/);
    await assert.rejects(
      engine.resolveSplitBrain(t.dirs[1]!),
      /not being served: stop the engine and restart it with --survivor/,
    );
    await engine.resolveSplitBrain(t.dirs[0]!);
    await until(engine, (s) => s.state === "healthy", "the rebuild");
    await engine.stop();
    assert.ok(t.dataOf(t.dirs[0]!).equals(t.dataOf(t.dirs[1]!)));
    assert.equal(t.dataOf(t.dirs[1]!)[4 * MiB], 0, "the loser's writes were discarded, as the operator chose");
  } finally {
    await t.remove();
  }
});

test("verify finds a region that differs on disk, and repair copies it from the primary", async () => {
  const t = setup();
  try {
    const engine = t.engine();
    await engine.start();
    await engine.write(0, randomBytes(4 * MiB));
    await engine.flush();
    const fd = openSync(join(t.dirs[1]!, NAME, "data.raw"), "r+");
    writeSync(fd, Buffer.from("bit rot"), 0, 7, 3 * MiB + 100); // behind the engine's back
    closeSync(fd);
    engine.startVerify({ repair: false });
    assert.throws(() => engine.startVerify({ repair: false }), /already running/);
    await until(engine, (s) => s.verify?.state === "done", "verify");
    assert.deepEqual(engine.status().verify!.mismatches, [{ offset: 3 * MiB, length: 65536, locations: [t.dirs[1]!] }]);
    engine.startVerify({ repair: true });
    await until(engine, (s) => s.verify?.state === "done", "repair");
    engine.startVerify({ repair: false });
    await until(engine, (s) => s.verify?.state === "done", "second verify");
    assert.deepEqual(engine.status().verify!.mismatches, []);
    await engine.stop();
    assert.ok(t.dataOf(t.dirs[0]!).equals(t.dataOf(t.dirs[1]!)));
  } finally {
    await t.remove();
  }
});

test("a foreign copy (another volume) is refused and never written; a new copy is rebuilt only with consent", async () => {
  const t = setup();
  try {
    const other = new VolumeEngine({
      name: NAME,
      locations: [t.dirs[1]!],
      opener: t.board.opener,
      sizeBytes: 16 * MiB,
      log: () => undefined,
    });
    await other.start();
    await other.write(0, Buffer.alloc(4096, 0xee));
    await other.stop();
    const mine = new VolumeEngine({
      name: NAME,
      locations: [t.dirs[0]!],
      opener: t.board.opener,
      sizeBytes: 16 * MiB,
      log: () => undefined,
    });
    await mine.start();
    await mine.stop();
    const engine = t.engine();
    await assert.rejects(engine.start(), /belong to different volumes/);
    assert.equal(t.dataOf(t.dirs[1]!)[0], 0xee, "the foreign copy is untouched");
  } finally {
    await t.remove();
  }
});

test("a copy missing at start is created and rebuilt only with --degraded-start, copying only allocated data", async () => {
  const t = setup();
  try {
    const single = new VolumeEngine({
      name: NAME,
      locations: [t.dirs[0]!],
      opener: t.board.opener,
      sizeBytes: 16 * MiB,
      log: () => undefined,
    });
    await single.start();
    await single.write(2 * MiB, Buffer.alloc(MiB, 3));
    await single.stop();
    await assert.rejects(
      t.engine().start(),
      /not every copy .*no copy of the volume at this location.*--degraded-start/s,
    );
    const engine = t.engine({ allowDegradedStart: true });
    await engine.start();
    await until(engine, (s) => s.state === "healthy", "the rebuild");
    assert.ok(t.logs.some((l) => /full resync of 16777216 bytes/.test(l)));
    await engine.stop();
    assert.ok(t.dataOf(t.dirs[0]!).equals(t.dataOf(t.dirs[1]!)));
  } finally {
    await t.remove();
  }
});
