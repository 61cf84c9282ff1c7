// Everything an agent touches outside its own memory, as interfaces: the cluster store, time, the host's
// servers (replica server, NBD front), the copies' storage, the heartbeat connections, the health probes
// and the watchdog. The agent's logic (reconcile, decide, switchover, copy records, health, events)
// sees only these, so the control-plane simulation (test/sim/) runs the same code over a simulated
// store, simulated copies and virtual time, and replays a failure from its seed. real-world.ts builds
// the real ones: etcd, TCP servers, files, a watchdog process.

import type { DiskIdentity } from "../disk/disk-identity.js";
import type { AddInspection } from "../disk/disk-inspect.js";
import type { DiskLabel } from "../disk/disk-label.js";
import type { DiskUsage } from "../disk/disk-usage.js";
import type { ClusterStore } from "../cluster/store.js";
import type { DiskHealth } from "../cluster/schema.js";
import type { ServedRequests } from "../util/served-requests.js";
import type { BlockDevice } from "../block/device.js";
import type { ReplicaOpener } from "../replica/port.js";
import type { Clock } from "../util/clock.js";
import type { VmRecord } from "../cluster/vm-schema.js";
import type { PingerFactory } from "./peer-links.js";
import type { VmRunState } from "./vm-decide.js";
import type { TransferProgress } from "../vm/migration.js";

/** The host's replica server: serves its copies to other hosts' engines. */
export interface ReplicaService {
  /** Starts listening; resolves with the port. */
  listen(host: string, port: number): Promise<number>;
  /** Closes the volume's copy if a remote engine has it open (before an engine here opens it). */
  evict(volume: string): Promise<void>;
  /** Closes the copy of `volume` on `disk` only (it leaves the volume). */
  evictCopy(volume: string, disk: string): Promise<void>;
  /** Whether a remote engine has the copy of `volume` on `disk` open. */
  isOpen(volume: string, disk: string): boolean;
  stop(): Promise<void>;
}

/** The host's NBD front: one export per volume served here. */
export interface NbdExporter {
  /** Starts listening; resolves with the port. */
  listen(host: string, port: number): Promise<number>;
  /** `served`, when given, counts what the export serves (the metrics read it). */
  addExport(entry: { name: string; description: string; device: BlockDevice; served?: ServedRequests }): void;
  removeExport(name: string): void;
  has(name: string): boolean;
  stop(): Promise<void>;
}

/** Where this host's copies live: one directory per volume on each disk. */
export interface CopyStorage {
  /** Makes sure the disk's directory exists. */
  prepare(diskPath: string): Promise<void>;
  /** Whether the disk holds a copy of the volume. */
  holds(diskPath: string, volume: string): boolean;
  /** Removes the disk's copy of the volume; resolves with whether there was one. */
  remove(diskPath: string, volume: string): Promise<boolean>;
  /** Free bytes on the disk's filesystem (0 when it cannot be read). */
  freeBytes(diskPath: string): Promise<number>;
}

/** One VM's QEMU on this host, as the agent drives and watches it. */
export interface VmInstance {
  readonly pid: number;
  /** Resolves, with why, when the QEMU process has ended. */
  readonly exited: Promise<string>;
  /** The run state as QMP last reported it (events and probes). */
  runState(): VmRunState;
  /** Monotonic ms of the guest's last heartbeat; undefined while none came. */
  lastHeartbeatAtMs(): number | undefined;
  /** Monotonic ms of the last successful TCP check (the VM's tcpCheck); undefined while none succeeded. */
  lastTcpOkAtMs(): number | undefined;
  /** One QMP round trip (query-status) within timeoutMs; rejects when QMP does not answer. */
  probe(timeoutMs: number): Promise<void>;
  /** Pauses the guest (QMP stop) and resumes it (cont). */
  pause(): Promise<void>;
  resume(): Promise<void>;
  /** ACPI power-down with a bound, then a hard stop; force: the hard stop at once. Says how it ended. */
  stop(force: boolean): Promise<string>;
  /** SIGKILL by pid, now (a fence: no await between the decision and the signal). */
  kill(): void;
  /**
   * Live-migrates this QEMU to an incoming one (`target.uri`, on host `target.host`); resolves once the
   * transfer completed (the guest is paused here, its disks flushed and inactive: `resume` takes it
   * back), rejects with why it failed (the guest then still runs here). `abort` cancels it.
   */
  migrateOut(
    target: { readonly uri: string; readonly host: string; readonly maxBandwidth?: number },
    onProgress: (progress: TransferProgress) => void,
    abort: AbortSignal,
  ): Promise<TransferProgress>;
  /**
   * Tells the guest its disk grew to sizeBytes (the volume's engine serves that size now), within
   * timeoutMs; rejects with why not. Absent where a VM has no disk size to tell (the simulation's).
   */
  growDisk?(sizeBytes: number, timeoutMs: number): Promise<void>;
}

/** A live migration's destination: a QEMU started paused that waits for the source's state. */
export interface IncomingVm {
  readonly instance: VmInstance;
  /** Where the source sends it (tcp:ADDRESS:PORT). */
  readonly uri: string;
  /** Resolves when the whole state has arrived (the guest is still paused); rejects when it failed. */
  readonly completed: Promise<void>;
}

