// Generation comparison (DESIGN.md rule 5): the direction of every resync, and split brain detected,
// checked against a model that tracks which writes each copy really holds.

import assert from "node:assert/strict";
import fc from "fast-check";
import {
  beginGenerationWithoutPeer,
  compareGenerations,
  completeResyncAsSource,
  completeResyncAsTarget,
  NEW_COPY,
  type Comparison,
  type Generations,
} from "../../src/replica/generations.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** Every test here takes well under a second; one still running after this bound is hung, not slow. */
const test = boundedTest(10_000);

const id = (n: number): string => n.toString(16).padStart(16, "0");
const x = id(1);

function mirrored(c: Comparison): Comparison {
  const d = c.decision;
  if (d.kind !== "sync") return c;
  return { ...c, decision: { ...d, from: d.from === "local" ? "peer" : "local" } };
}

test("the rules, one by one, with the rule that decided", () => {
  const base: Generations = { current: x, bitmap: "", history: [] };
  assert.equal(compareGenerations(NEW_COPY, NEW_COPY).rule, 1);
  assert.deepEqual(compareGenerations(NEW_COPY, base).decision, { kind: "sync", from: "peer", mode: "full" });
  assert.deepEqual(compareGenerations(base, base).decision, { kind: "in-sync" });
  const wrote = beginGenerationWithoutPeer(base, id(2));
  const ahead = compareGenerations(wrote, base);
  assert.deepEqual([ahead.decision, ahead.rule], [{ kind: "sync", from: "local", mode: "bitmap" }, 4]);
  const other = beginGenerationWithoutPeer(base, id(3));
  const split = compareGenerations(wrote, other);
  assert.deepEqual([split.decision.kind, split.rule], ["split-brain", 5]);
  assert.match(split.reason, /both copies took writes/);
  const far: Generations = { current: id(9), bitmap: "", history: [id(8), x] };
  assert.deepEqual(compareGenerations(base, far).decision, { kind: "sync", from: "peer", mode: "full" });
  const stranger: Generations = { current: id(0x77), bitmap: "", history: [] };
  assert.deepEqual(
    [compareGenerations(base, stranger).decision.kind, compareGenerations(base, stranger).rule],
    ["unrelated", 8],
  );
});

test("malformed generation ids are a broken invariant, not a decision", () => {
  assert.throws(() => compareGenerations({ current: "xyz", bitmap: "", history: [] }, NEW_COPY));
  assert.throws(() => beginGenerationWithoutPeer(NEW_COPY, id(5)), /without data/);
});

/**
 * Two copies start in sync. Each step either lets one copy take writes while the other is away
 * (a new generation, once per separation) or reconnects them. The model records which write batches
 * each copy holds; the comparison must agree with it: equal sets in sync, a superset is the source,
 * incomparable sets are split brain. Split brain is then resolved by naming a survivor.
 */
test("comparison agrees with a model of the writes each copy holds, over random histories", () => {
  const step = fc.oneof(
    fc.constant("a-writes" as const),
    fc.constant("b-writes" as const),
    fc.constant("reconnect" as const),
    fc.boolean(),
  );
  fc.assert(
    fc.property(fc.array(step, { maxLength: 40 }), (steps) => {
      let next = 2;
      let a: Generations = { current: x, bitmap: "", history: [] };
      let b: Generations = { current: x, bitmap: "", history: [] };
      let aWrites = new Set<number>();
      let bWrites = new Set<number>();
      let aNewThisSeparation = false;
      let bNewThisSeparation = false;
      for (const s of steps) {
        if (s === "a-writes") {
          if (!aNewThisSeparation) a = beginGenerationWithoutPeer(a, id(next));
          aNewThisSeparation = true;
          aWrites = new Set([...aWrites, next++]);
        } else if (s === "b-writes") {
          if (!bNewThisSeparation) b = beginGenerationWithoutPeer(b, id(next));
          bNewThisSeparation = true;
          bWrites = new Set([...bWrites, next++]);
        } else if (s === "reconnect" || typeof s === "boolean") {
          const comparison = compareGenerations(a, b);
          const seenFromB = compareGenerations(b, a);
          const expected = mirrored(comparison);
          assert.deepEqual([seenFromB.decision, seenFromB.rule], [expected.decision, expected.rule], "symmetric");
          const aHasB = [...bWrites].every((w) => aWrites.has(w));
          const bHasA = [...aWrites].every((w) => bWrites.has(w));
          const d = comparison.decision;
          if (aHasB && bHasA) assert.equal(d.kind, "in-sync", comparison.reason);
          else if (aHasB) assert.deepEqual([d.kind, d.kind === "sync" && d.from], ["sync", "local"], comparison.reason);
          else if (bHasA) assert.deepEqual([d.kind, d.kind === "sync" && d.from], ["sync", "peer"], comparison.reason);
          else assert.equal(d.kind, "split-brain", comparison.reason);
          // Sync (split brain resolved by an explicit survivor: here `s === true` keeps a, else b).
          const aSurvives =
            d.kind === "sync" ? d.from === "local" : d.kind === "split-brain" ? s === true || s === "reconnect" : true;
          if (d.kind !== "in-sync") {
            if (aSurvives) {
              b = completeResyncAsTarget(b, a);
              a = completeResyncAsSource(a);
              bWrites = new Set(aWrites);
            } else {
              a = completeResyncAsTarget(a, b);
              b = completeResyncAsSource(b);
              aWrites = new Set(bWrites);
            }
          }
          assert.deepEqual(compareGenerations(a, b).decision, { kind: "in-sync" }, "after the resync the copies agree");
          aNewThisSeparation = false;
          bNewThisSeparation = false;
        }
      }
    }),
    { numRuns: 2000 },
  );
});
