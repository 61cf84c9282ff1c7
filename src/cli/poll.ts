// Polling commands (`haven volume status --watch`, `haven volume verify --wait`) run until they are done
// or the operator presses Ctrl-C: SIGINT/SIGTERM abort the poll, which ends at once instead of after
// the next interval, and the command exits normally (no stack, no half-drawn line).

import { setTimeout as sleep } from "node:timers/promises";

export interface StopSignal {
  readonly signal: AbortSignal;
  /** Removes the signal handlers; call once the poll is over. */
  dispose(): void;
}

/** An AbortSignal that SIGINT or SIGTERM aborts, for as long as it is not disposed. */
export function abortOnStopSignal(): StopSignal {
  const controller = new AbortController();
  const stop = (signal: NodeJS.Signals): void => controller.abort(signal);
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
  return {
    signal: controller.signal,
    dispose: () => {
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
    },
  };
}

/** Waits `ms`, or less if `signal` aborts; resolves false when aborted. */
export async function pause(ms: number, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted) return false;
  try {
    await sleep(ms, undefined, { signal });
    return true;
  } catch {
    return false;
  }
}
