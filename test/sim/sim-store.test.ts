// The simulated cluster store (sim-store.ts): etcd's semantics as EtcdClient shows them (revisions,
// compare-and-swap, transactions, prefix conditions, leases, watches), each fault the control-plane
// simulation injects, and determinism: the same seed gives the same trace. All on virtual time, so
// every test ends in milliseconds of real time; sim-store-vs-etcd.test.ts checks the same semantics
// against a real etcd.

import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { HavenError } from "../../src/core/errors.js";
import type { WatchEvent } from "../../src/cluster/etcd-client.js";
import { failsWith } from "../helpers/errors.js";
import { Rng } from "./rng.js";
import { observe, settle, SimClock, SimDriver } from "./sim-clock.js";
import { SimStore, type SimStoreClient, type SimStoreOptions } from "./sim-store.js";

/** Every test here runs on virtual time: a second of real time means it hangs. */
const TEST_TIMEOUT_MS = 10_000;
const timeout = { timeout: TEST_TIMEOUT_MS };

function world(seed = 1, options: Partial<Omit<SimStoreOptions, "clock" | "rng">> = {}) {
  const clock = new SimClock();
  const driver = new SimDriver(clock);
  const store = new SimStore({ clock, rng: new Rng(seed), ...options });
  return {
    clock,
    driver,
    store,
    /** Runs the world until `promise` settles; its value, or its error thrown. */
    async run<T>(promise: Promise<T>, maxMs = 60_000): Promise<T> {
      const outcome = await driver.drive(promise, maxMs);
      if (outcome.state === "fulfilled") return outcome.value;
      if (outcome.state === "rejected") throw outcome.error;
      throw new Error(`still pending after ${maxMs} ms of virtual time`);
    },
    /** Runs the world until `promise` settles, which must be a failure; the error. */
    async failure(promise: Promise<unknown>, maxMs = 60_000): Promise<HavenError> {
      const outcome = await driver.drive(promise, maxMs);
      assert.equal(outcome.state, "rejected", `expected a failure, got ${JSON.stringify(outcome)}`);
      const error = (outcome as { error: unknown }).error;
      assert.ok(error instanceof HavenError, String(error));
      return error;
    },
  };
}

/** Collects a watch's events and how it ended. */
function recorder() {
  const events: WatchEvent[] = [];
  const closes: (HavenError | undefined)[] = [];
  return {
    events,
    closes,
    onEvent: (event: WatchEvent) => void events.push(event),
    onClose: (reason: HavenError | undefined) => void closes.push(reason),
  };
}

const FIXED_LATENCY = { latencyMs: { min: 5, max: 5 } } as const;

