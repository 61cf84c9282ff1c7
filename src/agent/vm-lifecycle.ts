// The VMs this host runs: the owner of their QEMU processes. Each round it decides per VM (vm-decide.ts,
// pure) from the cluster as the round read it and what it observes of each QEMU, and acts: start,
// stop, restart in place, relocate (the disk's primary moves to another host, the VM follows), mark
// `error`, resume after a storage pause. Slow actions (a guest's ACPI power-down) run in the background,
// one at a time per VM, so they never hold up a round. What it sees is published per VM in the store
// (VmStatusRecord), conditioned on this host still being the disk's primary, so a deposed host cannot
// overwrite what the new one says.
//
// Fencing (DESIGN.md rule 4): when the lease becomes unproven every VM is paused (a paused guest does
// nothing a client could see) and resumed if the lease is held again; when it is lost every QEMU is
// killed at once, by pid, before any other host may start the VM. The watchdog tracks every QEMU pid, so
// a hung or killed agent takes its VMs down with it.

import type { Compare } from "../cluster/etcd-client.js";
import { copyPlace, keys, type HandoverRecord, type ReplicaRecord, type VmCapacity } from "../cluster/schema.js";
import type { VmRecord, VmRun, VmState, VmStatusRecord, VmCheck } from "../cluster/vm-schema.js";
import { parseVmRecord } from "../cluster/vm-schema.js";
import { vmLacks, vmsPlacedOn } from "../cluster/vm-resources.js";
import { errorMessage } from "../core/errors.js";
import { formatBytes } from "../util/units.js";
import type { EventLog } from "./event-log.js";
import type { ClusterView } from "./reconciler.js";
import {
  countsOf,
  decideVm,
  failbackTarget,
  type VmHostView,
  vmFailure,
  type VmAction,
  type VmCounts,
  type VmObservation,
  type VmTimings,
} from "./vm-decide.js";
import type { VmHere } from "./view.js";
import type { AgentWorld, VmInstance, Watchdog } from "./world.js";
import { VmMigrations } from "./vm-migrations.js";
import { randomUUID } from "node:crypto";
import type { MigrationRecord } from "../cluster/migration-schema.js";

/** A failback that did not happen (refused, failed) is asked for again after this long at the soonest. */
const FAILBACK_RETRY_MS = 60_000;

/**
 * How long a VM's disk may take to grow: its nbd node reconnects (QEMU retries after 1, 2, 4 s...) and
 * block_resize runs; 40 s is QEMU's reconnect delay (vm/qemu-command.ts).
 */
const GROW_DISK_TIMEOUT_MS = 40_000;
/** A status record is written again at least this often while nothing changes (the checks' ages). */
const STATUS_REFRESH_MS = 5_000;

interface RunningVm {
  readonly vm: VmRecord;
  /** Undefined when the launch failed (`failed` says why): the policy then treats it as a failure. */
  readonly instance: VmInstance | undefined;
  readonly failed?: string;
  exited?: string;
  readonly startRequest: number;
  readonly startedAtMs: number;
  readonly run: VmRun | undefined;
  counts: VmCounts;
  qmpFailingSinceMs?: number;
  qmpError?: string;
  lastQmpOkAt?: string;
  pausedByFence: boolean;
  probing: boolean;
}

export interface VmLifecycleOptions {
  readonly me: string;
  readonly world: AgentWorld;
  readonly events: EventLog;
  readonly log: (line: string) => void;
  readonly capacity: VmCapacity | undefined;
  readonly timings: VmTimings;
  readonly watchdog: () => Watchdog | undefined;
  /** The lease is this host's (held or unproven): VMs keep running (paused while it is unproven). */
  readonly holdsLease: () => boolean;
  /** The lease is held (proven): a VM may start. */
  readonly mayStart: () => boolean;
  /** Whether this host's engine serves the volume now. */
  readonly servedHere: (volume: string) => boolean;
  /**
   * The volume's guard (VolumeLifecycle): a VM starts only while its volume is not busy, and holds the
   * volume busy while it starts, so no switchover or stop of its disk runs meanwhile.
   */
  readonly volumeBusy: (volume: string) => boolean;
  readonly guardVolume: (volume: string, work: () => Promise<void>) => Promise<void>;
}

