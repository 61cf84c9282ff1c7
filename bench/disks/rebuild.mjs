#!/usr/bin/env node
// bench/disks/rebuild.mjs — a rebuild onto a replacement disk, on real block devices. Two loop devices
// (disk A, disk B) on files under /var/tmp, formatted ext4 and mounted by the bench, hold the copies of
// one volume served by `haven volume serve`. Two measurements, each with its peer in the same run:
//
//   1. Rebuild rate: the volume's data (--size, filled through NBD) is on disk A; an empty copy on disk B
//      is created and rebuilt from it at the engine's start. Rate = volume size / time from the engine's
//      "full resync" line to its "in sync" line (after the copy's final fdatasync). Peer: fio's
//      sequential write of the same size to a file on disk B (bs=1M, direct=1, libaio). Target: the
//      rebuild rate >= 0.80x fio's. Beside it, the same rebuild with disk A's copy in the page cache:
//      the two disks are files on one host disk here, so the rebuild's reads of A and writes to B share
//      it, while fio only writes; that row shows what the write side alone reaches.
//   2. A writer during a rebuild: fio (ioengine=nbd) writes random blocks to the volume through Haven's
//      NBD front, once with both copies in sync and once while disk B's copy is rebuilt. For the second,
//      disk B is mounted read-only when the engine starts, so the copy cannot be created; once the
//      writer's I/O is flowing, B is remounted read-write and the engine's reconnect (every 2 s) creates
//      the copy and starts the rebuild, before fio's ramp ends. Target: with/without >= 0.50x, and the
//      rebuild made progress inside the measured window (percent done at its start and end, from the
//      engine's status API sampled every 100 ms).
//
// Rounds alternate the order of each pair (ABBA), and the report gives every round and the medians.
// Every process runs in its own process group and is stopped by it; every mount and loop device is
// removed on exit, Ctrl-C, SIGTERM or an error (--keep leaves the disks). See bench/README.md.

import { spawn, spawnSync } from "node:child_process";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { get as httpGet } from "node:http";
import { cpus, loadavg, totalmem } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { clearTimeout, setTimeout } from "node:timers";
import { parseArgs } from "node:util";
import { BenchError, logTail, ProcessSet, sleep, waitFor, waitForLog } from "../lib/replication-procs.mjs";
import { table } from "../lib/replication-report.mjs";

const USAGE = `Usage: node bench/disks/rebuild.mjs [options]     (as root: it creates loop devices and mounts)

Creates two loop devices on files under /var/tmp, formats them ext4, mounts them, and measures with
'haven volume serve': (1) the rebuild of a volume's copy onto the empty disk B against fio's sequential
direct write to disk B; (2) fio's random writes through Haven's NBD front with and without a rebuild
running. Rounds alternate the order of each pair; the report gives the medians and PASS/FAIL.

Options:
  --size SIZE     volume size: bytes or K/M/G (binary), a multiple of 1M, at least 64M (default 1G)
  --rounds N      rounds of each measurement, 1-9 (default 3)
  --runtime S     seconds the writer is measured, after a 4 s ramp (default 8)
  --bs SIZE       the writer's block size, 4K to 1M (default 64K)
  --keep          leave the disks (images, loop devices, mounts) for inspection; prints how to remove them
  --json          print the results as JSON instead of the table
  -h, --help      this text`;

// ---------------------------------------------------------------- definitions
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const HAVEN = join(ROOT, "bin", "haven.js");
const VOLUME = "bench";
const MIB = 1024 * 1024;
const GIB = 1024 * MIB;

/** The issue's targets. */
const TARGET_REBUILD_VS_FIO = 0.8;
const TARGET_WITH_VS_WITHOUT = 0.5;

/** The peer of the rebuild: a sequential write of the volume's size to a file on disk B. */
const PEER_DIRECT = ["--rw=write", "--bs=1M", "--direct=1", "--ioengine=libaio", "--iodepth=8"];
const WRITER_IODEPTH = 16;
/** The writer's ramp: long enough for the engine's reconnect (every 2 s) to start the rebuild in it. */
const WRITER_RAMP_S = 4;
const SAMPLE_MS = 100;

// Bounds: nothing waits forever.
const READY_MS = 30_000; // the engine answering after start
const STOP_GRACE_MS = 15_000; // SIGTERM to exit (the engine flushes every copy first)
const WRITER_FLOWING_MS = 15_000; // fio's first write reaching the engine
const REBUILD_START_MS = 10_000; // the engine's reconnect creating the copy after B is writable again
const SLOWEST_BYTES_PER_S = 5 * MIB; // fills, rebuilds and compares slower than this are treated as hung
const boundMs = (bytes) => 60_000 + (bytes / SLOWEST_BYTES_PER_S) * 1000;

