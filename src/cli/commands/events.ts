// `haven events`: the cluster's diary (volume created, failover, copy out of sync...), oldest first,
// one line per event, optionally narrowed to a volume or a host. With --follow it then prints each new
// event as etcd reports it, until Ctrl-C; a watch that breaks is resumed where it stopped.

import { HavenError, errorMessage } from "../../core/errors.js";
import { readEvents, tryStoredEvent, type StoredEvent } from "../../cluster/cluster-read.js";
import type { EtcdClient } from "../../cluster/etcd-client.js";
import { keys } from "../../cluster/schema.js";
import { parseCommand, refuseArguments } from "../args.js";
import { renderEvent } from "../cluster-render.js";
import { warnIgnored } from "../cluster-report.js";
import { CLUSTER_OPTIONS, CLUSTER_OPTIONS_USAGE, connectCluster } from "../context.js";
import { abortOnStopSignal, pause } from "../poll.js";

const DEFAULT_LIMIT = 50;
const MAX_LIMIT = 100_000;
/** Pause before watching again after a watch broke, so a flapping etcd is not hammered. */
const REWATCH_DELAY_MS = 1000;

export const EVENTS_USAGE = `usage: haven events [--volume NAME] [--host NAME] [--limit N] [--follow] [--json] [cluster options]

Prints the cluster's events, oldest first: time, host, volume, kind and message.

options:
  --volume NAME        only the events of this volume
  --host NAME          only the events this host wrote
  --limit N            the last N events (default ${DEFAULT_LIMIT}, at most ${MAX_LIMIT})
  --follow             then print new events as they happen, until Ctrl-C
  --json               one JSON object per line

${CLUSTER_OPTIONS_USAGE}`;

interface Filter {
  readonly volume: string | undefined;
  readonly host: string | undefined;
}

function matches(filter: Filter, { event }: StoredEvent): boolean {
  return (
    (filter.volume === undefined || event.volume === filter.volume) &&
    (filter.host === undefined || event.host === filter.host)
  );
}

function parseLimit(text: string | undefined): number {
  if (text === undefined) return DEFAULT_LIMIT;
  const limit = Number(text);
  if (!/^\d+$/.test(text) || limit < 1 || limit > MAX_LIMIT) {
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `--limit must be a whole number from 1 to ${MAX_LIMIT}, got "${text}"\n\n${EVENTS_USAGE}`,
    );
  }
  return limit;
}

const warnMalformed = (error: HavenError): void => {
  process.stderr.write(`haven: skipped an event: ${error.message} [${error.code}]\n`);
};

export async function events(argv: string[]): Promise<number> {
  const parsed = parseCommand(
    argv,
    {
      ...CLUSTER_OPTIONS,
      volume: { type: "string" },
      host: { type: "string" },
      limit: { type: "string" },
      follow: { type: "boolean" },
      json: { type: "boolean" },
    },
    EVENTS_USAGE,
  );
  if (parsed === undefined) return 0; // --help was printed
  const { values, positionals } = parsed;
  refuseArguments(positionals, EVENTS_USAGE);
  const filter: Filter = { volume: values.volume as string | undefined, host: values.host as string | undefined };
  const limit = parseLimit(values.limit as string | undefined);
  const client = connectCluster(values);
  const print = (stored: StoredEvent): void => {
    if (!matches(filter, stored)) return;
    process.stdout.write(values.json ? `${JSON.stringify(stored.event)}\n` : renderEvent(stored.event));
  };
  const printPast = async (): Promise<Set<string>> => {
    const ignored: HavenError[] = [];
    const past = await readEvents(client, (error) => ignored.push(error));
    warnIgnored(ignored, "events");
    past
      .filter((stored) => matches(filter, stored))
      .slice(-limit)
      .forEach(print);
    return new Set(past.map((stored) => stored.key));
  };

  if (values.follow !== true) {
    await printPast();
    return 0;
  }
  await follow(client, printPast, print);
  return 0;
}

/**
 * Prints the past events, then each new one until SIGINT/SIGTERM. The watch starts before the past is
 * read, so no event falls between the two; one that is in both is printed once.
 */
async function follow(
  client: EtcdClient,
  printPast: () => Promise<Set<string>>,
  print: (stored: StoredEvent) => void,
): Promise<void> {
  const stop = abortOnStopSignal();
  let pending: StoredEvent[] | undefined = [];
  let printed: Set<string> | undefined;
  const onEvent = (stored: StoredEvent): void => {
    if (pending !== undefined) pending.push(stored);
    else if (!printed?.has(stored.key)) print(stored);
  };
  let startRevision: number | undefined;
  const aborted = new Promise<"aborted">((resolve) => {
    if (stop.signal.aborted) resolve("aborted");
    else stop.signal.addEventListener("abort", () => resolve("aborted"), { once: true });
  });
  try {
    while (!stop.signal.aborted) {
      // A watch opens with the client's token: log in first (again, after a watch refused its token).
      try {
        await client.ready();
      } catch (error) {
        process.stderr.write(`haven: ${errorMessage(error)}; watching again\n`);
        if (!(await pause(REWATCH_DELAY_MS, stop.signal))) return;
        continue;
      }
      let ended!: (reason: HavenError | undefined) => void;
      const closed = new Promise<HavenError | undefined>((resolve) => (ended = resolve));
      const watch = client.watchPrefix(
        keys.events(),
        { ...(startRevision !== undefined && { startRevision }), onClose: ended },
        (change) => {
          if (change.type !== "PUT") return;
          const stored = tryStoredEvent(change, warnMalformed);
          if (stored !== undefined) onEvent(stored);
        },
      );
      await watch.ready;
      if (pending !== undefined) {
        printed = await printPast();
        const caught = pending;
        pending = undefined;
        caught.forEach(onEvent);
      }
      const reason = await Promise.race([closed, aborted]);
      watch.cancel();
      if (reason === "aborted" || reason === undefined) return;
      process.stderr.write(`haven: ${reason.message} [${reason.code}]; watching again\n`);
      startRevision = watch.revision + 1;
      if (!(await pause(REWATCH_DELAY_MS, stop.signal))) return;
    }
  } finally {
    stop.dispose();
  }
}
