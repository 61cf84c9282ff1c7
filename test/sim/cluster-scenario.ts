// The control-plane simulation: 2 to 5 REAL agents (src/agent/, each in sim-host.ts's world) over the
// simulated store (sim-store.ts) and the engine simulation's copies (sim-copy.ts), running the REAL
// engines, all on one virtual clock, driven by one seed. Every host has two disks, and a volume's
// copies are on distinct hosts, or a local mirror (two on the primary's two disks, one on another
// host), or on places the operator names. A client writes and reads every volume through the NBD front
// of the host the store records as its primary, while the seed injects faults:
//   agent killed (and restarted later), agent paused (SIGSTOP; its watchdog kills it past
//   watchdogTimeoutMs), agent and watchdog paused together (nothing kills it), a host cut off from the
//   store, two hosts cut off from each other, store answers lost after the write was applied, slow
//   store answers, store leader changes, failing or hanging copy disks (one disk of a host), operator
//   switchovers; every host's clock drifts within the bound timings.ts assumes.
// The operator also changes the copies of live volumes, as the CLI does (volume-admin.ts): adds one
// (where placement puts it, or on a host and disk it names), removes one, moves one (disk evacuate:
// add, wait until in sync, switch over if it was the primary's only copy, remove), or replaces one in
// one transaction (a failed disk's spare); refusals are expected. Those draws come from a stream of
// their own (copyRng), so that the other draws of a seed stay as they were.
// After every turn of the world it checks:
//   (1) one writer: no engine acknowledges a write once an engine of a higher epoch has started serving
//       the volume (so at most one engine per volume accepts writes, at any epoch);
//   (2) no promotion of a copy not recorded in sync: at the instant the store applies a failover's new
//       primary record, one of the new primary's copies in the spec is recorded in sync;
//   (3) no acknowledged write lost: every read returns a value the oracle (oracle.ts) allows, before and
//       after copy changes; every acknowledged write is held in sync by a copy the spec places; after
//       healing every block the client touched reads back as allowed, through the primary and from
//       every copy of the spec;
//   (4) a spec never places two copies on one disk;
//   (5) never without an in-sync copy: from its creation on, a volume always has a copy of its spec
//       recorded in sync (the one a failover or the next start continues from);
//   (6) liveness: once every fault is healed (agents restarted or resumed, partitions and the store
//       healed) and the operator's last change is done, every volume has a primary serving within
//       LIVENESS_BOUND_MS, whose engine holds exactly the spec's copies, every one in sync in the
//       engine and recorded in sync in the store (and no record of a copy the spec does not place).
// A violation throws SimViolation naming the seed, the rule and the last events; the same seed replays
// it exactly (`npm run sim -- --seed N --trace`).

import {
  addCopy,
  createVolume,
  removeCopy,
  replaceCopy,
  requestSwitchover,
  type CopyChange,
} from "../../src/cluster/volume-admin.js";
import { DEFAULT_VM_POLICY, type VmRecord, type VmStatusRecord } from "../../src/cluster/vm-schema.js";
import { SimVmFleet } from "./sim-vm.js";
import type { MigrationRecord } from "../../src/cluster/migration-schema.js";
import {
  copiesOn,
  copyId,
  keys,
  type CopyPlace,
  type PrimaryRecord,
  type VolumeSpec,
} from "../../src/cluster/schema.js";
import { DEFAULT_TIMINGS, type Timings } from "../../src/agent/timings.js";
import type { EngineOptions, VolumeEngine } from "../../src/engine/engine.js";
import { errorMessage } from "../../src/core/errors.js";
import { Oracle, blockPattern, decodeBlock, stampName, type WriteToken } from "./oracle.js";
import { Rng } from "./rng.js";
import { SimClock, SimDriver } from "./sim-clock.js";
import { BLOCK_BYTES, DEFAULT_NETWORK, SimNetwork, type CopySpec } from "./sim-copy.js";
import { SIM_DISKS, SimHost, copyKey, placeOf } from "./sim-host.js";
import { SimStore, type AppliedOperation } from "./sim-store.js";

const MiB = 1024 * 1024;
const VOLUME_BYTES = 4 * MiB;
/** Blocks the client writes to (a small set, so writes and reads meet). */
const HOT_BLOCKS = 48;
const MAX_CLIENT_OPS = 4;
/** Virtual time allowed, once every fault is healed, until every volume serves with every copy in sync. */
export const LIVENESS_BOUND_MS = 90_000;
const EVENTS_KEPT = 60;
/** How long a supervisor waits before it starts an agent that exited again. */
const RESTART_DELAY_MS = 2_000;
/** Chance, per step, that the operator changes a volume's copies (add, remove, move, replace). */
const COPY_CHANGE_CHANCE = 0.12;
/** How often the operator looks at the store while waiting (as the CLI's copy-progress.ts polls). */
const OPERATOR_POLL_MS = 500;
/** How long a move waits for its new copy to be in sync, and for a switchover, before it gives up. */
const MOVE_WAIT_MS = 60_000;
/** Wall-clock time of the simulation's virtual time 0 (records carry dates). */
const WALL_EPOCH_MS = Date.UTC(2026, 0, 1);

export class SimViolation extends Error {
  override readonly name = "SimViolation";
}

/** A deliberate bug, to show the simulation catches it (cluster-simulation.test.ts). */
export type PlantedBug = "none";

export interface ClusterSimOptions {
  readonly seed: number;
  /** Every event is passed here as it happens (replay). */
  readonly trace?: (line: string) => void;
  /** Fault steps (each 200 ms to 2 s of virtual time). */
  readonly faultSteps?: number;
  /**
   * Operators also ask for live migrations among the faults. Off by default, so that every other seed
   * draws what it drew before (the regression seeds keep their paths).
   */
  readonly migrations?: boolean;
}

interface ClientOp {
  readonly volume: string;
  readonly kind: "write" | "read" | "flush";
  readonly block: number;
  readonly host: SimHost;
  readonly engine: VolumeEngine;
  readonly write?: WriteToken;
  done: boolean;
}

