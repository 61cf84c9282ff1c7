// A VM in the cluster's state: what operators ask for (VmRecord, /haven/vms/NAME) and what the agents
// observe (VmStatusRecord, /haven/vm-status/NAME). A VM runs where its disk's primary is: there is no
// placement of its own, so the rules that keep a volume to one writer keep the VM to one host. Values
// read back are checked here, since anything with etcd access could have written them.

import { isIP } from "node:net";
import { isHostName, isVmName, isVolumeName } from "./names.js";
import { bad, count, flag, member, nameField, object, text } from "./schema.js";

/** started: the agents keep it running (restart, relocate, follow its disk); stopped: nowhere. */
export type VmDesiredState = "started" | "stopped";

/** How the VM boots: from its disk with its own bootloader, or the test image's kernel given by the host. */
export type VmBoot = "disk" | "haven-test-kernel";

export interface VmNicRecord {
  /** The host bridge its tap joins; absent: the host's default bridge. */
  readonly bridge?: string;
  /** Fixed, so the guest's interface keeps its identity on every host. */
  readonly mac: string;
}

/** What happens when a VM fails (as Proxmox HA operators know it). */
export interface VmPolicy {
  /** Restarts in place before a relocation. */
  readonly maxRestart: number;
  /** Relocations to another host with an in-sync copy before the VM is marked `error`. */
  readonly maxRelocate: number;
  /**
   * The VM's home host: when it runs elsewhere (a failover, a relocation, a drain) and this host is
   * back, out of maintenance, with its copy in sync and room, the VM is live-migrated home. Absent:
   * nothing moves back by itself (Proxmox HA's nofailback).
   */
  readonly failback?: string;
}

export const DEFAULT_VM_POLICY: VmPolicy = { maxRestart: 1, maxRelocate: 1 };

export interface VmRecord {
  readonly name: string;
  readonly vcpus: number;
  readonly memoryMiB: number;
  /** The volume that is its disk (one VM per volume). */
  readonly volume: string;
  /** Where the disk's content came from, for `vm show` (an image name or file). */
  readonly image?: string;
  readonly boot: VmBoot;
  /** Host CPUs its vCPUs are pinned to, one per vCPU; absent: not pinned. */
  readonly cpus?: readonly number[];
  /** The pinned CPUs may be shared with other VMs (by default they are the VM's alone). */
  readonly sharedCpus?: boolean;
  readonly nics: readonly VmNicRecord[];
  /** The guest sends a heartbeat over its virtio-serial port: its silence is a failure. */
  readonly heartbeat: boolean;
  /** A service of the guest's that must accept TCP connections (for guests without Haven's heartbeat). */
  readonly tcpCheck?: { readonly address: string; readonly port: number };
  readonly desired: VmDesiredState;
  /** Raised by each `vm start` and `vm restart`: the agents restart the VM and its failure counts begin again. */
  readonly startRequest: number;
  /** `vm stop --force`: no ACPI power-down, a hard stop. */
  readonly forceStop?: boolean;
  readonly policy: VmPolicy;
  readonly createdAt: string;
}

/** What an agent last saw of a VM. */
export type VmState = "starting" | "running" | "paused" | "stopping" | "stopped" | "pending" | "error";

/** One health parameter: its value, whether it is good, and when it was read (ISO). */
export interface VmCheck {
  readonly ok: boolean;
  readonly value: string;
  readonly at: string;
}

export interface VmRun {
  readonly pid: number;
  readonly vcpus: number;
  readonly memoryMiB: number;
  readonly cpus?: readonly number[];
  readonly startedAt: string;
  /** The VM record's startRequest this run belongs to. */
  readonly startRequest: number;
  /** The serial console's unix socket and log on the VM's host (for `vm console` there). */
  readonly serialSocket?: string;
  readonly serialLog?: string;
}

export interface VmStatusRecord {
  /** The host that wrote it: where the VM runs or last ran. */
  readonly host: string;
  readonly state: VmState;
  /** Why it is in that state, in words. */
  readonly reason: string;
  readonly since: string;
  /** The startRequest the failure counts belong to: a new request begins them again. */
  readonly startRequest: number;
  readonly restarts: number;
  readonly relocations: number;
  readonly run?: VmRun;
  /** Set by a relocation: the host the VM's disk is being handed to (the VM starts nowhere else meanwhile). */
  readonly relocatingTo?: string;
  /** process, qmp, runState, heartbeat: the health on several parameters. */
  readonly checks: Readonly<Record<string, VmCheck>>;
  readonly updatedAt: string;
}

const MAC_PATTERN = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const STATES: readonly VmState[] = ["starting", "running", "paused", "stopping", "stopped", "pending", "error"];

/** Whether `name` can name a VM (it names files, sockets and QEMU's process): names.ts. */
export { isVmName };

