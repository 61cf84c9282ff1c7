// One running QEMU: started paused from a VM spec, set up over QMP, then resumed; stopped politely,
// then firmly, then by force.
//
// The model (DESIGN.md, "Virtual servers": start paused, set up, `cont`):
//   start: refuse if a QEMU of this VM still runs (its pidfile trusted: a VM never runs twice);
//     remove sockets a killed QEMU left; spawn QEMU with qemuCommand(spec) in its own process group (so a signal to the agent's
//     group never reaches it), stderr appended to the runtime directory's qemu.log; wait (bounded)
//     for its QMP socket; connect; read the vCPU threads with query-cpus-fast; pin each vCPU thread
//     to its host CPU (sched_setaffinity through `taskset -p -c CPU TID`); run the caller's
//     beforeResume step (the agent plugs the VM's taps into their bridges there, so the guest never
//     runs unplugged); `cont`. Any failure kills the QEMU by its pid and rejects: a half-started VM
//     is never left behind.
//   netns: QEMU runs inside a network namespace (the local cluster's, where the bridge is), so the
//     taps it creates are there too. It is spawned as `ip netns exec NS qemu-system-x86_64 ...`;
//     ip execs QEMU in place, so the child's pid, the pidfile's pid and the pinned threads' process
//     are one and the same.
//   stop: `system_powerdown` and wait up to powerdownTimeoutMs for the guest to power off; else
//     `quit` and wait up to quitTimeoutMs; else SIGKILL by pid. Every wait is bounded.

import { execFile, spawn, type ChildProcess } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import { rm, stat } from "node:fs/promises";
import { HavenError, errorMessage } from "../core/errors.js";
import { QmpClient } from "./qmp-client.js";
import { qemuCommand, type VmSpec } from "./qemu-command.js";
import { trustedPidFromPidfile } from "./runtime-dir.js";
import { checkNamespaceName, namespaceExists } from "./network.js";

export const DEFAULT_START_TIMEOUT_MS = 30_000;
export const DEFAULT_QMP_COMMAND_TIMEOUT_MS = 10_000;
export const DEFAULT_POWERDOWN_TIMEOUT_MS = 60_000;
export const DEFAULT_QUIT_TIMEOUT_MS = 10_000;
/** How long to wait for the kernel to reap a QEMU sent SIGKILL. */
const KILL_WAIT_MS = 10_000;
const TASKSET_TIMEOUT_MS = 5_000;
const SOCKET_POLL_MS = 20;

export interface VcpuThread {
  readonly cpuIndex: number;
  readonly threadId: number;
}

export interface QemuStartOptions {
  readonly spec: VmSpec;
  /** The QEMU binary. Default qemu-system-x86_64. */
  readonly qemuBinary?: string;
  /** Host CPU for each vCPU, by vCPU index (length = spec.vcpus); absent: no pinning. */
  readonly vcpuHostCpus?: readonly number[];
  /** Bound on everything from spawn to `cont`. */
  readonly startTimeoutMs?: number;
  /** Bound on each QMP command. */
  readonly qmpCommandTimeoutMs?: number;
  /** Run QEMU inside this network namespace (it must exist: network.ts ensureNamespaceNetwork). */
  readonly netns?: string;
  /**
   * Runs while QEMU is paused, after vCPU pinning and before `cont` (e.g. network.ts plugNics), within
   * the start's bound; a rejection fails the start and kills QEMU.
   */
  readonly beforeResume?: (qemu: PausedQemu) => Promise<void>;
  /** Leave QEMU paused after the start (a live migration's destination: Haven resumes it later). */
  readonly stayPaused?: boolean;
}

/** A QEMU started but not yet resumed, as beforeResume sees it. */
export interface PausedQemu {
  readonly pid: number;
  readonly qmp: QmpClient;
  readonly vcpuThreads: readonly VcpuThread[];
  /** What is left of the start's bound. */
  readonly remainingMs: number;
}

export interface QemuStopOptions {
  readonly powerdownTimeoutMs?: number;
  readonly quitTimeoutMs?: number;
}

/** How a stop ended QEMU: the guest powered off, QEMU quit on request, or it was killed. */
export type StopOutcome = "already-exited" | "powerdown" | "quit" | "killed";

export interface QemuExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export class QemuProcess {
  readonly pid: number;
  readonly qmp: QmpClient;
  readonly vcpuThreads: readonly VcpuThread[];
  /** Resolves when QEMU has exited. */
  readonly exited: Promise<QemuExit>;
  private readonly child: ChildProcess;
  private readonly qmpCommandTimeoutMs: number;

  private constructor(
    child: ChildProcess,
    exited: Promise<QemuExit>,
    qmp: QmpClient,
    vcpuThreads: readonly VcpuThread[],
    qmpCommandTimeoutMs: number,
  ) {
    this.child = child;
    this.pid = child.pid as number;
    this.exited = exited;
    this.qmp = qmp;
    this.vcpuThreads = vcpuThreads;
    this.qmpCommandTimeoutMs = qmpCommandTimeoutMs;
  }

