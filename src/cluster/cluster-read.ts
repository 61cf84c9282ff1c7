// Reading the cluster's state out of etcd as typed records: hosts (live and known), volumes, primaries,
// copies, and events. The state is read in one transaction, so it is one consistent snapshot (a volume
// is never seen without the primary record created with it). Every value is checked by schema.ts.

import { HavenError } from "../core/errors.js";
import type { KeyValue } from "./etcd-client.js";
import type { ClusterStore } from "./store.js";
import {
  copyId,
  keys,
  nameUnder,
  parseEventRecord,
  parseHostHealthRecord,
  parseHostRecord,
  parsePrimaryRecord,
  parseReplicaRecord,
  parseVolumeSpec,
  type EventRecord,
  type HostHealthRecord,
  type HostRecord,
  type PrimaryRecord,
  type ReplicaRecord,
  type VolumeSpec,
} from "./schema.js";
import { diskKeys, parseDiskRecord, type DiskRecord } from "./disk-schema.js";
import { parseVmRecord, parseVmStatusRecord, type VmRecord, type VmStatusRecord } from "./vm-schema.js";

export interface ClusterRecords {
  /** Hosts whose lease-bound record exists, by name. */
  readonly liveHosts: ReadonlyMap<string, HostRecord>;
  /** Every host the cluster has had (the permanent records), by name. */
  readonly knownHosts: ReadonlyMap<string, HostRecord>;
  /** By name, in name order. */
  readonly volumes: ReadonlyMap<string, VolumeSpec>;
  /** By volume name. */
  readonly primaries: ReadonlyMap<string, PrimaryRecord>;
  /** Each primary record's etcd mod revision, for compare-and-swap on it. */
  readonly primaryRevisions: ReadonlyMap<string, number>;
  /** By volume name, then copy (copyId: HOST/DISK). */
  readonly replicas: ReadonlyMap<string, ReadonlyMap<string, ReplicaRecord>>;
  /** Each copy record's etcd mod revision, by volume then copy (copyId), for conditions on it. */
  readonly replicaRevisions: ReadonlyMap<string, ReadonlyMap<string, number>>;
  /** Each disk's latest record (disk-schema.ts), by HOST/DISK. */
  readonly disks: ReadonlyMap<string, DiskRecord>;
  /** Each live host's latest health check, by host name. */
  readonly health: ReadonlyMap<string, HostHealthRecord>;
  /** VMs as operators asked for them, by name. */
  readonly vms: ReadonlyMap<string, VmRecord>;
  /** What the agents last saw of each VM, by name; with each record's mod revision. */
  readonly vmStatus: ReadonlyMap<string, { readonly record: VmStatusRecord; readonly modRevision: number }>;
  /** Volumes with a switchover asked for and not yet carried out. */
  readonly handovers: ReadonlySet<string>;
  /** The etcd revision of the snapshot. */
  readonly revision: number;
}

export interface StoredEvent {
  /** The event's key; keys sort by time. */
  readonly key: string;
  /** The etcd revision that wrote it. */
  readonly createRevision: number;
  readonly event: EventRecord;
}

/** A record's name must be its key's, or one host or volume could pose as another. */
function named<T extends { readonly name: string }>(record: T, name: string, key: string): T {
  if (record.name !== name) {
    throw new HavenError("HAVEN_ERR_IO", `cluster state at ${key} is malformed: it names "${record.name}"`);
  }
  return record;
}

/** What to do with a malformed record: throw (the default), or skip it after reporting it. */
type OnMalformed = ((error: HavenError) => void) | undefined;

function parsed<T>(parse: () => T, onMalformed: OnMalformed): T | undefined {
  if (onMalformed === undefined) return parse();
  try {
    return parse();
  } catch (error) {
    if (!(error instanceof HavenError)) throw error;
    onMalformed(error);
    return undefined;
  }
}

function byName<T extends { readonly name: string }>(
  kvs: readonly KeyValue[],
  prefix: string,
  parse: (value: string, key: string) => T,
  onMalformed: OnMalformed,
): Map<string, T> {
  const records = new Map<string, T>();
  for (const kv of kvs) {
    const name = nameUnder(prefix, kv.key);
    const record = parsed(() => named(parse(kv.value, kv.key), name, kv.key), onMalformed);
    if (record !== undefined) records.set(name, record);
  }
  return records;
}

function replicasByVolume(
  kvs: readonly KeyValue[],
  onMalformed: OnMalformed,
  revisions: Map<string, Map<string, number>>,
): Map<string, Map<string, ReplicaRecord>> {
  const replicas = new Map<string, Map<string, ReplicaRecord>>();
  for (const kv of kvs) {
    const [volume, host, disk, ...rest] = nameUnder(keys.replicas(), kv.key).split("/");
    if (volume === undefined || host === undefined || disk === undefined || rest.length > 0) continue; // not a copy's key
    const record = parsed(() => parseReplicaRecord(kv.value, kv.key), onMalformed);
    if (record === undefined) continue;
    const id = copyId({ host, disk });
    const copies = replicas.get(volume) ?? new Map<string, ReplicaRecord>();
    copies.set(id, record);
    replicas.set(volume, copies);
    const copyRevisions = revisions.get(volume) ?? new Map<string, number>();
    copyRevisions.set(id, kv.modRevision);
    revisions.set(volume, copyRevisions);
  }
  return replicas;
}

