// The transmission phase of one NBD connection: parse requests from the socket, validate them, run
// them against the export's block device concurrently, and send replies as each completes (out of
// order; the cookie matches them up). Everything a connection holds is bounded: requests in flight,
// payload bytes in flight and reply bytes queued; past a bound the server stops reading the socket
// until the backlog drains, so a fast or hostile client cannot make the server grow without limit.
// WRITE payloads also count against the server's WriteBudget, shared by all its connections: a WRITE's
// length is reserved before its payload is read, and reading waits while the budget is spent.

import type { Socket } from "node:net";
import { TLSSocket } from "node:tls";
import { AssertionError } from "node:assert";
import { errorMessage } from "../core/errors.js";
import { nbdErrnoOf } from "./errno.js";
import type { Extent } from "../block/device.js";
import {
  AllocationState,
  BASE_ALLOCATION_CONTEXT_ID,
  Command,
  COMMAND_NAMES,
  CommandFlag,
  NbdErrno,
  REQUEST_MAGIC,
  Size,
} from "./constants.js";
import type { Negotiated } from "./handshake.js";
import type { NbdLimits } from "./export.js";
import type { BufferPool } from "../util/buffer-pool.js";
import { ChunkQueue } from "../util/chunk-queue.js";
import { SlabReader } from "../util/slab-reader.js";
import { ReplyWriter, type FileSource } from "./reply-writer.js";
import type { WriteBudget } from "./write-budget.js";
import type { ServedRequests } from "../util/served-requests.js";
import {
  blockStatusChunk,
  errorChunk,
  OFFSET_DATA_PREFIX,
  offsetDataChunk,
  offsetHoleChunk,
  simpleReply,
  type Cookie,
  type StatusDescriptor,
} from "./replies.js";

/** Which flags each command accepts (FUA is accepted on every command, as advertised). */
const ALLOWED_FLAGS: Record<number, number> = {
  [Command.READ]: CommandFlag.FUA | CommandFlag.DF,
  [Command.WRITE]: CommandFlag.FUA,
  [Command.DISC]: CommandFlag.FUA,
  [Command.FLUSH]: CommandFlag.FUA,
  [Command.TRIM]: CommandFlag.FUA,
  [Command.CACHE]: CommandFlag.FUA,
  [Command.WRITE_ZEROES]: CommandFlag.FUA | CommandFlag.NO_HOLE | CommandFlag.FAST_ZERO,
  [Command.BLOCK_STATUS]: CommandFlag.FUA | CommandFlag.REQ_ONE,
};

/** Structured READs at least this long are checked for holes, which are sent as OFFSET_HOLE chunks. */
const HOLE_CHECK_MIN_BYTES = 64 * 1024;
/**
 * READ replies at least this long whose data sits in one file go out with sendfile(2) from a pool
 * thread: no copy through a buffer, and the event loop does not carry the socket copy. Smaller ones
 * are cheaper through the page-cache fast path and a plain socket write.
 */
const ZERO_COPY_MIN_BYTES = 64 * 1024;
/** How long a connection we have ended may wait for the client to close its side. */
const CLOSE_LINGER_MS = 5000;
/** Largest extent length a BLOCK_STATUS descriptor can carry (u32, kept 4 KiB-aligned). */
const MAX_DESCRIPTOR_BYTES = 0xfffff000;

interface Request {
  readonly type: number;
  readonly flags: number;
  readonly cookie: Cookie;
  readonly offset: number;
  readonly length: number;
}

/** A request refused before it reached the device: the errno and the reason for the log. */
class Refusal {
  constructor(
    readonly errno: number,
    readonly reason: string,
  ) {}
}

export interface SessionCounters {
  requests: number;
  errors: number;
  bytesRead: number;
  bytesWritten: number;
}

export class TransmissionSession {
  readonly counters: SessionCounters = { requests: 0, errors: 0, bytesRead: 0, bytesWritten: 0 };
  /** Resolves when the connection is gone. */
  readonly closed: Promise<string>;

