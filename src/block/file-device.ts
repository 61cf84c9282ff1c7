// A block device backed by one regular file or raw block device: the simplest store a volume can have.
// Reads and writes go through the page cache with pread/pwrite on Node's thread pool; FLUSH and FUA
// are fdatasync; TRIM punches holes; block status asks the file system (SEEK_DATA/SEEK_HOLE).
// One instance is shared by every connection to the export, so all of them see one another's writes
// and one fdatasync covers every completed write: that is what makes CAN_MULTI_CONN true.

import {
  close,
  constants,
  fdatasync,
  fstat,
  ftruncate,
  open,
  read,
  write,
  writev,
  writevSync,
  type Stats,
} from "node:fs";
import assert from "node:assert/strict";
import { HavenError, fromSystemError } from "../core/errors.js";
import {
  writeDataLength,
  type BlockDevice,
  type BlockDeviceCapabilities,
  type Extent,
  type WriteData,
  type WriteOptions,
  type ZeroOptions,
} from "./device.js";
import { nativeIo, type NativeIo } from "./native.js";

export interface FileDeviceOptions {
  readonly readOnly?: boolean;
  /** Create a sparse file of this many bytes if the path does not exist. */
  readonly createSizeBytes?: number;
}

/** Bytes written per call when zeroes must be written because the file system cannot punch or zero. */
const ZERO_WRITE_CHUNK_BYTES = 1024 * 1024;
/** Block status never returns more extents than this in one answer (the client asks again). */
const MAX_EXTENTS_PER_QUERY = 1024;
/**
 * Reads up to this size first try the page cache on the event loop (preadv2 RWF_NOWAIT), which never
 * blocks on the disk and saves the thread-pool round trip; larger ones, and misses, use the pool.
 */
const NOWAIT_READ_MAX_BYTES = 64 * 1024;
/**
 * Writes up to this size go to the page cache straight from the event loop: a buffered pwrite takes
 * microseconds, a thread-pool round trip costs more than that (measured: +36% 4 KiB random write
 * IOPS). Linux has no RWF_NOWAIT for buffered ext4 writes, so the guard is empirical: if one inline
 * write ever takes longer than INLINE_WRITE_SLOW_MS (dirty-page throttling, a saturated disk), small
 * writes use the pool for the next INLINE_WRITE_BACKOFF_MS, bounding how often the loop can stall.
 */
const INLINE_WRITE_MAX_BYTES = 64 * 1024;
/**
 * Writes larger than this go to the file in aligned pieces of this size. Linux sizes the page-cache
 * folios a buffered write creates by the write's length: one 1 MiB pwrite leaves 1 MiB folios, and on
 * ext4 every later 4 KiB write into such a folio walks all 256 of its block heads (measured on this
 * project's test machine: 14 us per random 4 KiB write, against 5 us in 64 KiB folios), the whole
 * folio counts as dirty, and a flush holds its lock for longer. 64 KiB pieces cost large writes
 * about a tenth of their page-cache speed and keep small writes three times cheaper.
 */
const WRITE_SEGMENT_BYTES = 64 * 1024;
const INLINE_WRITE_SLOW_MS = 10;
const INLINE_WRITE_BACKOFF_MS = 1000;

export class FileDevice implements BlockDevice {
  readonly capabilities: BlockDeviceCapabilities;
  private closed = false;
  private flushInProgress: Promise<void> | undefined;
  private flushQueued: Promise<void> | undefined;
  private zeroChunk: Buffer | undefined;
  private inlineWritesPausedUntilMs = 0;

  private constructor(
    readonly path: string,
    private readonly fd: number,
    readonly size: number,
    private readonly isBlockDevice: boolean,
    readOnly: boolean,
    private readonly native: NativeIo,
  ) {
    this.capabilities = {
      readOnly,
      canTrim: !readOnly,
      canWriteZeroes: !readOnly,
      canFastZero: !readOnly && !isBlockDevice,
      canMultiConn: true,
      rotational: false,
    };
  }

