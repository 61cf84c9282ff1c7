// Encoders for transmission-phase replies: simple replies and structured-reply chunks.
// Each returns one Buffer so a reply goes out in one socket write; READ replies reserve room for the
// header in front of the data so the data is read from disk straight into the buffer that is sent.

import { ChunkType, ReplyFlag, SIMPLE_REPLY_MAGIC, Size, STRUCTURED_REPLY_MAGIC } from "./constants.js";

/** The 8-byte cookie, kept as two 32-bit halves to avoid allocating a Buffer per request. */
export interface Cookie {
  readonly high: number;
  readonly low: number;
}

/** Where reply buffers come from (a pool for large READ replies). */
export type Allocate = (bytes: number) => Buffer;
const allocate: Allocate = (bytes) => Buffer.allocUnsafe(bytes);

export function simpleReply(cookie: Cookie, error: number, payloadBytes = 0, alloc: Allocate = allocate): Buffer {
  const buffer = alloc(Size.SIMPLE_REPLY + payloadBytes);
  buffer.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  buffer.writeUInt32BE(error, 4);
  buffer.writeUInt32BE(cookie.high, 8);
  buffer.writeUInt32BE(cookie.low, 12);
  return buffer;
}

function writeChunkHeader(buffer: Buffer, cookie: Cookie, flags: number, type: number, length: number): void {
  buffer.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  buffer.writeUInt16BE(flags, 4);
  buffer.writeUInt16BE(type, 6);
  buffer.writeUInt32BE(cookie.high, 8);
  buffer.writeUInt32BE(cookie.low, 12);
  buffer.writeUInt32BE(length, 16);
}

/** OFFSET_DATA chunk with room for `dataBytes` after the 28-byte prefix (read the data into it). */
export const OFFSET_DATA_PREFIX = Size.CHUNK_HEADER + 8;
export function offsetDataChunk(
  cookie: Cookie,
  done: boolean,
  offset: number,
  dataBytes: number,
  alloc: Allocate = allocate,
): Buffer {
  const buffer = alloc(OFFSET_DATA_PREFIX + dataBytes);
  writeChunkHeader(buffer, cookie, done ? ReplyFlag.DONE : 0, ChunkType.OFFSET_DATA, 8 + dataBytes);
  writeUInt64(buffer, offset, Size.CHUNK_HEADER);
  return buffer;
}

export function offsetHoleChunk(cookie: Cookie, done: boolean, offset: number, length: number): Buffer {
  const buffer = Buffer.allocUnsafe(Size.CHUNK_HEADER + 12);
  writeChunkHeader(buffer, cookie, done ? ReplyFlag.DONE : 0, ChunkType.OFFSET_HOLE, 12);
  writeUInt64(buffer, offset, Size.CHUNK_HEADER);
  buffer.writeUInt32BE(length, Size.CHUNK_HEADER + 8);
  return buffer;
}

export function errorChunk(cookie: Cookie, error: number, message: string): Buffer {
  const text = Buffer.from(message.slice(0, 1024), "utf8");
  const buffer = Buffer.allocUnsafe(Size.CHUNK_HEADER + 6 + text.length);
  writeChunkHeader(buffer, cookie, ReplyFlag.DONE, ChunkType.ERROR, 6 + text.length);
  buffer.writeUInt32BE(error, Size.CHUNK_HEADER);
  buffer.writeUInt16BE(text.length, Size.CHUNK_HEADER + 4);
  text.copy(buffer, Size.CHUNK_HEADER + 6);
  return buffer;
}

export interface StatusDescriptor {
  readonly length: number;
  readonly flags: number;
}

export function blockStatusChunk(cookie: Cookie, contextId: number, descriptors: readonly StatusDescriptor[]): Buffer {
  const payload = 4 + 8 * descriptors.length;
  const buffer = Buffer.allocUnsafe(Size.CHUNK_HEADER + payload);
  writeChunkHeader(buffer, cookie, ReplyFlag.DONE, ChunkType.BLOCK_STATUS, payload);
  buffer.writeUInt32BE(contextId, Size.CHUNK_HEADER);
  let position = Size.CHUNK_HEADER + 4;
  for (const descriptor of descriptors) {
    buffer.writeUInt32BE(descriptor.length, position);
    buffer.writeUInt32BE(descriptor.flags, position + 4);
    position += 8;
  }
  return buffer;
}

function writeUInt64(buffer: Buffer, value: number, position: number): void {
  buffer.writeUInt32BE(Math.floor(value / 0x100000000), position);
  buffer.writeUInt32BE(value >>> 0, position + 4);
}
