// One memory budget for WRITE payload bytes held by all connections of an NBD server together: a
// connection reserves a WRITE's length before it reads the payload and gives it back when the write
// has completed (or was refused). A connection whose reservation does not fit waits, in arrival order,
// without reading its socket, so many clients each sending partial payloads cannot grow the server's
// memory past the budget (a per-connection limit alone let 12 connections take it from 58 to 460 MB).

import assert from "node:assert";

export class WriteBudget {
  private usedBytes = 0;
  private readonly waiters: { bytes: number; grant: () => void }[] = [];

  constructor(readonly capacityBytes: number) {
    assert.ok(Number.isSafeInteger(capacityBytes) && capacityBytes > 0, "write budget must be a positive integer");
  }

  get used(): number {
    return this.usedBytes;
  }

  get waiting(): number {
    return this.waiters.length;
  }

  /**
   * Reserves `bytes` at once (true) or queues `grant`, called once the reservation is made (false).
   * Waiters are served in order, so a large WRITE is not starved by a stream of small ones.
   * The returned cancel function withdraws a queued request (a connection that closes while waiting).
   */
  reserve(bytes: number, grant: () => void): { granted: boolean; cancel: () => void } {
    assert.ok(bytes > 0 && bytes <= this.capacityBytes, `reservation of ${bytes} bytes cannot fit the budget`);
    if (this.waiters.length === 0 && this.usedBytes + bytes <= this.capacityBytes) {
      this.usedBytes += bytes;
      return { granted: true, cancel: () => undefined };
    }
    const waiter = { bytes, grant };
    this.waiters.push(waiter);
    return {
      granted: false,
      cancel: () => {
        const at = this.waiters.indexOf(waiter);
        if (at >= 0) this.waiters.splice(at, 1);
        this.grantWaiters();
      },
    };
  }

  release(bytes: number): void {
    assert.ok(bytes > 0 && bytes <= this.usedBytes, `released ${bytes} bytes with ${this.usedBytes} reserved`);
    this.usedBytes -= bytes;
    this.grantWaiters();
  }

  private grantWaiters(): void {
    while (this.waiters.length > 0 && this.usedBytes + this.waiters[0]!.bytes <= this.capacityBytes) {
      const waiter = this.waiters.shift()!;
      this.usedBytes += waiter.bytes;
      waiter.grant();
    }
  }
}
