// The volume's copies and the state that says which of them hold its data, with one owner: each copy's
// port, state and what it misses, the epoch the volume is written under, the volume's generations and
// change bitmaps, and whether the engine is fenced. Nothing else changes them: the engine (engine.ts)
// does the I/O and calls the transitions here, which are synchronous, do no I/O, and assert (with
// node:assert, on in production) the invariants the rules of DESIGN.md rest on:
// - a copy in sync has a port, and gets every write (until the set is closed at stop);
// - the epoch never goes down;
// - the generation history only moves forward: a new current generation was never the volume's
//   before, and the one it replaces stays as the bitmap base or in the history (DRBD's model);
// - a copy leaving the set that receives writes has what it missed recorded first (rule 2);
// - once fenced, always fenced.
// A copy's life: connecting -> in-sync | resyncing | split-brain | refused; in-sync | resyncing ->
// faulted -> (reconnect) -> resyncing -> in-sync. Each attachment of a port gets a new number, so late
// completions of a dropped one are recognised and ignored.
// The set itself changes while the volume runs (add, remove): a copy keeps the index it was given for
// its life, indexes are never reused, and nothing relies on an index being a position in `copies`.
// A removed copy is no member any more, but work still holding its view (a flush, a resync) may call
// in with it: its attachment was retired, so such calls change nothing. The last in-sync copy (or,
// with none in sync, the copy the volume was last in sync on) is never removed.

import assert from "node:assert/strict";
import { encodeBitmap } from "../replica/bitmap-codec.js";
import { beginGenerationWithoutPeer, checkGenerations, completeResyncAsSource } from "../replica/generations.js";
import type { Generations } from "../replica/generations.js";
import type { ReplicaPort } from "../replica/port.js";
import { DEFAULT_REGION_BYTES, RegionBitmap } from "../replica/region-bitmap.js";
import type { MetadataPatch, ReplicaMetadata } from "../replica/replica-store.js";
import type { ReplicaState, ReplicaStatus } from "./status.js";

/** Change bitmaps kept (one per older generation a returning copy may be at). */
export const MAX_CHANGE_BITMAPS = 4;
/** Encoded change bitmaps kept per copy's metadata (a larger one is kept as "all regions"). */
const MAX_ENCODED_BITMAP_BYTES = 10 * 1024;

/** A byte range of the volume. */
export interface ByteRange {
  readonly offset: number;
  readonly length: number;
}

/** A bitmap others may read but not change. */
export type BitmapView = Pick<
  RegionBitmap,
  "volumeBytes" | "regionBytes" | "regionCount" | "count" | "bytes" | "isSet" | "runs" | "overlaps"
>;

export interface CopyResync {
  readonly mode: "incremental" | "full";
  readonly rule: string;
  readonly total: number;
  readonly done: number;
  /** Recent copy rate, bytes per second. */
  readonly rate: number;
}

export interface SplitBrainSizes {
  readonly volumeChangedBytes: number;
  readonly copyChangedBytes: number;
}

/** One configured copy, as everyone but the CopySet sees it: read-only. */
export interface CopyView {
  readonly index: number;
  readonly location: string;
  readonly port: ReplicaPort | undefined;
  readonly state: ReplicaState;
  readonly reason: string | null;
  /** Bumped whenever a port is attached or dropped. */
  readonly attachment: number;
  /** Regions it misses (resyncing, faulted); null when in sync or unknown. */
  readonly missing: BitmapView | null;
  readonly resync: CopyResync | null;
  readonly splitBrain: SplitBrainSizes | null;
  readonly lastMetadata: ReplicaMetadata | null;
}

/** A copy a mutation was sent to, as it was when sent. */
export interface SentCopy {
  readonly copy: CopyView;
  readonly attachment: number;
  readonly wasInSync: boolean;
}

/** What a flush set aside for one copy: its unflushed regions as of the flush's start. */
export interface FlushTicket {
  readonly copy: CopyView;
  readonly attachment: number;
  readonly wasInSync: boolean;
  readonly before: RegionBitmap;
}

