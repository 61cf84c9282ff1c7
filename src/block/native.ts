// Loads the native addon (native/haven_io.c) that gives Node.js fallocate and lseek(SEEK_DATA/SEEK_HOLE).
// Why an addon rather than an allocation map kept in user space: a map cannot know about holes in a
// file Haven did not write itself, cannot free disk space on TRIM, and would have to be made crash-safe;
// the file system already keeps the truth, and asking it costs one system call.

import { createRequire } from "node:module";
import { join } from "node:path";
import { packageRoot } from "../util/repo-root.js";

export interface NativeIo {
  fallocate(fd: number, mode: number, offset: number, length: number): Promise<void>;
  /** sync_file_range(SYNC_FILE_RANGE_WRITE) on a pool thread: starts writing the range's dirty pages. */
  startWriteback(fd: number, offset: number, length: number): Promise<void>;
  /** lseek(SEEK_DATA): the first data offset at or after `offset`, or -1 if there is none. */
  seekData(fd: number, offset: number): number;
  /** lseek(SEEK_HOLE): the first hole offset at or after `offset` (end of file counts), or -1. */
  seekHole(fd: number, offset: number): number;
  seekEnd(fd: number): number;
  /** preadv2(RWF_NOWAIT): bytes read from the page cache, or -1 if the read would block. */
  readNoWait(fd: number, target: Buffer, position: number): number;
  /** pwritev2(RWF_NOWAIT): bytes written, or -1 if the write would block or is not supported. */
  writeNoWait(fd: number, data: Buffer, position: number): number;
  /**
   * sendfile(2) of a reply on a pool thread: header, then file bytes; resolves with the bytes sent,
   * fewer than asked when the socket filled up (the caller sends the rest).
   */
  sendFileReply(socketFd: number, header: Buffer, fileFd: number, position: number, length: number): Promise<number>;
  /**
   * copy_file_range(2) on a pool thread, repeated until done: the bytes copied (fewer if the source
   * ended). Rejects with the errno's name in `code` (EXDEV, EINVAL, ENOSYS when it cannot be used).
   */
  copyRange(fdIn: number, positionIn: number, fdOut: number, positionOut: number, length: number): Promise<number>;
  /**
   * pwritev of `buffers` from `position` on a pool thread, one call per aligned segment of
   * `segmentBytes`, repeated until all is written: resolves with the bytes written. Rejects with the
   * errno's name in `code` and the bytes written before the failure in `bytesWritten`.
   */
  writeSegments(fd: number, buffers: readonly Buffer[], position: number, segmentBytes: number): Promise<number>;
  /** flock(LOCK_EX|LOCK_NB): true when this file description now holds the lock, false if another does. */
  lockExclusive(fd: number): boolean;
  readonly FALLOC: { readonly KEEP_SIZE: number; readonly PUNCH_HOLE: number; readonly ZERO_RANGE: number };
}

let loaded: NativeIo | undefined;

export function nativeIo(): NativeIo {
  if (loaded === undefined) {
    const require = createRequire(import.meta.url);
    const path = join(packageRoot(), "build", "Release", "haven_io.node");
    try {
      loaded = require(path) as NativeIo;
    } catch (error) {
      throw new Error(`cannot load Haven's native addon at ${path}: run 'npm install' (it builds it with node-gyp)`, {
        cause: error,
      });
    }
  }
  return loaded;
}
