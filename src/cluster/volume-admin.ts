// Creating and deleting volumes in the cluster's desired state. Each is one etcd transaction, so the
// agents never see half of it: a volume appears with its primary record (epoch 1) and one in-sync
// record per copy (a new copy is all zeroes on every host, so every copy has every acknowledged write),
// and disappears with them. The agents act on the change: the primary's agent creates the copies and
// serves the volume; when the spec goes, each agent stops the engine and removes its copy.
//
// Creation places the copies on a snapshot of the cluster and must not over-promise a disk: two
// creates that read the same snapshot could each put a copy on a disk with room for one. So the
// transaction holds only if no volume spec was written since the snapshot, and a create that loses
// re-reads and places again (a bounded number of times).

import { HavenError } from "../core/errors.js";
import { formatBytes } from "../util/units.js";
import { readClusterRecords, type ClusterRecords } from "./cluster-read.js";
import type { Compare, TxnOperation } from "./etcd-client.js";
import type { ClusterStore } from "./store.js";
import { checkPlacement, placeAnotherCopy, placeReplicas, withDiskRecords } from "./placement.js";
import {
  copiesOn,
  copyId,
  eventSequence,
  inSyncCopiesOn,
  keys,
  parseVolumeSpec,
  type EventRecord,
  type HostRecord,
  type HandoverRecord,
  type CopyPlace,
  type PrimaryRecord,
  type ReplicaRecord,
  type VolumeSpec,
} from "./schema.js";

export interface AdminOptions {
  /** Who asks, as the events record it (for the CLI: "cli@HOSTNAME"). */
  readonly actor: string;
  readonly now?: () => Date;
}

export interface CreatedVolume {
  readonly spec: VolumeSpec;
  readonly primary: PrimaryRecord;
  /** The etcd revision of the creation: later events have a higher create revision. */
  readonly revision: number;
}

/** The most copies a volume keeps (the engine's limit): room for a replacement next to three. */
export const MAX_COPIES = 4;

/** How many times a create re-reads and places again when other volumes were created meanwhile. */
const MAX_CREATE_ATTEMPTS = 5;

function put(key: string, value: object): TxnOperation {
  return { type: "put", key, value: JSON.stringify(value) };
}

function copyList(spec: VolumeSpec): string {
  return spec.replicas.map(copyId).join(", ");
}

function alreadyExists(name: string, createdAt: string | undefined): HavenError {
  return new HavenError(
    "HAVEN_ERR_CONFLICT",
    `volume "${name}" already exists${createdAt === undefined ? "" : ` (created ${createdAt})`}; choose another ` +
      `name, or delete it first with 'haven volume delete ${name} --yes' (which destroys its data)`,
  );
}

/** HAVEN_ERR_NOT_FOUND, listing the hosts, when the cluster has no host `host`. */
function knownHost(records: ClusterRecords, host: string): void {
  if (records.knownHosts.has(host)) return;
  const hosts = [...records.knownHosts.keys()].sort();
  throw new HavenError(
    "HAVEN_ERR_NOT_FOUND",
    `there is no host "${host}" in the cluster (hosts: ${hosts.join(", ") || "none"})`,
  );
}

/** More copies asked for than there are hosts to hold them: each copy needs a host of its own. */
function tooFewHosts(copies: number, records: ClusterRecords, open: readonly HostRecord[]): HavenError {
  const names = open.map((host) => host.name).sort();
  const draining = [...records.maintenance.keys()].filter((host) => records.liveHosts.has(host)).sort();
  return new HavenError(
    "HAVEN_ERR_INVALID_REQUEST",
    `${copies} copies need ${copies} live hosts (each copy goes on a host of its own), but only ` +
      `${names.length} can take one${names.length > 0 ? ` (${names.join(", ")})` : ""}` +
      (draining.length > 0 ? `; in maintenance: ${draining.join(", ")}` : "") +
      `: ask for ${Math.max(1, names.length)} cop${names.length === 1 ? "y" : "ies"} or fewer, or bring more hosts up`,
  );
}

/**
 * Places a new volume's copies on the live hosts and records it; HAVEN_ERR_CONFLICT if the name is taken,
 * or if other volumes kept being created while this one was placed.
 */
