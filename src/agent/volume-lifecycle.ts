// The volumes this host serves: the owner of the running engines. It starts a volume's engine at the
// epoch the agent just took in the store (over the volume's copies: this host's disks, other hosts'
// replica servers, one location per copy), exports it on the NBD front, stops it (cleanly, or because the host lost its role),
// removes this host's copy when the volume is deleted, and rebuilds a copy that came back diverged while
// it was recorded out of sync. `busy` keeps a slow start or stop from being repeated by the next round.

import { copyId, type CopyPlace, type HostRecord, type ReplicaRecord, type VolumeSpec } from "../cluster/schema.js";
import { HavenError, errorMessage, hasCode } from "../core/errors.js";
import { formatBytes } from "../util/units.js";
import { ServedRequests } from "../util/served-requests.js";
import { VolumeEngine, type EngineOptions } from "../engine/engine.js";
import type { ReplicaOpener } from "../replica/port.js";
import type { AgentConfig, DiskConfig } from "./config.js";
import type { CopyRecorder, PrimaryRole } from "./copy-records.js";
import type { EventLog } from "./event-log.js";
import { BackgroundProbe } from "./health-probes.js";
import type { AgentWorld } from "./world.js";

/** How long a starting engine waits for copies that do not answer. */
const STARTUP_WAIT_MS = 3_000;
/** A 4 KiB read through an engine still running after this is reported as stuck. */
const LIVENESS_TIMEOUT_MS = 5_000;

export interface Running {
  readonly engine: VolumeEngine;
  readonly role: PrimaryRole;
  /** Copy location (as the engine names it) -> where the copy is (host and disk); follows copy changes. */
  readonly copyOf: Map<string, CopyPlace>;
  /** Locations of copies the spec dropped, on their way out of the engine: their states are not recorded. */
  readonly leaving: Set<string>;
  /** A 4 KiB read through the engine each round: what is wrong, or undefined when it completed. */
  readonly liveness: BackgroundProbe<string | undefined>;
  /** What the NBD front served of the volume since this engine started (the metrics read it). */
  readonly served: ServedRequests;
}

/** What starting a volume needs to know of the cluster, as of the round that decided it. */
export interface StartContext {
  readonly alive: ReadonlySet<string>;
  readonly hostInfo: ReadonlyMap<string, HostRecord>;
  /** The volume's copies recorded in sync (copyId): each holds every acknowledged write. */
  readonly inSync: ReadonlySet<string>;
}

export interface VolumeLifecycleOptions {
  readonly config: AgentConfig;
  readonly world: AgentWorld;
  readonly events: EventLog;
  readonly copies: CopyRecorder;
  readonly log: (line: string) => void;
  /** Whether a write may complete here: now, never (the lease is lost), or once the lease is proven again. */
  readonly completionGate: () => boolean | Promise<boolean>;
  /** Hosts holding a lease as of the last round: copies on other hosts are not waited for. */
  readonly alive: () => ReadonlySet<string>;
  /** The port the NBD front listens on (known once it listens). */
  readonly nbdPort: () => number;
  /** This host's disks now (the config's, and those added since). */
  readonly disks: () => readonly DiskConfig[];
  /** The directory (disk) of this host's copy of a volume on a disk. */
  readonly copyDirectory: (volume: string, disk: string) => Promise<string>;
  /** Engine options a test or the simulation adds (writeback, resync pacing, ids). */
  readonly engineOptions?: Partial<EngineOptions>;
  /** The volume is served here from now on (a live migration's destination resumes its guest at once). */
  readonly onServing?: (volume: string) => void;
}

export class VolumeLifecycle {
  private readonly running = new Map<string, Running>();
  private readonly busy = new Set<string>();

  constructor(private readonly options: VolumeLifecycleOptions) {}

  get(name: string): Running | undefined {
    return this.running.get(name);
  }

  names(): string[] {
    return [...this.running.keys()];
  }

  entries(): IterableIterator<[string, Running]> {
    return this.running.entries();
  }

  isBusy(name: string): boolean {
    return this.busy.has(name);
  }

  /** Runs `work` with the volume marked busy, so no other round starts or stops it meanwhile. */
  async guarded(name: string, work: () => Promise<void>): Promise<void> {
    this.busy.add(name);
    try {
      await work();
    } finally {
      this.busy.delete(name);
    }
  }

