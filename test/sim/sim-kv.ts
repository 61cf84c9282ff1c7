// The simulated etcd's keyspace: etcd v3's multi-version key-value model reduced to what Haven uses,
// as a synchronous state machine with no time and no network (sim-store.ts adds those). Each method
// is one step etcd's leader applies:
// - the store has one revision, 1 when empty; a step that changes keys raises it by exactly one, however
//   many keys it touches (a transaction, a range delete, a lease revoke); a step that changes nothing
//   (a read, a delete of nothing, a failed compare with no writes, a lease grant) leaves it;
// - a key's createRevision is the revision that created it, modRevision the last that wrote it, version
//   counts its writes since creation (1 after the first put, again 1 after a delete and a new put);
// - keys are ordered by their UTF-8 bytes; a prefix selects every key starting with it;
// - a transaction compares against the state before it, then runs one branch in order: a read in the
//   branch sees the branch's earlier writes. etcd refuses a branch that puts a key twice or puts a key
//   it also deletes, a put on a lease it does not know, and an empty key;
// - a lease holds the keys put with it; a put without it detaches the key; a revoke deletes them all
//   in key order, in one revision.
// Refusals are StoreRefusal with etcd's own message, which the store turns into HAVEN_ERR_NOT_FOUND or
// HAVEN_ERR_IO as EtcdClient does. The history of changes is kept for watches that start in the past.

import type { Compare, CompareResult, TxnOperation, TxnOperationResult } from "../../src/cluster/etcd-client.js";
import type { KeyValue, LeaseId, WatchEvent } from "../../src/cluster/etcd-codec.js";

/** etcd's words for the refusals the keyspace can give (etcd 3.4's rpctypes). */
export const ETCD_REFUSALS = {
  leaseNotFound: "etcdserver: requested lease not found",
  emptyKey: "etcdserver: key is not provided",
  duplicateKey: "etcdserver: duplicate key given in txn request",
  tooManyOperations: "etcdserver: too many operations in txn request",
  leaseTtlTooLarge: "etcdserver: too large lease TTL",
} as const;

/** etcd's largest lease TTL (lease.MaxLeaseTTL). */
const MAX_LEASE_TTL_SECONDS = 9_000_000_000;

/** A step etcd refused; `status` is the gRPC status it answers with. */
export class StoreRefusal extends Error {
  constructor(
    readonly status: "NOT_FOUND" | "INVALID_ARGUMENT",
    message: string,
  ) {
    super(message);
  }
}

export interface SimLease {
  readonly id: LeaseId;
  /** The TTL granted (at least the store's minimum). */
  readonly ttlSeconds: number;
  /** Virtual time at which it expires unless kept alive. */
  expiresAtMs: number;
  readonly keys: Set<string>;
}

/** The changes one revision made, in the order they were made. */
export interface RevisionChanges {
  readonly revision: number;
  readonly events: readonly WatchEvent[];
}

/** What a step changed: the events (empty for none) and the store's revision after it. */
export interface StepResult<T> {
  readonly value: T;
  readonly revision: number;
  readonly events: readonly WatchEvent[];
}

export type KeySelection =
  | { readonly key: string }
  | { readonly prefix: string }
  /** [from, to) in byte order. */
  | { readonly from: string; readonly to: string };

export interface KeyspaceOptions {
  /** etcd's minimum TTL: a shorter one asked for is granted this (etcd 3.4 with default timings: 2). */
  readonly minLeaseTtlSeconds: number;
  /** etcd's --max-txn-ops (default 128). */
  readonly maxTxnOps: number;
}

export class SimKeyspace {
  private currentRevision = 1;
  private readonly kvs = new Map<string, KeyValue>();
  /** Every key, in byte order. */
  private readonly sortedKeys: string[] = [];
  private readonly leaseTable = new Map<LeaseId, SimLease>();
  private readonly history: RevisionChanges[] = [];
  private compacted = 0;

  constructor(private readonly options: KeyspaceOptions) {}

  get revision(): number {
    return this.currentRevision;
  }

  /** The oldest revision watches can still start from (1 until compacted). */
  get oldestRevision(): number {
    return Math.max(1, this.compacted);
  }

