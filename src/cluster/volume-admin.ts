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
import { readClusterRecords } from "./cluster-read.js";
import type { TxnOperation } from "./etcd-client.js";
import type { ClusterStore } from "./store.js";
import { placeReplicas } from "./placement.js";
import {
  eventSequence,
  keys,
  parseVolumeSpec,
  type EventRecord,
  type HandoverRecord,
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

/** How many times a create re-reads and places again when other volumes were created meanwhile. */
const MAX_CREATE_ATTEMPTS = 5;

function put(key: string, value: object): TxnOperation {
  return { type: "put", key, value: JSON.stringify(value) };
}

function copyList(spec: VolumeSpec): string {
  return spec.replicas.map(({ host, disk }) => `${host}/${disk}`).join(", ");
}

function alreadyExists(name: string, createdAt: string | undefined): HavenError {
  return new HavenError(
    "HAVEN_ERR_CONFLICT",
    `volume "${name}" already exists${createdAt === undefined ? "" : ` (created ${createdAt})`}; choose another ` +
      `name, or delete it first with 'haven volume delete ${name} --yes' (which destroys its data)`,
  );
}

/**
 * Places a new volume's copies on the live hosts and records it; HAVEN_ERR_CONFLICT if the name is taken,
 * or if other volumes kept being created while this one was placed.
 */
export async function createVolume(
  client: ClusterStore,
  request: { readonly name: string; readonly sizeBytes: number; readonly copies: number },
  options: AdminOptions,
): Promise<CreatedVolume> {
  const now = (options.now ?? (() => new Date()))();
  const time = now.toISOString();
  for (let attempt = 1; attempt <= MAX_CREATE_ATTEMPTS; attempt++) {
    const records = await readClusterRecords(client);
    const existing = records.volumes.get(request.name);
    if (existing !== undefined) throw alreadyExists(request.name, existing.createdAt);
    const placement = placeReplicas(
      [...records.liveHosts.values()],
      [...records.volumes.values()],
      request.sizeBytes,
      request.copies,
      records.health,
    );

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
        ...placement.map(({ host }) => put(keys.replica(spec.name, host), replica)),
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
  const records = await readClusterRecords(client);
  const spec = records.volumes.get(name);
  if (spec === undefined)
    throw new HavenError("HAVEN_ERR_NOT_FOUND", `no volume "${name}" in the cluster; 'haven volume list' shows them`);
  if (!spec.replicas.some((replica) => replica.host === host))
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
        "--force is only for a volume whose primary's host is gone",
    );
  const kv = await client.get(keys.primary(name));
  const now = (options.now ?? (() => new Date()))();
  const epoch = (current?.epoch ?? 0) + 1;
  const stale = [...(records.replicas.get(name) ?? new Map<string, ReplicaRecord>())]
    .filter(([other, record]) => other !== host && record.state === "in-sync")
    .map(([other]) => other);
  const lost = spec.replicas.map((replica) => replica.host).filter((other) => other !== host && !stale.includes(other));
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
      put(keys.replica(name, host), replica),
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
  const records = await readClusterRecords(client);
  const spec = records.volumes.get(name);
  if (spec === undefined)
    throw new HavenError("HAVEN_ERR_NOT_FOUND", `no volume "${name}" in the cluster; 'haven volume list' shows them`);
  const primary = records.primaries.get(name);
  if (primary === undefined || !records.liveHosts.has(primary.host))
    throw new HavenError(
      "HAVEN_ERR_UNAVAILABLE",
      `volume ${name} has no live primary to hand over from${primary ? ` (${primary.host} is gone)` : ""}`,
    );
  if (primary.host === to) throw new HavenError("HAVEN_ERR_USAGE", `${to} is already the primary of volume ${name}`);
  if (!spec.replicas.some((replica) => replica.host === to))
    throw new HavenError("HAVEN_ERR_USAGE", `host ${to} holds no copy of volume ${name} (copies: ${copyList(spec)})`);
  if (!records.liveHosts.has(to))
    throw new HavenError("HAVEN_ERR_UNAVAILABLE", `host ${to} holds no cluster lease: start its agent first`);
  const state = records.replicas.get(name)?.get(to);
  if (state?.state !== "in-sync")
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `${to}'s copy of volume ${name} is ${state ? `recorded ${state.state} (${state.detail})` : "not on record"}: ` +
        "a switchover to it could lose writes; wait until it is in sync",
    );
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
