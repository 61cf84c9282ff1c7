// Cluster records for tests, built the way etcd would hold them: hosts (live and known), volumes,
// primaries and copy records, with defaults for every field a test does not care about.

import type { ClusterRecords } from "../../src/cluster/cluster-read.js";
import type { HostRecord, PrimaryRecord, ReplicaRecord, VolumeSpec } from "../../src/cluster/schema.js";

export const GiB = 1024 ** 3;
export const TIME = "2024-05-01T12:00:00.000Z";

export function hostRecord(name: string, overrides: Partial<HostRecord> = {}): HostRecord {
  return {
    name,
    address: "10.0.0.1",
    apiPort: 7480,
    replicationPort: 7481,
    nbdPort: 10809,
    disks: [{ name: "ssd0", capacityBytes: 100 * GiB, usedBytes: 10 * GiB }],
    startedAt: TIME,
    ...overrides,
  };
}

export interface VolumeFixture {
  readonly name: string;
  readonly sizeBytes?: number;
  /** host -> recorded state (undefined: no record) */
  readonly copies: Record<string, ReplicaRecord["state"] | undefined>;
  /** The primary's host; null: no primary record. Default: the first copy's host. */
  readonly primary?: string | null;
  readonly epoch?: number;
}

/** Records of `alive` and `dead` hosts and the volumes. */
export function clusterRecords(options: {
  alive: HostRecord[];
  dead?: HostRecord[];
  volumes?: VolumeFixture[];
}): ClusterRecords {
  const volumes = new Map<string, VolumeSpec>();
  const primaries = new Map<string, PrimaryRecord>();
  const replicas = new Map<string, Map<string, ReplicaRecord>>();
  for (const fixture of options.volumes ?? []) {
    const hosts = Object.keys(fixture.copies);
    volumes.set(fixture.name, {
      name: fixture.name,
      sizeBytes: fixture.sizeBytes ?? 10 * GiB,
      replicas: hosts.map((host) => ({ host, disk: "ssd0" })),
      createdAt: TIME,
    });
    const primary = fixture.primary === undefined ? hosts[0]! : fixture.primary;
    if (primary !== null) {
      primaries.set(fixture.name, { host: primary, epoch: fixture.epoch ?? 1, since: TIME, reason: "created" });
    }
    const records = new Map<string, ReplicaRecord>();
    for (const [host, state] of Object.entries(fixture.copies)) {
      if (state !== undefined)
        records.set(`${host}/ssd0`, { state, detail: state, epoch: fixture.epoch ?? 1, updatedAt: TIME });
    }
    replicas.set(fixture.name, records);
  }
  const all = [...options.alive, ...(options.dead ?? [])];
  return {
    liveHosts: new Map(options.alive.map((host) => [host.name, host])),
    knownHosts: new Map(all.map((host) => [host.name, host])),
    volumes,
    primaries,
    primaryRevisions: new Map([...primaries.keys()].map((name) => [name, 1])),
    replicas,
    replicaRevisions: new Map(
      [...replicas].map(([name, copies]) => [name, new Map([...copies.keys()].map((host) => [host, 1]))]),
    ),
    health: new Map(),
    vms: new Map(),
    vmStatus: new Map(),
    handovers: new Set(),
    migrations: new Map(),
    maintenance: new Map(),
    disks: new Map(),
    revision: 1,
    malformed: [],
  };
}
