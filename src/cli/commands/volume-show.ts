// `haven volume show NAME`: everything the cluster records about one volume: size, health, primary
// host, epoch and why it is primary, each copy's host, disk and recorded state, and the NBD URI where
// clients connect.

import { readShownRecords } from "../cluster-report.js";
import { HavenError } from "../../core/errors.js";
import { volumeView } from "../../cluster/cluster-view.js";
import { parseCommand } from "../args.js";
import { renderVolume } from "../cluster-render.js";
import { CLUSTER_OPTIONS, CLUSTER_OPTIONS_USAGE, connectCluster } from "../context.js";
import { terminalRenderOptions } from "../terminal.js";
import { volumeNameArgument } from "../volume-argument.js";
import { WATCH_OPTIONS, WATCH_OPTIONS_USAGE, watchFrames, watchSeconds } from "../watch.js";

export const VOLUME_SHOW_USAGE = `usage: haven volume show NAME [--json] [--watch [--interval SECONDS]] [cluster options]

Shows one volume: size, health, primary host and epoch, each copy's host, disk and recorded state,
and the NBD URI clients connect to (nbd://ADDRESS:PORT/NAME on the primary's host).

options:
  --json               print the volume as JSON
${WATCH_OPTIONS_USAGE}

${CLUSTER_OPTIONS_USAGE}`;

export async function volumeShow(argv: string[]): Promise<number> {
  const parsed = parseCommand(
    argv,
    { ...CLUSTER_OPTIONS, ...WATCH_OPTIONS, json: { type: "boolean" } },
    VOLUME_SHOW_USAGE,
  );
  if (parsed === undefined) return 0; // --help was printed
  const { values, positionals } = parsed;
  const name = volumeNameArgument(positionals, VOLUME_SHOW_USAGE);
  const seconds = watchSeconds(values);
  const client = connectCluster(values);
  const show = async (): Promise<string> => {
    const records = await readShownRecords(client);
    const spec = records.volumes.get(name);
    if (spec === undefined) {
      throw new HavenError("HAVEN_ERR_NOT_FOUND", `no volume "${name}" in the cluster; 'haven volume list' shows them`);
    }
    const volume = volumeView(records, spec);
    return values.json
      ? `${JSON.stringify(volume, null, seconds === undefined ? 2 : undefined)}\n`
      : renderVolume(volume, terminalRenderOptions());
  };
  if (seconds !== undefined)
    return watchFrames(show, { seconds, title: `haven volume show ${name}`, json: values.json === true });
  process.stdout.write(await show());
  return 0;
}
