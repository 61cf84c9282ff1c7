// The control plane's hooks the engine calls (EngineOptions.recordCopyState and mayComplete): a copy's
// leaving is on record before any write it missed completes, a record that fails fences the engine,
// and an engine whose host may no longer complete acknowledges nothing. Over real local copies that
// fail on cue (test/helpers/fault-port.ts).

import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { hasCode } from "../../src/core/errors.js";
import { VolumeEngine, type EngineOptions } from "../../src/engine/engine.js";
import { Switchboard } from "../helpers/fault-port.js";
import { tempDir } from "../helpers/server-process.js";

const MiB = 1024 * 1024;

interface Record {
  readonly location: string;
  readonly inSync: boolean;
  readonly detail: string;
}

function setup(options: Partial<EngineOptions> = {}): {
  engine: VolumeEngine;
  board: Switchboard;
  dirs: string[];
  logs: string[];
  /** Stops the engine (whatever state a failed assertion left it in) and removes the copies. */
  cleanUp(): Promise<void>;
} {
  const root = tempDir("haven-hooks-");
  const dirs = [join(root.path, "a"), join(root.path, "b")];
  const board = new Switchboard();
  const logs: string[] = [];
  const engine = new VolumeEngine({
    name: "vol",
    locations: dirs,
    opener: board.opener,
    sizeBytes: 8 * MiB,
    reconnectMs: 60_000, // the copy that left stays away for the test
    startupWaitMs: 0,
    writebackMs: 0,
    log: (line) => logs.push(line),
    ...options,
  });
  const cleanUp = async (): Promise<void> => {
    engine.fence("test over"); // nothing waits on the copies any more
    await engine.stop();
    root.remove();
  };
  return { engine, board, dirs, logs, cleanUp };
}

/** Waits for `condition`, checking after every turn of the event loop (bounded). */
async function until(condition: () => boolean, what: string): Promise<void> {
  for (let turn = 0; turn < 100_000; turn++) {
    if (condition()) return;
    await new Promise((resolve) => setImmediate(resolve));
  }
  assert.fail(`never happened: ${what}`);
}

test("a write that made a copy leave is not acknowledged until the control plane has recorded the copy as out of sync", async () => {
  const records: Record[] = [];
  let holdLeaving = false;
  const held: (() => void)[] = [];
  const t = setup({
    recordCopyState: (location, inSync, detail) => {
      records.push({ location, inSync, detail });
      if (inSync || !holdLeaving) return Promise.resolve();
      return new Promise<void>((resolve) => held.push(resolve)); // open until the test lets it complete
    },
  });
  try {
    await t.engine.start();
    assert.deepEqual(
      records.map((r) => [r.location, r.inSync]),
      t.dirs.map((dir) => [dir, true]),
      "start records every copy",
    );
    await t.engine.write(0, Buffer.alloc(4096, 1));
    holdLeaving = true;
    t.board.broken.add(t.dirs[1]!);
    let acknowledged = false;
    const write = t.engine.write(4096, Buffer.alloc(4096, 2)).then(() => (acknowledged = true));
    await until(() => held.length === 1, "the record of the copy leaving");
    assert.deepEqual(records.at(-1), { location: t.dirs[1], inSync: false, detail: records.at(-1)!.detail });
    assert.match(records.at(-1)!.detail, /WRITE failed/);
    // Everything else the write waits for is done: the new generation is saved on the copy that stays.
    const stays = t.board.ports.get(t.dirs[0]!)!;
    await until(() => stays.metadata.generations.current === t.engine.generations.current, "the save");
    for (let turn = 0; turn < 50; turn++) await new Promise((resolve) => setImmediate(resolve));
    assert.equal(acknowledged, false, "the write was acknowledged before its copy's leaving was on record");
    held[0]!();
    await write;
    assert.equal(acknowledged, true);
    assert.equal(t.engine.fenced, null);
  } finally {
    for (const release of held) release();
    await t.cleanUp();
  }
});

test("a record of a copy leaving that fails fences the engine, and the write that made it leave fails", async () => {
  const t = setup({
    recordCopyState: (location, inSync) =>
      inSync ? Promise.resolve() : Promise.reject(new Error(`etcd refused the record of ${location}`)),
  });
  try {
    await t.engine.start();
    await t.engine.write(0, Buffer.alloc(4096, 1));
    const acknowledgedBefore = t.engine.status().io.writes;
    t.board.broken.add(t.dirs[1]!);
    await assert.rejects(t.engine.write(4096, Buffer.alloc(4096, 2)), /etcd refused the record/);
    assert.match(t.engine.fenced ?? "", /cannot record .* as out of sync in the cluster: etcd refused/);
    assert.equal(t.engine.status().io.writes, acknowledgedBefore, "nothing more was acknowledged");
    await assert.rejects(t.engine.write(8192, Buffer.alloc(4096, 3)), (error) => hasCode(error, "HAVEN_ERR_FENCED"));
    await assert.rejects(t.engine.flush(), (error) => hasCode(error, "HAVEN_ERR_FENCED"));
    assert.equal(t.engine.status().state, "failed");
  } finally {
    await t.cleanUp();
  }
});

