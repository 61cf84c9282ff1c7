// What the dashboard shows of the cluster, derived from one read of etcd: the views `haven status`,
// `vm list` and `disk list` print (cluster-view.ts), with the disks under their host, the migrations
// and maintenance under way, and the age of every host's last health check. Pure (the clock is a
// parameter), so the dashboard and the CLI cannot disagree about what the records mean. A copy's live
// resync progress is what `haven status` shows too: the primary's latest health check.

import type { ClusterRecords, StoredEvent } from "../cluster/cluster-read.js";
import {
  clusterView,
  diskEntries,
  type ClusterSummary,
  type DiskView,
  type HostView,
  type VolumeView,
} from "../cluster/cluster-view.js";
import type { MigrationRecord } from "../cluster/migration-schema.js";
import type { EventRecord } from "../cluster/schema.js";

export interface DashboardHost extends HostView {
  /** How old its latest health check (disk probes, link heartbeats) was when the snapshot was taken. */
  readonly healthAgeMs: number | null;
  /** Its disks as `disk list` shows them, with the copies on each. */
  readonly diskViews: readonly DiskView[];
}

/** A VM as the dashboard shows it (vm-list's entry, without the spec's details). */
export interface DashboardVm {
  readonly name: string;
  readonly desired: string;
  readonly state: string;
  readonly host: string | null;
  readonly volume: string;
  readonly vcpus: number;
  readonly memoryMiB: number;
  readonly reason: string;
  readonly restarts: number;
  readonly relocations: number;
}

export interface DashboardSnapshot {
  /** When it was taken (the serving agent's clock), and at which etcd revision. */
  readonly at: string;
  readonly revision: number;
  /** The host whose agent answered. */
  readonly servedBy: string;
  readonly summary: ClusterSummary;
  readonly hosts: readonly DashboardHost[];
  readonly volumes: readonly VolumeView[];
  readonly vms: readonly DashboardVm[];
  readonly migrations: readonly MigrationRecord[];
  /** Volumes with a switchover asked for and not yet carried out. */
  readonly switchovers: readonly string[];
  /** Records in etcd that failed the checks and were left out (see `haven status`). */
  readonly malformed: number;
}

export function dashboardSnapshot(records: ClusterRecords, servedBy: string, now: Date): DashboardSnapshot {
  const view = clusterView(records);
  const disks = diskEntries(records);
  return {
    at: now.toISOString(),
    revision: records.revision,
    servedBy,
    summary: view.summary,
    hosts: view.hosts.map((host) => ({
      ...host,
      healthAgeMs: host.health === null ? null : Math.max(0, now.getTime() - Date.parse(host.health.checkedAt)),
      diskViews: disks.filter((disk) => disk.host === host.name),
    })),
    volumes: view.volumes,
    vms: view.vms.map((vm) => ({
      name: vm.name,
      desired: vm.desired,
      state: vm.state,
      host: vm.host,
      volume: vm.volume,
      vcpus: vm.vcpus,
      memoryMiB: vm.memoryMiB,
      reason: vm.reason,
      restarts: vm.restarts,
      relocations: vm.relocations,
    })),
    migrations: [...records.migrations.values()].map((entry) => entry.record),
    switchovers: [...records.handovers].sort(),
    malformed: records.malformed.length,
  };
}

/** One event as the dashboard lists it: its key (they sort by time) and the record. */
export interface DashboardEvent extends EventRecord {
  readonly key: string;
}

export interface EventFilter {
  readonly host?: string;
  readonly volume?: string;
  /** A VM's events: those of its disk, and those that name it. */
  readonly vm?: { readonly name: string; readonly volume: string | undefined };
  /** Only events at or after this time. */
  readonly since?: Date;
  /** Only events after this key (what a stream has sent already). */
  readonly after?: string;
}

/** Matches `name` in a message where no other name character touches it. */
function wholeName(name: string): RegExp {
  const literal = name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  // A full stop right after the name ends a sentence unless a name character follows it.
  return new RegExp(`(^|[^A-Za-z0-9._-])${literal}($|[^A-Za-z0-9._-]|\\.(?![A-Za-z0-9]))`);
}

/** The events that pass `filter`, oldest first, the newest `limit` of them. */
export function filterEvents(events: readonly StoredEvent[], filter: EventFilter, limit: number): DashboardEvent[] {
  const vmWord = filter.vm === undefined ? undefined : wholeName(`VM ${filter.vm.name}`);
  const hostWord = filter.host === undefined ? undefined : wholeName(filter.host);
  const passing = events.filter(({ key, event }) => {
    if (filter.after !== undefined && key <= filter.after) return false;
    if (filter.since !== undefined && Date.parse(event.time) < filter.since.getTime()) return false;
    if (filter.host !== undefined && event.host !== filter.host && !hostWord!.test(event.message)) return false;
    if (filter.volume !== undefined && event.volume !== filter.volume) return false;
    if (filter.vm !== undefined && !(event.volume === filter.vm.volume || vmWord!.test(event.message))) return false;
    return true;
  });
  return passing.slice(Math.max(0, passing.length - limit)).map(({ key, event }) => ({ key, ...event }));
}
