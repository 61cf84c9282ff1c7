// Encoding and incremental decoding of replication frames. The decoder faces untrusted bytes: it
// checks magic, version, type and lengths before it buffers a payload, so garbage or a huge length
// is refused with a reason (and the connection dropped by the caller) without allocating for it.
//
// Header layout (48 bytes, big-endian):
//   0 u32 magic | 4 u16 version | 6 u16 type | 8 u32 flags | 12 u32 status
//  16 u64 requestId | 24 u64 epoch | 32 u64 offset | 40 u32 length | 44 u32 payloadLength

import assert from "node:assert/strict";
import { ChunkQueue } from "../../util/chunk-queue.js";
import {
  FRAME_HEADER_BYTES,
  FRAME_MAGIC,
  FRAME_TYPE_NAMES,
  FrameType,
  MAX_PAYLOAD_BYTES,
  PROTOCOL_VERSION,
} from "./constants.js";

export interface Frame {
  readonly type: number;
  readonly flags: number;
  readonly status: number;
  readonly requestId: bigint;
  readonly epoch: bigint;
  readonly offset: bigint;
  readonly length: number;
  readonly payload: Buffer;
  /** A decoded frame's payload as the socket chunks it arrived in (uncopied); see DecodedFrame. */
  readonly pieces?: readonly Buffer[];
}

/** How many payload bytes a frame carries, without joining a decoded frame's pieces. */
export function payloadBytes(frame: Frame): number {
  if (frame.pieces === undefined) return frame.payload.length;
  let total = 0;
  for (const piece of frame.pieces) total += piece.length;
  return total;
}

/**
 * A frame as the decoder gives it: the payload stays in the socket chunks it arrived in, and is joined
 * into one Buffer only if someone asks for `payload`. A 1 MiB WRITE arrives in a dozen chunks and goes
 * to the disk with one writev of them, saving a copy of every byte. When the socket reads into
 * recycled slabs (SlabReader), a WRITE's pieces are views of a slab: whoever handles the frame calls
 * release() once it no longer needs them. Every other frame's payload is a copy of its own.
 */
class DecodedFrame implements Frame {
  private joined: Buffer | undefined;

  constructor(
    readonly type: number,
    readonly flags: number,
    readonly status: number,
    readonly requestId: bigint,
    readonly epoch: bigint,
    readonly offset: bigint,
    readonly length: number,
    readonly pieces: readonly Buffer[],
    private releasePieces: ((pieces: readonly Buffer[]) => void) | undefined,
  ) {}

  get payload(): Buffer {
    if (this.joined === undefined) {
      this.joined = this.pieces.length === 1 ? this.pieces[0]! : Buffer.concat(this.pieces as Buffer[]);
    }
    return this.joined;
  }

  /** The payload's memory may be reused from now on (a no-op for a payload that is a copy). */
  release(): void {
    const release = this.releasePieces;
    this.releasePieces = undefined;
    release?.(this.pieces);
  }
}

/** Hands a frame's payload memory back to the socket's reader once the frame is handled. */
export function releaseFrame(frame: Frame): void {
  if (frame instanceof DecodedFrame) frame.release();
}

export function encodeFrame(frame: Frame): Buffer[] {
  const header = encodeFrameHeader(frame, frame.payload.length);
  return frame.payload.length > 0 ? [header, frame.payload] : [header];
}

/** The header of a frame whose payload (of `payloadLength` bytes) is sent separately, uncopied. */
export function encodeFrameHeader(frame: Omit<Frame, "payload">, payloadLength: number): Buffer {
  const header = Buffer.allocUnsafe(FRAME_HEADER_BYTES); // every byte is written below
  writeFrameHeader(header, 0, frame, payloadLength);
  return header;
}

/** Writes a frame's header into `target` at `at` (FRAME_HEADER_BYTES bytes). */
export function writeFrameHeader(
  target: Buffer,
  at: number,
  frame: Omit<Frame, "payload">,
  payloadLength: number,
): void {
  assert.ok(payloadLength <= MAX_PAYLOAD_BYTES, "payload too large for a frame");
  target.writeUInt32BE(FRAME_MAGIC, at);
  target.writeUInt16BE(PROTOCOL_VERSION, at + 4);
  target.writeUInt16BE(frame.type, at + 6);
  target.writeUInt32BE(frame.flags >>> 0, at + 8);
  target.writeUInt32BE(frame.status >>> 0, at + 12);
  target.writeBigUInt64BE(frame.requestId, at + 16);
  target.writeBigUInt64BE(frame.epoch, at + 24);
  target.writeBigUInt64BE(frame.offset, at + 32);
  target.writeUInt32BE(frame.length >>> 0, at + 40);
  target.writeUInt32BE(payloadLength, at + 44);
}

