// The cluster's state in etcd: which keys exist, what their JSON values hold, and how to read them
// back safely (values are checked, since any process with etcd access can write them). All keys live
// under one prefix, so several clusters can share an etcd.
//
//   /haven/hosts/NAME            HostRecord, attached to the host's lease: present = the host is alive
//   /haven/host-info/NAME        HostRecord, no lease: the hosts the cluster has ever had
//   /haven/volumes/NAME          VolumeSpec: size and where the copies are (a disk of a host each)
//   /haven/primary/NAME          PrimaryRecord: which host serves the volume, at which epoch
//   /haven/replicas/NAME/HOST/DISK  ReplicaRecord: the copy on that disk, as the primary last recorded it
//   /haven/health/HOST           HostHealthRecord, attached to the host's lease: its latest health check
//   /haven/handover/NAME         HandoverRecord: a planned move of the primary, asked by an operator
//   /haven/vms/NAME              VmRecord (vm-schema.ts): a VM's spec and desired state, written by operators
//   /haven/vm-status/NAME        VmStatusRecord (vm-schema.ts): where and how it runs, written by agents
//   /haven/events/SEQ            EventRecord; SEQ is a zero-padded millisecond time plus a random tail
//
// The rule that makes failover safe (issue 4): a copy is recorded "in-sync" only while it has every
// acknowledged write, because the primary records a copy as out of sync *before* it acknowledges any
// write the copy missed. So a standby may promote its copy exactly when its record says in-sync.

import { randomBytes } from "node:crypto";
import { HavenError } from "../core/errors.js";
import { isDiskName, isEventKind, isHostName, isVolumeName, quoteName, showKey } from "./names.js";

export const CLUSTER_PREFIX = "/haven/";

export const keys = {
  host: (name: string): string => `${CLUSTER_PREFIX}hosts/${name}`,
  hosts: (): string => `${CLUSTER_PREFIX}hosts/`,
  hostInfo: (name: string): string => `${CLUSTER_PREFIX}host-info/${name}`,
  hostInfos: (): string => `${CLUSTER_PREFIX}host-info/`,
  volume: (name: string): string => `${CLUSTER_PREFIX}volumes/${name}`,
  volumes: (): string => `${CLUSTER_PREFIX}volumes/`,
  primary: (volume: string): string => `${CLUSTER_PREFIX}primary/${volume}`,
  primaries: (): string => `${CLUSTER_PREFIX}primary/`,
  replica: (volume: string, copy: CopyPlace): string => `${CLUSTER_PREFIX}replicas/${volume}/${copy.host}/${copy.disk}`,
  replicasOf: (volume: string): string => `${CLUSTER_PREFIX}replicas/${volume}/`,
  replicasOn: (volume: string, host: string): string => `${CLUSTER_PREFIX}replicas/${volume}/${host}/`,
  replicas: (): string => `${CLUSTER_PREFIX}replicas/`,
  health: (host: string): string => `${CLUSTER_PREFIX}health/${host}`,
  healths: (): string => `${CLUSTER_PREFIX}health/`,
  handover: (volume: string): string => `${CLUSTER_PREFIX}handover/${volume}`,
  handovers: (): string => `${CLUSTER_PREFIX}handover/`,
  vm: (name: string): string => `${CLUSTER_PREFIX}vms/${name}`,
  vms: (): string => `${CLUSTER_PREFIX}vms/`,
  vmStatus: (name: string): string => `${CLUSTER_PREFIX}vm-status/${name}`,
  vmStatuses: (): string => `${CLUSTER_PREFIX}vm-status/`,
  migration: (vm: string): string => `${CLUSTER_PREFIX}migrations/${vm}`,
  migrations: (): string => `${CLUSTER_PREFIX}migrations/`,
  maintenance: (host: string): string => `${CLUSTER_PREFIX}maintenance/${host}`,
  maintenances: (): string => `${CLUSTER_PREFIX}maintenance/`,
  events: (): string => `${CLUSTER_PREFIX}events/`,
  event: (sequence: string): string => `${CLUSTER_PREFIX}events/${sequence}`,
} as const;

