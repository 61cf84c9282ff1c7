// `haven events --follow`: the past events, then each new one as etcd reports it, until SIGINT/SIGTERM,
// riding out etcd outages (a member restarting, the only member killed for a moment).
//
// The model: the follower remembers the highest revision of an event it has seen (printed or filtered
// out), and from which revision its current watch covers the store. Events are written once under new
// keys, so a revision names one event, and a watch delivers them in revision order: an event at or
// below the remembered revision has been seen, one above it has not.
// - Catch up (at the start, and after etcd compacted the history the follower needed): open a watch
//   from "now" (revision R0), then read every stored event; print those above the remembered revision;
//   the watch then brings everything after R0, and anything it repeats is skipped by revision.
// - Resume (after a watch broke, or could not be opened): watch again from the revision after the
//   last one covered, so nothing written meanwhile is missed or shown twice.
// - While etcd does not answer: one line on stderr ("etcd unreachable, retrying..."), tries again after
//   a pause that doubles up to MAX_RETRY_DELAY_MS, and "reconnected" once a watch is confirmed again.
// - etcd canceled the watch because the revision to resume from is compacted: say so, and catch up
//   (the events themselves are still stored until the retention trims them; only their history is gone).

import { HavenError, errorMessage } from "../../core/errors.js";
import { tryStoredEvent, type StoredEvent } from "../../cluster/cluster-read.js";
import type { EtcdClient } from "../../cluster/etcd-client.js";
import { keys } from "../../cluster/schema.js";
import { abortOnStopSignal, pause } from "../poll.js";

/** The first pause after etcd did not answer; each failed attempt doubles it, up to MAX_RETRY_DELAY_MS. */
export const FIRST_RETRY_DELAY_MS = 250;
export const MAX_RETRY_DELAY_MS = 5_000;

export interface FollowOutput {
  /** Every stored event, in key (time) order. */
  read(): Promise<StoredEvent[]>;
  /** The first read's events (it applies --limit and prints the header). */
  printPast(past: readonly StoredEvent[]): void;
  /** A new event (it applies the filter). */
  print(stored: StoredEvent): void;
  warnMalformed(error: HavenError): void;
  /** A line for stderr about the connection to etcd. */
  say(line: string): void;
}

/** Whether etcd ended a watch because the revision it should start from is compacted away. */
function compacted(error: unknown): boolean {
  return error instanceof HavenError && error.code === "HAVEN_ERR_IO" && /\bcompacted\b/.test(error.message);
}

export async function followEvents(client: EtcdClient, output: FollowOutput): Promise<void> {
  const stop = abortOnStopSignal();
  const aborted = new Promise<"aborted">((resolve) => {
    if (stop.signal.aborted) resolve("aborted");
    else stop.signal.addEventListener("abort", () => resolve("aborted"), { once: true });
  });
  /** The highest revision of an event seen (printed or filtered out). */
  let seen = 0;
  /** The revision the next watch starts from; undefined: catch up by reading instead. */
  let resumeFrom: number | undefined;
  let first = true;
  /** Set while etcd does not answer: the first failure's reason was said. */
  let unreachable = false;
  let delayMs = FIRST_RETRY_DELAY_MS;
  const emit = (stored: StoredEvent): void => {
    if (stored.createRevision <= seen) return;
    seen = stored.createRevision;
    output.print(stored);
  };
  const failed = async (error: unknown): Promise<boolean> => {
    if (compacted(error) && resumeFrom !== undefined) {
      output.say(
        `etcd compacted its history past revision ${resumeFrom}: reading the stored events again ` +
          `(an event written and trimmed meanwhile is missing)`,
      );
      resumeFrom = undefined;
    } else if (!unreachable) {
      output.say(`etcd unreachable, retrying... (${errorMessage(error)})`);
      unreachable = true;
    }
    const slept = await pause(delayMs, stop.signal);
    delayMs = Math.min(delayMs * 2, MAX_RETRY_DELAY_MS);
    return slept;
  };
  try {
    while (!stop.signal.aborted) {
      let pending: StoredEvent[] | undefined = [];
      let ended!: (reason: HavenError | undefined) => void;
      const closed = new Promise<HavenError | undefined>((resolve) => (ended = resolve));
      let watch: ReturnType<EtcdClient["watchPrefix"]> | undefined;
      /** The first revision this watch covers: everything from here on comes through it. */
      let covers: number;
      try {
        // A watch opens with the client's token: log in first (again, after a watch refused its token).
        await client.ready();
        const from = resumeFrom;
        watch = client.watchPrefix(
          keys.events(),
          { ...(from !== undefined && { startRevision: from }), onClose: ended },
          (change) => {
            if (change.type !== "PUT") return;
            const stored = tryStoredEvent(change, output.warnMalformed);
            if (stored === undefined) return;
            if (pending !== undefined) pending.push(stored);
            else emit(stored);
          },
        );
        await watch.ready;
        // Without a start revision, the watch sees what is written after the revision etcd was at.
        covers = from ?? watch.revision + 1;
        if (from === undefined) {
          const past = await output.read();
          const fresh = past.filter((stored) => stored.createRevision > seen);
          if (first) output.printPast(fresh);
          else fresh.forEach((stored) => output.print(stored));
          seen = past.reduce((highest, stored) => Math.max(highest, stored.createRevision), seen);
          first = false;
        }
      } catch (error) {
        watch?.cancel();
        if (!(await failed(error))) return;
        continue;
      }
      if (unreachable) output.say(`reconnected to etcd (going on from revision ${Math.max(seen + 1, covers)})`);
      unreachable = false;
      delayMs = FIRST_RETRY_DELAY_MS;
      const caught = pending;
      pending = undefined;
      caught.forEach(emit);
      const reason = await Promise.race([closed, aborted]);
      watch.cancel();
      if (reason === "aborted" || reason === undefined) return;
      resumeFrom = Math.max(seen + 1, covers);
      if (!(await failed(reason))) return;
    }
  } finally {
    stop.dispose();
  }
}
