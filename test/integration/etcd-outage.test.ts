// etcd outages shorter than the lease are latency, not errors (DESIGN.md's failure table), with real
// processes: `haven cluster up`'s code starts etcd and the agents, a volume is created with two copies,
// and a client writes through its primary's NBD export over one connection the whole time (4 writes in
// flight, a FLUSH every 32), recording each write's latency and every error. Then:
// - three hosts, one etcd member each: the etcd leader and one other member are stopped (SIGSTOP) for
//   2.5 s, so nobody can renew a lease: the primary's lease becomes unproven, its writes wait, and once
//   the members resume the lease is held again and every write completes;
// - the same cluster: the etcd leader, moved first to a host that is not the primary, is killed -9:
//   the agents renew through the other members;
// - two hosts and a single etcd member, stopped (SIGSTOP) for 2.5 s.
// In each case: no write fails, the connection is never dropped, the primary keeps its host and epoch
// (no restart, no failover, no volume-stopped or fenced event), and every acknowledged write reads back.
// The timings have a 6 s lease with a 1.5 s fence, so a 2.5 s outage crosses the fence (writes must wait)
// but not the lease. Nothing here is a timed assertion: the test waits for conditions, and only reports
// the latencies it saw.

import { after, before, describe, test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { checkTimings } from "../../src/agent/timings.js";
import { EtcdClient } from "../../src/cluster/etcd-client.js";
import {
  clusterDown,
  clusterUp,
  localClusterClient,
  localHostPorts,
  type LocalClusterState,
  type LocalEtcdMember,
} from "../../src/cluster/local-cluster.js";
import { keys } from "../../src/cluster/schema.js";
import { Command } from "../../src/nbd/constants.js";
import { createTestVolume, freeBasePort, until, TEST_TIMINGS, VolumeProbe } from "../helpers/cluster.js";
import { haveEtcd } from "../helpers/etcd.js";
import { RawNbdClient } from "../helpers/raw-nbd-client.js";
import { tempDir } from "../helpers/server-process.js";

const VOLUME = "steady";
const OUTAGE_MS = 2_500;
const OUTAGE_TIMINGS = checkTimings({ ...TEST_TIMINGS, leaseTtlMs: 6_000 }, "outage test timings");
const BLOCK = 4096;
const BLOCKS = 2048; // the first 8 MiB of the volume, rewritten round and round
const IN_FLIGHT = 4;

/** Writes through one NBD connection until stopped: what completed, how long each took, what failed. */
class NbdWriter {
  /** Every acknowledged WRITE and FLUSH: when its reply came and how long after its request. */
  readonly latencies: { op: "WRITE" | "FLUSH"; endedAt: number; ms: number }[] = [];
  readonly errors: string[] = [];
  /** The pattern byte last acknowledged at each block. */
  readonly acknowledged = new Map<number, number>();
  private stopping = false;
  private sequence = 0;
  private loop: Promise<void> = Promise.resolve();

  private constructor(private readonly client: RawNbdClient) {}

  static async open(port: number): Promise<NbdWriter> {
    const client = await RawNbdClient.connect({ port });
    try {
      await client.handshake({ name: VOLUME });
    } catch (error) {
      client.close();
      throw error;
    }
    const writer = new NbdWriter(client);
    writer.loop = writer.run();
    return writer;
  }

  get completed(): number {
    return this.latencies.filter((l) => l.op === "WRITE").length;
  }

  maxLatencyMs(since = 0): number {
    return Math.max(0, ...this.latencies.filter((l) => l.endedAt >= since).map((l) => l.ms));
  }

  async stop(): Promise<void> {
    this.stopping = true;
    await this.loop;
  }

  close(): void {
    this.stopping = true;
    this.client.close();
  }

  /** Pauses writing, reads back every acknowledged block through the same connection, and writes on; the blocks that differ. */
  async verify(): Promise<number[]> {
    await this.stop();
    const wrong: number[] = [];
    for (const [block, pattern] of this.acknowledged) {
      this.client.request(Command.READ, { cookie: 1n, offset: block * BLOCK, length: BLOCK });
      const reply = await this.client.readReply(BLOCK);
      const data = reply?.simple?.data;
      if (reply?.simple?.error !== 0 || data === undefined || data.some((byte) => byte !== pattern)) wrong.push(block);
    }
    this.stopping = false;
    this.loop = this.run();
    return wrong;
  }

  private async run(): Promise<void> {
    while (!this.stopping) {
      const batch: { cookie: bigint; block: number; pattern: number; sentAt: number }[] = [];
      for (let i = 0; i < IN_FLIGHT; i++) {
        const n = ++this.sequence;
        const block = (n * 7) % BLOCKS;
        const pattern = n % 251;
        batch.push({ cookie: BigInt(n), block, pattern, sentAt: performance.now() });
        this.client.request(Command.WRITE, {
          cookie: BigInt(n),
          offset: block * BLOCK,
          payload: Buffer.alloc(BLOCK, pattern),
        });
      }
      const flush = this.sequence % 32 < IN_FLIGHT;
      const flushSentAt = performance.now();
      if (flush) this.client.request(Command.FLUSH, { cookie: 0n });
      for (let i = 0; i < batch.length + (flush ? 1 : 0); i++) {
        let reply: Awaited<ReturnType<RawNbdClient["readReply"]>>;
        try {
          reply = await this.client.readReply();
        } catch (error) {
          this.errors.push(`no reply: ${String(error)}`);
          this.stopping = true;
          return;
        }
        if (reply?.simple === undefined) {
          this.errors.push("the server closed the connection");
          this.stopping = true;
          return;
        }
        const { cookie, error } = reply.simple;
        if (cookie === 0n) {
          const endedAt = performance.now();
          if (error !== 0) this.errors.push(`FLUSH failed with NBD error ${error}`);
          else this.latencies.push({ op: "FLUSH", endedAt, ms: endedAt - flushSentAt });
          continue;
        }
        const sent = batch.find((write) => write.cookie === cookie);
        if (sent === undefined) {
          this.errors.push(`a reply for unknown cookie ${cookie}`);
          continue;
        }
        const endedAt = performance.now();
        if (error !== 0) this.errors.push(`WRITE ${cookie} failed with NBD error ${error}`);
        else {
          this.latencies.push({ op: "WRITE", endedAt, ms: endedAt - sent.sentAt });
          this.acknowledged.set(sent.block, sent.pattern);
        }
      }
    }
  }
}

/** A member's status, or undefined when it does not answer. */
async function memberStatus(member: LocalEtcdMember): Promise<{ leader: string; memberId: string } | undefined> {
  const client = await localClusterClient(
    { endpoints: [member.endpoint], tlsDir: clusterTlsDir },
    { requestTimeoutMs: 1_000 },
  );
  return client.status().catch(() => undefined);
}

/** The operator identity of the cluster under test (set when it is up). */
let clusterTlsDir: string | undefined;

/** The member every member names as the leader, if they all answer and agree. */
async function agreedLeader(cluster: LocalClusterState): Promise<LocalEtcdMember | undefined> {
  const statuses = await Promise.all(cluster.etcd.map(memberStatus));
  const leaderId = statuses[0]?.leader;
  if (leaderId === undefined || leaderId === "0" || statuses.some((status) => status?.leader !== leaderId))
    return undefined;
  return cluster.etcd.find((_, i) => statuses[i]!.memberId === leaderId);
}

/** Moves etcd's leadership to `target` (MoveLeader, asked of the current leader); false if etcd refused. */
async function moveLeader(leader: LocalEtcdMember, targetId: string): Promise<boolean> {
  // Over TLS, as the cluster's admin (moving the leader needs etcd's root role).
  const client = await localClusterClient({ endpoints: [leader.endpoint], tlsDir: clusterTlsDir });
  return client.auth("maintenance/transfer-leadership", { targetID: targetId }, "moving etcd's leader").then(
    () => true,
    () => false,
  );
}

function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch {
    // already gone
  }
}

