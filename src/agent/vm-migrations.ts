// The live migrations this host takes part in, as source or destination (migration-schema.ts for the
// phases, migration-decide.ts for the rules). Each round it decides per migration record and acts in
// the background, one action at a time per VM. While a VM has a migration record naming this host, or
// this host still holds a QEMU of a migration, VmLifecycle leaves the VM to this class; it hands the
// VM back by adopting the destination's QEMU (destination) or by forgetting the source's (source).
//
// Every change to the record is a transaction conditioned on the revision this host last saw, so a
// stale decision changes nothing. The source writes the transfer's progress at most once a second.

import type { Compare, TxnOperation } from "../cluster/store.js";
import { keys, parsePrimaryRecord, type HandoverRecord } from "../cluster/schema.js";
import { parseMigrationRecord, type MigrationRecord } from "../cluster/migration-schema.js";
import type { VmRecord } from "../cluster/vm-schema.js";
import { errorMessage } from "../core/errors.js";
import type { TransferProgress } from "../vm/migration.js";
import type { EventLog } from "./event-log.js";
import { decideMigration, type IncomingState, type MigrationAction, type OutgoingState } from "./migration-decide.js";
import type { ClusterView } from "./reconciler.js";
import type { MigrationHereView } from "./view.js";
import type { AgentWorld, IncomingVm, VmInstance, Watchdog } from "./world.js";

/** How often the source writes the transfer's progress to the record. */
const PROGRESS_WRITE_MS = 1_000;

interface Outgoing {
  readonly id: string;
  readonly to: string;
  /** QEMU's last report. */
  progress?: TransferProgress;
  state: OutgoingState;
  failure?: string;
  readonly abort: AbortController;
  /** The record's revision after this host's last write, for the next conditional write. */
  revision: number;
  lastWriteMs: number;
  /** When the guest paused here (wall ms), from QEMU's own downtime, once the transfer completed. */
  pausedAtMs?: number;
  downtimeMs?: number;
  totalTimeMs?: number;
}

interface Incoming {
  readonly id: string;
  readonly from: string;
  readonly vm: VmRecord;
  state: IncomingState;
  vmIncoming?: IncomingVm;
}

export interface VmMigrationsOptions {
  readonly me: string;
  readonly world: AgentWorld;
  readonly events: EventLog;
  readonly log: (line: string) => void;
  readonly watchdog: () => Watchdog | undefined;
  /** Whether this host's engine serves the volume now. */
  readonly servedHere: (volume: string) => boolean;
  /** The source's QEMU of the VM, when it runs here. */
  readonly instanceOf: (name: string) => VmInstance | undefined;
  /** The destination's guest runs: VmLifecycle takes the QEMU over as the VM's instance. */
  readonly adopt: (vm: VmRecord, instance: VmInstance, reason: string) => Promise<void>;
  /** The source's QEMU is no longer the VM's (the guest runs on the destination): stop it quietly. */
  readonly release: (name: string) => Promise<void>;
}

export class VmMigrations {
  private readonly outgoing = new Map<string, Outgoing>();
  private readonly incoming = new Map<string, Incoming>();
  private readonly firstSeen = new Map<string, { id: string; atMs: number }>();
  private readonly busy = new Set<string>();

  constructor(private readonly options: VmMigrationsOptions) {}

  /** Whether this host holds a QEMU of a migration of the VM (source or destination). */
  holds(name: string): boolean {
    return this.outgoing.has(name) || this.incoming.has(name);
  }

  /**
   * Whether the VM's guest here is a completed transfer's source: paused, its state on the
   * destination, waiting for its own migration's switchover (which must not stop it).
   */
  awaitsSwitch(name: string): boolean {
    return this.outgoing.get(name)?.state === "completed";
  }

  /** Whether the VM is this class's now (VmLifecycle leaves it alone). */
  owns(name: string, view: ClusterView): boolean {
    const record = view.migrations.get(name)?.record;
    const involved = record !== undefined && (record.from === this.options.me || record.to === this.options.me);
    return involved || this.outgoing.has(name) || this.incoming.has(name) || this.busy.has(name);
  }

