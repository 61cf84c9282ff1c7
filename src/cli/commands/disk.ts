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
import { readClusterRecords, type ClusterRecords } from "../../cluster/cluster-read.js";
import { diskEntries, type DiskView } from "../../cluster/cluster-view.js";
import type { EtcdClient } from "../../cluster/etcd-client.js";
import { placeAnotherCopy, withDiskRecords } from "../../cluster/placement.js";
import { copiesOn, copyId, type CopyPlace, type VolumeSpec } from "../../cluster/schema.js";
import { addCopy, removeCopy, requestSwitchover } from "../../cluster/volume-admin.js";
import { HavenError, errorMessage } from "../../core/errors.js";
import { formatIdentity, type DiskIdentity } from "../../disk/disk-identity.js";
import { formatBytes } from "../../util/units.js";
import { parseCommand } from "../args.js";
import { renderDiskList } from "../cluster-render.js";
import { CLUSTER_OPTIONS, CLUSTER_OPTIONS_USAGE, connectCluster } from "../context.js";
import { waitForCopies } from "../copy-progress.js";
import { askHost } from "../../cluster/disk-requests.js";
import { abortOnStopSignal } from "../poll.js";
import { waitForSwitchover } from "../../cluster/switchover-wait.js";
import { terminalRenderOptions } from "../terminal.js";

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

function usage(message: string): HavenError {
  return new HavenError("HAVEN_ERR_USAGE", `${message}\n\n${DISK_USAGE}`);
}

function actor(): { actor: string } {
  return { actor: cliActor() };
}

function knownHost(records: ClusterRecords, host: string): void {
  if (!records.knownHosts.has(host))
    throw new HavenError("HAVEN_ERR_NOT_FOUND", `no host "${host}" in the cluster; 'haven host list' shows them`);
}

function diskOf(records: ClusterRecords, host: string, disk: string): DiskView {
  knownHost(records, host);
  const found = diskEntries(records).find((entry) => entry.host === host && entry.disk === disk);
  if (found === undefined)
    throw new HavenError(
      "HAVEN_ERR_NOT_FOUND",
      `host ${host} has no disk "${disk}"; 'haven disk list --host ${host}' shows them`,
    );
  return found;
}

function identityText(disk: DiskView): string {
  return disk.identity === null ? "identity unknown" : formatIdentity(disk.identity as DiskIdentity);
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
    { ...CLUSTER_OPTIONS, host: { type: "string" }, json: { type: "boolean" } },
    DISK_USAGE,
  );
  if (parsed === undefined) return 0;
  const { values, positionals } = parsed;
  if (positionals.length > 0) throw usage(`disk list takes no arguments, not "${positionals[0]}"`);
  const records = await readShownRecords(connectCluster(values));
  const host = values.host as string | undefined;
  if (host !== undefined) knownHost(records, host);
  const disks = diskEntries(records).filter((disk) => host === undefined || disk.host === host);
  process.stdout.write(
    values.json ? `${JSON.stringify(disks, null, 2)}\n` : renderDiskList(disks, terminalRenderOptions()),
  );
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

/** One copy to move: from the disk being emptied to where it goes. */
interface Move {
  readonly spec: VolumeSpec;
  readonly from: CopyPlace;
  readonly to: CopyPlace;
}

