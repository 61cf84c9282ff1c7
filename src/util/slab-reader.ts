// Reads a socket into a few recycled slabs of memory instead of a fresh buffer per read.
//
// Why: Node.js gives every socket read a new 64 KiB ArrayBuffer. At a gigabyte a second that is
// sixteen thousand new external buffers a second, and V8 answers external memory growth with a full
// mark-compact every 64 MB or so: measured on the 1 MiB write benchmark, 10-15 mark-compacts a second
// in the engine and in the replica server, each stalling its event loop for 2-15 ms. Reading into
// recycled slabs, those collections all but stop, and 1 MiB writes through the engine went from about
// 0.9 to about 1.8 GB/s on one local copy (bench/replication).
//
// How: Node's documented `onread` option (a buffer factory called before every read) exists only for
// sockets created by `new net.Socket()`/`net.connect()`. Accepted sockets are built inside Node, so
// attach() sets the same three per-socket fields the option would have set; they are found by their
// symbol descriptions. If this Node.js does not have them, attach() returns undefined and the caller
// reads with 'data' events as before: slower, never wrong. (test/unit/slab-reader.test.ts checks that
// the fast path is taken on the Node.js the project runs on.)
//
// Ownership: every chunk delivered is a view of a slab. Its bytes stay valid until they are handed
// back with release(). A slab is read into again only once every byte read into it was released, so
// a consumer that keeps a view (a WRITE payload on its way to a disk) must release it when done, and
// one that only parses bytes on the spot releases them right away. Bytes never released only pin
// their slab: when all slabs are pinned, reads get fresh buffers (untracked, as without slabs).

import type { Socket } from "node:net";

export interface SlabReaderOptions {
  /** Size of the largest slab: the first is FIRST_SLAB_BYTES (or this, if smaller), each next one twice the last. */
  readonly slabBytes?: number;
  /** At most this many slabs per socket; past it, reads get fresh buffers. */
  readonly maxSlabs?: number;
  /** Bytes offered to one read. */
  readonly readBytes?: number;
}

export const DEFAULT_SLAB_BYTES = 4 * 1024 * 1024;
/**
 * A connection that only ever carries small frames (a heartbeat, replies) stays in one slab this
 * size, read into again and again; busy ones grow to more and larger slabs.
 */
export const FIRST_SLAB_BYTES = 256 * 1024;
export const DEFAULT_MAX_SLABS = 8;
export const DEFAULT_READ_BYTES = 64 * 1024;

interface Slab {
  readonly memory: Buffer;
  /** Bytes handed to reads since the slab was last (re)started. */
  filled: number;
  /** Bytes read into it and not yet released. */
  unreleased: number;
}

interface NodeReadFields {
  readonly kBuffer: symbol;
  readonly kBufferCb: symbol;
  readonly kBufferGen: symbol;
}

export interface SlabReaderStats {
  readonly slabs: number;
  /** Bytes of all slabs together. */
  readonly slabBytes: number;
  /** Reads that got a fresh buffer because every slab was pinned. */
  readonly unpooledReads: number;
}

export class SlabReader {
  private readonly slabs: Slab[] = [];
  private readonly bySlabMemory = new Map<ArrayBufferLike, Slab>();
  private current: Slab | undefined;
  private unpooledReads = 0;
  private readonly slabBytes: number;
  private readonly maxSlabs: number;
  private readonly readBytes: number;

  private constructor(options: SlabReaderOptions) {
    this.slabBytes = options.slabBytes ?? DEFAULT_SLAB_BYTES;
    this.maxSlabs = options.maxSlabs ?? DEFAULT_MAX_SLABS;
    this.readBytes = Math.min(options.readBytes ?? DEFAULT_READ_BYTES, this.slabBytes, FIRST_SLAB_BYTES);
  }

