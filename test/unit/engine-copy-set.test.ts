// The owner of the copies' state (src/engine/copy-set.ts): its transitions, and the invariants it
// asserts (on in production: a broken one throws AssertionError, which stops the NBD front).

import { test } from "node:test";
import assert, { AssertionError } from "node:assert/strict";
import { CopySet, type CopyView } from "../../src/engine/copy-set.js";
import type { ReplicaPort } from "../../src/replica/port.js";
import type { ReplicaMetadata } from "../../src/replica/replica-store.js";
import { RegionBitmap } from "../../src/replica/region-bitmap.js";

const MiB = 1024 * 1024;
const id = (n: number): string => n.toString(16).padStart(16, "0");

/** A port that only carries metadata: CopySet never does I/O. */
function port(copy: number, local = true): ReplicaPort {
  const metadata: ReplicaMetadata = {
    volumeId: id(0xaa),
    copyId: id(0xc0 + copy),
    sizeBytes: MiB,
    regionBytes: 4096,
    generations: { current: id(1), bitmap: "", history: [] },
    highestEpoch: 1,
    cleanShutdown: false,
    changedSince: {},
    activityLog: [],
    resync: null,
    inSyncCopies: null,
  };
  const unused = (): never => assert.fail("CopySet does no I/O");
  return {
    location: `/disk${copy}`,
    local,
    metadata,
    onLost: undefined,
    read: unused,
    write: unused,
    trim: unused,
    writeZeroes: unused,
    flush: unused,
    updateMetadata: unused,
    checksum: unused,
    blockStatus: unused,
    close: () => Promise.resolve(),
  };
}

/** Two copies in sync at generation 2 (which follows 1), epoch 3. */
function started(): CopySet {
  let next = 0x10;
  const set = new CopySet(
    ["/disk0", "/disk1"],
    () => id(next++),
    () => undefined,
  );
  set.identify({ volumeId: id(0xaa), sizeBytes: MiB, regionBytes: 4096 });
  set.takeEpoch(3);
  set.startGenerations(
    { current: id(1), bitmap: "", history: [] },
    { current: id(2), bitmap: "", history: [id(1)] },
    new Map(),
  );
  for (const copy of set.copies) {
    set.attach(copy, port(copy.index));
    set.setState(copy, "in-sync", null);
  }
  return set;
}

test("the epoch never goes down", () => {
  const set = started();
  set.takeEpoch(3);
  set.takeEpoch(4);
  assert.throws(() => set.takeEpoch(2), AssertionError);
  assert.equal(set.epoch, 4);
});

test("a copy cannot be in sync, or resyncing, without a port", () => {
  const set = new CopySet(
    ["/disk0"],
    () => id(9),
    () => undefined,
  );
  assert.throws(() => set.setState(set.copies[0]!, "in-sync", null), AssertionError);
  assert.throws(() => set.setState(set.copies[0]!, "resyncing", null), AssertionError);
});

test("generations only move forward: one the volume had before, or one that drops its past, is refused", () => {
  const at = (current: number, history: number[]) => ({ current: id(current), bitmap: "", history: history.map(id) });
  const fresh = (): CopySet =>
    new CopySet(
      ["/disk0"],
      () => id(9),
      () => undefined,
    );
  assert.throws(() => fresh().startGenerations(at(2, [1]), at(1, [2]), new Map()), AssertionError);
  assert.throws(() => fresh().startGenerations(at(2, [1]), at(3, [1]), new Map()), AssertionError, "2 is lost");
  fresh().startGenerations(at(2, [1]), at(3, [2, 1]), new Map());
});

test("a copy that leaves has what it missed recorded, and the volume moves to a new generation with a bitmap since the old one", () => {
  const set = started();
  const copy = set.copies[1]!;
  const sent = set.beginMutation(8192, 4096, false); // unflushed on both
  assert.equal(sent.length, 2);
  const left = set.leave(copy, copy.attachment, "write failed", [{ offset: 0, length: 4096 }], []);
  assert.ok(left !== null);
  assert.equal(copy.state, "faulted");
  assert.equal(copy.port, undefined);
  assert.ok(copy.missing!.isSet(0) && copy.missing!.isSet(2), "the failed write and its unflushed write");
  assert.deepEqual(set.generations, { current: id(0x10), bitmap: id(2), history: [id(1)] });
  assert.equal(set.changedSinceCopy(id(2))!.bytes, 8192);
  assert.deepEqual(set.volumePatch([]).inSyncCopies, [id(0xc0)], "the copy that left is no longer listed");
  assert.ok(!set.stillInSync(sent[1]!), "it holds the write for the client no more");
  // Writes from now on are what it misses.
  set.beginMutation(MiB - 4096, 4096, true);
  assert.ok(copy.missing!.isSet(255));
});

test("a late completion of a dropped attachment changes nothing", () => {
  const set = started();
  const copy = set.copies[1]!;
  const attachment = copy.attachment;
  assert.ok(set.leave(copy, attachment, "first", [], []) !== null);
  const generations = set.generations;
  assert.equal(set.leave(copy, attachment, "late", [], []), null);
  assert.equal(set.generations, generations);
  assert.equal(copy.reason, "first");
});

