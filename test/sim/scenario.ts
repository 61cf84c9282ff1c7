// The engine simulation: the REAL VolumeEngine over simulated copies (sim-copy.ts) on virtual time
// (sim-clock.ts), driven by a seeded random schedule of client I/O, copy faults, power losses and
// engine crashes, with the rules of DESIGN.md checked as it runs:
//  (a) every acknowledged write (and what a completed FLUSH covers) is on every copy the engine reports
//      in sync, at the moment it is acknowledged and after every step; FUA writes and flushed data are
//      durable there;
//  (b) no copy that missed a write is ever reported in sync: every in-sync copy's blocks are values the
//      client may see, and in-sync copies agree on every block with no operation in flight; a verify
//      never finds in-sync copies that differ;
//  (c) after healing (no faults, links up, engine restarted if it is dead or has no in-sync copy left)
//      every copy becomes in sync within a virtual deadline, the copies are byte-identical and match
//      the oracle, and a clean stop leaves nothing to resync for the next start;
//  (d) no copy ever takes a write under an epoch lower than one it has seen (SimDisk asserts it), and
//      an engine is never fenced unless another engine took over;
//  (e) reads never return data the oracle rules out.
// What may legitimately be lost, precisely:
//  - a write that failed, or was in flight when the engine crashed, may or may not have happened;
//  - acknowledged writes not yet made durable (by a FLUSH that completed, or FUA) may revert when the
//    cache of the data the volume continues from is lost: when a power loss takes every copy that is
//    in sync (or, with no engine running, a copy that was last in sync), and at an engine crash after
//    any power loss during that engine's life (the next engine may start from the copy that lost its
//    cache: copies at the same generation are equal to it). A host crash is an engine crash plus a
//    power loss of the local copies. Stopping an engine left with no in-sync copy counts as a crash
//    (to the client the volume failed: its writes were already failing).
// What the world guarantees, as the control plane would: every engine gets a new epoch, higher than
// any before (etcd's compare-and-swap); and, when it vouches for the reachable copies
// (allowDegradedStart), the copies the volume was last in sync on are reachable when an engine starts.
// Some starts are the operator's instead (--degraded-start): the world brings nothing back, and the
// engine starts without the copies that stay away only if their metadata proves they were left behind
// (start-plan.ts); the checks above then test that proof. Requests a dead engine still had on the wire may land on remote copies later; the
// epoch fence must refuse them once a new engine reached the copy.
// A violation throws an Error naming the seed, the step and the last events.

import { HavenError, hasCode } from "../../src/core/errors.js";
import { VolumeEngine, type EngineOptions } from "../../src/engine/engine.js";
import type { ResyncSettings } from "../../src/engine/background-access.js";
import type { VerifyStatus } from "../../src/engine/status.js";
import { Oracle, blockPattern, decodeBlock, describeBytes, stampName, GARBAGE } from "./oracle.js";
import type { FlushToken, WriteToken } from "./oracle.js";
import { Rng } from "./rng.js";
import { SimClock, SimDriver } from "./sim-clock.js";
import {
  BLOCK_BYTES,
  DEFAULT_NETWORK,
  SimNetwork,
  ZERO_BLOCK,
  type CopySpec,
  type NetworkSettings,
} from "./sim-copy.js";

const MiB = 1024 * 1024;
const EVENTS_KEPT = 40;
/** Client operations in flight at most. */
const MAX_CLIENT_OPS = 6;
/** Virtual time allowed for healing before the volume is declared stuck. */
const HEAL_DEADLINE_MS = 180_000;

export interface WorldConfig {
  readonly copies: readonly CopySpec[];
  readonly volumeBytes: number;
  readonly regionBytes: number;
  readonly activityLogExtents: number;
  /** The engine's background flush after writes (0: none). */
  readonly writebackMs: number;
  readonly reconnectMs: number;
  readonly startupWaitMs: number;
  readonly resync: Partial<ResyncSettings>;
  readonly network: NetworkSettings;
  /** Where the client writes: first blocks of windows of 16 blocks. */
  readonly hotspots: readonly number[];
}

export interface WorldOptions {
  /** Every event is passed here as it happens (replay); otherwise only the last ones are kept. */
  readonly trace?: (line: string) => void;
  /** Every event is appended here too. */
  readonly allEvents?: string[];
}

/** A fixed configuration for hand-written schedules: no random faults, small and fast. */
export function fixedConfig(copies: readonly CopySpec[], overrides: Partial<WorldConfig> = {}): WorldConfig {
  return {
    copies,
    volumeBytes: 32 * MiB,
    regionBytes: 4096,
    activityLogExtents: 2,
    writebackMs: 0,
    reconnectMs: 500,
    startupWaitMs: 1000,
    resync: { chunkBytes: 256 * 1024, saveProgressMs: 300 },
    network: { ...DEFAULT_NETWORK, randomErrorRate: 0 },
    hotspots: [0, 1024, 2048, 4096],
    ...overrides,
  };
}

/** The rule that broke and what was seen. */
export class SimViolation extends Error {
  override readonly name = "SimViolation";
}

