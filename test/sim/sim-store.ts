// A simulated etcd for the control-plane simulation: the keyspace of sim-kv.ts behind a simulated
// network, on the simulation's virtual clock, with the faults a real cluster store shows. Each host gets
// its own ClusterStore view (store.client(host)), so faults can hit one host and not the others.
//
// The model of one call, all on virtual time and seeded (the same seed replays the same trace):
//   sent ──latency──▶ arrives at the store ──(queued while a leader change pauses it)──▶ applied
//        ◀──latency── answer delivered                                                    │
// - Every call completes on a timer of the clock, never synchronously and never on a real timer.
// - A call is bounded by requestTimeoutMs, as EtcdClient's are: once it passes, the caller gets
//   HAVEN_ERR_UNAVAILABLE, but a request that reached the store is still applied (a late effect).
// - A partitioned host's new calls fail after connectTimeoutMs without reaching the store; a request
//   or an answer in flight when the partition starts is dropped, so the caller times out (the effect
//   happened if the request had arrived). Its watches break: onClose(HAVEN_ERR_UNAVAILABLE), and the
//   caller must watch again, as with EtcdClient.
// - A lost answer: the call was applied, then the connection broke; the caller gets
//   HAVEN_ERR_UNAVAILABLE ("may or may not have been applied", as EtcdClient words it for a write).
// - Slow answers add a bounded extra delay to each message of a host, with a probability.
// - A leader change pauses the store: nothing is applied and no lease expires; requests queue, and
//   when it ends they are applied in arrival order and every lease is renewed from that instant (the
//   new leader's lessor extends all leases, as etcd's does).
// - Leases expire on the clock, TTL seconds after the last keepalive the store applied; the expiry
//   deletes the keys attached in one revision, which watches see, as with etcd.
// - crashHost() models the host's process dying: its calls in flight never settle, its watches end
//   without a callback; a new client of the same host name is a new process.
// Errors follow EtcdClient's contract and wording (HAVEN_ERR_UNAVAILABLE, NOT_FOUND, IO, and its
// HAVEN_ERR_INVALID_REQUEST checks before sending). For assertions the store exposes its state at the
// current revision synchronously, the log of applied operations, and a trace of every message.

import { HavenError } from "../../src/core/errors.js";
import type {
  Compare,
  KeyValue,
  Lease,
  LeaseId,
  LeaseStatus,
  RangeOptions,
  RangePage,
  TxnOperation,
  TxnOperationResult,
  TxnResult,
  Watch,
  WatchEvent,
  WatchOptions,
} from "../../src/cluster/etcd-client.js";
import { putIf, type ClusterStore, type PutCondition } from "../../src/cluster/store.js";
import type { Clock } from "../../src/util/clock.js";
import type { Rng } from "./rng.js";
import { compareKeys, ETCD_REFUSALS, SimKeyspace, StoreRefusal, type KeySelection, type StepResult } from "./sim-kv.js";

export { compareKeys } from "./sim-kv.js";

export interface SimStoreOptions {
  readonly clock: Clock;
  readonly rng: Rng;
  /** One-way delay of each message between a host and the store, drawn uniformly (default 1..5 ms). */
  readonly latencyMs?: { readonly min: number; readonly max: number };
  /** The shortest lease TTL granted (default 2 s: etcd 3.4's with its default 1 s election timeout). */
  readonly minLeaseTtlSeconds?: number;
  /** etcd's --max-txn-ops (default 128). */
  readonly maxTxnOps?: number;
  /** The endpoint errors name (default "http://sim-etcd:2379"). */
  readonly endpoint?: string;
  /** Receives each trace line as it is recorded (console.log when replaying a seed). */
  readonly onTrace?: (line: string) => void;
}

/** The bounds EtcdClient takes, with its defaults. */
export interface SimClientOptions {
  /** Bound on one call (default 5000). */
  readonly requestTimeoutMs?: number;
  /** How long a call waits to connect to a store it cannot reach (default 1000, at most requestTimeoutMs). */
  readonly connectTimeoutMs?: number;
}

export type SimOperation =
  | { readonly type: "get"; readonly key: string }
  | { readonly type: "getPrefix"; readonly prefix: string; readonly limit?: number; readonly keysOnly?: boolean }
  | { readonly type: "put"; readonly key: string; readonly value: string; readonly lease?: LeaseId }
  | { readonly type: "delete"; readonly key: string }
  | { readonly type: "deletePrefix"; readonly prefix: string }
  | { readonly type: "deleteRange"; readonly from: string; readonly to: string }
  | {
      readonly type: "txn";
      readonly compare: readonly Compare[];
      readonly success: readonly TxnOperation[];
      readonly failure: readonly TxnOperation[];
    }
  | { readonly type: "grantLease"; readonly ttlSeconds: number }
  | { readonly type: "keepAlive"; readonly lease: LeaseId }
  | { readonly type: "revokeLease"; readonly lease: LeaseId }
  | { readonly type: "leaseTimeToLive"; readonly lease: LeaseId }
  | { readonly type: "status" }
  /** Not a call: the store let a lease expire. */
  | { readonly type: "expireLease"; readonly lease: LeaseId };

