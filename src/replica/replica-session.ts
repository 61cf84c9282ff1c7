// One authenticated engine connection on the replica server: it opens one copy (OPEN_REPLICA, by
// volume name) and then serves requests on it through LocalReplicaPort, the same code an engine uses
// for a copy on its own disk. Every request is checked at this edge before it reaches the copy (flags,
// payload, ranges, JSON shapes), so bad input gets a reply with a status and a logged reason and never
// trips an assertion. Work is bounded per connection: past maxInflightRequests, maxInflightBytes or
// maxQueuedReplyBytes the session stops reading the socket (as the NBD front does), so one engine
// cannot exhaust the server's memory; decoded frames wait in order until there is room.

import { AssertionError } from "node:assert";
import { HavenError, type ErrorCode, errorMessage } from "../core/errors.js";
import type { LocalReplicaPort } from "./local-port.js";
import { copyKey, type CreateOptions } from "./port.js";
import {
  FRAME_TYPE_NAMES,
  FrameFlag,
  FrameType,
  MAX_CHECKSUM_BYTES,
  MAX_CHECKSUM_REGION_BYTES,
  MAX_READ_BYTES,
  MAX_WRITE_BYTES,
  ReplyStatus,
} from "./protocol/constants.js";
import { frame, type FrameConnection } from "./protocol/connection.js";
import { payloadBytes, releaseFrame, type Frame } from "./protocol/frame-codec.js";
import { encodeExtents, encodeMetadata, parseMetadataPatch, parseOpenRequest } from "./protocol/payloads.js";

export interface SessionLimits {
  /** Requests being executed at once; more wait, and the socket is not read meanwhile. */
  readonly maxInflightRequests: number;
  /** Payload bytes (write data in, read data out) of the requests being executed. */
  readonly maxInflightBytes: number;
  /** Reply bytes waiting in the socket for a slow engine before no new request starts. */
  readonly maxQueuedReplyBytes: number;
}

export const DEFAULT_SESSION_LIMITS: SessionLimits = {
  maxInflightRequests: 64,
  maxInflightBytes: 64 * 1024 * 1024,
  maxQueuedReplyBytes: 64 * 1024 * 1024,
};

/** Refusals logged per connection; the rest are counted and reported when it closes. */
const MAX_REFUSALS_LOGGED = 100;

export interface SessionLoad {
  readonly name: string | undefined;
  readonly inflightRequests: number;
  readonly inflightBytes: number;
  readonly peakInflightRequests: number;
  readonly peakInflightBytes: number;
  readonly queuedReplyBytes: number;
  readonly waitingRequests: number;
  readonly requestsStarted: number;
}

type OpenCopy = (
  name: string,
  create: CreateOptions | undefined,
  disk: string | undefined,
) => Promise<LocalReplicaPort>;
/** A connection serves one copy, named by its OPEN_REPLICA. */
type CopyState =
  | { readonly kind: "none" }
  | { readonly kind: "opening"; readonly name: string }
  | { readonly kind: "open"; readonly name: string; readonly port: LocalReplicaPort };

const REQUEST_TYPES: ReadonlySet<number> = new Set([
  FrameType.OPEN_REPLICA,
  FrameType.READ,
  FrameType.WRITE,
  FrameType.FLUSH,
  FrameType.TRIM,
  FrameType.WRITE_ZEROES,
  FrameType.GET_METADATA,
  FrameType.SET_METADATA,
  FrameType.CHECKSUM,
  FrameType.PING,
  FrameType.GROW,
  FrameType.BLOCK_STATUS,
]);
const TAKES_PAYLOAD: ReadonlySet<number> = new Set([
  FrameType.OPEN_REPLICA,
  FrameType.WRITE,
  FrameType.SET_METADATA,
  FrameType.CHECKSUM,
]);
const TAKES_FUA: ReadonlySet<number> = new Set([FrameType.WRITE, FrameType.TRIM, FrameType.WRITE_ZEROES]);

