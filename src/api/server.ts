// The one HTTP stack of Haven's APIs (fastify), shared by the engine API (engine-api.ts) and the agent
// API (agent-api.ts), so both check and answer requests the same way:
// - everything a request carries is untrusted: the route, the method (a known route with the wrong
//   method is 405 with Allow), the body's size (64 KiB, declared or streamed: 413), its JSON (any
//   content type is read as JSON; an empty body is {}) and every field (requests.ts);
// - every error is {"error": {"code": "HAVEN_ERR_...", "message": "..."}} (errors.ts) as
//   application/json, and every answer is JSON with a trailing newline, never cached (the one
//   exception: a handler may answer a TextBody, such as the metrics in Prometheus' text format);
// - bounded (issue 16): 64 connections, at most 16 from one source address, 5 s for a new connection's
//   first request headers (connection-gate.ts), 10 s for a request's headers and 10 s for its body (a
//   slow body is cut with 408 in Haven's error body), stop() waits 2 s for requests in flight before it
//   drops their connections;
// - names and paths a request sent are echoed in messages cut short and escaped (quoteName);
// - one log line per request that changes something (every non-GET) and per failure of the server's
//   own (5xx); reads are not logged (`haven volume status --watch` polls every second);
// - the dashboard's static files (asset(): HTML, JS, CSS, no data in them) are the only answers that
//   are not JSON, and the only ones served without authentication (`open`); its live stream (stream())
//   is server-sent events, authenticated like any route.

import assert from "node:assert/strict";
import type { RequestListener } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import type { TlsOptions } from "node:tls";
import { PassThrough, type Duplex } from "node:stream";
import Fastify, {
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  type FastifyServerFactory,
} from "fastify";
import { HavenError, errorMessage, type ErrorCode } from "../core/errors.js";
import { quoteName } from "../cluster/names.js";
import { ConnectionGate, rawErrorResponse, type ConnectionLimits } from "./connection-gate.js";
import { errorReply, invalidRequest, Refusal, type ApiErrorBody } from "./errors.js";

export const MAX_REQUEST_BODY_BYTES = 64 * 1024;

/** The bounds of one API server; tests shorten the times. */
export interface ApiLimits extends ConnectionLimits {
  /** Connections open at once, from everywhere. */
  readonly maxConnections: number;
  /** A request's headers must arrive within this. */
  readonly headersTimeoutMs: number;
  /** A request's body must arrive within this once its headers have (else 408, and the connection closes). */
  readonly bodyTimeoutMs: number;
}

export const DEFAULT_API_LIMITS: ApiLimits = {
  maxConnections: 64,
  // A CLI or dashboard needs a few; 16 leaves room for three more clients at the total from one flood.
  maxConnectionsPerAddress: 16,
  firstRequestTimeoutMs: 5_000,
  headersTimeoutMs: 10_000,
  bodyTimeoutMs: 10_000,
};

/** An idle keep-alive connection is closed after this (Node's own default). */
const KEEP_ALIVE_TIMEOUT_MS = 5_000;
/** How often Node checks its headers and request timeouts (its default, 30 s, let sockets linger). */
const TIMEOUT_CHECK_INTERVAL_MS = 1_000;
/** stop() waits this long for requests in flight before it drops their connections. */
const STOP_GRACE_MS = 2_000;

/** What a route's handler sees of a request: its path parameters and its parsed JSON body ({} if none). */
export interface ApiRequest {
  readonly params: Readonly<Record<string, string>>;
  readonly body: unknown;
  /** The query string's parameters, each given once (a repeated one is refused with 400). */
  readonly query: Readonly<Record<string, string>>;
}

/** A static file as asset() serves it. */
export interface StaticFile {
  readonly contentType: string;
  readonly body: Buffer;
}

/** One server-sent event stream: `send` writes an event; `closed` aborts when the client goes away. */
export interface EventStream {
  send(event: string, data: unknown): void;
  readonly closed: AbortSignal;
}

/** An answer that is not JSON (the metrics' text exposition): sent as it is, with its content type. */
export class TextBody {
  constructor(
    readonly contentType: string,
    readonly text: string,
  ) {}
}

/** Answers with what it returns (as JSON, or a TextBody as it is); it may set the status and headers on `reply` first. */
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
  /** DEFAULT_API_LIMITS, with these changed. */
  readonly limits?: Partial<ApiLimits>;
  /** Serve HTTPS with these options (a host's certificate; client certificates asked for, not required). */
  readonly https?: TlsOptions;
  /** Paths served without authentication (static files with no data in them). */
  readonly open?: (path: string) => boolean;
}

