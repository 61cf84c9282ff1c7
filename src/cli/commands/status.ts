// `haven status`: the cluster at a glance, read from etcd: a summary line, each host (alive or dead,
// its address and disks) and each volume (size, primary and epoch, each copy's recorded state, health,
// and where clients connect).

import { HavenError } from "../../core/errors.js";
import { readClusterRecords } from "../../cluster/cluster-read.js";
import { clusterView } from "../../cluster/cluster-view.js";
import { parseCommandArgs } from "../args.js";
import { renderStatus } from "../cluster-render.js";
import { CLUSTER_OPTIONS, CLUSTER_OPTIONS_USAGE, connectCluster } from "../context.js";
import { terminalRenderOptions } from "../terminal.js";

export const STATUS_USAGE = `usage: haven status [--json] [cluster options]

Shows the cluster at a glance: how many hosts are alive and how many volumes are healthy, then every
host (alive or dead, address, disks) and every volume (size, health, primary host and epoch, each
copy's recorded state, NBD URI).

A volume is healthy when its primary's host is alive and every copy is in sync, degraded when a copy
is out of sync or on a dead host, and down when no live host serves it.

options:
  --json               print the hosts and volumes as JSON

${CLUSTER_OPTIONS_USAGE}`;

export async function status(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommandArgs(
    argv,
    { ...CLUSTER_OPTIONS, json: { type: "boolean" }, help: { type: "boolean", short: "h" } },
    STATUS_USAGE,
  );
  if (values.help) {
    process.stdout.write(`${STATUS_USAGE}\n`);
    return 0;
  }
  if (positionals.length > 0)
    throw new HavenError("HAVEN_ERR_USAGE", `unexpected argument "${positionals[0]}"\n\n${STATUS_USAGE}`);
  const view = clusterView(await readClusterRecords(connectCluster(values)));
  process.stdout.write(
    values.json ? `${JSON.stringify(view, null, 2)}\n` : renderStatus(view, terminalRenderOptions()),
  );
  return 0;
}
