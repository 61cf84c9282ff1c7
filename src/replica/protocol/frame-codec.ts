// Encoding and incremental decoding of replication frames. The decoder faces untrusted bytes: it
// checks magic, version, type and lengths before it buffers a payload, so garbage or a huge length
// is refused with a reason (and the connection dropped by the caller) without allocating for it.
//
// Header layout (48 bytes, big-endian):
//   0 u32 magic | 4 u16 version | 6 u16 type | 8 u32 flags | 12 u32 status
//  16 u64 requestId | 24 u64 epoch | 32 u64 offset | 40 u32 length | 44 u32 payloadLength

import assert from "node:assert/strict";
import { ChunkQueue } from "../../util/chunk-queue.js";
import { FRAME_HEADER_BYTES, FRAME_MAGIC, FRAME_TYPE_NAMES, MAX_PAYLOAD_BYTES, PROTOCOL_VERSION } from "./constants.js";

export interface Frame {
  readonly type: number;
  readonly flags: number;
  readonly status: number;
  readonly requestId: bigint;
  readonly epoch: bigint;
  readonly offset: bigint;
  readonly length: number;
  readonly payload: Buffer;
}

export function encodeFrame(frame: Frame): Buffer[] {
  const header = encodeFrameHeader(frame, frame.payload.length);
  return frame.payload.length > 0 ? [header, frame.payload] : [header];
}

/** The header of a frame whose payload (of `payloadLength` bytes) is sent separately, uncopied. */
export function encodeFrameHeader(frame: Omit<Frame, "payload">, payloadLength: number): Buffer {
  assert.ok(payloadLength <= MAX_PAYLOAD_BYTES, "payload too large for a frame");
  const header = Buffer.alloc(FRAME_HEADER_BYTES);
  header.writeUInt32BE(FRAME_MAGIC, 0);
  header.writeUInt16BE(PROTOCOL_VERSION, 4);
  header.writeUInt16BE(frame.type, 6);
  header.writeUInt32BE(frame.flags >>> 0, 8);
  header.writeUInt32BE(frame.status >>> 0, 12);
  header.writeBigUInt64BE(frame.requestId, 16);
  header.writeBigUInt64BE(frame.epoch, 24);
  header.writeBigUInt64BE(frame.offset, 32);
  header.writeUInt32BE(frame.length >>> 0, 40);
  header.writeUInt32BE(payloadLength, 44);
  return header;
}

export class FrameError extends Error {
  constructor(reason: string) {
    super(reason);
    this.name = "FrameError";
  }
}

/** Feed it bytes as they arrive; it returns the frames completed so far, or throws a FrameError. */
export class FrameDecoder {
  private readonly queue = new ChunkQueue();
  private header: Buffer | undefined;

  constructor(private readonly maxPayloadBytes = MAX_PAYLOAD_BYTES) {}

  /** Bytes received but not yet part of a complete frame. */
  get buffered(): number {
    return this.queue.length + (this.header?.length ?? 0);
  }

  push(chunk: Buffer): Frame[] {
    this.queue.push(chunk);
    const frames: Frame[] = [];
    for (;;) {
      if (this.header === undefined) {
        if (this.queue.length < FRAME_HEADER_BYTES) return frames;
        this.header = Buffer.from(this.queue.take(FRAME_HEADER_BYTES));
        this.checkHeader(this.header);
      }
      const payloadLength = this.header.readUInt32BE(44);
      if (this.queue.length < payloadLength) return frames;
      const header = this.header;
      this.header = undefined;
      frames.push({
        type: header.readUInt16BE(6),
        flags: header.readUInt32BE(8),
        status: header.readUInt32BE(12),
        requestId: header.readBigUInt64BE(16),
        epoch: header.readBigUInt64BE(24),
        offset: header.readBigUInt64BE(32),
        length: header.readUInt32BE(40),
        payload: payloadLength === 0 ? Buffer.alloc(0) : Buffer.concat(this.queue.takePieces(payloadLength)),
      });
    }
  }

  private checkHeader(header: Buffer): void {
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
      throw new FrameError(`frame payload of ${payloadLength} bytes exceeds the ${this.maxPayloadBytes}-byte limit`);
    }
  }
}
