// The simulated cluster store (test/sim/sim-store.ts) against a real etcd: the same seeded random
// sequence of puts, deletes, range reads, transactions with compares on keys and prefixes, and leases
// (grant, keepalive, revoke; no expiry timing) goes to etcd through EtcdClient and to the sim store,
// and every answer must be the same: values, versions, succeeded flags, counts, refusals (code and
// etcd's message), and revisions relative to each store's starting revision. A watch on each side must
// see the same changes. This is what lets the control-plane simulation stand in for etcd.
//   HAVEN_SIM_STORE_SEED=7   the sequence's seed (default 1); HAVEN_SIM_STORE_STEPS=2000 its length (400)

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { HavenError } from "../../src/core/errors.js";
import type {
  Compare,
  CompareResult,
  EtcdClient,
  KeyValue,
  TxnOperation,
  Watch,
  WatchEvent,
} from "../../src/cluster/etcd-client.js";
import type { ClusterStore } from "../../src/cluster/store.js";
import { haveEtcd, startTestEtcd, type TestEtcd } from "../helpers/etcd.js";
import { Rng } from "../sim/rng.js";
import { SimClock, SimDriver } from "../sim/sim-clock.js";
import { SimStore, type SimStoreClient } from "../sim/sim-store.js";

const seed = Number(process.env.HAVEN_SIM_STORE_SEED ?? 1);
const steps = Number(process.env.HAVEN_SIM_STORE_STEPS ?? 400);

const KEYS = ["d/a", "d/b", "d/b/1", "d/b/2", "d/c", "d/\u00ff", "d/\uffff", "d/\u{10000}", "d0", "e"];
const PREFIXES = ["d/", "d/b", "d/b/", "d", "", "x/"];
const VALUES = ["", "1", "2", "v", "\u00e9t\u00e9", "a longer value"];
/** A lease id neither store granted. */
const UNKNOWN_LEASE = "7777777777777777777";

/** A revision in a request: absolute 0 (no key), or relative to the store's starting revision. */
type Revision = { readonly absolute: 0 } | { readonly relative: number };
/** A lease in a request: the nth granted, or one never granted. */
type LeaseRef = number | "unknown";

type AbstractCompare = ({ readonly key: string } | { readonly prefix: string }) &
  (
    | { readonly target: "value"; readonly result: CompareResult; readonly value: string }
    | { readonly target: "version"; readonly result: CompareResult; readonly value: number }
    | { readonly target: "createRevision" | "modRevision"; readonly result: CompareResult; readonly value: Revision }
    | { readonly target: "lease"; readonly result: CompareResult; readonly value: LeaseRef }
  );

type AbstractOperation =
  | { readonly type: "put"; readonly key: string; readonly value: string; readonly lease?: LeaseRef }
  | Exclude<TxnOperation, { type: "put" }>;

/** One step of the sequence, independent of which store runs it. */
type Step =
  | { readonly op: "put"; readonly key: string; readonly value: string; readonly lease?: LeaseRef }
  | { readonly op: "get"; readonly key: string }
  | { readonly op: "getPrefix"; readonly prefix: string }
  | { readonly op: "getPrefixPage"; readonly prefix: string; readonly limit?: number; readonly keysOnly: boolean }
  | { readonly op: "delete"; readonly key: string }
  | { readonly op: "deleteRange"; readonly from: string; readonly to: string }
  | {
      readonly op: "txn";
      readonly compare: AbstractCompare[];
      readonly success: AbstractOperation[];
      readonly failure: AbstractOperation[];
    }
  | { readonly op: "grantLease"; readonly ttlSeconds: number }
  | { readonly op: "keepAlive"; readonly lease: LeaseRef }
  | { readonly op: "revokeLease"; readonly lease: LeaseRef }
  | { readonly op: "leaseTimeToLive"; readonly lease: LeaseRef };

/** The calls both stores answer: ClusterStore plus EtcdClient's leaseTimeToLive. */
type Store = ClusterStore & Pick<EtcdClient, "leaseTimeToLive">;

/** One store under test: how to run a call on it, and how to name its revisions and leases. */
interface Side {
  readonly name: string;
  readonly store: Store;
  readonly endpoint: string;
  /** Its revision before the first step. */
  base: number;
  readonly leases: string[];
  run<T>(call: () => Promise<T>): Promise<T>;
}

function revisionOf(side: Side, revision: Revision): number {
  return "absolute" in revision ? revision.absolute : side.base + revision.relative;
}

function leaseOf(side: Side, lease: LeaseRef): string {
  return lease === "unknown" ? UNKNOWN_LEASE : (side.leases[lease] ?? UNKNOWN_LEASE);
}

