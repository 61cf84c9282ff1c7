// The pure decisions the engine makes about its copies (DESIGN.md rule 5): which copy the volume
// starts from, and for every other copy whether it is in sync, needs an incremental resync (and of
// which regions), a full rebuild, or must be refused (split brain, unrelated data). Each decision
// names the rule that made it, for the log.

import { compareGenerations, type Generations } from "../replica/generations.js";
import type { ReplicaMetadata } from "../replica/replica-store.js";

export type CopyDecision =
  | { readonly kind: "in-sync"; readonly rule: string }
  /** Incremental: the copy's generation is a base the volume has a change bitmap for. */
  | { readonly kind: "incremental"; readonly base: string; readonly rule: string }
  | { readonly kind: "full"; readonly rule: string }
  | { readonly kind: "split-brain"; readonly rule: string }
  | { readonly kind: "refused"; readonly rule: string };

/**
 * How copy `copy` relates to the volume whose data is `volume` (its generations and change bitmaps).
 * A copy that is newer than the volume, or diverged from it, is never overwritten silently.
 */
export function decideCopy(
  volume: { readonly generations: Generations; readonly changedSince: Readonly<Record<string, unknown>> },
  copy: Pick<ReplicaMetadata, "generations">,
): CopyDecision {
  const comparison = compareGenerations(volume.generations, copy.generations);
  const rule = `rule ${comparison.rule}: ${comparison.reason}`;
  const { decision } = comparison;
  switch (decision.kind) {
    case "in-sync":
      return { kind: "in-sync", rule };
    case "split-brain":
      return { kind: "split-brain", rule };
    case "unrelated":
      return { kind: "refused", rule };
    case "sync":
      if (decision.from === "peer") {
        // The copy holds writes the volume does not: it took writes under a generation we never had.
        return { kind: "split-brain", rule: `${rule}; the copy is ahead of the volume, which also took writes` };
      }
      if (Object.hasOwn(volume.changedSince, copy.generations.current)) {
        return {
          kind: "incremental",
          base: copy.generations.current,
          rule: `rule 4: the volume kept a change bitmap since the copy's generation ${copy.generations.current}`,
        };
      }
      return { kind: "full", rule: decision.mode === "full" ? rule : `${rule}, but no change bitmap is kept: full` };
  }
}

export interface Candidate {
  readonly index: number;
  readonly local: boolean;
  readonly metadata: Pick<ReplicaMetadata, "generations" | "changedSince">;
}

/**
 * The copy the volume starts from: one that every other copy is in sync with or behind. Local
 * copies are preferred among equals. Undefined when the copies diverged (no copy is ahead of all).
 */
export function chooseSource(candidates: readonly Candidate[]): Candidate | undefined {
  const ahead = candidates.filter((candidate) =>
    candidates.every((other) => {
      if (other === candidate) return true;
      const kind = decideCopy(candidate.metadata, other.metadata).kind;
      return kind === "in-sync" || kind === "incremental" || kind === "full";
    }),
  );
  return ahead.find((candidate) => candidate.local) ?? ahead[0];
}