  /** Starts the volume's engine under `role` and exports it. */
  async start(spec: VolumeSpec, role: PrimaryRole, context: StartContext): Promise<void> {
    const { config, world, events } = this.options;
    const name = spec.name;
    const me = config.host.name;
    const copyOf = new Map<string, CopyPlace>();
    const locations: string[] = [];
    for (const copy of spec.replicas) {
      const location = await this.location(name, copy, context);
      copyOf.set(location, copy);
      locations.push(location);
    }
    // Our copy may be open in the replica server for the previous primary: close it first.
    await world.replicaService.evict(name);
    const startFailed = async (error: unknown): Promise<never> => {
      await events.event("volume-start-failed", `cannot start the engine: ${errorMessage(error)}`, name);
      throw error;
    };
    const leaving = new Set<string>();
    let engine = this.newEngine(spec, role, context, copyOf, locations, undefined, leaving);
    const outcome = await engine.start().then(
      () => ({ started: true as const }),
      (error: unknown) => ({ started: false as const, error }),
    );
    if (!outcome.started) {
      const refused = outcome.error;
      // Copies that took writes apart, found at start. A copy recorded in sync holds every acknowledged
      // write (a copy leaves that record before any write it misses is acknowledged): what the others
      // hold beyond it was never acknowledged, so they are rebuilt from it, as healSplitBrain does for a
      // copy that returns diverged while the engine runs. This host's copy first, else another copy
      // recorded in sync (this host's may be one still to be built): the first that is reachable.
      const survivors = [...copyOf]
        .filter(([, copy]) => context.inSync.has(copyId(copy)))
        .sort(([, a], [, b]) => Number(b.host === me) - Number(a.host === me));
      if (!hasCode(refused, "HAVEN_ERR_SPLIT_BRAIN") || survivors.length === 0) return startFailed(refused);
      let failed: unknown = refused;
      for (const [survivor, copy] of survivors) {
        engine = this.newEngine(spec, role, context, copyOf, locations, survivor, leaving);
        failed = await engine.start().then(
          () => undefined,
          (error: unknown) => error,
        );
        if (failed === undefined) {
          await events.event(
            "split-brain-resolved",
            `${refused.message.split(";")[0]}; the copy on ${copyId(copy)} is recorded in sync, so it survives and the others are rebuilt from it`,
            name,
          );
          break;
        }
        // A survivor that is not reachable now: the next one.
        if (!hasCode(failed, "HAVEN_ERR_USAGE")) break;
      }
      if (failed !== undefined) return startFailed(failed);
    }
    const uri = `nbd://${config.host.address}:${this.options.nbdPort()}/${name}`;
    engine.nbdUris.push(uri);
    const served = new ServedRequests();
    world.nbd.addExport({ name, description: `Haven volume ${name}`, device: engine, served });
    const serving = engine;
    const liveness = new BackgroundProbe(
      () => engineAnswers(serving),
      LIVENESS_TIMEOUT_MS,
      () => world.clock.now(),
    );
    this.running.set(name, { engine, role, copyOf, leaving, liveness, served });
    this.options.onServing?.(name);
    await events.event("volume-serving", `serving ${formatBytes(engine.size)} at epoch ${role.epoch} on ${uri}`, name);
  }

  private newEngine(
    spec: VolumeSpec,
    role: PrimaryRole,
    context: StartContext,
    copyOf: Map<string, CopyPlace>,
    locations: string[],
    survivor?: string,
    leaving: ReadonlySet<string> = new Set(),
  ): VolumeEngine {
    const { world, copies } = this.options;
    const engine: VolumeEngine = new VolumeEngine({
      name: spec.name,
      locations,
      ...(survivor !== undefined && { survivor }),
      opener: this.leaseAwareOpener(copyOf),
      sizeBytes: spec.sizeBytes,
      epoch: role.epoch,
      clock: world.clock,
      // A copy on a host without a lease will not answer: waiting for it only delays a failover.
      startupWaitMs: spec.replicas.every((replica) => context.alive.has(replica.host)) ? STARTUP_WAIT_MS : 0,
      // A copy the store records in sync holds every acknowledged write (see decide.ts): with one of
      // them reachable the engine starts without the others (an absent one, like a copy still to be
      // built, is created and rebuilt), and without one it waits for every copy.
      vouchedCopies: [...copyOf].filter(([, copy]) => context.inSync.has(copyId(copy))).map(([location]) => location),
      recordCopyState: (location, inSync, detail) => {
        // A copy the spec dropped leaves without a record: its record went with it, and nothing promotes
        // a copy the spec does not place.
        if (leaving.has(location)) return Promise.resolve();
        const copy = copyOf.get(location);
        if (copy === undefined) throw new HavenError("HAVEN_ERR_NOT_FOUND", `no copy of ${spec.name} at ${location}`);
        // The copies that take the writes this one misses: one of them must still be in the spec.
        const holding = inSync
          ? []
          : engine
              .status()
              .replicas.filter((replica) => replica.state === "in-sync" && replica.location !== location)
              .flatMap((replica) => copyOf.get(replica.location) ?? []);
        return copies.record(role, copy, inSync, detail, holding);
      },
      completionGate: this.options.completionGate,
      log: (line) => this.options.log(`volume ${spec.name}: ${line}`),
      ...this.options.engineOptions,
    });
    return engine;
  }

