// `haven status`: the cluster at a glance, read from etcd: a summary line, each host (alive or dead,
// its address and disks) and each volume (size, primary and epoch, each copy's recorded state, health,
// and where clients connect).

import { renderStatus } from "../cluster-render.js";
import { clusterReport } from "../cluster-report.js";
import { CLUSTER_OPTIONS_USAGE } from "../context.js";

export const STATUS_USAGE = `usage: haven status [--json] [cluster options]

Shows the cluster at a glance: how many hosts are alive and how many volumes are healthy, then every
host (alive or dead, address, disks) and every volume (size, health, primary host and epoch, each
copy's recorded state, NBD URI).

A volume is healthy when its primary's host is alive and every copy is in sync, degraded when a copy
is out of sync or on a dead host, and down when no live host serves it.

options:
  --json               print the hosts and volumes as JSON

${CLUSTER_OPTIONS_USAGE}`;

export function status(argv: string[]): Promise<number> {
  return clusterReport(argv, STATUS_USAGE, (view) => view, renderStatus);
}
