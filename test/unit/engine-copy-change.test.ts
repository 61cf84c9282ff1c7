// A running volume gains and loses copies (VolumeEngine.addCopy, removeCopy) while writes go on: a new
// copy is rebuilt (or a returning one resynced) before it joins the in-sync set, a copy leaves after a
// short quiesce and gets no write again, and the last in-sync copy never leaves. Over real local copies
// in temporary directories (the real opener, or test/helpers/fault-port.ts where a copy must fail),
// checked on the copies' data files and on what the volume reads back.

import assert from "node:assert/strict";
import { randomBytes, randomInt } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { hasCode, type ErrorCode } from "../../src/core/errors.js";
import { MAX_REPLICAS, VolumeEngine, type EngineOptions } from "../../src/engine/engine.js";
import type { ReplicaStatus, VolumeStatus } from "../../src/engine/status.js";
import { LocalReplicaPort } from "../../src/replica/local-port.js";
import { replicaOpener } from "../../src/replica/open-replica.js";
import type { ReplicaOpener } from "../../src/replica/port.js";
import { DATA_FILE, METADATA_FILE } from "../../src/replica/replica-store.js";
import { boundedTest } from "../helpers/bounded-test.js";
import { Switchboard } from "../helpers/fault-port.js";
import { tempDir } from "../helpers/server-process.js";

/** Each test takes a few seconds at most (the throttled rebuilds); one still running after this is hung. */
const test = boundedTest(60_000);

const MiB = 1024 * 1024;
const REGION = 64 * 1024;
const SIZE = 16 * MiB;
const NAME = "vol";

interface CopyRecord {
  readonly location: string;
  readonly inSync: boolean;
  readonly detail: string;
  /** The volume's copies when the record was made. */
  readonly locations: readonly string[];
  /** The copy's state then ("absent": not among the volume's copies). */
  readonly state: string;
}

interface Setup {
  readonly dirs: string[];
  readonly board: Switchboard;
  readonly logs: string[];
  readonly records: CopyRecord[];
  /** An engine over `locations`, recording what it tells the control plane in `records`. */
  engine(locations: readonly string[], options?: Partial<EngineOptions>): VolumeEngine;
  dataOf(dir: string): Buffer;
  metadataOf(dir: string): Buffer;
  cleanUp(): Promise<void>;
}

function setup(count: number): Setup {
  const root = tempDir("haven-copy-change-");
  const dirs = Array.from({ length: count }, (_, i) => join(root.path, `disk${i}`));
  const board = new Switchboard();
  const logs: string[] = [];
  const records: CopyRecord[] = [];
  const engines: VolumeEngine[] = [];
  return {
    dirs,
    board,
    logs,
    records,
    engine: (locations, options = {}) => {
      const engine: VolumeEngine = new VolumeEngine({
        name: NAME,
        locations,
        opener: board.opener,
        sizeBytes: SIZE,
        reconnectMs: 20,
        startupWaitMs: 0,
        writebackMs: 0,
        log: (line) => logs.push(line),
        recordCopyState: (location, inSync, detail) => {
          records.push({
            location,
            inSync,
            detail,
            locations: [...engine.locations],
            state: engine.status().replicas.find((r) => r.location === location)?.state ?? "absent",
          });
          return Promise.resolve();
        },
        ...options,
      });
      engines.push(engine);
      return engine;
    },
    dataOf: (dir) => readFileSync(join(dir, NAME, DATA_FILE)),
    metadataOf: (dir) => readFileSync(join(dir, NAME, METADATA_FILE)),
    cleanUp: async () => {
      await Promise.allSettled(engines.map((engine) => engine.stop()));
      root.remove();
    },
  };
}

/** Polls the engine's status until `predicate` holds (bounded); `sample` sees every status polled. */
async function until(
  engine: VolumeEngine,
  predicate: (status: VolumeStatus) => boolean,
  what: string,
  sample?: (status: VolumeStatus) => void,
): Promise<void> {
  for (let i = 0; i < 4000; i++) {
    const status = engine.status();
    sample?.(status);
    if (predicate(status)) return;
    await new Promise((resolve) => setTimeout(resolve, 5)); // resyncs run on timers
  }
  assert.fail(`timed out waiting for ${what}: ${JSON.stringify(engine.status().replicas)}`);
}