export class VmLifecycle {
  private readonly running = new Map<string, RunningVm>();
  private readonly busy = new Set<string>();
  /** What was last published per VM (to write only changes, and refresh now and then). */
  private readonly published = new Map<string, { text: string; atMs: number }>();
  private readonly pendingReason = new Map<string, string>();
  /** VMs taken over from a live migration, with why, until their status is published here. */
  private readonly adopted = new Map<string, string>();
  /** When each VM's failback was last asked for (monotonic ms). */
  private readonly failbackAskedAtMs = new Map<string, number>();
  private stopped = false;
  /** Live migrations this host takes part in: the VMs they hold are theirs meanwhile. */
  private readonly migrations: VmMigrations;

  constructor(private readonly options: VmLifecycleOptions) {
    this.migrations = new VmMigrations({
      me: options.me,
      world: options.world,
      events: options.events,
      log: options.log,
      watchdog: options.watchdog,
      servedHere: options.servedHere,
      instanceOf: (name) => {
        const entry = this.running.get(name);
        return entry?.exited === undefined ? entry?.instance : undefined;
      },
      adopt: (vm, instance, reason) => this.adopt(vm, instance, reason),
      release: async (name) => {
        await this.stopVm(name, true, "it was live-migrated away");
      },
    });
  }

  /** Kills any QEMU an earlier run of this agent left: a VM never runs twice (before the lease is taken). */
  async init(): Promise<void> {
    const killed = await this.options.world.vms.killLeftovers();
    for (const line of killed) this.options.log(`killed a VM left from an earlier run: ${line}`);
  }

  names(): string[] {
    return [...this.running.keys()];
  }

  /** What runs here, for the API. */
  describe(): VmHere[] {
    const migrations = this.migrations.describe();
    const here: VmHere[] = [...this.running].map(([name, entry]) => {
      const migration = migrations.get(name);
      return {
        name,
        volume: entry.vm.volume,
        pid: entry.instance?.pid ?? null,
        runState: entry.exited !== undefined ? "exited" : (entry.instance?.runState() ?? "failed"),
        checks: this.checks(entry, entry.vm),
        ...(migration !== undefined && { migration }),
      };
    });
    // A migration's destination: its QEMU waits here, paused, for the state.
    for (const [name, migration] of migrations)
      if (migration.role === "destination")
        here.push({
          name,
          volume: migration.volume ?? "",
          pid: migration.pid ?? null,
          runState: "incoming-migration",
          checks: {},
          migration: { role: migration.role, peer: migration.peer, state: migration.state },
        });
    return here;
  }

  /** Decides and acts on every VM (ones recorded in the store and ones running here). */
  round(view: ClusterView): void {
    if (this.stopped) return;
    this.migrations.round(view);
    const names = new Set([...view.vms.keys(), ...this.running.keys()]);
    const hostView = this.hostView(view);
    for (const name of names) {
      if (this.busy.has(name) || this.migrations.owns(name, view)) continue;
      const vm = view.vms.get(name) ?? this.running.get(name)?.vm;
      if (vm !== undefined && this.options.volumeBusy(vm.volume)) continue;
      const status = view.vmStatus.get(name)?.record;
      const entry = this.running.get(name);
      if (entry?.instance !== undefined && entry.exited === undefined) this.probe(entry);
      const seen = entry && this.observe(entry);
      const action = decideVm(view.vms.get(name), status, seen, hostView);
      if (action.kind === "none") {
        if (entry === undefined || vm === undefined || seen === undefined) continue;
        const home = this.failbackDue(name, vm, seen, hostView, view);
        this.guarded(name, () =>
          home !== undefined ? this.requestFailback(vm, home, view) : this.publishRunning(name, view),
        );
        continue;
      }
      this.guarded(name, () => this.act(name, vm, action, view));
    }
  }

  /** This host serves the volume from now on (VolumeLifecycle says so at once). */
  onServing(volume: string): void {
    this.migrations.onServing(volume);
  }

  /** The lease is lost: every QEMU dies now (by pid, synchronously), before another host may start it. */
  fenceAll(reason: string): void {
    this.migrations.fenceAll();
    for (const [name, entry] of this.running) {
      if (entry.instance === undefined) continue;
      entry.instance.kill();
      this.options.watchdog()?.untrackVm(entry.instance.pid);
      this.options.log(`VM ${name}: killed (fence: ${reason})`);
    }
    this.running.clear();
  }

