// The operator's model of the cluster, derived from the records in etcd: which hosts are alive, how
// healthy each volume is, and where its clients connect. Pure, so that the CLI's text and JSON, the
// API and the dashboard all agree, and the rules are unit-tested without etcd.
//
// A host is alive while its lease-bound record exists and dead when only its permanent record does.
// A volume is:
//   down      when no live host serves it: no primary record, or the primary's host is dead;
//   degraded  when it is served but has less redundancy than its spec: a copy not recorded in-sync,
//             or on a dead host (its record may still say in-sync until the primary's next write);
//   healthy   otherwise.

import type { VmRecord, VmStatusRecord } from "./vm-schema.js";
import { formatCpuList } from "./vm-resources.js";
import type { ClusterRecords } from "./cluster-read.js";
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

export interface CopyView {
  readonly host: string;
  readonly disk: string;
  readonly hostState: HostState | "unknown";
  /** As the primary last recorded it; "unrecorded" when there is no record (yet). */
  readonly state: RecordedReplicaState | "unrecorded";
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
  readonly primary: (PrimaryRecord & { readonly hostState: HostState | "unknown" }) | null;
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

export function volumeHealth(primaryAlive: boolean, copies: readonly CopyView[]): VolumeHealth {
  if (!primaryAlive) return "down";
  return copies.every((copy) => copy.state === "in-sync" && copy.hostState === "alive") ? "healthy" : "degraded";
}

export function volumeView(records: ClusterRecords, spec: VolumeSpec): VolumeView {
  const recorded = records.replicas.get(spec.name);
  const primaryHost = records.primaries.get(spec.name)?.host;
  const seen = primaryHost === undefined ? undefined : records.health.get(primaryHost)?.copies;
  const copies = spec.replicas.map(({ host, disk }): CopyView => {
    const record = recorded?.get(host);
    const live = seen?.find((copy) => copy.volume === spec.name && copy.host === host);
    return {
      host,
      disk,
      hostState: hostState(records, host),
      state: record?.state ?? "unrecorded",
      detail: record?.detail ?? "",
      epoch: record?.epoch ?? null,
      updatedAt: record?.updatedAt ?? null,
      resync: live?.resync ?? null,
    };
  });
  const primary = records.primaries.get(spec.name);
  const server = primary === undefined ? undefined : records.liveHosts.get(primary.host);
  return {
    name: spec.name,
    sizeBytes: spec.sizeBytes,
    createdAt: spec.createdAt,
    health: volumeHealth(server !== undefined, copies),
    primary: primary === undefined ? null : { ...primary, hostState: hostState(records, primary.host) },
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
      state: records.liveHosts.has(host.name) ? "alive" : "dead",
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
