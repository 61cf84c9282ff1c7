// What an engine reports about its volume: the one shape shared by `haven volume status` (table and
// --json), the engine's HTTP API and, later, the control plane. Plain data, JSON-serializable.

import type { Generations } from "../replica/generations.js";

/**
 * A copy's state as the engine sees it:
 * - connecting: not reached yet (or being retried after a fault);
 * - in-sync: takes every write, can serve reads, counts for acknowledgement;
 * - resyncing: catching up (incremental or full rebuild); takes new writes but is not yet trusted;
 * - faulted: left the in-sync set (reason says why); its missed regions are tracked;
 * - split-brain: both this copy and the volume's took writes apart; refused until resolved;
 * - refused: a foreign copy (another volume, another size, unrelated data): never used.
 */
export type ReplicaState = "connecting" | "in-sync" | "resyncing" | "faulted" | "split-brain" | "refused";

export interface ResyncProgress {
  /** incremental: only the regions missed; full: every allocated region (a rebuild). */
  readonly mode: "incremental" | "full";
  readonly doneBytes: number;
  readonly totalBytes: number;
  /** Recent copy rate, bytes per second (0 while paused or throttled to nothing). */
  readonly bytesPerSecond: number;
  /** Estimated seconds left at the recent rate; null while unknown. */
  readonly etaSeconds: number | null;
  /** The generation rule that decided the direction, for the log. */
  readonly rule: string;
}

export interface ReplicaStatus {
  readonly location: string;
  readonly local: boolean;
  readonly copyId: string | null;
  readonly state: ReplicaState;
  /** Why it is faulted, split-brain or refused; null otherwise. */
  readonly reason: string | null;
  readonly generations: Generations | null;
  /** Bytes this copy is known to be missing (0 when in sync). */
  readonly outOfSyncBytes: number;
  readonly resync: ResyncProgress | null;
  /** For split-brain: bytes each side changed since they parted (ours = the volume's in-sync copies). */
  readonly splitBrain: { readonly volumeChangedBytes: number; readonly copyChangedBytes: number } | null;
}

export interface VerifyStatus {
  readonly state: "running" | "done" | "failed";
  readonly repair: boolean;
  readonly doneBytes: number;
  readonly totalBytes: number;
  /** Regions whose checksums differ between copies, as byte ranges, with the copies that differ. */
  readonly mismatches: readonly { readonly offset: number; readonly length: number; readonly locations: string[] }[];
  readonly startedAt: string;
  readonly finishedAt: string | null;
  readonly error: string | null;
}

/** healthy: every copy in sync; degraded: serving with some copies missing; failed: no in-sync copy. */
export type VolumeState = "starting" | "healthy" | "degraded" | "resyncing" | "failed" | "stopping";

export interface VolumeStatus {
  readonly name: string;
  readonly volumeId: string;
  readonly sizeBytes: number;
  readonly regionBytes: number;
  readonly epoch: number;
  readonly state: VolumeState;
  /** The volume's generations (those of its in-sync copies). */
  readonly generations: Generations | null;
  readonly replicas: readonly ReplicaStatus[];
  readonly verify: VerifyStatus | null;
  readonly io: {
    readonly reads: number;
    readonly writes: number;
    readonly flushes: number;
    readonly bytesRead: number;
    readonly bytesWritten: number;
    readonly errors: number;
  };
  /** Where clients connect (nbd://host:port/name or nbd+unix:///name?socket=PATH). */
  readonly nbd: readonly string[];
}

/** What the HTTP API and the CLI may ask of a running engine. */
export interface EngineControl {
  status(): VolumeStatus;
  /**
   * Starts an online verify; rejects with HAVEN_ERR_CONFLICT (the API's 409) if one is running. With
   * repair, mismatching regions are resynced.
   */
  startVerify(options: { repair: boolean }): VerifyStatus;
  /**
   * Resolves a split brain by naming the copy whose data survives (a location from the status).
   * The other side of the split is rebuilt from it. Rejects (HAVEN_ERR_INVALID_REQUEST) with a reason
   * when the location is unknown or not in split brain, or when the survivor is not the serving side
   * and clients are still connected.
   */
  resolveSplitBrain(survivor: string): Promise<VolumeStatus>;
}
