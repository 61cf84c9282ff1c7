// One reconcile round: read the cluster once (one consistent snapshot), decide per volume (decide.ts,
// pure), act on each verdict, remove deleted volumes' copies, heal copies that came back diverged,
// publish this host's health, and carry out switchovers asked of this host. Every action that takes or
// uses a role is conditioned in the store on the record it was decided from:
// - serve: the primary record is rewritten at epoch + 1 only if it is still the one read (modRevision);
// - promote: the same compare-and-swap, so of two standbys racing only one wins;
// - copy records and switchovers: only while the primary record is the one the engine started under.

import { readClusterRecords, type ClusterRecords } from "../cluster/cluster-read.js";
import type { Compare, TxnResult } from "../cluster/etcd-client.js";
import {
  copiesOn,
  copyId,
  copyHosts,
  copyPlace,
  inSyncCopiesOn,
  keys,
  nameUnder,
  parseHandoverRecord,
  type CopyPlace,
  type HandoverRecord,
  type HostRecord,
  type PrimaryRecord,
  type ReplicaRecord,
  type VolumeSpec,
} from "../cluster/schema.js";
import type { VmRecord, VmStatusRecord } from "../cluster/vm-schema.js";
import { errorMessage } from "../core/errors.js";
import { formatBytes } from "../util/units.js";
import type { AgentConfig } from "./config.js";
import { deadPrimaries, decide, type Action } from "./decide.js";
import type { EventLog } from "./event-log.js";
import type { HealthReporter } from "./health.js";
import type { PeerAddress, PeerLinks } from "./peer-links.js";
import { MalformedRecords } from "./malformed-records.js";
import type { RoleChanges } from "./role-changes.js";
import { handOver } from "./switchover.js";
import type { VolumeLifecycle } from "./volume-lifecycle.js";
import type { AgentWorld } from "./world.js";

/** After an engine failed to start, the first retry waits this long; each further one twice as long. */
const MIN_START_BACKOFF_MS = 1_000;
const MAX_START_BACKOFF_MS = 30_000;
/** Appended to the primary record's reason when its host starts the engine again. */
const RESTARTED = "; engine (re)started at a new epoch";

/** The cluster as one round read it. */
export interface ClusterView {
  readonly alive: ReadonlySet<string>;
  readonly hostInfo: ReadonlyMap<string, HostRecord>;
  readonly volumes: ReadonlyMap<string, VolumeSpec>;
  readonly primaries: ReadonlyMap<string, { readonly record: PrimaryRecord; readonly modRevision: number }>;
  readonly replicas: ReadonlyMap<string, ReadonlyMap<string, ReplicaRecord>>;
  /** Each copy record's modRevision, by volume then host. */
  readonly replicaRevisions: ReadonlyMap<string, ReadonlyMap<string, number>>;
  readonly vms: ReadonlyMap<string, VmRecord>;
  readonly vmStatus: ReadonlyMap<string, { readonly record: VmStatusRecord; readonly modRevision: number }>;
  /** Volumes with a switchover asked for and not yet carried out. */
  readonly handovers: ReadonlySet<string>;
  /** Live migrations under way, by VM name. */
  readonly migrations: ClusterRecords["migrations"];
  /** Hosts in maintenance. */
  readonly maintenance: ClusterRecords["maintenance"];
}

export interface ReconcilerOptions {
  readonly config: AgentConfig;
  readonly world: AgentWorld;
  readonly events: EventLog;
  readonly volumes: VolumeLifecycle;
  /** The VMs: decided and acted on after the volumes, each round (their disks first). */
  readonly vms: {
    round(view: ClusterView): void;
    stopForVolume(volume: string, reason: string): Promise<void>;
    /** The volume's engine serves it at sizeBytes now: its VM's guest is told. */
    diskGrew(volume: string, sizeBytes: number): void;
  };
  readonly health: HealthReporter;
  readonly links: PeerLinks;
  /** Whether this host holds its lease now. */
  readonly holdsLease: () => boolean;
  readonly log: (line: string) => void;
  /** Where the failovers and switchovers carried out here are counted (the metrics). */
  readonly roleChanges?: RoleChanges;
}

