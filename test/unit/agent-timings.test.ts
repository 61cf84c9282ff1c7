// The agent's timings: the defaults and the fast set pass every rule, each broken rule is refused with
// a message naming its fields and the inequality, and any set checkTimings accepts keeps rule 4 of
// DESIGN.md in a small simulation: a host that last renewed its lease at T (request sent at T) completes
// no write, and has stopped its VMs, strictly before T + leaseTtlMs, whatever its renews, its clock
// rate, its event-loop stalls and the watchdog's lateness.

import assert from "node:assert/strict";
import fc from "fast-check";
import { HavenError } from "../../src/core/errors.js";
import {
  CLOCK_RATE_ERROR_MAX,
  DEFAULT_TIMINGS,
  FAST_TIMINGS,
  FENCE_LATENESS_MAX_MS,
  TIMING_BOUNDS,
  TIMING_NAMES,
  checkTimings,
  clockDriftMarginMs,
  describeTimings,
  failoverDetectionMs,
  fenceDeadlineMs,
  leaseLostDeadlineMs,
  type Timings,
} from "../../src/agent/timings.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** The longest test here (random schedules) takes about 2 s; one still running after this bound is hung, not slow. */
const test = boundedTest(30_000);

function refusal(timings: Partial<Record<keyof Timings, unknown>>, source?: string): string {
  try {
    checkTimings({ ...DEFAULT_TIMINGS, ...timings } as Timings, source);
  } catch (error) {
    assert.ok(error instanceof HavenError, `expected a HavenError, got ${String(error)}`);
    assert.equal(error.code, "HAVEN_ERR_CONFIG");
    return error.message;
  }
  assert.fail(`${JSON.stringify(timings)} was accepted`);
}

test("the defaults and the fast set pass every rule", () => {
  assert.equal(checkTimings(DEFAULT_TIMINGS), DEFAULT_TIMINGS);
  assert.equal(checkTimings(FAST_TIMINGS), FAST_TIMINGS);
  assert.ok(Object.isFrozen(DEFAULT_TIMINGS) && Object.isFrozen(FAST_TIMINGS));
});

test("the defaults leave room for failover p50 within 10 s, the fast set within 3 s", () => {
  // From the kill to the standby starting its promotion; the rest of the budget is for starting the
  // engine and the NBD front and for the client to reconnect.
  const midpoint = ({ minMs, maxMs }: { minMs: number; maxMs: number }) => (minMs + maxMs) / 2;
  assert.deepEqual(failoverDetectionMs(DEFAULT_TIMINGS), { minMs: 5_500, maxMs: 7_000 });
  assert.ok(midpoint(failoverDetectionMs(DEFAULT_TIMINGS)) + 2_000 <= 10_000);
  assert.ok(midpoint(failoverDetectionMs(FAST_TIMINGS)) + 500 <= 3_000);
});

test("the fence must fire before the lease can expire elsewhere", () => {
  const message = refusal({ fenceAfterMs: 4_000 });
  assert.match(message, /the fence must fire before the lease can expire elsewhere/);
  assert.ok(
    message.includes(
      "fenceAfterMs + watchdogTimeoutMs + clock-drift margin (4000 + 2000 + 310 = 6310) must be < leaseTtlMs (6000)",
    ),
    message,
  );
  assert.match(refusal({ watchdogTimeoutMs: 3_000 }), /\(3500 \+ 3000 \+ 310 = 6810\) must be < leaseTtlMs \(6000\)/);
  assert.match(refusal({ leaseTtlMs: 5_000 }), /must be < leaseTtlMs \(5000\)/);
});

test("the lease must outlast the renew interval plus retries, answered before the fence", () => {
  const message = refusal({ renewTimeoutMs: 1_000 });
  assert.ok(
    message.includes("renewIntervalMs + (renewRetries + 1) × renewTimeoutMs (1000 + 3 × 1000 = 4000)"),
    message,
  );
  assert.match(message, /must be < fenceAfterMs \(3500\)/);
  assert.match(refusal({ renewRetries: 4 }), /\(1000 \+ 5 × 800 = 5000\) must be < fenceAfterMs/);
  assert.match(refusal({ renewIntervalMs: 2_000 }), /\(2000 \+ 3 × 800 = 4400\)/);
});