export interface ClusterSimStats {
  hosts: number;
  volumes: number;
  /** Volumes created with two copies on one host (a local mirror, or places the operator named). */
  mirrored: number;
  /** Operator copy changes carried out (add, remove, move, replace) and refused. */
  copyChanges: Record<string, number>;
  acked: number;
  failedWrites: number;
  reads: number;
  faults: Record<string, number>;
  failovers: number;
  virtualMs: number;
}

export class ClusterSim {
  readonly rng: Rng;
  readonly clock = new SimClock();
  readonly driver: SimDriver;
  readonly store: SimStore;
  readonly net: SimNetwork;
  readonly timings: Timings = DEFAULT_TIMINGS;
  readonly hostNames: string[];
  readonly volumeNames: string[];
  private readonly replicasPerVolume: number;
  /**
   * Draws for the copies' layout, the disk a disk fault hits and the operator's copy changes: a stream
   * of its own, so that these left the other draws of a seed as they were.
   */
  private readonly copyRng: Rng;
  /** How each volume's copies are laid out at creation. */
  private readonly layouts = new Map<string, "spread" | "mirror" | "places">();
  /** The operator's copy changes under way (a move waits for its new copy). */
  private readonly operatorTasks = new Set<Promise<void>>();
  /** The running incarnation of each host, or undefined while it is dead. */
  private readonly hosts = new Map<string, SimHost | undefined>();
  private readonly incarnations = new Map<string, number>();
  private nextOwner = 1;
  /** Host pairs that cannot reach each other ("a|b", sorted). */
  private readonly cut = new Set<string>();
  private readonly oracles = new Map<string, Oracle>();
  private readonly ops = new Set<ClientOp>();
  private readonly busyBlocks = new Map<string, Set<number>>();
  /** Per volume, the highest epoch of an engine that has started serving. */
  private readonly servingEpoch = new Map<string, number>();
  private readonly engineEpoch = new WeakMap<VolumeEngine, number>();
  /** Each copy record as of the store's applied log (key -> value), for rule 2. */
  private readonly copyRecords = new Map<string, string>();
  /** Each volume's spec as of the store's applied log. */
  private readonly specs = new Map<string, VolumeSpec>();
  /** Per volume, the copies of its spec recorded in sync, as of the store's applied log. */
  private readonly inSyncRecorded = new Map<string, string[]>();
  private appliedSeen = 0;
  /** Each volume's primary host as of the store's applied log. */
  private readonly primaryHosts = new Map<string, string>();
  private failure: SimViolation | undefined;
  private readonly fleet: SimVmFleet;
  private readonly events: string[] = [];
  private idCounter = 0;
  private step = 0;
  readonly stats: ClusterSimStats;

  constructor(readonly options: ClusterSimOptions) {
    this.rng = new Rng(options.seed);
    this.driver = new SimDriver(this.clock, () => this.check());
    const hostCount = this.rng.int(2, 5);
    this.hostNames = Array.from({ length: hostCount }, (_, i) => `h${i + 1}`);
    this.volumeNames = Array.from({ length: this.rng.int(1, 2) }, (_, i) => `vol${i + 1}`);
    this.replicasPerVolume = Math.min(hostCount, this.rng.pick([2, 2, 3]));
    this.copyRng = new Rng((options.seed ^ 0x5eed_d15c) >>> 0);
    for (const volume of this.volumeNames)
      this.layouts.set(
        volume,
        this.copyRng.weighted<"spread" | "mirror" | "places">([
          ["spread", 3],
          ["mirror", 2],
          ["places", 1],
        ]),
      );
    this.store = new SimStore({
      clock: this.clock,
      rng: this.rng.fork(),
      onTrace: (line) => this.options.trace?.(`store ${line}`),
    });
    const copies: CopySpec[] = [];
    for (const host of this.hostNames)
      for (const disk of SIM_DISKS)
        for (const volume of this.volumeNames) copies.push({ location: copyKey(host, disk, volume), local: false });
    this.net = new SimNetwork(
      this.clock,
      this.rng.fork(),
      copies,
      { ...DEFAULT_NETWORK, randomErrorRate: 0, lateDeliveryAfterDisconnect: false },
      (line) => this.note(`net: ${line}`),
      (error) => this.violation("copy model", error.message),
    );
    this.fleet = new SimVmFleet(this.clock, this.rng.fork());
    this.stats = {
      hosts: hostCount,
      volumes: this.volumeNames.length,
      mirrored: [...this.layouts.values()].filter((layout) => layout !== "spread").length,
      copyChanges: {},
      acked: 0,
      failedWrites: 0,
      reads: 0,
      faults: {},
      failovers: 0,
      virtualMs: 0,
    };
  }

  async run(): Promise<ClusterSimStats> {
    for (const name of this.hostNames) this.startHost(name);
    await this.until("every host registered", () => this.liveHosts().length === this.hostNames.length, 20_000);
    const operator = this.store.client("operator");
    for (const volume of this.volumeNames) {
      const created = await this.driver.drive(
        createVolume(operator, this.creation(volume), {
          actor: "operator",
          now: () => new Date(WALL_EPOCH_MS + this.clock.now()),
        }),
        30_000,
      );
      if (created.state !== "fulfilled")
        throw this.violation(
          "setup",
          `volume ${volume} was not created: ${created.state === "rejected" ? errorMessage(created.error) : "pending"}`,
        );
      this.oracles.set(volume, new Oracle());
      this.busyBlocks.set(volume, new Set());
    }
    await this.until(
      "every volume served",
      () => this.volumeNames.every((v) => this.servingHost(v) !== undefined),
      30_000,
    );
    // One VM per volume, its disk that volume, wanted started.
    for (const volume of this.volumeNames) {
      const vm: VmRecord = {
        name: vmOf(volume),
        vcpus: 1,
        memoryMiB: 256,
        volume,
        boot: "disk",
        nics: [],
        heartbeat: true,
        desired: "started",
        startRequest: 1,
        policy: DEFAULT_VM_POLICY,
        createdAt: new Date(WALL_EPOCH_MS + this.clock.now()).toISOString(),
      };
      await this.driver.drive(operator.put(keys.vm(vm.name), JSON.stringify(vm)), 10_000);
    }
    await this.until(
      "every VM running",
      () => this.volumeNames.every((v) => this.fleet.live(vmOf(v)).length === 1),
      30_000,
    );

    const steps = this.options.faultSteps ?? 30;
    for (this.step = 1; this.step <= steps; this.step++) {
      if (this.rng.chance(0.35)) this.injectFault();
      if (this.copyRng.chance(COPY_CHANGE_CHANCE)) this.changeCopies();
      this.clientTurn();
      await this.driver.runFor(this.rng.int(200, 2_000));
      this.check();
    }
    this.step = steps + 1;
    await this.heal();
    await this.finalCheck();
    this.stats.virtualMs = Math.round(this.clock.now());
    await this.shutdown();
    return this.stats;
  }

