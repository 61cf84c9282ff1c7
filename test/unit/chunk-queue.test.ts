// The receive queue under any split of the byte stream: taking runs (copied or as slices) always
// yields exactly the bytes that were pushed, in order.

import assert from "node:assert/strict";
import fc from "fast-check";
import { ChunkQueue } from "../../src/util/chunk-queue.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** Every test here takes well under a second; one still running after this bound is hung, not slow. */
const test = boundedTest(10_000);

test("takes return the pushed bytes in order, however the stream was chunked", () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 1, maxLength: 500 }),
      fc.array(fc.integer({ min: 1, max: 60 }), { minLength: 1, maxLength: 40 }),
      fc.array(fc.tuple(fc.integer({ min: 1, max: 80 }), fc.boolean()), { minLength: 1, maxLength: 40 }),
      (bytes, chunkSizes, takes) => {
        const stream = Buffer.from(bytes);
        const queue = new ChunkQueue();
        let pushed = 0;
        for (let i = 0; pushed < stream.length; i++) {
          const size = Math.min(chunkSizes[i % chunkSizes.length]!, stream.length - pushed);
          queue.push(stream.subarray(pushed, pushed + size));
          pushed += size;
        }
        let position = 0;
        for (const [size, asPieces] of takes) {
          const n = Math.min(size, queue.length);
          if (n === 0) break;
          const got = asPieces ? Buffer.concat(queue.takePieces(n)) : queue.take(n);
          assert.ok(got.equals(stream.subarray(position, position + n)));
          position += n;
          assert.equal(queue.length, stream.length - position);
        }
        assert.ok(Buffer.concat(queue.drain()).equals(stream.subarray(position)));
        assert.equal(queue.length, 0);
      },
    ),
  );
});

test("taking more than is buffered is a bug, not a short read", () => {
  const queue = new ChunkQueue();
  queue.push(Buffer.alloc(10));
  assert.throws(() => queue.takePieces(11), RangeError);
});
