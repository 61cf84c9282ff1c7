// Failover with real processes: `haven cluster up` starts a real etcd and two agents (fast timings),
// `haven volume create` places a two-copy volume, fio writes it with crc32c verification headers, and
// then the tests kill -9 the primary host's agent (its engine and NBD front die with it). The standby
// must promote its copy at a higher epoch, serve it on its own NBD URI, and fio must verify every
// write it was acknowledged. The old primary's return must resync it incrementally into a standby. A
// standby whose copy is recorded out of sync must never promote, and says why.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { alive, clusterUp, localClusterClient, type LocalClusterState } from "../../src/cluster/local-cluster.js";
import type { EtcdClient } from "../../src/cluster/etcd-client.js";
import { keys, parseHostHealthRecord } from "../../src/cluster/schema.js";
import { DISK_PROBE_FILE } from "../../src/agent/health-probes.js";
import { haveEtcd } from "../helpers/etcd.js";
import { haveTool, run, tempDir } from "../helpers/server-process.js";
import {
  ClusterAgents,
  createTestVolume,
  freeBasePort,
  stopLocalCluster,
  until,
  TEST_TIMINGS,
  VolumeProbe,
} from "../helpers/cluster.js";
import { etcdArgs } from "../helpers/cluster.js";

const VOLUME = "failover";
const skip = !haveEtcd() || !haveTool("fio") ? "needs etcd and fio" : false;

