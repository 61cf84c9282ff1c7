// Whether a host has room for a VM: memory is never overcommitted, pinned CPUs must be the host's VM
// CPUs and are the VM's alone unless both VMs share them, and a VM has no more vCPUs than the host gives
// to VMs. Pure: the CLI checks a request with it before recording anything, the agent before a start.

import type { VmCapacity } from "./schema.js";
import type { VmRecord } from "./vm-schema.js";

type VmNeeds = Pick<VmRecord, "name" | "vcpus" | "memoryMiB" | "cpus" | "sharedCpus">;

/** Why `host` cannot run `vm` next to `others` (the VMs it runs or will run), or undefined when it can. */
export function vmLacks(
  host: string,
  capacity: VmCapacity | undefined,
  others: readonly VmNeeds[],
  vm: VmNeeds,
): string | undefined {
  if (capacity === undefined || capacity.memoryMiB === 0 || capacity.cpus.length === 0)
    return 'a VM capacity (its config has no "vms" section: it runs no VMs)';
  const rest = others.filter((other) => other.name !== vm.name);
  const usedMiB = rest.reduce((sum, other) => sum + other.memoryMiB, 0);
  if (usedMiB + vm.memoryMiB > capacity.memoryMiB)
    return `memory: ${vm.name} needs ${vm.memoryMiB} MiB, ${host} has ${capacity.memoryMiB - usedMiB} MiB free of ${capacity.memoryMiB} MiB for VMs`;
  if (vm.vcpus > capacity.cpus.length)
    return `CPUs: ${vm.name} needs ${vm.vcpus} vCPUs, ${host} gives ${capacity.cpus.length} CPUs to VMs (${formatCpuList(capacity.cpus)})`;
  for (const cpu of vm.cpus ?? []) {
    if (!capacity.cpus.includes(cpu))
      return `CPU ${cpu}: ${host} gives CPUs ${formatCpuList(capacity.cpus)} to VMs, not ${cpu}`;
    const holder = rest.find((other) => other.cpus?.includes(cpu) && !(other.sharedCpus && vm.sharedCpus));
    if (holder !== undefined)
      return `CPU ${cpu}: it is pinned to VM ${holder.name} (pin elsewhere, or let both share it with --shared-cpus)`;
  }
  return undefined;
}

/**
 * The VMs `host` runs or will run, the ones its capacity is shared among: wanted started, their disk's
 * primary on `host`, and not marked error.
 */
export function vmsPlacedOn(
  vms: Iterable<VmRecord>,
  host: string,
  primaryOf: (volume: string) => string | undefined,
  stateOf: (vm: string) => string | undefined,
): VmRecord[] {
  return [...vms].filter(
    (vm) => vm.desired === "started" && primaryOf(vm.volume) === host && stateOf(vm.name) !== "error",
  );
}

/** "0-3,6" for [0,1,2,3,6]. */
export function formatCpuList(cpus: readonly number[]): string {
  const sorted = [...new Set(cpus)].sort((a, b) => a - b);
  const parts: string[] = [];
  for (let i = 0; i < sorted.length;) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j]! + 1) j++;
    parts.push(i === j ? `${sorted[i]}` : `${sorted[i]}-${sorted[j]}`);
    i = j + 1;
  }
  return parts.join(",");
}

/** Parses "2,3" or "0-3,6"; undefined when the text is not a CPU list. */
export function parseCpuList(text: string): number[] | undefined {
  const cpus: number[] = [];
  for (const part of text.split(",")) {
    const match = /^(\d{1,4})(?:-(\d{1,4}))?$/.exec(part.trim());
    if (match === null) return undefined;
    const from = Number(match[1]);
    const to = match[2] === undefined ? from : Number(match[2]);
    if (to < from) return undefined;
    for (let cpu = from; cpu <= to; cpu++) cpus.push(cpu);
  }
  return cpus;
}