export class ReplicaSession {
  private copy: CopyState = { kind: "none" };
  private readonly waiting: Frame[] = [];
  private inflightRequests = 0;
  private inflightBytes = 0;
  private peakInflightRequests = 0;
  private peakInflightBytes = 0;
  private requestsStarted = 0;
  private refusals = 0;
  private socketClosed = false;
  private resolveFinished: () => void = () => undefined;
  /** Resolves once the connection has closed and every request it started has finished. */
  readonly finished = new Promise<void>((resolve) => (this.resolveFinished = resolve));

  constructor(
    private readonly connection: FrameConnection,
    private readonly openCopy: OpenCopy,
    private readonly limits: SessionLimits,
    private readonly log: (line: string) => void,
  ) {}

  start(): void {
    const socket = this.connection.socket;
    socket.on("drain", () => this.pump());
    socket.on("close", () => {
      this.log(`closed: ${this.closingNote()}`);
      this.socketClosed = true;
      this.waiting.length = 0; // decoded but never started: nobody is left to answer
      this.finishIfIdle();
    });
    this.connection.listen((request) => {
      this.waiting.push(request);
      this.pump();
    });
  }

  /** The copy this connection opened (or is opening), if any, as copyKey names it. */
  get copyName(): string | undefined {
    return this.copy.kind === "none" ? undefined : this.copy.name;
  }

  /** Drops the connection; `finished` resolves once the requests it started are done. */
  destroy(): void {
    this.connection.socket.destroy();
  }

  private finishIfIdle(): void {
    if (this.socketClosed && this.inflightRequests === 0) this.resolveFinished();
  }

  load(): SessionLoad {
    return {
      name: this.copy.kind === "none" ? undefined : this.copy.name,
      inflightRequests: this.inflightRequests,
      inflightBytes: this.inflightBytes,
      peakInflightRequests: this.peakInflightRequests,
      peakInflightBytes: this.peakInflightBytes,
      queuedReplyBytes: this.connection.socket.writableLength,
      waitingRequests: this.waiting.length,
      requestsStarted: this.requestsStarted,
    };
  }

  /** Starts waiting requests while there is room; stops reading the socket while there is none. */
  private pump(): void {
    const socket = this.connection.socket;
    if (socket.destroyed) return;
    for (;;) {
      const next = this.waiting[0];
      if (next === undefined) break;
      if (!this.hasRoomFor(next)) {
        socket.pause();
        return;
      }
      this.waiting.shift();
      this.dispatch(next);
    }
    if (this.inflightRequests < this.limits.maxInflightRequests && this.inflightBytes < this.limits.maxInflightBytes)
      socket.resume();
    else socket.pause();
  }

  private hasRoomFor(request: Frame): boolean {
    if (this.connection.socket.writableLength >= this.limits.maxQueuedReplyBytes) return false;
    if (this.inflightRequests === 0) return true;
    return (
      this.inflightRequests < this.limits.maxInflightRequests &&
      this.inflightBytes + payloadCost(request) <= this.limits.maxInflightBytes
    );
  }

  private dispatch(request: Frame): void {
    const cost = payloadCost(request);
    this.inflightRequests++;
    this.inflightBytes += cost;
    this.requestsStarted++;
    this.peakInflightRequests = Math.max(this.peakInflightRequests, this.inflightRequests);
    this.peakInflightBytes = Math.max(this.peakInflightBytes, this.inflightBytes);
    this.execute(request)
      .then(
        (payload) => this.connection.send(frame(FrameType.REPLY, { requestId: request.requestId, payload })),
        (error: unknown) => this.refuse(request, error),
      )
      .finally(() => {
        releaseFrame(request);
        this.inflightRequests--;
        this.inflightBytes -= cost;
        this.pump();
        this.finishIfIdle();
      });
  }

  private refuse(request: Frame, error: unknown): void {
    if (error instanceof AssertionError) {
      // A broken invariant inside the copy: stop the process rather than risk writing garbage.
      process.nextTick(() => {
        throw error;
      });
      return;
    }
    const message = errorMessage(error);
    const status = statusFor(error);
    if (++this.refusals <= MAX_REFUSALS_LOGGED) {
      this.log(`${FRAME_TYPE_NAMES[request.type]} #${request.requestId} refused (${STATUS_NAMES[status]}): ${message}`);
    }
    this.connection.send(
      frame(FrameType.REPLY, { requestId: request.requestId, status, payload: Buffer.from(message.slice(0, 4096)) }),
    );
  }

