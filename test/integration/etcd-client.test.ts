// The etcd client against a real etcd started by the project itself: reads and writes of text keys,
// compare-and-swap as promotion will use it (DESIGN.md rule 4), leases that expire unless kept alive,
// watches that see every change in order, and failures that name the endpoint and the reason: etcd
// down, hung, or refusing. Each wait is for an event (a watch event, a process exit), never a sleep; the
// only timer paces the lease keepalives.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { HavenError } from "../../src/core/errors.js";
import { EtcdClient, type WatchEvent } from "../../src/cluster/etcd-client.js";
import { startEtcd } from "../../src/cluster/etcd-process.js";
import { haveEtcd, startTestEtcd, type TestEtcd } from "../helpers/etcd.js";
import { tempDir } from "../helpers/server-process.js";
import { failsWith } from "../helpers/errors.js";

/** Collects a watch's events and lets a test wait, bounded, until one it expects has arrived. */
class EventLog {
  readonly events: WatchEvent[] = [];
  private waiters = new Set<() => void>();

  readonly push = (event: WatchEvent): void => {
    this.events.push(event);
    for (const waiter of [...this.waiters]) waiter();
  };

  waitFor(predicate: (event: WatchEvent) => boolean, timeoutMs = 10_000): Promise<WatchEvent> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const found = this.events.find(predicate);
        if (found === undefined) return;
        clearTimeout(timer);
        this.waiters.delete(check);
        resolve(found);
      };
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(new Error(`no such watch event within ${timeoutMs} ms; saw ${JSON.stringify(this.events)}`));
      }, timeoutMs);
      this.waiters.add(check);
      check();
    });
  }
}

