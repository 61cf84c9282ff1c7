// `haven host drain HOST` and `haven host undrain HOST`: maintenance without downtime. Drain puts HOST
// in maintenance first (nothing is placed, promoted or migrated there from then on), live-migrates
// every VM running there to another host with an in-sync copy and room (falling back to a stop and a
// start elsewhere only with --allow-restart), moves the primary of every other volume it serves with
// a switchover, and ends with a summary of what went where. Undrain ends the maintenance.

import { cliActor } from "../actor.js";
import { HavenError, errorMessage } from "../../core/errors.js";
import { readClusterRecords, type ClusterRecords } from "../../cluster/cluster-read.js";
import { planMigration, setMaintenance } from "../../cluster/migration-admin.js";
import { copyHosts, inSyncCopiesOn } from "../../cluster/schema.js";
import type { EtcdClient } from "../../cluster/etcd-client.js";
import { startVm } from "../../cluster/vm-admin.js";
import { requestSwitchover } from "../../cluster/volume-admin.js";
import { parseCommand } from "../args.js";
import { CLUSTER_OPTIONS, CLUSTER_OPTIONS_USAGE, connectCluster } from "../context.js";
import { migrateVm } from "../migration-wait.js";
import { abortOnStopSignal } from "../poll.js";
import { waitForSwitchover } from "../switchover-wait.js";

export const HOST_DRAIN_USAGE = `usage: haven host drain HOST [--allow-restart] [cluster options]

drain: puts HOST in maintenance (nothing is placed, promoted or migrated there until undrain), then
live-migrates every VM running on HOST to another live host that holds an in-sync copy of its disk and
has room for it (the guests pause briefly, never reboot), and moves the primary of every other volume
HOST serves with a switchover (no write lost). A VM that cannot be live-migrated stays on HOST, unless
--allow-restart lets it be stopped and started on another host. Ends with a summary; exits 1 when
anything stayed on HOST.

'haven host undrain HOST' ends the maintenance.

${CLUSTER_OPTIONS_USAGE}`;

export const HOST_UNDRAIN_USAGE = `usage: haven host undrain HOST [cluster options]

Ends HOST's maintenance: volumes and VMs may be placed, promoted and migrated there again. Nothing
moves back by itself (see a VM's failback policy).

${CLUSTER_OPTIONS_USAGE}`;

const MIGRATION_TIMEOUT_MS = 600_000;

interface Outcome {
  readonly what: string;
  readonly result: string;
  readonly ok: boolean;
}

export async function hostDrain(argv: string[]): Promise<number> {
  const parsed = parseCommand(argv, { ...CLUSTER_OPTIONS, "allow-restart": { type: "boolean" } }, HOST_DRAIN_USAGE);
  if (parsed === undefined) return 0; // --help was printed
  const { values, positionals } = parsed;
  if (positionals.length !== 1) throw new HavenError("HAVEN_ERR_USAGE", `give one HOST\n\n${HOST_DRAIN_USAGE}`);
  const host = positionals[0]!;
  const client = connectCluster(values);
  let records = await readClusterRecords(client);
  if (!records.knownHosts.has(host))
    throw new HavenError("HAVEN_ERR_NOT_FOUND", `no host "${host}" in the cluster; 'haven host list' shows them`);
  if (await setMaintenance(client, host, true, { actor: cliActor() }))
    process.stdout.write(`host ${host}: in maintenance (nothing is placed, promoted or migrated there)\n`);
  else process.stdout.write(`host ${host}: in maintenance already\n`);
  const outcomes: Outcome[] = [];
  const stop = abortOnStopSignal();
  try {
    const vms = [...records.vms.values()].filter(
      (vm) => records.primaries.get(vm.volume)?.host === host && vm.desired === "started",
    );
    for (const [index, vm] of vms.entries()) {
      if (stop.signal.aborted) break;
      records = await readClusterRecords(client);
      process.stdout.write(`[${index + 1}/${vms.length}] VM ${vm.name}\n`);
      outcomes.push(await moveVm(client, records, vm.name, host, values["allow-restart"] === true, stop.signal));
    }
    records = await readClusterRecords(client);
    const vmDisks = new Set([...records.vms.values()].map((vm) => vm.volume));
    for (const [name, primary] of records.primaries) {
      if (primary.host !== host || vmDisks.has(name) || stop.signal.aborted) continue;
      outcomes.push(await moveVolume(client, records, name, host));
    }
  } finally {
    stop.dispose();
  }
  process.stdout.write(`\nhost ${host} drained:\n`);
  const width = Math.max(0, ...outcomes.map((outcome) => outcome.what.length));
  for (const outcome of outcomes)
    process.stdout.write(`  ${outcome.ok ? "ok  " : "LEFT"}  ${outcome.what.padEnd(width)}  ${outcome.result}\n`);
  if (outcomes.length === 0) process.stdout.write("  nothing ran or was served there\n");
  const left = outcomes.filter((outcome) => !outcome.ok);
  if (left.length > 0)
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `host ${host} still runs or serves ${left.map((outcome) => outcome.what).join(", ")}; it stays in maintenance`,
    );
  return 0;
}

