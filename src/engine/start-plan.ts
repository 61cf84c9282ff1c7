// The start plan: from what the configured copies' metadata says (or that a copy is absent, or does not
// answer), whether the volume may start, which copy it continues from, under which epoch and
// generation, and what every other copy needs. A pure function of its input (no I/O; ids are passed
// in), unit- and property-tested in test/unit/engine-start-plan.test.ts. Decided in this order:
//  1. No copy opened: a new volume when every location is empty (created with --size), else nothing
//     to start from.
//  2. Identity: the volume id most copies carry (a tie is refused); copies of another volume, size or
//     region size are refused.
//  3. The source: the survivor the operator named, or the copy every other reachable copy is in sync
//     with or behind (rule 5); copies that diverged are a split brain, refused until a survivor is named.
//  4. Copies missing (unreachable, or absent while others exist): starting without them needs the
//     caller's consent AND proof that they hold no write the source lacks. The proof is in the source's
//     metadata: the copies it was last in sync with (inSyncCopies) are all here. A copy not listed had
//     left the in-sync set before the source's last write; it can only have taken writes since under an
//     engine that started from it without the source, which this plan refuses without proof, so by
//     induction it holds nothing newer. Without proof the start is refused (HAVEN_ERR_UNSAFE_START),
//     unless the caller vouches (the control plane, from etcd's record of the copies), names a survivor,
//     or forces (the operator's --force, logged as a warning). The same proof is asked when every
//     configured copy is here but the source was last in sync with a copy that is not configured.
//  5. Epoch: the given one, or one above the highest any copy saw; never below that (rule 4).
//  6. Generations: a new one for this session (rule 5), keeping the source's change bitmaps, each
//     widened by the activity-log extents of a writer that did not stop cleanly (rule 3).
//  7. Every other copy: in sync (equal to the source, nothing in flight at a crash), resync
//     (incremental or full), refused (split brain, unrelated), created (absent, with consent), or away.

import { HavenError } from "../core/errors.js";
import { decodeBitmap } from "../replica/bitmap-codec.js";
import { beginGenerationWithoutPeer, MAX_HISTORY, type Generations } from "../replica/generations.js";
import type { CreateOptions } from "../replica/port.js";
import { DEFAULT_REGION_BYTES, RegionBitmap } from "../replica/region-bitmap.js";
import { ACTIVITY_EXTENT_BYTES, type ReplicaMetadata } from "../replica/replica-store.js";
import { orInto } from "./copy-set.js";
import { chooseSource, decideCopy, type Candidate, type CopyDecision } from "./sync-decision.js";

/** What the plan reads of a copy's metadata. */
export type StartMetadata = Pick<
  ReplicaMetadata,
  | "volumeId"
  | "copyId"
  | "sizeBytes"
  | "regionBytes"
  | "generations"
  | "highestEpoch"
  | "changedSince"
  | "activityLog"
  | "inSyncCopies"
>;

/** One configured copy as start found it. */
export type CopyAtStart =
  | { readonly location: string; readonly kind: "opened"; readonly local: boolean; readonly metadata: StartMetadata }
  /** No copy of the volume at this location (a new disk, or one not mounted). */
  | { readonly location: string; readonly kind: "absent" }
  | { readonly location: string; readonly kind: "unreachable"; readonly reason: string };

/**
 * Whether the volume may start with copies missing:
 * - refuse: no (the default: wait for every copy);
 * - if-proven: when the metadata proves the missing copies hold no write the reachable ones lack
 *   (`haven volume serve --degraded-start`);
 * - vouched: yes; the caller knows a reachable copy holds every acknowledged write (the control plane);
 * - forced: yes, even without proof (`--force`): writes only a missing copy took are lost.
 */
export type DegradedStart = "refuse" | "if-proven" | "vouched" | "forced";

export interface StartInput {
  readonly name: string;
  /** Every configured copy, in the configured order. */
  readonly copies: readonly CopyAtStart[];
  readonly sizeBytes?: number;
  readonly regionBytes?: number;
  readonly epoch?: number;
  /** The location whose data survives a split brain, named by the operator. */
  readonly survivor?: string;
  readonly degraded: DegradedStart;
  /** The id this session's generation takes (16 hex digits). */
  readonly newGenerationId: string;
  /** The id a new volume takes. */
  readonly newVolumeId: string;
}

