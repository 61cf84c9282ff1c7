// Online verify: compares the in-sync copies region by region by checksum while the volume is in
// use. Each chunk is checked under an exclusive range lock, so a client write can never make copies
// look different mid-compare. Mismatching regions are reported; with repair they are copied from the
// primary (the copy reads come from) to the copies that differ, and each repair is logged.

import { HavenError, errorMessage } from "../core/errors.js";
import { REGION_DIGEST_BYTES } from "../replica/port.js";
import type { Slot, VolumeEngine } from "./engine.js";
import type { VerifyStatus } from "./status.js";

const VERIFY_CHUNK_BYTES = 4 * 1024 * 1024;
/** Mismatches listed in the status; beyond this only the count grows. */
const MAX_LISTED_MISMATCHES = 1000;

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

export function runVerify(engine: VolumeEngine, repair: boolean, track: (work: Promise<void>) => void): VerifyStatus {
  const status: Mutable<VerifyStatus> = {
    state: "running",
    repair,
    doneBytes: 0,
    totalBytes: engine.size,
    mismatches: [],
    startedAt: new Date().toISOString(),
    finishedAt: null,
    error: null,
  };
  engine.verifyStatus = status;
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

async function verifyAll(engine: VolumeEngine, status: Mutable<VerifyStatus>): Promise<void> {
  const regionBytes = engine.regionBytes;
  const mismatches = status.mismatches as VerifyStatus["mismatches"][number][];
  for (let offset = 0; offset < engine.size; offset += VERIFY_CHUNK_BYTES) {
    if (engine.fenced) throw new HavenError("HAVEN_ERR_IO", engine.fenced);
    if (engine.isStopping) throw new HavenError("HAVEN_ERR_SHUTTING_DOWN", "the volume is stopping");
    const length = Math.min(VERIFY_CHUNK_BYTES, engine.size - offset);
    await engine.throttle.take(length);
    const release = await engine.locks.acquire(offset, length, true);
    const failed: { slot: Slot; attachment: number; reason: string }[] = [];
    try {
      const primary = engine.readSlot();
      if (primary === undefined) throw new HavenError("HAVEN_ERR_IO", "no in-sync copy left");
      const copies = engine.inSyncSlots();
      if (copies.length < 2) {
        status.doneBytes = offset + length;
        continue;
      }
      const digests = await Promise.all(
        copies.map((slot) =>
          slot.port!.checksum(offset, length, regionBytes).then(
            (digest) => ({ slot, digest }),
            (error: unknown) => ({ slot, error }),
          ),
        ),
      );
      const reference = digests.find((d) => d.slot === primary);
      if (reference === undefined || !("digest" in reference))
        throw new HavenError("HAVEN_ERR_IO", "the primary's checksum failed");
      const regions = Math.ceil(length / regionBytes);
      for (let region = 0; region < regions; region++) {
        const at = region * REGION_DIGEST_BYTES;
        const want = reference.digest.subarray(at, at + REGION_DIGEST_BYTES);
        const differing: Slot[] = [];
        for (const entry of digests) {
          if (entry.slot === primary || !("digest" in entry)) continue;
          if (!want.equals(entry.digest.subarray(at, at + REGION_DIGEST_BYTES))) differing.push(entry.slot);
        }
        if (differing.length === 0) continue;
        const regionOffset = offset + region * regionBytes;
        const regionLength = Math.min(regionBytes, engine.size - regionOffset);
        if (mismatches.length < MAX_LISTED_MISMATCHES)
          mismatches.push({ offset: regionOffset, length: regionLength, locations: differing.map((s) => s.location) });
        engine.log(`verify: region at ${regionOffset} differs on ${differing.map((s) => s.location).join(", ")}`);
        if (status.repair) {
          const data = await primary.port!.read(regionOffset, regionLength);
          for (const slot of differing) {
            await slot.port!.write(engine.epoch, regionOffset, data, true);
            engine.log(
              `verify: repaired ${regionLength} bytes at ${regionOffset} on ${slot.location} from ${primary.location}`,
            );
          }
        }
      }
      for (const entry of digests) {
        if ("error" in entry)
          failed.push({ slot: entry.slot, attachment: entry.slot.attachment, reason: errorMessage(entry.error) });
      }
      status.doneBytes = offset + length;
    } finally {
      release();
    }
    for (const { slot, attachment, reason } of failed)
      await engine.fault(slot, attachment, `checksum failed: ${reason}`, []);
  }
}