/** A path of only these characters, and not long, is echoed as it is. */
const PLAIN_PATH = /^[A-Za-z0-9._~/%:-]{1,64}$/;

/** A path as sent, for messages and the log: as is when plain, else cut short, quoted and escaped. */
function clip(path: string): string {
  return PLAIN_PATH.test(path) ? path : quoteName(path);
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
      ? [408, "HAVEN_ERR_INVALID_REQUEST", "the request was not complete in time"]
      : error.code === "HPE_HEADER_OVERFLOW"
        ? [431, "HAVEN_ERR_TOO_LARGE", "the request headers are too large"]
        : [400, "HAVEN_ERR_INVALID_REQUEST", `malformed HTTP request (${error.code ?? "unknown"})`];
  if (socket.writable) socket.write(rawErrorResponse(status, code, message));
  socket.destroy();
}

/** The most characters of one path parameter (fastify's maxParamLength default); a name is 63. */
const MAX_PARAM_CHARS = 100;

/**
 * fastify's own refusals of a path, in Haven's words: the path is echoed cut short and escaped, never
 * as fastify quotes it (whole, raw).
 */
function frameworkRefusal(error: Error & { code?: string }, request: FastifyRequest): unknown {
  if (error.code === "FST_ERR_BAD_URL")
    return new Refusal(400, "HAVEN_ERR_INVALID_REQUEST", `the path ${clip(pathOf(request))} is not valid URL encoding`);
  if (error.code === "FST_ERR_MAX_PARAM_LENGTH")
    return new Refusal(
      414,
      "HAVEN_ERR_INVALID_REQUEST",
      `a segment of the path ${clip(pathOf(request))} is over ${MAX_PARAM_CHARS} characters`,
    );
  return error;
}

/**
 * A body is JSON text in UTF-8 as sent: a compressed body or another charset is refused with 415
 * rather than read as garbage.
 */
function refuseUnsupportedContent(request: FastifyRequest): void {
  const encoding = request.headers["content-encoding"]?.trim().toLowerCase();
  if (encoding !== undefined && encoding !== "" && encoding !== "identity")
    throw new Refusal(
      415,
      "HAVEN_ERR_INVALID_REQUEST",
      `Content-Encoding ${quoteName(encoding)} is not supported; send the body uncompressed`,
    );
  const charset = /;\s*charset\s*=\s*"?([^";\s]*)/i.exec(request.headers["content-type"] ?? "")?.[1]?.toLowerCase();
  if (charset !== undefined && charset !== "utf-8" && charset !== "utf8" && charset !== "us-ascii")
    throw new Refusal(
      415,
      "HAVEN_ERR_INVALID_REQUEST",
      `charset ${quoteName(charset)} is not supported; send JSON in UTF-8 (application/json)`,
    );
}

/** A request's query parameters, each a single string; a parameter given twice is refused. */
function queryOf(request: FastifyRequest): Record<string, string> {
  const query: Record<string, string> = {};
  for (const [key, value] of Object.entries((request.query ?? {}) as Record<string, unknown>)) {
    if (typeof value !== "string")
      throw invalidRequest(`the query parameter ${quoteName(key)} is given more than once`);
    query[key] = value;
  }
  return query;
}

export class ApiServer {
  private readonly app: FastifyInstance;
  private listening = false;
  private stopping: Promise<void> | undefined;

