// Time, injected: the engine, its resync and the agent read the clock and sleep only through this, so the
// simulation can run thousands of schedules on virtual time.

export interface Clock {
  /** Milliseconds, monotonic. */
  now(): number;
  sleep(ms: number): Promise<void>;
  /** Runs `run` after `ms` unless cancelled first. */
  schedule(ms: number, run: () => void): { cancel(): void };
}

export const systemClock: Clock = {
  now: () => performance.now(),
  sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
  schedule: (ms, run) => {
    const timer = setTimeout(run, ms);
    return { cancel: () => clearTimeout(timer) };
  },
};
