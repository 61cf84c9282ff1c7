// The agents' metrics on a real local cluster (`haven cluster up`: etcd, two agents over HTTPS with
// fast timings, a two-copy volume): every agent answers GET /metrics with the token (the cluster's, or
// a viewer operator's) in valid text exposition, and 401 without one; the primary's metrics show the
// volume healthy with both copies in sync and the I/O a client did; after its host's agent is killed
// (kill -9, as agent-failover.test.ts does), the new primary's metrics show the primary and the epoch
// moved, its failover counter risen, the volume degraded with one copy in sync, and every live agent's
// view of etcd shows the dead host down; a switchover back is counted by the primary that hands over.
// promtool (when installed) accepts a real scrape.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { request } from "node:https";
import { join } from "node:path";
import { clusterUp, localHostPorts, type LocalClusterState } from "../../src/cluster/local-cluster.js";
import type { EtcdClient } from "../../src/cluster/etcd-client.js";
import { localClusterClient } from "../../src/cluster/local-cluster.js";
import { CA_CERT } from "../../src/security/pki.js";
import { haveEtcd } from "../helpers/etcd.js";
import { haveTool, run, tempDir } from "../helpers/server-process.js";
import {
  ClusterAgents,
  createTestVolume,
  etcdArgs,
  freeBasePort,
  stopLocalCluster,
  until,
  TEST_TIMINGS,
  VolumeProbe,
} from "../helpers/cluster.js";
import { parseExposition, sampleValue, type Family } from "../helpers/exposition.js";

const VOLUME = "metered";
const PROMTOOL = "/usr/bin/promtool";
const skip = !haveEtcd() || !haveTool("qemu-io") ? "needs etcd and qemu-io" : false;

interface Scrape {
  readonly status: number;
  readonly contentType: string;
  readonly body: string;
}