describe("sim store: etcd's key-value semantics", () => {
  test("a put is read back with its revisions; version counts writes since creation", timeout, async () => {
    const w = world();
    const a = w.store.client("a");
    assert.equal(w.store.revision, 1, "an empty store is at revision 1, as etcd");
    const first = await w.run(a.put("kv/volume", "10 GiB"));
    const second = await w.run(a.put("kv/volume", "20 GiB"));
    assert.deepEqual([first.revision, second.revision], [2, 3]);
    assert.deepEqual(await w.run(a.get("kv/volume")), {
      key: "kv/volume",
      value: "20 GiB",
      createRevision: 2,
      modRevision: 3,
      version: 2,
      lease: undefined,
    });
    assert.equal(await w.run(a.get("kv/missing")), undefined);
    assert.equal(await w.run(a.delete("kv/volume")), true);
    assert.equal(await w.run(a.delete("kv/volume")), false);
    assert.equal(w.store.revision, 4, "deleting nothing changes no revision");
    await w.run(a.put("kv/volume", "again"));
    assert.deepEqual(
      { ...w.store.readKey("kv/volume") },
      { key: "kv/volume", value: "again", createRevision: 5, modRevision: 5, version: 1, lease: undefined },
    );
  });

  test(
    "keys are in UTF-8 byte order; a page reads the first keys, keys only, with the total count",
    timeout,
    async () => {
      const w = world();
      const a = w.store.client("a");
      // UTF-16 puts U+10000 (a surrogate pair) before U+FFFF; UTF-8, and so etcd, after.
      for (const key of ["px/b", "px/a", "px/\u{10000}", "px/\uffff", "px0", "p", "px/\u00ff"]) {
        await w.run(a.put(key, `value of ${key}`));
      }
      assert.deepEqual(
        (await w.run(a.getPrefix("px/"))).map((kv) => kv.key),
        ["px/a", "px/b", "px/\u00ff", "px/\uffff", "px/\u{10000}"],
      );
      const page = await w.run(a.getPrefixPage("px/", { limit: 2, keysOnly: true }));
      assert.deepEqual(
        page.kvs.map((kv) => [kv.key, kv.value]),
        [
          ["px/a", ""],
          ["px/b", ""],
        ],
      );
      assert.equal(page.count, 5);
      assert.equal(page.revision, w.store.revision);
      assert.equal((await w.run(a.getPrefix(""))).length, 7, "the empty prefix reads every key");
      assert.deepEqual(await w.run(a.getPrefixPage("none/", { limit: 1 })), {
        kvs: [],
        count: 0,
        revision: w.store.revision,
      });
    },
  );

  test("deleteRange removes [from, to) and deletePrefix only the prefix, each in one revision", timeout, async () => {
    const w = world();
    const a = w.store.client("a");
    for (const key of ["dr/1", "dr/2", "dr/2a", "dr/3", "dr0"]) await w.run(a.put(key, key));
    const before = w.store.revision;
    assert.equal(await w.run(a.deleteRange("dr/", "dr/3")), 3);
    assert.equal(w.store.revision, before + 1);
    assert.deepEqual(
      w.store.readPrefix("dr").map((kv) => kv.key),
      ["dr/3", "dr0"],
    );
    assert.equal(await w.run(a.deletePrefix("dr/")), 1);
    assert.equal(await w.run(a.deleteRange("dr/", "dr/3")), 0);
    assert.equal(w.store.revision, before + 2);
  });

  test("compare-and-swap: of two promoters that read the same modRevision, exactly one wins", timeout, async () => {
    const w = world(7);
    const [a, b] = [w.store.client("a"), w.store.client("b")];
    await w.run(a.put("vol/primary", "a epoch 1"));
    const seen = w.store.readKey("vol/primary")!.modRevision;
    const race = [
      a.putIf("vol/primary", "a epoch 2", { expectModRevision: seen }),
      b.putIf("vol/primary", "b epoch 2", { expectModRevision: seen }),
    ];
    const won = await w.run(Promise.all(race));
    assert.equal(won.filter(Boolean).length, 1);
    assert.equal(w.store.readKey("vol/primary")!.value, won[0] ? "a epoch 2" : "b epoch 2");
    assert.equal(await w.run(a.putIf("vol/new", "x", { expectModRevision: 0 })), true, "0: must not exist");
    assert.equal(await w.run(b.putIf("vol/new", "y", { expectModRevision: 0 })), false);
    assert.equal(await w.run(a.putIf("vol/absent", "x", { expectValue: "" })), false, "no value matches a missing key");
  });

  test("a transaction runs one branch in order, its reads see its writes, all at one revision", timeout, async () => {
    const w = world();
    const a = w.store.client("a");
    await w.run(a.put("txn/epoch", "7"));
    const lost = await w.run(
      a.txn(
        [{ key: "txn/epoch", target: "value", result: "equal", value: "6" }],
        [{ type: "put", key: "txn/epoch", value: "8" }],
        [
          { type: "get", key: "txn/epoch" },
          { type: "put", key: "txn/lost", value: "yes" },
          { type: "put", key: "txn/other", value: "too" },
          { type: "getPrefix", prefix: "txn/" },
        ],
      ),
    );
    assert.equal(lost.succeeded, false);
    assert.equal(lost.revision, 3, "two puts, one revision");
    const [read, , , prefix] = lost.results;
    assert.equal(read?.type === "get" && read.kvs[0]?.value, "7");
    assert.deepEqual(prefix?.type === "get" && prefix.kvs.map((kv) => [kv.key, kv.modRevision]), [
      ["txn/epoch", 2],
      ["txn/lost", 3],
      ["txn/other", 3],
    ]);
    const won = await w.run(
      a.txn(
        [{ key: "txn/epoch", target: "version", result: "equal", value: 1 }],
        [
          { type: "put", key: "txn/epoch", value: "8" },
          { type: "deletePrefix", prefix: "txn/lost" },
        ],
        [],
      ),
    );
    assert.deepEqual(won, { succeeded: true, revision: 4, results: [{ type: "put" }, { type: "delete", deleted: 1 }] });
    const readOnly = await w.run(a.txn([], [{ type: "get", key: "txn/epoch" }], []));
    assert.equal(readOnly.revision, 4, "a transaction that writes nothing changes no revision");
  });

  test("a prefix condition holds only for every key under it; an empty prefix is a missing key", timeout, async () => {
    const w = world();
    const a = w.store.client("a");
    const first = await w.run(a.put("cp/a", "1"));
    await w.run(a.put("cp/b", "2"));
    const unchanged = { prefix: "cp/", target: "modRevision", result: "less", value: w.store.revision + 1 } as const;
    const marker = { type: "put", key: "cp/marker", value: "x" } as const;
    assert.equal((await w.run(a.txn([unchanged], [marker], []))).succeeded, true);
    await w.run(a.put("cp0", "a neighbour does not count"));
    assert.equal((await w.run(a.txn([unchanged], [marker], []))).succeeded, false, "the marker changed cp/");
    const created = { prefix: "cp/", target: "createRevision", result: "greater", value: first.revision - 1 } as const;
    assert.equal((await w.run(a.txn([created], [], []))).succeeded, true);
    const empty = { prefix: "cp/none/", target: "modRevision", result: "equal", value: 0 } as const;
    assert.equal((await w.run(a.txn([empty], [], []))).succeeded, true);
    const anyValue = { prefix: "cp/none/", target: "value", result: "notEqual", value: "x" } as const;
    assert.equal((await w.run(a.txn([anyValue], [], []))).succeeded, false);
    // Deletions leave no trace in a prefix's modRevision condition.
    const seen = w.store.revision;
    await w.run(a.delete("cp/a"));
    const stillUnchanged = { prefix: "cp/", target: "modRevision", result: "less", value: seen + 1 } as const;
    assert.equal((await w.run(a.txn([stillUnchanged], [], []))).succeeded, true);
  });

  test(
    "etcd's refusals: HAVEN_ERR_IO for a bad transaction or an empty key, NOT_FOUND for an unknown lease",
    timeout,
    async () => {
      const w = world();
      const a = w.store.client("a");
      const duplicate = /refused transaction on "txn\/dup".*: etcdserver: duplicate key given in txn request/;
      const dupPuts = [
        { type: "put", key: "txn/dup", value: "1" },
        { type: "put", key: "txn/dup", value: "2" },
      ] as const;
      assert.match((await w.failure(a.txn([], [...dupPuts], []))).message, duplicate);
      const putAndDelete = [
        { type: "deletePrefix", prefix: "txn/" },
        { type: "put", key: "txn/dup", value: "1" },
      ] as const;
      const refused = await w.failure(a.txn([], [], [...putAndDelete]));
      assert.equal(refused.code, "HAVEN_ERR_IO");
      assert.match(refused.message, /duplicate key/, "a failure branch is checked too, even when it would not run");
      assert.match((await w.failure(a.get(""))).message, /refused get "": etcdserver: key is not provided/);
      const unknown = await w.failure(a.put("k", "v", { lease: "1234567890123456789" }));
      assert.equal(unknown.code, "HAVEN_ERR_NOT_FOUND");
      assert.match(unknown.message, /requested lease not found/);
      await assert.rejects(
        w.run(a.revokeLease("1234567890123456789")),
        failsWith("HAVEN_ERR_NOT_FOUND", /lease not found/),
      );
      const leasedPut = { type: "put", key: "k", value: "v", lease: "1234567890123456789" } as const;
      const neverRuns = await w.run(
        a.txn([{ key: "k", target: "version", result: "equal", value: 5 }], [leasedPut], []),
      );
      assert.equal(neverRuns.succeeded, false, "only the branch that runs has its leases checked");
      assert.equal(w.store.revision, 1, "nothing refused changed anything");
    },
  );

  test("EtcdClient's checks before sending are HAVEN_ERR_INVALID_REQUEST, and nothing is sent", timeout, async () => {
    const w = world();
    const a = w.store.client("a");
    await assert.rejects(a.getPrefixPage("p/", { limit: 0 }), failsWith("HAVEN_ERR_INVALID_REQUEST", /limit 0/));
    await assert.rejects(a.deleteRange("b", "a"), failsWith("HAVEN_ERR_INVALID_REQUEST", /must start/));
    await assert.rejects(a.deleteRange("", "a"), failsWith("HAVEN_ERR_INVALID_REQUEST", /must start/));
    await assert.rejects(a.keepAliveOnce("0"), failsWith("HAVEN_ERR_INVALID_REQUEST", /not an etcd lease id/));
    await assert.rejects(a.grantLease(0), failsWith("HAVEN_ERR_INVALID_REQUEST", /TTL 0/));
    await assert.rejects(
      a.txn([{ key: "k", target: "version", result: "equal", value: -1 }], [], []),
      failsWith("HAVEN_ERR_INVALID_REQUEST", /compare version of "k" with -1/),
    );
    assert.throws(
      () => a.watchPrefix("p/", { startRevision: 0 }, () => {}),
      failsWith("HAVEN_ERR_INVALID_REQUEST", /start revision 0/),
    );
    assert.equal(w.store.trace.length, 0);
  });

  test("every call completes on the virtual clock after a delay, never in the turn that made it", timeout, async () => {
    const w = world(3, FIXED_LATENCY);
    const a = w.store.client("a");
    const put = observe(a.put("k", "v"));
    await settle();
    assert.equal(put.outcome.state, "pending");
    assert.equal(w.store.revision, 1, "not applied before the request reached the store");
    await w.driver.runFor(5);
    assert.equal(w.store.revision, 2, "applied when it arrived, one latency later");
    assert.equal(put.outcome.state, "pending");
    await w.driver.runFor(5);
    assert.deepEqual(put.outcome, { state: "fulfilled", value: { revision: 2 } });
    assert.equal(w.clock.now(), 10);
  });
});

