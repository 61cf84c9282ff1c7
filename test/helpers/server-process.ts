// Starts `haven nbd serve` as a real child process for integration tests, waits until it listens
// (by watching its log, never by sleeping), and stops it with a signal. Every process started here is
// tracked until it exits: an after hook calls killStartedProcesses() so that a failed test leaves none
// running (a child's pipes would keep the test process, and so the run, alive), and a test process
// that exits anyway (the test script passes --test-force-exit) kills what is left.

import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { packageRoot } from "../../src/util/repo-root.js";
import { existsSync } from "node:fs";

export const HAVEN_BIN = join(packageRoot(), "bin", "haven.js");

export interface ServerHandle {
  readonly process: ChildProcess;
  readonly port: number;
  readonly socketPath: string;
  readonly uri: string;
  readonly file: string;
  readonly name: string;
  /** Everything the server logged so far. */
  log(): string;
  /** Resolves when the log contains `text` (or rejects after timeoutMs). */
  waitForLog(text: string | RegExp, timeoutMs?: number): Promise<void>;
  /** Sends a signal and resolves with the exit code (SIGKILL after timeoutMs, 30 s by default). */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<number | null>;
}

export function tempDir(prefix = "haven-test-"): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  // HAVEN_KEEP_TEST_DIRS=1 keeps them (logs, copies) for a post-mortem of a failed test.
  const keep = process.env.HAVEN_KEEP_TEST_DIRS === "1";
  return { path, remove: () => (keep ? undefined : rmSync(path, { recursive: true, force: true })) };
}

export interface HavenProcess {
  readonly process: ChildProcess;
  /** Everything the process logged so far. */
  log(): string;
  /** Resolves when the log (from character `from` on) contains `text`; rejects on timeout or exit. */
  waitForLog(text: string | RegExp, timeoutMs?: number, from?: number): Promise<void>;
  /**
   * Sends a signal (SIGTERM by default) and resolves with the exit code; a process still running
   * timeoutMs later (30 s by default) is killed with SIGKILL, so a stop never hangs a test.
   */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<number | null>;
  readonly exited: Promise<number | null>;
}

const STOP_TIMEOUT_MS = 30_000;

/** The processes spawnHaven started that have not exited yet. */
const running = new Set<HavenProcess>();

process.once("exit", () => {
  for (const child of running) child.process.kill("SIGKILL");
});

/** Kills (SIGKILL, by pid) every process spawnHaven started that still runs; for after hooks. */
export async function killStartedProcesses(): Promise<void> {
  await Promise.all([...running].map((child) => child.stop("SIGKILL")));
}

/** Starts `haven ARGS...` as a child process, collecting its output. */
export function spawnHaven(args: string[]): HavenProcess {
  const child = spawn(process.execPath, [HAVEN_BIN, ...args], { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  const listeners = new Set<() => void>();
  const onOutput = (chunk: Buffer): void => {
    output += chunk.toString("utf8");
    for (const listener of listeners) listener();
  };
  child.stdout!.on("data", onOutput);
  child.stderr!.on("data", onOutput);
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));

  const waitForLog = (text: string | RegExp, timeoutMs = 20_000, from = 0): Promise<void> =>
    new Promise((resolve, reject) => {
      const matches = (): boolean => {
        const seen = output.slice(from);
        return typeof text === "string" ? seen.includes(text) : text.test(seen);
      };
      if (matches()) return resolve();
      const timer = setTimeout(() => {
        listeners.delete(check);
        reject(new Error(`log never showed ${String(text)}; log:\n${output}`));
      }, timeoutMs);
      const check = (): void => {
        if (matches()) {
          clearTimeout(timer);
          listeners.delete(check);
          resolve();
        }
      };
      listeners.add(check);
      void exited.then(() => {
        if (!matches()) {
          clearTimeout(timer);
          listeners.delete(check);
          reject(new Error(`process exited before logging ${String(text)}; log:\n${output}`));
        }
      });
    });

  const handle: HavenProcess = {
    process: child,
    log: () => output,
    waitForLog,
    exited,
    stop: async (signal: NodeJS.Signals = "SIGTERM", timeoutMs = STOP_TIMEOUT_MS) => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      let timer: NodeJS.Timeout | undefined;
      const lingered = await Promise.race([
        exited.then(() => false),
        new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), timeoutMs))),
      ]);
      clearTimeout(timer);
      if (lingered) child.kill("SIGKILL");
      return exited;
    },
  };
  running.add(handle);
  void exited.then(() => running.delete(handle));
  return handle;
}

/** Waits for `child` to be ready; if it never is, kills it before passing the failure on. */
export async function readyOrKilled<T>(child: HavenProcess, ready: Promise<T>): Promise<T> {
  try {
    return await ready;
  } catch (error) {
    await child.stop("SIGKILL");
    throw error;
  }
}

/** Starts a server on an ephemeral TCP port and a unix socket in `dir`. */
export async function startServer(options: {
  dir: string;
  file?: string;
  size?: string;
  name?: string;
  extraArgs?: string[];
}): Promise<ServerHandle> {
  const file = options.file ?? join(options.dir, "disk.img");
  const name = options.name ?? "disk";
  const socketPath = join(options.dir, "nbd.sock");
  const args = ["nbd", "serve", file, "--listen", "127.0.0.1:0", "--socket", socketPath, "--name", name];
  if (options.size !== undefined) args.push("--size", options.size);
  args.push(...(options.extraArgs ?? []));
  const child = spawnHaven(args);
  await readyOrKilled(
    child,
    (async () => {
      await child.waitForLog(/on 127\.0\.0\.1:(\d+)/);
      await child.waitForLog(socketPath);
    })(),
  );
  const port = Number(/on 127\.0\.0\.1:(\d+)/.exec(child.log())![1]);
  return {
    process: child.process,
    port,
    socketPath,
    uri: `nbd://127.0.0.1:${port}/${name}`,
    file,
    name,
    log: child.log,
    waitForLog: (text, timeoutMs) => child.waitForLog(text, timeoutMs),
    stop: child.stop,
  };
}

/** Runs a command to completion, capturing output; never throws on a non-zero exit. */
export function run(
  command: string,
  args: string[],
  options: { input?: Buffer | string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ["pipe", "pipe", "pipe"], env: options.env ?? process.env });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString("utf8")));
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${command} ${args.join(" ")} timed out after ${options.timeoutMs ?? 120_000} ms\n${stderr}`));
    }, options.timeoutMs ?? 120_000);
    child.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.on("error", () => undefined); // a tool that exits without reading its input: EPIPE is no failure
    child.stdin.end(options.input ?? "");
  });
}

/** True when an external tool is on PATH. In CI (CI=true) a missing tool is a failure, not a skip. */
export function haveTool(name: string): boolean {
  const found = (process.env.PATH ?? "").split(":").some((directory) => existsSync(join(directory, name)));
  if (!found && process.env.CI === "true") throw new Error(`${name} is missing in CI; .ci/run must install it`);
  return found;
}
