// Requests the engine sends to a copy's port outside the range locks (client reads, block status),
// counted per copy, so that a copy removed from a running volume has its port closed only once they
// settled. Writes need no count: removal holds the whole volume's range lock, so none is in flight.
// Why it matters: closing a local copy's file under a read in flight frees its descriptor, which the
// next file opened may take before the read runs; the read would then return that file's bytes as the
// volume's.

export class PortUse<Key> {
  private readonly inFlight = new Map<Key, { count: number; idle: (() => void)[] }>();

  /** A request to `key`'s port starts; call the returned function once it settled. */
  enter(key: Key): () => void {
    let entry = this.inFlight.get(key);
    if (entry === undefined) {
      entry = { count: 0, idle: [] };
      this.inFlight.set(key, entry);
    }
    entry.count++;
    const counted = entry;
    let left = false;
    return () => {
      if (left) return;
      left = true;
      if (--counted.count > 0) return;
      this.inFlight.delete(key);
      for (const wake of counted.idle) wake();
    };
  }

  /** Resolves once no request to `key`'s port is in flight (at once when none is). */
  idle(key: Key): Promise<void> {
    const entry = this.inFlight.get(key);
    if (entry === undefined) return Promise.resolve();
    return new Promise((resolve) => entry.idle.push(resolve));
  }
}
