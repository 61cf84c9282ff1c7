// The dashboard's live feed: one reader of etcd shared by every open stream. While anyone listens, it
// reads the cluster once per interval (one transaction, readClusterRecords) and the events written
// since the last read; a changed revision sends every listener a new snapshot, and each new event is
// sent once. Polling at one read per second, whatever the number of browsers, keeps the load on etcd
// bounded and needs no watch to resume after etcd restarts; a second is also how often `haven volume
// status --watch` looks. Listeners are bounded (maxListeners): one more is refused with 503.

import { HavenError } from "../core/errors.js";
import { readClusterRecords, readEvents } from "../cluster/cluster-read.js";
import type { ClusterStore } from "../cluster/store.js";
import { dashboardSnapshot, filterEvents, type DashboardEvent, type DashboardSnapshot } from "./dashboard-snapshot.js";

export interface FeedListener {
  snapshot(snapshot: DashboardSnapshot): void;
  event(event: DashboardEvent): void;
}

export interface FeedOptions {
  readonly store: ClusterStore;
  readonly servedBy: string;
  readonly intervalMs: number;
  readonly maxListeners: number;
  /** Told when a read fails (the feed tries again at the next interval). */
  readonly log: (line: string) => void;
}

export class DashboardFeed {
  private readonly listeners = new Set<FeedListener>();
  private timer: NodeJS.Timeout | undefined;
  private reading = false;
  private latest: DashboardSnapshot | undefined;
  /** The key of the newest event seen; undefined until the first read. */
  private lastEventKey: string | undefined;
  private failing = false;

  constructor(private readonly options: FeedOptions) {}

  /** Adds a listener (it gets the latest snapshot at once when there is one); returns its removal. */
  listen(listener: FeedListener): () => void {
    if (this.listeners.size >= this.options.maxListeners)
      throw new HavenError(
        "HAVEN_ERR_UNAVAILABLE",
        `this agent serves ${this.options.maxListeners} live dashboards already; close one, or use another host's`,
      );
    this.listeners.add(listener);
    if (this.latest !== undefined) listener.snapshot(this.latest);
    this.timer ??= setInterval(() => void this.read(), this.options.intervalMs);
    void this.read();
    return () => {
      this.listeners.delete(listener);
      if (this.listeners.size === 0) this.stop();
    };
  }

  /** Stops reading (the listeners stay until they leave). */
  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    this.latest = undefined;
    this.lastEventKey = undefined;
  }

  private async read(): Promise<void> {
    if (this.reading) return;
    this.reading = true;
    try {
      const records = await readClusterRecords(this.options.store);
      const events = await readEvents(this.options.store);
      if (this.listeners.size === 0) return;
      if (this.latest?.revision !== records.revision) {
        this.latest = dashboardSnapshot(records, this.options.servedBy, new Date());
        for (const listener of this.listeners) listener.snapshot(this.latest);
      }
      // The first read only marks where the stream starts: a page reads the history itself.
      const fresh =
        this.lastEventKey === undefined
          ? []
          : filterEvents(events, { after: this.lastEventKey }, Number.MAX_SAFE_INTEGER);
      const newest = events.at(-1)?.key;
      if (newest !== undefined && (this.lastEventKey === undefined || newest > this.lastEventKey))
        this.lastEventKey = newest;
      else this.lastEventKey ??= "";
      for (const event of fresh) for (const listener of this.listeners) listener.event(event);
      if (this.failing) this.options.log("dashboard feed: etcd answers again");
      this.failing = false;
    } catch (error) {
      if (!this.failing) this.options.log(`dashboard feed: cannot read the cluster: ${(error as Error).message}`);
      this.failing = true;
    } finally {
      this.reading = false;
    }
  }
}