export function randomConfig(rng: Rng, overrides: Partial<WorldConfig> = {}): WorldConfig {
  const count = rng.int(2, 4);
  const copies: CopySpec[] = [];
  for (let i = 0; i < count; i++) {
    const local = rng.chance(0.4);
    copies.push({ location: local ? `/sim/disk${i}` : `tcp://sim-node${i}:7400`, local });
  }
  const volumeBytes = rng.pick([32 * MiB, 24 * MiB + 8192, 16 * MiB]);
  const blocks = volumeBytes / BLOCK_BYTES;
  const hotspots = new Set<number>();
  const wanted = rng.int(12, 40);
  while (hotspots.size < wanted) hotspots.add(rng.int(0, blocks - 16));
  return {
    copies,
    volumeBytes,
    regionBytes: rng.chance(0.7) ? 4096 : 65536,
    activityLogExtents: rng.pick([1, 2, 4]),
    writebackMs: rng.pick([0, 200, 1000]),
    reconnectMs: rng.pick([200, 500, 1000, 2000]),
    startupWaitMs: rng.pick([1000, 3000]),
    resync: {
      chunkBytes: rng.pick([64 * 1024, 256 * 1024, 1 * MiB]),
      saveProgressMs: rng.pick([50, 300, 2000]),
      maxBytesPerSecond: rng.pick([16 * MiB, 1024 * MiB]),
      busyBytesPerSecond: rng.pick([4 * MiB, 64 * MiB]),
      busyWindowMs: 200,
      parallelChunks: rng.pick([1, 2, 4]),
    },
    network: DEFAULT_NETWORK,
    hotspots: [...hotspots].sort((a, b) => a - b),
    ...overrides,
  };
}

type OpKind = "write" | "zero" | "trim" | "read" | "flush";

export interface ClientOp {
  readonly id: number;
  readonly kind: OpKind;
  readonly first: number;
  readonly count: number;
  readonly engineNo: number;
  readonly write?: WriteToken;
  readonly flush?: FlushToken;
  /** Settled (acknowledged or failed), or lost in an engine crash. */
  done: boolean;
  lost: boolean;
  error: unknown;
  /** Called the moment the engine answers (before anything else runs), for the hand-written schedules. */
  onDone?: (error: unknown) => void;
}

export class World {
  readonly rng: Rng;
  readonly clock = new SimClock();
  readonly driver: SimDriver;
  readonly net: SimNetwork;
  readonly oracle = new Oracle();
  engine: VolumeEngine | undefined;
  /** Which engine (1, 2, ...) is running; ports and client operations carry it. */
  engineNo = 0;
  /** The last epoch handed out (etcd's counter in production). */
  private lastEpoch = 0;
  private engineRunning = false;
  step = 0;
  /** Copies the volume was most recently in sync on (sampled after every turn of the world). */
  lastInSync = new Set<string>();
  private powerLossDuringEngine = false;
  private failure: SimViolation | undefined;
  private readonly events: string[] = [];
  private readonly ops = new Map<number, ClientOp>();
  private readonly busy = new Map<number, ClientOp>();
  private nextOpId = 1;
  private idCounter = 0;
  private readonly idPrefix: string;
  private verify: VerifyStatus | null = null;
  readonly stats = {
    writes: 0,
    acked: 0,
    failedWrites: 0,
    reads: 0,
    flushes: 0,
    crashes: 0,
    hostCrashes: 0,
    powerLosses: 0,
    cacheLosses: 0,
    restarts: 0,
    verifies: 0,
    lostOps: 0,
  };

  constructor(
    readonly seed: number,
    /** Read when an engine starts: a hand-written schedule may change it between engines. */
    public config: WorldConfig,
    private readonly options: WorldOptions = {},
  ) {
    this.rng = new Rng(seed ^ 0x5eed);
    this.idPrefix = this.rng.next().toString(16).padStart(8, "0");
    this.driver = new SimDriver(this.clock, () => this.afterSettle());
    this.net = new SimNetwork(
      this.clock,
      this.rng.fork(),
      config.copies,
      config.network,
      (line) => this.log(line),
      (error) => this.record("(d)/simulation", error.message),
    );
  }

  // ---- events and violations ------------------------------------------------------------------

  log(line: string): void {
    const event = `[step ${this.step} t=${this.clock.now()}ms] ${line}`;
    this.options.trace?.(event);
    this.options.allEvents?.push(event);
    this.events.push(event);
    if (this.events.length > EVENTS_KEPT) this.events.shift();
  }

  /** Builds the violation: the rule, what was seen, the seed and step, and the last events. */
  violation(rule: string, text: string): SimViolation {
    return new SimViolation(
      `seed ${this.seed}, step ${this.step}, t=${this.clock.now()} ms: ${rule}: ${text}\n` +
        `replay: HAVEN_SIM_SEED=${this.seed} node --test dist/test/sim/engine-simulation.test.js\n` +
        `config: ${this.describeConfig()}\nlast events:\n  ${this.events.join("\n  ")}`,
    );
  }

  /** A violation seen inside a callback: raised at the next turn of the world. */
  record(rule: string, text: string): void {
    this.failure ??= this.violation(rule, text);
  }

  private afterSettle(): void {
    if (this.failure) throw this.failure;
    const engine = this.engine;
    if (engine === undefined) return;
    const inSync = engine
      .status()
      .replicas.filter((replica) => replica.state === "in-sync")
      .map((replica) => replica.location);
    if (inSync.length > 0) this.lastInSync = new Set(inSync);
  }

