// Operator-typed sizes and addresses: exact values for the common spellings, clear errors otherwise.

import assert from "node:assert/strict";
import fc from "fast-check";
import { formatBytes, parseHostPort, parseSize } from "../../src/util/units.js";
import { HavenError } from "../../src/core/errors.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** Every test here takes well under a second; one still running after this bound is hung, not slow. */
const test = boundedTest(10_000);

test("sizes are binary and accept the usual unit spellings", () => {
  assert.equal(parseSize("512"), 512);
  assert.equal(parseSize("64M"), 64 * 1024 ** 2);
  assert.equal(parseSize("10G"), 10 * 1024 ** 3);
  assert.equal(parseSize("10GiB"), 10 * 1024 ** 3);
  assert.equal(parseSize("1t"), 1024 ** 4);
  assert.equal(parseSize("1.5K"), 1536);
});

test("bad sizes are usage errors that name the option", () => {
  for (const bad of ["", "abc", "-1G", "0", "1.3", "10Q", "1e9", "9999999999999999999T"]) {
    assert.throws(
      () => parseSize(bad, "--size"),
      (error: unknown) =>
        error instanceof HavenError && error.code === "HAVEN_ERR_USAGE" && error.message.includes("--size"),
      `"${bad}" must be refused`,
    );
  }
});

test("any whole byte count with a unit round-trips exactly", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 2 ** 20 }),
      fc.constantFrom(["K", 1024], ["M", 1024 ** 2], ["G", 1024 ** 3]),
      (n, [unit, scale]) => {
        assert.equal(parseSize(`${n}${unit}`), n * (scale as number));
      },
    ),
  );
});

test("HOST:PORT parses, including IPv6 in brackets; anything else is refused", () => {
  assert.deepEqual(parseHostPort("127.0.0.1:10809"), { host: "127.0.0.1", port: 10809 });
  assert.deepEqual(parseHostPort("[::1]:0"), { host: "::1", port: 0 });
  for (const bad of ["127.0.0.1", ":80", "host:70000", "host:port", ""]) {
    assert.throws(() => parseHostPort(bad), HavenError, bad);
  }
});

test("byte counts format with binary units", () => {
  assert.equal(formatBytes(512), "512 B");
  assert.equal(formatBytes(64 * 1024 ** 2), "64.0 MiB");
  assert.equal(formatBytes(1.5 * 1024 ** 3), "1.50 GiB");
});