/**
 * One cluster for a describe block: started before its tests with `hosts` hosts and `members` etcd
 * members, a volume created and a writer on its primary; everything stopped by pid afterwards.
 */
function outageCluster(hosts: number, members: number) {
  const dir = tempDir("haven-etcd-outage-");
  const world = {
    cluster: undefined as LocalClusterState | undefined,
    etcd: undefined as EtcdClient | undefined,
    probe: undefined as VolumeProbe | undefined,
    writer: undefined as NbdWriter | undefined,
    primaryHost: "",
    epoch: 0,
    basePort: 0,
    /** How many events of each kind `unchanged` looks at there were once the writer ran. */
    baseline: new Map<string, number>(),
  };
  const watchedEvents = ["volume-stopped", "volume-start-failed", "replica-out-of-sync", "fenced"];
  const eventCount = async (kind: string) =>
    (await world.probe!.events(kind, kind === "fenced" ? null : VOLUME)).length;

  before(async () => {
    world.basePort = await freeBasePort();
    const cluster = await clusterUp({
      dir: join(dir.path, "cluster"),
      hosts,
      basePort: world.basePort,
      etcdMembers: members,
      timings: { ...OUTAGE_TIMINGS },
    });
    world.cluster = cluster;
    assert.equal(cluster.etcd.length, members);
    clusterTlsDir = cluster.tlsDir;
    const client = await localClusterClient(cluster);
    world.etcd = client;
    world.probe = new VolumeProbe(client, VOLUME, world.basePort);
    await createTestVolume({ endpoint: cluster.endpoints.join(","), tlsDir: cluster.tlsDir }, VOLUME, "64M");
    const primary = await until("the volume's primary", () => world.probe!.primary());
    world.primaryHost = primary.host;
    world.epoch = primary.epoch;
    const port = localHostPorts(world.basePort, primary.host).nbd;
    world.writer = await until("the primary to serve the volume", () => NbdWriter.open(port));
    await until("the first writes", async () => (world.writer!.completed >= 40 ? true : undefined));
    for (const kind of watchedEvents) world.baseline.set(kind, await eventCount(kind));
  });

  after(async () => {
    world.writer?.close();
    const cluster = world.cluster;
    if (cluster) {
      for (const member of cluster.etcd) signal(member.pid, "SIGCONT"); // a stopped member could not stop
      await clusterDown(cluster.dir, 10_000).catch(() => undefined);
    }
    dir.remove();
  });

  /** The volume as the test left it: same primary, same epoch, nothing stopped or fenced, nothing failed. */
  const unchanged = async (t: TestContext, what: string, since: number): Promise<void> => {
    const { writer, probe } = world;
    assert.deepEqual(writer!.errors, [], "a write or flush failed");
    const primary = await probe!.primary();
    assert.equal(primary?.host, world.primaryHost, "the primary moved");
    assert.equal(primary?.epoch, world.epoch, "the volume restarted at a new epoch");
    for (const kind of watchedEvents) assert.equal(await eventCount(kind), world.baseline.get(kind), `a ${kind} event`);
    for (const agent of world.cluster!.agents)
      assert.ok(await world.etcd!.get(keys.host(agent.name)), `${agent.name} lost its lease`);
    t.diagnostic(
      `${what}: ${writer!.completed} writes so far, none failed; max WRITE/FLUSH latency ` +
        `${Math.round(writer!.maxLatencyMs(since))} ms since the outage began, ${Math.round(maxBefore(writer!, since))} ms before`,
    );
  };

  /** The primary's agent log, to see which lease states it went through. */
  const primaryLog = (): string =>
    readFileSync(world.cluster!.agents.find((agent) => agent.name === world.primaryHost)!.log, "utf8");

  return { world, unchanged, primaryLog };
}

