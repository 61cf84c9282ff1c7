// The host's etcd lease: granted at start, renewed every renewIntervalMs, and the fence that follows
// from it (timings.ts has the model and the argument). The lease is in one of three states, read with a
// fresh clock read each time (S is the send time of the last keepalive etcd accepted, the grant counting
// as the first):
//
//   held      now < S + fenceAfterMs: writes may complete.
//   unproven  S + fenceAfterMs <= now < S + leaseTtlMs, and etcd has not said the lease is gone: this
//             host cannot prove it still holds the lease, so nothing may be acknowledged, but the lease
//             may well be alive (etcd slow or briefly unreachable). Completions wait; the keeper keeps
//             sending keepalives, one per renewTimeoutMs, and the first that etcd accepts (TTL > 0) makes
//             the lease held again: the same lease, so no other host can have been promoted meanwhile.
//   lost      etcd answered TTL 0 or "no such lease", or now >= S + leaseTtlMs (the lease's earliest
//             expiry has come: a standby may be promoting), or the keeper stopped. onLost fires once
//             (not on stop); every waiting completion fails; the keeper asks for a new lease every
//             renewIntervalMs and calls onRegained with it, so the host registers again as a new
//             incarnation.
//
// Renew cadence: a keepalive is sent renewIntervalMs after the send of the last accepted one; a failed
// or unanswered one (renewTimeoutMs) is followed by the next renewTimeoutMs after its own send, until one
// is accepted or the lease is lost. An answer that arrives after its attempt timed out still counts
// (its send time is still a lower bound on when etcd applied it). checkTimings guarantees that
// renewRetries retries are sent and answered before the fence deadline.
//
// The world is injected: time through a Clock, etcd through a ClusterStore, so the unit tests run the
// keeper on a fake clock against a scripted store.

import type { LeaseId } from "../cluster/etcd-client.js";
import type { ClusterStore } from "../cluster/store.js";
import { HavenError, errorMessage } from "../core/errors.js";
import type { Clock } from "../util/clock.js";
import { fenceDeadlineMs, leaseLostDeadlineMs, type Timings } from "./timings.js";

export type LeaseState = "held" | "unproven" | "lost";

export interface LeaseKeeperOptions {
  readonly store: ClusterStore;
  readonly clock: Clock;
  readonly timings: Timings;
  /** The lease is lost (see the states above): stop completing writes and stop serving now. */
  readonly onLost: (reason: string) => void;
  /** A new lease is held (after start or after a loss): register the host's keys on it. */
  readonly onRegained: (lease: LeaseId) => Promise<void>;
  /** The lease became unproven (the host pauses its VMs), and held again after that (it resumes them). */
  readonly onUnproven?: () => void;
  readonly onHeldAgain?: () => void;
  readonly log: (line: string) => void;
  /** The wall clock, to say in the log at what time the lease expires (without it: in how long). */
  readonly wallTime?: () => Date;
}

/**
 * While keepalives fail, the log says so once at the first failure, then at most once per this long:
 * a line per keepalive (several a second) said nothing new and buried everything else.
 */
export const KEEPALIVE_FAILURE_LOG_INTERVAL_MS = 5_000;

type Answer = "accepted" | "refused" | "failed";

export class LeaseKeeper {
  /** The lease held or being proven; undefined once lost, before start and after stop. */
  private lease: LeaseId | undefined;
  /** S: the send time of the last keepalive etcd accepted for `lease` (the grant counts). */
  private lastRenewSentAt = Number.NEGATIVE_INFINITY;
  private stopped = false;
  /** The unproven state was logged (and is reported as over when the lease is held again). */
  private unprovenLogged = false;
  private renewTimer: { cancel(): void } | undefined;
  /** Fires at the fence deadline (to log "unproven"), then at the lost deadline. */
  private deadlineTimer: { cancel(): void } | undefined;
  /** Completions waiting for the lease to be held again (true) or lost (false). */
  private waiters: ((mayComplete: boolean) => void)[] = [];
  /** Wakes every pause in progress (stop uses it, so no timer outlives the keeper). */
  private readonly pauses = new Set<() => void>();
  /** Since when keepalives have been failing or going unanswered (cleared by an accepted one), and when that was last logged. */
  private failingSince: number | undefined;
  private failureLoggedAt = Number.NEGATIVE_INFINITY;

  constructor(private readonly options: LeaseKeeperOptions) {}

  /** Grants the first lease and registers; resolves once the host holds it. */
  async start(): Promise<void> {
    await this.acquire();
    this.scheduleRenew();
  }

  /** The lease id while it is held or unproven (it is still this host's); undefined once lost. */
  get current(): LeaseId | undefined {
    return this.state() === "lost" ? undefined : this.lease;
  }

  /** The lease's state now (a fresh clock read); moving past the lost deadline loses it here. */
  state(): LeaseState {
    if (this.lease === undefined) return "lost";
    const now = this.options.clock.now();
    if (now < fenceDeadlineMs(this.lastRenewSentAt, this.options.timings)) return "held";
    if (now < leaseLostDeadlineMs(this.lastRenewSentAt, this.options.timings)) return "unproven";
    this.lose(
      `no keepalive answered for ${this.options.timings.leaseTtlMs} ms, the lease's TTL: etcd expires it ` +
        `(unless it took a keepalive whose answer never came here)`,
    );
    return "lost";
  }