  /** The migrations this host takes part in, by VM, for the API. */
  describe(): Map<string, MigrationHereView & { readonly pid?: number; readonly volume?: string }> {
    const views = new Map<string, MigrationHereView & { readonly pid?: number; readonly volume?: string }>();
    for (const [vm, o] of this.outgoing)
      views.set(vm, { role: "source", peer: o.to, state: o.state, ...(o.progress && { progress: o.progress }) });
    for (const [vm, i] of this.incoming) {
      const pid = i.vmIncoming?.instance.pid;
      views.set(vm, { role: "destination", peer: i.from, state: i.state, volume: i.vm.volume, ...(pid && { pid }) });
    }
    return views;
  }

  round(view: ClusterView): void {
    const { me, world } = this.options;
    const names = new Set([...view.migrations.keys(), ...this.outgoing.keys(), ...this.incoming.keys()]);
    for (const name of names) {
      if (this.busy.has(name)) continue;
      const entry = view.migrations.get(name);
      const record = entry?.record;
      if (record === undefined || (record.from !== me && record.to !== me)) {
        this.guarded(name, () => this.ended(name, view));
        continue;
      }
      const seen = this.firstSeen.get(name);
      if (seen?.id !== record.id) this.firstSeen.set(name, { id: record.id, atMs: world.clock.now() });
      const out = this.outgoing.get(name);
      const inc = this.incoming.get(name);
      if ((out !== undefined && out.id !== record.id) || (inc !== undefined && inc.id !== record.id)) {
        // A leftover of an earlier request: it ends first.
        this.guarded(name, () => this.ended(name, view));
        continue;
      }
      const action = decideMigration(
        record,
        {
          ...(out !== undefined && { outgoing: out.state }),
          ...(out?.failure !== undefined && { failure: out.failure }),
          runsHere: this.options.instanceOf(name) !== undefined,
          ...(inc !== undefined && { incoming: inc.state }),
          seenAtMs: this.firstSeen.get(name)!.atMs,
        },
        {
          me,
          now: world.clock.now(),
          alive: view.alive,
          primary: view.primaries.get(record.volume)?.record.host,
          servedHere: this.options.servedHere(record.volume),
          handoverPending: view.handovers.has(record.volume),
        },
      );
      if (action.kind !== "none") this.guarded(name, () => this.act(record, entry!.modRevision, action, view));
    }
  }

  /** The lease is lost: every incoming QEMU dies with the others (the source's is VmLifecycle's). */
  fenceAll(): void {
    for (const [name, entry] of this.incoming) {
      entry.vmIncoming?.instance.kill();
      this.options.log(`VM ${name}: incoming migration QEMU killed (fence)`);
    }
    this.incoming.clear();
    for (const entry of this.outgoing.values()) entry.abort.abort("this host lost its lease");
  }

  private guarded(name: string, work: () => Promise<void>): void {
    this.busy.add(name);
    work()
      .catch((error) => this.options.log(`VM ${name}: migration: ${errorMessage(error)}`))
      .finally(() => this.busy.delete(name));
  }

  private async act(record: MigrationRecord, revision: number, action: MigrationAction, view: ClusterView) {
    switch (action.kind) {
      case "none":
        return;
      case "prepare":
        return this.prepare(record, revision, view);
      case "resume-here": {
        const primary = view.primaries.get(record.volume);
        return this.resumeHere(
          record,
          revision,
          primary && { host: primary.record.host, modRevision: primary.modRevision },
        );
      }
      case "abandon":
        await this.abandon(record.vm, action.reason);
        if (action.end) await this.endRecord(record, action.reason, false);
        return;
      case "transfer":
        return this.transfer(record, revision, action.uri);
      case "switch":
        return this.switchDisk(record);
      case "give-up":
        return this.giveUp(record, action.reason);
    }
  }

  // ---- destination --------------------------------------------------------------------------------------

