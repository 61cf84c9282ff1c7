// What an agent does about one VM, decided from the cluster state it just read and what it observes of
// the VM's QEMU here: pure, so every case of the HA policy is a unit test with no QEMU, no etcd and no
// clock, and the control-plane simulation drives the same function.
//
// A VM runs where its disk's primary is, and only there:
// - This host is the disk's primary and serves it, the VM is wanted started and not in `error`, and it
//   does not run here: start it, if the host has the CPUs and memory for it (else it is `pending`,
//   saying which resource is short).
// - It runs here but the disk's primary is elsewhere (a failover or a switchover moved it), the VM is
//   wanted stopped or was deleted: stop it.
// - It runs here and fails (QEMU gone, QMP silent, the guest panicked, its heartbeat stopped or never
//   came): restart it in place while restarts < maxRestart; then relocate it (its disk's primary moves
//   to another live host with an in-sync copy, and the VM follows) while relocations < maxRelocate;
//   then mark it `error` with the reason. An operator's `vm start` or `vm restart` (a new startRequest)
//   begins the counts again.
// - It is paused by a storage error (werror/rerror=stop) and its disk is served here: resume it.
// - The guest powered itself off: it stays off (the record is set to stopped).

import type { VmRecord, VmStatusRecord } from "../cluster/vm-schema.js";

/** The VM's bounds on silence. */
export interface VmTimings {
  /** A guest that sends heartbeats and has not for this long has failed. */
  readonly heartbeatTimeoutMs: number;
  /** A guest that sends heartbeats and has sent none this long after its start never booted. */
  readonly bootTimeoutMs: number;
  /** QMP that has not answered for this long has failed (QEMU hung). */
  readonly qmpTimeoutMs: number;
}

export const DEFAULT_VM_TIMINGS: VmTimings = Object.freeze({
  heartbeatTimeoutMs: 10_000,
  bootTimeoutMs: 120_000,
  qmpTimeoutMs: 10_000,
});

/** QEMU's run state as QMP reports it, reduced to what the policy needs. */
export type VmRunState = "running" | "paused" | "io-error" | "guest-panicked" | "shutdown" | "starting";

/** What the agent observes of the VM's QEMU on this host. */
export interface VmObservation {
  /** Why the QEMU process is gone; undefined while it runs. */
  readonly exited?: string;
  readonly runState: VmRunState;
  /** Monotonic ms of the start, and of the last guest heartbeat (undefined: none yet). */
  readonly startedAtMs: number;
  readonly lastHeartbeatAtMs?: number;
  /** Monotonic ms of the last successful TCP check of the guest's service (undefined: none yet). */
  readonly lastTcpOkAtMs?: number;
  /** Since when QMP has failed to answer, without a success in between; undefined while it answers. */
  readonly qmpFailingSinceMs?: number;
  /** The VM record's startRequest this run was started for. */
  readonly startRequest: number;
}

export interface VmHostView {
  readonly me: string;
  readonly holdsLease: boolean;
  readonly now: number;
  /** Hosts that hold a lease. */
  readonly alive: ReadonlySet<string>;
  /** The host the volume's primary record names. */
  readonly primaryOf: (volume: string) => string | undefined;
  /** Whether this host's engine serves the volume now. */
  readonly servedHere: (volume: string) => boolean;
  /** Whether a switchover of the volume is asked for and not yet carried out. */
  readonly handoverPending: (volume: string) => boolean;
  /** Hosts whose copy of the volume is recorded in sync. */
  readonly inSyncHosts: (volume: string) => readonly string[];
  /** Why this host cannot run the VM now (CPUs, memory), or undefined when it can. */
  readonly lacks: (vm: VmRecord) => string | undefined;
  /** Why another host cannot take the VM (no capacity, maintenance), or undefined when it can. */
  readonly hostLacks: (host: string, vm: VmRecord) => string | undefined;
  readonly timings: VmTimings;
}

/** The failure counts that apply to the VM's current start request. */
export interface VmCounts {
  readonly restarts: number;
  readonly relocations: number;
}