export async function createVolume(
  client: ClusterStore,
  request: {
    readonly name: string;
    readonly sizeBytes: number;
    readonly copies: number;
    /** Local RAID1: the first host keeps a second copy on another of its disks. */
    readonly mirrorFirst?: boolean;
    /** Every copy's place, named by the operator (the first is the primary); `copies` is then ignored. */
    readonly places?: readonly CopyPlace[];
    /** The hosts the primary may go on (those with room for the VM the volume is made for), and why. */
    readonly primaryAmong?: { readonly hosts: ReadonlySet<string>; readonly why: string };
  },
  options: AdminOptions,
): Promise<CreatedVolume> {
  const now = (options.now ?? (() => new Date()))();
  const time = now.toISOString();
  for (let attempt = 1; attempt <= MAX_CREATE_ATTEMPTS; attempt++) {
    const records = await readClusterRecords(client);
    const existing = records.volumes.get(request.name);
    if (existing !== undefined) throw alreadyExists(request.name, existing.createdAt);
    // A host in maintenance is given nothing new.
    const open = [...records.liveHosts.values()].filter((host) => !records.maintenance.has(host.name));
    if (request.places === undefined && request.copies > open.length) throw tooFewHosts(request.copies, records, open);
    const live = withDiskRecords(open, records.disks, [...records.volumes.values()]);
    const placement =
      request.places !== undefined
        ? checkPlacement(live, [...records.volumes.values()], request.sizeBytes, request.places, records.health)
        : placeReplicas(live, [...records.volumes.values()], request.sizeBytes, request.copies, records.health, {
            mirrorFirst: request.mirrorFirst ?? false,
            ...(request.primaryAmong !== undefined && { primaryAmong: request.primaryAmong }),
          });
    if (placement.length > MAX_COPIES)
      throw new HavenError("HAVEN_ERR_USAGE", `a volume has at most ${MAX_COPIES} copies, not ${placement.length}`);

    const spec: VolumeSpec = { name: request.name, sizeBytes: request.sizeBytes, replicas: placement, createdAt: time };
    const primary: PrimaryRecord = { host: placement[0]!.host, epoch: 1, since: time, reason: "created" };
    const replica: ReplicaRecord = { state: "in-sync", detail: "new", epoch: 1, updatedAt: time };
    const event: EventRecord = {
      time,
      host: options.actor,
      volume: spec.name,
      kind: "volume-created",
      message:
        `volume ${spec.name} created: ${formatBytes(spec.sizeBytes)}, copies on ${copyList(spec)}, ` +
        `primary ${primary.host}`,
    };
    // The space placement counted as promised comes from the volume specs alone, so the placement holds
    // exactly while no spec was written since the snapshot (a spec deleted meanwhile only frees space,
    // and the compare does not see deletions). Hosts are not compared: a host whose lease ends between
    // the read and the write may still get a copy, just as if it had died a moment after the creation,
    // which the agents handle; that over-promises no disk. The same goes for a disk that fails meanwhile.
    const result = await client.txn(
      [
        { key: keys.volume(spec.name), target: "createRevision", result: "equal", value: 0 },
        { prefix: keys.volumes(), target: "modRevision", result: "less", value: records.revision + 1 },
      ],
      [
        put(keys.volume(spec.name), spec),
        put(keys.primary(spec.name), primary),
        ...placement.map((copy) => put(keys.replica(spec.name, copy), replica)),
        put(keys.event(eventSequence(now.getTime())), event),
      ],
      [{ type: "get", key: keys.volume(spec.name) }],
    );
    if (result.succeeded) return { spec, primary, revision: result.revision };
    const found = result.results[0];
    const kv = found?.type === "get" ? found.kvs[0] : undefined;
    // Someone created it between the read and the transaction.
    if (kv !== undefined) throw alreadyExists(spec.name, parseVolumeSpec(kv.value, kv.key).createdAt);
    // Another volume was created meanwhile: place again on what is promised now.
  }
  throw new HavenError(
    "HAVEN_ERR_CONFLICT",
    `the cluster changed while volume "${request.name}" was being placed (other volumes were created ` +
      `${MAX_CREATE_ATTEMPTS} times in a row); run it again`,
  );
}

