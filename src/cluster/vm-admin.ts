// Operators' changes to VMs in the cluster's desired state: create, start, stop, restart, set, delete.
// Each is one etcd transaction conditioned on what it read, so two operators racing cannot both win, and
// each refusal says what is wrong and how to fix it. A VM runs where its disk's primary is: `start
// --host` moves the primary there first (a switchover), and the agents do the rest.

import { HavenError } from "../core/errors.js";
import { readClusterRecords, type ClusterRecords } from "./cluster-read.js";
import type { TxnOperation } from "./etcd-client.js";
import {
  copiesOn,
  copyHosts,
  eventSequence,
  inSyncCopiesOn,
  keys,
  type EventRecord,
  type HandoverRecord,
} from "./schema.js";
import type { ClusterStore } from "./store.js";
import { vmLacks, vmsPlacedOn } from "./vm-resources.js";
import { DEFAULT_VM_POLICY, isVmName, type VmPolicy, type VmRecord } from "./vm-schema.js";

export interface VmAdminOptions {
  /** Who asks, as the events record it (for the CLI: "cli@HOSTNAME"). */
  readonly actor: string;
  readonly now?: () => Date;
}

/** A new VM: its spec, without what the cluster sets (desired state, start request, creation time). */
export type VmCreateRequest = Pick<
  VmRecord,
  | "name"
  | "vcpus"
  | "memoryMiB"
  | "volume"
  | "image"
  | "boot"
  | "cpus"
  | "sharedCpus"
  | "nics"
  | "heartbeat"
  | "tcpCheck"
> & {
  readonly policy?: VmPolicy;
  /** Record it stopped (start it later with `vm start`). */
  readonly stopped?: boolean;
};

/** An event of an operator's action, written in the action's transaction. */
export function event(kind: string, message: string, options: VmAdminOptions, volume?: string): TxnOperation {
  const now = (options.now ?? (() => new Date()))();
  const record: EventRecord = {
    time: now.toISOString(),
    host: options.actor,
    ...(volume !== undefined && { volume }),
    kind,
    message,
  };
  return { type: "put", key: keys.event(eventSequence(now.getTime())), value: JSON.stringify(record) };
}

function notFound(name: string): HavenError {
  return new HavenError("HAVEN_ERR_NOT_FOUND", `no VM named "${name}" (see 'haven vm list')`);
}

/** The VMs whose disk's primary is `host` and that are wanted started (what it runs or will run). */
export function vmsOn(records: ClusterRecords, host: string): VmRecord[] {
  return vmsPlacedOn(
    records.vms.values(),
    host,
    (volume) => records.primaries.get(volume)?.host,
    (vm) => records.vmStatus.get(vm)?.record.state,
  );
}

/** Why the VM cannot run on `host` now (capacity, pinning), or undefined. */
export function hostLacks(
  records: ClusterRecords,
  host: string,
  vm: Omit<VmRecord, "createdAt" | "startRequest" | "desired" | "policy" | "boot" | "nics" | "heartbeat" | "volume">,
): string | undefined {
  const info = records.liveHosts.get(host) ?? records.knownHosts.get(host);
  return vmLacks(host, info?.vmCapacity, vmsOn(records, host), vm);
}

/**
 * The hosts a new VM's disk may have its primary on (the VM runs there): `wanted` alone when given, else
 * every live host, keeping those with room for the VM; refused with each host's reason when none has.
 */
export function hostsWithRoom(
  records: ClusterRecords,
  request: VmCreateRequest,
  wanted: string | undefined,
): { hosts: ReadonlySet<string>; why: string } {
  if (wanted !== undefined && !records.liveHosts.has(wanted))
    throw new HavenError(
      records.knownHosts.has(wanted) ? "HAVEN_ERR_UNAVAILABLE" : "HAVEN_ERR_NOT_FOUND",
      records.knownHosts.has(wanted)
        ? `host ${wanted} is not live: its agent holds no lease (see 'haven status')`
        : `no host named "${wanted}" (see 'haven status')`,
    );
  if (wanted !== undefined && records.maintenance.has(wanted))
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `host ${wanted} is in maintenance: nothing is placed there until 'haven host undrain ${wanted}'`,
    );
  const hosts =
    wanted !== undefined ? [wanted] : [...records.liveHosts.keys()].filter((h) => !records.maintenance.has(h)).sort();
  const lacking = hosts.map((host) => ({ host, lacks: hostLacks(records, host, request) }));
  const room = lacking.filter(({ lacks }) => lacks === undefined).map(({ host }) => host);
  if (room.length === 0)
    throw new HavenError(
      "HAVEN_ERR_NO_SPACE",
      `VM ${request.name} cannot run on ${hosts.join(" or ")}: ` +
        lacking.map(({ host, lacks }) => `${host} lacks ${lacks}`).join("; ") +
        (wanted !== undefined ? "" : "; ask for fewer vCPUs or less memory"),
    );
  return { hosts: new Set(room), why: `the hosts with room for VM ${request.name}` };
}