  /** Stops the volume's engine (flushing every copy it can reach) and withdraws its export. */
  async stop(name: string, reason: string): Promise<void> {
    const running = this.running.get(name);
    if (running === undefined) return;
    this.running.delete(name);
    this.options.world.nbd.removeExport(name);
    await running.engine
      .stop()
      .catch((error: unknown) => this.options.log(`volume ${name}: stop: ${errorMessage(error)}`));
    await this.options.events.event("volume-stopped", `stopped serving: ${reason}`, name).catch(() => undefined);
  }

  /**
   * Makes the running engine's copies those of the spec (volume add-copy / remove-copy, disk evacuate
   * and replace): a copy new to the spec is added (the engine rebuilds it while writes go on, and
   * records it in sync once complete), a copy gone from it is dropped from the engine and, when on
   * this host, its data deleted. The engine refuses to drop its last in-sync copy. A copy the engine
   * holds in sync but `recorded` (the round's records) does not is recorded again: removed and added
   * back before the engine let it go, it carries the addition's out-of-sync record, which the engine,
   * holding it in sync all along, would otherwise never correct.
   */
  async reconcileCopies(
    spec: VolumeSpec,
    context: StartContext,
    recorded: ReadonlyMap<string, ReplicaRecord> | undefined,
  ): Promise<void> {
    const running = this.running.get(spec.name);
    if (running === undefined || running.engine.isStopping) return;
    const { events, log } = this.options;
    const wanted = new Set(spec.replicas.map(copyId));
    for (const [location, copy] of [...running.copyOf]) {
      if (wanted.has(copyId(copy))) continue;
      running.leaving.add(location);
      try {
        await running.engine.removeCopy(location);
      } catch (error) {
        running.leaving.delete(location);
        log(`volume ${spec.name}: dropping the copy on ${copyId(copy)}: ${errorMessage(error)}`);
        continue;
      }
      running.copyOf.delete(location);
      await events.event("copy-dropped", `the engine no longer writes to the copy on ${copyId(copy)}`, spec.name);
      if (copy.host === this.options.config.host.name) await this.deleteCopy(spec.name, copy.disk);
    }
    const present = new Set([...running.copyOf.values()].map(copyId));
    for (const copy of spec.replicas) {
      if (present.has(copyId(copy))) continue;
      const location = await this.location(spec.name, copy, context);
      running.leaving.delete(location);
      running.copyOf.set(location, copy);
      try {
        await running.engine.addCopy(location);
        await events.event("copy-building", `building the copy on ${copyId(copy)} from the in-sync copies`, spec.name);
      } catch (error) {
        // A copy the engine kept (split brain, to be resolved) stays known; one it refused goes.
        if (!running.engine.locations.includes(location)) running.copyOf.delete(location);
        log(`volume ${spec.name}: adding the copy on ${copyId(copy)}: ${errorMessage(error)}`);
      }
    }
    for (const replica of running.engine.status().replicas) {
      const copy = running.copyOf.get(replica.location);
      if (replica.state !== "in-sync" || copy === undefined || running.leaving.has(replica.location)) continue;
      if (!wanted.has(copyId(copy)) || recorded?.get(copyId(copy))?.state === "in-sync") continue;
      await running.engine
        .recordState(replica.location)
        .catch((error: unknown) =>
          log(`volume ${spec.name}: recording the copy on ${copyId(copy)} again: ${errorMessage(error)}`),
        );
    }
  }