  static async open(path: string, options: FileDeviceOptions = {}): Promise<FileDevice> {
    const native = nativeIo();
    const readOnly = options.readOnly ?? false;
    let fd: number;
    try {
      fd = await openFile(path, readOnly ? constants.O_RDONLY : constants.O_RDWR);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw fromSystemError(error, `cannot open ${path}`);
      if (options.createSizeBytes === undefined) {
        throw new HavenError("HAVEN_ERR_NOT_FOUND", `${path} does not exist; pass --size to create it`);
      }
      if (readOnly) throw new HavenError("HAVEN_ERR_USAGE", `${path} does not exist and --read-only cannot create it`);
      fd = await openFile(path, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL, 0o600);
      await new Promise<void>((resolve, reject) =>
        ftruncate(fd, options.createSizeBytes!, (error) => (error ? reject(error) : resolve())),
      );
    }
    const stats = await new Promise<Stats>((resolve, reject) =>
      fstat(fd, (error, result) => (error ? reject(error) : resolve(result))),
    );
    if (!stats.isFile() && !stats.isBlockDevice()) {
      await closeFile(fd);
      throw new HavenError("HAVEN_ERR_USAGE", `${path} is neither a regular file nor a block device`);
    }
    const size = stats.isBlockDevice() ? native.seekEnd(fd) : stats.size;
    if (options.createSizeBytes !== undefined && size !== options.createSizeBytes) {
      await closeFile(fd);
      throw new HavenError(
        "HAVEN_ERR_USAGE",
        `${path} already exists with ${size} bytes but --size asks for ${options.createSizeBytes}; ` +
          `Haven never resizes existing data: drop --size or pick another path`,
      );
    }
    if (size === 0) {
      await closeFile(fd);
      throw new HavenError("HAVEN_ERR_USAGE", `${path} is empty; an export needs at least one byte`);
    }
    return new FileDevice(path, fd, size, stats.isBlockDevice(), readOnly, native);
  }

  read(offset: number, target: Buffer): Promise<void> {
    const refused = this.refusal(() => this.checkRange(offset, target.length));
    if (refused) return refused;
    let start = 0;
    if (target.length <= NOWAIT_READ_MAX_BYTES) {
      const cached = this.native.readNoWait(this.fd, target, offset);
      if (cached === target.length) return Promise.resolve();
      if (cached > 0) start = cached;
    }
    return new Promise((resolve, reject) => {
      const step = (done: number): void => {
        read(this.fd, target, done, target.length - done, offset + done, (error, bytesRead) => {
          if (error)
            return reject(fromSystemError(error, `read ${target.length} bytes at ${offset} from ${this.path}`));
          const total = done + bytesRead;
          if (total === target.length) return resolve();
          if (bytesRead === 0) {
            // The file shrank under us or the device ended early: what is not there reads as zeroes.
            target.fill(0, total);
            return resolve();
          }
          step(total);
        });
      };
      step(start);
    });
  }

  write(offset: number, data: WriteData, options: WriteOptions = {}): Promise<void> {
    const length = writeDataLength(data);
    const refused = this.refusal(() => {
      this.checkWritable();
      this.checkRange(offset, length);
    });
    if (refused) return refused;
    const pieces = Buffer.isBuffer(data) ? [data] : data;
    const written =
      length > WRITE_SEGMENT_BYTES
        ? this.writeSegments(offset, pieces, length)
        : performance.now() >= this.inlineWritesPausedUntilMs && length <= INLINE_WRITE_MAX_BYTES
          ? this.writeInline(offset, pieces, length)
          : this.writeMany(offset, pieces, length);
    return options.fua ? written.then(() => this.flush()) : written;
  }

  private writeInline(offset: number, pieces: readonly Buffer[], length: number): Promise<void> {
    const started = performance.now();
    let bytesWritten: number;
    try {
      bytesWritten = writevSync(this.fd, pieces as Buffer[], offset);
    } catch (error) {
      return Promise.reject(fromSystemError(error, `write ${length} bytes at ${offset} to ${this.path}`));
    }
    const finished = performance.now();
    if (finished - started > INLINE_WRITE_SLOW_MS) this.inlineWritesPausedUntilMs = finished + INLINE_WRITE_BACKOFF_MS;
    if (bytesWritten === length) return Promise.resolve();
    return this.writeMany(offset + bytesWritten, skipBytes(pieces, bytesWritten), length - bytesWritten);
  }

  /** A large write in aligned segments of WRITE_SEGMENT_BYTES, in one thread-pool job (see the constant). */
  private writeSegments(offset: number, pieces: readonly Buffer[], length: number): Promise<void> {
    return this.native.writeSegments(this.fd, pieces, offset, WRITE_SEGMENT_BYTES).then(
      () => undefined,
      (error: unknown) => {
        throw fromSystemError(error, `write ${length} bytes at ${offset} to ${this.path}`);
      },
    );
  }

  private writeMany(offset: number, pieces: readonly Buffer[], length: number): Promise<void> {
    if (pieces.length === 1) return this.writeOne(offset, pieces[0]!);
    return new Promise<void>((resolve, reject) => {
      writev(this.fd, pieces as Buffer[], offset, (error, bytesWritten) => {
        if (error) return reject(fromSystemError(error, `write ${length} bytes at ${offset} to ${this.path}`));
        if (bytesWritten === length) return resolve();
        // Short vectored write: finish the rest.
        this.writeMany(offset + bytesWritten, skipBytes(pieces, bytesWritten), length - bytesWritten).then(
          resolve,
          reject,
        );
      });
    });
  }