/** Removes a volume from the desired state; HAVEN_ERR_NOT_FOUND when there is none of that name. */
export async function deleteVolume(client: ClusterStore, name: string, options: AdminOptions): Promise<VolumeSpec> {
  const notFound = (): HavenError =>
    new HavenError("HAVEN_ERR_NOT_FOUND", `no volume "${name}" in the cluster; 'haven volume list' shows them`);
  const kv = await client.get(keys.volume(name));
  if (kv === undefined) throw notFound();
  const spec = parseVolumeSpec(kv.value, kv.key);
  const now = (options.now ?? (() => new Date()))();
  const event: EventRecord = {
    time: now.toISOString(),
    host: options.actor,
    volume: name,
    kind: "volume-deleted",
    message: `volume ${name} deleted: the agents stop its engine and remove its copies on ${copyList(spec)}`,
  };
  // Delete exactly the spec that was read, so the event names the copies that go.
  const result = await client.txn(
    [{ key: keys.volume(name), target: "modRevision", result: "equal", value: kv.modRevision }],
    [
      { type: "delete", key: keys.volume(name) },
      { type: "delete", key: keys.primary(name) },
      { type: "deletePrefix", prefix: keys.replicasOf(name) },
      put(keys.event(eventSequence(now.getTime())), event),
    ],
    [{ type: "get", key: keys.volume(name) }],
  );
  if (!result.succeeded) {
    const found = result.results[0];
    if (found?.type === "get" && found.kvs.length === 0) throw notFound();
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `volume "${name}" changed while it was being deleted; run the command again`,
    );
  }
  return spec;
}

/**
 * The operator's way out when a volume is down and no copy on a live host is recorded in sync: makes
 * `host` the primary at a higher epoch and records its copy in sync, in one transaction that holds only
 * if the primary record is still the one read. Refused while the recorded primary's host is alive (that
 * would make two writers) and for a host without a copy or without a lease. Writes the copies recorded
 * out of sync may have had that `host` lacks are lost; the event says which copies those are.
 */
export async function forcePromote(
  client: ClusterStore,
  name: string,
  host: string,
  options: AdminOptions,
): Promise<PrimaryRecord> {
  const { records, spec } = await readVolume(client, name);
  knownHost(records, host);
  const hostCopies = copiesOn(spec, host);
  if (hostCopies.length === 0)
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `host ${host} holds no copy of volume ${name} (copies: ${copyList(spec)}); promote a host that does`,
    );
  if (!records.liveHosts.has(host))
    throw new HavenError("HAVEN_ERR_UNAVAILABLE", `host ${host} holds no cluster lease: start its agent first`);
  const current = records.primaries.get(name);
  if (current !== undefined && records.liveHosts.has(current.host))
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `volume ${name}'s primary ${current.host} is alive; promoting another host would make two writers. ` +
        `To move the primary with no write lost: haven volume switchover ${name} --to ${host}`,
    );
  const kv = await client.get(keys.primary(name));
  const now = (options.now ?? (() => new Date()))();
  const epoch = (current?.epoch ?? 0) + 1;
  const others = spec.replicas.filter((copy) => copy.host !== host).map(copyId);
  const recorded = records.replicas.get(name);
  const stale = others.filter((other) => recorded?.get(other)?.state === "in-sync");
  const lost = others.filter((other) => !stale.includes(other));
  const primary: PrimaryRecord = {
    host,
    epoch,
    since: now.toISOString(),
    reason: `promoted by the operator (--force) via ${options.actor}`,
  };
  const replica: ReplicaRecord = {
    state: "in-sync",
    detail: "forced in sync by the operator",
    epoch,
    updatedAt: now.toISOString(),
  };
  const event: EventRecord = {
    time: now.toISOString(),
    host: options.actor,
    volume: name,
    kind: "forced-promotion",
    message:
      `${host} forced to primary at epoch ${epoch}` +
      (current ? ` (was ${current.host}, epoch ${current.epoch})` : "") +
      `; writes only ${[...lost, ...stale].join(", ") || "other copies"} had are lost if they had any`,
  };
  const result = await client.txn(
    [{ key: keys.primary(name), target: "modRevision", result: "equal", value: kv?.modRevision ?? 0 }],
    [
      put(keys.primary(name), primary),
      ...hostCopies.map((copy) => put(keys.replica(name, copy), replica)),
      put(keys.event(eventSequence(now.getTime())), event),
    ],
    [],
  );
  if (!result.succeeded)
    throw new HavenError("HAVEN_ERR_CONFLICT", `volume ${name}'s primary changed meanwhile; look again and retry`);
  return primary;
}

