// The dashboard on the agent API: every agent serves it, so it survives the loss of any host. The
// page itself (ui/ at the package root: HTML, JS, CSS, no data in them) is served without
// authentication; every data route below needs a viewer's token at least, as the rest of the API, and
// the actions (dashboard-actions.ts) an operator's.
//
//   GET /  and  /dashboard/FILE        the page and its files (open)
//   GET /v1/dashboard/cluster          one snapshot (dashboard-snapshot.ts)
//   GET /v1/dashboard/events           ?host=&volume=&vm=&since=ISO&limit=N: the newest N events that pass
//   GET /v1/dashboard/tasks            the long jobs started from the dashboard on this agent
//   GET /v1/dashboard/stream           server-sent events: "snapshot" on every change, "event" for each
//                                      new event, "task" for each task's progress (dashboard-feed.ts)

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { HavenError } from "../core/errors.js";
import { readClusterRecords, readEvents } from "../cluster/cluster-read.js";
import { isHostName, isVmName, isVolumeName, quoteName } from "../cluster/names.js";
import type { ClusterStore } from "../cluster/store.js";
import { packageRoot } from "../util/repo-root.js";
import { DashboardFeed } from "./dashboard-feed.js";
import { dashboardSnapshot, filterEvents, type EventFilter } from "./dashboard-snapshot.js";
import type { DashboardTask, DashboardTasks } from "./dashboard-tasks.js";
import { invalidRequest } from "./errors.js";
import type { ApiServer, EventStream, StaticFile } from "./server.js";

/** The page's files, by name, with their types: nothing else under ui/ is served. */
const UI_FILES: Readonly<Record<string, string>> = {
  "index.html": "text/html; charset=utf-8",
  "app.js": "text/javascript; charset=utf-8",
  "views.js": "text/javascript; charset=utf-8",
  "api.js": "text/javascript; charset=utf-8",
  "style.css": "text/css; charset=utf-8",
};

const DEFAULT_EVENTS = 200;
const MAX_EVENTS = 1000;
/** One read of the cluster per second for all live pages (see dashboard-feed.ts). */
const FEED_INTERVAL_MS = 1_000;
/** Live pages one agent serves at once; the API's connection limits are 64, 16 from one address. */
const MAX_STREAMS = 32;

/** Whether `path` is one of the page's files (served without authentication). */
export function isDashboardFile(path: string): boolean {
  if (path === "/" || path === "/dashboard" || path === "/dashboard/") return true;
  const name = /^\/dashboard\/([a-z]+\.[a-z]+)$/.exec(path)?.[1];
  return name !== undefined && Object.hasOwn(UI_FILES, name);
}

export interface DashboardSources {
  readonly store: ClusterStore;
  /** This host's name (the snapshot says who answered). */
  readonly host: string;
  readonly tasks: DashboardTasks;
  readonly log: (line: string) => void;
}

export class DashboardRoutes {
  private readonly feed: DashboardFeed;
  private readonly streams = new Set<EventStream>();
  private readonly files = new Map<string, StaticFile>();

  constructor(private readonly sources: DashboardSources) {
    this.feed = new DashboardFeed({
      store: sources.store,
      servedBy: sources.host,
      intervalMs: FEED_INTERVAL_MS,
      maxListeners: MAX_STREAMS,
      log: sources.log,
    });
  }

  /** Pushes a task's progress to every live page (DashboardTasks' onChange). */
  taskChanged(task: DashboardTask): void {
    for (const stream of this.streams) stream.send("task", task);
  }

  register(server: ApiServer): void {
    server.asset("/", () => this.file("index.html"));
    server.asset("/dashboard", () => this.file("index.html"));
    server.asset("/dashboard/", () => this.file("index.html"));
    server.asset("/dashboard/:file", (params) => this.file(params.file!));
    server.route("/v1/dashboard/cluster", {
      GET: async () => dashboardSnapshot(await readClusterRecords(this.sources.store), this.sources.host, new Date()),
    });
    server.route("/v1/dashboard/events", { GET: (request) => this.events(request.query) });
    server.route("/v1/dashboard/tasks", { GET: () => ({ tasks: this.sources.tasks.list() }) });
    server.stream("/v1/dashboard/stream", (_request, stream) => {
      const leave = this.feed.listen({
        snapshot: (snapshot) => stream.send("snapshot", snapshot),
        event: (event) => stream.send("event", event),
      });
      this.streams.add(stream);
      stream.closed.addEventListener("abort", () => {
        leave();
        this.streams.delete(stream);
      });
    });
  }

  /** Stops the feed (the server closes the streams). */
  stop(): void {
    this.feed.stop();
  }

  /** A file of ui/, read once and kept. */
  private file(name: string): StaticFile | undefined {
    const contentType = UI_FILES[name];
    if (contentType === undefined || !Object.hasOwn(UI_FILES, name)) return undefined;
    let file = this.files.get(name);
    if (file === undefined) {
      file = { contentType, body: readFileSync(join(packageRoot(), "ui", name)) };
      this.files.set(name, file);
    }
    return file;
  }

  private async events(query: Readonly<Record<string, string>>): Promise<{ events: unknown[] }> {
    const known = ["host", "volume", "vm", "since", "limit"];
    for (const key of Object.keys(query))
      if (!known.includes(key))
        throw invalidRequest(`unknown query parameter ${quoteName(key)} (known: ${known.join(", ")})`);
    const filter: { -readonly [K in keyof EventFilter]: EventFilter[K] } = {};
    if (query.host !== undefined) {
      if (!isHostName(query.host)) throw invalidRequest(`host ${quoteName(query.host)} is not a host name`);
      filter.host = query.host;
    }
    if (query.volume !== undefined) {
      if (!isVolumeName(query.volume)) throw invalidRequest(`volume ${quoteName(query.volume)} is not a volume name`);
      filter.volume = query.volume;
    }
    if (query.since !== undefined) {
      const since = new Date(query.since);
      if (!/^\d{4}-\d\d-\d\dT/.test(query.since) || Number.isNaN(since.getTime()))
        throw invalidRequest(`since ${quoteName(query.since)} is not an ISO time such as 2026-01-31T12:00:00Z`);
      filter.since = since;
    }
    let limit = DEFAULT_EVENTS;
    if (query.limit !== undefined) {
      limit = Number(query.limit);
      if (!/^\d+$/.test(query.limit) || limit < 1 || limit > MAX_EVENTS)
        throw invalidRequest(`limit ${quoteName(query.limit)} must be a whole number from 1 to ${MAX_EVENTS}`);
    }
    if (query.vm !== undefined) {
      if (!isVmName(query.vm)) throw invalidRequest(`vm ${quoteName(query.vm)} is not a VM name`);
      const vm = (await readClusterRecords(this.sources.store)).vms.get(query.vm);
      if (vm === undefined) throw new HavenError("HAVEN_ERR_NOT_FOUND", `no VM named ${quoteName(query.vm)}`);
      filter.vm = { name: vm.name, volume: vm.volume };
    }
    return { events: filterEvents(await readEvents(this.sources.store), filter, limit) };
  }
}