const replica = (engine: VolumeEngine, location: string): ReplicaStatus | undefined =>
  engine.status().replicas.find((r) => r.location === location);

const rejectsWith = (code: ErrorCode, message: RegExp) => (error: unknown) =>
  hasCode(error, code) && message.test(error.message);

async function readAll(engine: VolumeEngine): Promise<Buffer> {
  const target = Buffer.alloc(SIZE);
  await engine.read(0, target);
  return target;
}

/**
 * Random writes (and reads checked against what was written) one after another until stopped; keeps
 * `shadow`, the bytes the volume must hold. Any failed I/O fails the test.
 */
function startWriter(engine: VolumeEngine, shadow: Buffer): { writes: () => number; stop(): Promise<void> } {
  let running = true;
  let writes = 0;
  const loop = (async () => {
    while (running) {
      const length = randomInt(1, 33) * 4096;
      const offset = randomInt(0, (SIZE - length) / 4096 + 1) * 4096;
      const data = randomBytes(length);
      await engine.write(offset, data);
      data.copy(shadow, offset);
      writes++;
      if (writes % 4 === 0) {
        const at = randomInt(0, SIZE / 4096) * 4096;
        const back = Buffer.alloc(Math.min(128 * 1024, SIZE - at));
        await engine.read(at, back);
        assert.ok(back.equals(shadow.subarray(at, at + back.length)), `read at ${at} returned other bytes`);
      }
      await new Promise((resolve) => setImmediate(resolve)); // let the rebuild and the test's polls run
    }
  })();
  return {
    writes: () => writes,
    stop: async () => {
      running = false;
      await loop;
    },
  };
}

/** Whether another process could open the copy now: true once the engine closed it (its lock is free). */
async function openable(dir: string): Promise<boolean> {
  try {
    const port = await LocalReplicaPort.open(dir, NAME, undefined);
    await port.close();
    return true;
  } catch (error) {
    if (hasCode(error, "HAVEN_ERR_CONFLICT")) return false;
    throw error;
  }
}