  /** Whether QEMU has exited. */
  get hasExited(): boolean {
    return this.child.exitCode !== null || this.child.signalCode !== null;
  }

  /** Starts QEMU paused, pins its vCPUs, resumes it; kills it by pid on any failure. */
  static async start(options: QemuStartOptions): Promise<QemuProcess> {
    const { spec } = options;
    const args = qemuCommand(spec);
    const hostCpus = options.vcpuHostCpus;
    if (hostCpus !== undefined) checkHostCpus(spec.name, hostCpus, spec.vcpus);
    const startTimeoutMs = options.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS;
    const qmpCommandTimeoutMs = options.qmpCommandTimeoutMs ?? DEFAULT_QMP_COMMAND_TIMEOUT_MS;
    const deadline = Date.now() + startTimeoutMs;
    const remaining = (): number => Math.max(1, deadline - Date.now());

    // A VM never runs twice: a QEMU of this VM that still runs (its pidfile trusted) is refused.
    if (options.netns !== undefined) await checkNamespacePresent(spec.name, options.netns);
    const running = await trustedPidFromPidfile(spec.runtime.pidfile, spec.name);
    if (running !== undefined)
      throw new HavenError("HAVEN_ERR_CONFLICT", `VM ${spec.name} is already running here as pid ${running}`);
    // Sockets left by a QEMU that was killed would look ready before the new QEMU listens.
    for (const socket of [spec.runtime.qmpSocket, spec.runtime.serialSocket, spec.runtime.heartbeatSocket])
      await rm(socket, { force: true });

    const logFd = openSync(spec.runtime.qemuLog, "a", 0o600);
    let child: ChildProcess;
    try {
      const qemuBinary = options.qemuBinary ?? "qemu-system-x86_64";
      const [program, argv] =
        options.netns === undefined
          ? [qemuBinary, args]
          : ["ip", ["netns", "exec", options.netns, qemuBinary, ...args]];
      child = spawn(program, argv, {
        detached: true,
        stdio: ["ignore", logFd, logFd],
      });
    } finally {
      closeSync(logFd);
    }
    const exited = new Promise<QemuExit>((resolve) => {
      child.once("exit", (code, signal) => resolve({ code, signal }));
      child.once("error", () => resolve({ code: null, signal: null }));
    });
    const spawnFailed = new Promise<never>((_resolve, reject) =>
      child.once("error", (error) =>
        reject(new HavenError("HAVEN_ERR_UNAVAILABLE", `VM ${spec.name}: QEMU did not start: ${error.message}`)),
      ),
    );
    spawnFailed.catch(() => undefined); // only the race below reads it

    let qmp: QmpClient | undefined;
    try {
      await Promise.race([waitForSocket(spec.runtime.qmpSocket, child, remaining()), spawnFailed]);
      qmp = await QmpClient.connect(spec.runtime.qmpSocket, { connectTimeoutMs: remaining() });
      const client = qmp;
      const timeout = (): { timeoutMs: number } => ({ timeoutMs: Math.min(qmpCommandTimeoutMs, remaining()) });
      const vcpuThreads = parseCpus(spec.name, await client.execute("query-cpus-fast", undefined, timeout()));
      if (vcpuThreads.length !== spec.vcpus)
        throw new HavenError(
          "HAVEN_ERR_IO",
          `VM ${spec.name}: QEMU reports ${vcpuThreads.length} vCPU threads, the spec asks for ${spec.vcpus}`,
        );
      if (hostCpus !== undefined) {
        for (const vcpu of vcpuThreads) {
          await pinThread(spec.name, vcpu.threadId, hostCpus[vcpu.cpuIndex] as number, remaining());
        }
      }
      if (options.beforeResume !== undefined) {
        const step = options.beforeResume({
          pid: child.pid as number,
          qmp: client,
          vcpuThreads,
          remainingMs: remaining(),
        });
        await withinBound(step, remaining(), `VM ${spec.name}: the step before resuming`);
      }
      if (options.stayPaused !== true) await client.execute("cont", undefined, timeout());
      return new QemuProcess(child, exited, client, vcpuThreads, qmpCommandTimeoutMs);
    } catch (error) {
      qmp?.close();
      await killAndWait(child, exited);
      if (error instanceof HavenError) throw error;
      throw new HavenError("HAVEN_ERR_IO", `VM ${spec.name}: starting QEMU failed: ${errorMessage(error)}`, {
        cause: error,
      });
    }
  }

  /** Stops QEMU: powerdown, then quit, then SIGKILL by pid; resolves with how it ended. */
  async stop(options: QemuStopOptions = {}): Promise<StopOutcome> {
    try {
      if (this.hasExited) return "already-exited";
      const powerdownTimeoutMs = options.powerdownTimeoutMs ?? DEFAULT_POWERDOWN_TIMEOUT_MS;
      const quitTimeoutMs = options.quitTimeoutMs ?? DEFAULT_QUIT_TIMEOUT_MS;
      const commandTimeout = { timeoutMs: this.qmpCommandTimeoutMs };
      const sent = await this.qmp.execute("system_powerdown", undefined, commandTimeout).then(
        () => true,
        () => false,
      );
      if (sent && (await exitWithin(this.exited, powerdownTimeoutMs))) return "powerdown";
      if (this.hasExited) return "powerdown";
      // quit's reply may race QEMU's exit (the connection closes): only the exit counts.
      await this.qmp.execute("quit", undefined, commandTimeout).catch(() => undefined);
      if (await exitWithin(this.exited, quitTimeoutMs)) return "quit";
      await killAndWait(this.child, this.exited);
      return "killed";
    } finally {
      this.qmp.close();
    }
  }
}

