// A primary cut off from etcd (its agent reaches etcd through a TCP proxy the test controls), first with
// its replication links up, then with them cut too (each host's replica server is reached through a
// proxy as well): it must stop acknowledging writes before the standby is promoted (the fence fires
// before the lease can expire), no write may be acknowledged by both, every write the old primary
// acknowledged must be readable from the new one, the failover must say whether the old primary still
// answered heartbeats, and once the partition heals the old primary comes back as a standby whose copy
// resyncs into the in-sync set. Last, only the replication link is cut while both hosts keep their
// leases: the primary carries on degraded, no failover happens, and the copy resyncs once it heals.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  clusterUp,
  localClusterClient,
  localHostPorts,
  type LocalClusterState,
} from "../../src/cluster/local-cluster.js";
import type { EtcdClient } from "../../src/cluster/etcd-client.js";
import { keys, parseHostHealthRecord, parseReplicaRecord } from "../../src/cluster/schema.js";
import { haveEtcd } from "../helpers/etcd.js";
import { haveTool, run, tempDir } from "../helpers/server-process.js";
import { TcpProxy } from "../helpers/tcp-proxy.js";
import {
  createTestVolume,
  freeBasePort,
  stopLocalCluster,
  until,
  TEST_TIMINGS,
  VolumeProbe,
} from "../helpers/cluster.js";

const VOLUME = "cut";
const skip = !haveEtcd() || !haveTool("qemu-io") ? "needs etcd and qemu-io" : false;

