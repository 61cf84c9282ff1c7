// What the agent shows of itself to the layers above it (the agent API, the dashboard): a narrow,
// read-mostly view, so they depend on this interface and not on the Agent class, and the agent does
// not know they exist.

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
}

export interface AgentView {
  health(): HostHealth;
  engines(): ReadonlyMap<string, EngineControl>;
  vms(): readonly VmHere[];
  /** This host's disks as last published (disk-schema.ts records), in order. */
  disks(): readonly DiskRecord[];
}