class Copy implements CopyView {
  port: ReplicaPort | undefined = undefined;
  state: ReplicaState = "connecting";
  reason: string | null = null;
  missing: RegionBitmap | null = null;
  /** Regions written to it since its last completed flush (lost if its host crashes). */
  unflushed = new RegionBitmap(1);
  /** Unflushed regions set aside by flushes still in flight (back into `unflushed` if they fail). */
  readonly flushing = new Set<RegionBitmap>();
  attachment = 0;
  resync: { mode: "incremental" | "full"; rule: string; total: number; done: number; rate: number } | null = null;
  splitBrain: SplitBrainSizes | null = null;
  lastMetadata: ReplicaMetadata | null = null;
  /** Being admitted to the in-sync set: counted in the in-sync copies the metadata records. */
  joining = false;

  constructor(
    readonly index: number,
    readonly location: string,
  ) {}
}

export class CopySet {
  /** The members, in order; replaced (never changed in place) when a copy is added or removed. */
  private all: readonly Copy[];
  /** Every copy this set ever held, members or not: the views it accepts. */
  private readonly made = new WeakSet<Copy>();
  private nextIndex: number;
  private volumeIdValue = "";
  private sizeBytesValue = 0;
  private regionBytesValue = DEFAULT_REGION_BYTES;
  private epochValue = 0;
  private generationsValue: Generations = { current: "", bitmap: "", history: [] };
  /** Regions written since each older generation: what a copy at that generation misses. */
  private readonly changedSince = new Map<string, RegionBitmap>();
  private fencedReason: string | null = null;
  /** The copy that was in sync last when the volume lost them all. */
  private lastInSync: Copy | undefined;
  /**
   * The volume's generation when its last in-sync copy left: a metadata save in flight then may have
   * written it to that copy (the save landed, its answer failed), so the copy may come back at it.
   */
  private lastInSyncLeftAt: string | undefined;
  /** After stop: ports are closed, nothing is in sync for I/O any more. */
  private closed = false;

  constructor(
    locations: readonly string[],
    private readonly newId: () => string,
    private readonly log: (line: string) => void,
  ) {
    this.all = locations.map((location, index) => this.make(index, location));
    this.nextIndex = locations.length;
  }

  /** The members, in order. */
  get copies(): readonly CopyView[] {
    return this.all;
  }

  private make(index: number, location: string): Copy {
    const copy = new Copy(index, location);
    this.made.add(copy);
    return copy;
  }

  // ---- the volume ------------------------------------------------------------------------------

  get volumeId(): string {
    return this.volumeIdValue;
  }
  get sizeBytes(): number {
    return this.sizeBytesValue;
  }
  get regionBytes(): number {
    return this.regionBytesValue;
  }
  get epoch(): number {
    return this.epochValue;
  }
  get generations(): Generations {
    return this.generationsValue;
  }
  /** Why the engine stopped completing I/O, or null. */
  get fenced(): string | null {
    return this.fencedReason;
  }

  /** The volume's identity, once, at start. */
  identify(identity: { volumeId: string; sizeBytes: number; regionBytes: number }): void {
    assert.equal(this.volumeIdValue, "", "the volume's identity is set once");
    assert.ok(identity.sizeBytes > 0 && identity.regionBytes > 0, "a volume has a size and a region size");
    this.volumeIdValue = identity.volumeId;
    this.sizeBytesValue = identity.sizeBytes;
    this.regionBytesValue = identity.regionBytes;
    for (const copy of this.all) copy.unflushed = this.newBitmap();
  }

  /** The epoch every mutation carries from now on (rule 4): never lower than one used before. */
  takeEpoch(epoch: number): void {
    assert.ok(Number.isSafeInteger(epoch) && epoch >= this.epochValue, `epoch ${epoch} below ${this.epochValue}`);
    this.epochValue = epoch;
  }

  /** Stops completing anything from now on; the first reason stays. False if it was fenced already. */
  fence(reason: string): boolean {
    if (this.fencedReason !== null) return false;
    this.fencedReason = reason;
    return true;
  }

