// The agent's HTTP API (`haven agent`, on the config's api.listen): what this host runs, for the CLI,
// the dashboard and monitoring. It sees the agent only through AgentView (src/agent/view.ts); the
// `haven agent` command puts the two together. Every request must name its caller (callers.ts: the
// cluster's API token, an operator's token, or an operator's certificate over HTTPS); reads need the
// viewer role, a verify the operator role. Bodies are checked field by field and every error is JSON with the registry
// code, as in every Haven API (server.ts): { "error": { "code": "HAVEN_ERR_...", "message": "..." } }.
//
//   GET  /v1/host                   this host: lease, etcd reachability, event-loop lag, disks, links, volumes
//   GET  /v1/volumes                the engines running here, with their status
//   GET  /v1/volumes/:name          one engine's status (404 when not served here)
//   POST /v1/volumes/:name/verify   { "repair": boolean }: starts an online verify
//   GET  /v1/vms                    the VMs whose QEMU runs here, with their health on several parameters
//   GET  /v1/vms/:name              one of them (404 when it does not run here)
//   GET  /v1/disks                  this host's disks: identity, state, size, free, the copies on each
//   GET  /metrics                   Prometheus metrics, text format 0.0.4 (metrics/agent-metrics.ts,
//                                   docs/metrics.md); the viewer role, as every read
//
// With the agent's etcd store (options.dashboard), it also serves the web dashboard: the page at / and
// /dashboard/ (the only paths open without a token), its data under /v1/dashboard/ (dashboard-routes.ts)
// and its actions (dashboard-actions.ts).

import { HavenError } from "../core/errors.js";
import { isVmName, isVolumeName, quoteName } from "../cluster/names.js";
import type { EngineControl } from "../engine/status.js";
import type { AgentView } from "../agent/view.js";
import type { FastifyReply, FastifyRequest } from "fastify";
import type { TlsOptions } from "node:tls";
import { callerResolver, requireRole, type Caller, type CallerSources } from "./callers.js";
import { parseVerifyRequest } from "./requests.js";
import { ApiServer, TextBody, type ApiLimits } from "./server.js";
import { AgentMetricsRegistry, METRICS_CONTENT_TYPE } from "./metrics/agent-metrics.js";
import { havenVersion } from "./metrics/version.js";
import type { ClusterStore } from "../cluster/store.js";
import { DashboardActions } from "./dashboard-actions.js";
import { DashboardRoutes, isDashboardFile } from "./dashboard-routes.js";
import { DashboardTasks } from "./dashboard-tasks.js";

/** What the dashboard needs beyond the agent's view: the cluster's state, and a way to act as an operator. */
export interface DashboardOptions {
  /** The agent's own etcd client. */
  readonly store: ClusterStore;
  /** An etcd client logged in as operator `name` with their token (so etcd's RBAC applies to them). */
  readonly storeAs: (name: string, token: string) => ClusterStore;
  /** This host's name. */
  readonly host: string;
}

export interface AgentApiServerOptions {
  /** One line per request that changes something (every non-GET), and per listener error; stderr by default. */
  readonly log?: (line: string) => void;
  /** Operators' tokens and revoked certificates, beyond the cluster's API token. */
  readonly callers?: Omit<CallerSources, "clusterToken">;
  /** The server's bounds, when not DEFAULT_API_LIMITS (tests). */
  readonly limits?: Partial<ApiLimits>;
  /** Serve HTTPS with the host's certificate (an operator's certificate then names its caller). */
  readonly https?: TlsOptions;
  /** Serve the web dashboard over the cluster's state. */
  readonly dashboard?: DashboardOptions;
}

export class AgentApiServer {
  private readonly server: ApiServer;
  private readonly dashboard: DashboardRoutes | undefined;

  constructor(
    private readonly agent: AgentView,
    token: string,
    options: AgentApiServerOptions = {},
  ) {
    const resolve = callerResolver({ clusterToken: token, ...options.callers });
    this.server = new ApiServer({
      what: "agent API",
      failure: "the agent failed",
      authenticate: (request) => {
        const caller = resolve(request.headers.authorization, request.socket);
        this.callers.set(request, caller);
        // Every route reads at least: a caller without even the viewer role learns nothing.
        requireRole(caller, "viewer", `${request.method} ${request.url.split("?", 1)[0]!.slice(0, 200)}`);
      },
      ...(options.limits !== undefined && { limits: options.limits }),
      ...(options.https !== undefined && { https: options.https }),
      ...(options.dashboard !== undefined && { open: isDashboardFile }),
      log: options.log ?? ((line) => process.stderr.write(`${line}\n`)),
    });
    const dashboard = options.dashboard;
    if (dashboard !== undefined) {
      const tasks = new DashboardTasks((task) => this.dashboard?.taskChanged(task));
      this.dashboard = new DashboardRoutes({
        store: dashboard.store,
        host: dashboard.host,
        tasks,
        log: options.log ?? ((line) => process.stderr.write(`${line}\n`)),
      });
      this.dashboard.register(this.server);
      new DashboardActions({
        store: dashboard.store,
        storeAs: dashboard.storeAs,
        callerOf: (reply) => this.caller(reply),
        tasks,
      }).register(this.server);
    }
    this.server.route("/v1/host", { GET: () => this.agent.health() });
    this.server.route("/v1/volumes", {
      GET: () => [...this.agent.engines().values()].map((engine) => engine.status()),
    });
    this.server.route("/v1/volumes/:name", { GET: (request) => this.engine(request.params.name!).status() });
    this.server.route("/v1/vms", { GET: () => this.agent.vms() });
    this.server.route("/v1/disks", { GET: () => this.agent.disks() });
    const metrics = new AgentMetricsRegistry(this.agent, havenVersion());
    this.server.route("/metrics", { GET: async () => new TextBody(METRICS_CONTENT_TYPE, await metrics.render()) });
    this.server.route("/v1/vms/:name", {
      GET: (request) => {
        const vm = this.agent.vms().find((candidate) => candidate.name === request.params.name);
        if (vm === undefined)
          throw new HavenError(
            "HAVEN_ERR_NOT_FOUND",
            isVmName(request.params.name!)
              ? `VM ${request.params.name} does not run on this host`
              : `${quoteName(request.params.name!)} is not a VM name`,
          );
        return vm;
      },
    });
    this.server.route("/v1/volumes/:name/verify", {
      POST: (request, reply) => {
        requireRole(this.caller(reply), "operator", "an online verify");
        const options = parseVerifyRequest(request.body, { repairRequired: true });
        return this.engine(request.params.name!).startVerify(options);
      },
    });
  }

  /** Starts listening; resolves with the bound address as HOST:PORT (the real port when 0 was asked). */
  listen(host: string, port: number): Promise<string> {
    return this.server.listen(host, port);
  }

  /** Stops accepting, lets requests in flight finish (for at most 2 s), then closes. */
  stop(): Promise<void> {
    this.dashboard?.stop();
    return this.server.stop();
  }

  private readonly callers = new WeakMap<FastifyRequest, Caller>();

  /** The caller the request was authenticated as (every request is, before it is routed). */
  private caller(reply: FastifyReply): Caller {
    return this.callers.get(reply.request)!;
  }

  private engine(name: string): EngineControl {
    const engine = this.agent.engines().get(name);
    if (engine === undefined)
      throw new HavenError(
        "HAVEN_ERR_NOT_FOUND",
        isVolumeName(name)
          ? `volume ${name} is not served on this host ('haven volume show ${name}' says where)`
          : `${quoteName(name)} is not a volume name`,
      );
    return engine;
  }
}