export async function hostUndrain(argv: string[]): Promise<number> {
  const parsed = parseCommand(argv, { ...CLUSTER_OPTIONS }, HOST_UNDRAIN_USAGE);
  if (parsed === undefined) return 0;
  const { values, positionals } = parsed;
  if (positionals.length !== 1) throw new HavenError("HAVEN_ERR_USAGE", `give one HOST\n\n${HOST_UNDRAIN_USAGE}`);
  const host = positionals[0]!;
  const client = connectCluster(values);
  const records = await readClusterRecords(client);
  if (!records.knownHosts.has(host))
    throw new HavenError("HAVEN_ERR_NOT_FOUND", `no host "${host}" in the cluster; 'haven host list' shows them`);
  if (!(await setMaintenance(client, host, false, { actor: cliActor() })))
    throw new HavenError("HAVEN_ERR_CONFLICT", `host ${host} is not in maintenance`);
  process.stdout.write(`host ${host}: maintenance ended; VMs and copies may be placed there again\n`);
  return 0;
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
  client: EtcdClient,
  records: ClusterRecords,
  name: string,
  from: string,
  allowRestart: boolean,
  signal: AbortSignal,
): Promise<Outcome> {
  const what = `VM ${name}`;
  const status = records.vmStatus.get(name)?.record;
  const { hosts, why } = targetsFor(records, name, from);
  let failure = hosts.length === 0 ? `no host to go to: ${why.join("; ")}` : "";
  if (status?.state === "running") {
    for (const to of hosts) {
      try {
        const done = await migrateVm(client, name, to, {
          actor: cliActor(),
          copy: false,
          timeoutMs: MIGRATION_TIMEOUT_MS,
          signal,
          write: (text) => process.stdout.write(`  ${text}`),
        });
        if (done === undefined) return { what, result: "stopped waiting (the migration goes on)", ok: false };
        const paused = done.pausedMs === undefined ? "" : `, paused ${done.pausedMs} ms`;
        return { what, result: `live-migrated to ${to} in ${done.seconds.toFixed(1)} s${paused}`, ok: true };
      } catch (error) {
        failure = `live migration to ${to} failed: ${errorMessage(error)}`;
        process.stdout.write(`  ${failure}\n`);
      }
    }
  } else if (status !== undefined) failure = `it is ${status.state}, not running: it is not live-migrated`;
  if (!allowRestart)
    return { what, result: `${failure} (--allow-restart would stop and start it elsewhere)`, ok: false };
  // The fallback the operator allowed: the disk moves with a switchover, the VM starts again there.
  const restartTargets = restartHosts(records, name, from);
  for (const to of restartTargets) {
    try {
      await startVm(client, name, { host: to, restart: false }, { actor: cliActor() });
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

async function moveVolume(client: EtcdClient, records: ClusterRecords, name: string, host: string): Promise<Outcome> {
  const what = `volume ${name}`;
  const spec = records.volumes.get(name);
  const target =
    spec &&
    copyHosts(spec)
      .filter((other) => other !== host && records.liveHosts.has(other) && !records.maintenance.has(other))
      .find((other) => inSyncCopiesOn(spec, records.replicas.get(name), other).length > 0);
  if (target === undefined) return { what, result: "no other live host has a copy recorded in sync", ok: false };
  const asked = new Date();
  try {
    await requestSwitchover(client, name, target, { actor: cliActor() });
    const done = await waitForSwitchover(client, name, target, asked, 30_000);
    return { what, result: `switched over to ${target} (epoch ${done.epoch}, paused ${done.pauseMs} ms)`, ok: true };
  } catch (error) {
    return { what, result: errorMessage(error), ok: false };
  }
}
