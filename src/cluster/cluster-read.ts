// Reading the cluster's state out of etcd as typed records: hosts (live and known), volumes, primaries,
// copies, and events. The state is read in one transaction, so it is one consistent snapshot (a volume
// is never seen without the primary record created with it).
//
// This is the trust boundary of the control plane (issue 16, item 5): anything with etcd access can
// write any key, so every key's name segments (names.ts) and every value (schema.ts, vm-schema.ts,
// disk-schema.ts) are checked here, and a record that fails is left out of the snapshot and listed in
// `malformed`, never acted on: a forged volume `../../escape` reaches no file path. Readers go on with
// the rest (the agent logs each bad record once, malformed-log.ts; the CLI counts them).

import { HavenError } from "../core/errors.js";
import type { KeyValue } from "./etcd-client.js";
import type { ClusterStore } from "./store.js";
import { isDiskName, isHostName, isVmName, isVolumeName, quoteName, showKey } from "./names.js";
import {
  bad,
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
import {
  parseMaintenanceRecord,
  parseMigrationRecord,
  type MaintenanceRecord,
  type MigrationRecord,
} from "./migration-schema.js";

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
  /** Live migrations under way, by VM name, with each record's mod revision. */
  readonly migrations: ReadonlyMap<string, { readonly record: MigrationRecord; readonly modRevision: number }>;
  /** Hosts in maintenance (drained): nothing is placed, promoted or migrated there. */
  readonly maintenance: ReadonlyMap<string, MaintenanceRecord>;
  /** The etcd revision of the snapshot. */
  readonly revision: number;
  /** The records left out because their key or value failed the checks, with why. */
  readonly malformed: readonly MalformedRecord[];
}

/** A record read from etcd that failed the checks, and so was ignored. */
export interface MalformedRecord {
  readonly key: string;
  readonly modRevision: number;
  readonly error: HavenError;
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
    throw new HavenError(
      "HAVEN_ERR_IO",
      `cluster state at ${showKey(key)} is malformed: it names ${quoteName(record.name)}`,
    );
  }
  return record;
}

/** Told of each record left out as malformed (as it is added to ClusterRecords.malformed). */
export type OnMalformed = (error: HavenError, record: MalformedRecord) => void;

/** Collects the records left out of one read. */
class Refused {
  readonly records: MalformedRecord[] = [];
  constructor(private readonly onMalformed: OnMalformed | undefined) {}

  /** `parse()`'s record, or undefined when it throws a HavenError (the record is then listed). */
  parsed<T>(kv: KeyValue, parse: () => T): T | undefined {
    try {
      return parse();
    } catch (error) {
      if (!(error instanceof HavenError)) throw error;
      const record = { key: kv.key, modRevision: kv.modRevision, error };
      this.records.push(record);
      this.onMalformed?.(error, record);
      return undefined;
    }
  }
}

/** The key's name segment under `prefix`, checked against the rule of what it names. */
function keyName(kv: KeyValue, prefix: string, valid: (name: string) => boolean, what: string): string {
  const name = nameUnder(prefix, kv.key);
  if (!valid(name))
    throw new HavenError(
      "HAVEN_ERR_IO",
      `cluster state at ${showKey(kv.key)} is malformed: ${quoteName(name)} is not ${what}`,
    );
  return name;
}

function byName<T extends { readonly name: string }>(
  kvs: readonly KeyValue[],
  prefix: string,
  parse: (value: string, key: string) => T,
  valid: (name: string) => boolean,
  what: string,
  refused: Refused,
): Map<string, T> {
  const records = new Map<string, T>();
  for (const kv of kvs) {
    const record = refused.parsed(kv, () => {
      const name = keyName(kv, prefix, valid, what);
      return named(parse(kv.value, kv.key), name, kv.key);
    });
    if (record !== undefined) records.set(record.name, record);
  }
  return records;
}