test("a copy added to a one-copy volume while writes go on is rebuilt in full, joins the in-sync set, and holds the volume's bytes; the original copy then leaves and the volume carries on", async () => {
  const t = setup(2);
  const [first, second] = [t.dirs[0]!, t.dirs[1]!];
  try {
    // The real opener (kernel copies between the local copies included), throttled so the rebuild
    // overlaps the writes.
    const engine = t.engine([first], {
      opener: replicaOpener({}),
      resync: { maxBytesPerSecond: 16 * MiB, busyBytesPerSecond: 16 * MiB, chunkBytes: 256 * 1024 },
    });
    await engine.start();
    const shadow = Buffer.alloc(SIZE);
    for (let offset = 0; offset < SIZE; offset += 2 * MiB) {
      const data = randomBytes(MiB);
      await engine.write(offset, data);
      data.copy(shadow, offset);
    }
    const writer = startWriter(engine, shadow);

    await engine.addCopy(second);
    assert.deepEqual(engine.locations, [first, second]);
    const added = replica(engine, second)!;
    assert.equal(added.state, "resyncing", "attached, and its rebuild started, when addCopy resolves");
    assert.equal(added.resync?.mode, "full");
    assert.equal(added.resync?.totalBytes, SIZE);
    assert.equal(engine.status().state, "resyncing");
    let midway = false;
    let rated = false;
    await until(
      engine,
      (s) => s.replicas[1]!.state === "in-sync",
      "the new copy to join",
      (s) => {
        const progress = s.replicas.find((r) => r.location === second)?.resync;
        if (progress && progress.doneBytes > 0 && progress.doneBytes < progress.totalBytes) midway = true;
        if (progress && progress.bytesPerSecond > 0) rated = true;
      },
    );
    assert.ok(midway, "the status showed the rebuild's progress on its way");
    assert.ok(rated, "the status showed the rebuild's rate");
    assert.ok(writer.writes() > 0, "writes went on during the rebuild");
    assert.equal(engine.status().state, "healthy");

    // The control plane heard of the new copy as out of sync before it was among the copies, and as
    // in sync only once it was.
    const ofSecond = t.records.filter((r) => r.location === second);
    assert.deepEqual(
      ofSecond.map((r) => [r.inSync, r.state, r.locations]),
      [
        [false, "absent", [first]],
        [true, "in-sync", [first, second]],
      ],
    );
    assert.match(ofSecond[1]!.detail, /caught up by a full resync/);

    await writer.stop();
    await engine.flush();
    assert.ok(t.dataOf(second).equals(shadow), "the new copy holds every byte written, those during its rebuild too");
    assert.ok(t.dataOf(first).equals(shadow));

    // Moving the volume: the original copy leaves while writes go on.
    const moving = startWriter(engine, shadow);
    await engine.removeCopy(first);
    const writesAtRemoval = moving.writes();
    assert.deepEqual(engine.locations, [second]);
    assert.deepEqual(
      engine.status().replicas.map((r) => r.location),
      [second],
    );
    assert.ok(await openable(first), "the removed copy's port is closed");
    const removedData = t.dataOf(first);
    await until(engine, () => moving.writes() > writesAtRemoval + 20, "writes after the removal");
    await moving.stop();
    assert.equal(engine.status().io.errors, 0, "no I/O failed");
    assert.ok((await readAll(engine)).equals(shadow), "the volume reads back everything written");
    assert.ok(t.dataOf(first).equals(removedData), "no write reached the removed copy");
    assert.ok(existsSync(join(first, NAME, DATA_FILE)), "its files are left for the caller");
    assert.deepEqual(
      t.records.filter((r) => r.location === first).map((r) => [r.inSync, r.detail, r.state]),
      [
        [true, "in-sync", "in-sync"],
        [false, "removed from the volume", "absent"],
      ],
    );
    await engine.stop();
    assert.ok(t.dataOf(second).equals(shadow));
    // The copy that stays starts alone: its metadata no longer counts the removed copy as in sync.
    const alone = t.engine([second], { opener: replicaOpener({}) });
    await alone.start();
    assert.ok((await readAll(alone)).equals(shadow));
    await alone.stop();
  } finally {
    await t.cleanUp();
  }
});

test("the last in-sync copy is never removed: refused with HAVEN_ERR_CONFLICT, and nothing changes", async () => {
  const t = setup(3);
  const [first, second, only] = [t.dirs[0]!, t.dirs[1]!, t.dirs[2]!];
  try {
    const single = t.engine([only]);
    await single.start();
    await single.write(0, Buffer.alloc(4096, 1));
    await assert.rejects(
      single.removeCopy(only),
      rejectsWith("HAVEN_ERR_CONFLICT", /is the last in-sync copy of volume vol/),
    );
    await assert.rejects(
      single.removeCopy("/not/a/copy"),
      rejectsWith("HAVEN_ERR_NOT_FOUND", /not a copy of volume vol/),
    );
    assert.deepEqual(single.locations, [only]);
    await single.stop();

    const engine = t.engine([first, second], { reconnectMs: 60_000 }); // the broken copy stays away
    await engine.start();
    await engine.write(0, Buffer.alloc(4096, 2));
    t.board.broken.add(second);
    await engine.write(4096, Buffer.alloc(4096, 3)); // the second copy fails and leaves
    assert.equal(replica(engine, second)!.state, "faulted");
    const before = engine.status();
    const recordsBefore = t.records.length;
    await assert.rejects(
      engine.removeCopy(first),
      rejectsWith("HAVEN_ERR_CONFLICT", /is the last in-sync copy of volume vol/),
    );
    const after = engine.status();
    assert.deepEqual(engine.locations, [first, second]);
    assert.deepEqual(after.replicas, before.replicas);
    assert.deepEqual(after.generations, before.generations);
    assert.equal(t.records.length, recordsBefore, "nothing was recorded");
    await engine.write(8192, Buffer.alloc(4096, 4));
    const back = Buffer.alloc(3 * 4096);
    await engine.read(0, back);
    assert.ok(back.equals(Buffer.concat([2, 3, 4].map((fill) => Buffer.alloc(4096, fill)))));

    // The faulted copy may go: the volume keeps its in-sync one.
    await engine.removeCopy(second);
    assert.deepEqual(engine.locations, [first]);
    assert.equal(engine.status().state, "healthy");
    await engine.stop();
  } finally {
    await t.cleanUp();
  }
});

