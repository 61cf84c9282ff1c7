// Who may start a handshake on the replication port. A peer that has not yet authenticated (TLS and
// the shared-secret AUTH) costs the server a socket, a TLS state and a read buffer while it takes its
// time: without a bound, a few dozen idle or slow peers can pin as much memory and as many sockets as
// they like. So unauthenticated connections are counted per source address and in total, and one over
// either limit is refused at once; each admitted one has a deadline to finish authenticating (the
// listener enforces it). Authenticated connections are not counted: they are the cluster's own engines.
//
// Pure bookkeeping, no sockets: the listener (replica-listener.ts) admits on accept and releases when
// the peer authenticates or the connection ends, whichever comes first.

import assert from "node:assert/strict";

export interface AdmissionLimits {
  /** Unauthenticated connections at once from one source address. */
  readonly maxUnauthenticatedPerAddress: number;
  /** Unauthenticated connections at once from all addresses together. */
  readonly maxUnauthenticated: number;
  /** From accept to the end of AUTH (TLS handshake included); past it the connection is closed. */
  readonly authDeadlineMs: number;
}

/**
 * A legitimate engine opens one connection per copy it serves, plus a heartbeat, and authenticates
 * in a few milliseconds: eight at once from one host is already a restart storm; a TLS handshake and
 * AUTH over a slow link take well under a second.
 */
export const DEFAULT_ADMISSION_LIMITS: AdmissionLimits = {
  maxUnauthenticatedPerAddress: 8,
  maxUnauthenticated: 64,
  authDeadlineMs: 5_000,
};

/** An admitted, not yet authenticated connection's place; release() gives it back (idempotent). */
export interface Admission {
  release(): void;
}

export class AdmissionGate {
  private readonly perAddress = new Map<string, number>();
  private total = 0;

  constructor(readonly limits: AdmissionLimits) {
    for (const [name, value] of Object.entries(limits))
      assert.ok(Number.isInteger(value) && value > 0, `admission limit ${name} must be a positive integer`);
  }

  /** A place for a new connection from `address`, or why there is none. */
  admit(address: string): Admission | { readonly refused: string } {
    const fromAddress = this.perAddress.get(address) ?? 0;
    if (fromAddress >= this.limits.maxUnauthenticatedPerAddress)
      return {
        refused: `${fromAddress} connections from ${address} are already authenticating (limit ${this.limits.maxUnauthenticatedPerAddress})`,
      };
    if (this.total >= this.limits.maxUnauthenticated)
      return {
        refused: `${this.total} connections are already authenticating (limit ${this.limits.maxUnauthenticated})`,
      };
    this.perAddress.set(address, fromAddress + 1);
    this.total++;
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.total--;
        const left = (this.perAddress.get(address) ?? 0) - 1;
        assert.ok(left >= 0 && this.total >= 0, "admission released more often than admitted");
        if (left === 0) this.perAddress.delete(address);
        else this.perAddress.set(address, left);
      },
    };
  }

  /** Unauthenticated connections now (all addresses), for status and tests. */
  get unauthenticated(): number {
    return this.total;
  }
}

export function isRefusal(result: Admission | { readonly refused: string }): result is { readonly refused: string } {
  return "refused" in result;
}