  newBitmap(): RegionBitmap {
    return new RegionBitmap(this.sizeBytesValue, this.regionBytesValue);
  }

  // ---- generations and change bitmaps ----------------------------------------------------------

  /**
   * The session's first generation, which follows `previous` (the generations of the copy the volume
   * continues from), and the change bitmaps it continues with (start-plan.ts made them).
   */
  startGenerations(
    previous: Generations,
    generations: Generations,
    changedSince: ReadonlyMap<string, RegionBitmap>,
  ): void {
    assert.equal(this.generationsValue.current, "", "generations are started once");
    checkGenerations(previous);
    this.generationsValue = previous;
    this.setGenerations(generations);
    for (const [base, bitmap] of changedSince) this.addChangeBitmap(base, bitmap);
  }

  hasChangeBitmap(base: string): boolean {
    return this.changedSince.has(base);
  }

  /** A copy of the change bitmap since `base`, or undefined. */
  changedSinceCopy(base: string): RegionBitmap | undefined {
    const since = this.changedSince.get(base);
    if (since === undefined) return undefined;
    const copy = this.newBitmap();
    orInto(copy, since);
    return copy;
  }

  /** The bases the volume keeps change bitmaps for, as decideCopy() takes them. */
  changeBases(): Record<string, true> {
    const bases: Record<string, true> = {};
    for (const base of this.changedSince.keys()) bases[base] = true;
    return bases;
  }

  /** Bytes changed since the first of `bases` the volume keeps a bitmap for (undefined: none). */
  changedBytesSinceAny(bases: ReadonlySet<string>): number | undefined {
    for (const [base, bitmap] of this.changedSince) if (bases.has(base)) return bitmap.bytes;
    return undefined;
  }

  private setGenerations(next: Generations): void {
    checkGenerations(next);
    const previous = this.generationsValue;
    if (previous.current !== "") {
      if (next.current === previous.current) {
        // Only the bitmap base may move into the history (completeResyncAsSource).
        assert.ok(
          next.bitmap === "" && (previous.bitmap === "" || next.history[0] === previous.bitmap),
          "a generation keeps its past",
        );
      } else {
        assert.ok(
          next.current !== previous.bitmap && !previous.history.includes(next.current),
          `generation ${next.current} was the volume's before: history goes forward only`,
        );
        assert.ok(
          next.bitmap === previous.current || next.history[0] === previous.current,
          `the new generation ${next.current} must keep ${previous.current} as its base or in its history`,
        );
      }
    }
    this.generationsValue = next;
  }

  private addChangeBitmap(base: string, initial: RegionBitmap): void {
    const existing = this.changedSince.get(base);
    if (existing) orInto(existing, initial);
    else this.changedSince.set(base, initial);
    while (this.changedSince.size > MAX_CHANGE_BITMAPS) {
      const oldest = this.changedSince.keys().next().value as string;
      this.changedSince.delete(oldest);
      this.log(`dropping the change bitmap since ${oldest}: a copy still there needs a full rebuild`);
    }
  }

  /**
   * The writer-owned metadata every in-sync copy carries, with the copies in sync (and joining) now,
   * and the activity log's extents.
   */
  volumePatch(activityLog: readonly number[]): MetadataPatch {
    const changedSince: Record<string, string> = {};
    for (const [base, bitmap] of this.changedSince)
      changedSince[base] = encodeBitmap(bitmap, MAX_ENCODED_BITMAP_BYTES) || "";
    const inSyncCopies: string[] = [];
    for (const copy of this.all) {
      if ((copy.state === "in-sync" || copy.joining) && copy.lastMetadata !== null)
        inSyncCopies.push(copy.lastMetadata.copyId);
    }
    return { generations: this.generationsValue, changedSince, activityLog, resync: null, inSyncCopies };
  }

  // ---- which copies do what ---------------------------------------------------------------------

  /** The copies that count for acknowledgement and serve reads. */
  inSync(): CopyView[] {
    if (this.closed) return [];
    return this.all.filter((copy) => copy.state === "in-sync");
  }

