// The read-only cluster reports (`haven status`, `host list`, `volume list`): the same command shape,
// once. Each takes only the cluster options and --json, reads one consistent snapshot of the cluster,
// and prints its part of the view as JSON or as a table.

import { readClusterRecords } from "../cluster/cluster-read.js";
import { clusterView, type ClusterView } from "../cluster/cluster-view.js";
import { parseCommand, refuseArguments } from "./args.js";
import type { ClusterRenderOptions } from "./cluster-render.js";
import { CLUSTER_OPTIONS, connectCluster } from "./context.js";
import { terminalRenderOptions } from "./terminal.js";

export async function clusterReport<T>(
  argv: string[],
  usage: string,
  part: (view: ClusterView) => T,
  render: (part: T, options: ClusterRenderOptions) => string,
  /** Lines to warn about on stderr after the report (stdout stays the report alone, also with --json). */
  warnings?: (values: Record<string, string | boolean | undefined>) => Promise<string[]>,
): Promise<number> {
  const parsed = parseCommand(argv, { ...CLUSTER_OPTIONS, json: { type: "boolean" } }, usage);
  if (parsed === undefined) return 0; // --help was printed
  const { values, positionals } = parsed;
  refuseArguments(positionals, usage);
  const shown = part(clusterView(await readClusterRecords(connectCluster(values))));
  process.stdout.write(values.json ? `${JSON.stringify(shown, null, 2)}\n` : render(shown, terminalRenderOptions()));
  for (const line of (await warnings?.(values)) ?? []) process.stderr.write(`warning: ${line}\n`);
  return 0;
}
