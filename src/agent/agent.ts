// The host agent (`haven agent --config FILE`): one per host. It keeps the host's etcd lease, serves the
// host's copies to other hosts' engines (replica server), and runs the engine and NBD export of every
// volume the cluster records this host as primary for. Each healthCheckIntervalMs it reads the cluster
// state and acts on decide()'s verdict per volume: serve, stop, promote its copy when the primary's
// host is gone (compare-and-swap on the primary key, epoch + 1), or wait and say why. Every action and
// every decision is an event in etcd.
//
// Safety comes from three places: the engine records a copy as out of sync in etcd before it
// acknowledges any write the copy missed (so "in-sync" in etcd is a promise a standby can rely on); the
// engine asks the lease keeper before each acknowledgement (a host that cannot prove its lease stops
// completing writes before the lease can expire elsewhere); and every engine has a higher epoch than
// the last, which the copies enforce, so a deposed primary's writes are refused by its peers.

import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, rm, statfs } from "node:fs/promises";
import { monitorEventLoopDelay, type IntervalHistogram } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { AgentApiServer, type AgentView, type HostHealth } from "./api-server.js";
import { join } from "node:path";
import { readClusterRecords } from "../cluster/cluster-read.js";
import { trimEvents } from "../cluster/event-retention.js";
import { EtcdClient, type LeaseId, type Watch } from "../cluster/etcd-client.js";
import {
  eventSequence,
  keys,
  nameUnder,
  parseHandoverRecord,
  parseReplicaRecord,
  parseVolumeSpec,
  type CopyHealth,
  type DiskHealth,
  type HandoverRecord,
  type HostHealthRecord,
  type EventRecord,
  type HostRecord,
  type PrimaryRecord,
  type ReplicaRecord,
  type VolumeSpec,
} from "../cluster/schema.js";
import { HavenError, errorMessage } from "../core/errors.js";
import { VolumeEngine } from "../engine/engine.js";
import { NbdServer } from "../nbd/server.js";
import { replicaOpener } from "../replica/open-replica.js";
import type { ReplicaOpener } from "../replica/port.js";
import { ReplicaServer } from "../replica/replica-server.js";
import type { AgentConfig } from "./config.js";
import { decide, type Action } from "./decide.js";
import { LeaseKeeper } from "./lease-keeper.js";
import { systemClock } from "../util/clock.js";
import { BackgroundProbe, probeDisk, probeNbdFront } from "./health-probes.js";
import { PeerLinks, type PeerAddress } from "./peer-links.js";
import { replicaPinger } from "./replica-pinger.js";

/** A copy that does not answer within this is faulted (the volume carries on without it). */
const REPLICA_TIMEOUT_MS = 3_000;
/** How long a starting engine waits for copies that do not answer. */
const STARTUP_WAIT_MS = 3_000;
/** Appended to the primary record's reason when its host starts the engine again. */
const RESTARTED = "; engine (re)started at a new epoch";
/** Between attempts to record a copy's state while etcd does not answer. */
const RECORD_RETRY_MS = 200;
/** A disk probe (write + fsync) or NBD front probe still running after this is reported as hung. */
const PROBE_TIMEOUT_MS = 5_000;
/** How often each agent trims the event log to its retention (cheap: keys only, range deletes). */
const EVENT_TRIM_INTERVAL_MS = 10 * 60 * 1000;
/** Flushes before a switchover's clean stop, each with less left to write (see handOver). */
const PRE_FLUSHES = 2;
/** A keepalive last accepted this many renew intervals ago means etcd is hard to reach. */
const ETCD_SLOW_RENEWS = 2;

interface Running {
  readonly engine: VolumeEngine;
  readonly epoch: number;
  /** Copy location (as the engine names it) -> host name. */
  readonly hostOf: ReadonlyMap<string, string>;
  /** A 4 KiB read through the engine each round: what is wrong, or undefined when it completed. */
  readonly liveness: BackgroundProbe<string | undefined>;
}

interface ClusterView {
  readonly alive: Set<string>;
  readonly hostInfo: Map<string, HostRecord>;
  readonly volumes: Map<string, VolumeSpec>;
  readonly primaries: Map<string, { record: PrimaryRecord; modRevision: number }>;
  readonly replicas: Map<string, Map<string, ReplicaRecord>>;
}

