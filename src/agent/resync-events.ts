// Events for the copies being built, as operators follow a rebuild in /proc/mdstat or `zpool status`:
// one when a resync or rebuild starts (its size), one at every 20% (how far, how fast, how long to go),
// and one at the end (its duration and average rate) or when it stops short (the copy faulted or left).
// Pure: the caller passes each round's copies and the time, and writes the events it gets back.

import type { ResyncProgress } from "../engine/status.js";
import { formatBytes } from "../util/units.js";

/** One copy as the engine reports it this round. */
export interface CopyProgress {
  readonly volume: string;
  /** HOST/DISK. */
  readonly copy: string;
  readonly state: string;
  readonly resync: ResyncProgress | null;
}

export interface ProgressEvent {
  readonly kind: "resync-started" | "resync-progress" | "resync-done" | "resync-stopped";
  readonly volume: string;
  readonly message: string;
}

interface Tracked {
  readonly startedMs: number;
  readonly mode: ResyncProgress["mode"];
  readonly totalBytes: number;
  step: number;
  lastDoneBytes: number;
}

const STEP_PERCENT = 20;

export class ResyncEvents {
  private readonly tracked = new Map<string, Tracked>();

  /** The events this round's copies call for, given the monotonic time in ms. */
  observe(nowMs: number, copies: readonly CopyProgress[]): ProgressEvent[] {
    const events: ProgressEvent[] = [];
    const seen = new Set<string>();
    for (const { volume, copy, state, resync } of copies) {
      const key = `${volume} ${copy}`;
      seen.add(key);
      const tracked = this.tracked.get(key);
      const what = (mode: ResyncProgress["mode"]): string => (mode === "full" ? "rebuild" : "resync");
      if (resync !== null && state === "resyncing") {
        // A copy that missed nothing catches up at once: not worth three events.
        if (tracked === undefined && resync.totalBytes === 0) continue;
        if (tracked === undefined) {
          this.tracked.set(key, {
            startedMs: nowMs,
            mode: resync.mode,
            totalBytes: resync.totalBytes,
            step: Math.floor(percent(resync) / STEP_PERCENT),
            lastDoneBytes: resync.doneBytes,
          });
          events.push({
            kind: "resync-started",
            volume,
            message: `${what(resync.mode)} of the copy on ${copy} started: ${formatBytes(resync.totalBytes)} to copy`,
          });
          continue;
        }
        tracked.lastDoneBytes = resync.doneBytes;
        const step = Math.floor(percent(resync) / STEP_PERCENT);
        if (step > tracked.step && step < 100 / STEP_PERCENT) {
          tracked.step = step;
          const eta = resync.etaSeconds === null ? "" : `, about ${Math.round(resync.etaSeconds)} s left`;
          events.push({
            kind: "resync-progress",
            volume,
            message:
              `${what(tracked.mode)} of the copy on ${copy}: ${step * STEP_PERCENT}% (${formatBytes(resync.doneBytes)} of ` +
              `${formatBytes(resync.totalBytes)}) at ${formatBytes(resync.bytesPerSecond)}/s${eta}`,
          });
        }
        continue;
      }
      if (tracked === undefined) continue;
      this.tracked.delete(key);
      const seconds = Math.max(0.001, (nowMs - tracked.startedMs) / 1000);
      if (state === "in-sync")
        events.push({
          kind: "resync-done",
          volume,
          message:
            `${what(tracked.mode)} of the copy on ${copy} done: ${formatBytes(tracked.totalBytes)} in ` +
            `${seconds.toFixed(1)} s, ${formatBytes(tracked.totalBytes / seconds)}/s on average; it is in sync`,
        });
      else
        events.push({
          kind: "resync-stopped",
          volume,
          message: `${what(tracked.mode)} of the copy on ${copy} stopped at ${formatBytes(tracked.lastDoneBytes)} of ${formatBytes(tracked.totalBytes)}: the copy is ${state}`,
        });
    }
    for (const [key, tracked] of this.tracked) {
      if (seen.has(key)) continue;
      this.tracked.delete(key);
      const [volume, copy] = key.split(" ") as [string, string];
      events.push({
        kind: "resync-stopped",
        volume,
        message: `${tracked.mode === "full" ? "rebuild" : "resync"} of the copy on ${copy} stopped at ${formatBytes(tracked.lastDoneBytes)} of ${formatBytes(tracked.totalBytes)}: the copy left the volume or the engine stopped here`,
      });
    }
    return events;
  }
}

function percent(resync: ResyncProgress): number {
  return resync.totalBytes > 0 ? Math.min(100, (100 * resync.doneBytes) / resync.totalBytes) : 0;
}
