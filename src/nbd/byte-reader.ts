// Reads exact byte counts from a socket as promises, for the handshake phase where throughput does not
// matter and straight-line code is clearer. The transmission phase parses 'data' events directly.

import type { Socket } from "node:net";
import { ChunkQueue } from "../util/chunk-queue.js";

export class ConnectionClosedError extends Error {
  constructor(reason: string) {
    super(reason);
    this.name = "ConnectionClosedError";
  }
}

export class ByteReader {
  private readonly queue = new ChunkQueue();
  private waiter: { bytes: number; resolve: (data: Buffer) => void; reject: (error: Error) => void } | undefined;
  private closedReason: string | undefined;
  private readonly onData = (chunk: Buffer): void => {
    this.queue.push(chunk);
    if (this.queue.length > this.maxBufferedBytes) this.socket.pause();
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
    return this.queue.drain();
  }

  close(reason: string): void {
    this.closedReason ??= reason;
    this.serve();
  }

  private serve(): void {
    const waiter = this.waiter;
    if (!waiter) return;
    if (this.queue.length >= waiter.bytes) {
      this.waiter = undefined;
      waiter.resolve(this.queue.take(waiter.bytes));
      if (this.queue.length <= this.maxBufferedBytes && this.socket.isPaused()) this.socket.resume();
    } else if (this.closedReason !== undefined) {
      this.waiter = undefined;
      waiter.reject(new ConnectionClosedError(this.closedReason));
    } else if (this.socket.isPaused()) {
      this.socket.resume();
    }
  }
}