test("the watchdog is fed at least twice per timeout, and lag is reported before it fires", () => {
  assert.match(
    refusal({ watchdogIntervalMs: 1_001 }),
    /2 × watchdogIntervalMs \(2002\) must be <= watchdogTimeoutMs \(2000\)/,
  );
  assert.match(
    refusal({ eventLoopLagLimitMs: 2_000 }),
    /eventLoopLagLimitMs \(2000\) must be < watchdogTimeoutMs \(2000\)/,
  );
});

test("every value is a whole number within its bounds, and the lease is whole seconds", () => {
  assert.equal(
    refusal({ peerHeartbeatMissLimit: 1 }),
    "timings.peerHeartbeatMissLimit must be a whole number from 2 to 100, not 1",
  );
  assert.equal(refusal({ renewRetries: 0 }), "timings.renewRetries must be a whole number from 1 to 10, not 0");
  assert.equal(
    refusal({ leaseTtlMs: 6_500 }),
    "timings.leaseTtlMs must be whole seconds (etcd grants leases in seconds), not 6500",
  );
  assert.equal(
    refusal({ leaseTtlMs: 1_000 }),
    "timings.leaseTtlMs must be a whole number of milliseconds from 2000 to 300000, not 1000",
  );
  for (const bad of [-1, 0, 1.5, NaN, Infinity, "1000", null, undefined, 10 ** 9]) {
    assert.match(refusal({ healthCheckIntervalMs: bad }), /^timings\.healthCheckIntervalMs must be a whole number/);
  }
  assert.match(refusal({ healthCheckIntervalMs: "1000" }), /not "1000"$/);
  assert.doesNotThrow(() => checkTimings({ ...DEFAULT_TIMINGS, failoverGraceMs: 0 }));
});

test("every violated rule is named at once, after the source", () => {
  const message = refusal({ watchdogIntervalMs: 1_500, eventLoopLagLimitMs: 5_000, fenceAfterMs: 5_000 }, "agent.json");
  assert.ok(message.startsWith("agent.json: timings: "), message);
  assert.match(message, /fence must fire/);
  assert.match(message, /fed at least twice/);
  assert.match(message, /lag must be reported/);
  const fields = refusal({ renewRetries: -1, watchdogTimeoutMs: 0.5 });
  assert.match(fields, /timings\.renewRetries .*; timings\.watchdogTimeoutMs /);
});

test("checkTimings returns what it is given or throws HAVEN_ERR_CONFIG, whatever it is given", () => {
  const anyValue = fc.oneof(
    fc.integer({ min: -10, max: 400_000 }),
    fc.double(),
    fc.constantFrom(null, undefined, "6000", true, [], {}),
  );
  fc.assert(
    fc.property(fc.dictionary(fc.constantFrom(...TIMING_NAMES), anyValue), (overrides) => {
      const timings = { ...DEFAULT_TIMINGS, ...overrides } as Timings;
      try {
        assert.equal(checkTimings(timings), timings);
      } catch (error) {
        assert.ok(error instanceof HavenError && error.code === "HAVEN_ERR_CONFIG", String(error));
      }
    }),
  );
});

test("describeTimings summarises the set in one line", () => {
  const line = describeTimings(DEFAULT_TIMINGS);
  assert.equal(
    line,
    "lease 6 s renewed every 1 s (2 retries of 800 ms); fence 3.5 s after the last renew was sent, watchdog 2 s; " +
      "peer heartbeat every 500 ms, link down after 4 misses; failover starts 5.5 s to 7 s after a primary dies",
  );
  assert.ok(!line.includes("\n"));
  assert.match(describeTimings(FAST_TIMINGS), /failover starts 1\.85 s to 2\.6 s after a primary dies$/);
});

