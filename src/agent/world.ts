// Everything an agent touches outside its own memory, as interfaces: the cluster store, time, the host's
// servers (replica server, NBD front), the copies' storage, the heartbeat connections, the health probes
// and the watchdog. The agent's logic (reconcile, decide, switchover, copy records, health, events)
// sees only these, so the control-plane simulation (test/sim/) runs the same code over a simulated
// store, simulated copies and virtual time, and replays a failure from its seed. real-world.ts builds
// the real ones: etcd, TCP servers, files, a watchdog process.

import type { ClusterStore } from "../cluster/store.js";
import type { DiskHealth } from "../cluster/schema.js";
import type { BlockDevice } from "../block/device.js";
import type { ReplicaOpener } from "../replica/port.js";
import type { Clock } from "../util/clock.js";
import type { PingerFactory } from "./peer-links.js";

/** The host's replica server: serves its copies to other hosts' engines. */
export interface ReplicaService {
  /** Starts listening; resolves with the port. */
  listen(host: string, port: number): Promise<number>;
  /** Closes the volume's copy if a remote engine has it open (before an engine here opens it). */
  evict(volume: string): Promise<void>;
  stop(): Promise<void>;
}

/** The host's NBD front: one export per volume served here. */
export interface NbdExporter {
  /** Starts listening; resolves with the port. */
  listen(host: string, port: number): Promise<number>;
  addExport(entry: { name: string; description: string; device: BlockDevice }): void;
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
  readonly probeDisk: (disk: { readonly name: string; readonly path: string }) => Promise<DiskHealth>;
  /** The NBD front as a client sees it: problems, and served volumes missing from its export list. */
  readonly probeNbdFront: (served: string[]) => Promise<{ problems: string[]; missing: string[] }>;
  readonly startWatchdog: (timeoutMs: number) => Watchdog;
  /** The event loop's worst lag (ms) since the last reset; 0 where there is no event loop to measure. */
  readonly eventLoopLag: { maxMs(): number; reset(): void; stop(): void };
}
