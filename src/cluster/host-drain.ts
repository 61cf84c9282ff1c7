// Draining a host for maintenance without downtime, as `haven host drain` and the dashboard do it:
// the host goes in maintenance first (nothing is placed, promoted or migrated there from then on),
// every VM running there is live-migrated to another host with an in-sync copy and room (falling back
// to a stop and a start elsewhere only when the caller allows restarts), and the primary of every other
// volume it serves moves with a switchover. Each step's outcome is returned; nothing is printed here,
// the caller is told lines through `write`. Undrain ends the maintenance. drainPreview says what a
// drain would do now, from the same choices, without writing anything.

import { HavenError, errorMessage } from "../core/errors.js";
import { readClusterRecords, type ClusterRecords } from "./cluster-read.js";
import { planMigration, setMaintenance } from "./migration-admin.js";
import { migrateVm } from "./migration-wait.js";
import { copyHosts, inSyncCopiesOn } from "./schema.js";
import type { ClusterStore } from "./store.js";
import { waitForSwitchover } from "./switchover-wait.js";
import { startVm } from "./vm-admin.js";
import { requestSwitchover } from "./volume-admin.js";

const MIGRATION_TIMEOUT_MS = 600_000;
const SWITCHOVER_TIMEOUT_MS = 30_000;

/** What became of one VM or volume the drained host ran or served. */
export interface DrainOutcome {
  /** "VM web1", "volume data1". */
  readonly what: string;
  readonly result: string;
  readonly ok: boolean;
}

export interface DrainOptions {
  readonly actor: string;
  /** A VM that cannot be live-migrated may be stopped and started on another host. */
  readonly allowRestart: boolean;
  /** Stops the drain between steps (a migration under way goes on). */
  readonly signal: AbortSignal;
  /** Progress lines, each ending in a newline. */
  readonly write: (text: string) => void;
}

/** Refuses a host the cluster has never had. */
function knownHost(records: ClusterRecords, host: string): void {
  if (!records.knownHosts.has(host))
    throw new HavenError("HAVEN_ERR_NOT_FOUND", `no host "${host}" in the cluster; 'haven host list' shows them`);
}

/** The VMs wanted started whose disk's primary is on `host`, in name order. */
function vmsServedBy(records: ClusterRecords, host: string): string[] {
  return [...records.vms.values()]
    .filter((vm) => records.primaries.get(vm.volume)?.host === host && vm.desired === "started")
    .map((vm) => vm.name)
    .sort();
}

/** The volumes `host` is primary of that are no VM's disk, in name order. */
function volumesServedBy(records: ClusterRecords, host: string): string[] {
  const vmDisks = new Set([...records.vms.values()].map((vm) => vm.volume));
  return [...records.primaries]
    .filter(([name, primary]) => primary.host === host && !vmDisks.has(name))
    .map(([name]) => name)
    .sort();
}

/**
 * Puts `host` in maintenance and moves everything off it. Resolves with each VM's and volume's
 * outcome (empty when nothing ran or was served there); the host stays in maintenance either way.
 */
export async function drainHost(client: ClusterStore, host: string, options: DrainOptions): Promise<DrainOutcome[]> {
  const { write, signal } = options;
  let records = await readClusterRecords(client);
  knownHost(records, host);
  if (await setMaintenance(client, host, true, { actor: options.actor }))
    write(`host ${host}: in maintenance (nothing is placed, promoted or migrated there)\n`);
  else write(`host ${host}: in maintenance already\n`);
  const outcomes: DrainOutcome[] = [];
  const vms = vmsServedBy(records, host);
  for (const [index, name] of vms.entries()) {
    if (signal.aborted) break;
    records = await readClusterRecords(client);
    write(`[${index + 1}/${vms.length}] VM ${name}\n`);
    outcomes.push(await moveVm(client, records, name, host, options));
  }
  records = await readClusterRecords(client);
  for (const name of volumesServedBy(records, host)) {
    if (signal.aborted) break;
    outcomes.push(await moveVolume(client, records, name, host, options.actor));
  }
  return outcomes;
}

/** Ends `host`'s maintenance; refused when it is not in maintenance. */
export async function undrainHost(client: ClusterStore, host: string, actor: string): Promise<void> {
  knownHost(await readClusterRecords(client), host);
  if (!(await setMaintenance(client, host, false, { actor })))
    throw new HavenError("HAVEN_ERR_CONFLICT", `host ${host} is not in maintenance`);
}

