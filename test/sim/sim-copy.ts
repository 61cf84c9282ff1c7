// Simulated copies for the engine simulation, with the semantics of LocalReplicaPort (and, for "remote"
// copies, of RemoteReplicaPort's connection handling) on virtual time:
// - SimDisk is one copy's persistent state: durable blocks, a volatile write cache of writes not yet
//   flushed (reads see it), metadata saved atomically (durable at once), and the epoch fence: a
//   mutation with an epoch below the highest seen is refused with HAVEN_ERR_STALE_EPOCH. A power loss
//   drops the cache, or (a torn cache) leaves each cached block at any version it had since its last
//   flush, as a disk writing back its cache in any order would.
// - SimReplicaPort implements ReplicaPort over a SimDisk. Every operation completes after a random
//   virtual delay, so operations reorder. A fault plan can make an operation fail (HAVEN_ERR_IO), or
//   hang: a remote copy's hang ends the connection after the request timeout (everything pending is
//   rejected and onLost is called once), a local one fails after a disk timeout. A write in flight
//   when its connection ends may or may not have been applied; when its engine dies, a remote one may
//   also land later (bytes still on the wire), where the epoch fence must refuse it. A dead engine's
//   ports never answer anything again.
// - SimNetwork holds the copies, their links and fault plans (random, or a script of what the next
//   operations do, for hand-written schedules), and opens ports (ReplicaOpener).
// Blocks are 4 KiB; every request the engine makes with 4 KiB-multiple regions is block aligned.

import { createHash } from "node:crypto";
import { writeDataLength, type Extent, type WriteData } from "../../src/block/device.js";
import { HavenError } from "../../src/core/errors.js";
import { checkGenerations, NEW_COPY } from "../../src/replica/generations.js";
import { isValidVolumeName, REGION_DIGEST_BYTES, type CreateOptions } from "../../src/replica/port.js";
import type { ReplicaOpener, ReplicaPort } from "../../src/replica/port.js";
import { parseReplicaMetadata, type MetadataPatch, type ReplicaMetadata } from "../../src/replica/replica-store.js";
import type { Rng } from "./rng.js";
import type { SimClock } from "./sim-clock.js";

export const BLOCK_BYTES = 4096;
export const ZERO_BLOCK = Buffer.alloc(BLOCK_BYTES);
/** Digests of all-zero regions, by region size. */
const zeroDigests = new Map<number, Buffer>();
/** Extents answered per BLOCK_STATUS at most. */
const MAX_EXTENTS = 64;

/** A failed assertion of the simulation itself (or a rule the copies enforce, like rule 4's fence). */
export class SimAssertion extends Error {
  override readonly name = "SimAssertion";
}

interface CachedVersion {
  readonly seq: number;
  /** null: the block reads as zeroes (trimmed or zeroed). */
  readonly data: Buffer | null;
}

export class SimDisk {
  private readonly durable = new Map<number, Buffer>();
  private readonly cache = new Map<number, CachedVersion[]>();
  private seq = 0;
  powered = true;
  /** Mutations refused by the epoch fence (rule 4), for the statistics. */
  fenceRefusals = 0;

  constructor(
    readonly location: string,
    public meta: ReplicaMetadata,
  ) {}

  static create(location: string, options: CreateOptions, copyId: string): SimDisk {
    if (options.sizeBytes % BLOCK_BYTES !== 0)
      throw new SimAssertion(`volume size ${options.sizeBytes} not block aligned`);
    return new SimDisk(location, {
      volumeId: options.volumeId,
      copyId,
      sizeBytes: options.sizeBytes,
      regionBytes: options.regionBytes,
      generations: NEW_COPY,
      highestEpoch: 0,
      cleanShutdown: true,
      changedSince: {},
      activityLog: [],
      resync: null,
      inSyncCopies: null,
    });
  }

  get sizeBytes(): number {
    return this.meta.sizeBytes;
  }

  /** Sequence number of the newest cached write (a flush makes everything up to it durable). */
  get lastSeq(): number {
    return this.seq;
  }

