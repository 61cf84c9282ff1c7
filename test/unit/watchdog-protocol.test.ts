// The watchdog's line protocol: every message the agent sends parses back to itself, and lines that are
// not messages (the watchdog ignores them) parse to nothing, including pids that would name init or a
// process group, and names QEMU's `-name guest=` could not carry.

import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { parseWatchdogLine, watchdogLine, type WatchdogMessage } from "../../src/agent/watchdog-protocol.js";

test("every message the agent sends parses back to itself", () => {
  const pid = fc.integer({ min: 2, max: 0x7fffffff });
  const name = fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/);
  const message: fc.Arbitrary<WatchdogMessage> = fc.oneof(
    fc.constant({ kind: "kick" as const }),
    fc.constant({ kind: "bye" as const }),
    fc.record({ kind: fc.constant("track" as const), pid, name }),
    fc.record({ kind: fc.constant("untrack" as const), pid }),
  );
  fc.assert(
    fc.property(message, (sent) => {
      const line = watchdogLine(sent);
      assert.ok(line.endsWith("\n") && !line.slice(0, -1).includes("\n"));
      assert.deepEqual(parseWatchdogLine(line.slice(0, -1)), { ...sent });
    }),
  );
});

test("lines that are not messages parse to nothing", () => {
  for (const line of [
    "",
    "kick ",
    "KICK",
    "bye now",
    "vm",
    "vm 123 web",
    "vm +0 web",
    "vm +1 web",
    "vm +-5 web",
    "vm +0123 web",
    "vm +99999999999 web",
    "vm +123",
    "vm +123 web extra",
    "vm +123 bad,name",
    "vm +123 -dash",
    "vm -123 web",
    "vm -1",
    "vm  +123 web",
  ])
    assert.equal(parseWatchdogLine(line), undefined, JSON.stringify(line));
});

test("the agent cannot send a pid or VM name the protocol cannot carry", () => {
  assert.throws(() => watchdogLine({ kind: "track", pid: 1, name: "web" }), RangeError);
  assert.throws(() => watchdogLine({ kind: "track", pid: 123, name: "two words" }), RangeError);
  assert.throws(() => watchdogLine({ kind: "untrack", pid: -5 }), RangeError);
});
