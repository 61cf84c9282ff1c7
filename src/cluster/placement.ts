// Placement: which hosts and disks get the copies of a new volume. Pure and deterministic, so that the
// same cluster state always gives the same answer and a test can check the rules exhaustively.
//
// The model: each copy goes on a different live host (a host lost must cost at most one copy), on the
// disk of that host with the most free space. Free space is what the host reports (capacity - used)
// minus what the cluster has already promised to existing volumes' copies on that disk, since an agent
// may report a disk before it has allocated the copies it was given. Load is spread by preferring
// hosts with fewer copies, then hosts with more free space; equal hosts are ordered by name. A disk
// whose probe failed in its host's latest health check is never chosen (a disk without a probe yet
// counts as healthy: the lease says the host is alive, and the probe will follow).
//
// Local RAID1 is the same model with a host allowed twice, on different disks: `mirrorFirst` gives the
// first host a second copy on its next-best disk, an operator may name every copy's place, and a copy
// added to a live volume (placeAnotherCopy) goes on a disk holding no copy of the volume yet. Two
// copies of a volume never share a disk.

import assert from "node:assert/strict";
import { HavenError } from "../core/errors.js";
import { formatBytes } from "../util/units.js";
import type { DiskRecord } from "./disk-schema.js";
import type { HostHealthRecord, HostRecord, VolumeSpec } from "./schema.js";

export interface Placement {
  readonly host: string;
  readonly disk: string;
}

interface Candidate {
  readonly host: string;
  readonly disk: string;
  readonly freeBytes: number;
  readonly copies: number;
}

/** Bytes promised to existing copies, by host and then disk. */
function promisedBytes(existing: readonly VolumeSpec[]): Map<string, Map<string, number>> {
  const promised = new Map<string, Map<string, number>>();
  for (const volume of existing) {
    for (const { host, disk } of volume.replicas) {
      const disks = promised.get(host) ?? new Map<string, number>();
      disks.set(disk, (disks.get(disk) ?? 0) + volume.sizeBytes);
      promised.set(host, disks);
    }
  }
  return promised;
}

function copiesPerHost(existing: readonly VolumeSpec[]): Map<string, number> {
  const copies = new Map<string, number>();
  for (const volume of existing) {
    for (const { host } of volume.replicas) copies.set(host, (copies.get(host) ?? 0) + 1);
  }
  return copies;
}

/** The disks a health check found failed, by name, with what failed. */
function failedDisks(health: HostHealthRecord | undefined): Map<string, string> {
  const failed = new Map<string, string>();
  for (const disk of health?.disks ?? []) if (!disk.ok) failed.set(disk.name, disk.detail);
  return failed;
}

/** A host's best disk for the copy (never one in `taken`), or why none will do. */
function bestDisk(
  host: HostRecord,
  promised: ReadonlyMap<string, number> | undefined,
  failed: ReadonlyMap<string, string>,
  sizeBytes: number,
  taken: ReadonlySet<string> = new Set(),
  only?: string,
): { disk: string; freeBytes: number } | { reason: string } {
  const offered = host.disks.filter((disk) => only === undefined || disk.name === only);
  if (offered.length === 0)
    return { reason: only === undefined ? "has no disks" : `has no disk ${only} (its disks: ${diskNames(host)})` };
  const failures = offered
    .filter((disk) => failed.has(disk.name))
    .map((disk) => `disk ${disk.name} failed its health check (${failed.get(disk.name)})`);
  const holding = offered
    .filter((disk) => taken.has(disk.name))
    .map((disk) => `disk ${disk.name} holds a copy of the volume already`);
  const usable = offered.filter((disk) => !failed.has(disk.name) && !taken.has(disk.name));
  if (usable.length === 0) return { reason: `has no usable disk: ${[...holding, ...failures].join(", ")}` };
  const disks = usable
    .map((disk) => ({
      disk: disk.name,
      freeBytes: disk.capacityBytes - disk.usedBytes - (promised?.get(disk.name) ?? 0),
    }))
    .sort((a, b) => b.freeBytes - a.freeBytes || compareNames(a.disk, b.disk));
  const largest = disks[0]!;
  if (largest.freeBytes < sizeBytes) {
    const free = Math.max(0, largest.freeBytes);
    const also = failures.length > 0 ? `, and ${failures.join(", ")}` : "";
    return {
      reason: `has no disk with ${formatBytes(sizeBytes)} free (most free: ${largest.disk}, ${formatBytes(free)})${also}`,
    };
  }
  return largest;
}

