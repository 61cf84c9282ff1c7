// Online verify: compares the in-sync copies region by region by checksum while the volume is in
// use. Each chunk is checked under an exclusive range lock, so a client write can never make copies
// look different mid-compare. Mismatching regions are reported; with repair they are copied from the
// primary (the copy reads come from) to the copies that differ, and each repair is logged. It sees the
// volume only through BackgroundAccess (background-access.ts).

import { HavenError, errorMessage } from "../core/errors.js";
import { REGION_DIGEST_BYTES } from "../replica/port.js";
import type { BackgroundAccess } from "./background-access.js";
import type { CopyView } from "./copy-set.js";
import type { VerifyStatus } from "./status.js";

const VERIFY_CHUNK_BYTES = 4 * 1024 * 1024;
/** Mismatches listed in the status; beyond this only the count grows. */
const MAX_LISTED_MISMATCHES = 1000;

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

/** Starts a verify (in `track`ed background work); the status it returns is updated as it goes. */
export function runVerify(
  engine: BackgroundAccess,
  repair: boolean,
  track: (work: Promise<void>) => void,
): VerifyStatus {
  const status: Mutable<VerifyStatus> = {
    state: "running",
    repair,
    doneBytes: 0,
    totalBytes: engine.sizeBytes,
    mismatches: [],
    startedAt: new Date().toISOString(),
    finishedAt: null,
    error: null,
  };
  engine.log(`verify started${repair ? " (repairing mismatches from the primary)" : ""}`);
  track(
    verifyAll(engine, status).then(
      () => {
        status.state = "done";
        status.finishedAt = new Date().toISOString();
        engine.log(`verify done: ${status.mismatches.length} mismatching ranges`);
      },
      (error: unknown) => {
        status.state = "failed";
        status.error = errorMessage(error);
        status.finishedAt = new Date().toISOString();
        engine.log(`verify failed: ${status.error}`);
      },
    ),
  );
  return status;
}

async function verifyAll(engine: BackgroundAccess, status: Mutable<VerifyStatus>): Promise<void> {
  const regionBytes = engine.regionBytes;
  const size = engine.sizeBytes;
  const mismatches = status.mismatches as VerifyStatus["mismatches"][number][];
  for (let offset = 0; offset < size; offset += VERIFY_CHUNK_BYTES) {
    engine.checkUsable();
    const length = Math.min(VERIFY_CHUNK_BYTES, size - offset);
    await engine.throttle.take(length);
    const release = await engine.locks.acquire(offset, length, true);
    const failed: { copy: CopyView; attachment: number; error: unknown }[] = [];
    try {
      const primary = engine.readCopy();
      if (primary === undefined) throw new HavenError("HAVEN_ERR_IO", "no in-sync copy left");
      const copies = engine.inSyncCopies();
      if (copies.length < 2) {
        status.doneBytes = offset + length;
        continue;
      }
      const digests = await Promise.all(
        copies.map((copy) => {
          const attachment = copy.attachment;
          return copy.port!.checksum(offset, length, regionBytes).then(
            (digest) => ({ copy, attachment, digest }),
            (error: unknown) => ({ copy, attachment, error }),
          );
        }),
      );
      const reference = digests.find((d) => d.copy === primary);
      if (reference === undefined || !("digest" in reference))
        throw new HavenError("HAVEN_ERR_IO", "the primary's checksum failed");
      const regions = Math.ceil(length / regionBytes);
      for (let region = 0; region < regions; region++) {
        const at = region * REGION_DIGEST_BYTES;
        const want = reference.digest.subarray(at, at + REGION_DIGEST_BYTES);
        const differing: CopyView[] = [];
        for (const entry of digests) {
          if (entry.copy === primary || !("digest" in entry)) continue;
          if (!want.equals(entry.digest.subarray(at, at + REGION_DIGEST_BYTES))) differing.push(entry.copy);
        }
        if (differing.length === 0) continue;
        const regionOffset = offset + region * regionBytes;
        const regionLength = Math.min(regionBytes, size - regionOffset);
        if (mismatches.length < MAX_LISTED_MISMATCHES)
          mismatches.push({ offset: regionOffset, length: regionLength, locations: differing.map((s) => s.location) });
        engine.log(`verify: region at ${regionOffset} differs on ${differing.map((s) => s.location).join(", ")}`);
        if (status.repair) {
          const data = await primary.port!.read(regionOffset, regionLength);
          for (const copy of differing) {
            await copy.port!.write(engine.epoch(), regionOffset, data, true);
            engine.log(
              `verify: repaired ${regionLength} bytes at ${regionOffset} on ${copy.location} from ${primary.location}`,
            );
          }
        }
      }
      for (const entry of digests) {
        if ("error" in entry) failed.push({ copy: entry.copy, attachment: entry.attachment, error: entry.error });
      }
      status.doneBytes = offset + length;
    } finally {
      release();
    }
    for (const { copy, attachment, error } of failed) await engine.fail(copy, attachment, "checksum failed", error, []);
  }
}