function checkHostCpus(vm: string, hostCpus: readonly number[], vcpus: number): void {
  if (hostCpus.length !== vcpus)
    throw new HavenError(
      "HAVEN_ERR_CONFIG",
      `VM ${vm}: ${hostCpus.length} host CPUs given to pin ${vcpus} vCPUs; give one per vCPU`,
    );
  for (const cpu of hostCpus) {
    if (!Number.isSafeInteger(cpu) || cpu < 0 || cpu > 4095)
      throw new HavenError("HAVEN_ERR_CONFIG", `VM ${vm}: host CPU ${cpu} is not a CPU number`);
  }
}

/** The vCPU threads from a query-cpus-fast reply, checked. */
function parseCpus(vm: string, reply: unknown): VcpuThread[] {
  if (!Array.isArray(reply))
    throw new HavenError("HAVEN_ERR_IO", `VM ${vm}: query-cpus-fast returned ${JSON.stringify(reply)}, not a list`);
  return reply.map((entry: unknown) => {
    const record = (entry ?? {}) as Record<string, unknown>;
    const cpuIndex = record["cpu-index"];
    const threadId = record["thread-id"];
    if (!Number.isSafeInteger(cpuIndex) || !Number.isSafeInteger(threadId) || (threadId as number) <= 0)
      throw new HavenError("HAVEN_ERR_IO", `VM ${vm}: query-cpus-fast returned a bad entry ${JSON.stringify(entry)}`);
    return { cpuIndex: cpuIndex as number, threadId: threadId as number };
  });
}

/** Pins thread `threadId` to `hostCpu` with `taskset -p -c`. */
function pinThread(vm: string, threadId: number, hostCpu: number, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(
      "taskset",
      ["-p", "-c", String(hostCpu), String(threadId)],
      { timeout: Math.min(TASKSET_TIMEOUT_MS, timeoutMs) },
      (error, _stdout, stderr) => {
        if (error)
          reject(
            new HavenError(
              "HAVEN_ERR_IO",
              `VM ${vm}: pinning vCPU thread ${threadId} to CPU ${hostCpu} failed: ${stderr.trim() || error.message}`,
            ),
          );
        else resolve();
      },
    );
  });
}

/** Refuses a network namespace name `ip netns exec` would misread, or one that does not exist. */
async function checkNamespacePresent(vm: string, namespace: string): Promise<void> {
  checkNamespaceName(namespace, "HAVEN_ERR_CONFIG", `VM ${vm}: network namespace`);
  if (!(await namespaceExists(namespace)))
    throw new HavenError(
      "HAVEN_ERR_CONFIG",
      `VM ${vm}: network namespace ${namespace} does not exist; create it first (ip netns add ${namespace}, or network.ts ensureNamespaceNetwork)`,
    );
}

/** `promise`, or a HAVEN_ERR_UNAVAILABLE rejection once `timeoutMs` has passed. */
async function withinBound<T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(
      () => reject(new HavenError("HAVEN_ERR_UNAVAILABLE", `${what} did not finish within ${timeoutMs} ms`)),
      timeoutMs,
    );
  });
  try {
    return await Promise.race([promise, timedOut]);
  } finally {
    clearTimeout(timer);
  }
}

/** Waits until `path` is a socket, QEMU exits (rejects), or the time is up (rejects). */
async function waitForSocket(path: string, child: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null)
      throw new HavenError(
        "HAVEN_ERR_UNAVAILABLE",
        `QEMU exited (${child.exitCode ?? child.signalCode}) before creating its QMP socket ${path}; see its log`,
      );
    try {
      if ((await stat(path)).isSocket()) return;
    } catch {
      // not there yet
    }
    if (Date.now() > deadline)
      throw new HavenError("HAVEN_ERR_UNAVAILABLE", `QEMU created no QMP socket ${path} within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, SOCKET_POLL_MS));
  }
}

/** Whether `exited` resolves within `timeoutMs`. */
async function exitWithin(exited: Promise<QemuExit>, timeoutMs: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs)));
  try {
    return await Promise.race([exited.then(() => true), timedOut]);
  } finally {
    clearTimeout(timer);
  }
}

/** SIGKILL to QEMU by its pid (unless it has exited), then a bounded wait for its exit. */
async function killAndWait(child: ChildProcess, exited: Promise<QemuExit>): Promise<void> {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(child.pid, "SIGKILL");
  } catch {
    return; // already gone
  }
  await exitWithin(exited, KILL_WAIT_MS);
}