function maxBefore(writer: NbdWriter, at: number): number {
  return Math.max(0, ...writer.latencies.filter((l) => l.endedAt < at).map((l) => l.ms));
}

/** Waits until the primary's agent says its lease is held again (or a write failed: no use waiting then). */
async function heldAgain(writer: NbdWriter, primaryLog: () => string): Promise<void> {
  await until("the primary's lease to be held again", async () =>
    /lease held again/.test(primaryLog()) || writer.errors.length > 0 ? true : undefined,
  );
  assert.deepEqual(writer.errors, [], "a write or flush failed during the outage");
}

/** Waits until the writer completed `count` more writes than it had. */
async function moreWrites(writer: NbdWriter, count: number): Promise<void> {
  const target = writer.completed + count;
  await until(`${count} more writes`, async () =>
    writer.completed >= target || writer.errors.length > 0 ? true : undefined,
  );
}

const skip = !haveEtcd() ? "needs etcd" : false;

describe("etcd outages shorter than the lease: three hosts, one etcd member each", { skip }, () => {
  const { world, unchanged, primaryLog } = outageCluster(3, 3);

  test("the etcd leader and one more member stopped for 2.5 s: writes wait, then all complete, at the same epoch", async (t) => {
    const { cluster, writer } = world;
    // The leader must be among the stopped (a leader left running renews leases until it steps down),
    // so wait until every member names the same one.
    const leader = await until("every etcd member to name the same leader", () => agreedLeader(cluster!));
    const other = cluster!.etcd.find((member) => member !== leader)!;
    const stopped = [leader, other];
    const began = performance.now();
    for (const member of stopped) signal(member.pid, "SIGSTOP");
    await sleep(OUTAGE_MS);
    for (const member of stopped) signal(member.pid, "SIGCONT");
    const resumed = performance.now();
    await heldAgain(writer!, primaryLog);
    await moreWrites(writer!, 200);
    assert.ok(
      writer!.latencies.some((l) => l.endedAt > resumed && l.endedAt - l.ms < resumed),
      "no write or flush was in flight across the outage",
    );
    assert.match(primaryLog(), /lease unproven/, "the outage did not make the primary's lease unproven");
    assert.deepEqual(await writer!.verify(), [], "acknowledged writes that do not read back");
    await unchanged(t, `${stopped.map((m) => m.name).join(" and ")} (leader ${leader.name}) stopped`, began);
  });

  test("one etcd member killed (-9), the leader, on a host that is not the primary: nothing changes for clients", async (t) => {
    const { cluster, writer } = world;
    const candidates = cluster!.etcd.filter((member) => member.host !== world.primaryHost);
    // Make the victim the leader (the harder case: an election follows its death).
    const victim = await until("a member to kill that leads etcd", async () => {
      const statuses = await Promise.all(cluster!.etcd.map(memberStatus));
      const leaderId = statuses.find((status) => status !== undefined && status.leader !== "0")?.leader;
      const leader = cluster!.etcd.find((_, i) => statuses[i]?.memberId === leaderId);
      if (leader === undefined) return undefined;
      if (candidates.includes(leader)) return leader;
      const target = candidates[0]!;
      const targetId = statuses[cluster!.etcd.indexOf(target)]?.memberId;
      if (targetId !== undefined) await moveLeader(leader, targetId);
      return undefined;
    });
    const victimId = (await until("the victim's member id", () => memberStatus(victim))).memberId;
    const began = performance.now();
    signal(victim.pid, "SIGKILL");
    const survivors = cluster!.etcd.filter((member) => member !== victim);
    await until("a new etcd leader", async () => {
      const statuses = await Promise.all(survivors.map(memberStatus));
      return statuses.every((s) => s !== undefined && s.leader !== "0" && s.leader !== victimId) ? true : undefined;
    });
    await moreWrites(writer!, 300);
    assert.deepEqual(await writer!.verify(), [], "acknowledged writes that do not read back");
    await unchanged(t, `${victim.name}'s member (the leader) killed`, began);
  });
});

describe("etcd outages shorter than the lease: two hosts and a single etcd member", { skip }, () => {
  const { world, unchanged, primaryLog } = outageCluster(2, 1);

  test("the only etcd member stopped for 2.5 s: writes wait, then all complete, at the same epoch", async (t) => {
    const { cluster, writer } = world;
    const member = cluster!.etcd[0]!;
    const began = performance.now();
    signal(member.pid, "SIGSTOP");
    await sleep(OUTAGE_MS);
    signal(member.pid, "SIGCONT");
    const resumed = performance.now();
    await heldAgain(writer!, primaryLog);
    await moreWrites(writer!, 200);
    assert.ok(
      writer!.latencies.some((l) => l.endedAt > resumed && l.endedAt - l.ms < resumed),
      "no write or flush was in flight across the outage",
    );
    assert.match(primaryLog(), /lease unproven/, "the outage did not make the primary's lease unproven");
    assert.deepEqual(await writer!.verify(), [], "acknowledged writes that do not read back");
    await unchanged(t, "the single member stopped", began);
  });
});
