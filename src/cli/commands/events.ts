// `haven events`: the cluster's diary (volume created, failover, copy out of sync...), oldest first,
// one line per event under a header, optionally narrowed to a volume, a host or a time. With --follow
// it then prints each new event as etcd reports it, until Ctrl-C (follow.ts rides out etcd outages).

import { HavenError } from "../../core/errors.js";
import { readEvents, type StoredEvent } from "../../cluster/cluster-read.js";
import { parseCommand, refuseArguments } from "../args.js";
import { renderEvent, renderEventHeader } from "../cluster-render.js";
import { warnIgnored } from "../cluster-report.js";
import { CLUSTER_OPTIONS, CLUSTER_OPTIONS_USAGE, connectCluster } from "../context.js";
import { followEvents } from "./events-follow.js";

const DEFAULT_LIMIT = 50;
const MAX_LIMIT = 100_000;

export const EVENTS_USAGE = `usage: haven events [--volume NAME] [--host NAME] [--since DURATION|TIME] [--limit N] [--follow] [--utc] [--json] [cluster options]

Prints the cluster's events, oldest first, under a header line: time, host, volume, kind and message.
Times are this machine's local time (the header names the offset) unless --utc.

options:
  --volume NAME        only the events of this volume
  --host NAME          only the events this host wrote
  --since WHEN         only the events since WHEN: a duration back from now (90s, 10m, 2h, 1d) or a
                       time (2026-12-05T21:00:00Z, 2026-12-05 21:00 in local time)
  --limit N            the last N events (default ${DEFAULT_LIMIT}, or all since --since; at most ${MAX_LIMIT})
  --follow             then print new events as they happen, until Ctrl-C; when etcd cannot be reached
                       it says so on stderr, tries again, and goes on from the last event it saw
  --utc                times in UTC
  --json               one JSON object per line (times as stored, in UTC; no header)

${CLUSTER_OPTIONS_USAGE}`;

export interface EventFilter {
  readonly volume: string | undefined;
  readonly host: string | undefined;
  /** Only events at or after this time (ms since the epoch). */
  readonly sinceMs: number | undefined;
}

export function matchesFilter(filter: EventFilter, { event }: StoredEvent): boolean {
  return (
    (filter.volume === undefined || event.volume === filter.volume) &&
    (filter.host === undefined || event.host === filter.host) &&
    (filter.sinceMs === undefined || Date.parse(event.time) >= filter.sinceMs)
  );
}

function parseLimit(text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const limit = Number(text);
  if (!/^\d+$/.test(text) || limit < 1 || limit > MAX_LIMIT) {
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `--limit must be a whole number from 1 to ${MAX_LIMIT}, got "${text}"\n\n${EVENTS_USAGE}`,
    );
  }
  return limit;
}

const UNIT_MS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * --since: a duration back from `nowMs` ("90s", "10m", "2h", "1d") or a time Date.parse reads (ISO 8601
 * with a zone, or without one in local time); the time it names, in ms since the epoch.
 */
export function parseSince(text: string, nowMs: number): number {
  const duration = /^(\d{1,9})([smhd])$/.exec(text);
  if (duration !== null) return nowMs - Number(duration[1]) * UNIT_MS[duration[2]!]!;
  // A date and time: "2026-12-05T21:00:00Z", "2026-12-05 21:00" (local), "2026-12-05" (local midnight).
  const dateOnly = /^\d{4}-\d{2}-\d{2}$/.test(text);
  const time =
    /^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}/.test(text) || dateOnly ? Date.parse(dateOnly ? `${text}T00:00` : text) : NaN;
  if (Number.isNaN(time))
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `--since takes a duration (90s, 10m, 2h, 1d) or a time (2026-12-05T21:00:00Z, 2026-12-05 21:00), got "${text}"\n\n${EVENTS_USAGE}`,
    );
  return time;
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
      since: { type: "string" },
      limit: { type: "string" },
      follow: { type: "boolean" },
      utc: { type: "boolean" },
      json: { type: "boolean" },
    },
    EVENTS_USAGE,
  );
  if (parsed === undefined) return 0; // --help was printed
  const { values, positionals } = parsed;
  refuseArguments(positionals, EVENTS_USAGE);
  const since = values.since as string | undefined;
  const filter: EventFilter = {
    volume: values.volume as string | undefined,
    host: values.host as string | undefined,
    sinceMs: since === undefined ? undefined : parseSince(since, Date.now()),
  };
  const limit = parseLimit(values.limit as string | undefined, since === undefined ? DEFAULT_LIMIT : MAX_LIMIT);
  const render = { utc: values.utc === true };
  const client = connectCluster(values);
  const print = (stored: StoredEvent): void => {
    if (!matchesFilter(filter, stored)) return;
    process.stdout.write(values.json ? `${JSON.stringify(stored.event)}\n` : renderEvent(stored.event, render));
  };
  /** The first read: the last `limit` matching events. */
  const printPast = (past: readonly StoredEvent[]): void => {
    if (values.json !== true) process.stdout.write(renderEventHeader(render));
    past
      .filter((stored) => matchesFilter(filter, stored))
      .slice(-limit)
      .forEach(print);
  };
  const read = async (): Promise<StoredEvent[]> => {
    const ignored: HavenError[] = [];
    const past = await readEvents(client, (error) => ignored.push(error));
    warnIgnored(ignored, "events");
    return past;
  };

  if (values.follow !== true) {
    printPast(await read());
    return 0;
  }
  await followEvents(client, {
    read,
    printPast,
    print,
    warnMalformed,
    say: (line) => process.stderr.write(`haven: ${line}\n`),
  });
  return 0;
}
