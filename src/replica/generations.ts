// Generation identifiers of a replica, and the pure decision made when two copies meet: which one is
// newer, whether the out-of-sync bitmap is enough (incremental resync) or everything must be copied
// (full rebuild), or whether both took writes apart (split brain) or share no past at all (unrelated).
// The model is DRBD's: `current` names the data as it is now; `bitmap` names the data as it was when
// this copy started tracking changes for an absent peer; `history` names older points, newest first.
// Every decision carries the number and text of the rule that made it, for the log (DESIGN.md rule 5).

import assert from "node:assert/strict";

/** A generation id: 16 hex digits. "" means none (a copy that never held data, or no bitmap). */
export type GenerationId = string;

export interface Generations {
  readonly current: GenerationId;
  readonly bitmap: GenerationId;
  readonly history: readonly GenerationId[];
}

/** How many older generations a copy remembers. */
export const MAX_HISTORY = 64;

export const NEW_COPY: Generations = { current: "", bitmap: "", history: [] };

export type SyncDecision =
  | { readonly kind: "in-sync" }
  | { readonly kind: "sync"; readonly from: "local" | "peer"; readonly mode: "bitmap" | "full" }
  | { readonly kind: "split-brain" }
  | { readonly kind: "unrelated" };

export interface Comparison {
  readonly decision: SyncDecision;
  /** Which rule decided, for the log: "rule 4: peer's bitmap generation is our current ...". */
  readonly rule: number;
  readonly reason: string;
}

const isId = (id: GenerationId): boolean => id !== "";

export function isValidGenerationId(id: string): boolean {
  return /^[0-9a-f]{16}$/.test(id);
}

export function checkGenerations(g: Generations): void {
  for (const id of [g.current, g.bitmap, ...g.history]) {
    assert.ok(id === "" || isValidGenerationId(id), `bad generation id "${id}"`);
  }
  assert.ok(g.history.length <= MAX_HISTORY, "history too long");
  assert.ok(isId(g.current) || (!isId(g.bitmap) && g.history.length === 0), "a copy without data has no past");
}

/**
 * Compares this copy (`local`) with `peer`. Symmetric: compare(b, a) is compare(a, b) seen from the
 * other side (a "from: local" becomes "from: peer"), with the same rule.
 */
export function compareGenerations(local: Generations, peer: Generations): Comparison {
  checkGenerations(local);
  checkGenerations(peer);
  const decide = (decision: SyncDecision, rule: number, reason: string): Comparison => ({ decision, rule, reason });

  if (!isId(local.current) && !isId(peer.current))
    return decide({ kind: "in-sync" }, 1, "both copies are new and empty");
  if (!isId(local.current))
    return decide({ kind: "sync", from: "peer", mode: "full" }, 2, "this copy is new: full rebuild from the peer");
  if (!isId(peer.current))
    return decide({ kind: "sync", from: "local", mode: "full" }, 2, "the peer is new: full rebuild from this copy");
  if (local.current === peer.current) return decide({ kind: "in-sync" }, 3, "current generations are equal");
  if (isId(peer.bitmap) && peer.bitmap === local.current) {
    return decide(
      { kind: "sync", from: "peer", mode: "bitmap" },
      4,
      "the peer moved on from our current generation: incremental resync from the peer",
    );
  }
  if (isId(local.bitmap) && local.bitmap === peer.current) {
    return decide(
      { kind: "sync", from: "local", mode: "bitmap" },
      4,
      "we moved on from the peer's current generation: incremental resync to the peer",
    );
  }
  if (peer.history.includes(local.current)) {
    return decide(
      { kind: "sync", from: "peer", mode: "full" },
      6,
      "our current generation is in the peer's history: full resync from the peer",
    );
  }
  if (local.history.includes(peer.current)) {
    return decide(
      { kind: "sync", from: "local", mode: "full" },
      6,
      "the peer's current generation is in our history: full resync to the peer",
    );
  }
  if (isId(local.bitmap) && local.bitmap === peer.bitmap) {
    return decide({ kind: "split-brain" }, 5, "both copies took writes since the same generation");
  }
  const localPast = new Set([local.bitmap, ...local.history].filter(isId));
  if ([peer.bitmap, ...peer.history].some((id) => isId(id) && localPast.has(id))) {
    return decide({ kind: "split-brain" }, 7, "the copies share a past generation but each took writes after it");
  }
  return decide({ kind: "unrelated" }, 8, "no generation in common: these copies hold unrelated data");
}

/**
 * The writer starts writing while a peer is away: the peer's out-of-sync bitmap is anchored at the
 * current generation (kept as `bitmap`, unless one is already being kept) and the data gets a new name.
 */
export function beginGenerationWithoutPeer(g: Generations, newId: GenerationId): Generations {
  assert.ok(isValidGenerationId(newId), "new generation id must be 16 hex digits");
  assert.ok(isId(g.current), "a copy without data cannot start a generation; rebuild it first");
  if (!isId(g.bitmap)) return { current: newId, bitmap: g.current, history: g.history };
  return { current: newId, bitmap: g.bitmap, history: [g.current, ...g.history].slice(0, MAX_HISTORY) };
}

/**
 * A resync target finished: it now holds the source's data, so it takes the source's name and past.
 * Its own old generation is dropped, not kept in history: that data is gone from this copy, and a
 * third copy still holding it must be found diverged (split brain), never quietly overwritten.
 */
export function completeResyncAsTarget(target: Generations, source: Generations): Generations {
  assert.ok(isId(source.current), "cannot resync from a copy without data");
  void target;
  return { current: source.current, bitmap: "", history: source.history.slice(0, MAX_HISTORY) };
}

/** The source of a resync finished and no peer is missing writes: it stops anchoring a bitmap. */
export function completeResyncAsSource(source: Generations): Generations {
  if (!isId(source.bitmap)) return source;
  return { current: source.current, bitmap: "", history: [source.bitmap, ...source.history].slice(0, MAX_HISTORY) };
}
