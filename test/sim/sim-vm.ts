// VMs in the control-plane simulation: a model of QEMU for the real VmLifecycle. A VM instance runs on
// the global clock (QEMU is a process of its own: an agent's SIGSTOP does not stop it) and sends a
// guest heartbeat every second while it runs; what the agent learns of it (exit, heartbeats, QMP
// answers) passes through the host's clock, so a paused agent learns it late. A killed host takes its
// VMs with it (power loss); a host whose watchdog fires takes them too (the watchdog tracks their pids).
//
// The fleet keeps every instance ever started, so the scenario can check the rule that matters: a VM
// never runs twice (at most one live, unpaused instance of each VM at any moment).

import type { VmRunState } from "../../src/agent/vm-decide.js";
import type { IncomingVm, VmDriver, VmInstance } from "../../src/agent/world.js";
import type { TransferProgress } from "../../src/vm/migration.js";
import type { VmRecord } from "../../src/cluster/vm-schema.js";
import { HavenError } from "../../src/core/errors.js";
import type { HostClock } from "./sim-host.js";
import type { Rng } from "./rng.js";
import type { SimClock } from "./sim-clock.js";

export interface SimVmRecord {
  readonly vm: string;
  readonly host: string;
  readonly pid: number;
  readonly startedAt: number;
  /** Global time it stopped running (killed, exited); undefined while it runs. */
  endedAt?: number;
  paused: boolean;
  panicked: boolean;
  heartbeatFrozen: boolean;
  /** Whether it is running with its whole host frozen (a machine-wide freeze). */
  frozen: boolean;
  heartbeats: number;
}

/** Every VM instance of the run, and the faults the scenario can inject into them. */
export class SimVmFleet {
  readonly instances: SimVmRecord[] = [];
  /** Live migrations' destinations waiting for a source, by uri. */
  readonly incoming = new Map<string, { instance: SimVmInstance; complete: (error?: Error) => void }>();
  private nextPid = 1000;

  constructor(
    private readonly global: SimClock,
    readonly rng: Rng,
  ) {}

  newPid(): number {
    return this.nextPid++;
  }

  live(vm?: string): SimVmRecord[] {
    return this.instances.filter(
      (i) => i.endedAt === undefined && !i.paused && !i.frozen && (vm === undefined || i.vm === vm),
    );
  }

  /** A VM that runs on two hosts at once, or undefined. */
  twoWriters(): string | undefined {
    const byVm = new Map<string, SimVmRecord[]>();
    for (const instance of this.live()) byVm.set(instance.vm, [...(byVm.get(instance.vm) ?? []), instance]);
    for (const [vm, list] of byVm)
      if (list.length > 1)
        return `VM ${vm} runs ${list.length} times at ${this.global.now()} ms: ${list.map((i) => `${i.host} pid ${i.pid}`).join(", ")}`;
    return undefined;
  }

  now(): number {
    return this.global.now();
  }
}

/** One host's VM driver: its instances die with the host. */
export class SimVmDriver implements VmDriver {
  private readonly mine = new Set<SimVmInstance>();
  /** The whole machine is frozen: a QEMU that finishes starting meanwhile is frozen too. */
  private frozen = false;

  constructor(
    private readonly fleet: SimVmFleet,
    private readonly host: string,
    private readonly clock: HostClock,
    private readonly global: SimClock,
  ) {}

  launch(vm: VmRecord, _hostCpus: readonly number[] | undefined, track: (pid: number) => void): Promise<VmInstance> {
    return this.start(vm, track, false);
  }

  routeDiskTo(): void {
    // The simulation's VMs reach their disk through the model, not endpoints.
  }

  /** A destination: a paused instance that a source's migrateOut completes (or fails). */
  async launchIncoming(
    vm: VmRecord,
    _hostCpus: readonly number[] | undefined,
    track: (pid: number) => void,
  ): Promise<IncomingVm> {
    const instance = await this.start(vm, track, true);
    const uri = `tcp:127.0.0.1:${instance.pid}`;
    let complete!: (error?: Error) => void;
    const completed = this.clock.pass(
      new Promise<void>((resolve, reject) => (complete = (error) => (error ? reject(error) : resolve()))),
    );
    completed.catch(() => undefined);
    this.fleet.incoming.set(uri, { instance, complete });
    void instance.exited.then(() => {
      this.fleet.incoming.delete(uri);
      complete(new HavenError("HAVEN_ERR_IO", "the incoming QEMU exited"));
    });
    return { instance, uri, completed };
  }

  private start(vm: VmRecord, track: (pid: number) => void, incoming: boolean): Promise<SimVmInstance> {
    return this.clock.pass(
      new Promise<SimVmInstance>((resolve, reject) => {
        this.global.schedule(this.fleet.rng.int(50, 400), () => {
          // The agent died while QEMU started: the watchdog kills it (found by its pidfile); it never runs.
          if (this.clock.isDead) return;
          if (this.fleet.rng.chance(0.02)) {
            reject(new HavenError("HAVEN_ERR_UNAVAILABLE", `VM ${vm.name}: QEMU did not start (simulated)`));
            return;
          }
          const record: SimVmRecord = {
            vm: vm.name,
            host: this.host,
            pid: this.fleet.newPid(),
            startedAt: this.global.now(),
            paused: incoming,
            panicked: false,
            heartbeatFrozen: false,
            frozen: this.frozen,
            heartbeats: 0,
          };
          this.fleet.instances.push(record);
          track(record.pid);
          const instance = new SimVmInstance(record, this.clock, this.global, vm.heartbeat, this.fleet);
          this.mine.add(instance);
          resolve(instance);
        });
      }),
    );
  }

