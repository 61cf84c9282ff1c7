// Creating and deleting volumes in the cluster's desired state. Each is one etcd transaction, so the
// agents never see half of it: a volume appears with its primary record (epoch 1) and one in-sync
// record per copy (a new copy is all zeroes on every host, so every copy has every acknowledged write),
// and disappears with them. The agents act on the change: the primary's agent creates the copies and
// serves the volume; when the spec goes, each agent stops the engine and removes its copy.

import { HavenError } from "../core/errors.js";
import { formatBytes } from "../util/units.js";
import { readClusterRecords } from "./cluster-read.js";
import type { EtcdClient, TxnOperation } from "./etcd-client.js";
import { placeReplicas } from "./placement.js";
import {
  eventSequence,
  keys,
  parseVolumeSpec,
  type EventRecord,
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

/** Places a new volume's copies on the live hosts and records it; HAVEN_ERR_CONFLICT if the name is taken. */
export async function createVolume(
  client: EtcdClient,
  request: { readonly name: string; readonly sizeBytes: number; readonly copies: number },
  options: AdminOptions,
): Promise<CreatedVolume> {
  const records = await readClusterRecords(client);
  const existing = records.volumes.get(request.name);
  if (existing !== undefined) throw alreadyExists(request.name, existing.createdAt);
  const placement = placeReplicas(
    [...records.liveHosts.values()],
    [...records.volumes.values()],
    request.sizeBytes,
    request.copies,
  );

  const now = (options.now ?? (() => new Date()))();
  const time = now.toISOString();
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
  const result = await client.txn(
    [{ key: keys.volume(spec.name), target: "createRevision", result: "equal", value: 0 }],
    [
      put(keys.volume(spec.name), spec),
      put(keys.primary(spec.name), primary),
      ...placement.map(({ host }) => put(keys.replica(spec.name, host), replica)),
      put(keys.event(eventSequence(now.getTime())), event),
    ],
    [{ type: "get", key: keys.volume(spec.name) }],
  );
  if (!result.succeeded) {
    // Someone created it between the read and the transaction.
    const found = result.results[0];
    const kv = found?.type === "get" ? found.kvs[0] : undefined;
    throw alreadyExists(spec.name, kv === undefined ? undefined : parseVolumeSpec(kv.value, kv.key).createdAt);
  }
  return { spec, primary, revision: result.revision };
}

/** Removes a volume from the desired state; HAVEN_ERR_NOT_FOUND when there is none of that name. */
export async function deleteVolume(client: EtcdClient, name: string, options: AdminOptions): Promise<VolumeSpec> {
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