  /** Checks one request and runs it; resolves with the reply payload, or rejects with the refusal. */
  private async execute(request: Frame): Promise<Buffer> {
    const type = request.type;
    const name = FRAME_TYPE_NAMES[type]!;
    if (!REQUEST_TYPES.has(type)) throw invalid(`${name} is not a request`);
    if (request.status !== 0) throw invalid(`a request carries no status (got ${request.status})`);
    const allowedFlags = TAKES_FUA.has(type) ? FrameFlag.FUA : 0;
    if ((request.flags & ~allowedFlags) !== 0)
      throw invalid(`flags 0x${request.flags.toString(16)} are not valid for ${name}`);
    if (!TAKES_PAYLOAD.has(type) && payloadBytes(request) > 0)
      throw invalid(`${name} takes no payload (got ${payloadBytes(request)} bytes)`);
    if (type === FrameType.PING) return Buffer.alloc(0);
    if (type === FrameType.OPEN_REPLICA) return this.open(request);

    if (this.copy.kind !== "open")
      throw invalid(this.copy.kind === "none" ? "OPEN_REPLICA first" : "OPEN_REPLICA has not completed yet");
    const port = this.copy.port;
    const fua = (request.flags & FrameFlag.FUA) !== 0;
    const offset = request.offset;
    const length = request.length;
    switch (type) {
      case FrameType.READ:
        if (length > MAX_READ_BYTES) throw invalid(`READ of ${length} bytes exceeds the ${MAX_READ_BYTES}-byte limit`);
        return port.read(checkRange(port, name, offset, length), length);
      case FrameType.WRITE: {
        const bytes = payloadBytes(request);
        if (bytes > MAX_WRITE_BYTES) throw invalid(`WRITE of ${bytes} bytes exceeds the ${MAX_WRITE_BYTES}-byte limit`);
        const data = request.pieces ?? [request.payload];
        await port.write(epochOf(request), checkRange(port, name, offset, bytes), data, fua);
        return Buffer.alloc(0);
      }
      case FrameType.TRIM:
        await port.trim(epochOf(request), checkRange(port, name, offset, length), length, fua);
        return Buffer.alloc(0);
      case FrameType.WRITE_ZEROES:
        await port.writeZeroes(epochOf(request), checkRange(port, name, offset, length), length, fua);
        return Buffer.alloc(0);
      case FrameType.FLUSH:
        await port.flush();
        return Buffer.alloc(0);
      case FrameType.GET_METADATA:
        return encodeMetadata(port.metadata);
      case FrameType.SET_METADATA: {
        const patch = parseMetadataPatch(request.payload);
        return encodeMetadata(await port.updateMetadata(epochOf(request), patch));
      }
      case FrameType.GROW: {
        if (request.offset > BigInt(Number.MAX_SAFE_INTEGER))
          throw invalid(`GROW to ${request.offset} bytes is too large`);
        return encodeMetadata(await port.grow(epochOf(request), Number(request.offset)));
      }
      case FrameType.CHECKSUM: {
        if (request.payload.length !== 4)
          throw invalid(`CHECKSUM takes a 4-byte region size, not ${request.payload.length} bytes`);
        const regionBytes = request.payload.readUInt32BE(0);
        if (regionBytes < 4096 || regionBytes > MAX_CHECKSUM_REGION_BYTES || (regionBytes & (regionBytes - 1)) !== 0)
          throw invalid(`checksum region of ${regionBytes} bytes is not a power of two from 4096 to 64 MiB`);
        if (length > Math.max(MAX_CHECKSUM_BYTES, regionBytes))
          throw invalid(`CHECKSUM of ${length} bytes exceeds the ${MAX_CHECKSUM_BYTES}-byte limit`);
        return port.checksum(checkRange(port, name, offset, length), length, regionBytes);
      }
      case FrameType.BLOCK_STATUS: {
        if (length === 0) throw invalid("BLOCK_STATUS of 0 bytes");
        const extents = await port.blockStatus(checkRange(port, name, offset, length), length);
        return encodeExtents(extents);
      }
      default:
        throw invalid(`${name} is not a request`);
    }
  }

