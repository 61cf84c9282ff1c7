// The admission gate of the replication port (admission.ts) and the decoder's limit before
// authentication: a peer that has not authenticated gets a bounded share of the server, and a frame
// announced larger than the handshake allows is refused from its header alone.

import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { AdmissionGate, isRefusal, type Admission } from "../../src/replica/admission.js";
import { FrameDecoder, FrameError, encodeFrame } from "../../src/replica/protocol/frame-codec.js";
import { frame } from "../../src/replica/protocol/connection.js";
import { FrameType, MAX_HANDSHAKE_PAYLOAD_BYTES } from "../../src/replica/protocol/constants.js";

const LIMITS = { maxUnauthenticatedPerAddress: 2, maxUnauthenticated: 3, authDeadlineMs: 1000 };

test("unauthenticated connections are refused past the per-address limit, and past the total limit", () => {
  const gate = new AdmissionGate(LIMITS);
  const a1 = gate.admit("10.0.0.1");
  const a2 = gate.admit("10.0.0.1");
  assert.ok(!isRefusal(a1) && !isRefusal(a2));
  const a3 = gate.admit("10.0.0.1");
  assert.ok(isRefusal(a3) && /2 connections from 10\.0\.0\.1 are already authenticating \(limit 2\)/.test(a3.refused));
  const b1 = gate.admit("10.0.0.2");
  assert.ok(!isRefusal(b1));
  const c1 = gate.admit("10.0.0.3");
  assert.ok(isRefusal(c1) && /3 connections are already authenticating \(limit 3\)/.test(c1.refused));
  (a1 as Admission).release();
  (a1 as Admission).release(); // idempotent: a connection that authenticates and then closes
  assert.equal(gate.unauthenticated, 2);
  assert.ok(!isRefusal(gate.admit("10.0.0.3")), "a released place is free again");
});

test("whatever the order of admissions and releases, the counts never pass the limits and return to zero", () => {
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 3 })), { maxLength: 60 }), (steps) => {
      const gate = new AdmissionGate(LIMITS);
      const held: Array<{ address: number; admission: Admission }> = [];
      for (const [admit, address] of steps) {
        if (admit) {
          const result = gate.admit(`10.0.0.${address}`);
          const fromAddress = held.filter((entry) => entry.address === address).length;
          const expectRefusal =
            fromAddress >= LIMITS.maxUnauthenticatedPerAddress || held.length >= LIMITS.maxUnauthenticated;
          assert.equal(isRefusal(result), expectRefusal);
          if (!isRefusal(result)) held.push({ address, admission: result });
        } else if (held.length > 0) {
          held.splice(address % held.length, 1)[0]!.admission.release();
        }
        assert.equal(gate.unauthenticated, held.length);
      }
      for (const entry of held) entry.admission.release();
      assert.equal(gate.unauthenticated, 0);
    }),
  );
});

test("before authentication a header announcing more than the handshake's payload is refused before its payload arrives", () => {
  const decoder = new FrameDecoder();
  decoder.limitPayload(MAX_HANDSHAKE_PAYLOAD_BYTES, " before authentication");
  const [header] = encodeFrame(frame(FrameType.AUTH, { payload: Buffer.alloc(MAX_HANDSHAKE_PAYLOAD_BYTES + 1) }));
  assert.throws(
    () => decoder.push(header!.subarray(0, 48)),
    (error: unknown) =>
      error instanceof FrameError &&
      /of 257 bytes exceeds the 256-byte limit before authentication/.test(error.message),
  );
  const fine = new FrameDecoder();
  fine.limitPayload(MAX_HANDSHAKE_PAYLOAD_BYTES, " before authentication");
  assert.equal(fine.push(Buffer.concat(encodeFrame(frame(FrameType.AUTH, { payload: Buffer.alloc(64) })))).length, 1);
});
