// Heartbeats between agents over the replication links. Every peer this host shares a volume with gets
// a PING on an authenticated replication connection (the cluster secret, challenge-response) every
// peerHeartbeatIntervalMs. The replica server answers PING in the peer's agent process, so an answer
// proves the peer's agent is alive, its event loop turning and the link carrying traffic, independently
// of etcd. peerHeartbeatMissLimit heartbeats unanswered in a row mark the link down.
//
// What it is for: the health check and `haven status` show every link; a link going down or coming
// back is an event; and a failover says whether the old primary still answered over the replication
// link (cut off from etcd only: it has fenced itself) or went silent too (the host or its network is
// gone). Safety never depends on a heartbeat: the lease and the fence decide who may write.
//
// The tracking of one link (LinkTracker) is pure: ticks and answers in, verdicts out.

import type { LinkHealth } from "../cluster/schema.js";
import { errorMessage } from "../core/errors.js";
import { systemClock, type Clock } from "../util/clock.js";

/** Where a peer's replica server listens. */
export interface PeerAddress {
  readonly address: string;
  readonly port: number;
}

/** One open heartbeat connection to a peer. */
export interface Pinger {
  /** Resolves when the peer answered one PING; rejects on a refusal, a timeout or a lost connection. */
  ping(): Promise<void>;
  close(): void;
  /** Set once the connection has ended; a new one is needed. */
  readonly ended: boolean;
}

export type PingerFactory = (peer: string, at: PeerAddress, timeoutMs: number) => Promise<Pinger>;

/** A link changed: down with why, or back up. */
export type LinkChange = { readonly peer: string; readonly up: boolean; readonly detail: string };

/**
 * One link's verdict from its heartbeats. A tick is one heartbeat period: if nothing was answered since
 * the previous tick, that heartbeat was missed. `missLimit` misses in a row mark the link down; one
 * answer marks it up again. A link that has never been answered is down once missLimit ticks have
 * passed, so a peer that never answers (wrong secret, dead host) is reported, but not at start-up.
 */
export class LinkTracker {
  private misses = 0;
  private answeredSinceTick = false;
  private upNow = false;
  private everDecided = false;
  private lastRttMs: number | null = null;
  private lastFailure = "no heartbeat answered yet";

  constructor(
    readonly peer: string,
    private readonly missLimit: number,
  ) {}

  answered(rttMs: number): LinkChange | undefined {
    this.answeredSinceTick = true;
    this.misses = 0;
    this.lastRttMs = rttMs;
    if (this.upNow) return undefined;
    this.upNow = true;
    const wasDecided = this.everDecided;
    this.everDecided = true;
    // The first answer after start-up is not news; an answer after the link was down is.
    return wasDecided
      ? { peer: this.peer, up: true, detail: `answering again (round trip ${rttMs.toFixed(1)} ms)` }
      : undefined;
  }

  failed(reason: string): void {
    this.lastFailure = reason;
  }

  tick(): LinkChange | undefined {
    const answered = this.answeredSinceTick;
    this.answeredSinceTick = false;
    if (answered) return undefined;
    this.misses++;
    if (this.misses < this.missLimit || (this.everDecided && !this.upNow)) return undefined;
    this.upNow = false;
    this.everDecided = true;
    return { peer: this.peer, up: false, detail: this.detail() };
  }

  get up(): boolean {
    return this.upNow;
  }

  health(): LinkHealth {
    return {
      peer: this.peer,
      up: this.upNow,
      rttMs: this.lastRttMs === null ? null : Math.round(this.lastRttMs * 100) / 100,
      detail: this.upNow ? "ok" : this.detail(),
      ...(!this.everDecided && { starting: true }),
    };
  }

  private detail(): string {
    return `${this.misses} heartbeat${this.misses === 1 ? "" : "s"} missed in a row (${this.lastFailure})`;
  }
}

export interface PeerLinksOptions {
  readonly intervalMs: number;
  readonly missLimit: number;
  readonly connect: PingerFactory;
  readonly onChange: (change: LinkChange) => void;
  /** Monotonic milliseconds. */
  /** Time and timers; the system clock unless a test or the simulation injects one. */
  readonly clock?: Clock;
}

interface Link {
  readonly tracker: LinkTracker;
  readonly at: PeerAddress;
  timer: { cancel(): void };
  pinger: Pinger | undefined;
  /** A connect or a PING is under way: the next tick does not start another. */
  busy: boolean;
  closed: boolean;
}

/** The heartbeat links of this host: one per peer, kept in step with setPeers(). */
export class PeerLinks {
  private readonly links = new Map<string, Link>();
  private readonly clock: Clock;

  constructor(private readonly options: PeerLinksOptions) {
    this.clock = options.clock ?? systemClock;
  }

  /** Starts links to new peers, drops links to peers no longer listed, reconnects peers that moved. */
  setPeers(peers: ReadonlyMap<string, PeerAddress>): void {
    for (const [peer, link] of this.links) {
      const at = peers.get(peer);
      if (at === undefined || at.address !== link.at.address || at.port !== link.at.port) this.drop(peer);
    }
    for (const [peer, at] of peers) if (!this.links.has(peer)) this.add(peer, at);
  }

  /** Whether the link to `peer` is up; undefined when there is no link to it. */
  isUp(peer: string): boolean | undefined {
    return this.links.get(peer)?.tracker.up;
  }

  health(): LinkHealth[] {
    return [...this.links.values()].map((link) => link.tracker.health()).sort((a, b) => (a.peer < b.peer ? -1 : 1));
  }

  stop(): void {
    for (const peer of [...this.links.keys()]) this.drop(peer);
  }

  private add(peer: string, at: PeerAddress): void {
    const link: Link = {
      tracker: new LinkTracker(peer, this.options.missLimit),
      at,
      timer: { cancel: () => undefined },
      pinger: undefined,
      busy: false,
      closed: false,
    };
    this.links.set(peer, link);
    const every = (): void => {
      link.timer = this.clock.schedule(this.options.intervalMs, () => {
        if (link.closed) return;
        this.beat(link);
        every();
      });
    };
    every();
    this.beat(link, false);
  }

  private drop(peer: string): void {
    const link = this.links.get(peer);
    if (link === undefined) return;
    this.links.delete(peer);
    link.closed = true;
    link.timer.cancel();
    link.pinger?.close();
  }

  /** One heartbeat period: judge the last one, then send the next (connecting first if need be). */
  private beat(link: Link, judge = true): void {
    if (judge) {
      const change = link.tracker.tick();
      if (change) this.options.onChange(change);
    }
    if (link.busy || link.closed) return;
    link.busy = true;
    // A heartbeat gets the whole window the tracker allows before it counts the link down.
    const timeoutMs = this.options.intervalMs * this.options.missLimit;
    void this.send(link, timeoutMs).finally(() => (link.busy = false));
  }

  private async send(link: Link, timeoutMs: number): Promise<void> {
    const { tracker } = link;
    try {
      if (link.pinger === undefined || link.pinger.ended) {
        link.pinger?.close();
        link.pinger = await this.options.connect(tracker.peer, link.at, timeoutMs);
        if (link.closed) return link.pinger.close();
      }
      const sentAt = this.clock.now();
      await link.pinger.ping();
      if (link.closed) return;
      const change = tracker.answered(this.clock.now() - sentAt);
      if (change) this.options.onChange(change);
    } catch (error) {
      tracker.failed(errorMessage(error));
      link.pinger?.close();
      link.pinger = undefined;
    }
  }
}