// The suite takes about 35 s; one still running after 4 minutes is hung.
describe("partitions between a primary, etcd and its peer", { skip, timeout: 240_000 }, () => {
  const dir = tempDir("haven-partition-");
  let cluster: LocalClusterState;
  let etcd: EtcdClient;
  let basePort = 0;
  const proxies = new Map<string, TcpProxy>();
  /** Each host's replica server, as the other host reaches it: the replication links. */
  const links = new Map<string, TcpProxy>();

  let probe: VolumeProbe;
  const primary = () => probe.primary();
  const recorded = async (host: string) => (await probe.replica(host))?.state;
  const qemuIo = (host: string, command: string) => probe.qemuIo(host, command);
  const linkEvents = (kind: string) => probe.events(kind, null);
  const write = (host: string, n: number): Promise<boolean> => probe.qemuIo(host, `write -P ${n % 256} ${n * 4096} 4k`);
  const readBack = async (host: string, n: number): Promise<boolean> =>
    (
      await run("qemu-io", ["-f", "raw", "-c", `read -P ${n % 256} ${n * 4096} 4k`, probe.uri(host)], {
        timeoutMs: 20_000,
      })
    ).stdout.includes("read 4096/4096");

  before(async () => {
    basePort = await freeBasePort();
    for (const host of ["h1", "h2"]) {
      const proxy = new TcpProxy("127.0.0.1", basePort);
      await proxy.start();
      proxies.set(host, proxy);
      const link = new TcpProxy("127.0.0.1", localHostPorts(basePort, host).replication);
      await link.start();
      links.set(host, link);
    }
    cluster = await clusterUp({
      dir: join(dir.path, "cluster"),
      hosts: 2,
      basePort,
      timings: { ...TEST_TIMINGS },
      etcdEndpointOf: (name) => `https://127.0.0.1:${proxies.get(name)!.port}`,
      replicationPortOf: (name) => links.get(name)!.port,
    });
    etcd = await localClusterClient(cluster);
    probe = new VolumeProbe(etcd, VOLUME, basePort);
    await createTestVolume(cluster, VOLUME, "64M");
  });

  after(async () => {
    await stopLocalCluster(join(dir.path, "cluster"));
    for (const proxy of [...proxies.values(), ...links.values()]) await proxy.stop();
    dir.remove();
  });

  /**
   * Cuts the primary off (`cut`), writes to it until it refuses, and checks the promotion that follows:
   * nothing acknowledged after it, nothing acknowledged lost. Returns the promotion's reason.
   */
  const partition = async (
    cut: (old: string, standby: string) => void,
    heal: (old: string, standby: string) => void,
  ) => {
    const old = (await primary())!;
    const standby = old.host === "h1" ? "h2" : "h1";
    const acknowledged: { n: number; at: number }[] = [];
    let n = 1;
    for (; n <= 5; n++) assert.ok(await write(old.host, n), `write ${n} before the cut`);
    for (let i = 1; i <= 5; i++) acknowledged.push({ n: i, at: Date.now() });
    cut(old.host, standby);
    // Keep writing to the old primary until it refuses; each success is an acknowledged write. It must
    // refuse by the time the standby is promoted: a write it acknowledges that was sent after the
    // promotion was on record means two writers (and the loop ends, as the fence must end it).
    for (;;) {
      const promotedBefore = (await primary())?.host === standby;
      const ok = await write(old.host, n);
      if (!ok) break;
      assert.ok(!promotedBefore, `the old primary acknowledged write ${n}, sent after ${standby} was promoted`);
      acknowledged.push({ n, at: Date.now() });
      n++;
    }
    const promoted = await until("the standby to promote", async () => {
      const now = await primary();
      return now && now.host === standby ? now : undefined;
    });
    const lastAck = Math.max(...acknowledged.map((a) => a.at));
    assert.ok(
      lastAck < Date.parse(promoted.since),
      `the old primary acknowledged a write at ${new Date(lastAck).toISOString()}, after the promotion at ${promoted.since}`,
    );
    assert.equal(promoted.epoch, old.epoch + 1);
    await until("the new primary to serve", async () => ((await write(standby, 1000)) ? true : undefined));
    for (const { n: written } of acknowledged)
      assert.ok(await readBack(standby, written), `acknowledged write ${written} is lost`);
    assert.equal(await write(old.host, 2000), false, "the old primary takes no writes any more");

    heal(old.host, standby);
    await until(
      "the old primary's copy to resync into the in-sync set",
      async () => {
        const kv = await etcd.get(keys.replica(VOLUME, { host: old.host, disk: "disk0" }));
        return kv && parseReplicaRecord(kv.value, kv.key).state === "in-sync" ? true : undefined;
      },
      60_000,
    );
    assert.equal((await primary())?.host, standby, "the healed host does not take the volume back");
    return promoted.reason;
  };

  test("cut from etcd only: the old primary stops acknowledging before the new one is promoted, nothing it acknowledged is lost", async () => {
    const reason = await partition(
      (old) => proxies.get(old)!.cut(),
      (old) => proxies.get(old)!.restore(),
    );
    assert.match(reason, /still answers heartbeats over the replication link: it is cut off from etcd/);
  });

  test("cut from etcd and from its peer: the same, and the failover says the heartbeats stopped too", async () => {
    const both = (old: string, standby: string, action: "cut" | "restore") => {
      proxies.get(old)![action]();
      links.get(old)![action](); // the standby's heartbeats to the old primary
      links.get(standby)![action](); // the old primary's engine and heartbeats to the standby
    };
    const reason = await partition(
      (old, standby) => both(old, standby, "cut"),
      (old, standby) => both(old, standby, "restore"),
    );
    assert.match(reason, /stopped answering heartbeats over the replication link too/);
  });

  test("the primary carries on degraded, no failover happens, and the copy resyncs when the link heals", async () => {
    const first = (await primary())!;
    const standby = first.host === "h1" ? "h2" : "h1";
    assert.ok(await qemuIo(first.host, "write -P 0x11 0 1M"));
    links.get(standby)!.cut();
    assert.ok(await qemuIo(first.host, "write -P 0x22 1M 1M"), "writes go on without the standby's copy");
    await until("the standby's copy on record as out of sync", async () =>
      (await recorded(standby)) === "out-of-sync" ? true : undefined,
    );
    // The heartbeats over the cut link stop: the primary's health check says so, and so do the events.
    const link = await until("the primary to report its link to the standby down", async () => {
      const kv = await etcd.get(keys.health(first.host));
      const found = kv && parseHostHealthRecord(kv.value, kv.key).links.find((l) => l.peer === standby);
      return found && !found.up ? found : undefined;
    });
    assert.match(link.detail, /heartbeats missed in a row/);
    assert.ok(
      (await linkEvents("link-down")).some((e) => e.host === first.host && e.message.includes(standby)),
      "a link-down event",
    );
    // Three lease lifetimes with both hosts in quorum: the primary record must not move.
    const watchUntil = Date.now() + 3 * TEST_TIMINGS.leaseTtlMs;
    while (Date.now() < watchUntil) {
      const now = await primary();
      assert.equal(now?.host, first.host, "a cut replication link caused a failover");
      assert.equal(now?.epoch, first.epoch);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    assert.ok(await qemuIo(first.host, "write -P 0x33 2M 1M"));
    const restoredAt = new Date().toISOString();
    links.get(standby)!.restore();
    await until(
      "the standby's copy to resync into the in-sync set",
      async () => ((await recorded(standby)) === "in-sync" ? true : undefined),
      60_000,
    );
    // The event log says so too, with how the copy caught up (the missed writes only, not a rebuild).
    const back = await until("a replica-in-sync event for the standby", async () =>
      (await probe.events("replica-in-sync")).find(
        (e) => e.host === first.host && e.time >= restoredAt && e.message.startsWith(`the copy on ${standby}/`),
      ),
    );
    assert.match(back.message, /back in the in-sync set: caught up by an incremental resync of /);
    await until("a link-up event from the primary", async () =>
      (await linkEvents("link-up")).some((e) => e.host === first.host && e.message.includes(standby))
        ? true
        : undefined,
    );
    for (const [pattern, offset] of [
      ["0x11", "0"],
      ["0x22", "1M"],
      ["0x33", "2M"],
    ])
      assert.ok(await qemuIo(first.host, `read -P ${pattern} ${offset} 1M`), `data at ${offset} reads back`);
    assert.equal((await primary())?.host, first.host);
  });
});
