// The agent's timings: how long a host's etcd lease lives, how it is renewed, when a host that cannot
// renew fences itself, and how the watchdog, heartbeats and health checks pace themselves. Rule 4 of
// DESIGN.md ("a host that cannot renew its lease stops completing writes and stops its VMs before the
// lease can expire for the others") holds only if these numbers fit together, so checkTimings refuses
// any set that does not, naming the fields and the inequality, before the agent starts.
//
// The model, in one line per actor:
// - The host sends a keepalive for its lease at time S (read on its own monotonic clock before the
//   request leaves). etcd applies it at some R >= S and the lease then expires at R + leaseTtlMs on etcd's
//   clock, unless renewed again. Once expired it stays expired: later keepalives fail.
// - The host lets a write complete only while its clock says less than fenceAfterMs has passed since the
//   send time of its latest successful renew (fenceDeadlineMs), checked with a fresh clock read at each
//   completion, and pauses its VMs when that deadline passes (vm-lifecycle.ts: they are resumed if the
//   lease is held again, so an outage is mere latency for them too, and killed when it is lost; the
//   watchdog's kill covers a hung or dead agent). Past that deadline the lease is
//   *unproven*, not lost: a completion then waits instead of failing, and the host keeps sending
//   keepalives. If etcd accepts one (TTL > 0) the lease is *held* again and the waiting completions go
//   out; if etcd says the lease is gone (TTL 0, no such lease), or the host's clock reaches
//   leaseLostDeadlineMs (a whole leaseTtlMs since that send), the lease is *lost*: the waiting
//   completions fail and the host stops serving (lease-keeper.ts keeps the three states).
// - A watchdog outside the event loop (a separate process: a SIGSTOP freezes every thread of the agent)
//   kills the agent and its VMs when the event loop has not checked in for watchdogTimeoutMs. That bounds
//   the one gap the per-write check leaves: a completion checked just before the loop froze and sent
//   when it thaws.
// - Other hosts learn that the lease expired from etcd, and only then may one of them promote a copy.
//
// Why an unproven lease may become held again (an etcd outage shorter than the lease is latency, not an
// error): etcd accepted a keepalive sent at S' with TTL > 0, so it applied it at some R' >= S' while the
// lease was alive. A lease that expired stays expired (etcd revokes it, deletes its keys and never grants
// its id again; on a leader change the new leader extends every lease rather than shortening one), so
// the lease was alive at every moment before R': its host key was never deleted, no other host saw this
// host without a lease, and no standby promoted a copy of its volumes (decide.ts promotes only when the
// primary's host holds no lease). From R' the lease lives until R' + leaseTtlMs >= S' + leaseTtlMs at
// least, so the new deadline S' + fenceAfterMs sits exactly as far inside the lease as after any renew,
// and rule 2 below holds unchanged. While unproven nothing was acknowledged: the writes that waited were
// applied on the copies, but acknowledged only after R', with this host still the only writer; if the
// lease is lost instead they fail, and copies holding writes never acknowledged is what a crash leaves
// too (the activity log covers it). So checkTimings needs no new rule: the state changes only what
// happens past the fence deadline (wait instead of fail), never when a completion may go out.
// The lost deadline is not a safety bound (the fence deadline already stopped every completion); it
// bounds how long a completion waits, and it comes when waiting cannot help any more: the lease's
// earliest expiry in etcd is then reached, and a standby may be promoting. Rule 2 puts it after the fence
// deadline (fenceAfterMs < leaseTtlMs).

import { HavenError } from "../core/errors.js";

export interface Timings {
  /** TTL of the host's etcd lease; a whole number of seconds, as etcd grants them. */
  readonly leaseTtlMs: number;
  /** Time between the sends of two scheduled keepalives. */
  readonly renewIntervalMs: number;
  /** How many times a failed or timed-out keepalive is retried, back to back, before the host gives up. */
  readonly renewRetries: number;
  /** Bound on one keepalive, from send to answer. */
  readonly renewTimeoutMs: number;
  /** Self-fence: stop completing writes this long after the *send* of the last successful renew. */
  readonly fenceAfterMs: number;
  /** How often the event loop checks in with the watchdog. */
  readonly watchdogIntervalMs: number;
  /** A hung event loop is fenced by the watchdog (outside the event loop) after this. */
  readonly watchdogTimeoutMs: number;
  /** How often agents heartbeat each other over each replication link. */
  readonly peerHeartbeatIntervalMs: number;
  /** Consecutive missed peer heartbeats after which a replication link is reported down. */
  readonly peerHeartbeatMissLimit: number;
  /** How often host and volume health (engine, NBD front, disks, etcd, replicas) is checked. */
  readonly healthCheckIntervalMs: number;
  /** Event-loop lag above this makes the host report itself unhealthy. */
  readonly eventLoopLagLimitMs: number;
  /** After a primary's lease has expired, how long a standby waits before it promotes its copy. */
  readonly failoverGraceMs: number;
}

