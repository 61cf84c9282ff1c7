// One simulated host of the control-plane simulation: the REAL Agent (src/agent/) in a simulated world
// (src/agent/world.ts): the simulated store (sim-store.ts) for the cluster state, the engine
// simulation's copies (sim-copy.ts) for the volumes' data, and a clock of its own on virtual time.
//
// The host's clock (HostClock) is what makes a host a process that can stop:
// - it drifts: its rate differs from the store's by at most CLOCK_RATE_ERROR_MAX (timings.ts);
// - it can be paused (SIGSTOP): nothing of the host runs while paused. Every way into the host passes
//   through it: its timers, the store's answers and watch events, its copies' answers and losses, its
//   heartbeats, and the client's requests to its NBD front. On resume everything held runs, in order;
// - it can die (kill -9): nothing of it runs again; its store calls never settle (crashHost), its copy
//   connections vanish (killOwner), and a restart is a new incarnation with a new clock and agent.
//
// Every host has two disks (SIM_DISKS), so a volume may keep two copies on one host (local RAID1). A
// copy is the network's copy HOST/DISK:VOLUME (copyKey): the host's own engines name it by the disk's
// directory (/sim/H/DISK), other hosts' engines by the replica server and the disk
// (tcp://H.sim:PORT/DISK). The replica server is the set of other engines' connections to the host's
// copies: isOpen() and evict() see and drop exactly those.

import { Agent } from "../../src/agent/agent.js";
import type { AgentConfig } from "../../src/agent/config.js";
import type { PingerFactory } from "../../src/agent/peer-links.js";
import type { Timings } from "../../src/agent/timings.js";
import type { AgentWorld, NbdExporter } from "../../src/agent/world.js";
import type { BlockDevice } from "../../src/block/device.js";
import { DEFAULT_EVENT_RETENTION } from "../../src/cluster/event-retention.js";
import type { ClusterStore } from "../../src/cluster/store.js";
import { HavenError } from "../../src/core/errors.js";
import type { EngineOptions, VolumeEngine } from "../../src/engine/engine.js";
import type { ReplicaOpener, ReplicaPort } from "../../src/replica/port.js";
import type { Clock } from "../../src/util/clock.js";
import type { Rng } from "./rng.js";
import type { SimClock } from "./sim-clock.js";
import { SimAssertion, type SimNetwork, type SimReplicaPort } from "./sim-copy.js";
import type { SimStore } from "./sim-store.js";
import { SimVmDriver, type SimVmFleet } from "./sim-vm.js";

export class HostClock implements Clock {
  private paused = false;
  private dead = false;
  private readonly held: (() => void)[] = [];
  private readonly origin: number;

  constructor(
    private readonly global: SimClock,
    /** This clock's rate against the store's (1 ± the drift). */
    readonly rate: number,
  ) {
    this.origin = global.now();
  }

  now(): number {
    return this.origin + (this.global.now() - this.origin) * this.rate;
  }

  schedule(ms: number, run: () => void): { cancel(): void } {
    let cancelled = false;
    const timer = this.global.schedule(Math.max(0, ms) / this.rate, () => this.run(() => cancelled || run()));
    return {
      cancel: () => {
        cancelled = true;
        timer.cancel();
      },
    };
  }

  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.schedule(ms, resolve));
  }

  get isPaused(): boolean {
    return this.paused;
  }

  get isDead(): boolean {
    return this.dead;
  }

  /** Runs `work` now if the host runs, when it resumes if it is paused, never if it is dead. */
  run(work: () => void): void {
    if (this.dead) return;
    if (this.paused) this.held.push(work);
    else work();
  }

  /** The same outcome as `promise`, delivered into the host only while it runs. */
  pass<T>(promise: Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      promise.then(
        (value) => this.run(() => resolve(value)),
        (error: unknown) => this.run(() => reject(error)),
      );
    });
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    if (this.dead) return;
    this.paused = false;
    for (const work of this.held.splice(0)) {
      if (this.paused) this.held.push(work);
      else work();
    }
  }

  kill(): void {
    this.dead = true;
    this.held.length = 0;
  }
}

