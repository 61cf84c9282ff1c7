// A VM's runtime directory on its host: the files through which the agent reaches its QEMU
// (pidfile, QMP socket, serial console socket and log, heartbeat socket, QEMU's own log), in a directory only
// Haven's user can enter (mode 0700), so no other local user can talk to QEMU (DESIGN.md, "Trust").
//
// The model for finding a running QEMU again (after an agent restart): the pidfile says which pid
// QEMU had, but pids are reused, so the pid is trusted only if /proc/PID/cmdline still names this
// VM (`-name guest=NAME,...`, as qemuCommand writes it). A stale pidfile whose pid now belongs to
// another process is not trusted: killing that pid would kill an innocent process.
//
// Where: every VM of a host has its directory under vmRuntimeRoot(the host's state directory), so
// whatever must find a host's QEMUs without asking its agent (`haven cluster kill`) looks in the same
// place as the agent.

import { chmod, lstat, mkdir, open, readFile, readdir } from "node:fs/promises";
import { join } from "node:path";
import { HavenError, fromSystemError } from "../core/errors.js";
import type { VmRuntimePaths } from "./qemu-command.js";
import { commandLineNamesVm } from "./qemu-name.js";

export { commandLineNamesVm } from "./qemu-name.js";

export const RUNTIME_DIR_MODE = 0o700;
/** A pidfile holds one decimal pid and a newline; anything longer is not one. */
const MAX_PIDFILE_BYTES = 64;

/** Where a host keeps its VMs' runtime directories: one per VM, named after it, under the host's state directory. */
export function vmRuntimeRoot(hostStateDir: string): string {
  return join(hostStateDir, "vms");
}

/** VM `vmName`'s runtime directory on the host whose state directory is `hostStateDir`. */
export function vmRuntimeDir(hostStateDir: string, vmName: string): string {
  return join(vmRuntimeRoot(hostStateDir), vmName);
}

/** The runtime files inside `dir`. */
export function runtimePaths(dir: string): VmRuntimePaths {
  return {
    pidfile: join(dir, "qemu.pid"),
    qmpSocket: join(dir, "qmp.sock"),
    serialSocket: join(dir, "serial.sock"),
    serialLog: join(dir, "serial.log"),
    heartbeatSocket: join(dir, "heartbeat.sock"),
    qemuLog: join(dir, "qemu.log"),
  };
}

/**
 * Creates `dir` (and missing parents) with mode 0700, or checks an existing one: it must be a real
 * directory (not a symlink) owned by this process's user, and its mode is set to 0700.
 */
export async function createRuntimeDir(dir: string): Promise<VmRuntimePaths> {
  try {
    await mkdir(dir, { recursive: true, mode: RUNTIME_DIR_MODE });
    const stats = await lstat(dir);
    if (!stats.isDirectory())
      throw new HavenError("HAVEN_ERR_CONFIG", `VM runtime directory ${dir} exists and is not a directory`);
    const uid = process.getuid?.();
    if (uid !== undefined && stats.uid !== uid)
      throw new HavenError(
        "HAVEN_ERR_CONFIG",
        `VM runtime directory ${dir} belongs to uid ${stats.uid}, not Haven's uid ${uid}; remove it or fix its owner`,
      );
    // mkdir's mode is filtered by the umask, and an existing directory keeps its own: set it.
    await chmod(dir, RUNTIME_DIR_MODE);
  } catch (error) {
    throw fromSystemError(error, `creating VM runtime directory ${dir}`);
  }
  return runtimePaths(dir);
}

/** The pid in `pidfile`, or undefined if there is no pidfile or it holds no valid pid. */
export async function readPidfile(pidfile: string): Promise<number | undefined> {
  let text: string;
  try {
    const handle = await open(pidfile, "r");
    try {
      const buffer = Buffer.alloc(MAX_PIDFILE_BYTES + 1);
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, 0);
      text = buffer.subarray(0, bytesRead).toString("utf8");
    } finally {
      await handle.close();
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw fromSystemError(error, `reading pidfile ${pidfile}`);
  }
  if (text.length > MAX_PIDFILE_BYTES) return undefined;
  const trimmed = text.trim();
  if (!/^[1-9][0-9]{0,9}$/.test(trimmed)) return undefined;
  const pid = Number(trimmed);
  return pid <= 0x7fffffff ? pid : undefined;
}

/** The argv of process `pid` from /proc, or undefined if it no longer exists. */
export async function processCommandLine(pid: number): Promise<string[] | undefined> {
  let raw: Buffer;
  try {
    raw = await readFile(`/proc/${pid}/cmdline`);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ESRCH") return undefined;
    throw fromSystemError(error, `reading /proc/${pid}/cmdline`);
  }
  // A zombie or kernel thread has an empty command line.
  if (raw.length === 0) return undefined;
  const text = raw.toString("utf8");
  return (text.endsWith("\0") ? text.slice(0, -1) : text).split("\0");
}

/**
 * The pid of VM `vmName`'s QEMU from the pidfile in `dir`, only if that process still runs and its
 * command line names this VM; undefined otherwise (no pidfile, a dead pid, or a reused one).
 */
export async function trustedPid(dir: string, vmName: string): Promise<number | undefined> {
  return trustedPidFromPidfile(runtimePaths(dir).pidfile, vmName);
}

/** trustedPid for a pidfile given by its path. */
export async function trustedPidFromPidfile(pidfile: string, vmName: string): Promise<number | undefined> {
  const pid = await readPidfile(pidfile);
  if (pid === undefined) return undefined;
  const argv = await processCommandLine(pid);
  if (argv === undefined) return undefined;
  return commandLineNamesVm(argv, vmName) ? pid : undefined;
}

/**
 * The QEMUs running for the VMs of the host whose state directory is `hostStateDir`: one per runtime
 * directory under vmRuntimeRoot whose pidfile's pid is trusted (its command line names the VM the
 * directory is named after). Found without the agent, which may be dead or hung.
 */
export async function runningVms(hostStateDir: string): Promise<{ name: string; pid: number }[]> {
  const root = vmRuntimeRoot(hostStateDir);
  let names: string[];
  try {
    names = await readdir(root);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw fromSystemError(error, `listing VM runtime directories in ${root}`);
  }
  const found: { name: string; pid: number }[] = [];
  for (const name of names.sort()) {
    // An entry that is no runtime directory, or an unreadable pidfile, names no running VM.
    const pid = await trustedPid(join(root, name), name).catch(() => undefined);
    if (pid !== undefined) found.push({ name, pid });
  }
  return found;
}
