#!/usr/bin/env node
// bench/migrate/migrate.mjs: how long a guest is paused by a live migration, Haven against the floor
// QEMU itself sets, in the same run on the same machine.
//
// The guest is the haven-test image (kernel booted directly, 256 MiB RAM, 1 vCPU, TCG) running a writer
// on its serial console: a counter written and fsynced to its disk every 10 ms, each value printed
// after the fsync returned. The pause the guest sees is the largest gap between two printed values
// around the switch, timed as the lines arrive on the host.
//
//   floor  two plain QEMU processes on this machine, the guest's disk one local raw file both open,
//          migrated back and forth with the same QEMU settings Haven uses (TLS with X.509 under one CA,
//          downtime-limit 300 ms); the destination resumes by itself when the state has arrived.
//   haven  a two-host local cluster (etcd, agents, replicated volume served over NBD, TLS everywhere):
//          `haven vm migrate web --to HOST` back and forth; the disk's primary moves at the switch.
//
// Each side runs BENCH_MIGRATIONS migrations (default 10); prints p50/p95/max of the pause and of the
// whole migration, the ratio, and the issue's target: Haven's p50 pause <= 1.5 x floor p50 + 300 ms.
//
//   node bench/migrate/migrate.mjs        (about 5 minutes; needs `npm run build` and the test image)