/** One operation the store applied, in the order it applied them. */
export interface AppliedOperation {
  /** Position in the log, from 0. */
  readonly index: number;
  /** Virtual time it was applied. */
  readonly atMs: number;
  /** The host whose call it was; "store" for a lease expiry. */
  readonly host: string;
  /** The call's number (as in the trace, `host#callId`); 0 for a lease expiry. */
  readonly callId: number;
  readonly operation: SimOperation;
  /** The store's revision after it. */
  readonly revision: number;
  /** What the store answered, whether or not the answer reached the caller. */
  readonly outcome:
    | { readonly ok: true; readonly value: unknown }
    | { readonly ok: false; readonly code: string; readonly message: string };
  /** The changes it made (what watches see), empty for none. */
  readonly events: readonly WatchEvent[];
}

export interface SimStoreState {
  readonly revision: number;
  /** Every key, in key order. */
  readonly kvs: readonly KeyValue[];
  /** Every live lease, in grant order. */
  readonly leases: readonly {
    readonly id: LeaseId;
    readonly ttlSeconds: number;
    readonly expiresAtMs: number;
    readonly keys: readonly string[];
  }[];
}

/** Which answers a loss fault takes: writes only (the default), or reads too. */
export interface AnswerLossOptions {
  readonly includeReads?: boolean;
}

export interface SlowOptions {
  /** Chance that one message is slowed (default 1). */
  readonly probability?: number;
  /** The extra delay of a slowed message is drawn uniformly from 0..maxExtraMs. */
  readonly maxExtraMs: number;
}

interface HostState {
  readonly name: string;
  /** Raised by crashHost: calls and watches of an older incarnation are a dead process's. */
  incarnation: number;
  partitioned: boolean;
  loseNext: { readonly includeReads: boolean } | undefined;
  answerLoss: { readonly probability: number; readonly includeReads: boolean } | undefined;
  slow: { readonly probability: number; readonly maxExtraMs: number } | undefined;
  readonly watches: Set<SimWatch>;
}

interface ClientContext {
  readonly host: HostState;
  readonly incarnation: number;
  readonly requestTimeoutMs: number;
  readonly connectTimeoutMs: number;
}

/** A call as the store runs it: `apply` is the step at the store, at the instant it is applied. */
interface Request<T> {
  readonly what: string;
  /** EtcdClient's classification: a read may be repeated elsewhere, a write's timeout leaves its outcome unknown. */
  readonly kind: "read" | "write";
  readonly operation: SimOperation;
  readonly apply: () => StepResult<T>;
}

const DEFAULT_REQUEST_TIMEOUT_MS = 5_000;
const DEFAULT_CONNECT_TIMEOUT_MS = 1_000;

export class SimStore {
  readonly endpoint: string;
  private readonly clock: Clock;
  private readonly latencyRng: Rng;
  private readonly faultRng: Rng;
  private readonly leaseRng: Rng;
  private readonly latency: { readonly min: number; readonly max: number };
  private readonly keyspace: SimKeyspace;
  private readonly hosts = new Map<string, HostState>();
  private globalAnswerLoss: HostState["answerLoss"];
  private globalSlow: HostState["slow"];
  /** Watches registered at the store, in creation order. */
  private readonly watchers = new Set<SimWatch>();
  private readonly leaseTimers = new Map<LeaseId, { cancel(): void }>();
  /** Set while a leader change pauses the store: the requests that arrived meanwhile. */
  private pause: { untilMs: number; readonly queued: (() => void)[] } | undefined;
  private callCount = 0;
  private pendingCalls = 0;
  private readonly appliedLog: AppliedOperation[] = [];
  private readonly traceLines: string[] = [];
  private readonly onTrace: ((line: string) => void) | undefined;

  constructor(options: SimStoreOptions) {
    this.clock = options.clock;
    this.latencyRng = options.rng.fork();
    this.faultRng = options.rng.fork();
    this.leaseRng = options.rng.fork();
    this.latency = options.latencyMs ?? { min: 1, max: 5 };
    if (!(this.latency.min >= 0 && this.latency.max >= this.latency.min)) {
      throw new Error(`latency ${this.latency.min}..${this.latency.max} ms is not a range`);
    }
    this.keyspace = new SimKeyspace({
      minLeaseTtlSeconds: options.minLeaseTtlSeconds ?? 2,
      maxTxnOps: options.maxTxnOps ?? 128,
    });
    this.endpoint = options.endpoint ?? "http://sim-etcd:2379";
    this.onTrace = options.onTrace;
  }

  /** A ClusterStore for `host`: its calls and watches see the faults set for that host. */
  client(host: string, options: SimClientOptions = {}): SimStoreClient {
    const requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    const connectTimeoutMs = Math.min(options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS, requestTimeoutMs);
    for (const [name, value] of Object.entries({ requestTimeoutMs, connectTimeoutMs })) {
      if (!(Number.isSafeInteger(value) && value > 0)) {
        throw new HavenError("HAVEN_ERR_CONFIG", `etcd client ${name} must be a whole number above 0, not ${value}`);
      }
    }
    const state = this.host(host);
    return new SimStoreClient(this, {
      host: state,
      incarnation: state.incarnation,
      requestTimeoutMs,
      connectTimeoutMs,
    });
  }

  // ---- faults -----------------------------------------------------------------------------------------

