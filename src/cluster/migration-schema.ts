// A live migration in the cluster's state (/haven/migrations/VM): asked for by `haven vm migrate`, then
// carried forward by the two agents involved. One record per VM, so two migrations of one VM cannot
// run at once; each party changes it only with a transaction conditioned on the revision it read.
//
//   requested    the operator asked; the destination starts an incoming QEMU (paused, its disk open
//                through its own endpoint, routed to the primary meanwhile) and records its address
//   incoming     the source migrates its QEMU there (TLS under the cluster's CA), reporting progress
//   switching    the RAM and devices are there, the source's guest is paused: the disk's primary moves
//                to the destination (a switchover), which then resumes the guest and removes the record
//
// A failure at any phase before the destination resumes the guest ends with the guest running on the
// source (migrate_cancel, or `cont` after a completed transfer) and the record removed with the reason.

import { isHostName, isVmName, isVolumeName } from "./names.js";
import { bad, count, member, nameField, object, text } from "./schema.js";

export type MigrationPhase = "requested" | "incoming" | "switching";
const PHASES: readonly MigrationPhase[] = ["requested", "incoming", "switching"];

/** What QEMU says of the transfer, as the source last read it (query-migrate). */
export interface MigrationProgress {
  readonly status: string;
  readonly totalBytes: number;
  readonly transferredBytes: number;
  readonly remainingBytes: number;
  /** Pages the guest dirties per second, and the page size (bytes). */
  readonly dirtyPagesRate: number;
  readonly pageSize: number;
  readonly expectedDowntimeMs: number;
  /** Passes over RAM so far (dirty-sync-count). */
  readonly passes: number;
  readonly mbps: number;
}

export interface MigrationRecord {
  readonly vm: string;
  readonly volume: string;
  readonly from: string;
  readonly to: string;
  /** Unique per request: an agent's leftover from an earlier request never acts on this one. */
  readonly id: string;
  readonly phase: MigrationPhase;
  readonly requestedBy: string;
  readonly requestedAt: string;
  /** Where the destination's QEMU listens (tcp:ADDRESS:PORT), once it does. */
  readonly incoming?: string;
  readonly progress?: MigrationProgress;
  /** The most the transfer may send per second (bytes); absent: as fast as the link allows. */
  readonly maxBandwidth?: number;
  /** When the guest paused on the source for the last pass (ISO), once the transfer completed. */
  readonly pausedAt?: string;
  /** When the phase last changed (ISO). */
  readonly since: string;
}

export function parseMigrationRecord(value: string, key: string): MigrationRecord {
  const o = object(value, key);
  const phase = text(o, "phase", key) as MigrationPhase;
  if (!PHASES.includes(phase)) throw bad(key, `phase "${phase}" is not one of ${PHASES.join(", ")}`);
  const incoming = o.incoming === undefined ? undefined : text(o, "incoming", key);
  if (incoming !== undefined && !/^tcp:[0-9A-Za-z.:[\]-]+:[0-9]{1,5}$/.test(incoming))
    throw bad(key, `incoming "${incoming}" is not tcp:ADDRESS:PORT`);
  const id = text(o, "id", key);
  if (!/^[0-9a-z-]{1,64}$/.test(id)) throw bad(key, `id "${id}" is not a migration id`);
  return {
    vm: nameField(o, "vm", key, isVmName, "a VM name"),
    volume: nameField(o, "volume", key, isVolumeName, "a volume name"),
    from: nameField(o, "from", key, isHostName, "a host name"),
    to: nameField(o, "to", key, isHostName, "a host name"),
    id,
    phase,
    requestedBy: text(o, "requestedBy", key),
    requestedAt: text(o, "requestedAt", key),
    ...(incoming !== undefined && { incoming }),
    ...(o.progress !== undefined && { progress: parseProgress(member(o.progress), `${key} progress`) }),
    ...(o.pausedAt !== undefined && { pausedAt: text(o, "pausedAt", key) }),
    ...(o.maxBandwidth !== undefined && { maxBandwidth: count(o, "maxBandwidth", key) }),
    since: text(o, "since", key),
  };
}

function parseProgress(o: Record<string, unknown>, key: string): MigrationProgress {
  return {
    status: text(o, "status", key),
    totalBytes: count(o, "totalBytes", key),
    transferredBytes: count(o, "transferredBytes", key),
    remainingBytes: count(o, "remainingBytes", key),
    dirtyPagesRate: count(o, "dirtyPagesRate", key),
    pageSize: count(o, "pageSize", key),
    expectedDowntimeMs: count(o, "expectedDowntimeMs", key),
    passes: count(o, "passes", key),
    mbps: count(o, "mbps", key),
  };
}

/** Whether a host is in maintenance: /haven/maintenance/HOST holds who drained it and when. */
export interface MaintenanceRecord {
  readonly since: string;
  readonly by: string;
}

export function parseMaintenanceRecord(value: string, key: string): MaintenanceRecord {
  const o = object(value, key);
  return { since: text(o, "since", key), by: text(o, "by", key) };
}
