// The engine: one volume's single writer, served as a BlockDevice (so the NBD front serves it like a
// file) over one to four copies, local and remote alike. This file is the façade: it does the I/O and
// the sequencing, over pieces that each own one concern:
// - copy-set.ts owns the copies' state (ports, in-sync set, epoch, generations, change bitmaps,
//   fenced) and asserts its invariants; start-plan.ts decides, purely, how a start goes;
// - metadata-saves.ts queues the volume's metadata saves; copy-records.ts the control plane's records;
// - resync.ts and verify.ts run in the background through background-access.ts;
// - send-order.ts orders requests to copies; activity-log.ts, range-locks.ts, throttle.ts as named;
//   port-use.ts counts the reads in flight on each copy's port.
// The copies are those given at construction; a running volume gains and loses copies with addCopy()
// and removeCopy() (a new copy is resynced before it joins the in-sync set; a copy leaves after a short
// quiesce of writes, never the last in-sync one).
// The rules of DESIGN.md it keeps:
// - rule 1: a write completes only when every in-sync copy applied it (FUA: made it durable); FLUSH
//   completes only when every in-sync copy flushed;
// - rule 2: a copy that fails leaves the in-sync set, and the volume moves to a new generation with a
//   change bitmap since the old one, persisted on the remaining copies (and recorded by the control
//   plane) before the failed write completes; the copy rejoins after an incremental resync of exactly
//   those regions;
// - rule 3: the activity log is persisted before writes go out, and resynced after a crash;
// - rule 4: every mutation carries the engine's epoch; a copy answering "stale epoch" fences the engine
//   (only that: any other error of a copy, a read-only disk included, faults that copy); a fenced
//   engine, or one the control plane's completion gate no longer allows, acknowledges nothing;
// - rule 5: copies are compared by generations when they (re)appear; split brain is refused and
//   reported, and only an explicit choice of survivor resolves it; a start from a subset of the copies
//   needs the metadata's proof that the missing ones hold nothing newer (start-plan.ts).

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { writeDataLength, type BlockDevice, type BlockDeviceCapabilities, type Extent } from "../block/device.js";
import type { WriteData, WriteOptions, ZeroOptions } from "../block/device.js";
import { HavenError, errorMessage, hasCode } from "../core/errors.js";
import { decodeBitmap } from "../replica/bitmap-codec.js";
import type { Generations } from "../replica/generations.js";
import type { CreateOptions, ReplicaOpener, ReplicaPort } from "../replica/port.js";
import type { RegionBitmap } from "../replica/region-bitmap.js";
import { ACTIVITY_EXTENT_BYTES, type ReplicaMetadata } from "../replica/replica-store.js";
import { systemClock, type Clock } from "../util/clock.js";
import { formatBytes } from "../util/units.js";
import { ActivityLog, DEFAULT_ACTIVITY_LOG_EXTENTS } from "./activity-log.js";
import type { BackgroundAccess, ResyncSettings } from "./background-access.js";
import { CopyRecords } from "./copy-records.js";
import { CopySet, orInto, type ByteRange, type CopyView } from "./copy-set.js";
import { SaveQueue } from "./metadata-saves.js";
import { PortUse } from "./port-use.js";
import { RangeLocks } from "./range-locks.js";
import { runResync } from "./resync.js";
import { sendRemoteFirst, settleInTurn } from "./send-order.js";
import { foreign, planStart, type AdoptPlan, type CopyAtStart, type DegradedStart } from "./start-plan.js";
import type { EngineControl, VerifyStatus, VolumeStatus } from "./status.js";
import { decideCopy, type CopyDecision } from "./sync-decision.js";
import { Throttle } from "./throttle.js";
import { runVerify } from "./verify.js";

export const MAX_REPLICAS = 4;
/**
 * Default writeback interval. Each one is an fdatasync on every copy, which costs client throughput
 * while it runs (measured: a 1 s interval took two-copy 1 MiB writes from about 1050 to 620 MB/s);
 * 5 s bounds what a dropped copy must resync to a few seconds of writes at a fraction of that cost.
 */
export const DEFAULT_WRITEBACK_MS = 5000;
const DEFAULT_RECONNECT_MS = 2000;
const DEFAULT_STARTUP_WAIT_MS = 10_000;
/**
 * How long removeCopy() waits for client reads in flight on the removed copy before closing its port
 * anyway. A read of a working disk or a remote copy (which has its own request timeout) ends well
 * within it; one still running after it is stuck on a failing disk.
 */
const REMOVED_COPY_READS_WAIT_MS = 30_000;

export interface EngineOptions {
  readonly name: string;
  readonly locations: readonly string[];
  readonly opener: ReplicaOpener;
  /** Needed to create a new volume; checked against existing copies. */
  readonly sizeBytes?: number;
  readonly regionBytes?: number;
  /** Default: one above the highest epoch any reachable copy has seen. */
  readonly epoch?: number;
  /** Names the copy whose data survives a split brain found at start. */
  readonly survivor?: string;
  readonly clock?: Clock;
  readonly log?: (line: string) => void;
  readonly resync?: Partial<ResyncSettings>;
  /** How often unreachable or faulted copies are retried. */
  readonly reconnectMs?: number;
  /** How long start waits for every copy to be reachable. */
  readonly startupWaitMs?: number;
  /**
   * The caller vouches that a reachable copy holds every acknowledged write (the control plane does,
   * from etcd's record of the copies): start even if some copies stay unreachable, without the
   * metadata's proof. Unsafe otherwise: an unreachable copy may hold writes the others lack, and would
   * come back as a split brain.
   */
  readonly allowDegradedStart?: boolean;
  /**
   * Locations of copies the caller knows hold every acknowledged write (the control plane's in-sync
   * records): start even if some copies stay unreachable or absent, as allowDegradedStart does, but
   * only when one of these copies opened (the volume then continues from it, or from a copy it is in
   * sync with or behind). Without one of them, the start waits for every copy as it would without.
   */
  readonly vouchedCopies?: readonly string[];
  /**
   * Start without copies that stay unreachable (absent ones are created empty and rebuilt) when the
   * copies' metadata shows they were left behind (start-plan.ts); refused with HAVEN_ERR_UNSAFE_START
   * otherwise (`haven volume serve --degraded-start`).
   */
  readonly degradedStart?: boolean;
  /**
   * Start without copies that stay unreachable even when nothing shows they hold no newer writes
   * (`--force`): logged as a warning; a write only a missing copy took is lost.
   */
  readonly force?: boolean;
  readonly activityLogExtents?: number;
  /**
   * Written data is flushed on every copy this long after it was written, even if the client never
   * asks: a copy that drops out then misses only its last moments of writes, not everything since
   * the client's last flush (0: only client flushes).
   */
  readonly writebackMs?: number;
  /** Generation ids (16 hex digits); injected by the simulation for reproducible runs. */
  readonly newId?: () => string;
  /**
   * The control plane's record of which copies hold every acknowledged write. A copy leaving the
   * in-sync set is recorded before any write it missed completes (a failing record fences the
   * engine: writes without the copy could then not be acknowledged safely); a copy joining it is
   * recorded after it joined. A copy that leaves when nothing more can be acknowledged keeps its
   * record: under a fence, and the last copy in sync (until another copy joins, which records it
   * first). A start records the copies in sync before those it left behind.
   */
  readonly recordCopyState?: (location: string, inSync: boolean, detail: string) => Promise<void>;
  /**
   * Asked with a fresh clock read before each write, trim, zeroing or flush completes: true means
   * complete now; false means this host may no longer be primary (its cluster lease could expire
   * elsewhere), and the engine fences itself instead of acknowledging; a promise means the lease
   * cannot be proven right now (etcd unreachable, the lease not yet expired): the completion waits,
   * and is acknowledged if the promise resolves true, or fenced and failed if false.
   */
  readonly completionGate?: () => boolean | Promise<boolean>;
}