describe("agent metrics on a local cluster", { skip, timeout: 300_000 }, () => {
  const dir = tempDir("haven-metrics-");
  const clusterDir = join(dir.path, "cluster");
  let cluster: LocalClusterState;
  let etcd: EtcdClient;
  let probe: VolumeProbe;
  let basePort = 0;
  let token = "";
  let viewerToken = "";
  const agents = new ClusterAgents(() => cluster);

  /** GET /metrics of `host`'s agent over HTTPS (checked against the cluster CA), with `bearer` if given. */
  const scrape = (host: string, bearer?: string): Promise<Scrape> =>
    new Promise((resolve, reject) => {
      const req = request(
        {
          host: "127.0.0.1",
          port: localHostPorts(basePort, host).api,
          method: "GET",
          path: "/metrics",
          agent: false,
          ca: readFileSync(join(cluster.tlsDir!, CA_CERT)),
          headers: bearer === undefined ? {} : { authorization: `Bearer ${bearer}` },
        },
        (response) => {
          let body = "";
          response.setEncoding("utf8");
          response.on("data", (chunk: string) => (body += chunk));
          response.on("end", () =>
            resolve({ status: response.statusCode ?? 0, contentType: response.headers["content-type"] ?? "", body }),
          );
        },
      );
      req.once("error", reject);
      req.setTimeout(10_000, () => req.destroy(new Error("timed out")));
      req.end();
    });

  /** The families of a successful scrape of `host` with the cluster's token. */
  const families = async (host: string): Promise<Map<string, Family>> => {
    const answer = await scrape(host, token);
    assert.equal(answer.status, 200, answer.body);
    return parseExposition(answer.body);
  };
  /** Waits until `host`'s metrics satisfy `check` (its rounds run every 250 ms), and returns them. */
  const metricsWhen = (host: string, what: string, check: (metrics: Map<string, Family>) => boolean) =>
    until(
      `${host}'s metrics to show ${what}`,
      async () => {
        const metrics = await families(host);
        return check(metrics) ? metrics : undefined;
      },
      60_000,
    );

  before(async () => {
    basePort = await freeBasePort();
    cluster = await clusterUp({ dir: clusterDir, hosts: 2, basePort, timings: { ...TEST_TIMINGS } });
    etcd = await localClusterClient(cluster);
    probe = new VolumeProbe(etcd, VOLUME, basePort);
    token = readFileSync(join(clusterDir, "token"), "utf8").trim();
    await createTestVolume(cluster, VOLUME, "64M");
    const tokenFile = join(dir.path, "viewer-token");
    const added = await run(
      process.execPath,
      [
        "bin/haven.js",
        "operator",
        "add",
        "prometheus",
        "--role",
        "viewer",
        "--token-file",
        tokenFile,
        ...etcdArgs(cluster),
      ],
      { timeoutMs: 60_000 },
    );
    assert.equal(added.code, 0, added.stderr);
    viewerToken = readFileSync(tokenFile, "utf8").trim();
  });

  after(async () => {
    agents.killRestarted();
    await stopLocalCluster(clusterDir);
    dir.remove();
  });

  test("every agent answers /metrics in the text format with a token, the viewer's too, and 401 without one", async () => {
    for (const host of ["h1", "h2"]) {
      const refused = await scrape(host);
      assert.equal(refused.status, 401);
      assert.equal((JSON.parse(refused.body) as { error: { code: string } }).error.code, "HAVEN_ERR_UNAUTHORIZED");
      assert.equal((await scrape(host, "not-the-token-not-the-token")).status, 401);
      // The viewer's token is checked against the operators' records the agent caches: it may take a moment.
      const answer = await until(`${host} to take the viewer's token`, async () => {
        const got = await scrape(host, viewerToken);
        return got.status === 200 ? got : undefined;
      });
      assert.equal(answer.contentType, "text/plain; version=0.0.4; charset=utf-8");
      const metrics = parseExposition(answer.body);
      assert.equal(sampleValue(metrics, "haven_host_info", { host }), 1);
      assert.equal(sampleValue(metrics, "haven_host_lease_held", { host }), 1);
      assert.equal(sampleValue(metrics, "haven_host_fence_after_seconds", { host }), TEST_TIMINGS.fenceAfterMs / 1000);
      const age = sampleValue(metrics, "haven_host_lease_age_seconds", { host })!;
      assert.ok(age >= 0 && age < TEST_TIMINGS.leaseTtlMs / 1000, `lease age ${age} s`);
      await metricsWhen(
        host,
        "both hosts up in its view of etcd",
        (m) =>
          sampleValue(m, "haven_cluster_host_up", { host: "h1" }) === 1 &&
          sampleValue(m, "haven_cluster_host_up", { host: "h2" }) === 1,
      );
    }
  });

  test("the primary's metrics show the volume healthy, both copies in sync, and the client's I/O", async () => {
    const primary = (await probe.primary())!;
    const standby = primary.host === "h1" ? "h2" : "h1";
    const volume = { volume: VOLUME };
    await metricsWhen(
      primary.host,
      "the volume healthy with both copies in sync",
      (m) =>
        sampleValue(m, "haven_volume_health", { ...volume, state: "healthy" }) === 1 &&
        sampleValue(m, "haven_volume_in_sync_copies", volume) === 2,
    );
    const earlier = await families(primary.host);
    const written = sampleValue(earlier, "haven_volume_written_bytes_total", volume) ?? 0;
    const writes = sampleValue(earlier, "haven_volume_write_duration_seconds_count", volume) ?? 0;
    assert.ok(await probe.qemuIo(primary.host, "write -P 7 0 1M"), "qemu-io wrote 1 MiB");
    assert.ok(await probe.qemuIo(primary.host, "read -P 7 0 1M"), "qemu-io read it back");
    const now = await families(primary.host);
    assert.equal(sampleValue(now, "haven_volume_epoch", volume), primary.epoch);
    assert.equal(sampleValue(now, "haven_volume_primary_info", { ...volume, host: primary.host }), 1);
    assert.ok(
      sampleValue(now, "haven_volume_written_bytes_total", volume)! >= written + (1 << 20),
      "1 MiB more written",
    );
    assert.ok(sampleValue(now, "haven_volume_write_duration_seconds_count", volume)! > writes, "writes timed");
    assert.ok(sampleValue(now, "haven_volume_read_bytes_total", volume)! >= 1 << 20, "1 MiB read");
    for (const host of ["h1", "h2"])
      assert.equal(sampleValue(now, "haven_copy_state", { ...volume, host, state: "in-sync" }), 1, `${host}'s copy`);
    const other = await families(standby);
    assert.equal(sampleValue(other, "haven_volume_epoch", volume), undefined, "only the primary reports the volume");
    assert.equal(sampleValue(other, "haven_volume_failovers_total", volume), 0, "a copy here: its count starts at 0");
    assert.equal(sampleValue(other, "haven_cluster_volume_in_sync_copies", volume), 2);
  });

  test("after the primary's host dies, the new primary's metrics show the failover and the lost copy", async () => {
    const first = (await probe.primary())!;
    const standby = first.host === "h1" ? "h2" : "h1";
    const volume = { volume: VOLUME };
    process.kill(agents.pid(first.host), "SIGKILL");
    const promoted = await until("the standby to promote", async () => {
      const now = await probe.primary();
      return now?.host === standby ? now : undefined;
    });
    // The engine serves a moment before the failover is counted (the volume-serving event is written between).
    const served = await metricsWhen(
      standby,
      "the volume served at the new epoch and the failover counted",
      (m) =>
        sampleValue(m, "haven_volume_epoch", volume) === promoted.epoch &&
        sampleValue(m, "haven_volume_failovers_total", volume) !== 0,
    );
    assert.ok(promoted.epoch > first.epoch);
    assert.equal(sampleValue(served, "haven_volume_primary_info", { ...volume, host: standby }), 1);
    assert.equal(sampleValue(served, "haven_volume_failovers_total", volume), 1, "the failover is counted here");
    assert.equal(sampleValue(served, "haven_volume_failover_duration_seconds_count", volume), 1);
    assert.ok(sampleValue(served, "haven_volume_failover_duration_seconds_sum", volume)! >= 0);
    assert.equal(sampleValue(served, "haven_volume_copies", volume), 2);
    assert.equal(sampleValue(served, "haven_volume_in_sync_copies", volume), 1, "only the new primary's copy");
    assert.equal(sampleValue(served, "haven_volume_health", { ...volume, state: "degraded" }), 1);
    assert.equal(sampleValue(served, "haven_copy_state", { ...volume, host: first.host, state: "in-sync" }), 0);
    await metricsWhen(
      standby,
      "the dead host down and its copy out of sync in the view of etcd",
      (m) =>
        sampleValue(m, "haven_cluster_host_up", { host: first.host }) === 0 &&
        sampleValue(m, "haven_cluster_volume_primary_up", volume) === 1 &&
        sampleValue(m, "haven_cluster_copy_in_sync", { ...volume, host: first.host }) === 0 &&
        sampleValue(m, "haven_cluster_volume_in_sync_copies", volume) === 1,
    );
    await assert.rejects(scrape(first.host, token), "the dead agent answers nothing");
  });

  test("a switchover is counted by the primary that hands the volume over, and the target serves at a higher epoch", async () => {
    const source = (await probe.primary())!;
    const target = source.host === "h1" ? "h2" : "h1";
    const volume = { volume: VOLUME };
    agents.restart(target); // killed by the previous test
    await until(
      `${target}'s copy back in sync`,
      async () => ((await probe.replica(target))?.state === "in-sync" ? true : undefined),
      120_000,
    );
    const moved = await run(
      process.execPath,
      ["bin/haven.js", "volume", "switchover", VOLUME, "--to", target, ...etcdArgs(cluster)],
      { timeoutMs: 60_000 },
    );
    assert.equal(moved.code, 0, moved.stderr);
    const handedOver = await families(source.host);
    assert.equal(sampleValue(handedOver, "haven_volume_switchovers_total", { ...volume, result: "done" }), 1);
    assert.equal(sampleValue(handedOver, "haven_volume_switchovers_total", { ...volume, result: "refused" }), 0);
    assert.equal(sampleValue(handedOver, "haven_volume_switchover_duration_seconds_count", volume), 1);
    assert.equal(sampleValue(handedOver, "haven_volume_epoch", volume), undefined, "the source serves it no more");
    const now = (await probe.primary())!;
    assert.equal(now.host, target);
    await metricsWhen(
      target,
      "the volume served at the switchover's epoch",
      (m) =>
        sampleValue(m, "haven_volume_epoch", volume) === now.epoch &&
        sampleValue(m, "haven_volume_primary_info", { ...volume, host: target }) === 1,
    );
    assert.ok(now.epoch > source.epoch);
  });

  test(
    "promtool accepts a real scrape and the alert rules",
    { skip: !existsSync(PROMTOOL) && "promtool is not installed (Debian package prometheus)" },
    async () => {
      const primary = (await probe.primary())!;
      const lint = spawnSync(PROMTOOL, ["check", "metrics"], {
        input: (await scrape(primary.host, token)).body,
        encoding: "utf8",
      });
      assert.equal(lint.status, 0, `promtool check metrics: ${lint.stdout}\n${lint.stderr}`);
      const rules = spawnSync(PROMTOOL, ["check", "rules", "docs/prometheus-alerts.yml"], { encoding: "utf8" });
      assert.equal(rules.status, 0, `promtool check rules: ${rules.stdout}\n${rules.stderr}`);
    },
  );
});