export interface HostRecord {
  readonly name: string;
  /** Where other hosts and clients reach it (no port). */
  readonly address: string;
  readonly apiPort: number;
  readonly replicationPort: number;
  readonly nbdPort: number;
  readonly disks: readonly {
    readonly name: string;
    readonly capacityBytes: number;
    readonly usedBytes: number;
    /** The capacity is a limit the config sets (else it is the free space the agent saw at start). */
    readonly limited?: boolean;
  }[];
  /** What the host gives to VMs (its config's `vms`); absent: it runs no VMs. */
  readonly vmCapacity?: VmCapacity;
  /** ISO time the agent started. */
  readonly startedAt: string;
  /** Its config says "insecure": true: it listens beyond loopback without TLS (status reports it). */
  readonly insecure?: true;
}

export interface VmCapacity {
  /** Host CPUs that VMs may be pinned to, and that unpinned vCPUs count against. */
  readonly cpus: readonly number[];
  readonly memoryMiB: number;
}

/**
 * Where one copy of a volume lives: a disk of a host. Local RAID1 and network RAID are one mechanism:
 * a host may hold two copies of a volume, on different disks; two copies never share a disk.
 */
export interface CopyPlace {
  readonly host: string;
  readonly disk: string;
}

/** A copy's id in records, maps and messages: HOST/DISK. */
export function copyId(copy: CopyPlace): string {
  return `${copy.host}/${copy.disk}`;
}

/** The copy an id (copyId) names. */
export function copyPlace(id: string): CopyPlace {
  const slash = id.indexOf("/");
  return { host: id.slice(0, slash), disk: id.slice(slash + 1) };
}

/** The volume's copies on `host`, in the spec's order. */
export function copiesOn(spec: VolumeSpec, host: string): CopyPlace[] {
  return spec.replicas.filter((copy) => copy.host === host);
}

/** The hosts holding a copy of the volume, each once, in the spec's order. */
export function copyHosts(spec: VolumeSpec): string[] {
  return [...new Set(spec.replicas.map((copy) => copy.host))];
}

/** `host`'s copies of the volume that its records say are in sync (records by copyId). */
export function inSyncCopiesOn(
  spec: VolumeSpec,
  records: ReadonlyMap<string, ReplicaRecord> | undefined,
  host: string,
): CopyPlace[] {
  return copiesOn(spec, host).filter((copy) => records?.get(copyId(copy))?.state === "in-sync");
}

export interface VolumeSpec {
  readonly name: string;
  readonly sizeBytes: number;
  /** The copies, each on a disk of a host; never two on one disk. */
  readonly replicas: readonly CopyPlace[];
  readonly createdAt: string;
}

export interface PrimaryRecord {
  readonly host: string;
  /** Every engine of the volume gets a higher epoch than the last; copies refuse lower ones. */
  readonly epoch: number;
  /** ISO time this host became primary. */
  readonly since: string;
  /** Why: "created", "failover: ...", "promoted by the operator (--force)", "switchover". */
  readonly reason: string;
}

export type RecordedReplicaState = "in-sync" | "out-of-sync";

export interface ReplicaRecord {
  readonly state: RecordedReplicaState;
  /** The engine's state for the copy when recorded (in-sync, resyncing, faulted, split-brain...). */
  readonly detail: string;
  readonly epoch: number;
  readonly updatedAt: string;
}

/** A copy as the engine serving its volume sees it now (published by the primary's host). */
export interface CopyHealth {
  readonly volume: string;
  readonly host: string;
  /** The disk of `host` that holds the copy. */
  readonly disk: string;
  /** The engine's state for the copy: in-sync, resyncing, faulted, split-brain, connecting, refused. */
  readonly state: string;
  /** While resyncing: how far, how fast, and how long to go. */
  readonly resync: {
    readonly percent: number;
    readonly bytesPerSecond: number;
    readonly etaSeconds: number | null;
  } | null;
}