export class Agent implements AgentView {
  private readonly etcd: EtcdClient;
  private readonly replicaServer: ReplicaServer;
  private readonly nbd: NbdServer;
  private readonly lease: LeaseKeeper;
  private readonly running = new Map<string, Running>();
  /** Volumes being started or stopped, so a slow start is not repeated by the next round. */
  private readonly busy = new Set<string>();
  private readonly primaryDeadSince = new Map<string, number>();
  private readonly lastWaitReason = new Map<string, string>();
  /** Volumes with a copy on this host seen while this agent ran: only their copies are removed on deletion. */
  private readonly seenVolumes = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private reconciling: Promise<void> | undefined;
  private stopped = false;
  private replicationPort = 0;
  private nbdPort = 0;
  private watchdog: ChildProcess | undefined;
  private readonly api: AgentApiServer;
  private readonly lag: IntervalHistogram = monitorEventLoopDelay({ resolution: 20 });
  private readonly watches = new Map<string, Watch>();
  /** A change arrived during a round: run another right after it. */
  private again = false;
  /** Hosts holding a lease, as of the last reconcile: copies on other hosts are not waited for. */
  private alive = new Set<string>();
  private watchdogTimer: NodeJS.Timeout | undefined;
  private readonly links: PeerLinks;
  private readonly diskProbes: { readonly name: string; readonly probe: BackgroundProbe<DiskHealth> }[];
  private readonly nbdProbe: BackgroundProbe<{ problems: string[]; missing: string[] }>;
  /** Each disk's verdict at the previous check, so a change is an event. */
  private readonly diskWasOk = new Map<string, boolean>();
  private latestDisks: readonly DiskHealth[] = [];
  /** The volumes as of the last reconcile: where this host's copies are placed. */
  private volumes: ReadonlyMap<string, VolumeSpec> = new Map();
  private eventTrimTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly config: AgentConfig,
    private readonly secret: Buffer,
    apiToken: string,
    private readonly log: (line: string) => void,
  ) {
    this.api = new AgentApiServer(this, apiToken);
    this.etcd = new EtcdClient([...config.etcd.endpoints], { requestTimeoutMs: config.timings.renewTimeoutMs * 2 });
    this.replicaServer = new ReplicaServer({
      directory: (volume) => this.copyDirectory(volume),
      secret,
      log: (line) => log(`replica server: ${line}`),
    });
    this.nbd = new NbdServer({ exports: [], dynamicExports: true, log: (line) => log(`nbd: ${line}`) });
    this.lease = new LeaseKeeper({
      store: this.etcd,
      clock: systemClock,
      timings: config.timings,
      log,
      onLost: (reason) => this.onLeaseLost(reason),
      onRegained: (lease) => this.register(lease),
    });
    const { peerHeartbeatIntervalMs, peerHeartbeatMissLimit } = config.timings;
    this.links = new PeerLinks({
      intervalMs: peerHeartbeatIntervalMs,
      missLimit: peerHeartbeatMissLimit,
      connect: replicaPinger(secret, (line) => log(`heartbeat: ${line}`)),
      onChange: ({ peer, up, detail }) =>
        this.track(
          this.event(
            up ? "link-up" : "link-down",
            `replication link to ${peer} ${up ? "is up again" : "is down"}: ${detail}`,
          ),
        ),
    });
    this.diskProbes = config.disks.map((disk) => ({
      name: disk.name,
      probe: new BackgroundProbe(() => probeDisk(disk), PROBE_TIMEOUT_MS),
    }));
    this.nbdProbe = new BackgroundProbe(
      () => probeNbdFront(config.host.address, this.nbdPort, [...this.running.keys()], PROBE_TIMEOUT_MS),
      PROBE_TIMEOUT_MS * 2,
    );
  }

  get name(): string {
    return this.config.host.name;
  }

  /**
   * The directory of this host's copy of `volume`: the disk the cluster placed it on (read from etcd
   * when this agent has not seen the volume yet, as right after its creation), else a disk that holds
   * it already. Refused, with the reason, for a volume that has no copy here.
   */
  private async copyDirectory(volume: string): Promise<string> {
    let spec = this.volumes.get(volume);
    if (spec === undefined) {
      const kv = await this.etcd.get(keys.volume(volume)).catch(() => undefined);
      if (kv !== undefined) spec = parseVolumeSpec(kv.value, kv.key);
    }
    const placed = spec && this.placedHere(spec);
    if (placed !== undefined) {
      const disk = this.config.disks.find((candidate) => candidate.name === placed.disk);
      if (disk === undefined)
        throw new HavenError(
          "HAVEN_ERR_CONFIG",
          `volume ${volume}'s copy on ${this.name} is placed on disk ${placed.disk}, which this host's config does not list`,
        );
      return disk.path;
    }
    const holding = this.config.disks.find((disk) => existsSync(join(disk.path, volume)));
    if (holding !== undefined) return holding.path;
    throw new HavenError("HAVEN_ERR_NOT_FOUND", `host ${this.name} holds no copy of volume ${volume}`);
  }

  /** This host's copy of the volume as placed (host and disk), if the volume has one here. */
  private placedHere(spec: VolumeSpec): VolumeSpec["replicas"][number] | undefined {
    return spec.replicas.find((replica) => replica.host === this.name);
  }

  /** Why the disk holding this host's copy of the volume is unusable, when its latest probe failed. */
  private diskProblemFor(spec: VolumeSpec): string | undefined {
    const placed = this.placedHere(spec);
    const failed = this.latestDisks.find((disk) => !disk.ok && disk.name === placed?.disk);
    return failed && `disk ${failed.name} failed its health check (${failed.detail})`;
  }

  async start(): Promise<void> {
    this.startWatchdog();
    for (const disk of this.config.disks) await mkdir(disk.path, { recursive: true });
    const { replication, nbd } = this.config;
    this.replicationPort = portOf(await this.replicaServer.listen(replication.listen.host, replication.listen.port));
    this.nbdPort = portOf(await this.nbd.listen({ kind: "tcp", host: nbd.listen.host, port: nbd.listen.port }));
    this.lag.enable();
    this.log(`API on http://${await this.api.listen(this.config.api.listen.host, this.config.api.listen.port)}`);
    await this.lease.start();
    for (const prefix of [keys.hosts(), keys.primaries(), keys.handovers()]) this.startWatch(prefix);
    await this.event("agent-started", `agent up: replication on port ${this.replicationPort}, NBD on ${this.nbdPort}`);
    this.schedule(0);
    this.trimEventsNow();
    this.eventTrimTimer = setInterval(() => this.trimEventsNow(), EVENT_TRIM_INTERVAL_MS);
    this.eventTrimTimer.unref();
  }

  /** Keeps the event log within the configured retention; every agent does it, and doing it twice is harmless. */
  private trimEventsNow(): void {
    trimEvents(this.etcd, this.config.events).then(
      (deleted) => deleted > 0 && this.log(`event log trimmed: ${deleted} events past retention deleted`),
      (error: unknown) => this.log(`trimming the event log: ${errorMessage(error)}`),
    );
  }

  /** Stops every engine cleanly (flushing the copies), then gives the lease back so others take over at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    for (const watch of this.watches.values()) watch.cancel();
    this.links.stop();
    clearInterval(this.eventTrimTimer);
    await this.reconciling;
    for (const name of [...this.running.keys()]) await this.stopVolume(name, "the agent is stopping");
    await this.event("agent-stopped", "agent stopped; its lease is revoked").catch(() => undefined);
    await this.lease.stop(true);
    await this.nbd.stop();
    await this.replicaServer.stop();
    await this.api.stop();
    this.lag.disable();
    clearInterval(this.watchdogTimer);
    this.watchdog?.stdin?.end();
  }

  /** The watchdog process (watchdog-process.ts) kills this process if the event loop stops checking in. */
  private startWatchdog(): void {
    const { watchdogIntervalMs, watchdogTimeoutMs } = this.config.timings;
    const script = fileURLToPath(new URL("./watchdog-process.js", import.meta.url));
    const watchdog = spawn(process.execPath, [script, String(process.pid), String(watchdogTimeoutMs)], {
      stdio: ["pipe", "inherit", "inherit"],
    });
    watchdog.stdin!.on("error", () => undefined);
    watchdog.unref();
    (watchdog.stdin as unknown as { unref?: () => void }).unref?.();
    this.watchdog = watchdog;
    this.watchdogTimer = setInterval(() => watchdog.stdin!.write("."), watchdogIntervalMs);
    this.watchdogTimer.unref();
  }

  /**
   * The disks' latest probes (a write and fsync each, in the background); a disk that fails or stops
   * failing is an event. A failed disk keeps this host from promoting its copies (decide.ts).
   */
  private checkDisks(): DiskHealth[] {
    const disks = this.diskProbes.map(({ name, probe }) => {
      const health = probe.poll((runningMs) => ({
        name,
        ok: false,
        detail: `probe write and fsync hung for ${runningMs} ms`,
        probeMs: null,
      }));
      return health ?? { name, ok: true, detail: "first probe running", probeMs: null };
    });
    for (const disk of disks) {
      const was = this.diskWasOk.get(disk.name);
      this.diskWasOk.set(disk.name, disk.ok);
      if (was === disk.ok || (was === undefined && disk.ok)) continue;
      this.track(
        this.event(
          disk.ok ? "disk-ok" : "disk-failed",
          `disk ${disk.name}: ${disk.ok ? "probe ok again" : disk.detail}`,
        ),
      );
    }
    this.latestDisks = disks;
    return disks;
  }

  /**
   * The NBD front's latest probe (a client handshake that lists exports); an export missing for a
   * volume whose engine runs here is put back, since clients could not reach the volume otherwise.
   */
  private checkNbdFront(): string[] {
    const result = this.nbdProbe.poll((runningMs) => ({
      problems: [`the NBD front has not answered a handshake for ${runningMs} ms`],
      missing: [],
    }));
    if (result === undefined) return [];
    for (const name of result.missing) {
      const running = this.running.get(name);
      if (running === undefined || this.nbd.find(name) !== undefined) continue;
      this.nbd.addExport({ name, description: `Haven volume ${name}`, device: running.engine });
      this.track(this.event("nbd-export-restored", "the NBD front had lost this volume's export; restored", name));
    }
    return result.problems;
  }

  /**
   * This round's health check, on the host's lease (it goes when the host does): event-loop lag
   * against its limit, etcd reachability (the age of the last accepted keepalive), the disks' and
   * NBD front's probes, the heartbeat of every replication link, each served volume's engine state and
   * each copy's state with resync progress, and what is wrong, in words. `haven status` shows it.
   */
  private async publishHealth(): Promise<void> {
    const lease = this.lease.current;
    if (lease === undefined) return;
    const health = this.health();
    this.lag.reset(); // each check covers the time since the previous one; API reads do not reset it
    const { eventLoopLagLimitMs, renewIntervalMs } = this.config.timings;
    const problems: string[] = [];
    if (health.eventLoopLagMs > eventLoopLagLimitMs)
      problems.push(`event loop stalled ${health.eventLoopLagMs} ms (limit ${eventLoopLagLimitMs})`);
    if (health.lastKeepaliveAgoMs > ETCD_SLOW_RENEWS * renewIntervalMs)
      problems.push(`etcd accepted the last lease keepalive ${health.lastKeepaliveAgoMs} ms ago`);
    const disks = this.checkDisks();
    for (const disk of disks) if (!disk.ok) problems.push(`disk ${disk.name}: ${disk.detail}`);
    problems.push(...this.checkNbdFront());
    const links = health.links;
    for (const link of links)
      if (!link.up && !link.starting) problems.push(`replication link to ${link.peer} down: ${link.detail}`);
    const copies: CopyHealth[] = [];
    for (const [name, running] of this.running) {
      const status = running.engine.status();
      if (status.state === "failed") problems.push(`volume ${name}: the engine failed (no in-sync copy, or fenced)`);
      else {
        const stuck = running.liveness.poll((ms) => `the engine has not completed a 4 KiB read for ${ms} ms`);
        if (stuck !== undefined) problems.push(`volume ${name}: ${stuck}`);
      }
      for (const replica of status.replicas) {
        const host = running.hostOf.get(replica.location) ?? replica.location;
        if (replica.state === "faulted" || replica.state === "split-brain" || replica.state === "refused")
          problems.push(
            `volume ${name}: ${host}'s copy is ${replica.state}${replica.reason ? ` (${replica.reason})` : ""}`,
          );
        const resync = replica.resync;
        copies.push({
          volume: name,
          host,
          state: replica.state,
          resync:
            resync === null
              ? null
              : {
                  percent: resync.totalBytes > 0 ? Math.min(100, (100 * resync.doneBytes) / resync.totalBytes) : 0,
                  bytesPerSecond: Math.round(resync.bytesPerSecond),
                  etaSeconds: resync.etaSeconds === null ? null : Math.round(resync.etaSeconds),
                },
        });
      }
    }
    const record: HostHealthRecord = {
      checkedAt: new Date().toISOString(),
      eventLoopLagMs: health.eventLoopLagMs,
      problems: problems.map((problem) => problem.slice(0, 300)),
      copies,
      disks,
      links,
    };
    await this.etcd.put(keys.health(this.name), JSON.stringify(record), { lease });
  }

  /** This host's health, for the API: the lease, the event loop's worst lag since the last check, what it serves. */
  health(): HostHealth {
    const lagMs = this.lag.max / 1e6;
    return {
      name: this.name,
      leaseHeld: this.lease.current !== undefined,
      lastKeepaliveAgoMs: Math.round(this.lease.lastAcceptedAgoMs()),
      eventLoopLagMs: Math.round(lagMs),
      volumes: [...this.running.keys()],
      disks: this.latestDisks,
      links: this.links.health(),
    };
  }

  /** Engines running here, by volume name (for the API and tests). */
  engines(): ReadonlyMap<string, VolumeEngine> {
    return new Map([...this.running].map(([name, running]) => [name, running.engine]));
  }

  // ---- the lease ---------------------------------------------------------------------------------

  private async register(lease: LeaseId): Promise<void> {
    const record = await this.hostRecord();
    const value = JSON.stringify(record);
    await this.etcd.put(keys.host(this.name), value, { lease });
    await this.etcd.put(keys.hostInfo(this.name), value);
    this.log(`registered as host ${this.name} (lease ${lease})`);
  }

  private async hostRecord(): Promise<HostRecord> {
    const disks = await Promise.all(
      this.config.disks.map(async (disk) => {
        const fs = await statfs(disk.path).catch(() => undefined);
        const free = fs ? fs.bavail * fs.bsize : 0;
        return { name: disk.name, capacityBytes: disk.capacityBytes ?? free, usedBytes: 0 };
      }),
    );
    return {
      name: this.name,
      address: this.config.host.address,
      apiPort: this.config.api.listen.port,
      replicationPort: this.config.replication.advertisePort ?? this.replicationPort,
      nbdPort: this.nbdPort,
      disks,
      startedAt: new Date().toISOString(),
    };
  }

  private onLeaseLost(reason: string): void {
    for (const [name, running] of this.running) {
      running.engine.fence(`host ${this.name} lost its cluster lease (${reason})`);
      this.track(this.stopVolume(name, `lease lost: ${reason}`));
    }
    this.track(this.event("fenced", `lease lost (${reason}): every volume here stopped completing writes`));
  }

  // ---- reconciling ---------------------------------------------------------------------------------

  /**
   * A host's lease expiring (its key deleted), a primary record changing or a switchover asked for
   * triggers a round at once, instead of at the next tick: failover starts as soon as etcd says the
   * primary is gone, and a switchover's new primary starts as soon as the record names it.
   */
  private startWatch(prefix: string): void {
    if (this.stopped) return;
    const retry = (): void => {
      if (!this.stopped) setTimeout(() => this.startWatch(prefix), 1000).unref();
    };
    const watch = this.etcd.watchPrefix(prefix, { onClose: (reason) => reason !== undefined && retry() }, () =>
      this.soon(),
    );
    this.watches.set(prefix, watch);
    watch.ready.catch((error: unknown) => {
      this.log(`watching ${prefix} failed: ${errorMessage(error)}; polling only`);
      retry();
    });
  }

  /** A round as soon as the current one (if any) is done. */
  private soon(): void {
    if (this.stopped) return;
    if (this.reconciling) {
      this.again = true;
      return;
    }
    clearTimeout(this.timer);
    this.schedule(0);
  }

  private schedule(delayMs = this.config.timings.healthCheckIntervalMs): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.reconciling = this.reconcile()
        .catch((error: unknown) => this.log(`reconcile: ${errorMessage(error)}`))
        .finally(() => {
          this.reconciling = undefined;
          const again = this.again;
          this.again = false;
          this.schedule(again ? 0 : undefined);
        });
    }, delayMs);
  }

  /** Reads the cluster state once and acts on every volume. */
  async reconcile(): Promise<void> {
    const view = await this.readCluster();
    this.alive = view.alive;
    this.volumes = view.volumes;
    this.links.setPeers(this.peers(view));
    const now = performance.now();
    for (const [name, { record }] of view.primaries) {
      if (view.alive.has(record.host)) this.primaryDeadSince.delete(name);
      else if (!this.primaryDeadSince.has(name)) this.primaryDeadSince.set(name, now);
    }
    for (const spec of view.volumes.values()) {
      if (this.placedHere(spec) !== undefined) this.seenVolumes.add(spec.name);
      if (this.busy.has(spec.name)) continue;
      const primary = view.primaries.get(spec.name);
      const action = decide(
        { spec, primary: primary?.record, replicas: view.replicas.get(spec.name) ?? new Map() },
        {
          me: this.name,
          alive: view.alive,
          holdsLease: this.lease.current !== undefined,
          running: new Set(this.running.keys()),
          now,
          primaryDeadSince: this.primaryDeadSince,
          failoverGraceMs: this.config.timings.failoverGraceMs,
          diskProblem: this.diskProblemFor(spec),
          linkUp: (host) => this.links.isUp(host),
        },
      );
      await this.act(spec, action, view, primary?.modRevision ?? 0);
    }
    for (const name of [...this.running.keys()]) {
      if (!view.volumes.has(name) && !this.busy.has(name)) await this.removeVolume(name);
    }
    for (const name of this.seenVolumes) {
      if (!view.volumes.has(name) && !this.running.has(name)) await this.removeVolume(name);
    }
    for (const [name, running] of this.running) await this.healSplitBrain(name, running, view);
    await this.publishHealth();
    for (const kv of await this.etcd.getPrefix(keys.handovers())) {
      const name = nameUnder(keys.handovers(), kv.key);
      if (!this.running.has(name) || this.busy.has(name)) continue;
      const primary = view.primaries.get(name);
      if (primary?.record.host !== this.name) continue;
      let handover: HandoverRecord;
      try {
        handover = parseHandoverRecord(kv.value, kv.key);
      } catch (error) {
        await this.etcd.delete(kv.key);
        this.log(`dropped a malformed switchover request: ${errorMessage(error)}`);
        continue;
      }
      await this.guarded(name, () => this.handOver(name, handover, view, primary.modRevision));
    }
  }

  /**
   * A switchover away from this host: the engine stops cleanly (every copy flushed, so the target
   * misses nothing), and only if the target's copy is still recorded in sync afterwards does the
   * primary record pass to it, at a higher epoch, in one transaction with the request's removal.
   * Otherwise the request is dropped with its reason, and the next round serves the volume again here.
   */
  private async handOver(
    name: string,
    handover: HandoverRecord,
    view: ClusterView,
    primaryRevision: number,
  ): Promise<void> {
    const refuse = async (reason: string): Promise<void> => {
      await this.etcd.delete(keys.handover(name));
      await this.event("switchover-refused", `switchover to ${handover.to} refused: ${reason}`, name);
    };
    if (!view.alive.has(handover.to)) return refuse(`${handover.to} holds no cluster lease`);
    if (view.replicas.get(name)?.get(handover.to)?.state !== "in-sync")
      return refuse(`${handover.to}'s copy is not recorded in sync`);
    const { epoch, engine } = this.running.get(name)!;
    // Flushes while the volume still takes writes make most of the dirty data durable without a
    // pause; the clean stop's own flush then has only what came in meanwhile. Under write load
    // (bench/failover) the pause went from a p50 of 443 ms with none to 215 ms with one and 120 ms with two.
    for (let round = 0; round < PRE_FLUSHES; round++) await engine.flush().catch(() => undefined);
    const started = performance.now();
    await this.stopVolume(name, `switchover to ${handover.to}`);
    const stoppedMs = Math.round(performance.now() - started);
    const recorded = await this.etcd.get(keys.replica(name, handover.to));
    if (recorded === undefined || parseReplicaRecord(recorded.value, recorded.key).state !== "in-sync")
      return refuse(`${handover.to}'s copy left the in-sync set while the engine stopped`);
    const record: PrimaryRecord = {
      host: handover.to,
      epoch: epoch + 1,
      since: new Date().toISOString(),
      reason: `switchover from ${this.name} asked by ${handover.requestedBy}`,
    };
    const event: EventRecord = {
      time: record.since,
      host: this.name,
      volume: name,
      kind: "switchover",
      message: `handed over to ${handover.to} at epoch ${record.epoch}; the engine here stopped cleanly in ${stoppedMs} ms`,
    };
    const result = await this.etcd.txn(
      [{ key: keys.primary(name), target: "modRevision", result: "equal", value: primaryRevision }],
      [
        { type: "put", key: keys.primary(name), value: JSON.stringify(record) },
        { type: "delete", key: keys.handover(name) },
        { type: "put", key: keys.event(eventSequence()), value: JSON.stringify(event) },
      ],
      [],
    );
    if (!result.succeeded) return refuse("the primary record changed meanwhile");
    this.log(`event switchover [${name}]: ${event.message}`);
  }

  private async act(spec: VolumeSpec, action: Action, view: ClusterView, primaryRevision: number): Promise<void> {
    const name = spec.name;
    if (action.kind !== "wait") this.lastWaitReason.delete(name);
    switch (action.kind) {
      case "none":
        return;
      case "serve": {
        // Every engine gets an epoch above the last one's, even on the same host after a restart:
        // copies then refuse anything a previous incarnation might still send.
        const previous = view.primaries.get(name)!.record;
        const epoch = action.epoch + 1;
        const reason = previous.reason.endsWith(RESTARTED) ? previous.reason : `${previous.reason}${RESTARTED}`;
        const record: PrimaryRecord = { ...previous, epoch, reason };
        const ours = await this.etcd.putIf(keys.primary(name), JSON.stringify(record), {
          expectModRevision: primaryRevision,
        });
        if (!ours) return; // the record changed meanwhile: decide again next round
        return this.guarded(name, () => this.startVolume(spec, epoch, view));
      }
      case "stop":
        return this.guarded(name, () => this.stopVolume(name, action.reason));
      case "wait":
        if (this.lastWaitReason.get(name) !== action.reason) {
          this.lastWaitReason.set(name, action.reason);
          await this.event("failover-waiting", action.reason, name);
        }
        return;
      case "promote": {
        const record: PrimaryRecord = {
          host: this.name,
          epoch: action.epoch,
          since: new Date().toISOString(),
          reason: `failover: ${action.reason}`,
        };
        const won = await this.etcd.putIf(keys.primary(name), JSON.stringify(record), {
          expectModRevision: primaryRevision,
        });
        if (!won) return; // another standby was faster, or the primary came back: next round decides again
        await this.event("failover", `promoted to primary at epoch ${action.epoch}: ${action.reason}`, name);
        return this.guarded(name, () => this.startVolume(spec, action.epoch, view));
      }
    }
  }

  /** The hosts this one shares a volume with: one heartbeat link each, to its replica server. */
  private peers(view: ClusterView): Map<string, PeerAddress> {
    const peers = new Map<string, PeerAddress>();
    for (const spec of view.volumes.values()) {
      if (this.placedHere(spec) === undefined) continue;
      for (const { host } of spec.replicas) {
        const info = view.hostInfo.get(host);
        if (host === this.name || info === undefined) continue;
        peers.set(host, { address: info.address, port: info.replicationPort });
      }
    }
    return peers;
  }

  private async guarded(name: string, work: () => Promise<void>): Promise<void> {
    this.busy.add(name);
    try {
      await work();
    } finally {
      this.busy.delete(name);
    }
  }

  /** One consistent snapshot of the cluster (cluster-read.ts); malformed records are logged and left out. */
  private async readCluster(): Promise<ClusterView> {
    const records = await readClusterRecords(this.etcd, (error) => this.log(`ignoring: ${error.message}`));
    const primaries = new Map<string, { record: PrimaryRecord; modRevision: number }>();
    for (const [name, record] of records.primaries)
      primaries.set(name, { record, modRevision: records.primaryRevisions.get(name)! });
    return {
      alive: new Set(records.liveHosts.keys()),
      // A host's live record is newer than its permanent one (ports change on restart).
      hostInfo: new Map([...records.knownHosts, ...records.liveHosts]),
      volumes: new Map(records.volumes),
      primaries,
      replicas: new Map([...records.replicas].map(([name, copies]) => [name, new Map(copies)])),
    };
  }

  // ---- one volume --------------------------------------------------------------------------------

  private async startVolume(spec: VolumeSpec, epoch: number, view: ClusterView): Promise<void> {
    const name = spec.name;
    const hostOf = new Map<string, string>();
    const locations: string[] = [];
    for (const replica of spec.replicas) {
      let location: string;
      if (replica.host === this.name) location = await this.copyDirectory(name);
      else {
        const info = view.hostInfo.get(replica.host);
        if (info === undefined)
          throw new HavenError("HAVEN_ERR_NOT_FOUND", `host ${replica.host} of volume ${name} is unknown`);
        location = `tcp://${info.address}:${info.replicationPort}`;
      }
      hostOf.set(location, replica.host);
      locations.push(location);
    }
    const mine = view.replicas.get(name)?.get(this.name);
    // Our copy may be open in the replica server for the previous primary: close it first.
    await this.replicaServer.evict(name);
    const engine = new VolumeEngine({
      name,
      locations,
      opener: this.opener(hostOf),
      sizeBytes: spec.sizeBytes,
      epoch,
      // A copy on a host without a lease will not answer: waiting for it only delays a failover.
      startupWaitMs: spec.replicas.every((replica) => view.alive.has(replica.host)) ? STARTUP_WAIT_MS : 0,
      // Safe only because etcd says our copy holds every acknowledged write (see decide.ts).
      allowDegradedStart: mine?.state === "in-sync",
      recordCopyState: (location, inSync, detail) =>
        this.recordCopy(name, hostOf.get(location) ?? location, inSync, detail, epoch),
      completionGate: () => this.lease.completionGate(),
      log: (line) => this.log(`volume ${name}: ${line}`),
    });
    try {
      await engine.start();
    } catch (error) {
      await this.event("volume-start-failed", `cannot start the engine: ${errorMessage(error)}`, name);
      throw error;
    }
    const uri = `nbd://${this.config.host.address}:${this.nbdPort}/${name}`;
    engine.nbdUris.push(uri);
    this.nbd.addExport({ name, description: `Haven volume ${name}`, device: engine });
    const liveness = new BackgroundProbe(() => engineAnswers(engine), PROBE_TIMEOUT_MS);
    this.running.set(name, { engine, epoch, hostOf, liveness });
    await this.event("volume-serving", `serving at epoch ${epoch} on ${uri}`, name);
  }

  /**
   * Opens copies as the engine asks, except on hosts that hold no lease: those fail at once instead of
   * after a connect timeout (a partitioned host would otherwise delay every failover by it). The
   * engine retries later, and gets through once the host is back.
   */
  private opener(hostOf: ReadonlyMap<string, string>): ReplicaOpener {
    const open = replicaOpener({
      secret: this.secret,
      requestTimeoutMs: REPLICA_TIMEOUT_MS,
      connectTimeoutMs: REPLICA_TIMEOUT_MS,
    });
    return (location, name, create) => {
      const host = hostOf.get(location);
      if (host !== undefined && host !== this.name && !this.alive.has(host))
        return Promise.reject(new HavenError("HAVEN_ERR_UNAVAILABLE", `host ${host} holds no cluster lease`));
      return open(location, name, create);
    };
  }

  private async stopVolume(name: string, reason: string): Promise<void> {
    const running = this.running.get(name);
    if (running === undefined) return;
    this.running.delete(name);
    this.nbd.removeExport(name);
    await running.engine.stop().catch((error: unknown) => this.log(`volume ${name}: stop: ${errorMessage(error)}`));
    await this.event("volume-stopped", `stopped serving: ${reason}`, name).catch(() => undefined);
  }

  /** The volume was deleted from the cluster: stop it and remove this host's copy. */
  private async removeVolume(name: string): Promise<void> {
    await this.stopVolume(name, "the volume was deleted");
    await this.replicaServer.evict(name);
    for (const disk of this.config.disks) {
      const directory = join(disk.path, name);
      if (!existsSync(directory)) continue;
      await rm(directory, { recursive: true, force: true });
      await this.event("copy-removed", `removed this host's copy (${directory})`, name);
    }
    this.seenVolumes.delete(name);
  }

  /**
   * A copy that returns diverged while etcd records it out of sync never held an acknowledged write
   * the volume lacks (the record came first), so it is rebuilt from the primary without asking.
   */
  private async healSplitBrain(name: string, running: Running, view: ClusterView): Promise<void> {
    const status = running.engine.status();
    const local = status.replicas.find((replica) => replica.local && replica.state === "in-sync");
    if (local === undefined) return;
    for (const replica of status.replicas) {
      if (replica.state !== "split-brain") continue;
      const host = running.hostOf.get(replica.location);
      const record = host === undefined ? undefined : view.replicas.get(name)?.get(host);
      if (record?.state !== "out-of-sync") continue;
      await this.event(
        "split-brain-resolved",
        `${host}'s copy diverged while recorded out of sync (${record.detail}); rebuilding it from ${this.name}`,
        name,
      );
      await running.engine.resolveSplitBrain(local.location).catch((error: unknown) => {
        this.log(`volume ${name}: resolving the split brain failed: ${errorMessage(error)}`);
      });
    }
  }

  /** Records a copy's state, retrying while etcd does not answer and this host's lease is not lost. */
  private async recordCopy(
    volume: string,
    host: string,
    inSync: boolean,
    detail: string,
    epoch: number,
  ): Promise<void> {
    const record: ReplicaRecord = {
      state: inSync ? "in-sync" : "out-of-sync",
      detail: detail.slice(0, 500),
      epoch,
      updatedAt: new Date().toISOString(),
    };
    for (;;) {
      try {
        const before = inSync ? await this.etcd.get(keys.replica(volume, host)) : undefined;
        await this.etcd.put(keys.replica(volume, host), JSON.stringify(record));
        if (!inSync) await this.event("replica-out-of-sync", `${host}'s copy left the in-sync set: ${detail}`, volume);
        else if (before !== undefined && recordedOutOfSync(before.value, before.key))
          await this.event("replica-in-sync", `${host}'s copy is back in the in-sync set: ${detail}`, volume);
        return;
      } catch (error) {
        if (this.lease.state() === "lost")
          throw new HavenError(
            "HAVEN_ERR_UNAVAILABLE",
            `cannot record ${host}'s copy of ${volume}: ${errorMessage(error)}`,
          );
        await new Promise((resolve) => setTimeout(resolve, RECORD_RETRY_MS));
      }
    }
  }

  // ---- events ------------------------------------------------------------------------------------

  async event(kind: string, message: string, volume?: string): Promise<void> {
    const record: EventRecord = {
      time: new Date().toISOString(),
      host: this.name,
      ...(volume !== undefined && { volume }),
      kind,
      message,
    };
    this.log(`event ${kind}${volume ? ` [${volume}]` : ""}: ${message}`);
    await this.etcd.put(keys.event(eventSequence()), JSON.stringify(record));
  }

  private track(promise: Promise<void>): void {
    promise.catch((error: unknown) => this.log(`background: ${errorMessage(error)}`));
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

function portOf(address: string): number {
  return Number(address.slice(address.lastIndexOf(":") + 1));
}

/** Whether a stored replica record says out of sync (an unreadable one does not: no event is better than a wrong one). */
function recordedOutOfSync(value: string, key: string): boolean {
  try {
    return parseReplicaRecord(value, key).state === "out-of-sync";
  } catch {
    return false;
  }
}
