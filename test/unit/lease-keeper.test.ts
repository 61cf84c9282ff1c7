// The lease keeper on virtual time (SimClock) against a scripted etcd: the renew cadence and retries,
// the three states (held, unproven, lost) and their deadlines, an etcd outage shorter than the lease as
// latency (completions wait, then go out at the same lease), loss on TTL 0 or an unknown lease, a new
// lease after a loss, stop and revoke; and, over random outages and delays, that the gate never lets a
// completion through unless the lease is alive in etcd with at least leaseTtlMs - fenceAfterMs to spare.

import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { LeaseKeeper, type LeaseState } from "../../src/agent/lease-keeper.js";
import { DEFAULT_TIMINGS, type Timings } from "../../src/agent/timings.js";
import type { Lease, LeaseId } from "../../src/cluster/etcd-client.js";
import type { ClusterStore } from "../../src/cluster/store.js";
import { HavenError } from "../../src/core/errors.js";
import { observe, SimClock, SimDriver } from "../sim/sim-clock.js";

const T = DEFAULT_TIMINGS; // lease 6 s, renew every 1 s, 800 ms per attempt, fence at 3.5 s

/** What etcd does with one keepalive: answer (applied after applyDelayMs, answered replyDelayMs later, or never), or fail. */
type KeepaliveFate =
  | { readonly kind: "answer"; readonly applyDelayMs: number; readonly replyDelayMs: number | null }
  | { readonly kind: "fail"; readonly afterMs: number; readonly code?: "HAVEN_ERR_UNAVAILABLE" | "HAVEN_ERR_NOT_FOUND" }
  | { readonly kind: "hang" };

const PROMPT: KeepaliveFate = { kind: "answer", applyDelayMs: 1, replyDelayMs: 1 };
const REFUSED: KeepaliveFate = { kind: "fail", afterMs: 1 };

/**
 * etcd's lease semantics on virtual time: a keepalive applied while the lease is alive extends it to
 * apply time + TTL; an expired lease stays expired (and keepalives then answer TTL 0).
 */
class ScriptedEtcd implements ClusterStore {
  private nextId = 1;
  readonly expiresAt = new Map<LeaseId, number>();
  readonly grants: number[] = [];
  readonly keepalives: { sentAt: number; lease: LeaseId }[] = [];
  readonly revoked: LeaseId[] = [];
  /** Send time of the last keepalive applied to each lease (the grant counts). */
  readonly lastAppliedSend = new Map<LeaseId, number>();
  fate: (sentAt: number) => KeepaliveFate = () => PROMPT;
  grantFails = false;

  constructor(private readonly clock: SimClock) {}

  alive(lease: LeaseId, at = this.clock.now()): boolean {
    return (this.expiresAt.get(lease) ?? Number.NEGATIVE_INFINITY) > at;
  }

  grantLease(ttlSeconds: number): Promise<Lease> {
    this.grants.push(this.clock.now());
    if (this.grantFails) return Promise.reject(new HavenError("HAVEN_ERR_UNAVAILABLE", "etcd is down"));
    const id = String(this.nextId++);
    this.expiresAt.set(id, this.clock.now() + ttlSeconds * 1000);
    this.lastAppliedSend.set(id, this.clock.now());
    return Promise.resolve({ id, ttlSeconds });
  }

  keepAliveOnce(lease: LeaseId): Promise<number> {
    const sentAt = this.clock.now();
    this.keepalives.push({ sentAt, lease });
    const fate = this.fate(sentAt);
    return new Promise((resolve, reject) => {
      if (fate.kind === "hang") return;
      if (fate.kind === "fail") {
        const code = fate.code ?? "HAVEN_ERR_UNAVAILABLE";
        this.clock.schedule(fate.afterMs, () => reject(new HavenError(code, `keepalive: ${code}`)));
        return;
      }
      this.clock.schedule(fate.applyDelayMs, () => {
        const now = this.clock.now();
        let ttl = 0;
        if (this.alive(lease, now)) {
          this.expiresAt.set(lease, now + T.leaseTtlMs);
          this.lastAppliedSend.set(lease, Math.max(this.lastAppliedSend.get(lease)!, sentAt));
          ttl = T.leaseTtlMs / 1000;
        }
        if (fate.replyDelayMs !== null) this.clock.schedule(fate.replyDelayMs, () => resolve(ttl));
      });
    });
  }

