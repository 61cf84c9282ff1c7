// The activity log (DESIGN.md rule 3): the extents that may have writes in flight. A write first makes
// sure its extents are in the log, and the log is persisted on every in-sync copy before the write is
// sent, so after a crash of the writer exactly these extents are resynced between the copies. The log
// has a fixed capacity; the least recently used idle extent leaves it, and only after everything
// written to it is durable everywhere (the engine's job when it persists a shrunk log).
// Pure bookkeeping: the engine decides when to persist.

import assert from "node:assert/strict";

export const DEFAULT_ACTIVITY_LOG_EXTENTS = 1024;

export class ActivityLog {
  /** Extent -> writes in flight in it; Map order is recency (oldest first). */
  private readonly active = new Map<number, number>();

  constructor(
    readonly extentBytes: number,
    readonly capacity: number = DEFAULT_ACTIVITY_LOG_EXTENTS,
    initial: Iterable<number> = [],
  ) {
    assert.ok(capacity >= 1, "the activity log needs room for at least one extent");
    for (const extent of initial) this.active.set(extent, 0);
    this.persisted = new Set(initial);
  }

  /** Extents that left the log but are still persisted in it until their writes are durable everywhere. */
  private readonly leaving = new Set<number>();
  /** Extents the persisted log holds: a write may go out only once its extents are among them. */
  private persisted = new Set<number>();

  /** What the persisted log must hold: the active extents and those still leaving. */
  get extents(): number[] {
    return [...new Set([...this.active.keys(), ...this.leaving])].sort((a, b) => a - b);
  }

  /** Extents touched by [offset, offset+length). */
  extentsOf(offset: number, length: number): number[] {
    const first = Math.floor(offset / this.extentBytes);
    const last = Math.floor((offset + Math.max(length, 1) - 1) / this.extentBytes);
    const extents: number[] = [];
    for (let extent = first; extent <= last; extent++) extents.push(extent);
    return extents;
  }

  /**
   * Pins the range's extents for a write. `changed`: new extents entered, and the log must be
   * persisted before the write proceeds; `evicted`: idle extents that are leaving. They stay in
   * `extents` until `forget` is called, which the engine does once everything written to them is
   * durable on every copy.
   */
  pin(offset: number, length: number, prefetch = 0): { changed: boolean; evicted: number[] } {
    const wanted = this.extentsOf(offset, length);
    let changed = false;
    let added = false;
    for (const extent of wanted) {
      const pins = this.active.get(extent);
      if (!this.persisted.has(extent)) changed = true;
      if (pins === undefined) added = true;
      this.active.delete(extent);
      this.active.set(extent, (pins ?? 0) + 1);
    }
    if (added) {
      // Sequential writers: take the next extents too, so the log is persisted less often.
      const next = wanted[wanted.length - 1]! + 1;
      for (let extent = next; extent < next + prefetch && this.active.size < this.capacity; extent++) {
        if (!this.active.has(extent)) this.active.set(extent, 0);
      }
      return { changed: true, evicted: this.evictIdle() };
    }
    return { changed, evicted: [] };
  }

  /** A save of `extents` is under way: extents it drops no longer count as persisted, even before it lands. */
  saving(extents: readonly number[]): void {
    const next = new Set(extents);
    for (const extent of this.persisted) if (!next.has(extent)) this.persisted.delete(extent);
  }

  /** Records what the log on disk holds now (the `extents` a completed save wrote). */
  markPersisted(extents: readonly number[]): void {
    this.persisted = new Set(extents);
  }

  forget(extents: readonly number[]): void {
    for (const extent of extents) this.leaving.delete(extent);
  }

  unpin(offset: number, length: number): void {
    for (const extent of this.extentsOf(offset, length)) {
      const pins = this.active.get(extent);
      assert.ok(pins !== undefined && pins > 0, `extent ${extent} was not pinned`);
      this.active.set(extent, pins - 1);
    }
  }

  /** Forgets every idle extent (a clean shutdown after a flush everywhere). */
  clearIdle(): void {
    for (const [extent, pins] of this.active) if (pins === 0) this.active.delete(extent);
    this.leaving.clear();
  }

  has(extent: number): boolean {
    return this.active.has(extent);
  }

  private evictIdle(): number[] {
    const evicted: number[] = [];
    for (const [extent, pins] of this.active) {
      if (this.active.size <= this.capacity) break;
      if (pins === 0) {
        this.active.delete(extent);
        this.leaving.add(extent);
        evicted.push(extent);
      }
    }
    return evicted;
  }
}