  killLeftovers(): Promise<string[]> {
    return Promise.resolve([]);
  }

  serialLog(): string | undefined {
    return undefined;
  }

  serialSocket(): string | undefined {
    return undefined;
  }

  /** The host lost power, or its watchdog fired: every VM process dies now. */
  killAll(): void {
    for (const instance of this.mine) instance.kill();
    this.mine.clear();
  }

  /** The whole machine freezes (or thaws): its VMs stop running with it. */
  freeze(frozen: boolean): void {
    this.frozen = frozen;
    for (const instance of this.mine) instance.record.frozen = frozen;
  }

  running(): SimVmInstance[] {
    return [...this.mine].filter((instance) => instance.record.endedAt === undefined);
  }
}

export class SimVmInstance implements VmInstance {
  readonly pid: number;
  readonly exited: Promise<string>;
  private resolveExit!: (why: string) => void;
  private state: VmRunState = "running";
  private heartbeatAt: number | undefined;
  private beat: { cancel(): void } | undefined;

  constructor(
    readonly record: SimVmRecord,
    private readonly clock: HostClock,
    private readonly global: SimClock,
    heartbeat: boolean,
    private readonly fleet: SimVmFleet,
  ) {
    this.pid = record.pid;
    if (record.paused) this.state = "starting";
    const exited = new Promise<string>((resolve) => (this.resolveExit = resolve));
    this.exited = clock.pass(exited);
    if (heartbeat) this.scheduleBeat(1_500);
  }

  private scheduleBeat(afterMs: number): void {
    this.beat = this.global.schedule(afterMs, () => {
      const r = this.record;
      if (r.endedAt !== undefined) return;
      if (!r.paused && !r.frozen && !r.panicked && !r.heartbeatFrozen) {
        r.heartbeats++;
        this.clock.run(() => (this.heartbeatAt = this.clock.now()));
      }
      this.scheduleBeat(1_000);
    });
  }

  runState(): VmRunState {
    return this.state;
  }

  lastHeartbeatAtMs(): number | undefined {
    return this.heartbeatAt;
  }

  lastTcpOkAtMs(): number | undefined {
    return undefined; // the simulation's VMs have no TCP check
  }

  probe(): Promise<void> {
    if (this.record.endedAt !== undefined) return Promise.reject(new HavenError("HAVEN_ERR_IO", "QMP socket closed"));
    return Promise.resolve();
  }

  pause(): Promise<void> {
    if (this.record.endedAt === undefined) {
      this.record.paused = true;
      // QEMU keeps reporting a panicked guest as guest-panicked.
      if (!this.record.panicked) this.state = "paused";
    }
    return Promise.resolve();
  }

  resume(): Promise<void> {
    if (this.record.endedAt === undefined && !this.record.panicked) {
      this.record.paused = false;
      this.state = "running";
    }
    return Promise.resolve();
  }

  stop(): Promise<string> {
    this.end("stopped");
    return Promise.resolve("quit");
  }

  kill(): void {
    this.end("killed by SIGKILL");
  }

  /**
   * The model of a live migration: RAM moves for a while (progress at each step), then the guest
   * pauses here and the destination has the whole state. Either end dying fails it; the guest keeps
   * running here unless the transfer completed.
   */
  migrateOut(
    target: { uri: string; host: string; maxBandwidth?: number },
    onProgress: (progress: TransferProgress) => void,
    abort: AbortSignal,
  ): Promise<TransferProgress> {
    const destination = this.fleet.incoming.get(target.uri);
    if (destination === undefined)
      return Promise.reject(new HavenError("HAVEN_ERR_IO", `nothing listens at ${target.uri}`));
    const steps = this.fleet.rng.int(2, 8);
    const total = 256 * 1024 * 1024;
    const progress = (step: number, status: string): TransferProgress => ({
      status,
      totalBytes: total,
      transferredBytes: Math.round((total * step) / steps),
      remainingBytes: total - Math.round((total * step) / steps),
      dirtyPagesRate: 100,
      pageSize: 4096,
      expectedDowntimeMs: 50,
      passes: step,
      mbps: 800,
    });
    return this.clock.pass(
      new Promise<TransferProgress>((resolve, reject) => {
        const step = (n: number): void => {
          const failed =
            this.record.endedAt !== undefined
              ? "the source QEMU is gone"
              : destination.instance.record.endedAt !== undefined
                ? "the destination QEMU is gone"
                : abort.aborted
                  ? "cancelled"
                  : undefined;
          if (failed !== undefined) {
            destination.complete(new HavenError("HAVEN_ERR_IO", `the migration failed: ${failed}`));
            reject(new HavenError("HAVEN_ERR_IO", `QEMU's migration failed: ${failed}`));
            return;
          }
          if (n < steps) {
            this.clock.run(() => onProgress(progress(n, "active")));
            this.global.schedule(this.fleet.rng.int(50, 300), () => step(n + 1));
            return;
          }
          // The last pass: the guest stops here, the destination has everything (still paused).
          this.record.paused = true;
          this.state = "paused";
          this.fleet.incoming.delete(target.uri);
          destination.complete();
          resolve(progress(steps, "completed"));
        };
        step(0);
      }),
    );
  }

  /** Faults the scenario injects. */
  crash(): void {
    this.end("killed by SIGSEGV (simulated crash)");
  }

  panic(): void {
    this.record.panicked = true;
    this.clock.run(() => (this.state = "guest-panicked"));
  }

  freezeHeartbeat(): void {
    this.record.heartbeatFrozen = true;
  }

  private end(why: string): void {
    if (this.record.endedAt !== undefined) return;
    this.record.endedAt = this.global.now();
    this.beat?.cancel();
    this.resolveExit(why);
  }
}