  describeConfig(): string {
    const c = this.config;
    return (
      `copies ${c.copies.map((copy) => `${copy.location}${copy.local ? "(local)" : ""}`).join(" ")}; ` +
      `${c.volumeBytes} bytes, regions ${c.regionBytes}, activity log ${c.activityLogExtents} extents, ` +
      `writeback ${c.writebackMs} ms, ` +
      `reconnect ${c.reconnectMs} ms, resync ${JSON.stringify(c.resync)}`
    );
  }

  newId(): string {
    return this.idPrefix + (++this.idCounter).toString(16).padStart(8, "0");
  }

  async runFor(ms: number): Promise<void> {
    await this.driver.runFor(ms);
  }

  async runUntil(done: () => boolean, maxMs: number): Promise<boolean> {
    return this.driver.runUntil(done, maxMs);
  }

  // ---- the engine -------------------------------------------------------------------------------

  get running(): VolumeEngine | undefined {
    return this.engineRunning ? this.engine : undefined;
  }

  /**
   * Starts a new engine on the copies (the first one creates them). The copies the volume was last in
   * sync on are powered and reachable first. Resolves with the engine, or undefined if start failed for
   * a legitimate reason (faults). `interruptAfterMs`: the engine crashes if start has not finished by then.
   */
  async startEngine(
    options: {
      epoch?: number;
      survivor?: string;
      interruptAfterMs?: number;
      expectFailure?: boolean;
      /**
       * Go on without unreachable copies: true, as the control plane vouching (safe here: the copies
       * last in sync are made reachable first); "proven", as an operator's --degraded-start (nothing is
       * made reachable; the engine must prove it from the metadata, or refuse).
       */
      degraded?: boolean | "proven";
      /** Leave links as they are (a hand-written schedule that starts from a stale copy on purpose). */
      keepLinks?: boolean;
      /** Let the engine pick its epoch (one above the highest a reachable copy saw), as without etcd. */
      defaultEpoch?: boolean;
    } = {},
  ): Promise<VolumeEngine | undefined> {
    if (this.engine !== undefined) throw new Error("an engine is still there");
    const proven = options.degraded === "proven";
    for (const location of options.keepLinks || proven ? [] : this.lastInSync) {
      this.net.powerOn(location);
      this.net.setLink(location, true);
    }
    const no = ++this.engineNo;
    // As the control plane does (rule 4): every engine gets a new epoch, higher than any used before.
    const seen = Math.max(0, ...[...this.net.disks.values()].map((disk) => disk.meta.highestEpoch));
    this.lastEpoch = Math.max(this.lastEpoch, seen) + 1;
    const epoch = options.epoch ?? (options.defaultEpoch ? undefined : this.lastEpoch);
    const engine = new VolumeEngine(
      this.engineOptions(no, {
        ...(epoch !== undefined && { epoch }),
        ...(options.survivor !== undefined && { survivor: options.survivor }),
        ...(proven ? { degradedStart: true } : { allowDegradedStart: options.degraded !== false }),
      }),
    );
    this.engine = engine;
    this.powerLossDuringEngine = false;
    this.stats.restarts++;
    this.log(
      `E${no}: starting${proven ? " with --degraded-start" : ""} (last in sync on ${[...this.lastInSync].join(", ") || "none"})`,
    );
    const limit = options.interruptAfterMs ?? this.config.startupWaitMs + 60_000;
    const outcome = await this.driver.drive(engine.start(), limit);
    if (outcome.state === "pending") {
      if (options.interruptAfterMs === undefined)
        throw this.violation("liveness", `E${no}.start() did not finish within ${limit} ms of virtual time`);
      this.log(`E${no}: crashes during start`);
      this.crashEngine(false);
      return undefined;
    }
    if (outcome.state === "rejected") {
      const error = outcome.error;
      this.log(`E${no}: start failed: ${(error as Error).message}`);
      this.net.killOwner(no);
      this.engine = undefined;
      if (hasCode(error, "HAVEN_ERR_SPLIT_BRAIN") && !options.expectFailure)
        throw this.violation("rule 5", `E${no} found a split brain that no schedule of one writer can make`);
      const legitimate =
        error instanceof HavenError &&
        (error.code === "HAVEN_ERR_IO" || (proven && error.code === "HAVEN_ERR_UNSAFE_START"));
      if (!legitimate && !options.expectFailure)
        throw this.violation("start", `E${no}.start() failed: ${(error as Error).message}`);
      return undefined;
    }
    this.engineRunning = true;
    this.log(`E${no}: running at epoch ${engine.epoch}: ${this.describeStatus()}`);
    return engine;
  }

  /** Options of engine number `no` on this world's copies and clock. */
  engineOptions(no: number, extra: Partial<EngineOptions> = {}): EngineOptions {
    return {
      name: "vol",
      locations: this.config.copies.map((copy) => copy.location),
      opener: this.net.opener(no, () => this.newId()),
      sizeBytes: this.config.volumeBytes,
      regionBytes: this.config.regionBytes,
      clock: this.clock,
      log: (line) => this.log(`E${no}: ${line}`),
      resync: this.config.resync,
      reconnectMs: this.config.reconnectMs,
      startupWaitMs: this.config.startupWaitMs,
      activityLogExtents: this.config.activityLogExtents,
      writebackMs: this.config.writebackMs,
      newId: () => this.newId(),
      ...extra,
    };
  }