/** What a drain of `host` would do now: where each VM and volume would go, or why it would stay. */
export function drainPreview(records: ClusterRecords, host: string, allowRestart: boolean): DrainOutcome[] {
  knownHost(records, host);
  const outcomes: DrainOutcome[] = [];
  for (const name of vmsServedBy(records, host)) {
    const what = `VM ${name}`;
    const status = records.vmStatus.get(name)?.record;
    const { hosts, why } = targetsFor(records, name, host);
    if (status?.state === "running" && hosts.length > 0) {
      outcomes.push({ what, result: `live-migrates to ${hosts[0]}`, ok: true });
      continue;
    }
    const failure =
      status?.state !== "running" && status !== undefined
        ? `it is ${status.state}, not running: it is not live-migrated`
        : `no host to go to: ${why.join("; ")}`;
    const restart = allowRestart ? restartHosts(records, name, host)[0] : undefined;
    outcomes.push(
      restart !== undefined
        ? { what, result: `stops and starts on ${restart} (${failure})`, ok: true }
        : { what, result: failure, ok: false },
    );
  }
  for (const name of volumesServedBy(records, host)) {
    const target = switchoverTarget(records, name, host);
    outcomes.push(
      target === undefined
        ? { what: `volume ${name}`, result: "no other live host has a copy recorded in sync", ok: false }
        : { what: `volume ${name}`, result: `switches over to ${target}`, ok: true },
    );
  }
  return outcomes;
}

/** The hosts VM `name` could go to, best first: live, not in maintenance, with an in-sync copy and room. */
function targetsFor(records: ClusterRecords, name: string, from: string): { hosts: string[]; why: string[] } {
  const why: string[] = [];
  const hosts: string[] = [];
  for (const candidate of [...records.liveHosts.keys()].sort()) {
    if (candidate === from) continue;
    try {
      planMigration(records, name, candidate, false);
      hosts.push(candidate);
    } catch (error) {
      why.push(errorMessage(error));
    }
  }
  return { hosts, why };
}

async function moveVm(
  client: ClusterStore,
  records: ClusterRecords,
  name: string,
  from: string,
  options: DrainOptions,
): Promise<DrainOutcome> {
  const { write, signal, actor } = options;
  const what = `VM ${name}`;
  const status = records.vmStatus.get(name)?.record;
  const { hosts, why } = targetsFor(records, name, from);
  let failure = hosts.length === 0 ? `no host to go to: ${why.join("; ")}` : "";
  if (status?.state === "running") {
    for (const to of hosts) {
      try {
        const done = await migrateVm(client, name, to, {
          actor,
          copy: false,
          timeoutMs: MIGRATION_TIMEOUT_MS,
          signal,
          write: (text) => write(`  ${text}`),
        });
        if (done === undefined) return { what, result: "stopped waiting (the migration goes on)", ok: false };
        const paused = done.pausedMs === undefined ? "" : `, paused ${done.pausedMs} ms`;
        return { what, result: `live-migrated to ${to} in ${done.seconds.toFixed(1)} s${paused}`, ok: true };
      } catch (error) {
        failure = `live migration to ${to} failed: ${errorMessage(error)}`;
        write(`  ${failure}\n`);
      }
    }
  } else if (status !== undefined) failure = `it is ${status.state}, not running: it is not live-migrated`;
  if (!options.allowRestart)
    return { what, result: `${failure} (--allow-restart would stop and start it elsewhere)`, ok: false };
  // The fallback the operator allowed: the disk moves with a switchover, the VM starts again there.
  for (const to of restartHosts(records, name, from)) {
    try {
      await startVm(client, name, { host: to, restart: false }, { actor });
      return { what, result: `stopped and started on ${to} (${failure})`, ok: true };
    } catch (error) {
      failure = `restart on ${to} refused: ${errorMessage(error)}`;
    }
  }
  return { what, result: failure || "no live host holds an in-sync copy of its disk", ok: false };
}

/** Hosts a VM may be started on after a stop: live, not in maintenance, with an in-sync copy. */
function restartHosts(records: ClusterRecords, name: string, from: string): string[] {
  const vm = records.vms.get(name);
  const spec = vm === undefined ? undefined : records.volumes.get(vm.volume);
  if (vm === undefined || spec === undefined) return [];
  return copyHosts(spec)
    .filter((host) => host !== from && records.liveHosts.has(host) && !records.maintenance.has(host))
    .filter((host) => inSyncCopiesOn(spec, records.replicas.get(vm.volume), host).length > 0);
}

/** The live host, not in maintenance, with an in-sync copy, that volume `name`'s primary would move to. */
function switchoverTarget(records: ClusterRecords, name: string, host: string): string | undefined {
  const spec = records.volumes.get(name);
  return (
    spec &&
    copyHosts(spec)
      .filter((other) => other !== host && records.liveHosts.has(other) && !records.maintenance.has(other))
      .find((other) => inSyncCopiesOn(spec, records.replicas.get(name), other).length > 0)
  );
}

async function moveVolume(
  client: ClusterStore,
  records: ClusterRecords,
  name: string,
  host: string,
  actor: string,
): Promise<DrainOutcome> {
  const what = `volume ${name}`;
  const target = switchoverTarget(records, name, host);
  if (target === undefined) return { what, result: "no other live host has a copy recorded in sync", ok: false };
  const asked = new Date();
  try {
    await requestSwitchover(client, name, target, { actor });
    const done = await waitForSwitchover(client, name, target, asked, SWITCHOVER_TIMEOUT_MS);
    return { what, result: `switched over to ${target} (epoch ${done.epoch}, paused ${done.pauseMs} ms)`, ok: true };
  } catch (error) {
    return { what, result: errorMessage(error), ok: false };
  }
}