export interface SwitchoverRequest {
  readonly from: string;
  readonly to: string;
  readonly epoch: number;
}

/**
 * Asks the primary's agent to move volume `name` to `to` (a planned move, with no write lost): it
 * stops the engine cleanly (every copy flushed), then hands the primary record over at a higher epoch,
 * and `to`'s agent starts serving. Refused unless `to` is alive, holds a copy recorded in sync, and
 * the primary is alive; one switchover at a time per volume.
 */
export async function requestSwitchover(
  client: ClusterStore,
  name: string,
  to: string,
  options: AdminOptions,
): Promise<SwitchoverRequest> {
  const { records, spec } = await readVolume(client, name);
  knownHost(records, to);
  const primary = records.primaries.get(name);
  if (primary === undefined || !records.liveHosts.has(primary.host))
    throw new HavenError(
      "HAVEN_ERR_UNAVAILABLE",
      `volume ${name} has no live primary to hand over from${primary ? ` (${primary.host} is gone)` : ""}`,
    );
  if (primary.host === to) throw new HavenError("HAVEN_ERR_USAGE", `${to} is already the primary of volume ${name}`);
  const targetCopies = copiesOn(spec, to);
  if (targetCopies.length === 0)
    throw new HavenError("HAVEN_ERR_USAGE", `host ${to} holds no copy of volume ${name} (copies: ${copyList(spec)})`);
  if (!records.liveHosts.has(to))
    throw new HavenError("HAVEN_ERR_UNAVAILABLE", `host ${to} holds no cluster lease: start its agent first`);
  if (inSyncCopiesOn(spec, records.replicas.get(name), to).length === 0) {
    const states = targetCopies.map((copy) => {
      const state = records.replicas.get(name)?.get(copyId(copy));
      return state ? `recorded ${state.state} (${state.detail})` : "not on record";
    });
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `${to}'s copy of volume ${name} is ${states.join(", ")}: ` +
        "a switchover to it could lose writes; wait until it is in sync",
    );
  }
  const now = (options.now ?? (() => new Date()))();
  const handover: HandoverRecord = { to, requestedBy: options.actor, requestedAt: now.toISOString() };
  const event: EventRecord = {
    time: now.toISOString(),
    host: options.actor,
    volume: name,
    kind: "switchover-requested",
    message: `switchover of ${name} from ${primary.host} to ${to} requested`,
  };
  const result = await client.txn(
    [
      { key: keys.handover(name), target: "createRevision", result: "equal", value: 0 },
      { key: keys.primary(name), target: "modRevision", result: "equal", value: records.primaryRevisions.get(name)! },
    ],
    [put(keys.handover(name), handover), put(keys.event(eventSequence(now.getTime())), event)],
    [],
  );
  if (!result.succeeded)
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `volume ${name} has a switchover under way already, or its primary just changed; look again and retry`,
    );
  return { from: primary.host, to, epoch: primary.epoch };
}

export interface CopyChange {
  readonly spec: VolumeSpec;
  readonly copy: CopyPlace;
  readonly revision: number;
}

/**
 * Adds a copy to live volume `name` (the md "missing" procedure without downtime): on `want.host` and
 * `want.disk` when given, else where placement puts it. The copy is recorded out of sync in the same
 * transaction that adds it to the spec, so nothing can promote it before the primary's engine has built
 * it; the engine then rebuilds it while writes go on and records it in sync when it is complete.
 */