  revokeLease(lease: LeaseId): Promise<void> {
    this.revoked.push(lease);
    this.expiresAt.delete(lease);
    return Promise.resolve();
  }

  get = unsupported;
  getPrefix = unsupported;
  getPrefixPage = unsupported;
  put = unsupported;
  delete = unsupported;
  deleteRange = unsupported;
  txn = unsupported;
  watchPrefix = unsupported;
}

function unsupported(): never {
  throw new Error("not used by the lease keeper");
}

interface Harness {
  readonly clock: SimClock;
  readonly driver: SimDriver;
  readonly etcd: ScriptedEtcd;
  readonly keeper: LeaseKeeper;
  readonly lost: { at: number; reason: string }[];
  readonly regained: { at: number; lease: LeaseId }[];
  readonly log: string[];
  /** Advances virtual time to `at` (absolute ms), firing every timer on the way. */
  runTo(at: number): Promise<void>;
  stateAt(at: number): Promise<LeaseState>;
}

async function harness(timings: Timings = T, register?: (lease: LeaseId) => Promise<void>): Promise<Harness> {
  const clock = new SimClock();
  const driver = new SimDriver(clock);
  const etcd = new ScriptedEtcd(clock);
  const lost: { at: number; reason: string }[] = [];
  const regained: { at: number; lease: LeaseId }[] = [];
  const log: string[] = [];
  const keeper = new LeaseKeeper({
    store: etcd,
    clock,
    timings,
    log: (line) => log.push(`${clock.now()}: ${line}`),
    onLost: (reason) => lost.push({ at: clock.now(), reason }),
    onRegained: async (lease) => {
      await register?.(lease);
      regained.push({ at: clock.now(), lease });
    },
  });
  const started = await driver.drive(keeper.start(), 1000);
  assert.equal(started.state, "fulfilled");
  const runTo = (at: number) => driver.runFor(at - clock.now());
  return {
    clock,
    driver,
    etcd,
    keeper,
    lost,
    regained,
    log,
    runTo,
    stateAt: async (at) => {
      await runTo(at);
      return keeper.state();
    },
  };
}

/** etcd unreachable (connections refused) during [from, to). */
const outage =
  (from: number, to: number, during: KeepaliveFate = REFUSED) =>
  (sentAt: number): KeepaliveFate =>
    sentAt >= from && sentAt < to ? during : PROMPT;

test("a keepalive goes out renewIntervalMs after the send of the last accepted one, and the lease stays held", async () => {
  const h = await harness();
  for (let at = 100; at <= 10_000; at += 100) assert.equal(await h.stateAt(at), "held", `at ${at}`);
  assert.deepEqual(
    h.etcd.keepalives.map((k) => k.sentAt),
    [1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10_000],
  );
  assert.deepEqual(h.regained, [{ at: 0, lease: "1" }]);
  assert.deepEqual(h.lost, []);
  assert.equal(h.keeper.current, "1");
  await h.keeper.stop(false);
});

test("a failed keepalive is retried renewTimeoutMs after its send, and renewRetries retries land before the fence", async () => {
  const h = await harness();
  h.etcd.fate = outage(1000, 2000); // the attempts at 1000 and 1800 are refused, the one at 2600 accepted
  for (let at = 100; at <= 5000; at += 50) assert.equal(await h.stateAt(at), "held", `at ${at}`);
  assert.deepEqual(
    h.etcd.keepalives.map((k) => k.sentAt).filter((at) => at <= 4000),
    [1000, 1800, 2600, 3600],
  );
  assert.deepEqual(h.lost, []);
  await h.keeper.stop(false);
});

