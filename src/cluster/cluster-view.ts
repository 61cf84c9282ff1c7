// The operator's model of the cluster, derived from the records in etcd: which hosts are alive, how
// healthy each volume is, and where its clients connect. Pure, so that the CLI's text and JSON, the
// API and the dashboard all agree, and the rules are unit-tested without etcd.
//
// A host is alive while its lease-bound record exists and dead when only its permanent record does.
// A volume is:
//   down      when no live host serves it: no primary record, or the primary's host is dead;
//   degraded  when it is served but has less redundancy than its spec: a copy not recorded in-sync,
//             resyncing, or on a dead host (its record may still say in-sync until the primary's next
//             write); or when its primary is suspected;
//   healthy   otherwise.
//
// A copy being resynced is shown "resyncing", whatever its record says: the primary writes the record
// when the copy's state changes, while its health check reports the resync as it runs, so the record
// can still say in-sync from before a reconnect.
//
// A primary is suspected when a live host holding a copy of the volume says, in its latest health
// check, that its replication link to the primary's host is down. That verdict comes from heartbeats
// (peer-links.ts: a few hundred ms each), long before the primary's lease expires and its host record
// goes, so the view shows it at once; it does not make the host dead: only the lease decides that.

import type { VmRecord, VmStatusRecord } from "./vm-schema.js";
import { formatCpuList } from "./vm-resources.js";
import type { ClusterRecords } from "./cluster-read.js";
import type { DiskRecord } from "./disk-schema.js";
import { copyId, copyPlace, type CopyPlace } from "./schema.js";
import type {
  CopyHealth,
  DiskHealth,
  HostRecord,
  LinkHealth,
  PrimaryRecord,
  RecordedReplicaState,
  VolumeSpec,
} from "./schema.js";

export type HostState = "alive" | "dead";
export type VolumeHealth = "healthy" | "degraded" | "down";

export interface HostView extends HostRecord {
  readonly state: HostState;
  /** In maintenance (`haven host drain`): nothing is placed, promoted or migrated there. */
  readonly maintenance: boolean;
  /** How many volumes have a copy on this host. */
  readonly copies: number;
  /** Its latest health check, while it is alive. */
  readonly health: {
    readonly checkedAt: string;
    readonly eventLoopLagMs: number;
    readonly problems: readonly string[];
    readonly disks: readonly DiskHealth[];
    readonly links: readonly LinkHealth[];
  } | null;
}

/** A copy's state: as recorded, "resyncing" while the primary resyncs it, "unrecorded" without a record. */
export type CopyState = RecordedReplicaState | "resyncing" | "unrecorded";

export interface CopyView {
  readonly host: string;
  readonly disk: string;
  readonly hostState: HostState | "unknown";
  /** As the primary last recorded it, but "resyncing" while a resync runs; "unrecorded" without a record (yet). */
  readonly state: CopyState;
  readonly detail: string;
  readonly epoch: number | null;
  readonly updatedAt: string | null;
  /** While the primary resyncs this copy, as its host's latest health check says. */
  readonly resync: CopyHealth["resync"];
}

export interface VolumeView {
  readonly name: string;
  readonly sizeBytes: number;
  readonly createdAt: string;
  readonly health: VolumeHealth;
  readonly primary:
    | (PrimaryRecord & {
        readonly hostState: HostState | "unknown";
        /**
         * Live hosts holding a copy whose latest health check says their link to the primary's host is
         * down, each with its reason, in host order; empty while none does (or the primary is not alive).
         */
        readonly suspectedBy: readonly { readonly host: string; readonly detail: string }[];
      })
    | null;
  readonly copies: readonly CopyView[];
  /** Where clients connect, while a live host serves the volume. */
  readonly nbd: string | null;
}

export interface ClusterSummary {
  readonly hosts: number;
  readonly aliveHosts: number;
  readonly volumes: number;
  readonly healthyVolumes: number;
  readonly degradedVolumes: number;
  readonly downVolumes: number;
}

export interface ClusterView {
  readonly summary: ClusterSummary;
  /** In name order. */
  readonly hosts: readonly HostView[];
  /** In name order. */
  readonly volumes: readonly VolumeView[];
  /** In name order. */
  readonly vms: readonly VmListEntry[];
}

/** nbd://ADDRESS:PORT/NAME, with an IPv6 address in brackets. */
export function nbdUri(host: Pick<HostRecord, "address" | "nbdPort">, volume: string): string {
  const address = host.address.includes(":") ? `[${host.address}]` : host.address;
  return `nbd://${address}:${host.nbdPort}/${volume}`;
}

function byName<T extends { readonly name: string }>(a: T, b: T): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

function hostState(records: ClusterRecords, name: string): HostState | "unknown" {
  if (records.liveHosts.has(name)) return "alive";
  return records.knownHosts.has(name) ? "dead" : "unknown";
}