describe("sim store: leases", () => {
  test(
    "a lease kept alive outlives its TTL; left alone it expires TTL after the last keepalive applied, deleting its keys",
    timeout,
    async () => {
      const w = world(1, FIXED_LATENCY);
      const a = w.store.client("a");
      const lease = await w.run(a.grantLease(1));
      assert.equal(lease.ttlSeconds, 2, "etcd's minimum TTL");
      assert.match(lease.id, /^\d{16,19}$/, "an int64 id beyond 2^53, as etcd's");
      await w.run(a.put("lease/a", "alive", { lease: lease.id }));
      await w.run(a.put("lease/b", "alive", { lease: lease.id }));
      await w.run(a.put("lease/kept", "attached, then overwritten", { lease: lease.id }));
      await w.run(a.put("lease/kept", "no lease now"));
      const seen = recorder();
      const watch = a.watchPrefix("lease/", { onClose: seen.onClose }, seen.onEvent);
      await w.run(watch.ready);
      for (let round = 0; round < 10; round++) {
        assert.equal(await w.run(a.keepAliveOnce(lease.id)), 2, "a keepalive answers the granted TTL");
        await w.driver.runFor(500);
      }
      assert.equal(seen.events.length, 0, "nothing expired while kept alive");
      assert.deepEqual(w.store.state().leases[0]?.keys, ["lease/a", "lease/b"]);
      const lastKeepAlive = w.store.applied.filter((op) => op.operation.type === "keepAlive").at(-1)!;
      await w.driver.runUntil(() => seen.events.length > 0, 10_000);
      const expiry = w.store.applied.find((op) => op.operation.type === "expireLease")!;
      assert.equal(expiry.atMs, lastKeepAlive.atMs + 2_000);
      assert.deepEqual(
        seen.events.map((event) => [event.type, event.key, event.modRevision]),
        [
          ["DELETE", "lease/a", expiry.revision],
          ["DELETE", "lease/b", expiry.revision],
        ],
      );
      assert.equal(w.store.readKey("lease/kept")?.value, "no lease now");
      assert.equal(await w.run(a.keepAliveOnce(lease.id)), 0, "an expired lease cannot be renewed");
      assert.equal(await w.run(a.leaseTimeToLive(lease.id)), undefined);
      await assert.rejects(
        w.run(a.put("lease/a", "again", { lease: lease.id })),
        failsWith("HAVEN_ERR_NOT_FOUND", /lease/),
      );
      watch.cancel();
    },
  );

  test(
    "revoking a lease deletes its keys at once, in one revision; a revoke of nothing changes no revision",
    timeout,
    async () => {
      const w = world();
      const a = w.store.client("a");
      const lease = await w.run(a.grantLease(60));
      assert.equal(await w.run(a.putIf("revoke/primary", "a", { expectModRevision: 0, lease: lease.id })), true);
      await w.run(a.put("revoke/other", "x", { lease: lease.id }));
      const before = w.store.revision;
      assert.deepEqual(await w.run(a.leaseTimeToLive(lease.id)), {
        ttlSeconds: 59,
        grantedTtlSeconds: 60,
        keys: ["revoke/other", "revoke/primary"],
      });
      await w.run(a.revokeLease(lease.id));
      assert.equal(w.store.revision, before + 1);
      assert.deepEqual(w.store.readPrefix("revoke/"), []);
      const empty = await w.run(a.grantLease(60));
      await w.run(a.revokeLease(empty.id));
      assert.equal(w.store.revision, before + 1);
      await assert.rejects(w.run(a.revokeLease(empty.id)), failsWith("HAVEN_ERR_NOT_FOUND", /lease not found/));
    },
  );
});

