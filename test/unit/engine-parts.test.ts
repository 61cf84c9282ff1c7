// The engine's pure parts: which copy a volume continues from and what each other copy needs
// (DESIGN.md rule 5), the activity log (rule 3), range locks between client writes and resync, the
// throttle, and change bitmaps kept in metadata.

import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { ActivityLog } from "../../src/engine/activity-log.js";
import { RangeLocks } from "../../src/engine/range-locks.js";
import { chooseSource, decideCopy } from "../../src/engine/sync-decision.js";
import { Throttle, RateMeter } from "../../src/engine/throttle.js";
import { nextRun } from "../../src/engine/resync.js";
import type { Clock } from "../../src/util/clock.js";
import { ALL_REGIONS, decodeBitmap, encodeBitmap } from "../../src/replica/bitmap-codec.js";
import { beginGenerationWithoutPeer, type Generations } from "../../src/replica/generations.js";
import { RegionBitmap } from "../../src/replica/region-bitmap.js";

const id = (n: number): string => n.toString(16).padStart(16, "0");
const at = (current: number, history: number[] = [], bitmap = 0): Generations => ({
  current: id(current),
  bitmap: bitmap === 0 ? "" : id(bitmap),
  history: history.map(id),
});

test("rule 5: a copy behind the volume resyncs incrementally only if a change bitmap since its generation is kept", () => {
  const volume = { generations: beginGenerationWithoutPeer(at(1), id(2)), changedSince: { [id(1)]: "" } };
  const behind = decideCopy(volume, { generations: at(1) });
  assert.equal(behind.kind, "incremental");
  assert.match(behind.rule, /^rule 4: .*change bitmap since the copy's generation 0000000000000001/);
  const noBitmap = decideCopy({ ...volume, changedSince: {} }, { generations: at(1) });
  assert.equal(noBitmap.kind, "full");
  assert.equal(decideCopy(volume, { generations: volume.generations }).kind, "in-sync");
  assert.equal(decideCopy(volume, { generations: { current: "", bitmap: "", history: [] } }).kind, "full");
});

test("rule 5: a copy that took writes apart is split brain, a copy ahead of the volume too, unrelated data is refused", () => {
  const volume = { generations: beginGenerationWithoutPeer(at(1), id(2)), changedSince: { [id(1)]: "" } };
  const apart = beginGenerationWithoutPeer(at(1), id(3));
  assert.equal(decideCopy(volume, { generations: apart }).kind, "split-brain");
  const ahead = { current: id(4), bitmap: "", history: [id(2), id(1)] };
  const decision = decideCopy(volume, { generations: ahead });
  assert.equal(decision.kind, "split-brain");
  assert.match(decision.rule, /ahead of the volume/);
  assert.equal(decideCopy(volume, { generations: at(0x99) }).kind, "refused");
});

test("the source is a copy every other is in sync with or behind, local first; diverged copies give none", () => {
  const newer = { generations: beginGenerationWithoutPeer(at(1), id(2)), changedSince: { [id(1)]: "" } };
  const older = { generations: at(1), changedSince: {} };
  const empty = { generations: { current: "", bitmap: "", history: [] }, changedSince: {} };
  assert.equal(
    chooseSource([
      { index: 0, local: true, metadata: older },
      { index: 1, local: false, metadata: newer },
      { index: 2, local: true, metadata: empty },
    ])?.index,
    1,
  );
  assert.equal(
    chooseSource([
      { index: 0, local: false, metadata: newer },
      { index: 1, local: true, metadata: newer },
    ])?.index,
    1,
    "local preferred among equals",
  );
  const apart = { generations: beginGenerationWithoutPeer(at(1), id(3)), changedSince: { [id(1)]: "" } };
  assert.equal(
    chooseSource([
      { index: 0, local: true, metadata: newer },
      { index: 1, local: true, metadata: apart },
    ]),
    undefined,
  );
});

test("rule 3: the activity log pins extents, persists new ones, and lets idle ones leave only when told", () => {
  const log = new ActivityLog(1024, 2);
  assert.deepEqual(log.pin(0, 10), { changed: true, evicted: [] });
  assert.deepEqual(log.pin(100, 10), { changed: true, evicted: [] }, "not persisted yet: this write waits too");
  log.markPersisted(log.extents);
  assert.deepEqual(log.pin(200, 10), { changed: false, evicted: [] }, "persisted: nothing to wait for");
  log.unpin(200, 10);
  assert.deepEqual(log.pin(1024, 2048), { changed: true, evicted: [] }, "extents 1 and 2; 0 is pinned, cannot leave");
  log.markPersisted(log.extents);
  assert.deepEqual(log.extents, [0, 1, 2]);
  log.unpin(0, 10);
  log.unpin(100, 10);
  log.unpin(1024, 2048);
  const change = log.pin(5000, 1);
  assert.equal(change.changed, true);
  assert.ok(change.evicted.length > 0);
  assert.ok(
    change.evicted.every((e) => log.extents.includes(e)),
    "leaving extents stay persisted until forgotten",
  );
  log.forget(change.evicted);
  assert.ok(change.evicted.every((e) => !log.extents.includes(e)));
  assert.ok(log.extents.includes(4));
  assert.throws(() => log.unpin(0, 10), /not pinned/);
});

test("the activity log never drops a pinned extent and covers every write in flight (property)", () => {
  fc.assert(
    fc.property(
      fc.array(fc.tuple(fc.nat(63), fc.integer({ min: 1, max: 3 }), fc.boolean()), { maxLength: 60 }),
      (ops) => {
        const log = new ActivityLog(1, 4);
        const inFlight: [number, number][] = [];
        for (const [offset, length, finish] of ops) {
          if (finish && inFlight.length > 0) {
            const [o, l] = inFlight.shift()!;
            log.unpin(o, l);
            continue;
          }
          const { evicted } = log.pin(offset, length);
          inFlight.push([offset, length]);
          log.forget(evicted);
          for (const [o, l] of inFlight) for (let e = o; e < o + l; e++) assert.ok(log.has(e), `extent ${e} in flight`);
        }
      },
    ),
  );
});

test("range locks: a resync chunk waits for overlapping writes and holds back new ones; disjoint ranges pass", async () => {
  const locks = new RangeLocks();
  const order: string[] = [];
  const write = await locks.acquire(0, 100, false);
  const chunk = locks.acquire(50, 100, true).then((release) => {
    order.push("chunk");
    return release;
  });
  const disjoint = await locks.acquire(500, 10, false);
  order.push("disjoint");
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(order, ["disjoint"], "the chunk waits for the overlapping write");
  assert.deepEqual(locks.sharedRanges(), [
    { offset: 0, length: 100 },
    { offset: 500, length: 10 },
  ]);
  write();
  const releaseChunk = await chunk;
  const later = locks.acquire(120, 10, false).then(() => order.push("later write"));
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(order, ["disjoint", "chunk"], "a new write into the chunk waits");
  releaseChunk();
  await later;
  disjoint();
  assert.deepEqual(order, ["disjoint", "chunk", "later write"]);
});

function fakeClock(): Clock & { advance(ms: number): void; slept: number[] } {
  let now = 0;
  const slept: number[] = [];
  return {
    now: () => now,
    slept,
    advance: (ms) => (now += ms),
    sleep: (ms) => {
      slept.push(ms);
      now += ms;
      return Promise.resolve();
    },
    schedule: () => ({ cancel: () => undefined }),
  };
}

test("the throttle paces copies to the idle rate, and to the busy rate while clients do I/O", async () => {
  const clock = fakeClock();
  const throttle = new Throttle(clock, { maxBytesPerSecond: 1000, busyBytesPerSecond: 100, busyWindowMs: 50 });
  await throttle.take(1000);
  await throttle.take(1000);
  assert.deepEqual(clock.slept, [1000], "the second second's worth waits a second");
  throttle.noteClientIo();
  assert.equal(throttle.busy, true);
  await throttle.take(100);
  assert.ok(clock.slept.length === 2 && clock.slept[1]! >= 900, "busy: the slower rate applies");
  clock.advance(100);
  assert.equal(throttle.busy, false);
  const meter = new RateMeter(clock);
  meter.record(0);
  clock.advance(1000);
  meter.record(5000);
  assert.equal(meter.bytesPerSecond(), 5000);
});

test("change bitmaps survive encoding; one too big to keep becomes 'all regions' (over-marking, never under)", () => {
  const bitmap = new RegionBitmap(1 << 30, 4096);
  bitmap.markRange(4096 * 7, 10);
  bitmap.markRange(1 << 29, 1 << 20);
  const back = decodeBitmap(encodeBitmap(bitmap, 10_000), 1 << 30, 4096);
  assert.deepEqual([...back.runs()], [...bitmap.runs()]);
  assert.equal(encodeBitmap(new RegionBitmap(1 << 20, 4096), 100), "", "empty encodes as nothing");
  const noisy = new RegionBitmap(1 << 30, 4096);
  let x = 2463534242;
  for (let i = 0; i < 20000; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    noisy.markRange(((x >>> 0) % 262144) * 4096, 1);
  }
  assert.equal(encodeBitmap(noisy, 1000), ALL_REGIONS);
  assert.equal(decodeBitmap(ALL_REGIONS, 1 << 30, 4096).count, 262144);
});

test("resync walks the marked regions in runs from a cursor", () => {
  const bitmap = new RegionBitmap(1 << 20, 4096);
  bitmap.markRange(0, 4096 * 3);
  bitmap.markRange(4096 * 200, 4096);
  assert.deepEqual(nextRun(bitmap, 0, 8192), { offset: 0, length: 8192 });
  assert.deepEqual(nextRun(bitmap, 8192, 1 << 20), { offset: 8192, length: 4096 });
  assert.deepEqual(nextRun(bitmap, 4096 * 3, 1 << 20), { offset: 4096 * 200, length: 4096 });
  assert.equal(nextRun(bitmap, 4096 * 201, 1 << 20), undefined);
});