/** Where each copy on HOST/DISK goes: another disk of HOST when it has room, else another host; or why not. */
function planMoves(records: ClusterRecords, host: string, disk: string, onto: string | undefined): Move[] {
  const from = { host, disk };
  const moves: Move[] = [];
  const stuck: string[] = [];
  let existing = [...records.volumes.values()];
  for (const spec of existing.filter((volume) => volume.replicas.some((copy) => copyId(copy) === copyId(from)))) {
    const live = (want: { host?: string; disk?: string }) =>
      withDiskRecords([...records.liveHosts.values()], records.disks, existing, want);
    let to: CopyPlace | undefined;
    const tries: { host?: string; disk?: string }[] = onto !== undefined ? [{ host, disk: onto }] : [{ host }, {}];
    const reasons: string[] = [];
    for (const want of tries) {
      try {
        to = placeAnotherCopy(live(want), existing, spec, want, records.health);
        break;
      } catch (error) {
        reasons.push(errorMessage(error));
      }
    }
    if (to === undefined) {
      stuck.push(`${spec.name}: ${reasons.join("; ")}`);
      continue;
    }
    moves.push({ spec, from, to });
    // Later copies are placed knowing this one's room is taken.
    existing = existing.map((volume) =>
      volume.name === spec.name ? { ...volume, replicas: [...volume.replicas, to!] } : volume,
    );
  }
  if (stuck.length > 0)
    throw new HavenError(
      "HAVEN_ERR_NO_SPACE",
      `nowhere to move ${stuck.length === 1 ? "a copy" : `${stuck.length} copies`} off ${host}/${disk}, so nothing was changed:\n  ${stuck.join("\n  ")}\n` +
        "add a disk ('haven disk add') or a host, then run it again",
    );
  return moves;
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
    for (const [index, move] of moves.entries()) {
      const label = `[${index + 1}/${moves.length}] ${move.spec.name}`;
      process.stdout.write(`${label}: building a copy on ${copyId(move.to)} to take over from ${copyId(move.from)}\n`);
      await addCopy(client, move.spec.name, move.to, { ...actor(), reason: `disk ${kind} of ${host}/${name}` });
      if (!(await waitForCopies(client, [{ volume: move.spec.name, copy: move.to }], seconds * 1000, stop.signal))) {
        process.stderr.write(
          `stopped; ${copyId(move.from)} still holds ${move.spec.name}: run the command again to go on\n`,
        );
        return 130;
      }
      await moveOffPrimary(client, move, seconds);
      await removeCopy(client, move.spec.name, move.from, { ...actor(), reason: `disk ${kind} of ${host}/${name}` });
      process.stdout.write(`${label}: ${copyId(move.from)} released\n`);
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

/** A copy that is its host's last one on the volume's primary: the primary moves to the new copy's host first. */
async function moveOffPrimary(client: EtcdClient, move: Move, seconds: number): Promise<void> {
  const records = await readClusterRecords(client);
  const primary = records.primaries.get(move.spec.name);
  const spec = records.volumes.get(move.spec.name);
  if (primary === undefined || spec === undefined || primary.host !== move.from.host) return;
  if (copiesOn(spec, move.from.host).length > 1) return;
  const asked = new Date();
  process.stdout.write(`  ${move.spec.name}: its primary moves from ${move.from.host} to ${move.to.host} first\n`);
  await requestSwitchover(client, move.spec.name, move.to.host, actor());
  await waitForSwitchover(client, move.spec.name, move.to.host, asked, seconds * 1000);
}

/** The checks `disk replace` makes of NEW before anything changes. */
function checkReplacement(records: ClusterRecords, old: DiskView, replacement: DiskView): void {
  const refuse = (why: string): never => {
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `disk ${old.host}/${replacement.disk} cannot replace ${old.disk}: ${why}; nothing was changed`,
    );
  };
  if (replacement.disk === old.disk) refuse("it is the same disk");
  if (
    old.identity !== null &&
    replacement.identity !== null &&
    old.identity.kind === replacement.identity.kind &&
    old.identity.value === replacement.identity.value
  )
    refuse(`it is the same device (${identityText(old)})`);
  if (replacement.state !== "online") refuse(`it is ${replacement.state} (${replacement.reason})`);
  if (replacement.copies.length > 0)
    refuse(`it holds copies of ${replacement.copies.map((copy) => copy.volume).join(", ")} already`);
  const needed = old.copies.reduce((sum, copy) => sum + (records.volumes.get(copy.volume)?.sizeBytes ?? 0), 0);
  if (replacement.freeBytes < needed)
    refuse(
      `it has ${formatBytes(replacement.freeBytes)} free, and the copies on ${old.disk} need ${formatBytes(needed)}`,
    );
}