export type CopyPlan =
  | { readonly action: "in-sync" }
  /** Resync, or refuse (a split brain or unrelated copy), as the decision says. */
  | { readonly action: "resync"; readonly decision: Exclude<CopyDecision, { kind: "in-sync" }> }
  /** Foreign: another volume, size or region size. */
  | { readonly action: "refused"; readonly reason: string }
  /** Absent while others exist, with consent: created empty and rebuilt. */
  | { readonly action: "create" }
  /** Unreachable: the engine keeps trying in the background. */
  | { readonly action: "away"; readonly reason: string };

export interface AdoptPlan {
  readonly kind: "adopt";
  readonly volumeId: string;
  readonly sizeBytes: number;
  readonly regionBytes: number;
  readonly epoch: number;
  /** Index of the copy the volume continues from. */
  readonly source: number;
  /** The source's generations, which this session's follow. */
  readonly previous: Generations;
  /** This session's. */
  readonly generations: Generations;
  /** Change bitmaps the session starts with (what a copy at each base misses). */
  readonly changedSince: ReadonlyMap<string, RegionBitmap>;
  /** One entry per configured copy, in the configured order. */
  readonly copies: readonly CopyPlan[];
  /** What the log should say about this start, warnings included. */
  readonly notes: readonly string[];
}

export type StartPlan =
  /** No copy exists: create every copy with these options, then plan again. */
  { readonly kind: "create"; readonly create: CreateOptions } | AdoptPlan;

/**
 * The copies `source` was last in sync with (by copy id) that are not in `present`: [] is the proof
 * that every copy missing now had left before it; null when its metadata does not record them.
 */
export function copiesNotHere(
  source: Pick<StartMetadata, "inSyncCopies">,
  present: ReadonlySet<string>,
): string[] | null {
  if (source.inSyncCopies === null) return null;
  return source.inSyncCopies.filter((id) => !present.has(id));
}

