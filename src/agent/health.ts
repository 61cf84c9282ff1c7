// This host's health, checked every healthCheckIntervalMs on several parameters and published on the
// host's lease (so a dead host's last check disappears with it): event-loop lag against its limit, the
// store's reachability (the age of the last accepted keepalive), each disk's probe (a write and sync),
// the NBD front's probe (a client handshake listing its exports), the heartbeat of every replication
// link, each served volume's engine (a 4 KiB read) and each copy's state with resync progress, and
// what is wrong, in words. `haven status` shows it. A disk that fails or recovers, and an export the
// NBD front lost (and got back), are events.

import { copyId, type CopyHealth, type DiskHealth, type HostHealthRecord } from "../cluster/schema.js";
import { keys } from "../cluster/schema.js";
import type { LeaseId } from "../cluster/etcd-client.js";
import type { AgentConfig, DiskConfig } from "./config.js";
import type { EventLog } from "./event-log.js";
import { BackgroundProbe } from "./health-probes.js";
import { ResyncEvents, type CopyProgress } from "./resync-events.js";
import type { PeerLinks } from "./peer-links.js";
import type { VolumeLifecycle } from "./volume-lifecycle.js";
import type { HostHealth } from "./view.js";
import type { AgentWorld } from "./world.js";

/** A disk probe or NBD front probe still running after this is reported as hung. */
const PROBE_TIMEOUT_MS = 5_000;
/** A keepalive last accepted this many renew intervals ago means the store is hard to reach. */
const STORE_SLOW_RENEWS = 2;

export interface HealthOptions {
  readonly config: AgentConfig;
  readonly world: AgentWorld;
  readonly events: EventLog;
  readonly volumes: VolumeLifecycle;
  readonly links: PeerLinks;
  readonly lease: { readonly current: LeaseId | undefined; lastAcceptedAgoMs(): number };
  /** This host's disks now (the config's, and those added since). */
  readonly disks: () => readonly DiskConfig[];
}

export class HealthReporter {
  /** One probe per disk, by name, made as disks appear (a disk added at run time gets one too). */
  private readonly diskProbes = new Map<
    string,
    { readonly path: string; readonly probe: BackgroundProbe<DiskHealth> }
  >();
  private readonly nbdProbe: BackgroundProbe<{ problems: string[]; missing: string[] }>;
  /** Each disk's verdict at the previous check, so a change is an event. */
  private readonly diskWasOk = new Map<string, boolean>();
  /** Volumes whose engine was failed or stuck at the last round: a volume entering that state is an event. */
  private enginesInTrouble = new Set<string>();
  /** The NBD front's problems at its last probe ("" when it answered well): a change is an event. */
  private nbdFrontWas = "";
  private latestDisks: readonly DiskHealth[] = [];
  /** Start, every 20% and end of each copy's resync or rebuild, as events. */
  private readonly resyncEvents = new ResyncEvents();

  constructor(private readonly options: HealthOptions) {
    const { world, volumes } = options;
    const now = (): number => world.clock.now();
    this.nbdProbe = new BackgroundProbe(() => world.probeNbdFront(volumes.names()), PROBE_TIMEOUT_MS * 2, now);
  }

  /** The disks' latest probes. */
  get disks(): readonly DiskHealth[] {
    return this.latestDisks;
  }

  /** Why the disk named `diskName` is unusable, when its latest probe failed. */
  diskProblem(diskName: string | undefined): string | undefined {
    const failed = this.latestDisks.find((disk) => !disk.ok && disk.name === diskName);
    return failed && `disk ${failed.name} failed its health check (${failed.detail})`;
  }

  /** This host's health, for the API: the lease, the event loop's worst lag since the last check, what it serves. */
  now(): HostHealth {
    const { lease, world, volumes, links } = this.options;
    return {
      name: this.options.config.host.name,
      leaseHeld: lease.current !== undefined,
      lastKeepaliveAgoMs: Math.round(lease.lastAcceptedAgoMs()),
      eventLoopLagMs: Math.round(world.eventLoopLag.maxMs()),
      volumes: volumes.names(),
      disks: this.latestDisks,
      links: links.health(),
    };
  }