function replicasByVolume(
  kvs: readonly KeyValue[],
  refused: Refused,
  revisions: Map<string, Map<string, number>>,
): Map<string, Map<string, ReplicaRecord>> {
  const replicas = new Map<string, Map<string, ReplicaRecord>>();
  for (const kv of kvs) {
    const parsed = refused.parsed(kv, () => {
      const [volume, host, disk, ...rest] = nameUnder(keys.replicas(), kv.key).split("/");
      if (
        volume === undefined ||
        host === undefined ||
        disk === undefined ||
        rest.length > 0 ||
        !isVolumeName(volume) ||
        !isHostName(host) ||
        !isDiskName(disk)
      )
        throw new HavenError(
          "HAVEN_ERR_IO",
          `cluster state at ${showKey(kv.key)} is malformed: not a copy's key (VOLUME/HOST/DISK)`,
        );
      return { volume, host, disk, record: parseReplicaRecord(kv.value, kv.key) };
    });
    if (parsed === undefined) continue;
    const { volume, host, disk, record } = parsed;
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
function disksByCopyPlace(kvs: readonly KeyValue[], refused: Refused): Map<string, DiskRecord> {
  const disks = new Map<string, DiskRecord>();
  for (const kv of kvs) {
    const id = nameUnder(diskKeys.disks(), kv.key);
    const record = refused.parsed(kv, () => {
      const disk = parseDiskRecord(kv.value, kv.key);
      if (`${disk.host}/${disk.disk}` !== id)
        throw new HavenError("HAVEN_ERR_CONFIG", `${showKey(kv.key)}: the record is of ${disk.host}/${disk.disk}`);
      return disk;
    });
    if (record !== undefined) disks.set(id, record);
  }
  return disks;
}

/**
 * The hosts, volumes, primaries and copies as of one revision. A malformed record is left out, listed
 * in `malformed` and handed to `onMalformed`: one forged key must not stop the agents or the CLI.
 */
export async function readClusterRecords(client: ClusterStore, onMalformed?: OnMalformed): Promise<ClusterRecords> {
  const refused = new Refused(onMalformed);
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
    keys.migrations(),
    keys.maintenances(),
  ];
  const result = await client.txn(
    [],
    prefixes.map((prefix) => ({ type: "getPrefix", prefix })),
    [],
  );
  const [
    hosts,
    hostInfos,
    volumes,
    primaries,
    replicas,
    healths,
    vms,
    vmStatuses,
    handovers,
    disks,
    migrationKvs,
    maintenanceKvs,
  ] = result.results.map((operation) => (operation.type === "get" ? operation.kvs : [])) as KeyValue[][] as [
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
    KeyValue[],
    KeyValue[],
  ];
  const vmStatus = new Map<string, { record: VmStatusRecord; modRevision: number }>();
  for (const kv of vmStatuses) {
    const parsed = refused.parsed(kv, () => ({
      name: keyName(kv, keys.vmStatuses(), isVmName, "a VM name"),
      record: parseVmStatusRecord(kv.value, kv.key),
    }));
    if (parsed !== undefined) vmStatus.set(parsed.name, { record: parsed.record, modRevision: kv.modRevision });
  }
  const health = new Map<string, HostHealthRecord>();
  for (const kv of healths) {
    const parsed = refused.parsed(kv, () => ({
      host: keyName(kv, keys.healths(), isHostName, "a host name"),
      record: parseHostHealthRecord(kv.value, kv.key),
    }));
    if (parsed !== undefined) health.set(parsed.host, parsed.record);
  }
  const primaryRecords = new Map<string, PrimaryRecord>();
  const primaryRevisions = new Map<string, number>();
  for (const kv of primaries) {
    const parsed = refused.parsed(kv, () => ({
      volume: keyName(kv, keys.primaries(), isVolumeName, "a volume name"),
      record: parsePrimaryRecord(kv.value, kv.key),
    }));
    if (parsed === undefined) continue;
    primaryRecords.set(parsed.volume, parsed.record);
    primaryRevisions.set(parsed.volume, kv.modRevision);
  }
  const handoverNames = new Set<string>();
  for (const kv of handovers) {
    const volume = refused.parsed(kv, () => keyName(kv, keys.handovers(), isVolumeName, "a volume name"));
    if (volume !== undefined) handoverNames.add(volume);
  }
  const migrations = new Map<string, { record: MigrationRecord; modRevision: number }>();
  for (const kv of migrationKvs) {
    const parsed = refused.parsed(kv, () => {
      const name = keyName(kv, keys.migrations(), isVmName, "a VM name");
      const record = parseMigrationRecord(kv.value, kv.key);
      if (record.vm !== name) throw bad(kv.key, `the record names VM ${record.vm}`);
      return record;
    });
    if (parsed !== undefined) migrations.set(parsed.vm, { record: parsed, modRevision: kv.modRevision });
  }
  const maintenance = new Map<string, MaintenanceRecord>();
  for (const kv of maintenanceKvs) {
    const parsed = refused.parsed(kv, () => ({
      host: keyName(kv, keys.maintenances(), isHostName, "a host name"),
      record: parseMaintenanceRecord(kv.value, kv.key),
    }));
    if (parsed !== undefined) maintenance.set(parsed.host, parsed.record);
  }
  const replicaRevisions = new Map<string, Map<string, number>>();
  return {
    migrations,
    maintenance,
    liveHosts: byName(hosts, keys.hosts(), parseHostRecord, isHostName, "a host name", refused),
    knownHosts: byName(hostInfos, keys.hostInfos(), parseHostRecord, isHostName, "a host name", refused),
    volumes: byName(volumes, keys.volumes(), parseVolumeSpec, isVolumeName, "a volume name", refused),
    primaries: primaryRecords,
    primaryRevisions,
    replicas: replicasByVolume(replicas, refused, replicaRevisions),
    replicaRevisions,
    health,
    vms: byName(vms, keys.vms(), parseVmRecord, isVmName, "a VM name", refused),
    vmStatus,
    handovers: handoverNames,
    disks: disksByCopyPlace(disks, refused),
    revision: result.revision,
    malformed: refused.records,
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