/** One disk's latest probe: a small write and fsync in its directory, and its free space. */
export interface DiskHealth {
  readonly name: string;
  readonly ok: boolean;
  /** What failed, or "ok". */
  readonly detail: string;
  /** How long the probe's write and fsync took; null when it failed. */
  readonly probeMs: number | null;
}

/** The heartbeat over the replication link to one peer host (a PING to its replica server). */
export interface LinkHealth {
  readonly peer: string;
  readonly up: boolean;
  /** The latest heartbeat's round trip; null while none has been answered. */
  readonly rttMs: number | null;
  /** Why it is down, or "ok". */
  readonly detail: string;
  /**
   * No verdict yet: nothing answered since the agent started and fewer than the miss limit of
   * heartbeats missed. Shown as "starting", not as a problem. Absent in records of older agents.
   */
  readonly starting?: boolean;
}

/** A host's latest health check, every healthCheckIntervalMs. */
export interface HostHealthRecord {
  readonly checkedAt: string;
  /** The worst event-loop delay since the previous check. */
  readonly eventLoopLagMs: number;
  /** What is wrong, in words; empty when nothing is. */
  readonly problems: readonly string[];
  readonly copies: readonly CopyHealth[];
  readonly disks: readonly DiskHealth[];
  readonly links: readonly LinkHealth[];
}

export function parseHostHealthRecord(value: string, key: string): HostHealthRecord {
  const o = object(value, key);
  const problems = o.problems;
  const copies = o.copies;
  if (!Array.isArray(problems) || problems.some((p) => typeof p !== "string"))
    throw bad(key, "problems is not a list of strings");
  if (!Array.isArray(copies)) throw bad(key, "copies is not a list");
  const disks = o.disks ?? [];
  const links = o.links ?? [];
  if (!Array.isArray(disks)) throw bad(key, "disks is not a list");
  if (!Array.isArray(links)) throw bad(key, "links is not a list");
  return {
    checkedAt: text(o, "checkedAt", key),
    eventLoopLagMs: count(o, "eventLoopLagMs", key),
    problems: problems as string[],
    copies: copies.map((c: unknown, i) => {
      const copy = typeof c === "object" && c !== null ? (c as Record<string, unknown>) : {};
      const where = `${key} copies[${i}]`;
      const resync = copy.resync;
      let parsedResync: CopyHealth["resync"] = null;
      if (resync !== null && resync !== undefined) {
        const r = typeof resync === "object" ? (resync as Record<string, unknown>) : {};
        const percent = r.percent;
        if (typeof percent !== "number" || !(percent >= 0 && percent <= 100))
          throw bad(where, "resync.percent is not 0 to 100");
        const eta = r.etaSeconds;
        parsedResync = {
          percent,
          bytesPerSecond: count(r, "bytesPerSecond", where),
          etaSeconds: eta === null || eta === undefined ? null : count(r, "etaSeconds", where),
        };
      }
      return {
        volume: text(copy, "volume", where),
        host: text(copy, "host", where),
        disk: copy.disk === undefined ? "" : text(copy, "disk", where),
        state: text(copy, "state", where),
        resync: parsedResync,
      };
    }),
    disks: disks.map((d: unknown, i) => {
      const disk = member(d);
      const where = `${key} disks[${i}]`;
      return {
        name: text(disk, "name", where),
        ok: flag(disk, "ok", where),
        detail: text(disk, "detail", where),
        probeMs: disk.probeMs === null || disk.probeMs === undefined ? null : amount(disk, "probeMs", where),
      };
    }),
    links: links.map((l: unknown, i) => {
      const link = member(l);
      const where = `${key} links[${i}]`;
      return {
        peer: text(link, "peer", where),
        up: flag(link, "up", where),
        rttMs: link.rttMs === null || link.rttMs === undefined ? null : amount(link, "rttMs", where),
        detail: text(link, "detail", where),
        ...(link.starting !== undefined && flag(link, "starting", where) && { starting: true }),
      };
    }),
  };
}