  /** Copies that get every write: the in-sync ones and those resyncing. */
  receiving(): CopyView[] {
    if (this.closed) return [];
    return this.all.filter((copy) => copy.state === "in-sync" || copy.state === "resyncing");
  }

  /** The in-sync copy reads come from: a local one when there is one. */
  readCopy(): CopyView | undefined {
    if (this.closed) return undefined;
    let first: Copy | undefined;
    for (const copy of this.all) {
      if (copy.state !== "in-sync") continue;
      if (copy.port!.local) return copy;
      first ??= copy;
    }
    return first;
  }

  everyCopyInSync(): boolean {
    return this.all.every((copy) => copy.state === "in-sync");
  }

  /** Whether `copy` still has attachment `attachment`. */
  isAttached(copy: CopyView, attachment: number): boolean {
    return this.own(copy).attachment === attachment;
  }

  /** Whether `copy` is (still) one of the volume's copies. */
  isMember(copy: CopyView): boolean {
    return this.all.includes(this.own(copy));
  }

  /**
   * Whether removing `copy` would lose the volume's data: it is the only copy in sync, or no copy is
   * in sync and it is the one the volume was last in sync on (the one it can serve from again).
   */
  holdsLastData(view: CopyView): boolean {
    const copy = this.own(view);
    const inSync = this.inSync();
    if (copy.state === "in-sync") return inSync.length === 1;
    return inSync.length === 0 && this.lastInSync === copy;
  }

  // ---- copies coming and going -------------------------------------------------------------------

  /**
   * A new copy joins the set at the end, connecting: not in sync, nothing attached, receiving no
   * writes until it is attached and begins a resync. Only once the volume has its identity.
   */
  add(location: string): CopyView {
    assert.ok(!this.closed, "no copy is added to a closed set");
    assert.notEqual(this.volumeIdValue, "", "a copy is added to a volume that started");
    assert.ok(!this.all.some((copy) => copy.location === location), `${location} is a copy of the volume already`);
    const copy = this.make(this.nextIndex++, location);
    copy.unflushed = this.newBitmap();
    this.all = [...this.all, copy];
    return copy;
  }

  /**
   * Takes a copy out of the set for good; the caller made sure no write is in flight (rule 1 needs
   * nothing from it: it is in sync with nothing from now on). A copy that received writes leaves as in
   * leave() (rule 2): what it may have missed (its unflushed regions, those of flushes in flight, and
   * what it still missed if resyncing) is recorded in a change bitmap since the current generation, and
   * the volume moves to a new one, so the copy, if added back later, is resynced, never taken as in sync.
   * Its attachment is retired, so work still holding its view changes nothing. Returns the port to close,
   * and whether the in-sync copies' metadata must be saved (new generation, fewer in-sync copies).
   */
  remove(view: CopyView, reason: string): { port: ReplicaPort | undefined; saveNeeded: boolean } {
    const copy = this.own(view);
    assert.ok(this.all.includes(copy), `${copy.location} is not a copy of the volume`);
    assert.ok(!this.holdsLastData(copy), `${copy.location} holds the volume's last in-sync data: never removed`);
    const receiving = copy.state === "in-sync" || copy.state === "resyncing";
    const listed = copy.state === "in-sync" || copy.joining;
    if (receiving) {
      const missed = this.newBitmap();
      if (copy.missing) orInto(missed, copy.missing);
      orInto(missed, copy.unflushed);
      for (const pending of copy.flushing) orInto(missed, pending);
      this.addChangeBitmap(this.generationsValue.current, missed);
      this.setGenerations(beginGenerationWithoutPeer(this.generationsValue, this.newId()));
    }
    if (this.lastInSync === copy) {
      this.lastInSync = undefined;
      this.lastInSyncLeftAt = undefined;
    }
    const port = copy.port;
    copy.port = undefined;
    copy.attachment++;
    copy.resync = null;
    copy.joining = false;
    copy.missing = null;
    copy.state = "faulted";
    copy.reason = reason;
    this.all = this.all.filter((other) => other !== copy);
    return { port, saveNeeded: receiving || listed };
  }