export function planStart(input: StartInput): StartPlan {
  const { name } = input;
  const opened = input.copies.flatMap((copy, index) => (copy.kind === "opened" ? [{ ...copy, index }] : []));

  // 1. Nothing opened: a new volume, or nothing to start from.
  if (opened.length === 0) {
    const unreachable = input.copies.filter((copy) => copy.kind === "unreachable");
    if (unreachable.length > 0)
      throw new HavenError(
        "HAVEN_ERR_IO",
        `no copy of volume ${name} is reachable (${describeMissing(unreachable)}). Bring a copy back and start again.`,
      );
    if (input.sizeBytes === undefined)
      throw new HavenError("HAVEN_ERR_USAGE", `volume ${name} has no copy yet: give --size to create it`);
    return {
      kind: "create",
      create: {
        volumeId: input.newVolumeId,
        sizeBytes: input.sizeBytes,
        regionBytes: input.regionBytes ?? DEFAULT_REGION_BYTES,
      },
    };
  }

  // 2. Identity.
  const counts = new Map<string, number>();
  for (const copy of opened) counts.set(copy.metadata.volumeId, (counts.get(copy.metadata.volumeId) ?? 0) + 1);
  const ranked = [...counts].sort((a, b) => b[1] - a[1]);
  if (ranked.length > 1 && ranked[0]![1] === ranked[1]![1])
    throw new HavenError(
      "HAVEN_ERR_CONFIG",
      `the copies of ${name} belong to different volumes (${ranked.map(([id]) => id).join(", ")}); refusing to guess`,
    );
  const volumeId = ranked[0]![0];
  const known = opened.find((copy) => copy.metadata.volumeId === volumeId)!.metadata;
  const sizeBytes = known.sizeBytes;
  const regionBytes = known.regionBytes;
  if (input.sizeBytes !== undefined && input.sizeBytes !== sizeBytes)
    throw new HavenError(
      "HAVEN_ERR_CONFIG",
      `volume ${name} is ${sizeBytes} bytes, --size says ${input.sizeBytes}: a copy is grown only by an ` +
        `engine started at its epoch by the control plane ('haven volume resize'), never here`,
    );
  const plans: CopyPlan[] = input.copies.map((copy) =>
    copy.kind === "unreachable" ? { action: "away", reason: copy.reason } : { action: "create" },
  );
  const candidates: (Candidate & { readonly metadata: StartMetadata })[] = [];
  for (const copy of opened) {
    const refusal = foreign(copy.metadata, volumeId, sizeBytes, regionBytes);
    if (refusal !== null) plans[copy.index] = { action: "refused", reason: refusal };
    else candidates.push({ index: copy.index, local: copy.local, metadata: copy.metadata });
  }
  if (candidates.length === 0)
    throw new HavenError(
      "HAVEN_ERR_IO",
      `no copy of volume ${name} can be used: ${opened.map((c) => `${c.location}: ${(plans[c.index] as { reason: string }).reason}`).join("; ")}`,
    );

  // 3. The source.
  const notes: string[] = [];
  const locationOf = (index: number): string => input.copies[index]!.location;
  const missing = input.copies.filter((copy) => copy.kind === "unreachable" || copy.kind === "absent");
  let source: (typeof candidates)[number] | undefined;
  if (input.survivor !== undefined) {
    source = candidates.find((c) => locationOf(c.index) === input.survivor);
    if (source === undefined)
      throw new HavenError("HAVEN_ERR_USAGE", `--survivor ${input.survivor} is not a reachable copy of this volume`);
  } else source = chooseSource(candidates) as (typeof candidates)[number] | undefined;

  // 4. Missing copies: consent, and proof (or a vouch, a survivor, or force).
  const present = new Set(candidates.map((c) => c.metadata.copyId));
  const notHere = source === undefined ? [] : copiesNotHere(source.metadata, present);
  const proven = notHere !== null && notHere.length === 0;
  const needsProof = missing.length > 0 || (notHere !== null && notHere.length > 0);
  if (missing.length > 0 && input.degraded === "refuse") {
    throw new HavenError(
      "HAVEN_ERR_IO",
      `not every copy of volume ${name} is reachable (${describeMissing(missing)}). ` +
        (source !== undefined && proven
          ? `The metadata shows they were left behind: ${locationOf(source.index)} was last in sync only with ` +
            `copies reachable now, so --degraded-start starts from them safely (missing copies are then created ` +
            `empty and rebuilt).`
          : "A copy reachable now may be older than one that is not, so the engine does not pick one by itself" +
            (source === undefined ? "" : `, and the metadata cannot show otherwise (${unproven(source)})`) +
            ": bring the missing copies back (or wait longer with --startup-wait); --degraded-start starts " +
            "only when the metadata shows the reachable copies are the newest, and --force starts regardless, " +
            "losing any write only a missing copy took."),
    );
  }
  if (source === undefined) {
    const lines = candidates.map(
      (c) => `${locationOf(c.index)} (generation ${c.metadata.generations.current || "none"})`,
    );
    throw new HavenError(
      "HAVEN_ERR_SPLIT_BRAIN",
      `split brain: the copies of ${name} took writes apart (${lines.join(", ")}); ` +
        `name the copy whose data survives with --survivor LOCATION (the others are rebuilt from it)`,
    );
  }
  if (input.survivor !== undefined)
    notes.push(`operator named ${input.survivor} the survivor: copies that diverged from it are rebuilt from it`);
  if (needsProof) {
    const without = missing.length > 0 ? `without ${missing.map((c) => c.location).join(", ")}` : "";
    if (proven) {
      if (missing.length > 0)
        notes.push(
          `degraded start ${without}: ${locationOf(source.index)} was last in sync only with copies reachable now`,
        );
    } else if (input.survivor !== undefined) {
      notes.push(`starting ${without} from the survivor the operator named (${unproven(source)})`);
    } else if (input.degraded === "vouched") {
      notes.push(
        `degraded start ${without}, as the control plane vouches for the reachable copies (${unproven(source)})`,
      );
    } else if (input.degraded === "forced") {
      notes.push(
        `WARNING: forced start ${without}: ${unproven(source)}; a write only a missing copy took is lost, ` +
          `and such a copy comes back as a split brain`,
      );
    } else {
      throw new HavenError(
        "HAVEN_ERR_UNSAFE_START",
        `volume ${name} cannot start from ${candidates.map((c) => locationOf(c.index)).join(", ")} alone: ` +
          `${unproven(source)}. A copy that is not here may hold acknowledged writes they lack, and starting ` +
          `without it would fork the volume's history (a split brain when it returns). ` +
          (missing.length > 0 ? `Bring ${missing.map((c) => c.location).join(", ")} back; ` : "Give every replica; ") +
          `or, if you know the missing copies hold nothing newer (their disk was replaced, or they were ` +
          `removed on purpose), start with --force, which discards any write only they took.`,
      );
    }
  }
  for (const copy of missing)
    if (copy.kind === "unreachable") notes.push(`${copy.location}: ${copy.reason}; degraded start as asked`);

  // 5. Epoch.
  const maxEpoch = Math.max(0, ...candidates.map((c) => c.metadata.highestEpoch));
  const epoch = input.epoch ?? maxEpoch + 1;
  if (epoch < maxEpoch)
    throw new HavenError("HAVEN_ERR_STALE_EPOCH", `epoch ${epoch} is stale: a copy has seen epoch ${maxEpoch}`);

  // 6. Generations and change bitmaps.
  const sourceMeta = source.metadata;
  const extents = new Set<number>();
  for (const c of candidates) for (const extent of c.metadata.activityLog) extents.add(extent);
  const crashed = bitmapOfExtents(extents, sizeBytes, regionBytes);
  const changedSince = new Map<string, RegionBitmap>();
  for (const [base, encoded] of Object.entries(sourceMeta.changedSince)) {
    const bitmap = decodeBitmap(encoded, sizeBytes, regionBytes);
    orInto(bitmap, crashed);
    changedSince.set(base, bitmap);
  }
  if (extents.size > 0)
    notes.push(`rule 3: the last writer did not shut down cleanly; ${extents.size} activity-log extents are resynced`);
  const previous = sourceMeta.generations.current;
  const everyoneHere = candidates.length === input.copies.length;
  let generations: Generations;
  if (previous === "") generations = { current: input.newGenerationId, bitmap: "", history: [] };
  else {
    generations = everyoneHere
      ? {
          current: input.newGenerationId,
          bitmap: sourceMeta.generations.bitmap,
          history: [previous, ...sourceMeta.generations.history].slice(0, MAX_HISTORY),
        }
      : beginGenerationWithoutPeer(sourceMeta.generations, input.newGenerationId);
    // Copies still at the previous generation miss what a crashed writer may have had in flight.
    const since = changedSince.get(previous);
    if (since) orInto(since, crashed);
    else changedSince.set(previous, crashed);
  }

  // 7. Every other copy.
  for (const candidate of candidates) {
    if (candidate === source) {
      plans[candidate.index] = { action: "in-sync" };
      continue;
    }
    const decision = decideCopy(
      { generations: sourceMeta.generations, changedSince: sourceMeta.changedSince },
      candidate.metadata,
    );
    if (decision.kind === "in-sync")
      plans[candidate.index] =
        crashed.count === 0
          ? { action: "in-sync" }
          : {
              action: "resync",
              decision: { kind: "incremental", base: previous, rule: "rule 3: activity log of a writer that crashed" },
            };
    else if ((decision.kind === "split-brain" || decision.kind === "refused") && input.survivor !== undefined)
      plans[candidate.index] = {
        action: "resync",
        decision: { kind: "full", rule: `operator chose ${input.survivor} as survivor (${decision.rule})` },
      };
    else plans[candidate.index] = { action: "resync", decision };
  }
  return {
    kind: "adopt",
    volumeId,
    sizeBytes,
    regionBytes,
    epoch,
    source: source.index,
    previous: sourceMeta.generations,
    generations,
    changedSince,
    copies: plans,
    notes,
  };
}