/** The step as one store's request, and run on it. */
async function perform(side: Side, step: Step): Promise<unknown> {
  const store = side.store;
  const lease = (ref: LeaseRef | undefined) => (ref === undefined ? {} : { lease: leaseOf(side, ref) });
  switch (step.op) {
    case "put":
      return side.run(() => store.put(step.key, step.value, lease(step.lease)));
    case "get":
      return side.run(() => store.get(step.key));
    case "getPrefix":
      return side.run(() => store.getPrefix(step.prefix));
    case "getPrefixPage":
      return side.run(() =>
        store.getPrefixPage(step.prefix, {
          ...(step.limit === undefined ? {} : { limit: step.limit }),
          keysOnly: step.keysOnly,
        }),
      );
    case "delete":
      return side.run(() => store.delete(step.key));
    case "deleteRange":
      return side.run(() => store.deleteRange(step.from, step.to));
    case "txn": {
      const compare = step.compare.map((condition): Compare => {
        switch (condition.target) {
          case "createRevision":
          case "modRevision":
            return { ...condition, value: revisionOf(side, condition.value) };
          case "lease":
            return { ...condition, value: leaseOf(side, condition.value) };
          default:
            return condition;
        }
      });
      const operations = (branch: AbstractOperation[]) =>
        branch.map((operation): TxnOperation =>
          operation.type === "put"
            ? { type: "put", key: operation.key, value: operation.value, ...lease(operation.lease) }
            : operation,
        );
      return side.run(() => store.txn(compare, operations(step.success), operations(step.failure)));
    }
    case "grantLease": {
      const granted = await side.run(() => store.grantLease(step.ttlSeconds));
      side.leases.push(granted.id);
      return granted;
    }
    case "keepAlive":
      return side.run(() => store.keepAliveOnce(leaseOf(side, step.lease)));
    case "revokeLease":
      return side.run(() => store.revokeLease(leaseOf(side, step.lease)));
    case "leaseTimeToLive": {
      const status = await side.run(() => store.leaseTimeToLive(leaseOf(side, step.lease)));
      // The seconds left depend on each store's clock; what was granted and what is attached do not.
      return status === undefined
        ? undefined
        : { grantedTtlSeconds: status.grantedTtlSeconds, keys: status.keys.sort() };
    }
  }
}

/** An answer in terms both stores share: revisions relative to the base, leases by grant order. */
function normalize(side: Side, answer: unknown): unknown {
  const relative = (revision: number) => (revision === 0 ? 0 : revision - side.base);
  const leaseName = (id: string | undefined) => {
    if (id === undefined) return undefined;
    const index = side.leases.indexOf(id);
    return index === -1 ? id : `lease#${index}`;
  };
  const walk = (value: unknown, field?: string): unknown => {
    if (Array.isArray(value)) return value.map((item) => walk(item));
    if (value !== null && typeof value === "object") {
      return Object.fromEntries(Object.entries(value).map(([name, inner]) => [name, walk(inner, name)]));
    }
    if (typeof value === "number" && field !== undefined && /^(revision|createRevision|modRevision)$/.test(field)) {
      return relative(value);
    }
    if (typeof value === "string" && (field === "lease" || field === "id")) return leaseName(value);
    return value;
  };
  return walk(answer);
}

/** A refusal in terms both stores share: the code, and the message without endpoint or lease ids. */
function normalizeError(side: Side, error: unknown): unknown {
  if (!(error instanceof HavenError)) throw error;
  let message = error.message.split(side.endpoint).join("<etcd>");
  side.leases.forEach((id, index) => (message = message.split(id).join(`lease#${index}`)));
  return { code: error.code, message };
}

async function outcome(side: Side, step: Step): Promise<unknown> {
  try {
    return { ok: normalize(side, await perform(side, step)) };
  } catch (error) {
    return { error: normalizeError(side, error) };
  }
}