  private async prepare(record: MigrationRecord, revision: number, view: ClusterView): Promise<void> {
    const { world, events, me } = this.options;
    const vm = view.vms.get(record.vm);
    const primaryHost = view.hostInfo.get(record.from);
    if (vm === undefined || primaryHost === undefined) return;
    const entry: Incoming = { id: record.id, from: record.from, vm, state: "starting" };
    this.incoming.set(record.vm, entry);
    let tracked: number | undefined;
    try {
      // Its disk opens through this host's endpoint, led to the primary's NBD front meanwhile.
      world.vms.routeDiskTo(record.volume, {
        host: primaryHost.address,
        port: primaryHost.nbdPort,
        name: record.from,
      });
      const incoming = await world.vms.launchIncoming(vm, vm.cpus, (pid) => {
        tracked = pid;
        this.options.watchdog()?.trackVm(pid, vm.name);
      });
      entry.vmIncoming = incoming;
      entry.state = "listening";
      void incoming.completed.then(
        () => (entry.state = "completed"),
        (error) => {
          if (entry.state !== "completed") entry.state = "failed";
          this.options.log(`VM ${vm.name}: incoming migration: ${errorMessage(error)}`);
        },
      );
      void incoming.instance.exited.then(() => {
        if (entry.state !== "completed") entry.state = "failed";
      });
      const next: MigrationRecord = { ...record, phase: "incoming", incoming: incoming.uri, since: now(world) };
      const result = await world.store.txn(
        [revisionIs(keys.migration(record.vm), revision)],
        [{ type: "put", key: keys.migration(record.vm), value: JSON.stringify(next) }],
        [],
      );
      if (!result.succeeded) throw new Error("the migration record changed meanwhile");
      await events.event(
        "vm-migration-incoming",
        `VM ${vm.name}: ${me} waits for its state at ${incoming.uri} (pid ${incoming.instance.pid})`,
        record.volume,
      );
    } catch (error) {
      if (tracked !== undefined) this.options.watchdog()?.untrackVm(tracked);
      await this.abandon(record.vm, `the incoming QEMU did not start: ${errorMessage(error)}`);
      await this.endRecord(record, `${me} could not start the incoming QEMU: ${errorMessage(error)}`, false);
    }
  }

  /** The transfer is complete and the disk is served here: the guest resumes on this host. */
  /**
   * This host's engine serves the volume now: a guest whose whole state is here resumes at once, without
   * waiting for the next round (it is paused until then).
   */
  onServing(volume: string): void {
    for (const [name, entry] of this.incoming) {
      if (entry.vm.volume !== volume || entry.state !== "completed" || this.busy.has(name)) continue;
      this.guarded(name, async () => {
        const kv = await this.options.world.store.get(keys.migration(name));
        if (kv === undefined) return;
        const record = parseMigrationRecord(kv.value, kv.key);
        const primary = await this.options.world.store.get(keys.primary(volume));
        if (record.id !== entry.id || primary === undefined) return;
        const host = parsePrimaryRecord(primary.value, primary.key).host;
        await this.resumeHere(record, kv.modRevision, { host, modRevision: primary.modRevision });
      });
    }
  }

  private async resumeHere(
    record: MigrationRecord,
    revision: number,
    primary: { host: string; modRevision: number } | undefined,
  ): Promise<void> {
    const { world, events, me } = this.options;
    const entry = this.incoming.get(record.vm);
    const instance = entry?.vmIncoming?.instance;
    if (entry === undefined || instance === undefined || primary?.host !== me) return;
    const pausedAt = record.pausedAt;
    // Conditioned on the record and the primary as read: both say the guest is ours.
    const result = await world.store.txn(
      [revisionIs(keys.migration(record.vm), revision), revisionIs(keys.primary(record.volume), primary.modRevision)],
      [{ type: "delete", key: keys.migration(record.vm) }],
      [],
    );
    if (!result.succeeded) return; // the next round decides again
    await instance.resume();
    const resumedAtMs = world.wallTime().getTime();
    this.incoming.delete(record.vm);
    world.vms.routeDiskTo(record.volume, undefined);
    const paused =
      pausedAt !== undefined ? ` (the guest was paused for about ${resumedAtMs - Date.parse(pausedAt)} ms)` : "";
    const reason = `live-migrated from ${record.from}`;
    await this.options.adopt(entry.vm, instance, reason);
    await events.event("vm-migrated", `VM ${record.vm} runs on ${me}, ${reason}${paused}`, record.volume);
  }

