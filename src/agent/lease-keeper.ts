// The host's etcd lease: granted at start, renewed every renewIntervalMs (with renewRetries quick
// retries, each bounded by renewTimeoutMs), and the fence that follows from it (timings.ts has the
// model). The host may complete writes only while `mayComplete()` holds: its monotonic clock says less
// than fenceAfterMs has passed since the *send* of the last keepalive etcd accepted. When that stops
// holding, or etcd says the lease is gone, onLost fires once; the agent stops serving, and the keeper
// grants a new lease and calls onRegained so the host can register again, as a new incarnation.

import type { LeaseId } from "../cluster/etcd-client.js";
import type { ClusterStore } from "../cluster/store.js";
import { systemClock, type Clock } from "../util/clock.js";
import { fenceDeadlineMs, type Timings } from "./timings.js";
import { errorMessage } from "../core/errors.js";

export interface LeaseKeeperOptions {
  readonly etcd: ClusterStore;
  readonly timings: Timings;
  /** The lease was lost (expired, or not renewed in time): stop completing writes now. */
  readonly onLost: (reason: string) => void;
  /** A new lease is held (after start or after a loss): register the host's keys on it. */
  readonly onRegained: (lease: LeaseId) => Promise<void>;
  readonly log: (line: string) => void;
  /** Monotonic milliseconds; injected by tests. */
  readonly now?: () => number;
  /** Timers; the system clock unless injected. */
  readonly clock?: Clock;
}

export class LeaseKeeper {
  private lease: LeaseId | undefined;
  private lastRenewSentAt = Number.NEGATIVE_INFINITY;
  private timer: { cancel(): void } | undefined;
  private stopped = false;
  private held = false;
  private readonly now: () => number;

  constructor(private readonly options: LeaseKeeperOptions) {
    this.now = options.now ?? (() => performance.now());
  }

  /** Grants the first lease and registers; resolves once the host holds it. */
  async start(): Promise<void> {
    await this.acquire();
    this.schedule();
  }

  /** The lease id while it is held. */
  get current(): LeaseId | undefined {
    return this.held ? this.lease : undefined;
  }

  /** True while a write may still complete on this host (a fresh clock read each call). */
  mayComplete(): boolean {
    if (!this.held) return false;
    if (this.now() < fenceDeadlineMs(this.lastRenewSentAt, this.options.timings)) return true;
    this.lose(`no keepalive accepted for ${this.options.timings.fenceAfterMs} ms`);
    return false;
  }

  /** How long ago (ms) the last keepalive etcd accepted was sent; Infinity before the first. */
  lastAcceptedAgoMs(): number {
    return this.now() - this.lastRenewSentAt;
  }

  /** Stops renewing; with `revoke`, also deletes the host's lease-bound keys at once (a clean exit). */
  async stop(revoke: boolean): Promise<void> {
    this.stopped = true;
    this.timer?.cancel();
    const lease = this.lease;
    this.held = false;
    if (revoke && lease !== undefined) await this.options.etcd.revokeLease(lease).catch(() => undefined);
  }

  private async acquire(): Promise<void> {
    const ttlSeconds = Math.ceil(this.options.timings.leaseTtlMs / 1000);
    const sentAt = this.now();
    const lease = await this.options.etcd.grantLease(ttlSeconds);
    this.lease = lease.id;
    this.lastRenewSentAt = sentAt;
    this.held = true;
    await this.options.onRegained(lease.id);
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = (this.options.clock ?? systemClock).schedule(
      this.options.timings.renewIntervalMs,
      () => void this.tick(),
    );
  }

  private async tick(): Promise<void> {
    try {
      if (this.held) await this.renew();
      else
        await this.acquire().catch((error: unknown) =>
          this.options.log(`lease: cannot get a new one: ${errorMessage(error)}`),
        );
    } finally {
      this.schedule();
    }
  }

  /** One keepalive with its retries; a refusal (TTL 0) or running out of time loses the lease. */
  private async renew(): Promise<void> {
    const { timings, etcd } = this.options;
    const lease = this.lease!;
    for (let attempt = 0; attempt <= timings.renewRetries && !this.stopped; attempt++) {
      const sentAt = this.now();
      try {
        const ttl = await withTimeout(
          etcd.keepAliveOnce(lease),
          timings.renewTimeoutMs,
          this.options.clock ?? systemClock,
        );
        if (ttl === 0) return this.lose("etcd says the lease has expired");
        if (this.held && lease === this.lease) this.lastRenewSentAt = Math.max(this.lastRenewSentAt, sentAt);
        return;
      } catch (error) {
        this.options.log(`lease: keepalive ${attempt + 1} failed: ${errorMessage(error)}`);
      }
      if (!this.mayComplete()) return;
    }
  }

  private lose(reason: string): void {
    if (!this.held) return;
    this.held = false;
    this.options.log(`lease lost: ${reason}`);
    this.options.onLost(reason);
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number, clock: Clock): Promise<T> {
  let timer: { cancel(): void } | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = clock.schedule(ms, () => reject(new Error(`no answer within ${ms} ms`)));
  });
  return Promise.race([promise, timeout]).finally(() => timer?.cancel());
}