test("with no copy in sync, the copy the volume was last in sync on is never removed", async () => {
  const t = setup(2);
  const [first, second] = [t.dirs[0]!, t.dirs[1]!];
  try {
    const engine = t.engine([first, second], { reconnectMs: 60_000 });
    await engine.start();
    t.board.broken.add(second);
    await engine.write(0, Buffer.alloc(4096, 1)); // second leaves
    t.board.broken.add(first);
    await assert.rejects(engine.write(4096, Buffer.alloc(4096, 2)), /no in-sync copy/); // first leaves last
    assert.equal(engine.status().state, "failed");
    await assert.rejects(
      engine.removeCopy(first),
      rejectsWith("HAVEN_ERR_CONFLICT", /the copy volume vol was last in sync on, and no copy is in sync now/),
    );
    await engine.removeCopy(second);
    assert.deepEqual(engine.locations, [first]);
  } finally {
    await t.cleanUp();
  }
});

test("a location that is a copy already, or one copy too many, is refused and nothing is created", async () => {
  const t = setup(MAX_REPLICAS + 1);
  const dirs = t.dirs;
  try {
    const engine = t.engine(dirs.slice(0, MAX_REPLICAS - 1));
    await engine.start();
    await assert.rejects(
      engine.addCopy(dirs[0]!),
      rejectsWith("HAVEN_ERR_CONFLICT", /is already a copy of volume vol/),
    );
    // Two adds at once, one place left: one is added, the other refused.
    const results = await Promise.allSettled([
      engine.addCopy(dirs[MAX_REPLICAS - 1]!),
      engine.addCopy(dirs[MAX_REPLICAS]!),
    ]);
    assert.equal(results[0].status, "fulfilled");
    assert.equal(results[1].status, "rejected");
    assert.ok(
      rejectsWith(
        "HAVEN_ERR_USAGE",
        new RegExp(`has ${MAX_REPLICAS} copies, the most a volume can have \\(${MAX_REPLICAS}\\)`),
      )((results[1] as PromiseRejectedResult).reason),
      String((results[1] as PromiseRejectedResult).reason),
    );
    assert.ok(!existsSync(dirs[MAX_REPLICAS]!), "nothing was created at the refused location");
    assert.deepEqual(engine.locations, dirs.slice(0, MAX_REPLICAS));
    await assert.rejects(
      engine.addCopy(dirs[MAX_REPLICAS]!),
      rejectsWith("HAVEN_ERR_USAGE", new RegExp(`most a volume can have \\(${MAX_REPLICAS}\\)`)),
    );
    // The same location twice at once: one add, one refusal.
    await engine.removeCopy(dirs[MAX_REPLICAS - 1]!);
    const twice = await Promise.allSettled([engine.addCopy(dirs[MAX_REPLICAS]!), engine.addCopy(dirs[MAX_REPLICAS]!)]);
    assert.deepEqual(
      twice.map((r) => r.status),
      ["fulfilled", "rejected"],
    );
    assert.ok(hasCode((twice[1] as PromiseRejectedResult).reason, "HAVEN_ERR_CONFLICT"));
    assert.deepEqual(engine.locations, [...dirs.slice(0, MAX_REPLICAS - 1), dirs[MAX_REPLICAS]!]);
    await until(engine, (s) => s.state === "healthy", "the added copies to join");

    // Only while the volume serves.
    const notStarted = t.engine([dirs[0]!]);
    await assert.rejects(notStarted.addCopy(dirs[1]!), rejectsWith("HAVEN_ERR_CONFLICT", /not serving/));
    engine.fence("test: deposed");
    await assert.rejects(engine.addCopy(dirs[MAX_REPLICAS - 1]!), (e) => hasCode(e, "HAVEN_ERR_FENCED"));
    await assert.rejects(engine.removeCopy(dirs[1]!), (e) => hasCode(e, "HAVEN_ERR_FENCED"));
    await engine.stop();
    await assert.rejects(engine.addCopy(dirs[MAX_REPLICAS - 1]!), (e) =>
      hasCode(e, engine.fenced ? "HAVEN_ERR_FENCED" : "HAVEN_ERR_SHUTTING_DOWN"),
    );
  } finally {
    await t.cleanUp();
  }
});