export const DEFAULT_RESYNC: ResyncSettings = {
  maxBytesPerSecond: 1024 * 1024 * 1024,
  busyBytesPerSecond: 64 * 1024 * 1024,
  busyWindowMs: 200,
  // 4 MiB: a rebuild between local copies runs at about the disk's rate with it (0.83x-0.96x of fio's
  // sequential write rate in bench/replication) and at 0.75x-0.82x with 1 MiB chunks.
  chunkBytes: 4 * 1024 * 1024,
  saveProgressMs: 2000,
  parallelChunks: 8,
};

type Op = "WRITE" | "TRIM" | "WRITE_ZEROES";

/** What start found at each configured location. */
interface Found {
  readonly ports: Map<number, ReplicaPort>;
  readonly absent: Set<number>;
  readonly reasons: Map<number, string>;
}

export class VolumeEngine implements BlockDevice, EngineControl {
  readonly capabilities: BlockDeviceCapabilities = {
    readOnly: false,
    canTrim: true,
    canWriteZeroes: true,
    canFastZero: false,
    canMultiConn: true,
    rotational: false,
  };
  readonly clock: Clock;
  readonly locks = new RangeLocks();
  readonly throttle: Throttle;
  readonly resyncSettings: ResyncSettings;
  nbdUris: string[] = [];
  readonly io = { reads: 0, writes: 0, flushes: 0, bytesRead: 0, bytesWritten: 0, errors: 0 };

  private readonly log: (line: string) => void;
  private readonly newId: () => string;
  private readonly copies: CopySet;
  /** The closes of refused copies' handles still in progress, by location. */
  private readonly refusedClosing = new Map<string, Promise<unknown>>();
  private readonly saves: SaveQueue;
  private readonly records: CopyRecords;
  private readonly access: BackgroundAccess;
  private readonly activityLog: ActivityLog;
  private verifyStatus: VerifyStatus | null = null;
  /** Mutations sent to the copies; never fewer than those acknowledged (io.writes). */
  private mutationsSent = 0;
  private stopping = false;
  private starting = true;
  /**
   * Whether copies leaving the in-sync set are recorded as they leave: from the end of start() on, which
   * records every copy's state itself. Before, nothing was acknowledged, and a start that fails leaves
   * the records as the last engine left them: the copy the volume was last in sync on stays recorded in
   * sync, and the next start continues from it (a failed start must not take that away).
   */
  private recordingLeaves = false;
  /** The last copy to leave the in-sync set, while its leaving is not on record (see recordLeaving). */
  private unrecordedLeave: { readonly location: string; readonly reason: string } | undefined;
  private reconnectTimer: { cancel(): void } | undefined;
  private writebackTimer: { cancel(): void } | undefined;
  private readonly background = new Set<Promise<void>>();
  /** Each copy's resync under way (tracked), so a copy being removed is closed only after it ended. */
  private readonly resyncs = new Map<CopyView, Promise<void>>();
  /** The reconnect loop's attempts to open a copy, under way. */
  private readonly reaching = new Map<CopyView, Promise<void>>();
  /** Client reads (and block status) in flight on each copy's port. */
  private readonly portUse = new PortUse<CopyView>();
  /** Locations being added (addCopy() under way), counted as copies. */
  private readonly adding = new Set<string>();
  /** The save recording the last copy that left, while it is under way. */
  private transition: Promise<void> | null = null;

  constructor(readonly options: EngineOptions) {
    if (options.locations.length < 1 || options.locations.length > MAX_REPLICAS)
      throw new HavenError(
        "HAVEN_ERR_USAGE",
        `a volume has 1 to ${MAX_REPLICAS} replicas, not ${options.locations.length}`,
      );
    if (new Set(options.locations).size !== options.locations.length)
      throw new HavenError("HAVEN_ERR_USAGE", "the same replica location is given twice");
    this.clock = options.clock ?? systemClock;
    this.log = options.log ?? ((line) => process.stderr.write(`${line}\n`));
    this.newId = options.newId ?? (() => randomBytes(8).toString("hex"));
    this.resyncSettings = { ...DEFAULT_RESYNC, ...options.resync };
    this.throttle = new Throttle(this.clock, this.resyncSettings);
    this.copies = new CopySet(options.locations, this.newId, this.log);
    this.saves = new SaveQueue(() => this.saveOnce());
    this.records = new CopyRecords(options.recordCopyState);
    this.activityLog = new ActivityLog(
      ACTIVITY_EXTENT_BYTES,
      options.activityLogExtents ?? DEFAULT_ACTIVITY_LOG_EXTENTS,
    );
    this.access = this.backgroundAccess();
  }

  // ---- what others may read ----------------------------------------------------------------------

  get size(): number {
    return this.copies.sizeBytes;
  }
  get epoch(): number {
    return this.copies.epoch;
  }
  /** Why the engine stopped completing I/O (fenced, crashed), or null. */
  get fenced(): string | null {
    return this.copies.fenced;
  }
  get volumeId(): string {
    return this.copies.volumeId;
  }
  get regionBytes(): number {
    return this.copies.regionBytes;
  }
  get generations(): Generations {
    return this.copies.generations;
  }
  get isStopping(): boolean {
    return this.stopping;
  }

  // ---- start and stop ----------------------------------------------------------------------------

  /** Opens the copies, follows the start plan (start-plan.ts), and makes the volume writable. */
  async start(): Promise<void> {
    const found = await this.openCopies();
    const generationId = this.newId();
    try {
      let plan = planStart(this.startInput(found, generationId));
      if (plan.kind === "create") {
        // A new volume: every copy is created empty, and empty copies are in sync with each other.
        for (const index of found.absent) {
          const location = this.options.locations[index]!;
          found.ports.set(index, await this.options.opener(location, this.options.name, plan.create));
        }
        found.absent.clear();
        this.log(`created volume ${this.options.name} (${plan.create.volumeId}) with ${found.ports.size} copies`);
        plan = planStart(this.startInput(found, generationId));
        assert.equal(plan.kind, "adopt", "a volume just created is adopted");
      }
      await this.adopt(plan as AdoptPlan, found.ports);
    } catch (error) {
      await closeAll(found.ports.values());
      throw error;
    }
    // The control plane learns each copy's state before the first write is acknowledged; a copy this
    // start left behind (unreachable, older) must be on record as out of sync by then. A copy leaving
    // from now on is recorded after its state here (records of one copy land in order).
    // The copies in sync first: then the volume always has a copy recorded in sync, even while the
    // copy it was recorded in sync on until now (left behind by this start) is recorded out of sync.
    this.recordingLeaves = true;
    const states = this.copies.copies.map((copy) => ({ copy, inSync: copy.state === "in-sync" }));
    const record = (inSync: boolean): Promise<unknown> =>
      Promise.all(
        states
          .filter((state) => state.inSync === inSync)
          .map(({ copy }) => this.records.record(copy.location, inSync, copy.state)),
      );
    try {
      await record(true);
      await record(false);
    } catch (error) {
      await this.stop();
      throw new HavenError(
        "HAVEN_ERR_UNAVAILABLE",
        `cannot record the copies' states in the cluster: ${errorMessage(error)}`,
      );
    }
    this.starting = false;
    this.scheduleReconnect();
  }

  /** Opens every copy it can, waiting up to startupWaitMs for those that do not answer. */
  private async openCopies(): Promise<Found> {
    const found: Found = { ports: new Map(), absent: new Set(), reasons: new Map() };
    const count = this.options.locations.length;
    const deadline = this.clock.now() + (this.options.startupWaitMs ?? DEFAULT_STARTUP_WAIT_MS);
    for (;;) {
      await Promise.all(
        this.options.locations.map(async (location, index) => {
          if (found.ports.has(index) || found.absent.has(index)) return;
          try {
            found.ports.set(index, await this.openAtSize(location, undefined, this.sizeAtStart()));
          } catch (error) {
            if (hasCode(error, "HAVEN_ERR_NOT_FOUND")) found.absent.add(index);
            else found.reasons.set(index, errorMessage(error));
          }
        }),
      );
      if (found.ports.size + found.absent.size === count || this.clock.now() >= deadline) return found;
      await this.clock.sleep(Math.min(500, this.options.reconnectMs ?? DEFAULT_RECONNECT_MS));
    }
  }