  private writeOne(offset: number, data: Buffer): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const step = (done: number): void => {
        write(this.fd, data, done, data.length - done, offset + done, (error, bytesWritten) => {
          if (error) return reject(fromSystemError(error, `write ${data.length} bytes at ${offset} to ${this.path}`));
          const total = done + bytesWritten;
          if (total === data.length) return resolve();
          step(total);
        });
      };
      step(0);
    });
  }

  /**
   * Starts the disk write of the range's dirty pages and returns without waiting for it to finish
   * (sync_file_range). Not a durability point, only a way to keep the disk busy while more data is
   * coming, so that a later flush has little left to do: a bulk copy (a rebuild) otherwise leaves the
   * disk idle until its final flush, because the kernel starts writing back only past its dirty limit.
   */
  startWriteback(offset: number, length: number): Promise<void> {
    const refused = this.refusal(() => this.checkOpen());
    if (refused) return refused;
    return this.native.startWriteback(this.fd, offset, length).catch((error: unknown) => {
      throw fromSystemError(error, `start writeback of ${length} bytes at ${offset} of ${this.path}`);
    });
  }

  /**
   * fdatasync, coalesced: a FLUSH that arrives while one is running waits for the next one, which
   * starts after the running one ends and so covers every write completed before this call.
   */
  flush(): Promise<void> {
    const refused = this.refusal(() => this.checkOpen());
    if (refused) return refused;
    if (this.flushInProgress === undefined) {
      this.flushInProgress = this.datasync().finally(() => {
        this.flushInProgress = undefined;
      });
      return this.flushInProgress;
    }
    if (this.flushQueued === undefined) {
      this.flushQueued = this.flushInProgress
        .catch(() => undefined)
        .then(() => {
          this.flushQueued = undefined;
          return this.flush();
        });
    }
    return this.flushQueued;
  }

  /**
   * Copies `length` bytes from another file (`source`, as zeroCopySource gives it) to [offset,
   * offset+length) inside the kernel (copy_file_range): one copy, page cache to page cache, instead of
   * two through a user buffer. For a rebuild between two local copies. Fails with the errno when the
   * kernel cannot do it for these files (EXDEV, EINVAL); the caller then copies by hand.
   */
  async copyFrom(source: { fd: number; position: number }, offset: number, length: number): Promise<void> {
    this.checkWritable();
    this.checkRange(offset, length);
    let copied: number;
    try {
      copied = await this.native.copyRange(source.fd, source.position, this.fd, offset, length);
    } catch (error) {
      throw fromSystemError(error, `copy ${length} bytes to ${offset} in ${this.path}`);
    }
    if (copied !== length)
      throw new HavenError("HAVEN_ERR_IO", `copy to ${this.path}: the source ended after ${copied} of ${length} bytes`);
  }

  async trim(offset: number, length: number, options: WriteOptions = {}): Promise<void> {
    this.checkWritable();
    this.checkRange(offset, length);
    if (this.isBlockDevice) return; // advisory; BLKDISCARD would need an ioctl, not worth it yet
    await this.fallocate(this.native.FALLOC.PUNCH_HOLE | this.native.FALLOC.KEEP_SIZE, offset, length, "trim");
    if (options.fua) await this.flush();
  }

  async writeZeroes(offset: number, length: number, options: ZeroOptions = {}): Promise<void> {
    this.checkWritable();
    this.checkRange(offset, length);
    const { PUNCH_HOLE, KEEP_SIZE, ZERO_RANGE } = this.native.FALLOC;
    const mode = options.keepAllocated ? ZERO_RANGE | KEEP_SIZE : PUNCH_HOLE | KEEP_SIZE;
    let done = false;
    if (!this.isBlockDevice) {
      try {
        await this.fallocate(mode, offset, length, "write zeroes");
        done = true;
      } catch (error) {
        if (!(error instanceof HavenError && error.code === "HAVEN_ERR_NOT_SUPPORTED")) throw error;
      }
    }
    if (!done) {
      if (options.fastOnly) {
        throw new HavenError("HAVEN_ERR_NOT_SUPPORTED", `${this.path} cannot zero without writing; FAST_ZERO refused`);
      }
      await this.writeZeroBytes(offset, length);
    }
    if (options.fua) await this.flush();
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.checkRange(offset, length);
    assert.ok(length > 0, "block status of an empty range");
    const end = offset + length;
    if (this.isBlockDevice) return [{ length, hole: false, zero: false }];
    const extents: Extent[] = [];
    let cursor = offset;
    try {
      while (cursor < end && extents.length < MAX_EXTENTS_PER_QUERY) {
        const dataStart = this.native.seekData(this.fd, cursor);
        if (dataStart === -1 || dataStart >= end) {
          extents.push({ length: end - cursor, hole: true, zero: true });
          break;
        }
        if (dataStart > cursor) {
          extents.push({ length: dataStart - cursor, hole: true, zero: true });
          cursor = dataStart;
          continue;
        }
        const holeStart = this.native.seekHole(this.fd, cursor);
        const dataEnd = holeStart === -1 ? end : Math.min(holeStart, end);
        assert.ok(dataEnd > cursor, "SEEK_HOLE went backwards");
        extents.push({ length: dataEnd - cursor, hole: false, zero: false });
        cursor = dataEnd;
      }
    } catch (error) {
      // A file system without SEEK_DATA support: everything is data, which is always true.
      if (extents.length === 0) return [{ length, hole: false, zero: false }];
      if (!(error instanceof Error)) throw error;
    }
    return extents;
  }

  zeroCopySource(offset: number, length: number): { fd: number; position: number } | undefined {
    if (this.closed || offset + length > this.size) return undefined;
    return { fd: this.fd, position: offset };
  }

  async cache(offset: number, length: number): Promise<void> {
    this.checkRange(offset, length);
    // Reading the range pulls it into the page cache; bounded chunks keep memory flat.
    const chunk = Buffer.allocUnsafe(Math.min(length, ZERO_WRITE_CHUNK_BYTES));
    for (let done = 0; done < length; done += chunk.length) {
      await this.read(offset + done, chunk.subarray(0, Math.min(chunk.length, length - done)));
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await (this.flushQueued ?? this.flushInProgress)?.catch(() => undefined);
    this.closed = true;
    await closeFile(this.fd);
  }

  /** Runs synchronous checks; a refusal becomes a rejected promise, as callers of an async API expect. */
  private refusal(checks: () => void): Promise<never> | undefined {
    try {
      checks();
      return undefined;
    } catch (error) {
      return Promise.reject(error);
    }
  }

  private checkOpen(): void {
    if (this.closed) throw new HavenError("HAVEN_ERR_SHUTTING_DOWN", `${this.path} is closed`);
  }

  private checkWritable(): void {
    this.checkOpen();
    if (this.capabilities.readOnly) throw new HavenError("HAVEN_ERR_READ_ONLY", `${this.path} is open read-only`);
  }

  private checkRange(offset: number, length: number): void {
    this.checkOpen();
    assert.ok(Number.isSafeInteger(offset) && offset >= 0, `bad offset ${offset}`);
    assert.ok(Number.isSafeInteger(length) && length >= 0, `bad length ${length}`);
    if (offset + length > this.size) {
      throw new HavenError("HAVEN_ERR_OUT_OF_RANGE", `${length} bytes at ${offset} end past ${this.size} bytes`);
    }
  }

  private datasync(): Promise<void> {
    return new Promise((resolve, reject) =>
      fdatasync(this.fd, (error) => (error ? reject(fromSystemError(error, `fdatasync ${this.path}`)) : resolve())),
    );
  }

  private async fallocate(mode: number, offset: number, length: number, what: string): Promise<void> {
    try {
      await this.native.fallocate(this.fd, mode, offset, length);
    } catch (error) {
      throw fromSystemError(error, `${what} ${length} bytes at ${offset} on ${this.path}`);
    }
  }

  private async writeZeroBytes(offset: number, length: number): Promise<void> {
    this.zeroChunk ??= Buffer.alloc(ZERO_WRITE_CHUNK_BYTES);
    for (let done = 0; done < length; done += ZERO_WRITE_CHUNK_BYTES) {
      const piece = Math.min(ZERO_WRITE_CHUNK_BYTES, length - done);
      await this.write(offset + done, this.zeroChunk.subarray(0, piece));
    }
  }
}

/** The pieces that remain after the first `bytes` bytes. */
function skipBytes(pieces: readonly Buffer[], bytes: number): Buffer[] {
  let skip = bytes;
  const rest: Buffer[] = [];
  for (const piece of pieces) {
    if (skip >= piece.length) skip -= piece.length;
    else {
      rest.push(piece.subarray(skip));
      skip = 0;
    }
  }
  return rest;
}

function openFile(path: string, flags: number, mode?: number): Promise<number> {
  return new Promise((resolve, reject) =>
    open(path, flags, mode, (error, fd) => (error ? reject(error) : resolve(fd))),
  );
}

function closeFile(fd: number): Promise<void> {
  return new Promise((resolve, reject) => close(fd, (error) => (error ? reject(error) : resolve())));
}
