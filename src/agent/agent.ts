// The host agent (`haven agent --config FILE`): one per host. It keeps the host's lease in the cluster
// store, serves the host's copies to other hosts' engines (replica server), and runs the engine and NBD
// export of every volume the cluster records this host as primary for. This file only puts the pieces
// together, each in its own file:
// - lease-keeper.ts: the lease and the fence that follows from it;
// - round-scheduler.ts: when rounds run (periodically, and at once on a change in the store);
// - reconciler.ts: one round: read the cluster, decide per volume (decide.ts, pure), act;
// - volume-lifecycle.ts: the running engines (start, stop, remove, heal a diverged copy);
// - switchover.ts: a switchover away from this host;
// - copy-records.ts: the in-sync records, written only while this host holds the primary's role;
// - health.ts: the health check on several parameters, published on the lease;
// - event-log.ts: every action and decision as an event;
// - world.ts: everything outside the agent's memory, injected (real-world.ts builds the real one), so
//   the control-plane simulation (test/sim/) runs this same code on virtual time.
//
// Safety comes from three places: the engine records a copy as out of sync in the store before it
// acknowledges any write the copy missed (so "in-sync" is a promise a standby can rely on); the engine
// asks the lease keeper before each acknowledgement (a host that cannot prove its lease stops
// completing writes before the lease can expire elsewhere); and every engine has a higher epoch than
// the last, which the copies enforce, so a deposed primary's writes are refused by its peers.

import type { DiskRecord } from "../cluster/disk-schema.js";
import type { LeaseId } from "../cluster/etcd-client.js";
import {
  copiesOn,
  copyId,
  keys,
  parseVolumeSpec,
  type CopyPlace,
  type HostRecord,
  type VolumeSpec,
} from "../cluster/schema.js";
import { HavenError, errorMessage } from "../core/errors.js";
import { replaceCopy } from "../cluster/volume-admin.js";
import { readClusterRecords } from "../cluster/cluster-read.js";
import type { EngineOptions, VolumeEngine } from "../engine/engine.js";
import type { AgentConfig, DiskConfig } from "./config.js";
import { CopyRecorder } from "./copy-records.js";
import { decideFailedDisks } from "./disk-decide.js";
import { DiskRegistry } from "./disk-registry.js";
import { EventLog } from "./event-log.js";
import { HealthReporter } from "./health.js";
import type { AgentView, HostHealth, VmHere } from "./view.js";
import type { AgentMetrics, ClusterFacts, VmMetrics } from "./view.js";
import { RoleChanges, type VolumeRoleChanges } from "./role-changes.js";
import { LeaseKeeper } from "./lease-keeper.js";
import { PeerLinks } from "./peer-links.js";
import { Reconciler } from "./reconciler.js";
import { RoundScheduler } from "./round-scheduler.js";
import { VmLifecycle } from "./vm-lifecycle.js";
import { DEFAULT_VM_TIMINGS } from "./vm-decide.js";
import { VolumeLifecycle } from "./volume-lifecycle.js";
import type { AgentWorld, Watchdog } from "./world.js";

export type { HostHealth } from "./view.js";

/** How often each agent trims the event log to its retention (cheap: keys only, range deletes). */
const EVENT_TRIM_INTERVAL_MS = 10 * 60 * 1000;

export interface AgentOptions {
  /** Engine options the simulation adds (writeback, resync pacing, ids). */
  readonly engineOptions?: Partial<EngineOptions>;
}

export class Agent implements AgentView {
  readonly events: EventLog;
  private readonly lease: LeaseKeeper;
  private readonly links: PeerLinks;
  private readonly volumes: VolumeLifecycle;
  private readonly vmLifecycle: VmLifecycle;
  private readonly healthReporter: HealthReporter;
  private readonly reconciler: Reconciler;
  private readonly scheduler: RoundScheduler;
  private watchdog: Watchdog | undefined;
  private watchdogTimer: { cancel(): void } | undefined;
  private trimTimer: { cancel(): void } | undefined;
  private stopped = false;
  /** This host's disks' labels, states and usage (absent where the world has no disk layer). */
  private readonly diskRegistry: DiskRegistry | undefined;
  private replicationPort = 0;
  private nbdPort = 0;
  /** The failovers and switchovers carried out here (metrics()). */
  private readonly roleChanges = new RoleChanges();

