// Reuses large I/O buffers. A fresh multi-megabyte Buffer is a fresh mmap: every 4 KiB page of it
// faults on first touch and is unmapped again after garbage collection, which costs more CPU than
// copying the data itself. Buffers here are handed out per size class (powers of two) and come
// back when the socket has sent them. The pool holds at most `maxPooledBytes`.

import assert from "node:assert/strict";

export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private pooledBytes = 0;

  constructor(
    private readonly minPooledBytes: number,
    private readonly maxPooledBytes: number,
  ) {}

  /** A buffer of exactly `bytes` bytes (a view of a pooled one when large enough to be worth it). */
  take(bytes: number): Buffer {
    if (bytes < this.minPooledBytes) return Buffer.allocUnsafe(bytes);
    const capacity = sizeClass(bytes);
    const list = this.free.get(capacity);
    const backing = list?.pop();
    if (backing !== undefined) {
      this.pooledBytes -= capacity;
      return backing.subarray(0, bytes);
    }
    return Buffer.allocUnsafeSlow(capacity).subarray(0, bytes);
  }

  /** Returns a buffer obtained from take(); the caller must not touch it afterwards. */
  give(buffer: Buffer): void {
    if (buffer.length < this.minPooledBytes) return;
    const capacity = buffer.buffer.byteLength;
    assert.equal(capacity, sizeClass(capacity), "a buffer the pool did not hand out");
    if (this.pooledBytes + capacity > this.maxPooledBytes) return;
    const list = this.free.get(capacity) ?? [];
    list.push(Buffer.from(buffer.buffer, 0, capacity));
    this.free.set(capacity, list);
    this.pooledBytes += capacity;
  }
}

function sizeClass(bytes: number): number {
  return 2 ** Math.ceil(Math.log2(bytes));
}