test("an unanswered keepalive counts as failed after renewTimeoutMs, and its late answer still proves the lease", async () => {
  const h = await harness();
  // etcd frozen from 900 to 4000 (SIGSTOP): what is sent meanwhile is answered when it thaws.
  h.etcd.fate = (sentAt) =>
    sentAt >= 900 && sentAt < 4000 ? { kind: "answer", applyDelayMs: 4000 - sentAt, replyDelayMs: 1 } : PROMPT;
  assert.equal(await h.stateAt(3499), "held");
  assert.equal(await h.stateAt(3500), "unproven");
  assert.equal(await h.stateAt(4001), "held");
  // Sent at 1000, 1800, 2600, 3400 (each after the last one's timeout); the answers at 4001 prove the
  // lease from the latest send, 3400: the next keepalive is due at 4400.
  assert.deepEqual(
    h.etcd.keepalives.map((k) => k.sentAt).filter((at) => at < 4400),
    [1000, 1800, 2600, 3400],
  );
  assert.equal(h.keeper.lastAcceptedAgoMs(), 4001 - 3400);
  await h.runTo(4400);
  assert.equal(h.etcd.keepalives.at(-1)!.sentAt, 4400);
  assert.deepEqual(h.lost, []);
  assert.ok(
    h.log.some((line) => /keepalives failing for .*\(no answer within 800 ms\)/.test(line)),
    h.log.join("\n"),
  );
  assert.ok(
    h.log.some((line) => /etcd answered a keepalive again after/.test(line)),
    h.log.join("\n"),
  );
  await h.keeper.stop(false);
});

test("past the fence deadline the lease is unproven: completions wait, and an accepted keepalive releases them at the same lease", async () => {
  const h = await harness();
  h.etcd.fate = outage(500, 4500); // etcd unreachable for 4 s, less than the 6 s lease
  assert.equal(await h.stateAt(3499), "held");
  assert.equal(h.keeper.completionGate(), true);
  assert.equal(await h.stateAt(3500), "unproven");
  const gate = h.keeper.completionGate();
  assert.ok(gate instanceof Promise, "an unproven lease makes a completion wait");
  const waiting = observe(gate);
  await h.runTo(4500);
  assert.equal(waiting.outcome.state, "pending", "nothing completes while the lease is unproven");
  assert.equal(h.keeper.state(), "unproven");
  assert.equal(h.keeper.current, "1", "the lease is still this host's while unproven");
  // Attempts every 800 ms from 1000: 1000, 1800, 2600, 3400, 4200 refused; 5000 accepted.
  await h.runTo(5002);
  assert.deepEqual(waiting.outcome, { state: "fulfilled", value: true });
  assert.equal(h.keeper.state(), "held");
  assert.equal(h.keeper.current, "1");
  assert.deepEqual(h.etcd.grants, [0], "no new lease");
  assert.deepEqual(h.lost, []);
  assert.ok(h.log.some((line) => line.startsWith("3500: lease unproven")));
  assert.ok(h.log.some((line) => line.startsWith("5002: lease held again")));
  await h.keeper.stop(false);
});

test("lost once no keepalive was accepted for a whole leaseTtlMs: onLost once, waiting completions fail, then a new lease", async () => {
  const h = await harness();
  h.etcd.fate = outage(500, 8000);
  await h.runTo(4000);
  const waiting = observe(h.keeper.completionGate() as Promise<boolean>);
  assert.equal(await h.stateAt(5999), "unproven");
  assert.equal(waiting.outcome.state, "pending");
  assert.equal(await h.stateAt(6000), "lost");
  assert.deepEqual(waiting.outcome, { state: "fulfilled", value: false });
  assert.equal(h.keeper.completionGate(), false);
  assert.equal(h.keeper.current, undefined);
  assert.deepEqual(h.lost, [
    {
      at: 6000,
      reason:
        "no keepalive answered for 6000 ms, the lease's TTL: etcd expires it (unless it took a keepalive whose answer never came here)",
    },
  ]);
  // A new lease is asked for every renewIntervalMs; etcd is back at 8000.
  h.etcd.grantFails = true;
  await h.runTo(7999);
  h.etcd.grantFails = false;
  await h.runTo(9000);
  assert.equal(h.keeper.state(), "held");
  assert.deepEqual(
    h.regained.map((r) => r.lease),
    ["1", "2"],
  );
  assert.equal(h.keeper.current, "2");
  assert.equal(h.lost.length, 1, "onLost fires once per lost lease");
  await h.keeper.stop(false);
});

