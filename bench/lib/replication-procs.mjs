// Process care for bench/replication: every server and fio run is started through one ProcessSet,
// so that an error, Ctrl-C or SIGTERM stops all of them (SIGTERM, then SIGKILL after a bounded
// grace) and nothing outlives the benchmark. Also the small probes the benchmark needs: a free TCP
// port, waiting for a log line, nbdinfo readiness, and /proc readings (RSS, per-thread CPU).

import { spawn, spawnSync } from "node:child_process";
import { closeSync, existsSync, openSync, readdirSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { clearTimeout, setTimeout } from "node:timers";

const POLL_MS = 100;
/** Lines of a log shown when a server fails. */
const LOG_TAIL_LINES = 15;

/** setpriv --pdeathsig makes a child get SIGTERM if the benchmark itself is SIGKILLed. */
const SETPRIV = spawnSync("setpriv", ["--help"], { encoding: "utf8" }).stdout?.includes("--pdeathsig") ?? false;

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class BenchError extends Error {}

export function logTail(path, lines = LOG_TAIL_LINES) {
  if (!existsSync(path)) return "(no log)";
  const all = readFileSync(path, "utf8").trimEnd().split("\n");
  return all
    .slice(-lines)
    .map((line) => `    | ${line}`)
    .join("\n");
}

export class ProcessSet {
  /** @type {Set<import("node:child_process").ChildProcess>} */
  live = new Set();

  /**
   * Starts `command args` with stdout and stderr appended to `logPath`. `label` names it in errors.
   * The returned child has .label, .logPath and .exited (a promise of { code, signal }).
   */
  start(label, command, args, { logPath, cwd, deathSignal = true }) {
    const fd = openSync(logPath, "a");
    const argv =
      SETPRIV && deathSignal ? ["setpriv", "--pdeathsig", "TERM", "--", command, ...args] : [command, ...args];
    let child;
    try {
      child = spawn(argv[0], argv.slice(1), { cwd, stdio: ["ignore", fd, fd] });
    } finally {
      closeSync(fd);
    }
    child.label = label;
    child.logPath = logPath;
    this.live.add(child);
    child.exited = new Promise((resolve) => {
      child.once("error", (error) => {
        this.live.delete(child);
        resolve({ code: null, signal: null, error });
      });
      child.once("exit", (code, signal) => {
        this.live.delete(child);
        resolve({ code, signal });
      });
    });
    return child;
  }

  static running(child) {
    return child.exitCode === null && child.signalCode === null && child.pid !== undefined;
  }

  /** Sends `signal`, waits up to graceMs for the exit, then SIGKILLs. Resolves with the exit. */
  async stop(child, { signal = "SIGTERM", graceMs = 10_000 } = {}) {
    if (ProcessSet.running(child)) child.kill(signal);
    const timer = sleep(graceMs).then(() => "timeout");
    if ((await Promise.race([child.exited, timer])) === "timeout") {
      child.kill("SIGKILL");
      const exit = await child.exited;
      return { ...exit, killed: true };
    }
    return child.exited;
  }

  /** Runs a command to completion with a deadline; output to files. Resolves with { code, signal, timedOut }. */
  async run(label, command, args, { logPath, stdoutPath, cwd, timeoutMs }) {
    const out = openSync(stdoutPath ?? logPath, "a");
    const err = openSync(logPath, "a");
    let child;
    try {
      child = spawn(command, args, { cwd, stdio: ["ignore", out, err] });
    } finally {
      closeSync(out);
      closeSync(err);
    }
    child.label = label;
    this.live.add(child);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, timeoutMs);
    const exit = await new Promise((resolve) => {
      child.once("error", (error) => resolve({ code: null, signal: null, error }));
      child.once("exit", (code, signal) => resolve({ code, signal }));
    });
    clearTimeout(timer);
    this.live.delete(child);
    return { ...exit, timedOut };
  }

  /** Stops everything still running (SIGTERM, bounded grace, SIGKILL). */
  async stopAll(graceMs = 10_000) {
    await Promise.all([...this.live].map((child) => this.stop(child, { graceMs })));
  }

  /** Last resort from process.on("exit"): synchronous SIGKILL of whatever is left. */
  killAllNow() {
    for (const child of this.live) {
      try {
        child.kill("SIGKILL");
      } catch {
        // already gone
      }
    }
  }
}

/**
 * Waits until `regex` matches a line of the child's log written after byte `fromOffset`; resolves
 * with { match, at (ms since epoch, from the line's ISO timestamp if it has one), offset (after the
 * line) }. Fails with the log's tail if the child exits first or `timeoutMs` passes.
 */