  // ---- hosts ---------------------------------------------------------------------------------------

  private startHost(name: string): SimHost {
    const incarnation = (this.incarnations.get(name) ?? 0) + 1;
    this.incarnations.set(name, incarnation);
    const engineOptions: Partial<EngineOptions> = {
      newId: () => (++this.idCounter).toString(16).padStart(16, "0"),
      writebackMs: 1_000,
      reconnectMs: 500,
      resync: { chunkBytes: 256 * 1024, saveProgressMs: 300, parallelChunks: 2 },
    };
    const host = new SimHost({
      name,
      incarnation,
      owner: this.nextOwner++,
      clock: this.clock,
      rate: 1 + (this.rng.float() * 2 - 1) * 0.01,
      rng: this.rng.fork(),
      store: this.store,
      net: this.net,
      timings: this.timings,
      wallEpochMs: WALL_EPOCH_MS,
      engineOptions,
      reaches: (other) => this.reaches(name, other),
      hostNamed: (other) => this.hosts.get(other),
      onServing: (serving, volume, engine) => this.onServing(serving, volume, engine),
      log: (line) => this.note(line),
      newId: () => (++this.idCounter).toString(16).padStart(16, "0"),
      fleet: this.fleet,
    });
    this.hosts.set(name, host);
    host.clock.run(() => {
      host.agent.start().then(
        () => (host.started = true),
        (error: unknown) => {
          // The process exits; its supervisor (systemd's Restart=on-failure) starts it again.
          this.note(`${name}: agent start failed: ${errorMessage(error)}`);
          if (this.hosts.get(name) !== host) return;
          this.killHost(name, "the agent exited");
          this.clock.schedule(RESTART_DELAY_MS, () => this.hosts.get(name) === undefined && this.startHost(name));
        },
      );
    });
    return host;
  }

  private killHost(name: string, why: string): void {
    const host = this.hosts.get(name);
    if (host === undefined) return;
    this.note(`FAULT kill ${name} (${why})`);
    host.clock.kill();
    // A power loss, or the watchdog: the host's QEMUs die with its agent.
    host.vms.killAll();
    this.store.crashHost(name);
    this.net.killOwner(host.options.owner);
    this.hosts.set(name, undefined);
    for (const op of this.ops) if (op.host === host) this.settle(op, false, new Error("the host died"));
  }

  private reaches(a: string, b: string): boolean {
    if (a === b) return true;
    return !this.cut.has(a < b ? `${a}|${b}` : `${b}|${a}`);
  }

  private liveHosts(): SimHost[] {
    return [...this.hosts.values()].filter((host): host is SimHost => host !== undefined && host.started);
  }

  /** The host the store records as the volume's primary, if it runs and exports the volume. */
  private servingHost(volume: string): SimHost | undefined {
    const kv = this.store.readKey(keys.primary(volume));
    if (kv === undefined) return undefined;
    const record = JSON.parse(kv.value) as PrimaryRecord;
    const host = this.hosts.get(record.host);
    return host !== undefined && host.exports.has(volume) ? host : undefined;
  }

  private onServing(host: SimHost, volume: string, engine: VolumeEngine): void {
    const epoch = engine.status().epoch;
    this.engineEpoch.set(engine, epoch);
    const before = this.servingEpoch.get(volume) ?? 0;
    if (epoch <= before)
      this.violation("one writer", `${host.name} started serving ${volume} at epoch ${epoch}, not above ${before}`);
    this.servingEpoch.set(volume, Math.max(before, epoch));
    this.note(`${host.name} serves ${volume} at epoch ${epoch}`);
  }

  // ---- faults --------------------------------------------------------------------------------------

  private count(fault: string): void {
    this.stats.faults[fault] = (this.stats.faults[fault] ?? 0) + 1;
  }

