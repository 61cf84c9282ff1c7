// Waiting for a switchover to finish, and how long the volume could not take writes: from the moment
// the old primary's engine began to stop (the "switchover" event's time minus its stop duration) to
// the new primary's "volume-serving" event. The CLI (volume switchover, host drain, disk moves) and the
// dashboard wait the same way.

import { HavenError } from "../core/errors.js";
import { readEvents } from "./cluster-read.js";
import { keys, parsePrimaryRecord } from "./schema.js";
import type { ClusterStore } from "./store.js";

export interface SwitchoverDone {
  readonly epoch: number;
  /** Milliseconds without a primary serving the volume. */
  readonly pauseMs: number;
}

const STOPPED_IN = /stopped cleanly in (\d+) ms/;

export async function waitForSwitchover(
  client: ClusterStore,
  name: string,
  to: string,
  since: Date,
  timeoutMs: number,
): Promise<SwitchoverDone> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const kv = await client.get(keys.primary(name));
    const primary = kv ? parsePrimaryRecord(kv.value, kv.key) : undefined;
    const refused = (await client.get(keys.handover(name))) === undefined && primary?.host !== to;
    const events = (await readEvents(client)).map((stored) => stored.event).filter((e) => e.volume === name);
    const after = events.filter((e) => Date.parse(e.time) >= since.getTime() - 1000);
    const refusal = after.find((e) => e.kind === "switchover-refused");
    if (refusal) throw new HavenError("HAVEN_ERR_CONFLICT", refusal.message);
    const handed = after.find((e) => e.kind === "switchover" && STOPPED_IN.test(e.message));
    const serving = after.find((e) => e.kind === "volume-serving" && e.host === to);
    if (primary?.host === to && handed && serving) {
      const stopStart = Date.parse(handed.time) - Number(STOPPED_IN.exec(handed.message)![1]);
      return { epoch: primary.epoch, pauseMs: Math.max(0, Date.parse(serving.time) - stopStart) };
    }
    if (refused && !handed)
      throw new HavenError("HAVEN_ERR_CONFLICT", `the switchover of ${name} to ${to} was dropped; see 'haven events'`);
    if (Date.now() > deadline)
      throw new HavenError(
        "HAVEN_ERR_UNAVAILABLE",
        `volume ${name} is not served by ${to} after ${timeoutMs / 1000} s; the request may still complete ('haven events --volume ${name}')`,
      );
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