  /** The lease is unproven: pause every guest; resumeAfterFence undoes it when the lease is held again. */
  pauseAll(): void {
    for (const [name, entry] of this.running) {
      if (entry.instance === undefined || entry.exited !== undefined) continue;
      entry.pausedByFence = true;
      entry.instance.pause().catch((error) => this.options.log(`VM ${name}: pause failed: ${errorMessage(error)}`));
    }
  }

  resumeAfterFence(): void {
    for (const [name, entry] of this.running) {
      if (!entry.pausedByFence || entry.instance === undefined) continue;
      // A migration's source may have completed its transfer meanwhile: only the migration resumes it.
      if (this.migrations.holds(name)) continue;
      entry.pausedByFence = false;
      entry.instance.resume().catch((error) => this.options.log(`VM ${name}: resume failed: ${errorMessage(error)}`));
    }
  }

  /** The agent stops: each VM powers down (bounded), so another host can start it on the same data. */
  async stopAll(reason: string): Promise<void> {
    this.stopped = true;
    await Promise.all(
      [...this.running.keys()].map((name) =>
        this.stopVm(name, false, reason).catch((error) =>
          this.options.log(`VM ${name}: stop failed: ${errorMessage(error)}`),
        ),
      ),
    );
  }

  // ---- observing ----------------------------------------------------------------------------------------

  private observe(entry: RunningVm): VmObservation {
    const instance = entry.instance;
    return {
      ...((entry.exited ?? entry.failed) !== undefined && { exited: entry.exited ?? entry.failed }),
      runState: instance?.runState() ?? "starting",
      startedAtMs: entry.startedAtMs,
      ...(instance?.lastHeartbeatAtMs() !== undefined && { lastHeartbeatAtMs: instance.lastHeartbeatAtMs() }),
      ...(instance?.lastTcpOkAtMs() !== undefined && { lastTcpOkAtMs: instance.lastTcpOkAtMs() }),
      ...(entry.qmpFailingSinceMs !== undefined && { qmpFailingSinceMs: entry.qmpFailingSinceMs }),
      startRequest: entry.startRequest,
    };
  }

  /** One QMP query-status in the background; its failures start the QMP silence timer. */
  private probe(entry: RunningVm): void {
    if (entry.probing || entry.instance === undefined) return;
    entry.probing = true;
    const { clock, wallTime } = this.options.world;
    entry.instance
      .probe(this.options.timings.qmpTimeoutMs)
      .then(() => {
        entry.qmpFailingSinceMs = undefined;
        entry.qmpError = undefined;
        entry.lastQmpOkAt = wallTime().toISOString();
      })
      .catch((error) => {
        entry.qmpFailingSinceMs ??= clock.now();
        entry.qmpError = errorMessage(error);
      })
      .finally(() => (entry.probing = false));
  }

  private hostView(view: ClusterView) {
    const { me } = this.options;
    const runningHere = (): VmRecord[] =>
      [...this.running.values()].filter((entry) => entry.instance !== undefined).map((entry) => entry.vm);
    return {
      me,
      holdsLease: this.options.holdsLease(),
      now: this.options.world.clock.now(),
      alive: view.alive,
      primaryOf: (volume: string) => view.primaries.get(volume)?.record.host,
      servedHere: this.options.servedHere,
      handoverPending: (volume: string) => view.handovers.has(volume),
      inSyncHosts: (volume: string) => [
        ...new Set(
          [...(view.replicas.get(volume) ?? new Map<string, ReplicaRecord>())]
            .filter(([, r]) => r.state === "in-sync")
            .map(([id]) => copyPlace(id).host),
        ),
      ],
      lacks: (vm: VmRecord) => vmLacks(me, this.options.capacity, runningHere(), vm),
      hostLacks: (host: string, vm: VmRecord) => {
        if (view.maintenance.has(host)) return "nothing: it is in maintenance";
        const others = vmsPlacedOn(
          view.vms.values(),
          host,
          (volume) => view.primaries.get(volume)?.record.host,
          (name) => view.vmStatus.get(name)?.record.state,
        );
        return vmLacks(host, view.hostInfo.get(host)?.vmCapacity, others, vm);
      },
      timings: this.options.timings,
    };
  }

  // ---- acting -------------------------------------------------------------------------------------------