function cpuList(value: unknown, key: string): number[] {
  if (!Array.isArray(value) || value.some((cpu) => !Number.isSafeInteger(cpu) || (cpu as number) < 0))
    throw bad(key, "cpus is not a list of CPU numbers");
  return value as number[];
}

export function parseVmRecord(value: string, key: string): VmRecord {
  const o = object(value, key);
  const name = text(o, "name", key);
  if (!isVmName(name)) throw bad(key, `"${name}" is not a VM name`);
  const desired = text(o, "desired", key);
  if (desired !== "started" && desired !== "stopped") throw bad(key, `desired "${desired}" is not started or stopped`);
  const boot = text(o, "boot", key);
  if (boot !== "disk" && boot !== "haven-test-kernel")
    throw bad(key, `boot "${boot}" is not disk or haven-test-kernel`);
  const nics = o.nics;
  if (!Array.isArray(nics)) throw bad(key, "nics is not a list");
  const policy = member(o.policy);
  const vcpus = count(o, "vcpus", key);
  if (vcpus < 1) throw bad(key, "vcpus is 0");
  const cpus = o.cpus === undefined ? undefined : cpuList(o.cpus, key);
  if (cpus !== undefined && cpus.length !== vcpus) throw bad(key, "cpus does not name one CPU per vCPU");
  return {
    name,
    vcpus,
    memoryMiB: count(o, "memoryMiB", key),
    volume: nameField(o, "volume", key, isVolumeName, "a volume name"),
    ...(o.image !== undefined && { image: text(o, "image", key) }),
    boot,
    ...(cpus !== undefined && { cpus }),
    ...(o.sharedCpus !== undefined && { sharedCpus: flag(o, "sharedCpus", key) }),
    nics: nics.map((n: unknown, i) => {
      const nic = member(n);
      const where = `${key} nics[${i}]`;
      const mac = text(nic, "mac", where);
      if (!MAC_PATTERN.test(mac)) throw bad(where, `mac "${mac}" is not a lower-case MAC address`);
      return { ...(nic.bridge !== undefined && { bridge: text(nic, "bridge", where) }), mac };
    }),
    heartbeat: flag(o, "heartbeat", key),
    ...(o.tcpCheck !== undefined && { tcpCheck: parseTcpCheck(o.tcpCheck, `${key} tcpCheck`) }),
    desired,
    startRequest: count(o, "startRequest", key),
    ...(o.forceStop !== undefined && { forceStop: flag(o, "forceStop", key) }),
    policy: {
      maxRestart: count(policy, "maxRestart", key),
      maxRelocate: count(policy, "maxRelocate", key),
      ...(policy.failback !== undefined && {
        failback: nameField(policy, "failback", `${key} policy`, isHostName, "a host name"),
      }),
    },
    createdAt: text(o, "createdAt", key),
  };
}

function parseTcpCheck(value: unknown, key: string): { address: string; port: number } {
  const o = member(value);
  const address = text(o, "address", key);
  if (isIP(address) === 0) throw bad(key, `address "${address}" is not an IP address`);
  const port = count(o, "port", key);
  if (port < 1 || port > 65535) throw bad(key, `port ${port} is not 1 to 65535`);
  return { address, port };
}

export function parseVmStatusRecord(value: string, key: string): VmStatusRecord {
  const o = object(value, key);
  const state = text(o, "state", key) as VmState;
  if (!STATES.includes(state)) throw bad(key, `state "${state}" is not one of ${STATES.join(", ")}`);
  const checks: Record<string, VmCheck> = {};
  for (const [name, c] of Object.entries(member(o.checks))) {
    const check = member(c);
    const where = `${key} checks.${name}`;
    checks[name] = { ok: flag(check, "ok", where), value: text(check, "value", where), at: text(check, "at", where) };
  }
  let run: VmRun | undefined;
  if (o.run !== undefined && o.run !== null) {
    const r = member(o.run);
    const where = `${key} run`;
    run = {
      pid: count(r, "pid", where),
      vcpus: count(r, "vcpus", where),
      memoryMiB: count(r, "memoryMiB", where),
      ...(r.cpus !== undefined && { cpus: cpuList(r.cpus, where) }),
      startedAt: text(r, "startedAt", where),
      startRequest: count(r, "startRequest", where),
      ...(r.serialSocket !== undefined && { serialSocket: text(r, "serialSocket", where) }),
      ...(r.serialLog !== undefined && { serialLog: text(r, "serialLog", where) }),
    };
  }
  return {
    host: nameField(o, "host", key, isHostName, "a host name"),
    state,
    reason: text(o, "reason", key),
    since: text(o, "since", key),
    startRequest: count(o, "startRequest", key),
    restarts: count(o, "restarts", key),
    relocations: count(o, "relocations", key),
    ...(run !== undefined && { run }),
    ...(o.relocatingTo !== undefined && { relocatingTo: nameField(o, "relocatingTo", key, isHostName, "a host name") }),
    checks,
    updatedAt: text(o, "updatedAt", key),
  };
}
