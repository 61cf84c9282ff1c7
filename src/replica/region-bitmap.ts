// The out-of-sync bitmap: one bit per region of a volume (regionBytes, 64 KiB by default), set for
// every region a replica may have missed. Byte ranges map to the regions they touch, so a partial
// region is always counted as out of sync (over-marking is safe, under-marking loses data).
// Pure and synchronous; persisting it is the replica store's job.

import assert from "node:assert/strict";

export const DEFAULT_REGION_BYTES = 64 * 1024;

export interface Run {
  /** Byte offset of the first region of the run. */
  readonly offset: number;
  /** Bytes covered, clipped to the volume's end. */
  readonly length: number;
}

export class RegionBitmap {
  readonly regionCount: number;
  private readonly words: Uint32Array;
  private setCount = 0;

  constructor(
    readonly volumeBytes: number,
    readonly regionBytes: number = DEFAULT_REGION_BYTES,
  ) {
    assert.ok(Number.isSafeInteger(volumeBytes) && volumeBytes > 0, "volume size must be positive");
    assert.ok(
      regionBytes >= 4096 && (regionBytes & (regionBytes - 1)) === 0,
      "region size must be a power of two >= 4 KiB",
    );
    this.regionCount = Math.ceil(volumeBytes / regionBytes);
    this.words = new Uint32Array(Math.ceil(this.regionCount / 32));
  }

  /** Regions marked out of sync. */
  get count(): number {
    return this.setCount;
  }

  /** Bytes marked out of sync (the last region clipped to the volume's end). */
  get bytes(): number {
    let total = this.setCount * this.regionBytes;
    if (this.isSet(this.regionCount - 1)) total -= this.regionCount * this.regionBytes - this.volumeBytes;
    return total;
  }

  /** Marks every region touched by [offset, offset+length). */
  markRange(offset: number, length: number): void {
    this.forRegions(offset, length, (region) => this.setBit(region, true));
  }

  /** Clears only regions lying entirely inside [offset, offset+length) (or ending at the volume's end). */
  clearRange(offset: number, length: number): void {
    if (length === 0) return;
    this.checkRange(offset, length);
    const end = offset + length;
    const first = Math.ceil(offset / this.regionBytes);
    const last = end === this.volumeBytes ? this.regionCount - 1 : Math.floor(end / this.regionBytes) - 1;
    for (let region = first; region <= last; region++) this.setBit(region, false);
  }

  isSet(region: number): boolean {
    return (this.words[region >>> 5]! & (1 << (region & 31))) !== 0;
  }

  /** True if any region touched by the range is marked. */
  overlaps(offset: number, length: number): boolean {
    let found = false;
    this.forRegions(offset, length, (region) => {
      found ||= this.isSet(region);
    });
    return found;
  }

  /** Marked regions as byte runs, in order, each at most maxRunBytes long. */
  *runs(maxRunBytes = Number.MAX_SAFE_INTEGER): Generator<Run> {
    const regionsPerRun = Math.max(1, Math.floor(maxRunBytes / this.regionBytes));
    let region = 0;
    while (region < this.regionCount) {
      if (this.words[region >>> 5] === 0) {
        region = (region | 31) + 1;
        continue;
      }
      if (!this.isSet(region)) {
        region++;
        continue;
      }
      const start = region;
      while (region < this.regionCount && this.isSet(region) && region - start < regionsPerRun) region++;
      const offset = start * this.regionBytes;
      yield { offset, length: Math.min(region * this.regionBytes, this.volumeBytes) - offset };
    }
  }

  /** Serialized form: the bit words, little-endian. */
  toBuffer(): Buffer {
    return Buffer.from(this.words.buffer, this.words.byteOffset, this.words.byteLength);
  }

  static fromBuffer(volumeBytes: number, regionBytes: number, data: Buffer): RegionBitmap {
    const bitmap = new RegionBitmap(volumeBytes, regionBytes);
    assert.equal(data.length, bitmap.words.byteLength, "bitmap size does not match the volume");
    for (let i = 0; i < bitmap.words.length; i++) bitmap.words[i] = data.readUInt32LE(i * 4);
    const tail = bitmap.regionCount % 32;
    if (tail !== 0) bitmap.words[bitmap.words.length - 1]! &= (1 << tail) - 1; // ignore bits past the end
    bitmap.setCount = 0;
    for (let region = 0; region < bitmap.regionCount; region++) if (bitmap.isSet(region)) bitmap.setCount++;
    return bitmap;
  }

  private setBit(region: number, value: boolean): void {
    const mask = 1 << (region & 31);
    const word = this.words[region >>> 5]!;
    const was = (word & mask) !== 0;
    if (was === value) return;
    this.words[region >>> 5] = value ? word | mask : word & ~mask;
    this.setCount += value ? 1 : -1;
  }

  private forRegions(offset: number, length: number, visit: (region: number) => void): void {
    if (length === 0) return;
    this.checkRange(offset, length);
    const last = Math.floor((offset + length - 1) / this.regionBytes);
    for (let region = Math.floor(offset / this.regionBytes); region <= last; region++) visit(region);
  }

  private checkRange(offset: number, length: number): void {
    assert.ok(Number.isSafeInteger(offset) && offset >= 0 && Number.isSafeInteger(length) && length >= 0, "bad range");
    assert.ok(
      offset + length <= this.volumeBytes,
      `range ${offset}+${length} past the volume's ${this.volumeBytes} bytes`,
    );
  }
}
