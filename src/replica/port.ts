// A replica as the engine sees it: one interface whether the copy is a directory on a local disk or
// a replica server across the network, so the engine never cares which (DESIGN.md: local RAID1 and
// network RAID are the same mechanism). Every mutating call carries the writer's epoch and is refused
// (HAVEN_ERR_STALE_EPOCH) below the highest epoch the copy has seen.

import type { Extent, WriteData } from "../block/device.js";
import type { MetadataPatch, ReplicaMetadata } from "./replica-store.js";

/** Bytes of checksum per region in a CHECKSUM answer (a truncated SHA-256). */
export const REGION_DIGEST_BYTES = 16;

export interface ReplicaPort {
  /** Where the copy lives, as given on the command line: a directory, or tcp://host:port. */
  readonly location: string;
  /** On this host's own disks (reads prefer local copies). */
  readonly local: boolean;
  /** The copy's metadata as last read or written. */
  readonly metadata: ReplicaMetadata;
  /** Called once if the copy becomes unreachable (a dropped connection); never for local copies. */
  onLost: ((error: Error) => void) | undefined;

  read(offset: number, length: number): Promise<Buffer>;
  /** Local copies: reads straight into the caller's buffer, and hands out the file for sendfile(2). */
  readInto?(offset: number, target: Buffer): Promise<void>;
  zeroCopySource?(offset: number, length: number): { fd: number; position: number } | undefined;
  write(epoch: number, offset: number, data: WriteData, fua: boolean): Promise<void>;
  trim(epoch: number, offset: number, length: number, fua: boolean): Promise<void>;
  writeZeroes(epoch: number, offset: number, length: number, fua: boolean): Promise<void>;
  flush(): Promise<void>;
  /**
   * Local copies: writes `length` bytes from another local copy's file (its zeroCopySource) at
   * `offset`, inside the kernel. A rebuild's fast path; on failure the caller copies by hand.
   */
  copyFrom?(epoch: number, offset: number, source: { fd: number; position: number }, length: number): Promise<void>;
  /** Local copies: starts writing the range to disk without waiting (a bulk copy's hint, not a flush). */
  startWriteback?(offset: number, length: number): Promise<void>;
  /**
   * Grows the copy to `sizeBytes` (never shrinks it: refused) for a writer at `epoch`: its data file with
   * zeroes, then its metadata (bitmaps re-sized), durable before this resolves with the new metadata.
   * Absent on ports that cannot grow (the simulation's); the engine then leaves such a copy out.
   */
  grow?(epoch: number, sizeBytes: number): Promise<ReplicaMetadata>;
  /** Durably changes the writer-owned metadata; resolves with the new metadata once it is synced. */
  updateMetadata(epoch: number, patch: MetadataPatch): Promise<ReplicaMetadata>;
  /** One digest of REGION_DIGEST_BYTES per region of `regionBytes` in [offset, offset+length), concatenated. */
  checksum(offset: number, length: number, regionBytes: number): Promise<Buffer>;
  /** Allocation of [offset, offset+length): extents covering at least its first byte. */
  blockStatus(offset: number, length: number): Promise<Extent[]>;
  /** Flushes, records a clean shutdown and closes (local), or disconnects (remote). Never throws. */
  close(): Promise<void>;
}

export interface CreateOptions {
  readonly volumeId: string;
  readonly sizeBytes: number;
  readonly regionBytes: number;
}

/**
 * How the engine reaches the copy of volume `name` at a location (a copy lives in LOCATION/NAME/):
 * opens it, or creates it when `create` is given and there is none. No copy and no `create`:
 * HAVEN_ERR_NOT_FOUND.
 */
export type ReplicaOpener = (location: string, name: string, create: CreateOptions | undefined) => Promise<ReplicaPort>;

const VOLUME_NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;

/** How a replica server names one copy: the volume, and the disk that holds it when the engine said which. */
export function copyKey(volume: string, disk: string | undefined): string {
  return disk === undefined ? volume : `${volume}@${disk}`;
}

/** Whether copy key `key` (copyKey) is a copy of `volume`. */
export function isCopyOf(key: string, volume: string): boolean {
  return key === volume || key.startsWith(`${volume}@`);
}

export function isValidVolumeName(name: string): boolean {
  return VOLUME_NAME.test(name) && name !== "." && name !== "..";
}