/** Starts VMs on this host (QEMU over the volume's stable endpoint, or the simulation's model of one). */
export interface VmDriver {
  /**
   * Starts the VM paused, pins its vCPUs to hostCpus (when given), calls `track` with QEMU's pid while
   * the guest has not run yet (so the watchdog knows it before it can do anything), resumes it; rejects
   * with why it did not start.
   */
  launch(vm: VmRecord, hostCpus: readonly number[] | undefined, track: (pid: number) => void): Promise<VmInstance>;
  /**
   * While this host does not serve `volume`, its disk endpoint leads to the primary's NBD front at
   * `primary` (a live migration's destination opens the disk before it is the primary); undefined
   * ends that (the endpoint then follows only this host's own engine again).
   */
  routeDiskTo(
    volume: string,
    primary: { readonly host: string; readonly port: number; readonly name: string } | undefined,
  ): void;
  /** Starts the VM as a live migration's destination (paused, listening); `track` as for launch. */
  launchIncoming(
    vm: VmRecord,
    hostCpus: readonly number[] | undefined,
    track: (pid: number) => void,
  ): Promise<IncomingVm>;
  /** Kills every VM process an earlier run of this agent left (trusted pids only); says which. */
  killLeftovers(): Promise<string[]>;
  /** The serial console's log of the VM's current run, for `vm console --log`; undefined when unknown. */
  serialLog(name: string): string | undefined;
  /** The serial console's unix socket on this host. */
  serialSocket(name: string): string | undefined;
}

/**
 * The process outside the event loop that fences the host for an agent that cannot: it kills the agent
 * and the VMs it tracks when the loop stops checking in, and the VMs when the agent dies.
 */
export interface Watchdog {
  /** The event loop is alive. */
  kick(): void;
  /** The agent started VM `name`'s QEMU as `pid`: the watchdog kills it too when it fences. */
  trackVm(pid: number, name: string): void;
  /** That QEMU is gone (the agent stopped it). */
  untrackVm(pid: number): void;
  /** A clean stop: the watchdog exits and kills nothing. */
  stop(): void;
  /**
   * What earlier watchdogs of this host did (each kill, with its time), not yet recorded as events;
   * taking them clears them. Absent where no watchdog leaves reports.
   */
  takeReports?(): readonly { readonly time: string; readonly message: string }[];
  /** A VM's QEMU the watchdog kills too when it fences (and when the agent dies). */
  trackVm(pid: number, name: string): void;
  untrackVm(pid: number): void;
}

export interface AgentWorld {
  readonly store: ClusterStore;
  /** Monotonic time and timers: every timeout, interval and age the agent uses. */
  readonly clock: Clock;
  /** Wall-clock time for records and events (never for a timing decision). */
  readonly wallTime: () => Date;
  /** The key of the next event (time-ordered, unique). */
  readonly eventId: () => string;
  readonly replicaService: ReplicaService;
  readonly nbd: NbdExporter;
  readonly storage: CopyStorage;
  /** Opens copies for a volume's engine (local directories and other hosts' replica servers). */
  readonly opener: ReplicaOpener;
  /** Heartbeat connections to other hosts' replica servers. */
  readonly pinger: PingerFactory;
  /** A write and sync on one disk; never throws. */
  /** What the disk layer reads of a disk; absent in the simulation, whose disks are not files. */
  readonly diskInfo?: DiskInfoSource;
  readonly probeDisk: (disk: { readonly name: string; readonly path: string }) => Promise<DiskHealth>;
  /** The NBD front as a client sees it: problems, and served volumes missing from its export list. */
  readonly probeNbdFront: (served: string[]) => Promise<{ problems: string[]; missing: string[] }>;
  readonly startWatchdog: (timeoutMs: number) => Watchdog;
  readonly vms: VmDriver;
  /** The event loop's worst lag (ms) since the last reset; 0 where there is no event loop to measure. */
  readonly eventLoopLag: { maxMs(): number; reset(): void; stop(): void };
}

/** A disk's identity, label, usage and mount state, as src/disk/ reads them (real-world.ts). */
export interface DiskInfoSource {
  readLabel(root: string): Promise<DiskLabel | undefined>;
  writeLabel(root: string, label: DiskLabel): Promise<void>;
  usage(root: string, copyDirs: readonly string[]): Promise<DiskUsage>;
  readOnly(path: string): Promise<boolean>;
  /** The filesystem `path` lives on (its device number): disks sharing one share it. */
  filesystemId(path: string): string;
  identify(path: string): Promise<{ identity: DiskIdentity; sizeBytes: number; blockDevice: boolean }>;
  /** The paths the config's patterns match now (expandDiskPaths). */
  expand(patterns: readonly string[]): Promise<string[]>;
  inspect(path: string): Promise<AddInspection>;
  format(device: string, fs: "ext4" | "xfs", label: string): Promise<void>;
  mount(device: string, mountPoint: string): Promise<void>;
  unmount(mountPoint: string): Promise<void>;
  mountedDevice(mountPoint: string): Promise<string | undefined>;
  locate(device: string, on: boolean): Promise<{ supported: boolean; detail: string }>;
}
