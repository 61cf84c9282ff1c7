// The one HTTP stack of Haven's APIs (fastify), shared by the engine API (engine-api.ts) and the agent
// API (agent-api.ts), so both check and answer requests the same way:
// - everything a request carries is untrusted: the route, the method (a known route with the wrong
//   method is 405 with Allow), the body's size (64 KiB, declared or streamed: 413), its JSON (any
//   content type is read as JSON; an empty body is {}) and every field (requests.ts);
// - every error is {"error": {"code": "HAVEN_ERR_...", "message": "..."}} (errors.ts) as
//   application/json, and every answer is JSON with a trailing newline, never cached;
// - bounded: 64 connections, 10 s for a request's headers and body, stop() waits 2 s for requests in
//   flight before it drops their connections;
// - one log line per request that changes something (every non-GET) and per failure of the server's
//   own (5xx); reads are not logged (`haven volume status --watch` polls every second).

import assert from "node:assert/strict";
import { STATUS_CODES } from "node:http";
import type { AddressInfo } from "node:net";
import type { Duplex } from "node:stream";
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import { HavenError, errorMessage, type ErrorCode } from "../core/errors.js";
import { errorReply, invalidRequest, Refusal, type ApiErrorBody } from "./errors.js";

export const MAX_REQUEST_BODY_BYTES = 64 * 1024;
const MAX_CONNECTIONS = 64;
/** A client has this long to send its headers and body. */
const REQUEST_TIMEOUT_MS = 10_000;
/** An idle keep-alive connection is closed after this (Node's own default). */
const KEEP_ALIVE_TIMEOUT_MS = 5_000;
/** stop() waits this long for requests in flight before it drops their connections. */
const STOP_GRACE_MS = 2_000;
/** A path is echoed in messages and the log at most this long (a request line may hold 16 KiB). */
const MAX_ECHOED_PATH_CHARS = 200;

/** What a route's handler sees of a request: its path parameters and its parsed JSON body ({} if none). */
export interface ApiRequest {
  readonly params: Readonly<Record<string, string>>;
  readonly body: unknown;
}

/** Answers with what it returns (as JSON); it may set the status and headers on `reply` first. */
export type RouteHandler = (request: ApiRequest, reply: FastifyReply) => unknown;

export interface ApiServerOptions {
  /** What the server is, for messages: "engine API", "agent API". */
  readonly what: string;
  /** What failed underneath when a handler throws something other than a HavenError ("the engine failed"). */
  readonly failure: string;
  /** Checks every request before it is routed (authentication); throws a HavenError to refuse it. */
  readonly authenticate?: (request: FastifyRequest) => void;
  /** One line per request that changes something, per 5xx and per listener error. */
  readonly log: (line: string) => void;
}

function clip(path: string): string {
  return path.length > MAX_ECHOED_PATH_CHARS ? `${path.slice(0, MAX_ECHOED_PATH_CHARS)}...` : path;
}

/** The path as sent, without its query. */
function pathOf(request: FastifyRequest): string {
  return request.url.split("?", 1)[0]!;
}

/**
 * Answers what is not HTTP, or not in time, on the socket itself (no request exists to route), with
 * the same error body, then closes the connection.
 */
function answerClientError(error: NodeJS.ErrnoException, socket: Duplex): void {
  if (error.code === "ECONNRESET" || socket.destroyed) return;
  const [status, code, message]: [number, ErrorCode, string] =
    error.code === "ERR_HTTP_REQUEST_TIMEOUT"
      ? [408, "HAVEN_ERR_INVALID_REQUEST", `the request was not complete within ${REQUEST_TIMEOUT_MS} ms`]
      : error.code === "HPE_HEADER_OVERFLOW"
        ? [431, "HAVEN_ERR_TOO_LARGE", "the request headers are too large"]
        : [400, "HAVEN_ERR_INVALID_REQUEST", `malformed HTTP request (${error.code ?? error.message})`];
  const body = `${JSON.stringify({ error: { code, message } } satisfies ApiErrorBody)}\n`;
  if (socket.writable) {
    socket.write(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\ncontent-type: application/json\r\n` +
        `content-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
    );
  }
  socket.destroy();
}

export class ApiServer {
  private readonly app: FastifyInstance;
  private listening = false;
  private stopping: Promise<void> | undefined;