  // ---- reads ------------------------------------------------------------------------------------------

  get(key: string): KeyValue | undefined {
    return this.kvs.get(key);
  }

  /** The keys selected, in key order, and how many there are in all. */
  range(
    selection: KeySelection,
    options: { limit?: number; keysOnly?: boolean } = {},
  ): {
    kvs: KeyValue[];
    count: number;
  } {
    const all = this.select(selection);
    const page = options.limit === undefined ? all : all.slice(0, options.limit);
    const kvs = page.map((key) => {
      const kv = this.kvs.get(key)!;
      return options.keysOnly === true ? Object.freeze({ ...kv, value: "" }) : kv;
    });
    return { kvs, count: all.length };
  }

  /** Every key-value, in key order. */
  all(): KeyValue[] {
    return this.sortedKeys.map((key) => this.kvs.get(key)!);
  }

  lease(id: LeaseId): SimLease | undefined {
    return this.leaseTable.get(id);
  }

  leases(): SimLease[] {
    return [...this.leaseTable.values()];
  }

  /** The changes of every revision from `fromRevision` on, oldest first. */
  changesSince(fromRevision: number): readonly RevisionChanges[] {
    const start = lowerBound(this.history, fromRevision, (entry) => entry.revision);
    return this.history.slice(start);
  }

  // ---- writes -----------------------------------------------------------------------------------------

  put(key: string, value: string, lease: LeaseId | undefined): StepResult<void> {
    if (key === "") throw new StoreRefusal("INVALID_ARGUMENT", ETCD_REFUSALS.emptyKey);
    if (lease !== undefined && !this.leaseTable.has(lease)) {
      throw new StoreRefusal("NOT_FOUND", ETCD_REFUSALS.leaseNotFound);
    }
    const writer = this.writer();
    writer.put(key, value, lease);
    return writer.commit(undefined);
  }

  /** Deletes the selected keys; the value is how many there were. */
  deleteRange(selection: KeySelection): StepResult<number> {
    if ("key" in selection && selection.key === "") throw new StoreRefusal("INVALID_ARGUMENT", ETCD_REFUSALS.emptyKey);
    const writer = this.writer();
    const deleted = writer.delete(selection);
    return writer.commit(deleted);
  }

  txn(
    compare: readonly Compare[],
    success: readonly TxnOperation[],
    failure: readonly TxnOperation[],
  ): StepResult<{ succeeded: boolean; results: TxnOperationResult[] }> {
    // The request checks, in etcd's order (v3rpc/key.go: checkTxnRequest, then checkIntervals).
    if (Math.max(compare.length, success.length, failure.length) > this.options.maxTxnOps) {
      throw new StoreRefusal("INVALID_ARGUMENT", ETCD_REFUSALS.tooManyOperations);
    }
    for (const item of [...compare, ...success, ...failure]) {
      if ("key" in item && item.key === "") throw new StoreRefusal("INVALID_ARGUMENT", ETCD_REFUSALS.emptyKey);
    }
    checkOverlaps(success);
    checkOverlaps(failure);

    const succeeded = compare.every((condition) => this.holds(condition));
    const branch = succeeded ? success : failure;
    for (const operation of branch) {
      if (operation.type === "put" && operation.lease !== undefined && !this.leaseTable.has(operation.lease)) {
        throw new StoreRefusal("NOT_FOUND", ETCD_REFUSALS.leaseNotFound);
      }
    }
    const writer = this.writer();
    const results = branch.map((operation): TxnOperationResult => {
      switch (operation.type) {
        case "put":
          writer.put(operation.key, operation.value, operation.lease);
          return { type: "put" };
        case "get":
          return { type: "get", kvs: this.range({ key: operation.key }).kvs };
        case "getPrefix":
          return { type: "get", kvs: this.range({ prefix: operation.prefix }).kvs };
        case "delete":
          return { type: "delete", deleted: writer.delete({ key: operation.key }) };
        case "deletePrefix":
          return { type: "delete", deleted: writer.delete({ prefix: operation.prefix }) };
      }
    });
    return writer.commit({ succeeded, results });
  }

