// `haven volume promote NAME --host HOST --force`: the explicit, logged way to bring back a volume that
// is down because no copy on a live host is recorded in sync. It may lose acknowledged writes (those
// only the unreachable copies had), so it refuses without --force and says what it risks.

import { cliActor } from "../actor.js";
import { HavenError } from "../../core/errors.js";
import { forcePromote } from "../../cluster/volume-admin.js";
import { readClusterRecords } from "../../cluster/cluster-read.js";
import { parseCommand } from "../args.js";
import { CLUSTER_OPTIONS, CLUSTER_OPTIONS_USAGE, connectCluster } from "../context.js";
import { volumeNameArgument } from "../volume-argument.js";

export const VOLUME_PROMOTE_USAGE = `usage: haven volume promote NAME --host HOST --force [cluster options]

Makes HOST's copy the volume's primary at a higher epoch, even though it is not recorded in sync. Only
for a volume that is down (its primary's host is gone) with no in-sync copy on a live host: writes that
only the other copies had are lost. Refused while the recorded primary's host is alive.

options:
  --host HOST   the host whose copy becomes the primary (it must hold a copy and a cluster lease)
  --force       confirm that acknowledged writes may be lost

${CLUSTER_OPTIONS_USAGE}`;

export async function volumePromote(argv: string[]): Promise<number> {
  const parsed = parseCommand(
    argv,
    {
      ...CLUSTER_OPTIONS,
      host: { type: "string" },
      force: { type: "boolean" },
    },
    VOLUME_PROMOTE_USAGE,
  );
  if (parsed === undefined) return 0; // --help was printed
  const { values, positionals } = parsed;
  const name = volumeNameArgument(positionals, VOLUME_PROMOTE_USAGE);
  if (typeof values.host !== "string")
    throw new HavenError("HAVEN_ERR_USAGE", `give --host HOST\n\n${VOLUME_PROMOTE_USAGE}`);
  const client = connectCluster(values);
  if (values.force !== true) {
    // While the primary lives, --force would be refused too: the move that works is a switchover.
    const records = await readClusterRecords(client);
    if (!records.knownHosts.has(values.host))
      throw new HavenError(
        "HAVEN_ERR_NOT_FOUND",
        `there is no host "${values.host}" in the cluster (hosts: ${[...records.knownHosts.keys()].sort().join(", ") || "none"})`,
      );
    const primary = records.primaries.get(name);
    if (primary !== undefined && records.liveHosts.has(primary.host) && primary.host !== values.host)
      throw new HavenError(
        "HAVEN_ERR_CONFLICT",
        `volume ${name}'s primary ${primary.host} is alive: promote is only for a volume whose primary's host ` +
          `is gone. To move the primary to ${values.host} with no write lost: ` +
          `haven volume switchover ${name} --to ${values.host}`,
      );
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `promoting ${values.host} without an in-sync record may lose acknowledged writes that only other copies ` +
        `had; nothing was changed. To go ahead: haven volume promote ${name} --host ${values.host} --force`,
    );
  }
  const primary = await forcePromote(client, name, values.host, { actor: cliActor() });
  process.stdout.write(
    `volume ${name}: ${primary.host} is the primary at epoch ${primary.epoch}; its agent starts serving it\n`,
  );
  return 0;
}
