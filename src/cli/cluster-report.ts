// The read-only cluster reports (`haven status`, `host list`, `volume list`): the same command shape,
// once. Each takes only the cluster options and --json, reads one consistent snapshot of the cluster,
// and prints its part of the view as JSON or as a table. Records that fail the checks (cluster-read.ts)
// are left out, and counted on stderr: "haven: 2 records ignored as malformed (first: ...)".

import type { HavenError } from "../core/errors.js";
import { readClusterRecords, type ClusterRecords } from "../cluster/cluster-read.js";
import type { ClusterStore } from "../cluster/store.js";
import { clusterView, type ClusterView } from "../cluster/cluster-view.js";
import { parseCommand, refuseArguments } from "./args.js";
import type { ClusterRenderOptions } from "./cluster-render.js";
import { CLUSTER_OPTIONS, connectCluster } from "./context.js";
import { terminalRenderOptions } from "./terminal.js";
import { WATCH_OPTIONS, watchFrames, watchSeconds } from "./watch.js";

/** One line on stderr for the records a reader left out as malformed, if any. */
export function warnIgnored(errors: readonly HavenError[], what: "records" | "events"): void {
  if (errors.length === 0) return;
  const count = errors.length === 1 ? `1 ${what.slice(0, -1)}` : `${errors.length} ${what}`;
  process.stderr.write(`haven: ${count} ignored as malformed (first: ${errors[0]!.message})\n`);
}

/** The cluster's records for a reader that shows them: what was ignored as malformed is counted on stderr. */
export async function readShownRecords(client: ClusterStore): Promise<ClusterRecords> {
  const records = await readClusterRecords(client);
  warnIgnored(
    records.malformed.map((record) => record.error),
    "records",
  );
  return records;
}

export async function clusterReport<T>(
  argv: string[],
  usage: string,
  part: (view: ClusterView) => T,
  render: (part: T, options: ClusterRenderOptions) => string,
  /** Lines to warn about on stderr after the report (stdout stays the report alone, also with --json). */
  warnings?: (values: Record<string, string | boolean | undefined>, records: ClusterRecords) => Promise<string[]>,
  /** The command, for the header of --watch: "haven status". */
  title = "haven",
): Promise<number> {
  const parsed = parseCommand(argv, { ...CLUSTER_OPTIONS, ...WATCH_OPTIONS, json: { type: "boolean" } }, usage);
  if (parsed === undefined) return 0; // --help was printed
  const { values, positionals } = parsed;
  refuseArguments(positionals, usage);
  const seconds = watchSeconds(values);
  const client = connectCluster(values);
  const json = values.json === true;
  let records: ClusterRecords | undefined;
  const report = async (): Promise<string> => {
    records = await readClusterRecords(client);
    warnIgnored(
      records.malformed.map((record) => record.error),
      "records",
    );
    const shown = part(clusterView(records));
    return json
      ? `${JSON.stringify(shown, null, seconds === undefined ? 2 : undefined)}\n`
      : render(shown, terminalRenderOptions());
  };
  if (seconds !== undefined) return watchFrames(report, { seconds, title, json });
  process.stdout.write(await report());
  for (const line of (await warnings?.(values, records!)) ?? []) process.stderr.write(`warning: ${line}\n`);
  return 0;
}
