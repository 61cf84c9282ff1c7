// What the agent shows of itself to the layers above it (the agent API, the dashboard): a narrow,
// read-mostly view, so they depend on this interface and not on the Agent class, and the agent does
// not know they exist.

import type { TransferProgress } from "../vm/migration.js";
import type { DiskRecord } from "../cluster/disk-schema.js";
import type { DiskHealth, LinkHealth } from "../cluster/schema.js";
import type { EngineControl } from "../engine/status.js";
import type { VolumeStatus } from "../engine/status.js";
import type { VmState } from "../cluster/vm-schema.js";
import type { HistogramSnapshot } from "../util/latency-histogram.js";
import type { VolumeRoleChanges } from "./role-changes.js";

export interface HostHealth {
  readonly name: string;
  readonly leaseHeld: boolean;
  /** Since the send of the last keepalive etcd accepted: how reachable etcd is from here. */
  readonly lastKeepaliveAgoMs: number;
  readonly eventLoopLagMs: number;
  readonly volumes: readonly string[];
  /** The disks' latest probes and the replication links' heartbeats. */
  readonly disks: readonly DiskHealth[];
  readonly links: readonly LinkHealth[];
}

/** What the API asks of the agent. */
/** A VM's QEMU on this host, with its health on several parameters. */
export interface VmHere {
  readonly name: string;
  readonly volume: string;
  readonly pid: number | null;
  readonly runState: string;
  readonly checks: Readonly<Record<string, { readonly ok: boolean; readonly value: string; readonly at: string }>>;
  /** A live migration this host takes part in: its role, state and (at the source) QEMU's last progress. */
  readonly migration?: MigrationHereView;
}

export interface MigrationHereView {
  readonly role: "source" | "destination";
  readonly peer: string;
  readonly state: string;
  readonly progress?: TransferProgress;
}

export interface AgentView {
  health(): HostHealth;
  engines(): ReadonlyMap<string, EngineControl>;
  vms(): readonly VmHere[];
  /** This host's disks as last published (disk-schema.ts records), in order. */
  disks(): readonly DiskRecord[];

  // ---- metrics (src/api/metrics/) ----
  /** What the metrics need beyond the views above; cheap (no I/O), read at every scrape. */
  metrics(): AgentMetrics;
}

// ---- metrics (src/api/metrics/): what the agent knows beyond health(), engines(), vms() and disks() ----

export interface AgentMetrics {
  /** The lease and fence timings this agent runs with (alerts compare the lease's age with them). */
  readonly timings: { readonly leaseTtlMs: number; readonly renewIntervalMs: number; readonly fenceAfterMs: number };
  /** The volumes served here, each with where its copies live and its engine's latency histograms. */
  readonly served: readonly ServedVolumeMetrics[];
  /** Failovers and switchovers carried out here, by volume: every volume placed here, and any acted on. */
  readonly roleChanges: ReadonlyMap<string, VolumeRoleChanges>;
  /** The VMs whose QEMU runs here or whose status record names this host. */
  readonly vms: readonly VmMetrics[];
  /** The cluster as this agent's last round read it from etcd; undefined before its first round. */
  readonly cluster: ClusterFacts | undefined;
}

export interface ServedVolumeMetrics {
  readonly status: VolumeStatus;
  /** Each copy's host and disk, by its location as the status names it. */
  readonly copies: ReadonlyMap<string, { readonly host: string; readonly disk: string }>;
  /** What the NBD front served of it (src/util/served-requests.ts), since its engine started. */
  readonly requests: ServedRequestCounts;
}

/** Client requests completed: reads, and writes (writes, trims, zeroing); latency from dispatch to reply. */
export interface ServedRequestCounts {
  readonly reads: number;
  readonly readBytes: number;
  readonly writes: number;
  readonly writtenBytes: number;
  /** Requests answered with an error. */
  readonly errors: number;
  readonly readSeconds: HistogramSnapshot;
  readonly writeSeconds: HistogramSnapshot;
}

export interface VmMetrics {
  readonly name: string;
  readonly volume: string;
  /** The HA state of its status record, when that record names this host. */
  readonly state: VmState | undefined;
  /** Restarts in place and relocations since the VM's last start request (its status record). */
  readonly restarts: number;
  readonly relocations: number;
  /** Its QEMU runs here, and QEMU's run state ("running", "paused", ...). */
  readonly runState: string | undefined;
}

export interface ClusterFacts {
  /** How long ago the round read the cluster. */
  readonly ageMs: number;
  /** Every host the cluster knows, and whether it holds its lease. */
  readonly hosts: readonly { readonly name: string; readonly alive: boolean }[];
  readonly volumes: readonly {
    readonly name: string;
    /** The recorded primary's host (null when none is recorded), and whether it holds its lease. */
    readonly primaryHost: string | null;
    readonly primaryAlive: boolean;
    /** The copies the spec places, each with whether its record says in sync. */
    readonly copies: readonly { readonly host: string; readonly disk: string; readonly inSync: boolean }[];
  }[];
}