/** Why a copy cannot belong to the volume, or null. */
export function foreign(
  meta: Pick<StartMetadata, "volumeId" | "sizeBytes" | "regionBytes">,
  volumeId: string,
  sizeBytes: number,
  regionBytes: number,
): string | null {
  if (meta.volumeId !== volumeId) return `foreign copy: it holds volume ${meta.volumeId}, not ${volumeId}`;
  if (meta.sizeBytes !== sizeBytes) return `copy is ${meta.sizeBytes} bytes, the volume ${sizeBytes}`;
  if (meta.regionBytes !== regionBytes)
    return `copy tracks ${meta.regionBytes}-byte regions, the volume ${regionBytes}`;
  return null;
}

function describeMissing(copies: readonly CopyAtStart[]): string {
  return copies
    .map((copy) =>
      copy.kind === "unreachable"
        ? `${copy.location}: ${copy.reason}`
        : `${copy.location}: no copy of the volume at this location`,
    )
    .join("; ");
}

/** Why the source's metadata does not prove the copies missing now were left behind. */
function unproven(source: { readonly metadata: StartMetadata }): string {
  const meta = source.metadata;
  const generation = meta.generations.current || "none";
  if (meta.inSyncCopies === null)
    return `copy ${meta.copyId} (generation ${generation}) does not record which copies were in sync with it`;
  return `copy ${meta.copyId} was last in sync (generation ${generation}) with ${meta.inSyncCopies.join(", ")}`;
}

function bitmapOfExtents(extents: Iterable<number>, sizeBytes: number, regionBytes: number): RegionBitmap {
  const bitmap = new RegionBitmap(sizeBytes, regionBytes);
  for (const extent of extents) {
    const offset = extent * ACTIVITY_EXTENT_BYTES;
    if (offset < sizeBytes) bitmap.markRange(offset, Math.min(ACTIVITY_EXTENT_BYTES, sizeBytes - offset));
  }
  return bitmap;
}