// The suite takes about 50 s; one still running after 5 minutes is hung.
describe("agent failover", { skip, timeout: 300_000 }, () => {
  const dir = tempDir("haven-failover-");
  const context = join(dir.path, "context.json");
  let cluster: LocalClusterState;
  let etcd: EtcdClient;
  const env = { ...process.env, HAVEN_CONTEXT: context };
  const haven = (args: string[]) => run(process.execPath, ["bin/haven.js", ...args], { env, timeoutMs: 60_000 });

  let probe: VolumeProbe;
  const primary = () => probe.primary();
  const replica = (host: string) => probe.replica(host);
  const events = (kind: string, volume?: string | null) => probe.events(kind, volume);
  const nbdUri = (host: string) => probe.uri(host);
  const agents = new ClusterAgents(() => cluster);
  const fio = (uri: string, extra: string[]) =>
    run(
      "fio",
      [
        "--name=failover",
        "--ioengine=nbd",
        `--uri=${uri}`,
        "--bs=4k",
        "--size=32M",
        "--iodepth=16",
        "--rw=randwrite",
        "--verify=crc32c",
        "--randrepeat=1",
        "--verify_state_save=0",
        "--output-format=terse",
        ...extra,
      ],
      { timeoutMs: 120_000 },
    );
  let basePort = 0;

  before(async () => {
    basePort = await freeBasePort();
    cluster = await clusterUp({
      dir: join(dir.path, "cluster"),
      hosts: 2,
      basePort,
      timings: { ...TEST_TIMINGS },
    });
    etcd = await localClusterClient(cluster);
    probe = new VolumeProbe(etcd, VOLUME, basePort);
    await createTestVolume(cluster, VOLUME, "64M");
  });

  after(async () => {
    agents.killRestarted();
    await stopLocalCluster(join(dir.path, "cluster"));
    dir.remove();
  });

  /** Takes the primary's agent away with `signal`; the standby must promote and verify every acknowledged write. */
  const failover = async (signal: NodeJS.Signals): Promise<string> => {
    const first = (await primary())!;
    const standby = first.host === "h1" ? "h2" : "h1";
    const written = await fio(nbdUri(first.host), ["--do_verify=0"]);
    assert.equal(written.code, 0, written.stderr);
    const victim = agents.pid(first.host);
    process.kill(victim, signal);
    const promoted = await until("the standby to promote", async () => {
      const now = await primary();
      return now && now.host === standby ? now : undefined;
    });
    assert.equal(promoted.epoch, first.epoch + 1);
    assert.match(promoted.reason, /lease expired/);
    await until("the new primary to serve", async () =>
      (await events("volume-serving")).some(
        (e) => e.host === standby && / epoch /.test(e.message) && e.message.includes(`epoch ${promoted.epoch}`),
      )
        ? true
        : undefined,
    );
    assert.equal(
      (await replica(first.host))?.state,
      "out-of-sync",
      "the old primary's copy is on record as out of sync",
    );
    const verified = await fio(nbdUri(standby), ["--verify_only"]);
    assert.equal(verified.code, 0, `${verified.stdout}\n${verified.stderr}`);
    return first.host;
  };

  test("SIGSTOP of the primary's agent: its watchdog kills it, the standby promotes, SIGCONT does no harm", async () => {
    const stopped = await failover("SIGSTOP");
    await until("the watchdog to kill the frozen agent", async () => (alive(agents.pid(stopped)) ? undefined : true));
    assert.match(readFileSync(agents.agent(stopped).log, "utf8"), /watchdog: agent \d+ silent for \d+ ms; killing it/);
    try {
      process.kill(agents.pid(stopped), "SIGCONT");
    } catch {
      // gone, as it should be
    }
    agents.restart(stopped);
    await until("the old primary to rejoin in sync", async () =>
      (await replica(stopped))?.state === "in-sync" ? true : undefined,
    );
  });

  test("kill -9 of the primary's agent: the standby promotes at a higher epoch and every acknowledged write verifies", async () => {
    await failover("SIGKILL");
  });

  test("the old primary returns as a standby and resyncs incrementally", async () => {
    const now = (await primary())!;
    const returning = now.host === "h1" ? "h2" : "h1";
    agents.restart(returning);
    await until("the returning copy to be in sync", async () =>
      (await replica(returning))?.state === "in-sync" ? true : undefined,
    );
    assert.equal((await primary())?.host, now.host, "no failback by itself");
    // Both hosts publish health checks, and haven status shows them.
    const hosts = await until("both hosts' health checks in haven status", async () => {
      const status = await haven(["status", "--json", ...etcdArgs(cluster)]);
      const view = JSON.parse(status.stdout) as { hosts: { name: string; health: { problems: string[] } | null }[] };
      return view.hosts.every((host) => host.health !== null && host.health.problems.length === 0)
        ? view.hosts
        : undefined;
    });
    assert.deepEqual(
      hosts.map((host) => host.name),
      ["h1", "h2"],
    );
  });

  test("SIGSTOP of the primary's agent and its watchdog past the lease: after SIGCONT its late copy records are refused, never applied", async () => {
    const first = (await primary())!;
    const standby = first.host === "h1" ? "h2" : "h1";
    const written = await fio(nbdUri(first.host), ["--do_verify=0"]);
    assert.equal(written.code, 0, written.stderr);
    const victim = agents.pid(first.host);
    const watchdogs = readFileSync(`/proc/${victim}/task/${victim}/children`, "utf8").trim().split(/\s+/).map(Number);
    assert.equal(watchdogs.length, 1, "the agent runs one watchdog process");
    for (const pid of [victim, ...watchdogs]) process.kill(pid, "SIGSTOP");
    let promoted;
    try {
      promoted = await until("the standby to promote", async () => {
        const now = await primary();
        return now && now.host === standby ? now : undefined;
      });
      await until("the new primary to serve", async () =>
        (await events("volume-serving")).some(
          (e) => e.host === standby && e.message.includes(`epoch ${promoted!.epoch}`),
        )
          ? true
          : undefined,
      );
    } finally {
      for (const pid of [victim, ...watchdogs]) process.kill(pid, "SIGCONT");
    }
    // Thawed, the agent finds its lease gone, fences and registers anew, unless its watchdog (thawed
    // at the same moment) kills it first; then it is started again, as its supervisor would.
    await until("the thawed agent to register anew or be killed by its watchdog", async () =>
      !alive(victim) || (await etcd.get(keys.host(first.host))) !== undefined ? true : undefined,
    );
    if (!alive(victim)) agents.restart(first.host);
    await until("the old primary to rejoin in sync", async () =>
      (await replica(first.host))?.state === "in-sync" ? true : undefined,
    );
    const mine = await replica(standby);
    assert.equal(mine?.state, "in-sync", "the new primary's copy is still recorded in sync");
    const late = (await events("replica-out-of-sync")).filter(
      (e) =>
        e.host === first.host &&
        e.message.startsWith(`the copy on ${standby}/`) &&
        Date.parse(e.time) > Date.parse(promoted.since),
    );
    assert.deepEqual(late, [], "the deposed primary recorded nothing about the new primary's copy");
    const verified = await fio(nbdUri(standby), ["--verify_only"]);
    assert.equal(verified.code, 0, `${verified.stdout}\n${verified.stderr}`);
  });

  test("a switchover moves the primary to the standby with no acknowledged write lost", async () => {
    const before = (await primary())!;
    const target = before.host === "h1" ? "h2" : "h1";
    const written = await fio(nbdUri(before.host), ["--do_verify=0"]);
    assert.equal(written.code, 0, written.stderr);
    const refused = await haven(["volume", "switchover", VOLUME, "--to", before.host, ...etcdArgs(cluster)]);
    assert.equal(refused.code, 2, "a switchover to the primary itself is refused");
    const moved = await haven(["volume", "switchover", VOLUME, "--to", target, ...etcdArgs(cluster)]);
    assert.equal(moved.code, 0, moved.stderr);
    assert.match(moved.stdout, new RegExp(`served by ${target} at epoch \\d+; paused \\d+ ms`));
    const after = (await primary())!;
    assert.equal(after.host, target);
    assert.ok(after.epoch > before.epoch, "the new primary runs at a higher epoch");
    assert.match(after.reason, /switchover from/);
    const verified = await fio(nbdUri(target), ["--verify_only"]);
    assert.equal(verified.code, 0, `${verified.stdout}\n${verified.stderr}`);
    assert.equal((await replica(before.host))?.state, "in-sync", "the old primary's copy stays in sync");

    // Draining the new primary's host moves the volume back.
    const drained = await haven(["host", "drain", target, ...etcdArgs(cluster)]);
    assert.equal(drained.code, 0, drained.stderr);
    assert.match(drained.stdout, new RegExp(`volume ${VOLUME}\\s+switched over to ${before.host}`));
    assert.equal((await primary())?.host, before.host);
    // The drained host is in maintenance until undrained (it would take over nothing meanwhile).
    const undrained = await haven(["host", "undrain", target, ...etcdArgs(cluster)]);
    assert.equal(undrained.code, 0, undrained.stderr);
    const unknown = await haven(["host", "drain", "nosuchhost", ...etcdArgs(cluster)]);
    assert.equal(unknown.code, 3, unknown.stderr);
  });

  test("a standby whose disk fails its health check does not take over until the disk is back", async () => {
    const now = (await primary())!;
    const standby = now.host === "h1" ? "h2" : "h1";
    await until("the standby in sync", async () => ((await replica(standby))?.state === "in-sync" ? true : undefined));
    // A directory where the probe file goes: the probe's open-for-write fails as on a broken disk.
    const probeFile = join(dir.path, "cluster", "hosts", standby, "disk0", DISK_PROBE_FILE);
    // The agent rewrites the probe file every health check, so it may reappear between the removal
    // and the mkdir: try again until the directory is in place.
    for (let attempt = 1; ; attempt++) {
      rmSync(probeFile, { force: true });
      try {
        mkdirSync(probeFile);
        break;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "EEXIST" || attempt === 100) throw error;
      }
    }
    const failed = await until("the standby's health check to report its disk", async () => {
      const kv = await etcd.get(keys.health(standby));
      const disk = kv && parseHostHealthRecord(kv.value, kv.key).disks.find((d) => !d.ok);
      return disk ?? undefined;
    });
    assert.match(failed.detail, /EISDIR/);
    assert.ok((await events("disk-failed", null)).some((e) => e.host === standby));

    process.kill(agents.pid(now.host), "SIGKILL");
    await until("the standby to say why it does not take over", async () =>
      (await events("failover-waiting")).some((e) => e.host === standby && /failed its health check/.test(e.message))
        ? true
        : undefined,
    );
    assert.equal((await primary())?.host, now.host, "no promotion onto a failing disk");

    rmSync(probeFile, { recursive: true });
    const promoted = await until("the standby to promote once its disk is back", async () => {
      const record = await primary();
      return record?.host === standby ? record : undefined;
    });
    assert.equal(promoted.epoch, now.epoch + 1);
    assert.ok((await events("disk-ok", null)).some((e) => e.host === standby));
    await until("the new primary to serve", async () =>
      (await run("qemu-io", ["-f", "raw", "-c", "read 0 4k", nbdUri(standby)])).code === 0 ? true : undefined,
    );
    agents.restart(now.host);
    await until("the old primary to rejoin in sync", async () =>
      (await replica(now.host))?.state === "in-sync" ? true : undefined,
    );
  });

  test("a standby whose copy is recorded out of sync is never promoted, and says why", async () => {
    const now = (await primary())!;
    const standby = now.host === "h1" ? "h2" : "h1";
    // Take the standby away; the primary records its copy out of sync before the next write completes.
    process.kill(agents.pid(standby), "SIGKILL");
    const wrote = await fio(nbdUri(now.host), ["--do_verify=0", "--size=4M"]);
    assert.equal(wrote.code, 0, wrote.stderr);
    await until("the standby's copy on record as out of sync", async () =>
      (await replica(standby))?.state === "out-of-sync" ? true : undefined,
    );
    // Now the primary dies too, and only the stale standby comes back.
    process.kill(agents.pid(now.host), "SIGKILL");
    agents.restart(standby);
    const waiting = await until("the standby to explain why it does not promote", async () => {
      const found = (await events("failover-waiting")).filter(
        (e) => e.host === standby && /not promoted/.test(e.message),
      );
      return found.length > 0 ? found : undefined;
    });
    assert.match(waiting[0]!.message, /may lack acknowledged writes/);
    assert.equal((await primary())?.host, now.host, "the primary record still names the dead host");

    // The operator's way out: refused without --force (nothing changes), then forced and logged.
    const refused = await haven(["volume", "promote", VOLUME, "--host", standby, ...etcdArgs(cluster)]);
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, /may lose acknowledged writes.*nothing was changed/);
    assert.equal((await primary())?.host, now.host);
    const forced = await haven(["volume", "promote", VOLUME, "--host", standby, "--force", ...etcdArgs(cluster)]);
    assert.equal(forced.code, 0, forced.stderr);
    await until("the forced primary to serve", async () =>
      (await run("qemu-io", ["-f", "raw", "-c", "read 0 4k", nbdUri(standby)])).code === 0 ? true : undefined,
    );
    assert.equal((await events("forced-promotion")).length, 1);
    assert.match((await primary())!.reason, /--force/);
  });
});
