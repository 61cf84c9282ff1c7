// Growing a volume, the pure parts and one copy on disk: the primary restarts its engine only when it
// serves less than the spec says; a resize that would shrink, changes nothing, or overfills a copy's disk
// is refused with the reason; a copy's bitmaps keep exactly their regions at the new size; a copy grows
// data then metadata, and a grow cut short between the two opens as the copy it was.

import assert from "node:assert/strict";
import { truncateSync, statSync } from "node:fs";
import { join } from "node:path";
import { decide, type HostView, type VolumeView } from "../../src/agent/decide.js";
import type { HostRecord, VolumeSpec } from "../../src/cluster/schema.js";
import { resizeRefusal } from "../../src/cluster/volume-resize.js";
import { hasCode } from "../../src/core/errors.js";
import { ALL_REGIONS, decodeBitmap, encodeBitmap } from "../../src/replica/bitmap-codec.js";
import { grownBitmap, grownMetadata, mustGrow } from "../../src/replica/grow.js";
import { RegionBitmap } from "../../src/replica/region-bitmap.js";
import { DATA_FILE, ReplicaStore } from "../../src/replica/replica-store.js";
import { boundedTest } from "../helpers/bounded-test.js";
import { tempDir } from "../helpers/server-process.js";

const test = boundedTest(10_000);
const MiB = 1024 * 1024;

const spec: VolumeSpec = {
  name: "v",
  sizeBytes: 64 * MiB,
  replicas: [
    { host: "a", disk: "d0" },
    { host: "b", disk: "d0" },
  ],
  createdAt: "2026-12-05T00:00:00Z",
};

const volume = (sizeBytes: number): VolumeView => ({
  spec: { ...spec, sizeBytes },
  primary: { host: "a", epoch: 4, since: "2026-12-05T00:00:00Z", reason: "created" },
  replicas: new Map(),
});

const host = (served: number | undefined): HostView => ({
  me: "a",
  alive: new Set(["a", "b"]),
  holdsLease: true,
  running: new Set(served === undefined ? [] : ["v"]),
  now: 0,
  primaryDeadSince: new Map(),
  failoverGraceMs: 500,
  ...(served !== undefined && { runningSizeBytes: new Map([["v", served]]) }),
});

test("the primary restarts its engine at the spec's size when it serves less, and only then", () => {
  assert.deepEqual(decide(volume(96 * MiB), host(64 * MiB)), {
    kind: "grow",
    epoch: 4,
    fromBytes: 64 * MiB,
    toBytes: 96 * MiB,
  });
  assert.deepEqual(decide(volume(64 * MiB), host(64 * MiB)), { kind: "none" });
  // An engine larger than the spec (never written by Haven) is not shrunk by a restart.
  assert.deepEqual(decide(volume(32 * MiB), host(64 * MiB)), { kind: "none" });
  // Not running: a plain serve, whose engine grows the copies as it starts.
  assert.deepEqual(decide(volume(96 * MiB), host(undefined)), { kind: "serve", epoch: 4 });
  // A standby never grows anything itself.
  assert.equal(decide(volume(96 * MiB), { ...host(undefined), me: "b" }).kind, "none");
});

const hostRecord = (name: string, capacityBytes: number, usedBytes = 0): HostRecord => ({
  name,
  address: "127.0.0.1",
  apiPort: 1,
  replicationPort: 2,
  nbdPort: 3,
  disks: [{ name: "d0", capacityBytes, usedBytes }],
  startedAt: "2026-12-05T00:00:00Z",
});

test("a resize that would shrink the volume is refused, and says how to move to a smaller one", () => {
  const why = resizeRefusal(spec, 32 * MiB, [], [spec]);
  assert.match(why!, /never shrinks .*destroy the data past the new end/);
  assert.match(why!, /haven volume create NAME --size 33554432/);
});

test("a resize to the same size is refused as nothing to do", () => {
  assert.match(resizeRefusal(spec, 64 * MiB, [], [spec])!, /is 64\.0 MiB already: nothing to do/);
});

test("a resize is refused when a copy's disk lacks room for the growth, counting what other volumes were promised", () => {
  const other: VolumeSpec = { ...spec, name: "w", sizeBytes: 100 * MiB, replicas: [{ host: "b", disk: "d0" }] };
  const hosts = [hostRecord("a", 1024 * MiB), hostRecord("b", 200 * MiB)];
  assert.equal(resizeRefusal(spec, 96 * MiB, hosts, [spec, other]), undefined);
  const why = resizeRefusal(spec, 160 * MiB, hosts, [spec, other]);
  assert.match(why!, /cannot grow by 96\.0 MiB: b\/d0 has 36\.0 MiB free/);
  // A host without a record (down, never seen) does not block: its copy grows before it rejoins.
  assert.equal(resizeRefusal(spec, 160 * MiB, [hostRecord("a", 1024 * MiB)], [spec, other]), undefined);
});