// ---------------------------------------------------------------------------------------------------------
// The fencing simulation. Real time is etcd's clock, in milliseconds; the host's clock runs at rate
// `rate` relative to it (within CLOCK_RATE_ERROR_MAX). Actors:
// - etcd: a renew that arrives while the lease is alive (before the partition) refreshes it to arrival +
//   leaseTtlMs; one that arrives after expiry fails; the lease never comes back.
// - the host's event loop: runs except during hangs (open intervals); a renew due during a hang is sent
//   when it ends, and a reply that arrives during one is read when it ends. It completes a write at a
//   check instant only while local time < fenceDeadlineMs(last successful renew); a write checked at the
//   very instant a hang begins leaves the process when the hang ends (the gap the watchdog covers).
//   Writes that waited past the fence deadline (the lease unproven) are checked again whenever a renew's
//   answer is read: an answer that arrives late, even after the lease expired, must release nothing.
// - the watchdog: fed by the loop up to the instant a hang begins (the latest it can be), it kills the
//   agent and its VMs watchdogTimeoutMs (local) after that, plus up to FENCE_LATENESS_MAX_MS.
// - the VMs: stopped by the loop when the fence deadline passes (or when it next runs), or by the kill.

interface Scenario {
  /** Host clock rate relative to etcd's, in parts per million off 1. */
  readonly ratePpm: number;
  /** Renews the host sends (besides the lease grant at 0): when, how long to reach etcd, reply delay or lost. */
  readonly renews: readonly { sendMs: number; applyDelayMs: number; replyDelayMs: number | null }[];
  /** Renews reaching etcd at or after this are lost. */
  readonly partitionAtMs: number;
  readonly hangs: readonly { startMs: number; durationMs: number }[];
  /** Instants at which the engine tries to complete a write (hang starts and ends are added). */
  readonly checksMs: readonly number[];
  readonly watchdogLatenessMs: number;
}

interface Outcome {
  /** Send time of the last renew etcd applied: the lease cannot expire before this + leaseTtlMs. */
  readonly lastAppliedSendMs: number;
  /** When each completed write left the process. */
  readonly completionsMs: number[];
  /** When the VMs had stopped. */
  readonly vmsStoppedMs: number;
}