  /** The engine dies on the spot; with `hostCrash`, its host too (local copies lose power). */
  crashEngine(hostCrash: boolean): void {
    const engine = this.engine;
    if (engine === undefined) return;
    const no = this.engineNo;
    engine.crash();
    this.net.killOwner(no);
    this.engine = undefined;
    this.engineRunning = false;
    this.verify = null;
    this.stats.crashes++;
    let lost = 0;
    for (const op of this.ops.values()) {
      if (op.engineNo !== no || op.done) continue;
      op.lost = true;
      op.done = true;
      if (op.write) this.oracle.fail(op.write);
      this.release(op);
      lost++;
    }
    this.stats.lostOps += lost;
    this.log(`E${no}: CRASH${hostCrash ? " of its host" : ""} with ${lost} client operations in flight`);
    let cacheLost = this.powerLossDuringEngine;
    if (hostCrash) {
      this.stats.hostCrashes++;
      for (const copy of this.config.copies) {
        if (!copy.local) continue;
        const torn = this.rng.chance(0.5);
        this.net.powerLoss(copy.location, torn);
        this.log(`${copy.location}: power lost with the host${torn ? " (torn cache)" : ""}`);
        // Even a copy that just left the in-sync set may be the next source: its leaving may not be on record.
        cacheLost = true;
      }
    }
    if (cacheLost) this.loseCache("the next engine may start from a copy that lost its cache");
  }

  /** A clean stop (all in-sync copies flushed, the activity log emptied). */
  async stopEngine(): Promise<void> {
    const engine = this.engine;
    if (engine === undefined) return;
    this.log(`E${this.engineNo}: stopping`);
    // With no copy in sync, the stop flushes nothing: as after a crash, unflushed writes may revert.
    const failed = this.inSyncLocations().length === 0;
    const outcome = await this.driver.drive(engine.stop(), 120_000);
    if (outcome.state !== "fulfilled")
      throw this.violation("liveness", `E${this.engineNo}.stop() ${outcome.state === "pending" ? "hangs" : "failed"}`);
    // Operations in flight are answered (failed) once the copies are closed; any left never would be.
    const no = this.engineNo;
    await this.runUntil(() => [...this.ops.values()].every((op) => op.engineNo !== no || op.done), 10_000);
    for (const op of this.ops.values()) {
      if (op.engineNo === this.engineNo && !op.done)
        throw this.violation("liveness", `client ${op.kind} #${op.id} still pending after stop()`);
    }
    this.net.killOwner(this.engineNo);
    this.engine = undefined;
    this.engineRunning = false;
    this.verify = null;
    this.log(`E${this.engineNo}: stopped`);
    if (failed && this.powerLossDuringEngine) this.loseCache("the volume had lost every copy, one of them its cache");
  }

  private loseCache(why: string): void {
    this.stats.cacheLosses++;
    this.oracle.loseCache();
    this.log(`oracle: unflushed writes may revert (${why})`);
  }

  describeStatus(): string {
    const engine = this.engine;
    if (engine === undefined) return "no engine";
    const status = engine.status();
    return (
      `${status.state}; ` +
      status.replicas.map((r) => `${r.location}=${r.state}${r.reason ? ` (${r.reason.slice(0, 80)})` : ""}`).join(", ")
    );
  }

  inSyncLocations(): string[] {
    const engine = this.running;
    if (engine === undefined) return [];
    return engine
      .status()
      .replicas.filter((r) => r.state === "in-sync")
      .map((r) => r.location);
  }

  // ---- faults -----------------------------------------------------------------------------------

  /** A copy's host loses power (its link is down until `powerOn`). */
  powerLoss(location: string, torn: boolean): void {
    const inSync = this.inSyncLocations();
    this.stats.powerLosses++;
    this.net.powerLoss(location, torn);
    this.powerLossDuringEngine = true;
    this.log(`${location}: POWER LOSS${torn ? " (torn cache)" : ""}`);
    if (this.running) {
      const survivors = inSync.filter((other) => other !== location && this.net.disks.get(other)?.powered !== false);
      if (survivors.length === 0) this.loseCache("every in-sync copy lost power");
    } else if (this.lastInSync.has(location)) this.loseCache("a copy the volume was last in sync on lost power");
  }

  // ---- the client -------------------------------------------------------------------------------

  get opsInFlight(): number {
    let count = 0;
    for (const op of this.ops.values()) if (!op.done) count++;
    return count;
  }

  clientIdle(): boolean {
    return this.opsInFlight === 0;
  }

  /** A range of `count` free blocks near a hotspot, or undefined. */
  pickRange(maxCount: number): { first: number; count: number } | undefined {
    const blocks = this.config.volumeBytes / BLOCK_BYTES;
    for (let attempt = 0; attempt < 8; attempt++) {
      const first = this.rng.pick(this.config.hotspots) + this.rng.int(0, 7);
      const count = Math.min(this.rng.int(1, maxCount), blocks - first);
      let free = true;
      for (let block = first; block < first + count && free; block++) free = !this.busy.has(block);
      if (free) return { first, count };
    }
    return undefined;
  }

