// Virtual time for the simulation. SimClock implements the engine's Clock (now/sleep/schedule) over a
// queue of timers that fire only when the driver says so; the driver runs the world by letting every
// pending promise job settle (one turn of the event loop, since nothing in the simulated world uses
// real I/O or real timers), then jumping virtual time to the next timer and firing every timer due at
// that instant, in the order they were set. The same seed therefore replays the same interleaving.

import type { Clock } from "../../src/util/clock.js";

interface Timer {
  readonly at: number;
  readonly order: number;
  readonly run: () => void;
  cancelled: boolean;
}

/** Timers fired at one virtual instant before the world is declared stuck in a loop. */
const MAX_FIRINGS_PER_INSTANT = 20_000;

export class SimClock implements Clock {
  private nowMs = 0;
  private order = 0;
  private readonly heap: Timer[] = [];
  private firingsAtInstant = 0;
  /** Timers fired since the start, for the run's statistics. */
  fired = 0;

  now(): number {
    return this.nowMs;
  }

  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.schedule(ms, resolve));
  }

  schedule(ms: number, run: () => void): { cancel(): void } {
    const timer: Timer = { at: this.nowMs + Math.max(0, ms), order: this.order++, run, cancelled: false };
    this.push(timer);
    return {
      cancel: () => {
        timer.cancelled = true;
      },
    };
  }

  /** When the next live timer is due, or undefined when none is set. */
  nextDueAt(): number | undefined {
    while (this.heap.length > 0 && this.heap[0]!.cancelled) this.pop();
    return this.heap[0]?.at;
  }

  /** Moves time forward to `at` (never backwards) without firing anything. */
  advanceTo(at: number): void {
    if (at > this.nowMs) {
      this.nowMs = at;
      this.firingsAtInstant = 0;
    }
  }

  /** Fires every timer due at the earliest instant, if that is at or before `limit`. False if none. */
  fireNext(limit = Number.POSITIVE_INFINITY): boolean {
    const at = this.nextDueAt();
    if (at === undefined || at > limit) return false;
    this.advanceTo(at);
    while (this.heap.length > 0 && this.heap[0]!.at === at) {
      const timer = this.pop();
      if (timer.cancelled) continue;
      this.fired++;
      if (++this.firingsAtInstant > MAX_FIRINGS_PER_INSTANT)
        throw new Error(`livelock: more than ${MAX_FIRINGS_PER_INSTANT} timers fired at virtual ${at} ms`);
      timer.run();
    }
    return true;
  }

  private push(timer: Timer): void {
    const heap = this.heap;
    heap.push(timer);
    let i = heap.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(heap[i]!, heap[parent]!)) break;
      [heap[i], heap[parent]] = [heap[parent]!, heap[i]!];
      i = parent;
    }
  }

  private pop(): Timer {
    const heap = this.heap;
    const top = heap[0]!;
    const last = heap.pop()!;
    if (heap.length > 0) {
      heap[0] = last;
      let i = 0;
      for (;;) {
        const left = 2 * i + 1;
        const right = left + 1;
        let smallest = i;
        if (left < heap.length && before(heap[left]!, heap[smallest]!)) smallest = left;
        if (right < heap.length && before(heap[right]!, heap[smallest]!)) smallest = right;
        if (smallest === i) break;
        [heap[i], heap[smallest]] = [heap[smallest]!, heap[i]!];
        i = smallest;
      }
    }
    return top;
  }
}

function before(a: Timer, b: Timer): boolean {
  return a.at < b.at || (a.at === b.at && a.order < b.order);
}

/** Lets every promise job queued so far (and those they queue) run. */
export function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** A promise's outcome, observed without awaiting it. */
export type Outcome<T> =
  { state: "pending" } | { state: "fulfilled"; value: T } | { state: "rejected"; error: unknown };

export function observe<T>(promise: Promise<T>): { readonly outcome: Outcome<T> } {
  const box: { outcome: Outcome<T> } = { outcome: { state: "pending" } };
  promise.then(
    (value) => (box.outcome = { state: "fulfilled", value }),
    (error: unknown) => (box.outcome = { state: "rejected", error }),
  );
  return box;
}

/**
 * Runs the world on virtual time. `afterSettle` runs each time the promise jobs have settled (the
 * world uses it to sample state and to raise a violation found inside a callback).
 */
export class SimDriver {
  constructor(
    readonly clock: SimClock,
    private readonly afterSettle: () => void = () => undefined,
  ) {}

  private async quiesce(): Promise<void> {
    await settle();
    this.afterSettle();
  }

  /** Runs for `ms` of virtual time. */
  async runFor(ms: number): Promise<void> {
    const end = this.clock.now() + ms;
    await this.quiesce();
    while (this.clock.fireNext(end)) await this.quiesce();
    this.clock.advanceTo(end);
    await this.quiesce();
  }

  /**
   * Runs until `done()` holds or `maxMs` of virtual time passed. True if done. Stops early (false) if
   * nothing is left to happen: no timer set and `done()` still false.
   */
  async runUntil(done: () => boolean, maxMs: number): Promise<boolean> {
    const end = this.clock.now() + maxMs;
    await this.quiesce();
    for (;;) {
      if (done()) return true;
      if (!this.clock.fireNext(end)) {
        this.clock.advanceTo(Math.max(this.clock.now(), Math.min(end, this.clock.nextDueAt() ?? end)));
        await this.quiesce();
        return done();
      }
      await this.quiesce();
    }
  }

  /** Runs until `promise` settles or `maxMs` passed; returns its outcome (possibly still pending). */
  async drive<T>(promise: Promise<T>, maxMs: number): Promise<Outcome<T>> {
    const box = observe(promise);
    await this.runUntil(() => box.outcome.state !== "pending", maxMs);
    return box.outcome;
  }
}
