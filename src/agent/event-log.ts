// The agent's side of the cluster's event log: every action and decision of this host, with its reason,
// as one record in the store (and one line in the agent's log). Events are the operators' diary; a
// failure to write one is logged and never stops the action it describes. Every agent also trims the
// log to its retention (doing it on two hosts at once is harmless).

import { trimEvents, type EventRetention } from "../cluster/event-retention.js";
import { keys, type EventRecord } from "../cluster/schema.js";
import type { TxnOperation } from "../cluster/etcd-client.js";
import { errorMessage } from "../core/errors.js";
import type { AgentWorld } from "./world.js";

export class EventLog {
  constructor(
    private readonly host: string,
    private readonly world: Pick<AgentWorld, "store" | "wallTime" | "eventId">,
    private readonly log: (line: string) => void,
  ) {}

  /** Records an event; rejects when the store does not take it. */
  async event(kind: string, message: string, volume?: string): Promise<void> {
    const operation = this.put(kind, message, volume);
    await this.world.store.put(operation.key, operation.value);
  }

  /**
   * The store operation that records an event, for a transaction that must record it together with
   * what it describes; the agent's log gets the line now.
   */
  put(kind: string, message: string, volume?: string): TxnOperation & { type: "put" } {
    const record: EventRecord = {
      time: this.world.wallTime().toISOString(),
      host: this.host,
      ...(volume !== undefined && { volume }),
      kind,
      message,
    };
    this.log(`event ${kind}${volume ? ` [${volume}]` : ""}: ${message}`);
    return { type: "put", key: keys.event(this.world.eventId()), value: JSON.stringify(record) };
  }

  /** Records an event in the background: a failure is logged, nothing waits for it. */
  note(kind: string, message: string, volume?: string): void {
    this.track(this.event(kind, message, volume));
  }

  /** Lets background work run on, logging its failure instead of losing it. */
  track(promise: Promise<unknown>): void {
    promise.catch((error: unknown) => this.log(`background: ${errorMessage(error)}`));
  }

  /** Keeps the event log within the retention policy. */
  trim(policy: EventRetention): void {
    trimEvents(this.world.store, policy, this.world.wallTime().getTime()).then(
      (deleted) => deleted > 0 && this.log(`event log trimmed: ${deleted} events past retention deleted`),
      (error: unknown) => this.log(`trimming the event log: ${errorMessage(error)}`),
    );
  }
}
