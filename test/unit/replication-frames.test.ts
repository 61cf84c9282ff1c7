// Replication frames: any frame round-trips however the stream is split, and bad input (garbage,
// wrong magic or version, unknown types, huge lengths) is refused with a reason before buffering.
// Their payloads (OPEN_REPLICA, SET_METADATA, metadata, BLOCK_STATUS extents) round-trip, and any
// garbage in them is refused with a HavenError, never an assertion: the server's edge cannot be tripped.

import assert from "node:assert/strict";
import fc from "fast-check";
import {
  encodeFrame,
  FrameDecoder,
  FrameError,
  payloadBytes,
  releaseFrame,
  type Frame,
} from "../../src/replica/protocol/frame-codec.js";
import { frame } from "../../src/replica/protocol/connection.js";
import {
  EXTENT_RECORD_BYTES,
  FrameType,
  FRAME_HEADER_BYTES,
  FRAME_TYPE_NAMES,
} from "../../src/replica/protocol/constants.js";
import {
  decodeExtents,
  encodeExtents,
  encodeMetadataPatch,
  encodeOpenRequest,
  parseMetadata,
  parseMetadataPatch,
  parseOpenRequest,
} from "../../src/replica/protocol/payloads.js";
import { HavenError } from "../../src/core/errors.js";
import type { MetadataPatch } from "../../src/replica/replica-store.js";
import { newChallenge, proof, verifyProof } from "../../src/replica/protocol/auth.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** Every test here takes well under a second; one still running after this bound is hung, not slow. */
const test = boundedTest(10_000);

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
        const fields = (frame: Frame): Frame => ({
          type: frame.type,
          flags: frame.flags,
          status: frame.status,
          requestId: frame.requestId,
          epoch: frame.epoch,
          offset: frame.offset,
          length: frame.length,
          payload: frame.payload,
        });
        assert.deepEqual(decoded.map(fields), frames.map(fields));
        for (const frame of decoded)
          assert.equal(payloadBytes(frame), frame.payload.length, "payloadBytes counts the pieces it arrived in");
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

const generationId = fc.stringMatching(/^[0-9a-f]{16}$/);
const generationsArbitrary = fc.oneof(
  fc.constant({ current: "", bitmap: "", history: [] as string[] }),
  fc.record({
    current: generationId,
    bitmap: fc.oneof(fc.constant(""), generationId),
    history: fc.array(generationId, { maxLength: 4 }),
  }),
);
const encodedBitmap = fc.oneof(fc.constant(""), fc.constant("all"), fc.base64String({ minLength: 4 }));
const patchArbitrary: fc.Arbitrary<MetadataPatch> = fc.record(
  {
    generations: generationsArbitrary,
    changedSince: fc.dictionary(generationId, encodedBitmap, { maxKeys: 4 }),
    activityLog: fc.array(fc.nat(), { maxLength: 20 }),
    resync: fc.oneof(fc.constant(null), fc.record({ validFor: generationId, remaining: encodedBitmap })),
  },
  { requiredKeys: [] },
);

test("payloads round-trip: OPEN_REPLICA requests, metadata patches, BLOCK_STATUS extents", () => {
  fc.assert(
    fc.property(
      fc.stringMatching(/^[a-z0-9][a-z0-9._-]{0,62}$/).filter((name) => name !== "." && name !== ".."),
      fc.option(
        fc.record({
          volumeId: generationId,
          sizeBytes: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
          regionBytes: fc.integer({ min: 12, max: 30 }).map((bits) => 2 ** bits),
        }),
        { nil: undefined },
      ),
      (name, create) => {
        const expected = { name, create: create && { ...create } };
        assert.deepEqual(parseOpenRequest(encodeOpenRequest(name, create)), expected);
      },
    ),
  );
  fc.assert(
    fc.property(patchArbitrary, (patch) => {
      assert.deepEqual(parseMetadataPatch(encodeMetadataPatch(patch)), JSON.parse(JSON.stringify(patch)));
    }),
  );
  fc.assert(
    fc.property(
      fc.array(fc.record({ length: fc.integer({ min: 1, max: 2 ** 40 }), hole: fc.boolean(), zero: fc.boolean() }), {
        minLength: 1,
        maxLength: 50,
      }),
      (extents) => {
        const total = extents.reduce((sum, extent) => sum + extent.length, 0);
        const encoded = encodeExtents(extents);
        assert.equal(encoded.length, extents.length * EXTENT_RECORD_BYTES);
        assert.deepEqual(
          decodeExtents(encoded, total),
          extents.map((extent) => ({ ...extent })),
        );
        if (total > 1) assert.throws(() => decodeExtents(encoded, total - 1), /cover more than/);
      },
    ),
  );
});