export type TimingName = keyof Timings;

/**
 * The defaults, aiming at failover p50 <= 10 s without false fencing on a host saturated by a CPU hog
 * and a full resync. The lease (6 s) is renewed every second; a renew may fail or time out three times
 * in a row (0.8 s each) and still land before the fence at 3.5 s. A busy event loop may stall 1 s before
 * health flags it and 2 s before the watchdog kills the agent: a garbage collection or a burst of resync
 * work stalls it for tens of milliseconds, so only a truly hung agent gets there. The fence (3.5 s) plus
 * the watchdog (2 s) plus the clock margin (0.31 s) is 5.81 s, inside the 6 s lease. A standby sees the
 * lease expire 5 to 6.5 s after the primary died and waits 0.5 s more: promotion starts after 5.5 to 7 s,
 * leaving 3 s of the 10 s target for starting the engine and the NBD front and for clients to reconnect.
 */
export const DEFAULT_TIMINGS: Timings = Object.freeze({
  leaseTtlMs: 6_000,
  renewIntervalMs: 1_000,
  renewRetries: 2,
  renewTimeoutMs: 800,
  fenceAfterMs: 3_500,
  watchdogIntervalMs: 500,
  watchdogTimeoutMs: 2_000,
  peerHeartbeatIntervalMs: 500,
  peerHeartbeatMissLimit: 4,
  healthCheckIntervalMs: 1_000,
  eventLoopLagLimitMs: 1_000,
  failoverGraceMs: 500,
});

/**
 * The fastest set the checks allow with etcd's default 2 s minimum lease, aiming at failover p50 <= 3 s.
 * It trades tolerance for speed: an event loop that stalls 0.5 s is killed by the watchdog, and three
 * keepalives lost in a row (0.25 s each) fence the host. For dedicated, lightly loaded hosts.
 */
export const FAST_TIMINGS: Timings = Object.freeze({
  leaseTtlMs: 2_000,
  renewIntervalMs: 250,
  renewRetries: 2,
  renewTimeoutMs: 250,
  fenceAfterMs: 1_100,
  watchdogIntervalMs: 100,
  watchdogTimeoutMs: 500,
  peerHeartbeatIntervalMs: 200,
  peerHeartbeatMissLimit: 3,
  healthCheckIntervalMs: 250,
  eventLoopLagLimitMs: 250,
  failoverGraceMs: 100,
});

/**
 * Sane bounds per field, inclusive. All are whole numbers; all are above zero except failoverGraceMs,
 * which may be 0 because the fence rule alone keeps writers apart (the grace only adds margin).
 * renewRetries is at least 1 so that one lost keepalive never fences a host, and peerHeartbeatMissLimit
 * at least 2 so that one lost heartbeat never reports a link down.
 */
export const TIMING_BOUNDS: { readonly [name in TimingName]: { readonly min: number; readonly max: number } } =
  Object.freeze({
    // etcd grants at least (3/2 × election timeout) rounded up to whole seconds: 2 s with its defaults.
    // Asking for less gets 2 s anyway, and the failover estimate would be wrong.
    leaseTtlMs: { min: 2_000, max: 300_000 },
    renewIntervalMs: { min: 50, max: 60_000 },
    renewRetries: { min: 1, max: 10 },
    renewTimeoutMs: { min: 50, max: 60_000 },
    fenceAfterMs: { min: 100, max: 300_000 },
    watchdogIntervalMs: { min: 10, max: 60_000 },
    watchdogTimeoutMs: { min: 50, max: 120_000 },
    peerHeartbeatIntervalMs: { min: 50, max: 60_000 },
    peerHeartbeatMissLimit: { min: 2, max: 100 },
    healthCheckIntervalMs: { min: 50, max: 600_000 },
    eventLoopLagLimitMs: { min: 10, max: 60_000 },
    failoverGraceMs: { min: 0, max: 600_000 },
  });

export const TIMING_NAMES = Object.keys(TIMING_BOUNDS) as readonly TimingName[];

