// Finding a host's disks and saying what state each is in. The agent's config names disk paths or
// patterns ("/srv/haven/*", "/dev/disk/by-id/ata-*"); expandDiskPaths turns them into paths. Each
// path's label and health then go through classifyDisk, a pure decision:
//   1. missing  the path is not there (not present), whatever else is known;
//   2. failed   its label is there but cannot be read or parsed (labelError): Haven cannot tell
//               whose disk it is, so it neither uses nor offers it;
//   3. new      no label: a disk `haven disk add` may take (its health is noted in the reason);
//   4. foreign  the label names another cluster, or this cluster but another host: someone else's
//               disk, never written to; the reason says whose;
//   5. failed   ours, but its filesystem is read-only (mounted so, or remounted after errors) or its
//               probe write failed (probeOk false): its copies are faulted;
//   6. failing  ours, writable, probes pass (or none ran yet), but I/O errors were seen on it
//               (ioErrors > 0): still used, to be replaced soon;
//   7. online   ours, writable, no I/O errors, probe passing or not run yet (the reason says which).
// Identity comes before health: a foreign disk is foreign even when it is also broken, because what
// matters first is that Haven must not touch it.

import { readdir, stat } from "node:fs/promises";
import type { DiskLabel } from "./disk-label.js";

export type DiskState = "online" | "failing" | "failed" | "missing" | "foreign" | "new";

export interface DiskClassifyInput {
  /** The label at the disk's root, if one was read. */
  readonly label: DiskLabel | undefined;
  /** Why a label that is there could not be read or parsed. */
  readonly labelError?: string;
  /** This host's cluster and name. */
  readonly cluster: string;
  readonly host: string;
  /** Whether the disk's path exists (and, for a device, is attached). */
  readonly present: boolean;
  /** The latest probe write: passed, failed, or none yet (undefined). */
  readonly probeOk: boolean | undefined;
  /** What the failed probe said, for the reason. */
  readonly probeDetail?: string;
  /** Whether the disk's filesystem refuses writes. */
  readonly readOnly: boolean;
  /** I/O errors seen on the disk's copies since it was last healthy (0 or absent: none). */
  readonly ioErrors?: number;
}

export interface DiskClassification {
  readonly state: DiskState;
  /** A sentence for the operator saying why. */
  readonly reason: string;
}

function describe(label: DiskLabel): string {
  return `disk ${label.disk} of host ${label.host} in cluster ${label.cluster}`;
}

/** The state of one disk, from what was found at its path (the rules are in the file header). */
export function classifyDisk(input: DiskClassifyInput): DiskClassification {
  const { label } = input;
  if (!input.present) {
    return {
      state: "missing",
      reason: label === undefined ? "not found at its path" : `${describe(label)} is not found at its path`,
    };
  }
  if (input.labelError !== undefined) {
    return { state: "failed", reason: `its Haven label cannot be used: ${input.labelError}` };
  }
  if (label === undefined) {
    const health = [
      ...(input.readOnly ? ["it is read-only"] : []),
      ...(input.probeOk === false ? ["its probe failed"] : []),
    ];
    return {
      state: "new",
      reason: `no Haven label: \`haven disk add\` can take it${health.length > 0 ? ` (but ${health.join(" and ")})` : ""}`,
    };
  }
  if (label.cluster !== input.cluster) {
    return { state: "foreign", reason: `it is ${describe(label)}, not of this cluster (${input.cluster})` };
  }
  if (label.host !== input.host) {
    return {
      state: "foreign",
      reason: `it is disk ${label.disk} of host ${label.host} of this cluster, not of this host (${input.host})`,
    };
  }
  if (input.readOnly) {
    return { state: "failed", reason: `its filesystem is read-only (mounted so, or remounted after I/O errors)` };
  }
  if (input.probeOk === false) {
    return {
      state: "failed",
      reason: `its probe write failed${input.probeDetail === undefined ? "" : `: ${input.probeDetail}`}`,
    };
  }
  const ioErrors = input.ioErrors ?? 0;
  if (ioErrors > 0) {
    return {
      state: "failing",
      reason: `${ioErrors} I/O error${ioErrors === 1 ? " was" : "s were"} seen on it, though it still takes writes: replace it soon`,
    };
  }
  return {
    state: "online",
    reason: input.probeOk === true ? `${describe(label)}, probe ok` : `${describe(label)}, not probed yet`,
  };
}

// ---- patterns ------------------------------------------------------------------------------------

/** Whether a path component holds a wildcard ('*' any run of characters, '?' one character). */
function hasWildcard(component: string): boolean {
  return component.includes("*") || component.includes("?");
}

/** A component pattern as a regular expression; like a shell, a wildcard does not match a leading dot. */
function componentMatcher(pattern: string): (name: string) => boolean {
  const body = pattern
    .split("")
    .map((character) =>
      character === "*" ? "[^/]*" : character === "?" ? "[^/]" : character.replace(/[.+^${}()|[\]\\]/g, "\\$&"),
    )
    .join("");
  const regex = new RegExp(`^${body}$`);
  return (name) => regex.test(name) && (pattern.startsWith(".") || !name.startsWith("."));
}

/**
 * The paths one pattern names: a path without wildcards as it is, present or not (so a missing disk
 * can be reported); with wildcards, the existing paths that match, sorted (none if nothing matches).
 * A pattern ending in '/' matches directories only.
 */
export async function expandDiskPattern(pattern: string): Promise<string[]> {
  const absolute = pattern.startsWith("/");
  const directoriesOnly = pattern.endsWith("/");
  const components = pattern.split("/").filter((component) => component !== "");
  const first = components.findIndex(hasWildcard);
  if (first < 0) return [pattern];
  // "" stands for the pattern's starting point: "/" for an absolute pattern, the working directory else.
  const under = (base: string, name: string): string =>
    base === "" ? (absolute ? `/${name}` : name) : `${base}/${name}`;
  let paths = [components.slice(0, first).reduce(under, "")];
  for (const component of components.slice(first)) {
    const next: string[] = [];
    for (const base of paths) {
      if (!hasWildcard(component)) {
        next.push(under(base, component));
        continue;
      }
      // A base that is not a directory (or is gone) matches nothing under it.
      const names = await readdir(base === "" ? (absolute ? "/" : ".") : base).catch(() => [] as string[]);
      const matches = componentMatcher(component);
      for (const name of names) if (matches(name)) next.push(under(base, name));
    }
    paths = next;
  }
  const existing: string[] = [];
  for (const path of paths) {
    const info = await stat(path).catch(() => undefined);
    if (info !== undefined && (!directoriesOnly || info.isDirectory())) existing.push(path);
  }
  return existing.sort();
}

/** Every path the patterns name, in the patterns' order, each pattern's matches sorted, duplicates dropped. */
export async function expandDiskPaths(patterns: readonly string[]): Promise<string[]> {
  const paths: string[] = [];
  for (const pattern of patterns) {
    for (const path of await expandDiskPattern(pattern)) if (!paths.includes(path)) paths.push(path);
  }
  return paths;
}