  /** Reads into recycled memory (see SlabReader); undefined until start(), or where Node.js cannot. */
  private reader: SlabReader | undefined;
  private readonly received = new ChunkQueue((pieces) => this.reader?.release(pieces));
  private readonly replies: ReplyWriter;
  private pendingWrite: Request | undefined;
  /** The pending WRITE's length is reserved in the server's budget (its payload may be read). */
  private pendingWriteReserved = false;
  /** Withdraws a reservation still queued in the budget. */
  private cancelBudgetWait: (() => void) | undefined;
  private waitedForBudget = false;
  private inflightRequests = 0;
  private inflightBytes = 0;
  private ending: string | undefined;
  private shuttingDown = false;
  private resolveClosed!: (reason: string) => void;
  private refusalsLogged = 0;

  constructor(
    private readonly socket: Socket,
    private readonly session: Negotiated,
    private readonly limits: NbdLimits,
    private readonly log: (line: string) => void,
    private readonly pool: BufferPool,
    private readonly budget: WriteBudget,
  ) {
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    this.replies = new ReplyWriter(
      socket,
      pool,
      (position, target) => this.session.export.device.read(position, target),
      (reason) => this.abort(reason),
    );
  }

  start(): void {
    const socket = this.socket;
    const onChunk = (chunk: Buffer): void => {
      if (this.ending !== undefined) return this.reader?.release(chunk); // after DISC or a fatal error, input is ignored
      this.received.push(chunk);
      this.pump();
    };
    socket.on("drain", () => this.pump());
    socket.on("end", () => this.finish(this.partialRequestNote("client closed the connection")));
    socket.on("error", (error) => this.finish(`socket error: ${error.message}`));
    socket.on("close", () => {
      this.ending ??= this.partialRequestNote("connection closed");
      this.releasePendingWrite();
      this.resolveClosed(this.ending);
    });
    // What arrived with the handshake comes first; attach() then delivers what the socket buffered.
    for (const chunk of this.session.leftover) this.received.push(chunk);
    // Slab reading works on a plain socket's own handle; a TLS socket's reads go through its TLS layer.
    this.reader = socket instanceof TLSSocket ? undefined : SlabReader.attach(socket, onChunk);
    if (this.reader === undefined) socket.on("data", onChunk);
    // The client may have gone while the handshake was finishing, before these listeners existed.
    if (socket.destroyed) {
      this.ending ??= "connection closed during the handshake";
      this.resolveClosed(this.ending);
      return;
    }
    this.pump();
    if (socket.readableEnded) this.finish(this.partialRequestNote("client closed the connection"));
  }

  /** Server shutdown: new requests get ESHUTDOWN; the connection closes once in-flight work is done. */
  shutdown(): void {
    this.shuttingDown = true;
    this.pump();
    this.closeIfIdle();
  }

  /** One line on where this connection stands, for the shutdown log. */
  describeState(): string {
    return `inflight=${this.inflightRequests} ending=${this.ending ?? "-"} destroyed=${this.socket.destroyed} pendingWrite=${this.pendingWrite ? this.pendingWrite.length : 0} repliesQueued=${this.replies.busy}`;
  }

  /** Drops the connection at once (shutdown past its grace time). */
  destroy(): void {
    this.socket.destroy();
  }

  get inflight(): number {
    return this.inflightRequests;
  }