export function member(value: unknown): Record<string, unknown> {
  return typeof value === "object" && value !== null ? (value as Record<string, unknown>) : {};
}

export function amount(o: Record<string, unknown>, field: string, key: string): number {
  const v = o[field];
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0) throw bad(key, `${field} is not a number >= 0`);
  return v;
}

export function flag(o: Record<string, unknown>, field: string, key: string): boolean {
  const v = o[field];
  if (typeof v !== "boolean") throw bad(key, `${field} is not true or false`);
  return v;
}

/** A switchover asked for: the primary's agent stops the engine cleanly, then hands the record over. */
export interface HandoverRecord {
  readonly to: string;
  readonly requestedBy: string;
  readonly requestedAt: string;
}

export function parseHandoverRecord(value: string, key: string): HandoverRecord {
  const o = object(value, key);
  return {
    to: nameField(o, "to", key, isHostName, "a host name"),
    requestedBy: text(o, "requestedBy", key),
    requestedAt: text(o, "requestedAt", key),
  };
}

export interface EventRecord {
  readonly time: string;
  readonly host: string;
  readonly volume?: string;
  /** A short kebab-case name: volume-created, failover, fenced, replica-out-of-sync... */
  readonly kind: string;
  readonly message: string;
}

/** An event key that sorts by time and does not collide between hosts. */
export function eventSequence(now = Date.now()): string {
  return `${String(now).padStart(15, "0")}-${randomBytes(4).toString("hex")}`;
}

// ---- reading values back -------------------------------------------------------------------------

export function bad(key: string, detail: string): HavenError {
  return new HavenError("HAVEN_ERR_IO", `cluster state at ${showKey(key)} is malformed: ${detail}`);
}

export function object(text: string, key: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw bad(key, "not JSON");
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw bad(key, "not a JSON object");
  return value as Record<string, unknown>;
}

export function text(o: Record<string, unknown>, field: string, key: string): string {
  const v = o[field];
  if (typeof v !== "string") throw bad(key, `${field} is not a string`);
  return v;
}

export function count(o: Record<string, unknown>, field: string, key: string): number {
  const v = o[field];
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) throw bad(key, `${field} is not a whole number`);
  return v;
}

/** Field `field` of `o`, a string that `valid` accepts (a name); `what` names the rule in the message. */
export function nameField(
  o: Record<string, unknown>,
  field: string,
  key: string,
  valid: (name: string) => boolean,
  what: string,
): string {
  const name = text(o, field, key);
  if (!valid(name)) throw bad(key, `${field} ${quoteName(name)} is not ${what}`);
  return name;
}

/** An ISO time that parses. */
function time(o: Record<string, unknown>, field: string, key: string): string {
  const at = text(o, field, key);
  if (at.length > 64 || Number.isNaN(Date.parse(at))) throw bad(key, `${field} is not a time`);
  return at;
}

export function parseHostRecord(value: string, key: string): HostRecord {
  const o = object(value, key);
  const disks = o.disks;
  if (!Array.isArray(disks)) throw bad(key, "disks is not a list");
  return {
    name: nameField(o, "name", key, isHostName, "a host name"),
    address: text(o, "address", key),
    apiPort: count(o, "apiPort", key),
    replicationPort: count(o, "replicationPort", key),
    nbdPort: count(o, "nbdPort", key),
    disks: disks.map((d: unknown, i) => {
      const disk = typeof d === "object" && d !== null ? (d as Record<string, unknown>) : {};
      return {
        name: nameField(disk, "name", `${key} disks[${i}]`, isDiskName, "a disk name"),
        capacityBytes: count(disk, "capacityBytes", `${key} disks[${i}]`),
        usedBytes: count(disk, "usedBytes", `${key} disks[${i}]`),
        ...(disk.limited === true && { limited: true }),
      };
    }),
    ...(o.vmCapacity !== undefined && { vmCapacity: parseVmCapacity(o.vmCapacity, `${key} vmCapacity`) }),
    startedAt: text(o, "startedAt", key),
    ...(o.insecure === true && { insecure: true as const }),
  };
}