  /** Cuts `host` off the store until heal(): its calls fail unapplied, messages in flight are lost, watches break. */
  partition(host: string): void {
    const state = this.host(host);
    if (state.partitioned) return;
    state.partitioned = true;
    this.record(`${host}: partitioned from the store`);
    this.breakWatchesOf(state, "broke off");
  }

  heal(host: string): void {
    const state = this.host(host);
    if (!state.partitioned) return;
    state.partitioned = false;
    this.record(`${host}: healed`);
  }

  isPartitioned(host: string): boolean {
    return this.host(host).partitioned;
  }

  /**
   * From now on each answer to `host` is lost with `probability` after the store applied the call
   * (writes only, unless includeReads); 0 turns it off. With `host` undefined, for every host that has
   * no setting of its own (a host's own setting, 0 included, overrides it).
   */
  setAnswerLoss(host: string | undefined, probability: number, options: AnswerLossOptions = {}): void {
    checkProbability(probability);
    const setting = { probability, includeReads: options.includeReads ?? false };
    if (host === undefined) this.globalAnswerLoss = setting;
    else this.host(host).answerLoss = setting;
  }

  /** The answer of the next call of `host` the store applies (the next write, unless includeReads) is lost. */
  loseNextAnswer(host: string, options: AnswerLossOptions = {}): void {
    this.host(host).loseNext = { includeReads: options.includeReads ?? false };
  }

  /**
   * Slows messages to and from `host`, each by up to maxExtraMs with `probability`; undefined options
   * turn it off. With `host` undefined, for every host that has no setting of its own.
   */
  setSlow(host: string | undefined, options: SlowOptions | undefined): void {
    const probability = options?.probability ?? 1;
    const maxExtraMs = options?.maxExtraMs ?? 0;
    checkProbability(probability);
    if (!(Number.isSafeInteger(maxExtraMs) && maxExtraMs >= 0)) {
      throw new Error(`maxExtraMs ${maxExtraMs} is not a whole number of ms`);
    }
    const setting = options === undefined ? { probability: 0, maxExtraMs: 0 } : { probability, maxExtraMs };
    if (host === undefined) this.globalSlow = setting;
    else this.host(host).slow = setting;
  }

  /**
   * A leader change: the store applies nothing for `pauseMs` (requests queue, leases do not expire),
   * then applies what queued in arrival order and renews every lease from that instant.
   */
  leaderChange(pauseMs: number): void {
    if (!(Number.isSafeInteger(pauseMs) && pauseMs > 0)) throw new Error(`pause ${pauseMs} ms is not above 0`);
    const untilMs = this.clock.now() + pauseMs;
    if (this.pause !== undefined) {
      this.pause.untilMs = Math.max(this.pause.untilMs, untilMs);
      return;
    }
    this.pause = { untilMs, queued: [] };
    this.record(`store: leader change, paused for ${pauseMs} ms`);
    const resumeAt = (): void => {
      const pause = this.pause!;
      if (this.clock.now() < pause.untilMs) {
        this.clock.schedule(pause.untilMs - this.clock.now(), resumeAt);
        return;
      }
      this.pause = undefined;
      this.record(`store: new leader, ${pause.queued.length} queued requests to apply`);
      for (const lease of this.keyspace.leases()) {
        lease.expiresAtMs = this.clock.now() + lease.ttlSeconds * 1000;
        this.armLease(lease.id);
      }
      for (const apply of pause.queued) apply();
    };
    this.clock.schedule(pauseMs, resumeAt);
  }

  get paused(): boolean {
    return this.pause !== undefined;
  }

  /** Breaks every watch of `host` now (onClose with HAVEN_ERR_UNAVAILABLE), as a reset connection would. */
  breakWatches(host: string): void {
    this.breakWatchesOf(this.host(host), "broke off");
  }

  /**
   * The host's process dies: its calls in flight never settle (those that reached the store still
   * apply), its watches end without a callback. Clients made before are dead; make a new one.
   */
  crashHost(host: string): void {
    const state = this.host(host);
    state.incarnation++;
    for (const watch of [...state.watches]) watch.discard();
    this.record(`${host}: crashed`);
  }

  /** Forgets the history before `revision`: a watch that starts before it is canceled (HAVEN_ERR_IO). */
  compact(revision: number): void {
    this.keyspace.compact(revision);
    this.record(`store: compacted at revision ${revision}`);
  }

  // ---- inspection -------------------------------------------------------------------------------------

  get revision(): number {
    return this.keyspace.revision;
  }

  /** The whole state at the current revision, read synchronously. */
  state(): SimStoreState {
    return {
      revision: this.keyspace.revision,
      kvs: this.keyspace.all(),
      leases: this.keyspace.leases().map((lease) => ({
        id: lease.id,
        ttlSeconds: lease.ttlSeconds,
        expiresAtMs: lease.expiresAtMs,
        keys: [...lease.keys].sort(compareKeys),
      })),
    };
  }

  /** One key at the current revision, read synchronously. */
  readKey(key: string): KeyValue | undefined {
    return this.keyspace.get(key);
  }

  /** Every key under `prefix` at the current revision, in key order, read synchronously. */
  readPrefix(prefix: string): KeyValue[] {
    return this.keyspace.range({ prefix }).kvs;
  }

  /** Every operation applied so far, in order (reads included; a lease expiry is host "store"). */
  get applied(): readonly AppliedOperation[] {
    return this.appliedLog;
  }