  private injectFault(): void {
    const name = this.rng.pick(this.hostNames);
    const host = this.hosts.get(name);
    const fault = this.rng.weighted<string>([
      ["kill", 3],
      ["restart", host === undefined ? 6 : 0],
      ["pause", 2],
      ["pause-with-watchdog", 2],
      ["store-partition", 3],
      ["store-heal", 2],
      ["host-partition", 3],
      ["host-heal", 2],
      ["lost-answer", 2],
      ["slow-store", 1],
      ["leader-change", 1],
      ["disk-fail", 2],
      ["disk-hang", 1],
      ["switchover", 2],
      ["migrate", this.options.migrations === true ? 3 : 0],
      ["vm-crash", 2],
      ["vm-panic", 1],
      ["vm-heartbeat-freeze", 1],
    ]);
    this.count(fault);
    switch (fault) {
      case "kill":
        return this.killHost(name, "kill -9");
      case "restart":
        if (host === undefined) {
          this.note(`FAULT restart ${name}`);
          this.startHost(name);
        }
        return;
      case "pause":
      case "pause-with-watchdog": {
        if (host === undefined || host.clock.isPaused) return;
        const withWatchdog = fault === "pause-with-watchdog";
        const ms = this.rng.pick([300, 1_500, 4_000, 9_000, 15_000]);
        this.note(`FAULT pause ${name} for ${ms} ms${withWatchdog ? " (watchdog paused too)" : ""}`);
        host.clock.pause();
        host.watchdogStopped = withWatchdog;
        // Agent and watchdog stopped together: the whole machine froze, its VMs with it.
        if (withWatchdog) host.vms.freeze(true);
        const { watchdogTimeoutMs } = this.timings;
        if (!withWatchdog && ms >= watchdogTimeoutMs) {
          this.clock.schedule(watchdogTimeoutMs, () => {
            if (this.hosts.get(name) !== host || !host.clock.isPaused) return;
            // The watchdog kills the agent; its supervisor starts it again.
            this.killHost(name, "its watchdog");
            this.clock.schedule(RESTART_DELAY_MS, () => this.hosts.get(name) === undefined && this.startHost(name));
          });
          return;
        }
        this.clock.schedule(ms, () => {
          if (this.hosts.get(name) !== host) return;
          this.note(`resume ${name}`);
          this.resumeHost(host);
        });
        return;
      }
      case "store-partition":
        this.note(`FAULT ${name} cut off from the store`);
        return this.store.partition(name);
      case "store-heal":
        this.note(`heal ${name} <-> store`);
        return this.store.heal(name);
      case "host-partition": {
        const other = this.rng.pick(this.hostNames.filter((h) => h !== name));
        this.note(`FAULT ${name} cut off from ${other}`);
        this.cut.add(name < other ? `${name}|${other}` : `${other}|${name}`);
        for (const a of [name, other]) {
          const b = a === name ? other : name;
          const owner = this.hosts.get(a)?.options.owner;
          for (const port of [...this.net.ports])
            if (port.owner === owner && port.location.startsWith(`${b}/`)) port.lose(`partition ${a} | ${b}`, true);
        }
        return;
      }
      case "host-heal": {
        if (this.cut.size === 0) return;
        const pair = this.rng.pick([...this.cut]);
        this.note(`heal ${pair}`);
        this.cut.delete(pair);
        return;
      }
      case "lost-answer":
        this.note(`FAULT the store loses ${name}'s next write answer`);
        return this.store.loseNextAnswer(name);
      case "slow-store": {
        const maxExtraMs = this.rng.pick([100, 500, 1_500]);
        this.note(`FAULT slow store answers (up to ${maxExtraMs} ms extra)`);
        this.store.setSlow(undefined, { maxExtraMs, probability: 0.5 });
        this.clock.schedule(this.rng.int(1_000, 8_000), () => this.store.setSlow(undefined, undefined));
        return;
      }
      case "leader-change": {
        const pauseMs = this.rng.pick([200, 1_000, 2_500]);
        this.note(`FAULT store leader change (${pauseMs} ms pause)`);
        return this.store.leaderChange(pauseMs);
      }
      case "disk-fail": {
        const volume = this.rng.pick(this.volumeNames);
        const disk = this.faultyDisk(name, volume);
        const plan = this.net.plans.get(copyKey(name, disk, volume));
        if (plan === undefined) return;
        const failures = this.rng.int(1, 3);
        this.note(`FAULT ${name}/${disk}'s copy of ${volume}: next ${failures} operations fail`);
        plan.failNext += failures;
        return;
      }
      case "disk-hang": {
        // A disk that stops answering: a remote copy's connection times out, a local one's command does.
        const volume = this.rng.pick(this.volumeNames);
        const disk = this.faultyDisk(name, volume);
        const plan = this.net.plans.get(copyKey(name, disk, volume));
        if (plan === undefined) return;
        this.note(`FAULT ${name}/${disk}'s copy of ${volume}: the next operation hangs`);
        plan.hangNext += 1;
        return;
      }
      case "vm-crash":
      case "vm-panic":
      case "vm-heartbeat-freeze": {
        const running = [...this.hosts.values()].flatMap((h) => h?.vms.running() ?? []);
        if (running.length === 0) return;
        const instance = this.rng.pick(running);
        this.note(`FAULT ${fault} of VM ${instance.record.vm} (pid ${instance.pid}) on ${instance.record.host}`);
        if (fault === "vm-crash") instance.crash();
        else if (fault === "vm-panic") instance.panic();
        else instance.freezeHeartbeat();
        return;
      }
      case "migrate": {
        // An operator's `vm migrate`: the record the CLI writes, with only the CLI's own check that the
        // VM's disk has a primary; the agents refuse or carry out the rest under whatever faults come.
        const volume = this.rng.pick(this.volumeNames);
        const primary = this.store.readKey(keys.primary(volume));
        if (primary === undefined) return;
        const from = (JSON.parse(primary.value) as PrimaryRecord).host;
        const to = this.rng.pick(this.hostNames.filter((h) => h !== from));
        const at = new Date(WALL_EPOCH_MS + this.clock.now()).toISOString();
        this.note(`operator: migrate ${vmOf(volume)} from ${from} to ${to}`);
        const record: MigrationRecord = {
          vm: vmOf(volume),
          volume,
          from,
          to,
          id: `sim-${Math.round(this.clock.now())}`,
          phase: "requested",
          requestedBy: "operator",
          requestedAt: at,
          since: at,
        };
        this.store
          .client("operator")
          .txn(
            [{ key: keys.migration(record.vm), target: "createRevision", result: "equal", value: 0 }],
            [{ type: "put", key: keys.migration(record.vm), value: JSON.stringify(record) }],
            [],
          )
          .catch(() => undefined);
        return;
      }
      case "switchover": {
        const volume = this.rng.pick(this.volumeNames);
        const primary = this.store.readKey(keys.primary(volume));
        if (primary === undefined) return;
        const from = (JSON.parse(primary.value) as PrimaryRecord).host;
        const to = this.rng.pick(this.hostNames.filter((h) => h !== from));
        this.note(`operator: switchover ${volume} to ${to}`);
        const handover = {
          to,
          requestedBy: "operator",
          requestedAt: new Date(WALL_EPOCH_MS + this.clock.now()).toISOString(),
        };
        this.store
          .client("operator")
          .put(keys.handover(volume), JSON.stringify(handover))
          .catch(() => undefined);
        return;
      }
    }
  }

  /** The disk of `host` a disk fault on its copy of `volume` hits: one the spec places the volume on, if any. */
  private faultyDisk(host: string, volume: string): string {
    const spec = this.specs.get(volume);
    const placed = spec === undefined ? [] : copiesOn(spec, host).map((copy) => copy.disk);
    return this.copyRng.pick(placed.length > 0 ? placed : SIM_DISKS);
  }

  // ---- the operator's copy changes -------------------------------------------------------------------