  private async open(request: Frame): Promise<Buffer> {
    if (this.copy.kind !== "none")
      throw invalid(`this connection already serves "${this.copy.name}"; open another copy on a new connection`);
    const opened = parseOpenRequest(request.payload);
    const name = copyKey(opened.name, opened.disk);
    this.copy = { kind: "opening", name };
    try {
      const port = await this.openCopy(opened.name, opened.create, opened.disk);
      this.copy = { kind: "open", name, port };
      this.log(`opened "${name}" (volume ${port.metadata.volumeId}, highest epoch ${port.metadata.highestEpoch})`);
      return encodeMetadata(port.metadata);
    } catch (error) {
      this.copy = { kind: "none" };
      throw error;
    }
  }

  private closingNote(): string {
    const notes: string[] = [];
    const failure = this.connection.failed;
    notes.push(
      failure && failure.message !== "connection closed" ? failure.message : "the engine closed the connection",
    );
    const partial = this.connection.partialFrameBytes;
    if (partial > 0) notes.push(`it ended mid-frame, ${partial} bytes of an incomplete frame discarded`);
    if (this.inflightRequests + this.waiting.length > 0)
      notes.push(`${this.inflightRequests + this.waiting.length} requests unanswered`);
    if (this.refusals > MAX_REFUSALS_LOGGED)
      notes.push(`${this.refusals - MAX_REFUSALS_LOGGED} more refusals not logged`);
    return notes.join("; ");
  }
}

/** Bytes a request holds while it runs: its payload, plus the data a READ sends back. */
function payloadCost(request: Frame): number {
  return payloadBytes(request) + (request.type === FrameType.READ ? Math.min(request.length, MAX_READ_BYTES) : 0);
}

function invalid(reason: string): HavenError {
  return new HavenError("HAVEN_ERR_INVALID_REQUEST", reason);
}

function epochOf(request: Frame): number {
  if (request.epoch > BigInt(Number.MAX_SAFE_INTEGER)) throw invalid(`epoch ${request.epoch} is too large`);
  return Number(request.epoch);
}

/** The offset as a number, once [offset, offset+length) is known to lie within the copy. */
function checkRange(port: LocalReplicaPort, what: string, offset: bigint, length: number): number {
  const size = port.metadata.sizeBytes;
  if (offset + BigInt(length) > BigInt(size))
    throw new HavenError(
      "HAVEN_ERR_OUT_OF_RANGE",
      `${what} of ${length} bytes at ${offset} ends past the copy's ${size} bytes`,
    );
  return Number(offset);
}

/** The reply status for each error code a request can fail with; anything else is a bad request. */
const STATUS_FOR_ERROR: Partial<Record<ErrorCode, number>> = {
  HAVEN_ERR_STALE_EPOCH: ReplyStatus.STALE_EPOCH,
  HAVEN_ERR_READ_ONLY: ReplyStatus.IO_ERROR,
  HAVEN_ERR_OUT_OF_RANGE: ReplyStatus.OUT_OF_RANGE,
  HAVEN_ERR_NOT_FOUND: ReplyStatus.NO_SUCH_REPLICA,
  HAVEN_ERR_IO: ReplyStatus.IO_ERROR,
  HAVEN_ERR_NO_SPACE: ReplyStatus.IO_ERROR,
  HAVEN_ERR_CONFIG: ReplyStatus.IO_ERROR,
  HAVEN_ERR_SHUTTING_DOWN: ReplyStatus.IO_ERROR,
};

const STATUS_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(ReplyStatus).map(([name, value]) => [value, name]),
);

function statusFor(error: unknown): number {
  if (!(error instanceof HavenError)) return ReplyStatus.IO_ERROR;
  return STATUS_FOR_ERROR[error.code] ?? ReplyStatus.BAD_REQUEST;
}
