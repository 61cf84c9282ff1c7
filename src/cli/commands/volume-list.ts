// `haven volume list`: every volume in the cluster with its size, health, primary, copies and NBD URI.

import { renderVolumeList } from "../cluster-render.js";
import { clusterReport } from "../cluster-report.js";
import { CLUSTER_OPTIONS_USAGE } from "../context.js";
import { WATCH_OPTIONS_USAGE } from "../watch.js";

export const VOLUME_LIST_USAGE = `usage: haven volume list [--json] [--watch [--interval SECONDS]] [cluster options]

Lists every volume: size, health, primary host and epoch, each copy's recorded state, NBD URI.

options:
  --json               print the volumes as JSON
${WATCH_OPTIONS_USAGE}

${CLUSTER_OPTIONS_USAGE}`;

export function volumeList(argv: string[]): Promise<number> {
  return clusterReport(
    argv,
    VOLUME_LIST_USAGE,
    (view) => view.volumes,
    renderVolumeList,
    undefined,
    "haven volume list",
  );
}