  constructor(
    readonly config: AgentConfig,
    private readonly world: AgentWorld,
    private readonly log: (line: string) => void,
    options: AgentOptions = {},
  ) {
    const { timings } = config;
    this.events = new EventLog(config.host.name, world, log);
    this.lease = new LeaseKeeper({
      store: world.store,
      clock: world.clock,
      timings,
      log,
      wallTime: world.wallTime,
      onLost: (reason) => this.onLeaseLost(reason),
      onRegained: (lease) => this.register(lease),
      onUnproven: () => this.vmLifecycle.pauseAll(),
      onHeldAgain: () => this.vmLifecycle.resumeAfterFence(),
    });
    this.links = new PeerLinks({
      intervalMs: timings.peerHeartbeatIntervalMs,
      missLimit: timings.peerHeartbeatMissLimit,
      connect: world.pinger,
      clock: world.clock,
      onChange: ({ peer, up, detail }) =>
        this.events.note(
          up ? "link-up" : "link-down",
          `replication link to ${peer} ${up ? "is up again" : "is down"}: ${detail}`,
        ),
    });
    const copies = new CopyRecorder({
      store: world.store,
      clock: world.clock,
      wallTime: world.wallTime,
      events: this.events,
      // A record may be retried while the lease is not lost: a record that lands while the lease is
      // unproven is harmless, and completions wait for the lease anyway.
      mayRetry: () => this.lease.state() !== "lost",
    });
    this.volumes = new VolumeLifecycle({
      config,
      world,
      events: this.events,
      copies,
      log,
      completionGate: () => this.lease.completionGate(),
      alive: () => this.reconciler.view.alive,
      nbdPort: () => this.nbdPort,
      copyDirectory: (volume, disk) => this.copyDirectory(volume, disk),
      disks: () => this.diskList(),
      ...(options.engineOptions && { engineOptions: options.engineOptions }),
      onServing: (volume) => this.vmLifecycle.onServing(volume),
    });
    this.vmLifecycle = new VmLifecycle({
      me: config.host.name,
      world,
      events: this.events,
      log,
      capacity: config.vms && { cpus: config.vms.cpus, memoryMiB: config.vms.memoryMiB },
      timings: config.vms?.timings ?? DEFAULT_VM_TIMINGS,
      watchdog: () => this.watchdog,
      // Held or unproven: an unproven lease pauses the VMs (onUnproven), it does not stop them.
      holdsLease: () => this.lease.current !== undefined,
      mayStart: () => this.lease.state() === "held",
      servedHere: (volume) => this.volumes.get(volume) !== undefined,
      volumeBusy: (volume) => this.volumes.isBusy(volume),
      guardVolume: (volume, work) => this.volumes.guarded(volume, work),
    });
    this.healthReporter = new HealthReporter({
      config,
      world,
      events: this.events,
      volumes: this.volumes,
      links: this.links,
      lease: this.lease,
      disks: () => this.diskList(),
    });
    this.reconciler = new Reconciler({
      config,
      world,
      events: this.events,
      volumes: this.volumes,
      vms: this.vmLifecycle,
      health: this.healthReporter,
      links: this.links,
      holdsLease: () => this.lease.current !== undefined,
      log,
      roleChanges: this.roleChanges,
    });
    this.diskRegistry =
      world.diskInfo &&
      new DiskRegistry({
        config,
        store: world.store,
        events: this.events,
        wallTime: world.wallTime,
        now: () => world.clock.now(),
        log,
        source: world.diskInfo,
        onMovedHere: (from, disk) => this.adoptCopies(from, disk),
      });
    this.scheduler = new RoundScheduler({
      store: world.store,
      clock: world.clock,
      intervalMs: timings.healthCheckIntervalMs,
      watched: [keys.hosts(), keys.primaries(), keys.handovers(), keys.vms(), keys.migrations()],
      round: async () => {
        await this.reconciler.round();
        await this.publishDisks();
      },
      log,
    });
  }

  get name(): string {
    return this.config.host.name;
  }

