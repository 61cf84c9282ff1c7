// The engine's side of a connection to a replica server: connect and authenticate within a deadline,
// then pipelined requests matched to replies by request id. Every request has a timeout; a timeout, a
// lost connection or a protocol violation by the server (a reply nobody asked for, a frame that is not
// a reply) ends the connection, rejects every pending request with one HAVEN_ERR_IO saying what
// happened, and is reported once through onClose. A reply with an error status rejects its request
// with a ReplicaRequestError carrying the status. With a TLS identity the connection is mutual TLS
// under the cluster CA, and the server's certificate must name the host the caller expects
// (serverName): a certificate of another host of the cluster is refused like a stranger's.

import { connect, type Socket } from "node:net";
import { connect as connectTls } from "node:tls";
import { HavenError } from "../core/errors.js";
import { clientTlsOptions, type TlsIdentity } from "../security/tls-identity.js";
import type { CreateOptions } from "./port.js";
import { FRAME_TYPE_NAMES, FrameType, ReplyStatus } from "./protocol/constants.js";
import { authenticateServer, frame, FrameConnection } from "./protocol/connection.js";
import type { Frame } from "./protocol/frame-codec.js";
import { encodeOpenRequest } from "./protocol/payloads.js";

export const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
export const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;

export class ReplicaRequestError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = "ReplicaRequestError";
  }
}

export interface ReplicaClientOptions {
  /** Deadline for the TCP connection and the authentication together. */
  readonly connectTimeoutMs?: number;
  /** Deadline for each request's reply; past it the whole connection is given up. */
  readonly requestTimeoutMs?: number;
  /** Names the server in messages and logs, e.g. "replica tcp://10.0.0.2:7400". */
  readonly label?: string;
  readonly log?: (line: string) => void;
  /** This host's identity: the connection is then mutual TLS, and `serverName` is required. */
  readonly tls?: TlsIdentity;
  /** The host whose certificate the server must present (its host name in the cluster, not its address). */
  readonly serverName?: string;
}

interface Pending {
  readonly type: number;
  readonly resolve: (reply: Frame) => void;
  readonly reject: (error: Error) => void;
  /** performance.now() past which the request has timed out. */
  readonly deadline: number;
}

/** How often, as a share of the request timeout, pending requests are checked against their deadline. */
const SWEEPS_PER_TIMEOUT = 10;

type RequestFields = Partial<Omit<Frame, "type" | "requestId">>;

export class ReplicaClient {
  /** Called once when the connection ends, for whatever reason (close() included), with that reason. */
  onClose: ((reason: HavenError) => void) | undefined;
  private nextRequestId = 1n;
  /** In the order they were sent, so the first one is the oldest. */
  private readonly pending = new Map<bigint, Pending>();
  private ended: HavenError | undefined;
  /**
   * One timer checks the oldest request's deadline, instead of a timer per request: at queue depth 32
   * setting and clearing a timer per request was a measurable share of the engine's CPU.
   */
  private readonly sweeper: NodeJS.Timeout;

  private constructor(
    private readonly connection: FrameConnection,
    readonly label: string,
    private readonly requestTimeoutMs: number,
    private readonly log: (line: string) => void,
  ) {
    connection.listen((reply) => this.receive(reply));
    this.sweeper = setInterval(() => this.sweep(), Math.max(5, requestTimeoutMs / SWEEPS_PER_TIMEOUT));
    this.sweeper.unref();
    connection.socket.on("close", () => {
      const failure = connection.failed;
      const what = failure && failure.message !== "connection closed" ? failure.message : "closed by the peer";
      this.end(new HavenError("HAVEN_ERR_IO", `${this.label}: connection lost (${what})`));
    });
  }