for (const [kind, run] of [
  ["write", (engine: VolumeEngine) => engine.write(0, Buffer.alloc(4096, 7))],
  ["trim", (engine: VolumeEngine) => engine.trim(0, 4096)],
  ["write-zeroes", (engine: VolumeEngine) => engine.writeZeroes(0, 4096)],
  ["flush", (engine: VolumeEngine) => engine.flush()],
] as const) {
  test(`with the completion gate false (the lease is lost), a ${kind} is not acknowledged and the engine fences itself`, async () => {
    let mayComplete = true;
    const t = setup({ completionGate: () => mayComplete });
    try {
      await t.engine.start();
      await t.engine.write(0, Buffer.alloc(4096, 1));
      await t.engine.flush();
      const before = t.engine.status().io;
      mayComplete = false;
      await assert.rejects(run(t.engine), (error) => hasCode(error, "HAVEN_ERR_FENCED"));
      assert.match(t.engine.fenced ?? "", /lost its cluster lease/);
      const after = t.engine.status().io;
      assert.equal(after.writes, before.writes, "no write, trim or zeroing acknowledged");
      assert.equal(after.flushes, before.flushes, "no flush acknowledged");
      mayComplete = true; // the lease is back: a fenced engine still completes nothing
      await assert.rejects(t.engine.write(0, Buffer.alloc(4096, 2)), (error) => hasCode(error, "HAVEN_ERR_FENCED"));
    } finally {
      await t.cleanUp();
    }
  });
}

test("the control plane's vouch (vouchedCopies) starts a volume without its other copies only when a copy it vouches for is reachable", async () => {
  const t = setup();
  const [a, b] = [t.dirs[0]!, t.dirs[1]!];
  const engines: VolumeEngine[] = [];
  const engine = (vouchedCopies: string[]): VolumeEngine => {
    const started = new VolumeEngine({
      name: "vol",
      locations: t.dirs,
      opener: t.board.opener,
      startupWaitMs: 0,
      writebackMs: 0,
      log: (line) => t.logs.push(line),
      vouchedCopies,
    });
    engines.push(started);
    return started;
  };
  try {
    await t.engine.start();
    await t.engine.write(0, Buffer.alloc(4096, 7));
    await t.engine.stop();
    t.board.broken.add(a);
    await assert.rejects(
      engine([a]).start(),
      (error) => hasCode(error, "HAVEN_ERR_IO") && /not every copy of volume vol is reachable/.test(String(error)),
      "the copy vouched for is the one that does not answer",
    );
    const vouched = engine([b]);
    await vouched.start();
    assert.ok(t.logs.some((line) => /degraded start without .*, as the control plane vouches/.test(line)));
    const read = Buffer.alloc(4096);
    await vouched.read(0, read);
    assert.ok(read.equals(Buffer.alloc(4096, 7)), "the volume continues from the copy vouched for");
  } finally {
    for (const started of engines) {
      started.fence("test over");
      await started.stop();
    }
    await t.cleanUp();
  }
});

test("a write is not acknowledged until the leaving of every copy that left before it is on record, when two leave at once", async () => {
  const root = tempDir("haven-hooks-");
  const dirs = ["a", "b", "c"].map((name) => join(root.path, name));
  const [, b, c] = dirs as [string, string, string];
  const board = new Switchboard();
  const held: (() => void)[] = [];
  const engine = new VolumeEngine({
    name: "vol",
    locations: dirs,
    opener: board.opener,
    sizeBytes: 8 * MiB,
    reconnectMs: 60_000,
    startupWaitMs: 0,
    writebackMs: 0,
    log: () => undefined,
    // The record of b leaving stays open until the test lets it complete; every other one completes.
    recordCopyState: (location, inSync) =>
      location === b && !inSync ? new Promise<void>((resolve) => held.push(resolve)) : Promise.resolve(),
  });
  try {
    await engine.start();
    await engine.write(0, Buffer.alloc(4096, 1));
    // b's connection drops (its leaving is recorded in the background), then c fails the next write.
    board.broken.add(b);
    board.ports.get(b)!.onLost!(new Error("link down"));
    await until(() => held.length === 1, "the record of b leaving");
    board.broken.add(c);
    let acknowledged = false;
    const write = engine.write(4096, Buffer.alloc(4096, 2)).then(() => (acknowledged = true));
    await until(() => engine.status().replicas.find((r) => r.location === c)?.state === "faulted", "c leaving");
    for (let turn = 0; turn < 200; turn++) await new Promise((resolve) => setImmediate(resolve));
    assert.equal(
      acknowledged,
      false,
      "the write was acknowledged while b, which missed it, was still recorded in sync",
    );
    held[0]!();
    await write;
    assert.equal(acknowledged, true);
  } finally {
    for (const release of held) release();
    engine.fence("test over");
    await engine.stop();
    root.remove();
  }
});