test("etcd answering TTL 0 loses the lease at once, even well before the fence", async () => {
  const h = await harness();
  await h.runTo(900);
  h.etcd.expiresAt.set("1", 0); // expired in etcd (say, after a long etcd-side stall)
  assert.equal(await h.stateAt(1002), "lost");
  assert.deepEqual(h.lost, [{ at: 1002, reason: "etcd says the lease has expired" }]);
  await h.keeper.stop(false);
});

test("etcd not knowing the lease loses it at once", async () => {
  const h = await harness();
  h.etcd.fate = (sentAt) => (sentAt >= 1000 ? { kind: "fail", afterMs: 2, code: "HAVEN_ERR_NOT_FOUND" } : PROMPT);
  assert.equal(await h.stateAt(1001), "held");
  assert.equal(await h.stateAt(1002), "lost");
  assert.match(h.lost[0]!.reason, /etcd does not know the lease/);
  await h.keeper.stop(false);
});

test("an answer for a lease already lost does not revive it", async () => {
  const h = await harness();
  // Everything sent from 500 on is answered "alive" only at 6500, after the lost deadline at 6000.
  h.etcd.fate = (sentAt) =>
    sentAt >= 500 && sentAt < 6500 ? { kind: "answer", applyDelayMs: 1, replyDelayMs: 6500 - sentAt } : PROMPT;
  h.etcd.grantFails = true;
  assert.equal(await h.stateAt(6000), "lost");
  await h.runTo(6600);
  assert.equal(h.keeper.state(), "lost");
  assert.equal(h.keeper.current, undefined);
  assert.equal(h.lost.length, 1);
  await h.keeper.stop(false);
});

test("a late answer counts from its own send: it moves the lost deadline, and makes the lease held only within the fence", async () => {
  const h = await harness();
  // The keepalive sent at 1000 is applied at once but answered only at 4600, past its own fence
  // deadline (4500): the lease stays unproven, but cannot be lost before 1000 + 6000. Every other
  // attempt before 6500 is refused; the one at 6600 is accepted.
  h.etcd.fate = (sentAt) =>
    sentAt === 1000 ? { kind: "answer", applyDelayMs: 1, replyDelayMs: 3599 } : sentAt < 6500 ? REFUSED : PROMPT;
  assert.equal(await h.stateAt(3600), "unproven");
  assert.equal(await h.stateAt(4601), "unproven");
  assert.equal(h.keeper.lastAcceptedAgoMs(), 3601);
  assert.equal(await h.stateAt(6500), "unproven", "lost only at 7000, a whole TTL after the send at 1000");
  assert.equal(await h.stateAt(6602), "held");
  assert.equal(h.keeper.lastAcceptedAgoMs(), 2);
  assert.deepEqual(h.lost, []);
  await h.keeper.stop(false);
});

test("stop ends renewing and fails waiting completions; with revoke the lease is given back; onLost does not fire", async () => {
  const h = await harness();
  h.etcd.fate = outage(500, 100_000, { kind: "hang" });
  await h.runTo(4000);
  const waiting = observe(h.keeper.completionGate() as Promise<boolean>);
  const stopped = await h.driver.drive(h.keeper.stop(true), 10);
  assert.equal(stopped.state, "fulfilled");
  assert.deepEqual(waiting.outcome, { state: "fulfilled", value: false });
  assert.deepEqual(h.etcd.revoked, ["1"]);
  assert.equal(h.keeper.state(), "lost");
  assert.equal(h.clock.nextDueAt(), undefined, "no timer of the keeper outlives it");
  const sent = h.etcd.keepalives.length;
  await h.runTo(20_000);
  assert.equal(h.etcd.keepalives.length, sent);
  assert.deepEqual(h.lost, []);
});

