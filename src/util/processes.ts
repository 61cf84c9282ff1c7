// This machine's processes as /proc shows them (Linux only): each one's parent, process group and
// command line, read synchronously so that a caller can find a whole set of processes and then signal
// them all at once, as a power loss would stop them. A pid is only a name that the kernel reuses, so
// callers check a process's command line before they signal it.

import { readdirSync, readFileSync, readlinkSync } from "node:fs";

export interface ProcessEntry {
  readonly pid: number;
  readonly parentPid: number;
  readonly groupId: number;
  /** Exited, not reaped yet: it runs nothing any more. */
  readonly zombie: boolean;
  /** Stopped by a signal (SIGSTOP, SIGTSTP...): state T in /proc/PID/stat, until SIGCONT. */
  readonly stopped: boolean;
}

/** One process's entry, or undefined if it does not exist (or /proc cannot be read). */
export function processEntry(pid: number): ProcessEntry | undefined {
  if (!(Number.isInteger(pid) && pid > 0)) return undefined;
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined;
  }
  // "PID (COMMAND) STATE PPID PGRP ...": the command may hold spaces and parentheses, so read after the last ")".
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return {
    pid,
    parentPid: Number(fields[1]),
    groupId: Number(fields[2]),
    zombie: fields[0] === "Z",
    stopped: fields[0] === "T",
  };
}

/** Every process on this machine. */
export function processTable(): ProcessEntry[] {
  let names: string[];
  try {
    names = readdirSync("/proc");
  } catch {
    return [];
  }
  const entries: ProcessEntry[] = [];
  for (const name of names) {
    if (!/^\d+$/.test(name)) continue;
    const entry = processEntry(Number(name));
    if (entry !== undefined) entries.push(entry);
  }
  return entries;
}

/** Whether `pid` runs: it exists and is not a zombie. */
export function running(pid: number): boolean {
  const entry = processEntry(pid);
  return entry !== undefined && !entry.zombie;
}

/** The argv of `pid`, or undefined if it is gone (a zombie's command line is empty: gone too). */
export function commandLineOf(pid: number): string[] | undefined {
  let raw: Buffer;
  try {
    raw = readFileSync(`/proc/${pid}/cmdline`);
  } catch {
    return undefined;
  }
  if (raw.length === 0) return undefined;
  const text = raw.toString("utf8");
  return (text.endsWith("\0") ? text.slice(0, -1) : text).split("\0");
}

/**
 * The processes that `pid` started, and theirs, down the tree, as `table` has them; and when `pid` leads
 * its process group, the group's other members too (a child whose parent died meanwhile stays in it).
 */
export function descendants(pid: number, table: readonly ProcessEntry[]): number[] {
  const found = new Set<number>();
  if (table.find((entry) => entry.pid === pid)?.groupId === pid)
    for (const entry of table) if (entry.groupId === pid && entry.pid !== pid) found.add(entry.pid);
  const queue = [pid, ...found];
  while (queue.length > 0) {
    const parent = queue.shift() as number;
    for (const entry of table)
      if (entry.parentPid === parent && entry.pid !== pid && !found.has(entry.pid)) {
        found.add(entry.pid);
        queue.push(entry.pid);
      }
  }
  return [...found];
}

/** The working directory of `pid` (what its relative paths are relative to), or undefined if it cannot be read. */
export function workingDirectoryOf(pid: number): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/cwd`);
  } catch {
    return undefined;
  }
}