  /** What a read sees now: the newest cached version, or the durable block. null reads as zeroes. */
  view(block: number): Buffer | null {
    const versions = this.cache.get(block);
    if (versions !== undefined && versions.length > 0) return versions[versions.length - 1]!.data;
    return this.durable.get(block) ?? null;
  }

  /** What survives a power loss for certain (no torn cache): the durable block. */
  durableView(block: number): Buffer | null {
    return this.durable.get(block) ?? null;
  }

  /** Blocks that are not known zero, cached or durable. */
  presentBlocks(): Set<number> {
    const blocks = new Set<number>();
    for (const block of this.durable.keys()) blocks.add(block);
    for (const block of this.cache.keys()) blocks.add(block);
    return blocks;
  }

  checkRange(offset: number, length: number): void {
    if (!(Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length >= 0))
      throw new HavenError("HAVEN_ERR_INVALID_REQUEST", `bad range ${offset}+${length}`);
    if (offset + length > this.sizeBytes)
      throw new HavenError(
        "HAVEN_ERR_OUT_OF_RANGE",
        `range ${offset}+${length} is past the copy's ${this.sizeBytes} bytes`,
      );
    if (offset % BLOCK_BYTES !== 0 || length % BLOCK_BYTES !== 0)
      throw new SimAssertion(`the simulation handles 4 KiB-aligned requests only, got ${offset}+${length}`);
  }

  read(offset: number, length: number): Buffer {
    this.checkRange(offset, length);
    const target = Buffer.alloc(length);
    const blocks: (Buffer | null)[] = [];
    for (let at = 0; at < length; at += BLOCK_BYTES) {
      const block = this.view((offset + at) / BLOCK_BYTES);
      block?.copy(target, at);
      blocks.push(block);
    }
    readBlocks.set(target, blocks);
    return target;
  }

  /** The epoch fence (rule 4), as ReplicaStore.admitEpoch: refuses a lower epoch, persists a higher one. */
  admit(epoch: number): void {
    if (epoch < this.meta.highestEpoch) {
      this.fenceRefusals++;
      throw new HavenError(
        "HAVEN_ERR_STALE_EPOCH",
        `epoch ${epoch} is stale: this replica has seen epoch ${this.meta.highestEpoch}`,
      );
    }
    if (epoch > this.meta.highestEpoch || this.meta.cleanShutdown)
      this.meta = { ...this.meta, highestEpoch: epoch, cleanShutdown: false };
  }

  /** Writes whole blocks (as split by `toBlocks`). */
  write(epoch: number, offset: number, blocks: readonly (Buffer | null)[], fua: boolean): void {
    this.checkRange(offset, blocks.length * BLOCK_BYTES);
    this.assertAdmitted(epoch);
    blocks.forEach((block, i) => this.put(offset / BLOCK_BYTES + i, block, fua));
  }

  zero(epoch: number, offset: number, length: number, fua: boolean): void {
    this.checkRange(offset, length);
    this.assertAdmitted(epoch);
    for (let at = 0; at < length; at += BLOCK_BYTES) this.put((offset + at) / BLOCK_BYTES, null, fua);
  }

  /** Makes every write cached up to sequence number `through` durable. */
  flushThrough(through: number): void {
    for (const [block, versions] of this.cache) {
      let last = -1;
      for (let i = 0; i < versions.length && versions[i]!.seq <= through; i++) last = i;
      if (last < 0) continue;
      this.setDurable(block, versions[last]!.data);
      versions.splice(0, last + 1);
      if (versions.length === 0) this.cache.delete(block);
    }
  }

  updateMetadata(epoch: number, patch: MetadataPatch): ReplicaMetadata {
    this.admit(epoch);
    if (patch.generations) checkGenerations(patch.generations);
    // Through JSON and the real parser, as a save to disk or the wire would.
    // Through the real parser, as a save to disk or the wire would (it copies every field).
    this.meta = parseReplicaMetadata({ ...this.meta, ...patch });
    return this.meta;
  }