  private pump(): void {
    while (this.ending === undefined) {
      if (this.saturated()) {
        this.socket.pause();
        return;
      }
      const pending = this.pendingWrite;
      if (pending !== undefined) {
        if (!this.pendingWriteReserved) {
          // Nothing of the payload is read until its bytes fit the server's budget.
          if (this.cancelBudgetWait !== undefined) return; // still waiting, the socket paused
          const reservation = this.budget.reserve(pending.length, () => {
            this.cancelBudgetWait = undefined;
            this.pendingWriteReserved = true;
            if (this.ending === undefined) this.pump();
            else this.releasePendingWrite();
          });
          if (!reservation.granted) {
            this.cancelBudgetWait = reservation.cancel;
            if (!this.waitedForBudget) {
              this.waitedForBudget = true;
              this.log(
                `WRITE of ${pending.length} bytes waits for the server's write budget (logged once per connection)`,
              );
            }
            this.socket.pause();
            return;
          }
          this.pendingWriteReserved = true;
        }
        if (this.received.length < pending.length) break;
        this.pendingWrite = undefined;
        this.pendingWriteReserved = false;
        this.dispatch(pending, this.received.takePieces(pending.length), pending.length);
        continue;
      }
      if (this.received.length < Size.REQUEST_HEADER) break;
      const request = this.parseHeader();
      if (request === undefined) return;
      if (request.type === Command.WRITE && !(request.length > this.limits.maxPayloadBytes)) {
        this.pendingWrite = request;
        continue;
      }
      if (request.type === Command.WRITE) {
        // A payload this large cannot be skipped without buffering it: the spec allows a hard disconnect.
        this.abort(`WRITE of ${request.length} bytes exceeds the ${this.limits.maxPayloadBytes}-byte maximum payload`);
        return;
      }
      this.dispatch(request, undefined);
    }
    if (this.socket.isPaused() && this.ending === undefined) this.socket.resume();
  }

  private saturated(): boolean {
    return (
      this.inflightRequests >= this.limits.maxInflightRequests ||
      this.inflightBytes >= this.limits.maxInflightBytes ||
      this.socket.writableLength >= this.limits.maxQueuedReplyBytes
    );
  }

  private parseHeader(): Request | undefined {
    const header = this.received.take(Size.REQUEST_HEADER);
    const magic = header.readUInt32BE(0);
    if (magic !== REQUEST_MAGIC) {
      this.abort(`bad request magic 0x${magic.toString(16)}; the stream cannot be resynchronised`);
      return undefined;
    }
    const offsetHigh = header.readUInt32BE(16);
    // Offsets beyond 2^53 are past the end of any device; keep them recognisably out of range.
    const offset =
      offsetHigh >= 0x200000 ? Number.MAX_SAFE_INTEGER : offsetHigh * 0x100000000 + header.readUInt32BE(20);
    return {
      flags: header.readUInt16BE(4),
      type: header.readUInt16BE(6),
      cookie: { high: header.readUInt32BE(8), low: header.readUInt32BE(12) },
      offset,
      length: header.readUInt32BE(24),
    };
  }

  /** A WRITE's payload, once nothing needs it any more (its memory is the socket reader's to reuse). */
  private releasePayload(payload: Buffer[] | undefined): void {
    if (payload !== undefined) this.reader?.release(payload);
  }

  /** Gives back the budget of a WRITE whose payload was never dispatched (the connection ended). */
  private releasePendingWrite(): void {
    this.cancelBudgetWait?.();
    this.cancelBudgetWait = undefined;
    if (this.pendingWriteReserved) {
      this.pendingWriteReserved = false;
      this.budget.release(this.pendingWrite!.length);
    }
  }