/** Checks a request against the cluster: the volume exists and is free, the primary's host has room. */
export function checkCreate(records: ClusterRecords, request: VmCreateRequest): void {
  if (!isVmName(request.name))
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `"${request.name}" is not a VM name: use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit`,
    );
  if (records.vms.has(request.name))
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `VM "${request.name}" already exists; choose another name, or delete it first with 'haven vm delete ${request.name} --yes'`,
    );
  const volume = records.volumes.get(request.volume);
  if (volume === undefined)
    throw new HavenError(
      "HAVEN_ERR_NOT_FOUND",
      `no volume named "${request.volume}" (see 'haven volume list'), or use --disk-size SIZE to create one`,
    );
  const user = [...records.vms.values()].find((vm) => vm.volume === request.volume);
  if (user !== undefined)
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `volume ${request.volume} is already the disk of VM ${user.name}: a volume serves one VM; create another volume`,
    );
  const primary = records.primaries.get(request.volume)?.host;
  if (primary === undefined)
    throw new HavenError("HAVEN_ERR_UNAVAILABLE", `volume ${request.volume} has no primary on record`);
  const lacks = hostLacks(records, primary, { ...request, name: request.name });
  if (lacks !== undefined) {
    const others = copyHosts(volume).filter(
      (host) => host !== primary && hostLacks(records, host, request) === undefined,
    );
    throw new HavenError(
      "HAVEN_ERR_NO_SPACE",
      `VM ${request.name} cannot run on ${primary} (the primary of its disk ${request.volume}): ${primary} lacks ${lacks}` +
        (others.length > 0
          ? `; ${others.join(", ")} has room: move the disk there first ('haven volume switchover ${request.volume} --to ${others[0]}')`
          : "; ask for fewer vCPUs or less memory"),
    );
  }
}

/** Records a new VM (refused when the name or volume is taken meanwhile). */
export async function createVm(
  client: ClusterStore,
  request: VmCreateRequest,
  options: VmAdminOptions,
): Promise<VmRecord> {
  const records = await readClusterRecords(client);
  checkCreate(records, request);
  const now = (options.now ?? (() => new Date()))();
  const vm: VmRecord = {
    name: request.name,
    vcpus: request.vcpus,
    memoryMiB: request.memoryMiB,
    volume: request.volume,
    ...(request.image !== undefined && { image: request.image }),
    boot: request.boot,
    ...(request.cpus !== undefined && { cpus: request.cpus }),
    ...(request.sharedCpus && { sharedCpus: true }),
    nics: request.nics,
    heartbeat: request.heartbeat,
    ...(request.tcpCheck !== undefined && { tcpCheck: request.tcpCheck }),
    desired: request.stopped ? "stopped" : "started",
    startRequest: 1,
    policy: request.policy ?? DEFAULT_VM_POLICY,
    createdAt: now.toISOString(),
  };
  const result = await client.txn(
    [{ key: keys.vm(vm.name), target: "createRevision", result: "equal", value: 0 }],
    [
      { type: "put", key: keys.vm(vm.name), value: JSON.stringify(vm) },
      event(
        "vm-created",
        `VM ${vm.name} created: ${vm.vcpus} vCPUs, ${vm.memoryMiB} MiB, disk ${vm.volume}`,
        options,
        vm.volume,
      ),
    ],
    [],
  );
  if (!result.succeeded)
    throw new HavenError("HAVEN_ERR_CONFLICT", `VM ${vm.name} or its volume was taken meanwhile; try again`);
  return vm;
}