  async start(): Promise<void> {
    const { world, config } = this;
    this.startWatchdog();
    try {
      for (const disk of config.disks) await world.storage.prepare(disk.path);
      await this.vmLifecycle.init();
      const { replication, nbd } = config;
      this.replicationPort = await world.replicaService.listen(replication.listen.host, replication.listen.port);
      this.nbdPort = await world.nbd.listen(nbd.listen.host, nbd.listen.port);
      // Before the host registers: its record lists every disk, those `disk add` gave it included.
      await this.diskRegistry?.start();
      await this.lease.start();
    } catch (error) {
      // Nothing started may outlive a failed start: a listening server would keep the process
      // alive, unregistered, where its supervisor expects it to exit and be started again.
      await this.lease.stop(true).catch(() => undefined);
      await world.nbd.stop().catch(() => undefined);
      await world.replicaService.stop().catch(() => undefined);
      world.eventLoopLag.stop();
      this.watchdogTimer?.cancel();
      this.watchdog?.stop();
      throw error;
    }
    this.events.note("agent-started", `agent up: replication on port ${this.replicationPort}, NBD on ${this.nbdPort}`);
    // What an earlier watchdog of this host killed (it has no way to etcd itself): now cluster events.
    for (const report of this.watchdog?.takeReports?.() ?? [])
      this.events.note("watchdog-kill", `${report.message} (at ${report.time})`);
    this.scheduler.start();
    this.trimEvents();
  }

  /** Stops every engine cleanly (flushing the copies), then gives the lease back so others take over at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.trimTimer?.cancel();
    this.links.stop();
    await this.scheduler.stop();
    await this.vmLifecycle.stopAll("the agent is stopping");
    for (const name of this.volumes.names()) await this.volumes.stop(name, "the agent is stopping");
    await this.events.event("agent-stopped", "agent stopped; it gives its lease back").catch(() => undefined);
    await this.lease.stop(true);
    await this.world.nbd.stop();
    await this.world.replicaService.stop();
    this.world.eventLoopLag.stop();
    this.watchdogTimer?.cancel();
    // Last: a clean stop (bye). An agent that dies before it gets here leaves its VMs to the watchdog.
    this.watchdog?.stop();
  }

  /** This host's health, for the API. */
  health(): HostHealth {
    return this.healthReporter.now();
  }

  /** Engines running here, by volume name (for the API and tests). */
  engines(): ReadonlyMap<string, VolumeEngine> {
    return new Map([...this.volumes.entries()].map(([name, running]) => [name, running.engine]));
  }

  /** The VMs running here, with their health, for the API. */
  disks(): readonly DiskRecord[] {
    return this.diskRegistry?.records() ?? [];
  }

  vms(): readonly VmHere[] {
    return this.vmLifecycle.describe();
  }

  /** Records an event from this host. */
  event(kind: string, message: string, volume?: string): Promise<void> {
    return this.events.event(kind, message, volume);
  }

  /**
   * The directory (disk) of this host's copy of `volume` on `disk`, or of its only copy here when no
   * disk is named: the disk the cluster placed it on (read from the store when this agent has not seen
   * the volume yet, as right after its creation or a copy's addition), else a disk that holds it
   * already. Refused, with the reason, for a copy the cluster did not place here.
   */
  async copyDirectory(volume: string, disk?: string): Promise<string> {
    let spec = this.reconciler.view.volumes.get(volume);
    const placedOn = (candidate: VolumeSpec | undefined): CopyPlace[] =>
      candidate === undefined
        ? []
        : copiesOn(candidate, this.name).filter((copy) => disk === undefined || copy.disk === disk);
    if (placedOn(spec).length === 0) {
      const kv = await this.world.store.get(keys.volume(volume)).catch(() => undefined);
      if (kv !== undefined) spec = parseVolumeSpec(kv.value, kv.key);
    }
    const placed = placedOn(spec);
    if (placed.length > 1)
      throw new HavenError(
        "HAVEN_ERR_USAGE",
        `volume ${volume} has ${placed.length} copies on ${this.name} (${placed.map((copy) => copy.disk).join(", ")}): name the disk`,
      );
    if (placed.length === 1) {
      const refused = this.diskRegistry?.refusal(placed[0]!.disk);
      if (refused !== undefined)
        throw new HavenError("HAVEN_ERR_CONFLICT", `no copy of ${volume} is opened here: ${refused}`);
      const found = this.diskList().find((candidate) => candidate.name === placed[0]!.disk);
      if (found === undefined)
        throw new HavenError(
          "HAVEN_ERR_CONFIG",
          `volume ${volume}'s copy on ${this.name} is placed on disk ${placed[0]!.disk}, which this host's config does not list`,
        );
      return found.path;
    }
    if (spec !== undefined && disk !== undefined)
      throw new HavenError("HAVEN_ERR_NOT_FOUND", `volume ${volume} has no copy placed on ${this.name}/${disk}`);
    const holding = this.diskList().find(
      (candidate) =>
        (disk === undefined || candidate.name === disk) && this.world.storage.holds(candidate.path, volume),
    );
    if (holding !== undefined) return holding.path;
    throw new HavenError("HAVEN_ERR_NOT_FOUND", `host ${this.name} holds no copy of volume ${volume}`);
  }

