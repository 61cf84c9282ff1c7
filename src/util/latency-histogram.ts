// A latency histogram cheap enough for every client request: fixed bucket bounds chosen up front, one
// preallocated array of counts, and observe() is a short scan and two additions (no allocation, no
// labels, no hashing). It knows nothing of Prometheus; the metrics layer (src/api/metrics/) reads
// snapshot() at scrape time and renders it with `le` labels, as a Prometheus histogram's cumulative
// buckets. bench/metrics puts its cost next to an NBD request's.

import assert from "node:assert/strict";

/**
 * Upper bounds (seconds) for one NBD request through an engine: from a page-cache hit on a local copy
 * (tens of microseconds) to a write waiting for a slow remote copy or a lease that is being proven
 * (seconds). A value above the last bound lands in the implicit +Inf bucket.
 */
export const REQUEST_SECONDS_BOUNDS: readonly number[] = Object.freeze([
  0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
]);

/** What a histogram holds at one moment; `cumulative[i]` counts the values <= bounds[i]. */
export interface HistogramSnapshot {
  readonly bounds: readonly number[];
  readonly cumulative: readonly number[];
  readonly sum: number;
  readonly count: number;
}

export class LatencyHistogram {
  /** Per bucket (not cumulative): counts[i] holds values in (bounds[i-1], bounds[i]]; the last is +Inf. */
  private readonly counts: Float64Array;
  private sum = 0;

  constructor(readonly bounds: readonly number[] = REQUEST_SECONDS_BOUNDS) {
    assert(bounds.length > 0, "a histogram needs at least one bucket bound");
    for (let i = 1; i < bounds.length; i++) assert(bounds[i]! > bounds[i - 1]!, "bucket bounds must increase");
    this.counts = new Float64Array(bounds.length + 1);
  }

  /** Records one value (seconds). */
  observe(seconds: number): void {
    const bounds = this.bounds;
    let i = 0;
    while (i < bounds.length && seconds > bounds[i]!) i++;
    this.counts[i]!++;
    this.sum += seconds;
  }

  snapshot(): HistogramSnapshot {
    const cumulative: number[] = [];
    let running = 0;
    for (let i = 0; i < this.bounds.length; i++) {
      running += this.counts[i]!;
      cumulative.push(running);
    }
    return { bounds: this.bounds, cumulative, sum: this.sum, count: running + this.counts[this.bounds.length]! };
  }
}