export function volumeHealth(primaryAlive: boolean, copies: readonly CopyView[], suspected = false): VolumeHealth {
  if (!primaryAlive) return "down";
  if (suspected) return "degraded";
  return copies.every((copy) => copy.state === "in-sync" && copy.hostState === "alive") ? "healthy" : "degraded";
}

/** A copy's state as shown: "resyncing" while a resync of it runs, else its record's (or "unrecorded"). */
function copyState(recorded: RecordedReplicaState | undefined, resync: CopyHealth["resync"]): CopyState {
  if (resync !== null) return "resyncing";
  return recorded ?? "unrecorded";
}

/**
 * The live hosts of `copyHosts` (other than the primary's) whose latest health check has the link to
 * `primaryHost` down: their verdict on the primary, known before its lease can expire.
 */
export function primarySuspicions(
  records: ClusterRecords,
  primaryHost: string,
  copyHosts: readonly string[],
): { host: string; detail: string }[] {
  const suspicions: { host: string; detail: string }[] = [];
  for (const host of [...new Set(copyHosts)].sort()) {
    if (host === primaryHost || !records.liveHosts.has(host)) continue;
    const link = records.health.get(host)?.links.find((each) => each.peer === primaryHost);
    if (link !== undefined && !link.up && link.starting !== true) suspicions.push({ host, detail: link.detail });
  }
  return suspicions;
}

/**
 * A copy's resync progress as its volume's primary last reported it in its health check (a report
 * from an agent older than copies on disks names no disk: it stands for that host's copy).
 */
function liveResync(records: ClusterRecords, volume: string, place: CopyPlace): CopyHealth["resync"] {
  const primary = records.primaries.get(volume)?.host;
  const seen = primary === undefined ? undefined : records.health.get(primary)?.copies;
  const live = seen?.find(
    (copy) => copy.volume === volume && copy.host === place.host && (copy.disk === place.disk || copy.disk === ""),
  );
  return live?.resync ?? null;
}

export function volumeView(records: ClusterRecords, spec: VolumeSpec): VolumeView {
  const recorded = records.replicas.get(spec.name);
  const copies = spec.replicas.map(({ host, disk }): CopyView => {
    const record = recorded?.get(copyId({ host, disk }));
    const resync = liveResync(records, spec.name, { host, disk });
    return {
      host,
      disk,
      hostState: hostState(records, host),
      state: copyState(record?.state, resync),
      detail: record?.detail ?? "",
      epoch: record?.epoch ?? null,
      updatedAt: record?.updatedAt ?? null,
      resync,
    };
  });
  const primary = records.primaries.get(spec.name);
  const server = primary === undefined ? undefined : records.liveHosts.get(primary.host);
  const suspectedBy =
    server === undefined || primary === undefined
      ? []
      : primarySuspicions(
          records,
          primary.host,
          spec.replicas.map((copy) => copy.host),
        );
  return {
    name: spec.name,
    sizeBytes: spec.sizeBytes,
    createdAt: spec.createdAt,
    health: volumeHealth(server !== undefined, copies, suspectedBy.length > 0),
    primary: primary === undefined ? null : { ...primary, hostState: hostState(records, primary.host), suspectedBy },
    copies,
    nbd: server === undefined ? null : nbdUri(server, spec.name),
  };
}

function hostHealth(records: ClusterRecords, name: string): HostView["health"] {
  const record = records.liveHosts.has(name) ? records.health.get(name) : undefined;
  return record === undefined
    ? null
    : {
        checkedAt: record.checkedAt,
        eventLoopLagMs: record.eventLoopLagMs,
        problems: record.problems,
        disks: record.disks,
        links: record.links,
      };
}

export function clusterView(records: ClusterRecords): ClusterView {
  const copies = new Map<string, number>();
  for (const spec of records.volumes.values()) {
    for (const { host } of spec.replicas) copies.set(host, (copies.get(host) ?? 0) + 1);
  }
  // A live host's record is the fresher one (its disks' usage); a dead host is known by its last one.
  const hostRecords = new Map([...records.knownHosts, ...records.liveHosts]);
  const hosts = [...hostRecords.values()]
    .map((host): HostView => ({
      ...host,
      // The disks' records say what is really used and how big each is (the host record only says
      // what the agent saw free when it started).
      disks: host.disks.map((disk) => {
        const found = records.disks.get(`${host.name}/${disk.name}`);
        return found === undefined ? disk : { ...disk, capacityBytes: found.sizeBytes, usedBytes: found.usedBytes };
      }),
      state: records.liveHosts.has(host.name) ? "alive" : "dead",
      maintenance: records.maintenance.has(host.name),
      copies: copies.get(host.name) ?? 0,
      health: hostHealth(records, host.name),
    }))
    .sort(byName);
  const volumes = [...records.volumes.values()].map((spec) => volumeView(records, spec)).sort(byName);
  const vms = vmEntries(records);
  const count = (health: VolumeHealth): number => volumes.filter((volume) => volume.health === health).length;
  return {
    summary: {
      hosts: hosts.length,
      aliveHosts: hosts.filter((host) => host.state === "alive").length,
      volumes: volumes.length,
      healthyVolumes: count("healthy"),
      degradedVolumes: count("degraded"),
      downVolumes: count("down"),
    },
    hosts,
    volumes,
    vms,
  };
}

