// What the agent shows of itself to the layers above it (the agent API, the dashboard): a narrow,
// read-mostly view, so they depend on this interface and not on the Agent class, and the agent does
// not know they exist.

import type { TransferProgress } from "../vm/migration.js";
import type { DiskRecord } from "../cluster/disk-schema.js";
import type { DiskHealth, LinkHealth } from "../cluster/schema.js";
import type { EngineControl } from "../engine/status.js";

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
}
