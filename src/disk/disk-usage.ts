// How full a disk is and what its copies take, in the numbers operators check with df and du:
//   sizeBytes, freeBytes, usedBytes  statfs of the disk's root, as `df --block-size=1` shows them
//                                    (1B-blocks = f_blocks, Avail = f_bavail, Used = f_blocks - f_bfree;
//                                    so free + used < size by the blocks reserved for root);
//   allocatedBytes                   per copy directory, st_blocks * 512 summed over it, the directory
//                                    itself included, as `du -s --block-size=1` does: what a sparse
//                                    copy really takes;
//   apparentBytes                    the same walk summing st_size, as `du -s --apparent-size
//                                    --block-size=1` of Debian 12's coreutils (9.1) does, directories
//                                    included: the copy's logical size.
// Like du, the walk does not follow symbolic links and counts a file with several hard links once.
// A copy directory that does not exist is reported as missing with zeros, not as an error: the
// caller decides whether a missing copy matters.

import { lstat, readdir, statfs } from "node:fs/promises";
import { join, resolve } from "node:path";
import { HavenError, fromSystemError } from "../core/errors.js";

export interface CopyUsage {
  /** As the caller gave it. */
  readonly dir: string;
  readonly allocatedBytes: number;
  readonly apparentBytes: number;
  readonly missing: boolean;
}

export interface DiskUsage {
  readonly sizeBytes: number;
  /** Free for Haven (an unprivileged writer): df's Avail. */
  readonly freeBytes: number;
  /** Used by anything on the filesystem: df's Used. */
  readonly usedBytes: number;
  readonly copies: readonly CopyUsage[];
}

/** A copy directory holds a few files (data, metadata, bitmap); far more means it is not one. */
export const MAX_ENTRIES_PER_COPY = 100_000;
/** du's unit for st_blocks (POSIX leaves it open; Linux always uses 512). */
const ST_BLOCK_BYTES = 512;

/** The disk at `root` and the copies in `copyDirs` (absolute, or relative to `root`). */
export async function diskUsage(root: string, copyDirs: readonly string[]): Promise<DiskUsage> {
  let fs;
  try {
    fs = await statfs(root);
  } catch (error) {
    throw fromSystemError(error, `reading the filesystem of ${root}`);
  }
  // Node reports f_bsize; df multiplies by f_frsize. They are equal on ext4, xfs and tmpfs.
  const copies: CopyUsage[] = [];
  for (const dir of copyDirs) copies.push(await copyUsage(dir, resolve(root, dir)));
  return {
    sizeBytes: fs.blocks * fs.bsize,
    freeBytes: fs.bavail * fs.bsize,
    usedBytes: (fs.blocks - fs.bfree) * fs.bsize,
    copies,
  };
}

async function copyUsage(dir: string, path: string): Promise<CopyUsage> {
  const seen = new Set<string>();
  let allocatedBytes = 0;
  let apparentBytes = 0;
  let entries = 0;

  /** Adds `entry` (lstat'ed) and, for a directory, what is under it; false when it vanished meanwhile. */
  const visit = async (entry: string): Promise<boolean> => {
    let info;
    try {
      info = await lstat(entry, { bigint: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return false;
      throw fromSystemError(error, `measuring ${entry}`);
    }
    if (++entries > MAX_ENTRIES_PER_COPY) {
      throw new HavenError(
        "HAVEN_ERR_TOO_LARGE",
        `${path} holds more than ${MAX_ENTRIES_PER_COPY} entries: it is not a copy directory`,
      );
    }
    const inode = `${info.dev}:${info.ino}`;
    if (info.nlink > 1n && !info.isDirectory()) {
      if (seen.has(inode)) return true;
      seen.add(inode);
    }
    allocatedBytes += Number(info.blocks) * ST_BLOCK_BYTES;
    apparentBytes += Number(info.size);
    if (info.isDirectory()) {
      let names: string[];
      try {
        names = await readdir(entry);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === "ENOENT") return true;
        throw fromSystemError(error, `listing ${entry}`);
      }
      for (const name of names.sort()) await visit(join(entry, name));
    }
    return true;
  };

  const present = await visit(path);
  return { dir, allocatedBytes, apparentBytes, missing: !present };
}