export class Reconciler {
  /** The failover timers: since when each volume's primary host has been seen dead (decide.ts). */
  private deadSince: ReadonlyMap<string, number> = new Map();
  private readonly lastWaitReason = new Map<string, string>();
  /** Volumes whose engine failed to start here, and when the next attempt may be made. */
  /** This host's copies ("VOLUME DISK") as the specs placed them, so that one leaving a spec is noticed. */
  private readonly seenCopies = new Set<string>();
  private readonly startBackoff = new Map<string, { untilMs: number; delayMs: number }>();
  /** Volumes with a copy on this host seen while this agent ran: only their copies are removed on deletion. */
  private readonly seenVolumes = new Set<string>();
  /** Records read from etcd that failed the checks: logged once each, and their volumes held. */
  private readonly malformed: MalformedRecords;
  /** The view of the last round (where this host's copies are placed, who is alive). */
  private last: ClusterView = {
    alive: new Set(),
    hostInfo: new Map(),
    volumes: new Map(),
    primaries: new Map(),
    replicas: new Map(),
    replicaRevisions: new Map(),
    vms: new Map(),
    vmStatus: new Map(),
    handovers: new Set(),
    migrations: new Map(),
    maintenance: new Map(),
  };

  /** When (monotonic ms) the last round read the cluster. */
  private lastReadAtMs: number | undefined;

  constructor(private readonly options: ReconcilerOptions) {
    this.malformed = new MalformedRecords(options.log);
  }

  get me(): string {
    return this.options.config.host.name;
  }

  /** The cluster as of the last round. */
  get view(): ClusterView {
    return this.last;
  }

  /** When (monotonic ms) the last round read the cluster; undefined before the first one. */
  get viewReadAtMs(): number | undefined {
    return this.lastReadAtMs;
  }

  /** Whether the volume has a copy on this host (one, or two on different disks). */
  placedHere(spec: VolumeSpec): boolean {
    return copiesOn(spec, this.me).length > 0;
  }

  /** Reads the cluster state once and acts on every volume. */
  async round(): Promise<void> {
    const { world, volumes, health, links } = this.options;
    const view = await this.readCluster();
    this.last = view;
    links.setPeers(this.peers(view));
    const now = world.clock.now();
    this.lastReadAtMs = now;
    const primaryHosts = new Map([...view.primaries].map(([name, { record }]) => [name, record.host]));
    this.deadSince = deadPrimaries(this.deadSince, primaryHosts, view.alive, now);
    // An engine that fenced itself while this host holds its lease (a copy record it could not write)
    // acknowledges nothing more: it stops, and the volume is served again at a new epoch below.
    for (const [name, running] of volumes.entries()) {
      const fenced = running.engine.fenced;
      if (fenced === null || volumes.isBusy(name) || !this.options.holdsLease()) continue;
      await volumes.guarded(name, () => volumes.stop(name, `the engine fenced itself (${fenced}); it starts again`));
    }
    const startRetryAt = new Map([...this.startBackoff].map(([name, backoff]) => [name, backoff.untilMs]));
    const held = this.malformed.heldVolumes;
    for (const spec of view.volumes.values()) {
      if (this.placedHere(spec)) this.seenVolumes.add(spec.name);
      if (volumes.isBusy(spec.name) || held.has(spec.name)) continue;
      const primary = view.primaries.get(spec.name);
      const action = decide(
        { spec, primary: primary?.record, replicas: view.replicas.get(spec.name) ?? new Map() },
        {
          me: this.me,
          alive: view.alive,
          holdsLease: this.options.holdsLease(),
          running: new Set(volumes.names()),
          inMaintenance: view.maintenance.has(this.me),
          now,
          primaryDeadSince: this.deadSince,
          failoverGraceMs: this.options.config.timings.failoverGraceMs,
          diskProblem: (disk) => health.diskProblem(disk),
          linkUp: (host) => links.isUp(host),
          startRetryAt,
          runningSizeBytes: new Map([...volumes.entries()].map(([name, running]) => [name, running.engine.size])),
        },
      );
      try {
        await this.act(spec, action, view, primary?.modRevision ?? 0);
        if (volumes.get(spec.name) !== undefined) this.startBackoff.delete(spec.name);
      } catch (error) {
        // One volume's failure must not hold back the others, nor be retried at once (each serve
        // takes a new epoch): the next attempt waits, twice as long each time, up to a bound.
        const delayMs = Math.min(
          MAX_START_BACKOFF_MS,
          2 * (this.startBackoff.get(spec.name)?.delayMs ?? MIN_START_BACKOFF_MS / 2),
        );
        this.startBackoff.set(spec.name, { untilMs: now + delayMs, delayMs });
        this.options.log(
          `volume ${spec.name}: ${action.kind} failed (next attempt in ${delayMs} ms): ${errorMessage(error)}`,
        );
      }
    }
    for (const name of volumes.names()) {
      if (!view.volumes.has(name) && !volumes.isBusy(name) && !held.has(name)) await this.removeVolume(name);
    }
    for (const name of this.seenVolumes) {
      if (!view.volumes.has(name) && volumes.get(name) === undefined && !held.has(name)) await this.removeVolume(name);
    }
    for (const name of volumes.names()) {
      if (!held.has(name)) await volumes.healSplitBrain(name, view.replicas.get(name));
    }
    await this.followCopyChanges(view);
    this.options.vms.round(view);
    await health.publish();
    await this.handOvers(view);
  }