/** `fenceFrom: "reply"` is the tempting mistake: counting the fence from when the renew's answer was read. */
function simulate(timings: Timings, scenario: Scenario, fenceFrom: "send" | "reply" = "send"): Outcome {
  const rate = 1 + scenario.ratePpm / 1e6;
  const local = (realMs: number) => realMs * rate;

  const hangs: { start: number; end: number }[] = [];
  for (const hang of [...scenario.hangs].sort((a, b) => a.startMs - b.startMs)) {
    const last = hangs.at(-1);
    const end = hang.startMs + hang.durationMs;
    if (last && hang.startMs <= last.end) last.end = Math.max(last.end, end);
    else if (hang.durationMs > 0) hangs.push({ start: hang.startMs, end });
  }
  let killedAt = Infinity;
  for (const hang of hangs) {
    const kill = hang.start + timings.watchdogTimeoutMs / rate + scenario.watchdogLatenessMs;
    if (kill < hang.end) {
      killedAt = kill;
      break;
    }
  }
  const hangAround = (t: number) => hangs.find((hang) => hang.start < t && t < hang.end);
  /** When the loop next runs at or after t (Infinity once killed). */
  const loopRunsAt = (t: number) => {
    const at = hangAround(t)?.end ?? t;
    return at < killedAt ? at : Infinity;
  };

  // etcd, in order of arrival, after the lease was granted at 0 (the grant counts as the first renew).
  let expiresAt = timings.leaseTtlMs;
  let lastAppliedSendMs = 0;
  const successes = [{ readAtMs: 0, fenceFromLocalMs: 0 }];
  const sends = scenario.renews
    .map((renew) => ({ ...renew, sentMs: loopRunsAt(renew.sendMs) }))
    .filter((renew) => renew.sentMs !== Infinity)
    .sort((a, b) => a.sentMs + a.applyDelayMs - (b.sentMs + b.applyDelayMs));
  for (const renew of sends) {
    const arrival = renew.sentMs + renew.applyDelayMs;
    if (arrival >= scenario.partitionAtMs || arrival >= expiresAt) continue;
    expiresAt = arrival + timings.leaseTtlMs;
    lastAppliedSendMs = Math.max(lastAppliedSendMs, renew.sentMs);
    if (renew.replyDelayMs === null) continue;
    const readAtMs = loopRunsAt(arrival + renew.replyDelayMs);
    if (readAtMs === Infinity) continue;
    successes.push({ readAtMs, fenceFromLocalMs: local(fenceFrom === "send" ? renew.sentMs : readAtMs) });
  }
  const lastRenewAt = (t: number) =>
    Math.max(...successes.filter((success) => success.readAtMs <= t).map((success) => success.fenceFromLocalMs));

  const completionsMs: number[] = [];
  // Besides the scenario's checks, completions that waited on an unproven lease are released when a
  // renew's answer is read (lease-keeper.ts), checked against the deadline that answer gives.
  const checks = [
    ...scenario.checksMs,
    ...hangs.flatMap((hang) => [hang.start, hang.end]),
    ...successes.map((success) => success.readAtMs),
  ];
  for (const check of checks) {
    if (check >= killedAt || hangAround(check)) continue;
    if (!(local(check) < fenceDeadlineMs(lastRenewAt(check), timings))) continue;
    const hang = hangs.find((candidate) => candidate.start === check);
    const leavesAt = hang === undefined ? check : hang.end < killedAt ? hang.end : Infinity;
    if (leavesAt !== Infinity) completionsMs.push(leavesAt);
  }
  const deadlineRealMs = fenceDeadlineMs(lastRenewAt(Infinity), timings) / rate;
  const vmsStoppedMs = Math.min(killedAt, hangAround(deadlineRealMs)?.end ?? deadlineRealMs);
  return { lastAppliedSendMs, completionsMs: completionsMs.sort((a, b) => a - b), vmsStoppedMs };
}

function unsafeMoments(timings: Timings, outcome: Outcome): string[] {
  const earliestExpiry = outcome.lastAppliedSendMs + timings.leaseTtlMs;
  return [
    ...outcome.completionsMs.filter((t) => !(t < earliestExpiry)).map((t) => `a write completed at ${t}`),
    ...(outcome.vmsStoppedMs < earliestExpiry ? [] : [`the VMs stopped only at ${outcome.vmsStoppedMs}`]),
  ].map((what) => `${what}, lease may expire at ${earliestExpiry}`);
}

/**
 * Timings spread over the whole space, and crowded near the fence rule's boundary (fenceAfterMs +
 * watchdogTimeoutMs within a few hundred milliseconds of the lease), where a weaker rule would fail.
 */
