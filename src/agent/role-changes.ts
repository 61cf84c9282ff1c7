// The failovers and switchovers this agent carried out, counted per volume for the metrics, with how
// long each took. Only the agent that acts knows: a failover is counted by the standby that promoted
// its copy (reconciler.ts, once its engine serves), a switchover by the primary that handed the volume
// over or refused to (switchover.ts). Counts live as long as the agent process, as Prometheus counters
// expect (a restart starts them at zero again).
//
// Durations, on the agent's monotonic clock:
// - failover: from the round that first saw the old primary's host without a lease to the promoted
//   engine serving (it leaves out the lease's TTL before that: no agent can see the death sooner);
// - switchover: from the start of the handover (the flushes before the clean stop) to the primary
//   record passing to the target, or to the refusal.

import { LatencyHistogram, type HistogramSnapshot } from "../util/latency-histogram.js";

/** From a fast local switchover (a few hundred ms) to a failover that waited for a slow engine start. */
export const ROLE_CHANGE_SECONDS_BOUNDS: readonly number[] = Object.freeze([
  0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120,
]);

export type SwitchoverResult = "done" | "refused";

export interface VolumeRoleChanges {
  readonly failovers: number;
  readonly failoverSeconds: HistogramSnapshot;
  readonly switchovers: Readonly<Record<SwitchoverResult, number>>;
  readonly switchoverSeconds: HistogramSnapshot;
}

interface Counts {
  failovers: number;
  readonly failoverSeconds: LatencyHistogram;
  readonly switchovers: Record<SwitchoverResult, number>;
  readonly switchoverSeconds: LatencyHistogram;
}

export class RoleChanges {
  private readonly volumes = new Map<string, Counts>();

  /** This host promoted its copy of `volume` and serves it; the failover took `durationMs`. */
  failover(volume: string, durationMs: number): void {
    const counts = this.of(volume);
    counts.failovers++;
    counts.failoverSeconds.observe(Math.max(0, durationMs) / 1000);
  }

  /** This host handed `volume` over (done) or refused the request (refused) after `durationMs`. */
  switchover(volume: string, result: SwitchoverResult, durationMs: number): void {
    const counts = this.of(volume);
    counts.switchovers[result]++;
    counts.switchoverSeconds.observe(Math.max(0, durationMs) / 1000);
  }

  /** The counts of `volume`: zeros (with empty histograms) when nothing happened to it here. */
  snapshot(volume: string): VolumeRoleChanges {
    const counts = this.volumes.get(volume) ?? newCounts();
    return {
      failovers: counts.failovers,
      failoverSeconds: counts.failoverSeconds.snapshot(),
      switchovers: { ...counts.switchovers },
      switchoverSeconds: counts.switchoverSeconds.snapshot(),
    };
  }

  /** The volumes something happened to here. */
  names(): string[] {
    return [...this.volumes.keys()];
  }

  private of(volume: string): Counts {
    let counts = this.volumes.get(volume);
    if (counts === undefined) {
      counts = newCounts();
      this.volumes.set(volume, counts);
    }
    return counts;
  }
}

function newCounts(): Counts {
  return {
    failovers: 0,
    failoverSeconds: new LatencyHistogram(ROLE_CHANGE_SECONDS_BOUNDS),
    switchovers: { done: 0, refused: 0 },
    switchoverSeconds: new LatencyHistogram(ROLE_CHANGE_SECONDS_BOUNDS),
  };
}
