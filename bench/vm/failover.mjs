#!/usr/bin/env node
// bench/vm/failover.mjs: how long a VM is gone when its host dies. A local cluster of three hosts (real
// etcd with one member per host, real agents, QEMU under TCG) runs VM "web" (the haven-test image,
// booted from its kernel, on a two-copy volume, with a NIC on the cluster's bridge). Each round kills
// the VM's host as a power loss would (`haven cluster kill`: its agent, watchdog, QEMU and etcd member
// at once) and measures, from the kill:
//   promoted   the disk's primary record names another host (the standby promoted its copy)
//   qemu       the VM's QEMU started there (the run's start time in its status record)
//   heartbeat  the guest's first heartbeat there (its host's agent API)
//   http       the guest's HTTP server answers on its fixed address (from inside the cluster's namespace)
// and that the guest's boot counter went up by one (it lives on the replicated disk). The killed host
// is revived and its copy resyncs before the next round. Runs with the default timings and with the
// fast profile (FAST_TIMINGS), BENCH_KILLS rounds each (default 10), and prints p50/p95/max.
//
//   node bench/vm/failover.mjs            (about 10 minutes; BENCH_KILLS=3 for a quick look)

import { execFile } from "node:child_process";
import { get } from "node:http";
import { setTimeout as delay } from "node:timers/promises";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const dist = (path) => import(join(ROOT, "dist", "src", path));
const { clusterUp, clusterDown, clusterKill, clusterRevive } = await dist("cluster/local-cluster.js");
const { readClusterRecords } = await dist("cluster/cluster-read.js");
const { EtcdClient } = await dist("cluster/etcd-client.js");
const { DEFAULT_TIMINGS, FAST_TIMINGS } = await dist("agent/timings.js");
const { ensureNamespaceNetwork, removeNamespaceNetwork, ipv4FromMac, LOCAL_CLUSTER_BRIDGE } =
  await dist("vm/network.js");
const { runningVms } = await dist("vm/runtime-dir.js");

const KILLS = Number(process.env.BENCH_KILLS ?? 10);
const PROFILES = (process.env.BENCH_PROFILES ?? "default,fast").split(",");
const log = (line) => process.stderr.write(`[bench] ${line}\n`);
const sleep = (ms) => delay(ms);

async function freeBasePort() {
  for (;;) {
    // Below Linux's ephemeral range (32768 and up): an outgoing connection's local port can never take
    // a port a host restarted later wants to listen on again.
    const base = 20_000 + 100 * Math.floor(Math.random() * 125);
    const offsets = [0, 1, 10, 11, 12, 13, 14, 20, 21, 22, 23, 24, 30, 31, 32, 33, 34];
    const ok = await Promise.all(
      offsets.map(
        (offset) =>
          new Promise((done) => {
            const server = createServer();
            server.once("error", () => done(false));
            server.listen(base + offset, "127.0.0.1", () => server.close(() => done(true)));
          }),
      ),
    );
    if (ok.every(Boolean)) return base;
  }
}

async function until(what, probe, timeoutMs = 180_000, everyMs = 50) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(everyMs);
  }
}

function run(command, args, options = {}) {
  return new Promise((done) =>
    execFile(command, args, { timeout: 240_000, ...options }, (error, stdout, stderr) =>
      done({ code: error ? (error.code ?? 1) : 0, stdout, stderr }),
    ),
  );
}

function getJson(url, token) {
  return new Promise((done, fail) =>
    get(url, { headers: { authorization: `Bearer ${token}` }, timeout: 5_000 }, (response) => {
      let body = "";
      response.on("data", (chunk) => (body += chunk));
      response.on("end", () => {
        try {
          done(JSON.parse(body));
        } catch (error) {
          fail(error);
        }
      });
    }).on("error", fail),
  );
}

function percentile(values, p) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