export async function addCopy(
  client: ClusterStore,
  name: string,
  want: { readonly host?: string; readonly disk?: string },
  options: AdminOptions & { readonly reason?: string },
): Promise<CopyChange> {
  const { records, spec } = await readVolume(client, name);
  if (spec.replicas.length >= MAX_COPIES)
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `volume ${name} has ${spec.replicas.length} copies already (${copyList(spec)}), the most a volume keeps; ` +
        `remove one first ('haven volume remove-copy ${name} --host H --disk D')`,
    );
  if (
    want.host !== undefined &&
    want.disk !== undefined &&
    spec.replicas.some((copy) => copyId(copy) === `${want.host}/${want.disk}`)
  )
    throw new HavenError("HAVEN_ERR_CONFLICT", `volume ${name} has a copy on ${want.host}/${want.disk} already`);
  const copy = placeAnotherCopy(
    withDiskRecords(
      [...records.liveHosts.values()].filter((host) => !records.maintenance.has(host.name) || host.name === want.host),
      records.disks,
      [...records.volumes.values()],
      want,
    ),
    [...records.volumes.values()],
    spec,
    want,
    records.health,
  );
  const now = (options.now ?? (() => new Date()))();
  const epoch = records.primaries.get(name)?.epoch ?? 0;
  const record: ReplicaRecord = {
    state: "out-of-sync",
    detail: "new copy: not built yet",
    epoch,
    updatedAt: now.toISOString(),
  };
  const next: VolumeSpec = { ...spec, replicas: [...spec.replicas, copy] };
  const event: EventRecord = {
    time: now.toISOString(),
    host: options.actor,
    volume: name,
    kind: "copy-added",
    message: `copy added on ${copyId(copy)}${options.reason ? ` (${options.reason})` : ""}: the primary builds it from the in-sync copies`,
  };
  const result = await client.txn(
    [unchangedSince(name, records.revision)],
    [
      put(keys.volume(name), next),
      put(keys.replica(name, copy), record),
      put(keys.event(eventSequence(now.getTime())), event),
    ],
    [],
  );
  if (!result.succeeded)
    throw new HavenError("HAVEN_ERR_CONFLICT", `volume ${name} changed meanwhile; look again and retry`);
  return { spec: next, copy, revision: result.revision };
}

/**
 * Removes copy `copy` from volume `name`. Refused for the last copy recorded in sync (as ZFS refuses
 * "no valid replicas"), and for the primary host's last copy (switch the volume over first). The
 * transaction holds only while every other in-sync copy is still recorded as read, so a copy that left
 * the in-sync set meanwhile cannot leave the volume with none.
 */
export async function removeCopy(
  client: ClusterStore,
  name: string,
  copy: CopyPlace,
  options: AdminOptions & { readonly reason?: string },
): Promise<CopyChange> {
  const { records, spec } = await readVolume(client, name);
  const id = copyId(copy);
  if (!spec.replicas.some((candidate) => copyId(candidate) === id))
    throw new HavenError("HAVEN_ERR_NOT_FOUND", `volume ${name} has no copy on ${id} (copies: ${copyList(spec)})`);
  const recorded = records.replicas.get(name);
  const othersInSync = spec.replicas.filter(
    (candidate) => copyId(candidate) !== id && recorded?.get(copyId(candidate))?.state === "in-sync",
  );
  if (othersInSync.length === 0)
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `the copy on ${id} is the last copy of volume ${name} recorded in sync: removing it would lose the volume's data. ` +
        `Add a copy first and wait until it is in sync ('haven volume add-copy ${name}')`,
    );
  const primary = records.primaries.get(name);
  if (primary !== undefined && primary.host === copy.host && copiesOn(spec, copy.host).length === 1)
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `the copy on ${id} is the only copy on ${copy.host}, the primary of volume ${name}: ` +
        `move the volume first ('haven volume switchover ${name} --to ${othersInSync.find((other) => other.host !== copy.host)?.host ?? "HOST"}')`,
    );
  const revisions = records.replicaRevisions.get(name);
  const now = (options.now ?? (() => new Date()))();
  const next: VolumeSpec = { ...spec, replicas: spec.replicas.filter((candidate) => copyId(candidate) !== id) };
  const event: EventRecord = {
    time: now.toISOString(),
    host: options.actor,
    volume: name,
    kind: "copy-removed",
    message: `copy on ${id} removed${options.reason ? ` (${options.reason})` : ""}; in sync: ${othersInSync.map(copyId).join(", ")}`,
  };
  const result = await client.txn(
    [
      unchangedSince(name, records.revision),
      ...othersInSync.map((other) => ({
        key: keys.replica(name, other),
        target: "modRevision" as const,
        result: "equal" as const,
        value: revisions?.get(copyId(other)) ?? 0,
      })),
    ],
    [
      put(keys.volume(name), next),
      { type: "delete", key: keys.replica(name, copy) },
      put(keys.event(eventSequence(now.getTime())), event),
    ],
    [],
  );
  if (!result.succeeded)
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `volume ${name} or its copies' records changed meanwhile; look again and retry`,
    );
  return { spec: next, copy, revision: result.revision };
}