  checksum(offset: number, length: number, regionBytes: number): Buffer {
    this.checkRange(offset, length);
    if (regionBytes < BLOCK_BYTES || (regionBytes & (regionBytes - 1)) !== 0)
      throw new HavenError(
        "HAVEN_ERR_INVALID_REQUEST",
        `checksum region of ${regionBytes} bytes is not a power of two`,
      );
    const digests: Buffer[] = [];
    for (let region = offset; region < offset + length; region += regionBytes) {
      const end = Math.min(region + regionBytes, offset + length);
      const blocks: Buffer[] = [];
      let allZero = true;
      for (let at = region; at < end; at += BLOCK_BYTES) {
        const block = this.view(at / BLOCK_BYTES);
        allZero &&= block === null;
        blocks.push(block ?? ZERO_BLOCK);
      }
      const digest = allZero ? zeroDigest(end - region) : createHash("sha256").update(Buffer.concat(blocks)).digest();
      digests.push(digest.subarray(0, REGION_DIGEST_BYTES));
    }
    return Buffer.concat(digests);
  }

  /** Holes where a block reads as zeroes and was never written with data, as a sparse file's. */
  blockStatus(offset: number, length: number): Extent[] {
    this.checkRange(offset, length);
    const extents: Extent[] = [];
    let at = offset;
    while (at < offset + length && extents.length < MAX_EXTENTS) {
      const hole = this.view(at / BLOCK_BYTES) === null;
      let end = at + BLOCK_BYTES;
      while (end < offset + length && (this.view(end / BLOCK_BYTES) === null) === hole) end += BLOCK_BYTES;
      extents.push({ length: end - at, hole, zero: hole });
      at = end;
    }
    return extents;
  }

  /** The copy's host loses power: the write cache is lost, or (torn) partly written back. */
  powerLoss(rng: Rng, torn: boolean): void {
    if (torn) {
      for (const [block, versions] of this.cache) {
        const keep = rng.int(-1, versions.length - 1);
        if (keep >= 0) this.setDurable(block, versions[keep]!.data);
      }
    }
    this.cache.clear();
  }

  private put(block: number, data: Buffer | null, fua: boolean): void {
    if (fua) {
      this.cache.delete(block);
      this.setDurable(block, data);
      return;
    }
    const versions = this.cache.get(block);
    const version = { seq: ++this.seq, data };
    if (versions) versions.push(version);
    else this.cache.set(block, [version]);
  }

  private setDurable(block: number, data: Buffer | null): void {
    if (data === null) this.durable.delete(block);
    else this.durable.set(block, data);
  }

  /** Rule 4 as the copy checks it: nothing lands under an epoch lower than the highest it has seen. */
  private assertAdmitted(epoch: number): void {
    if (epoch < this.meta.highestEpoch)
      throw new SimAssertion(
        `(d) ${this.location} was written at epoch ${epoch} after seeing ${this.meta.highestEpoch}`,
      );
  }
}

/** Blocks of the buffers SimDisk.read returned, so writing one back (a resync) copies nothing. */
const readBlocks = new WeakMap<Buffer, readonly (Buffer | null)[]>();

/**
 * A write's data as blocks that are never changed afterwards (copies, or the blocks of a buffer read
 * from a copy); all-zero blocks become null, a hole, as a file system may keep them.
 */
export function toBlocks(data: WriteData): (Buffer | null)[] {
  if (Buffer.isBuffer(data)) {
    const known = readBlocks.get(data);
    if (known) return [...known];
  }
  const bytes = Buffer.isBuffer(data) ? data : Buffer.concat(data, writeDataLength(data));
  if (bytes.length % BLOCK_BYTES !== 0)
    throw new SimAssertion(`the simulation handles whole 4 KiB blocks only, got a write of ${bytes.length} bytes`);
  const blocks: (Buffer | null)[] = [];
  for (let at = 0; at < bytes.length; at += BLOCK_BYTES) {
    const block = bytes.subarray(at, at + BLOCK_BYTES);
    blocks.push(block.equals(ZERO_BLOCK) ? null : Buffer.from(block));
  }
  return blocks;
}

