// Resync and rebuild of one copy, in the background while clients keep writing: copies the regions
// the copy misses from an in-sync copy, chunk by chunk. Each chunk holds an exclusive range lock, so
// no client write to those bytes is in flight while the chunk is read and written (the client write
// then goes to both copies after it). Throttled; progress is persisted on the copy so an interrupted
// resync resumes where it was. A full rebuild copies only allocated extents and punches holes for the
// rest, so a sparse volume rebuilds in the time its data takes. It sees the volume only through
// BackgroundAccess (background-access.ts): every change of state it causes goes through that.

import { HavenError, errorMessage } from "../core/errors.js";
import type { ReplicaPort } from "../replica/port.js";
import type { Run } from "../replica/region-bitmap.js";
import type { BackgroundAccess } from "./background-access.js";
import type { BitmapView, CopyView } from "./copy-set.js";
import { RateMeter } from "./throttle.js";

export type { ResyncSettings } from "./background-access.js";

/** Which side of a copy failed. */
class SideError extends Error {
  constructor(
    readonly side: "source" | "target",
    readonly inner: unknown,
  ) {
    super(errorMessage(inner));
  }
}

/** Resyncs `copy` (resyncing, at `attachment`) until it misses nothing, then has it join the in-sync set. */
export async function runResync(engine: BackgroundAccess, copy: CopyView, attachment: number): Promise<void> {
  const bitmap = copy.missing!;
  const progress = copy.resync!;
  const settings = engine.resyncSettings;
  const meter = new RateMeter(engine.clock);
  meter.record(0);
  const live = (): boolean => engine.isAttached(copy, attachment) && engine.active();
  const shared = { cursor: 0, lastSave: engine.clock.now(), saving: false, inFlight: new Set<Run>() };
  const started = engine.clock.now();
  let done = 0;

  /** The next run no other worker is copying: from the cursor on, then from the start again. */
  const claim = (): Run | undefined => {
    const busy = (run: Run): boolean =>
      [...shared.inFlight].some(
        (other) => other.offset < run.offset + run.length && run.offset < other.offset + other.length,
      );
    for (const from of [shared.cursor, 0]) {
      let at = from;
      for (let run = nextRun(bitmap, at, settings.chunkBytes); run; run = nextRun(bitmap, at, settings.chunkBytes)) {
        if (!busy(run)) {
          shared.cursor = run.offset + run.length;
          return run;
        }
        at = run.offset + run.length;
      }
    }
    return undefined;
  };

  const worker = async (): Promise<void> => {
    // One buffer per worker, reused for every chunk: a fresh 1 MiB buffer per chunk cost the rebuild
    // more CPU (page faults on new memory) than the copying itself.
    const scratch = Buffer.allocUnsafe(settings.chunkBytes);
    while (live() && bitmap.count > 0) {
      const run = claim();
      if (run === undefined) return; // what is left is being copied by other workers
      shared.inFlight.add(run);
      try {
        await engine.throttle.take(run.length);
        if (!(await copyOne(engine, copy, attachment, run, progress.mode, live, scratch))) return;
        done = Math.min(progress.total, done + run.length);
        meter.record(done);
        engine.resyncCopied(copy, attachment, run, meter.bytesPerSecond());
      } finally {
        shared.inFlight.delete(run);
      }
      if (!shared.saving && engine.clock.now() - shared.lastSave >= settings.saveProgressMs && bitmap.count > 0) {
        shared.saving = true;
        shared.lastSave = engine.clock.now();
        await saveProgress(engine, copy, attachment)
          .catch((error: unknown) => engine.fail(copy, attachment, "saving resync progress failed", error, []))
          .finally(() => (shared.saving = false));
      }
    }
  };

  while (live() && bitmap.count > 0) {
    await Promise.all(Array.from({ length: Math.max(1, settings.parallelChunks) }, worker));
  }
  if (!live()) return;
  const seconds = (engine.clock.now() - started) / 1000;
  await engine.markInSync(copy, attachment);
  if (copy.state === "in-sync") {
    const rate = seconds > 0 ? ` (${Math.round(progress.total / seconds / 1048576)} MiB/s)` : "";
    engine.log(
      `${copy.location}: ${progress.mode} resync of ${progress.total} bytes done in ${seconds.toFixed(1)} s${rate}`,
    );
  }
}

/**
 * Copies one run under an exclusive range lock. False when the resync must stop (the target failed,
 * or it was detached); a failing source is faulted and the run is left for another try.
 */
async function copyOne(
  engine: BackgroundAccess,
  target: CopyView,
  attachment: number,
  run: Run,
  mode: "incremental" | "full",
  live: () => boolean,
  scratch: Buffer,
): Promise<boolean> {
  for (;;) {
    const source = engine.readCopy();
    if (!live()) return false;
    if (source === undefined) {
      // No in-sync copy to copy from (the volume lost them all): wait for one to come back.
      await engine.clock.sleep(engine.reconnectMs);
      continue;
    }
    const release = await engine.locks.acquire(run.offset, run.length, true);
    const sourceAttachment = source.attachment;
    try {
      if (!live()) return false;
      if (source.port === undefined || !engine.isAttached(source, sourceAttachment)) continue;
      await copyRun(engine.epoch(), source.port, target.port!, run, mode, scratch);
      return true;
    } catch (error) {
      const side = error instanceof SideError ? error : new SideError("target", error);
      const failed = side.side === "source" ? source : target;
      const failedAttachment = side.side === "source" ? sourceAttachment : attachment;
      await engine.fail(failed, failedAttachment, `resync ${side.side} failed`, side.inner, [run]);
      if (side.side === "target") return false;
    } finally {
      release();
    }
  }
}