  /**
   * Copy changes of live volumes: the primary's engine takes up the spec's copies, and a copy of this
   * host that left the spec is deleted here once no engine has it open (the primary drops it first).
   */
  private async followCopyChanges(view: ClusterView): Promise<void> {
    const { volumes, world } = this.options;
    const placedNow = new Set<string>();
    for (const spec of view.volumes.values()) {
      for (const copy of copiesOn(spec, this.me)) placedNow.add(`${spec.name} ${copy.disk}`);
      if (volumes.get(spec.name) === undefined || volumes.isBusy(spec.name)) continue;
      if (this.malformed.heldVolumes.has(spec.name)) continue;
      const context = { alive: view.alive, hostInfo: view.hostInfo, inSync: inSyncCopies(spec, view) };
      await volumes.guarded(spec.name, () => volumes.reconcileCopies(spec, context, view.replicas.get(spec.name)));
    }
    for (const seen of this.seenCopies) {
      if (placedNow.has(seen)) continue;
      const [volume, disk] = seen.split(" ") as [string, string];
      // A deleted volume's copies go with it (removeVolume); a running engine drops its own copies.
      if (!view.volumes.has(volume) || volumes.get(volume) !== undefined) {
        if (!view.volumes.has(volume)) this.seenCopies.delete(seen);
        continue;
      }
      if (world.replicaService.isOpen(volume, disk)) continue;
      await volumes.deleteCopy(volume, disk);
      this.seenCopies.delete(seen);
    }
    for (const seen of placedNow) this.seenCopies.add(seen);
  }

  private async removeVolume(name: string): Promise<void> {
    await this.options.volumes.remove(name);
    this.seenVolumes.delete(name);
  }

  /** Switchovers asked of volumes this host serves as their primary. */
  private async handOvers(view: ClusterView): Promise<void> {
    const { world, volumes, events, log } = this.options;
    for (const kv of await world.store.getPrefix(keys.handovers())) {
      const name = nameUnder(keys.handovers(), kv.key);
      const running = volumes.get(name);
      if (running === undefined || volumes.isBusy(name)) continue;
      const spec = view.volumes.get(name);
      if (spec === undefined || view.primaries.get(name)?.record.host !== this.me) continue;
      let handover: HandoverRecord;
      try {
        handover = parseHandoverRecord(kv.value, kv.key);
      } catch (error) {
        await world.store.delete(kv.key);
        log(`dropped a malformed switchover request: ${errorMessage(error)}`);
        continue;
      }
      if (handover.to === this.me) {
        // Asked of a primary that has since moved here (the request outlived its switchover).
        await world.store.txn(
          [{ key: keys.handover(name), target: "modRevision", result: "equal", value: kv.modRevision }],
          [{ type: "delete", key: keys.handover(name) }],
          [],
        );
        log(`volume ${name}: dropped a switchover request to ${this.me}, which is its primary already`);
        continue;
      }
      const context = {
        me: this.me,
        store: world.store,
        clock: world.clock,
        wallTime: world.wallTime,
        events,
        volumes,
        log,
        ...(this.options.roleChanges !== undefined && { roleChanges: this.options.roleChanges }),
      };
      const target = {
        targetAlive: view.alive.has(handover.to),
        targetInSync: inSyncCopiesOn(spec, view.replicas.get(name), handover.to).length > 0,
      };
      await volumes.guarded(name, async () => {
        // A VM on the volume stops first (ACPI power-down): it starts again where the disk goes.
        if (target.targetAlive && target.targetInSync)
          await this.options.vms.stopForVolume(name, `its disk ${name} moves to ${handover.to} (switchover)`);
        await handOver(context, spec, handover, target);
      });
    }
  }

