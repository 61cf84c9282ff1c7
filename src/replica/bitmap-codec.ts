// How an out-of-sync bitmap is kept inside a replica's metadata record: the bit words, deflated and
// base64-encoded, which stays small for the sparse bitmaps of a short absence. A bitmap too big to
// keep is stored as "all" (every region out of sync): over-marking costs a longer resync, never data.

import { deflateRawSync, inflateRawSync } from "node:zlib";
import { RegionBitmap } from "./region-bitmap.js";

export const ALL_REGIONS = "all";

export function encodeBitmap(bitmap: RegionBitmap, maxEncodedBytes: number): string {
  if (bitmap.count === 0) return "";
  const encoded = deflateRawSync(bitmap.toBuffer(), { level: 6 }).toString("base64");
  return encoded.length <= maxEncodedBytes ? encoded : ALL_REGIONS;
}

export function decodeBitmap(encoded: string, volumeBytes: number, regionBytes: number): RegionBitmap {
  const bitmap = new RegionBitmap(volumeBytes, regionBytes);
  if (encoded === "") return bitmap;
  if (encoded === ALL_REGIONS) {
    bitmap.markRange(0, volumeBytes);
    return bitmap;
  }
  return RegionBitmap.fromBuffer(volumeBytes, regionBytes, inflateRawSync(Buffer.from(encoded, "base64")));
}