  private async abandon(name: string, reason: string): Promise<void> {
    const entry = this.incoming.get(name);
    if (entry === undefined) return;
    this.incoming.delete(name);
    const instance = entry.vmIncoming?.instance;
    if (instance !== undefined) {
      instance.kill();
      this.options.watchdog()?.untrackVm(instance.pid);
    }
    this.options.world.vms.routeDiskTo(entry.vm.volume, undefined);
    this.options.log(`VM ${name}: incoming migration abandoned: ${reason}`);
  }

  // ---- source -------------------------------------------------------------------------------------------

  private async transfer(record: MigrationRecord, revision: number, uri: string): Promise<void> {
    const { world, events, me } = this.options;
    const instance = this.options.instanceOf(record.vm);
    if (instance === undefined) return;
    const entry: Outgoing = {
      id: record.id,
      to: record.to,
      state: "transferring",
      abort: new AbortController(),
      revision,
      lastWriteMs: world.clock.now(),
    };
    this.outgoing.set(record.vm, entry);
    await events.event(
      "vm-migration-started",
      `VM ${record.vm}: live migration from ${me} to ${record.to} started`,
      record.volume,
    );
    // The transfer runs outside the guarded action: rounds go on (and may abort it) meanwhile.
    void instance
      .migrateOut(
        { uri, host: record.to, ...(record.maxBandwidth !== undefined && { maxBandwidth: record.maxBandwidth }) },
        (progress) => this.progress(record, entry, progress),
        entry.abort.signal,
      )
      .then(
        (done) => {
          entry.downtimeMs = done.downtimeMs;
          entry.totalTimeMs = done.totalTimeMs;
          entry.pausedAtMs = world.wallTime().getTime() - (done.downtimeMs ?? 0);
          entry.state = "completed";
          // The guest is paused now: the switch starts at once rather than at the next round.
          if (!this.busy.has(record.vm)) this.guarded(record.vm, () => this.switchDisk(record));
        },
        (error) => {
          entry.failure = errorMessage(error);
          entry.state = "failed";
        },
      );
  }

  private progress(record: MigrationRecord, entry: Outgoing, progress: TransferProgress): void {
    const { world } = this.options;
    entry.progress = progress;
    const now = world.clock.now();
    if (progress.status !== "active" || now - entry.lastWriteMs < PROGRESS_WRITE_MS || entry.state !== "transferring")
      return;
    entry.lastWriteMs = now;
    const next: MigrationRecord = {
      ...record,
      phase: "incoming",
      progress: {
        status: progress.status,
        totalBytes: progress.totalBytes,
        transferredBytes: progress.transferredBytes,
        remainingBytes: progress.remainingBytes,
        dirtyPagesRate: progress.dirtyPagesRate,
        pageSize: progress.pageSize,
        expectedDowntimeMs: progress.expectedDowntimeMs,
        passes: progress.passes,
        mbps: progress.mbps,
      },
    };
    void world.store
      .txn(
        [revisionIs(keys.migration(record.vm), entry.revision)],
        [{ type: "put", key: keys.migration(record.vm), value: JSON.stringify(next) }],
        [],
      )
      .then((result) => {
        if (result.succeeded) entry.revision = result.revision;
      })
      .catch(() => undefined);
  }