  private async act(spec: VolumeSpec, action: Action, view: ClusterView, primaryRevision: number): Promise<void> {
    const { world, volumes, events } = this.options;
    const name = spec.name;
    if (action.kind !== "wait") this.lastWaitReason.delete(name);
    const context = { alive: view.alive, hostInfo: view.hostInfo, inSync: inSyncCopies(spec, view) };
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
        const taken = await this.takePrimary(name, record, primaryRevision);
        if (taken === undefined) return; // the record changed meanwhile: decide again next round
        return volumes.guarded(name, () =>
          volumes.start(spec, { volume: name, epoch, primaryRevision: taken.revision }, context),
        );
      }
      case "stop":
        return volumes.guarded(name, () => volumes.stop(name, action.reason));
      case "grow": {
        // The spec's size is on record first (haven volume resize); the engine stops cleanly (every copy
        // flushed) and starts again at that size, growing each copy it opens before it serves; a copy it
        // cannot reach grows when it returns, before it rejoins. Clients reconnect (the endpoint closes
        // their connections while nothing serves) and learn the new size; VMs are told (vm-lifecycle.ts).
        const grown = `from ${formatBytes(action.fromBytes)} to ${formatBytes(action.toBytes)}`;
        await events.event(
          "volume-growing",
          `growing ${grown}: the engine restarts at the new size, growing every copy it reaches first`,
          name,
        );
        await volumes.guarded(name, () => volumes.stop(name, `it grows ${grown}`));
        await this.act(spec, { kind: "serve", epoch: action.epoch }, view, primaryRevision);
        const served = volumes.get(name)?.engine;
        if (served === undefined || served.size < action.toBytes) return;
        this.options.vms.diskGrew(name, served.size);
        await events.event(
          "volume-grown",
          `volume ${name} is served at ${formatBytes(served.size)} (was ${formatBytes(action.fromBytes)})`,
          name,
        );
        return;
      }
      case "wait":
        if (this.lastWaitReason.get(name) !== action.reason) {
          this.lastWaitReason.set(name, action.reason);
          await events.event("failover-waiting", action.reason, name);
        }
        return;
      case "promote": {
        const record: PrimaryRecord = {
          host: this.me,
          epoch: action.epoch,
          since: world.wallTime().toISOString(),
          reason: `failover: ${action.reason}`,
        };
        // The copy must still be recorded as it was read (in sync): a late record that it left the
        // in-sync set, written just before, makes the promotion fail and the next round decide again.
        const copyRevision = view.replicaRevisions.get(name)?.get(action.vouching) ?? 0;
        const vouching = { copy: copyPlace(action.vouching), revision: copyRevision };
        const won = await this.takePrimary(name, record, primaryRevision, vouching);
        if (won === undefined) return; // another standby was faster, or the primary came back: next round decides again
        await events.event("failover", `promoted to primary at epoch ${action.epoch}: ${action.reason}`, name);
        const deadSince = this.deadSince.get(name) ?? world.clock.now();
        await volumes.guarded(name, () =>
          volumes.start(spec, { volume: name, epoch: action.epoch, primaryRevision: won.revision }, context),
        );
        this.options.roleChanges?.failover(name, world.clock.now() - deadSince);
        return;
      }
    }
  }

  /** Writes the primary record if it is still at `modRevision`; the result carries the new record's revision. */
  private async takePrimary(
    name: string,
    record: PrimaryRecord,
    modRevision: number,
    vouching?: { copy: CopyPlace; revision: number },
  ): Promise<TxnResult | undefined> {
    const key = keys.primary(name);
    const copyUnchanged: Compare[] =
      vouching === undefined
        ? []
        : [
            {
              key: keys.replica(name, vouching.copy),
              target: "modRevision",
              result: "equal",
              value: vouching.revision,
            },
          ];
    const result = await this.options.world.store.txn(
      [{ key, target: "modRevision", result: "equal", value: modRevision }, ...copyUnchanged],
      [{ type: "put", key, value: JSON.stringify(record) }],
      [],
    );
    return result.succeeded ? result : undefined;
  }

  /** The hosts this one shares a volume with: one heartbeat link each, to its replica server. */
  private peers(view: ClusterView): Map<string, PeerAddress> {
    const peers = new Map<string, PeerAddress>();
    for (const spec of view.volumes.values()) {
      if (!this.placedHere(spec)) continue;
      for (const host of copyHosts(spec)) {
        const info = view.hostInfo.get(host);
        if (host === this.me || info === undefined) continue;
        peers.set(host, { address: info.address, port: info.replicationPort });
      }
    }
    return peers;
  }

  /** One consistent snapshot of the cluster (cluster-read.ts); malformed records are logged and left out. */
  private async readCluster(): Promise<ClusterView> {
    const records = await readClusterRecords(this.options.world.store);
    this.malformed.note(records.malformed);
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
      replicaRevisions: records.replicaRevisions,
      vms: records.vms,
      vmStatus: records.vmStatus,
      handovers: records.handovers,
      migrations: records.migrations,
      maintenance: records.maintenance,
    };
  }
}

/** The volume's copies recorded in sync (copyId) as the round read them. */
function inSyncCopies(spec: VolumeSpec, view: ClusterView): ReadonlySet<string> {
  const recorded = view.replicas.get(spec.name);
  return new Set(spec.replicas.map(copyId).filter((id) => recorded?.get(id)?.state === "in-sync"));
}