  write(first: number, count: number, options: { fua?: boolean; pieces?: boolean } = {}): ClientOp {
    const engine = this.requireEngine();
    const stamp = this.oracle.newStamp();
    const blocks = range(first, count);
    const fua = options.fua === true;
    const token = this.oracle.beginWrite(blocks, stamp, fua);
    const pieces = blocks.map((block) => blockPattern(stamp, block));
    const op = this.register("write", first, count, { write: token });
    this.stats.writes++;
    this.log(`client: write ${stampName(stamp)} to blocks ${first}+${count}${fua ? " FUA" : ""} (op ${op.id})`);
    engine.write(first * BLOCK_BYTES, options.pieces ? pieces : Buffer.concat(pieces), { fua }).then(
      () => this.onWriteDone(op, undefined),
      (error: unknown) => this.onWriteDone(op, error),
    );
    return op;
  }

  zero(first: number, count: number, how: "zero" | "trim", options: { fua?: boolean } = {}): ClientOp {
    const engine = this.requireEngine();
    const fua = options.fua === true;
    const token = this.oracle.beginWrite(range(first, count), 0, fua);
    const op = this.register(how, first, count, { write: token });
    this.log(`client: ${how} blocks ${first}+${count}${fua ? " FUA" : ""} (op ${op.id})`);
    const promise =
      how === "trim"
        ? engine.trim(first * BLOCK_BYTES, count * BLOCK_BYTES, { fua })
        : engine.writeZeroes(first * BLOCK_BYTES, count * BLOCK_BYTES, { fua });
    promise.then(
      () => this.onWriteDone(op, undefined),
      (error: unknown) => this.onWriteDone(op, error),
    );
    return op;
  }

  read(first: number, count: number): ClientOp {
    const engine = this.requireEngine();
    const op = this.register("read", first, count, {});
    this.stats.reads++;
    const target = Buffer.alloc(count * BLOCK_BYTES);
    engine.read(first * BLOCK_BYTES, target).then(
      () => this.onReadDone(op, target, undefined),
      (error: unknown) => this.onReadDone(op, target, error),
    );
    return op;
  }

  flush(): ClientOp {
    const engine = this.requireEngine();
    const token = this.oracle.beginFlush();
    const op = this.register("flush", 0, 0, { flush: token });
    this.stats.flushes++;
    this.log(`client: flush (op ${op.id})`);
    engine.flush().then(
      () => this.onFlushDone(op, undefined),
      (error: unknown) => this.onFlushDone(op, error),
    );
    return op;
  }

  private requireEngine(): VolumeEngine {
    const engine = this.running;
    if (engine === undefined) throw new Error("no engine is running");
    return engine;
  }

  private register(kind: OpKind, first: number, count: number, extra: Partial<ClientOp>): ClientOp {
    const op: ClientOp = {
      id: this.nextOpId++,
      kind,
      first,
      count,
      engineNo: this.engineNo,
      done: false,
      lost: false,
      error: undefined,
      ...extra,
    };
    this.ops.set(op.id, op);
    for (let block = first; block < first + count; block++) {
      if (this.busy.has(block)) throw new Error(`client: block ${block} already has an operation in flight`);
      this.busy.set(block, op);
    }
    return op;
  }

  private release(op: ClientOp): void {
    for (let block = op.first; block < op.first + op.count; block++)
      if (this.busy.get(block) === op) this.busy.delete(block);
    this.ops.delete(op.id);
  }

  /** Settles a client operation; false if it belongs to an engine that crashed (nobody hears it). */
  private finish(op: ClientOp, error: unknown): boolean {
    if (op.lost) return false;
    op.done = true;
    op.error = error;
    this.release(op);
    op.onDone?.(error);
    return true;
  }

  private onWriteDone(op: ClientOp, error: unknown): void {
    if (!this.finish(op, error)) return;
    const token = op.write!;
    if (error !== undefined) {
      this.stats.failedWrites++;
      this.oracle.fail(token);
      this.log(`client: ${op.kind} op ${op.id} failed: ${(error as Error).message}`);
      return;
    }
    this.stats.acked++;
    this.oracle.ack(token);
    this.log(`client: ${op.kind} op ${op.id} acknowledged`);
    // Rule 1 at the moment of the acknowledgement: on every in-sync copy (durable, with FUA).
    for (const location of this.inSyncLocations()) {
      const disk = this.net.disks.get(location);
      for (const block of token.blocks) {
        const seen = decodeBlock(disk?.view(block) ?? null, block);
        if (seen !== token.stamp)
          return this.record(
            "rule 1 (a)",
            `${op.kind} ${stampName(token.stamp)} of block ${block} was acknowledged while ${location} is in sync ` +
              `and holds ${describeBytes(disk?.view(block) ?? null, block)}`,
          );
        if (token.fua && decodeBlock(disk!.durableView(block), block) !== token.stamp)
          return this.record(
            "rule 1 (a)",
            `FUA ${op.kind} ${stampName(token.stamp)} of block ${block} was acknowledged but is not durable on ${location}`,
          );
      }
    }
  }

  private onReadDone(op: ClientOp, target: Buffer, error: unknown): void {
    if (!this.finish(op, error)) return;
    if (error !== undefined) {
      this.log(`client: read of ${op.first}+${op.count} failed: ${(error as Error).message}`);
      return;
    }
    for (let i = 0; i < op.count; i++) {
      const block = op.first + i;
      const data = target.subarray(i * BLOCK_BYTES, (i + 1) * BLOCK_BYTES);
      const seen = decodeBlock(data, block);
      if (seen === GARBAGE || !this.oracle.allowed(block).has(seen))
        return this.record(
          "(e) read",
          `a read of block ${block} returned ${describeBytes(data, block)}; the block ${this.oracle.describe(block)}`,
        );
      this.oracle.collapse(block, seen);
    }
  }