/**
 * The largest rate error assumed between the host's monotonic clock and etcd's (1%): quartz drifts about
 * 0.01%, and NTP slews at most 0.05%, so this leaves a factor of 20 for virtualised hosts.
 */
export const CLOCK_RATE_ERROR_MAX = 0.01;

/**
 * Bound on how late the watchdog's kill takes effect after its deadline: timer lateness in a small
 * process on a loaded host, and signal delivery.
 */
export const FENCE_LATENESS_MAX_MS = 250;

/**
 * etcd looks for expired leases every 500 ms, so a lease is revoked up to this long after its expiry.
 * Used only for the failover estimate; safety never relies on etcd being late.
 */
export const ETCD_EXPIRY_CHECK_MS = 500;

/** The margin the fence rule keeps between a fully fenced host and the earliest expiry of its lease. */
export function clockDriftMarginMs(leaseTtlMs: number): number {
  return Math.ceil(leaseTtlMs * CLOCK_RATE_ERROR_MAX) + FENCE_LATENESS_MAX_MS;
}

/**
 * The local time after which the host must not complete a write, given the local time at which the last
 * successful keepalive was *sent* (not answered; see checkTimings). Writes may complete while
 * now < fenceDeadlineMs. "Sent" is the start of the call, before any retry on another endpoint, and the
 * lease grant counts as the first renew; "successful" means etcd answered with a TTL above zero.
 */
export function fenceDeadlineMs(lastRenewSentAtMs: number, timings: Timings): number {
  return lastRenewSentAtMs + timings.fenceAfterMs;
}

/**
 * The local time from which an unproven lease counts as lost, given the send time of the last keepalive
 * etcd accepted: the lease's earliest expiry in etcd (that keepalive was applied at or after its send).
 * Completions waiting on the unproven lease fail then, and the host stops serving.
 */
export function leaseLostDeadlineMs(lastRenewSentAtMs: number, timings: Timings): number {
  return lastRenewSentAtMs + timings.leaseTtlMs;
}

/**
 * Returns the timings if they are safe and sane; otherwise throws HAVEN_ERR_CONFIG naming every violated
 * rule, its fields and values. `source` prefixes the message (the config file's name).
 *
 * The rules, and why:
 *
 * 1. Each field is a whole number within TIMING_BOUNDS, and leaseTtlMs is whole seconds (etcd's unit).
 *
 * 2. Fence before expiry: fenceAfterMs + watchdogTimeoutMs + clockDriftMarginMs(leaseTtlMs) < leaseTtlMs.
 *    Measured from S, the send time of the last successful renew, the host is fully fenced by
 *    fenceAfterMs (the per-write check) plus watchdogTimeoutMs (a completion checked just before the event
 *    loop froze is sent when it thaws, unless the watchdog has killed it first), stretched by the clock
 *    rate error and the kill's lateness. The lease cannot expire before S + leaseTtlMs, because etcd
 *    applied that renew at some R >= S. The fence must count from S, never from the reply's arrival:
 *    the reply can arrive any time after R (network delay, retransmissions, an event loop that stalled
 *    before reading it, a request repeated on another endpoint), so "reply time + fenceAfterMs" can fall
 *    after R + leaseTtlMs, when another host may already be writing. S is a lower bound on R whatever
 *    the delays; the reply time is not bounded at all.
 *
 * 3. The lease outlasts the renew interval plus retries: renewIntervalMs + (renewRetries + 1) ×
 *    renewTimeoutMs < fenceAfterMs. After a renew sent at S, the next is sent at S + renewIntervalMs and
 *    the last retry at S + renewIntervalMs + renewRetries × renewTimeoutMs; its answer arrives within one
 *    more renewTimeoutMs. If that is after the fence, the retries cannot save the host from fencing, and
 *    a burst of lost keepalives on a busy host fences it by mistake. Rule 2 keeps the fence itself well
 *    inside the lease, so every retry is sent and answered while the lease is still alive. (Retries go
 *    on past renewRetries, one per renewTimeoutMs, while the lease is unproven; this rule makes sure the
 *    first renewRetries of them keep a host whose etcd is merely slow from ever making a write wait.)
 *
 * 4. The watchdog is fed at least twice per timeout: 2 × watchdogIntervalMs <= watchdogTimeoutMs, so one
 *    late check-in does not kill a healthy agent.
 *
 * 5. Lag is reported before the watchdog acts: eventLoopLagLimitMs < watchdogTimeoutMs, or the health
 *    check could never see the lag that precedes a kill.
 */