/** The store as one host sees it: every answer and watch event passes through the host's clock. */
function gatedStore(inner: ClusterStore, clock: HostClock): ClusterStore {
  return {
    get: (key) => clock.pass(inner.get(key)),
    getPrefix: (prefix) => clock.pass(inner.getPrefix(prefix)),
    getPrefixPage: (prefix, options) => clock.pass(inner.getPrefixPage(prefix, options)),
    put: (key, value, options) => clock.pass(inner.put(key, value, options)),
    delete: (key) => clock.pass(inner.delete(key)),
    deleteRange: (from, to) => clock.pass(inner.deleteRange(from, to)),
    txn: (compare, success, failure) => clock.pass(inner.txn(compare, success, failure)),
    grantLease: (ttlSeconds) => clock.pass(inner.grantLease(ttlSeconds)),
    keepAliveOnce: (lease) => clock.pass(inner.keepAliveOnce(lease)),
    revokeLease: (lease) => clock.pass(inner.revokeLease(lease)),
    watchPrefix: (prefix, options, onEvent) => {
      const watch = inner.watchPrefix(
        prefix,
        { ...options, ...(options.onClose && { onClose: (reason) => clock.run(() => options.onClose!(reason)) }) },
        (event) => clock.run(() => onEvent(event)),
      );
      return {
        ready: clock.pass(watch.ready),
        get revision() {
          return watch.revision;
        },
        cancel: () => watch.cancel(),
      };
    },
  };
}

/** A copy's port as one host's engine sees it: named by that engine's location, answers gated by the host. */
function gatedPort(inner: ReplicaPort, location: string, local: boolean, clock: HostClock): ReplicaPort {
  return new Proxy(inner, {
    get(target, property, receiver) {
      if (property === "location") return location;
      if (property === "local") return local;
      if (property === "inner") return target;
      const value: unknown = Reflect.get(target, property, receiver);
      if (typeof value !== "function") return value;
      return (...args: unknown[]) => {
        const result: unknown = (value as (...a: unknown[]) => unknown).apply(target, args);
        return result instanceof Promise ? clock.pass(result) : result;
      };
    },
    set(target, property, value: unknown) {
      if (property === "onLost" && typeof value === "function") {
        const onLost = value as (error: Error) => void;
        target.onLost = (error) => clock.run(() => onLost(error));
        return true;
      }
      return Reflect.set(target, property, value);
    },
  });
}

export interface SimHostOptions {
  readonly name: string;
  readonly incarnation: number;
  /** Identifies this incarnation's copy connections in the network (killOwner). */
  readonly owner: number;
  readonly clock: SimClock;
  readonly rate: number;
  readonly rng: Rng;
  readonly store: SimStore;
  readonly net: SimNetwork;
  readonly timings: Timings;
  readonly wallEpochMs: number;
  readonly engineOptions: Partial<EngineOptions>;
  /** Whether this host can reach `other` over the replication network now. */
  readonly reaches: (other: string) => boolean;
  /** The live incarnation of a host (for heartbeats), if it runs. */
  readonly hostNamed: (name: string) => SimHost | undefined;
  /** Called when an engine starts serving here (its export appears), for the invariants. */
  readonly onServing: (host: SimHost, volume: string, engine: VolumeEngine) => void;
  readonly log: (line: string) => void;
  readonly newId: () => string;
  /** Every VM instance of the run (the VMs this host starts join it). */
  readonly fleet: SimVmFleet;
}

/** Every simulated host's disks: a volume may keep two copies on one host (local RAID1), one on each. */
export const SIM_DISKS = ["disk0", "disk1"] as const;

/** Where host H's disk D holds its copies, as H's own engines name it. */
export function diskPath(host: string, disk: string): string {
  return `/sim/${host}/${disk}`;
}

/** The copy of `volume` on `host`'s `disk`, as the network knows it: HOST/DISK:VOLUME. */
export function copyKey(host: string, disk: string, volume: string): string {
  return `${host}/${disk}:${volume}`;
}

/** The host and disk of a copy key (copyKey). */
export function copyKeyPlace(key: string): { host: string; disk: string; volume: string } {
  const match = /^([^/]+)\/([^:]+):(.+)$/.exec(key);
  if (match === null) throw new Error(`not a copy key: ${key}`);
  return { host: match[1]!, disk: match[2]!, volume: match[3]! };
}

const REPLICATION_PORT = 7400;
const NBD_PORT = 10809;