  /** Every message, fault and outcome so far, one line each with its virtual time: equal for equal seeds. */
  get trace(): readonly string[] {
    return this.traceLines;
  }

  /** Calls sent and not yet settled (a dead process's calls excepted once their answer is dropped). */
  get inFlight(): number {
    return this.pendingCalls;
  }

  // ---- the call path (for SimStoreClient and SimWatch) ------------------------------------------------

  /** @internal Runs one call of `client` through the simulated network and the store. */
  call<T>(client: ClientContext, request: Request<T>): Promise<T> {
    const { host, incarnation } = client;
    const id = ++this.callCount;
    const label = `${host.name}#${id} ${request.what}`;
    return new Promise<T>((resolve, reject) => {
      if (host.incarnation !== incarnation) return; // a dead process sends nothing
      this.pendingCalls++;
      let settled = false;
      // Set once the request is sent (a call that cannot connect has none); read by settle().
      const timers: { deadline?: { cancel(): void } } = {};
      // Settles the call once; a crashed process's call never settles (nobody is left to hear it).
      const settle = (how: string, outcome: () => void): void => {
        if (settled) return;
        settled = true;
        this.pendingCalls--;
        timers.deadline?.cancel();
        if (host.incarnation !== incarnation) return this.record(`${label}: dropped (the process crashed)`);
        this.record(`${label}: ${how}`);
        outcome();
      };
      const fail = (error: HavenError): void => settle(`failed ${error.code}: ${error.message}`, () => reject(error));

      if (host.partitioned) {
        this.record(`${label}: sent while partitioned`);
        this.clock.schedule(client.connectTimeoutMs, () =>
          fail(this.unreachable(request.what, `no connection within ${client.connectTimeoutMs} ms`)),
        );
        return;
      }
      this.record(`${label}: sent`);
      timers.deadline = this.clock.schedule(client.requestTimeoutMs, () => {
        const reason = `no answer within ${client.requestTimeoutMs} ms`;
        fail(
          request.kind === "write" ? this.outcomeUnknown(request.what, reason) : this.unreachable(request.what, reason),
        );
      });
      this.clock.schedule(this.messageDelayMs(host), () => {
        if (host.partitioned) return this.record(`${label}: lost on the way (partitioned)`);
        this.whenLeading(() => {
          const outcome = this.applyCall(host.name, id, request);
          const lost = this.takeAnswerLoss(host, request.kind);
          this.clock.schedule(this.messageDelayMs(host), () => {
            if (settled) return this.record(`${label}: answer came after the caller gave up`);
            if (host.partitioned) return this.record(`${label}: answer lost (partitioned)`);
            if (lost) {
              const reason = "the connection closed in the middle of the answer";
              return fail(
                request.kind === "write"
                  ? this.outcomeUnknown(request.what, reason)
                  : this.unreachable(request.what, reason),
              );
            }
            if (outcome.ok) settle(`answered at revision ${outcome.revision}`, () => resolve(outcome.value));
            else fail(outcome.error);
          });
        });
      });
    });
  }

  /** @internal Starts a watch of `client` (see SimWatch). */
  watch(client: ClientContext, prefix: string, options: WatchOptions, onEvent: (event: WatchEvent) => void): Watch {
    const what = `watch on prefix "${prefix}"`;
    const startRevision = options.startRevision;
    if (startRevision !== undefined && !(Number.isSafeInteger(startRevision) && startRevision > 0)) {
      throw new HavenError("HAVEN_ERR_INVALID_REQUEST", `${what}: start revision ${startRevision} is not above 0`);
    }
    const id = ++this.callCount;
    const watch = new SimWatch(this, client, id, what, prefix, options, onEvent);
    const { host } = client;
    if (host.incarnation !== client.incarnation) {
      watch.discard(); // a dead process's watch never starts
      return watch;
    }
    host.watches.add(watch);
    if (host.partitioned) {
      this.record(`${watch.label}: sent while partitioned`);
      this.clock.schedule(client.connectTimeoutMs, () =>
        watch.end(this.unreachable(what, `no connection within ${client.connectTimeoutMs} ms`)),
      );
      return watch;
    }
    this.record(`${watch.label}: sent`);
    this.clock.schedule(this.messageDelayMs(host), () => {
      if (host.partitioned || watch.ended || watch.cutOff) return this.record(`${watch.label}: lost on the way`);
      this.whenLeading(() => {
        if (watch.ended || watch.cutOff) return;
        this.watchers.add(watch);
        const revision = this.keyspace.revision;
        this.record(`${watch.label}: created at revision ${revision}`);
        this.sendToWatch(watch, { type: "created", revision });
        if (startRevision === undefined) return;
        if (startRevision < this.keyspace.oldestRevision) {
          this.watchers.delete(watch);
          const because =
            `revision ${startRevision} is compacted (the oldest kept is ${this.keyspace.oldestRevision}): ` +
            `re-read the keys and watch from the revision of that read`;
          this.sendToWatch(watch, {
            type: "canceled",
            revision,
            error: new HavenError("HAVEN_ERR_IO", `etcd at ${this.endpoint} canceled the ${what}: ${because}`),
          });
          return;
        }
        for (const changes of this.keyspace.changesSince(startRevision)) {
          const events = changes.events.filter((event) => event.key.startsWith(prefix));
          if (events.length > 0) this.sendToWatch(watch, { type: "events", revision, events });
        }
      });
    });
    return watch;
  }

