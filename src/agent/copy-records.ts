// The records of which copies of a volume hold every acknowledged write ("in-sync" in the store), as the
// volume's engine reports them. A standby promotes only a copy recorded in sync (decide.ts), so these
// records are the promise failover relies on, and only the volume's current primary may write them:
// each write is a transaction conditioned on the primary record being exactly the one this engine
// started under (its modRevision). A deposed primary that wakes up late (frozen past its lease, then
// resumed) and tries to record the new primary's copy as out of sync is refused, logged and reported
// as a stale epoch, which fences its engine; it never overwrites the new primary's records.
//
// A copy's record exists exactly while the volume's spec places the copy (volume-admin.ts creates and
// deletes it with the spec's change), so a record is only ever written over, never created: a copy the
// operator removed while its engine still held it (its record deleted) gets no record back from a late
// write. Nothing promotes a copy the spec does not place, so such a write has nothing to promise and is
// dropped; the engine lets the copy go once the agent follows the spec. For the same reason a copy
// leaves the in-sync set on record only while another copy the engine holds in sync is still placed by
// the spec: else the writes acknowledged from then on would be on no copy the spec places (the operator
// removed the engine's last in-sync copies before it let them go), and the record is refused instead,
// which fences the engine; the agent starts it again from the spec's copies.
//
// A record that leaves the in-sync set must land before the write that made the copy leave is
// acknowledged (the engine waits for it). While the store does not answer, the write is retried as long
// as this host's lease is not lost; past that the engine fences (no acknowledgement without the
// record). A retry after an answer was lost is harmless: the same record is written again under the
// same condition.

import type { ClusterStore, Compare, TxnOperation } from "../cluster/store.js";
import { copyId, keys, parseReplicaRecord, type CopyPlace, type ReplicaRecord } from "../cluster/schema.js";
import { HavenError, errorMessage } from "../core/errors.js";
import type { Clock } from "../util/clock.js";
import type { EventLog } from "./event-log.js";

/** Between attempts to record a copy's state while the store does not answer. */
const RECORD_RETRY_MS = 200;

/** The role a copy record is written under: this engine's primary record, as it was written. */
export interface PrimaryRole {
  readonly volume: string;
  readonly epoch: number;
  /** The modRevision of the primary record this engine started under. */
  readonly primaryRevision: number;
}

/** The condition every store write acting on the role carries: the primary record is still the one the engine started under. */
export function stillPrimary(role: PrimaryRole): Compare {
  return { key: keys.primary(role.volume), target: "modRevision", result: "equal", value: role.primaryRevision };
}

export interface CopyRecorderOptions {
  readonly store: ClusterStore;
  readonly clock: Clock;
  readonly wallTime: () => Date;
  readonly events: EventLog;
  /** Whether a record may still be retried (not once this host's lease is lost). */
  readonly mayRetry: () => boolean;
}

export class CopyRecorder {
  constructor(private readonly options: CopyRecorderOptions) {}

  /**
   * Records the copy of the role's volume on `copy` as in sync or not; rejects when the role is gone.
   * `holding`: the other copies the engine holds in sync now, which take the writes `copy` misses once
   * it is recorded out of sync. That record lands only while one of them is still placed by the spec
   * (its record exists), so that every acknowledged write is on a copy the spec places. When none is
   * (the operator removed them while the engine still held them, and the last copy of the spec it held
   * in sync just left) it is refused with HAVEN_ERR_CONFLICT: the engine fences rather than acknowledge
   * writes only copies outside the spec hold, and starts again from the spec's copies.
   */
  async record(
    role: PrimaryRole,
    copy: CopyPlace,
    inSync: boolean,
    detail: string,
    holding: readonly CopyPlace[] = [],
  ): Promise<void> {
    const { store, clock, wallTime, events } = this.options;
    const { volume, epoch } = role;
    const record: ReplicaRecord = {
      state: inSync ? "in-sync" : "out-of-sync",
      detail: detail.slice(0, 500),
      epoch,
      updatedAt: wallTime().toISOString(),
    };
    const key = keys.replica(volume, copy);
    const where = copyId(copy);
    let anchors = inSync ? [] : [...holding];
    for (;;) {
      const anchor = anchors[0];
      let result;
      try {
        result = await store.txn(
          [
            stillPrimary(role),
            recorded(key),
            ...(anchor === undefined ? [] : [recorded(keys.replica(volume, anchor))]),
          ],
          [
            { type: "get", key },
            { type: "put", key, value: JSON.stringify(record) },
          ],
          [
            { type: "get", key: keys.primary(volume) },
            { type: "get", key },
            ...anchors.map((other): TxnOperation => ({ type: "get", key: keys.replica(volume, other) })),
          ],
        );
      } catch (error) {
        if (!this.options.mayRetry())
          throw new HavenError(
            "HAVEN_ERR_UNAVAILABLE",
            `cannot record the copy of ${volume} on ${where} as ${record.state}: ${errorMessage(error)}`,
          );
        await clock.sleep(RECORD_RETRY_MS);
        continue;
      }
      if (!result.succeeded) {
        const [primary, own, ...others] = result.results.map((read) => (read?.type === "get" ? read.kvs : []));
        if (primary?.[0]?.modRevision !== role.primaryRevision) {
          const message =
            `refused to record the copy on ${where} as ${record.state} at epoch ${epoch}: the volume's primary ` +
            "record changed since this engine started (another host took over, or it was handed over)";
          events.note("copy-record-refused", message, volume);
          throw new HavenError("HAVEN_ERR_STALE_EPOCH", `volume ${volume}: ${message}`);
        }
        if (own?.length === 0) {
          // The record is gone with the copy's place in the spec.
          events.note(
            "copy-record-dropped",
            `the copy on ${where} left the volume's spec: it is not recorded ${record.state} (${detail})`,
            volume,
          );
          return;
        }
        anchors = anchors.filter((_, i) => (others[i]?.length ?? 0) > 0);
        if (anchors.length > 0) continue;
        const message =
          `the copy on ${where} left the in-sync set, and the copies the engine still holds in sync ` +
          `(${holding.map(copyId).join(", ")}) left the volume's spec: writes acknowledged now would be on no copy ` +
          "the spec places, so the engine stops acknowledging and starts again from the spec's copies";
        events.note("copy-record-refused", message, volume);
        throw new HavenError("HAVEN_ERR_CONFLICT", `volume ${volume}: ${message}`);
      }
      const before = result.results[0];
      const was = before?.type === "get" ? before.kvs[0] : undefined;
      if (!inSync) events.note("replica-out-of-sync", `the copy on ${where} left the in-sync set: ${detail}`, volume);
      else if (was !== undefined && recordedOutOfSync(was.value, was.key))
        events.note("replica-in-sync", `the copy on ${where} is back in the in-sync set: ${detail}`, volume);
      return;
    }
  }
}

/** The condition that a copy's record exists: the spec places the copy (see the header). */
function recorded(key: string): Compare {
  return { key, target: "createRevision", result: "greater", value: 0 };
}

/** Whether a stored replica record says out of sync (an unreadable one does not: no event is better than a wrong one). */
function recordedOutOfSync(value: string, key: string): boolean {
  try {
    return parseReplicaRecord(value, key).state === "out-of-sync";
  } catch {
    return false;
  }
}
