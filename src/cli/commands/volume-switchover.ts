// `haven volume switchover NAME --to HOST`: a planned move of the primary with no write lost. The
// primary's agent stops the engine cleanly (every copy flushed), hands the primary record over at a
// higher epoch, and HOST's agent starts serving; clients reconnect to the new NBD URI.

import { cliActor } from "../actor.js";
import { HavenError } from "../../core/errors.js";
import { requestSwitchover } from "../../cluster/volume-admin.js";
import { parseCommand } from "../args.js";
import { CLUSTER_OPTIONS, CLUSTER_OPTIONS_USAGE, connectCluster } from "../context.js";
import { waitForSwitchover } from "../../cluster/switchover-wait.js";
import { volumeNameArgument } from "../volume-argument.js";

export const VOLUME_SWITCHOVER_USAGE = `usage: haven volume switchover NAME --to HOST [--no-wait] [--wait-timeout SECONDS] [cluster options]

Moves the volume's primary to HOST, whose copy must be recorded in sync: the current primary stops its
engine cleanly, then HOST serves the volume at a higher epoch. Prints how long no host served it.

options:
  --to HOST               the new primary
  --no-wait               return once the switchover is asked for
  --wait-timeout SECONDS  how long to wait for HOST to serve the volume (default 30)

${CLUSTER_OPTIONS_USAGE}`;

export async function volumeSwitchover(argv: string[]): Promise<number> {
  const parsed = parseCommand(
    argv,
    {
      ...CLUSTER_OPTIONS,
      to: { type: "string" },
      "no-wait": { type: "boolean" },
      "wait-timeout": { type: "string" },
    },
    VOLUME_SWITCHOVER_USAGE,
  );
  if (parsed === undefined) return 0; // --help was printed
  const { values, positionals } = parsed;
  const name = volumeNameArgument(positionals, VOLUME_SWITCHOVER_USAGE);
  if (typeof values.to !== "string")
    throw new HavenError("HAVEN_ERR_USAGE", `give --to HOST\n\n${VOLUME_SWITCHOVER_USAGE}`);
  const timeoutText = typeof values["wait-timeout"] === "string" ? values["wait-timeout"] : "30";
  if (!/^\d{1,5}$/.test(timeoutText) || Number(timeoutText) === 0)
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `--wait-timeout must be a whole number of seconds above 0, not "${timeoutText}"`,
    );
  const client = connectCluster(values);
  const asked = new Date();
  const request = await requestSwitchover(client, name, values.to, { actor: cliActor() });
  process.stdout.write(`switchover of ${name} from ${request.from} to ${request.to} asked\n`);
  if (values["no-wait"] === true) return 0;
  const done = await waitForSwitchover(client, name, request.to, asked, Number(timeoutText) * 1000);
  process.stdout.write(`volume ${name} is served by ${request.to} at epoch ${done.epoch}; paused ${done.pauseMs} ms\n`);
  return 0;
}