async function profileRun(profile) {
  const timings = profile === "fast" ? FAST_TIMINGS : DEFAULT_TIMINGS;
  const dir = mkdtempSync(join(tmpdir(), "haven-bench-vm-"));
  const namespace = `haven-bench-${process.pid}`;
  await ensureNamespaceNetwork({ namespace, bridge: LOCAL_CLUSTER_BRIDGE });
  const context = join(dir, "context.json");
  const haven = (...args) =>
    run(process.execPath, [join(ROOT, "bin", "haven.js"), ...args], {
      env: { ...process.env, HAVEN_CONTEXT: context },
    });
  let state;
  try {
    state = await clusterUp({
      dir,
      hosts: 3,
      basePort: await freeBasePort(),
      timings: { ...timings },
      vms: {
        cpus: "0-1",
        memory: "1G",
        imageDir: join(ROOT, ".cache", "images"),
        bridge: LOCAL_CLUSTER_BRIDGE,
        netns: namespace,
      },
    });
    writeFileSync(context, JSON.stringify({ etcd: state.endpoints, clusterDir: dir }));
    const etcd = new EtcdClient([...state.endpoints]);
    const token = readFileSync(join(dir, "token"), "utf8").trim();
    const created = await haven(
      "vm",
      "create",
      "web",
      "--vcpus",
      "1",
      "--memory",
      "256M",
      "--disk-size",
      "128M",
      "--image",
      "haven-test",
      "--nic",
      "default",
    );
    if (created.code !== 0) throw new Error(`vm create: ${created.stderr}`);
    const records = await readClusterRecords(etcd);
    const address = ipv4FromMac(records.vms.get("web").nics[0].mac);
    const bootCount = async () => {
      // A node client inside the namespace (busybox wget -T crashes on this machine).
      const client =
        `require("http").get("http://${address}/boot-count", { timeout: 1000 }, (r) => r.pipe(process.stdout))` +
        `.on("timeout", function () { this.destroy(); }).on("error", () => process.exit(1));`;
      const got = await run("ip", ["netns", "exec", namespace, process.execPath, "-e", client]);
      return got.code === 0 && /^\d+/.test(got.stdout.trim()) ? Number(got.stdout.trim()) : undefined;
    };
    await until("the guest answering", bootCount, 180_000, 200);
    const rows = [];
    for (let round = 1; round <= KILLS; round++) {
      const before = await readClusterRecords(etcd);
      const host = before.primaries.get("web").host;
      const count = await bootCount();
      const killedAt = Date.now();
      await clusterKill(dir, host, { findVms: runningVms });
      const promoted = await until("promotion", async () => {
        const now = await readClusterRecords(etcd);
        return now.primaries.get("web")?.host !== host ? Date.now() - killedAt : undefined;
      });
      const status = await until("QEMU started", async () => {
        const now = (await readClusterRecords(etcd)).vmStatus.get("web")?.record;
        return now?.host !== host && now?.state === "running" && now.run ? now : undefined;
      });
      const qemu = Date.parse(status.run.startedAt) - killedAt;
      const info = (await readClusterRecords(etcd)).liveHosts.get(status.host);
      const heartbeat = await until("the first heartbeat", async () => {
        const vm = await getJson(`http://127.0.0.1:${info.apiPort}/v1/vms/web`, token);
        return vm.checks?.heartbeat?.ok ? Date.parse(vm.checks.heartbeat.at) - killedAt : undefined;
      });
      let http;
      const after = await until(
        "the guest's HTTP answer",
        async () => {
          const value = await bootCount();
          if (value !== undefined) http = Date.now() - killedAt;
          return value;
        },
        180_000,
        100,
      );
      rows.push({ promoted, qemu, heartbeat, http });
      log(
        `${profile} round ${round}: ${host} killed; promoted ${promoted} ms, QEMU ${qemu} ms, heartbeat ${heartbeat} ms, HTTP ${http} ms; boot-count ${count} -> ${after}`,
      );
      if (after !== count + 1) throw new Error(`boot-count went from ${count} to ${after}, not up by one`);
      await clusterRevive(dir, host);
      await until("every copy in sync", async () => {
        const now = await readClusterRecords(etcd);
        return [...(now.replicas.get("web") ?? new Map()).values()].every((r) => r.state === "in-sync") &&
          now.liveHosts.size === 3
          ? true
          : undefined;
      });
    }
    return rows;
  } finally {
    await clusterDown(dir, 20_000).catch(() => undefined);
    await removeNamespaceNetwork(namespace).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
}

const results = {};
for (const profile of PROFILES) results[profile] = await profileRun(profile);
const line = (cells) => `| ${cells.join(" | ")} |`;
console.log(`\nVM failover, ${KILLS} kills per profile (ms from the kill of the VM's host), QEMU under TCG:\n`);
console.log(line(["profile", "step", "p50", "p95", "max"]));
console.log(line(["---", "---", "---", "---", "---"]));
for (const [profile, rows] of Object.entries(results))
  for (const step of ["promoted", "qemu", "heartbeat", "http"]) {
    const values = rows.map((row) => row[step]);
    console.log(line([profile, step, percentile(values, 50), percentile(values, 95), Math.max(...values)]));
  }
console.log("\nFor comparison (documented): Proxmox HA about 2 minutes, XenServer HA about 2 minutes.");