  private onFlushDone(op: ClientOp, error: unknown): void {
    if (!this.finish(op, error)) return;
    if (error !== undefined) {
      this.log(`client: flush op ${op.id} failed: ${(error as Error).message}`);
      return;
    }
    this.oracle.completeFlush(op.flush!);
    this.log(`client: flush op ${op.id} done`);
    // Rule 1: what the flush covers is durable on every in-sync copy.
    for (const location of this.inSyncLocations()) {
      const disk = this.net.disks.get(location)!;
      for (const block of op.flush!.snapshot.keys()) {
        const durable = decodeBlock(disk.durableView(block), block);
        if (!this.oracle.durableSet(block).has(durable))
          return this.record(
            "rule 1 (a)",
            `a FLUSH completed but ${location} (in sync) has ${describeBytes(disk.durableView(block), block)} ` +
              `durable in block ${block}, which ${this.oracle.describe(block)}`,
          );
      }
    }
  }

  // ---- checks -----------------------------------------------------------------------------------

  /** (a), (b), (d) and verify results, between steps. */
  checkCopies(): void {
    const engine = this.running;
    if (engine === undefined) return;
    if (engine.fenced) throw this.violation("rule 4 (d)", `E${this.engineNo} is fenced: ${engine.fenced}`);
    const inSync = this.inSyncLocations();
    const touched = this.oracle.touched();
    for (const location of inSync) {
      const disk = this.net.disks.get(location);
      if (disk === undefined) throw this.violation("(b)", `${location} is reported in sync but has no copy`);
      for (const block of touched) {
        const seen = decodeBlock(disk.view(block), block);
        if (seen === GARBAGE || !this.oracle.allowed(block).has(seen))
          throw this.violation(
            "(b) in-sync copy",
            `${location} is reported in sync but block ${block} holds ${describeBytes(disk.view(block), block)}; ` +
              `the block ${this.oracle.describe(block)}`,
          );
      }
    }
    if (inSync.length > 1) {
      const disks = inSync.map((location) => this.net.disks.get(location)!);
      for (const block of touched) {
        if (this.busy.has(block)) continue;
        const first = decodeBlock(disks[0]!.view(block), block);
        for (let i = 1; i < disks.length; i++) {
          const other = decodeBlock(disks[i]!.view(block), block);
          if (other !== first)
            throw this.violation(
              "(b) in-sync copies differ",
              `block ${block}: ${inSync[0]} holds ${stampName(first)}, ${inSync[i]} holds ${stampName(other)}, ` +
                `both reported in sync; the block ${this.oracle.describe(block)}`,
            );
        }
      }
    }
    const verify = this.verify;
    if (verify && verify.state !== "running") {
      this.verify = null;
      if (verify.mismatches.length > 0)
        throw this.violation(
          "(b) verify",
          `verify found in-sync copies that differ: ${JSON.stringify(verify.mismatches.slice(0, 5))}`,
        );
    }
  }

  startVerify(repair: boolean): void {
    const engine = this.running;
    if (engine === undefined || this.verify !== null) return;
    try {
      this.verify = engine.startVerify({ repair });
      this.stats.verifies++;
    } catch (error) {
      this.log(`verify not started: ${(error as Error).message}`);
    }
  }

  allInSync(): boolean {
    const engine = this.running;
    return engine !== undefined && engine.status().replicas.every((r) => r.state === "in-sync");
  }

  /**
   * (c): faults off, every copy powered and reachable; the engine is restarted when it is dead or has
   * no in-sync copy left (what an operator does); every copy must come in sync within the deadline.
   */
  async heal(): Promise<void> {
    this.log("heal: faults off, every copy powered and reachable");
    this.net.faultsEnabled = false;
    this.net.clearFaults();
    for (const copy of this.config.copies) {
      this.net.powerOn(copy.location);
      this.net.setLink(copy.location, true);
    }
    // Operations that hang end (in a timeout) before the world counts as healed.
    await this.runUntil(() => this.net.hanging.size === 0, 60_000);
    const deadline = this.clock.now() + HEAL_DEADLINE_MS;
    let starts = 0;
    while (this.clock.now() < deadline) {
      if (this.engine === undefined) {
        if (++starts > 5) throw this.violation("(c) healing", "the engine does not start with every copy reachable");
        await this.startEngine();
        continue;
      }
      const healed = await this.runUntil(() => this.clientIdle() && this.allInSync(), 20_000);
      // A local copy that failed while the volume was idle is noticed at its next I/O: touch them all.
      if (healed && (await this.driver.drive(this.engine.flush(), 10_000)).state === "fulfilled" && this.allInSync())
        break;
      const status = this.engine.status();
      const refused = status.replicas.filter((r) => r.state === "split-brain" || r.state === "refused");
      if (refused.length > 0)
        throw this.violation(
          "rule 5",
          `copies refused after healing: ${refused.map((r) => `${r.location}: ${r.state}: ${r.reason}`).join("; ")}`,
        );
      if (status.state === "failed") {
        this.log(`heal: the volume has no in-sync copy left; restarting the engine`);
        await this.stopEngine();
      }
    }
    if (!(this.clientIdle() && this.allInSync()))
      throw this.violation(
        "(c) healing",
        `not every copy is in sync ${HEAL_DEADLINE_MS} ms after the faults ended: ${this.describeStatus()}; ` +
          `${this.opsInFlight} client operations in flight`,
      );
    this.log(`healed: ${this.describeStatus()}`);
    await this.runFor(5);
    this.checkCopies();
  }