const timingsArbitrary: fc.Arbitrary<Timings> = fc
  .oneof(fc.integer({ min: 2, max: 10 }), fc.integer({ min: 2, max: 300 }))
  .chain((leaseSeconds) => {
    const leaseTtlMs = leaseSeconds * 1000;
    return fc.record({
      leaseTtlMs: fc.constant(leaseTtlMs),
      watchdogTimeoutMs: fc.integer({ min: 50, max: Math.min(TIMING_BOUNDS.watchdogTimeoutMs.max, leaseTtlMs - 100) }),
      slackMs: fc.oneof(fc.integer({ min: 0, max: 400 }), fc.integer({ min: 0, max: leaseTtlMs })),
      feed: fc.integer({ min: 0, max: 600 }),
      renewRetries: fc.integer(TIMING_BOUNDS.renewRetries),
      renewTimeout: fc.integer({ min: 0, max: 1000 }),
      renewInterval: fc.integer({ min: 0, max: 1000 }),
      lag: fc.integer({ min: 0, max: 1000 }),
      peerHeartbeatIntervalMs: fc.integer(TIMING_BOUNDS.peerHeartbeatIntervalMs),
      peerHeartbeatMissLimit: fc.integer(TIMING_BOUNDS.peerHeartbeatMissLimit),
      healthCheckIntervalMs: fc.integer(TIMING_BOUNDS.healthCheckIntervalMs),
      failoverGraceMs: fc.integer(TIMING_BOUNDS.failoverGraceMs),
    });
  })
  .map((r) => {
    const fenceAfterMs = Math.max(100, r.leaseTtlMs - r.watchdogTimeoutMs - r.slackMs);
    const perMille = (value: number, fraction: number) => Math.round((value * fraction) / 1000);
    return {
      leaseTtlMs: r.leaseTtlMs,
      fenceAfterMs,
      watchdogTimeoutMs: r.watchdogTimeoutMs,
      watchdogIntervalMs: Math.max(10, perMille(r.watchdogTimeoutMs, r.feed)),
      renewRetries: r.renewRetries,
      renewTimeoutMs: Math.max(50, Math.round(perMille(fenceAfterMs, r.renewTimeout) / (r.renewRetries + 1))),
      renewIntervalMs: Math.max(50, perMille(fenceAfterMs, r.renewInterval)),
      eventLoopLagLimitMs: Math.max(10, perMille(r.watchdogTimeoutMs, r.lag)),
      peerHeartbeatIntervalMs: r.peerHeartbeatIntervalMs,
      peerHeartbeatMissLimit: r.peerHeartbeatMissLimit,
      healthCheckIntervalMs: r.healthCheckIntervalMs,
      failoverGraceMs: r.failoverGraceMs,
    };
  });

function accepted(timings: Timings): boolean {
  try {
    checkTimings(timings);
    return true;
  } catch {
    return false;
  }
}

/** Scenarios that aim at the edges: clocks at the rate bound, hangs just before a fence deadline, lasting about the watchdog's timeout. */
function scenarioArbitrary(timings: Timings): fc.Arbitrary<Scenario> {
  const ttl = timings.leaseTtlMs;
  const horizon = 3 * ttl;
  const time = fc.double({ min: 0, max: horizon, noNaN: true });
  const watchdogReach = timings.watchdogTimeoutMs / (1 - CLOCK_RATE_ERROR_MAX) + FENCE_LATENESS_MAX_MS;
  return fc
    .record({
      ratePpm: fc.oneof(
        fc.constantFrom(-CLOCK_RATE_ERROR_MAX * 1e6, CLOCK_RATE_ERROR_MAX * 1e6, 0),
        fc.integer({ min: -CLOCK_RATE_ERROR_MAX * 1e6, max: CLOCK_RATE_ERROR_MAX * 1e6 }),
      ),
      renews: fc.array(
        fc.record({
          sendMs: fc.double({ min: 0, max: 2 * ttl, noNaN: true }),
          applyDelayMs: fc.oneof(fc.constant(0), fc.double({ min: 0, max: ttl, noNaN: true })),
          replyDelayMs: fc.oneof(fc.constant(null), fc.constant(0), fc.double({ min: 0, max: 2 * ttl, noNaN: true })),
        }),
        { maxLength: 12 },
      ),
      partitionAtMs: fc.double({ min: 0, max: 2 * ttl, noNaN: true }),
      hangs: fc.array(
        fc.record({
          // Near a fence deadline counted from the grant or from some renew, or anywhere.
          anchor: fc.oneof(fc.constant(-1), fc.integer({ min: 0, max: 11 })),
          before: fc.oneof(
            fc.constant(0.001),
            fc.double({ min: 0, max: Math.min(500, timings.fenceAfterMs), noNaN: true }),
          ),
          anywhere: time,
          // "edge": thaws just before the watchdog's kill lands, the longest a hang can last unkilled.
          durationMs: fc.oneof(
            fc.constant("edge" as const),
            fc.double({ min: 0.5 * watchdogReach, max: watchdogReach, noNaN: true }),
            fc.double({ min: 0, max: 1.5 * watchdogReach, noNaN: true }),
          ),
        }),
        { maxLength: 4 },
      ),
      checksMs: fc.array(time, { maxLength: 30 }),
      watchdogLatenessMs: fc.oneof(
        fc.constant(FENCE_LATENESS_MAX_MS),
        fc.double({ min: 0, max: FENCE_LATENESS_MAX_MS, noNaN: true }),
      ),
    })
    .map((s) => ({
      ...s,
      hangs: s.hangs.map((hang) => {
        const rate = 1 + s.ratePpm / 1e6;
        const from = hang.anchor < 0 ? 0 : s.renews[hang.anchor]?.sendMs;
        const startMs =
          from === undefined ? hang.anywhere : Math.max(0, from + timings.fenceAfterMs / rate - hang.before);
        const durationMs =
          hang.durationMs === "edge"
            ? timings.watchdogTimeoutMs / rate + s.watchdogLatenessMs - 0.001
            : hang.durationMs;
        return { startMs, durationMs };
      }),
    }));
}