/** Reads one VM with its record's mod revision. */
async function readVm(
  client: ClusterStore,
  name: string,
): Promise<{ vm: VmRecord; modRevision: number; records: ClusterRecords }> {
  const records = await readClusterRecords(client);
  const vm = records.vms.get(name);
  if (vm === undefined) throw notFound(name);
  const kv = await client.get(keys.vm(name));
  if (kv === undefined) throw notFound(name);
  return { vm, modRevision: kv.modRevision, records };
}

async function rewrite(
  client: ClusterStore,
  name: string,
  modRevision: number,
  vm: VmRecord,
  extra: TxnOperation[],
): Promise<void> {
  const result = await client.txn(
    [{ key: keys.vm(name), target: "modRevision", result: "equal", value: modRevision }],
    [{ type: "put", key: keys.vm(name), value: JSON.stringify(vm) }, ...extra],
    [],
  );
  if (!result.succeeded) throw new HavenError("HAVEN_ERR_CONFLICT", `VM ${name} changed meanwhile; try again`);
}

/**
 * Wants the VM started (a new start request: an `error` VM starts again, its failure counts begin
 * again); with `host`, its disk's primary moves there first. Says where it will run.
 */
export async function startVm(
  client: ClusterStore,
  name: string,
  request: { readonly host?: string; readonly restart?: boolean },
  options: VmAdminOptions,
): Promise<{ vm: VmRecord; host: string }> {
  const { vm, modRevision, records } = await readVm(client, name);
  if (request.restart && vm.desired !== "started")
    throw new HavenError("HAVEN_ERR_CONFLICT", `VM ${name} is stopped: start it with 'haven vm start ${name}'`);
  const primary = records.primaries.get(vm.volume)?.host;
  let host = primary ?? "?";
  const extra: TxnOperation[] = [];
  if (request.host !== undefined && request.host !== primary) {
    const target = request.host;
    if (!records.knownHosts.has(target) && !records.liveHosts.has(target))
      throw new HavenError("HAVEN_ERR_NOT_FOUND", `no host named "${target}" (see 'haven host list')`);
    if (!records.liveHosts.has(target))
      throw new HavenError("HAVEN_ERR_UNAVAILABLE", `host ${target} is down: start VM ${name} on a live host`);
    const spec = records.volumes.get(vm.volume);
    const copies = spec === undefined ? [] : copiesOn(spec, target);
    if (spec === undefined || inSyncCopiesOn(spec, records.replicas.get(vm.volume), target).length === 0)
      throw new HavenError(
        "HAVEN_ERR_CONFLICT",
        `host ${target} holds ${copies.length === 0 ? "no copy" : "no copy recorded in sync"} of ${vm.volume}, ` +
          `VM ${name}'s disk: a VM runs only on a host with an in-sync copy`,
      );
    const lacks = hostLacks(records, target, vm);
    if (lacks !== undefined) throw new HavenError("HAVEN_ERR_NO_SPACE", `host ${target} lacks ${lacks}`);
    const handover: HandoverRecord = {
      to: target,
      requestedBy: options.actor,
      requestedAt: (options.now ?? (() => new Date()))().toISOString(),
    };
    extra.push({ type: "put", key: keys.handover(vm.volume), value: JSON.stringify(handover) });
    host = target;
  } else if (primary !== undefined) {
    const lacks = hostLacks(records, primary, vm);
    if (lacks !== undefined && vm.desired !== "started")
      throw new HavenError("HAVEN_ERR_NO_SPACE", `VM ${name} cannot start on ${primary}: it lacks ${lacks}`);
  }
  const next: VmRecord = { ...vm, desired: "started", startRequest: vm.startRequest + 1 };
  delete (next as { forceStop?: boolean }).forceStop;
  const verb = request.restart ? "restart" : "start";
  await rewrite(client, name, modRevision, next, [
    ...extra,
    event(
      `vm-${verb}-requested`,
      `${verb} of VM ${name} asked${request.host ? ` on ${request.host}` : ""}`,
      options,
      vm.volume,
    ),
  ]);
  return { vm: next, host };
}