test("a joining copy is listed among the in-sync copies the metadata records before it counts", () => {
  const set = started();
  const copy = set.copies[1]!;
  set.leave(copy, copy.attachment, "gone", [], []);
  const attachment = set.attach(copy, port(1));
  const bitmap = new RegionBitmap(MiB, 4096);
  set.beginResync(copy, bitmap, "incremental", "test");
  assert.deepEqual(set.volumePatch([]).inSyncCopies, [id(0xc0)]);
  assert.ok(set.beginJoin(copy, attachment));
  assert.deepEqual(set.volumePatch([]).inSyncCopies, [id(0xc0), id(0xc1)], "recorded while joining");
  assert.equal(set.inSync().length, 1, "not yet counted for acknowledgement");
  const joined = set.join(copy, attachment);
  assert.deepEqual(joined, { joined: true, everyCopyInSync: true });
  assert.equal(set.generations.bitmap, "", "every copy in sync: no bitmap anchored any more");
  assert.equal(set.changedSinceCopy(id(2)), undefined);
});

test("once fenced, always fenced: the first reason stays", () => {
  const set = started();
  assert.equal(set.fence("lease lost"), true);
  assert.equal(set.fence("later"), false);
  assert.equal(set.fenced, "lease lost");
});

test("after close nothing is in sync for I/O, and reads find no copy", () => {
  const set = started();
  set.retireAttachments();
  assert.equal(set.close().length, 2);
  assert.deepEqual(set.inSync(), []);
  assert.equal(set.readCopy(), undefined);
  assert.deepEqual(set.beginMutation(0, 4096, false), []);
});

test("a copy added takes an index never used before, and joins the set connecting, receiving nothing", () => {
  const set = started();
  set.remove(set.copies[1]!, "moved");
  const added = set.add("/disk2");
  assert.deepEqual(
    set.copies.map((c) => [c.index, c.location]),
    [
      [0, "/disk0"],
      [2, "/disk2"],
    ],
  );
  assert.equal(added.state, "connecting");
  assert.equal(added.port, undefined);
  assert.deepEqual(
    set.beginMutation(0, 4096, false).map((s) => s.copy.location),
    ["/disk0"],
  );
  assert.throws(() => set.add("/disk0"), AssertionError, "a location is a copy once");
  const attachment = set.attach(added, port(2));
  set.beginResync(added, new RegionBitmap(MiB, 4096), "full", "new copy");
  assert.equal(set.beginMutation(0, 4096, false).length, 2, "once resyncing, it takes every write");
  assert.ok(set.isAttached(added, attachment));
});

test("a copy removed that took writes leaves as a failing one does: what it may have missed is recorded, and the volume moves to a new generation", () => {
  const set = started();
  const copy = set.copies[1]!;
  set.beginMutation(8192, 4096, false); // unflushed on both
  const ticket = set.beginFlush([copy], [])[0]!; // a flush in flight to it
  set.beginMutation(MiB - 4096, 4096, false);
  const before = set.generations;
  const { port: closing, saveNeeded } = set.remove(copy, "removed");
  assert.ok(closing !== undefined && saveNeeded);
  assert.deepEqual(set.generations, { current: id(0x10), bitmap: before.current, history: [id(1)] });
  const since = set.changedSinceCopy(before.current)!;
  assert.ok(since.isSet(2) && since.isSet(255), "the flush in flight and the unflushed write both count");
  assert.equal(since.count, 2);
  assert.deepEqual(set.volumePatch([]).inSyncCopies, [id(0xc0)], "no longer counted in sync");
  assert.ok(!set.isMember(copy));
  // Work still holding its view changes nothing.
  assert.ok(!set.stillInSync(ticket));
  set.endFlush(ticket, false);
  assert.equal(set.leave(copy, ticket.attachment, "late failure", [], []), null);
  assert.deepEqual(set.generations.current, id(0x10));
  assert.throws(() => set.attach(copy, port(1)), AssertionError, "nothing is attached to a removed copy");
});

test("the only in-sync copy, or with none in sync the one the volume was last in sync on, is never removed", () => {
  const set = started();
  const [first, second] = set.copies as [CopyView, CopyView];
  assert.ok(!set.holdsLastData(first));
  set.leave(second, second.attachment, "gone", [], []);
  assert.ok(set.holdsLastData(first));
  assert.ok(!set.holdsLastData(second));
  assert.throws(() => set.remove(first, "no"), AssertionError);
  set.leave(first, first.attachment, "gone too", [], []);
  assert.ok(set.holdsLastData(first), "the volume can serve from it again when it returns");
  assert.ok(!set.holdsLastData(second));
  const { saveNeeded } = set.remove(second, "removed");
  assert.equal(saveNeeded, false, "a faulted copy changes nothing the in-sync copies record");
  assert.deepEqual(
    set.copies.map((c) => c.location),
    ["/disk0"],
  );
});
