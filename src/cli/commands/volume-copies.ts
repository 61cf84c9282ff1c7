// `haven volume add-copy` and `haven volume remove-copy`: a live volume gains or loses a copy with no
// downtime. Adding turns a single-copy volume into a mirror (network RAID, or local RAID1 with --host
// on the primary and another --disk): the copy is recorded out of sync with the spec change, the
// primary's engine builds it while writes go on, and it joins the in-sync set once complete. Removing
// refuses the last in-sync copy (src/cluster/volume-admin.ts says every refusal).

import { cliActor } from "../actor.js";
import { addCopy, removeCopy } from "../../cluster/volume-admin.js";
import { HavenError } from "../../core/errors.js";
import { parseCommand } from "../args.js";
import { CLUSTER_OPTIONS, CLUSTER_OPTIONS_USAGE, connectCluster } from "../context.js";
import { waitForCopies } from "../copy-progress.js";
import { abortOnStopSignal } from "../poll.js";
import { volumeNameArgument } from "../volume-argument.js";

export const VOLUME_ADD_COPY_USAGE = `usage: haven volume add-copy NAME [--host HOST] [--disk DISK] [--no-wait] [--wait-timeout SECONDS] [cluster options]

Adds a copy to a live volume while writes go on: the primary builds it from the in-sync copies and
adds it to the in-sync set once it is complete. Without --host, placement picks the host (one holding
no copy yet, first); --host on a host that holds a copy already, with another --disk, makes a local
mirror (RAID1). Waits, showing progress, until the copy is in sync, unless --no-wait.

options:
  --host HOST             the host for the copy
  --disk DISK             the disk of that host (default: the one with the most free space)
  --no-wait               return once the copy is recorded
  --wait-timeout SECONDS  how long to wait for the copy to be in sync (default 3600)

${CLUSTER_OPTIONS_USAGE}`;

export const VOLUME_REMOVE_COPY_USAGE = `usage: haven volume remove-copy NAME --host HOST --disk DISK [cluster options]

Removes the copy on HOST's DISK from the volume; its data there is deleted. Refused for the last copy
recorded in sync, and for the primary host's only copy (switch the volume over first).

${CLUSTER_OPTIONS_USAGE}`;

function waitSeconds(text: unknown, usage: string): number {
  const value = typeof text === "string" ? text : "3600";
  if (!/^\d{1,6}$/.test(value) || Number(value) === 0)
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `--wait-timeout must be a whole number of seconds above 0, not "${value}"\n\n${usage}`,
    );
  return Number(value);
}

export async function volumeAddCopy(argv: string[]): Promise<number> {
  const parsed = parseCommand(
    argv,
    {
      ...CLUSTER_OPTIONS,
      host: { type: "string" },
      disk: { type: "string" },
      "no-wait": { type: "boolean" },
      "wait-timeout": { type: "string" },
    },
    VOLUME_ADD_COPY_USAGE,
  );
  if (parsed === undefined) return 0;
  const { values, positionals } = parsed;
  const name = volumeNameArgument(positionals, VOLUME_ADD_COPY_USAGE);
  if (values.disk !== undefined && values.host === undefined)
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `--disk needs --host: a disk is named within its host\n\n${VOLUME_ADD_COPY_USAGE}`,
    );
  const seconds = waitSeconds(values["wait-timeout"], VOLUME_ADD_COPY_USAGE);
  const client = connectCluster(values);
  const want = {
    ...(typeof values.host === "string" && { host: values.host }),
    ...(typeof values.disk === "string" && { disk: values.disk }),
  };
  const added = await addCopy(client, name, want, { actor: cliActor() });
  process.stdout.write(`volume ${name}: copy added on ${added.copy.host}/${added.copy.disk}; the primary builds it\n`);
  if (values["no-wait"] === true) return 0;
  const stop = abortOnStopSignal();
  try {
    if (!(await waitForCopies(client, [{ volume: name, copy: added.copy }], seconds * 1000, stop.signal))) {
      process.stderr.write(`stopped waiting; the copy goes on building: follow it with 'haven volume show ${name}'\n`);
      return 130;
    }
  } finally {
    stop.dispose();
  }
  return 0;
}

export async function volumeRemoveCopy(argv: string[]): Promise<number> {
  const parsed = parseCommand(
    argv,
    { ...CLUSTER_OPTIONS, host: { type: "string" }, disk: { type: "string" } },
    VOLUME_REMOVE_COPY_USAGE,
  );
  if (parsed === undefined) return 0;
  const { values, positionals } = parsed;
  const name = volumeNameArgument(positionals, VOLUME_REMOVE_COPY_USAGE);
  if (typeof values.host !== "string" || typeof values.disk !== "string")
    throw new HavenError("HAVEN_ERR_USAGE", `give --host HOST and --disk DISK\n\n${VOLUME_REMOVE_COPY_USAGE}`);
  const client = connectCluster(values);
  const removed = await removeCopy(
    client,
    name,
    { host: values.host, disk: values.disk },
    {
      actor: cliActor(),
    },
  );
  process.stdout.write(
    `volume ${name}: copy on ${removed.copy.host}/${removed.copy.disk} removed; ${removed.spec.replicas.length} ` +
      `cop${removed.spec.replicas.length === 1 ? "y" : "ies"} left\n`,
  );
  return 0;
}
