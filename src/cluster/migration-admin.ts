// Asking for a live migration (`haven vm migrate`, `haven host drain`) and for a host's maintenance:
// the checks an operator's request must pass, each refusal naming the reason and the fix, and the
// records written in one transaction each, conditioned on what the checks read.

import { randomUUID } from "node:crypto";
import { HavenError } from "../core/errors.js";
import type { ClusterRecords } from "./cluster-read.js";
import type { MigrationRecord } from "./migration-schema.js";
import { inSyncCopiesOn, keys } from "./schema.js";
import type { ClusterStore, Compare, TxnOperation } from "./store.js";
import { event, hostLacks } from "./vm-admin.js";
import type { VmRecord } from "./vm-schema.js";

export interface MigrationPlan {
  readonly vm: VmRecord;
  readonly from: string;
  readonly to: string;
  /** The destination holds no copy of the disk in sync: one must be built first (only with --copy). */
  readonly needsCopy: boolean;
}

/**
 * Whether VM `name` can be live-migrated to `to` now; the plan, or a refusal that says what to do.
 * `allowCopy`: a destination without an in-sync copy is accepted (the caller builds one first).
 */
export function planMigration(records: ClusterRecords, name: string, to: string, allowCopy: boolean): MigrationPlan {
  const vm = records.vms.get(name);
  if (vm === undefined) throw new HavenError("HAVEN_ERR_NOT_FOUND", `no VM named "${name}" (see 'haven vm list')`);
  const under = records.migrations.get(name)?.record;
  if (under !== undefined)
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `VM ${name} is being migrated already (${under.from} to ${under.to}, asked by ${under.requestedBy} at ${under.requestedAt}); ` +
        `wait for it to end ('haven vm show ${name}')`,
    );
  const status = records.vmStatus.get(name)?.record;
  const from = records.primaries.get(vm.volume)?.host;
  if (vm.desired !== "started" || status?.state !== "running" || from === undefined || status.host !== from)
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `VM ${name} is not running (${status === undefined ? "never started" : `${status.state} on ${status.host}`}): ` +
        `only a running VM is live-migrated; start it where you want it with 'haven vm start ${name} --host ${to}'`,
    );
  if (!records.knownHosts.has(to))
    throw new HavenError("HAVEN_ERR_NOT_FOUND", `no host named "${to}" in the cluster (see 'haven host list')`);
  if (to === from) throw new HavenError("HAVEN_ERR_USAGE", `VM ${name} runs on ${to} already; name another host`);
  if (!records.liveHosts.has(to))
    throw new HavenError("HAVEN_ERR_UNAVAILABLE", `host ${to} is down: its agent holds no lease (see 'haven status')`);
  if (records.maintenance.has(to))
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `host ${to} is in maintenance: nothing moves there until 'haven host undrain ${to}'`,
    );
  if (records.handovers.has(vm.volume))
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `a switchover of VM ${name}'s disk ${vm.volume} is under way; try again when it has ended`,
    );
  const lacks = hostLacks(records, to, vm);
  if (lacks !== undefined)
    throw new HavenError(
      "HAVEN_ERR_NO_SPACE",
      `host ${to} has no room for VM ${name}: it lacks ${lacks}; free it there, or choose another host`,
    );
  const spec = records.volumes.get(vm.volume);
  const inSync = spec !== undefined && inSyncCopiesOn(spec, records.replicas.get(vm.volume), to).length > 0;
  if (!inSync && !allowCopy) {
    const holds = spec?.replicas.some((copy) => copy.host === to) === true;
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      holds
        ? `host ${to}'s copy of ${vm.volume} is not in sync yet; wait for it ('haven volume show ${vm.volume}')`
        : `host ${to} holds no copy of VM ${name}'s disk ${vm.volume}; add --copy to build one there first ` +
            `(or 'haven volume add-copy ${vm.volume} --host ${to}')`,
    );
  }
  return { vm, from, to, needsCopy: !inSync };
}

export interface RequestOptions {
  readonly actor: string;
  /** The most the transfer may send per second (bytes). */
  readonly maxBandwidth?: number;
  readonly now?: () => Date;
}

/** Records the migration (refused if anything it was checked against changed); resolves with its record. */
export async function requestMigration(
  client: ClusterStore,
  plan: MigrationPlan,
  records: ClusterRecords,
  options: RequestOptions,
): Promise<MigrationRecord> {
  const now = (options.now ?? (() => new Date()))();
  const record: MigrationRecord = {
    vm: plan.vm.name,
    volume: plan.vm.volume,
    from: plan.from,
    to: plan.to,
    id: randomUUID(),
    phase: "requested",
    requestedBy: options.actor,
    requestedAt: now.toISOString(),
    since: now.toISOString(),
    ...(options.maxBandwidth !== undefined && { maxBandwidth: options.maxBandwidth }),
  };
  const primaryRevision = records.primaryRevisions.get(plan.vm.volume) ?? 0;
  const compare: Compare[] = [
    { key: keys.migration(plan.vm.name), target: "createRevision", result: "equal", value: 0 },
    { key: keys.primary(plan.vm.volume), target: "modRevision", result: "equal", value: primaryRevision },
    { key: keys.maintenance(plan.to), target: "createRevision", result: "equal", value: 0 },
  ];
  const result = await client.txn(
    compare,
    [
      { type: "put", key: keys.migration(plan.vm.name), value: JSON.stringify(record) },
      event(
        "vm-migration-requested",
        `VM ${plan.vm.name}: live migration from ${plan.from} to ${plan.to} asked`,
        { actor: options.actor, now: () => now },
        plan.vm.volume,
      ),
    ],
    [],
  );
  if (!result.succeeded)
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `VM ${plan.vm.name} changed while the migration was asked for (another migration, a switchover, or maintenance); try again`,
    );
  return record;
}

/** Puts host `host` in maintenance (or ends it): nothing is placed, promoted or migrated there meanwhile. */
export async function setMaintenance(
  client: ClusterStore,
  host: string,
  on: boolean,
  options: RequestOptions,
): Promise<boolean> {
  const now = (options.now ?? (() => new Date()))();
  const key = keys.maintenance(host);
  const operations: TxnOperation[] = on
    ? [
        { type: "put", key, value: JSON.stringify({ since: now.toISOString(), by: options.actor }) },
        event("host-maintenance", `host ${host} is in maintenance (drained)`, { actor: options.actor, now: () => now }),
      ]
    : [
        { type: "delete", key },
        event("host-maintenance-ended", `host ${host} is back from maintenance`, {
          actor: options.actor,
          now: () => now,
        }),
      ];
  const compare: Compare[] = [{ key, target: "createRevision", result: on ? "equal" : "greater", value: 0 }];
  return (await client.txn(compare, operations, [])).succeeded;
}