  /** (c): the copies are byte-identical and match the oracle; reads agree; a flush makes them durable. */
  async checkConverged(): Promise<void> {
    const engine = this.requireEngine();
    const disks = this.config.copies.map((copy) => {
      const disk = this.net.disks.get(copy.location);
      if (disk === undefined) throw this.violation("(c)", `${copy.location} has no copy after healing`);
      return disk;
    });
    const blocks = new Set(this.oracle.touched());
    for (const disk of disks) for (const block of disk.presentBlocks()) blocks.add(block);
    const values = new Map<number, number>();
    for (const block of [...blocks].sort((a, b) => a - b)) {
      const first = disks[0]!.view(block);
      for (const disk of disks.slice(1)) {
        if (!sameBytes(first, disk.view(block)))
          throw this.violation(
            "(c) copies differ after healing",
            `block ${block}: ${disks[0]!.location} holds ${describeBytes(first, block)}, ` +
              `${disk.location} holds ${describeBytes(disk.view(block), block)}`,
          );
      }
      const seen = decodeBlock(first, block, true);
      if (seen === GARBAGE || !this.oracle.allowed(block).has(seen))
        throw this.violation(
          "(c) healed data",
          `every copy holds ${describeBytes(first, block)} in block ${block}, which ${this.oracle.describe(block)}`,
        );
      this.oracle.collapse(block, seen);
      values.set(block, seen);
    }
    // Through the engine, in runs of touched blocks.
    for (const block of this.oracle.touched()) {
      const target = Buffer.alloc(BLOCK_BYTES);
      const outcome = await this.driver.drive(engine.read(block * BLOCK_BYTES, target), 10_000);
      if (outcome.state !== "fulfilled")
        throw this.violation("(a) read after healing", `reading block ${block} ${outcome.state}`);
      if (decodeBlock(target, block, true) !== values.get(block))
        throw this.violation(
          "(e) read after healing",
          `block ${block} reads as ${describeBytes(target, block)}, the copies hold ${stampName(values.get(block)!)}`,
        );
    }
    const flushed = await this.driver.drive(engine.flush(), 10_000);
    if (flushed.state !== "fulfilled") throw this.violation("(c)", `FLUSH after healing ${flushed.state}`);
    for (const disk of disks)
      for (const block of blocks)
        if (!sameBytes(disk.durableView(block), disk.view(block)))
          throw this.violation("rule 1 (c)", `after a FLUSH, block ${block} of ${disk.location} is not durable`);
  }

  /** (c): a clean stop empties the activity log, so the next start has nothing to resync. */
  async checkCleanRestart(): Promise<void> {
    await this.stopEngine();
    for (const copy of this.config.copies) {
      const meta = this.net.disks.get(copy.location)!.meta;
      if (meta.activityLog.length > 0)
        throw this.violation(
          "rule 3 (c)",
          `${copy.location} keeps activity-log extents ${meta.activityLog.join(",")} after a clean stop`,
        );
    }
    const engine = await this.startEngine();
    if (engine === undefined) throw this.violation("(c)", "the engine does not start after a clean stop");
    if (!this.allInSync())
      throw this.violation("(c) clean restart", `after a clean stop and start: ${this.describeStatus()}`);
    await this.stopEngine();
  }
}

function range(first: number, count: number): number[] {
  return Array.from({ length: count }, (_, i) => first + i);
}

function sameBytes(a: Buffer | null, b: Buffer | null): boolean {
  const zero = (data: Buffer | null): boolean => data === null || data.equals(ZERO_BLOCK);
  if (a === null || b === null) return zero(a) && zero(b);
  return a.equals(b);
}

// ---- random schedules ---------------------------------------------------------------------------

export interface ScheduleOptions {
  /** Steps of the random schedule (default 100). */
  readonly steps?: number;
  readonly trace?: (line: string) => void;
  readonly config?: Partial<WorldConfig>;
  readonly network?: Partial<NetworkSettings>;
}

export interface ScheduleResult {
  readonly seed: number;
  readonly virtualMs: number;
  readonly timers: number;
  readonly stats: World["stats"];
  readonly network: SimNetwork["stats"];
}

type Action =
  | "write"
  | "read"
  | "zero"
  | "flush"
  | "idle"
  | "fail-next"
  | "hang-next"
  | "disconnect"
  | "link-down"
  | "power-loss"
  | "replace-disk"
  | "crash"
  | "restart"
  | "verify";

const ACTIONS: readonly (readonly [Action, number])[] = [
  ["write", 30],
  ["read", 14],
  ["zero", 4],
  ["flush", 8],
  ["idle", 5],
  ["fail-next", 3],
  ["hang-next", 1.5],
  ["disconnect", 2],
  ["link-down", 2.5],
  ["power-loss", 1],
  ["replace-disk", 0.3],
  ["crash", 1.5],
  ["restart", 0.4],
  ["verify", 1],
];