/** `promise`'s value, or "timeout" after `ms`; the timer does not outlive the race (nor keep node alive). */
function within(promise, ms) {
  let timer;
  const expired = new Promise((resolvePromise) => {
    timer = setTimeout(() => resolvePromise("timeout"), ms);
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

const die = (message) => {
  process.stderr.write(`bench/disks/rebuild.mjs: error: ${message}\n${USAGE}\n`);
  process.exit(2);
};
const log = (message) => process.stderr.write(`[bench] ${message}\n`);

// ------------------------------------------------------------ configuration
let options;
try {
  options = parseArgs({
    options: {
      size: { type: "string", default: "1G" },
      rounds: { type: "string", default: "3" },
      runtime: { type: "string", default: "8" },
      bs: { type: "string", default: "64K" },
      keep: { type: "boolean", default: false },
      json: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  }).values;
} catch (error) {
  die(error.message);
}
if (options.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}

function parseBytes(flag, text) {
  const match = /^([0-9]+)([KkMmGg]?)(i?B)?$/.exec(text);
  if (!match) die(`${flag} '${text}': expected bytes or a number with a K/M/G suffix, e.g. 1G or 512M`);
  const bytes = Number(match[1]) * 2 ** { "": 0, k: 10, m: 20, g: 30 }[match[2].toLowerCase()];
  if (!Number.isSafeInteger(bytes)) die(`${flag} '${text}' is too large`);
  return bytes;
}
const SIZE = parseBytes("--size", options.size);
if (SIZE % MIB !== 0 || SIZE < 64 * MIB) die(`--size ${options.size}: must be a multiple of 1M and at least 64M`);
if (!/^[1-9]$/.test(options.rounds)) die(`--rounds ${options.rounds}: expected a whole number from 1 to 9`);
const ROUNDS = Number(options.rounds);
if (!/^[1-9][0-9]{0,2}$/.test(options.runtime)) die(`--runtime ${options.runtime}: expected seconds, 1-999`);
const RUNTIME_S = Number(options.runtime);
const WRITER_BS = parseBytes("--bs", options.bs);
if (WRITER_BS < 4096 || WRITER_BS > MIB || (WRITER_BS & (WRITER_BS - 1)) !== 0)
  die(`--bs ${options.bs}: expected a power of two from 4K to 1M`);
const WRITER_BS_TEXT = WRITER_BS >= MIB ? `${WRITER_BS / MIB}m` : `${WRITER_BS / 1024}k`;

/** Each disk holds the volume's copy and, on B, fio's file of the same size, with room for ext4. */
const IMAGE_BYTES = 2 * SIZE + Math.max(256 * MIB, SIZE / 8);

if (process.getuid?.() !== 0) die("needs root: it attaches loop devices, formats and mounts them");
const have = (tool) => spawnSync("sh", ["-c", `command -v ${tool}`], { stdio: "ignore" }).status === 0;
for (const tool of ["fio", "losetup", "mkfs.ext4", "mount", "umount", "fallocate", "cmp", "dd", "sync", "setpriv"])
  if (!have(tool)) die(`'${tool}' not found in PATH`);
for (const engine of ["nbd", "libaio"])
  if (spawnSync("fio", [`--enghelp=${engine}`], { stdio: "ignore" }).status !== 0)
    die(`this fio has no ${engine} ioengine (fio --enghelp=${engine} failed)`);
if (!existsSync(HAVEN) || !existsSync(join(ROOT, "dist", "src", "cli", "main.js")))
  die("haven is not built (bin/haven.js or dist/src/cli/main.js missing): run 'npm run build' first");
const available = Number(
  (spawnSync("df", ["--output=avail", "-B1", "/var/tmp"], { encoding: "utf8" }).stdout ?? "").trim().split("\n").pop(),
);
if (!(available > 2 * IMAGE_BYTES + 512 * MIB))
  die(`not enough space in /var/tmp: need ${Math.ceil((2 * IMAGE_BYTES) / MIB) + 512} MiB, have ${available / MIB}`);

const { DEFAULT_RESYNC } = await import(join(ROOT, "dist", "src", "engine", "engine.js"));

// ------------------------------------------------------------- process care
/**
 * Every process the bench starts runs in its own process group (fio forks a process per job) and under
 * setpriv --pdeathsig, so it dies with a killed bench; stopping one signals its whole group.
 */
class ProcessGroups {
  /** @type {Set<import("node:child_process").ChildProcess>} */
  live = new Set();

  /** Starts `command args`, stderr to `logPath`, stdout to `stdoutPath` (or the log). */
  start(label, command, args, { logPath, stdoutPath }) {
    const out = openSync(stdoutPath ?? logPath, "a");
    const err = openSync(logPath, "a");
    let child;
    try {
      child = spawn("setpriv", ["--pdeathsig", "TERM", "--", command, ...args], {
        cwd: ROOT,
        detached: true,
        stdio: ["ignore", out, err],
      });
    } finally {
      closeSync(out);
      closeSync(err);
    }
    child.label = label;
    child.logPath = logPath;
    this.live.add(child);
    child.exited = new Promise((resolvePromise) => {
      child.once("error", (error) => {
        this.live.delete(child);
        resolvePromise({ code: null, signal: null, error });
      });
      child.once("exit", (code, signal) => {
        this.live.delete(child);
        resolvePromise({ code, signal });
      });
    });
    return child;
  }

  static signalGroup(child, signal) {
    try {
      if (child.pid !== undefined) process.kill(-child.pid, signal);
    } catch {
      // the group is gone
    }
  }

  /** Signals the group, waits up to graceMs for its leader, then SIGKILLs whatever is left of the group. */
  async stop(child, { signal = "SIGTERM", graceMs = STOP_GRACE_MS } = {}) {
    if (ProcessSet.running(child)) ProcessGroups.signalGroup(child, signal);
    const exit = await within(child.exited, graceMs);
    ProcessGroups.signalGroup(child, "SIGKILL");
    if (exit === "timeout") return { ...(await child.exited), killed: true };
    return exit;
  }

  async stopAll() {
    await Promise.all([...this.live].map((child) => this.stop(child)));
  }

  /** Last resort, from process.on("exit"): synchronous. */
  killAllNow() {
    for (const child of this.live) ProcessGroups.signalGroup(child, "SIGKILL");
  }
}

const procs = new ProcessGroups();
const WORK = mkdtempSync("/var/tmp/haven-bench-rebuild.");
const OUT = mkdtempSync("/tmp/haven-bench-rebuild-out.");
/** What was set up, in order, so cleanup undoes exactly that in reverse. */
const disks = [];

/** Runs a short system command; throws a BenchError with its stderr if it fails. */
function system(command, args, timeoutMs = 120_000) {
  const result = spawnSync(command, args, { encoding: "utf8", timeout: timeoutMs });
  if (result.status !== 0)
    throw new BenchError(
      `${command} ${args.join(" ")} failed (${result.error?.message ?? `exit ${result.status ?? result.signal}`}): ${(result.stderr ?? "").trim()}`,
    );
  return result.stdout.trim();
}

function unmountAndDetach(disk) {
  if (disk.mounted) {
    for (let attempt = 1; disk.mounted && attempt <= 5; attempt++) {
      if (spawnSync("umount", [disk.mount], { stdio: "ignore" }).status === 0) disk.mounted = false;
      else spawnSync("sleep", ["1"]);
    }
    if (disk.mounted) {
      process.stderr.write(`bench/disks/rebuild.mjs: ${disk.mount} is busy; lazy unmount\n`);
      spawnSync("umount", ["-l", disk.mount], { stdio: "ignore" });
      disk.mounted = false;
    }
  }
  if (disk.loop) {
    if (spawnSync("losetup", ["-d", disk.loop], { stdio: "ignore" }).status !== 0)
      process.stderr.write(`bench/disks/rebuild.mjs: losetup -d ${disk.loop} failed; remove it by hand\n`);
    disk.loop = undefined;
  }
}

let cleaned = false;
function removeDisks() {
  if (cleaned) return;
  cleaned = true;
  if (options.keep) {
    const lines = disks.map((d) => `  umount ${d.mount}; losetup -d ${d.loop}`);
    process.stderr.write(`[bench] --keep: the disks are left as they are; to remove them:\n${lines.join("\n")}\n`);
    process.stderr.write(`  rm -rf ${WORK}\n`);
    return;
  }
  for (const disk of [...disks].reverse()) unmountAndDetach(disk);
  rmSync(WORK, { recursive: true, force: true });
}

let cleaning;
let interrupted = false;
function cleanup() {
  cleaning ??= (async () => {
    await procs.stopAll();
    removeDisks();
  })();
  return cleaning;
}
process.on("exit", () => {
  procs.killAllNow();
  removeDisks();
});
for (const [signal, code] of [
  ["SIGINT", 130],
  ["SIGTERM", 143],
  ["SIGHUP", 129],
]) {
  process.on(signal, () => {
    interrupted = true;
    log(`${signal}: stopping every process, removing the disks`);
    void cleanup().finally(() => process.exit(code));
  });
}

// ------------------------------------------------------------------- disks
/** An image file under WORK (space reserved, nothing written), a loop device on it, ext4, mounted. */
function createDisk(name) {
  const disk = { name, image: join(WORK, `${name}.img`), mount: join(WORK, name), loop: undefined, mounted: false };
  disks.push(disk);
  // Reserved up front: a first write to a block then costs the host file system no allocation, as on
  // a real disk. The loop device does direct I/O to it, so the host's page cache holds no second copy.
  system("fallocate", ["-l", String(IMAGE_BYTES), disk.image]);
  disk.loop = system("losetup", ["--find", "--show", "--direct-io=on", disk.image]);
  // Inode tables and journal written now, not by ext4lazyinit in the background during a measurement.
  system("mkfs.ext4", ["-q", "-F", "-m", "0", "-E", "lazy_itable_init=0,lazy_journal_init=0", disk.loop]);
  mkdirSync(disk.mount);
  system("mount", ["-t", "ext4", disk.loop, disk.mount]);
  disk.mounted = true;
  return disk;
}

const remount = (disk, mode) => system("mount", ["-o", `remount,${mode}`, disk.mount]);
const syncAll = () => spawnSync("sync", [], { stdio: "ignore" });
/** Drops a file's pages from the page cache (POSIX_FADV_DONTNEED), so the next read comes from its disk. */
const dropCache = (file) => spawnSync("dd", [`if=${file}`, "iflag=nocache", "count=0"], { stdio: "ignore" });
const copyFile = (disk) => join(disk.mount, VOLUME, "data.raw");
const escapeRegex = (text) => text.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");

// --------------------------------------------------------------- processes
/** Runs fio to completion (bounded) with JSON output to OUT/NAME.json; resolves with { job, doc }. */
async function fio(name, args, timeoutMs) {
  const child = startFio(name, args);
  return finishFio(child, timeoutMs);
}

function startFio(name, args) {
  const json = join(OUT, `${name}.json`);
  const child = procs.start(
    `fio ${name}`,
    "fio",
    [`--name=${name}`, ...args, "--numjobs=1", "--output-format=json", `--output=${json}`],
    { logPath: join(OUT, `${name}.stderr`), stdoutPath: "/dev/null" },
  );
  child.json = json;
  child.name = name;
  return child;
}

async function finishFio(child, timeoutMs) {
  const exit = await within(child.exited, timeoutMs);
  if (exit === "timeout") {
    await procs.stop(child, { signal: "SIGKILL" });
    throw new BenchError(`fio ${child.name} did not finish within ${Math.round(timeoutMs / 1000)} s (killed)`);
  }
  ProcessGroups.signalGroup(child, "SIGKILL"); // a job process fio left behind, if any
  const firstError = () =>
    (
      readFileSync(child.logPath, "utf8")
        .split("\n")
        .find((l) => l.trim() !== "") ?? ""
    ).trim();
  if (exit.code !== 0)
    throw new BenchError(`fio ${child.name} failed (exit ${exit.code ?? exit.signal}): ${firstError()}`);
  const text = readFileSync(child.json, "utf8");
  const doc = JSON.parse(text.slice(text.indexOf("{"))); // fio may print warnings before the JSON
  const job = doc.jobs?.[0];
  if (doc.jobs?.length !== 1 || job.error)
    throw new BenchError(`fio ${child.name}: job error ${job?.error}: ${firstError()}`);
  return { job, doc };
}

/** The engine's GET /v1/status (VolumeStatus), within 5 s. */
function engineStatus(api) {
  return new Promise((resolvePromise, reject) => {
    const request = httpGet(`http://${api}/v1/status`, { timeout: 5000 }, (response) => {
      const chunks = [];
      response.on("data", (chunk) => chunks.push(chunk));
      response.on("error", reject);
      response.on("end", () => {
        if (response.statusCode !== 200) reject(new BenchError(`GET /v1/status: HTTP ${response.statusCode}`));
        else resolvePromise(JSON.parse(Buffer.concat(chunks).toString("utf8")));
      });
    });
    request.on("timeout", () => request.destroy(new BenchError(`GET http://${api}/v1/status: no answer within 5 s`)));
    request.on("error", reject);
  });
}

let engineRuns = 0;
/**
 * Starts `haven volume serve` over `replicaDisks` (their mount points are the replica directories), NBD and API
 * on free ports of 127.0.0.1 read back from its log. Returns { child, uri, api }.
 */
async function startEngine(what, replicaDisks, extra = []) {
  engineRuns++;
  const logPath = join(OUT, `engine-${engineRuns}.log`);
  const args = [HAVEN, "volume", "serve", VOLUME, "--size", String(SIZE)];
  for (const disk of replicaDisks) args.push("--replica", disk.mount);
  args.push("--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0", ...extra);
  writeFileSync(logPath.replace(/\.log$/, ".cmd.txt"), `${what}\nnode ${args.join(" ")}\n`);
  const child = procs.start(`engine (${what})`, "node", args, { logPath });
  try {
    const serving = await waitForLog(child, new RegExp(`serving volume ${VOLUME} \\(.*\\) on (\\S+)$`), {
      timeoutMs: READY_MS,
      what: "serving NBD",
    });
    const api = await waitForLog(child, /engine API on http:\/\/(\S+)$/, { timeoutMs: READY_MS, what: "its API" });
    return { child, uri: `nbd://${serving.match[1]}/${VOLUME}`, api: api.match[1], what };
  } catch (error) {
    await procs.stop(child);
    throw error;
  }
}

async function stopEngine(engine) {
  const exit = await procs.stop(engine.child);
  if (exit.killed) throw new BenchError(`${engine.child.label} did not stop within ${STOP_GRACE_MS / 1000} s`);
  if (exit.code !== 0)
    throw new BenchError(`${engine.child.label} exited ${exit.code ?? exit.signal}; log ${engine.child.logPath}`);
}

/** The engine's log lines that start and end the rebuild of `disk`'s copy: { startAt, inSyncAt } (ms). */
async function rebuildTimes(engine, disk, timeoutMs) {
  const where = escapeRegex(disk.mount);
  const inSync = await waitForLog(engine.child, new RegExp(`^\\S+ ${where}: in sync at generation`), {
    timeoutMs,
    what: `${disk.name}'s copy in sync`,
  });
  const start = await waitForLog(engine.child, new RegExp(`^\\S+ ${where}: (\\w+) resync of (\\d+) bytes \\(`), {
    timeoutMs: 0,
    what: `the rebuild of ${disk.name}'s copy starting (logged before it ended)`,
  });
  if (start.match[1] !== "full" || Number(start.match[2]) !== SIZE)
    throw new BenchError(`expected a full rebuild of ${SIZE} bytes, the engine logged: ${start.match[0]}`);
  return { startAt: start.at, inSyncAt: inSync.at, seconds: (inSync.at - start.at) / 1000 };
}

/** Byte-compares the two copies (engine stopped); throws if they differ. */
async function compareCopies(what) {
  const logPath = join(OUT, `cmp-${what}.txt`);
  const child = procs.start(`cmp ${what}`, "cmp", [copyFile(A), copyFile(B)], { logPath });
  const exit = await within(child.exited, boundMs(2 * SIZE));
  if (exit === "timeout") await procs.stop(child, { signal: "SIGKILL" });
  if (exit === "timeout" || exit.code !== 0)
    throw new BenchError(`the copies differ after ${what}: ${readFileSync(logPath, "utf8").trim() || "cmp timed out"}`);
}

const median = (values) => {
  const sorted = [...values].sort((x, y) => x - y);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
};

// --------------------------------------------------------------- part 1
let A;
let B;

/** fio's sequential direct write of SIZE bytes to a file on disk B (removed after); bytes/s. */
async function fioRate(round) {
  const file = join(B.mount, "peer.raw");
  syncAll();
  log(`round ${round}: fio sequential direct write of ${SIZE / MIB} MiB to disk B`);
  const { job } = await fio(
    `peer-${round}`,
    [`--filename=${file}`, ...PEER_DIRECT, `--size=${SIZE}`, "--fallocate=none", "--end_fsync=1"],
    boundMs(SIZE),
  );
  rmSync(file, { force: true });
  syncAll();
  return job.write.bw_bytes;
}

/**
 * Creates and rebuilds disk B's copy from disk A's at the engine's start: { seconds, bytesPerSecond }.
 * `source`: "disk" reads disk A (its copy dropped from the page cache first), "cached" reads it from
 * the page cache (read in first), which leaves disk B's writes alone on the host disk.
 */
async function rebuildRate(round, source) {
  rmSync(join(B.mount, VOLUME), { recursive: true, force: true });
  syncAll();
  if (source === "disk") dropCache(copyFile(A));
  else system("dd", [`if=${copyFile(A)}`, "of=/dev/null", "bs=4M"], boundMs(SIZE));
  log(
    `round ${round}: rebuild of ${SIZE / MIB} MiB onto the empty disk B, disk A's copy read from ${source === "disk" ? "disk A" : "the page cache"}`,
  );
  // Disk A's copy was last in sync with the copy just deleted: only --force starts without it (the
  // replaced-disk case); --degraded-start for the first round, where B never had a copy.
  const engine = await startEngine(`rebuild round ${round}, source ${source}`, [A, B], ["--degraded-start", "--force"]);
  try {
    const times = await rebuildTimes(engine, B, boundMs(SIZE));
    await stopEngine(engine);
    await compareCopies(`rebuild-${source}-${round}`);
    return { seconds: times.seconds, bytesPerSecond: SIZE / times.seconds };
  } finally {
    if (ProcessSet.running(engine.child)) await procs.stop(engine.child);
  }
}

async function partRebuild() {
  const rounds = [];
  for (let round = 1; round <= ROUNDS; round++) {
    const result = { round };
    // ABBA: fio, rebuild, rebuild from the cache on odd rounds; the reverse on even ones.
    const steps = {
      fio: async () => (result.fio = await fioRate(round)),
      rebuild: async () => (result.rebuild = await rebuildRate(round, "disk")),
      cached: async () => (result.cached = await rebuildRate(round, "cached")),
    };
    for (const step of round % 2 === 1 ? ["fio", "rebuild", "cached"] : ["cached", "rebuild", "fio"])
      await steps[step]();
    result.ratio = result.rebuild.bytesPerSecond / result.fio;
    result.cachedRatio = result.cached.bytesPerSecond / result.fio;
    log(
      `round ${round}: fio ${mbps(result.fio)} MB/s, rebuild ${mbps(result.rebuild.bytesPerSecond)} MB/s (${result.rebuild.seconds.toFixed(2)} s), from the cache ${mbps(result.cached.bytesPerSecond)} MB/s: ${result.ratio.toFixed(2)}x`,
    );
    rounds.push(result);
  }
  return rounds;
}

// --------------------------------------------------------------- part 2
const writerArgs = (uri) => [
  "--ioengine=nbd",
  `--uri=${uri}`,
  "--rw=randwrite",
  `--bs=${WRITER_BS_TEXT}`,
  `--iodepth=${WRITER_IODEPTH}`,
  `--size=${SIZE}`,
  "--time_based",
  `--ramp_time=${WRITER_RAMP_S}`,
  `--runtime=${RUNTIME_S}`,
];
const writerBoundMs = (WRITER_RAMP_S + RUNTIME_S) * 1000 + 60_000;

/** The measured window of a finished fio run: [end - runtime, end], in ms since the epoch. */
function fioWindow({ job, doc }) {
  return { start: doc.timestamp_ms - job.write.runtime, end: doc.timestamp_ms };
}

/** The writer on an engine over both copies, in sync: { bytesPerSecond, iops }. */
async function writerWithout(round) {
  const engine = await startEngine(`writer round ${round}, in sync`, [A, B]);
  try {
    syncAll();
    log(`round ${round}: writer, both copies in sync (${WRITER_RAMP_S} s ramp + ${RUNTIME_S} s)`);
    const { job } = await fio(`writer-without-${round}`, writerArgs(engine.uri), writerBoundMs);
    await stopEngine(engine);
    return { bytesPerSecond: job.write.bw_bytes, iops: job.write.iops };
  } finally {
    if (ProcessSet.running(engine.child)) await procs.stop(engine.child);
  }
}

/**
 * The writer while disk B's copy is rebuilt. B is read-only when the engine starts, so the copy cannot
 * be created and stays "connecting"; once the writer's writes reach the engine, B is made writable, and
 * the engine's next reconnect creates the copy and rebuilds it under the writer.
 */
async function writerWith(round) {
  rmSync(join(B.mount, VOLUME), { recursive: true, force: true });
  syncAll();
  remount(B, "ro");
  let readOnly = true;
  const makeWritable = () => {
    if (!readOnly) return;
    readOnly = false;
    remount(B, "rw");
  };
  let engine;
  let writer;
  let sampling = true;
  try {
    engine = await startEngine(`writer round ${round}`, [A, B], ["--degraded-start", "--force"]);
    const before = (await engineStatus(engine.api)).replicas.find((r) => r.location === B.mount);
    if (before?.state !== "connecting")
      throw new BenchError(`disk B read-only: expected its copy 'connecting', the engine says '${before?.state}'`);
    syncAll();
    log(`round ${round}: writer, B read-only until the writer's I/O flows, then rebuilt under it`);
    writer = startFio(`writer-with-${round}`, writerArgs(engine.uri));
    const samples = [];
    const sampler = (async () => {
      while (sampling) {
        const at = Date.now();
        const status = await engineStatus(engine.api).catch(() => undefined);
        const copy = status?.replicas.find((r) => r.location === B.mount);
        if (copy)
          samples.push({
            at,
            state: copy.state,
            doneBytes: copy.state === "in-sync" ? SIZE : (copy.resync?.doneBytes ?? 0),
            writtenBytes: status.io.bytesWritten,
          });
        await sleep(Math.max(0, SAMPLE_MS - (Date.now() - at)));
      }
    })();
    await waitFor(
      async () => {
        if (!ProcessSet.running(writer)) throw new BenchError("the writer ended before writing");
        return (await engineStatus(engine.api)).io.writes > 0 ? true : undefined;
      },
      { timeoutMs: WRITER_FLOWING_MS, what: "the writer's first writes", intervalMs: 50 },
    );
    makeWritable();
    const remountAt = Date.now();
    const run = await finishFio(writer, writerBoundMs);
    sampling = false;
    await sampler;
    await waitForLog(engine.child, new RegExp(`^\\S+ ${escapeRegex(B.mount)}: full resync of`), {
      timeoutMs: REBUILD_START_MS,
      what: "the rebuild of disk B's copy starting after B was made writable",
    });
    const times = await rebuildTimes(engine, B, boundMs(SIZE));
    await stopEngine(engine);
    const window = fioWindow(run);
    // Progress inside the window, from samples inside it: the first at or after its start, the last at
    // or before its end (the rebuild speeds up to the idle rate as soon as the writer stops).
    const first = samples.find((s) => s.at >= window.start);
    const last = samples.findLast((s) => s.at <= window.end);
    if (!first || !last || last.at <= first.at)
      throw new BenchError(`round ${round}: no status samples inside the writer's measured window`);
    const covered = Math.max(0, Math.min(times.inSyncAt, window.end) - Math.max(times.startAt, window.start));
    return {
      bytesPerSecond: run.job.write.bw_bytes,
      iops: run.job.write.iops,
      rebuildStartedAfterRemountS: (times.startAt - remountAt) / 1000,
      rebuildStartedBeforeWindowS: (window.start - times.startAt) / 1000,
      rebuildSeconds: times.seconds,
      percentBefore: (100 * first.doneBytes) / SIZE,
      percentAfter: (100 * last.doneBytes) / SIZE,
      rebuildBytesPerSecondInWindow: ((last.doneBytes - first.doneBytes) / (last.at - first.at)) * 1000,
      coveredFraction: covered / (window.end - window.start),
      samples,
    };
  } finally {
    sampling = false;
    if (writer && ProcessSet.running(writer)) await procs.stop(writer);
    if (engine && ProcessSet.running(engine.child)) await procs.stop(engine.child);
    makeWritable();
  }
}

async function partWriter() {
  const rounds = [];
  for (let round = 1; round <= ROUNDS; round++) {
    const result = { round };
    // ABBA: with a rebuild first on odd rounds, without first on even ones (over the copies the round
    // before left in sync).
    if (round % 2 === 0) result.without = await writerWithout(round);
    result.with = await writerWith(round);
    if (round % 2 === 1) result.without = await writerWithout(round);
    await compareCopies(`writer-${round}`);
    result.ratio = result.with.bytesPerSecond / result.without.bytesPerSecond;
    log(
      `round ${round}: writer ${(result.without.bytesPerSecond / 1e6).toFixed(0)} MB/s without, ${(result.with.bytesPerSecond / 1e6).toFixed(0)} MB/s with a rebuild (${result.with.percentBefore.toFixed(0)}% -> ${result.with.percentAfter.toFixed(0)}%)`,
    );
    rounds.push(result);
  }
  return rounds;
}

// ------------------------------------------------------------------ report
const mbps = (bytesPerSecond) => (bytesPerSecond / 1e6).toFixed(0);
const ratio = (value) => `${value.toFixed(2)}x`;
const verdict = (ok) => (ok ? "PASS" : "FAIL");

function render(results) {
  const lines = [results.meta, ""];
  const header = ["", ...Array.from({ length: ROUNDS }, (_, i) => `round ${i + 1}`), "median"];
  /** One table row per [title, values, format, median (default: of the values)]. */
  const rows = (specs) =>
    specs.map(([title, values, format, medianValue]) => [
      title,
      ...values.map(format),
      format(medianValue ?? median(values)),
    ]);
  const percent = (value) => value.toFixed(0);

  if (results.rebuild) {
    const r = results.rebuild.rounds;
    const ratioMedian = median(r.map((x) => x.ratio));
    lines.push(
      `1. rebuild onto a replacement disk: ${SIZE / MIB} MiB of data from disk A to the empty disk B (MB/s = 10^6 B/s)`,
      "",
      ...table(
        header,
        rows([
          ["fio seq write, direct MB/s", r.map((x) => x.fio), mbps],
          ["rebuild MB/s", r.map((x) => x.rebuild.bytesPerSecond), mbps],
          ["rebuild s", r.map((x) => x.rebuild.seconds), (v) => v.toFixed(2)],
          ["rebuild/fio", r.map((x) => x.ratio), ratio, ratioMedian],
          ["rebuild, A in page cache MB/s", r.map((x) => x.cached.bytesPerSecond), mbps],
          ["rebuild, A in page cache/fio", r.map((x) => x.cachedRatio), ratio],
        ]),
      ),
      "",
      `target: rebuild/fio >= ${TARGET_REBUILD_VS_FIO.toFixed(2)}x (median of the rounds' ratios): ${ratioMedian.toFixed(2)}x ${verdict(ratioMedian >= TARGET_REBUILD_VS_FIO)}`,
      "",
    );
  }

  if (results.writer) {
    const r = results.writer.rounds;
    const ratioMedian = median(r.map((x) => x.ratio));
    const progressed = r.every((x) => x.with.percentAfter > x.with.percentBefore);
    lines.push(
      `2. a writer during a rebuild: fio nbd randwrite ${WRITER_BS_TEXT} QD${WRITER_IODEPTH}, ${WRITER_RAMP_S} s ramp + ${RUNTIME_S} s measured, through Haven's NBD front`,
      "",
      ...table(
        header,
        rows([
          ["without rebuild MB/s", r.map((x) => x.without.bytesPerSecond), mbps],
          ["with rebuild MB/s", r.map((x) => x.with.bytesPerSecond), mbps],
          ["with/without", r.map((x) => x.ratio), ratio, ratioMedian],
          ["rebuild done at window start %", r.map((x) => x.with.percentBefore), percent],
          ["rebuild done at window end %", r.map((x) => x.with.percentAfter), percent],
          ["rebuild MB/s in the window", r.map((x) => x.with.rebuildBytesPerSecondInWindow), mbps],
          ["window with a rebuild running %", r.map((x) => 100 * x.with.coveredFraction), percent],
        ]),
      ),
      "",
      `target: with/without >= ${TARGET_WITH_VS_WITHOUT.toFixed(2)}x (median of the rounds' ratios): ${ratioMedian.toFixed(2)}x ${verdict(ratioMedian >= TARGET_WITH_VS_WITHOUT)}; ` +
        `the rebuild progressed in every measured window: ${verdict(progressed)}`,
      "",
    );
  }
  lines.push(`load:     ${loadText()} (1/5/15 min load average at the end)`, "");
  if (results.notes.length > 0) lines.push("notes:", ...results.notes.map((n) => `  ${n}`), "");
  return `${lines.join("\n")}\n`;
}

const loadText = () =>
  loadavg()
    .map((l) => l.toFixed(2))
    .join(" ");

function metaText() {
  const first = (cmd, args) => (spawnSync(cmd, args, { encoding: "utf8" }).stdout ?? "").split("\n")[0].trim();
  const head = spawnSync("git", ["-C", ROOT, "rev-parse", "--short", "HEAD"], { encoding: "utf8" });
  const dirty = spawnSync("git", ["-C", ROOT, "diff", "--quiet", "HEAD", "--", "src"]).status !== 0;
  const hostDevice = (spawnSync("df", ["--output=source", "/var/tmp"], { encoding: "utf8" }).stdout ?? "")
    .trim()
    .split("\n")
    .pop();
  const r = DEFAULT_RESYNC;
  return [
    `date:     ${new Date().toISOString().replace(/\.\d+Z$/, "Z")}`,
    `host:     ${first("uname", ["-srm"])}, ${cpus().length} CPUs, ${Math.round(totalmem() / MIB)} MiB RAM; ${first("fio", ["--version"])}, node ${process.version}`,
    `load:     ${loadText()} (1/5/15 min load average at the start)`,
    `disks:    A and B: loop devices (direct I/O) on ${(IMAGE_BYTES / GIB).toFixed(2)} GiB files in /var/tmp (both on ${hostDevice}), ext4`,
    `volume:   ${SIZE / MIB} MiB, filled through NBD; copies in the page cache (no O_DIRECT), fdatasync on flush`,
    `pacing:   engine defaults: ${r.maxBytesPerSecond / MIB} MiB/s when clients are idle, ${r.busyBytesPerSecond / MIB} MiB/s within ${r.busyWindowMs} ms of client I/O; ${r.chunkBytes / MIB} MiB chunks, ${r.parallelChunks} in parallel`,
    `rounds:   ${ROUNDS}, each pair in alternating order; medians`,
    head.status === 0
      ? `haven:    git ${head.stdout.trim()}${dirty ? " (src dirty)" : ""}`
      : "haven:    not a git checkout",
  ].join("\n");
}

// -------------------------------------------------------------------- main
const notes = [];
let failed = false;
const results = { meta: metaText(), notes, rebuild: null, writer: null };
writeFileSync(join(OUT, "meta.txt"), `${results.meta}\n`);
log(`logs and fio JSON: ${OUT}; disks under ${WORK}`);
if (loadavg()[0] > 0.5)
  log(`warning: 1-minute load average is ${loadavg()[0].toFixed(2)}; other processes will add noise to the results`);

try {
  log("creating disks A and B (loop devices, ext4)");
  A = createDisk("a");
  B = createDisk("b");
  log(`filling the ${SIZE / MIB} MiB volume on disk A through NBD`);
  const filler = await startEngine("fill, one copy on disk A", [A]);
  try {
    await fio(
      "fill",
      [
        "--ioengine=nbd",
        `--uri=${filler.uri}`,
        "--rw=write",
        "--bs=1M",
        "--iodepth=4",
        `--size=${SIZE}`,
        "--end_fsync=1",
      ],
      boundMs(SIZE),
    );
    await stopEngine(filler);
  } finally {
    if (ProcessSet.running(filler.child)) await procs.stop(filler.child);
  }

  results.rebuild = { rounds: await partRebuild() };
  results.writer = { rounds: await partWriter() };
  for (const round of results.writer.rounds) {
    const w = round.with;
    if (w.coveredFraction < 0.99)
      notes.push(
        `writer round ${round.round}: the rebuild ran during only ${(100 * w.coveredFraction).toFixed(0)}% of the measured window ` +
          `(it started ${w.rebuildStartedBeforeWindowS.toFixed(1)} s before the window and took ${w.rebuildSeconds.toFixed(1)} s)`,
      );
  }
} catch (error) {
  failed = true;
  if (interrupted) await new Promise(() => {}); // the signal handler cleans up and exits
  process.stderr.write(
    `bench/disks/rebuild.mjs: FAILED: ${error instanceof BenchError ? error.message : error.stack}\n`,
  );
  notes.push(`failed: ${String(error.message).split("\n")[0]}`);
} finally {
  await cleanup();
}

const report = render(results);
writeFileSync(join(OUT, "summary.txt"), report);
const json = JSON.stringify(
  {
    ...results,
    settings: { sizeBytes: SIZE, rounds: ROUNDS, runtimeSeconds: RUNTIME_S, writerBlockBytes: WRITER_BS },
    targets: { rebuildVsFio: TARGET_REBUILD_VS_FIO, withVsWithout: TARGET_WITH_VS_WITHOUT },
  },
  null,
  2,
);
writeFileSync(join(OUT, "summary.json"), `${json}\n`);
process.stdout.write(options.json ? `${json}\n` : report);
log(
  `summary: ${OUT}/summary.txt, samples and fio JSON: ${OUT}/summary.json (wall time ${Math.round(process.uptime())} s)`,
);
if (failed) {
  process.stderr.write(`logs in ${OUT}:\n${logTail(join(OUT, `engine-${engineRuns}.log`))}\n`);
  process.exit(1);
}
