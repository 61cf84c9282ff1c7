// `haven volume list`: every volume in the cluster with its size, health, primary, copies and NBD URI.

import { renderVolumeList } from "../cluster-render.js";
import { clusterReport } from "../cluster-report.js";
import { CLUSTER_OPTIONS_USAGE } from "../context.js";

export const VOLUME_LIST_USAGE = `usage: haven volume list [--json] [cluster options]

Lists every volume: size, health, primary host and epoch, each copy's recorded state, NBD URI.

options:
  --json               print the volumes as JSON

${CLUSTER_OPTIONS_USAGE}`;

export function volumeList(argv: string[]): Promise<number> {
  return clusterReport(argv, VOLUME_LIST_USAGE, (view) => view.volumes, renderVolumeList);
}