/** The seeded sequence's next step; reads the sim store's state only to aim at existing revisions. */
function nextStep(rng: Rng, currentRelative: number, leasesGranted: number): Step {
  const key = () => (rng.chance(0.02) ? "" : rng.pick(KEYS));
  const prefix = () => rng.pick(PREFIXES);
  const value = () => rng.pick(VALUES);
  const leaseRef = (): LeaseRef => (leasesGranted === 0 || rng.chance(0.1) ? "unknown" : rng.int(0, leasesGranted - 1));
  const maybeLease = () => (rng.chance(0.2) ? { lease: leaseRef() } : {});
  const revision = (): Revision => (rng.chance(0.25) ? { absolute: 0 } : { relative: rng.int(1, currentRelative + 1) });
  const result = (): CompareResult => rng.pick(["equal", "notEqual", "greater", "less"] as const);
  const subject = () => (rng.chance(0.3) ? { prefix: prefix() } : { key: key() });
  const compare = (): AbstractCompare => {
    switch (rng.int(0, 4)) {
      case 0:
        return { ...subject(), target: "value", result: result(), value: value() };
      case 1:
        return { ...subject(), target: "version", result: result(), value: rng.int(0, 3) };
      case 2:
        return { ...subject(), target: "createRevision", result: result(), value: revision() };
      case 3:
        return { ...subject(), target: "modRevision", result: result(), value: revision() };
      default:
        // Lease ids differ between the stores: only equality means the same on both.
        return { ...subject(), target: "lease", result: rng.pick(["equal", "notEqual"] as const), value: leaseRef() };
    }
  };
  const operation = (): AbstractOperation => {
    switch (rng.int(0, 4)) {
      case 0:
        return { type: "put", key: key(), value: value(), ...maybeLease() };
      case 1:
        return { type: "get", key: key() };
      case 2:
        return { type: "getPrefix", prefix: prefix() };
      case 3:
        return { type: "delete", key: key() };
      default:
        return { type: "deletePrefix", prefix: prefix() };
    }
  };
  const list = <T>(max: number, make: () => T): T[] => Array.from({ length: rng.int(0, max) }, make);
  return rng.weighted<() => Step>([
    [() => ({ op: "put", key: key(), value: value(), ...maybeLease() }), 6],
    [() => ({ op: "get", key: key() }), 3],
    [() => ({ op: "getPrefix", prefix: prefix() }), 2],
    [
      () => ({
        op: "getPrefixPage",
        prefix: prefix(),
        ...(rng.chance(0.7) ? { limit: rng.int(1, 4) } : {}),
        keysOnly: rng.chance(0.5),
      }),
      2,
    ],
    [() => ({ op: "delete", key: key() }), 2],
    [() => ({ op: "deleteRange", from: key(), to: key() }), 1],
    [() => ({ op: "txn", compare: list(3, compare), success: list(4, operation), failure: list(3, operation) }), 8],
    [() => ({ op: "grantLease", ttlSeconds: rng.int(60, 600) }), 1],
    [() => ({ op: "keepAlive", lease: leaseRef() }), 1],
    [() => ({ op: "revokeLease", lease: leaseRef() }), 1],
    [() => ({ op: "leaseTimeToLive", lease: leaseRef() }), 1],
  ])();
}

/** Collects a watch's events; lets the test wait, bounded, for the one at a revision. */
function watchLog() {
  const events: WatchEvent[] = [];
  return { events, onEvent: (event: WatchEvent) => void events.push(event) };
}

