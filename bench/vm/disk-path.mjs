#!/usr/bin/env node
// bench/vm/disk-path.mjs — what a VM's stable disk endpoint costs. One NbdServer serves a file-backed
// volume in this process; fio (ioengine=nbd, one connection) runs the same workloads through four paths
// in one run, so only the path changes between columns:
//
//   endpoint     DIR/<volume>.sock, routed local: the endpoint hands the accepted socket to the server
//   direct-unix  the server's own unix socket listener
//   direct-tcp   the server's own TCP listener on 127.0.0.1
//   via-remote   the endpoint routed remote to that TCP listener: every byte piped through the endpoint
//
// Each round runs every path once, in the order above on odd rounds and reversed on even ones, so each
// ratio's two paths always run back to back and a slow drift of the machine's load cancels out. It
// prints the median of each path and, for endpoint/direct-unix (target >= 0.90x), endpoint/direct-tcp
// and via-remote/direct-tcp, the median over rounds of the ratio within a round. See bench/README.md. Needs `npm run build` and fio with the nbd engine.

import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { loadavg } from "node:os";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const dist = (path) => import(join(ROOT, "dist", "src", path));

const KNOWN = new Set(["BENCH_RUNTIME", "BENCH_ROUNDS", "BENCH_SIZE", "BENCH_WORKLOADS", "BENCH_OUT"]);
for (const name of Object.keys(process.env))
  if (name.startsWith("BENCH_") && !KNOWN.has(name)) usage(`unknown variable ${name}`);
const RUNTIME_S = positiveInteger("BENCH_RUNTIME", 5);
const ROUNDS = positiveInteger("BENCH_ROUNDS", 3);
const SIZE_MIB = positiveInteger("BENCH_SIZE", 512); // MiB
const OUT = process.env.BENCH_OUT;
const VOLUME = "bench";
const RAMP_S = 1;
const TARGET = 0.9;

const WORKLOADS = [
  { name: "seq-write-1m", args: ["--rw=write", "--bs=1M", "--iodepth=4"], metric: "MB/s" },
  { name: "seq-read-1m", args: ["--rw=read", "--bs=1M", "--iodepth=4"], metric: "MB/s" },
  { name: "rand-write-4k", args: ["--rw=randwrite", "--bs=4k", "--iodepth=32"], metric: "IOPS" },
  { name: "rand-read-4k", args: ["--rw=randread", "--bs=4k", "--iodepth=32"], metric: "IOPS" },
];
const SELECTED = process.env.BENCH_WORKLOADS?.split(",") ?? WORKLOADS.map((workload) => workload.name);
for (const name of SELECTED)
  if (!WORKLOADS.some((workload) => workload.name === name)) usage(`unknown workload '${name}' in BENCH_WORKLOADS`);
const PATHS = ["endpoint", "direct-unix", "direct-tcp", "via-remote"];

function usage(problem) {
  process.stderr.write(
    `bench/vm/disk-path.mjs: ${problem}\n` +
      "variables: BENCH_RUNTIME (s per workload, default 5), BENCH_ROUNDS (default 3), " +
      "BENCH_SIZE (MiB, default 512), BENCH_WORKLOADS (comma list, default all), BENCH_OUT (directory for fio JSON and summary.txt)\n",
  );
  process.exit(2);
}

function positiveInteger(name, fallback) {
  const text = process.env[name];
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value <= 0) usage(`${name} must be a positive integer, got '${text}'`);
  return value;
}

const log = (line) => process.stderr.write(`[bench] ${line}\n`);
const fios = new Set();

const TIMED = ["--time_based", `--runtime=${RUNTIME_S}`, `--ramp_time=${RAMP_S}`];

/** Runs one fio job over one NBD connection; resolves with its MB/s or IOPS (reads + writes). */
function runFio(uri, workload, jsonPath) {
  return new Promise((resolvePromise, reject) => {
    const args = [
      "--name=bench",
      "--ioengine=nbd",
      `--uri=${uri}`,
      `--size=${SIZE_MIB}M`,
      "--numjobs=1",
      "--output-format=json",
      ...workload.args,
    ];
    // Asynchronous on purpose: the NBD server runs on this process's event loop.
    const child = spawn("fio", args, { stdio: ["ignore", "pipe", "pipe"] });
    fios.add(child);
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk) => (stdout += chunk));
    child.stderr.on("data", (chunk) => (stderr += chunk));
    child.on("error", reject);
    child.on("close", (code) => {
      fios.delete(child);
      if (jsonPath) writeFileSync(jsonPath, stdout);
      if (code !== 0) return reject(new Error(`fio ${workload.name} on ${uri} exited ${code}: ${stderr.trim()}`));
      const job = JSON.parse(stdout.slice(stdout.indexOf("{"))).jobs[0];
      const bytes = job.read.bw_bytes + job.write.bw_bytes;
      const iops = job.read.iops + job.write.iops;
      resolvePromise(workload.metric === "MB/s" ? bytes / 1e6 : iops);
    });
  });
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

const fioCheck = spawnSync("fio", ["--enghelp=nbd"], { encoding: "utf8" });
if (fioCheck.status !== 0 || !/uri/.test(fioCheck.stdout)) usage("needs fio with the nbd engine (fio --enghelp=nbd)");

const { FileDevice } = await dist("block/file-device.js");
const { NbdServer } = await dist("nbd/server.js");
const { DiskEndpoints } = await dist("agent/disk-endpoints.js");

const work = mkdtempSync("/var/tmp/haven-disk-path-");
const out = OUT ?? mkdtempSync("/tmp/haven-disk-path-out-");
rmSync(out, { recursive: true, force: true });
spawnSync("mkdir", ["-p", out]);
let device;
let server;
let endpoints;
let cleaning;

