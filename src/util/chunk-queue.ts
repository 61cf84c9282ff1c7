// Bytes received from a socket, kept as the chunks they arrived in until a parser takes them.
// Taking copies only when a requested run spans chunks; payloads can be taken as slices, uncopied.
// With a `release` callback (a SlabReader's), bytes taken with take() are handed back at once: the
// caller parses them on the spot. Bytes taken with takePieces() are the caller's to release.

export class ChunkQueue {
  private chunks: Buffer[] = [];
  private total = 0;

  constructor(private readonly release?: (pieces: readonly Buffer[] | Buffer) => void) {}

  get length(): number {
    return this.total;
  }

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  /**
   * The next `bytes` bytes as one Buffer (a slice when they sit in one chunk, else a copy). With a
   * `release` callback, a slice is valid only until the socket reads again: use it before returning.
   */
  take(bytes: number): Buffer {
    const first = this.chunks[0];
    if (first !== undefined && first.length >= bytes) {
      this.consume(bytes);
      const slice = first.subarray(0, bytes);
      this.release?.(slice);
      return slice;
    }
    return this.takeCopy(bytes);
  }

  /** The next `bytes` bytes as a Buffer of their own (always a copy), the queue's slices released. */
  takeCopy(bytes: number): Buffer {
    const pieces = this.takePieces(bytes);
    const result = Buffer.concat(pieces, bytes);
    this.release?.(pieces);
    return result;
  }

  /** The next `bytes` bytes as the slices they arrived in, without copying. */
  takePieces(bytes: number): Buffer[] {
    if (bytes > this.total) throw new RangeError(`asked for ${bytes} bytes, ${this.total} buffered`);
    const pieces: Buffer[] = [];
    let needed = bytes;
    while (needed > 0) {
      const chunk = this.chunks[0]!;
      const piece = Math.min(chunk.length, needed);
      pieces.push(chunk.subarray(0, piece));
      this.consume(piece);
      needed -= piece;
    }
    return pieces;
  }

  /** Everything still buffered, emptying the queue. */
  drain(): Buffer[] {
    const rest = this.chunks;
    this.chunks = [];
    this.total = 0;
    return rest;
  }

  private consume(bytes: number): void {
    const first = this.chunks[0]!;
    if (first.length === bytes) this.chunks.shift();
    else this.chunks[0] = first.subarray(bytes);
    this.total -= bytes;
  }
}