  /** The transfer is complete (the guest is paused here): the disk's primary moves to the destination. */
  private async switchDisk(record: MigrationRecord): Promise<void> {
    const { world, me } = this.options;
    const entry = this.outgoing.get(record.vm);
    if (entry === undefined) return;
    const fresh = await world.store.get(keys.migration(record.vm));
    const primary = await world.store.get(keys.primary(record.volume));
    if (fresh === undefined || primary === undefined) return;
    const handover: HandoverRecord = {
      to: record.to,
      requestedBy: `agent@${me} (VM ${record.vm} live migration)`,
      requestedAt: now(world),
    };
    const next: MigrationRecord = {
      ...parseMigrationRecord(fresh.value, fresh.key),
      phase: "switching",
      since: now(world),
      ...(entry.pausedAtMs !== undefined && { pausedAt: new Date(entry.pausedAtMs).toISOString() }),
    };
    const result = await world.store.txn(
      [revisionIs(fresh.key, fresh.modRevision), revisionIs(primary.key, primary.modRevision)],
      [
        { type: "put", key: fresh.key, value: JSON.stringify(next) },
        { type: "put", key: keys.handover(record.volume), value: JSON.stringify(handover) },
      ],
      [],
    );
    if (result.succeeded) entry.revision = result.revision;
    this.options.log(
      `VM ${record.vm}: transfer to ${record.to} complete (QEMU paused the guest ${entry.downtimeMs ?? "?"} ms, ` +
        `${entry.totalTimeMs ?? "?"} ms in all); its disk moves there`,
    );
  }

  /** The migration ends with the guest on the source: the record goes, then the guest runs again. */
  private async giveUp(record: MigrationRecord, reason: string): Promise<void> {
    const entry = this.outgoing.get(record.vm);
    entry?.abort.abort(reason);
    const ended = await this.endRecord(record, reason, entry?.state === "completed");
    if (!ended) return;
    this.outgoing.delete(record.vm);
    if (entry?.state === "completed") {
      // The guest was paused for the last pass: it runs here again (QEMU reactivates its disks).
      await this.options.instanceOf(record.vm)?.resume();
    }
  }

  /**
   * Removes the record (conditioned on it, and with `resumesSource` on the disk's primary still being
   * this host) with an event saying why the migration failed; false when another party changed it first.
   */
  private async endRecord(record: MigrationRecord, reason: string, resumesSource: boolean): Promise<boolean> {
    const { world, events, me } = this.options;
    const fresh = await world.store.get(keys.migration(record.vm));
    if (fresh === undefined) return true;
    if (parseMigrationRecord(fresh.value, fresh.key).id !== record.id) return false;
    const compare: Compare[] = [revisionIs(fresh.key, fresh.modRevision)];
    if (resumesSource) {
      // The source resumes its guest only while the disk's primary is still here.
      const primary = await world.store.get(keys.primary(record.volume));
      if (primary === undefined || parsePrimaryRecord(primary.value, primary.key).host !== me) return false;
      compare.push(revisionIs(primary.key, primary.modRevision));
    }
    const operations: TxnOperation[] = [
      { type: "delete", key: fresh.key },
      events.put(
        "vm-migration-failed",
        `VM ${record.vm}: live migration from ${record.from} to ${record.to} failed: ${reason}` +
          (record.from === me && this.options.instanceOf(record.vm) !== undefined ? `; it runs on ${me}` : ""),
        record.volume,
      ),
    ];
    return (await world.store.txn(compare, operations, [])).succeeded;
  }

  /** The record is gone (or names other hosts): whatever this host still holds of it ends. */
  private async ended(name: string, view: ClusterView): Promise<void> {
    const out = this.outgoing.get(name);
    if (out !== undefined) {
      const vm = view.vms.get(name);
      const primary = vm === undefined ? undefined : view.primaries.get(vm.volume)?.record.host;
      if (out.state === "transferring") {
        out.abort.abort("the migration record was removed");
        return; // it ends as failed; the next round comes back here
      }
      this.outgoing.delete(name);
      if (out.state === "completed") {
        // The guest runs on the destination now, or (the record was removed by hand while the disk
        // stayed here) it must run here again.
        if (primary !== this.options.me) await this.options.release(name);
        else await this.options.instanceOf(name)?.resume();
      }
    }
    if (this.incoming.has(name)) await this.abandon(name, "the migration ended elsewhere");
    this.firstSeen.delete(name);
  }
}

function revisionIs(key: string, revision: number): Compare {
  return { key, target: "modRevision", result: "equal", value: revision };
}

function now(world: AgentWorld): string {
  return world.wallTime().toISOString();
}