function zeroDigest(bytes: number): Buffer {
  let digest = zeroDigests.get(bytes);
  if (digest === undefined) {
    digest = createHash("sha256").update(Buffer.alloc(bytes)).digest();
    zeroDigests.set(bytes, digest);
  }
  return digest;
}

export interface CopySpec {
  readonly location: string;
  readonly local: boolean;
}

export interface NetworkSettings {
  /** A remote request not answered within this ends the connection (RemoteReplicaPort's timeout). */
  readonly requestTimeoutMs: number;
  /** A local operation that hangs fails after this long (the disk's command timeout). */
  readonly localHangMs: readonly [number, number];
  /** Chance that any operation fails on its own (on top of the fault plan). */
  readonly randomErrorRate: number;
  /** Writes of a crashed engine still in flight may land on a remote copy up to this much later. */
  readonly lateDeliveryMs: number;
  /** ... and at least this much later. */
  readonly lateDeliveryMinMs: number;
  /**
   * Also after a dropped connection of a live engine (a replica server still executing a request of
   * a connection that already ended). Off by default: see the report on the replica server.
   */
  readonly lateDeliveryAfterDisconnect: boolean;
  /**
   * What happens to a write in flight when its connection ends: decided by the rng, or always one way
   * ("late": a remote one lands up to lateDeliveryMs later when it may, else it is applied at once).
   */
  readonly inFlightFate: "random" | "applied" | "lost" | "late";
}

export const DEFAULT_NETWORK: NetworkSettings = {
  requestTimeoutMs: 2_000,
  localHangMs: [100, 3_000],
  randomErrorRate: 0.002,
  lateDeliveryMs: 2_000,
  lateDeliveryMinMs: 1,
  lateDeliveryAfterDisconnect: false,
  inFlightFate: "random",
};

type Outcome = "ok" | "fail" | "hang";

/** One scripted operation: what it does, and after how long (default: the usual random delay). */
export interface ScriptedOp {
  readonly outcome: Outcome;
  readonly delayMs?: number;
  /** Only operations of this kind take this entry (others pass by). */
  readonly kind?: string;
}

/** What the next operations on a copy do: the script first, then failures, then hangs. */
export interface FaultPlan {
  script: ScriptedOp[];
  failNext: number;
  hangNext: number;
}

interface Pending {
  readonly what: string;
  /** For mutations: applies it (may throw the fence's HAVEN_ERR_STALE_EPOCH). */
  readonly apply: (() => void) | undefined;
  readonly reject: (error: unknown) => void;
  timer: { cancel(): void } | undefined;
}

export class SimNetwork {
  readonly disks = new Map<string, SimDisk>();
  readonly plans = new Map<string, FaultPlan>();
  readonly ports = new Set<SimReplicaPort>();
  private readonly linkUp = new Map<string, boolean>();
  private readonly killedOwners = new Set<number>();
  /** Off while the world heals: no injected or random faults. */
  faultsEnabled = true;
  readonly stats = { ops: 0, injectedFailures: 0, hangs: 0, disconnects: 0, lateWrites: 0, lateRefused: 0 };
  /** Operations hanging now (until a timeout or a lost connection ends them). */
  readonly hanging = new Set<object>();

  constructor(
    readonly clock: SimClock,
    readonly rng: Rng,
    readonly copies: readonly CopySpec[],
    readonly settings: NetworkSettings,
    readonly log: (line: string) => void,
    /** Called when the simulation's own assertions fail inside an operation. */
    readonly onViolation: (error: Error) => void,
  ) {
    for (const copy of copies) {
      this.linkUp.set(copy.location, true);
      this.plans.set(copy.location, { script: [], failNext: 0, hangNext: 0 });
    }
  }

  spec(location: string): CopySpec {
    const spec = this.copies.find((c) => c.location === location);
    if (spec === undefined) throw new SimAssertion(`unknown location ${location}`);
    return spec;
  }

  isUp(location: string): boolean {
    return this.linkUp.get(location) === true && this.disks.get(location)?.powered !== false;
  }