import { execFile, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, copyFileSync, writeFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const dist = (path) => import(join(ROOT, "dist", "src", path));
const { clusterUp, clusterDown } = await dist("cluster/local-cluster.js");
const { createCa, issueCertificate } = await dist("security/pki.js");
const { QmpClient } = await dist("vm/qmp-client.js");
const { ensureNamespaceNetwork, removeNamespaceNetwork, LOCAL_CLUSTER_BRIDGE } = await dist("vm/network.js");

const MIGRATIONS = Number(process.env.BENCH_MIGRATIONS ?? 10);
const IMAGES = process.env.HAVEN_IMAGE_DIR ?? join(ROOT, ".cache", "images");
const log = (line) => process.stderr.write(`[bench] ${line}\n`);
const WRITER =
  "i=0; while true; do i=$((i+1)); echo $i | dd of=/data/counter conv=fsync 2>/dev/null && echo c=$i; usleep 10000; done";

for (const file of ["haven-test-kernel", "haven-test-initrd", "haven-test.cmdline", "haven-test.raw"])
  if (!existsSync(join(IMAGES, file))) {
    log(`${join(IMAGES, file)} is missing: run scripts/build-test-image.sh first`);
    process.exit(2);
  }

const work = mkdtempSync(join(tmpdir(), "haven-bench-migrate-"));
const children = new Set();
let clusterDir;
const namespace = `haven-bench-mig-${process.pid}`;

async function cleanup() {
  for (const child of children) child.kill("SIGKILL");
  if (clusterDir !== undefined) await clusterDown(clusterDir, 20_000).catch(() => undefined);
  await removeNamespaceNetwork(namespace).catch(() => undefined);
  rmSync(work, { recursive: true, force: true });
}
process.on("SIGINT", () => cleanup().finally(() => process.exit(130)));
process.on("SIGTERM", () => cleanup().finally(() => process.exit(143)));

/** Lines from a serial socket with their arrival times (connecting again until the socket is there). */
class Console {
  constructor(path) {
    this.lines = [];
    this.partial = "";
    this.closed = false;
    this.open(path);
  }
  open(path) {
    if (this.closed) return;
    this.socket = connect(path);
    this.socket.setEncoding("utf8");
    this.socket.on("data", (chunk) => {
      const atMs = performance.now();
      const parts = (this.partial + chunk.replace(/\r/g, "")).split("\n");
      this.partial = parts.pop();
      for (const text of parts) this.lines.push({ atMs, text: text.trim() });
    });
    this.socket.on("error", () => void sleep(20).then(() => this.open(path)));
  }
  counters() {
    return this.lines
      .filter((l) => /^c=\d+$/.test(l.text))
      .map((l) => ({ atMs: l.atMs, value: Number(l.text.slice(2)) }));
  }
  type(line) {
    this.socket.write(`${line}\n`);
  }
  close() {
    this.closed = true;
    this.socket.destroy();
  }
}

async function until(what, probe, timeoutMs = 120_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** The pause around a switch: the last value on the old console to the first on the new one. */
function pauseOf(before, after) {
  const last = before.counters().at(-1);
  const first = after.counters()[0];
  if (last === undefined || first === undefined) throw new Error("no counter values around the switch");
  if (first.value <= last.value) throw new Error(`the counter went back: ${first.value} after ${last.value}`);
  return first.atMs - last.atMs;
}

function stats(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return { p50: at(0.5), p95: at(0.95), max: sorted.at(-1) };
}

// ---- the floor: plain QEMU to plain QEMU ------------------------------------------------------------

async function floor() {
  const pki = join(work, "pki");
  await createCa(join(pki, "ca"), "bench");
  for (const host of ["a", "b"])
    await issueCertificate(join(pki, "ca"), join(pki, host), { kind: "host", name: host, addresses: ["127.0.0.1"] });
  const disk = join(work, "disk.raw");
  copyFileSync(join(IMAGES, "haven-test.raw"), disk);
  const cmdline = readFileSync(join(IMAGES, "haven-test.cmdline"), "utf8").trim();
  let serial = 0;
  const start = async (host, endpoint, incoming) => {
    const dir = join(work, `q${serial++}`);
    rmSync(dir, { recursive: true, force: true });
    await import("node:fs/promises").then((fs) => fs.mkdir(dir));
    const args = [
      "-name",
      "guest=bench",
      "-machine",
      "q35",
      "-accel",
      "tcg",
      "-cpu",
      "qemu64,+rdrand",
      "-smp",
      "1",
      "-m",
      "256",
      "-nodefaults",
      "-no-user-config",
      "-display",
      "none",
      "-chardev",
      `socket,id=qmp,path=${dir}/qmp,server=on,wait=off`,
      "-mon",
      "chardev=qmp,mode=control",
      "-chardev",
      `socket,id=s0,path=${dir}/serial,server=on,wait=off`,
      "-serial",
      "chardev:s0",
      "-blockdev",
      JSON.stringify({ driver: "file", "node-name": "f", filename: disk, cache: { direct: true } }),
      "-blockdev",
      JSON.stringify({ driver: "raw", "node-name": "disk0", file: "f", cache: { direct: true } }),
      "-device",
      "virtio-blk-pci,id=d,drive=disk0,werror=stop,rerror=stop",
      "-object",
      `tls-creds-x509,id=tls0,dir=${join(pki, host)},endpoint=${endpoint},verify-peer=on`,
      "-kernel",
      join(IMAGES, "haven-test-kernel"),
      "-initrd",
      join(IMAGES, "haven-test-initrd"),
      "-append",
      cmdline,
      ...(incoming ? ["-incoming", "defer"] : []),
    ];
    const child = spawn("qemu-system-x86_64", args, { stdio: "ignore" });
    children.add(child);
    child.on("exit", () => children.delete(child));
    await until("QMP", async () => existsSync(`${dir}/qmp`));
    const qmp = await QmpClient.connect(`${dir}/qmp`, { connectTimeoutMs: 10_000 });
    return { child, qmp, dir, host };
  };
  let source = await start("a", "client", false);
  let console = new Console(`${source.dir}/serial`);
  await until("the guest's boot", async () => console.lines.some((l) => /haven-test: ready/.test(l.text)));
  console.type(WRITER);
  await until("the writer", async () => console.counters().length > 5);
  const pauses = [];
  const totals = [];
  for (let round = 0; round < MIGRATIONS; round++) {
    const host = source.host === "a" ? "b" : "a";
    const began = performance.now();
    const target = await start(host, "server", true);
    const next = new Console(`${target.dir}/serial`);
    await target.qmp.execute("migrate-set-parameters", { "tls-creds": "tls0" });
    await target.qmp.execute("migrate-incoming", { uri: "tcp:127.0.0.1:0" });
    const info = await target.qmp.execute("query-migrate");
    const port = info["socket-address"].find((entry) => entry.type === "inet").port;
    // The source's credentials are its own host's: a client certificate of the same CA.
    await source.qmp.execute("object-del", { id: "tls0" });
    await source.qmp.execute("object-add", {
      "qom-type": "tls-creds-x509",
      id: "tls0",
      dir: join(pki, source.host),
      endpoint: "client",
      "verify-peer": true,
    });
    await source.qmp.execute("migrate-set-parameters", {
      "tls-creds": "tls0",
      "tls-hostname": host,
      "downtime-limit": 300,
      "max-bandwidth": 4 * 1024 ** 3,
    });
    await source.qmp.execute("migrate", { uri: `tcp:127.0.0.1:${port}` });
    await until("the destination running", async () => (await target.qmp.execute("query-status")).status === "running");
    totals.push(performance.now() - began);
    await until("values on the destination", async () => next.counters().length > 3);
    pauses.push(pauseOf(console, next));
    console.close();
    source.qmp.close();
    source.child.kill("SIGKILL");
    // The old destination becomes the source: its TLS object becomes a client one at the next round.
    source = target;
    console = next;
  }
  console.close();
  source.child.kill("SIGKILL");
  return { pauses, totals };
}

// ---- Haven --------------------------------------------------------------------------------------------

function haven(context, ...args) {
  return new Promise((done) =>
    execFile(
      process.execPath,
      [join(ROOT, "bin", "haven.js"), ...args],
      { env: { ...process.env, HAVEN_CONTEXT: context }, timeout: 600_000 },
      (error, stdout, stderr) => done({ code: error ? (error.code ?? 1) : 0, stdout, stderr }),
    ),
  );
}

async function freeBasePort() {
  for (;;) {
    const base = 20_000 + 100 * Math.floor(Math.random() * 125);
    const offsets = [0, 1, 10, 11, 12, 13, 14, 20, 21, 22, 23, 24];
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

async function havenSide() {
  clusterDir = join(work, "cluster");
  const context = join(work, "context.json");
  await ensureNamespaceNetwork({ namespace, bridge: LOCAL_CLUSTER_BRIDGE });
  const state = await clusterUp({
    dir: clusterDir,
    hosts: 2,
    basePort: await freeBasePort(),
    vms: { cpus: "0-1", memory: "1G", imageDir: IMAGES, bridge: LOCAL_CLUSTER_BRIDGE, netns: namespace },
  });
  writeFileSync(context, JSON.stringify({ etcd: state.endpoints, clusterDir, tls: state.tlsDir }));
  const created = await haven(
    context,
    "vm",
    "create",
    "web",
    "--vcpus",
    "1",
    "--memory",
    "256M",
    "--disk-size",
    "128M",
    "--replicas",
    "2",
    "--image",
    "haven-test",
    "--host",
    "h1",
  );
  if (created.code !== 0) throw new Error(created.stderr);
  const show = async () => JSON.parse((await haven(context, "vm", "show", "web", "--json")).stdout);
  let vm = await until("web running", async () => {
    const now = await show();
    return now.state === "running" && now.status?.run?.serialSocket ? now : undefined;
  });
  let console = new Console(vm.status.run.serialSocket);
  await until("the guest's boot", async () => /haven-test: ready/.test(readFileSync(vm.status.run.serialLog, "utf8")));
  console.type(WRITER);
  await until("the writer", async () => console.counters().length > 5);
  const pauses = [];
  const totals = [];
  const reported = [];
  for (let round = 0; round < MIGRATIONS; round++) {
    const to = vm.host === "h1" ? "h2" : "h1";
    const began = performance.now();
    const moved = await haven(context, "vm", "migrate", "web", "--to", to);
    if (moved.code !== 0) throw new Error(`migration ${round + 1}: ${moved.stderr}`);
    totals.push(performance.now() - began);
    const paused = /guest paused (\d+) ms/.exec(moved.stdout);
    if (paused) reported.push(Number(paused[1]));
    vm = await until(`web on ${to}`, async () => {
      const now = await show();
      return now.host === to && now.status?.run?.serialSocket ? now : undefined;
    });
    const next = new Console(vm.status.run.serialSocket);
    await until("values on the destination", async () => next.counters().length > 3);
    pauses.push(pauseOf(console, next));
    console.close();
    console = next;
  }
  console.close();
  return { pauses, totals, reported };
}

try {
  log(`floor: ${MIGRATIONS} migrations between two plain QEMUs on a shared local file`);
  const plain = await floor();
  log(`haven: ${MIGRATIONS} migrations between two hosts of a local cluster`);
  const ours = await havenSide();
  const row = (name, values) => {
    const s = stats(values);
    return `| ${name.padEnd(34)} | ${String(Math.round(s.p50)).padStart(6)} | ${String(Math.round(s.p95)).padStart(6)} | ${String(Math.round(s.max)).padStart(6)} |`;
  };
  const lines = [
    `| ms (${MIGRATIONS} migrations each)${" ".repeat(14)} |    p50 |    p95 |    max |`,
    "| ---------------------------------- | ------ | ------ | ------ |",
    row("floor: guest pause (serial gap)", plain.pauses),
    row("haven: guest pause (serial gap)", ours.pauses),
    row("haven: pause as Haven reports it", ours.reported.length > 0 ? ours.reported : [NaN]),
    row("floor: whole migration", plain.totals),
    row("haven: whole migration (CLI)", ours.totals),
  ];
  const floorP50 = stats(plain.pauses).p50;
  const havenP50 = stats(ours.pauses).p50;
  const target = 1.5 * floorP50 + 300;
  lines.push(
    "",
    `haven / floor pause (p50): ${(havenP50 / floorP50).toFixed(2)}x; target: haven p50 <= 1.5 x ${Math.round(floorP50)} + 300 = ${Math.round(target)} ms: ${havenP50 <= target ? "PASS" : "MISS"}`,
  );
  process.stdout.write(`${lines.join("\n")}\n`);
} finally {
  await cleanup();
}
