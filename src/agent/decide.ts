// What an agent does about one volume, decided from the cluster state it just read and what it runs:
// pure, so every case (and every race between two standbys) is a unit test with no etcd and no clock.
//
// - This host is the recorded primary and holds its lease: serve the volume (start the engine).
// - It serves the volume smaller than the spec says (haven volume resize recorded a larger size): grow,
//   that is restart the engine at the spec's size, which grows every copy it reaches before it serves
//   (engine.ts), so the NBD front offers the new size only once they have all grown.
// - This host runs the volume but is not the recorded primary (deposed, or the volume was deleted): stop.
// - The primary's host has no live lease: a standby with a copy recorded in-sync takes over after
//   the grace period, with an epoch one above the record's, by compare-and-swap on the primary key (so
//   of two standbys racing, one wins). A standby whose copy is not in sync never promotes: the volume
//   stays down and says why until a copy that is comes back or an operator forces a promotion.
// - A standby whose in-sync copies' disks all fail their health check does not promote either: its copy
//   would fault on the first write. (A host may hold two copies, on two disks: local RAID1.) The failover's reason says whether the old primary also stopped answering the
//   heartbeats over the replication link (host or network gone) or still answers them (cut off from
//   etcd only, so it has fenced itself: the lease rule, not the heartbeat, is what makes this safe).
//
// - An engine that failed to start here is not started again before its retry time (startRetryAt).
//
// The grace period's timer is part of the decision's input: deadPrimaries() computes, from the previous
// round's timers and this round's view, since when each volume's primary host has been seen dead, and
// decide() reads it. Both are pure; the agent only keeps the map between rounds.

import {
  copiesOn,
  copyId,
  inSyncCopiesOn,
  type PrimaryRecord,
  type ReplicaRecord,
  type VolumeSpec,
} from "../cluster/schema.js";

export interface VolumeView {
  readonly spec: VolumeSpec;
  readonly primary: PrimaryRecord | undefined;
  /** The copies' records by copy (copyId: HOST/DISK). */
  readonly replicas: ReadonlyMap<string, ReplicaRecord>;
}

export interface HostView {
  readonly me: string;
  readonly alive: ReadonlySet<string>;
  /** This host holds its own lease right now (it may serve). */
  readonly holdsLease: boolean;
  /** Volumes whose engine runs here. */
  readonly running: ReadonlySet<string>;
  /** Monotonic ms now, and when this agent first saw each volume's primary host dead. */
  readonly now: number;
  readonly primaryDeadSince: ReadonlyMap<string, number>;
  readonly failoverGraceMs: number;
  /** Why one of this host's disks is unusable, when its latest probe failed; undefined when it is fine. */
  readonly diskProblem?: (disk: string) => string | undefined;
  /** Whether the heartbeat link to a host is up; undefined when there is none. */
  readonly linkUp?: (host: string) => boolean | undefined;
  /**
   * Volumes whose engine failed to start here, and the monotonic ms before which no new start is
   * tried (each start takes a new epoch: retrying at once would burn epochs and flood the events).
   */
  readonly startRetryAt?: ReadonlyMap<string, number>;
  /** This host is in maintenance (`haven host drain`): it takes over nothing. */
  readonly inMaintenance?: boolean;
  /** The size each engine running here serves; absent: each serves its spec's size. */
  readonly runningSizeBytes?: ReadonlyMap<string, number>;
}

export type Action =
  | { readonly kind: "serve"; readonly epoch: number }
  | { readonly kind: "stop"; readonly reason: string }
  | {
      readonly kind: "promote";
      readonly epoch: number;
      readonly reason: string;
      /** The copy (copyId) whose in-sync record vouches for the promotion: it must not change meanwhile. */
      readonly vouching: string;
    }
  | { readonly kind: "wait"; readonly reason: string }
  /** Restart the running engine at the spec's larger size, at epoch + 1 (as serve). */
  | { readonly kind: "grow"; readonly epoch: number; readonly fromBytes: number; readonly toBytes: number }
  | { readonly kind: "none" };

