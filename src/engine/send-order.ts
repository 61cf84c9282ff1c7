// The order in which the engine sends one request to several copies: remote copies first, local ones
// after the turn's remote requests have left, and (for background writeback) one copy at a time. Both
// orders come from measurements, given with each function.

import type { ReplicaPort } from "../replica/port.js";

/**
 * Starts `send` on every copy's port, remote copies first: a local write may run on the event loop
 * (FileDevice writes small buffers inline), and the remote copy's server can work on its request
 * meanwhile instead of after. With a remote copy, local writes wait until the turn's remote requests
 * have left (afterRemoteSends). The promises come back in the copies' order.
 */
export function sendRemoteFirst(
  sent: readonly { readonly copy: { readonly port: ReplicaPort | undefined } }[],
  send: (port: ReplicaPort) => Promise<void>,
): Promise<void>[] {
  const promises: Promise<void>[] = new Array<Promise<void>>(sent.length);
  let remote = false;
  for (let i = 0; i < sent.length; i++) {
    const port = sent[i]!.copy.port!;
    if (port.local) continue;
    promises[i] = send(port);
    remote = true;
  }
  for (let i = 0; i < sent.length; i++) {
    const port = sent[i]!.copy.port!;
    if (!port.local) continue;
    promises[i] = remote ? afterRemoteSends(() => send(port)) : send(port);
  }
  return promises;
}

/** Local writes waiting for this turn's remote requests to leave (see afterRemoteSends). */
let waitingLocalWrites: (() => void)[] = [];

/**
 * Runs `write` once this turn of the event loop is over, after the replication connections have sent
 * what the turn queued (they send at setImmediate, and these run at a later setImmediate). A small
 * local write is a synchronous system call: done first, it held the remote requests back until every
 * local write of the turn was done, and the replica server idled meanwhile. Measured on 4 KiB writes
 * through a local and a remote copy: 16.1k-17.2k IOPS before, 17.8k-20.4k after; 1 MiB unchanged.
 */
function afterRemoteSends(write: () => Promise<void>): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (waitingLocalWrites.length === 0) setImmediate(runWaitingLocalWrites);
    waitingLocalWrites.push(() => {
      try {
        write().then(resolve, reject);
      } catch (error) {
        reject(error);
      }
    });
  });
}

function runWaitingLocalWrites(): void {
  const writes = waitingLocalWrites;
  waitingLocalWrites = [];
  for (const write of writes) write();
}

/** Promise.allSettled, but each task starts only once the one before it has settled. */
export async function settleInTurn<T>(tasks: readonly (() => Promise<T>)[]): Promise<PromiseSettledResult<T>[]> {
  const results: PromiseSettledResult<T>[] = [];
  for (const task of tasks) {
    try {
      results.push({ status: "fulfilled", value: await task() });
    } catch (reason) {
      results.push({ status: "rejected", reason });
    }
  }
  return results;
}