  /** @internal The watch ended on the caller's side: the store stops sending to it. */
  forgetWatch(watch: SimWatch, host: HostState): void {
    this.watchers.delete(watch);
    host.watches.delete(watch);
  }

  /** @internal */
  record(line: string): void {
    const stamped = `${this.clock.now()} ${line}`;
    this.traceLines.push(stamped);
    this.onTrace?.(stamped);
  }

  /** @internal */
  schedule(ms: number, run: () => void): { cancel(): void } {
    return this.clock.schedule(ms, run);
  }

  /** @internal The step each client call runs at the store. */
  readonly steps = {
    range: (selection: KeySelection, options: RangeOptions = {}) => {
      if ("key" in selection && selection.key === "")
        throw new StoreRefusal("INVALID_ARGUMENT", ETCD_REFUSALS.emptyKey);
      const read = this.keyspace.range(selection, options);
      return { value: { ...read, revision: this.keyspace.revision }, revision: this.keyspace.revision, events: [] };
    },
    put: (key: string, value: string, lease: LeaseId | undefined) => this.keyspace.put(key, value, lease),
    deleteRange: (selection: KeySelection) => this.keyspace.deleteRange(selection),
    txn: (compare: readonly Compare[], success: readonly TxnOperation[], failure: readonly TxnOperation[]) =>
      this.keyspace.txn(compare, success, failure),
    grantLease: (ttlSeconds: number): StepResult<Lease> => {
      const lease = this.keyspace.grantLease(this.newLeaseId(), ttlSeconds, this.clock.now());
      this.armLease(lease.id);
      return { value: { id: lease.id, ttlSeconds: lease.ttlSeconds }, revision: this.keyspace.revision, events: [] };
    },
    keepAlive: (id: LeaseId): StepResult<number> => {
      const ttlSeconds = this.keyspace.keepAlive(id, this.clock.now());
      if (ttlSeconds > 0) this.armLease(id);
      return { value: ttlSeconds, revision: this.keyspace.revision, events: [] };
    },
    revokeLease: (id: LeaseId): StepResult<void> => {
      const step = this.keyspace.revokeLease(id);
      this.leaseTimers.get(id)?.cancel();
      this.leaseTimers.delete(id);
      return step;
    },
    leaseTimeToLive: (id: LeaseId): StepResult<LeaseStatus | undefined> => {
      const lease = this.keyspace.lease(id);
      const value =
        lease === undefined
          ? undefined
          : {
              ttlSeconds: Math.max(0, Math.trunc((lease.expiresAtMs - this.clock.now()) / 1000)),
              grantedTtlSeconds: lease.ttlSeconds,
              keys: [...lease.keys].sort(compareKeys),
            };
      return { value, revision: this.keyspace.revision, events: [] };
    },
  };

  // ---- internals --------------------------------------------------------------------------------------

  private host(name: string): HostState {
    let state = this.hosts.get(name);
    if (state === undefined) {
      state = {
        name,
        incarnation: 0,
        partitioned: false,
        loseNext: undefined,
        answerLoss: undefined,
        slow: undefined,
        watches: new Set(),
      };
      this.hosts.set(name, state);
    }
    return state;
  }

  /** Runs `apply` now, or when the leader change in progress ends. */
  private whenLeading(apply: () => void): void {
    if (this.pause === undefined) apply();
    else this.pause.queued.push(apply);
  }

  private applyCall<T>(
    host: string,
    callId: number,
    request: Request<T>,
  ): { ok: true; value: T; revision: number } | { ok: false; error: HavenError } {
    try {
      const step = request.apply();
      this.log(host, callId, request.operation, { ok: true, value: step.value }, step.events);
      this.record(`${host}#${callId} ${request.what}: applied at revision ${step.revision}`);
      this.publish(step.events);
      return { ok: true, value: step.value, revision: step.revision };
    } catch (error) {
      if (!(error instanceof StoreRefusal)) throw error;
      const refused = new HavenError(
        error.status === "NOT_FOUND" ? "HAVEN_ERR_NOT_FOUND" : "HAVEN_ERR_IO",
        `etcd at ${this.endpoint} refused ${request.what}: ${error.message}`,
      );
      this.log(host, callId, request.operation, { ok: false, code: refused.code, message: refused.message }, []);
      this.record(`${host}#${callId} ${request.what}: refused (${error.message})`);
      return { ok: false, error: refused };
    }
  }

  private log(
    host: string,
    callId: number,
    operation: SimOperation,
    outcome: AppliedOperation["outcome"],
    events: readonly WatchEvent[],
  ): void {
    this.appliedLog.push(
      Object.freeze({
        index: this.appliedLog.length,
        atMs: this.clock.now(),
        host,
        callId,
        operation,
        revision: this.keyspace.revision,
        outcome,
        events,
      }),
    );
  }

  /** Sends one revision's changes to every watch whose prefix they touch. */
  private publish(events: readonly WatchEvent[]): void {
    if (events.length === 0) return;
    const revision = this.keyspace.revision;
    for (const watch of this.watchers) {
      const seen = events.filter(
        (event) => event.key.startsWith(watch.prefix) && event.modRevision >= watch.fromRevision,
      );
      if (seen.length > 0) this.sendToWatch(watch, { type: "events", revision, events: seen });
    }
  }