  /** One round's check, published on the lease (nothing when the lease is not held). */
  async publish(): Promise<void> {
    const { lease, world, config, volumes } = this.options;
    const leaseId = lease.current;
    if (leaseId === undefined) return;
    const health = this.now();
    world.eventLoopLag.reset(); // each check covers the time since the previous one; API reads do not reset it
    const { eventLoopLagLimitMs, renewIntervalMs } = config.timings;
    const problems: string[] = [];
    if (health.eventLoopLagMs > eventLoopLagLimitMs)
      problems.push(`event loop stalled ${health.eventLoopLagMs} ms (limit ${eventLoopLagLimitMs})`);
    if (health.lastKeepaliveAgoMs > STORE_SLOW_RENEWS * renewIntervalMs)
      problems.push(`etcd accepted the last lease keepalive ${health.lastKeepaliveAgoMs} ms ago`);
    const disks = this.checkDisks();
    for (const disk of disks) if (!disk.ok) problems.push(`disk ${disk.name}: ${disk.detail}`);
    problems.push(...this.checkNbdFront());
    for (const link of health.links)
      if (!link.up && !link.starting) problems.push(`replication link to ${link.peer} down: ${link.detail}`);
    const copies: CopyHealth[] = [];
    const progress: CopyProgress[] = [];
    const inTrouble = new Set<string>();
    for (const [name, running] of volumes.entries()) {
      const status = running.engine.status();
      let trouble: string | undefined;
      if (status.state === "failed") trouble = "the engine failed (no in-sync copy, or fenced)";
      else trouble = running.liveness.poll((ms) => `the engine has not completed a 4 KiB read for ${ms} ms`);
      if (trouble !== undefined) {
        problems.push(`volume ${name}: ${trouble}`);
        inTrouble.add(name);
        if (!this.enginesInTrouble.has(name)) this.options.events.note("engine-failed", trouble, name);
      }
      for (const replica of status.replicas) {
        const copy = running.copyOf.get(replica.location) ?? { host: replica.location, disk: "" };
        if (replica.state === "faulted" || replica.state === "split-brain" || replica.state === "refused")
          problems.push(
            `volume ${name}: the copy on ${copyId(copy)} is ${replica.state}${replica.reason ? ` (${replica.reason})` : ""}`,
          );
        const resync = replica.resync;
        progress.push({ volume: name, copy: copyId(copy), state: replica.state, resync });
        copies.push({
          volume: name,
          host: copy.host,
          disk: copy.disk,
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
    this.enginesInTrouble = inTrouble;
    for (const event of this.resyncEvents.observe(world.clock.now(), progress))
      this.options.events.note(event.kind, event.message, event.volume);
    const record: HostHealthRecord = {
      checkedAt: world.wallTime().toISOString(),
      eventLoopLagMs: health.eventLoopLagMs,
      problems: problems.map((problem) => problem.slice(0, 300)),
      copies,
      disks,
      links: [...health.links],
    };
    await world.store.put(keys.health(config.host.name), JSON.stringify(record), { lease: leaseId });
  }

  /**
   * The disks' latest probes (a write and sync each, in the background); a disk that fails or stops
   * failing is an event. A failed disk keeps this host from promoting its copies (decide.ts).
   */
  private checkDisks(): DiskHealth[] {
    const { world } = this.options;
    const current = this.options.disks();
    for (const name of this.diskProbes.keys())
      if (!current.some((disk) => disk.name === name)) this.diskProbes.delete(name);
    for (const disk of current) {
      if (this.diskProbes.get(disk.name)?.path === disk.path) continue;
      const probe = new BackgroundProbe(
        () => world.probeDisk(disk),
        PROBE_TIMEOUT_MS,
        () => world.clock.now(),
      );
      this.diskProbes.set(disk.name, { path: disk.path, probe });
    }
    const disks = [...this.diskProbes].map(([name, { probe }]) => {
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
      this.options.events.note(
        disk.ok ? "disk-ok" : "disk-failed",
        `disk ${disk.name}: ${disk.ok ? "probe ok again" : disk.detail}`,
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
    const { world, volumes, events } = this.options;
    const result = this.nbdProbe.poll((runningMs) => ({
      problems: [`the NBD front has not answered a handshake for ${runningMs} ms`],
      missing: [],
    }));
    if (result === undefined) return [];
    // A probe that starts or stops failing is an event (not every round of the same failure).
    const front = result.problems.filter((problem) => !problem.startsWith("volume ")).join("; ");
    if (front !== this.nbdFrontWas) {
      events.note(
        front === "" ? "nbd-probe-ok" : "nbd-probe-failed",
        front === "" ? "the NBD front answers its health probe again" : front,
      );
      this.nbdFrontWas = front;
    }
    for (const name of result.missing) {
      const running = volumes.get(name);
      if (running === undefined || world.nbd.has(name)) continue;
      world.nbd.addExport({
        name,
        description: `Haven volume ${name}`,
        device: running.engine,
        served: running.served,
      });
      events.note("nbd-export-restored", "the NBD front had lost this volume's export; restored", name);
    }
    return result.problems;
  }
}