  /** How volume `volume` is created: copies on distinct hosts, a local mirror, or places named by the operator. */
  private creation(volume: string): Parameters<typeof createVolume>[1] {
    const base = { name: volume, sizeBytes: VOLUME_BYTES };
    const layout = this.layouts.get(volume)!;
    if (layout === "spread") return { ...base, copies: this.replicasPerVolume };
    // Two copies on the primary's two disks, one on another host (volume create --local-mirror).
    if (layout === "mirror") return { ...base, copies: 2, mirrorFirst: true };
    // --copies HOST:DISK,...: the primary and another host, and a second disk on one of them.
    const [first, second] = this.copyRng.pick([0, 1]) === 0 ? [...SIM_DISKS] : [...SIM_DISKS].reverse();
    const primary = this.copyRng.pick(this.hostNames);
    const other = this.copyRng.pick(this.hostNames.filter((host) => host !== primary));
    const mirrored = this.copyRng.pick([primary, other]);
    const places: CopyPlace[] = [
      { host: primary, disk: first! },
      { host: other, disk: first! },
      { host: mirrored, disk: second! },
    ];
    return { ...base, copies: places.length, places };
  }

  private operatorOptions(reason = "operator"): { actor: string; now: () => Date; reason: string } {
    return { actor: "operator", now: () => new Date(WALL_EPOCH_MS + this.clock.now()), reason };
  }

  /**
   * The operator changes a volume's copies as the CLI does (volume-admin.ts against the store): adds a
   * copy (where placement puts it, or on a host and disk of its choice), removes one, moves one (disk
   * evacuate: add on another disk, wait until it is in sync, then remove the old one), or replaces one
   * in one transaction (what a host does with a failed disk's copy). Refusals are expected.
   */
  private changeCopies(): void {
    const volume = this.copyRng.pick(this.volumeNames);
    const spec = this.specs.get(volume);
    if (spec === undefined) return;
    const kind = this.copyRng.weighted<string>([
      ["add-copy", 3],
      ["remove-copy", 3],
      ["move-copy", 3],
      ["replace-copy", 1],
    ]);
    this.count(kind);
    const from = this.copyRng.pick(spec.replicas);
    let work: Promise<void>;
    switch (kind) {
      case "add-copy": {
        const host = this.copyRng.pick(this.hostNames);
        const want = this.copyRng.weighted<{ host?: string; disk?: string }>([
          [{}, 2],
          [{ host }, 1],
          [{ host, disk: this.copyRng.pick(SIM_DISKS) }, 2],
        ]);
        const where = want.host === undefined ? "where placement puts it" : `on ${want.host}/${want.disk ?? "?"}`;
        this.note(`operator: add a copy of ${volume} ${where}`);
        work = this.changed("added", volume, addCopy(this.operator, volume, want, this.operatorOptions())).then(noop);
        break;
      }
      case "remove-copy":
        this.note(`operator: remove the copy of ${volume} on ${copyId(from)}`);
        work = this.changed("removed", volume, removeCopy(this.operator, volume, from, this.operatorOptions())).then(
          noop,
        );
        break;
      case "move-copy":
        work = this.moveCopy(volume, from, this.copyRng.chance(0.5) ? { host: from.host } : {});
        break;
      default: {
        const free = SIM_DISKS.filter((disk) => !spec.replicas.some((copy) => copyId(copy) === `${from.host}/${disk}`));
        if (free.length === 0) return;
        const to = { host: from.host, disk: this.copyRng.pick(free) };
        this.note(`operator: replace the copy of ${volume} on ${copyId(from)} with one on ${copyId(to)}`);
        const replaced = replaceCopy(
          this.operator,
          volume,
          from,
          to,
          this.operatorOptions(`disk ${copyId(from)} failed`),
        );
        work = this.changed("replaced", volume, replaced).then(noop);
      }
    }
    const task = work.finally(() => this.operatorTasks.delete(task));
    this.operatorTasks.add(task);
  }

  private get operator(): ReturnType<SimStore["client"]> {
    return this.store.client("operator");
  }

  /** Notes how a copy change ended: the change, or undefined when it was refused. */
  private async changed(what: string, volume: string, change: Promise<CopyChange>): Promise<CopyChange | undefined> {
    try {
      const done = await change;
      this.stats.copyChanges[what] = (this.stats.copyChanges[what] ?? 0) + 1;
      this.note(
        `operator: ${volume}: copy ${what} on ${copyId(done.copy)}; copies ${done.spec.replicas.map(copyId).join(", ")}`,
      );
      return done;
    } catch (error) {
      this.stats.copyChanges.refused = (this.stats.copyChanges.refused ?? 0) + 1;
      this.note(`operator: ${volume}: not ${what}: ${errorMessage(error)}`);
      return undefined;
    }
  }

  /**
   * `disk evacuate` of one copy (src/cli/commands/disk.ts): a copy on another disk (of the same host
   * when `want` names it), built while writes go on; then, if the old copy is the primary's only one on
   * its host, a switchover to the new copy's host; then the old copy is removed.
   */
  private async moveCopy(volume: string, from: CopyPlace, want: { host?: string }): Promise<void> {
    this.note(
      `operator: move the copy of ${volume} on ${copyId(from)}${want.host ? ` to another disk of ${want.host}` : ""}`,
    );
    const reason = `disk evacuate of ${copyId(from)}`;
    const added = await this.changed(
      "added",
      volume,
      addCopy(this.operator, volume, want, this.operatorOptions(reason)),
    );
    if (added === undefined) return;
    const to = added.copy;
    if (!(await this.waitFor(`${volume}'s copy on ${copyId(to)} in sync`, () => this.recordedInSync(volume, to))))
      return;
    const primary = this.store.readKey(keys.primary(volume));
    const spec = this.specs.get(volume);
    if (primary !== undefined && spec !== undefined) {
      const host = (JSON.parse(primary.value) as PrimaryRecord).host;
      if (host === from.host && copiesOn(spec, host).length === 1) {
        this.note(`operator: ${volume}: its primary moves from ${host} to ${to.host} first`);
        try {
          await requestSwitchover(this.operator, volume, to.host, this.operatorOptions());
        } catch (error) {
          this.note(`operator: ${volume}: no switchover: ${errorMessage(error)}`);
          return;
        }
        if (!(await this.waitFor(`${volume}'s primary on ${to.host}`, () => this.primaryHosts.get(volume) === to.host)))
          return;
      }
    }
    await this.changed("removed", volume, removeCopy(this.operator, volume, from, this.operatorOptions(reason)));
  }

