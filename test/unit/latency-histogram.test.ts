// The histograms behind the metrics' latencies: a value lands in the first bucket whose bound is at
// least it (Prometheus' `le` is inclusive), the buckets are cumulative, the last one (+Inf) is the
// count, and the sum is the values' sum; the served-request and role-change counts add up.

import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { LatencyHistogram, REQUEST_SECONDS_BOUNDS } from "../../src/util/latency-histogram.js";
import { ServedRequests } from "../../src/util/served-requests.js";
import { RoleChanges } from "../../src/agent/role-changes.js";

test("a histogram's buckets count every value at most their bound, cumulatively, and +Inf is the count", () => {
  fc.assert(
    fc.property(fc.array(fc.double({ min: 0, max: 20, noNaN: true }), { maxLength: 200 }), (values) => {
      const histogram = new LatencyHistogram();
      for (const value of values) histogram.observe(value);
      const snapshot = histogram.snapshot();
      assert.deepEqual(snapshot.bounds, REQUEST_SECONDS_BOUNDS);
      snapshot.bounds.forEach((bound, i) =>
        assert.equal(snapshot.cumulative[i], values.filter((value) => value <= bound).length, `le=${bound}`),
      );
      assert.equal(snapshot.count, values.length);
      const sum = values.reduce((total, value) => total + value, 0);
      assert.ok(Math.abs(snapshot.sum - sum) <= 1e-9 * Math.max(1, sum));
    }),
  );
});

test("a value equal to a bound counts in that bound's bucket (le is inclusive)", () => {
  const histogram = new LatencyHistogram([0.1, 1]);
  histogram.observe(0.1);
  histogram.observe(1);
  histogram.observe(1.5);
  assert.deepEqual(histogram.snapshot(), { bounds: [0.1, 1], cumulative: [1, 2], sum: 2.6, count: 3 });
});

test("bounds that do not increase are refused", () => {
  assert.throws(() => new LatencyHistogram([1, 1]), /increase/);
  assert.throws(() => new LatencyHistogram([]), /at least one/);
});

test("served requests count reads and writes with their bytes and latency", () => {
  const served = new ServedRequests();
  served.read(4096, 0.0002);
  served.read(65536, 0.001);
  served.write(0, 0.002);
  assert.deepEqual([served.reads, served.readBytes, served.writes, served.writtenBytes], [2, 69632, 1, 0]);
  assert.equal(served.readSeconds.snapshot().count, 2);
  assert.equal(served.writeSeconds.snapshot().count, 1);
});

test("role changes count failovers and switchovers per volume, zero for a volume nothing happened to", () => {
  const changes = new RoleChanges();
  changes.failover("a", 1_500);
  changes.switchover("a", "done", 300);
  changes.switchover("a", "refused", 50);
  changes.switchover("b", "done", 400);
  const a = changes.snapshot("a");
  assert.equal(a.failovers, 1);
  assert.equal(a.failoverSeconds.sum, 1.5);
  assert.deepEqual(a.switchovers, { done: 1, refused: 1 });
  assert.equal(a.switchoverSeconds.count, 2);
  assert.deepEqual(changes.names().sort(), ["a", "b"]);
  const none = changes.snapshot("c");
  assert.equal(none.failovers + none.switchovers.done + none.switchovers.refused + none.failoverSeconds.count, 0);
});
