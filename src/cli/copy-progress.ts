// Waiting for copies to be built, as `volume add-copy`, `disk evacuate` and `disk replace` do: polls the
// cluster until each copy is recorded in sync, printing one progress line per copy as it moves (a bar,
// percent, rate and time left, from the primary's latest health check), like /proc/mdstat. On a
// terminal the line is redrawn in place; otherwise a line is printed at most every 20 percent.

import { readClusterRecords } from "../cluster/cluster-read.js";
import { volumeView } from "../cluster/cluster-view.js";
import type { ClusterStore } from "../cluster/store.js";
import { copyId, type CopyPlace } from "../cluster/schema.js";
import { HavenError } from "../core/errors.js";
import { resyncText } from "./cluster-render.js";
import { pause } from "./poll.js";
import { CLEAR_TO_END_OF_LINE, isTerminal } from "./terminal.js";

const POLL_MS = 500;

export interface CopyToWatch {
  readonly volume: string;
  readonly copy: CopyPlace;
}

/**
 * Resolves once every copy is recorded in sync; rejects (HAVEN_ERR_UNAVAILABLE) when `timeoutMs` runs
 * out, and with HAVEN_ERR_NOT_FOUND if a copy left its volume meanwhile. Returns false when stopped.
 */
export async function waitForCopies(
  client: ClusterStore,
  copies: readonly CopyToWatch[],
  timeoutMs: number,
  signal: AbortSignal,
  write: (text: string) => void = (text) => process.stderr.write(text),
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  const terminal = isTerminal();
  const lastStep = new Map<string, number>();
  const pending = new Map(copies.map((entry) => [`${entry.volume} ${copyId(entry.copy)}`, entry]));
  for (;;) {
    const records = await readClusterRecords(client);
    for (const [key, { volume, copy }] of pending) {
      const spec = records.volumes.get(volume);
      const view = spec === undefined ? undefined : volumeView(records, spec);
      const found = view?.copies.find((candidate) => candidate.host === copy.host && candidate.disk === copy.disk);
      if (found === undefined)
        throw new HavenError("HAVEN_ERR_NOT_FOUND", `the copy of ${volume} on ${copyId(copy)} is gone from the volume`);
      const label = `${volume} on ${copyId(copy)}:`;
      if (found.state === "in-sync") {
        write(`${terminal ? "\r" : ""}${label} in sync${terminal ? CLEAR_TO_END_OF_LINE : ""}\n`);
        pending.delete(key);
        continue;
      }
      const line =
        found.resync === null ? `${label} ${found.detail || found.state}` : `${label} ${resyncText(found.resync)}`;
      if (terminal) write(`\r${line}${CLEAR_TO_END_OF_LINE}`);
      else {
        const step = found.resync === null ? -1 : Math.floor(found.resync.percent / 20);
        if (lastStep.get(key) !== step) write(`${line}\n`);
        lastStep.set(key, step);
      }
    }
    if (pending.size === 0) return true;
    if (Date.now() > deadline)
      throw new HavenError(
        "HAVEN_ERR_UNAVAILABLE",
        `not in sync after ${Math.round(timeoutMs / 1000)} s: ${[...pending.keys()].join(", ")}; ` +
          "the copies go on building: follow them with 'haven volume show' or 'haven events --follow'",
      );
    if (!(await pause(POLL_MS, signal))) return false;
  }
}