  /** Takes a copy's link (or, for a local copy, its disk) down or up; down ends every connection to it. */
  setLink(location: string, up: boolean, reason = "link down"): void {
    this.linkUp.set(location, up);
    if (!up) this.disconnectAll(location, reason);
  }

  disconnectAll(location: string, reason: string): void {
    for (const port of [...this.ports]) if (port.location === location) port.lose(reason, true);
  }

  /** The copy's host loses power: connections end, the cache is lost (or torn), it is down until powered on. */
  powerLoss(location: string, torn: boolean): void {
    this.setLink(location, false, "power lost");
    const disk = this.disks.get(location);
    if (disk === undefined) return;
    disk.powerLoss(this.rng, torn);
    disk.powered = false;
  }

  powerOn(location: string): void {
    const disk = this.disks.get(location);
    if (disk) disk.powered = true;
  }

  /** The disk is replaced by an empty one (no copy there until an engine creates it). */
  destroyDisk(location: string): void {
    this.disconnectAll(location, "disk removed");
    this.disks.delete(location);
  }

  /** An engine process died: its connections vanish; nothing it asked for is ever answered. */
  killOwner(owner: number): void {
    this.killedOwners.add(owner);
    for (const port of [...this.ports]) if (port.owner === owner) port.kill();
  }

  isKilled(owner: number): boolean {
    return this.killedOwners.has(owner);
  }

  opener(owner: number, newCopyId: () => string): ReplicaOpener {
    return (location, name, create) =>
      new Promise<ReplicaPort>((resolve, reject) => {
        const spec = this.spec(location);
        if (!isValidVolumeName(name)) throw new SimAssertion(`bad volume name ${name}`);
        this.clock.schedule(spec.local ? this.rng.int(0, 1) : this.rng.int(1, 5), () => {
          if (this.killedOwners.has(owner)) return;
          if (!this.isUp(location)) {
            reject(new HavenError("HAVEN_ERR_IO", `${location}: unreachable`));
            return;
          }
          let disk = this.disks.get(location);
          if (disk === undefined) {
            if (create === undefined) {
              reject(new HavenError("HAVEN_ERR_NOT_FOUND", `${location}/${name} holds no replica`));
              return;
            }
            disk = SimDisk.create(location, create, newCopyId());
            this.disks.set(location, disk);
            this.log(`${location}: copy created (${create.sizeBytes} bytes, regions of ${create.regionBytes})`);
          }
          const port = new SimReplicaPort(this, disk, spec, owner);
          this.ports.add(port);
          resolve(port);
        });
      });
  }

  /** What the next operation (`what`) on `location` does, by the fault plan and the random error rate. */
  decide(location: string, what: string): ScriptedOp {
    this.stats.ops++;
    if (!this.faultsEnabled) return { outcome: "ok" };
    const plan = this.plans.get(location)!;
    const scripted = plan.script.findIndex((op) => op.kind === undefined || op.kind === what);
    if (scripted >= 0) return plan.script.splice(scripted, 1)[0]!;
    if (plan.failNext > 0) {
      plan.failNext--;
      this.stats.injectedFailures++;
      return { outcome: "fail" };
    }
    if (plan.hangNext > 0) {
      plan.hangNext--;
      this.stats.hangs++;
      return { outcome: "hang" };
    }
    if (this.rng.chance(this.settings.randomErrorRate)) {
      this.stats.injectedFailures++;
      return { outcome: "fail" };
    }
    return { outcome: "ok" };
  }

  clearFaults(): void {
    for (const plan of this.plans.values()) {
      plan.script = [];
      plan.failNext = 0;
      plan.hangNext = 0;
    }
  }
}

export class SimReplicaPort implements ReplicaPort {
  readonly location: string;
  readonly local: boolean;
  onLost: ((error: Error) => void) | undefined;
  private state: "open" | "lost" | "closed" | "dead" = "open";
  private lostReason = "";
  private readonly pending = new Set<Pending>();
  private snapshot: ReplicaMetadata;