/** A VM as `vm list`, `vm show` and `haven status` show it. */
export interface VmListEntry {
  readonly name: string;
  readonly desired: string;
  readonly state: string;
  readonly host: string | null;
  readonly vcpus: number;
  readonly memoryMiB: number;
  readonly cpus: string | null;
  readonly volume: string;
  readonly reason: string;
  readonly restarts: number;
  readonly relocations: number;
  readonly status: VmStatusRecord | null;
  readonly spec: VmRecord;
}

export function vmEntries(records: ClusterRecords): VmListEntry[] {
  return [...records.vms.values()].sort(byName).map((vm) => {
    const status = records.vmStatus.get(vm.name)?.record;
    const current = status !== undefined && status.startRequest === vm.startRequest ? status : undefined;
    const state = current?.state ?? (vm.desired === "started" ? "starting" : (status?.state ?? "stopped"));
    return {
      name: vm.name,
      desired: vm.desired,
      state,
      host: status?.host ?? records.primaries.get(vm.volume)?.host ?? null,
      vcpus: vm.vcpus,
      memoryMiB: vm.memoryMiB,
      cpus: vm.cpus ? formatCpuList(vm.cpus) : null,
      volume: vm.volume,
      reason: status?.reason ?? "",
      restarts: current?.restarts ?? 0,
      relocations: current?.relocations ?? 0,
      status: status ?? null,
      spec: vm,
    };
  });
}

/** One copy on a disk, as `disk list` shows it. */
export interface DiskCopyView {
  readonly volume: string;
  readonly state: CopyState;
  readonly detail: string;
  readonly resync: CopyHealth["resync"];
  readonly allocatedBytes: number;
}

/** One disk, as `haven disk list` shows it: its record, its host's state and the copies placed on it. */
export interface DiskView {
  readonly host: string;
  readonly disk: string;
  readonly hostState: HostState | "unknown";
  /** The disk's state as its agent last recorded it, or "unknown" for a disk placed on but not recorded. */
  readonly state: DiskRecord["state"] | "unknown";
  readonly reason: string;
  readonly spare: boolean;
  readonly path: string;
  readonly identity: DiskRecord["identity"] | null;
  readonly sizeBytes: number;
  readonly freeBytes: number;
  /** The filesystem's used bytes (everything on it). */
  readonly usedBytes: number;
  /** Bytes Haven's copies have allocated on it. */
  readonly havenBytes: number;
  /** Other disks on the same filesystem (HOST/DISK): they share its free space. */
  readonly sharesFilesystemWith: readonly string[];
  readonly copies: readonly DiskCopyView[];
  readonly updatedAt: string | null;
}

export function diskEntries(records: ClusterRecords): DiskView[] {
  const placed = new Map<string, string[]>();
  for (const spec of records.volumes.values())
    for (const copy of spec.replicas) placed.set(copyId(copy), [...(placed.get(copyId(copy)) ?? []), spec.name]);
  const ids = new Set([...records.disks.keys(), ...placed.keys()]);
  return [...ids].sort().map((id): DiskView => {
    const record = records.disks.get(id);
    const { host, disk } = copyPlace(id);
    const copies = (placed.get(id) ?? []).sort().map((volume): DiskCopyView => {
      const recorded = records.replicas.get(volume)?.get(id);
      const resync = liveResync(records, volume, { host, disk });
      return {
        volume,
        state: copyState(recorded?.state, resync),
        detail: recorded?.detail ?? "",
        resync,
        allocatedBytes: record?.copies.find((copy) => copy.volume === volume)?.allocatedBytes ?? 0,
      };
    });
    const shares =
      record === undefined || record.fsId === ""
        ? []
        : [...records.disks.values()]
            .filter((other) => other.fsId === record.fsId)
            .map((other) => copyId({ host: other.host, disk: other.disk }))
            .filter((other) => other !== id);
    return {
      host,
      disk,
      hostState: hostState(records, host),
      state: record?.state ?? "unknown",
      reason: record?.reason ?? "no record of this disk yet",
      spare: record?.spare ?? false,
      path: record?.path ?? "",
      identity: record?.identity ?? null,
      sizeBytes: record?.sizeBytes ?? 0,
      freeBytes: record?.freeBytes ?? 0,
      usedBytes: record?.usedBytes ?? 0,
      havenBytes: record?.copies.reduce((sum, copy) => sum + copy.allocatedBytes, 0) ?? 0,
      sharesFilesystemWith: shares,
      copies,
      updatedAt: record?.updatedAt ?? null,
    };
  });
}