test("payload parsers refuse any garbage with a HavenError, never an assertion or a crash", () => {
  const jsonish = fc.oneof(
    fc.json(),
    fc.jsonValue().map((value) => JSON.stringify({ name: "vol", create: value })),
    fc.jsonValue().map((value) => JSON.stringify({ generations: value })),
    fc.jsonValue().map((value) => JSON.stringify({ changedSince: value, activityLog: value, resync: value })),
    fc.uint8Array({ maxLength: 200 }).map((bytes) => Buffer.from(bytes).toString("latin1")),
  );
  fc.assert(
    fc.property(jsonish, (text) => {
      const payload = Buffer.from(text, "latin1");
      for (const parse of [parseOpenRequest, parseMetadataPatch, parseMetadata]) {
        try {
          parse(payload);
        } catch (error) {
          assert.ok(error instanceof HavenError, `${parse.name} threw ${String(error)}`);
        }
      }
    }),
    { numRuns: 2000 },
  );
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 100 }), fc.nat(), (bytes, asked) => {
      try {
        const extents = decodeExtents(Buffer.from(bytes), asked);
        assert.ok(extents.length > 0 && extents.reduce((sum, e) => sum + e.length, 0) <= asked);
      } catch (error) {
        assert.ok(error instanceof HavenError);
      }
    }),
  );
  assert.throws(
    () =>
      parseMetadataPatch(
        Buffer.from(JSON.stringify({ generations: { current: "", bitmap: "0123456789abcdef", history: [] } })),
      ),
    (e: unknown) => e instanceof HavenError && e.code === "HAVEN_ERR_INVALID_REQUEST" && /no past/.test(e.message),
  );
});

test("with a release callback, only WRITE payloads stay in the socket's memory, until the frame is released", () => {
  const released: Buffer[] = [];
  const decoder = new FrameDecoder(undefined, (pieces) => {
    for (const piece of Buffer.isBuffer(pieces) ? [pieces] : pieces) released.push(piece);
  });
  const write = Buffer.alloc(1000, 7);
  const metadata = Buffer.from('{"x":1}');
  const stream = Buffer.concat([
    ...encodeFrame(frame(FrameType.WRITE, { offset: 4096n, epoch: 3n, payload: write })),
    ...encodeFrame(frame(FrameType.SET_METADATA, { payload: metadata })),
  ]);
  // Split so that each header and each payload spans chunks.
  const frames = [
    ...decoder.push(stream.subarray(0, 30)),
    ...decoder.push(stream.subarray(30, 600)),
    ...decoder.push(stream.subarray(600)),
  ];
  assert.equal(frames.length, 2);
  const releasedBytes = (): number => released.reduce((sum, piece) => sum + piece.length, 0);
  // Headers (48 bytes each) and the SET_METADATA payload, copied out, are released at once.
  assert.equal(releasedBytes(), 2 * FRAME_HEADER_BYTES + metadata.length);
  // The socket's memory is reused once released: the metadata payload, a copy, must not change with
  // it; the WRITE's pieces are views of it until released.
  stream.fill(0xee);
  assert.ok(frames[1]!.payload.equals(metadata), "the SET_METADATA payload was not copied out");
  assert.ok(Buffer.concat(frames[0]!.pieces as Buffer[]).equals(Buffer.alloc(write.length, 0xee)));
  releaseFrame(frames[0]!);
  assert.equal(releasedBytes(), stream.length);
  releaseFrame(frames[0]!); // twice is harmless
  assert.equal(releasedBytes(), stream.length);
});