  private guarded(name: string, work: () => Promise<void>): void {
    this.busy.add(name);
    work()
      .catch((error) => this.options.log(`VM ${name}: ${errorMessage(error)}`))
      .finally(() => this.busy.delete(name));
  }

  private async act(name: string, vm: VmRecord | undefined, action: VmAction, view: ClusterView): Promise<void> {
    const { events } = this.options;
    if (action.kind !== "pending") this.pendingReason.delete(name);
    switch (action.kind) {
      case "none":
        return;
      case "start":
        return this.start(vm!, action.counts, action.reason, view);
      case "pending":
        if (this.pendingReason.get(name) !== action.reason) {
          this.pendingReason.set(name, action.reason);
          await events.event("vm-pending", `VM ${name} cannot start: ${action.reason}`, vm!.volume);
        }
        return this.publish(name, vm!, view, {
          state: "pending",
          reason: action.reason,
          counts: countsFrom(view, vm!),
        });
      case "stop": {
        const how = await this.stopVm(name, action.force, action.reason);
        await events.event("vm-stopped", `VM ${name} stopped (${how}): ${action.reason}`, vm?.volume);
        if (vm === undefined) return;
        // Only the disk's primary speaks for the VM: a host that lost it says nothing more.
        if (view.primaries.get(vm.volume)?.record.host !== this.options.me) return;
        return this.publish(name, vm, view, { state: "stopped", reason: action.reason, counts: countsFrom(view, vm) });
      }
      case "restart": {
        await events.event("vm-restart", `VM ${name}: ${action.reason}`, vm!.volume);
        await this.stopVm(name, true, action.reason);
        return this.start(vm!, action.counts, action.reason, view);
      }
      case "relocate": {
        await events.event("vm-relocate", `VM ${name}: ${action.reason}`, vm!.volume);
        await this.stopVm(name, true, action.reason);
        await this.publish(name, vm!, view, {
          state: "stopping",
          reason: action.reason,
          counts: action.counts,
          relocatingTo: action.to,
        });
        return this.requestSwitchover(vm!, action.to, view);
      }
      case "fail":
        await this.stopVm(name, true, action.reason);
        await events.event("vm-error", `VM ${name} is marked error: ${action.reason}`, vm!.volume);
        return this.publish(name, vm!, view, { state: "error", reason: action.reason, counts: countsFrom(view, vm!) });
      case "resume":
        await this.running.get(name)?.instance?.resume();
        return events.event("vm-resumed", `VM ${name} resumed: ${action.reason}`, vm!.volume);
      case "guest-off":
        await this.stopVm(name, true, action.reason);
        await this.markStopped(vm!);
        await events.event(
          "vm-stopped",
          `VM ${name}: ${action.reason}; it stays stopped until 'haven vm start ${name}'`,
          vm!.volume,
        );
        return this.publish(name, vm!, view, {
          state: "stopped",
          reason: action.reason,
          counts: countsFrom(view, vm!),
        });
    }
  }

  /** The VMs whose disk is `volume` stop here (before a switchover moves the disk away). */
  /**
   * The volume's engine serves it at sizeBytes now (haven volume resize): each VM on it grows its disk
   * in the background (QemuInstance.growDisk), with an event either way. A VM that starts later gets
   * the new size at its first connection.
   */
  diskGrew(volume: string, sizeBytes: number): void {
    for (const [name, entry] of this.running) {
      const instance = entry.instance;
      if (entry.vm.volume !== volume || instance?.growDisk === undefined || entry.exited !== undefined) continue;
      this.options.events.track(
        instance.growDisk(sizeBytes, GROW_DISK_TIMEOUT_MS).then(
          () =>
            this.options.events.event(
              "vm-disk-grown",
              `VM ${name}'s guest sees its disk at ${formatBytes(sizeBytes)}`,
              volume,
            ),
          (error: unknown) =>
            this.options.events.event(
              "vm-disk-grow-failed",
              `VM ${name}'s guest still sees its disk at the old size (${errorMessage(error)}); it sees ${formatBytes(sizeBytes)} from its next start ('haven vm restart' or a stop and start)`,
              volume,
            ),
        ),
      );
    }
  }

