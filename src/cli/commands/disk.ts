// `haven disk ...`: the cluster's disks and the procedures on them, each one command that checks for the
// usual mistakes itself (the 3ware and mdadm procedures it replaces are in issue 15's "Why").
//
//   list      what each agent recorded of its disks (identity, state, real usage) and the copies on each
//   add       a host's agent takes a path: refused if it holds data, a filesystem or another cluster's
//             label, unless --wipe repeats the disk's identity; a block device is formatted and mounted
//   remove    only a disk with no copy on it (else: which volumes, and `disk evacuate`); the identity is
//             printed first and checked again on the host just before the disk is let go
//   evacuate  each copy on the disk moves: a new copy elsewhere is built and in sync first, the old one
//             is released after (a copy that is its host's last, on the primary, moves the primary too)
//   replace   `evacuate` onto one named disk (mdadm --replace): refused if the new disk is too small,
//             holds copies, is not online or is the same device
//   identify  the locate LED of the disk's bay (where the host has one), and its identity, always

import { cliActor } from "../actor.js";
import { readShownRecords } from "../cluster-report.js";
import { readClusterRecords } from "../../cluster/cluster-read.js";
import { diskEntries } from "../../cluster/cluster-view.js";
import { copyId } from "../../cluster/schema.js";
import { HavenError } from "../../core/errors.js";
import { formatBytes } from "../../util/units.js";
import { parseCommand } from "../args.js";
import { renderDiskList } from "../cluster-render.js";
import { CLUSTER_OPTIONS, CLUSTER_OPTIONS_USAGE, connectCluster } from "../context.js";
import { waitForCopies } from "../copy-progress.js";
import { askHost } from "../../cluster/disk-requests.js";
import {
  checkReplacement,
  diskOf,
  identityText,
  knownHost,
  moveDiskCopies,
  planMoves,
} from "../../cluster/disk-moves.js";
import { abortOnStopSignal } from "../poll.js";
import { terminalRenderOptions } from "../terminal.js";
import { WATCH_OPTIONS, WATCH_OPTIONS_USAGE, watchFrames, watchSeconds } from "../watch.js";

export const DISK_USAGE = `usage: haven disk <command> [options] [cluster options]

  disk list [--host HOST] [--json]           the disks: state, use, identity, the copies on each
  disk add HOST PATH [--spare] [--fs ext4|xfs] [--name ID] [--wipe IDENTITY]
                                             give HOST's agent a disk (a block device is formatted and
                                             mounted; a directory is used as it is)
  disk remove HOST DISK                      let go of a disk that holds no copy
  disk evacuate HOST DISK [--wait-timeout S] move every copy off the disk (new copy in sync first)
  disk replace HOST OLD NEW [--wait-timeout S]
                                             move every copy from OLD onto NEW, then release OLD
  disk identify HOST DISK [--off]            light the disk's locate LED and print its identity

A path that holds data, a filesystem or another cluster's label is refused unless --wipe repeats the
disk's identity (its serial, WWN or backing path, as the refusal prints it): that destroys what is on it.
A copy is only ever released once another copy of its volume is in sync.

${CLUSTER_OPTIONS_USAGE}`;

const ANSWER_TIMEOUT_MS = 120_000;
const DEFAULT_WAIT_SECONDS = 3600;

/** Each verb's own usage, for `haven disk VERB --help`. */
export const DISK_VERB_USAGE: Record<string, string> = {
  list: `usage: haven disk list [--host HOST] [--json] [--watch [--interval SECONDS]] [cluster options]

The disks of every host (or of HOST): state, use, identity, and the copies on each.

options:
  --host HOST          only HOST's disks
  --json               print the disks as JSON
${WATCH_OPTIONS_USAGE}

${CLUSTER_OPTIONS_USAGE}`,
  add: `usage: haven disk add HOST PATH [--spare] [--fs ext4|xfs] [--name ID] [--wipe IDENTITY] [cluster options]

Gives HOST's agent a disk: a block device is formatted and mounted, a directory is used as it is. A
path that holds data, a filesystem or another cluster's label is refused unless --wipe repeats the
disk's identity (its serial, WWN or backing path, as the refusal prints it): that destroys what is on it.

options:
  --spare              keep the disk for rebuilds and replacements only
  --fs ext4|xfs        the filesystem made on a block device (default ext4)
  --name ID            the disk's id within its host (a-z, 0-9 and -)
  --wipe IDENTITY      destroy what the disk holds; IDENTITY must match the disk's

${CLUSTER_OPTIONS_USAGE}`,
  remove: `usage: haven disk remove HOST DISK [cluster options]

Lets go of a disk that holds no copy (move them first with 'haven disk evacuate').

${CLUSTER_OPTIONS_USAGE}`,
  evacuate: `usage: haven disk evacuate HOST DISK [--wait-timeout SECONDS] [cluster options]

Moves every copy off the disk, with progress: each copy is released only once a new copy of its
volume is in sync.

options:
  --wait-timeout S     give up waiting after S seconds (default ${DEFAULT_WAIT_SECONDS}; the moves go on)

${CLUSTER_OPTIONS_USAGE}`,
  replace: `usage: haven disk replace HOST OLD NEW [--wait-timeout SECONDS] [cluster options]

Moves every copy from disk OLD onto disk NEW of the same host, then releases OLD. A copy is only
released once its new copy is in sync.

options:
  --wait-timeout S     give up waiting after S seconds (default ${DEFAULT_WAIT_SECONDS}; the moves go on)

${CLUSTER_OPTIONS_USAGE}`,
  identify: `usage: haven disk identify HOST DISK [--off] [cluster options]

Lights the disk's locate LED (where the enclosure has one) and prints its identity.

options:
  --off                turn the LED off again

${CLUSTER_OPTIONS_USAGE}`,
};