  /** This host's disks now: the config's, and those `disk add` gave it. */
  diskList(): readonly DiskConfig[] {
    return this.diskRegistry?.list() ?? this.config.disks;
  }

  /** The volumes with a copy placed on this host's disk `disk`. */
  private volumesOn(disk: string): string[] {
    return [...this.reconciler.view.volumes.values()]
      .filter((spec) => copiesOn(spec, this.name).some((copy) => copy.disk === disk))
      .map((spec) => spec.name);
  }

  /** Publishes the disks' records: their state from the latest probes, and the copies placed on each. */
  private async publishDisks(): Promise<void> {
    if (this.diskRegistry === undefined) return;
    const probes = new Map(this.healthReporter.disks.map((disk) => [disk.name, disk.ok]));
    await this.diskRegistry.handleRequests((disk) => this.volumesOn(disk));
    await this.diskRegistry.publish(
      (disk) => probes.get(disk),
      (disk) => this.volumesOn(disk),
    );
    await this.handleFailedDisks(this.diskRegistry);
  }

  /**
   * A disk moved here from host `from.host`: each copy the cluster placed on it there is placed here
   * instead, and the primary resyncs it (incrementally: it holds the volume's data up to when it left).
   */
  private async adoptCopies(from: { host: string; disk: string }, disk: string): Promise<void> {
    for (const spec of (await readClusterRecords(this.world.store)).volumes.values()) {
      if (!spec.replicas.some((copy) => copy.host === from.host && copy.disk === from.disk)) continue;
      await replaceCopy(
        this.world.store,
        spec.name,
        from,
        { host: this.name, disk },
        {
          actor: this.name,
          reason: `disk ${from.disk} moved from ${from.host} to ${this.name} (as ${disk})`,
        },
      ).catch((error: unknown) =>
        this.log(`volume ${spec.name}: taking over the copy on moved disk ${disk}: ${errorMessage(error)}`),
      );
    }
  }

  /** Disks announced as needing replacement (once each, until they are no longer failed). */
  private readonly announcedDisks = new Set<string>();

  /** A failed disk's copies move to a spare (and are rebuilt there); without one, the operator is told. */
  private async handleFailedDisks(disks: DiskRegistry): Promise<void> {
    const own = disks.ownDisks();
    for (const name of this.announcedDisks)
      if (!own.some((disk) => disk.name === name && (disk.state === "failed" || disk.state === "missing")))
        this.announcedDisks.delete(name);
    if (!this.lease.current) return;
    const view = this.reconciler.view;
    const actions = decideFailedDisks({
      me: this.name,
      disks: own,
      volumes: [...view.volumes.values()],
      records: view.replicas,
      announced: this.announcedDisks,
    });
    for (const action of actions) {
      if (action.kind === "needs-replacement") {
        this.announcedDisks.add(action.disk);
        await this.events.event("disk-replace-needed", action.message);
        continue;
      }
      await replaceCopy(this.world.store, action.volume, action.from, action.to, {
        actor: this.name,
        reason: `disk ${action.from.disk} failed; spare ${action.to.disk} takes its copy`,
      }).catch((error: unknown) =>
        this.log(
          `volume ${action.volume}: moving the copy off failed disk ${action.from.disk}: ${errorMessage(error)}`,
        ),
      );
    }
  }

  /** Keeps the event log within the configured retention, now and every EVENT_TRIM_INTERVAL_MS. */
  private trimEvents(): void {
    if (this.stopped) return;
    this.events.trim(this.config.events);
    this.trimTimer = this.world.clock.schedule(EVENT_TRIM_INTERVAL_MS, () => this.trimEvents());
  }

  /**
   * The watchdog (outside the event loop) kills this process, and the VMs it is told about, if the loop
   * stops checking in, and those VMs if this process dies; stop() says bye so that it kills nothing.
   */
  private startWatchdog(): void {
    const { watchdogIntervalMs, watchdogTimeoutMs } = this.config.timings;
    const watchdog = this.world.startWatchdog(watchdogTimeoutMs);
    this.watchdog = watchdog;
    const kick = (): void => {
      watchdog.kick();
      this.watchdogTimer = this.world.clock.schedule(watchdogIntervalMs, kick);
    };
    kick();
  }

  private async register(lease: LeaseId): Promise<void> {
    const record = await this.hostRecord();
    const value = JSON.stringify(record);
    await this.world.store.put(keys.host(this.name), value, { lease });
    await this.world.store.put(keys.hostInfo(this.name), value);
    this.log(`registered as host ${this.name} (lease ${lease})`);
  }