/** The cluster as of now and volume `name`'s spec in it; HAVEN_ERR_NOT_FOUND when there is none. */
async function readVolume(client: ClusterStore, name: string): Promise<{ records: ClusterRecords; spec: VolumeSpec }> {
  const records = await readClusterRecords(client);
  const spec = records.volumes.get(name);
  if (spec === undefined)
    throw new HavenError("HAVEN_ERR_NOT_FOUND", `no volume "${name}" in the cluster; 'haven volume list' shows them`);
  return { records, spec };
}

/** The condition that volume `name`'s spec was not written since the snapshot at `revision`. */
function unchangedSince(name: string, revision: number): Compare {
  return { key: keys.volume(name), target: "modRevision", result: "less", value: revision + 1 };
}

/**
 * Moves the copy on `from` to `to` in one transaction (a failed disk's copy onto a spare): the new copy
 * is recorded out of sync and built by the primary, the old one leaves the spec. Holds only while the
 * spec is as read and another copy is still recorded in sync as read, so the volume never loses its
 * last in-sync copy this way.
 */
export async function replaceCopy(
  client: ClusterStore,
  name: string,
  from: CopyPlace,
  to: CopyPlace,
  options: AdminOptions & { readonly reason: string },
): Promise<CopyChange> {
  const { records, spec } = await readVolume(client, name);
  if (!spec.replicas.some((copy) => copyId(copy) === copyId(from)))
    throw new HavenError("HAVEN_ERR_NOT_FOUND", `volume ${name} has no copy on ${copyId(from)}`);
  if (spec.replicas.some((copy) => copyId(copy) === copyId(to)))
    throw new HavenError("HAVEN_ERR_CONFLICT", `volume ${name} has a copy on ${copyId(to)} already`);
  const recorded = records.replicas.get(name);
  const vouching = spec.replicas.find(
    (copy) => copyId(copy) !== copyId(from) && recorded?.get(copyId(copy))?.state === "in-sync",
  );
  if (vouching === undefined)
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `the copy on ${copyId(from)} is the last copy of volume ${name} recorded in sync: it is not moved`,
    );
  const now = (options.now ?? (() => new Date()))();
  const record: ReplicaRecord = {
    state: "out-of-sync",
    detail: "new copy: not built yet",
    epoch: records.primaries.get(name)?.epoch ?? 0,
    updatedAt: now.toISOString(),
  };
  const next: VolumeSpec = {
    ...spec,
    replicas: spec.replicas.map((copy) => (copyId(copy) === copyId(from) ? to : copy)),
  };
  const event: EventRecord = {
    time: now.toISOString(),
    host: options.actor,
    volume: name,
    kind: "copy-moved",
    message: `the copy on ${copyId(from)} moves to ${copyId(to)} (${options.reason}); the primary rebuilds it from ${copyId(vouching)}`,
  };
  const result = await client.txn(
    [
      unchangedSince(name, records.revision),
      {
        key: keys.replica(name, vouching),
        target: "modRevision",
        result: "equal",
        value: records.replicaRevisions.get(name)?.get(copyId(vouching)) ?? 0,
      },
    ],
    [
      put(keys.volume(name), next),
      { type: "delete", key: keys.replica(name, from) },
      put(keys.replica(name, to), record),
      put(keys.event(eventSequence(now.getTime())), event),
    ],
    [],
  );
  if (!result.succeeded) throw new HavenError("HAVEN_ERR_CONFLICT", `volume ${name} changed meanwhile`);
  return { spec: next, copy: to, revision: result.revision };
}