test("any accepted timings fence a host strictly before its lease can expire, for all renew patterns", () => {
  fc.assert(
    fc.property(
      timingsArbitrary.filter(accepted).chain((timings) => fc.tuple(fc.constant(timings), scenarioArbitrary(timings))),
      ([timings, scenario]) => {
        assert.deepEqual(unsafeMoments(timings, simulate(timings, scenario)), []);
      },
    ),
    { numRuns: 2_000 },
  );
});

test("an unproven lease is lost only after the fence, with the watchdog and the clock margin in between", () => {
  // Completions wait between the two deadlines; rule 2 is what keeps that window open for any accepted set.
  fc.assert(
    fc.property(timingsArbitrary.filter(accepted), fc.integer({ min: 0, max: 10 ** 9 }), (t, sentAt) => {
      const window = leaseLostDeadlineMs(sentAt, t) - fenceDeadlineMs(sentAt, t);
      assert.ok(window > t.watchdogTimeoutMs + clockDriftMarginMs(t.leaseTtlMs), `window ${window}`);
    }),
  );
  assert.equal(leaseLostDeadlineMs(1_000, DEFAULT_TIMINGS) - fenceDeadlineMs(1_000, DEFAULT_TIMINGS), 2_500);
});

test("a host whose renews fail at most renewRetries times in a row is never fenced", () => {
  // The renew policy the rule assumes: the next renew is sent renewIntervalMs after the last successful
  // one was sent, and a failed or timed-out attempt (at most renewTimeoutMs) is retried at once.
  const attempt = (t: Timings) =>
    fc.oneof(fc.constant(t.renewTimeoutMs), fc.double({ min: 0, max: t.renewTimeoutMs, noNaN: true }));
  const cycles = (t: Timings) =>
    fc.array(
      fc.record({
        failures: fc.integer({ min: 0, max: t.renewRetries }),
        attemptsMs: fc.array(attempt(t), { minLength: t.renewRetries + 1, maxLength: t.renewRetries + 1 }),
      }),
      { minLength: 1, maxLength: 10 },
    );
  fc.assert(
    fc.property(
      timingsArbitrary.filter(accepted).chain((t) => fc.tuple(fc.constant(t), cycles(t))),
      ([t, renewCycles]) => {
        let lastSuccessSentMs = 0;
        for (const cycle of renewCycles) {
          let sentMs = lastSuccessSentMs + t.renewIntervalMs;
          for (const failedMs of cycle.attemptsMs.slice(0, cycle.failures)) sentMs += failedMs;
          const answeredMs = sentMs + cycle.attemptsMs[cycle.failures]!;
          assert.ok(answeredMs < fenceDeadlineMs(lastSuccessSentMs, t), `renew answered at ${answeredMs}`);
          lastSuccessSentMs = sentMs;
        }
      },
    ),
    { numRuns: 500 },
  );
});