export type VmAction =
  | { readonly kind: "none" }
  | { readonly kind: "start"; readonly counts: VmCounts; readonly reason: string }
  | { readonly kind: "pending"; readonly reason: string }
  | { readonly kind: "stop"; readonly reason: string; readonly force: boolean }
  | { readonly kind: "restart"; readonly counts: VmCounts; readonly reason: string }
  | { readonly kind: "relocate"; readonly to: string; readonly counts: VmCounts; readonly reason: string }
  | { readonly kind: "fail"; readonly reason: string }
  | { readonly kind: "resume"; readonly reason: string }
  | { readonly kind: "guest-off"; readonly reason: string };

const none: VmAction = { kind: "none" };

/** The counts recorded for the VM's current start request (zero for a new request). */
export function countsOf(vm: VmRecord, status: VmStatusRecord | undefined): VmCounts {
  if (status === undefined || status.startRequest !== vm.startRequest) return { restarts: 0, relocations: 0 };
  return { restarts: status.restarts, relocations: status.relocations };
}

/** Why the VM's QEMU or guest has failed, or undefined while it is well. */
export function vmFailure(vm: VmRecord, seen: VmObservation, now: number, timings: VmTimings): string | undefined {
  if (seen.exited !== undefined) return `QEMU exited (${seen.exited})`;
  if (seen.runState === "guest-panicked") return "the guest panicked (pvpanic)";
  if (seen.qmpFailingSinceMs !== undefined && now - seen.qmpFailingSinceMs >= timings.qmpTimeoutMs)
    return `QMP has not answered for ${seconds(now - seen.qmpFailingSinceMs)} (QEMU hung)`;
  // A guest paused by the host (a storage error, a held lease) cannot answer: not its fault.
  if (seen.runState !== "running") return undefined;
  if (vm.heartbeat) {
    const silent = silence("guest heartbeat", seen.lastHeartbeatAtMs, seen, now, timings);
    if (silent !== undefined) return silent;
  }
  if (vm.tcpCheck !== undefined)
    return silence(`TCP check of ${vm.tcpCheck.address}:${vm.tcpCheck.port}`, seen.lastTcpOkAtMs, seen, now, timings);
  return undefined;
}

/** A sign of life (`lastAtMs`) that never came within the boot timeout, or stopped for the heartbeat timeout. */
function silence(
  what: string,
  lastAtMs: number | undefined,
  seen: VmObservation,
  now: number,
  timings: VmTimings,
): string | undefined {
  if (lastAtMs === undefined)
    return now - seen.startedAtMs >= timings.bootTimeoutMs
      ? `no ${what} within ${seconds(timings.bootTimeoutMs)} of its start (the guest did not boot)`
      : undefined;
  return now - lastAtMs >= timings.heartbeatTimeoutMs ? `${what} silent for ${seconds(now - lastAtMs)}` : undefined;
}

export function decideVm(
  vm: VmRecord | undefined,
  status: VmStatusRecord | undefined,
  seen: VmObservation | undefined,
  host: VmHostView,
): VmAction {
  if (vm === undefined) return seen === undefined ? none : { kind: "stop", reason: "the VM was deleted", force: false };
  if (seen !== undefined) return decideRunning(vm, status, seen, host);
  if (!host.holdsLease || vm.desired !== "started") return none;
  if (host.primaryOf(vm.volume) !== host.me || !host.servedHere(vm.volume)) return none;
  if (status?.startRequest === vm.startRequest) {
    if (status.state === "error") return none;
    // A relocation hands the disk to another host: the VM waits for it there while the switchover is
    // pending; once it is refused or gone (the host died, its copy fell out of sync), it starts here.
    const to = status.relocatingTo;
    if (to !== undefined && to !== host.me && host.alive.has(to) && host.handoverPending(vm.volume)) return none;
  }
  const lacks = host.lacks(vm);
  if (lacks !== undefined) return { kind: "pending", reason: `host ${host.me} lacks ${lacks}` };
  const reason =
    status?.relocatingTo === host.me
      ? `relocated from ${status.host}: ${status.reason}`
      : status !== undefined && status.host !== host.me && (status.state === "running" || status.state === "starting")
        ? `its disk's primary is now ${host.me} (it ran on ${status.host})`
        : "it is wanted started and its disk is served here";
  return { kind: "start", counts: countsOf(vm, status), reason };
}