describe("sim store: watches", () => {
  test(
    "a watch sees every change under its prefix in revision order, a transaction's together, and replays from a start revision",
    timeout,
    async () => {
      const w = world(11);
      const [a, b] = [w.store.client("a"), w.store.client("b")];
      const seen = recorder();
      const watch = b.watchPrefix("w/", { onClose: seen.onClose }, seen.onEvent);
      await w.run(watch.ready);
      assert.equal(watch.revision, w.store.revision, "ready at the store's revision");
      // Writes from two hosts at once, with random latencies: the watch still sees the store's order.
      const writes: Promise<unknown>[] = [];
      for (let index = 0; index < 20; index++) {
        const client = index % 2 === 0 ? a : b;
        writes.push(client.put(`w/${index % 5}`, `v${index}`));
        if (index % 7 === 3) writes.push(client.delete(`w/${index % 5}`));
      }
      writes.push(a.put("w0", "outside the prefix"));
      writes.push(
        a.txn(
          [],
          [
            { type: "put", key: "w/t1", value: "1" },
            { type: "put", key: "w/t2", value: "2" },
          ],
          [],
        ),
      );
      await w.run(Promise.all(writes));
      await w.driver.runFor(100);
      const expected = w.store.applied.flatMap((op) => op.events).filter((event) => event.key.startsWith("w/"));
      assert.deepEqual(seen.events, expected);
      assert.equal(watch.revision, w.store.revision);
      const start = expected[10]!.modRevision;
      const replay = recorder();
      const again = a.watchPrefix("w/", { startRevision: start }, replay.onEvent);
      await w.run(again.ready);
      await w.driver.runFor(100);
      assert.deepEqual(
        replay.events,
        expected.filter((event) => event.modRevision >= start),
      );
      watch.cancel();
      watch.cancel();
      assert.deepEqual(seen.closes, [undefined], "cancel ends it quietly, once");
      await w.run(a.put("w/after", "not seen"));
      await w.driver.runFor(100);
      assert.equal(seen.events.length, expected.length);
      again.cancel();
    },
  );

  test("a watch from a compacted revision is canceled with HAVEN_ERR_IO after it was created", timeout, async () => {
    const w = world();
    const a = w.store.client("a");
    for (let index = 0; index < 5; index++) await w.run(a.put("c/k", String(index)));
    w.store.compact(4);
    const seen = recorder();
    const watch = a.watchPrefix("c/", { startRevision: 2, onClose: seen.onClose }, seen.onEvent);
    await w.run(watch.ready);
    await w.driver.runFor(100);
    assert.equal(seen.closes.length, 1);
    assert.equal(seen.closes[0]?.code, "HAVEN_ERR_IO");
    assert.match(seen.closes[0]!.message, /revision 2 is compacted \(the oldest kept is 4\)/);
    const fresh = recorder();
    const resumed = a.watchPrefix("c/", { startRevision: 4 }, fresh.onEvent);
    await w.run(resumed.ready);
    await w.driver.runFor(100);
    assert.deepEqual(
      fresh.events.map((event) => event.modRevision),
      [4, 5, 6],
    );
    resumed.cancel();
    const ahead = recorder();
    const future = a.watchPrefix("c/", { startRevision: w.store.revision + 2 }, ahead.onEvent);
    await w.run(future.ready);
    await w.run(a.put("c/k", "not yet"));
    await w.run(a.put("c/k", "from here"));
    await w.driver.runFor(100);
    assert.deepEqual(
      ahead.events.map((event) => event.type === "PUT" && event.value),
      ["from here"],
      "a start revision ahead of the store's holds back the changes before it",
    );
    future.cancel();
  });
});

