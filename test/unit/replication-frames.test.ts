// Replication frames: any frame round-trips however the stream is split, and bad input (garbage,
// wrong magic or version, unknown types, huge lengths) is refused with a reason before buffering.

import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { encodeFrame, FrameDecoder, FrameError, type Frame } from "../../src/replica/protocol/frame-codec.js";
import { FrameType, FRAME_HEADER_BYTES, FRAME_TYPE_NAMES } from "../../src/replica/protocol/constants.js";
import { newChallenge, proof, verifyProof } from "../../src/replica/protocol/auth.js";

const frameArbitrary: fc.Arbitrary<Frame> = fc.record({
  type: fc.constantFrom(...Object.values(FrameType)),
  flags: fc.nat({ max: 0xffffffff }),
  status: fc.nat({ max: 0xffffffff }),
  requestId: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  epoch: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  offset: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  length: fc.nat({ max: 0xffffffff }),
  payload: fc.uint8Array({ maxLength: 3000 }).map((bytes) => Buffer.from(bytes)),
});

test("frames round-trip through any split of the byte stream", () => {
  fc.assert(
    fc.property(
      fc.array(frameArbitrary, { minLength: 1, maxLength: 5 }),
      fc.array(fc.integer({ min: 1, max: 500 }), { minLength: 1 }),
      (frames, cuts) => {
        const stream = Buffer.concat(frames.flatMap(encodeFrame));
        const decoder = new FrameDecoder();
        const decoded: Frame[] = [];
        let position = 0;
        for (let i = 0; position < stream.length; i++) {
          const size = Math.min(cuts[i % cuts.length]!, stream.length - position);
          decoded.push(...decoder.push(stream.subarray(position, position + size)));
          position += size;
        }
        assert.deepEqual(
          decoded,
          frames.map((frame) => ({ ...frame })),
        );
        assert.equal(decoder.buffered, 0);
      },
    ),
  );
});

test("bad headers are refused with a reason, before any payload is buffered", () => {
  const good = Buffer.concat(
    encodeFrame({
      type: FrameType.PING,
      flags: 0,
      status: 0,
      requestId: 1n,
      epoch: 1n,
      offset: 0n,
      length: 0,
      payload: Buffer.alloc(0),
    }),
  );
  const cases: Array<[string, (b: Buffer) => void, RegExp]> = [
    ["magic", (b) => b.writeUInt32BE(0x12345678, 0), /bad frame magic/],
    ["version", (b) => b.writeUInt16BE(9, 4), /protocol version 9 is not supported/],
    ["type", (b) => b.writeUInt16BE(999, 6), /unknown frame type 999/],
    ["huge length", (b) => b.writeUInt32BE(0xffffffff, 44), /exceeds/],
  ];
  for (const [what, damage, message] of cases) {
    const bad = Buffer.from(good);
    damage(bad);
    assert.throws(
      () => new FrameDecoder().push(bad),
      (e: unknown) => e instanceof FrameError && message.test(e.message),
      what,
    );
  }
});

test("garbage never decodes into a frame silently: it is refused or waits for more bytes", () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: FRAME_HEADER_BYTES, maxLength: 400 }), (bytes) => {
      try {
        const frames = new FrameDecoder().push(Buffer.from(bytes));
        // Only a header with the right magic, version and type can get this far.
        for (const frame of frames) assert.ok(FRAME_TYPE_NAMES[frame.type] !== undefined);
        assert.equal(Buffer.from(bytes).readUInt32BE(0), 0x48565250);
      } catch (error) {
        assert.ok(error instanceof FrameError);
      }
    }),
    { numRuns: 2000 },
  );
});

test("challenge-response proves the secret, and a wrong secret, role or challenge fails", () => {
  const secret = Buffer.from("a shared secret of the cluster");
  const challenge = newChallenge();
  const answer = proof(secret, "engine", challenge);
  assert.ok(verifyProof(secret, "engine", challenge, answer));
  assert.ok(!verifyProof(Buffer.from("another secret"), "engine", challenge, answer));
  assert.ok(!verifyProof(secret, "replica-server", challenge, answer), "a proof cannot be reflected");
  assert.ok(!verifyProof(secret, "engine", newChallenge(), answer), "a proof cannot be replayed on a new challenge");
  assert.ok(!verifyProof(secret, "engine", challenge, answer.subarray(0, 16)));
});
