// `haven host list`: every host the cluster has had, alive or dead, with its address, NBD port, the
// number of copies it holds and its disks' usage.

import { renderHostList } from "../cluster-render.js";
import { clusterReport } from "../cluster-report.js";
import { CLUSTER_OPTIONS_USAGE } from "../context.js";
import { WATCH_OPTIONS_USAGE } from "../watch.js";

export const HOST_LIST_USAGE = `usage: haven host list [--json] [--watch [--interval SECONDS]] [cluster options]

Lists every host that has joined the cluster: alive while its agent keeps its lease, dead after.

options:
  --json               print the hosts as JSON
${WATCH_OPTIONS_USAGE}

${CLUSTER_OPTIONS_USAGE}`;

export function hostList(argv: string[]): Promise<number> {
  return clusterReport(argv, HOST_LIST_USAGE, (view) => view.hosts, renderHostList, undefined, "haven host list");
}
