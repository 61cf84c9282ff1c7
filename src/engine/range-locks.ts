// Client writes and resync (or verify) copies must not interleave on the same bytes: a resync chunk
// read before a client write and written after it would put old data over new. Client writes take a
// shared hold on their range; a resync chunk takes an exclusive hold, which waits for overlapping
// writes in flight and holds back new ones until it is done. A waiting exclusive hold also holds back
// new overlapping shared ones, so a steady stream of client writes cannot starve it.

interface Hold {
  readonly offset: number;
  readonly end: number;
  readonly exclusive: boolean;
}

export class RangeLocks {
  private readonly holds = new Set<Hold>();
  private readonly waitingExclusive = new Set<Hold>();
  private waiters: (() => void)[] = [];

  /** Ranges of shared holds (client writes) in flight. */
  sharedRanges(): { offset: number; length: number }[] {
    return [...this.holds].filter((h) => !h.exclusive).map((h) => ({ offset: h.offset, length: h.end - h.offset }));
  }

  /** Takes the hold at once if nothing conflicts (the common case, without a promise); else undefined. */
  tryAcquire(offset: number, length: number, exclusive: boolean): (() => void) | undefined {
    const hold: Hold = { offset, end: offset + Math.max(length, 1), exclusive };
    if (this.conflicts(hold)) return undefined;
    this.holds.add(hold);
    return () => this.release(hold);
  }

  async acquire(offset: number, length: number, exclusive: boolean): Promise<() => void> {
    const hold: Hold = { offset, end: offset + Math.max(length, 1), exclusive };
    if (exclusive) this.waitingExclusive.add(hold);
    while (this.conflicts(hold)) await new Promise<void>((resolve) => this.waiters.push(resolve));
    this.waitingExclusive.delete(hold);
    this.holds.add(hold);
    return () => this.release(hold);
  }

  private release(hold: Hold): void {
    if (!this.holds.delete(hold) || this.waiters.length === 0) return;
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }

  private conflicts(hold: Hold): boolean {
    const overlaps = (other: Hold): boolean => other.offset < hold.end && hold.offset < other.end;
    for (const other of this.holds) if ((hold.exclusive || other.exclusive) && overlaps(other)) return true;
    if (!hold.exclusive) for (const other of this.waitingExclusive) if (overlaps(other)) return true;
    return false;
  }
}
