// Event retention against a real etcd: events older than the age limit go, then the oldest beyond the
// count limit; the newest are kept, events written while a trim runs survive it, and two trims at once
// drop the excess once, not twice.

import { after, before, beforeEach, describe, test } from "node:test";
import assert from "node:assert/strict";
import type { EtcdClient } from "../../src/cluster/etcd-client.js";
import { DEFAULT_EVENT_RETENTION, trimEvents } from "../../src/cluster/event-retention.js";
import { CLUSTER_PREFIX, eventSequence, keys, type EventRecord } from "../../src/cluster/schema.js";
import { haveEtcd, startTestEtcd, type TestEtcd } from "../helpers/etcd.js";

const NOW = Date.parse("2024-05-01T12:00:00.000Z");
const MINUTE_MS = 60_000;
const DAY_MS = 24 * 60 * MINUTE_MS;

const skip = !haveEtcd() && "etcd is not installed";

// The suite takes about 5 s; one still running after 60 s is hung.
describe("event retention against a real etcd", { skip, timeout: 60_000 }, () => {
  let etcd: TestEtcd;
  let client: EtcdClient;

  /** Writes one event per time (ms), at most 100 per transaction; resolves with their keys in order. */
  async function writeEvents(times: number[]): Promise<string[]> {
    const written = times.map((ms) => {
      const event: EventRecord = { time: new Date(ms).toISOString(), host: "node1", kind: "test", message: "m" };
      return { key: keys.event(eventSequence(ms)), value: JSON.stringify(event) };
    });
    for (let start = 0; start < written.length; start += 100) {
      const batch = written.slice(start, start + 100);
      await client.txn(
        [],
        batch.map(({ key, value }) => ({ type: "put", key, value })),
        [],
      );
    }
    return written.map(({ key }) => key).sort();
  }

  async function eventKeys(): Promise<string[]> {
    return (await client.getPrefix(keys.events())).map((kv) => kv.key);
  }

  /** `count` times a minute apart, the last `newestMinutesAgo` minutes before NOW. */
  function minutes(count: number, newestMinutesAgo = 0): number[] {
    return Array.from({ length: count }, (_, index) => NOW - (newestMinutesAgo + count - 1 - index) * MINUTE_MS);
  }

  before(async () => {
    etcd = await startTestEtcd();
    client = etcd.client();
  });
  beforeEach(async () => {
    await client.deletePrefix(CLUSTER_PREFIX);
  });
  after(async () => {
    await etcd?.stop();
  });

  test("the default keeps two weeks of events and at most 100 000", () => {
    assert.deepEqual(DEFAULT_EVENT_RETENTION, { maxAgeMs: 14 * DAY_MS, maxCount: 100_000 });
  });

  test("events older than the age limit are deleted; one exactly at the limit and newer ones are kept", async () => {
    const old = await writeEvents([NOW - 30 * DAY_MS, NOW - 15 * DAY_MS, NOW - 14 * DAY_MS - 1]);
    const kept = await writeEvents([NOW - 14 * DAY_MS, NOW - DAY_MS, NOW]);
    await client.put(keys.volume("v"), "not an event");
    assert.equal(await trimEvents(client, { maxAgeMs: 14 * DAY_MS, maxCount: 1_000 }, NOW), old.length);
    assert.deepEqual(await eventKeys(), kept);
    assert.notEqual(await client.get(keys.volume("v")), undefined, "keys outside the events are never touched");
  });

  test("beyond the count limit the oldest are deleted and exactly the newest maxCount kept", async () => {
    const all = await writeEvents(minutes(10));
    assert.equal(await trimEvents(client, { maxAgeMs: 14 * DAY_MS, maxCount: 4 }, NOW), 6);
    assert.deepEqual(await eventKeys(), all.slice(6));
  });

  test("both limits: the age cut first, then the count cut on what is left", async () => {
    const old = await writeEvents([NOW - 20 * DAY_MS, NOW - 16 * DAY_MS]);
    const recent = await writeEvents(minutes(5));
    assert.equal(await trimEvents(client, { maxAgeMs: 14 * DAY_MS, maxCount: 3 }, NOW), old.length + 2);
    assert.deepEqual(await eventKeys(), recent.slice(2));
    // Young but over the count, or old but within it: either limit alone is enough to delete.
    assert.equal(await trimEvents(client, { maxAgeMs: 2 * MINUTE_MS + 1, maxCount: 3 }, NOW), 0);
    assert.equal(await trimEvents(client, { maxAgeMs: 1 * MINUTE_MS, maxCount: 3 }, NOW), 1);
    assert.deepEqual(await eventKeys(), recent.slice(3));
  });

  test("nothing to delete: no events, or all young and within the count, changes nothing", async () => {
    assert.equal(await trimEvents(client, DEFAULT_EVENT_RETENTION, NOW), 0);
    const all = await writeEvents(minutes(3));
    const before = await client.getPrefix(keys.events());
    assert.equal(await trimEvents(client, { maxAgeMs: DAY_MS, maxCount: 3 }, NOW), 0);
    assert.deepEqual(await client.getPrefix(keys.events()), before);
    assert.deepEqual(await eventKeys(), all);
  });

  test("more events to drop than one read holds: they go a page at a time, and the newest are kept", async () => {
    const all = await writeEvents(minutes(2_600));
    assert.equal(await trimEvents(client, { maxAgeMs: 14 * DAY_MS, maxCount: 100 }, NOW), 2_500);
    assert.deepEqual(await eventKeys(), all.slice(2_500));
  });

  test("events written while a trim runs survive it", async () => {
    await writeEvents(minutes(300, 60));
    // Written during the trim, newer than every event it cuts: the count limit keeps room for them all.
    const writes = Array.from({ length: 40 }, (_, index) => writeEvents([NOW - 30 * MINUTE_MS + index * 1_000]));
    const [deleted, ...written] = await Promise.all([
      trimEvents(client, { maxAgeMs: 4 * 60 * MINUTE_MS, maxCount: 50 }, NOW),
      ...writes,
    ]);
    const left = await eventKeys();
    for (const [key] of written) assert.ok(left.includes(key!), `${key} survived`);
    assert.ok(left.length >= 50, `${left.length} events left`);
    assert.equal(left.length, 340 - deleted);
  });

  test("two trims at once drop the excess once: exactly maxCount events are left", async () => {
    const all = await writeEvents(minutes(300));
    const deleted = await Promise.all([
      trimEvents(client, { maxAgeMs: DAY_MS, maxCount: 100 }, NOW),
      trimEvents(client, { maxAgeMs: DAY_MS, maxCount: 100 }, NOW),
    ]);
    assert.equal(deleted[0] + deleted[1], 200);
    assert.deepEqual(await eventKeys(), all.slice(200));
  });

  test("a policy that is not whole numbers of 0 or more is refused", async () => {
    await assert.rejects(trimEvents(client, { maxAgeMs: -1, maxCount: 10 }, NOW), /maxAgeMs must be a whole number/);
    await assert.rejects(trimEvents(client, { maxAgeMs: 1, maxCount: 1.5 }, NOW), /maxCount must be a whole number/);
  });
});