  /**
   * From now on, bytes arriving on `socket` go to `onChunk` (instead of 'data' events), as views of
   * slabs to be released. Undefined when this Node.js offers no way to do that: the caller then
   * listens to 'data' as usual. Bytes the socket buffered before the call are delivered first.
   * 'end', 'close', 'error', pause() and resume() behave as before.
   */
  static attach(
    socket: Socket,
    onChunk: (chunk: Buffer) => void,
    options: SlabReaderOptions = {},
  ): SlabReader | undefined {
    const fields = nodeReadFields(socket);
    const handle = (socket as unknown as { _handle?: { useUserBuffer?: (buffer: Uint8Array) => void } })._handle;
    if (fields === undefined || typeof handle?.useUserBuffer !== "function") return undefined;
    const reader = new SlabReader(options);
    const target = socket as unknown as Record<symbol, unknown>;
    const first = reader.nextReadBuffer();
    target[fields.kBuffer] = first;
    target[fields.kBufferGen] = () => reader.nextReadBuffer();
    target[fields.kBufferCb] = (bytes: number, buffer: Buffer): void => {
      reader.noteRead(buffer, bytes);
      onChunk(buffer.subarray(0, bytes));
    };
    handle.useUserBuffer(first);
    for (let chunk = socket.read() as Buffer | null; chunk !== null; chunk = socket.read() as Buffer | null) {
      onChunk(chunk);
    }
    return reader;
  }

  /** Hands bytes back: views of chunks this reader delivered (other buffers are ignored). */
  release(pieces: readonly Buffer[] | Buffer): void {
    if (Buffer.isBuffer(pieces)) this.releaseOne(pieces);
    else for (const piece of pieces) this.releaseOne(piece);
  }

  get stats(): SlabReaderStats {
    let slabBytes = 0;
    for (const slab of this.slabs) slabBytes += slab.memory.length;
    return { slabs: this.slabs.length, slabBytes, unpooledReads: this.unpooledReads };
  }

  private releaseOne(piece: Buffer): void {
    const slab = this.bySlabMemory.get(piece.buffer);
    if (slab === undefined || piece.length === 0) return;
    slab.unreleased -= piece.length;
    if (slab.unreleased < 0) throw new Error("SlabReader: more bytes released than were read");
  }

  /** The memory the next read fills: the rest of the current slab, a released slab, or a new one. */
  private nextReadBuffer(): Buffer {
    let slab = this.current;
    if (slab === undefined || slab.filled + this.readBytes > slab.memory.length) {
      slab = this.slabs.find((candidate) => candidate.unreleased === 0);
      if (slab !== undefined) slab.filled = 0;
      else if (this.slabs.length < this.maxSlabs) slab = this.newSlab();
      else {
        this.current = undefined;
        this.unpooledReads++;
        return Buffer.allocUnsafe(this.readBytes);
      }
      this.current = slab;
    }
    return slab.memory.subarray(slab.filled, slab.filled + this.readBytes);
  }

  private noteRead(buffer: Buffer, bytes: number): void {
    const slab = this.bySlabMemory.get(buffer.buffer);
    if (slab === undefined) return;
    slab.filled = buffer.byteOffset - slab.memory.byteOffset + bytes;
    slab.unreleased += bytes;
  }

  private newSlab(): Slab {
    const bytes = Math.min(this.slabBytes, FIRST_SLAB_BYTES * 2 ** this.slabs.length);
    const slab: Slab = { memory: Buffer.allocUnsafeSlow(Math.max(bytes, this.readBytes)), filled: 0, unreleased: 0 };
    this.slabs.push(slab);
    this.bySlabMemory.set(slab.memory.buffer, slab);
    return slab;
  }
}

/** The per-socket fields behind Node's `onread` option, found by their symbol descriptions. */
function nodeReadFields(socket: Socket): NodeReadFields | undefined {
  const byName = new Map<string, symbol>();
  for (const symbol of Object.getOwnPropertySymbols(socket)) {
    if (symbol.description !== undefined) byName.set(symbol.description, symbol);
  }
  const kBuffer = byName.get("kBuffer");
  const kBufferCb = byName.get("kBufferCb");
  const kBufferGen = byName.get("kBufferGen");
  if (kBuffer === undefined || kBufferCb === undefined || kBufferGen === undefined) return undefined;
  return { kBuffer, kBufferCb, kBufferGen };
}