function diskNames(host: HostRecord): string {
  return host.disks.map((disk) => disk.name).join(", ") || "none";
}

function compareNames(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Chooses `count` distinct hosts among `hosts` (the live ones) and a disk on each for a new volume of
 * `sizeBytes`, the preferred host first, skipping every disk that `health` (each host's latest health
 * check, by host name) records as failed. Fails with HAVEN_ERR_NO_SPACE, saying which hosts do not
 * qualify and why, when fewer than `count` hosts can take a copy.
 */
export function placeReplicas(
  hosts: readonly HostRecord[],
  existing: readonly VolumeSpec[],
  sizeBytes: number,
  count: number,
  health: ReadonlyMap<string, HostHealthRecord> = new Map(),
  options: {
    readonly mirrorFirst?: boolean;
    /** The hosts the first copy (the primary) may go on, with why each other live host may not. */
    readonly primaryAmong?: { readonly hosts: ReadonlySet<string>; readonly why: string };
  } = {},
): Placement[] {
  assert.ok(Number.isSafeInteger(sizeBytes) && sizeBytes > 0, `volume size ${sizeBytes} is not a positive integer`);
  assert.ok(Number.isSafeInteger(count) && count > 0, `copy count ${count} is not a positive integer`);
  assert.equal(new Set(hosts.map((host) => host.name)).size, hosts.length, "host names must be distinct");

  const promised = promisedBytes(existing);
  const copies = copiesPerHost(existing);
  const candidates: Candidate[] = [];
  const refusals: string[] = [];
  for (const host of [...hosts].sort((a, b) => compareNames(a.name, b.name))) {
    const best = bestDisk(host, promised.get(host.name), failedDisks(health.get(host.name)), sizeBytes);
    if ("reason" in best) refusals.push(`${host.name} ${best.reason}`);
    else candidates.push({ host: host.name, ...best, copies: copies.get(host.name) ?? 0 });
  }

  if (candidates.length < count) {
    const qualify = `${candidates.length} of ${hosts.length} live host${hosts.length === 1 ? "" : "s"}`;
    const why = refusals.length > 0 ? `: ${refusals.join("; ")}` : "";
    throw new HavenError(
      "HAVEN_ERR_NO_SPACE",
      `a volume of ${formatBytes(sizeBytes)} with ${count} cop${count === 1 ? "y" : "ies"} needs ${count} ` +
        `different live hosts with room for it, but only ${qualify} qualif${candidates.length === 1 ? "ies" : "y"}${why}`,
    );
  }

  candidates.sort((a, b) => a.copies - b.copies || b.freeBytes - a.freeBytes || compareNames(a.host, b.host));
  const among = options.primaryAmong;
  if (among !== undefined) {
    // The best candidate allowed to be primary goes first; the others keep their order.
    const first = candidates.findIndex((candidate) => among.hosts.has(candidate.host));
    if (first < 0) {
      const why = [...among.hosts].map(
        (host) => refusals.find((refusal) => refusal.startsWith(`${host} `)) ?? `${host} is not live`,
      );
      throw new HavenError(
        "HAVEN_ERR_NO_SPACE",
        `the primary of a volume of ${formatBytes(sizeBytes)} must go on ${[...among.hosts].join(" or ")} ` +
          `(${among.why}), but ${why.join("; ")}`,
      );
    }
    candidates.unshift(...candidates.splice(first, 1));
  }
  const chosen = candidates.slice(0, count).map(({ host, disk }) => ({ host, disk }));
  assert.equal(new Set(chosen.map((placement) => placement.host)).size, count, "placement chose a host twice");
  for (const { host, disk } of chosen) {
    assert.ok(!failedDisks(health.get(host)).has(disk), `placement chose ${host}/${disk}, which failed its check`);
  }
  if (!options.mirrorFirst) return chosen;
  // Local RAID1: the first host's second copy, on another of its disks.
  const first = hosts.find((host) => host.name === chosen[0]!.host)!;
  const promisedThere = new Map(promised.get(first.name));
  promisedThere.set(chosen[0]!.disk, (promisedThere.get(chosen[0]!.disk) ?? 0) + sizeBytes);
  const second = bestDisk(
    first,
    promisedThere,
    failedDisks(health.get(first.name)),
    sizeBytes,
    new Set([chosen[0]!.disk]),
  );
  if ("reason" in second)
    throw new HavenError(
      "HAVEN_ERR_NO_SPACE",
      `a local mirror needs a second disk on ${first.name} for a copy of ${formatBytes(sizeBytes)}, but ${first.name} ${second.reason}`,
    );
  return [chosen[0]!, { host: first.name, disk: second.disk }, ...chosen.slice(1)];
}

/**
 * Checks copies an operator placed by name (--copies HOST:DISK,...): each host live with that disk, not
 * failed, with room, and no disk named twice. The first is the primary. Fails with the reason.
 */
export function checkPlacement(
  hosts: readonly HostRecord[],
  existing: readonly VolumeSpec[],
  sizeBytes: number,
  places: readonly Placement[],
  health: ReadonlyMap<string, HostHealthRecord> = new Map(),
): Placement[] {
  const promised = promisedBytes(existing);
  const seen = new Set<string>();
  for (const place of places) {
    const id = `${place.host}/${place.disk}`;
    if (seen.has(id))
      throw new HavenError(
        "HAVEN_ERR_USAGE",
        `two copies cannot share disk ${id}: name a different disk for each copy`,
      );
    seen.add(id);
    const host = hosts.find((candidate) => candidate.name === place.host);
    if (host === undefined)
      throw new HavenError("HAVEN_ERR_UNAVAILABLE", `host ${place.host} is not a live host of the cluster`);
    const onHost = promised.get(place.host) ?? new Map<string, number>();
    const fit = bestDisk(host, onHost, failedDisks(health.get(place.host)), sizeBytes, new Set(), place.disk);
    if ("reason" in fit)
      throw new HavenError("HAVEN_ERR_NO_SPACE", `cannot place a copy on ${id}: ${place.host} ${fit.reason}`);
    onHost.set(place.disk, (onHost.get(place.disk) ?? 0) + sizeBytes);
    promised.set(place.host, onHost);
  }
  return [...places];
}

/**
 * Where one more copy of live volume `spec` goes: on `want.host` (and `want.disk`) when given, else on
 * the best host, never on a disk that holds a copy of the volume already. A host that holds a copy is
 * chosen only when asked for (a local mirror) or when no other host qualifies.
 */
export function placeAnotherCopy(
  hosts: readonly HostRecord[],
  existing: readonly VolumeSpec[],
  spec: VolumeSpec,
  want: { readonly host?: string; readonly disk?: string },
  health: ReadonlyMap<string, HostHealthRecord> = new Map(),
): Placement {
  const promised = promisedBytes(existing.filter((volume) => volume.name !== spec.name).concat([spec]));
  const copies = copiesPerHost(existing);
  const holding = new Set(spec.replicas.map((copy) => copy.host));
  const refusals: string[] = [];
  const candidates: Candidate[] = [];
  const eligible = want.host === undefined ? hosts : hosts.filter((host) => host.name === want.host);
  if (want.host !== undefined && eligible.length === 0)
    throw new HavenError("HAVEN_ERR_UNAVAILABLE", `host ${want.host} is not a live host of the cluster`);
  for (const host of [...eligible].sort((a, b) => compareNames(a.name, b.name))) {
    const taken = new Set(spec.replicas.filter((copy) => copy.host === host.name).map((copy) => copy.disk));
    const best = bestDisk(
      host,
      promised.get(host.name),
      failedDisks(health.get(host.name)),
      spec.sizeBytes,
      taken,
      want.disk,
    );
    if ("reason" in best) refusals.push(`${host.name} ${best.reason}`);
    else candidates.push({ host: host.name, ...best, copies: copies.get(host.name) ?? 0 });
  }
  if (candidates.length === 0)
    throw new HavenError(
      "HAVEN_ERR_NO_SPACE",
      `no disk can take another copy of ${spec.name} (${formatBytes(spec.sizeBytes)}): ${refusals.join("; ")}`,
    );
  candidates.sort(
    (a, b) =>
      Number(holding.has(a.host)) - Number(holding.has(b.host)) ||
      a.copies - b.copies ||
      b.freeBytes - a.freeBytes ||
      compareNames(a.host, b.host),
  );
  return { host: candidates[0]!.host, disk: candidates[0]!.disk };
}

/**
 * The hosts as placement should see them, given their disks' records (disk-schema.ts): a disk's room is
 * what its filesystem has free plus what its own copies have allocated (so that promising each copy its
 * whole size does not count the allocated part twice), capped by what the host's config allows, minus
 * what copies on other disks of the same filesystem may still grow into (a local cluster's hosts, or two
 * directories on one filesystem, share its free space). Disks that are not online (failed, missing,
 * foreign, new) and spares take no new copy, unless the spare is `named`. A host or disk without a record is left as it reported itself.
 */
export function withDiskRecords(
  hosts: readonly HostRecord[],
  disks: ReadonlyMap<string, DiskRecord>,
  existing: readonly VolumeSpec[],
  /** A spare named by the operator (disk replace, add-copy --disk), which takes copies all the same. */
  named?: { readonly host?: string; readonly disk?: string },
): HostRecord[] {
  if (disks.size === 0) return [...hosts];
  const promised = promisedBytes(existing);
  const growth = new Map<string, number>();
  for (const disk of disks.values()) {
    const allocated = disk.copies.reduce((sum, copy) => sum + copy.allocatedBytes, 0);
    const room = Math.max(0, (promised.get(disk.host)?.get(disk.disk) ?? 0) - allocated);
    growth.set(disk.fsId, (growth.get(disk.fsId) ?? 0) + room);
  }
  return hosts.map((host) => ({
    ...host,
    // Disks added since the host registered have a record but are not in its host record.
    disks: [
      ...host.disks,
      ...[...disks.values()]
        .filter((disk) => disk.host === host.name && !host.disks.some((reported) => reported.name === disk.disk))
        .map((disk) => ({ name: disk.disk, capacityBytes: disk.sizeBytes, usedBytes: 0, limited: false })),
    ].flatMap((reported) => {
      const disk = disks.get(`${host.name}/${reported.name}`);
      if (disk === undefined) return [reported];
      const isNamed = named?.host === host.name && named.disk === disk.disk;
      if (disk.state !== "online" || (disk.spare && !isNamed)) return [];
      const allocated = disk.copies.reduce((sum, copy) => sum + copy.allocatedBytes, 0);
      const own = Math.max(0, (promised.get(host.name)?.get(reported.name) ?? 0) - allocated);
      const othersGrowth = (growth.get(disk.fsId) ?? 0) - own;
      return [
        {
          name: reported.name,
          capacityBytes: reported.limited
            ? Math.min(reported.capacityBytes, disk.freeBytes + allocated)
            : disk.freeBytes + allocated,
          usedBytes: Math.max(0, Math.min(othersGrowth, disk.freeBytes)),
        },
      ];
    }),
  }));
}