function usage(message: string): HavenError {
  return new HavenError("HAVEN_ERR_USAGE", `${message}\n\n${DISK_USAGE}`);
}

function waitSeconds(text: unknown): number {
  if (text === undefined) return DEFAULT_WAIT_SECONDS;
  if (typeof text !== "string" || !/^\d{1,6}$/.test(text) || Number(text) === 0)
    throw usage(`--wait-timeout must be a whole number of seconds above 0, not "${String(text)}"`);
  return Number(text);
}

export async function diskCommand(argv: string[]): Promise<number> {
  const [verb, ...rest] = argv;
  switch (verb) {
    case "list":
      return diskList(rest);
    case "add":
      return diskAdd(rest);
    case "remove":
      return diskRemove(rest);
    case "evacuate":
      return diskMove(rest, "evacuate");
    case "replace":
      return diskMove(rest, "replace");
    case "identify":
      return diskIdentify(rest);
    default:
      throw usage(verb === undefined ? "give a command" : `unknown command "disk ${verb}"`);
  }
}

export async function diskList(argv: string[]): Promise<number> {
  const parsed = parseCommand(
    argv,
    { ...CLUSTER_OPTIONS, ...WATCH_OPTIONS, host: { type: "string" }, json: { type: "boolean" } },
    DISK_VERB_USAGE.list!,
  );
  if (parsed === undefined) return 0;
  const { values, positionals } = parsed;
  if (positionals.length > 0) throw usage(`disk list takes no arguments, not "${positionals[0]}"`);
  const seconds = watchSeconds(values);
  const client = connectCluster(values);
  const host = values.host as string | undefined;
  const json = values.json === true;
  const list = async (): Promise<string> => {
    const records = await readShownRecords(client);
    if (host !== undefined) knownHost(records, host);
    const disks = diskEntries(records).filter((disk) => host === undefined || disk.host === host);
    return json
      ? `${JSON.stringify(disks, null, seconds === undefined ? 2 : undefined)}\n`
      : renderDiskList(disks, terminalRenderOptions());
  };
  if (seconds !== undefined) return watchFrames(list, { seconds, title: "haven disk list", json });
  process.stdout.write(await list());
  return 0;
}

async function diskAdd(argv: string[]): Promise<number> {
  const parsed = parseCommand(
    argv,
    {
      ...CLUSTER_OPTIONS,
      spare: { type: "boolean" },
      fs: { type: "string" },
      name: { type: "string" },
      wipe: { type: "string" },
    },
    DISK_USAGE,
  );
  if (parsed === undefined) return 0;
  const { values, positionals } = parsed;
  if (positionals.length !== 2) throw usage("give HOST and PATH: disk add HOST PATH");
  const [host, path] = positionals as [string, string];
  if (!path.startsWith("/")) throw usage(`PATH must be absolute, not "${path}"`);
  const fs = values.fs as string | undefined;
  if (fs !== undefined && fs !== "ext4" && fs !== "xfs") throw usage(`--fs must be ext4 or xfs, not "${fs}"`);
  const name = values.name as string | undefined;
  if (name !== undefined && !/^[a-z0-9][a-z0-9-]{0,62}$/.test(name))
    throw usage(`--name must be a disk id (a-z, 0-9 and -, at most 63 characters), not "${name}"`);
  const client = connectCluster(values);
  knownHost(await readClusterRecords(client), host);
  const answer = await askHost(
    client,
    host,
    {
      kind: "add",
      path,
      ...(values.spare === true && { spare: true }),
      ...(fs !== undefined && { fs: fs as "ext4" | "xfs" }),
      ...(name !== undefined && { disk: name }),
      ...(typeof values.wipe === "string" && { wipe: values.wipe }),
    },
    ANSWER_TIMEOUT_MS,
    cliActor(),
  );
  if (answer.state === "refused") throw new HavenError("HAVEN_ERR_CONFLICT", `${host}: ${answer.result}`);
  process.stdout.write(`${host}: ${answer.result}\n`);
  return 0;
}

