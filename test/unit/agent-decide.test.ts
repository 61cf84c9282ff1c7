// decide(): what an agent does about one volume. Every branch, including the ones that keep data safe:
// a copy not recorded in sync is never promoted, nothing is served without the lease, a deposed
// primary stops, and promotion waits out the grace period with an epoch above the record's.

import assert from "node:assert/strict";
import { deadPrimaries, decide, type HostView, type VolumeView } from "../../src/agent/decide.js";
import type { ReplicaRecord } from "../../src/cluster/schema.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** Every test here takes well under a second; one still running after this bound is hung, not slow. */
const test = boundedTest(10_000);

const record = (state: ReplicaRecord["state"], detail: string = state): ReplicaRecord => ({
  state,
  detail,
  epoch: 3,
  updatedAt: "2026-11-27T00:00:00Z",
});

function volume(primaryHost: string | undefined, replicas: Record<string, ReplicaRecord> = {}): VolumeView {
  return {
    spec: {
      name: "v",
      sizeBytes: 1 << 30,
      replicas: [
        { host: "a", disk: "d" },
        { host: "b", disk: "d" },
      ],
      createdAt: "2026-11-27T00:00:00Z",
    },
    primary:
      primaryHost === undefined
        ? undefined
        : { host: primaryHost, epoch: 3, since: "2026-11-27T00:00:00Z", reason: "created" },
    // Records by copy (HOST/DISK); a bare host name means its copy on disk d.
    replicas: new Map(Object.entries(replicas).map(([id, record]) => [id.includes("/") ? id : `${id}/d`, record])),
  };
}

function host(overrides: Partial<HostView> = {}): HostView {
  return {
    me: "b",
    alive: new Set(["a", "b"]),
    holdsLease: true,
    running: new Set(),
    now: 10_000,
    primaryDeadSince: new Map(),
    failoverGraceMs: 500,
    ...overrides,
  };
}

test("the recorded primary serves at the record's epoch, once", () => {
  assert.deepEqual(decide(volume("b"), host()), { kind: "serve", epoch: 3 });
  assert.deepEqual(decide(volume("b"), host({ running: new Set(["v"]) })), { kind: "none" });
});

test("without the lease nothing is served, and what runs stops", () => {
  assert.deepEqual(decide(volume("b"), host({ holdsLease: false })), { kind: "none" });
  assert.equal(decide(volume("b"), host({ holdsLease: false, running: new Set(["v"]) })).kind, "stop");
});

test("a deposed primary stops", () => {
  const action = decide(volume("a"), host({ running: new Set(["v"]) }));
  assert.equal(action.kind, "stop");
  assert.match((action as { reason: string }).reason, /a is the primary now \(epoch 3\)/);
});

test("a live primary is left alone by its standbys", () => {
  assert.deepEqual(decide(volume("a", { b: record("in-sync") }), host()), { kind: "none" });
});

test("a standby with an in-sync copy promotes after the grace period, one epoch up", () => {
  const view = volume("a", { b: record("in-sync") });
  const dead = { alive: new Set(["b"]), primaryDeadSince: new Map([["v", 9_800]]) };
  assert.equal(decide(view, host(dead)).kind, "wait");
  const action = decide(view, host({ ...dead, now: 10_300 }));
  assert.equal(action.kind, "promote");
  assert.equal((action as { epoch: number }).epoch, 4);
});

test("a copy recorded out of sync, or not on record, is never promoted", () => {
  const dead = { alive: new Set(["b"]), primaryDeadSince: new Map([["v", 0]]) };
  for (const view of [volume("a", { b: record("out-of-sync", "write failed") }), volume("a")]) {
    const action = decide(view, host(dead));
    assert.equal(action.kind, "wait");
    assert.match((action as { reason: string }).reason, /not promoted/);
  }
});

test("a host without a copy neither serves nor promotes", () => {
  const stranger = host({ me: "c", alive: new Set(["c"]), primaryDeadSince: new Map([["v", 0]]) });
  assert.deepEqual(decide(volume("a", { c: record("in-sync") }), stranger), { kind: "none" });
  assert.deepEqual(decide(volume("c"), stranger), { kind: "none" });
});

test("a standby whose disk failed its health check does not promote, and says why", () => {
  const gone = host({ alive: new Set(["b"]), primaryDeadSince: new Map([["v", 0]]) });
  const action = decide(volume("a", { b: record("in-sync") }), {
    ...gone,
    diskProblem: (disk) => (disk === "d" ? "disk d failed its health check (EIO)" : undefined),
  });
  assert.equal(action.kind, "wait");
  assert.match((action as { reason: string }).reason, /disk d failed its health check \(EIO\): it does not take over/);
  assert.equal(decide(volume("a", { b: record("in-sync") }), gone).kind, "promote");
});

test("a failover says whether the old primary still answered heartbeats over the replication link", () => {
  const gone = host({ alive: new Set(["b"]), primaryDeadSince: new Map([["v", 0]]) });
  const reason = (linkUp: boolean | undefined): string => {
    const action = decide(volume("a", { b: record("in-sync") }), { ...gone, linkUp: () => linkUp });
    assert.equal(action.kind, "promote");
    return (action as { reason: string }).reason;
  };
  assert.match(reason(true), /a still answers heartbeats over the replication link: it is cut off from etcd/);
  assert.match(reason(false), /a stopped answering heartbeats over the replication link too/);
  assert.doesNotMatch(reason(undefined), /heartbeat/);
});

test("an engine that failed to start here is not started again before its retry time, then is", () => {
  const retry = new Map([["v", 12_000]]);
  assert.deepEqual(decide(volume("b"), host({ startRetryAt: retry })), { kind: "none" });
  assert.deepEqual(decide(volume("b"), host({ startRetryAt: retry, now: 12_000 })), { kind: "serve", epoch: 3 });
  // A promotion waits the same way; what is not a start (stop, wait) is never held back.
  const dead = { alive: new Set(["b"]), primaryDeadSince: new Map([["v", 0]]), startRetryAt: retry };
  assert.deepEqual(decide(volume("a", { b: record("in-sync") }), host(dead)), { kind: "none" });
  assert.equal(decide(volume("a", { b: record("in-sync") }), host({ ...dead, now: 12_000 })).kind, "promote");
  assert.equal(decide(volume("a"), host({ startRetryAt: retry, running: new Set(["v"]) })).kind, "stop");
});

test("the failover timer starts when a primary is first seen dead, holds while it stays dead, and ends when it lives", () => {
  const first = deadPrimaries(new Map(), new Map([["v", "a"]]), new Set(["b"]), 1_000);
  assert.deepEqual([...first], [["v", 1_000]]);
  const later = deadPrimaries(first, new Map([["v", "a"]]), new Set(["b"]), 5_000);
  assert.deepEqual([...later], [["v", 1_000]], "the first sighting counts, not the latest");
  assert.deepEqual([...deadPrimaries(later, new Map([["v", "a"]]), new Set(["a", "b"]), 6_000)], []);
});