async function waitFor(condition: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`${what} within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

// The suite takes about 3 s; one still running after 60 s is hung.
describe("sim store against a real etcd", { skip: !haveEtcd() && "etcd is not installed", timeout: 60_000 }, () => {
  let cluster: TestEtcd | undefined;
  const watches: Watch[] = [];

  before(async () => {
    cluster = await startTestEtcd("haven-sim-store-");
  });
  after(async () => {
    for (const watch of watches) watch.cancel();
    await cluster?.stop();
  });

  function sides(): { real: Side; sim: Side; simStore: SimStore; driver: SimDriver } {
    const etcd = cluster!.client({ requestTimeoutMs: 5_000 });
    const clock = new SimClock();
    const driver = new SimDriver(clock);
    const simStore = new SimStore({ clock, rng: new Rng(seed) });
    const simClient: SimStoreClient = simStore.client("tester");
    const real: Side = {
      name: "etcd",
      store: etcd,
      endpoint: cluster!.endpoint,
      base: 0,
      leases: [],
      run: (call) => call(),
    };
    const sim: Side = {
      name: "sim",
      store: simClient,
      endpoint: simStore.endpoint,
      base: simStore.revision,
      leases: [],
      run: async (call) => {
        const settled = await driver.drive(call(), 60_000);
        if (settled.state === "fulfilled") return settled.value;
        if (settled.state === "rejected") throw settled.error;
        throw new Error("a sim store call did not settle within 60 s of virtual time");
      },
    };
    return { real, sim, simStore, driver };
  }

  async function startAt(side: Side): Promise<void> {
    side.base = (await side.run(() => side.store.getPrefixPage("", { limit: 1 }))).revision;
  }

  test(`the same ${steps} random steps (seed ${seed}) get the same answers from both, and watches see the same changes`, async (t) => {
    const { real, sim, simStore, driver } = sides();
    // Start from an empty keyspace on both (an earlier test may have left keys in etcd).
    await real.store.deleteRange("\u0001", "\u{10ffff}");
    await startAt(real);
    await startAt(sim);
    const realLog = watchLog();
    const simLog = watchLog();
    const realWatch = real.store.watchPrefix("d", {}, realLog.onEvent);
    const simWatch = sim.store.watchPrefix("d", {}, simLog.onEvent);
    watches.push(realWatch, simWatch);
    await realWatch.ready;
    await sim.run(() => simWatch.ready);

    // Fixed first steps: etcd's minimum lease TTL, and its limit on a transaction's size.
    const fixed: Step[] = [
      { op: "grantLease", ttlSeconds: 1 },
      { op: "revokeLease", lease: 0 },
      {
        op: "txn",
        compare: [],
        success: Array.from({ length: 129 }, () => ({ type: "get", key: "d/a" })),
        failure: [],
      },
      {
        op: "txn",
        compare: [],
        success: Array.from({ length: 128 }, () => ({ type: "get", key: "d/a" })),
        failure: [],
      },
    ];
    const rng = new Rng(seed);
    const counts = new Map<string, number>();
    for (let index = 0; index < fixed.length + steps; index++) {
      const step = fixed[index] ?? nextStep(rng, simStore.revision - sim.base, sim.leases.length);
      const expected = await outcome(real, step);
      const actual = await outcome(sim, step);
      const label = `${step.op}${"error" in (expected as object) ? " (refused)" : ""}`;
      counts.set(label, (counts.get(label) ?? 0) + 1);
      assert.deepEqual(actual, expected, `step ${index} of seed ${seed}: ${JSON.stringify(step)}`);
    }
    const lastRevision = simStore.revision - sim.base;
    assert.ok(lastRevision > steps / 4, `the sequence wrote: ${lastRevision} revisions`);
    assert.ok((counts.get("txn") ?? 0) > steps / 20, `it ran transactions: ${JSON.stringify([...counts])}`);
    assert.ok((counts.get("txn (refused)") ?? 0) > 0, "and some etcd refused");
    t.diagnostic(`steps run: ${JSON.stringify(Object.fromEntries(counts))}`);

    // Both watches saw the same changes in the same order.
    const normalizeEvents = (side: Side, events: WatchEvent[]) =>
      events.map((event) => normalize(side, event as unknown as KeyValue));
    await driver.runFor(1_000);
    const lastChange = simLog.events.at(-1)?.modRevision ?? sim.base;
    await waitFor(
      () => (realLog.events.at(-1)?.modRevision ?? real.base) - real.base >= lastChange - sim.base,
      10_000,
      "the real watch did not catch up",
    );
    assert.ok(simLog.events.length > steps / 4);
    assert.deepEqual(normalizeEvents(sim, simLog.events), normalizeEvents(real, realLog.events));
    realWatch.cancel();
    simWatch.cancel();
  });

  test("a watch that replays from a start revision says the store's revision once ready, as etcd's header does", async () => {
    const { real, sim, driver } = sides();
    for (const side of [real, sim]) {
      await startAt(side);
      for (let index = 0; index < 5; index++) await side.run(() => side.store.put("replay/k", String(index)));
    }
    const relativeReady: number[] = [];
    const replayed: number[][] = [];
    for (const side of [real, sim]) {
      const log = watchLog();
      const watch = side.store.watchPrefix("replay/", { startRevision: side.base + 2 }, log.onEvent);
      watches.push(watch);
      await side.run(() => watch.ready);
      relativeReady.push(watch.revision - side.base);
      if (side === sim) await driver.runFor(1_000);
      await waitFor(() => log.events.length >= 4, 10_000, `${side.name}'s replay did not arrive`);
      replayed.push(log.events.map((event) => event.modRevision - side.base));
      watch.cancel();
    }
    assert.deepEqual(relativeReady, [5, 5], "revision is the store's at creation, ahead of the replayed events");
    assert.deepEqual(replayed, [
      [2, 3, 4, 5],
      [2, 3, 4, 5],
    ]);
  });

  test("a watch from a start revision ahead of the store's sees only the changes from there", async () => {
    const { real, sim, driver } = sides();
    const seen: string[][] = [];
    for (const side of [real, sim]) {
      await startAt(side);
      const log = watchLog();
      const watch = side.store.watchPrefix("ahead/", { startRevision: side.base + 2 }, log.onEvent);
      watches.push(watch);
      await side.run(() => watch.ready);
      for (const value of ["before", "first seen", "second seen"]) {
        await side.run(() => side.store.put("ahead/k", value));
      }
      if (side === sim) await driver.runFor(1_000);
      await waitFor(() => log.events.length >= 2, 10_000, `${side.name}'s watch did not see the changes`);
      seen.push(log.events.map((event) => (event.type === "PUT" ? event.value : "DELETE")));
      watch.cancel();
    }
    assert.deepEqual(seen, [
      ["first seen", "second seen"],
      ["first seen", "second seen"],
    ]);
  });
});
