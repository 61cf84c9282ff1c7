// Pace of background copies (resync, rebuild, verify): a byte budget per second, cut to a smaller
// one while clients are doing I/O, so background work never starves the VM. Clock injected.

import type { Clock } from "../util/clock.js";

export interface ThrottleSettings {
  /** Ceiling in bytes per second when clients are idle (0: unlimited). */
  readonly maxBytesPerSecond: number;
  /** Ceiling while clients did I/O within the last `busyWindowMs`. */
  readonly busyBytesPerSecond: number;
  readonly busyWindowMs: number;
}

export class Throttle {
  private nextFreeAt = 0;
  private lastClientIoAt = Number.NEGATIVE_INFINITY;

  constructor(
    private readonly clock: Clock,
    private settings: ThrottleSettings,
  ) {}

  update(settings: Partial<ThrottleSettings>): void {
    this.settings = { ...this.settings, ...settings };
  }

  noteClientIo(): void {
    this.lastClientIoAt = this.clock.now();
  }

  get busy(): boolean {
    return this.clock.now() - this.lastClientIoAt < this.settings.busyWindowMs;
  }

  /** Waits until `bytes` more may be copied. */
  async take(bytes: number): Promise<void> {
    const rate = this.busy ? this.settings.busyBytesPerSecond : this.settings.maxBytesPerSecond;
    if (rate <= 0) return;
    const now = this.clock.now();
    const start = Math.max(now, this.nextFreeAt);
    this.nextFreeAt = start + (bytes / rate) * 1000;
    if (start > now) await this.clock.sleep(start - now);
  }
}

/** Recent rate of a byte counter, smoothed over a few seconds. */
export class RateMeter {
  private samples: { at: number; total: number }[] = [];

  constructor(
    private readonly clock: Clock,
    private readonly windowMs = 3000,
  ) {}

  record(total: number): void {
    const at = this.clock.now();
    this.samples.push({ at, total });
    while (this.samples.length > 2 && at - this.samples[0]!.at > this.windowMs) this.samples.shift();
  }

  bytesPerSecond(): number {
    if (this.samples.length < 2) return 0;
    const first = this.samples[0]!;
    const last = this.samples[this.samples.length - 1]!;
    const ms = last.at - first.at;
    return ms > 0 ? ((last.total - first.total) / ms) * 1000 : 0;
  }
}
