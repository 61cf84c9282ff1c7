// Reads exact byte counts from a socket as promises, for the handshake phase where throughput does not
// matter and straight-line code is clearer. The transmission phase parses 'data' events directly.

import type { Socket } from "node:net";

export class ConnectionClosedError extends Error {
  constructor(reason: string) {
    super(reason);
    this.name = "ConnectionClosedError";
  }
}

export class ByteReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: { bytes: number; resolve: (data: Buffer) => void; reject: (error: Error) => void } | undefined;
  private closedReason: string | undefined;
  private readonly onData = (chunk: Buffer): void => {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    if (this.buffered > this.maxBufferedBytes) this.socket.pause();
    this.serve();
  };
  private readonly onEnd = (): void => this.close("client closed the connection");
  private readonly onError = (error: Error): void => this.close(`socket error: ${error.message}`);

  constructor(
    private readonly socket: Socket,
    private readonly maxBufferedBytes: number,
  ) {
    socket.on("data", this.onData);
    socket.on("end", this.onEnd);
    socket.on("close", this.onEnd);
    socket.on("error", this.onError);
  }

  read(bytes: number): Promise<Buffer> {
    if (this.waiter) throw new Error("ByteReader: concurrent reads");
    return new Promise((resolve, reject) => {
      this.waiter = { bytes, resolve, reject };
      this.serve();
    });
  }

  /** Stops reading and hands back whatever arrived beyond the handshake. */
  detach(): Buffer[] {
    this.socket.off("data", this.onData);
    this.socket.off("end", this.onEnd);
    this.socket.off("close", this.onEnd);
    this.socket.off("error", this.onError);
    const rest = this.chunks;
    this.chunks = [];
    this.buffered = 0;
    return rest;
  }

  close(reason: string): void {
    this.closedReason ??= reason;
    this.serve();
  }

  private serve(): void {
    const waiter = this.waiter;
    if (!waiter) return;
    if (this.buffered >= waiter.bytes) {
      this.waiter = undefined;
      waiter.resolve(this.take(waiter.bytes));
      if (this.buffered <= this.maxBufferedBytes && this.socket.isPaused()) this.socket.resume();
    } else if (this.closedReason !== undefined) {
      this.waiter = undefined;
      waiter.reject(new ConnectionClosedError(this.closedReason));
    } else if (this.socket.isPaused()) {
      this.socket.resume();
    }
  }

  private take(bytes: number): Buffer {
    const first = this.chunks[0];
    if (first !== undefined && first.length >= bytes) {
      const result = first.subarray(0, bytes);
      if (first.length === bytes) this.chunks.shift();
      else this.chunks[0] = first.subarray(bytes);
      this.buffered -= bytes;
      return result;
    }
    const result = Buffer.allocUnsafe(bytes);
    let filled = 0;
    while (filled < bytes) {
      const chunk = this.chunks[0]!;
      const piece = Math.min(chunk.length, bytes - filled);
      chunk.copy(result, filled, 0, piece);
      filled += piece;
      if (piece === chunk.length) this.chunks.shift();
      else this.chunks[0] = chunk.subarray(piece);
    }
    this.buffered -= bytes;
    return result;
  }
}
