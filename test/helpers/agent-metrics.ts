// AgentView.metrics() answers for tests of the agent API that do not look at the metrics (nothing
// served, no VM, no cluster view yet), and a histogram snapshot to build richer ones from.

import type { AgentMetrics } from "../../src/agent/view.js";
import { LatencyHistogram, type HistogramSnapshot } from "../../src/util/latency-histogram.js";

/** What an agent that has not run a round yet reports: its timings only. */
export function noAgentMetrics(): AgentMetrics {
  return {
    timings: { leaseTtlMs: 6_000, renewIntervalMs: 1_000, fenceAfterMs: 3_500 },
    served: [],
    roleChanges: new Map(),
    vms: [],
    cluster: undefined,
  };
}

/** A histogram that observed `values` (seconds). */
export function histogramOf(values: readonly number[], bounds?: readonly number[]): HistogramSnapshot {
  const histogram = new LatencyHistogram(bounds);
  for (const value of values) histogram.observe(value);
  return histogram.snapshot();
}
