// Event retention: the events under keys.events() are the cluster's diary, and without a bound they would
// grow forever. trimEvents drops those older than maxAgeMs, then the oldest beyond the newest maxCount.
//
// Event keys sort by time (see eventSequence: a zero-padded millisecond time, then a random tail), so
// "older than" means "before a key", and each cut is one range delete from the start of the events up
// to a boundary key. An event written meanwhile with a later time sorts after the boundary and is never
// deleted. Only keys are read, never values, and only as many as are about to go, a bounded page at a
// time. Several hosts may trim at once: a count cut ends at a key of one consistent read (keys and
// count together), so it keeps at least the newest maxCount events of that read, whatever other trims
// did before or after it; two trims of the same excess delete it once.

import { HavenError } from "../core/errors.js";
import type { ClusterStore } from "./store.js";
import { keys } from "./schema.js";

export interface EventRetention {
  /** Events older than this are deleted. */
  readonly maxAgeMs: number;
  /** Of the rest, at most this many (the newest) are kept. */
  readonly maxCount: number;
}

export const DEFAULT_EVENT_RETENTION: EventRetention = { maxAgeMs: 14 * 24 * 60 * 60 * 1000, maxCount: 100_000 };

/** Keys read at once when looking for the count cut's boundary. */
const MAX_KEYS_PER_READ = 1_000;
/** Bound on count cuts in one call (each drops at most MAX_KEYS_PER_READ); the next call goes on from there. */
const MAX_COUNT_ROUNDS = 1_000;

/** The key every event written at `ms` or later sorts at or after (eventSequence's time part). */
function firstKeyAt(ms: number): string {
  return keys.event(String(ms).padStart(15, "0"));
}

/** The smallest key after `key`. */
function justAfter(key: string): string {
  return `${key}\0`;
}

/**
 * Deletes the events older than `now - maxAgeMs`, then the oldest beyond the newest maxCount; resolves
 * with how many were deleted.
 */
export async function trimEvents(etcd: ClusterStore, policy: EventRetention, now = Date.now()): Promise<number> {
  for (const [name, value] of Object.entries(policy)) {
    if (!(Number.isSafeInteger(value) && value >= 0)) {
      throw new HavenError(
        "HAVEN_ERR_CONFIG",
        `event retention ${name} must be a whole number of 0 or more, not ${value}`,
      );
    }
  }
  const cutoffMs = now - policy.maxAgeMs;
  const byAge = cutoffMs > 0 ? await etcd.deleteRange(keys.events(), firstKeyAt(cutoffMs)) : 0;
  return byAge + (await trimToCount(etcd, policy.maxCount));
}

async function trimToCount(etcd: ClusterStore, maxCount: number): Promise<number> {
  let deleted = 0;
  for (let round = 0; round < MAX_COUNT_ROUNDS; round++) {
    const counted = await etcd.getPrefixPage(keys.events(), { keysOnly: true, limit: 1 });
    if (counted.count <= maxCount) break;
    const limit = Math.min(counted.count - maxCount, MAX_KEYS_PER_READ);
    // The page and its count are one snapshot: the excess is recomputed from them, not from the first read.
    const page = await etcd.getPrefixPage(keys.events(), { keysOnly: true, limit });
    const excess = Math.min(page.count - maxCount, page.kvs.length);
    if (excess <= 0) break;
    deleted += await etcd.deleteRange(keys.events(), justAfter(page.kvs[excess - 1]!.key));
  }
  return deleted;
}