  constructor(private readonly options: ApiServerOptions) {
    const limits = { ...DEFAULT_API_LIMITS, ...options.limits };
    // Over HTTPS the same server, with the same timeouts, on a TLS socket.
    const https = options.https;
    const serverFactory =
      https === undefined
        ? undefined
        : (((handler: RequestListener) =>
            createHttpsServer(
              {
                ...https,
                headersTimeout: limits.headersTimeoutMs,
                connectionsCheckingInterval: TIMEOUT_CHECK_INTERVAL_MS,
                requestTimeout: limits.headersTimeoutMs + limits.bodyTimeoutMs,
                keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
              },
              handler,
            )) as unknown as FastifyServerFactory);
    const app = Fastify({
      logger: false,
      bodyLimit: MAX_REQUEST_BODY_BYTES,
      // Node's own whole-request timeout, a backstop behind the body deadline below.
      requestTimeout: limits.headersTimeoutMs + limits.bodyTimeoutMs,
      keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
      http: { headersTimeout: limits.headersTimeoutMs, connectionsCheckingInterval: TIMEOUT_CHECK_INTERVAL_MS },
      // HEAD is a method like any other: 405 where a route does not take it.
      exposeHeadRoutes: false,
      // While stopping, requests on open connections are still answered (then the connection closes),
      // rather than with fastify's own 503 body.
      return503OnClosing: false,
      // A path fastify cannot decode (`/v1/%zz`), or a parameter over its length, gets Haven's error body too.
      // It runs before any hook, so it authenticates first: without the token, every request is 401.
      frameworkErrors: (error, request, reply) => {
        try {
          options.authenticate?.(request);
        } catch (refusal) {
          return this.fail(request, reply, refusal);
        }
        return this.fail(request, reply, frameworkRefusal(error, request));
      },
      clientErrorHandler: answerClientError,
      ...(serverFactory !== undefined && { serverFactory }),
    });
    this.app = app;
    app.server.maxConnections = limits.maxConnections;
    new ConnectionGate(app.server, limits);
    // A body that does not arrive in time is cut with 408 (the connection then closes: the rest of
    // the body is not read). Node's requestTimeout alone let an authenticated slow body run on.
    app.addHook("preParsing", async (request, _reply, payload) => {
      const timed = new PassThrough();
      const deadline = setTimeout(() => {
        payload.unpipe(timed);
        timed.destroy(
          new Refusal(
            408,
            "HAVEN_ERR_INVALID_REQUEST",
            `the request body did not arrive within ${limits.bodyTimeoutMs} ms`,
            { connection: "close" },
          ),
        );
      }, limits.bodyTimeoutMs);
      const done = (): void => clearTimeout(deadline);
      timed.once("end", done);
      timed.once("close", done);
      request.raw.once("close", done);
      payload.pipe(timed);
      return timed;
    });
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
    const open = options.open ?? (() => false);
    if (authenticate !== undefined)
      app.addHook("onRequest", async (request) => {
        if (!(request.method === "GET" && open(pathOf(request)))) authenticate(request);
      });
    app.addHook("onRequest", async (request) => refuseUnsupportedContent(request));
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
        const query = queryOf(request);
        return this.send(request, reply, await methods[request.method]!({ params, body, query }, reply));
      },
    );
  }

  /**
   * Serves a static file at `path` (GET only): what `file` returns for the path's parameters, or 404
   * when it returns undefined. The file is sent as it is, with its content type, and the browser may
   * run nothing from elsewhere (Content-Security-Policy 'self').
   */
  asset(path: string, file: (params: Readonly<Record<string, string>>) => StaticFile | undefined): void {
    this.app.get(path, async (request, reply) => {
      const found = file(request.params as Record<string, string>);
      if (found === undefined) throw new Refusal(404, "HAVEN_ERR_NOT_FOUND", `no such file: ${clip(pathOf(request))}`);
      return reply
        .header("content-type", found.contentType)
        .header("cache-control", "no-cache")
        .header("x-content-type-options", "nosniff")
        .header("content-security-policy", "default-src 'self'; frame-ancestors 'none'; base-uri 'none'")
        .send(found.body);
    });
  }

  /**
   * Serves server-sent events at `path` (GET only; text/event-stream): `open` is handed the request
   * and the stream, and writes events until the client goes away or the server stops. A comment line
   * every `keepAliveMs` keeps proxies from closing an idle stream.
   */
  stream(path: string, open: (request: ApiRequest, stream: EventStream) => void, keepAliveMs = 15_000): void {
    this.app.get(path, async (request, reply) => {
      const query = queryOf(request);
      const output = new PassThrough();
      const closed = new AbortController();
      const stream: EventStream = {
        send: (event, data) => {
          if (!closed.signal.aborted) output.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
        },
        closed: closed.signal,
      };
      // A refusal (too many streams) throws here, before anything is left to clean up.
      open({ params: request.params as Record<string, string>, body: {}, query }, stream);
      const keepAlive = setInterval(() => output.write(": keep-alive\n\n"), keepAliveMs);
      const close = (): void => {
        clearInterval(keepAlive);
        closed.abort();
        output.end();
      };
      request.raw.socket.once("close", close);
      reply.raw.once("close", close);
      return reply
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-store")
        .header("x-accel-buffering", "no")
        .send(output);
    });
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
    if (body instanceof TextBody)
      return reply
        .header("content-type", body.contentType)
        .header("cache-control", "no-store")
        .send(Buffer.from(body.text));
    return reply
      .header("content-type", "application/json")
      .header("cache-control", "no-store")
      .send(Buffer.from(`${JSON.stringify(body)}\n`));
  }
}