  /** Whether the copy record of `volume` on `copy` says in sync (the applied log's view). */
  private recordedInSync(volume: string, copy: CopyPlace): boolean | undefined {
    if (!this.specs.get(volume)?.replicas.some((other) => copyId(other) === copyId(copy))) return undefined;
    const value = this.copyRecords.get(keys.replica(volume, copy));
    return value !== undefined && (JSON.parse(value) as { state: string }).state === "in-sync";
  }

  /** Polls `done` as the CLI waits; false (noted) when it gave up or `done` says undefined (gone). */
  private async waitFor(what: string, done: () => boolean | undefined): Promise<boolean> {
    const deadline = this.clock.now() + MOVE_WAIT_MS;
    for (;;) {
      const state = done();
      if (state === true) return true;
      if (state === undefined || this.clock.now() >= deadline) {
        this.note(`operator: stopped waiting for ${what}`);
        return false;
      }
      await this.clock.sleep(OPERATOR_POLL_MS);
    }
  }

  /** Every fault healed: every host runs again, the store and the network are whole. */
  private async heal(): Promise<void> {
    this.note("HEAL: every fault ends");
    for (const name of this.hostNames) {
      this.store.heal(name);
      const host = this.hosts.get(name);
      if (host === undefined) this.startHost(name);
      else if (host.clock.isPaused) this.resumeHost(host);
    }
    this.cut.clear();
    this.store.setSlow(undefined, undefined);
    this.net.clearFaults();
    this.net.faultsEnabled = false;
    // What the faults set in motion plays out first (a host resumed after its lease expired fences
    // itself, a standby promotes): two lease lifetimes. The bound counts from the heal.
    const settleMs = 2 * this.timings.leaseTtlMs;
    await this.driver.runFor(settleMs);
    const healthy = await this.driver.runUntil(() => this.allHealthy(), LIVENESS_BOUND_MS - settleMs);
    if (!healthy)
      throw this.violation(
        "liveness",
        `not every volume serves with every copy in sync ${LIVENESS_BOUND_MS} ms after healing: ${this.describeVolumes()}`,
      );
  }

  /** A paused host runs again: its agent first (its held timers fence it if its lease went), then its VMs. */
  private resumeHost(host: SimHost): void {
    host.clock.resume();
    host.vms.freeze(false);
  }

  /** Each VM runs once, on its disk's serving host, unless it is marked error (its policy used up). */
  private vmsSettled(): boolean {
    return this.volumeNames.every((volume) => {
      const vm = vmOf(volume);
      // A migration ends (carried out or given up) once the faults stop: a record left is a stuck VM.
      if (this.store.readKey(keys.migration(vm)) !== undefined) return false;
      const kv = this.store.readKey(keys.vmStatus(vm));
      const status = kv === undefined ? undefined : (JSON.parse(kv.value) as VmStatusRecord);
      if (status?.state === "error") return this.fleet.live(vm).length === 0;
      const live = this.fleet.live(vm);
      return live.length === 1 && live[0]!.host === this.servingHost(volume)?.name && status?.state === "running";
    });
  }

  /**
   * Every VM settled, no copy change under way, and every volume served by an engine whose copies are
   * exactly those of its spec, each in sync in the engine and recorded in sync (and no other record).
   */
  private allHealthy(): boolean {
    if (!this.vmsSettled() || this.operatorTasks.size > 0) return false;
    return this.volumeNames.every((volume) => {
      const host = this.servingHost(volume);
      const spec = this.specs.get(volume);
      if (host === undefined || spec === undefined) return false;
      const engine = host.exports.get(volume) as VolumeEngine;
      const status = engine.status();
      if (status.state !== "healthy" || status.replicas.some((replica) => replica.state !== "in-sync")) return false;
      const wanted = spec.replicas.map(copyId).sort().join(",");
      const served = status.replicas
        .map((replica) => copyId(placeOf(replica.location, host.name)))
        .sort()
        .join(",");
      const records = this.store.readPrefix(keys.replicasOf(volume));
      const recorded = records
        .map((kv) => kv.key.slice(keys.replicasOf(volume).length))
        .sort()
        .join(",");
      return (
        served === wanted &&
        recorded === wanted &&
        records.every((kv) => (JSON.parse(kv.value) as { state: string }).state === "in-sync")
      );
    });
  }

  private describeVolumes(): string {
    return this.volumeNames
      .map((volume) => {
        const vm = vmOf(volume);
        const vmStatus = this.store.readKey(keys.vmStatus(vm))?.value ?? "no status";
        this.note(
          `VM ${vm}: live ${
            this.fleet
              .live(vm)
              .map((i) => i.host)
              .join(",") || "nowhere"
          }; ${vmStatus}`,
        );
        const primary = this.store.readKey(keys.primary(volume));
        const records = this.store
          .readPrefix(keys.replicasOf(volume))
          .map(
            (kv) =>
              `${kv.key.slice(keys.replicasOf(volume).length)}=${(JSON.parse(kv.value) as { state: string }).state}`,
          )
          .join(",");
        const host = this.servingHost(volume);
        const engine = host?.exports.get(volume) as VolumeEngine | undefined;
        const copies =
          engine
            ?.status()
            .replicas.map((r) => `${r.location}:${r.state}`)
            .join(",") ?? "not served";
        return `${volume}: primary ${primary?.value ?? "none"}; records ${records}; engine ${copies}`;
      })
      .join(" | ");
  }

  // ---- the client ----------------------------------------------------------------------------------

  private clientTurn(): void {
    for (const volume of this.volumeNames) {
      const inFlight = [...this.ops].filter((op) => op.volume === volume).length;
      for (let i = inFlight; i < MAX_CLIENT_OPS; i++) {
        const host = this.servingHost(volume);
        if (host === undefined) return;
        const kind = this.rng.weighted<"write" | "read" | "flush">([
          ["write", 6],
          ["read", 3],
          ["flush", 1],
        ]);
        this.submit(volume, host, kind);
      }
    }
  }

