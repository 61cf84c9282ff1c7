// The block-device interface: the one contract between a volume's data and whoever serves it.
// The NBD front talks only to this; a plain file implements it today, the replicated engine later.
// Offsets and lengths are byte counts (JavaScript numbers, exact up to 2^53, i.e. 8 PiB).

export interface BlockDeviceCapabilities {
  readonly readOnly: boolean;
  /** TRIM frees space (punches holes). */
  readonly canTrim: boolean;
  /** WRITE_ZEROES is supported (it may fall back to writing zeroes). */
  readonly canWriteZeroes: boolean;
  /** Zeroing can be done without writing data (so FAST_ZERO can be honoured). */
  readonly canFastZero: boolean;
  /** Completed writes are visible to, and FLUSH covers, every connection (true for a single writer). */
  readonly canMultiConn: boolean;
  readonly rotational: boolean;
}

export interface WriteOptions {
  /** Force unit access: durable before the call resolves. */
  readonly fua?: boolean;
}

export interface ZeroOptions extends WriteOptions {
  /** Leave the range allocated (NBD's NO_HOLE): zero it without punching a hole. */
  readonly keepAllocated?: boolean;
  /** Fail with HAVEN_ERR_NOT_SUPPORTED rather than fall back to writing zero bytes. */
  readonly fastOnly?: boolean;
}

export type WriteData = Buffer | readonly Buffer[];

export function writeDataLength(data: WriteData): number {
  if (Buffer.isBuffer(data)) return data.length;
  let total = 0;
  for (const piece of data) total += piece.length;
  return total;
}

/** One run of bytes with the same allocation state. */
export interface Extent {
  readonly length: number;
  /** Not allocated on the backing store. */
  readonly hole: boolean;
  /** Known to read as zeroes. */
  readonly zero: boolean;
}

export interface BlockDevice {
  readonly size: number;
  readonly capabilities: BlockDeviceCapabilities;
  /** Fills `target` with the bytes at `offset`. */
  read(offset: number, target: Buffer): Promise<void>;
  /** Writes `data` (one buffer, or several written back to back without copying) at `offset`. */
  write(offset: number, data: WriteData, options?: WriteOptions): Promise<void>;
  /** Makes every completed write durable. */
  flush(): Promise<void>;
  /** Discards the range; it may read back as anything afterwards (here: zeroes). */
  trim(offset: number, length: number, options?: WriteOptions): Promise<void>;
  writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void>;
  /**
   * Allocation state of [offset, offset+length): consecutive extents covering at least the first
   * byte and at most `length` bytes, never empty.
   */
  blockStatus(offset: number, length: number): Promise<Extent[]>;
  /**
   * Where [offset, offset+length) can be read from directly (a file descriptor and position), so the
   * NBD front can send it with sendfile(2) instead of copying it through a buffer. Optional: devices
   * whose data is not one file (the replicated engine, fault injection) return undefined.
   */
  zeroCopySource?(offset: number, length: number): { fd: number; position: number } | undefined;
  /** Hints that the range will be read soon. */
  cache(offset: number, length: number): Promise<void>;
  close(): Promise<void>;
}