describe("sim store: faults", () => {
  test(
    "a partitioned host's calls fail with HAVEN_ERR_UNAVAILABLE unapplied; other hosts carry on; heal restores it",
    timeout,
    async () => {
      const w = world(5);
      const a = w.store.client("a", { requestTimeoutMs: 2_000, connectTimeoutMs: 500 });
      const b = w.store.client("b");
      await w.run(a.put("p/a", "before"));
      w.store.partition("a");
      const startedAt = w.clock.now();
      const error = await w.failure(a.put("p/a", "during"));
      assert.equal(error.code, "HAVEN_ERR_UNAVAILABLE");
      assert.match(error.message, /unreachable for put "p\/a": .*no connection within 500 ms/);
      assert.equal(w.clock.now() - startedAt, 500, "after the connect timeout");
      assert.equal(w.store.readKey("p/a")?.value, "before", "not applied");
      assert.equal((await w.failure(a.get("p/a"))).code, "HAVEN_ERR_UNAVAILABLE");
      await w.run(b.put("p/b", "b is fine"));
      w.store.heal("a");
      await w.run(a.put("p/a", "after"));
      assert.equal(w.store.readKey("p/a")?.value, "after");
      assert.equal(w.store.inFlight, 0);
    },
  );

  test(
    "a partition cuts a write in flight: lost on the way it is not applied, after arriving it is, and the caller times out either way",
    timeout,
    async () => {
      for (const cutAtMs of [2, 7]) {
        const w = world(5, FIXED_LATENCY);
        const a = w.store.client("a", { requestTimeoutMs: 1_000 });
        const put = observe(a.put("k", "v"));
        await w.driver.runFor(cutAtMs);
        w.store.partition("a");
        await w.driver.runFor(1_000);
        assert.equal(put.outcome.state, "rejected");
        const error = (put.outcome as { error: HavenError }).error;
        assert.equal(error.code, "HAVEN_ERR_UNAVAILABLE");
        assert.match(error.message, /failed during put "k" \(no answer within 1000 ms\); the write may or may not/);
        assert.equal(w.store.readKey("k")?.value, cutAtMs < 5 ? undefined : "v", `partition at ${cutAtMs} ms`);
      }
    },
  );

  test(
    "a partition breaks the host's watches with HAVEN_ERR_UNAVAILABLE; rewatched from revision + 1 they miss nothing",
    timeout,
    async () => {
      const w = world(9);
      const [a, b] = [w.store.client("a"), w.store.client("b")];
      const seen = recorder();
      const watch = a.watchPrefix("v/", { onClose: seen.onClose }, seen.onEvent);
      await w.run(watch.ready);
      await w.run(b.put("v/1", "seen"));
      await w.driver.runFor(50);
      w.store.partition("a");
      await w.run(b.put("v/2", "missed while cut off"));
      await w.driver.runFor(50);
      assert.equal(seen.closes.length, 1);
      assert.equal(seen.closes[0]?.code, "HAVEN_ERR_UNAVAILABLE");
      assert.match(seen.closes[0]!.message, /the watch on prefix "v\/" from etcd at .* broke off/);
      assert.deepEqual(
        seen.events.map((event) => event.key),
        ["v/1"],
      );
      const cutOff = a.watchPrefix("v/", {}, () => {});
      assert.equal((await w.failure(cutOff.ready)).code, "HAVEN_ERR_UNAVAILABLE", "no new watch while partitioned");
      w.store.heal("a");
      const resumed = a.watchPrefix("v/", { startRevision: watch.revision + 1 }, seen.onEvent);
      await w.run(resumed.ready);
      await w.driver.runFor(50);
      assert.deepEqual(
        seen.events.map((event) => event.key),
        ["v/1", "v/2"],
      );
      resumed.cancel();
      w.store.breakWatches("a");
      assert.equal(seen.closes.length, 1, "a canceled watch does not break");
    },
  );

  test(
    "a lost answer: the write was applied, the caller hears HAVEN_ERR_UNAVAILABLE, outcome unknown",
    timeout,
    async () => {
      const w = world(2);
      const a = w.store.client("a");
      w.store.loseNextAnswer("a");
      assert.equal((await w.run(a.get("k"))) ?? "none", "none", "reads are not taken unless asked");
      const error = await w.failure(a.putIf("k", "mine", { expectModRevision: 0 }));
      assert.equal(error.code, "HAVEN_ERR_UNAVAILABLE");
      assert.match(
        error.message,
        /failed during transaction on "k" \(the connection closed in the middle of the answer\); the write may or may not have been applied/,
      );
      assert.equal(w.store.readKey("k")?.value, "mine", "applied all the same");
      assert.equal(await w.run(a.putIf("k", "mine", { expectModRevision: 0 })), false, "a blind retry now loses");
      assert.equal(await w.run(a.put("k", "next")).then(() => "answered"), "answered", "only the next one");

      w.store.setAnswerLoss("a", 0.5);
      let lost = 0;
      for (let index = 0; index < 40; index++) {
        const outcome = await w.driver.drive(a.put(`many/${index}`, "x"), 60_000);
        if (outcome.state === "rejected") lost++;
        assert.equal(w.store.readKey(`many/${index}`)?.value, "x", "every write applied, answered or not");
      }
      assert.ok(lost > 5 && lost < 35, `about half lost, not ${lost}`);
      w.store.setAnswerLoss(undefined, 1, { includeReads: true });
      assert.equal((await w.failure(w.store.client("b").get("k"))).code, "HAVEN_ERR_UNAVAILABLE", "every host");
      w.store.setAnswerLoss("a", 0);
      w.store.setAnswerLoss(undefined, 0);
      await w.run(a.get("k"));
    },
  );

  test(
    "slow answers take longer, within their bound; past requestTimeoutMs the call fails but its effect still applies",
    timeout,
    async () => {
      const w = world(4, FIXED_LATENCY);
      const a = w.store.client("a", { requestTimeoutMs: 300 });
      w.store.setSlow("a", { maxExtraMs: 400 });
      const durations: number[] = [];
      let timedOut = 0;
      for (let index = 0; index < 30; index++) {
        const startedAt = w.clock.now();
        const outcome = await w.driver.drive(a.put(`slow/${index}`, "x"), 60_000);
        durations.push(w.clock.now() - startedAt);
        if (outcome.state === "rejected") {
          timedOut++;
          assert.match(String(outcome.error), /no answer within 300 ms\); the write may or may not/);
        }
      }
      assert.ok(timedOut > 0 && timedOut < 30, `some calls time out: ${timedOut}`);
      assert.ok(Math.max(...durations) <= 300, "the request timeout bounds every call");
      assert.ok(
        durations.some((ms) => ms > 10),
        "slower than the base latency",
      );
      await w.driver.runFor(1_000);
      assert.equal(w.store.readPrefix("slow/").length, 30, "every request reached the store, late or not");
      w.store.setSlow("a", undefined);
      const startedAt = w.clock.now();
      await w.run(a.get("slow/0"));
      assert.equal(w.clock.now() - startedAt, 10);
    },
  );

  test(
    "a leader change stalls every call, then all complete in arrival order; leases do not expire meanwhile",
    timeout,
    async () => {
      const w = world(6, FIXED_LATENCY);
      const a = w.store.client("a");
      const impatient = w.store.client("b", { requestTimeoutMs: 1_000 });
      const lease = await w.run(a.grantLease(2));
      await w.run(a.put("lc/leased", "x", { lease: lease.id }));
      w.store.leaderChange(4_000);
      const pausedAt = w.clock.now();
      const calls = [observe(a.put("lc/1", "first")), observe(a.put("lc/2", "second")), observe(a.get("lc/1"))];
      const late = observe(impatient.put("lc/late", "applied after the caller gave up"));
      await w.driver.runFor(3_990);
      assert.ok(calls.every((call) => call.outcome.state === "pending"));
      assert.equal(late.outcome.state, "rejected");
      assert.match(
        String((late.outcome as { error: unknown }).error),
        /no answer within 1000 ms\); the write may or may not/,
      );
      assert.equal(w.store.readKey("lc/leased")?.value, "x", "the lease outlived its TTL during the pause");
      await w.driver.runFor(20);
      assert.ok(calls.every((call) => call.outcome.state === "fulfilled"));
      assert.deepEqual(
        (calls[2]!.outcome as { value: unknown }).value,
        w.store.readKey("lc/1"),
        "applied in arrival order: the read sees the put sent before it",
      );
      assert.equal(w.store.readKey("lc/late")?.value, "applied after the caller gave up");
      // The new leader renewed the lease from the end of the pause: it lasts its TTL from there.
      await w.driver.runUntil(() => w.store.readKey("lc/leased") === undefined, 10_000);
      assert.equal(w.clock.now(), pausedAt + 4_000 + 2_000);
    },
  );

  test(
    "a crashed host's calls never settle and its watches end silently; a new client of the host works",
    timeout,
    async () => {
      const w = world(8);
      const a = w.store.client("a");
      const seen = recorder();
      const watch = a.watchPrefix("x/", { onClose: seen.onClose }, seen.onEvent);
      await w.run(watch.ready);
      const inFlight = observe(a.put("x/1", "sent before the crash"));
      w.store.crashHost("a");
      await w.driver.runFor(10_000);
      assert.equal(inFlight.outcome.state, "pending");
      assert.deepEqual([seen.events, seen.closes], [[], []]);
      assert.equal(w.store.readKey("x/1")?.value, "sent before the crash", "what it sent still applies");
      assert.equal(w.store.inFlight, 0);
      const restarted = w.store.client("a");
      assert.equal((await w.run(restarted.get("x/1")))?.value, "sent before the crash");
    },
  );
});

