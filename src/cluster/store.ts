// The cluster store as the rest of Haven sees it: the part of etcd's API the control plane uses
// (reads at one revision, puts, deletes, transactions with compare-and-swap, leases, prefix watches).
// EtcdClient implements it over the network; the control-plane simulation (test/sim/) implements it in
// memory on virtual time, with faults, so the agents' races can be replayed from a seed.
//
// The error contract is EtcdClient's: HAVEN_ERR_UNAVAILABLE when the store cannot be reached in time
// (the call may or may not have been applied), HAVEN_ERR_NOT_FOUND for a lease the store does not know,
// HAVEN_ERR_IO for anything else it refuses.

import { HavenError } from "../core/errors.js";
import type { KeyValue, LeaseId, WatchEvent } from "./etcd-codec.js";
import type { Watch, WatchOptions } from "./etcd-watch.js";

export type CompareResult = "equal" | "notEqual" | "greater" | "less";

/**
 * What a condition looks at: one key, or every key under a prefix. A prefix holds only if the condition
 * holds for each of its keys; an empty prefix compares like a missing key (revisions and version 0, and
 * a value never matches). Deleted keys leave no trace in a prefix, so "nothing under it changed" needs
 * more than a modRevision condition when a deletion matters.
 */
export type CompareSubject = { readonly key: string } | { readonly prefix: string };

/** One condition of a transaction; a key that does not exist has revisions and version 0. */
export type Compare = CompareSubject &
  (
    | { readonly target: "value"; readonly result: CompareResult; readonly value: string }
    | {
        readonly target: "version" | "createRevision" | "modRevision";
        readonly result: CompareResult;
        readonly value: number;
      }
    | { readonly target: "lease"; readonly result: CompareResult; readonly value: LeaseId }
  );

export type TxnOperation =
  | { readonly type: "put"; readonly key: string; readonly value: string; readonly lease?: LeaseId }
  | { readonly type: "get"; readonly key: string }
  | { readonly type: "getPrefix"; readonly prefix: string }
  | { readonly type: "delete"; readonly key: string }
  | { readonly type: "deletePrefix"; readonly prefix: string };

export type TxnOperationResult =
  | { readonly type: "put" }
  | { readonly type: "get"; readonly kvs: KeyValue[] }
  | { readonly type: "delete"; readonly deleted: number };

export interface TxnResult {
  /** True when every comparison held and the success branch ran. */
  readonly succeeded: boolean;
  /** The store's revision after the transaction. */
  readonly revision: number;
  /** One result per operation of the branch that ran. */
  readonly results: TxnOperationResult[];
}

/** One page of a range read. */
export interface RangePage {
  /** The keys read, in key order (values "" when read keys only). */
  readonly kvs: KeyValue[];
  /** How many keys the whole range holds at `revision`, however many were read. */
  readonly count: number;
  /** The store revision the page was read at. */
  readonly revision: number;
}

export interface RangeOptions {
  /** Read at most this many keys, the first in key order (default: every key). */
  readonly limit?: number;
  /** Read keys and revisions only, not values (each value reads as ""). */
  readonly keysOnly?: boolean;
}

export interface Lease {
  readonly id: LeaseId;
  /** The TTL etcd granted, which may be longer than asked for (etcd has a minimum). */
  readonly ttlSeconds: number;
}

export interface LeaseStatus {
  /** Seconds left before the lease expires. */
  readonly ttlSeconds: number;
  readonly grantedTtlSeconds: number;
  /** The keys attached to the lease. */
  readonly keys: string[];
}

export interface ClusterStore {
  get(key: string): Promise<KeyValue | undefined>;
  getPrefix(prefix: string): Promise<KeyValue[]>;
  getPrefixPage(prefix: string, options?: RangeOptions): Promise<RangePage>;
  put(key: string, value: string, options?: { lease?: LeaseId }): Promise<{ revision: number }>;
  /** Resolves with whether the key existed. */
  delete(key: string): Promise<boolean>;
  /** Deletes every key in [from, to); resolves with how many there were. */
  deleteRange(from: string, to: string): Promise<number>;
  /** Runs `success` if every comparison holds, otherwise `failure`, as one atomic step. */
  txn(compare: Compare[], success: TxnOperation[], failure: TxnOperation[]): Promise<TxnResult>;
  grantLease(ttlSeconds: number): Promise<Lease>;
  /** One keepalive; resolves with the TTL left in seconds, 0 when the lease has expired. */
  keepAliveOnce(leaseId: LeaseId): Promise<number>;
  revokeLease(leaseId: LeaseId): Promise<void>;
  watchPrefix(prefix: string, options: WatchOptions, onEvent: (event: WatchEvent) => void): Watch;
}

/** What putIf compares before it puts (at least one of the two), and the lease to attach the key to. */
export interface PutCondition {
  /** The key's modRevision must be this (0: the key must not exist). */
  readonly expectModRevision?: number;
  /** The key's value must be this (a missing key never matches). */
  readonly expectValue?: string;
  readonly lease?: LeaseId;
}

/**
 * Compare-and-swap on any store: puts the value only if the key is as expected, atomically. Resolves
 * with whether the put happened; a condition that names nothing to compare is refused.
 */
export async function putIf(store: ClusterStore, key: string, value: string, expect: PutCondition): Promise<boolean> {
  const compare: Compare[] = [];
  if (expect.expectModRevision !== undefined)
    compare.push({ key, target: "modRevision", result: "equal", value: expect.expectModRevision });
  if (expect.expectValue !== undefined)
    compare.push({ key, target: "value", result: "equal", value: expect.expectValue });
  if (compare.length === 0)
    throw new HavenError("HAVEN_ERR_INVALID_REQUEST", `putIf "${key}" needs expectModRevision or expectValue`);
  const put: TxnOperation = { type: "put", key, value, ...(expect.lease !== undefined && { lease: expect.lease }) };
  return (await store.txn(compare, [put], [])).succeeded;
}
