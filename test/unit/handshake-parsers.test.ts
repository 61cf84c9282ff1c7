// The option payload parsers face untrusted bytes: they must never throw, must reject every payload
// whose lengths do not add up, and must return exactly what a well-formed payload encodes.

import assert from "node:assert/strict";
import fc from "fast-check";
import { parseInfoRequest, parseMetaContextRequest } from "../../src/nbd/handshake.js";
import { infoPayload, metaContextPayload } from "../helpers/raw-nbd-client.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** Every test here takes well under a second; one still running after this bound is hung, not slow. */
const test = boundedTest(10_000);

const name = fc.string({ maxLength: 64 });

test("well-formed GO/INFO payloads decode to what was encoded", () => {
  fc.assert(
    fc.property(name, fc.array(fc.integer({ min: 0, max: 0xffff }), { maxLength: 16 }), (exportName, infos) => {
      assert.deepEqual(parseInfoRequest(infoPayload(exportName, infos)), { name: exportName, infos });
    }),
  );
});

test("well-formed meta context payloads decode to what was encoded", () => {
  fc.assert(
    fc.property(name, fc.array(fc.string({ maxLength: 40 }), { maxLength: 8 }), (exportName, queries) => {
      assert.deepEqual(parseMetaContextRequest(metaContextPayload(exportName, queries)), { exportName, queries });
    }),
  );
});

test("arbitrary bytes never throw: they decode or are refused with a reason", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
      const buffer = Buffer.from(bytes);
      for (const result of [parseInfoRequest(buffer), parseMetaContextRequest(buffer)]) {
        assert.ok(typeof result === "string" || typeof result === "object");
      }
    }),
    { numRuns: 2000 },
  );
});

test("truncating or extending a valid payload by any amount is refused", () => {
  fc.assert(
    fc.property(
      name,
      fc.array(fc.string({ maxLength: 20 }), { minLength: 1, maxLength: 4 }),
      fc.integer({ min: 1, max: 30 }),
      (exportName, queries, cut) => {
        const info = infoPayload(exportName, [1, 2, 3]);
        const meta = metaContextPayload(exportName, queries);
        if (cut <= info.length) assert.equal(typeof parseInfoRequest(info.subarray(0, info.length - cut)), "string");
        assert.equal(typeof parseInfoRequest(Buffer.concat([info, Buffer.alloc(cut)])), "string");
        if (cut <= meta.length)
          assert.equal(typeof parseMetaContextRequest(meta.subarray(0, meta.length - cut)), "string");
        assert.equal(typeof parseMetaContextRequest(Buffer.concat([meta, Buffer.alloc(cut)])), "string");
      },
    ),
  );
});
