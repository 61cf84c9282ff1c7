// A host's disks in etcd, as its agent finds them: /haven/disks/HOST/DISK holds a DiskRecord with the
// disk's identity (serial, WWN or backing path), where it is mounted, its state and what it holds.
// The records outlive the agent (no lease), so `haven disk list` shows the disks of a host that is down
// with their last known state; the agent rewrites them as it starts and as they change.
//
// Capacity is real: the filesystem's size and free space (statfs), the bytes each copy has allocated
// (du), and `fsId`, the filesystem the disk lives on, so that placement does not count one filesystem
// twice when several disks (or the hosts of a local cluster) share it.

import { isDiskName, isHostName, isVolumeName } from "./names.js";
import { CLUSTER_PREFIX, count, flag, member, nameField, object, text } from "./schema.js";
import { HavenError } from "../core/errors.js";

export type DiskState = "online" | "failing" | "failed" | "missing" | "foreign" | "new" | "spare";

export const DISK_STATES: readonly DiskState[] = ["online", "failing", "failed", "missing", "foreign", "new", "spare"];

export interface DiskCopyUsage {
  readonly volume: string;
  readonly allocatedBytes: number;
}

export interface DiskRecord {
  readonly host: string;
  readonly disk: string;
  /** The directory copies live in (a mount point Haven made, or a configured directory). */
  readonly path: string;
  readonly state: DiskState;
  readonly reason: string;
  /** Held in reserve: a failed disk's copies are rebuilt onto it. */
  readonly spare: boolean;
  readonly identity: { readonly kind: string; readonly value: string; readonly device?: string };
  readonly sizeBytes: number;
  readonly freeBytes: number;
  /** The filesystem's used bytes (everything on it, not only Haven's). */
  readonly usedBytes: number;
  /** The filesystem (device number) the disk lives on. */
  readonly fsId: string;
  readonly copies: readonly DiskCopyUsage[];
  readonly updatedAt: string;
}

export const diskKeys = {
  disk: (host: string, disk: string): string => `${CLUSTER_PREFIX}disks/${host}/${disk}`,
  disksOf: (host: string): string => `${CLUSTER_PREFIX}disks/${host}/`,
  disks: (): string => `${CLUSTER_PREFIX}disks/`,
  /** An operator's request to a host's agent about its disks (DiskRequest), answered in place. */
  request: (host: string, id: string): string => `${CLUSTER_PREFIX}disk-requests/${host}/${id}`,
  requestsOf: (host: string): string => `${CLUSTER_PREFIX}disk-requests/${host}/`,
  /** The cluster's identity, written once by the first agent: disk labels name it. */
  cluster: (): string => `${CLUSTER_PREFIX}cluster`,
} as const;

export function parseDiskRecord(value: string, key: string): DiskRecord {
  const o = object(value, key);
  const state = text(o, "state", key);
  if (!(DISK_STATES as readonly string[]).includes(state))
    throw new HavenError("HAVEN_ERR_CONFIG", `${key}: state "${state}" is not a disk state`);
  const identity = member(o.identity);
  const copies = o.copies;
  if (!Array.isArray(copies)) throw new HavenError("HAVEN_ERR_CONFIG", `${key}: copies is not a list`);
  const device = identity.device;
  return {
    host: nameField(o, "host", key, isHostName, "a host name"),
    disk: nameField(o, "disk", key, isDiskName, "a disk name"),
    path: text(o, "path", key),
    state: state as DiskState,
    reason: text(o, "reason", key),
    spare: flag(o, "spare", key),
    identity: {
      kind: text(identity, "kind", `${key} identity`),
      value: text(identity, "value", `${key} identity`),
      ...(typeof device === "string" && { device }),
    },
    sizeBytes: count(o, "sizeBytes", key),
    freeBytes: count(o, "freeBytes", key),
    usedBytes: count(o, "usedBytes", key),
    fsId: text(o, "fsId", key),
    copies: copies.map((c: unknown, i) => {
      const copy = member(c);
      return {
        volume: nameField(copy, "volume", `${key} copies[${i}]`, isVolumeName, "a volume name"),
        allocatedBytes: count(copy, "allocatedBytes", `${key} copies[${i}]`),
      };
    }),
    updatedAt: text(o, "updatedAt", key),
  };
}

/**
 * What an operator asks of a host's agent about its disks, through etcd (the host's agent acts, then
 * answers in the same record: done or refused, with what it did or why not). The CLI waits for the
 * answer and removes the record.
 *   add       take the disk at `path` (format and mount a block device; label it); `spare` keeps it in
 *             reserve; a path holding data or another cluster's label needs `wipe` = its identity
 *   remove    let go of disk `disk` (no copy may be placed on it; `identity` must still match)
 *   identify  light (or put out, `off`) the disk's locate LED, and say its identity
 */
export interface DiskRequest {
  readonly kind: "add" | "remove" | "identify";
  readonly path?: string;
  readonly disk?: string;
  readonly spare?: boolean;
  readonly fs?: "ext4" | "xfs";
  readonly wipe?: string;
  readonly identity?: string;
  readonly off?: boolean;
  readonly requestedBy: string;
  readonly requestedAt: string;
  readonly state: "pending" | "done" | "refused";
  /** What was done, or why not (set by the agent). */
  readonly result?: string;
  /** The disk the request was about, once known (set by the agent). */
  readonly answeredDisk?: string;
}

export function parseDiskRequest(value: string, key: string): DiskRequest {
  const o = object(value, key);
  const kind = text(o, "kind", key);
  if (kind !== "add" && kind !== "remove" && kind !== "identify")
    throw new HavenError("HAVEN_ERR_CONFIG", `${key}: kind "${kind}" is not add, remove or identify`);
  const state = text(o, "state", key);
  if (state !== "pending" && state !== "done" && state !== "refused")
    throw new HavenError("HAVEN_ERR_CONFIG", `${key}: state "${state}" is not pending, done or refused`);
  const optionalText = (field: string): { [field: string]: string } | object =>
    o[field] === undefined ? {} : { [field]: text(o, field, key) };
  const fs = o.fs;
  if (fs !== undefined && fs !== "ext4" && fs !== "xfs")
    throw new HavenError("HAVEN_ERR_CONFIG", `${key}: fs must be ext4 or xfs`);
  for (const field of ["disk", "answeredDisk"]) {
    if (o[field] !== undefined) nameField(o, field, key, isDiskName, "a disk name");
  }
  return {
    kind,
    ...optionalText("path"),
    ...optionalText("disk"),
    ...(o.spare !== undefined && { spare: flag(o, "spare", key) }),
    ...(fs !== undefined && { fs }),
    ...optionalText("wipe"),
    ...optionalText("identity"),
    ...(o.off !== undefined && { off: flag(o, "off", key) }),
    requestedBy: text(o, "requestedBy", key),
    requestedAt: text(o, "requestedAt", key),
    state,
    ...optionalText("result"),
    ...optionalText("answeredDisk"),
  } as DiskRequest;
}