function decideRunning(
  vm: VmRecord,
  status: VmStatusRecord | undefined,
  seen: VmObservation,
  host: VmHostView,
): VmAction {
  if (!host.holdsLease) return { kind: "stop", reason: "this host lost its cluster lease", force: true };
  const primary = host.primaryOf(vm.volume);
  if (primary !== host.me)
    return { kind: "stop", reason: `its disk's primary is ${primary ?? "nowhere"} now, not ${host.me}`, force: true };
  if (vm.desired === "stopped")
    return {
      kind: "stop",
      reason: `stopped by the operator${vm.forceStop ? " (--force)" : ""}`,
      force: !!vm.forceStop,
    };
  if (status?.state === "error" && status.startRequest === vm.startRequest && seen.exited === undefined)
    return { kind: "stop", reason: `marked error: ${status.reason}`, force: true };
  if (seen.startRequest !== vm.startRequest)
    return { kind: "restart", counts: { restarts: 0, relocations: 0 }, reason: "restarted by the operator" };
  if (seen.runState === "shutdown") return { kind: "guest-off", reason: "the guest powered itself off" };
  const failure = vmFailure(vm, seen, host.now, host.timings);
  if (failure !== undefined) return onFailure(vm, status, failure, host);
  if (seen.runState === "io-error" && host.servedHere(vm.volume))
    return { kind: "resume", reason: "paused by a storage error; its disk is served again" };
  return none;
}

/** The HA policy: restart in place, then relocate, then error. */
function onFailure(vm: VmRecord, status: VmStatusRecord | undefined, failure: string, host: VmHostView): VmAction {
  const counts = countsOf(vm, status);
  const { maxRestart, maxRelocate } = vm.policy;
  if (counts.restarts < maxRestart)
    return {
      kind: "restart",
      counts: { ...counts, restarts: counts.restarts + 1 },
      reason: `${failure}; restart ${counts.restarts + 1} of ${maxRestart} in place`,
    };
  const refusals: string[] = [];
  if (counts.relocations < maxRelocate) {
    for (const candidate of [...host.inSyncHosts(vm.volume)].sort()) {
      if (candidate === host.me) continue;
      if (!host.alive.has(candidate)) {
        refusals.push(`${candidate} is down`);
        continue;
      }
      const lacks = host.hostLacks(candidate, vm);
      if (lacks !== undefined) {
        refusals.push(`${candidate} lacks ${lacks}`);
        continue;
      }
      return {
        kind: "relocate",
        to: candidate,
        counts: { restarts: 0, relocations: counts.relocations + 1 },
        reason: `${failure}; ${maxRestart} restart(s) in place used up: relocation ${counts.relocations + 1} of ${maxRelocate}, to ${candidate}`,
      };
    }
  }
  const why =
    counts.relocations >= maxRelocate
      ? `${counts.restarts} restart(s) and ${counts.relocations} relocation(s) used up (maxRestart ${maxRestart}, maxRelocate ${maxRelocate})`
      : `restarts used up and no host to relocate to${refusals.length > 0 ? ` (${refusals.join("; ")})` : " (no other in-sync copy)"}`;
  return { kind: "fail", reason: `${failure}; ${why}` };
}

function seconds(ms: number): string {
  return `${Math.round(ms / 100) / 10} s`;
}

/** What the failback rule needs to know of the cluster, beyond the VM host view. */
export interface FailbackView {
  /** Hosts in maintenance. */
  readonly inMaintenance: (host: string) => boolean;
  /** A migration of the VM is under way. */
  readonly migrating: boolean;
}

/**
 * The VM's failback policy: the host it should be live-migrated home to now, or undefined. Only a VM
 * that runs well here (its guest running, no failure), whose home is another live host out of
 * maintenance with a copy in sync and room, and with no switchover or migration under way.
 */
export function failbackTarget(
  vm: VmRecord,
  seen: VmObservation,
  host: VmHostView,
  cluster: FailbackView,
): string | undefined {
  const home = vm.policy.failback;
  if (home === undefined || home === host.me || vm.desired !== "started") return undefined;
  if (seen.runState !== "running" || vmFailure(vm, seen, host.now, host.timings) !== undefined) return undefined;
  if (cluster.migrating || host.handoverPending(vm.volume) || host.primaryOf(vm.volume) !== host.me) return undefined;
  if (!host.alive.has(home) || cluster.inMaintenance(home)) return undefined;
  if (!host.inSyncHosts(vm.volume).includes(home)) return undefined;
  return host.hostLacks(home, vm) === undefined ? home : undefined;
}
