// Growing a copy (haven volume resize): the pure part. A copy grows by extending its data file with
// zeroes and then saving metadata of the new size, in that order, so a crash between the two leaves a
// data file longer than its metadata says, which opening trims back (replica-store.ts): the tail was
// never written, since nothing writes past the size the metadata gives.
//
// The out-of-sync bitmaps a copy keeps (changedSince, one per older generation, and a resync's
// `remaining`) are sized to the volume: each is re-encoded at the new size with the same regions set.
// The new regions need no mark: every copy gets them as zeroes when it grows, which happens before any
// engine uses the copy at the new size (engine.ts grows a copy as it opens it), and the engine marks
// every write to them in its change bitmaps like any other write. A bitmap kept as "all regions" stays
// "all" (over-marking costs a longer resync, never data). The activity log lists extents, not a bitmap,
// so it needs nothing.

import { HavenError } from "../core/errors.js";
import { ALL_REGIONS, decodeBitmap, encodeBitmap } from "./bitmap-codec.js";
import { RegionBitmap } from "./region-bitmap.js";

/** What growing reads and changes of a copy's metadata (replica-store.ts's ReplicaMetadata). */
export interface SizedMetadata {
  readonly sizeBytes: number;
  readonly regionBytes: number;
  readonly changedSince: Readonly<Record<string, string>>;
  readonly resync: { readonly validFor: string; readonly remaining: string } | null;
}

/** Bound on a re-encoded bitmap (as the engine's own): a larger one is kept as "all regions". */
const MAX_ENCODED_BITMAP_BYTES = 10 * 1024;

/** Refuses (HAVEN_ERR_USAGE) a size that would shrink the copy; true when it must grow, false when equal. */
export function mustGrow(current: Pick<SizedMetadata, "sizeBytes">, sizeBytes: number): boolean {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0)
    throw new HavenError("HAVEN_ERR_INVALID_REQUEST", `a copy cannot grow to ${sizeBytes} bytes`);
  if (sizeBytes < current.sizeBytes)
    throw new HavenError(
      "HAVEN_ERR_INVALID_REQUEST",
      `the copy is ${current.sizeBytes} bytes: it never shrinks (to ${sizeBytes}), which would destroy data`,
    );
  return sizeBytes > current.sizeBytes;
}

/** The copy's metadata at `sizeBytes` (larger than its own): its bitmaps carried over to the new size. */
export function grownMetadata<T extends SizedMetadata>(metadata: T, sizeBytes: number): T {
  const grow = (encoded: string): string => grownBitmap(encoded, metadata.sizeBytes, sizeBytes, metadata.regionBytes);
  const changedSince: Record<string, string> = {};
  for (const [base, encoded] of Object.entries(metadata.changedSince)) changedSince[base] = grow(encoded);
  return {
    ...metadata,
    sizeBytes,
    changedSince,
    resync: metadata.resync === null ? null : { ...metadata.resync, remaining: grow(metadata.resync.remaining) },
  };
}

/** An encoded bitmap of a `fromBytes` volume, re-encoded for a `toBytes` one with the same regions set. */
export function grownBitmap(encoded: string, fromBytes: number, toBytes: number, regionBytes: number): string {
  if (encoded === "" || encoded === ALL_REGIONS) return encoded;
  const before = decodeBitmap(encoded, fromBytes, regionBytes);
  const after = new RegionBitmap(toBytes, regionBytes);
  for (const run of before.runs()) after.markRange(run.offset, run.length);
  return encodeBitmap(after, MAX_ENCODED_BITMAP_BYTES);
}
