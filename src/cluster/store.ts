// The cluster store as the rest of Haven sees it: the part of etcd's API the control plane uses
// (reads at one revision, puts, deletes, transactions with compare-and-swap, leases, prefix watches).
// EtcdClient implements it over the network; the control-plane simulation (test/sim/) implements it in
// memory on virtual time, with faults, so the agents' races can be replayed from a seed.
//
// The error contract is EtcdClient's: HAVEN_ERR_UNAVAILABLE when the store cannot be reached in time
// (the call may or may not have been applied), HAVEN_ERR_NOT_FOUND for a lease the store does not know,
// HAVEN_ERR_IO for anything else it refuses.

import type {
  Compare,
  KeyValue,
  Lease,
  LeaseId,
  RangeOptions,
  RangePage,
  TxnOperation,
  TxnResult,
  Watch,
  WatchEvent,
  WatchOptions,
} from "./etcd-client.js";

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

/** Puts `value` at `key` only if the key's modRevision is still `modRevision` (0: the key must not exist). */
export async function putIfUnchanged(
  store: ClusterStore,
  key: string,
  value: string,
  modRevision: number,
): Promise<boolean> {
  const result = await store.txn(
    [{ key, target: "modRevision", result: "equal", value: modRevision }],
    [{ type: "put", key, value }],
    [],
  );
  return result.succeeded;
}
