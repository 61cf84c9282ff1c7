// The progress events of a copy's resync or rebuild: one at the start with its size, one at each 20%
// crossed (never twice for one step, never one at 100%), one at the end with its duration and average
// rate, and one when it stops short (the copy faulted, or left the engine).

import assert from "node:assert/strict";
import { ResyncEvents, type CopyProgress } from "../../src/agent/resync-events.js";
import { boundedTest } from "../helpers/bounded-test.js";

const test = boundedTest(10_000);
const MiB = 1024 * 1024;

function copy(doneMiB: number | null, state = "resyncing", totalMiB = 100): CopyProgress {
  return {
    volume: "v",
    copy: "h1/d1",
    state,
    resync:
      doneMiB === null
        ? null
        : {
            mode: "full",
            doneBytes: doneMiB * MiB,
            totalBytes: totalMiB * MiB,
            bytesPerSecond: 10 * MiB,
            etaSeconds: 5,
            rule: "new",
          },
  };
}

test("start, each 20% once, and the end with duration and average rate", () => {
  const events = new ResyncEvents();
  const kinds: string[] = [];
  const messages: string[] = [];
  const feed = (ms: number, c: CopyProgress): void => {
    for (const event of events.observe(ms, [c])) {
      kinds.push(event.kind);
      messages.push(event.message);
    }
  };
  feed(0, copy(0));
  feed(1000, copy(10));
  feed(2000, copy(21));
  feed(3000, copy(25));
  feed(4000, copy(65)); // 40% and 60% crossed at once: one event, at 60%
  feed(5000, copy(99));
  feed(10_000, copy(null, "in-sync"));
  feed(11_000, copy(null, "in-sync"));
  assert.deepEqual(kinds, ["resync-started", "resync-progress", "resync-progress", "resync-progress", "resync-done"]);
  assert.match(messages[0]!, /^rebuild of the copy on h1\/d1 started: 100\.0 MiB to copy$/);
  assert.match(messages[1]!, /: 20% \(21\.0 MiB of 100\.0 MiB\) at 10\.0 MiB\/s, about 5 s left$/);
  assert.match(messages[2]!, /: 60% /);
  assert.match(messages[3]!, /: 80% /);
  assert.match(messages[4]!, /done: 100\.0 MiB in 10\.0 s, 10\.0 MiB\/s on average; it is in sync$/);
});

test("a resync that stops short says where, whether the copy faulted or left", () => {
  const events = new ResyncEvents();
  events.observe(0, [copy(0)]);
  events.observe(1000, [copy(30)]);
  const faulted = events.observe(2000, [copy(null, "faulted")]);
  assert.deepEqual(
    faulted.map((event) => event.kind),
    ["resync-stopped"],
  );
  assert.match(faulted[0]!.message, /stopped at 30\.0 MiB of 100\.0 MiB: the copy is faulted/);
  events.observe(3000, [copy(5)]);
  const gone = events.observe(4000, []);
  assert.match(gone[0]!.message, /stopped at 5\.00 MiB of 100\.0 MiB: the copy left the volume/);
  assert.deepEqual(events.observe(5000, []), []);
});
