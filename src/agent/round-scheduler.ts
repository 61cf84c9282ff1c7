// When reconcile rounds run: every healthCheckIntervalMs, and at once when the store says something the
// agent must act on changed (a host's lease expired, a primary record changed, a switchover was asked),
// so a failover starts as soon as the store says the primary is gone. Rounds never overlap: a change
// during a round asks for another right after it. A watch that breaks is set up again after a pause;
// meanwhile the periodic rounds carry on (polling only).

import type { ClusterStore } from "../cluster/store.js";
import type { Watch } from "../cluster/etcd-client.js";
import { errorMessage } from "../core/errors.js";
import type { Clock } from "../util/clock.js";

/** Before a broken watch is set up again. */
const WATCH_RETRY_MS = 1_000;

export interface RoundSchedulerOptions {
  readonly store: ClusterStore;
  readonly clock: Clock;
  readonly intervalMs: number;
  /** The prefixes whose changes call for a round at once. */
  readonly watched: readonly string[];
  readonly round: () => Promise<void>;
  readonly log: (line: string) => void;
}

export class RoundScheduler {
  private timer: { cancel(): void } | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  private readonly watches = new Map<string, Watch>();
  private readonly retries = new Set<{ cancel(): void }>();

  constructor(private readonly options: RoundSchedulerOptions) {}

  start(): void {
    for (const prefix of this.options.watched) this.watch(prefix);
    this.schedule(0);
  }

  /** Stops scheduling and watching; resolves when the round in progress (if any) is over. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.timer?.cancel();
    for (const retry of this.retries) retry.cancel();
    for (const watch of this.watches.values()) watch.cancel();
    await this.running;
  }

  /** A round as soon as the current one (if any) is done. */
  soon(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.timer?.cancel();
    this.schedule(0);
  }

  private schedule(delayMs = this.options.intervalMs): void {
    if (this.stopped) return;
    this.timer = this.options.clock.schedule(delayMs, () => {
      this.running = this.options
        .round()
        .catch((error: unknown) => this.options.log(`reconcile: ${errorMessage(error)}`))
        .finally(() => {
          this.running = undefined;
          const again = this.again;
          this.again = false;
          this.schedule(again ? 0 : undefined);
        });
    });
  }

  private watch(prefix: string): void {
    if (this.stopped) return;
    const retry = (): void => {
      if (this.stopped) return;
      const timer = this.options.clock.schedule(WATCH_RETRY_MS, () => {
        this.retries.delete(timer);
        this.watch(prefix);
      });
      this.retries.add(timer);
    };
    const watch = this.options.store.watchPrefix(prefix, { onClose: (reason) => reason !== undefined && retry() }, () =>
      this.soon(),
    );
    this.watches.set(prefix, watch);
    watch.ready.catch((error: unknown) => {
      this.options.log(`watching ${prefix} failed: ${errorMessage(error)}; polling only`);
      retry();
    });
  }
}