describe("sim store: determinism", () => {
  /**
   * Three hosts doing random reads, writes, compare-and-swaps and lease work, each with a watch it
   * re-establishes when it breaks, under random faults. Returns the trace and what each host saw.
   */
  async function chaos(seed: number): Promise<{ trace: string; seen: Map<string, WatchEvent[][]>; store: SimStore }> {
    const clock = new SimClock();
    const driver = new SimDriver(clock);
    const rng = new Rng(seed);
    const store = new SimStore({ clock, rng: rng.fork() });
    const hosts = ["a", "b", "c"];
    const seen = new Map<string, WatchEvent[][]>();
    const outcomes: string[] = [];
    let stopped = false;
    const watchLoop = (host: string, client: SimStoreClient, from: number | undefined): void => {
      const session: WatchEvent[] = [];
      seen.get(host)!.push(session);
      const watch = client.watchPrefix(
        "k/",
        {
          ...(from === undefined ? {} : { startRevision: from }),
          onClose: () => {
            if (!stopped) clock.schedule(50, () => watchLoop(host, client, watch.revision + 1));
          },
        },
        (event) => session.push(event),
      );
      watch.ready.catch(() => {
        if (!stopped) clock.schedule(50, () => watchLoop(host, client, from));
      });
    };
    const worker = async (host: string, hostRng: Rng): Promise<void> => {
      const client = store.client(host, { requestTimeoutMs: 500 });
      seen.set(host, []);
      watchLoop(host, client, undefined);
      let lease: string | undefined;
      while (!stopped) {
        const key = `k/${hostRng.int(0, 4)}`;
        const action = hostRng.pick(["put", "get", "cas", "delete", "lease", "keepalive", "range"] as const);
        try {
          switch (action) {
            case "put":
              await client.put(key, `${host}${hostRng.int(0, 99)}`, lease === undefined ? {} : { lease });
              break;
            case "get":
              await client.get(key);
              break;
            case "cas": {
              const current = await client.get(key);
              await client.putIf(key, `${host}-cas`, { expectModRevision: current?.modRevision ?? 0 });
              break;
            }
            case "delete":
              await client.delete(key);
              break;
            case "lease":
              lease = (await client.grantLease(hostRng.int(1, 3))).id;
              break;
            case "keepalive":
              if (lease !== undefined && (await client.keepAliveOnce(lease)) === 0) lease = undefined;
              break;
            case "range":
              await client.getPrefixPage("k/", { limit: 2 });
          }
          outcomes.push(`${clock.now()} ${host} ${action} ok`);
        } catch (error) {
          if (!(error instanceof HavenError)) throw error;
          outcomes.push(`${clock.now()} ${host} ${action} ${error.code}`);
          if (error.code === "HAVEN_ERR_NOT_FOUND") lease = undefined;
        }
        await clock.sleep(hostRng.int(0, 200));
      }
    };
    const faults = async (faultRng: Rng): Promise<void> => {
      while (!stopped) {
        await clock.sleep(faultRng.int(100, 1_000));
        const host = faultRng.pick(hosts);
        switch (faultRng.int(0, 5)) {
          case 0:
            store.partition(host);
            break;
          case 1:
            store.heal(host);
            break;
          case 2:
            store.loseNextAnswer(host);
            break;
          case 3:
            store.setSlow(host, faultRng.chance(0.5) ? { probability: 0.3, maxExtraMs: 600 } : undefined);
            break;
          case 4:
            store.leaderChange(faultRng.int(100, 1_500));
            break;
          case 5:
            store.setAnswerLoss(host, faultRng.chance(0.5) ? 0.2 : 0);
        }
      }
    };
    const running = [...hosts.map((host) => worker(host, rng.fork())), faults(rng.fork())];
    await driver.runFor(20_000);
    stopped = true;
    for (const host of hosts) store.heal(host);
    await driver.runFor(10_000);
    await Promise.all(running);
    return { trace: [...store.trace, ...outcomes].join("\n"), seen, store };
  }

  test(
    "the same seed replays the same trace, faults included; another seed gives another",
    { timeout: 60_000 },
    async () => {
      const first = await chaos(42);
      const again = await chaos(42);
      const other = await chaos(43);
      assert.ok(first.store.applied.length > 100, `a busy run: ${first.store.applied.length} operations`);
      for (const kind of [
        "partitioned",
        "middle of the answer",
        "leader change",
        "expired",
        "broke off",
        "no answer within",
      ]) {
        assert.ok(first.trace.includes(kind), `the run exercised "${kind}"`);
      }
      assert.equal(again.trace, first.trace);
      assert.deepEqual(again.store.applied, first.store.applied);
      assert.notEqual(other.trace, first.trace);
    },
  );

  test(
    "under faults, every watch session sees exactly the log's changes under its prefix, in order, from where it started",
    { timeout: 60_000 },
    async () => {
      for (const seed of [1, 2, 3]) {
        const { store, seen } = await chaos(seed);
        const changes = store.applied.flatMap((op) => op.events).filter((event) => event.key.startsWith("k/"));
        for (const [host, sessions] of seen) {
          assert.ok(sessions.length > 1, `host ${host} had to rewatch (seed ${seed})`);
          for (const session of sessions) {
            if (session.length === 0) continue;
            const start = changes.findIndex((event) => event === session[0]);
            assert.ok(start >= 0, `seed ${seed}: ${host} saw an event the store never made`);
            assert.deepEqual(
              session,
              changes.slice(start, start + session.length),
              `seed ${seed}: ${host} missed or reordered`,
            );
          }
          // Sessions chain: each resumes right after the last revision the previous one was told about.
          const all = sessions.flat();
          const revisions = all.map((event) => event.modRevision);
          assert.deepEqual(
            revisions,
            [...revisions].sort((x, y) => x - y),
            `seed ${seed}: ${host} went back in time`,
          );
        }
      }
    },
  );
});
