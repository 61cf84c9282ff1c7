// What background work over the copies (resync and rebuild in resync.ts, verify in verify.ts) may see
// of a volume and ask of it: a narrow interface the engine implements, so these modules never import
// the engine, never touch the copies' state directly, and can be driven by a stand-in in tests. Every
// change of state they cause (a copied run, a fault, a copy joining the in-sync set) goes through a
// call here to the state's owner (copy-set.ts via engine.ts).

import type { ReplicaMetadata } from "../replica/replica-store.js";
import type { Clock } from "../util/clock.js";
import type { ByteRange, CopyView } from "./copy-set.js";
import type { RangeLocks } from "./range-locks.js";
import type { Throttle, ThrottleSettings } from "./throttle.js";

export interface ResyncSettings extends ThrottleSettings {
  /** Bytes copied per step (and per range lock). */
  readonly chunkBytes: number;
  /** How often progress is made durable on the copy. */
  readonly saveProgressMs: number;
  /** Chunks copied at once (each under its own range lock). */
  readonly parallelChunks: number;
}

export interface BackgroundAccess {
  readonly clock: Clock;
  /** Client writes take these shared; a resync or verify chunk takes its range exclusive. */
  readonly locks: RangeLocks;
  /** Shares the copies' bandwidth between background work and client I/O. */
  readonly throttle: Throttle;
  readonly resyncSettings: ResyncSettings;
  /** How long to wait before looking again for a copy to read from. */
  readonly reconnectMs: number;
  readonly sizeBytes: number;
  readonly regionBytes: number;
  log(line: string): void;

  /** The epoch every mutation carries. */
  epoch(): number;
  /** The volume's current generation (what a resync's saved progress is valid for). */
  currentGeneration(): string;
  /** False once the engine is fenced or stopping: background work ends at its next step. */
  active(): boolean;
  /** Throws the client-facing error (fenced, stopping) when the volume takes no more work. */
  checkUsable(): void;

  /** The in-sync copy reads come from, or undefined when no copy is in sync. */
  readCopy(): CopyView | undefined;
  inSyncCopies(): readonly CopyView[];
  /** Whether `copy` still has attachment `attachment` (it was not dropped or re-attached since). */
  isAttached(copy: CopyView, attachment: number): boolean;

  /**
   * `copy` failed `what` with `error`: it leaves the set receiving writes (rule 2), `ranges` recorded
   * as missed; resolves once that is on record. An error saying another engine took over (a stale
   * epoch) fences the engine as well.
   */
  fail(copy: CopyView, attachment: number, what: string, error: unknown, ranges: readonly ByteRange[]): Promise<void>;
  /** A resync copied `run` to `copy`, at the given recent rate. */
  resyncCopied(copy: CopyView, attachment: number, run: ByteRange, bytesPerSecond: number): void;
  /** What `copy` still misses, encoded as its metadata keeps it (a resync's saved progress). */
  encodeMissing(copy: CopyView): string;
  /** The copy's metadata after a save of the resync's progress. */
  noteMetadata(copy: CopyView, attachment: number, metadata: ReplicaMetadata): void;
  /** A resync finished: the copy joins the in-sync set (or is faulted if that fails). */
  markInSync(copy: CopyView, attachment: number): Promise<void>;
}