  async stopForVolume(volume: string, reason: string): Promise<void> {
    for (const [name, entry] of [...this.running]) {
      // A completed transfer's source stays as it is: the guest continues on the destination. Any
      // other switchover stops the guest here first, even mid-transfer (the migration then fails).
      if (entry.vm.volume !== volume || this.migrations.awaitsSwitch(name)) continue;
      const how = await this.stopVm(name, false, reason);
      await this.options.events.event("vm-stopped", `VM ${name} stopped (${how}): ${reason}`, volume);
    }
  }

  private async start(vm: VmRecord, counts: VmCounts, reason: string, view: ClusterView): Promise<void> {
    const { servedHere, volumeBusy, guardVolume, mayStart } = this.options;
    // Its disk must stay here while QEMU starts: no switchover, no stop of the engine meanwhile.
    if (volumeBusy(vm.volume) || !servedHere(vm.volume) || !mayStart()) return;
    await guardVolume(vm.volume, () => this.startGuarded(vm, counts, reason, view));
  }

  private async startGuarded(vm: VmRecord, counts: VmCounts, reason: string, view: ClusterView): Promise<void> {
    const { world, events } = this.options;
    const startedAtMs = world.clock.now();
    await this.publish(vm.name, vm, view, { state: "starting", reason, counts });
    let instance: VmInstance;
    let tracked: number | undefined;
    try {
      // Tracked by the watchdog before the guest runs: if this agent dies from here on, QEMU dies too.
      instance = await world.vms.launch(vm, vm.cpus, (pid) => {
        tracked = pid;
        this.options.watchdog()?.trackVm(pid, vm.name);
      });
    } catch (error) {
      if (tracked !== undefined) this.options.watchdog()?.untrackVm(tracked);
      const failed = `did not start: ${errorMessage(error)}`;
      this.running.set(vm.name, {
        vm,
        instance: undefined,
        failed,
        startRequest: vm.startRequest,
        startedAtMs,
        run: undefined,
        counts,
        pausedByFence: false,
        probing: false,
      });
      await events.event("vm-start-failed", `VM ${vm.name} ${failed}`, vm.volume);
      return;
    }
    this.track(vm, instance, startedAtMs, counts);
    if (!this.options.mayStart()) {
      // The lease went (or became unproven) while QEMU started: it must not run a moment longer.
      instance.kill();
      this.running.delete(vm.name);
      return;
    }
    await events.event("vm-started", `VM ${vm.name} started as pid ${instance.pid}: ${reason}`, vm.volume);
    await this.publish(vm.name, vm, view, { state: "running", reason, counts });
  }

  /** The VM's home host when its failback policy sends it there now (at most once a FAILBACK_RETRY_MS). */
  private failbackDue(
    name: string,
    vm: VmRecord,
    seen: VmObservation,
    host: VmHostView,
    view: ClusterView,
  ): string | undefined {
    const last = this.failbackAskedAtMs.get(name);
    if (last !== undefined && host.now - last < FAILBACK_RETRY_MS) return undefined;
    return failbackTarget(vm, seen, host, {
      inMaintenance: (other) => view.maintenance.has(other),
      migrating: view.migrations.has(name),
    });
  }

  /** Asks for the VM's live migration home (the same record an operator's `vm migrate` writes). */
  private async requestFailback(vm: VmRecord, home: string, view: ClusterView): Promise<void> {
    const { world, me, events } = this.options;
    const primary = view.primaries.get(vm.volume);
    if (primary === undefined) return;
    this.failbackAskedAtMs.set(vm.name, world.clock.now());
    const now = world.wallTime().toISOString();
    const record: MigrationRecord = {
      vm: vm.name,
      volume: vm.volume,
      from: me,
      to: home,
      id: randomUUID(),
      phase: "requested",
      requestedBy: `agent@${me} (failback)`,
      requestedAt: now,
      since: now,
    };
    await world.store.txn(
      [
        { key: keys.migration(vm.name), target: "createRevision", result: "equal", value: 0 },
        { key: keys.primary(vm.volume), target: "modRevision", result: "equal", value: primary.modRevision },
        { key: keys.maintenance(home), target: "createRevision", result: "equal", value: 0 },
      ],
      [
        { type: "put", key: keys.migration(vm.name), value: JSON.stringify(record) },
        events.put(
          "vm-failback",
          `VM ${vm.name}: its home ${home} is back with its disk in sync; it is live-migrated there (failback policy)`,
          vm.volume,
        ),
      ],
      [],
    );
  }