  /** Deletes this host's copy of `volume` on `disk` (no longer in the spec); the replica server lets go of it first. */
  async deleteCopy(volume: string, disk: string): Promise<void> {
    const { config, world, events } = this.options;
    const found = this.options.disks().find((candidate) => candidate.name === disk);
    if (found === undefined) return;
    await world.replicaService.evictCopy(volume, disk);
    try {
      if (await world.storage.remove(found.path, volume))
        await events.event("copy-removed", `removed the copy on ${config.host.name}/${disk} (${found.path})`, volume);
    } catch (error) {
      // A failed disk may refuse even this: its data is of no use to anyone now, and it goes with the disk.
      this.options.log(`volume ${volume}: deleting the copy on ${config.host.name}/${disk}: ${errorMessage(error)}`);
    }
  }

  /**
   * Where the engine finds a copy: this host's disk (a directory), or the other host's replica server
   * with the disk named (tcp://ADDRESS:PORT/DISK).
   */
  private async location(volume: string, copy: CopyPlace, context: StartContext): Promise<string> {
    if (copy.host === this.options.config.host.name) return this.options.copyDirectory(volume, copy.disk);
    const info = context.hostInfo.get(copy.host);
    if (info === undefined)
      throw new HavenError("HAVEN_ERR_NOT_FOUND", `host ${copy.host} of volume ${volume} is unknown`);
    return `tcp://${info.address}:${info.replicationPort}/${copy.disk}`;
  }

  /** Fences every engine at once (nothing more completes), then stops them in the background. */
  fenceAll(reason: string): void {
    for (const [name, running] of this.running) {
      running.engine.fence(reason);
      this.options.events.track(this.stop(name, reason));
    }
  }

  /** The volume was deleted from the cluster: stop it and remove this host's copy from every disk. */
  async remove(name: string): Promise<void> {
    const { world, events } = this.options;
    await this.stop(name, "the volume was deleted");
    await world.replicaService.evict(name);
    for (const disk of this.options.disks()) {
      if (await world.storage.remove(disk.path, name))
        await events.event("copy-removed", `removed this host's copy (on disk ${disk.name}, ${disk.path})`, name);
    }
  }

  /**
   * A copy that returns diverged while the store records it out of sync never held an acknowledged
   * write the volume lacks (the record came first), so it is rebuilt from the primary without asking.
   */
  async healSplitBrain(name: string, recorded: ReadonlyMap<string, ReplicaRecord> | undefined): Promise<void> {
    const running = this.running.get(name);
    if (running === undefined) return;
    const status = running.engine.status();
    const local = status.replicas.find((replica) => replica.local && replica.state === "in-sync");
    if (local === undefined) return;
    for (const replica of status.replicas) {
      if (replica.state !== "split-brain") continue;
      const copy = running.copyOf.get(replica.location);
      const record = copy === undefined ? undefined : recorded?.get(copyId(copy));
      if (copy === undefined || record?.state !== "out-of-sync") continue;
      await this.options.events.event(
        "split-brain-resolved",
        `the copy on ${copyId(copy)} diverged while recorded out of sync (${record.detail}); rebuilding it from ${this.options.config.host.name}`,
        name,
      );
      await running.engine.resolveSplitBrain(local.location).catch((error: unknown) => {
        this.options.log(`volume ${name}: resolving the split brain failed: ${errorMessage(error)}`);
      });
    }
  }

  /**
   * Opens copies as the engine asks, except on hosts that hold no lease: those fail at once instead of
   * after a connect timeout (a partitioned host would otherwise delay every failover by it). The
   * engine retries later, and gets through once the host is back.
   */
  private leaseAwareOpener(copyOf: ReadonlyMap<string, CopyPlace>): ReplicaOpener {
    return (location, name, create) => {
      const host = copyOf.get(location)?.host;
      if (host !== undefined && host !== this.options.config.host.name && !this.options.alive().has(host))
        return Promise.reject(new HavenError("HAVEN_ERR_UNAVAILABLE", `host ${host} holds no cluster lease`));
      return this.options.world.opener(location, name, create);
    };
  }
}

/** Reads the volume's first 4 KiB through the engine: undefined when that works, else what failed. */
async function engineAnswers(engine: VolumeEngine): Promise<string | undefined> {
  try {
    await engine.read(0, Buffer.allocUnsafe(4096));
    return undefined;
  } catch (error) {
    return `a 4 KiB read through the engine failed: ${errorMessage(error)}`;
  }
}
