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

import assert from "node:assert/strict";
import { HavenError } from "../core/errors.js";
import { formatBytes } from "../util/units.js";
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

/** A host's best disk for the copy, or why none will do. */
function bestDisk(
  host: HostRecord,
  promised: ReadonlyMap<string, number> | undefined,
  failed: ReadonlyMap<string, string>,
  sizeBytes: number,
): { disk: string; freeBytes: number } | { reason: string } {
  if (host.disks.length === 0) return { reason: "has no disks" };
  const failures = host.disks
    .filter((disk) => failed.has(disk.name))
    .map((disk) => `disk ${disk.name} failed its health check (${failed.get(disk.name)})`);
  const usable = host.disks.filter((disk) => !failed.has(disk.name));
  if (usable.length === 0) return { reason: `has no usable disk: ${failures.join(", ")}` };
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
  const chosen = candidates.slice(0, count).map(({ host, disk }) => ({ host, disk }));
  assert.equal(new Set(chosen.map((placement) => placement.host)).size, count, "placement chose a host twice");
  for (const { host, disk } of chosen) {
    assert.ok(!failedDisks(health.get(host)).has(disk), `placement chose ${host}/${disk}, which failed its check`);
  }
  return chosen;
}