  constructor(
    private readonly net: SimNetwork,
    readonly disk: SimDisk,
    spec: CopySpec,
    readonly owner: number,
  ) {
    this.location = spec.location;
    this.local = spec.local;
    this.snapshot = disk.meta;
  }

  /** Local copies read the store's metadata; remote ones what the server last answered. */
  get metadata(): ReplicaMetadata {
    return this.local ? this.disk.meta : this.snapshot;
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.submit("READ", undefined, () => this.disk.read(offset, length));
  }

  write(epoch: number, offset: number, data: WriteData, fua: boolean): Promise<void> {
    let blocks: (Buffer | null)[];
    try {
      blocks = toBlocks(data); // taken at once, as a socket or write(2) would
    } catch (error) {
      this.net.onViolation(error as Error);
      return Promise.reject(new HavenError("HAVEN_ERR_IO", (error as Error).message));
    }
    return this.mutation("WRITE", () => {
      this.disk.admit(epoch);
      this.disk.write(epoch, offset, blocks, fua);
    });
  }

  trim(epoch: number, offset: number, length: number, fua: boolean): Promise<void> {
    return this.mutation("TRIM", () => {
      this.disk.admit(epoch);
      this.disk.zero(epoch, offset, length, fua);
    });
  }

  writeZeroes(epoch: number, offset: number, length: number, fua: boolean): Promise<void> {
    return this.mutation("WRITE_ZEROES", () => {
      this.disk.admit(epoch);
      this.disk.zero(epoch, offset, length, fua);
    });
  }

  flush(): Promise<void> {
    // A flush covers the writes completed before it was issued (and maybe more: not modelled).
    const through = this.disk.lastSeq;
    return this.mutation("FLUSH", () => this.disk.flushThrough(through));
  }

  updateMetadata(epoch: number, patch: MetadataPatch): Promise<ReplicaMetadata> {
    return this.submit(
      "SET_METADATA",
      () => void this.disk.updateMetadata(epoch, patch),
      () => (this.snapshot = this.disk.updateMetadata(epoch, patch)),
    );
  }