  /** A live migration's destination QEMU becomes the VM's instance here (its guest runs). */
  private async adopt(vm: VmRecord, instance: VmInstance, reason: string): Promise<void> {
    // A migration is the operator's move, not a failure: the counts begin again.
    this.track(vm, instance, this.options.world.clock.now(), { restarts: 0, relocations: 0 });
    this.adopted.set(vm.name, reason);
  }

  /** `instance` runs VM `vm` here from now on: what the API and the status records say of it. */
  private track(vm: VmRecord, instance: VmInstance, startedAtMs: number, counts: VmCounts): RunningVm {
    const { world } = this.options;
    const run: VmRun = {
      pid: instance.pid,
      vcpus: vm.vcpus,
      memoryMiB: vm.memoryMiB,
      ...(vm.cpus !== undefined && { cpus: vm.cpus }),
      startedAt: world.wallTime().toISOString(),
      startRequest: vm.startRequest,
      ...(world.vms.serialSocket(vm.name) !== undefined && { serialSocket: world.vms.serialSocket(vm.name) }),
      ...(world.vms.serialLog(vm.name) !== undefined && { serialLog: world.vms.serialLog(vm.name) }),
    };
    const entry: RunningVm = {
      vm,
      instance,
      startRequest: vm.startRequest,
      startedAtMs,
      run,
      counts,
      pausedByFence: false,
      probing: false,
    };
    this.running.set(vm.name, entry);
    void instance.exited.then((why) => {
      entry.exited = why;
      this.options.watchdog()?.untrackVm(instance.pid);
    });
    return entry;
  }

  /** Stops the VM's QEMU here (if any) and forgets it; says how it ended. */
  private async stopVm(name: string, force: boolean, reason: string): Promise<string> {
    const entry = this.running.get(name);
    if (entry === undefined) return "not running";
    let how = entry.failed ?? "exited";
    if (entry.instance !== undefined && entry.exited === undefined) {
      this.options.log(`VM ${name}: stopping (${force ? "hard" : "ACPI power-down"}): ${reason}`);
      how = await entry.instance.stop(force);
    }
    if (entry.instance !== undefined) this.options.watchdog()?.untrackVm(entry.instance.pid);
    this.running.delete(name);
    return how;
  }

  /** The guest powered off: the VM's desired state becomes stopped (unless the record changed meanwhile). */
  private async markStopped(vm: VmRecord): Promise<void> {
    const store = this.options.world.store;
    const kv = await store.get(keys.vm(vm.name));
    if (kv === undefined) return;
    const current = parseVmRecord(kv.value, kv.key);
    if (current.startRequest !== vm.startRequest || current.desired === "stopped") return;
    await store.txn(
      [{ key: kv.key, target: "modRevision", result: "equal", value: kv.modRevision }],
      [{ type: "put", key: kv.key, value: JSON.stringify({ ...current, desired: "stopped" }) }],
      [],
    );
  }

  /** Relocation: the disk's primary moves to `to` (a switchover this host carries out); the VM follows. */
  private async requestSwitchover(vm: VmRecord, to: string, view: ClusterView): Promise<void> {
    const record: HandoverRecord = {
      to,
      requestedBy: `agent@${this.options.me} (VM ${vm.name} relocation)`,
      requestedAt: this.options.world.wallTime().toISOString(),
    };
    const primary = view.primaries.get(vm.volume);
    if (primary === undefined) return;
    await this.options.world.store.txn(
      [{ key: keys.primary(vm.volume), target: "modRevision", result: "equal", value: primary.modRevision }],
      [{ type: "put", key: keys.handover(vm.volume), value: JSON.stringify(record) }],
      [],
    );
  }

  // ---- publishing ---------------------------------------------------------------------------------------

  private async publishRunning(name: string, view: ClusterView): Promise<void> {
    const entry = this.running.get(name);
    const vm = view.vms.get(name);
    if (entry === undefined || vm === undefined || entry.instance === undefined) return;
    const runState = entry.instance.runState();
    const state: VmState = runState === "running" ? "running" : runState === "starting" ? "starting" : "paused";
    const status = view.vmStatus.get(name)?.record;
    const reason =
      state === "paused" ? `QEMU reports ${runState}` : (this.adopted.get(name) ?? status?.reason ?? "running");
    await this.publish(name, vm, view, { state, reason, counts: entry.counts });
    this.adopted.delete(name);
  }

