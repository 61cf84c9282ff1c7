// Moving every copy off a disk, as `haven disk evacuate` and `disk replace` (and the dashboard's disk
// replace) do: for each copy on the disk, a new copy is placed (on the named disk for a replace, else
// another disk of the host with room, else another host), built and recorded in sync first; a copy
// that is its host's last on the volume's primary moves the primary with a switchover; only then is
// the old copy released. The checks a replacement disk must pass come first, before anything changes.
// Progress lines go to `write`; how a new copy is waited for is the caller's (the CLI draws progress
// bars, the dashboard reports lines).

import { HavenError, errorMessage } from "../core/errors.js";
import { formatBytes } from "../util/units.js";
import { readClusterRecords, type ClusterRecords } from "./cluster-read.js";
import { diskEntries, type DiskView } from "./cluster-view.js";
import { placeAnotherCopy, withDiskRecords } from "./placement.js";
import { copiesOn, copyId, type CopyPlace, type VolumeSpec } from "./schema.js";
import type { ClusterStore } from "./store.js";
import { waitForSwitchover } from "./switchover-wait.js";
import { addCopy, removeCopy, requestSwitchover } from "./volume-admin.js";

export interface DiskMoveOptions {
  readonly actor: string;
  /** Bound on building each new copy, and on each switchover. */
  readonly timeoutMs: number;
  readonly signal: AbortSignal;
  /** Progress lines, each ending in a newline. */
  readonly write: (text: string) => void;
  /** Waits until the copies are recorded in sync; resolves false when stopped. */
  readonly waitForCopies: (
    client: ClusterStore,
    copies: readonly { readonly volume: string; readonly copy: CopyPlace }[],
    timeoutMs: number,
    signal: AbortSignal,
  ) => Promise<boolean>;
}

/** What moveDiskCopies did: every move, or the one it stopped before finishing. */
export type DiskMoveOutcome =
  { readonly done: true; readonly moves: readonly DiskMove[] } | { readonly done: false; readonly stoppedAt: DiskMove };

/**
 * Moves each of `moves` (planMoves'): builds the new copy, moves the primary off the old one when
 * it must, releases the old one. `kind` is what the events give as the reason.
 */
export async function moveDiskCopies(
  client: ClusterStore,
  moves: readonly DiskMove[],
  kind: "evacuate" | "replace",
  options: DiskMoveOptions,
): Promise<DiskMoveOutcome> {
  for (const [index, move] of moves.entries()) {
    const label = `[${index + 1}/${moves.length}] ${move.spec.name}`;
    const reason = `disk ${kind} of ${copyId(move.from)}`;
    options.write(`${label}: building a copy on ${copyId(move.to)} to take over from ${copyId(move.from)}\n`);
    await addCopy(client, move.spec.name, move.to, { actor: options.actor, reason });
    const copies = [{ volume: move.spec.name, copy: move.to }];
    if (!(await options.waitForCopies(client, copies, options.timeoutMs, options.signal)))
      return { done: false, stoppedAt: move };
    await moveOffPrimary(client, move, options.timeoutMs, options);
    await removeCopy(client, move.spec.name, move.from, { actor: options.actor, reason });
    options.write(`${label}: ${copyId(move.from)} released\n`);
  }
  return { done: true, moves };
}

export function knownHost(records: ClusterRecords, host: string): void {
  if (!records.knownHosts.has(host))
    throw new HavenError("HAVEN_ERR_NOT_FOUND", `no host "${host}" in the cluster; 'haven host list' shows them`);
}

/** HOST/DISK as `disk list` shows it; refused when the host or the disk is not on record. */
export function diskOf(records: ClusterRecords, host: string, disk: string): DiskView {
  knownHost(records, host);
  const found = diskEntries(records).find((entry) => entry.host === host && entry.disk === disk);
  if (found === undefined)
    throw new HavenError(
      "HAVEN_ERR_NOT_FOUND",
      `host ${host} has no disk "${disk}"; 'haven disk list --host ${host}' shows them`,
    );
  return found;
}

/** A disk's identity in words, as disk-identity.ts formatIdentity writes it ("serial S3Z1..."). */
export function identityText(disk: DiskView): string {
  return disk.identity === null ? "identity unknown" : `${disk.identity.kind} ${disk.identity.value}`;
}

/** One copy to move: from the disk being emptied to where it goes. */
export interface DiskMove {
  readonly spec: VolumeSpec;
  readonly from: CopyPlace;
  readonly to: CopyPlace;
}

/** Where each copy on HOST/DISK goes: another disk of HOST when it has room, else another host; or why not. */
export function planMoves(records: ClusterRecords, host: string, disk: string, onto: string | undefined): DiskMove[] {
  const from = { host, disk };
  const moves: DiskMove[] = [];
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

/** A copy that is its host's last one on the volume's primary: the primary moves to the new copy's host first. */
async function moveOffPrimary(
  client: ClusterStore,
  move: DiskMove,
  timeoutMs: number,
  options: DiskMoveOptions,
): Promise<void> {
  const records = await readClusterRecords(client);
  const primary = records.primaries.get(move.spec.name);
  const spec = records.volumes.get(move.spec.name);
  if (primary === undefined || spec === undefined || primary.host !== move.from.host) return;
  if (copiesOn(spec, move.from.host).length > 1) return;
  const asked = new Date();
  options.write(`  ${move.spec.name}: its primary moves from ${move.from.host} to ${move.to.host} first\n`);
  await requestSwitchover(client, move.spec.name, move.to.host, { actor: options.actor });
  await waitForSwitchover(client, move.spec.name, move.to.host, asked, timeoutMs);
}

/** The checks `disk replace` makes of NEW before anything changes. */
export function checkReplacement(records: ClusterRecords, old: DiskView, replacement: DiskView): void {
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
