// Puts one connection's replies on its socket, in completion order. Replies completed in the same turn
// of the event loop leave in one writev (the socket is corked at the first and uncorked once the loop
// has run every completion that was ready). Large READ replies can instead be sent with sendfile(2)
// from a pool thread: while one is in progress the socket belongs to that thread, so later replies
// wait in an outbox, and Node's own queue must be empty before the thread may start.

import type { Socket } from "node:net";
import { TLSSocket } from "node:tls";
import { HavenError } from "../core/errors.js";
import { nativeIo } from "../block/native.js";
import type { BufferPool } from "../util/buffer-pool.js";

/** Where a zero-copy reply's data lives. */
export interface FileSource {
  readonly fd: number;
  readonly position: number;
}

type Outgoing =
  | { readonly kind: "buffers"; readonly buffers: Buffer[]; readonly pooled: boolean }
  | {
      readonly kind: "file";
      readonly header: Buffer;
      readonly source: FileSource;
      readonly length: number;
      readonly done: (error?: unknown) => void;
    };

export class ReplyWriter {
  /** The socket's descriptor, when it has one sendfile can use. */
  readonly socketFd: number | undefined;
  private corked = false;
  private outbox: Outgoing[] = [];
  private fileSendBusy = false;
  private waitingForFlush = false;

  constructor(
    private readonly socket: Socket,
    private readonly pool: BufferPool,
    /** Reads what sendfile could not send (the socket filled up) so Node can send it. */
    private readonly readRest: (position: number, target: Buffer) => Promise<void>,
    /** A reply was broken off mid-way: the stream is unusable. */
    private readonly abort: (reason: string) => void,
  ) {
    // sendfile would put file bytes on the wire unencrypted: never on a TLS socket.
    const fd =
      socket instanceof TLSSocket ? undefined : (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
    this.socketFd = typeof fd === "number" && fd >= 0 ? fd : undefined;
  }

  get busy(): boolean {
    return this.fileSendBusy || this.outbox.length > 0;
  }

  /** Queues buffers; pooled ones go back to the pool once the socket has taken them. */
  send(buffers: Buffer[], pooled = false): void {
    if (this.busy) {
      this.outbox.push({ kind: "buffers", buffers, pooled });
      return;
    }
    this.writeBuffers(buffers, pooled);
  }

  /** Sends `header` then `length` bytes of the file with sendfile, in its turn among the other replies. */
  sendFromFile(header: Buffer, source: FileSource, length: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.outbox.push({
        kind: "file",
        header,
        source,
        length,
        done: (error) => (error === undefined ? resolve() : reject(error)),
      });
      this.drainOutbox();
    });
  }

  private drainOutbox(): void {
    while (this.outbox.length > 0 && !this.fileSendBusy) {
      const next = this.outbox[0]!;
      if (next.kind === "buffers") {
        this.outbox.shift();
        this.writeBuffers(next.buffers, next.pooled);
        continue;
      }
      if (this.socket.destroyed) {
        this.outbox.shift();
        next.done(new HavenError("HAVEN_ERR_IO", "connection closed before the reply could be sent"));
        continue;
      }
      this.uncork();
      if (this.socket.writableLength > 0) {
        this.waitingForFlush = true; // resumed by the last write's callback
        return;
      }
      this.outbox.shift();
      this.fileSendBusy = true;
      void this.runFileSend(next).finally(() => {
        this.fileSendBusy = false;
        this.drainOutbox();
      });
    }
  }

  private async runFileSend(unit: Extract<Outgoing, { kind: "file" }>): Promise<void> {
    const total = unit.header.length + unit.length;
    let sent: number;
    try {
      sent = await nativeIo().sendFileReply(
        this.socketFd!,
        unit.header,
        unit.source.fd,
        unit.source.position,
        unit.length,
      );
    } catch (error) {
      const bytesSent = (error as { bytesSent?: number }).bytesSent ?? 0;
      if (bytesSent > 0) this.abort(`reply broken off after ${bytesSent} bytes: ${(error as Error).message}`);
      return unit.done(error);
    }
    if (sent < total) {
      // The socket filled up: the rest goes through Node, which waits for room without a pool thread.
      const dataSent = Math.max(0, sent - unit.header.length);
      const rest = this.pool.take(unit.length - dataSent);
      try {
        await this.readRest(unit.source.position + dataSent, rest);
      } catch (error) {
        this.pool.give(rest);
        if (sent > 0) this.abort(`reply broken off after ${sent} bytes: ${(error as Error).message}`);
        return unit.done(error);
      }
      if (sent < unit.header.length) this.writeBuffers([unit.header.subarray(sent)], false);
      this.writeBuffers([rest], true);
    }
    unit.done();
  }

  private writeBuffers(buffers: Buffer[], pooled: boolean): void {
    if (this.socket.destroyed || !this.socket.writable) {
      if (pooled) for (const buffer of buffers) this.pool.give(buffer);
      return;
    }
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      setImmediate(this.uncorkLater);
    }
    for (const buffer of buffers) {
      // A pooled buffer is reusable once the socket has handed it to the kernel (or failed).
      if (pooled) {
        this.socket.write(buffer, () => {
          this.pool.give(buffer);
          this.afterWrite();
        });
      } else {
        this.socket.write(buffer, this.afterWrite);
      }
    }
  }

  private readonly afterWrite = (): void => {
    if (this.waitingForFlush && (this.socket.writableLength === 0 || this.socket.destroyed)) {
      this.waitingForFlush = false;
      this.drainOutbox();
    }
  };

  private uncork(): void {
    if (!this.corked) return;
    this.corked = false;
    this.socket.uncork();
  }

  private readonly uncorkLater = (): void => this.uncork();
}