/** The disks' records by HOST/DISK; a record whose key and content disagree is malformed. */
function disksByCopyPlace(kvs: readonly KeyValue[], onMalformed: OnMalformed): Map<string, DiskRecord> {
  const disks = new Map<string, DiskRecord>();
  for (const kv of kvs) {
    const id = nameUnder(diskKeys.disks(), kv.key);
    const record = parsed(() => {
      const disk = parseDiskRecord(kv.value, kv.key);
      if (`${disk.host}/${disk.disk}` !== id)
        throw new HavenError("HAVEN_ERR_CONFIG", `${kv.key}: the record is of ${disk.host}/${disk.disk}`);
      return disk;
    }, onMalformed);
    if (record !== undefined) disks.set(id, record);
  }
  return disks;
}

/**
 * The hosts, volumes, primaries and copies as of one revision. A malformed record throws, unless
 * `onMalformed` is given: then it is reported and left out (an agent must go on with the rest).
 */
export async function readClusterRecords(client: ClusterStore, onMalformed?: OnMalformed): Promise<ClusterRecords> {
  const prefixes = [
    keys.hosts(),
    keys.hostInfos(),
    keys.volumes(),
    keys.primaries(),
    keys.replicas(),
    keys.healths(),
    keys.vms(),
    keys.vmStatuses(),
    keys.handovers(),
    diskKeys.disks(),
  ];
  const result = await client.txn(
    [],
    prefixes.map((prefix) => ({ type: "getPrefix", prefix })),
    [],
  );
  const [hosts, hostInfos, volumes, primaries, replicas, healths, vms, vmStatuses, handovers, disks] =
    result.results.map((operation) => (operation.type === "get" ? operation.kvs : [])) as KeyValue[][] as [
      KeyValue[],
      KeyValue[],
      KeyValue[],
      KeyValue[],
      KeyValue[],
      KeyValue[],
      KeyValue[],
      KeyValue[],
      KeyValue[],
      KeyValue[],
    ];
  const vmStatus = new Map<string, { record: VmStatusRecord; modRevision: number }>();
  for (const kv of vmStatuses) {
    const record = parsed(() => parseVmStatusRecord(kv.value, kv.key), onMalformed);
    if (record !== undefined)
      vmStatus.set(nameUnder(keys.vmStatuses(), kv.key), { record, modRevision: kv.modRevision });
  }
  const health = new Map<string, HostHealthRecord>();
  for (const kv of healths) {
    const record = parsed(() => parseHostHealthRecord(kv.value, kv.key), onMalformed);
    if (record !== undefined) health.set(nameUnder(keys.healths(), kv.key), record);
  }
  const primaryRecords = new Map<string, PrimaryRecord>();
  const primaryRevisions = new Map<string, number>();
  for (const kv of primaries) {
    const record = parsed(() => parsePrimaryRecord(kv.value, kv.key), onMalformed);
    if (record === undefined) continue;
    primaryRecords.set(nameUnder(keys.primaries(), kv.key), record);
    primaryRevisions.set(nameUnder(keys.primaries(), kv.key), kv.modRevision);
  }
  const replicaRevisions = new Map<string, Map<string, number>>();
  return {
    liveHosts: byName(hosts, keys.hosts(), parseHostRecord, onMalformed),
    knownHosts: byName(hostInfos, keys.hostInfos(), parseHostRecord, onMalformed),
    volumes: byName(volumes, keys.volumes(), parseVolumeSpec, onMalformed),
    primaries: primaryRecords,
    primaryRevisions,
    replicas: replicasByVolume(replicas, onMalformed, replicaRevisions),
    replicaRevisions,
    health,
    vms: byName(vms, keys.vms(), parseVmRecord, onMalformed),
    vmStatus,
    handovers: new Set(handovers.map((kv) => nameUnder(keys.handovers(), kv.key))),
    disks: disksByCopyPlace(disks, onMalformed),
    revision: result.revision,
  };
}

/** Checks and types one event as etcd stores it. */
export function storedEvent(kv: KeyValue): StoredEvent {
  return { key: kv.key, createRevision: kv.createRevision, event: parseEventRecord(kv.value, kv.key) };
}

/**
 * Every event, oldest first. An event that does not parse is skipped and handed to `onMalformed`:
 * events are the cluster's diary, and one bad entry must not hide the others.
 */
export async function readEvents(
  client: ClusterStore,
  onMalformed: (error: HavenError) => void = () => {},
): Promise<StoredEvent[]> {
  const events: StoredEvent[] = [];
  for (const kv of await client.getPrefix(keys.events())) {
    const parsed = tryStoredEvent(kv, onMalformed);
    if (parsed !== undefined) events.push(parsed);
  }
  return events;
}

/** storedEvent, or undefined (and `onMalformed` told) when the value is not an event. */
export function tryStoredEvent(kv: KeyValue, onMalformed: (error: HavenError) => void): StoredEvent | undefined {
  try {
    return storedEvent(kv);
  } catch (error) {
    if (!(error instanceof HavenError)) throw error;
    onMalformed(error);
    return undefined;
  }
}
