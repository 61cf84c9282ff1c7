// The agent's HTTP API (fastify): what this host runs, for the CLI, the dashboard and monitoring.
// Every request must carry the cluster's API token as a bearer token (compared in constant time);
// request bodies are validated by JSON schema, and every error is JSON with the registry code:
// { "error": { "code": "HAVEN_ERR_...", "message": "..." } }.
//
//   GET  /v1/host                   this host: lease, etcd reachability, event-loop lag, disks, links, volumes
//   GET  /v1/volumes                the engines running here, with their status
//   GET  /v1/volumes/:name          one engine's status (404 when not served here)
//   POST /v1/volumes/:name/verify   { "repair": boolean }: starts an online verify

import { timingSafeEqual, createHash } from "node:crypto";
import Fastify, { type FastifyInstance, type FastifyReply } from "fastify";
import { HavenError } from "../core/errors.js";
import type { DiskHealth, LinkHealth } from "../cluster/schema.js";
import type { EngineControl, VolumeStatus } from "../engine/status.js";

export interface HostHealth {
  readonly name: string;
  readonly leaseHeld: boolean;
  /** Since the send of the last keepalive etcd accepted: how reachable etcd is from here. */
  readonly lastKeepaliveAgoMs: number;
  readonly eventLoopLagMs: number;
  readonly volumes: readonly string[];
  /** The disks' latest probes and the replication links' heartbeats. */
  readonly disks: readonly DiskHealth[];
  readonly links: readonly LinkHealth[];
}

/** What the API asks of the agent. */
export interface AgentView {
  health(): HostHealth;
  engines(): ReadonlyMap<string, EngineControl>;
}

const VERIFY_BODY = {
  type: "object",
  additionalProperties: false,
  required: ["repair"],
  properties: { repair: { type: "boolean" } },
} as const;

export class AgentApiServer {
  private readonly app: FastifyInstance;

  constructor(
    private readonly agent: AgentView,
    token: string,
  ) {
    const expected = digest(token);
    // Strict validation: unknown fields are refused, not silently dropped, and nothing is coerced.
    this.app = Fastify({
      logger: false,
      bodyLimit: 64 * 1024,
      ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
    });
    this.app.addHook("onRequest", async (request, reply) => {
      const header = request.headers.authorization ?? "";
      const given = /^Bearer (.+)$/.exec(header)?.[1];
      if (given === undefined || !timingSafeEqual(digest(given), expected)) {
        return sendError(
          reply,
          401,
          "HAVEN_ERR_UNAUTHORIZED",
          "a valid bearer token is required (the cluster's API token)",
        );
      }
    });
    this.app.setErrorHandler((error: Error & { validation?: unknown; statusCode?: number }, _request, reply) => {
      if (error.validation !== undefined) return sendError(reply, 400, "HAVEN_ERR_INVALID_REQUEST", error.message);
      if (error instanceof HavenError) return sendError(reply, error.httpStatus, error.code, error.message);
      const status =
        error.statusCode !== undefined && error.statusCode >= 400 && error.statusCode < 500 ? error.statusCode : 500;
      return sendError(reply, status, status === 500 ? "HAVEN_ERR_IO" : "HAVEN_ERR_INVALID_REQUEST", error.message);
    });
    this.app.setNotFoundHandler((request, reply) =>
      sendError(reply, 404, "HAVEN_ERR_NOT_FOUND", `no such endpoint: ${request.method} ${request.url}`),
    );
    this.app.get("/v1/host", async () => this.agent.health());
    this.app.get("/v1/volumes", async () => [...this.agent.engines().values()].map((engine) => engine.status()));
    this.app.get<{ Params: { name: string } }>("/v1/volumes/:name", async (request) =>
      this.engine(request.params.name).status(),
    );
    this.app.post<{ Params: { name: string }; Body: { repair: boolean } }>(
      "/v1/volumes/:name/verify",
      { schema: { body: VERIFY_BODY } },
      async (request) => this.engine(request.params.name).startVerify({ repair: request.body.repair }),
    );
  }

  /** Starts listening; resolves with the bound address. */
  async listen(host: string, port: number): Promise<string> {
    try {
      return await this.app.listen({ host, port });
    } catch (error) {
      throw new HavenError(
        "HAVEN_ERR_CONFIG",
        `cannot listen on ${host}:${port} for the API: ${(error as Error).message}`,
      );
    }
  }

  async stop(): Promise<void> {
    await this.app.close();
  }

  private engine(name: string): EngineControl {
    const engine = this.agent.engines().get(name);
    if (engine === undefined)
      throw new HavenError(
        "HAVEN_ERR_NOT_FOUND",
        `volume ${name} is not served on this host ('haven volume show ${name}' says where)`,
      );
    return engine;
  }
}

function digest(text: string): Buffer {
  return createHash("sha256").update(text, "utf8").digest();
}

function sendError(reply: FastifyReply, status: number, code: string, message: string): FastifyReply {
  return reply.code(status).send({ error: { code, message } });
}

export type { VolumeStatus };