  private checks(entry: RunningVm | undefined, vm: VmRecord): Record<string, VmCheck> {
    if (entry === undefined) return {};
    const { world, timings } = this.options;
    const now = world.clock.now();
    const wallNow = world.wallTime();
    const at = (ms: number | undefined): string =>
      ms === undefined ? wallNow.toISOString() : new Date(wallNow.getTime() - (now - ms)).toISOString();
    const checks: Record<string, VmCheck> = {};
    const seen = this.observe(entry);
    checks.process = {
      ok: seen.exited === undefined,
      value: seen.exited ?? `pid ${entry.instance?.pid} running`,
      at: wallNow.toISOString(),
    };
    checks.qmp = {
      ok: entry.qmpFailingSinceMs === undefined,
      value: entry.qmpError ?? "answers",
      at:
        entry.qmpFailingSinceMs === undefined
          ? (entry.lastQmpOkAt ?? wallNow.toISOString())
          : at(entry.qmpFailingSinceMs),
    };
    checks.runState = { ok: seen.runState === "running", value: seen.runState, at: wallNow.toISOString() };
    if (vm.heartbeat) {
      const failure = vmFailure(vm, seen, now, timings);
      checks.heartbeat = {
        ok: seen.lastHeartbeatAtMs !== undefined && (failure === undefined || !failure.includes("heartbeat")),
        value: seen.lastHeartbeatAtMs === undefined ? "none yet" : "beating",
        at: at(seen.lastHeartbeatAtMs ?? entry.startedAtMs),
      };
    }
    if (vm.tcpCheck !== undefined) {
      const failure = vmFailure(vm, seen, now, timings);
      checks.tcp = {
        ok: seen.lastTcpOkAtMs !== undefined && (failure === undefined || !failure.includes("TCP check")),
        value: `${vm.tcpCheck.address}:${vm.tcpCheck.port} ${seen.lastTcpOkAtMs === undefined ? "not answered yet" : "answers"}`,
        at: at(seen.lastTcpOkAtMs ?? entry.startedAtMs),
      };
    }
    return checks;
  }

  private async publish(
    name: string,
    vm: VmRecord,
    view: ClusterView,
    what: { state: VmState; reason: string; counts: VmCounts; relocatingTo?: string },
  ): Promise<void> {
    const { world, me } = this.options;
    const entry = this.running.get(name);
    const previous = view.vmStatus.get(name)?.record;
    const record: VmStatusRecord = {
      host: me,
      state: what.state,
      reason: what.reason,
      since: previous?.state === what.state && previous.host === me ? previous.since : world.wallTime().toISOString(),
      startRequest: vm.startRequest,
      restarts: what.counts.restarts,
      relocations: what.counts.relocations,
      ...(entry?.run !== undefined && what.state !== "stopped" && what.state !== "error" && { run: entry.run }),
      ...(what.relocatingTo !== undefined && { relocatingTo: what.relocatingTo }),
      checks: this.checks(entry, vm),
      updatedAt: world.wallTime().toISOString(),
    };
    const { checks } = record;
    const stable = { ...record, updatedAt: "", checks: {} };
    const text = JSON.stringify({
      stable,
      checks: Object.fromEntries(Object.entries(checks).map(([k, c]) => [k, c.ok])),
    });
    const last = this.published.get(name);
    const now = world.clock.now();
    if (last !== undefined && last.text === text && now - last.atMs < STATUS_REFRESH_MS) return;
    const primary = view.primaries.get(vm.volume);
    if (primary === undefined || primary.record.host !== me) return;
    const stillPrimary: Compare = {
      key: keys.primary(vm.volume),
      target: "modRevision",
      result: "equal",
      value: primary.modRevision,
    };
    const result = await world.store.txn(
      [stillPrimary],
      [{ type: "put", key: keys.vmStatus(name), value: JSON.stringify(record) }],
      [],
    );
    if (result.succeeded) this.published.set(name, { text, atMs: now });
  }
}

function countsFrom(view: ClusterView, vm: VmRecord): VmCounts {
  return countsOf(vm, view.vmStatus.get(vm.name)?.record);
}