export function decide(volume: VolumeView, host: HostView): Action {
  const action = decideIgnoringBackoff(volume, host);
  if (action.kind !== "serve" && action.kind !== "promote") return action;
  const retryAt = host.startRetryAt?.get(volume.spec.name);
  return retryAt !== undefined && host.now < retryAt ? none : action;
}

function decideIgnoringBackoff(volume: VolumeView, host: HostView): Action {
  const { spec, primary } = volume;
  const name = spec.name;
  const mine = copiesOn(spec, host.me).length > 0;
  const running = host.running.has(name);
  if (!host.holdsLease)
    return running ? { kind: "stop", reason: "this host lost its cluster lease" } : { kind: "none" };
  if (primary === undefined) return running ? { kind: "stop", reason: "the volume has no primary on record" } : none;
  if (primary.host === host.me) {
    if (!mine) return running ? { kind: "stop", reason: "this host holds no copy of the volume" } : none;
    if (!running) return { kind: "serve", epoch: primary.epoch };
    const served = host.runningSizeBytes?.get(name);
    return served !== undefined && served < spec.sizeBytes
      ? { kind: "grow", epoch: primary.epoch, fromBytes: served, toBytes: spec.sizeBytes }
      : none;
  }
  if (running) return { kind: "stop", reason: `${primary.host} is the primary now (epoch ${primary.epoch})` };
  if (!mine || host.alive.has(primary.host)) return none;

  const inSync = inSyncCopiesOn(spec, volume.replicas, host.me);
  if (inSync.length === 0) {
    const records = copiesOn(spec, host.me).map((copy) => {
      const record = volume.replicas.get(copyId(copy));
      return record ? `recorded ${record.state} (${record.detail})` : "not on record";
    });
    return {
      kind: "wait",
      reason:
        `primary ${primary.host} is gone, but this host's ${records.length === 1 ? "copy is" : "copies are"} ${records.join(", ")}: ` +
        "it may lack acknowledged writes, so it is not promoted",
    };
  }
  const usable = inSync.filter((copy) => host.diskProblem?.(copy.disk) === undefined);
  if (usable.length === 0)
    return {
      kind: "wait",
      reason: `primary ${primary.host} is gone, but this host's ${inSync.map((copy) => host.diskProblem?.(copy.disk)).join("; ")}: it does not take over`,
    };
  if (host.inMaintenance === true)
    return {
      kind: "wait",
      reason: `primary ${primary.host} is gone, but this host is in maintenance: it takes over nothing until 'haven host undrain ${host.me}'`,
    };
  const deadSince = host.primaryDeadSince.get(name) ?? host.now;
  if (host.now - deadSince < host.failoverGraceMs)
    return { kind: "wait", reason: "grace period after the primary's lease expired" };
  const link = host.linkUp?.(primary.host);
  const heartbeat =
    link === undefined
      ? ""
      : link
        ? ` (${primary.host} still answers heartbeats over the replication link: it is cut off from etcd and has fenced itself)`
        : ` (${primary.host} stopped answering heartbeats over the replication link too)`;
  return {
    kind: "promote",
    epoch: primary.epoch + 1,
    reason: `primary ${primary.host}'s lease expired${heartbeat}; this host's copy is recorded in sync`,
    vouching: copyId(usable[0]!),
  };
}

const none: Action = { kind: "none" };

/**
 * Since when (monotonic ms) this agent has seen each volume's primary host without a lease: kept from
 * the previous round for a primary still dead, started now for one newly dead, dropped for one alive.
 */
export function deadPrimaries(
  previous: ReadonlyMap<string, number>,
  primaryHosts: ReadonlyMap<string, string>,
  alive: ReadonlySet<string>,
  now: number,
): Map<string, number> {
  const next = new Map<string, number>();
  for (const [volume, host] of primaryHosts) {
    if (alive.has(host)) continue;
    next.set(volume, previous.get(volume) ?? now);
  }
  return next;
}