  /** Makes `port` the copy's port: a new attachment. */
  attach(view: CopyView, port: ReplicaPort): number {
    const copy = this.own(view);
    assert.ok(this.all.includes(copy), `${copy.location} is not a copy of the volume: nothing is attached to it`);
    assert.ok(copy.port === undefined, `${copy.location} is attached already`);
    copy.port = port;
    copy.attachment++;
    copy.lastMetadata = port.metadata;
    return copy.attachment;
  }

  /** The copy's metadata as last read or saved, if `attachment` is still its attachment. */
  noteMetadata(view: CopyView, attachment: number | null, metadata: ReplicaMetadata): void {
    const copy = this.own(view);
    if (attachment === null || copy.attachment === attachment) copy.lastMetadata = metadata;
  }

  setState(view: CopyView, state: ReplicaState, reason: string | null): void {
    const copy = this.own(view);
    if (state === "in-sync" || state === "resyncing")
      assert.ok(copy.port !== undefined, `${copy.location} cannot be ${state} without a port`);
    if (state === "faulted" && (copy.state !== state || copy.reason !== reason))
      this.log(`${copy.location}: faulted: ${reason}`);
    copy.state = state;
    copy.reason = reason;
  }

  /** Why the last attempt to reach a copy that is not attached failed. */
  noteUnreachable(view: CopyView, reason: string): void {
    const copy = this.own(view);
    if (copy.port === undefined && copy.state !== "faulted") copy.reason = reason;
  }

  /**
   * Takes a copy out of the copies that receive writes (rule 2), if it still has `attachment` and
   * receives writes: what it missed (`ranges`, the writes in flight, its unflushed regions) is recorded
   * first, and the volume moves to a new generation with a change bitmap since the old one. Returns
   * the port to close (the caller persists the new generation), or null if it had left already.
   */
  leave(
    view: CopyView,
    attachment: number,
    reason: string,
    ranges: readonly ByteRange[],
    inFlight: readonly ByteRange[],
  ): { port: ReplicaPort | undefined } | null {
    const copy = this.own(view);
    if (copy.attachment !== attachment || !(copy.state === "in-sync" || copy.state === "resyncing")) return null;
    const missed = copy.missing ?? this.newBitmap();
    for (const range of ranges) missed.markRange(range.offset, range.length);
    for (const range of inFlight) missed.markRange(range.offset, range.length);
    orInto(missed, copy.unflushed);
    for (const pending of copy.flushing) orInto(missed, pending);
    copy.missing = missed;
    if (copy.state === "in-sync" && this.inSync().length === 1) {
      this.lastInSync = copy;
      this.lastInSyncLeftAt = this.generationsValue.current;
    }
    const port = copy.port;
    copy.port = undefined;
    copy.attachment++;
    copy.resync = null;
    copy.joining = false;
    this.setState(copy, "faulted", reason);

    const since = this.newBitmap();
    orInto(since, missed);
    this.addChangeBitmap(this.generationsValue.current, since);
    this.setGenerations(beginGenerationWithoutPeer(this.generationsValue, this.newId()));
    return { port };
  }

  /**
   * A copy refused when it appears: split brain (with each side's changes) or foreign data. Its port,
   * if any, is dropped and returned to be closed.
   */
  refuse(
    view: CopyView,
    kind: "split-brain" | "refused",
    reason: string,
    sizes: SplitBrainSizes | null,
  ): ReplicaPort | undefined {
    const copy = this.own(view);
    const port = copy.port;
    if (port !== undefined) {
      copy.port = undefined;
      copy.attachment++;
    }
    copy.splitBrain = kind === "split-brain" ? sizes : null;
    copy.resync = null;
    copy.joining = false;
    this.setState(copy, kind, reason);
    return port;
  }

  /** The operator resolved a split brain against this copy: it is rebuilt in full, from scratch. */
  discardSplitBrain(view: CopyView): void {
    const copy = this.own(view);
    assert.equal(copy.state, "split-brain");
    copy.splitBrain = null;
    copy.missing = this.newBitmap();
    copy.missing.markRange(0, this.sizeBytesValue);
    this.setState(copy, "connecting", null);
  }

