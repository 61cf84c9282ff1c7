// The engine's hooks into the control plane (EngineOptions.recordCopyState): the record, kept in the
// cluster, of which copies hold every acknowledged write. A copy leaving the in-sync set is recorded
// before any write it missed completes; a copy joining it, after it joined. Records of one copy go out
// one after another, so a late "in sync" never lands after an "out of sync" that was sent later.
// Without a hook (a volume served outside a cluster) every record completes at once.

export type RecordCopyState = (location: string, inSync: boolean, detail: string) => Promise<void>;

export class CopyRecords {
  private readonly last = new Map<string, Promise<void>>();

  constructor(private readonly hook: RecordCopyState | undefined) {}

  get enabled(): boolean {
    return this.hook !== undefined;
  }

  /** Records the copy at `location` as in sync or not, after every earlier record of it settled. */
  record(location: string, inSync: boolean, detail: string): Promise<void> {
    const hook = this.hook;
    if (hook === undefined) return Promise.resolve();
    const previous = this.last.get(location) ?? Promise.resolve();
    const next = previous.catch(() => undefined).then(() => hook(location, inSync, detail));
    this.last.set(location, next);
    return next;
  }
}