  private async hostRecord(): Promise<HostRecord> {
    const disks = await Promise.all(
      this.diskList().map(async (disk) => ({
        name: disk.name,
        capacityBytes: disk.capacityBytes ?? (await this.world.storage.freeBytes(disk.path)),
        usedBytes: 0,
        ...(disk.capacityBytes !== undefined && { limited: true }),
      })),
    );
    return {
      name: this.name,
      address: this.config.host.address,
      apiPort: this.config.api.listen.port,
      replicationPort: this.config.replication.advertisePort ?? this.replicationPort,
      nbdPort: this.nbdPort,
      disks,
      ...(this.config.vms && { vmCapacity: { cpus: this.config.vms.cpus, memoryMiB: this.config.vms.memoryMiB } }),
      startedAt: this.world.wallTime().toISOString(),
      ...(this.config.insecure === true && { insecure: true as const }),
    };
  }

  private onLeaseLost(reason: string): void {
    this.vmLifecycle.fenceAll(`host ${this.name} lost its cluster lease (${reason})`);
    this.volumes.fenceAll(`host ${this.name} lost its cluster lease (${reason})`);
    this.events.note("fenced", `lease given up (${reason}): every volume here stopped completing writes`);
  }

  // ---- metrics (src/api/metrics/): AgentView.metrics() ----

  /** What the metrics need beyond health(), engines(), vms() and disks(); no I/O. */
  metrics(): AgentMetrics {
    const { timings } = this.config;
    const view = this.reconciler.view;
    const roleChanges = new Map<string, VolumeRoleChanges>();
    const placedHere = [...view.volumes.values()].filter((spec) => this.reconciler.placedHere(spec));
    for (const name of [...placedHere.map((spec) => spec.name), ...this.roleChanges.names()])
      roleChanges.set(name, this.roleChanges.snapshot(name));
    return {
      timings: {
        leaseTtlMs: timings.leaseTtlMs,
        renewIntervalMs: timings.renewIntervalMs,
        fenceAfterMs: timings.fenceAfterMs,
      },
      served: [...this.volumes.entries()].map(([, running]) => ({
        status: running.engine.status(),
        copies: running.copyOf,
        requests: {
          reads: running.served.reads,
          readBytes: running.served.readBytes,
          writes: running.served.writes,
          writtenBytes: running.served.writtenBytes,
          errors: running.served.errors,
          readSeconds: running.served.readSeconds.snapshot(),
          writeSeconds: running.served.writeSeconds.snapshot(),
        },
      })),
      roleChanges,
      vms: this.vmMetrics(),
      cluster: this.clusterFacts(),
    };
  }

  private vmMetrics(): VmMetrics[] {
    const statuses = this.reconciler.view.vmStatus;
    const here = new Map(this.vmLifecycle.describe().map((vm) => [vm.name, vm]));
    const names = new Set([
      ...here.keys(),
      ...[...statuses].filter(([, status]) => status.record.host === this.name).map(([name]) => name),
    ]);
    return [...names].sort().map((name) => {
      const record = statuses.get(name)?.record;
      const mine = record?.host === this.name ? record : undefined;
      return {
        name,
        volume: here.get(name)?.volume ?? this.reconciler.view.vms.get(name)?.volume ?? "",
        state: mine?.state,
        restarts: mine?.restarts ?? 0,
        relocations: mine?.relocations ?? 0,
        runState: here.get(name)?.runState,
      };
    });
  }

  private clusterFacts(): ClusterFacts | undefined {
    const readAtMs = this.reconciler.viewReadAtMs;
    if (readAtMs === undefined) return undefined;
    const view = this.reconciler.view;
    const hostNames = new Set([...view.hostInfo.keys(), ...view.alive]);
    return {
      ageMs: Math.max(0, this.world.clock.now() - readAtMs),
      hosts: [...hostNames].sort().map((name) => ({ name, alive: view.alive.has(name) })),
      volumes: [...view.volumes.values()].map((spec) => {
        const primary = view.primaries.get(spec.name)?.record.host ?? null;
        const records = view.replicas.get(spec.name);
        return {
          name: spec.name,
          primaryHost: primary,
          primaryAlive: primary !== null && view.alive.has(primary),
          copies: spec.replicas.map((copy) => ({
            host: copy.host,
            disk: copy.disk,
            inSync: records?.get(copyId(copy))?.state === "in-sync",
          })),
        };
      }),
    };
  }
}
