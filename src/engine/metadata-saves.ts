// The queue of the volume's metadata saves: one save runs at a time, and requests coalesce. A request
// resolves when a save that STARTED after it has completed, so the caller knows that save saw its
// change; requests made while a save waits to start share that save (however many writes move the
// activity log or copies leave meanwhile, at most one save runs and one waits). A failed save rejects
// the requests it served; the next one runs all the same. Generic over what one save does: the engine
// passes its save (every in-sync copy's metadata, repeated until it holds on every copy still in sync).

export class SaveQueue {
  /** Settles when the last save requested so far has; never rejects. */
  private tail: Promise<void> = Promise.resolve();
  /** The save that has not started yet, shared by every request made meanwhile. */
  private waiting: Promise<void> | null = null;
  private started = 0;

  constructor(private readonly saveOnce: () => Promise<void>) {}

  /** Resolves once a save that started after this call has completed; rejects if that save failed. */
  request(): Promise<void> {
    if (this.waiting) return this.waiting;
    const next = this.tail.then(() => {
      this.waiting = null;
      this.started++;
      return this.saveOnce();
    });
    this.waiting = next;
    this.tail = next.catch(() => undefined);
    return next;
  }

  /** Settles when every save requested so far has settled (never rejects). */
  settled(): Promise<void> {
    return this.tail;
  }

  /** Saves started so far (for tests and the log). */
  get savesStarted(): number {
    return this.started;
  }
}