  /**
   * The engine's completion gate, asked before each acknowledgement: true (held: complete now), false
   * (lost: fail and fence), or a promise while unproven that resolves true once a keepalive is accepted
   * and false once the lease is lost, at the latest at the lost deadline.
   */
  completionGate(): boolean | Promise<boolean> {
    const state = this.state();
    if (state === "held") return true;
    if (state === "lost") return false;
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** How long ago (ms) the last keepalive etcd accepted was sent; Infinity before the first. */
  lastAcceptedAgoMs(): number {
    return this.options.clock.now() - this.lastRenewSentAt;
  }

  /** Stops renewing (waiting completions fail); with `revoke`, also deletes the host's lease-bound keys at once. */
  async stop(revoke: boolean): Promise<void> {
    this.stopped = true;
    this.renewTimer?.cancel();
    this.deadlineTimer?.cancel();
    for (const wake of [...this.pauses]) wake();
    const lease = this.lease;
    this.lease = undefined;
    this.settleWaiters(false);
    if (revoke && lease !== undefined) await this.options.store.revokeLease(lease).catch(() => undefined);
  }

  // ---- acquiring and renewing ------------------------------------------------------------------------

  private async acquire(): Promise<void> {
    const { store, timings, clock } = this.options;
    const ttlSeconds = Math.ceil(timings.leaseTtlMs / 1000);
    const sentAt = clock.now();
    const granted = await store.grantLease(ttlSeconds);
    if (this.stopped) {
      await store.revokeLease(granted.id).catch(() => undefined);
      return;
    }
    this.lease = granted.id;
    this.lastRenewSentAt = sentAt;
    this.unprovenLogged = false;
    this.armDeadline();
    try {
      await this.options.onRegained(granted.id);
    } catch (error) {
      // Unregistered, the host looks dead to the others while it holds a lease: give this one back
      // (its keys with it) and try again at the next tick.
      if (this.lease === granted.id) {
        this.lease = undefined;
        this.deadlineTimer?.cancel();
        this.settleWaiters(false);
      }
      await store.revokeLease(granted.id).catch(() => undefined);
      throw error;
    }
  }

  /** The next round: renewIntervalMs after the send of the last accepted keepalive, or a new lease. */
  private scheduleRenew(): void {
    if (this.stopped) return;
    const { clock, timings } = this.options;
    const delayMs =
      this.lease === undefined
        ? timings.renewIntervalMs
        : Math.max(0, this.lastRenewSentAt + timings.renewIntervalMs - clock.now());
    this.renewTimer = clock.schedule(delayMs, () => void this.tick());
  }

  private async tick(): Promise<void> {
    this.renewTimer = undefined;
    try {
      if (this.lease !== undefined) await this.renew(this.lease);
      else
        await this.acquire().catch((error: unknown) =>
          this.options.log(`lease: cannot get a new one: ${errorMessage(error)}`),
        );
    } finally {
      this.scheduleRenew();
    }
  }

  /** Keepalives, one per renewTimeoutMs, until one is accepted or the lease is lost or replaced. */
  private async renew(lease: LeaseId): Promise<void> {
    const { clock, timings } = this.options;
    const provenBefore = this.lastRenewSentAt;
    for (let attempt = 1; this.lease === lease && !this.stopped; attempt++) {
      const sentAt = clock.now();
      const answer = await this.within(this.keepAlive(lease, sentAt), timings.renewTimeoutMs);
      if (answer === "accepted" || answer === "refused" || this.stopped) return;
      if (answer === undefined) this.keepAliveFailed(`no answer within ${timings.renewTimeoutMs} ms`);
      await this.pause(sentAt + timings.renewTimeoutMs - clock.now()).done;
      // A late answer to an earlier attempt proved the lease meanwhile: the round is done.
      if (this.lastRenewSentAt > provenBefore) return;
    }
  }

  /** One keepalive; its answer is applied whenever it comes, even after its attempt timed out. */
  private keepAlive(lease: LeaseId, sentAt: number): Promise<Answer> {
    return this.options.store.keepAliveOnce(lease).then(
      (ttlSeconds): Answer => {
        if (ttlSeconds > 0) {
          this.accepted(lease, sentAt);
          return "accepted";
        }
        if (lease === this.lease) this.lose("etcd says the lease has expired");
        return "refused";
      },
      (error: unknown): Answer => {
        if (error instanceof HavenError && error.code === "HAVEN_ERR_NOT_FOUND") {
          if (lease === this.lease) this.lose(`etcd does not know the lease: ${error.message}`);
          return "refused";
        }
        if (lease === this.lease) this.keepAliveFailed(errorMessage(error));
        return "failed";
      },
    );
  }

  /**
   * Logs what this host knows while keepalives fail: for how long, why, and when the lease expires
   * unless etcd answers one (it cannot know whether etcd has expired or revoked it meanwhile).
   */
  private keepAliveFailed(why: string): void {
    const { clock, timings, wallTime } = this.options;
    const now = clock.now();
    this.failingSince ??= now;
    if (now - this.failureLoggedAt < KEEPALIVE_FAILURE_LOG_INTERVAL_MS) return;
    this.failureLoggedAt = now;
    const inMs = leaseLostDeadlineMs(this.lastRenewSentAt, timings) - now;
    const seconds = (ms: number): string => `${(Math.max(0, ms) / 1000).toFixed(1)} s`;
    const when =
      wallTime === undefined
        ? `in ${seconds(inMs)}`
        : `at ${new Date(wallTime().getTime() + Math.max(0, inMs)).toISOString()} (in ${seconds(inMs)})`;
    this.options.log(
      `lease: keepalives failing for ${seconds(now - this.failingSince)} (${why}); the lease expires ${when} ` +
        `unless etcd answers one`,
    );
  }

  /**
   * etcd applied a keepalive sent at `sentAt` while the lease was alive (timings.ts: why that makes an
   * unproven lease held again). An answer for a lease already lost or replaced proves nothing any more:
   * onLost has fired and the host has stopped serving on it.
   */
  private accepted(lease: LeaseId, sentAt: number): void {
    if (this.stopped || lease !== this.lease) return;
    const { clock } = this.options;
    this.lastRenewSentAt = Math.max(this.lastRenewSentAt, sentAt);
    if (this.failingSince !== undefined) {
      this.options.log(
        `lease: etcd answered a keepalive again after ${((clock.now() - this.failingSince) / 1000).toFixed(1)} s of failures`,
      );
      this.failingSince = undefined;
      this.failureLoggedAt = Number.NEGATIVE_INFINITY;
    }
    const state = this.state();
    if (state === "lost") return;
    this.armDeadline();
    if (state === "unproven") return; // an answer so late that even its send time is past the fence
    if (this.unprovenLogged) {
      this.options.log(
        `lease held again: etcd accepted a keepalive sent ${Math.round(clock.now() - sentAt)} ms ago; waiting writes complete`,
      );
      this.unprovenLogged = false;
      this.options.onHeldAgain?.();
    }
    this.armDeadline();
    this.settleWaiters(true);
  }

  // ---- deadlines ---------------------------------------------------------------------------------------

  /** A timer at the next deadline from S: the fence (held -> unproven), then the loss. */
  private armDeadline(): void {
    this.deadlineTimer?.cancel();
    this.deadlineTimer = undefined;
    if (this.stopped || this.lease === undefined) return;
    const { clock, timings } = this.options;
    const now = clock.now();
    const fenceAt = fenceDeadlineMs(this.lastRenewSentAt, timings);
    const at = now < fenceAt ? fenceAt : leaseLostDeadlineMs(this.lastRenewSentAt, timings);
    this.deadlineTimer = clock.schedule(Math.max(0, at - now), () => this.onDeadline());
  }

  private onDeadline(): void {
    this.deadlineTimer = undefined;
    const state = this.state();
    if (state === "lost") return;
    if (state === "unproven" && !this.unprovenLogged) {
      this.unprovenLogged = true;
      this.options.log(
        `lease unproven: no keepalive accepted for ${this.options.timings.fenceAfterMs} ms; writes wait ` +
          `(they fail if none is accepted within ${this.options.timings.leaseTtlMs} ms of the last)`,
      );
      this.options.onUnproven?.();
    }
    this.armDeadline();
  }

  private lose(reason: string): void {
    if (this.lease === undefined) return;
    this.lease = undefined;
    this.unprovenLogged = false;
    this.deadlineTimer?.cancel();
    this.deadlineTimer = undefined;
    this.failingSince = undefined;
    this.failureLoggedAt = Number.NEGATIVE_INFINITY;
    this.options.log(`lease given up: ${reason}; no write completes here until a new lease`);
    this.settleWaiters(false);
    this.options.onLost(reason);
  }

  private settleWaiters(mayComplete: boolean): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const resolve of waiters) resolve(mayComplete);
  }

  // ---- waiting on the clock --------------------------------------------------------------------------

  /** Resolves after `ms`, or earlier when woken (stop wakes every pause, so no timer outlives the keeper). */
  private pause(ms: number): { readonly done: Promise<void>; readonly wake: () => void } {
    let wake: () => void = () => undefined;
    const done = new Promise<void>((resolve) => {
      const timer = ms > 0 && !this.stopped ? this.options.clock.schedule(ms, () => wake()) : undefined;
      wake = () => {
        timer?.cancel();
        this.pauses.delete(wake);
        resolve();
      };
      if (timer === undefined) resolve();
      else this.pauses.add(wake);
    });
    return { done, wake };
  }

  /** The promise's value, or undefined if it has not settled within `ms` (or the keeper stopped). */
  private async within<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
    const timeout = this.pause(ms);
    try {
      return await Promise.race([promise, timeout.done.then(() => undefined)]);
    } finally {
      timeout.wake();
    }
  }
}
