// `haven events --since`: a duration back from now or a time; anything else is a usage error.

import assert from "node:assert/strict";
import { parseSince } from "../../src/cli/commands/events.js";
import { failsWith } from "../helpers/errors.js";
import { boundedTest } from "../helpers/bounded-test.js";

const test = boundedTest(10_000);

const NOW = Date.parse("2026-12-05T21:00:00.000Z");

test("--since takes a duration back from now: seconds, minutes, hours, days", () => {
  assert.equal(parseSince("90s", NOW), NOW - 90_000);
  assert.equal(parseSince("10m", NOW), NOW - 600_000);
  assert.equal(parseSince("2h", NOW), NOW - 7_200_000);
  assert.equal(parseSince("1d", NOW), NOW - 86_400_000);
});

test("--since takes a time: ISO 8601 with a zone as given, without one in local time", () => {
  assert.equal(parseSince("2026-12-05T20:30:00Z", NOW), Date.parse("2026-12-05T20:30:00Z"));
  assert.equal(parseSince("2026-12-05T20:30:00+01:00", NOW), Date.parse("2026-12-05T19:30:00Z"));
  assert.equal(parseSince("2026-12-05 20:30", NOW), new Date(2026, 11, 5, 20, 30).getTime());
  assert.equal(parseSince("2026-12-05", NOW), new Date(2026, 11, 5).getTime());
});

test("--since refuses what is neither, with a usage error that shows both forms", () => {
  for (const bad of ["10", "10 m", "-5m", "yesterday", "5w", "2026-13-45T99:00", ""])
    assert.throws(
      () => parseSince(bad, NOW),
      failsWith("HAVEN_ERR_USAGE", /--since takes a duration \(90s, 10m, 2h, 1d\) or a time/),
      bad,
    );
});
