// The NBD server's write budget (src/nbd/write-budget.ts): reservations never exceed the capacity, waiters
// are granted in arrival order, and a cancelled waiter neither gets a grant nor blocks those behind it.

import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { WriteBudget } from "../../src/nbd/write-budget.js";

test("a reservation that fits is granted at once; one that does not waits until bytes are released", () => {
  const budget = new WriteBudget(100);
  const granted: string[] = [];
  assert.equal(budget.reserve(60, () => granted.push("a")).granted, true);
  assert.equal(budget.reserve(60, () => granted.push("b")).granted, false);
  assert.deepEqual(granted, []);
  budget.release(60);
  assert.deepEqual(granted, ["b"]);
  assert.equal(budget.used, 60);
});

test("waiters are granted in arrival order: a large WRITE is not starved by small ones behind it", () => {
  const budget = new WriteBudget(100);
  const granted: string[] = [];
  budget.reserve(90, () => undefined);
  budget.reserve(50, () => granted.push("large"));
  // 10 bytes are free, but the small one queues behind the large one.
  assert.equal(budget.reserve(10, () => granted.push("small")).granted, false);
  budget.release(90);
  assert.deepEqual(granted, ["large", "small"]);
  assert.equal(budget.used, 60);
});

test("a cancelled waiter is never granted and lets those behind it through", () => {
  const budget = new WriteBudget(100);
  const granted: string[] = [];
  budget.reserve(100, () => undefined);
  const first = budget.reserve(80, () => granted.push("cancelled"));
  budget.reserve(20, () => granted.push("next"));
  budget.release(30);
  assert.deepEqual(granted, []);
  first.cancel();
  assert.deepEqual(granted, ["next"]);
  assert.equal(budget.waiting, 0);
});

test("property: whatever the sequence, reserved bytes never exceed the capacity and grants keep arrival order", () => {
  fc.assert(
    fc.property(
      fc.array(
        fc.oneof(
          fc.record({ kind: fc.constant("reserve" as const), bytes: fc.integer({ min: 1, max: 64 }) }),
          fc.record({ kind: fc.constant("release" as const), index: fc.nat() }),
          fc.record({ kind: fc.constant("cancel" as const), index: fc.nat() }),
        ),
        { maxLength: 200 },
      ),
      (steps) => {
        const budget = new WriteBudget(64);
        const held: number[] = [];
        const queued: { id: number; bytes: number; cancel: () => void }[] = [];
        const grantOrder: number[] = [];
        let nextId = 0;
        for (const step of steps) {
          if (step.kind === "reserve") {
            const id = nextId++;
            const entry = { id, bytes: step.bytes, cancel: () => undefined as void };
            const reservation = budget.reserve(step.bytes, () => {
              grantOrder.push(id);
              queued.splice(queued.indexOf(entry), 1);
              held.push(step.bytes);
            });
            if (reservation.granted) {
              grantOrder.push(id);
              held.push(step.bytes);
            } else {
              entry.cancel = reservation.cancel;
              queued.push(entry);
            }
          } else if (step.kind === "release" && held.length > 0) {
            budget.release(held.splice(step.index % held.length, 1)[0]!);
          } else if (step.kind === "cancel" && queued.length > 0) {
            const [entry] = queued.splice(step.index % queued.length, 1);
            entry!.cancel();
          }
          assert.ok(budget.used <= 64);
          assert.equal(
            budget.used,
            held.reduce((sum, bytes) => sum + bytes, 0),
          );
          assert.equal(budget.waiting, queued.length);
        }
        assert.deepEqual(
          grantOrder,
          [...grantOrder].sort((a, b) => a - b),
        );
      },
    ),
  );
});