  private startInput(found: Found, newGenerationId: string): Parameters<typeof planStart>[0] {
    const options = this.options;
    const vouched =
      options.allowDegradedStart === true ||
      (options.vouchedCopies ?? []).some((location) => found.ports.has(options.locations.indexOf(location)));
    const degraded: DegradedStart = options.force
      ? "forced"
      : vouched
        ? "vouched"
        : options.degradedStart
          ? "if-proven"
          : "refuse";
    const copies = options.locations.map((location, index): CopyAtStart => {
      const port = found.ports.get(index);
      if (port !== undefined) return { location, kind: "opened", local: port.local, metadata: port.metadata };
      if (found.absent.has(index)) return { location, kind: "absent" };
      return { location, kind: "unreachable", reason: found.reasons.get(index) ?? "no answer" };
    });
    return {
      name: options.name,
      copies,
      ...(options.sizeBytes !== undefined && { sizeBytes: options.sizeBytes }),
      ...(options.regionBytes !== undefined && { regionBytes: options.regionBytes }),
      ...(options.epoch !== undefined && { epoch: options.epoch }),
      ...(options.survivor !== undefined && { survivor: options.survivor }),
      degraded,
      newGenerationId,
      newVolumeId: randomBytes(8).toString("hex"),
    };
  }

  /** Follows an adopt plan: attaches the copies, fences them at the new epoch, saves, starts resyncs. */
  private async adopt(plan: AdoptPlan, ports: Map<number, ReplicaPort>): Promise<void> {
    const copies = this.copies;
    copies.identify({ volumeId: plan.volumeId, sizeBytes: plan.sizeBytes, regionBytes: plan.regionBytes });
    copies.takeEpoch(plan.epoch);
    copies.startGenerations(plan.previous, plan.generations, plan.changedSince);
    for (const note of plan.notes) this.log(note);
    const inSync: CopyView[] = [];
    const toResync: { copy: CopyView; decision: CopyDecision }[] = [];
    const toCreate: CopyView[] = [];
    assert.equal(plan.copies.length, copies.copies.length, "the plan covers the configured copies, in order");
    plan.copies.forEach((step, index) => {
      const copy = copies.copies[index]!;
      const port = ports.get(index);
      switch (step.action) {
        case "refused":
          copies.noteMetadata(copy, null, port!.metadata);
          copies.refuse(copy, "refused", step.reason, null);
          ports.delete(index);
          void port!.close();
          return;
        case "away":
          copies.noteUnreachable(copy, step.reason);
          return;
        case "create":
          copies.noteUnreachable(copy, "no copy of the volume at this location");
          toCreate.push(copy);
          return;
        case "in-sync":
        case "resync":
          copies.attach(copy, port!);
          this.watchLoss(copy);
          if (step.action === "in-sync") inSync.push(copy);
          else toResync.push({ copy, decision: step.decision });
      }
    });
    // Every copy reached takes the new epoch (so a dead engine's late requests are refused everywhere),
    // and what a crashed writer left in the copies' caches is made durable before the log is emptied.
    await Promise.all(
      [...ports.values()].map(async (port) => {
        await port.flush();
        await port.updateMetadata(plan.epoch, {});
      }),
    );
    for (const copy of inSync) copies.setState(copy, "in-sync", null);
    await this.saves.request();
    if (copies.inSync().length === 0) throw new HavenError("HAVEN_ERR_IO", "no copy could be brought in sync");
    this.log(
      `volume ${this.options.name} (${plan.volumeId}, ${plan.sizeBytes} bytes) at epoch ${plan.epoch}, ` +
        `generation ${plan.generations.current}; in sync: ${inSync.map((c) => c.location).join(", ")}`,
    );
    for (const copy of toCreate) await this.createCopy(copy);
    for (const { copy, decision } of toResync) this.beginResync(copy, decision, copy.lastMetadata!);
  }

  /** Flushes every copy, empties the activity log, records a clean shutdown, and closes the copies. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true; // new client I/O is refused; resync and verify stop at their next chunk
    this.reconnectTimer?.cancel();
    this.writebackTimer?.cancel();
    const release = await this.locks.acquire(0, Number.MAX_SAFE_INTEGER, true); // writes in flight finish
    if (!this.copies.fenced && this.copies.inSync().length > 0) {
      // Durable everywhere first: only then may the activity log be emptied.
      await this.flushCopies().catch(() => undefined);
      this.activityLog.clearIdle();
      await this.saves.request().catch(() => undefined);
    }
    this.copies.retireAttachments();
    release();
    await Promise.allSettled([...this.background]);
    await closeAll(this.copies.close());
  }

  close(): Promise<void> {
    return this.stop();
  }

  /**
   * For the simulation: the writer dies on the spot. Nothing more is sent, saved or closed; what the
   * copies received so far is what they keep.
   */
  crash(): void {
    this.stopping = true;
    this.copies.fence("crashed");
    this.reconnectTimer?.cancel();
    this.writebackTimer?.cancel();
    this.copies.retireAttachments();
  }

  // ---- client I/O (BlockDevice) ------------------------------------------------------------------

  async read(offset: number, target: Buffer): Promise<void> {
    this.checkUsable();
    this.throttle.noteClientIo();
    for (;;) {
      const copy = this.copies.readCopy();
      if (copy === undefined) throw this.noCopies("READ");
      const attachment = copy.attachment;
      const port = copy.port!;
      let failure: { error: unknown } | undefined;
      const done = this.portUse.enter(copy);
      try {
        if (port.readInto) await port.readInto(offset, target);
        else (await port.read(offset, target.length)).copy(target);
      } catch (error) {
        failure = { error };
      } finally {
        done();
      }
      if (failure === undefined) {
        this.io.reads++;
        this.io.bytesRead += target.length;
        return;
      }
      const { error } = failure;
      if (isRangeError(error)) throw error;
      this.checkFence(error);
      await this.fault(copy, attachment, `read failed: ${errorMessage(error)}`, [{ offset, length: target.length }]);
    }
  }

  zeroCopySource(offset: number, length: number): { fd: number; position: number } | undefined {
    const copy = this.copies.readCopy();
    if (this.copies.fenced || copy === undefined || !copy.port?.zeroCopySource) return undefined;
    return copy.port.zeroCopySource(offset, length);
  }

  write(offset: number, data: WriteData, options?: WriteOptions): Promise<void> {
    return this.mutate("WRITE", offset, writeDataLength(data), options?.fua === true, (port) =>
      port.write(this.copies.epoch, offset, data, options?.fua === true),
    );
  }

  trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    return this.mutate("TRIM", offset, length, options?.fua === true, (port) =>
      port.trim(this.copies.epoch, offset, length, options?.fua === true),
    );
  }

  writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    if (options?.fastOnly)
      return Promise.reject(
        new HavenError("HAVEN_ERR_NOT_SUPPORTED", "fast zeroing is not offered by replicated volumes"),
      );
    return this.mutate("WRITE_ZEROES", offset, length, options?.fua === true, (port) =>
      port.writeZeroes(this.copies.epoch, offset, length, options?.fua === true),
    );
  }

  async flush(): Promise<void> {
    this.checkUsable();
    this.throttle.noteClientIo();
    await this.flushVolume(false);
  }

  /** The writeback timer's flush: a client's FLUSH without the client, the copies one at a time. */
  private async writebackFlush(): Promise<void> {
    this.checkUsable();
    await this.flushVolume(true);
  }

  private async flushVolume(oneAtATime: boolean): Promise<void> {
    await this.flushCopies(oneAtATime);
    const gate = this.acknowledge();
    if (gate) await gate;
    this.io.flushes++;
  }

  /**
   * Flushes every copy that takes writes; a copy failing it is faulted. EIO if no in-sync copy flushed.
   * `oneAtATime`: the copies one after the other (background writeback, which nobody waits for): copies
   * sharing a disk then do not flush against each other. Measured with two local copies on one disk
   * under 4 KiB random writes: 25k-29k IOPS flushing together, 32k-33k one at a time. A client's FLUSH
   * goes to every copy at once: its latency is the slowest copy's, not their sum.
   */
  private async flushCopies(oneAtATime = false): Promise<void> {
    const tickets = this.copies.beginFlush(this.copies.receiving(), this.locks.sharedRanges());
    const results = oneAtATime
      ? await settleInTurn(
          tickets.map(
            ({ copy }) =>
              () =>
                copy.port!.flush(),
          ),
        )
      : await Promise.allSettled(tickets.map(({ copy }) => copy.port!.flush()));
    const faults: Promise<void>[] = [];
    try {
      results.forEach((result, i) => {
        const ticket = tickets[i]!;
        this.copies.endFlush(ticket, result.status === "fulfilled");
        if (result.status === "fulfilled") return;
        this.checkFence(result.reason);
        faults.push(this.fault(ticket.copy, ticket.attachment, `flush failed: ${errorMessage(result.reason)}`, []));
      });
    } catch (error) {
      handledAnyway(faults);
      throw error;
    }
    await Promise.all(faults);
    if (this.transition) await this.transition;
    let flushedInSync = 0;
    for (let i = 0; i < tickets.length; i++)
      if (results[i]!.status === "fulfilled" && this.copies.stillInSync(tickets[i]!)) flushedInSync++;
    if (flushedInSync === 0) throw this.noCopies("FLUSH");
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.checkUsable();
    const copy = this.copies.readCopy();
    if (copy === undefined) throw this.noCopies("BLOCK_STATUS");
    const done = this.portUse.enter(copy);
    try {
      return await copy.port!.blockStatus(offset, length);
    } catch (error) {
      if (isRangeError(error)) throw error;
      return [{ length, hole: false, zero: false }];
    } finally {
      done();
    }
  }

  async cache(): Promise<void> {}

  /** Writes, trims and zeroing: to every copy that takes writes, under the rules at the top. */
  private async mutate(
    op: Op,
    offset: number,
    length: number,
    fua: boolean,
    send: (port: ReplicaPort) => Promise<void>,
  ): Promise<void> {
    this.checkUsable();
    if (offset + length > this.copies.sizeBytes)
      throw new HavenError(
        "HAVEN_ERR_NO_SPACE",
        `${op} of ${length} bytes at ${offset} is past the volume's end (${this.copies.sizeBytes})`,
      );
    this.throttle.noteClientIo();
    const release = this.locks.tryAcquire(offset, length, false) ?? (await this.locks.acquire(offset, length, false));
    const logChange = this.activityLog.pin(offset, length, 3);
    try {
      // Extents leave the log only once what was written to them is durable on every copy.
      if (logChange.changed) await this.saves.request();
      if (logChange.evicted.length > 0) {
        await this.flush();
        this.activityLog.forget(logChange.evicted);
      }
      this.checkUsable();
      if (this.copies.inSync().length === 0) throw this.noCopies(op);
      const sent = this.copies.beginMutation(offset, length, fua);
      this.mutationsSent++;
      const results = await Promise.allSettled(sendRemoteFirst(sent, send));
      const faults: Promise<void>[] = [];
      try {
        results.forEach((result, i) => {
          const { copy, attachment } = sent[i]!;
          if (result.status === "fulfilled") return;
          if (isRangeError(result.reason)) throw result.reason;
          this.checkFence(result.reason);
          faults.push(
            this.fault(copy, attachment, `${op} failed: ${errorMessage(result.reason)}`, [{ offset, length }]),
          );
        });
      } catch (error) {
        handledAnyway(faults);
        throw error;
      }
      await Promise.all(faults);
      if (this.transition) await this.transition;
      // Counted after the faults settled: a copy that applied the write but was lost meanwhile
      // does not hold it for the client any more.
      let appliedInSync = 0;
      for (let i = 0; i < sent.length; i++)
        if (results[i]!.status === "fulfilled" && this.copies.stillInSync(sent[i]!)) appliedInSync++;
      if (appliedInSync === 0) throw this.noCopies(op);
      const gate = this.acknowledge();
      if (gate) await gate;
      this.io.writes++;
      assert.ok(this.io.writes <= this.mutationsSent, "more mutations acknowledged than sent");
      this.io.bytesWritten += op === "WRITE" ? length : 0;
      if (!fua) this.scheduleWriteback();
    } catch (error) {
      this.io.errors++;
      throw error;
    } finally {
      this.activityLog.unpin(offset, length);
      release();
    }
  }

  /**
   * The last check before a mutation or flush completes to the client (rule 4): the control plane
   * may have withdrawn this host's right to complete, and a fenced engine acknowledges nothing.
   */
  private acknowledge(): Promise<void> | undefined {
    const verdict = this.options.completionGate?.() ?? true;
    if (typeof verdict === "boolean") return this.applyCompletionGate(verdict);
    // The lease cannot be proven now: the completion waits (keeping its range lock) for the verdict.
    return verdict.then(
      (mayComplete) => this.applyCompletionGate(mayComplete),
      () => this.applyCompletionGate(false),
    );
  }

  private applyCompletionGate(mayComplete: boolean): undefined {
    if (!mayComplete) this.fence("this host lost its cluster lease");
    this.checkUsable();
    assert.equal(this.copies.fenced, null, "a fenced engine acknowledges nothing");
    return undefined;
  }

  private scheduleWriteback(): void {
    const delay = this.options.writebackMs ?? DEFAULT_WRITEBACK_MS;
    if (delay <= 0 || this.writebackTimer || this.stopping) return;
    this.writebackTimer = this.clock.schedule(delay, () => {
      this.writebackTimer = undefined;
      if (this.stopping || this.copies.fenced) return;
      this.track(
        this.writebackFlush().catch((error: unknown) => this.log(`background flush failed: ${errorMessage(error)}`)),
      );
    });
  }

  // ---- faults --------------------------------------------------------------------------------------

  /**
   * Takes a copy out of the set that receives writes (rule 2; copy-set.ts leave()). The volume's new
   * generation is persisted on the remaining in-sync copies, and the copy's leaving recorded by the
   * control plane, before this resolves; until then no write completes (`transition`).
   */
  private async fault(copy: CopyView, attachment: number, reason: string, ranges: readonly ByteRange[]): Promise<void> {
    const left = this.copies.leave(copy, attachment, reason, ranges, this.locks.sharedRanges());
    if (left === null) return this.saves.settled();
    void left.port?.close();
    this.log(`volume now at generation ${this.copies.generations.current} without ${copy.location}`);
    this.scheduleReconnect();
    const saved = Promise.all([this.saves.request(), this.recordLeaving(copy.location, reason)]).then(() => undefined);
    // Until this is on record, no write may complete: a write sent only to the remaining copies
    // would otherwise be acknowledged while the copies still claim to be in sync with the one that left.
    // It covers the transitions still under way too: with two copies leaving at once, a write must wait
    // for both records, not the later one's alone (found by the control-plane simulation).
    const transition = Promise.all([this.transition, saved.catch(() => undefined)]).then(() => undefined);
    this.transition = transition;
    void transition.then(() => {
      if (this.transition === transition) this.transition = null;
    });
    await saved;
  }

  /**
   * fault() for a copy lost outside any client request (a dropped connection, a failed metadata save):
   * nobody waits for it, and if the record of the copy leaving fails, fault() has fenced the engine
   * already, so the failure is logged here rather than left unhandled.
   */
  private faultInBackground(copy: CopyView, attachment: number, reason: string): void {
    this.fault(copy, attachment, reason, []).catch((error: unknown) =>
      this.log(`${copy.location}: recording that it left failed: ${errorMessage(error)}`),
    );
  }

  /** The control plane's record that a copy left (see recordCopyState); a failure fences the engine. */
  private async recordLeaving(location: string, reason: string): Promise<void> {
    // The record is what lets a write the copy misses complete. None completes after a fence, nor while
    // no copy is in sync: the last copy to leave holds every acknowledged write, and its in-sync record
    // stays true until another copy joins (markInSync records its leaving first) or it comes back
    // (rejoinAsLast). Written out of sync at once, it would only hide which copy holds the volume's
    // data, from a failover and from the next start (which, with no copy recorded in sync, waits for
    // every copy, and a copy still to be built never comes).
    if (!this.records.enabled || !this.recordingLeaves) return;
    if (this.copies.fenced !== null) {
      this.log(`${location} left the in-sync set of a fenced engine: its record stays as it is`);
      return;
    }
    if (this.copies.inSync().length === 0) {
      // The first to leave with none in sync is the last that was in sync; any other was not.
      if (this.unrecordedLeave === undefined)
        this.log(`${location} was the last copy in sync: its in-sync record stays until another copy joins`);
      this.unrecordedLeave ??= { location, reason };
      return;
    }
    await this.recordLeft(location, reason);
  }

  /** The record that a copy left the in-sync set; a failure fences the engine. */
  private async recordLeft(location: string, reason: string): Promise<void> {
    try {
      await this.records.record(location, false, reason);
    } catch (error) {
      this.fence(`cannot record ${location} as out of sync in the cluster: ${errorMessage(error)}`);
      throw error;
    }
  }

  /**
   * One metadata save (the SaveQueue runs them one at a time): the volume's metadata on every in-sync
   * copy. A copy failing it is faulted, and the save repeats until it held on every copy still in sync.
   */
  private async saveOnce(): Promise<void> {
    for (;;) {
      const targets = this.copies.inSync().map((copy) => ({ copy, attachment: copy.attachment }));
      if (targets.length === 0) return;
      const patch = this.copies.volumePatch(this.activityLog.extents);
      this.activityLog.saving(patch.activityLog ?? []);
      const epoch = this.copies.epoch;
      const results = await Promise.allSettled(targets.map(({ copy }) => copy.port!.updateMetadata(epoch, patch)));
      const failed = results.flatMap((result, i) => {
        const { copy, attachment } = targets[i]!;
        if (result.status === "fulfilled") {
          this.copies.noteMetadata(copy, attachment, result.value);
          return [];
        }
        this.checkFence(result.reason, false);
        return [{ copy, attachment, reason: errorMessage(result.reason) }];
      });
      if (failed.length < targets.length) this.activityLog.markPersisted(patch.activityLog ?? []);
      if (failed.length === 0) return;
      for (const { copy, attachment, reason } of failed) {
        // Not awaited: this loop is the save the fault waits for; it repeats below.
        this.faultInBackground(copy, attachment, `metadata save failed: ${reason}`);
      }
    }
  }

  // ---- copies coming and going -------------------------------------------------------------------------

  private watchLoss(copy: CopyView): void {
    const attachment = copy.attachment;
    copy.port!.onLost = (error) => {
      if (this.copies.isAttached(copy, attachment))
        this.faultInBackground(copy, attachment, `connection lost: ${errorMessage(error)}`);
    };
  }

  private scheduleReconnect(): void {
    if (this.stopping || this.starting || this.reconnectTimer) return;
    const due = this.copies.copies.some((c) => c.state === "connecting" || c.state === "faulted");
    if (!due) return;
    this.reconnectTimer = this.clock.schedule(this.options.reconnectMs ?? DEFAULT_RECONNECT_MS, () => {
      this.reconnectTimer = undefined;
      this.track(this.reconnect());
    });
  }

  private async reconnect(): Promise<void> {
    const due = this.copies.copies.filter(
      (c) => (c.state === "connecting" || c.state === "faulted") && c.port === undefined,
    );
    await Promise.all(
      due.map(async (copy) => {
        const attempt = this.reconnectOne(copy);
        this.reaching.set(copy, attempt);
        await attempt;
        if (this.reaching.get(copy) === attempt) this.reaching.delete(copy);
      }),
    );
    this.scheduleReconnect();
  }

  private async reconnectOne(copy: CopyView): Promise<void> {
    const attachment = copy.attachment;
    let port: ReplicaPort;
    try {
      port = await this.openAtSize(copy.location, this.createOptions(), this.copies.sizeBytes);
    } catch (error) {
      if (copy.reason === null || !copy.reason.includes(errorMessage(error)))
        this.log(`${copy.location}: still unreachable: ${errorMessage(error)}`);
      this.copies.noteUnreachable(copy, errorMessage(error));
      return;
    }
    // A copy removed meanwhile had its attachment retired: its port is closed, never attached.
    if (this.stopping || !this.copies.isAttached(copy, attachment) || this.copies.fenced) {
      await port.close();
      return;
    }
    this.attachReturning(copy, port);
  }

  /**
   * The size a starting engine grows the copies it opens to: the one it was given (the control plane's
   * volume spec), when it was also given its epoch (the control plane's engine, which may write); 0
   * (grow nothing) otherwise.
   */
  private sizeAtStart(): number {
    return this.options.epoch === undefined ? 0 : (this.options.sizeBytes ?? 0);
  }

  /**
   * Opens the copy at `location`, and grows it first to `sizeBytes` when it is smaller (haven volume
   * resize grew the volume while the copy was away, or a crash came between growing the copies; see
   * replica/grow.ts): a copy is used at the volume's size or not at all, so every copy has grown before
   * the engine serves, or lets a returning copy rejoin, at the new size. Copies of another volume are
   * left as they are (refused later); `sizeBytes` 0 grows nothing. A copy that cannot grow is closed
   * and the error thrown, as if it were unreachable: the engine tries it again later.
   */
  private async openAtSize(
    location: string,
    create: CreateOptions | undefined,
    sizeBytes: number,
  ): Promise<ReplicaPort> {
    const port = await this.options.opener(location, this.options.name, create);
    const metadata = port.metadata;
    const volumeId = this.copies.volumeId;
    if (metadata.sizeBytes >= sizeBytes || (volumeId !== "" && metadata.volumeId !== volumeId)) return port;
    try {
      if (port.grow === undefined)
        throw new HavenError(
          "HAVEN_ERR_NOT_SUPPORTED",
          `${location}: this copy cannot grow to ${formatBytes(sizeBytes)}`,
        );
      const epoch = this.copies.volumeId === "" ? this.options.epoch! : this.copies.epoch;
      await port.grow(epoch, sizeBytes);
      this.log(`${location}: grew the copy from ${formatBytes(metadata.sizeBytes)} to ${formatBytes(sizeBytes)}`);
      return port;
    } catch (error) {
      await port.close();
      throw error;
    }
  }

  private createOptions(): { volumeId: string; sizeBytes: number; regionBytes: number } {
    const copies = this.copies;
    return { volumeId: copies.volumeId, sizeBytes: copies.sizeBytes, regionBytes: copies.regionBytes };
  }

  /** A copy that was away is back: compare generations and resync, or refuse it. */
  private attachReturning(copy: CopyView, port: ReplicaPort): void {
    if (this.copies.rejoinAsLast(copy, port)) {
      this.unrecordedLeave = undefined;
      this.watchLoss(copy);
      this.log(`${copy.location}: the last in-sync copy is back unchanged; the volume serves from it again`);
      this.saves.request().catch((error: unknown) => this.log(`metadata save failed: ${errorMessage(error)}`));
      // Its record says in sync unless an engine before this one recorded it out of sync when it left;
      // without this record no copy of the volume would then be recorded in sync, and a failover could
      // promote nothing (found by the control-plane simulation).
      this.records
        .record(copy.location, true, "the last in-sync copy came back unchanged")
        .catch((error: unknown) => this.log(`recording ${copy.location} as in sync failed: ${errorMessage(error)}`));
      return;
    }
    const copies = this.copies;
    const refusal = foreign(port.metadata, copies.volumeId, copies.sizeBytes, copies.regionBytes);
    if (refusal !== null) {
      copies.noteMetadata(copy, null, port.metadata);
      copies.refuse(copy, "refused", refusal, null);
      void port.close();
      return;
    }
    copies.attach(copy, port);
    this.watchLoss(copy);
    const decision = decideCopy({ generations: copies.generations, changedSince: copies.changeBases() }, port.metadata);
    this.beginResync(copy, decision, port.metadata);
  }

  private async createCopy(copy: CopyView): Promise<void> {
    try {
      const port = await this.openAtSize(copy.location, this.createOptions(), this.copies.sizeBytes);
      this.copies.attach(copy, port);
      this.watchLoss(copy);
      this.beginResync(
        copy,
        decideCopy({ generations: this.copies.generations, changedSince: {} }, port.metadata),
        port.metadata,
      );
    } catch (error) {
      this.copies.setState(copy, "connecting", `cannot create the copy: ${errorMessage(error)}`);
      this.scheduleReconnect();
    }
  }

  /** Starts the resync `decision` asks for (or refuses the copy, or has it join at once). */
  private beginResync(copy: CopyView, decision: CopyDecision, meta: ReplicaMetadata): void {
    const copies = this.copies;
    if (decision.kind === "split-brain" || decision.kind === "refused") {
      const sizes = decision.kind === "split-brain" ? this.splitBrainSizes(meta) : null;
      // The copy's handle (and its lock) closes in the background; a resolution that reopens the copy waits for it.
      const closing = copies.refuse(copy, decision.kind, decision.rule, sizes)?.close();
      if (closing !== undefined)
        this.refusedClosing.set(
          copy.location,
          closing.catch(() => undefined),
        );
      this.log(
        `${copy.location}: ${decision.kind === "split-brain" ? "SPLIT BRAIN, refused until resolved" : "refused"}: ${decision.rule}`,
      );
      return;
    }
    if (decision.kind === "in-sync") {
      this.log(`${copy.location}: in sync (${decision.rule})`);
      void this.markInSync(copy, copy.attachment);
      return;
    }
    let mode: "incremental" | "full" = decision.kind;
    let bitmap: RegionBitmap | undefined =
      decision.kind === "incremental" ? copies.changedSinceCopy(decision.base) : undefined;
    if (bitmap === undefined) {
      mode = "full";
      bitmap = copies.newBitmap();
      bitmap.markRange(0, copies.sizeBytes);
    }
    // A resync interrupted earlier resumes from what it still missed, if the volume kept track since.
    const resume = meta.resync;
    if (resume && (resume.validFor === copies.generations.current || copies.hasChangeBitmap(resume.validFor))) {
      const remaining = decodeBitmap(resume.remaining, copies.sizeBytes, copies.regionBytes);
      const since = copies.changedSinceCopy(resume.validFor);
      if (since) orInto(remaining, since);
      if (remaining.count < bitmap.count) {
        this.log(`${copy.location}: resuming an interrupted resync (${remaining.bytes} of ${bitmap.bytes} bytes left)`);
        bitmap = remaining;
        mode = decision.kind === "full" ? "full" : "incremental";
      }
    }
    if (copy.missing) orInto(bitmap, copy.missing);
    for (const range of this.locks.sharedRanges()) bitmap.markRange(range.offset, range.length);
    copies.beginResync(copy, bitmap, mode, decision.rule);
    this.log(`${copy.location}: ${mode} resync of ${bitmap.bytes} bytes (${decision.rule})`);
    const resync = this.track(runResync(this.access, copy, copy.attachment));
    this.resyncs.set(copy, resync);
    void resync.then(() => {
      if (this.resyncs.get(copy) === resync) this.resyncs.delete(copy);
    });
  }

  /**
   * A copy that caught up joins the in-sync set. The copies in sync record it in their metadata first
   * (as joining): none of them may ever show it as left behind while it could take writes they lack
   * (start-plan.ts rests on that). Then it joins, and the volume's metadata, with the new in-sync set
   * and generation, is saved everywhere before any client write proceeds.
   */
  private async markInSync(copy: CopyView, attachment: number): Promise<void> {
    const release = await this.locks.acquire(0, Number.MAX_SAFE_INTEGER, true);
    try {
      const port = copy.port;
      if (!this.copies.isAttached(copy, attachment) || port === undefined) return;
      await port.flush();
      if (!this.copies.beginJoin(copy, attachment)) return;
      const patch = this.copies.volumePatch(this.activityLog.extents);
      this.copies.noteMetadata(copy, attachment, await port.updateMetadata(this.copies.epoch, patch));
      await this.saves.request();
      // Joining with no copy in sync: the copy that left last misses what is acknowledged from now on.
      const left = this.unrecordedLeave;
      this.unrecordedLeave = undefined;
      if (left !== undefined && left.location !== copy.location) await this.recordLeft(left.location, left.reason);
      const progress = copy.resync;
      const { joined, everyCopyInSync } = this.copies.join(copy, attachment);
      if (!joined) return;
      const caughtUp = progress
        ? `caught up by ${progress.mode === "full" ? "a full" : "an incremental"} resync of ${formatBytes(progress.total)}`
        : "in-sync";
      this.log(`${copy.location}: in sync at generation ${this.copies.generations.current}`);
      this.records
        .record(copy.location, true, caughtUp)
        .catch((error: unknown) => this.log(`recording ${copy.location} as in sync failed: ${errorMessage(error)}`));
      if (everyCopyInSync) this.log("every copy is in sync: change bitmaps dropped");
      await this.saves.request();
    } catch (error) {
      this.copies.abandonJoin(copy);
      this.checkFence(error, false);
      this.faultInBackground(copy, attachment, `joining the in-sync set failed: ${errorMessage(error)}`);
    } finally {
      release();
    }
  }

  private splitBrainSizes(meta: ReplicaMetadata): { volumeChangedBytes: number; copyChangedBytes: number } {
    const size = this.copies.sizeBytes;
    const generations = this.copies.generations;
    const copyPast = new Set([meta.generations.bitmap, ...meta.generations.history].filter((id) => id !== ""));
    const volumePast = new Set([generations.bitmap, ...generations.history].filter((id) => id !== ""));
    const copySide = Object.entries(meta.changedSince).find(([base]) => volumePast.has(base))?.[1];
    return {
      volumeChangedBytes: this.copies.changedBytesSinceAny(copyPast) ?? size,
      copyChangedBytes: copySide === undefined ? size : decodeBitmap(copySide, size, this.copies.regionBytes).bytes,
    };
  }

  // ---- control (EngineControl) ---------------------------------------------------------------------

  startVerify(options: { repair: boolean }): VerifyStatus {
    if (this.verifyStatus?.state === "running")
      throw new HavenError("HAVEN_ERR_CONFLICT", "a verify is already running");
    this.checkUsable();
    this.verifyStatus = runVerify(this.access, options.repair, (promise) => this.track(promise));
    return this.verifyStatus;
  }

  async resolveSplitBrain(survivor: string): Promise<VolumeStatus> {
    const copy = this.copies.copies.find((c) => c.location === survivor);
    if (copy === undefined)
      throw new HavenError("HAVEN_ERR_INVALID_REQUEST", `${survivor} is not a replica of this volume`);
    const split = this.copies.copies.filter((c) => c.state === "split-brain");
    if (split.length === 0) throw new HavenError("HAVEN_ERR_INVALID_REQUEST", "no copy is in split brain");
    if (copy.state === "split-brain")
      throw new HavenError(
        "HAVEN_ERR_INVALID_REQUEST",
        `${survivor} is the side not being served: stop the engine and restart it with --survivor ${survivor} ` +
          `(this discards the writes the running volume took since the split)`,
      );
    if (copy.state !== "in-sync")
      throw new HavenError(
        "HAVEN_ERR_INVALID_REQUEST",
        `${survivor} is ${copy.state}: only an in-sync copy can be the survivor`,
      );
    for (const loser of split) {
      const sizes = loser.splitBrain;
      this.log(
        `operator resolved the split brain: ${survivor} survives; ${loser.location} is rebuilt from it, discarding ` +
          `${sizes?.copyChangedBytes ?? "?"} bytes of changes it took apart`,
      );
      this.copies.discardSplitBrain(loser);
      await this.refusedClosing.get(loser.location);
      this.refusedClosing.delete(loser.location);
      let port: ReplicaPort;
      try {
        port = await this.openAtSize(loser.location, this.createOptions(), this.copies.sizeBytes);
      } catch (error) {
        // Away now: the reconnect loop retries it as it retries any copy away (it comes back as the
        // split brain it still is, to be resolved again); left connecting, nothing would retry it.
        this.copies.noteUnreachable(loser, errorMessage(error));
        this.scheduleReconnect();
        throw error;
      }
      if (!this.copies.isMember(loser) || loser.port !== undefined || this.stopping) {
        await port.close(); // removed (or reattached) meanwhile
        continue;
      }
      this.copies.attach(loser, port);
      this.watchLoss(loser);
      this.beginResync(
        loser,
        { kind: "full", rule: "operator named the survivor of a split brain" },
        { ...port.metadata, resync: null },
      );
    }
    return this.status();
  }

  // ---- changing the set of copies ------------------------------------------------------------------

  /** The volume's copies now, in order: those given at start, then those added, less those removed. */
  get locations(): readonly string[] {
    return this.copies.copies.map((copy) => copy.location);
  }

  /**
   * Adds a copy at `location` to the running volume; resolves once it is attached and its resync has
   * started (not when it ends). Opened through the opener with the volume's create options: a copy of
   * this volume already there is taken as a returning copy (an incremental resync when the volume kept
   * a change bitmap since its generation, else a full one); where there is none, one is created and
   * fully rebuilt. It joins the in-sync set once its resync completed (recorded in sync then); it is
   * recorded out of sync before it is attached. If the opener fails (unreachable), the copy is added
   * all the same, connecting, recorded out of sync, and the reconnect loop retries it as it retries any
   * copy; this resolves. Refused, with nothing changed (but for an empty copy the opener may just have
   * created, left on disk):
   * - HAVEN_ERR_CONFLICT: the location is a copy already (or being added); a copy of another volume
   *   (or size, or region size) is there (left untouched); its generations share nothing with the
   *   volume's (unrelated data, left untouched); the engine has not started;
   * - HAVEN_ERR_USAGE: the volume has MAX_REPLICAS copies;
   * - HAVEN_ERR_FENCED, HAVEN_ERR_SHUTTING_DOWN: the engine is fenced or stopping;
   * - HAVEN_ERR_UNAVAILABLE: the control plane's record of it as out of sync failed.
   * A copy that took writes apart from the volume is a split brain, as when a copy returns: it stays
   * among the copies, refused (nothing is written to it) until resolveSplitBrain() names the survivor
   * or removeCopy() drops it, and this rejects with HAVEN_ERR_SPLIT_BRAIN.
   */
  async addCopy(location: string): Promise<void> {
    this.checkChangeable();
    const name = this.options.name;
    if (this.copies.copies.some((copy) => copy.location === location) || this.adding.has(location))
      throw new HavenError("HAVEN_ERR_CONFLICT", `${location} is already a copy of volume ${name}`);
    const count = this.copies.copies.length + this.adding.size;
    if (count >= MAX_REPLICAS)
      throw new HavenError(
        "HAVEN_ERR_USAGE",
        `volume ${name} has ${count} copies, the most a volume can have (${MAX_REPLICAS}): remove one before adding ${location}`,
      );
    this.adding.add(location);
    try {
      await this.addCopyAt(location);
    } finally {
      this.adding.delete(location);
    }
  }

  private async addCopyAt(location: string): Promise<void> {
    const name = this.options.name;
    let port: ReplicaPort | undefined;
    let unreachable = "";
    try {
      port = await this.openAtSize(location, this.createOptions(), this.copies.sizeBytes);
    } catch (error) {
      unreachable = errorMessage(error);
    }
    try {
      if (port !== undefined) this.refuseForeign(location, port.metadata);
      this.checkChangeable();
      const detail =
        port === undefined
          ? `added to the volume, not reachable yet: ${unreachable}`
          : "added to the volume: not in sync until its resync completes";
      try {
        await this.records.record(location, false, detail);
      } catch (error) {
        throw new HavenError(
          "HAVEN_ERR_UNAVAILABLE",
          `cannot record ${location} as out of sync in the cluster, so it is not added to volume ${name}: ${errorMessage(error)}`,
        );
      }
      this.checkChangeable();
      if (port !== undefined) this.refuseForeign(location, port.metadata); // the volume's generations moved on
    } catch (error) {
      await port?.close();
      throw error;
    }
    const copy = this.copies.add(location);
    if (port === undefined) {
      this.copies.noteUnreachable(copy, unreachable);
      this.log(`${location}: added to volume ${name}, not reachable yet (${unreachable}); retrying`);
      this.scheduleReconnect();
      return;
    }
    this.log(`${location}: added to volume ${name}`);
    this.attachReturning(copy, port);
    if (copy.state === "split-brain")
      throw new HavenError(
        "HAVEN_ERR_SPLIT_BRAIN",
        `${location} holds a copy of volume ${name} that took writes apart from it (${copy.reason}). It stays ` +
          `among the volume's copies, refused, and nothing is written to it: name the survivor to rebuild it ` +
          `from the volume (resolve-split-brain), or remove it`,
      );
  }

  /** Refuses (HAVEN_ERR_CONFLICT) a copy that cannot join this volume: another volume's, or unrelated. */
  private refuseForeign(location: string, metadata: ReplicaMetadata): void {
    const copies = this.copies;
    const name = this.options.name;
    const refusal =
      foreign(metadata, copies.volumeId, copies.sizeBytes, copies.regionBytes) ??
      (decideCopy({ generations: copies.generations, changedSince: copies.changeBases() }, metadata).kind === "refused"
        ? "its generations share nothing with the volume's (unrelated data)"
        : null);
    if (refusal !== null)
      throw new HavenError(
        "HAVEN_ERR_CONFLICT",
        `${location} cannot hold a copy of volume ${name}: ${refusal}. It is left untouched; ` +
          `remove ${location}/${name} first if its data is not needed`,
      );
  }

  /**
   * Removes the copy at `location` from the running volume for good; its files stay where they are
   * (the caller deletes them). Writes are held back briefly (the whole volume's range lock, as stop()
   * takes it: writes in flight, resync and verify chunks finish first); the copy is dropped from the set,
   * so no write goes to it again; if it received writes the volume moves to a new generation, with
   * what it may have missed recorded (copy-set.ts remove()); the remaining in-sync copies' metadata is
   * saved when it changed, and the copy recorded out of sync, before any write goes on. Then its
   * resync ends, reads in flight on it settle, and its port is closed, before this resolves.
   * Refused: HAVEN_ERR_NOT_FOUND for a location that is not a copy; HAVEN_ERR_CONFLICT for the only
   * in-sync copy (or, with none in sync, the one the volume was last in sync on), or before the engine
   * started; HAVEN_ERR_FENCED, HAVEN_ERR_SHUTTING_DOWN when fenced or stopping. A failing record in the
   * cluster fences the engine (as when a copy fails) and rejects with HAVEN_ERR_FENCED.
   */
  async removeCopy(location: string): Promise<void> {
    this.checkChangeable();
    this.refuseRemoval(location); // at once, without waiting for the quiesce
    const release = await this.locks.acquire(0, Number.MAX_SAFE_INTEGER, true);
    let removed: { copy: CopyView; port: ReplicaPort | undefined };
    try {
      this.checkChangeable();
      const copy = this.refuseRemoval(location);
      const reason = "removed from the volume";
      const { port, saveNeeded } = this.copies.remove(copy, reason);
      removed = { copy, port };
      this.log(
        `${location}: removed from volume ${this.options.name}` +
          (saveNeeded ? `; volume now at generation ${this.copies.generations.current}` : ""),
      );
      const recorded = this.recordLeaving(location, reason).catch((error: unknown) => {
        throw new HavenError(
          "HAVEN_ERR_FENCED",
          `${location} was removed, but recording it out of sync in the cluster failed, so the engine fenced ` +
            `itself: ${errorMessage(error)}`,
        );
      });
      await Promise.all([saveNeeded ? this.saves.request() : undefined, recorded]);
    } finally {
      release();
    }
    await this.closeRemoved(removed.copy, removed.port);
  }

  /**
   * Records the copy at `location` in the cluster again as it is now, in sync or not, after every
   * earlier record of it (so a later change of its state still lands last): for a record that no longer
   * says what the engine knows, as when the copy was removed from the volume and added back (which
   * records it out of sync) before the engine let it go. HAVEN_ERR_NOT_FOUND for a location that is not
   * a copy; rejects as the record does.
   */
  recordState(location: string): Promise<void> {
    const copy = this.copies.copies.find((c) => c.location === location);
    if (copy === undefined)
      return Promise.reject(
        new HavenError("HAVEN_ERR_NOT_FOUND", `${location} is not a copy of volume ${this.options.name}`),
      );
    const inSync = copy.state === "in-sync";
    return this.records.record(location, inSync, inSync ? "in-sync (recorded again)" : (copy.reason ?? copy.state));
  }

  /** The member at `location`, if it may be removed; else the refusal. */
  private refuseRemoval(location: string): CopyView {
    const name = this.options.name;
    const copy = this.copies.copies.find((c) => c.location === location);
    if (copy === undefined)
      throw new HavenError(
        "HAVEN_ERR_NOT_FOUND",
        `${location} is not a copy of volume ${name} (its copies: ${this.locations.join(", ")})`,
      );
    if (this.copies.holdsLastData(copy))
      throw new HavenError(
        "HAVEN_ERR_CONFLICT",
        copy.state === "in-sync"
          ? `${location} is the last in-sync copy of volume ${name}: removing it would lose the volume's data. ` +
              `Add a copy and wait until it is in sync first`
          : `${location} is the copy volume ${name} was last in sync on, and no copy is in sync now: removing ` +
              `it would lose the volume's data`,
      );
    return copy;
  }

  /** After removal: the copy's resync, reconnect attempt and reads end; then its port (if any) closes. */
  private async closeRemoved(copy: CopyView, port: ReplicaPort | undefined): Promise<void> {
    await this.resyncs.get(copy);
    await this.reaching.get(copy);
    let timer: { cancel(): void } | undefined;
    const timedOut = new Promise<boolean>((resolve) => {
      timer = this.clock.schedule(REMOVED_COPY_READS_WAIT_MS, () => resolve(true));
    });
    const stuck = await Promise.race([this.portUse.idle(copy).then(() => false), timedOut]);
    timer?.cancel();
    if (stuck) this.log(`${copy.location}: reads still in flight after ${REMOVED_COPY_READS_WAIT_MS} ms; closing it`);
    await port?.close();
    await this.refusedClosing.get(copy.location);
    this.refusedClosing.delete(copy.location);
  }

  /** Copies change only while the volume serves. */
  private checkChangeable(): void {
    this.checkUsable();
    if (this.starting)
      throw new HavenError(
        "HAVEN_ERR_CONFLICT",
        `volume ${this.options.name} is not serving (it has not started, or its start failed): its copies change only while it serves`,
      );
  }

  status(): VolumeStatus {
    const copies = this.copies;
    return {
      name: this.options.name,
      volumeId: copies.volumeId,
      sizeBytes: copies.sizeBytes,
      regionBytes: copies.regionBytes,
      epoch: copies.epoch,
      state: this.volumeState(),
      generations: copies.generations.current === "" ? null : copies.generations,
      replicas: copies.copies.map((copy) => copies.replicaStatus(copy)),
      verify: this.verifyStatus,
      io: { ...this.io },
      nbd: this.nbdUris,
    };
  }

  private volumeState(): VolumeStatus["state"] {
    if (this.starting) return "starting";
    if (this.stopping) return "stopping";
    if (this.copies.fenced || this.copies.inSync().length === 0) return "failed";
    if (this.copies.everyCopyInSync()) return "healthy";
    if (this.copies.copies.some((c) => c.state === "resyncing")) return "resyncing";
    return "degraded";
  }

  /** Stops completing anything from now on, for `reason` (a lost lease, a deposed primary). */
  fence(reason: string): void {
    if (this.copies.fence(reason)) this.log(`FENCED: ${reason}; no further I/O completes`);
  }

  // ---- helpers -------------------------------------------------------------------------------------

  /** What resync and verify may see and do (background-access.ts), over this engine's pieces. */
  private backgroundAccess(): BackgroundAccess {
    const copies = this.copies;
    return {
      clock: this.clock,
      locks: this.locks,
      throttle: this.throttle,
      resyncSettings: this.resyncSettings,
      reconnectMs: this.options.reconnectMs ?? DEFAULT_RECONNECT_MS,
      get sizeBytes() {
        return copies.sizeBytes;
      },
      get regionBytes() {
        return copies.regionBytes;
      },
      log: this.log,
      epoch: () => copies.epoch,
      currentGeneration: () => copies.generations.current,
      active: () => copies.fenced === null && !this.stopping,
      checkUsable: () => this.checkUsable(),
      readCopy: () => copies.readCopy(),
      inSyncCopies: () => copies.inSync(),
      isAttached: (copy, attachment) => copies.isAttached(copy, attachment),
      fail: (copy, attachment, what, error, ranges) => {
        this.checkFence(error, false);
        return this.fault(copy, attachment, `${what}: ${errorMessage(error)}`, ranges);
      },
      resyncCopied: (copy, attachment, run, rate) => copies.resyncCopied(copy, attachment, run, rate),
      encodeMissing: (copy) => copies.encodeMissing(copy),
      noteMetadata: (copy, attachment, metadata) => copies.noteMetadata(copy, attachment, metadata),
      markInSync: (copy, attachment) => this.markInSync(copy, attachment),
    };
  }

  /** Runs `promise` as background work stop() waits for; the returned promise settles with it, never rejects. */
  private track(promise: Promise<void>): Promise<void> {
    const tracked = promise.catch((error: unknown) => this.log(`background task failed: ${errorMessage(error)}`));
    this.background.add(tracked);
    void tracked.finally(() => this.background.delete(tracked));
    return tracked;
  }

  /** A copy refusing our epoch means another engine took over: stop completing anything (rule 4). */
  private checkFence(error: unknown, rethrow = true): void {
    if (!hasCode(error, "HAVEN_ERR_STALE_EPOCH")) return;
    this.fence(`a copy refused epoch ${this.copies.epoch}: ${error.message}`);
    if (rethrow) throw new HavenError("HAVEN_ERR_FENCED", `volume fenced: ${this.copies.fenced}`);
  }

  private checkUsable(): void {
    if (this.copies.fenced) throw new HavenError("HAVEN_ERR_FENCED", `volume fenced: ${this.copies.fenced}`);
    if (this.stopping) throw new HavenError("HAVEN_ERR_SHUTTING_DOWN", `volume ${this.options.name} is stopping`);
  }

  private noCopies(op: string): HavenError {
    return new HavenError("HAVEN_ERR_IO", `${op} failed: no in-sync copy of volume ${this.options.name} is left`);
  }
}

function isRangeError(error: unknown): boolean {
  return hasCode(error, "HAVEN_ERR_OUT_OF_RANGE") || hasCode(error, "HAVEN_ERR_NO_SPACE");
}

async function closeAll(ports: Iterable<ReplicaPort>): Promise<void> {
  await Promise.allSettled([...ports].map((port) => port.close()));
}

/**
 * Faults already under way when a request fails for another reason (a stale epoch, a range error on
 * another copy): they run on, and their own failure (the engine fences itself in fault()) must not
 * become an unhandled rejection that kills the process (found by the control-plane simulation).
 */
function handledAnyway(faults: readonly Promise<void>[]): void {
  for (const fault of faults) fault.catch(() => undefined);
}