  grantLease(id: LeaseId, ttlSeconds: number, nowMs: number): SimLease {
    if (ttlSeconds > MAX_LEASE_TTL_SECONDS) throw new StoreRefusal("INVALID_ARGUMENT", ETCD_REFUSALS.leaseTtlTooLarge);
    if (this.leaseTable.has(id)) throw new Error(`lease id ${id} granted twice`);
    const ttl = Math.max(ttlSeconds, this.options.minLeaseTtlSeconds);
    const lease: SimLease = { id, ttlSeconds: ttl, expiresAtMs: nowMs + ttl * 1000, keys: new Set() };
    this.leaseTable.set(id, lease);
    return lease;
  }

  /** Renews the lease from `nowMs`; its TTL, or 0 when the store does not know it (as etcd answers). */
  keepAlive(id: LeaseId, nowMs: number): number {
    const lease = this.leaseTable.get(id);
    if (lease === undefined) return 0;
    lease.expiresAtMs = nowMs + lease.ttlSeconds * 1000;
    return lease.ttlSeconds;
  }

  /** Ends the lease and deletes its keys, in key order, in one revision. */
  revokeLease(id: LeaseId): StepResult<void> {
    const lease = this.leaseTable.get(id);
    if (lease === undefined) throw new StoreRefusal("NOT_FOUND", ETCD_REFUSALS.leaseNotFound);
    const writer = this.writer();
    for (const key of [...lease.keys].sort(compareKeys)) writer.delete({ key });
    this.leaseTable.delete(id);
    return writer.commit(undefined);
  }

  /** Forgets the history before `revision`: watches can no longer start before it. */
  compact(revision: number): void {
    if (!(Number.isSafeInteger(revision) && revision <= this.currentRevision)) {
      throw new Error(`cannot compact at ${revision}: the store is at revision ${this.currentRevision}`);
    }
    if (revision <= this.compacted) return;
    this.compacted = revision;
    this.history.splice(
      0,
      lowerBound(this.history, revision, (entry) => entry.revision),
    );
  }

  // ---- internals --------------------------------------------------------------------------------------

  /** The keys a selection covers, in key order. */
  private select(selection: KeySelection): string[] {
    if ("key" in selection) return this.kvs.has(selection.key) ? [selection.key] : [];
    const start = "prefix" in selection ? selection.prefix : selection.from;
    const inside =
      "prefix" in selection
        ? (key: string) => key.startsWith(selection.prefix)
        : (key: string) => compareKeys(key, selection.to) < 0;
    const keys: string[] = [];
    for (
      let index = lowerBound(this.sortedKeys, start, (key) => key, compareKeys);
      index < this.sortedKeys.length;
      index++
    ) {
      const key = this.sortedKeys[index]!;
      if (!inside(key)) break;
      keys.push(key);
    }
    return keys;
  }

  /** etcd's applyCompare: a condition on a key or on every key under a prefix. */
  private holds(condition: Compare): boolean {
    const selection: KeySelection = "key" in condition ? { key: condition.key } : { prefix: condition.prefix };
    const keys = this.select(selection);
    if (keys.length === 0) {
      // A value never matches a missing key (etcd has no way to say "missing" for a value).
      if (condition.target === "value") return false;
      return compareOne(condition, undefined);
    }
    return keys.every((key) => compareOne(condition, this.kvs.get(key)!));
  }