  /** Delivers a watch message after the network delay, never before one sent earlier to the same watch. */
  private sendToWatch(watch: SimWatch, message: WatchMessage): void {
    const now = this.clock.now();
    const at = Math.max(watch.lastDeliveryAtMs, now + this.messageDelayMs(watch.client.host));
    watch.lastDeliveryAtMs = at;
    this.clock.schedule(at - now, () => watch.receive(message));
  }

  private breakWatchesOf(host: HostState, how: string): void {
    for (const watch of [...host.watches]) {
      watch.breakOff();
      this.watchers.delete(watch);
      this.clock.schedule(this.messageDelayMs(host), () =>
        watch.end(new HavenError("HAVEN_ERR_UNAVAILABLE", `the ${watch.what} from etcd at ${this.endpoint} ${how}`)),
      );
    }
  }

  /** Sets the lease's expiry timer from its expiresAtMs, replacing any earlier one. */
  private armLease(id: LeaseId): void {
    this.leaseTimers.get(id)?.cancel();
    const lease = this.keyspace.lease(id)!;
    const timer = this.clock.schedule(Math.max(0, lease.expiresAtMs - this.clock.now()), () => {
      this.leaseTimers.delete(id);
      // During a leader change nothing expires; the new leader renews every lease when it ends.
      if (this.pause !== undefined) return;
      const current = this.keyspace.lease(id);
      if (current === undefined || current.expiresAtMs > this.clock.now()) return;
      const step = this.keyspace.revokeLease(id);
      this.log("store", 0, { type: "expireLease", lease: id }, { ok: true, value: undefined }, step.events);
      this.record(`store: lease ${id} expired, ${step.events.length} keys deleted at revision ${step.revision}`);
      this.publish(step.events);
    });
    this.leaseTimers.set(id, timer);
  }

  /** A fresh lease id as etcd makes them: a positive int64, in practice far above 2^53. */
  private newLeaseId(): LeaseId {
    for (;;) {
      const high = BigInt(this.leaseRng.next() & 0x7fffffff) | 0x40000000n;
      const id = ((high << 32n) | BigInt(this.leaseRng.next())).toString();
      if (this.keyspace.lease(id) === undefined) return id;
    }
  }

  /** One message's one-way delay to or from `host`: the base latency, plus any slow fault's extra. */
  private messageDelayMs(host: HostState): number {
    let delayMs = this.latencyRng.int(this.latency.min, this.latency.max);
    const slow = host.slow ?? this.globalSlow;
    if (slow !== undefined && slow.probability > 0 && this.faultRng.chance(slow.probability)) {
      delayMs += this.faultRng.int(0, slow.maxExtraMs);
    }
    return delayMs;
  }

  /** Whether the answer to a call of this kind, just applied, is to be lost. */
  private takeAnswerLoss(host: HostState, kind: "read" | "write"): boolean {
    if (host.loseNext !== undefined && (kind === "write" || host.loseNext.includeReads)) {
      host.loseNext = undefined;
      return true;
    }
    const loss = host.answerLoss ?? this.globalAnswerLoss;
    if (loss === undefined || loss.probability === 0 || (kind === "read" && !loss.includeReads)) return false;
    return this.faultRng.chance(loss.probability);
  }

  private unreachable(what: string, reason: string): HavenError {
    return new HavenError(
      "HAVEN_ERR_UNAVAILABLE",
      `etcd is unreachable for ${what}: ${this.endpoint}: ${reason}; check that etcd runs at ${this.endpoint}`,
    );
  }

  private outcomeUnknown(what: string, reason: string): HavenError {
    return new HavenError(
      "HAVEN_ERR_UNAVAILABLE",
      `etcd at ${this.endpoint} failed during ${what} (${reason}); the write may or may not have been applied: ` +
        `read the key back before retrying`,
    );
  }
}

type WatchMessage =
  | { readonly type: "created"; readonly revision: number }
  | { readonly type: "events"; readonly revision: number; readonly events: readonly WatchEvent[] }
  | { readonly type: "canceled"; readonly revision: number; readonly error: HavenError };

/**
 * One watch, with EtcdClient's contract (etcd-watch.ts): `ready` resolves when the store confirmed it
 * and rejects if it never did (within requestTimeoutMs); after that, the end goes to onClose, once:
 * undefined after cancel(), HAVEN_ERR_UNAVAILABLE when it broke, HAVEN_ERR_IO when the store canceled
 * it. `revision` is the highest revision it was told about (the store's revision when it was created,
 * then each event's): watch again from revision + 1 to resume.
 */
class SimWatch implements Watch {
  readonly ready: Promise<void>;
  readonly label: string;
  /** The first revision it reports (its start revision, which may lie ahead of the store's). */
  readonly fromRevision: number;
  lastDeliveryAtMs = 0;
  private state: "creating" | "watching" | "ended" = "creating";
  /** Cut off from the store: nothing more is delivered, the end is on its way. */
  private broken = false;
  private highest = 0;
  private settleReady!: (error?: HavenError) => void;
  private readonly createTimer: { cancel(): void };