test("a copy never shrinks, and growing to its own size is no change", () => {
  assert.equal(mustGrow({ sizeBytes: 64 * MiB }, 96 * MiB), true);
  assert.equal(mustGrow({ sizeBytes: 64 * MiB }, 64 * MiB), false);
  assert.throws(
    () => mustGrow({ sizeBytes: 64 * MiB }, 32 * MiB),
    (error) => hasCode(error, "HAVEN_ERR_INVALID_REQUEST"),
  );
});

test("a grown bitmap keeps exactly its regions, and 'all' and empty stay as they are", () => {
  const region = 64 * 1024;
  const before = new RegionBitmap(64 * MiB, region);
  before.markRange(0, 4096);
  before.markRange(63 * MiB, MiB); // the last regions of the old size
  const encoded = encodeBitmap(before, 10 * 1024);
  const after = decodeBitmap(grownBitmap(encoded, 64 * MiB, 96 * MiB, region), 96 * MiB, region);
  assert.deepEqual([...after.runs()], [...before.runs()]);
  assert.equal(after.overlaps(64 * MiB, 32 * MiB), false);
  assert.equal(grownBitmap("", 64 * MiB, 96 * MiB, region), "");
  assert.equal(grownBitmap(ALL_REGIONS, 64 * MiB, 96 * MiB, region), ALL_REGIONS);
});

test("grown metadata re-sizes every change bitmap and a resync's remaining regions, nothing else", () => {
  const region = 64 * 1024;
  const bitmap = new RegionBitmap(64 * MiB, region);
  bitmap.markRange(MiB, MiB);
  const encoded = encodeBitmap(bitmap, 10 * 1024);
  const metadata = {
    sizeBytes: 64 * MiB,
    regionBytes: region,
    changedSince: { "0123456789abcdef": encoded },
    resync: { validFor: "0123456789abcdef", remaining: encoded },
    activityLog: [3, 7],
  };
  const grown = grownMetadata(metadata, 96 * MiB);
  assert.equal(grown.sizeBytes, 96 * MiB);
  assert.deepEqual(grown.activityLog, [3, 7]);
  for (const text of [grown.changedSince["0123456789abcdef"]!, grown.resync!.remaining])
    assert.deepEqual([...decodeBitmap(text, 96 * MiB, region).runs()], [{ offset: MiB, length: MiB }]);
});

test("a copy grows its data file, then its metadata; a stale writer cannot grow it", async () => {
  const dir = tempDir("haven-grow-");
  try {
    const store = await ReplicaStore.create(dir.path, { sizeBytes: 64 * MiB });
    await store.admitEpoch(5);
    await store.data.write(0, Buffer.alloc(4096, 0x5a));
    await assert.rejects(store.grow(4, 96 * MiB), (error) => hasCode(error, "HAVEN_ERR_STALE_EPOCH"));
    assert.equal((await store.grow(5, 96 * MiB)).sizeBytes, 96 * MiB);
    assert.equal(store.data.size, 96 * MiB);
    await store.data.write(95 * MiB, Buffer.alloc(4096, 0x77));
    await store.close();
    const reopened = await ReplicaStore.open(dir.path);
    assert.equal(reopened.metadata.sizeBytes, 96 * MiB);
    const head = Buffer.alloc(4096);
    await reopened.data.read(0, head);
    assert.ok(head.every((byte) => byte === 0x5a));
    await assert.rejects(reopened.grow(5, 32 * MiB), (error) => hasCode(error, "HAVEN_ERR_INVALID_REQUEST"));
    await reopened.close();
  } finally {
    dir.remove();
  }
});

test("a grow cut short after the data file and before the metadata opens as the copy it was", async () => {
  const dir = tempDir("haven-grow-");
  try {
    const store = await ReplicaStore.create(dir.path, { sizeBytes: 64 * MiB });
    await store.data.write(0, Buffer.alloc(4096, 0x5a));
    await store.close();
    // What a crash between the two steps leaves: the file extended, the metadata still at the old size.
    truncateSync(join(dir.path, DATA_FILE), 96 * MiB);
    const reopened = await ReplicaStore.open(dir.path);
    assert.equal(reopened.metadata.sizeBytes, 64 * MiB);
    assert.equal(statSync(join(dir.path, DATA_FILE)).size, 64 * MiB);
    const head = Buffer.alloc(4096);
    await reopened.data.read(0, head);
    assert.ok(head.every((byte) => byte === 0x5a));
    // And it grows again from there.
    assert.equal((await reopened.grow(1, 96 * MiB)).sizeBytes, 96 * MiB);
    await reopened.close();
  } finally {
    dir.remove();
  }
});
