// `haven host drain HOST`: moves every volume whose primary is HOST to another host with a copy
// recorded in sync, one switchover each (no write lost), so HOST can be taken down for maintenance.
// Volumes with no such host stay where they are and are named; the command then exits non-zero.

import { cliActor } from "../actor.js";
import { HavenError } from "../../core/errors.js";
import { readClusterRecords } from "../../cluster/cluster-read.js";
import { copyHosts, inSyncCopiesOn } from "../../cluster/schema.js";
import { requestSwitchover } from "../../cluster/volume-admin.js";
import { parseCommand } from "../args.js";
import { CLUSTER_OPTIONS, CLUSTER_OPTIONS_USAGE, connectCluster } from "../context.js";
import { waitForSwitchover } from "../switchover-wait.js";

export const HOST_DRAIN_USAGE = `usage: haven host drain HOST [cluster options]

Moves every volume whose primary is HOST to another live host holding a copy recorded in sync (a
switchover each: the engine stops cleanly, the other host serves at a higher epoch). Volumes that have
no such host stay on HOST and are listed; the command then exits 1.

${CLUSTER_OPTIONS_USAGE}`;

export async function hostDrain(argv: string[]): Promise<number> {
  const parsed = parseCommand(argv, { ...CLUSTER_OPTIONS }, HOST_DRAIN_USAGE);
  if (parsed === undefined) return 0; // --help was printed
  const { values, positionals } = parsed;
  if (positionals.length !== 1) throw new HavenError("HAVEN_ERR_USAGE", `give one HOST\n\n${HOST_DRAIN_USAGE}`);
  const host = positionals[0]!;
  const client = connectCluster(values);
  const records = await readClusterRecords(client);
  if (!records.knownHosts.has(host))
    throw new HavenError("HAVEN_ERR_NOT_FOUND", `no host "${host}" in the cluster; 'haven host list' shows them`);
  const stuck: string[] = [];
  let moved = 0;
  for (const [name, primary] of records.primaries) {
    if (primary.host !== host) continue;
    const spec = records.volumes.get(name);
    const target =
      spec &&
      copyHosts(spec)
        .filter((other) => other !== host && records.liveHosts.has(other))
        .find((other) => inSyncCopiesOn(spec, records.replicas.get(name), other).length > 0);
    if (target === undefined) {
      stuck.push(`${name} (no other live host has a copy recorded in sync)`);
      continue;
    }
    const asked = new Date();
    try {
      await requestSwitchover(client, name, target, { actor: cliActor() });
      const done = await waitForSwitchover(client, name, target, asked, 30_000);
      process.stdout.write(`${name}: moved to ${target} (epoch ${done.epoch}, paused ${done.pauseMs} ms)\n`);
      moved++;
    } catch (error) {
      stuck.push(`${name} (${(error as Error).message})`);
    }
  }
  process.stdout.write(`host ${host}: ${moved} volume${moved === 1 ? "" : "s"} moved\n`);
  if (stuck.length > 0) throw new HavenError("HAVEN_ERR_CONFLICT", `host ${host} still serves: ${stuck.join("; ")}`);
  return 0;
}
