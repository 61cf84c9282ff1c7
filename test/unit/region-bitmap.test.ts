// The out-of-sync bitmap against a byte-per-region model: marking never misses a touched region,
// clearing never clears a region it did not fully cover, runs and counts match, and it round-trips.

import assert from "node:assert/strict";
import fc from "fast-check";
import { RegionBitmap } from "../../src/replica/region-bitmap.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** Every test here takes well under a second; one still running after this bound is hung, not slow. */
const test = boundedTest(10_000);

const REGION = 4096;

test("marks, clears, runs and serialization agree with a simple model", () => {
  const operation = fc.record({
    mark: fc.boolean(),
    offset: fc.nat({ max: 300_000 }),
    length: fc.nat({ max: 60_000 }),
  });
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 300_000 }),
      fc.array(operation, { maxLength: 30 }),
      fc.integer({ min: 1, max: 5 }),
      (volume, operations, maxRunRegions) => {
        const bitmap = new RegionBitmap(volume, REGION);
        const model = new Array<boolean>(bitmap.regionCount).fill(false);
        for (const op of operations) {
          const offset = Math.min(op.offset, volume - 1);
          const length = Math.min(op.length, volume - offset);
          if (length === 0) continue;
          const firstTouched = Math.floor(offset / REGION);
          const lastTouched = Math.floor((offset + length - 1) / REGION);
          if (op.mark) {
            bitmap.markRange(offset, length);
            for (let r = firstTouched; r <= lastTouched; r++) model[r] = true;
            assert.ok(bitmap.overlaps(offset, length));
          } else {
            bitmap.clearRange(offset, length);
            for (let r = firstTouched; r <= lastTouched; r++) {
              const start = r * REGION;
              const end = Math.min(start + REGION, volume);
              if (start >= offset && end <= offset + length) model[r] = false;
            }
          }
        }
        assert.deepEqual(
          Array.from({ length: bitmap.regionCount }, (_, r) => bitmap.isSet(r)),
          model,
        );
        assert.equal(bitmap.count, model.filter(Boolean).length);
        let covered = 0;
        for (const run of bitmap.runs(maxRunRegions * REGION)) {
          assert.ok(run.length <= maxRunRegions * REGION);
          for (let p = run.offset; p < run.offset + run.length; p += REGION) assert.ok(model[p / REGION]);
          covered += run.length;
        }
        assert.equal(covered, bitmap.bytes, "runs cover exactly the marked bytes");
        const copy = RegionBitmap.fromBuffer(volume, REGION, bitmap.toBuffer());
        assert.deepEqual([...copy.runs()], [...bitmap.runs()]);
        assert.equal(copy.count, bitmap.count);
      },
    ),
    { numRuns: 500 },
  );
});

test("ranges past the volume are a broken invariant", () => {
  const bitmap = new RegionBitmap(10_000, REGION);
  assert.throws(() => bitmap.markRange(9_000, 2_000), /past the volume/);
  assert.throws(() => new RegionBitmap(1000, 3000), /power of two/);
});
