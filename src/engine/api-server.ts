// The engine's HTTP API: a thin JSON shell over EngineControl, for `haven volume status|verify|
// resolve-split-brain` and, later, the control plane. Everything a request carries is untrusted: the
// route, the method, the body's size, its JSON and every field are checked here, and a bad request
// gets a 4xx with a coded error naming what is wrong before anything reaches the engine.
//
//   GET  /v1/status                                      200 VolumeStatus
//   POST /v1/verify               {"repair"?: boolean}   202 VerifyStatus (409 if one is running)
//   POST /v1/resolve-split-brain  {"survivor": string}   200 VolumeStatus
//
// Errors are {"error": {"code": "HAVEN_ERR_...", "message": "..."}} with the HTTP status that the
// error registry gives the code.

import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { ERRORS, HavenError, fromSystemError, type ErrorCode } from "../core/errors.js";
import type { EngineControl } from "./status.js";

export interface EngineApiServerOptions {
  /** One line per request that changes something (every non-GET), and per listener error. */
  readonly log?: (line: string) => void;
}

export const MAX_REQUEST_BODY_BYTES = 64 * 1024;
/** A location is a path or HOST:PORT; anything longer is not one. */
const MAX_SURVIVOR_BYTES = 4096;
const MAX_CONNECTIONS = 64;
/** A client has this long to send its headers and body. */
const REQUEST_TIMEOUT_MS = 10_000;
/** stop() waits this long for requests in flight before it drops their connections. */
const STOP_GRACE_MS = 2_000;

export interface ApiErrorBody {
  readonly error: { readonly code: ErrorCode; readonly message: string };
}

interface Reply {
  readonly status: number;
  readonly body: unknown;
  readonly headers?: Readonly<Record<string, string>>;
}

interface ErrorReply extends Reply {
  readonly body: ApiErrorBody;
}

type Handler = (control: EngineControl, body: unknown) => Reply | Promise<Reply>;

interface Route {
  readonly handler: Handler;
  /** Whether the handler reads a JSON body (read, bounded and parsed before it runs). */
  readonly takesBody: boolean;
}

const ROUTES: Readonly<Record<string, Readonly<Record<string, Route>>>> = {
  "/v1/status": {
    GET: { takesBody: false, handler: (control) => ({ status: 200, body: control.status() }) },
  },
  "/v1/verify": {
    POST: {
      takesBody: true,
      handler: (control, body) => ({
        status: 202,
        body: control.startVerify(parseVerifyRequest(body)),
        headers: { location: "/v1/status" },
      }),
    },
  },
  "/v1/resolve-split-brain": {
    POST: {
      takesBody: true,
      handler: async (control, body) => ({
        status: 200,
        body: await control.resolveSplitBrain(parseResolveSplitBrainRequest(body).survivor),
      }),
    },
  },
};

/** A request refused by the API layer itself, with an HTTP status the registry's code may not carry. */
class Refusal extends Error {
  constructor(
    readonly status: number,
    readonly code: ErrorCode,
    message: string,
    readonly headers: Readonly<Record<string, string>> = {},
  ) {
    super(message);
  }
}

/** A path is echoed in messages and the log at most this long (a request line may hold 16 KiB). */
const MAX_ECHOED_PATH_CHARS = 200;

function clip(path: string): string {
  return path.length > MAX_ECHOED_PATH_CHARS ? `${path.slice(0, MAX_ECHOED_PATH_CHARS)}...` : path;
}

const invalid = (message: string): HavenError => new HavenError("HAVEN_ERR_INVALID_REQUEST", message);

function expectObject(body: unknown, known: readonly string[], example: string): Record<string, unknown> {
  if (typeof body !== "object" || body === null || Array.isArray(body))
    throw invalid(`the request body must be a JSON object such as ${example}`);
  for (const key of Object.keys(body)) {
    if (!known.includes(key)) throw invalid(`unknown field "${key}" (known: ${known.join(", ")})`);
  }
  return body as Record<string, unknown>;
}

function typeName(value: unknown): string {
  return value === null ? "null" : Array.isArray(value) ? "array" : typeof value;
}

/** `{"repair"?: boolean}`. */
export function parseVerifyRequest(body: unknown): { repair: boolean } {
  const fields = expectObject(body, ["repair"], `{"repair": false}`);
  const repair = Object.hasOwn(fields, "repair") ? fields.repair : false;
  if (typeof repair !== "boolean") throw invalid(`field "repair" must be a boolean, got ${typeName(repair)}`);
  return { repair };
}

/** `{"survivor": string}`: the location (from the status) whose data survives. */
export function parseResolveSplitBrainRequest(body: unknown): { survivor: string } {
  const example = `{"survivor": "node2:7400"}`;
  const fields = expectObject(body, ["survivor"], example);
  const survivor = fields.survivor;
  if (survivor === undefined) throw invalid(`field "survivor" is required, as in ${example}`);
  if (typeof survivor !== "string") throw invalid(`field "survivor" must be a string, got ${typeName(survivor)}`);
  if (survivor === "" || Buffer.byteLength(survivor) > MAX_SURVIVOR_BYTES)
    throw invalid(`field "survivor" must be a copy's location, 1 to ${MAX_SURVIVOR_BYTES} bytes`);
  return { survivor };
}