  /**
   * The volume lost every copy, and the one in sync last is back unchanged (`port`): it holds every
   * acknowledged write (writes that failed on it failed for the client too), so it serves again. What
   * it missed may have landed on the others: they take those regions back from it. False if the copy
   * is not that one (or changed meanwhile).
   */
  rejoinAsLast(view: CopyView, port: ReplicaPort): boolean {
    const copy = this.own(view);
    // With no copy in sync no write was acknowledged since it left: it is unchanged at the generation
    // it last reported, or at the one a save in flight when it left may have written.
    const generation = port.metadata.generations.current;
    const unchanged =
      this.inSync().length === 0 &&
      this.lastInSync === copy &&
      (generation === copy.lastMetadata?.generations.current || generation === this.lastInSyncLeftAt);
    if (!unchanged) return false;
    this.attach(copy, port);
    const missed = copy.missing;
    if (missed) {
      for (const other of this.all) if (other !== copy && other.missing) orInto(other.missing, missed);
      for (const bitmap of this.changedSince.values()) orInto(bitmap, missed);
    }
    copy.missing = null; // its unflushed regions stay tracked: they may still be lost with its host
    this.setState(copy, "in-sync", null);
    return true;
  }

  /** A copy starts catching up on `bitmap`; it takes every write from now on. */
  beginResync(view: CopyView, bitmap: RegionBitmap, mode: "incremental" | "full", rule: string): void {
    const copy = this.own(view);
    copy.missing = bitmap;
    copy.unflushed = this.newBitmap();
    copy.resync = { mode, rule, total: bitmap.bytes, done: 0, rate: 0 };
    this.setState(copy, "resyncing", null);
  }

  /** A resync copied `run` to the copy (at `attachment`): it misses those regions no more. */
  resyncCopied(view: CopyView, attachment: number, run: ByteRange, bytesPerSecond: number): void {
    const copy = this.own(view);
    if (copy.attachment !== attachment || copy.missing === null || copy.resync === null) return;
    copy.missing.clearRange(run.offset, run.length);
    copy.resync.done = Math.min(copy.resync.total, copy.resync.done + run.length);
    copy.resync.rate = bytesPerSecond;
  }

  /** Counted in the in-sync copies recorded in the metadata, ahead of joining (see engine markInSync). */
  beginJoin(view: CopyView, attachment: number): boolean {
    const copy = this.own(view);
    if (copy.attachment !== attachment || copy.port === undefined) return false;
    copy.joining = true;
    return true;
  }

  /**
   * The copy caught up and joins the in-sync set. When every copy is in sync, the change bitmaps are
   * dropped and the volume's generation stops anchoring one; true then (the caller saves).
   */
  join(view: CopyView, attachment: number): { joined: boolean; everyCopyInSync: boolean } {
    const copy = this.own(view);
    copy.joining = false;
    if (copy.attachment !== attachment || copy.port === undefined) return { joined: false, everyCopyInSync: false };
    copy.missing = null;
    copy.resync = null;
    copy.splitBrain = null;
    this.setState(copy, "in-sync", null);
    if (!this.everyCopyInSync()) return { joined: true, everyCopyInSync: false };
    this.changedSince.clear();
    this.setGenerations(completeResyncAsSource(this.generationsValue));
    return { joined: true, everyCopyInSync: true };
  }

  /** Joining failed before it completed. */
  abandonJoin(view: CopyView): void {
    this.own(view).joining = false;
  }

  /** Every attachment ends (stop, crash): late completions of anything sent so far are ignored. */
  retireAttachments(): void {
    for (const copy of this.all) {
      copy.attachment++;
      copy.joining = false;
    }
  }

  /** At stop, after retireAttachments(): the ports to close; nothing is in sync for I/O any more. */
  close(): ReplicaPort[] {
    this.closed = true;
    const ports: ReplicaPort[] = [];
    for (const copy of this.all) {
      if (copy.port !== undefined) ports.push(copy.port);
      copy.port = undefined;
    }
    return ports;
  }