  checksum(offset: number, length: number, regionBytes: number): Promise<Buffer> {
    return this.submit("CHECKSUM", undefined, () => this.disk.checksum(offset, length, regionBytes));
  }

  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.submit("BLOCK_STATUS", undefined, () => this.disk.blockStatus(offset, length));
  }

  async close(): Promise<void> {
    if (this.state !== "open") return;
    this.lose("closed by this side", false);
    this.state = "closed";
    if (this.local && this.disk.powered && this.net.isUp(this.location)) {
      // LocalReplicaPort.close: flush, then record a clean shutdown.
      this.disk.flushThrough(this.disk.lastSeq);
      this.disk.meta = { ...this.disk.meta, cleanShutdown: true };
    }
    this.net.ports.delete(this);
  }

  /** The connection ends (or a local disk stops answering): pending operations fail, onLost once. */
  lose(reason: string, notify: boolean): void {
    if (this.state !== "open") return;
    this.state = "lost";
    this.lostReason = reason;
    this.net.stats.disconnects++;
    const error = new HavenError("HAVEN_ERR_IO", `replica ${this.location}: ${reason}`);
    for (const pending of this.pending) {
      pending.timer?.cancel();
      this.net.hanging.delete(pending);
      this.fate(pending, this.net.settings.lateDeliveryAfterDisconnect);
      pending.reject(error);
    }
    this.pending.clear();
    this.net.ports.delete(this);
    const onLost = this.onLost;
    if (notify && !this.local && onLost) queueMicrotask(() => onLost(error));
  }

  /** The engine holding this port died: what it had in flight lands or not, and it never hears back. */
  kill(): void {
    if (this.state !== "open") {
      this.state = "dead";
      return;
    }
    this.state = "dead";
    for (const pending of this.pending) {
      pending.timer?.cancel();
      this.net.hanging.delete(pending);
      this.fate(pending, true);
    }
    this.pending.clear();
    this.net.ports.delete(this);
  }

  /** A mutation in flight when its connection ended: applied now, never, or (remote) a little later. */
  private fate(pending: Pending, mayBeLate: boolean): void {
    if (pending.apply === undefined) return;
    const net = this.net;
    const fate = net.settings.inFlightFate;
    const late = !this.local && mayBeLate;
    const choice =
      fate === "lost" ? 0 : fate === "applied" ? 1 : fate === "late" ? (late ? 2 : 1) : net.rng.int(0, late ? 2 : 1);
    if (choice === 0) return;
    if (choice === 1) {
      this.tryApply(pending);
      return;
    }
    const disk = this.disk;
    const settings = net.settings;
    net.clock.schedule(net.rng.int(settings.lateDeliveryMinMs, settings.lateDeliveryMs), () => {
      if (!net.isUp(this.location) || net.disks.get(this.location) !== disk) return;
      net.stats.lateWrites++;
      if (!this.tryApply(pending)) net.stats.lateRefused++;
      net.log(`${this.location}: a late ${pending.what} of a dead connection arrived`);
    });
  }

  /** Whether a mutation that failed was (partly) carried out anyway. */
  private maybeApplied(): boolean {
    const fate = this.net.settings.inFlightFate;
    return fate === "random" ? this.net.rng.chance(0.5) : fate !== "lost";
  }

  private tryApply(pending: Pending): boolean {
    try {
      pending.apply!();
      return true;
    } catch (error) {
      if (error instanceof HavenError) return false;
      this.net.onViolation(error as Error);
      return false;
    }
  }

  private mutation(what: string, apply: () => void): Promise<void> {
    return this.submit(what, apply, apply);
  }

  /**
   * One operation: `complete` runs when it succeeds; `apply` (mutations) is what may have happened
   * anyway when it fails or its connection ends.
   */
  private submit<T>(what: string, apply: (() => void) | undefined, complete: () => T): Promise<T> {
    const net = this.net;
    return new Promise<T>((resolve, reject) => {
      if (this.state === "dead") return; // a dead process never hears back
      if (this.state !== "open") {
        const error = new HavenError("HAVEN_ERR_IO", `replica ${this.location}: ${this.lostReason || "closed"}`);
        net.clock.schedule(0, () => reject(error));
        return;
      }
      const pending: Pending = { what, apply, reject, timer: undefined };
      this.pending.add(pending);
      const decided = net.decide(this.location, what);
      const random = this.local ? net.rng.int(0, 2) : net.rng.int(1, 8);
      const delay = decided.delayMs ?? random;
      const outcome = decided.outcome;
      if (outcome === "ok") {
        pending.timer = net.clock.schedule(delay, () => {
          this.pending.delete(pending);
          let value: T;
          try {
            value = complete();
          } catch (error) {
            if (!(error instanceof HavenError)) net.onViolation(error as Error);
            reject(error instanceof HavenError ? error : new HavenError("HAVEN_ERR_IO", (error as Error).message));
            return;
          }
          resolve(value);
        });
      } else if (outcome === "fail") {
        pending.timer = net.clock.schedule(delay, () => {
          this.pending.delete(pending);
          if (apply && this.maybeApplied()) this.tryApply(pending);
          reject(new HavenError("HAVEN_ERR_IO", `replica ${this.location}: injected I/O error on ${what}`));
        });
      } else if (this.local) {
        net.hanging.add(pending);
        pending.timer = net.clock.schedule(decided.delayMs ?? net.rng.int(...net.settings.localHangMs), () => {
          this.pending.delete(pending);
          net.hanging.delete(pending);
          if (apply && this.maybeApplied()) this.tryApply(pending);
          reject(new HavenError("HAVEN_ERR_IO", `replica ${this.location}: ${what} timed out in the disk`));
        });
      } else {
        // The request is never answered; the client's timeout ends the whole connection.
        pending.timer = undefined;
        net.hanging.add(pending);
        net.clock.schedule(net.settings.requestTimeoutMs, () => {
          if (this.pending.has(pending))
            this.lose(`timed out after ${net.settings.requestTimeoutMs} ms on ${what}`, true);
        });
      }
    });
  }
}
