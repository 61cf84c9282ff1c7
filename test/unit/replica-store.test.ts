// A replica's directory: a plain raw data file any tool can read, metadata that survives reopening,
// and the epoch fence of DESIGN.md rule 4 enforced and made durable at the storage level.

import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ReplicaStore, DATA_FILE, METADATA_FILE } from "../../src/replica/replica-store.js";
import { HavenError } from "../../src/core/errors.js";
import { tempDir } from "../helpers/server-process.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** Every test here takes well under a second; one still running after this bound is hung, not slow. */
const test = boundedTest(10_000);

test("a new replica is a sparse raw file of the volume's size, readable without Haven", async () => {
  const dir = tempDir("haven-replica-");
  try {
    const replica = await ReplicaStore.create(join(dir.path, "r1"), {
      sizeBytes: 1024 * 1024,
      volumeId: "00000000000000aa",
    });
    await replica.data.write(4096, Buffer.alloc(4096, 0x42));
    await replica.close();
    const raw = readFileSync(join(dir.path, "r1", DATA_FILE));
    assert.equal(raw.length, 1024 * 1024);
    assert.ok(raw.subarray(4096, 8192).every((byte) => byte === 0x42));
    const reopened = await ReplicaStore.open(join(dir.path, "r1"));
    assert.equal(reopened.metadata.volumeId, "00000000000000aa");
    assert.equal(reopened.metadata.cleanShutdown, true);
    await reopened.close();
    await assert.rejects(ReplicaStore.create(join(dir.path, "r1"), { sizeBytes: 4096 }), /already holds a replica/);
  } finally {
    dir.remove();
  }
});

test("replicas refuse writes from any epoch lower than the highest they have seen, across restarts", async () => {
  const dir = tempDir("haven-replica-");
  try {
    const path = join(dir.path, "r");
    const replica = await ReplicaStore.create(path, { sizeBytes: 65536 });
    await replica.admitEpoch(5);
    assert.equal(replica.metadata.cleanShutdown, false, "admitting a writer marks the copy dirty first");
    await replica.admitEpoch(5);
    await assert.rejects(
      replica.admitEpoch(4),
      (e: unknown) => e instanceof HavenError && /epoch 4 is stale/.test(e.message),
    );
    // A crash (no clean close): the fence must still hold when the copy comes back.
    await replica.abandon();
    const again = await ReplicaStore.open(path);
    assert.equal(again.metadata.highestEpoch, 5);
    assert.equal(again.metadata.cleanShutdown, false, "a crash is visible as a dirty shutdown");
    await assert.rejects(again.admitEpoch(3), /stale/);
    await again.admitEpoch(6);
    await again.close();
    assert.equal((await ReplicaStore.open(path)).metadata.highestEpoch, 6);
  } finally {
    dir.remove();
  }
});

test("a copy whose data file does not match its metadata, or whose metadata is gone, is not trusted", async () => {
  const dir = tempDir("haven-replica-");
  try {
    const path = join(dir.path, "r");
    await (await ReplicaStore.create(path, { sizeBytes: 65536 })).close();
    writeFileSync(join(path, DATA_FILE), Buffer.alloc(1000));
    await assert.rejects(ReplicaStore.open(path), /data file has 1000 bytes, metadata says 65536/);
    writeFileSync(join(path, METADATA_FILE), Buffer.alloc(200_000, 0xff));
    await assert.rejects(ReplicaStore.open(path), /no valid metadata record/);
    await assert.rejects(ReplicaStore.open(join(dir.path, "nothing")), /holds no replica/);
  } finally {
    dir.remove();
  }
});

test("metadata changes and epoch admissions racing each other are all kept, and a stale one is refused", async () => {
  const dir = tempDir("haven-replica-");
  try {
    const path = join(dir.path, "r");
    const replica = await ReplicaStore.create(path, { sizeBytes: 1 << 24 });
    const writes = [
      replica.update(5, { activityLog: [1, 2] }),
      replica.admitEpoch(6),
      replica.update(6, { changedSince: { "00000000000000aa": "" } }),
      replica.admitEpoch(6),
    ];
    await Promise.all(writes);
    await assert.rejects(replica.update(5, { activityLog: [] }), /epoch 5 is stale/);
    await replica.close();
    const back = (await ReplicaStore.open(path)).metadata;
    assert.deepEqual(back.activityLog, [1, 2], "the first patch survived the epoch bump queued after it");
    assert.deepEqual(back.changedSince, { "00000000000000aa": "" });
    assert.equal(back.highestEpoch, 6);
  } finally {
    dir.remove();
  }
});