  // ---- writes and flushes (the hot path) -------------------------------------------------------

  /**
   * A mutation of [offset, offset+length) is about to go out: it is recorded in every change bitmap
   * and in what copies that do not receive it miss, and marked unflushed on those that do (unless
   * FUA). Returns the copies it goes to.
   */
  beginMutation(offset: number, length: number, fua: boolean): SentCopy[] {
    for (const bitmap of this.changedSince.values()) bitmap.markRange(offset, length);
    const sent: SentCopy[] = [];
    for (const copy of this.all) {
      const inSync = copy.state === "in-sync";
      if ((inSync || copy.state === "resyncing") && !this.closed) {
        assert.ok(copy.port !== undefined, `${copy.location} receives writes without a port`);
        if (!fua) copy.unflushed.markRange(offset, length);
        sent.push({ copy, attachment: copy.attachment, wasInSync: inSync });
      } else copy.missing?.markRange(offset, length);
    }
    return sent;
  }

  /** Whether a copy a mutation or flush went to still holds it for the client: in sync, same attachment. */
  stillInSync(sent: SentCopy | FlushTicket): boolean {
    const copy = this.own(sent.copy);
    return sent.wasInSync && copy.attachment === sent.attachment && copy.state === "in-sync";
  }

  /**
   * A flush is about to go to `targets`: what it may make durable is what was written so far. Writes
   * still in flight (`inFlight`) may land after it, so they stay marked unflushed.
   */
  beginFlush(targets: readonly CopyView[], inFlight: readonly ByteRange[]): FlushTicket[] {
    return targets.map((view) => {
      const copy = this.own(view);
      const before = copy.unflushed;
      copy.unflushed = this.newBitmap();
      for (const range of inFlight) copy.unflushed.markRange(range.offset, range.length);
      copy.flushing.add(before);
      return { copy, attachment: copy.attachment, wasInSync: copy.state === "in-sync", before };
    });
  }

  /** The flush of one copy ended; if it failed, what it set aside is unflushed again. */
  endFlush(ticket: FlushTicket, flushed: boolean): void {
    const copy = this.own(ticket.copy);
    copy.flushing.delete(ticket.before);
    if (!flushed) orInto(copy.unflushed, ticket.before);
  }

  /** What a copy still misses, encoded as its metadata keeps it. */
  encodeMissing(view: CopyView): string {
    const missing = this.own(view).missing;
    return missing === null ? "" : encodeBitmap(missing, MAX_ENCODED_BITMAP_BYTES);
  }

  // ---- status ---------------------------------------------------------------------------------

  replicaStatus(view: CopyView): ReplicaStatus {
    const copy = this.own(view);
    const progress = copy.resync;
    const left = progress ? Math.max(0, progress.total - progress.done) : 0;
    return {
      location: copy.location,
      local: copy.port?.local ?? !copy.location.startsWith("tcp://"),
      copyId: copy.lastMetadata?.copyId ?? null,
      state: copy.state,
      reason: copy.reason,
      generations: copy.state === "in-sync" ? this.generationsValue : (copy.lastMetadata?.generations ?? null),
      outOfSyncBytes:
        copy.state === "in-sync"
          ? 0
          : copy.missing
            ? copy.missing.bytes
            : copy.state === "connecting"
              ? 0
              : this.sizeBytesValue,
      resync: progress && {
        mode: progress.mode,
        doneBytes: progress.done,
        totalBytes: progress.total,
        bytesPerSecond: Math.round(progress.rate),
        etaSeconds: progress.rate > 0 ? Math.ceil(left / progress.rate) : null,
        rule: progress.rule,
      },
      splitBrain: copy.splitBrain,
    };
  }

  /** The copy behind a view this set made (a member, or one removed since). */
  private own(view: CopyView): Copy {
    assert.ok(view instanceof Copy && this.made.has(view), "a copy of another volume");
    return view;
  }
}

export function orInto(target: RegionBitmap, source: BitmapView): void {
  for (const run of source.runs()) target.markRange(run.offset, run.length);
}