export class SimHost {
  readonly clock: HostClock;
  readonly agent: Agent;
  readonly exports = new Map<string, BlockDevice>();
  readonly config: AgentConfig;
  readonly vms: SimVmDriver;
  /** Set when the watchdog is paused too (SIGSTOP of both): nothing will kill the host. */
  watchdogStopped = false;
  /** The VMs the agent has told its watchdog about (pid → name); the simulated agent runs none yet. */
  readonly watchdogVms = new Map<number, string>();
  started = false;
  private eventCount = 0;

  constructor(readonly options: SimHostOptions) {
    const { name, clock, rate, store, timings } = options;
    this.clock = new HostClock(clock, rate);
    this.vms = new SimVmDriver(options.fleet, name, this.clock, clock);
    this.config = {
      host: { name, address: `${name}.sim` },
      etcd: { endpoints: [store.endpoint] },
      api: { listen: { host: `${name}.sim`, port: 8400 }, tokenFile: "/dev/null" },
      replication: { listen: { host: `${name}.sim`, port: REPLICATION_PORT }, secretFile: "/dev/null" },
      nbd: { listen: { host: `${name}.sim`, port: NBD_PORT } },
      disks: SIM_DISKS.map((disk) => ({ name: disk, path: diskPath(name, disk), capacityBytes: 64 * 1024 ** 3 })),
      timings,
      events: DEFAULT_EVENT_RETENTION,
      vms: {
        cpus: [0, 1, 2, 3],
        memoryMiB: 4096,
        runtimeDir: `/sim/${name}/run`,
        accelerator: "tcg",
        timings: { heartbeatTimeoutMs: 5_000, bootTimeoutMs: 20_000, qmpTimeoutMs: 5_000 },
      },
    };
    const storeClient = gatedStore(store.client(name, { requestTimeoutMs: timings.renewTimeoutMs * 2 }), this.clock);
    this.agent = new Agent(this.config, this.world(storeClient), (line) => options.log(`${name}: ${line}`), {
      engineOptions: options.engineOptions,
    });
  }

  get name(): string {
    return this.options.name;
  }

  private world(store: ClusterStore): AgentWorld {
    const { options } = this;
    const nbd: NbdExporter = {
      listen: () => Promise.resolve(NBD_PORT),
      addExport: (entry) => {
        this.exports.set(entry.name, entry.device);
        options.onServing(this, entry.name, entry.device as VolumeEngine);
      },
      removeExport: (name) => void this.exports.delete(name),
      has: (name) => this.exports.has(name),
      stop: () => Promise.resolve(),
    };
    return {
      store,
      clock: this.clock,
      wallTime: () => new Date(options.wallEpochMs + this.clock.now()),
      eventId: () =>
        `${String(Math.floor(options.wallEpochMs + this.clock.now())).padStart(15, "0")}-${options.name}-${options.incarnation}-${++this.eventCount}`,
      // The replica server: the connections other hosts' engines have to this host's copies.
      replicaService: {
        listen: () => Promise.resolve(REPLICATION_PORT),
        evict: (volume) => this.evict(volume),
        evictCopy: (volume, disk) => this.evict(volume, disk),
        isOpen: (volume, disk) => this.servedCopies(volume, disk).length > 0,
        stop: () => Promise.resolve(),
      },
      nbd,
      storage: {
        prepare: () => Promise.resolve(),
        holds: (path, volume) => {
          const disk = this.diskAt(path);
          return disk !== undefined && options.net.disks.has(copyKey(options.name, disk, volume));
        },
        remove: (path, volume) => {
          const disk = this.diskAt(path);
          const key = disk === undefined ? undefined : copyKey(options.name, disk, volume);
          if (key === undefined || !options.net.disks.has(key)) return Promise.resolve(false);
          options.log(`${options.name}: deletes its copy of ${volume} on ${disk}`);
          options.net.destroyDisk(key);
          return Promise.resolve(true);
        },
        freeBytes: () => Promise.resolve(64 * 1024 ** 3),
      },
      opener: this.opener(),
      pinger: this.pinger(),
      probeDisk: (disk) => Promise.resolve({ name: disk.name, ok: true, detail: "ok", probeMs: 0 }),
      probeNbdFront: () => Promise.resolve({ problems: [], missing: [] }),
      // The scenario kills a host through its clock when its watchdog would; this one only records.
      startWatchdog: () => ({
        kick: () => undefined,
        trackVm: (pid, name) => void this.watchdogVms.set(pid, name),
        untrackVm: (pid) => void this.watchdogVms.delete(pid),
        stop: () => undefined,
      }),
      vms: this.vms,
      eventLoopLag: { maxMs: () => 0, reset: () => undefined, stop: () => undefined },
    };
  }

