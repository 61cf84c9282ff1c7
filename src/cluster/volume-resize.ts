// Growing a volume (haven volume resize): the operator's request, recorded in the cluster's desired
// state. The order that keeps every copy ahead of what clients see:
//  1. here, the volume spec's size goes up, in one transaction that holds only if the spec is still
//     the one checked (so two resizes, or a resize and a copy change, never mix);
//  2. the primary's agent sees its engine serve less than the spec says (agent/decide.ts: grow) and
//     restarts the engine at the spec's size; the engine grows every copy it opens before it serves
//     (the data file, then its metadata and bitmaps: replica/grow.ts), and a copy it cannot reach now
//     (its host down, or the copy out of sync) grows when it comes back, before it rejoins;
//  3. only then does the NBD front offer the volume, at the new size.
// A crash anywhere leaves a volume that starts and serves its data: before 1 nothing changed; after it,
// any engine that starts (on the primary, or a standby promoted) grows the copies it opens first.
// Growing only: a smaller size would cut off data, so it is refused, with how to move to a smaller volume.
// Copies on hosts that are down do not block the resize: they cannot serve at the old size anyway
// (an engine only ever uses a copy at the volume's size), and they grow before they rejoin.
// A live migration of the volume's VM does: the destination's QEMU would keep the size it connected
// with, and the agent tells only the VMs it runs (so the resize waits until the migration ended).

import { HavenError } from "../core/errors.js";
import { formatBytes } from "../util/units.js";
import { readClusterRecords } from "./cluster-read.js";
import { withDiskRecords } from "./placement.js";
import { copyId, eventSequence, keys, type EventRecord, type HostRecord, type VolumeSpec } from "./schema.js";
import type { ClusterStore } from "./store.js";
import type { AdminOptions } from "./volume-admin.js";

export interface ResizeRequest {
  readonly spec: VolumeSpec;
  readonly fromBytes: number;
  /** The etcd revision of the spec's change: the agent's "volume-grown" event comes after it. */
  readonly revision: number;
}

/**
 * Why volume `spec` cannot grow to `sizeBytes` on these hosts (their disks' free space, as placement
 * counts it: capacity - used - promised to every volume's copies), or undefined when it can. Pure.
 * A copy on a host without a record is not checked (its host reports its disks when it returns).
 */
export function resizeRefusal(
  spec: VolumeSpec,
  sizeBytes: number,
  hosts: readonly HostRecord[],
  promised: readonly VolumeSpec[],
): string | undefined {
  if (sizeBytes < spec.sizeBytes)
    return (
      `volume ${spec.name} is ${formatBytes(spec.sizeBytes)}; it never shrinks (to ${formatBytes(sizeBytes)}), ` +
      `which would destroy the data past the new end. To move to a smaller volume, create one ` +
      `('haven volume create NAME --size ${sizeBytes}'), shrink the file system ` +
      `inside the guest first, then copy it over (e.g. with nbdcopy or the guest's own tools)`
    );
  if (sizeBytes === spec.sizeBytes) return `volume ${spec.name} is ${formatBytes(sizeBytes)} already: nothing to do`;
  const growth = sizeBytes - spec.sizeBytes;
  const short: string[] = [];
  for (const copy of spec.replicas) {
    const host = hosts.find((candidate) => candidate.name === copy.host);
    const disk = host?.disks.find((candidate) => candidate.name === copy.disk);
    if (disk === undefined) continue;
    let promisedBytes = 0;
    for (const volume of promised)
      if (volume.replicas.some((other) => copyId(other) === copyId(copy))) promisedBytes += volume.sizeBytes;
    const free = disk.capacityBytes - disk.usedBytes - promisedBytes;
    if (free < growth) short.push(`${copyId(copy)} has ${formatBytes(Math.max(0, free))} free`);
  }
  if (short.length > 0)
    return (
      `volume ${spec.name} cannot grow by ${formatBytes(growth)}: ${short.join(", ")}. ` +
      `Move the copy to a disk with room first ('haven volume add-copy' then 'haven volume remove-copy')`
    );
  return undefined;
}

/**
 * Records volume `name`'s new size (step 1 above); HAVEN_ERR_NOT_FOUND for an unknown volume,
 * HAVEN_ERR_USAGE for a size that does not grow it, HAVEN_ERR_NO_SPACE when a copy's disk lacks room,
 * HAVEN_ERR_CONFLICT when the spec changed meanwhile.
 */
export async function resizeVolume(
  client: ClusterStore,
  name: string,
  sizeBytes: number,
  options: AdminOptions,
): Promise<ResizeRequest> {
  const records = await readClusterRecords(client);
  const spec = records.volumes.get(name);
  if (spec === undefined)
    throw new HavenError("HAVEN_ERR_NOT_FOUND", `no volume "${name}" in the cluster; 'haven volume list' shows them`);
  const migrating = [...records.migrations.values()].find(({ record }) => record.volume === name)?.record;
  if (migrating !== undefined)
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `VM ${migrating.vm} on volume ${name} is being live-migrated from ${migrating.from} to ${migrating.to}; ` +
        `resize the volume once the migration has ended`,
    );
  const vmsOnVolume = [...records.vms.values()].filter((vm) => vm.volume === name);
  const volumes = [...records.volumes.values()];
  const hosts = withDiskRecords(
    [...new Map([...records.knownHosts, ...records.liveHosts]).values()],
    records.disks,
    volumes,
  );
  const refusal = resizeRefusal(spec, sizeBytes, hosts, volumes);
  if (refusal !== undefined)
    throw new HavenError(sizeBytes <= spec.sizeBytes ? "HAVEN_ERR_USAGE" : "HAVEN_ERR_NO_SPACE", refusal);
  const now = (options.now ?? (() => new Date()))();
  const next: VolumeSpec = { ...spec, sizeBytes };
  const down = [...new Set(spec.replicas.map((copy) => copy.host))].filter((host) => !records.liveHosts.has(host));
  const event: EventRecord = {
    time: now.toISOString(),
    host: options.actor,
    volume: name,
    kind: "volume-resize-requested",
    message:
      `volume ${name} grows from ${formatBytes(spec.sizeBytes)} to ${formatBytes(sizeBytes)}: its primary restarts ` +
      `the engine at the new size, growing every copy it reaches before serving it` +
      (down.length > 0 ? `; the copies on ${down.join(", ")} (down) grow when their host returns` : ""),
  };
  const result = await client.txn(
    [
      { key: keys.volume(name), target: "modRevision", result: "less", value: records.revision + 1 },
      // No migration of its VM began since the snapshot.
      ...vmsOnVolume.map((vm) => ({
        key: keys.migration(vm.name),
        target: "createRevision" as const,
        result: "equal" as const,
        value: 0,
      })),
    ],
    [
      { type: "put", key: keys.volume(name), value: JSON.stringify(next) },
      { type: "put", key: keys.event(eventSequence(now.getTime())), value: JSON.stringify(event) },
    ],
    [],
  );
  if (!result.succeeded)
    throw new HavenError("HAVEN_ERR_CONFLICT", `volume ${name} changed meanwhile; look again and retry`);
  return { spec: next, fromBytes: spec.sizeBytes, revision: result.revision };
}