test("a copy removed after writes and added back is resynced incrementally, of exactly the regions written since, and ends identical", async () => {
  const t = setup(2);
  const [first, second] = [t.dirs[0]!, t.dirs[1]!];
  try {
    const engine = t.engine([first, second]);
    await engine.start();
    await engine.write(0, randomBytes(4 * MiB));
    await engine.flush(); // else its unflushed regions count as possibly missed
    await engine.removeCopy(second);
    // Before any other write: the copy that stays has the new generation and counts itself alone in sync.
    const stays = t.board.ports.get(first)!.metadata;
    assert.deepEqual(stays.generations, engine.generations);
    assert.deepEqual(stays.inSyncCopies, [stays.copyId]);
    assert.equal(engine.generations.bitmap, t.board.ports.get(second)!.metadata.generations.current);
    const written = [MiB, 3 * MiB + REGION, 10 * MiB];
    for (const offset of written) await engine.write(offset, randomBytes(REGION));
    await engine.write(12 * MiB + 100, randomBytes(10)); // a partial region counts whole

    await engine.addCopy(second);
    const progress = replica(engine, second)!.resync!;
    assert.equal(progress.mode, "incremental");
    assert.equal(progress.totalBytes, 4 * REGION);
    assert.match(progress.rule, /change bitmap since the copy's generation/);
    await until(engine, (s) => s.state === "healthy", "the copy to catch up");
    await engine.stop();
    assert.ok(t.dataOf(first).equals(t.dataOf(second)), "identical after the resync");
    assert.deepEqual(
      t.records.filter((r) => r.location === second).map((r) => [r.inSync, r.state]),
      [
        [true, "in-sync"], // start
        [false, "absent"], // removed
        [false, "absent"], // added back, before it is attached
        [true, "in-sync"], // caught up
      ],
    );
    assert.match(t.records.at(-1)!.detail, /caught up by an incremental resync of 256\.0 KiB/);
  } finally {
    await t.cleanUp();
  }
});

test("a copy of another volume at the location is refused with HAVEN_ERR_CONFLICT and left untouched", async () => {
  const t = setup(2);
  const [mine, theirs] = [t.dirs[0]!, t.dirs[1]!];
  try {
    const other = t.engine([theirs]);
    await other.start();
    await other.write(0, Buffer.alloc(MiB, 0xee));
    await other.stop();
    const data = t.dataOf(theirs);
    const metadata = t.metadataOf(theirs);

    const engine = t.engine([mine]);
    await engine.start();
    t.records.length = 0;
    await assert.rejects(
      engine.addCopy(theirs),
      rejectsWith("HAVEN_ERR_CONFLICT", /cannot hold a copy of volume vol: foreign copy: it holds volume [0-9a-f]{16}/),
    );
    assert.deepEqual(engine.locations, [mine]);
    assert.deepEqual(t.records, [], "nothing recorded for a copy never added");
    await engine.write(0, Buffer.alloc(MiB, 1));
    assert.ok(await openable(theirs), "closed again");
    assert.ok(t.dataOf(theirs).equals(data), "its data untouched");
    assert.ok(t.metadataOf(theirs).equals(metadata), "its metadata untouched");
  } finally {
    await t.cleanUp();
  }
});

test("removing a copy in the middle of its rebuild stops the rebuild; added again, it is rebuilt and ends identical", async () => {
  const t = setup(2);
  const [first, second] = [t.dirs[0]!, t.dirs[1]!];
  try {
    const engine = t.engine([first], {
      resync: { maxBytesPerSecond: 2 * MiB, busyBytesPerSecond: 2 * MiB, chunkBytes: REGION, parallelChunks: 1 },
    });
    await engine.start();
    await engine.write(0, randomBytes(8 * MiB));
    await engine.addCopy(second);
    await until(engine, (s) => (s.replicas[1]?.resync?.doneBytes ?? 0) > 0, "the rebuild to start copying");
    await engine.removeCopy(second);
    assert.deepEqual(engine.locations, [first]);
    assert.deepEqual(
      engine.status().replicas.map((r) => [r.location, r.state, r.resync]),
      [[first, "in-sync", null]],
    );
    assert.equal(engine.status().state, "healthy");
    assert.ok(await openable(second), "the rebuild let go of the copy: nothing writes it any more");
    assert.ok(!t.logs.some((l) => l.includes(second) && /resync of .* done/.test(l)), "the rebuild never finished");
    assert.ok(!t.records.some((r) => r.location === second && r.inSync), "never recorded in sync");
    const partial = t.dataOf(second);
    assert.ok(!partial.equals(t.dataOf(first)), "it was left part way");

    await engine.write(MiB, randomBytes(REGION));
    engine.throttle.update({ maxBytesPerSecond: 0, busyBytesPerSecond: 0 });
    await engine.addCopy(second);
    assert.equal(replica(engine, second)!.resync?.mode, "full", "a copy that never was in sync is rebuilt in full");
    await until(engine, (s) => s.state === "healthy", "the rebuild");
    await engine.stop();
    assert.ok(t.dataOf(first).equals(t.dataOf(second)));
  } finally {
    await t.cleanUp();
  }
});

test("a copy that cannot be reached when added stays among the copies, out of sync, and joins once it can be reached", async () => {
  const t = setup(2);
  const [first, second] = [t.dirs[0]!, t.dirs[1]!];
  try {
    const engine = t.engine([first]);
    await engine.start();
    await engine.write(0, Buffer.alloc(MiB, 5));
    t.board.broken.add(second);
    await engine.addCopy(second);
    assert.deepEqual(engine.locations, [first, second]);
    const away = replica(engine, second)!;
    assert.equal(away.state, "connecting");
    assert.match(away.reason ?? "", /injected I\/O error/);
    assert.deepEqual(
      t.records.filter((r) => r.location === second).map((r) => [r.inSync, r.state]),
      [[false, "absent"]],
    );
    assert.match(t.records.at(-1)!.detail, /not reachable yet: .*injected I\/O error/);
    await engine.write(MiB, Buffer.alloc(MiB, 6));
    t.board.broken.delete(second);
    await until(engine, (s) => s.state === "healthy", "the copy to be reached and rebuilt");
    await engine.stop();
    assert.ok(t.dataOf(first).equals(t.dataOf(second)));
  } finally {
    await t.cleanUp();
  }
});

test("a copy added that took writes apart from the volume is a split brain: refused, kept, and rebuilt only once the survivor is named", async () => {
  const t = setup(2);
  const [first, second] = [t.dirs[0]!, t.dirs[1]!];
  try {
    let engine = t.engine([first, second]);
    await engine.start();
    await engine.stop();
    // Each copy takes writes alone.
    for (const [away, fill] of [
      [second, 0xaa],
      [first, 0xbb],
    ] as const) {
      t.board.broken.add(away);
      engine = t.engine([first, second], { allowDegradedStart: true });
      await engine.start();
      await engine.write(fill === 0xaa ? 0 : MiB, Buffer.alloc(REGION, fill));
      await engine.stop();
      t.board.broken.delete(away);
    }
    engine = t.engine([first]);
    await engine.start();
    const secondData = t.dataOf(second);
    await assert.rejects(
      engine.addCopy(second),
      rejectsWith("HAVEN_ERR_SPLIT_BRAIN", /took writes apart from it .*resolve-split-brain/),
    );
    assert.deepEqual(engine.locations, [first, second]);
    assert.equal(replica(engine, second)!.state, "split-brain");
    await engine.write(2 * MiB, Buffer.alloc(REGION, 0xcc));
    assert.ok(t.dataOf(second).equals(secondData), "nothing written to the other side");
    await engine.resolveSplitBrain(first);
    await until(engine, (s) => s.state === "healthy", "the rebuild from the survivor");
    await engine.stop();
    assert.ok(t.dataOf(first).equals(t.dataOf(second)));
    assert.equal(t.dataOf(second)[MiB], 0, "the other side's writes were discarded, as the operator chose");
  } finally {
    await t.cleanUp();
  }
});

test("a removal is on record in the cluster before any write goes on without the copy", async () => {
  const t = setup(2);
  const [first, second] = [t.dirs[0]!, t.dirs[1]!];
  const held: (() => void)[] = [];
  try {
    const engine = t.engine([first, second], {
      recordCopyState: (_location, inSync) =>
        inSync ? Promise.resolve() : new Promise<void>((resolve) => held.push(resolve)),
    });
    await engine.start();
    await engine.write(0, Buffer.alloc(4096, 1));
    const removal = engine.removeCopy(second);
    for (let turn = 0; turn < 10_000 && held.length === 0; turn++)
      await new Promise((resolve) => setImmediate(resolve));
    assert.equal(held.length, 1, "the removal is being recorded");
    let acknowledged = false;
    const write = engine.write(4096, Buffer.alloc(4096, 2)).then(() => (acknowledged = true));
    for (let turn = 0; turn < 50; turn++) await new Promise((resolve) => setImmediate(resolve));
    assert.equal(acknowledged, false, "a write went on before the removal was on record");
    held[0]!();
    await removal;
    await write;
    assert.equal(acknowledged, true);
    assert.equal(t.dataOf(second)[4096], 0, "the write went to the remaining copy only");
  } finally {
    for (const release of held) release();
    await t.cleanUp();
  }
});

test("a removed copy's port is closed only once the reads in flight on it settled", async () => {
  const t = setup(2);
  const [first, second] = [t.dirs[0]!, t.dirs[1]!];
  let holding = false;
  const held: (() => void)[] = [];
  const closed = new Set<string>();
  /** The board's ports, with reads that wait while `holding` until the test lets them go. */
  const opener: ReplicaOpener = async (location, name, create) => {
    const port = await t.board.opener(location, name, create);
    return new Proxy(port, {
      get: (target, key, receiver) => {
        if (key === "read")
          return async (offset: number, length: number) => {
            if (holding) await new Promise<void>((resolve) => held.push(resolve));
            return target.read(offset, length);
          };
        if (key === "close")
          return () => {
            closed.add(location);
            return target.close();
          };
        return Reflect.get(target, key, receiver);
      },
    });
  };
  try {
    const engine = t.engine([first, second], { opener });
    await engine.start();
    const data = randomBytes(REGION);
    await engine.write(0, data);
    holding = true;
    const back = Buffer.alloc(REGION);
    const read = engine.read(0, back);
    for (let turn = 0; turn < 10_000 && held.length === 0; turn++)
      await new Promise((resolve) => setImmediate(resolve));
    assert.equal(held.length, 1, "a read is in flight on the first copy");
    holding = false;
    let removed = false;
    const removal = engine.removeCopy(first).then(() => (removed = true));
    // Everything else the removal waits for is done: the copy that stays saved the smaller set.
    await until(
      engine,
      () => t.board.ports.get(second)!.metadata.inSyncCopies?.length === 1,
      "the remaining copy's metadata to be saved",
    );
    for (let turn = 0; turn < 50; turn++) await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(engine.locations, [second]);
    assert.ok(!closed.has(first), "the port was closed under a read in flight");
    assert.equal(removed, false, "removeCopy resolved with a read in flight on the copy");
    held[0]!();
    await read;
    await removal;
    assert.ok(back.equals(data));
    assert.ok(closed.has(first));
    assert.ok(await openable(first));
  } finally {
    for (const release of held) release();
    await t.cleanUp();
  }
});
