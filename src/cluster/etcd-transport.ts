// HTTP to etcd's JSON gateway, with failover between endpoints and every wait bounded.
//
// Each request opens its own TCP connection, so the client knows exactly whether a request could have
// reached etcd: a failure before the connection opened proves it did not, and any request may then go
// to the next endpoint. A failure after that leaves a write's outcome unknown, so only reads (which are
// safe to repeat) fail over then; a write reports HAVEN_ERR_UNAVAILABLE saying the outcome is unknown,
// because repeating a compare-and-swap elsewhere could report "lost" for a swap that won. A read that
// no endpoint answered says so, with the time it waited and the endpoints: nothing was changed.
//
// Over TLS (https:// endpoints, with the client's identity from the cluster CA) "opened" means the
// handshake finished: etcd reads no request before that. The server must show a host certificate of
// the cluster CA valid for the endpoint's address. Each endpoint's last TLS session is kept and offered
// on the next connection (TLS 1.3 resumption). Measured with bench/etcd/latency.ts on a shared 2-CPU
// machine (load about 10, so noisy): a range read's median is 1.7 ms over plain HTTP, 7.2 ms with a full
// TLS handshake each time, 4.7 ms resumed. A client on one long-lived connection (the etcd3 package over
// gRPC, bench/etcd/etcd3-compare.mjs) reads in 1.3 ms: that is the price of a connection per request,
// kept because it tells exactly whether a failed write could have reached etcd.

import { request, type IncomingMessage } from "node:http";
import assert from "node:assert/strict";
import { connect as netConnect, isIP, type Socket } from "node:net";
import { checkServerIdentity, connect as tlsConnect } from "node:tls";
import { HavenError } from "../core/errors.js";
import { certificateInfo } from "../security/pki.js";
import type { TlsIdentity } from "../security/tls-identity.js";
import { parseHostPort } from "../util/units.js";
import { GrpcCode, parseGatewayError, type JsonObject } from "./etcd-codec.js";

export interface EtcdTransportOptions {
  /** Bound on one call from start to answer, across every endpoint it tries. */
  readonly requestTimeoutMs: number;
  /** Bound on opening a connection to one endpoint, so a dead host costs this much, not the whole call. */
  readonly connectTimeoutMs: number;
  /** Bound on one answer (or one streamed message), so a runaway range cannot exhaust memory. */
  readonly maxResponseBytes: number;
  /** The client's identity, required for https:// endpoints (etcd then asks for a client certificate). */
  readonly tls?: TlsIdentity | undefined;
  /** Offer each endpoint's last TLS session again (default true; false only to measure the difference). */
  readonly tlsSessionResumption?: boolean;
}

export interface Endpoint {
  readonly host: string;
  readonly port: number;
  /** Whether it speaks TLS (https://). */
  readonly tls: boolean;
  /** http://HOST:PORT or https://HOST:PORT, for messages. */
  readonly name: string;
}

/** Whether a call may be repeated on another endpoint after it may have reached etcd. */
export type Repeatable = "read" | "write";

/** An open streaming response (a watch), with the endpoint that serves it. */
export interface EtcdStream {
  readonly endpoint: Endpoint;
  readonly response: IncomingMessage;
  /** Closes the connection; the response then ends with an error. */
  close(): void;
}

/** A failed attempt on one endpoint; `connected` says whether the request may have reached etcd. */
class AttemptFailure extends Error {
  constructor(
    readonly reason: string,
    readonly connected: boolean,
  ) {
    super(reason);
  }
}

/** Accepts "https://host:port", "http://host:port" or "host:port" (plain HTTP). */
export function parseEndpoint(text: string): Endpoint {
  const scheme = /^(https?):\/\//.exec(text)?.[1];
  const bare = scheme !== undefined ? text.slice(scheme.length + 3).replace(/\/$/, "") : text;
  if (/^[a-z]+:\/\//i.test(bare) || bare.includes("/")) {
    throw new HavenError("HAVEN_ERR_CONFIG", `etcd endpoint "${text}" is not https://HOST:PORT or http://HOST:PORT`);
  }
  const { host, port } = parseHostPort(bare, "etcd endpoint");
  if (port === 0) throw new HavenError("HAVEN_ERR_CONFIG", `etcd endpoint "${text}" has port 0`);
  const tls = scheme === "https";
  return { host, port, tls, name: `${tls ? "https" : "http"}://${host.includes(":") ? `[${host}]` : host}:${port}` };
}

