// `haven host list`: every host the cluster has had, alive or dead, with its address, NBD port, the
// number of copies it holds and its disks' usage.

import { HavenError } from "../../core/errors.js";
import { readClusterRecords } from "../../cluster/cluster-read.js";
import { clusterView } from "../../cluster/cluster-view.js";
import { parseCommandArgs } from "../args.js";
import { renderHostList } from "../cluster-render.js";
import { CLUSTER_OPTIONS, CLUSTER_OPTIONS_USAGE, connectCluster } from "../context.js";
import { terminalRenderOptions } from "../terminal.js";

export const HOST_LIST_USAGE = `usage: haven host list [--json] [cluster options]

Lists every host that has joined the cluster: alive while its agent keeps its lease, dead after.

options:
  --json               print the hosts as JSON

${CLUSTER_OPTIONS_USAGE}`;

export async function hostList(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommandArgs(
    argv,
    { ...CLUSTER_OPTIONS, json: { type: "boolean" }, help: { type: "boolean", short: "h" } },
    HOST_LIST_USAGE,
  );
  if (values.help) {
    process.stdout.write(`${HOST_LIST_USAGE}\n`);
    return 0;
  }
  if (positionals.length > 0)
    throw new HavenError("HAVEN_ERR_USAGE", `unexpected argument "${positionals[0]}"\n\n${HOST_LIST_USAGE}`);
  const { hosts } = clusterView(await readClusterRecords(connectCluster(values)));
  process.stdout.write(
    values.json ? `${JSON.stringify(hosts, null, 2)}\n` : renderHostList(hosts, terminalRenderOptions()),
  );
  return 0;
}