  private submit(volume: string, host: SimHost, kind: ClientOp["kind"]): void {
    const engine = host.exports.get(volume) as VolumeEngine;
    const oracle = this.oracles.get(volume)!;
    const busy = this.busyBlocks.get(volume)!;
    const block = this.rng.int(0, HOT_BLOCKS - 1);
    if (kind !== "flush" && busy.has(block)) return;
    let op: ClientOp;
    let request: () => Promise<unknown>;
    if (kind === "write") {
      const stamp = oracle.newStamp();
      const write = oracle.beginWrite([block], stamp, this.rng.chance(0.2));
      op = { volume, kind, block, host, engine, write, done: false };
      const data = blockPattern(stamp, block);
      request = () => engine.write(block * BLOCK_BYTES, data, { fua: write.fua });
    } else if (kind === "read") {
      op = { volume, kind, block, host, engine, done: false };
      const target = Buffer.alloc(BLOCK_BYTES);
      request = () => engine.read(block * BLOCK_BYTES, target).then(() => target);
    } else {
      op = { volume, kind, block: -1, host, engine, done: false };
      request = () => engine.flush();
    }
    if (kind !== "flush") busy.add(block);
    this.ops.add(op);
    host.clock.run(() => {
      request().then(
        (value) => this.settle(op, true, value),
        (error: unknown) => this.settle(op, false, error),
      );
    });
  }

  private settle(op: ClientOp, ok: boolean, value: unknown): void {
    if (op.done) return;
    op.done = true;
    this.ops.delete(op);
    if (op.kind !== "flush") this.busyBlocks.get(op.volume)!.delete(op.block);
    const oracle = this.oracles.get(op.volume)!;
    if (op.kind === "write") {
      if (!ok) {
        this.stats.failedWrites++;
        oracle.fail(op.write!);
        return;
      }
      const epoch = this.engineEpoch.get(op.engine) ?? 0;
      const newest = this.servingEpoch.get(op.volume) ?? 0;
      if (epoch < newest)
        this.violation(
          "one writer",
          `${op.host.name}'s engine at epoch ${epoch} acknowledged a write to ${op.volume} block ${op.block} after an engine at epoch ${newest} started serving`,
        );
      this.checkAcked(op);
      this.stats.acked++;
      oracle.ack(op.write!);
    } else if (op.kind === "read" && ok) {
      this.stats.reads++;
      this.checkRead(op.volume, op.block, value as Buffer, `${op.host.name}'s engine`);
    }
  }

  /**
   * An acknowledged write is on every copy recorded in sync (DESIGN.md rule 2: a copy leaves that record
   * before a write it misses completes), and is held in sync by a copy the spec places: an engine whose
   * only in-sync copies left the spec (removed while it still held them) would keep the write where no
   * later engine looks for it.
   */
  private checkAcked(op: ClientOp): void {
    this.scanApplied();
    const spec = this.specs.get(op.volume);
    if (spec === undefined) return;
    const stamp = op.write!.stamp;
    for (const copy of spec.replicas) {
      if (this.recordedState(op.volume, copy) !== "in-sync") continue;
      const disk = this.net.disks.get(copyKey(copy.host, copy.disk, op.volume));
      const held = disk === undefined ? "no copy" : stampName(decodeBlock(disk.view(op.block), op.block));
      if (held !== stampName(stamp))
        this.violation(
          "no acknowledged write lost",
          `${op.host.name}'s engine acknowledged ${stampName(stamp)} in ${op.volume} block ${op.block}, but the ` +
            `copy on ${copyId(copy)}, recorded in sync, holds ${held}`,
        );
    }
    const inSync = op.engine
      .status()
      .replicas.filter((replica) => replica.state === "in-sync")
      .map((replica) => copyId(placeOf(replica.location, op.host.name)));
    if (inSync.length > 0 && !spec.replicas.some((copy) => inSync.includes(copyId(copy))))
      this.violation(
        "no acknowledged write lost",
        `${op.host.name}'s engine acknowledged a write to ${op.volume} block ${op.block} held in sync only by ` +
          `${inSync.join(", ")}, none of them in the spec (${spec.replicas.map(copyId).join(", ")})`,
      );
  }

  private checkRead(volume: string, block: number, data: Buffer, from: string): void {
    const oracle = this.oracles.get(volume)!;
    const value = decodeBlock(data, block);
    const allowed = oracle.allowed(block);
    if (!allowed.has(value)) {
      this.violation(
        "no acknowledged write lost",
        `${volume} block ${block} read ${stampName(value)} from ${from}; allowed: ${[...allowed].map(stampName).join(", ")}`,
      );
      return;
    }
    oracle.collapse(block, value);
  }

  /** After healing: every block the client touched reads back as allowed, through the volume's primary. */
  private async finalCheck(): Promise<void> {
    for (const volume of this.volumeNames) {
      const host = this.servingHost(volume)!;
      const engine = host.exports.get(volume) as VolumeEngine;
      for (const block of this.oracles.get(volume)!.touched()) {
        const target = Buffer.alloc(BLOCK_BYTES);
        const read = await this.driver.drive(engine.read(block * BLOCK_BYTES, target), 10_000);
        if (read.state !== "fulfilled")
          throw this.violation(
            "liveness",
            `reading ${volume} block ${block} after healing: ${read.state === "rejected" ? errorMessage(read.error) : "no answer"}`,
          );
        this.checkRead(volume, block, target, `${host.name}'s engine after healing`);
      }
      this.checkCopies(volume);
    }
    this.check();
  }

  /**
   * After healing, every copy of the spec holds what the volume's reads showed for every block the
   * client touched: a copy recorded in sync has every acknowledged write, whatever copy changes it saw.
   */
  private checkCopies(volume: string): void {
    const oracle = this.oracles.get(volume)!;
    for (const copy of this.specs.get(volume)!.replicas) {
      const disk = this.net.disks.get(copyKey(copy.host, copy.disk, volume));
      if (disk === undefined) {
        this.violation("every copy in sync after healing", `${volume}'s copy on ${copyId(copy)} does not exist`);
        return;
      }
      for (const block of oracle.touched()) {
        const value = decodeBlock(disk.view(block), block);
        const allowed = oracle.allowed(block);
        if (!allowed.has(value))
          this.violation(
            "no acknowledged write lost",
            `${volume}'s copy on ${copyId(copy)} holds ${stampName(value)} in block ${block} after healing; ` +
              `allowed: ${[...allowed].map(stampName).join(", ")}`,
          );
      }
    }
  }