  /** One step's writes, all at the next revision; commit() raises the revision if any changed a key. */
  private writer(): {
    put(key: string, value: string, lease: LeaseId | undefined): void;
    delete(selection: KeySelection): number;
    commit<T>(value: T): StepResult<T>;
  } {
    const revision = this.currentRevision + 1;
    const events: WatchEvent[] = [];
    return {
      put: (key, value, lease) => {
        const old = this.kvs.get(key);
        if (old?.lease !== undefined) this.leaseTable.get(old.lease)?.keys.delete(key);
        const kv: KeyValue = Object.freeze({
          key,
          value,
          createRevision: old?.createRevision ?? revision,
          modRevision: revision,
          version: (old?.version ?? 0) + 1,
          lease,
        });
        if (old === undefined)
          this.sortedKeys.splice(
            lowerBound(this.sortedKeys, key, (k) => k, compareKeys),
            0,
            key,
          );
        this.kvs.set(key, kv);
        if (lease !== undefined) this.leaseTable.get(lease)!.keys.add(key);
        events.push(Object.freeze({ type: "PUT", ...kv }));
      },
      delete: (selection) => {
        const keys = this.select(selection);
        for (const key of keys) {
          const old = this.kvs.get(key)!;
          if (old.lease !== undefined) this.leaseTable.get(old.lease)?.keys.delete(key);
          this.kvs.delete(key);
          this.sortedKeys.splice(
            lowerBound(this.sortedKeys, key, (k) => k, compareKeys),
            1,
          );
          events.push(Object.freeze({ type: "DELETE", key, modRevision: revision }));
        }
        return keys.length;
      },
      commit: (value) => {
        if (events.length > 0) {
          this.currentRevision = revision;
          this.history.push(Object.freeze({ revision, events: Object.freeze(events) }));
        }
        return { value, revision: this.currentRevision, events };
      },
    };
  }
}

/**
 * etcd's checkIntervals for one branch: no key may be put twice, nor put and deleted. A delete of the
 * whole keyspace (the empty prefix, sent as ["\0", "\0")) is an empty interval to this check, as in etcd.
 */
function checkOverlaps(branch: readonly TxnOperation[]): void {
  const deletes = branch.flatMap((operation): ({ key: string } | { prefix: string })[] =>
    operation.type === "delete"
      ? [{ key: operation.key }]
      : operation.type === "deletePrefix"
        ? [{ prefix: operation.prefix }]
        : [],
  );
  const puts = new Set<string>();
  for (const operation of branch) {
    if (operation.type !== "put") continue;
    const deleted = deletes.some((selection) =>
      "key" in selection
        ? selection.key === operation.key
        : selection.prefix !== "" && operation.key.startsWith(selection.prefix),
    );
    if (puts.has(operation.key) || deleted) throw new StoreRefusal("INVALID_ARGUMENT", ETCD_REFUSALS.duplicateKey);
    puts.add(operation.key);
  }
}

/** etcd's compareKV, against a key-value or a missing key (revisions, version and lease 0). */
function compareOne(condition: Compare, kv: KeyValue | undefined): boolean {
  let order: number;
  switch (condition.target) {
    case "value":
      order = compareKeys(kv?.value ?? "", condition.value);
      break;
    case "lease":
      order = compareBigInt(BigInt(kv?.lease ?? "0"), BigInt(condition.value));
      break;
    default:
      order = Math.sign((kv?.[condition.target] ?? 0) - condition.value);
  }
  return RESULT_HOLDS[condition.result](order);
}

const RESULT_HOLDS: Record<CompareResult, (order: number) => boolean> = {
  equal: (order) => order === 0,
  notEqual: (order) => order !== 0,
  greater: (order) => order > 0,
  less: (order) => order < 0,
};

function compareBigInt(a: bigint, b: bigint): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

const SURROGATE = /[\ud800-\udfff]/;

/**
 * Orders text as etcd orders its UTF-8 bytes. JavaScript compares UTF-16 code units, which agrees with
 * byte order except between a character above U+FFFF (a surrogate pair) and one in U+E000..U+FFFF.
 */
export function compareKeys(a: string, b: string): number {
  if (SURROGATE.test(a) || SURROGATE.test(b)) return Buffer.compare(Buffer.from(a, "utf8"), Buffer.from(b, "utf8"));
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The first index whose item is not below `target`, in a list sorted by `compare` of `keyOf`. */
function lowerBound<T, K>(
  items: readonly T[],
  target: K,
  keyOf: (item: T) => K,
  compare: (a: K, b: K) => number = (a, b) => (a < b ? -1 : a > b ? 1 : 0),
): number {
  let low = 0;
  let high = items.length;
  while (low < high) {
    const middle = (low + high) >> 1;
    if (compare(keyOf(items[middle]!), target) < 0) low = middle + 1;
    else high = middle;
  }
  return low;
}