/** Reads at most `maxBytes` of body and parses it; an empty body (`curl -X POST`) is read as {}. */
function readJsonBody(request: IncomingMessage, maxBytes: number): Promise<unknown> {
  const tooLarge = (): Refusal =>
    new Refusal(413, "HAVEN_ERR_TOO_LARGE", `the request body exceeds ${maxBytes} bytes`, { connection: "close" });
  const declared = Number(request.headers["content-length"] ?? 0);
  if (declared > maxBytes) return Promise.reject(tooLarge());
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let received = 0;
    const onData = (chunk: Buffer): void => {
      received += chunk.length;
      if (received > maxBytes) {
        // Stop keeping it; the rest is discarded and the connection closed after the reply.
        request.off("data", onData);
        request.resume();
        reject(tooLarge());
        return;
      }
      chunks.push(chunk);
    };
    request.on("data", onData);
    request.once("error", reject);
    // A client that goes away mid-body (or is timed out) ends the wait; after "end" this is a no-op.
    request.once("close", () => reject(invalid("the client closed the connection before sending the whole body")));
    request.once("end", () => {
      const text = Buffer.concat(chunks).toString("utf8");
      if (text.trim() === "") return resolve({});
      try {
        resolve(JSON.parse(text));
      } catch (error) {
        reject(invalid(`the request body is not JSON: ${(error as Error).message}`));
      }
    });
  });
}

function errorReply(error: unknown): ErrorReply {
  if (error instanceof Refusal) {
    return {
      status: error.status,
      body: { error: { code: error.code, message: error.message } },
      headers: error.headers,
    };
  }
  // Anything the engine throws that is not one of ours (a bug) is still answered, as a 500.
  const coded = error instanceof HavenError ? error : fromSystemError(error, "the engine failed");
  return { status: ERRORS[coded.code].httpStatus, body: { error: { code: coded.code, message: coded.message } } };
}

export class EngineApiServer {
  private server: Server | undefined;
  private readonly log: (line: string) => void;

  constructor(
    private readonly control: EngineControl,
    options: EngineApiServerOptions = {},
  ) {
    this.log = options.log ?? ((line) => process.stderr.write(`${line}\n`));
  }

  /** Starts listening; resolves with the bound address as HOST:PORT (the real port when 0 was asked). */
  async listen(host: string, port: number): Promise<string> {
    if (this.server !== undefined) throw new HavenError("HAVEN_ERR_CONFIG", "the engine API is listening already");
    const server = createServer(
      { requestTimeout: REQUEST_TIMEOUT_MS, headersTimeout: REQUEST_TIMEOUT_MS },
      (req, res) => this.serve(req, res),
    );
    server.maxConnections = MAX_CONNECTIONS;
    await new Promise<void>((resolve, reject) => {
      server.once("error", (error: NodeJS.ErrnoException) => {
        const why =
          error.code === "EADDRINUSE"
            ? "the address is in use (another engine API or program listens there); choose another port"
            : error.message;
        reject(new HavenError("HAVEN_ERR_CONFIG", `cannot listen on ${host}:${port} for the engine API: ${why}`));
      });
      server.listen(port, host, resolve);
    });
    server.on("error", (error) => this.log(`api: listener error: ${error.message}`));
    this.server = server;
    const address = server.address() as { address: string; port: number; family: string };
    return address.family === "IPv6" ? `[${address.address}]:${address.port}` : `${address.address}:${address.port}`;
  }

  /** Stops accepting, lets requests in flight finish (for at most STOP_GRACE_MS), then closes. */
  async stop(): Promise<void> {
    const server = this.server;
    if (server === undefined) return;
    this.server = undefined;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeIdleConnections();
    const grace = setTimeout(() => server.closeAllConnections(), STOP_GRACE_MS);
    await closed;
    clearTimeout(grace);
  }

  private serve(request: IncomingMessage, response: ServerResponse): void {
    // The path as sent, without its query; not through URL(), which reads "//x/y" as a host.
    const path = (request.url ?? "/").split("?", 1)[0]!;
    this.route(request, path).then(
      (reply) => this.reply(request, path, response, reply, undefined),
      (error: unknown) => {
        const failed = errorReply(error);
        this.reply(request, path, response, failed, failed.body.error);
      },
    );
  }

  private async route(request: IncomingMessage, path: string): Promise<Reply> {
    const methods = ROUTES[path];
    if (methods === undefined) throw new Refusal(404, "HAVEN_ERR_NOT_FOUND", `no such route: ${clip(path)}`);
    const method = request.method ?? "";
    const route = Object.hasOwn(methods, method) ? methods[method] : undefined;
    if (route === undefined) {
      const allowed = Object.keys(methods).join(", ");
      throw new Refusal(405, "HAVEN_ERR_INVALID_REQUEST", `${path} takes ${allowed}, not ${method}`, {
        allow: allowed,
      });
    }
    const body = route.takesBody ? await readJsonBody(request, MAX_REQUEST_BODY_BYTES) : undefined;
    return await route.handler(this.control, body);
  }

  private reply(
    request: IncomingMessage,
    path: string,
    response: ServerResponse,
    reply: Reply,
    failure: ApiErrorBody["error"] | undefined,
  ): void {
    const text = `${JSON.stringify(reply.body)}\n`;
    response.writeHead(reply.status, {
      "content-type": "application/json",
      "content-length": Buffer.byteLength(text),
      "cache-control": "no-store",
      ...reply.headers,
    });
    response.end(text);
    // Reads are not logged (`haven volume status --watch` polls every second), except when they fail.
    if (request.method !== "GET" || reply.status >= 500) {
      const peer = `${request.socket.remoteAddress ?? "?"}:${request.socket.remotePort ?? "?"}`;
      this.log(
        `api: ${request.method} ${clip(path)} from ${peer}: ${reply.status}` +
          (failure !== undefined ? ` ${failure.code}: ${failure.message}` : ""),
      );
    }
  }
}