test("a lease whose registration fails is given back, and the keeper tries again", async () => {
  let failures = 0;
  const h = await harness(T, async (lease) => {
    if (lease === "2" && failures++ === 0) throw new HavenError("HAVEN_ERR_UNAVAILABLE", "put failed");
  });
  h.etcd.fate = outage(500, 7000);
  await h.runTo(6000);
  assert.equal(h.keeper.state(), "lost");
  await h.runTo(9500);
  assert.deepEqual(h.etcd.revoked, ["2"]);
  assert.deepEqual(
    h.regained.map((r) => r.lease),
    ["1", "3"],
  );
  assert.equal(h.keeper.current, "3");
  await h.keeper.stop(false);
});

test("whatever etcd does, a completion goes through only while the lease is alive in etcd, with leaseTtlMs - fenceAfterMs to spare", async () => {
  const fateArbitrary: fc.Arbitrary<KeepaliveFate> = fc.oneof(
    fc.constant(PROMPT),
    fc.record({
      kind: fc.constant("answer" as const),
      applyDelayMs: fc.integer({ min: 0, max: 4000 }),
      replyDelayMs: fc.oneof(fc.constant(null), fc.integer({ min: 0, max: 8000 })),
    }),
    fc.record({ kind: fc.constant("fail" as const), afterMs: fc.integer({ min: 0, max: 1500 }) }),
    fc.constant({ kind: "hang" } as const),
  );
  await fc.assert(
    fc.asyncProperty(
      fc.array(fateArbitrary, { minLength: 1, maxLength: 30 }),
      fc.array(fc.integer({ min: 0, max: 20_000 }), { minLength: 1, maxLength: 40 }),
      async (fates, checks) => {
        const h = await harness();
        let sent = 0;
        h.etcd.fate = () => fates[sent++ % fates.length]!;
        const violations: string[] = [];
        const granted = (lease: LeaseId | undefined) => {
          const now = h.clock.now();
          const spare = T.leaseTtlMs - T.fenceAfterMs;
          if (lease === undefined || !h.etcd.alive(lease, now + spare))
            violations.push(`a completion went through at ${now} with lease ${lease} not alive until ${now + spare}`);
        };
        const waits: Promise<void>[] = [];
        for (const at of [...checks].sort((a, b) => a - b)) {
          await h.runTo(at);
          const lease = h.keeper.current;
          const verdict = h.keeper.completionGate();
          if (verdict === true) granted(lease);
          else if (verdict !== false) waits.push(verdict.then((ok) => (ok ? granted(lease) : undefined)));
        }
        await h.runTo(30_000);
        await h.keeper.stop(false);
        await Promise.all(waits);
        assert.deepEqual(violations, []);
      },
    ),
    { numRuns: 150 },
  );
});

test("while keepalives fail, the log says for how long and when the lease expires, once per 5 s, not per keepalive", async () => {
  const h = await harness();
  h.etcd.fate = outage(500, 12_000);
  await h.runTo(5_999);
  const failing = h.log.filter((line) => /lease: keepalives failing/.test(line));
  const sent = h.etcd.keepalives.filter((k) => k.sentAt >= 500 && k.sentAt < 6000).length;
  assert.ok(sent >= 5, `${sent} keepalives failed`);
  assert.equal(failing.length, 1, h.log.join("\n"));
  assert.match(
    failing[0]!,
    /^100\d: lease: keepalives failing for 0\.0 s \(.+\); the lease expires in 5\.0 s unless etcd answers one$/,
  );
  await h.runTo(6_000);
  assert.ok(
    h.log.some((line) => /lease given up: no keepalive answered for 6000 ms/.test(line)),
    h.log.join("\n"),
  );
  assert.ok(!h.log.some((line) => /revoked/.test(line)), "the host cannot know that etcd revoked its lease");
  await h.keeper.stop(false);
});