  static async connect(
    host: string,
    port: number,
    secret: Buffer,
    options: ReplicaClientOptions = {},
  ): Promise<ReplicaClient> {
    const label = options.label ?? `replica server ${host}:${port}`;
    const timeoutMs = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const { tls, serverName } = options;
    if (tls !== undefined && serverName === undefined)
      throw new HavenError(
        "HAVEN_ERR_CONFIG",
        `cannot connect to ${label} over TLS without the host name its certificate must carry (serverName)`,
      );
    const socket =
      tls === undefined
        ? connect({ host, port, noDelay: true })
        : connectTls({ host, port, ...clientTlsOptions(tls, serverName as string) });
    socket.setNoDelay(true);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      socket.destroy();
    }, timeoutMs);
    let handshaking = true;
    try {
      await connected(socket, tls === undefined ? "connect" : "secureConnect");
      handshaking = false;
      const connection = new FrameConnection(socket);
      await authenticateServer(connection, secret);
      if (socket.destroyed) throw new Error(connection.failed?.message ?? "connection closed");
      return new ReplicaClient(
        connection,
        label,
        options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS,
        options.log ?? ((line) => process.stderr.write(`${line}\n`)),
      );
    } catch (error) {
      socket.destroy();
      if (timedOut)
        throw new HavenError("HAVEN_ERR_IO", `cannot connect to ${label}: no answer within ${timeoutMs} ms`);
      if (tls !== undefined && handshaking && isTlsRefusal(error))
        throw new HavenError(
          "HAVEN_ERR_CONFIG",
          `cannot connect to ${label}: TLS refused: ${(error as Error).message} (both hosts need certificates from ` +
            `the cluster CA, and the server's must name host ${serverName as string})`,
          { cause: error },
        );
      const code = error instanceof HavenError ? error.code : "HAVEN_ERR_IO";
      throw new HavenError(code, `cannot connect to ${label}: ${(error as Error).message}`, { cause: error });
    } finally {
      clearTimeout(timer);
    }
  }

  /** Why the connection ended, once it has. */
  get closed(): HavenError | undefined {
    return this.ended;
  }

  /**
   * Sends one request and resolves with its OK reply. `pieces`, when given, is the payload, sent as
   * it is (no copy into one buffer).
   */
  request(type: number, fields: RequestFields = {}, pieces?: readonly Buffer[]): Promise<Frame> {
    if (this.ended) return Promise.reject(this.ended);
    const requestId = this.nextRequestId++;
    return new Promise((resolve, reject) => {
      this.pending.set(requestId, { type, resolve, reject, deadline: performance.now() + this.requestTimeoutMs });
      const request = frame(type, fields, requestId);
      if (pieces === undefined) this.connection.send(request);
      else this.connection.sendPieces(request, pieces);
    });
  }

  openReplica(name: string, create?: CreateOptions, disk?: string): Promise<Frame> {
    return this.request(FrameType.OPEN_REPLICA, { payload: encodeOpenRequest(name, create, disk) });
  }

  /** Ends the connection on purpose; pending requests are rejected. Never throws. */
  close(): void {
    this.end(new HavenError("HAVEN_ERR_IO", `${this.label}: connection closed by this side`));
  }

  /** A reply the server sent that breaks the protocol ends the connection. */
  protocolViolation(reason: string): void {
    this.log(`${this.label}: protocol violation: ${reason}; disconnecting`);
    this.end(new HavenError("HAVEN_ERR_IO", `${this.label}: protocol violation: ${reason}`));
  }

  private receive(reply: Frame): void {
    if (this.ended) return;
    if (reply.type !== FrameType.REPLY)
      return this.protocolViolation(`got a ${FRAME_TYPE_NAMES[reply.type]} frame where only replies may come`);
    const waiter = this.pending.get(reply.requestId);
    if (waiter === undefined) return this.protocolViolation(`reply for unknown request #${reply.requestId}`);
    this.pending.delete(reply.requestId);
    if (reply.status === ReplyStatus.OK) waiter.resolve(reply);
    else waiter.reject(new ReplicaRequestError(reply.status, reply.payload.toString("utf8").slice(0, 4096)));
  }

  /** The oldest request past its deadline ends the connection (every request shares its fate). */
  private sweep(): void {
    const oldest = this.pending.values().next().value as Pending | undefined;
    if (oldest === undefined || performance.now() < oldest.deadline) return;
    this.end(
      new HavenError(
        "HAVEN_ERR_IO",
        `${this.label} timed out after ${this.requestTimeoutMs} ms on ${FRAME_TYPE_NAMES[oldest.type] ?? oldest.type}`,
      ),
    );
  }

  private end(reason: HavenError): void {
    if (this.ended) return;
    this.ended = reason;
    clearInterval(this.sweeper);
    this.connection.socket.destroy();
    for (const waiter of this.pending.values()) waiter.reject(reason);
    this.pending.clear();
    this.onClose?.(reason);
  }
}

/**
 * Whether an error during the TLS handshake is a refusal (a configuration problem: certificates,
 * names, a TLS/plain mismatch) rather than a lost link. A lost link is a system error (ECONNREFUSED,
 * ECONNRESET...); a refusal is OpenSSL's (ERR_SSL_*), node's check of the server's certificate
 * (CERT_HAS_EXPIRED, UNABLE_TO_VERIFY_LEAF_SIGNATURE...) or checkServerIdentity's, which has no code.
 */
function isTlsRefusal(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  return code === undefined || !/^E[A-Z]+$/.test(code);
}

/** Resolves once the socket is connected (`event`: TLS's secureConnect); rejects if it errors or closes first. */
function connected(socket: Socket, event: "connect" | "secureConnect"): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (error?: Error): void => {
      socket.off(event, onConnect);
      socket.off("error", done);
      socket.off("close", onClose);
      if (error) reject(error);
      else resolve();
    };
    const onConnect = (): void => done();
    const onClose = (): void => done(new Error("connection closed before it was established"));
    socket.on(event, onConnect);
    socket.on("error", done);
    socket.on("close", onClose);
  });
}