  constructor(
    private readonly store: SimStore,
    readonly client: ClientContext,
    id: number,
    readonly what: string,
    readonly prefix: string,
    private readonly options: WatchOptions,
    private readonly onEvent: (event: WatchEvent) => void,
  ) {
    this.label = `${client.host.name}#${id} ${what}`;
    this.fromRevision = options.startRevision ?? 0;
    this.ready = new Promise<void>((resolve, reject) => {
      this.settleReady = (error) => (error === undefined ? resolve() : reject(error));
    });
    this.createTimer = store.schedule(client.requestTimeoutMs, () =>
      this.end(
        new HavenError(
          "HAVEN_ERR_UNAVAILABLE",
          `etcd at ${store.endpoint} did not confirm the ${what} within ${client.requestTimeoutMs} ms`,
        ),
      ),
    );
  }

  get revision(): number {
    return this.highest;
  }

  get ended(): boolean {
    return this.state === "ended";
  }

  /** Cut off from the store: its end is on its way. */
  get cutOff(): boolean {
    return this.broken;
  }

  cancel(): void {
    this.end(undefined);
  }

  /** @internal A message from the store arrives. */
  receive(message: WatchMessage): void {
    if (this.state === "ended" || this.broken) return;
    if (this.client.host.incarnation !== this.client.incarnation) return this.discard();
    this.highest = Math.max(this.highest, message.revision);
    switch (message.type) {
      case "created":
        this.state = "watching";
        this.createTimer.cancel();
        this.store.record(`${this.label}: ready at revision ${message.revision}`);
        this.settleReady();
        return;
      case "canceled":
        return this.end(message.error);
      case "events":
        this.store.record(
          `${this.label}: events ${message.events.map((event) => `${event.type} "${event.key}"@${event.modRevision}`).join(", ")}`,
        );
        for (const event of message.events) {
          this.highest = Math.max(this.highest, event.modRevision);
          if (this.state !== "watching") return;
          this.onEvent(event);
        }
    }
  }

  /** @internal The connection is gone: deliver nothing more; end() follows. */
  breakOff(): void {
    this.broken = true;
  }

  /** @internal Ends the watch once: before `ready`, settling it; after, through onClose. */
  end(reason: HavenError | undefined): void {
    if (this.state === "ended") return;
    const wasWatching = this.state === "watching";
    this.state = "ended";
    this.createTimer.cancel();
    this.store.forgetWatch(this, this.client.host);
    this.store.record(`${this.label}: ended${reason === undefined ? "" : ` (${reason.code}: ${reason.message})`}`);
    if (!wasWatching) this.settleReady(reason);
    else this.options.onClose?.(reason);
  }

  /** @internal The process that made it died: end it with no callback at all. */
  discard(): void {
    if (this.state === "ended") return;
    this.state = "ended";
    this.createTimer.cancel();
    this.store.forgetWatch(this, this.client.host);
  }
}

/**
 * One host's view of the simulated store: ClusterStore, plus the rest of EtcdClient's calls (putIf,
 * deletePrefix, leaseTimeToLive, status), with EtcdClient's checks before sending.
 */
export class SimStoreClient implements ClusterStore {
  constructor(
    private readonly store: SimStore,
    private readonly context: ClientContext,
  ) {}

  get host(): string {
    return this.context.host.name;
  }

  get endpoints(): string[] {
    return [this.store.endpoint];
  }

  async get(key: string): Promise<KeyValue | undefined> {
    const page = await this.range(`get "${key}"`, { type: "get", key }, { key });
    return page.kvs[0];
  }

  async getPrefix(prefix: string): Promise<KeyValue[]> {
    return (await this.range(`get prefix "${prefix}"`, { type: "getPrefix", prefix }, { prefix })).kvs;
  }

  async getPrefixPage(prefix: string, options: RangeOptions = {}): Promise<RangePage> {
    const what = `get prefix "${prefix}"`;
    if (options.limit !== undefined && !(Number.isSafeInteger(options.limit) && options.limit > 0)) {
      throw new HavenError(
        "HAVEN_ERR_INVALID_REQUEST",
        `${what}: limit ${options.limit} is not a whole number above 0`,
      );
    }
    const operation: SimOperation = {
      type: "getPrefix",
      prefix,
      ...(options.limit === undefined ? {} : { limit: options.limit }),
      ...(options.keysOnly === true ? { keysOnly: true } : {}),
    };
    return this.range(what, operation, { prefix }, options);
  }

  async put(key: string, value: string, options: { lease?: LeaseId } = {}): Promise<{ revision: number }> {
    if (options.lease !== undefined) checkLeaseId(options.lease);
    const operation: SimOperation = { type: "put", key, value, ...leaseField(options.lease) };
    return this.call(`put "${key}"`, "write", operation, () => {
      const step = this.store.steps.put(key, value, options.lease);
      return { ...step, value: { revision: step.revision } };
    });
  }

  async delete(key: string): Promise<boolean> {
    const deleted = await this.call(`delete "${key}"`, "write", { type: "delete", key }, () =>
      this.store.steps.deleteRange({ key }),
    );
    return deleted > 0;
  }

  async deletePrefix(prefix: string): Promise<number> {
    return this.call(`delete prefix "${prefix}"`, "write", { type: "deletePrefix", prefix }, () =>
      this.store.steps.deleteRange({ prefix }),
    );
  }