async function diskRemove(argv: string[]): Promise<number> {
  const parsed = parseCommand(argv, { ...CLUSTER_OPTIONS }, DISK_USAGE);
  if (parsed === undefined) return 0;
  const { values, positionals } = parsed;
  if (positionals.length !== 2) throw usage("give HOST and DISK: disk remove HOST DISK");
  const [host, name] = positionals as [string, string];
  const client = connectCluster(values);
  const records = await readClusterRecords(client);
  const disk = diskOf(records, host, name);
  process.stdout.write(`disk ${host}/${name}: ${identityText(disk)}, at ${disk.path || "?"}\n`);
  if (disk.copies.length > 0) {
    const inSyncElsewhere = disk.copies.filter((copy) => {
      const spec = records.volumes.get(copy.volume);
      return (
        spec !== undefined &&
        spec.replicas.some(
          (other) =>
            copyId(other) !== `${host}/${name}` &&
            records.replicas.get(copy.volume)?.get(copyId(other))?.state === "in-sync",
        )
      );
    });
    const last = disk.copies.filter((copy) => !inSyncElsewhere.includes(copy)).map((copy) => copy.volume);
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `disk ${host}/${name} holds copies of ${disk.copies.map((copy) => copy.volume).join(", ")}` +
        (last.length > 0 ? ` (the last copy in sync of ${last.join(", ")})` : "") +
        `: nothing was changed. Move them first: haven disk evacuate ${host} ${name}`,
    );
  }
  const answer = await askHost(
    client,
    host,
    { kind: "remove", disk: name, ...(disk.identity !== null && { identity: identityText(disk) }) },
    ANSWER_TIMEOUT_MS,
    cliActor(),
  );
  if (answer.state === "refused") throw new HavenError("HAVEN_ERR_CONFLICT", `${host}: ${answer.result}`);
  process.stdout.write(`${host}: ${answer.result}\n`);
  return 0;
}

async function diskIdentify(argv: string[]): Promise<number> {
  const parsed = parseCommand(argv, { ...CLUSTER_OPTIONS, off: { type: "boolean" } }, DISK_USAGE);
  if (parsed === undefined) return 0;
  const { values, positionals } = parsed;
  if (positionals.length !== 2) throw usage("give HOST and DISK: disk identify HOST DISK");
  const [host, name] = positionals as [string, string];
  const client = connectCluster(values);
  const disk = diskOf(await readClusterRecords(client), host, name);
  process.stdout.write(`disk ${host}/${name}: ${identityText(disk)}, at ${disk.path || "?"}\n`);
  const answer = await askHost(
    client,
    host,
    { kind: "identify", disk: name, off: values.off === true },
    ANSWER_TIMEOUT_MS,
    cliActor(),
  );
  if (answer.state === "refused") throw new HavenError("HAVEN_ERR_CONFLICT", `${host}: ${answer.result}`);
  process.stdout.write(`${host}: ${answer.result}\n`);
  return 0;
}

async function diskMove(argv: string[], kind: "evacuate" | "replace"): Promise<number> {
  const parsed = parseCommand(argv, { ...CLUSTER_OPTIONS, "wait-timeout": { type: "string" } }, DISK_USAGE);
  if (parsed === undefined) return 0;
  const { values, positionals } = parsed;
  const want = kind === "evacuate" ? 2 : 3;
  if (positionals.length !== want)
    throw usage(
      kind === "evacuate"
        ? "give HOST and DISK: disk evacuate HOST DISK"
        : "give HOST, OLD and NEW: disk replace HOST OLD NEW",
    );
  const [host, name, onto] = positionals as [string, string, string | undefined];
  const seconds = waitSeconds(values["wait-timeout"]);
  const client = connectCluster(values);
  const records = await readClusterRecords(client);
  const disk = diskOf(records, host, name);
  process.stdout.write(`disk ${host}/${name}: ${identityText(disk)}, at ${disk.path || "?"}\n`);
  if (onto !== undefined) checkReplacement(records, disk, diskOf(records, host, onto));
  if (disk.copies.length === 0) {
    process.stdout.write(`disk ${host}/${name} holds no copy: nothing to move${kind === "replace" ? "" : ""}\n`);
    return 0;
  }
  const moves = planMoves(records, host, name, onto);
  const started = Date.now();
  const stop = abortOnStopSignal();
  try {
    const outcome = await moveDiskCopies(client, moves, kind, {
      actor: cliActor(),
      timeoutMs: seconds * 1000,
      signal: stop.signal,
      write: (text) => process.stdout.write(text),
      waitForCopies: (store, copies, timeoutMs, signal) => waitForCopies(store, copies, timeoutMs, signal),
    });
    if (!outcome.done) {
      const move = outcome.stoppedAt;
      process.stderr.write(
        `stopped; ${copyId(move.from)} still holds ${move.spec.name}: run the command again to go on\n`,
      );
      return 130;
    }
  } finally {
    stop.dispose();
  }
  const total = moves.reduce((sum, move) => sum + move.spec.sizeBytes, 0);
  const elapsed = (Date.now() - started) / 1000;
  process.stdout.write(
    `disk ${host}/${name}: ${moves.length} cop${moves.length === 1 ? "y" : "ies"} moved (${formatBytes(total)}) in ` +
      `${elapsed.toFixed(1)} s; it holds no copy now and may be removed: haven disk remove ${host} ${name}\n`,
  );
  return 0;
}