  /** This host's disk whose directory is `path`, if any. */
  private diskAt(path: string): string | undefined {
    return SIM_DISKS.find((disk) => diskPath(this.options.name, disk) === path);
  }

  /** Connections of other hosts' engines to this host's copies of `volume` (on `disk`, or on any). */
  private servedCopies(volume: string, disk?: string): SimReplicaPort[] {
    const { name, owner } = this.options;
    return [...this.options.net.ports].filter((port) => {
      if (port.owner === owner) return false;
      const place = copyKeyPlace(port.location);
      return place.host === name && place.volume === volume && (disk === undefined || place.disk === disk);
    });
  }

  /** The replica server drops other engines' connections to the copy (as the real one's evict()). */
  private evict(volume: string, disk?: string): Promise<void> {
    for (const port of this.servedCopies(volume, disk)) port.lose(`evicted by ${this.options.name}`, true);
    return Promise.resolve();
  }

  /** Copies by the engine's location: this host's directory, or another host's replica server. */
  private opener(): ReplicaOpener {
    const { options } = this;
    const open = options.net.opener(options.owner, options.newId);
    return async (location, name, create) => {
      let place: { host: string; disk: string };
      try {
        place = placeOf(location, options.name);
      } catch (error) {
        options.net.onViolation(error as Error);
        throw error;
      }
      const { host: holder, disk } = place;
      if (holder !== options.name && !options.reaches(holder))
        return this.clock.pass(
          new Promise<never>((_, reject) =>
            this.clock.schedule(50, () =>
              reject(new HavenError("HAVEN_ERR_UNAVAILABLE", `${location}: no route to host ${holder}`)),
            ),
          ),
        );
      const port = await this.clock.pass(open(copyKey(holder, disk, name), name, create));
      return gatedPort(port, location, holder === options.name, this.clock);
    };
  }

  /** Heartbeats: answered by a peer whose agent runs (not paused, not dead) and that this host reaches. */
  private pinger(): PingerFactory {
    const { options } = this;
    return (peer, _at, timeoutMs) =>
      new Promise((resolve, reject) => {
        this.clock.schedule(options.rng.int(1, 3), () => {
          if (!options.reaches(peer)) {
            this.clock.schedule(timeoutMs, () => reject(new Error(`no route to ${peer}`)));
            return;
          }
          let ended = false;
          resolve({
            ping: () =>
              new Promise<void>((answered, failed) => {
                const target = options.hostNamed(peer);
                const ok = target !== undefined && !target.clock.isPaused && options.reaches(peer);
                if (ok) this.clock.schedule(options.rng.int(1, 3), answered);
                else {
                  ended = true;
                  this.clock.schedule(timeoutMs, () => failed(new Error(`${peer} does not answer`)));
                }
              }),
            close: () => (ended = true),
            get ended() {
              return ended;
            },
          });
        });
      });
  }
}

/**
 * Which host and disk hold the copy an engine of `me` names `location`: another host's replica server
 * with the disk named (tcp://H.sim:PORT/DISK), or one of this host's disk directories (/sim/H/DISK).
 */
export function placeOf(location: string, me: string): { host: string; disk: string } {
  const remote = /^tcp:\/\/([^/]+)\.sim:\d+\/([^/]+)$/.exec(location);
  const local = /^\/sim\/([^/]+)\/([^/]+)$/.exec(location);
  const match = remote ?? local;
  if (match === null || !(SIM_DISKS as readonly string[]).includes(match[2]!))
    throw new SimAssertion(`${me}'s engine names an unknown copy location ${location}`);
  if (local !== null && match[1] !== me)
    throw new SimAssertion(`${me}'s engine names another host's directory ${location}`);
  return { host: match[1]!, disk: match[2]! };
}