/** The first run of marked regions at or after `from`, at most `maxBytes` long. */
export function nextRun(bitmap: BitmapView, from: number, maxBytes: number): Run | undefined {
  const firstRegion = Math.ceil(from / bitmap.regionBytes);
  for (let region = firstRegion; region < bitmap.regionCount; region++) {
    if (!bitmap.isSet(region)) {
      if ((region & 31) === 0 && !hasAnyInWord(bitmap, region)) region += 31;
      continue;
    }
    const regionsPerRun = Math.max(1, Math.floor(maxBytes / bitmap.regionBytes));
    let end = region;
    while (end < bitmap.regionCount && bitmap.isSet(end) && end - region < regionsPerRun) end++;
    const offset = region * bitmap.regionBytes;
    return { offset, length: Math.min(end * bitmap.regionBytes, bitmap.volumeBytes) - offset };
  }
  return undefined;
}

function hasAnyInWord(bitmap: BitmapView, region: number): boolean {
  const last = Math.min(region + 32, bitmap.regionCount);
  for (let r = region; r < last; r++) if (bitmap.isSet(r)) return true;
  return false;
}

async function copyRun(
  epoch: number,
  from: ReplicaPort,
  to: ReplicaPort,
  run: Run,
  mode: "incremental" | "full",
  scratch: Buffer,
): Promise<void> {
  const onSource = <T>(promise: Promise<T>): Promise<T> =>
    promise.catch((error: unknown) => {
      throw new SideError("source", error);
    });
  const onTarget = <T>(promise: Promise<T>): Promise<T> =>
    promise.catch((error: unknown) => {
      throw new SideError("target", error);
    });
  /** The source's bytes [offset, offset+length), in `scratch` when they fit and the source can fill it. */
  const read = async (offset: number, length: number): Promise<Buffer> => {
    if (length > scratch.length || from.readInto === undefined) return from.read(offset, length);
    const target = scratch.subarray(0, length);
    await from.readInto(offset, target);
    return target;
  };
  if (mode === "incremental") {
    const data = await onSource(read(run.offset, run.length));
    await onTarget(to.write(epoch, run.offset, data, false));
    await startWriteback(to, run.offset, run.length);
    return;
  }
  let at = run.offset;
  const end = run.offset + run.length;
  while (at < end) {
    const extents = await onSource(from.blockStatus(at, end - at));
    if (extents.length === 0) throw new SideError("source", new HavenError("HAVEN_ERR_IO", "empty block status"));
    for (const extent of extents) {
      const length = Math.min(extent.length, end - at);
      if (extent.hole || extent.zero) await zeroWhereNeeded(epoch, to, at, length, onTarget);
      else {
        if (!(await copyInKernel(epoch, from, to, at, length))) {
          const data = await onSource(read(at, length));
          await onTarget(to.write(epoch, at, data, false));
        }
        await startWriteback(to, at, length);
      }
      at += length;
      if (at >= end) break;
    }
  }
}

/**
 * Between two local copies, copies the bytes inside the kernel (copy_file_range: one copy instead of
 * two through a buffer). False when that is not possible or fails, and the caller copies by hand, which
 * also tells a failing source from a failing target (a failed kernel copy could be either).
 */
async function copyInKernel(
  epoch: number,
  from: ReplicaPort,
  to: ReplicaPort,
  offset: number,
  length: number,
): Promise<boolean> {
  const source = from.zeroCopySource?.(offset, length);
  if (source === undefined || to.copyFrom === undefined) return false;
  try {
    await to.copyFrom(epoch, offset, source, length);
    return true;
  } catch {
    return false;
  }
}

/**
 * Has the target start writing a copied chunk to its disk now. Without it the disk idles while the
 * copy fills the page cache and then does all the work in the final flush (measured: the rebuild's
 * flush took as long as its copying). A hint: if it fails, the flush that follows reports the problem.
 */
async function startWriteback(to: ReplicaPort, offset: number, length: number): Promise<void> {
  try {
    await to.startWriteback?.(offset, length);
  } catch {
    // Only a hint (an old native addon without it throws at once): the flush after the copy decides.
  }
}

/**
 * Makes [offset, offset+length) of the target read as zeroes, writing zeroes only where it holds data:
 * a new copy is one big hole, and asking costs a seek where zeroing costs a journalled fallocate.
 */
async function zeroWhereNeeded(
  epoch: number,
  to: ReplicaPort,
  offset: number,
  length: number,
  onTarget: <T>(promise: Promise<T>) => Promise<T>,
): Promise<void> {
  const end = offset + length;
  let at = offset;
  while (at < end) {
    const extents = await onTarget(to.blockStatus(at, end - at));
    if (extents.length === 0) throw new SideError("target", new HavenError("HAVEN_ERR_IO", "empty block status"));
    for (const extent of extents) {
      const part = Math.min(extent.length, end - at);
      if (!extent.zero) await onTarget(to.writeZeroes(epoch, at, part, false));
      at += part;
      if (at >= end) break;
    }
  }
}

async function saveProgress(engine: BackgroundAccess, copy: CopyView, attachment: number): Promise<void> {
  const port = copy.port;
  if (port === undefined || !engine.isAttached(copy, attachment)) return;
  // Taken before the flush: only chunks copied by then are made durable by it (other workers go on).
  const remaining = engine.encodeMissing(copy);
  const validFor = engine.currentGeneration();
  await port.flush();
  engine.noteMetadata(copy, attachment, await port.updateMetadata(engine.epoch(), { resync: { validFor, remaining } }));
}
