// A Prometheus histogram rendered from histograms kept elsewhere (the engine's and the agent's
// LatencyHistogram, src/util/latency-histogram.ts), read at scrape time. prom-client's own Histogram
// counts each observation itself (hashing its labels every time), which is too dear for every NBD
// request and would make the engine depend on the metrics layer; this collector only renders what
// the owners counted: one `_bucket` sample per bound (cumulative, `le` inclusive), `le="+Inf"` equal to
// `_count`, then `_sum` and `_count`, as the text format asks.

import type { HistogramSnapshot } from "../../util/latency-histogram.js";

export interface LabelledHistogram {
  readonly labels: Readonly<Record<string, string>>;
  readonly histogram: HistogramSnapshot;
}

interface Sample {
  readonly metricName: string;
  readonly labels: Record<string, string | number>;
  readonly value: number;
}

/**
 * The shape prom-client's Registry reads from a metric (name, help, type, aggregator, and get()
 * resolving to its samples); registered with Registry.registerMetric.
 */
export class SnapshotHistogram {
  readonly type = "histogram";
  readonly aggregator = "sum";

  constructor(
    readonly name: string,
    readonly help: string,
    private readonly read: () => Iterable<LabelledHistogram>,
  ) {}

  get(): Promise<{ name: string; help: string; type: "histogram"; aggregator: "sum"; values: Sample[] }> {
    const values: Sample[] = [];
    for (const { labels, histogram } of this.read()) {
      histogram.bounds.forEach((bound, i) =>
        values.push({
          metricName: `${this.name}_bucket`,
          labels: { ...labels, le: bound },
          value: histogram.cumulative[i]!,
        }),
      );
      values.push({ metricName: `${this.name}_bucket`, labels: { ...labels, le: "+Inf" }, value: histogram.count });
      values.push({ metricName: `${this.name}_sum`, labels: { ...labels }, value: histogram.sum });
      values.push({ metricName: `${this.name}_count`, labels: { ...labels }, value: histogram.count });
    }
    return Promise.resolve({ name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values });
  }

  /** Nothing to reset: the owners keep the counts (Registry.resetMetrics calls this). */
  reset(): void {}
}
