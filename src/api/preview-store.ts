// A cluster store that reads and never writes, for the dashboard's previews: an action's own
// cluster function (requestSwitchover, startVm, stopVm) runs against it, so its guards are exactly
// the ones the real action and the CLI run; the first write it tries ends the run with WouldWrite,
// which means every guard passed. Nothing reaches etcd but reads.

import type { ClusterStore, TxnOperation } from "../cluster/store.js";

/** Thrown where the action would have written: every guard before it passed. */
export class WouldWrite extends Error {
  constructor(what: string) {
    super(`a preview does not ${what}`);
  }
}

function writes(operations: readonly TxnOperation[]): boolean {
  return operations.some((operation) => operation.type !== "get" && operation.type !== "getPrefix");
}

export function previewStore(store: ClusterStore): ClusterStore {
  const refuse = (what: string) => (): never => {
    throw new WouldWrite(what);
  };
  return {
    get: (key) => store.get(key),
    getPrefix: (prefix) => store.getPrefix(prefix),
    getPrefixPage: (prefix, options) => store.getPrefixPage(prefix, options),
    put: refuse("put"),
    delete: refuse("delete"),
    deleteRange: refuse("delete"),
    txn: (compare, success, failure) => {
      if (writes(success) || writes(failure)) throw new WouldWrite("write");
      return store.txn(compare, success, failure);
    },
    grantLease: refuse("grant leases"),
    keepAliveOnce: refuse("renew leases"),
    revokeLease: refuse("revoke leases"),
    watchPrefix: refuse("watch"),
  };
}

/** Runs `action` against a preview store: resolves once every guard passed, rejects with the guard's refusal. */
export async function runGuards(store: ClusterStore, action: (store: ClusterStore) => Promise<unknown>): Promise<void> {
  try {
    await action(previewStore(store));
  } catch (error) {
    if (error instanceof WouldWrite) return;
    throw error;
  }
}
