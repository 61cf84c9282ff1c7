// `haven volume delete NAME --yes`: removes a volume from the cluster. The agents then stop its engine
// and remove every copy, so the data is gone for good: the command refuses without --yes.

import { cliActor } from "../actor.js";
import { HavenError } from "../../core/errors.js";
import { deleteVolume } from "../../cluster/volume-admin.js";
import { keys, parseVolumeSpec } from "../../cluster/schema.js";
import { parseCommand } from "../args.js";
import { CLUSTER_OPTIONS, CLUSTER_OPTIONS_USAGE, connectCluster } from "../context.js";
import { volumeNameArgument } from "../volume-argument.js";

export const VOLUME_DELETE_USAGE = `usage: haven volume delete NAME --yes [cluster options]

Deletes a volume: its record, its primary and its copies' records go at once, then each host's agent
stops the volume's engine and removes its copy. The data on every copy is destroyed.

options:
  --yes                confirm that the volume's data on every copy is to be destroyed

${CLUSTER_OPTIONS_USAGE}`;

export async function volumeDelete(argv: string[]): Promise<number> {
  const parsed = parseCommand(argv, { ...CLUSTER_OPTIONS, yes: { type: "boolean" } }, VOLUME_DELETE_USAGE);
  if (parsed === undefined) return 0; // --help was printed
  const { values, positionals } = parsed;
  const name = volumeNameArgument(positionals, VOLUME_DELETE_USAGE);
  const client = connectCluster(values);
  if (values.yes !== true) {
    // Name the copies that would go, so the operator sees what --yes destroys.
    const kv = await client.get(keys.volume(name));
    if (kv === undefined) {
      throw new HavenError("HAVEN_ERR_NOT_FOUND", `no volume "${name}" in the cluster; 'haven volume list' shows them`);
    }
    const copies = parseVolumeSpec(kv.value, kv.key).replicas.map(({ host, disk }) => `${host}/${disk}`);
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `deleting volume ${name} destroys its data on every copy (${copies.join(", ")}); ` +
        `nothing was deleted. To go ahead: haven volume delete ${name} --yes`,
    );
  }
  const spec = await deleteVolume(client, name, { actor: cliActor() });
  process.stdout.write(
    `deleted volume ${name}; the agents stop its engine and remove its ${spec.replicas.length} ` +
      `cop${spec.replicas.length === 1 ? "y" : "ies"}\n`,
  );
  return 0;
}