  constructor(private readonly options: ApiServerOptions) {
    const app = Fastify({
      logger: false,
      bodyLimit: MAX_REQUEST_BODY_BYTES,
      requestTimeout: REQUEST_TIMEOUT_MS,
      keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
      http: { headersTimeout: REQUEST_TIMEOUT_MS },
      // HEAD is a method like any other: 405 where a route does not take it.
      exposeHeadRoutes: false,
      // While stopping, requests on open connections are still answered (then the connection closes),
      // rather than with fastify's own 503 body.
      return503OnClosing: false,
      // A path fastify cannot decode (`/v1/%zz`), or a parameter over its length, gets Haven's error body too.
      frameworkErrors: (error, request, reply) => this.fail(request, reply, error),
      clientErrorHandler: answerClientError,
    });
    this.app = app;
    app.server.maxConnections = MAX_CONNECTIONS;
    // Plain JSON.parse, whatever the content type (`curl -d` sends a form type): an own "__proto__"
    // key is then one more unknown field that requests.ts refuses, and never reaches a prototype.
    app.removeAllContentTypeParsers();
    app.addContentTypeParser("*", { parseAs: "string" }, (_request, text, done) => {
      const source = text as string;
      if (source.trim() === "") return done(null, {});
      try {
        done(null, JSON.parse(source));
      } catch (error) {
        done(invalidRequest(`the request body is not JSON: ${errorMessage(error)}`), undefined);
      }
    });
    const authenticate = options.authenticate;
    if (authenticate !== undefined) app.addHook("onRequest", async (request) => authenticate(request));
    app.setErrorHandler((error, request, reply) => this.fail(request, reply, error));
    app.setNotFoundHandler((request, reply) =>
      this.fail(request, reply, new Refusal(404, "HAVEN_ERR_NOT_FOUND", `no such route: ${clip(pathOf(request))}`)),
    );
  }

  /**
   * Serves `path` (with `:param` segments) for the methods given; any other method is 405, refused
   * before the body is read.
   */
  route(path: string, methods: Readonly<Record<string, RouteHandler>>): void {
    const allowed = Object.keys(methods).join(", ");
    this.app.all(
      path,
      {
        onRequest: async (request) => {
          if (!Object.hasOwn(methods, request.method))
            throw new Refusal(
              405,
              "HAVEN_ERR_INVALID_REQUEST",
              `${clip(pathOf(request))} takes ${allowed}, not ${request.method}`,
              { allow: allowed },
            );
        },
      },
      async (request, reply) => {
        const params = request.params as Record<string, string>;
        const body = request.body === undefined ? {} : request.body;
        return this.send(request, reply, await methods[request.method]!({ params, body }, reply));
      },
    );
  }

  /** Starts listening (once); resolves with the bound address as HOST:PORT (the real port when 0 was asked). */
  async listen(host: string, port: number): Promise<string> {
    const { what } = this.options;
    if (this.listening) throw new HavenError("HAVEN_ERR_CONFIG", `the ${what} is listening already`);
    this.listening = true;
    try {
      await this.app.listen({ host, port });
    } catch (error) {
      const why =
        (error as NodeJS.ErrnoException).code === "EADDRINUSE"
          ? `the address is in use (another ${what} or program listens there); choose another port`
          : errorMessage(error);
      throw new HavenError("HAVEN_ERR_CONFIG", `cannot listen on ${host}:${port} for the ${what}: ${why}`, {
        cause: error,
      });
    }
    this.app.server.on("error", (error) => this.options.log(`api: listener error: ${error.message}`));
    const address = this.app.server.address() as AddressInfo;
    return address.family === "IPv6" ? `[${address.address}]:${address.port}` : `${address.address}:${address.port}`;
  }

  /** Stops accepting, lets requests in flight finish (for at most STOP_GRACE_MS), then closes. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= this.close();
    return this.stopping;
  }

  private async close(): Promise<void> {
    const grace = setTimeout(() => this.app.server.closeAllConnections(), STOP_GRACE_MS);
    try {
      await this.app.close();
    } finally {
      clearTimeout(grace);
    }
  }

  private fail(request: FastifyRequest, reply: FastifyReply, error: unknown): FastifyReply {
    const failed = errorReply(error, { maxBodyBytes: MAX_REQUEST_BODY_BYTES, failure: this.options.failure });
    return this.send(request, reply.code(failed.status).headers(failed.headers), failed.body, failed.body.error);
  }

  /**
   * Every answer goes out here, as JSON bytes (so fastify adds no charset to the content type), and
   * is logged before it leaves.
   */
  private send(
    request: FastifyRequest,
    reply: FastifyReply,
    body: unknown,
    failure?: ApiErrorBody["error"],
  ): FastifyReply {
    if (request.method !== "GET" || reply.statusCode >= 500) {
      const peer = `${request.socket.remoteAddress ?? "?"}:${request.socket.remotePort ?? "?"}`;
      this.options.log(
        `api: ${request.method} ${clip(pathOf(request))} from ${peer}: ${reply.statusCode}` +
          (failure !== undefined ? ` ${failure.code}: ${failure.message}` : ""),
      );
    }
    assert(
      body !== undefined,
      `the ${this.options.what}'s handler for ${request.method} ${pathOf(request)} answered nothing`,
    );
    return reply
      .header("content-type", "application/json")
      .header("cache-control", "no-store")
      .send(Buffer.from(`${JSON.stringify(body)}\n`));
  }
}