/** Runs one random schedule of `steps` steps for `seed`, then heals and checks convergence. */
export async function runSchedule(seed: number, options: ScheduleOptions = {}): Promise<ScheduleResult> {
  const configRng = new Rng(seed);
  const base = randomConfig(configRng, options.config);
  const config: WorldConfig = { ...base, network: { ...base.network, ...options.network } };
  const world = new World(seed, config, options.trace ? { trace: options.trace } : {});
  const rng = world.rng;
  world.log(`config: ${world.describeConfig()}`);
  world.net.faultsEnabled = false;
  if ((await world.startEngine()) === undefined) throw world.violation("start", "the new volume did not start");
  world.net.faultsEnabled = true;
  const steps = options.steps ?? 100;
  for (let step = 1; step <= steps; step++) {
    world.step = step;
    await randomStep(world, rng);
    await world.runFor(rng.int(0, 15));
    world.checkCopies();
  }
  world.step = steps + 1;
  await world.heal();
  await world.checkConverged();
  await world.checkCleanRestart();
  return {
    seed,
    virtualMs: world.clock.now(),
    timers: world.clock.fired,
    stats: world.stats,
    network: world.net.stats,
  };
}

/** How a random start treats unreachable copies: vouched for with `chance`, else proven or not at all. */
function pickDegraded(rng: Rng, chance: number): boolean | "proven" {
  if (rng.chance(chance)) return rng.chance(0.5) ? true : "proven";
  return false;
}

async function randomStep(world: World, rng: Rng): Promise<void> {
  if (world.engine === undefined) {
    // A previous start failed (faults, or a copy unreachable): the agent tries again.
    await world.startEngine({ degraded: pickDegraded(rng, 0.5) });
    return;
  }
  const engine = world.running!;
  const copies = world.config.copies;
  const copy = rng.pick(copies).location;
  let action = rng.weighted(ACTIONS);
  if (engine.status().state === "failed" && rng.chance(0.3)) action = "restart";
  const clientAction = action === "write" || action === "read" || action === "zero" || action === "flush";
  if (clientAction && world.opsInFlight >= MAX_CLIENT_OPS) action = "idle";
  switch (action) {
    case "write":
    case "read":
    case "zero": {
      const picked = world.pickRange(8);
      if (picked === undefined) break;
      if (action === "write")
        world.write(picked.first, picked.count, { fua: rng.chance(0.2), pieces: rng.chance(0.3) });
      else if (action === "read") world.read(picked.first, picked.count);
      else world.zero(picked.first, picked.count, rng.chance(0.5) ? "trim" : "zero", { fua: rng.chance(0.2) });
      break;
    }
    case "flush":
      world.flush();
      break;
    case "idle":
      await world.runFor(rng.int(100, 3000));
      break;
    case "fail-next":
      world.net.plans.get(copy)!.failNext += rng.int(1, 2);
      world.log(`${copy}: the next operations fail`);
      break;
    case "hang-next":
      world.net.plans.get(copy)!.hangNext += 1;
      world.log(`${copy}: the next operation hangs`);
      break;
    case "disconnect":
      world.log(`${copy}: connection reset`);
      world.net.disconnectAll(copy, "connection reset by peer");
      break;
    case "link-down": {
      const ms = rng.int(50, 4000);
      world.log(`${copy}: link down for ${ms} ms`);
      world.net.setLink(copy, false);
      world.clock.schedule(ms, () => {
        world.log(`${copy}: link up`);
        world.net.setLink(copy, true);
      });
      break;
    }
    case "power-loss": {
      const remote = copies.filter((c) => !c.local);
      if (remote.length === 0) break;
      const target = rng.pick(remote).location;
      world.powerLoss(target, rng.chance(0.5));
      const ms = rng.int(100, 4000);
      world.clock.schedule(ms, () => {
        world.log(`${target}: powered on`);
        world.net.powerOn(target);
        world.net.setLink(target, true);
      });
      break;
    }
    case "replace-disk": {
      // Only a copy the volume does not rely on: not in sync, not the one it was last in sync on.
      const candidates = engine
        .status()
        .replicas.filter((r) => r.state !== "in-sync" && !world.lastInSync.has(r.location))
        .map((r) => r.location);
      if (candidates.length === 0) break;
      const target = rng.pick(candidates);
      world.log(`${target}: disk replaced by an empty one`);
      world.net.setLink(target, false, "disk removed");
      world.net.destroyDisk(target);
      world.clock.schedule(rng.int(10, 2000), () => world.net.setLink(target, true));
      break;
    }
    case "crash": {
      world.crashEngine(rng.chance(0.4));
      await world.runFor(rng.int(0, 2500));
      for (const local of copies.filter((c) => c.local)) {
        // The host is back: its local disks are powered (and reachable) again.
        world.net.powerOn(local.location);
        world.net.setLink(local.location, true);
      }
      await world.startEngine({
        degraded: pickDegraded(rng, 0.7),
        ...(rng.chance(0.1) && { interruptAfterMs: rng.int(0, 30) }),
      });
      break;
    }
    case "restart":
      await world.stopEngine();
      await world.startEngine({ degraded: pickDegraded(rng, 0.7) });
      break;
    case "verify":
      world.startVerify(rng.chance(0.3));
      break;
  }
}