  /** `budgetBytes`: what this request holds in the server's write budget, given back when it is done. */
  private dispatch(request: Request, payload: Buffer[] | undefined, budgetBytes = 0): void {
    this.counters.requests++;
    const giveBack = (): void => {
      if (budgetBytes > 0) this.budget.release(budgetBytes);
    };
    if (request.type === Command.DISC) {
      this.releasePayload(payload);
      this.finish("client sent DISC");
      this.closeIfIdle();
      return;
    }
    const refusal = this.shuttingDown
      ? new Refusal(NbdErrno.ESHUTDOWN, "server is shutting down")
      : this.validate(request);
    if (refusal !== undefined) {
      this.counters.errors++;
      if (this.refusalsLogged++ < 100) {
        this.log(`${COMMAND_NAMES[request.type] ?? `command #${request.type}`} refused: ${refusal.reason}`);
      }
      this.releasePayload(payload);
      giveBack();
      this.sendError(request, refusal.errno, refusal.reason);
      return;
    }
    const payloadBytes = request.type === Command.READ || request.type === Command.WRITE ? request.length : 0;
    this.inflightRequests++;
    this.inflightBytes += payloadBytes;
    const served = this.session.export.served;
    const startedAt = served === undefined ? 0 : performance.now();
    this.execute(request, payload)
      .then(
        () => served !== undefined && countServed(served, request, (performance.now() - startedAt) / 1000),
        (error: unknown) => {
          if (served !== undefined) served.errors++;
          this.failRequest(request, error);
        },
      )
      .finally(() => {
        this.releasePayload(payload);
        giveBack();
        this.inflightRequests--;
        this.inflightBytes -= payloadBytes;
        if (this.ending !== undefined || this.shuttingDown) this.closeIfIdle();
        else this.pump();
      });
  }

  private validate(request: Request): Refusal | undefined {
    const { type, flags, offset, length } = request;
    const allowed = ALLOWED_FLAGS[type];
    if (allowed === undefined) return new Refusal(NbdErrno.EINVAL, `unknown command ${type}`);
    if ((flags & ~allowed) !== 0) {
      return new Refusal(NbdErrno.EINVAL, `flags 0x${flags.toString(16)} not valid for ${COMMAND_NAMES[type]}`);
    }
    const device = this.session.export.device;
    if (type === Command.FLUSH) {
      return offset === 0 && length === 0
        ? undefined
        : new Refusal(NbdErrno.EINVAL, "FLUSH must have offset and length 0");
    }
    if (type === Command.BLOCK_STATUS && !this.session.baseAllocation) {
      return new Refusal(NbdErrno.EINVAL, "BLOCK_STATUS without a negotiated meta context");
    }
    const writes = type === Command.WRITE || type === Command.TRIM || type === Command.WRITE_ZEROES;
    if (writes && device.capabilities.readOnly) return new Refusal(NbdErrno.EPERM, "the export is read-only");
    if (length === 0) return new Refusal(NbdErrno.EINVAL, `${COMMAND_NAMES[type]} of zero length`);
    if (offset + length > device.size) {
      const errno = type === Command.WRITE || type === Command.WRITE_ZEROES ? NbdErrno.ENOSPC : NbdErrno.EINVAL;
      return new Refusal(errno, `${length} bytes at ${offset} end past the export's ${device.size} bytes`);
    }
    if (this.session.blockSizesAgreed) {
      const block = this.limits.minBlockBytes;
      if (offset % block !== 0 || length % block !== 0) {
        return new Refusal(NbdErrno.EINVAL, `${length} bytes at ${offset} are not aligned to ${block}-byte blocks`);
      }
    }
    if (type === Command.READ && length > this.limits.maxPayloadBytes) {
      return new Refusal(
        NbdErrno.EINVAL,
        `READ of ${length} bytes exceeds the ${this.limits.maxPayloadBytes}-byte maximum`,
      );
    }
    if (type === Command.WRITE_ZEROES && (flags & CommandFlag.FAST_ZERO) !== 0 && !device.capabilities.canFastZero) {
      return new Refusal(NbdErrno.ENOTSUP, "this export cannot zero quickly");
    }
    return undefined;
  }

  private async execute(request: Request, payload: Buffer[] | undefined): Promise<void> {
    const device = this.session.export.device;
    const fua = (request.flags & CommandFlag.FUA) !== 0;
    switch (request.type) {
      case Command.READ:
        return this.read(request);
      case Command.WRITE:
        await device.write(request.offset, payload!, { fua });
        this.counters.bytesWritten += request.length;
        return this.sendOk(request);
      case Command.FLUSH:
        await device.flush();
        return this.sendOk(request);
      case Command.TRIM:
        await device.trim(request.offset, request.length, { fua });
        return this.sendOk(request);
      case Command.WRITE_ZEROES:
        await device.writeZeroes(request.offset, request.length, {
          fua,
          keepAllocated: (request.flags & CommandFlag.NO_HOLE) !== 0,
          fastOnly: (request.flags & CommandFlag.FAST_ZERO) !== 0,
        });
        return this.sendOk(request);
      case Command.CACHE:
        await device.cache(request.offset, Math.min(request.length, this.limits.maxPayloadBytes));
        return this.sendOk(request);
      case Command.BLOCK_STATUS:
        return this.blockStatus(request);
      default:
        throw new AssertionError({ message: `dispatched unvalidated command ${request.type}` });
    }
  }

  private async read(request: Request): Promise<void> {
    const device = this.session.export.device;
    const { offset, length, cookie } = request;
    const take = this.takeBuffer;
    const zeroCopy =
      length >= ZERO_COPY_MIN_BYTES && this.replies.socketFd !== undefined
        ? device.zeroCopySource?.(offset, length)
        : undefined;
    if (!this.session.structuredReplies) {
      if (zeroCopy) return this.sendFromFile(simpleReply(cookie, 0), zeroCopy, length);
      const reply = simpleReply(cookie, 0, length, take);
      await this.readInto(offset, reply, Size.SIMPLE_REPLY);
      return this.send([reply], true);
    }
    const noFragment = (request.flags & CommandFlag.DF) !== 0;
    if ((noFragment && !zeroCopy) || length < HOLE_CHECK_MIN_BYTES) {
      const chunk = offsetDataChunk(cookie, true, offset, length, take);
      await this.readInto(offset, chunk, OFFSET_DATA_PREFIX);
      return this.send([chunk], true);
    }
    const extents = noFragment ? [] : await this.extentsCovering(offset, length);
    if (zeroCopy && (noFragment || (extents.length === 1 && !extents[0]!.zero))) {
      return this.sendFromFile(offsetDataChunk(cookie, true, offset, 0), zeroCopy, length);
    }
    const chunks: Buffer[] = [];
    const reads: Promise<void>[] = [];
    let position = offset;
    for (let i = 0; i < extents.length; i++) {
      const extent = extents[i]!;
      const last = i === extents.length - 1;
      if (extent.zero) {
        chunks.push(offsetHoleChunk(cookie, last, position, extent.length));
      } else {
        const chunk = offsetDataChunk(cookie, last, position, extent.length, take);
        reads.push(device.read(position, chunk.subarray(OFFSET_DATA_PREFIX)));
        chunks.push(chunk);
      }
      position += extent.length;
    }
    try {
      await Promise.all(reads);
    } catch (error) {
      // Let every read settle before the buffers go back to the pool.
      await Promise.allSettled(reads);
      for (const chunk of chunks) this.pool.give(chunk);
      throw error;
    }
    this.counters.bytesRead += length;
    this.send(chunks, true);
  }

  private readonly takeBuffer = (bytes: number): Buffer => this.pool.take(bytes);

  /** A zero-copy READ reply; the bytes count once sent. */
  private async sendFromFile(header: Buffer, source: FileSource, length: number): Promise<void> {
    if (header.length > Size.SIMPLE_REPLY) header.writeUInt32BE(8 + length, 16); // OFFSET_DATA chunk length
    await this.replies.sendFromFile(header, source, length);
    this.counters.bytesRead += length;
  }

  /** Reads into `reply` after its header; on failure the buffer goes back to the pool. */
  private async readInto(offset: number, reply: Buffer, headerBytes: number): Promise<void> {
    try {
      await this.session.export.device.read(offset, reply.subarray(headerBytes));
    } catch (error) {
      this.pool.give(reply);
      throw error;
    }
    this.counters.bytesRead += reply.length - headerBytes;
  }

  /** Extents covering exactly [offset, offset+length), neighbours of the same kind merged. */
  private async extentsCovering(offset: number, length: number): Promise<Extent[]> {
    const merged: Extent[] = [];
    let position = offset;
    const end = offset + length;
    while (position < end) {
      for (const extent of await this.session.export.device.blockStatus(position, end - position)) {
        const previous = merged[merged.length - 1];
        if (previous !== undefined && previous.zero === extent.zero) {
          merged[merged.length - 1] = {
            length: previous.length + extent.length,
            hole: previous.hole,
            zero: previous.zero,
          };
        } else {
          merged.push(extent);
        }
        position += extent.length;
      }
    }
    return merged;
  }

  private async blockStatus(request: Request): Promise<void> {
    const { offset, cookie } = request;
    const length = Math.min(request.length, MAX_DESCRIPTOR_BYTES);
    const extents = await this.session.export.device.blockStatus(offset, length);
    const requestOne = (request.flags & CommandFlag.REQ_ONE) !== 0;
    const descriptors: StatusDescriptor[] = (requestOne ? extents.slice(0, 1) : extents).map((extent) => ({
      length: extent.length,
      flags: (extent.hole ? AllocationState.HOLE : 0) | (extent.zero ? AllocationState.ZERO : 0),
    }));
    this.send([blockStatusChunk(cookie, BASE_ALLOCATION_CONTEXT_ID, descriptors)]);
  }

  private failRequest(request: Request, error: unknown): void {
    if (error instanceof AssertionError) {
      // A broken invariant in the storage path: stop rather than risk writing garbage.
      process.nextTick(() => {
        throw error;
      });
      return;
    }
    this.counters.errors++;
    const errno = nbdErrnoOf(error);
    const message = errorMessage(error);
    this.log(`${COMMAND_NAMES[request.type]} of ${request.length} bytes at ${request.offset} failed: ${message}`);
    this.sendError(request, errno, message);
  }

  private sendOk(request: Request): void {
    this.send([simpleReply(request.cookie, 0)]);
  }

  private sendError(request: Request, errno: number, message: string): void {
    // After STRUCTURED_REPLY, READ and BLOCK_STATUS must be answered with chunks, errors included.
    const structured =
      this.session.structuredReplies && (request.type === Command.READ || request.type === Command.BLOCK_STATUS);
    this.send([structured ? errorChunk(request.cookie, errno, message) : simpleReply(request.cookie, errno)]);
  }

  private send(buffers: Buffer[], pooled = false): void {
    this.replies.send(buffers, pooled);
  }

  /** Stops reading; the socket closes once in-flight requests have replied. */
  private finish(reason: string): void {
    this.ending ??= reason;
    this.closeIfIdle();
  }

  private closeIfIdle(): void {
    if (this.inflightRequests > 0) return;
    if (this.ending === undefined && !this.shuttingDown) return;
    this.ending ??= "server shut down";
    if (this.socket.destroyed || this.socket.writableEnded) return;
    this.socket.end();
    // Reading continues (and is ignored) so the client's FIN arrives and the socket can close; a client
    // that never closes its side is cut off after CLOSE_LINGER_MS.
    this.socket.resume();
    setTimeout(() => this.socket.destroy(), CLOSE_LINGER_MS).unref();
  }

  private abort(reason: string): void {
    this.ending ??= reason;
    this.log(`dropping connection: ${reason}`);
    this.socket.destroy();
  }

  private partialRequestNote(reason: string): string {
    if (this.pendingWrite !== undefined) {
      return `${reason} in the middle of a WRITE payload (${this.received.length} of ${this.pendingWrite.length} bytes received; nothing written)`;
    }
    if (this.received.length > 0) return `${reason} in the middle of a request header (${this.received.length} bytes)`;
    return reason;
  }
}

/** A request that completed, in the export's counts: reads, and writes (trims and zeroing write no bytes). */
function countServed(served: ServedRequests, request: Request, seconds: number): void {
  switch (request.type) {
    case Command.READ:
      return served.read(request.length, seconds);
    case Command.WRITE:
      return served.write(request.length, seconds);
    case Command.TRIM:
    case Command.WRITE_ZEROES:
      return served.write(0, seconds);
  }
}