  private async shutdown(): Promise<void> {
    for (const host of this.hosts.values()) {
      if (host === undefined) continue;
      await this.driver.drive(host.agent.stop(), 30_000);
      host.clock.kill();
    }
  }

  // ---- checks --------------------------------------------------------------------------------------

  /** After every turn of the world: rule 2 on what the store applied, and any violation seen in a callback. */
  private check(): void {
    this.scanApplied();
    const twice = this.fleet.twoWriters();
    if (twice !== undefined) this.violation("a VM never runs twice", twice);
    if (this.failure) throw this.failure;
  }

  /** Rule 2, at the instant the store applied each operation. */
  private scanApplied(): void {
    const applied = this.store.applied;
    for (; this.appliedSeen < applied.length; this.appliedSeen++) this.checkApplied(applied[this.appliedSeen]!);
  }

  private checkApplied(operation: AppliedOperation): void {
    const changed = new Set<string>();
    for (const event of operation.events) {
      if (event.key.startsWith(keys.replicas())) {
        if (event.type === "PUT") this.copyRecords.set(event.key, event.value);
        else this.copyRecords.delete(event.key);
        changed.add(event.key.slice(keys.replicas().length).split("/")[0]!);
        continue;
      }
      if (event.key.startsWith(keys.volumes())) {
        const volume = event.key.slice(keys.volumes().length);
        if (event.type === "PUT") this.specs.set(volume, this.checkSpec(volume, event.value));
        else this.specs.delete(volume);
        changed.add(volume);
        continue;
      }
      if (event.type !== "PUT" || !event.key.startsWith(keys.primaries())) continue;
      const volume = event.key.slice(keys.primaries().length);
      const record = JSON.parse(event.value) as PrimaryRecord;
      const previous = this.primaryHosts.get(volume);
      this.primaryHosts.set(volume, record.host);
      // A promotion moves the role to another host; a primary restarting its own engine is not one.
      if (!record.reason.startsWith("failover:") || previous === record.host) continue;
      this.stats.failovers++;
      const spec = this.specs.get(volume);
      const onHost = (spec === undefined ? [] : copiesOn(spec, record.host)).map((copy) =>
        this.recordedState(volume, copy),
      );
      const state = onHost.includes("in-sync") ? "in-sync" : (onHost[0] ?? "not on record");
      if (state !== "in-sync")
        this.violation(
          "no promotion out of sync",
          `${record.host} was promoted for ${volume} at epoch ${record.epoch} while its copy was ${state}`,
        );
    }
    for (const volume of changed) this.checkInSyncRecorded(volume, operation);
  }

  private recordedState(volume: string, copy: CopyPlace): string {
    const value = this.copyRecords.get(keys.replica(volume, copy));
    return value === undefined ? "not on record" : (JSON.parse(value) as { state: string }).state;
  }

  /** A spec as written: never two copies on one disk, every copy on a disk the host has. */
  private checkSpec(volume: string, value: string): VolumeSpec {
    const spec = JSON.parse(value) as VolumeSpec;
    const ids = spec.replicas.map(copyId);
    const twice = ids.find((id, i) => ids.indexOf(id) !== i);
    if (twice !== undefined)
      this.violation("a spec never places two copies on one disk", `${volume}'s spec places two copies on ${twice}`);
    const unknown = spec.replicas.find(
      (copy) => !this.hostNames.includes(copy.host) || !(SIM_DISKS as readonly string[]).includes(copy.disk),
    );
    if (unknown !== undefined)
      this.violation("a spec places copies on disks", `${volume}'s spec places a copy on ${copyId(unknown)}, no disk`);
    return spec;
  }

  /**
   * A volume always has a copy of its spec recorded in sync, the copy a failover or the next start
   * continues from: an operator's copy change holds only while another copy is recorded in sync, and
   * the engine records no copy leaving the in-sync set when that would leave none (the last copy to
   * leave, or a copy leaving under a fence, misses no acknowledged write: none completes then), and
   * refuses it, fencing, when the copies it still holds in sync all left the spec.
   */
  private checkInSyncRecorded(volume: string, operation: AppliedOperation): void {
    const spec = this.specs.get(volume);
    if (spec === undefined) return;
    const inSync = spec.replicas.filter((copy) => this.recordedState(volume, copy) === "in-sync").map(copyId);
    const previous = this.inSyncRecorded.get(volume) ?? [];
    this.inSyncRecorded.set(volume, inSync);
    if (inSync.length === 0)
      this.violation(
        "never without an in-sync copy",
        `no copy of ${volume}'s spec (${spec.replicas.map(copyId).join(", ")}) is recorded in sync after ` +
          `${operation.host}#${operation.callId} (were: ${previous.join(", ") || "none"})`,
      );
  }

  private async until(what: string, done: () => boolean, maxMs: number): Promise<void> {
    if (!(await this.driver.runUntil(done, maxMs))) throw this.violation("setup", `${what}: not within ${maxMs} ms`);
  }

  private note(line: string): void {
    const entry = `[${(this.clock.now() / 1000).toFixed(3)}s #${this.step}] ${line}`;
    this.options.trace?.(entry);
    this.events.push(entry);
    if (this.events.length > EVENTS_KEPT) this.events.shift();
  }

  private violation(rule: string, detail: string): SimViolation {
    const error = new SimViolation(
      `seed ${this.options.seed}, step ${this.step}, ${rule}: ${detail}\n` +
        `replay: npm run sim -- --seed ${this.options.seed} --trace\nlast events:\n  ${this.events.join("\n  ")}`,
    );
    this.failure ??= error;
    return this.failure;
  }
}

function noop(): void {}

/** The simulation's VM on each volume. */
function vmOf(volume: string): string {
  return `vm-${volume}`;
}