export class EtcdTransport {
  /** The token every request carries (etcd's Authorization header) once the client authenticated. */
  authorization: string | undefined;
  private readonly endpoints: readonly Endpoint[];
  /** Index of the endpoint that answered last; calls start there. */
  private preferred = 0;
  /** Each TLS endpoint's last session, offered again on its next connection. */
  private readonly sessions = new Map<string, Buffer>();

  constructor(
    endpoints: readonly string[],
    private readonly options: EtcdTransportOptions,
  ) {
    if (endpoints.length === 0) throw new HavenError("HAVEN_ERR_CONFIG", "no etcd endpoints given");
    this.endpoints = endpoints.map(parseEndpoint);
    const secure = this.endpoints.find((endpoint) => endpoint.tls);
    if (secure !== undefined && options.tls === undefined) {
      throw new HavenError(
        "HAVEN_ERR_CONFIG",
        `etcd endpoint ${secure.name} uses TLS but no client identity was given (the agent's "tls": {"dir": ...}, ` +
          `the CLI's --tls-dir or the context file's "tls"; 'haven cert issue' makes one)`,
      );
    }
  }

  get endpointNames(): string[] {
    return this.endpoints.map((endpoint) => endpoint.name);
  }

  /** POSTs `body` to `path` and returns etcd's JSON answer; `what` names the call in errors. */
  async call(
    path: string,
    body: JsonObject,
    what: string,
    repeatable: Repeatable,
    timeoutMs = this.options.requestTimeoutMs,
  ): Promise<JsonObject> {
    const { stream, text } = await this.send(path, body, what, repeatable, false, timeoutMs);
    const parsed = safeJson(text!);
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
      throw new HavenError(
        "HAVEN_ERR_IO",
        `etcd at ${stream.endpoint.name} answered ${what} with ${text!.slice(0, 200) || "nothing"}`,
      );
    }
    const error = parseGatewayError(parsed);
    if (error !== undefined) throw etcdRefused(stream.endpoint, what, error);
    return parsed as JsonObject;
  }

  /** POSTs `body` to a streaming `path` and returns the response once etcd accepted it. */
  async stream(path: string, body: JsonObject, what: string): Promise<EtcdStream> {
    return (await this.send(path, body, what, "read", true)).stream;
  }

  /**
   * Tries the endpoints in turn from the preferred one until one answers HTTP 200, within one deadline.
   * Unary answers are read fully while the deadline still runs; a stream's deadline ends with its headers.
   */
  private async send(
    path: string,
    body: JsonObject,
    what: string,
    repeatable: Repeatable,
    streaming: boolean,
    timeoutMs = this.options.requestTimeoutMs,
  ): Promise<{ stream: EtcdStream; text: string | undefined }> {
    const payload = Buffer.from(JSON.stringify(body), "utf8");
    const deadlineAt = Date.now() + timeoutMs;
    const failures: string[] = [];
    const count = this.endpoints.length;
    let tried = 0;
    for (; tried < count && Date.now() < deadlineAt; tried++) {
      const index = (this.preferred + tried) % count;
      const endpoint = this.endpoints[index]!;
      let answer: { stream: EtcdStream; text: string | undefined };
      try {
        // A read leaves time for the endpoints after this one, so a hung member cannot use up the call; a
        // write never moves on once sent, so it gets all the time left.
        const shareMs = (deadlineAt - Date.now()) / (repeatable === "read" ? count - tried : 1);
        answer = await this.attempt(endpoint, path, payload, Date.now() + shareMs, streaming, what);
      } catch (error) {
        if (!(error instanceof AttemptFailure)) throw error;
        failures.push(`${endpoint.name}: ${error.reason}`);
        if (error.connected && repeatable === "write") {
          throw new HavenError(
            "HAVEN_ERR_UNAVAILABLE",
            `etcd at ${endpoint.name} failed during ${what} (${error.reason}); the write may or may not have been ` +
              `applied: read the key back before retrying`,
            { cause: error },
          );
        }
        continue;
      }
      const status = answer.stream.response.statusCode;
      if (status === 200) {
        this.preferred = index;
        return answer;
      }
      // etcd refused; only "unavailable" (no leader, a member cut off) is worth asking another member
      // about, and only for a read.
      const text = answer.text ?? "";
      const error = parseGatewayError(safeJson(text));
      if (error === undefined) {
        throw new HavenError(
          "HAVEN_ERR_IO",
          `etcd at ${endpoint.name} answered ${what} with HTTP ${status}: ${text.slice(0, 200).trim()}` +
            (status === 404 ? " (is it etcd 3.4 or later, whose JSON gateway serves /v3/?)" : ""),
        );
      }
      if (error.grpcCode === GrpcCode.UNAVAILABLE && repeatable === "read") {
        failures.push(`${endpoint.name}: ${error.message}`);
        continue;
      }
      throw etcdRefused(endpoint, what, error);
    }
    const untried = count - tried;
    const suffix = untried > 0 ? `; ${untried} more not tried within ${this.options.requestTimeoutMs} ms` : "";
    if (repeatable === "read") {
      // A read changes nothing, so what the operator needs is who did not answer, and for how long.
      throw new HavenError(
        "HAVEN_ERR_UNAVAILABLE",
        `etcd is unreachable for ${what}: ${failures.join("; ")}${suffix}. etcd did not answer within ` +
          `${(timeoutMs / 1000).toFixed(1)} s at ${this.endpointNames.join(", ")}: check that it runs there ` +
          "(a read changes nothing, so it is safe to run again)",
      );
    }
    throw new HavenError(
      "HAVEN_ERR_UNAVAILABLE",
      `etcd is unreachable for ${what}: ${failures.join("; ")}${suffix}; check that etcd runs at ` +
        `${this.endpointNames.join(", ")}`,
    );
  }

  /**
   * One request to one endpoint. Resolves with the whole body, or for a stream that etcd accepted, as
   * soon as the headers arrive; rejects with AttemptFailure when the connection fails or a bound passes.
   */
  private attempt(
    endpoint: Endpoint,
    path: string,
    payload: Buffer,
    deadlineAt: number,
    streaming: boolean,
    what: string,
  ): Promise<{ stream: EtcdStream; text: string | undefined }> {
    return new Promise((resolve, reject) => {
      let connected = false;
      let abortReason: string | undefined;
      const controller = new AbortController();
      const abort = (reason: string): void => {
        abortReason ??= reason;
        controller.abort();
      };
      const remainingMs = Math.max(1, deadlineAt - Date.now());
      const connectTimer = setTimeout(
        () => abort(`no connection within ${this.options.connectTimeoutMs} ms`),
        Math.min(this.options.connectTimeoutMs, remainingMs),
      );
      const deadlineTimer = setTimeout(() => abort(`no answer within ${Math.round(remainingMs)} ms`), remainingMs);
      const clearTimers = (): void => {
        clearTimeout(connectTimer);
        clearTimeout(deadlineTimer);
      };
      const fail = (reason: string): void => {
        clearTimers();
        reject(new AttemptFailure(abortReason ?? reason, connected));
      };
      const opened = (): void => {
        connected = true;
        clearTimeout(connectTimer);
      };
      const req = request({
        host: endpoint.host,
        port: endpoint.port,
        path,
        method: "POST",
        // One connection per request, made here (no agent, no pool): see the file header.
        createConnection: () => this.connect(endpoint, opened),
        signal: controller.signal,
        headers: {
          "content-type": "application/json",
          "content-length": payload.length,
          ...(this.authorization !== undefined && { authorization: this.authorization }),
        },
      });
      req.once("socket", (socket) => {
        // A watch may stay quiet for hours: let the kernel notice a peer that vanished.
        socket.setKeepAlive(true, 5_000);
      });
      // Before the headers, a failure is the attempt's; after them, the response reports it.
      req.on("error", (error) => fail(error.message));
      req.once("response", (response) => {
        const stream: EtcdStream = { endpoint, response, close: () => abort("closed by the client") };
        response.on("error", () => {
          // Seen by the reader as a response that closed before it was complete.
        });
        if (streaming && response.statusCode === 200) {
          clearTimers();
          resolve({ stream, text: undefined });
          return;
        }
        const chunks: Buffer[] = [];
        let bytes = 0;
        response.on("data", (chunk: Buffer) => {
          bytes += chunk.length;
          if (bytes <= this.options.maxResponseBytes) return void chunks.push(chunk);
          clearTimers();
          reject(
            new HavenError(
              "HAVEN_ERR_TOO_LARGE",
              `etcd at ${endpoint.name} answered ${what} with more than ${this.options.maxResponseBytes} bytes; ` +
                `ask for fewer keys at a time`,
            ),
          );
          response.destroy();
        });
        response.once("close", () => {
          if (!response.complete) return fail("the connection closed in the middle of the answer");
          clearTimers();
          resolve({ stream, text: Buffer.concat(chunks).toString("utf8") });
        });
      });
      req.end(payload);
    });
  }

  /** A new connection to `endpoint`; `opened` runs once it can carry a request (after the TLS handshake). */
  private connect(endpoint: Endpoint, opened: () => void): Socket {
    const identity = this.options.tls;
    if (!endpoint.tls) {
      const socket = netConnect({ host: endpoint.host, port: endpoint.port });
      socket.once("connect", opened);
      return socket;
    }
    assert(identity !== undefined, "the constructor refuses https endpoints without an identity");
    const session = this.options.tlsSessionResumption === false ? undefined : this.sessions.get(endpoint.name);
    const socket = tlsConnect({
      host: endpoint.host,
      port: endpoint.port,
      ca: identity.ca,
      cert: identity.cert,
      key: identity.key,
      minVersion: "TLSv1.3",
      ...(isIP(endpoint.host) === 0 && { servername: endpoint.host }),
      ...(session !== undefined && { session }),
      // etcd must show a host certificate of the cluster CA that names the address we dialled.
      checkServerIdentity: (host, certificate) => {
        const mismatch = checkServerIdentity(host, certificate);
        if (mismatch !== undefined) return mismatch;
        const info = certificateInfo(certificate.raw);
        return info.kind === "host"
          ? undefined
          : new Error(`etcd's certificate names ${info.kind} ${info.name}, not a host`);
      },
    });
    socket.once("secureConnect", opened);
    socket.on("session", (ticket: Buffer) => this.sessions.set(endpoint.name, ticket));
    return socket;
  }
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** Maps an error etcd answered with onto the registry, keeping etcd's own words. */
export function etcdRefused(
  endpoint: Endpoint,
  what: string,
  error: { message: string; grpcCode: number },
): HavenError {
  const detail = `etcd at ${endpoint.name} refused ${what}: ${error.message}`;
  if (/user name is empty/.test(error.message))
    return new HavenError(
      "HAVEN_ERR_UNAUTHORIZED",
      `${detail}: etcd has authentication on, and this client gave no credentials (an operator's token, ` +
        `or the host's etcd password)`,
    );
  switch (error.grpcCode) {
    case GrpcCode.NOT_FOUND:
      return new HavenError("HAVEN_ERR_NOT_FOUND", detail);
    case GrpcCode.UNAVAILABLE:
      return new HavenError("HAVEN_ERR_UNAVAILABLE", detail);
    case GrpcCode.UNAUTHENTICATED:
      return new HavenError("HAVEN_ERR_UNAUTHORIZED", detail, { cause: { grpcCode: error.grpcCode } });
    case GrpcCode.PERMISSION_DENIED:
      return new HavenError("HAVEN_ERR_FORBIDDEN", `${detail} (the operator's role does not allow it)`);
    default:
      return new HavenError("HAVEN_ERR_IO", detail);
  }
}