export function checkTimings(timings: Timings, source?: string): Timings {
  const problems: string[] = [];
  for (const name of TIMING_NAMES) {
    const value: unknown = timings[name];
    const { min, max } = TIMING_BOUNDS[name];
    const unit = name === "renewRetries" || name === "peerHeartbeatMissLimit" ? "" : " of milliseconds";
    if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
      problems.push(`timings.${name} must be a whole number${unit} from ${min} to ${max}, not ${show(value)}`);
    } else if (name === "leaseTtlMs" && value % 1000 !== 0) {
      problems.push(`timings.leaseTtlMs must be whole seconds (etcd grants leases in seconds), not ${value}`);
    }
  }
  if (problems.length === 0) {
    const t = timings;
    const drift = clockDriftMarginMs(t.leaseTtlMs);
    const fenced = t.fenceAfterMs + t.watchdogTimeoutMs + drift;
    if (!(fenced < t.leaseTtlMs)) {
      problems.push(
        "timings: the fence must fire before the lease can expire elsewhere: " +
          `fenceAfterMs + watchdogTimeoutMs + clock-drift margin (${t.fenceAfterMs} + ${t.watchdogTimeoutMs} + ` +
          `${drift} = ${fenced}) must be < leaseTtlMs (${t.leaseTtlMs})`,
      );
    }
    const cycle = t.renewIntervalMs + (t.renewRetries + 1) * t.renewTimeoutMs;
    if (!(cycle < t.fenceAfterMs)) {
      problems.push(
        "timings: the lease must outlast the renew interval plus retries, with the last retry answered " +
          `before the fence: renewIntervalMs + (renewRetries + 1) × renewTimeoutMs (${t.renewIntervalMs} + ` +
          `${t.renewRetries + 1} × ${t.renewTimeoutMs} = ${cycle}) must be < fenceAfterMs (${t.fenceAfterMs})`,
      );
    }
    if (!(2 * t.watchdogIntervalMs <= t.watchdogTimeoutMs)) {
      problems.push(
        "timings: the watchdog must be fed at least twice per timeout: " +
          `2 × watchdogIntervalMs (${2 * t.watchdogIntervalMs}) must be <= watchdogTimeoutMs (${t.watchdogTimeoutMs})`,
      );
    }
    if (!(t.eventLoopLagLimitMs < t.watchdogTimeoutMs)) {
      problems.push(
        "timings: event-loop lag must be reported before the watchdog fences: " +
          `eventLoopLagLimitMs (${t.eventLoopLagLimitMs}) must be < watchdogTimeoutMs (${t.watchdogTimeoutMs})`,
      );
    }
  }
  if (problems.length > 0) {
    throw new HavenError("HAVEN_ERR_CONFIG", `${source === undefined ? "" : `${source}: `}${problems.join("; ")}`);
  }
  return timings;
}

/**
 * When other hosts can notice that a dead primary's lease has expired and start promoting, measured from
 * the moment it died: its last renew was sent up to renewIntervalMs before, etcd revokes an expired
 * lease within ETCD_EXPIRY_CHECK_MS, and the standby then waits failoverGraceMs.
 */
export function failoverDetectionMs(timings: Timings): { minMs: number; maxMs: number } {
  return {
    minMs: timings.leaseTtlMs - timings.renewIntervalMs + timings.failoverGraceMs,
    maxMs: timings.leaseTtlMs + ETCD_EXPIRY_CHECK_MS + timings.failoverGraceMs,
  };
}

/** One line for the agent's start-up log. */
export function describeTimings(timings: Timings): string {
  const t = timings;
  const { minMs, maxMs } = failoverDetectionMs(t);
  return (
    `lease ${duration(t.leaseTtlMs)} renewed every ${duration(t.renewIntervalMs)} ` +
    `(${t.renewRetries} ${t.renewRetries === 1 ? "retry" : "retries"} of ${duration(t.renewTimeoutMs)}); ` +
    `fence ${duration(t.fenceAfterMs)} after the last renew was sent, watchdog ${duration(t.watchdogTimeoutMs)}; ` +
    `peer heartbeat every ${duration(t.peerHeartbeatIntervalMs)}, link down after ${t.peerHeartbeatMissLimit} misses; ` +
    `failover starts ${duration(minMs)} to ${duration(maxMs)} after a primary dies`
  );
}

function duration(ms: number): string {
  return ms < 1000 ? `${ms} ms` : `${Number((ms / 1000).toFixed(3))} s`;
}

function show(value: unknown): string {
  return typeof value === "string" ? JSON.stringify(value) : String(value);
}