export async function waitForLog(child, regex, { timeoutMs, what, fromOffset = 0 }) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = existsSync(child.logPath) ? readFileSync(child.logPath, "utf8").slice(fromOffset) : "";
    let lineStart = 0;
    for (const line of text.split("\n")) {
      const lineEnd = lineStart + line.length + 1;
      const match = regex.exec(line);
      if (match && lineEnd <= text.length) {
        const stamp = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) /.exec(line);
        return { match, at: stamp ? Date.parse(stamp[1]) : Date.now(), offset: fromOffset + lineEnd };
      }
      lineStart = lineEnd;
    }
    if (!ProcessSet.running(child)) {
      const how = child.exitCode !== null ? `exit status ${child.exitCode}` : `signal ${child.signalCode}`;
      throw new BenchError(
        `${child.label} ended (${how}) before ${what}; its log ${child.logPath}:\n${logTail(child.logPath)}`,
      );
    }
    if (Date.now() >= deadline) {
      throw new BenchError(
        `${child.label}: no sign of ${what} after ${Math.round(timeoutMs / 1000)} s; its log ${child.logPath}:\n${logTail(child.logPath)}`,
      );
    }
    await sleep(POLL_MS);
  }
}

/**
 * Polls `probe` (async, returns a value or undefined) until it returns a value; bounded. A BenchError
 * from the probe ends the wait at once; other errors (connection refused...) are retried.
 */
export async function waitFor(probe, { timeoutMs, what, intervalMs = 200 }) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (error) {
      if (error instanceof BenchError) throw error; // a verdict, not a "not yet"
      last = error;
    }
    if (Date.now() >= deadline) {
      throw new BenchError(
        `${what}: not reached after ${Math.round(timeoutMs / 1000)} s${last ? ` (${last.message})` : ""}`,
      );
    }
    await sleep(intervalMs);
  }
}

/** A TCP port on 127.0.0.1 that nothing listens on right now (the kernel picks it). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** The export size nbdinfo reports for `uri`, or undefined if it does not answer (5 s bound). */
export function nbdSize(uri) {
  const result = spawnSync("nbdinfo", ["--size", uri], { encoding: "utf8", timeout: 5000 });
  return result.status === 0 ? Number(result.stdout.trim()) : undefined;
}

export function statusKib(pid, key) {
  try {
    const line = readFileSync(`/proc/${pid}/status`, "utf8")
      .split("\n")
      .find((l) => l.startsWith(`${key}:`));
    return line ? Number(line.split(/\s+/)[1]) : null;
  } catch {
    return null;
  }
}

const CLOCK_TICKS = Number(spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).stdout?.trim()) || 100;

/** CPU seconds (user + system) per thread of `pid`: Map tid -> { name, seconds }. */
export function threadCpu(pid) {
  const threads = new Map();
  let tids = [];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return threads;
  }
  for (const tid of tids) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
      const close = stat.lastIndexOf(")");
      const name = stat.slice(stat.indexOf("(") + 1, close);
      const fields = stat.slice(close + 2).split(" ");
      // fields[0] is field 3 (state): utime is field 14, stime field 15.
      threads.set(tid, { name, seconds: (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS });
    } catch {
      // thread ended meanwhile
    }
  }
  return threads;
}

/** CPU seconds (user + system) of the whole process, threads that ended included. */
export function processCpu(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
  } catch {
    return null;
  }
}

/**
 * Where a process's CPU went: its main thread (the event loop, for node) against its other live
 * threads (libuv's pool doing file I/O, V8's workers and GC). Node 20 leaves its threads unnamed, so
 * they are told apart by id. Returns { mainSeconds, otherSeconds, otherThreads, lines } (lines: one
 * per thread, for a file).
 */
export function cpuSplit(pid) {
  const threads = threadCpu(pid);
  let mainSeconds = 0;
  let otherSeconds = 0;
  let otherThreads = 0;
  const lines = [];
  for (const [tid, { name, seconds }] of threads) {
    if (tid === String(pid)) mainSeconds += seconds;
    else {
      otherSeconds += seconds;
      if (seconds > 0) otherThreads++;
    }
    lines.push(`${seconds.toFixed(2).padStart(8)}  tid ${tid}${tid === String(pid) ? " (main)" : ""} ${name}`);
  }
  return { mainSeconds, otherSeconds, otherThreads, lines };
}