  async deleteRange(from: string, to: string): Promise<number> {
    const what = `delete from "${from}" to "${to}"`;
    if (from === "" || compareKeys(from, to) >= 0) {
      throw new HavenError("HAVEN_ERR_INVALID_REQUEST", `${what}: the range must start at a key before its end`);
    }
    return this.call(what, "write", { type: "deleteRange", from, to }, () =>
      this.store.steps.deleteRange({ from, to }),
    );
  }

  putIf(key: string, value: string, expect: PutCondition): Promise<boolean> {
    return putIf(this, key, value, expect);
  }

  async txn(compare: Compare[], success: TxnOperation[], failure: TxnOperation[]): Promise<TxnResult> {
    const keys = [...compare, ...success, ...failure].map((item) => ("key" in item ? item.key : `${item.prefix}*`));
    const what = `transaction on ${[...new Set(keys)].map((key) => `"${key}"`).join(", ")}`;
    compare.forEach((condition) => checkCompare(condition));
    for (const operation of [...success, ...failure]) {
      if (operation.type === "put" && operation.lease !== undefined) checkLeaseId(operation.lease);
    }
    // The caller's arrays are copied: a request is what was sent, whatever the caller does later.
    const sent = { compare: [...compare], success: [...success], failure: [...failure] };
    return this.call(what, "write", { type: "txn", ...sent }, () => {
      const step = this.store.steps.txn(sent.compare, sent.success, sent.failure);
      const results: TxnOperationResult[] = step.value.results;
      return { ...step, value: { succeeded: step.value.succeeded, revision: step.revision, results } };
    });
  }

  async grantLease(ttlSeconds: number): Promise<Lease> {
    if (!(Number.isSafeInteger(ttlSeconds) && ttlSeconds > 0)) {
      throw new HavenError("HAVEN_ERR_INVALID_REQUEST", `lease TTL ${ttlSeconds} s is not a whole number above 0`);
    }
    return this.call(`grant a lease of ${ttlSeconds} s`, "write", { type: "grantLease", ttlSeconds }, () =>
      this.store.steps.grantLease(ttlSeconds),
    );
  }

  async keepAliveOnce(leaseId: LeaseId): Promise<number> {
    checkLeaseId(leaseId);
    return this.call(`keep lease ${leaseId} alive`, "read", { type: "keepAlive", lease: leaseId }, () =>
      this.store.steps.keepAlive(leaseId),
    );
  }

  async revokeLease(leaseId: LeaseId): Promise<void> {
    checkLeaseId(leaseId);
    return this.call(`revoke lease ${leaseId}`, "write", { type: "revokeLease", lease: leaseId }, () =>
      this.store.steps.revokeLease(leaseId),
    );
  }

  async leaseTimeToLive(leaseId: LeaseId): Promise<LeaseStatus | undefined> {
    checkLeaseId(leaseId);
    return this.call(`time to live of lease ${leaseId}`, "read", { type: "leaseTimeToLive", lease: leaseId }, () =>
      this.store.steps.leaseTimeToLive(leaseId),
    );
  }

  async status(): Promise<{ version: string; revision: number; leader: string; memberId: string }> {
    return this.call("status", "read", { type: "status" }, () => {
      const revision = this.store.revision;
      return { value: { version: "3.4-sim", revision, leader: "1", memberId: "1" }, revision, events: [] };
    });
  }

  watchPrefix(prefix: string, options: WatchOptions, onEvent: (event: WatchEvent) => void): Watch {
    return this.store.watch(this.context, prefix, options, onEvent);
  }

  private range(
    what: string,
    operation: SimOperation,
    selection: KeySelection,
    options: RangeOptions = {},
  ): Promise<RangePage> {
    return this.call(what, "read", operation, () => this.store.steps.range(selection, options));
  }

  private call<T>(
    what: string,
    kind: "read" | "write",
    operation: SimOperation,
    apply: () => StepResult<T>,
  ): Promise<T> {
    return this.store.call(this.context, { what, kind, operation, apply });
  }
}

function leaseField(lease: LeaseId | undefined): { lease?: LeaseId } {
  return lease === undefined ? {} : { lease };
}

/** EtcdClient's check of a lease id before sending: a nonzero decimal int64. */
function checkLeaseId(leaseId: LeaseId): void {
  if (!/^-?\d{1,19}$/.test(leaseId) || BigInt(leaseId) === 0n) {
    throw new HavenError("HAVEN_ERR_INVALID_REQUEST", `"${leaseId}" is not an etcd lease id`);
  }
}

/** EtcdClient's checks of one condition before sending. */
function checkCompare(compare: Compare): void {
  if (compare.target === "value") return;
  if (compare.target === "lease") return checkLeaseId(compare.value);
  if (!(Number.isSafeInteger(compare.value) && compare.value >= 0)) {
    throw new HavenError(
      "HAVEN_ERR_INVALID_REQUEST",
      `compare ${compare.target} of ${"key" in compare ? `"${compare.key}"` : `prefix "${compare.prefix}"`} with ${compare.value}`,
    );
  }
}

function checkProbability(probability: number): void {
  if (!(probability >= 0 && probability <= 1)) throw new Error(`probability ${probability} is not between 0 and 1`);
}
