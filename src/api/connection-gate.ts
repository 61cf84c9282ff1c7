// The connection bounds of an API server, so that whoever reaches its port cannot lock others out
// (issue 16): a flood of idle sockets used to fill all 64 connections for about 20 s, since Node only
// reaps a connection that never sends a request when its headers timeout is checked (every 30 s).
// - at most `maxConnectionsPerAddress` connections from one source address, within the server's total;
//   one more is answered 503 in Haven's error body and closed at once;
// - a connection must send its first request's headers within `firstRequestTimeoutMs`, or it is
//   closed: an idle socket holds a slot for seconds, not until Node's next check.
// Request bodies have their own deadline (server.ts, preParsing).

import { STATUS_CODES, type Server } from "node:http";
import type { Socket } from "node:net";
import type { ErrorCode } from "../core/errors.js";

/** How long a refused connection may take to read its 503 before it is dropped. */
const REFUSAL_LINGER_MS = 1000;

export interface ConnectionLimits {
  readonly maxConnectionsPerAddress: number;
  readonly firstRequestTimeoutMs: number;
}

/** The raw HTTP answer for a refusal made before any request exists (there is nothing to route). */
export function rawErrorResponse(status: number, code: ErrorCode, message: string): string {
  const body = `${JSON.stringify({ error: { code, message } })}\n`;
  return (
    `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\ncontent-type: application/json\r\n` +
    `cache-control: no-store\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`
  );
}

export class ConnectionGate {
  /** Open connections by source address; an address with none is not kept. */
  private readonly open = new Map<string, number>();
  /** Connections that have not sent a complete request yet, with the timer that closes them. */
  private readonly waiting = new Map<Socket, NodeJS.Timeout>();

  constructor(
    server: Server,
    private readonly limits: ConnectionLimits,
  ) {
    server.on("connection", (socket: Socket) => this.admit(socket));
    server.on("request", (request: { socket: Socket }) => this.started(request.socket));
  }

  /** How many connections `address` has open now (for tests and metrics). */
  connectionsFrom(address: string): number {
    return this.open.get(address) ?? 0;
  }

  private admit(socket: Socket): void {
    const address = socket.remoteAddress ?? "?";
    const count = (this.open.get(address) ?? 0) + 1;
    if (count > this.limits.maxConnectionsPerAddress) {
      const message = `too many connections from ${address} (at most ${this.limits.maxConnectionsPerAddress}); close idle ones`;
      socket.end(rawErrorResponse(503, "HAVEN_ERR_UNAVAILABLE", message), () => socket.destroy());
      // The answer is best effort: a client that does not read it does not keep the socket.
      setTimeout(() => socket.destroy(), REFUSAL_LINGER_MS).unref();
      return;
    }
    this.open.set(address, count);
    const timer = setTimeout(() => {
      this.waiting.delete(socket);
      socket.destroy();
    }, this.limits.firstRequestTimeoutMs);
    timer.unref();
    this.waiting.set(socket, timer);
    socket.once("close", () => {
      this.started(socket);
      const left = (this.open.get(address) ?? 1) - 1;
      if (left === 0) this.open.delete(address);
      else this.open.set(address, left);
    });
  }

  /** The connection sent a request: it is no longer idle-before-its-first-request. */
  private started(socket: Socket): void {
    const timer = this.waiting.get(socket);
    if (timer === undefined) return;
    clearTimeout(timer);
    this.waiting.delete(socket);
  }
}