export class FrameError extends Error {
  constructor(reason: string) {
    super(reason);
    this.name = "FrameError";
  }
}

const NO_PIECES: readonly Buffer[] = [Buffer.alloc(0)];

/** A frame's header fields, parsed the moment its 48 bytes arrive (they may be read into again). */
type FrameHeader = Omit<Frame, "payload" | "pieces"> & { readonly payloadLength: number };

/** Feed it bytes as they arrive; it returns the frames completed so far, or throws a FrameError. */
export class FrameDecoder {
  private readonly queue: ChunkQueue;
  private header: FrameHeader | undefined;
  private limitNote = "";

  /**
   * `release`: the socket reader's, when chunks are views of recycled slabs (SlabReader). Header bytes
   * are then parsed on arrival, and only WRITE payloads stay in the slabs (see DecodedFrame).
   */
  constructor(
    private maxPayloadBytes = MAX_PAYLOAD_BYTES,
    private readonly release?: (pieces: readonly Buffer[] | Buffer) => void,
  ) {
    this.queue = new ChunkQueue(release);
  }

  /**
   * From the next header on, a payload over `maxPayloadBytes` is refused; `when` says in the refusal
   * why the limit is what it is (" before authentication").
   */
  limitPayload(maxPayloadBytes: number, when = ""): void {
    assert.ok(maxPayloadBytes >= 0 && maxPayloadBytes <= MAX_PAYLOAD_BYTES, "payload limit out of range");
    this.maxPayloadBytes = maxPayloadBytes;
    this.limitNote = when;
  }

  /** Bytes received but not yet part of a complete frame. */
  get buffered(): number {
    return this.queue.length + (this.header === undefined ? 0 : FRAME_HEADER_BYTES);
  }

  push(chunk: Buffer): Frame[] {
    this.queue.push(chunk);
    const frames: Frame[] = [];
    for (;;) {
      if (this.header === undefined) {
        if (this.queue.length < FRAME_HEADER_BYTES) return frames;
        this.header = this.parseHeader(this.queue.take(FRAME_HEADER_BYTES));
      }
      const header = this.header;
      if (this.queue.length < header.payloadLength) return frames;
      this.header = undefined;
      frames.push(
        new DecodedFrame(
          header.type,
          header.flags,
          header.status,
          header.requestId,
          header.epoch,
          header.offset,
          header.length,
          ...this.takePayload(header),
        ),
      );
    }
  }

  private takePayload(header: FrameHeader): [readonly Buffer[], ((pieces: readonly Buffer[]) => void) | undefined] {
    if (header.payloadLength === 0) return [NO_PIECES, undefined];
    if (this.release === undefined) return [this.queue.takePieces(header.payloadLength), undefined];
    if (header.type === FrameType.WRITE) return [this.queue.takePieces(header.payloadLength), this.release];
    return [[this.queue.takeCopy(header.payloadLength)], undefined];
  }

  private parseHeader(header: Buffer): FrameHeader {
    const magic = header.readUInt32BE(0);
    if (magic !== FRAME_MAGIC) throw new FrameError(`bad frame magic 0x${magic.toString(16)}`);
    const version = header.readUInt16BE(4);
    if (version !== PROTOCOL_VERSION) {
      throw new FrameError(`protocol version ${version} is not supported (this side speaks ${PROTOCOL_VERSION})`);
    }
    const type = header.readUInt16BE(6);
    if (FRAME_TYPE_NAMES[type] === undefined) throw new FrameError(`unknown frame type ${type}`);
    const payloadLength = header.readUInt32BE(44);
    if (payloadLength > this.maxPayloadBytes) {
      throw new FrameError(
        `frame payload of ${payloadLength} bytes exceeds the ${this.maxPayloadBytes}-byte limit${this.limitNote}`,
      );
    }
    return {
      type,
      flags: header.readUInt32BE(8),
      status: header.readUInt32BE(12),
      requestId: header.readBigUInt64BE(16),
      epoch: header.readBigUInt64BE(24),
      offset: header.readBigUInt64BE(32),
      length: header.readUInt32BE(40),
      payloadLength,
    };
  }
}
