// Waiting until new copies are recorded in sync, reporting each copy's progress in plain lines (at most
// one per 20 percent), for callers that draw no terminal: the dashboard's disk replace. The CLI's
// copy-progress.ts draws the same progress as bars that redraw in place.

import { HavenError } from "../core/errors.js";
import { readClusterRecords } from "./cluster-read.js";
import { volumeView } from "./cluster-view.js";
import { copyId, type CopyPlace } from "./schema.js";
import type { ClusterStore } from "./store.js";

const POLL_MS = 500;

/**
 * Resolves true once every copy is recorded in sync, false when `signal` aborts; rejects with
 * HAVEN_ERR_UNAVAILABLE after `timeoutMs`, HAVEN_ERR_NOT_FOUND if a copy left its volume meanwhile.
 */
export async function waitUntilInSync(
  client: ClusterStore,
  copies: readonly { readonly volume: string; readonly copy: CopyPlace }[],
  timeoutMs: number,
  signal: AbortSignal,
  write: (text: string) => void,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  const pending = new Map(copies.map((entry) => [`${entry.volume} on ${copyId(entry.copy)}`, entry]));
  const lastStep = new Map<string, number>();
  for (;;) {
    const records = await readClusterRecords(client);
    for (const [label, { volume, copy }] of pending) {
      const spec = records.volumes.get(volume);
      const found = (spec === undefined ? undefined : volumeView(records, spec))?.copies.find(
        (candidate) => candidate.host === copy.host && candidate.disk === copy.disk,
      );
      if (found === undefined)
        throw new HavenError("HAVEN_ERR_NOT_FOUND", `the copy of ${volume} on ${copyId(copy)} is gone from the volume`);
      if (found.state === "in-sync") {
        write(`${label}: in sync\n`);
        pending.delete(label);
        continue;
      }
      const step = found.resync === null ? -1 : Math.floor(found.resync.percent / 20);
      if (lastStep.get(label) !== step)
        write(
          found.resync === null
            ? `${label}: ${found.detail || found.state}\n`
            : `${label}: resync ${found.resync.percent.toFixed(0)}%\n`,
        );
      lastStep.set(label, step);
    }
    if (pending.size === 0) return true;
    if (Date.now() > deadline)
      throw new HavenError(
        "HAVEN_ERR_UNAVAILABLE",
        `not in sync after ${Math.round(timeoutMs / 1000)} s: ${[...pending.keys()].join(", ")}; the copies go on building`,
      );
    if (signal.aborted) return false;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}
