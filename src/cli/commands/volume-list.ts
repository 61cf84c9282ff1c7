// `haven volume list`: every volume in the cluster with its size, health, primary, copies and NBD URI.

import { HavenError } from "../../core/errors.js";
import { readClusterRecords } from "../../cluster/cluster-read.js";
import { clusterView } from "../../cluster/cluster-view.js";
import { parseCommandArgs } from "../args.js";
import { renderVolumeList } from "../cluster-render.js";
import { CLUSTER_OPTIONS, CLUSTER_OPTIONS_USAGE, connectCluster } from "../context.js";
import { terminalRenderOptions } from "../terminal.js";

export const VOLUME_LIST_USAGE = `usage: haven volume list [--json] [cluster options]

Lists every volume: size, health, primary host and epoch, each copy's recorded state, NBD URI.

options:
  --json               print the volumes as JSON

${CLUSTER_OPTIONS_USAGE}`;

export async function volumeList(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommandArgs(
    argv,
    { ...CLUSTER_OPTIONS, json: { type: "boolean" }, help: { type: "boolean", short: "h" } },
    VOLUME_LIST_USAGE,
  );
  if (values.help) {
    process.stdout.write(`${VOLUME_LIST_USAGE}\n`);
    return 0;
  }
  if (positionals.length > 0)
    throw new HavenError("HAVEN_ERR_USAGE", `unexpected argument "${positionals[0]}"\n\n${VOLUME_LIST_USAGE}`);
  const { volumes } = clusterView(await readClusterRecords(connectCluster(values)));
  process.stdout.write(
    values.json ? `${JSON.stringify(volumes, null, 2)}\n` : renderVolumeList(volumes, terminalRenderOptions()),
  );
  return 0;
}