/** Wants the VM stopped (ACPI power-down, or at once with force). */
export async function stopVm(
  client: ClusterStore,
  name: string,
  force: boolean,
  options: VmAdminOptions,
): Promise<VmRecord> {
  const { vm, modRevision } = await readVm(client, name);
  const next: VmRecord = { ...vm, desired: "stopped", ...(force && { forceStop: true }) };
  await rewrite(client, name, modRevision, next, [
    event("vm-stop-requested", `stop of VM ${name} asked${force ? " (--force: hard stop)" : ""}`, options, vm.volume),
  ]);
  return next;
}

function failbackPolicy(policy: VmPolicy, failback: string | null | undefined): VmPolicy {
  if (failback === undefined) return policy;
  const rest: VmPolicy = { maxRestart: policy.maxRestart, maxRelocate: policy.maxRelocate };
  return failback === null ? rest : { ...rest, failback };
}

/** Changes CPUs and memory; says whether it applies now (the VM is stopped) or at its next start. */
export async function setVm(
  client: ClusterStore,
  name: string,
  change: {
    readonly vcpus?: number;
    readonly memoryMiB?: number;
    readonly cpus?: readonly number[] | null;
    /** The failback host; null: none. */
    readonly failback?: string | null;
  },
  options: VmAdminOptions,
): Promise<{ vm: VmRecord; when: "now" | "next start" }> {
  const { vm, modRevision, records } = await readVm(client, name);
  const cpus = change.cpus === null ? undefined : (change.cpus ?? vm.cpus);
  const base: VmRecord = { ...vm };
  delete (base as { cpus?: readonly number[] }).cpus;
  const next: VmRecord = {
    ...base,
    vcpus: change.vcpus ?? vm.vcpus,
    memoryMiB: change.memoryMiB ?? vm.memoryMiB,
    ...(cpus !== undefined && { cpus }),
    policy: failbackPolicy(vm.policy, change.failback),
  };
  if (change.failback !== undefined && change.failback !== null && !records.knownHosts.has(change.failback))
    throw new HavenError("HAVEN_ERR_NOT_FOUND", `no host named "${change.failback}" (see 'haven host list')`);
  if (next.cpus !== undefined && next.cpus.length !== next.vcpus)
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `--cpus names ${next.cpus.length} CPUs for ${next.vcpus} vCPUs: name one host CPU per vCPU`,
    );
  const primary = records.primaries.get(vm.volume)?.host;
  if (primary !== undefined) {
    const lacks = hostLacks(records, primary, next);
    if (lacks !== undefined) throw new HavenError("HAVEN_ERR_NO_SPACE", `host ${primary} lacks ${lacks}`);
  }
  await rewrite(client, name, modRevision, next, [
    event(
      "vm-changed",
      `VM ${name}: ${next.vcpus} vCPUs, ${next.memoryMiB} MiB${next.cpus ? `, pinned to ${next.cpus.join(",")}` : ""}` +
        `, failback ${next.policy.failback ?? "none"}`,
      options,
      vm.volume,
    ),
  ]);
  const status = records.vmStatus.get(name)?.record;
  const running =
    status !== undefined && (status.state === "running" || status.state === "starting" || status.state === "paused");
  return { vm: next, when: running ? "next start" : "now" };
}

/** Deletes the VM's records; refused while it runs unless `force` (then the caller stops it first). */
export async function deleteVm(client: ClusterStore, name: string, options: VmAdminOptions): Promise<VmRecord> {
  const { vm, modRevision, records } = await readVm(client, name);
  const status = records.vmStatus.get(name)?.record;
  // A VM in error or stopped runs nowhere; one wanted started without a status yet is about to.
  const active =
    status === undefined
      ? vm.desired === "started"
      : ["running", "starting", "paused", "stopping", "pending"].includes(status.state);
  if (active)
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `VM ${name} is ${status?.state ?? "wanted started"}: stop it first ('haven vm stop ${name}'), or delete with --force`,
    );
  const result = await client.txn(
    [{ key: keys.vm(name), target: "modRevision", result: "equal", value: modRevision }],
    [
      { type: "delete", key: keys.vm(name) },
      { type: "delete", key: keys.vmStatus(name) },
      event("vm-deleted", `VM ${name} deleted (its disk ${vm.volume} stays)`, options, vm.volume),
    ],
    [],
  );
  if (!result.succeeded) throw new HavenError("HAVEN_ERR_CONFLICT", `VM ${name} changed meanwhile; try again`);
  return vm;
}