function parseVmCapacity(value: unknown, key: string): VmCapacity {
  const o = member(value);
  const cpus = o.cpus;
  if (!Array.isArray(cpus) || cpus.some((cpu) => !Number.isSafeInteger(cpu) || (cpu as number) < 0))
    throw bad(key, "cpus is not a list of CPU numbers");
  return { cpus: cpus as number[], memoryMiB: count(o, "memoryMiB", key) };
}

export function parseVolumeSpec(value: string, key: string): VolumeSpec {
  const o = object(value, key);
  const replicas = o.replicas;
  if (!Array.isArray(replicas) || replicas.length === 0) throw bad(key, "replicas is not a non-empty list");
  const copies = replicas.map((r: unknown, i): CopyPlace => {
    const replica = typeof r === "object" && r !== null ? (r as Record<string, unknown>) : {};
    const where = `${key} replicas[${i}]`;
    return {
      host: nameField(replica, "host", where, isHostName, "a host name"),
      disk: nameField(replica, "disk", where, isDiskName, "a disk name"),
    };
  });
  const ids = copies.map(copyId);
  const twice = ids.find((id, i) => ids.indexOf(id) !== i);
  if (twice !== undefined) throw bad(key, `two copies share disk ${twice}`);
  return {
    name: nameField(o, "name", key, isVolumeName, "a volume name"),
    sizeBytes: count(o, "sizeBytes", key),
    replicas: copies,
    createdAt: text(o, "createdAt", key),
  };
}

export function parsePrimaryRecord(value: string, key: string): PrimaryRecord {
  const o = object(value, key);
  return {
    host: nameField(o, "host", key, isHostName, "a host name"),
    epoch: count(o, "epoch", key),
    since: text(o, "since", key),
    reason: text(o, "reason", key),
  };
}

export function parseReplicaRecord(value: string, key: string): ReplicaRecord {
  const o = object(value, key);
  const state = text(o, "state", key);
  if (state !== "in-sync" && state !== "out-of-sync") throw bad(key, `state "${state}" is not in-sync or out-of-sync`);
  return { state, detail: text(o, "detail", key), epoch: count(o, "epoch", key), updatedAt: text(o, "updatedAt", key) };
}

/** Who wrote an event: a host, or an operator's CLI ("cli@HOSTNAME"). */
const EVENT_AUTHOR_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}$/;
/** An event's message is a sentence or two; anything longer is not one of Haven's. */
export const MAX_EVENT_MESSAGE_CHARS = 4096;

export function parseEventRecord(value: string, key: string): EventRecord {
  const o = object(value, key);
  const volume = o.volume === undefined ? undefined : nameField(o, "volume", key, isVolumeName, "a volume name");
  const message = text(o, "message", key);
  if (message.length > MAX_EVENT_MESSAGE_CHARS) throw bad(key, `message is over ${MAX_EVENT_MESSAGE_CHARS} characters`);
  return {
    time: time(o, "time", key),
    host: nameField(o, "host", key, (name) => EVENT_AUTHOR_PATTERN.test(name), "a host or an operator"),
    ...(volume !== undefined && { volume }),
    kind: nameField(o, "kind", key, isEventKind, "an event kind"),
    message,
  };
}

/** The last path segment of a key under `prefix` (a host or volume name). */
export function nameUnder(prefix: string, key: string): string {
  return key.slice(prefix.length);
}