async function cleanup() {
  cleaning ??= (async () => {
    for (const child of fios) if (child.pid !== undefined) process.kill(child.pid, "SIGKILL");
    await endpoints?.stop();
    await server?.stop();
    await device?.close();
    rmSync(work, { recursive: true, force: true });
  })();
  return cleaning;
}
for (const signal of ["SIGINT", "SIGTERM"])
  process.on(signal, () => {
    log(`${signal}: stopping`);
    void cleanup().finally(() => process.exit(130));
  });

try {
  device = await FileDevice.open(join(work, "volume.raw"), { createSizeBytes: SIZE_MIB * 1024 * 1024 });
  server = new NbdServer({ exports: [{ name: VOLUME, description: "", device }], log: () => undefined });
  const directSocket = join(work, "direct.sock");
  await server.listen({ kind: "unix", path: directSocket });
  const tcpPort = Number((await server.listen({ kind: "tcp", host: "127.0.0.1", port: 0 })).split(":").pop());
  endpoints = new DiskEndpoints({ directory: join(work, "endpoints"), local: server, log: () => undefined });
  const endpointSocket = await endpoints.open(VOLUME);

  const uris = {
    endpoint: `nbd+unix:///${VOLUME}?socket=${endpointSocket}`,
    "direct-unix": `nbd+unix:///${VOLUME}?socket=${directSocket}`,
    "direct-tcp": `nbd://127.0.0.1:${tcpPort}/${VOLUME}`,
    "via-remote": `nbd+unix:///${VOLUME}?socket=${endpointSocket}`,
  };
  const routeFor = (path) =>
    path === "via-remote" ? { kind: "remote", host: "127.0.0.1", port: tcpPort } : { kind: "local" };

  log(`filling ${SIZE_MIB} MiB so reads hit data`);
  await runFio(uris["direct-unix"], { name: "fill", args: ["--rw=write", "--bs=1M", "--iodepth=4"], metric: "MB/s" });

  const results = {}; // workload -> path -> [values]
  const workloads = WORKLOADS.filter((workload) => SELECTED.includes(workload.name));
  for (const workload of workloads) {
    results[workload.name] = Object.fromEntries(PATHS.map((path) => [path, []]));
    for (let round = 0; round < ROUNDS; round++) {
      // ABBA: forward, then reversed, so neither path of a pair always goes first.
      const order = round % 2 === 0 ? PATHS : [...PATHS].reverse();
      for (const path of order) {
        if (path === "endpoint" || path === "via-remote") endpoints.route(VOLUME, routeFor(path));
        const value = await runFio(
          uris[path],
          { ...workload, args: [...workload.args, ...TIMED] },
          join(out, `${workload.name}.${path}.${round + 1}.json`),
        );
        results[workload.name][path].push(value);
        log(
          `${workload.name} round ${round + 1} ${path}: ${value.toFixed(workload.metric === "MB/s" ? 1 : 0)} ${workload.metric}`,
        );
      }
    }
  }

  const fmt = (value, metric) => (metric === "MB/s" ? value.toFixed(1) : value.toFixed(0));
  /** The median over rounds of path a / path b, each ratio taken within one round. */
  const pairedRatio = (byPath, a, b) => median(byPath[a].map((value, round) => value / byPath[b][round]));
  const ratio = (value) => `${value.toFixed(2)}x`;
  const header = ["workload", "metric", ...PATHS, "endpoint/unix", "endpoint/tcp", "remote/tcp"];
  const rows = [header];
  let allPass = true;
  for (const workload of workloads) {
    const m = Object.fromEntries(PATHS.map((path) => [path, median(results[workload.name][path])]));
    const byPath = results[workload.name];
    const local = pairedRatio(byPath, "endpoint", "direct-unix");
    if (local < TARGET) allPass = false;
    rows.push([
      workload.name,
      workload.metric,
      ...PATHS.map((path) => fmt(m[path], workload.metric)),
      `${ratio(local)} ${local >= TARGET ? "PASS" : "FAIL"}`,
      ratio(pairedRatio(byPath, "endpoint", "direct-tcp")),
      ratio(pairedRatio(byPath, "via-remote", "direct-tcp")),
    ]);
  }
  const widths = header.map((_, c) => Math.max(...rows.map((row) => row[c].length)));
  const table = rows
    .map((row) =>
      row
        .map((cell, c) => cell.padEnd(widths[c]))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
  const summary =
    `disk path: fio ioengine=nbd, 1 connection, ${RUNTIME_S} s + ${RAMP_S} s ramp, median of ${ROUNDS} rounds ` +
    "(ratios: median of the ratios within each round), " +
    `${SIZE_MIB} MiB volume; load average ${loadavg()[0].toFixed(2)}\n\n${table}\n\n` +
    `target: endpoint/unix >= ${TARGET.toFixed(2)}x on every workload: ${allPass ? "PASS" : "FAIL"}\n` +
    "remote/tcp: the endpoint pipes to the TCP port in the same process as the server (one event loop, 2 CPUs shared with fio)\n";
  process.stdout.write(summary);
  writeFileSync(join(out, "summary.txt"), summary);
  writeFileSync(join(out, "summary.json"), JSON.stringify(results, null, 2));
  log(`raw fio JSON and summary in ${out}`);
} catch (error) {
  process.stderr.write(`bench/vm/disk-path.mjs: ${error.stack ?? error}\n`);
  process.exitCode = 1;
} finally {
  await cleanup();
}