test("the simulation reaches the edge: the worst case the rules allow ends just inside the lease", () => {
  // No renew after the grant; the slowest clock; the loop freezes right after a write passes the fence
  // check at the last moment, and thaws just before the watchdog's late kill.
  const t = DEFAULT_TIMINGS;
  const rate = 1 - CLOCK_RATE_ERROR_MAX;
  const edge = (timings: Timings): Scenario => {
    const startMs = timings.fenceAfterMs / rate - 0.001;
    return {
      ratePpm: -CLOCK_RATE_ERROR_MAX * 1e6,
      renews: [],
      partitionAtMs: 0,
      hangs: [{ startMs, durationMs: timings.watchdogTimeoutMs / rate + FENCE_LATENESS_MAX_MS - 0.001 }],
      checksMs: [],
      watchdogLatenessMs: FENCE_LATENESS_MAX_MS,
    };
  };
  const outcome = simulate(t, edge(t));
  const last = Math.max(...outcome.completionsMs);
  assert.ok(last > t.leaseTtlMs - clockDriftMarginMs(t.leaseTtlMs) && last < t.leaseTtlMs, `last write at ${last}`);
  assert.deepEqual(unsafeMoments(t, outcome), []);

  // One step past the fence rule and the same schedule completes a write after the lease expired.
  const unsafe = { ...t, watchdogTimeoutMs: t.watchdogTimeoutMs + 300 };
  assert.throws(() => checkTimings(unsafe), /fence must fire/);
  const moments = unsafeMoments(unsafe, simulate(unsafe, edge(unsafe)));
  assert.ok(
    moments.some((moment) => moment.startsWith("a write completed")),
    moments.join("\n"),
  );
});

test("random schedules find the late write when the fence rule is broken", () => {
  const unsafe = { ...DEFAULT_TIMINGS, fenceAfterMs: 5_000 };
  const result = fc.check(
    fc.property(
      scenarioArbitrary(unsafe),
      (scenario) => unsafeMoments(unsafe, simulate(unsafe, scenario)).length === 0,
    ),
    { numRuns: 2_000, seed: 4 },
  );
  assert.ok(result.failed, "the simulation should catch timings whose fence outlasts the lease");
});

test("counting the fence from the renew's reply instead of its send lets a write complete after expiry", () => {
  // The renew sent at 1 s is applied at once, but its reply is slow (retransmissions, a busy host);
  // then etcd is cut off. The lease can expire at 7 s.
  const scenario: Scenario = {
    ratePpm: 0,
    renews: [{ sendMs: 1_000, applyDelayMs: 0, replyDelayMs: 2_700 }],
    partitionAtMs: 1_001,
    hangs: [],
    checksMs: [4_499, 4_501, 6_999, 7_100],
    watchdogLatenessMs: 0,
  };
  const fromSend = simulate(DEFAULT_TIMINGS, scenario, "send");
  // 0 and 3.7 s: a write that waited is released when the grant's and the renew's answers are read.
  assert.deepEqual(fromSend.completionsMs, [0, 3_700, 4_499]);
  assert.deepEqual(unsafeMoments(DEFAULT_TIMINGS, fromSend), []);
  const fromReply = simulate(DEFAULT_TIMINGS, scenario, "reply");
  assert.deepEqual(fromReply.completionsMs, [0, 3_700, 4_499, 4_501, 6_999, 7_100]);
  assert.deepEqual(unsafeMoments(DEFAULT_TIMINGS, fromReply), [
    "a write completed at 7100, lease may expire at 7000",
    "the VMs stopped only at 7200, lease may expire at 7000",
  ]);
});