/** A port on 127.0.0.1 where nothing listens. */
async function deadPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** A server that accepts connections and never answers: a hung etcd member. */
async function silentServer(): Promise<{ endpoint: string; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.resume();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

// The suite takes about 10 s; one still running after 2 minutes is hung.
describe("etcd client", { skip: !haveEtcd() && "etcd is not installed", timeout: 120_000 }, () => {
  let cluster: TestEtcd;
  let etcd: EtcdClient;

  before(async () => {
    cluster = await startTestEtcd();
    etcd = cluster.client();
  });
  after(async () => {
    await cluster?.stop();
  });

  test("a put is read back as text with its revisions; a missing key reads as nothing", async () => {
    const first = await etcd.put("kv/volume", "web1 → 10 GiB");
    const second = await etcd.put("kv/volume", "web1 → 20 GiB");
    assert.ok(second.revision > first.revision);
    const kv = await etcd.get("kv/volume");
    assert.deepEqual(kv, {
      key: "kv/volume",
      value: "web1 → 20 GiB",
      createRevision: first.revision,
      modRevision: second.revision,
      version: 2,
      lease: undefined,
    });
    await etcd.put("kv/empty", "");
    assert.equal((await etcd.get("kv/empty"))?.value, "");
    assert.equal(await etcd.get("kv/missing"), undefined);
  });

  test("a prefix read returns exactly the keys under the prefix, in key order", async () => {
    for (const key of ["px/a", "px/b/1", "px/b/2", "px/c", "px0", "p", "pxz/a", "px/\u00ff"]) await etcd.put(key, key);
    assert.deepEqual(
      (await etcd.getPrefix("px/")).map((kv) => kv.key),
      ["px/a", "px/b/1", "px/b/2", "px/c", "px/\u00ff"],
    );
    assert.deepEqual(
      (await etcd.getPrefix("px/b/")).map((kv) => [kv.key, kv.value]),
      [
        ["px/b/1", "px/b/1"],
        ["px/b/2", "px/b/2"],
      ],
    );
    assert.deepEqual(await etcd.getPrefix("px/none/"), []);
    assert.ok(
      (await etcd.getPrefix("")).some((kv) => kv.key === "p"),
      "the empty prefix reads every key",
    );
  });

  test("delete says whether the key existed; deletePrefix removes only the keys under the prefix", async () => {
    await etcd.put("del/one", "1");
    assert.equal(await etcd.delete("del/one"), true);
    assert.equal(await etcd.delete("del/one"), false);
    for (const key of ["del/many/1", "del/many/2", "del/many/3", "del/manyx"]) await etcd.put(key, "x");
    assert.equal(await etcd.deletePrefix("del/many/"), 3);
    assert.deepEqual(
      (await etcd.getPrefix("del/")).map((kv) => kv.key),
      ["del/manyx"],
    );
    assert.equal(await etcd.deletePrefix("del/many/"), 0);
  });

  test("deleteRange removes the keys from `from` up to but not including `to`, and refuses a backward range", async () => {
    for (const key of ["dr/1", "dr/2", "dr/2a", "dr/3", "dr/4"]) await etcd.put(key, key);
    assert.equal(await etcd.deleteRange("dr/", "dr/3"), 3);
    assert.deepEqual(
      (await etcd.getPrefix("dr/")).map((kv) => kv.key),
      ["dr/3", "dr/4"],
    );
    assert.equal(await etcd.deleteRange("dr/", "dr/3"), 0);
    await assert.rejects(etcd.deleteRange("dr/4", "dr/3"), failsWith("HAVEN_ERR_INVALID_REQUEST", /must start/));
    await assert.rejects(etcd.deleteRange("dr/3", "dr/3"), failsWith("HAVEN_ERR_INVALID_REQUEST", /must start/));
    assert.equal((await etcd.getPrefix("dr/")).length, 2);
  });

  test("a page read gives the first keys in order, keys only when asked, and how many the prefix holds in all", async () => {
    for (const key of ["pg/c", "pg/a", "pg/b", "pg/d", "pg0"]) await etcd.put(key, `value of ${key}`);
    const page = await etcd.getPrefixPage("pg/", { keysOnly: true, limit: 2 });
    assert.deepEqual(
      page.kvs.map((kv) => [kv.key, kv.value]),
      [
        ["pg/a", ""],
        ["pg/b", ""],
      ],
    );
    assert.equal(page.count, 4);
    assert.ok(page.kvs[0]!.createRevision > 0 && page.revision >= page.kvs[0]!.modRevision);
    const all = await etcd.getPrefixPage("pg/");
    assert.deepEqual(
      all.kvs.map((kv) => kv.value),
      ["value of pg/a", "value of pg/b", "value of pg/c", "value of pg/d"],
    );
    assert.deepEqual(await etcd.getPrefixPage("pg/none/", { limit: 1 }), { kvs: [], count: 0, revision: all.revision });
    await assert.rejects(etcd.getPrefixPage("pg/", { limit: 0 }), failsWith("HAVEN_ERR_INVALID_REQUEST", /limit 0/));
  });

  test("a condition on a prefix holds only if it holds for every key under it; an empty prefix is a missing key", async () => {
    const first = await etcd.put("cp/a", "1");
    await etcd.put("cp/b", "2");
    const seen = (await etcd.status()).revision;
    const unchanged = { prefix: "cp/", target: "modRevision", result: "less", value: seen + 1 } as const;
    const put = { type: "put", key: "cp/marker", value: "x" } as const;
    assert.equal((await etcd.txn([unchanged], [put], [])).succeeded, true, "nothing under cp/ changed");
    // The marker itself changed cp/ since `seen`: the same condition now fails, and a change under a
    // neighbouring prefix does not count.
    await etcd.put("cp0", "outside");
    assert.equal((await etcd.txn([unchanged], [put], [])).succeeded, false);
    assert.equal(
      (
        await etcd.txn(
          [{ prefix: "cp/", target: "createRevision", result: "greater", value: first.revision - 1 }],
          [],
          [],
        )
      ).succeeded,
      true,
      "every key under cp/ was created at or after cp/a",
    );
    const empty = { prefix: "cp/none/", target: "modRevision", result: "equal", value: 0 } as const;
    assert.equal((await etcd.txn([empty], [], [])).succeeded, true);
    const anyValue = { prefix: "cp/none/", target: "value", result: "notEqual", value: "x" } as const;
    assert.equal((await etcd.txn([anyValue], [], [])).succeeded, false, "a value never matches a missing key");
  });

  test("deleting keys under a prefix leaves its modRevision condition holding: deletions leave no trace", async () => {
    for (const key of ["tr/1", "tr/2", "tr/3"]) await etcd.put(key, key);
    const seen = (await etcd.status()).revision;
    const unchanged = { prefix: "tr/", target: "modRevision", result: "less", value: seen + 1 } as const;
    assert.equal(await etcd.deleteRange("tr/1", "tr/3"), 2);
    assert.equal((await etcd.txn([unchanged], [], [])).succeeded, true);
    await etcd.put("tr/1", "again");
    assert.equal((await etcd.txn([unchanged], [], [])).succeeded, false);
  });

  test("a create-only putIf succeeds once; a second finds the key and changes nothing", async () => {
    assert.equal(await etcd.putIf("cas/primary", "node1 epoch 1", { expectModRevision: 0 }), true);
    assert.equal(await etcd.putIf("cas/primary", "node2 epoch 1", { expectModRevision: 0 }), false);
    assert.equal((await etcd.get("cas/primary"))?.value, "node1 epoch 1");
  });

  test("putIf with expectModRevision swaps only from that exact revision", async () => {
    await etcd.put("cas/epoch", "1");
    const seen = (await etcd.get("cas/epoch"))!;
    assert.equal(await etcd.putIf("cas/epoch", "2", { expectModRevision: seen.modRevision }), true);
    // A second promoter that read the same revision loses: one writer per volume.
    assert.equal(await etcd.putIf("cas/epoch", "2 (other)", { expectModRevision: seen.modRevision }), false);
    const now = (await etcd.get("cas/epoch"))!;
    assert.equal(now.value, "2");
    assert.equal(await etcd.putIf("cas/epoch", "3", { expectModRevision: now.modRevision }), true);
  });

  test("putIf with expectValue swaps only from that value, and a missing key never matches", async () => {
    await etcd.put("cas/state", "degraded");
    assert.equal(await etcd.putIf("cas/state", "resyncing", { expectValue: "in-sync" }), false);
    assert.equal(await etcd.putIf("cas/state", "resyncing", { expectValue: "degraded" }), true);
    assert.equal((await etcd.get("cas/state"))?.value, "resyncing");
    assert.equal(await etcd.putIf("cas/absent", "x", { expectValue: "" }), false);
    assert.equal(await etcd.get("cas/absent"), undefined);
  });

  test("a transaction runs its failure branch, with reads, when a comparison fails", async () => {
    await etcd.put("txn/epoch", "7");
    const result = await etcd.txn(
      [{ key: "txn/epoch", target: "value", result: "equal", value: "6" }],
      [{ type: "put", key: "txn/epoch", value: "8" }],
      [
        { type: "get", key: "txn/epoch" },
        { type: "put", key: "txn/lost", value: "yes" },
        { type: "getPrefix", prefix: "txn/" },
      ],
    );
    assert.equal(result.succeeded, false);
    assert.equal(result.results.length, 3);
    const [read, put, prefix] = result.results;
    assert.equal(read?.type === "get" && read.kvs[0]?.value, "7");
    assert.equal(put?.type, "put");
    // Operations in a branch run in order: the read after the put sees it.
    assert.deepEqual(prefix?.type === "get" && prefix.kvs.map((kv) => kv.key), ["txn/epoch", "txn/lost"]);
    assert.equal((await etcd.get("txn/lost"))?.modRevision, result.revision);
    const won = await etcd.txn(
      [{ key: "txn/epoch", target: "version", result: "equal", value: 1 }],
      [
        { type: "put", key: "txn/epoch", value: "8" },
        { type: "deletePrefix", prefix: "txn/lost" },
      ],
      [],
    );
    assert.equal(won.succeeded, true);
    assert.deepEqual(won.results, [{ type: "put" }, { type: "delete", deleted: 1 }]);
  });

  test("etcd's refusal becomes HAVEN_ERR_IO carrying etcd's message", async () => {
    await assert.rejects(
      etcd.txn(
        [],
        [
          { type: "put", key: "txn/dup", value: "1" },
          { type: "put", key: "txn/dup", value: "2" },
        ],
        [],
      ),
      failsWith("HAVEN_ERR_IO", /refused transaction on "txn\/dup": etcdserver: duplicate key given in txn request/),
    );
  });

  test("a watch sees puts and deletes in order with their revisions, and replays from a start revision", async () => {
    const log = new EventLog();
    const watch = etcd.watchPrefix("w/", {}, log.push);
    await watch.ready;
    const a = await etcd.put("w/a", "1");
    const b = await etcd.put("w/b", "2");
    await etcd.put("w0", "outside the prefix");
    await etcd.delete("w/a");
    const c = await etcd.put("w/a", "3");
    await log.waitFor((event) => event.modRevision === c.revision);
    watch.cancel();
    assert.deepEqual(
      log.events.map((event) => [event.type, event.key, event.type === "PUT" ? event.value : null]),
      [
        ["PUT", "w/a", "1"],
        ["PUT", "w/b", "2"],
        ["DELETE", "w/a", null],
        ["PUT", "w/a", "3"],
      ],
    );
    const revisions = log.events.map((event) => event.modRevision);
    assert.deepEqual(
      revisions,
      [...revisions].sort((x, y) => x - y),
    );
    assert.equal(revisions[0], a.revision);
    assert.equal(revisions[1], b.revision);
    assert.equal(watch.revision, c.revision);

    const replay = new EventLog();
    const again = etcd.watchPrefix("w/", { startRevision: b.revision }, replay.push);
    await again.ready;
    await replay.waitFor((event) => event.modRevision === c.revision);
    again.cancel();
    assert.deepEqual(
      replay.events.map((event) => [event.type, event.key]),
      [
        ["PUT", "w/b"],
        ["DELETE", "w/a"],
        ["PUT", "w/a"],
      ],
    );
  });

  test("cancel ends a watch quietly: the close callback gets no error and no event follows", async () => {
    const log = new EventLog();
    const closes: (HavenError | undefined)[] = [];
    const watch = etcd.watchPrefix("wc/", { onClose: (reason) => closes.push(reason) }, log.push);
    await watch.ready;
    await etcd.put("wc/1", "seen");
    await log.waitFor((event) => event.key === "wc/1");
    watch.cancel();
    watch.cancel();
    assert.deepEqual(closes, [undefined]);
    await etcd.put("wc/2", "not seen");
    const marker = new EventLog();
    const later = etcd.watchPrefix("wc/", { startRevision: (await etcd.get("wc/2"))!.modRevision }, marker.push);
    await marker.waitFor((event) => event.key === "wc/2");
    later.cancel();
    assert.deepEqual(
      log.events.map((event) => event.key),
      ["wc/1"],
    );
  });

  test("a leased key stays while the lease is kept alive, and goes, as a watch sees, once it is not", async () => {
    const lease = await etcd.grantLease(2);
    assert.match(lease.id, /^\d+$/);
    assert.ok(lease.id.length > 15, "lease ids are int64s beyond 2^53, kept as strings");
    await etcd.put("lease/node1", "alive", { lease: lease.id });
    assert.equal((await etcd.get("lease/node1"))?.lease, lease.id);
    const log = new EventLog();
    const watch = etcd.watchPrefix("lease/", {}, log.push);
    await watch.ready;

    // Keep it alive for longer than its TTL: it must survive. Eight rounds that each sleep 400 ms last
    // at least 3.2 s however slow the machine; only the last keepalive's send is timed, as a bound below.
    let lastKeepAliveSentAt = performance.now();
    for (let round = 0; round < 8; round++) {
      lastKeepAliveSentAt = performance.now();
      assert.ok((await etcd.keepAliveOnce(lease.id)) >= 1);
      await sleep(400);
    }
    assert.equal((await etcd.get("lease/node1"))?.value, "alive");
    const status = await etcd.leaseTimeToLive(lease.id);
    assert.deepEqual(status?.keys, ["lease/node1"]);
    assert.equal(status?.grantedTtlSeconds, lease.ttlSeconds);
    assert.deepEqual(log.events, [], "nothing changed while the lease was kept alive");

    // Stop: etcd deletes the key when the lease expires, a full TTL after it renewed it, which it did
    // after the last keepalive was sent. Measured from that send on the monotonic clock, a loaded
    // machine can only make the wait look longer (a bound from a later instant could break).
    const gone = await log.waitFor((event) => event.type === "DELETE" && event.key === "lease/node1");
    watch.cancel();
    assert.ok(
      performance.now() - lastKeepAliveSentAt >= lease.ttlSeconds * 1000 - 50,
      "not before the lease ran out: a TTL after the last keepalive",
    );
    assert.equal(await etcd.get("lease/node1"), undefined);
    assert.ok(gone.modRevision > 0);
    assert.equal(await etcd.leaseTimeToLive(lease.id), undefined);
    assert.equal(await etcd.keepAliveOnce(lease.id), 0, "an expired lease cannot be renewed");
    await assert.rejects(
      etcd.put("lease/node1", "again", { lease: lease.id }),
      failsWith("HAVEN_ERR_NOT_FOUND", /requested lease not found/),
    );
    await assert.rejects(etcd.revokeLease(lease.id), failsWith("HAVEN_ERR_NOT_FOUND", /requested lease not found/));
  });

  test("revoking a lease deletes its keys at once; putIf can attach a key to a lease", async () => {
    const lease = await etcd.grantLease(60);
    assert.equal(await etcd.putIf("revoke/primary", "node1", { expectModRevision: 0, lease: lease.id }), true);
    assert.equal((await etcd.get("revoke/primary"))?.lease, lease.id);
    await etcd.revokeLease(lease.id);
    assert.equal(await etcd.get("revoke/primary"), undefined);
  });

  test("an unreachable endpoint fails with HAVEN_ERR_UNAVAILABLE naming it; [dead, live] fails over", async () => {
    const dead = `http://127.0.0.1:${await deadPort()}`;
    const lonely = new EtcdClient([dead], { requestTimeoutMs: 2_000 });
    await assert.rejects(
      lonely.get("kv/volume"),
      failsWith("HAVEN_ERR_UNAVAILABLE", new RegExp(`unreachable for get "kv/volume": ${dead}: .*ECONNREFUSED`)),
    );
    await assert.rejects(lonely.put("kv/volume", "x"), failsWith("HAVEN_ERR_UNAVAILABLE", /ECONNREFUSED/));
    await assert.rejects(
      lonely.watchPrefix("kv/", {}, () => {}).ready,
      failsWith("HAVEN_ERR_UNAVAILABLE", /ECONNREFUSED/),
    );

    const failover = new EtcdClient([dead, cluster.endpoint], { requestTimeoutMs: 2_000 });
    // A write that never reached the dead endpoint is safe to send to the next one.
    await failover.put("failover/key", "written via the second endpoint");
    assert.equal((await failover.get("failover/key"))?.value, "written via the second endpoint");
    const log = new EventLog();
    const watch = new EtcdClient([dead, cluster.endpoint]).watchPrefix("failover/", {}, log.push);
    await watch.ready;
    await failover.delete("failover/key");
    await log.waitFor((event) => event.type === "DELETE");
    watch.cancel();
  });

  test("a hung endpoint costs a read only its share of the deadline; a write's unknown outcome is reported", async () => {
    const hung = await silentServer();
    try {
      const reader = new EtcdClient([hung.endpoint, cluster.endpoint], { requestTimeoutMs: 1_500 });
      await etcd.put("hung/key", "value");
      assert.equal((await reader.get("hung/key"))?.value, "value");

      const writer = new EtcdClient([hung.endpoint, cluster.endpoint], { requestTimeoutMs: 600 });
      const failure = await writer.put("hung/key", "maybe").then(
        () => assert.fail("a put through a hung member succeeded"),
        (error: unknown) => error,
      );
      failsWith(
        "HAVEN_ERR_UNAVAILABLE",
        /failed during put "hung\/key" \(no answer within \d+ ms\).*may or may not/,
      )(failure);
      // The call ended on its own deadline: the bound its message names is the request timeout's share,
      // not more (the hung member never answers, so nothing else could end it).
      const boundMs = Number(/no answer within (\d+) ms/.exec((failure as Error).message)![1]);
      assert.ok(boundMs <= 600, `the request timeout bounds the call (${boundMs} ms)`);
      assert.equal((await etcd.get("hung/key"))?.value, "value", "the write was not repeated elsewhere");
    } finally {
      await hung.close();
    }
  });

  test("etcd killed in the middle of a watch ends it through the close callback", async () => {
    const victim = await startTestEtcd("haven-etcd-victim-");
    try {
      const client = victim.client({ requestTimeoutMs: 2_000 });
      const log = new EventLog();
      let closed!: (reason: HavenError | undefined) => void;
      const closedWith = new Promise<HavenError | undefined>((resolve) => (closed = resolve));
      const watch = client.watchPrefix("vm/", { onClose: (reason) => closed(reason) }, log.push);
      await watch.ready;
      await client.put("vm/web1", "running");
      await log.waitFor((event) => event.key === "vm/web1");
      victim.etcd.kill("SIGKILL");
      const reason = await closedWith;
      assert.ok(reason instanceof HavenError);
      assert.equal(reason.code, "HAVEN_ERR_UNAVAILABLE");
      assert.match(
        reason.message,
        new RegExp(`watch on prefix "vm/" from etcd at ${victim.endpoint} (broke off|ended)`),
      );
      await victim.etcd.exited;
      await assert.rejects(client.get("vm/web1"), failsWith("HAVEN_ERR_UNAVAILABLE", new RegExp(victim.endpoint)));
    } finally {
      await victim.stop();
    }
  });

  test("etcd that cannot start is HAVEN_ERR_CONFIG with the reason: a missing binary, or an early exit and its log", async () => {
    const dir = tempDir("haven-etcd-broken-");
    try {
      await assert.rejects(
        startEtcd({ dataDir: join(dir.path, "data"), binary: "etcd-that-does-not-exist" }),
        failsWith("HAVEN_ERR_CONFIG", /"etcd-that-does-not-exist" is not installed or not on PATH/),
      );
      const notADirectory = join(dir.path, "file");
      writeFileSync(notADirectory, "");
      await assert.rejects(
        startEtcd({ dataDir: notADirectory }),
        failsWith("HAVEN_ERR_CONFIG", /exited with status \d+ before it was ready; its log ends:\n.*file/s),
      );
    } finally {
      dir.remove();
    }
  });
});
