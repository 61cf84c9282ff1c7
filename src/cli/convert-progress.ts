// The progress of an image copy (`volume import`, `volume export`, `vm create --image`), drawn from what
// `qemu-img convert -p` prints: it writes "    (42.00/100%)\r" on stdout each time another percent is
// done. The operator sees the same picture as a resync in copy-progress.ts: a bar, the percent, the rate
// and the time left. On a terminal the line is redrawn in place; otherwise (a pipe, a log) a line is
// printed at most every 20 percent, so a log holds five lines rather than a hundred.

import { formatBytes } from "../util/units.js";
import { CLEAR_TO_END_OF_LINE } from "./terminal.js";

const BAR_WIDTH = 20;
const LOG_STEP_PERCENT = 20;
const PERCENT_PATTERN = /\((\d+(?:\.\d+)?)\/100%\)/g;

/** The last percent in a chunk of qemu-img's -p output, or undefined when it holds none. */
export function lastPercent(chunk: string): number | undefined {
  let last: number | undefined;
  for (const match of chunk.matchAll(PERCENT_PATTERN)) last = Number(match[1]);
  return last === undefined ? undefined : Math.min(100, Math.max(0, last));
}

/** "importing  42% [########............] 80.0 MiB/s, 12 s left": a picture, then the numbers. */
export function progressLine(verb: string, percent: number, totalBytes: number, elapsedMs: number): string {
  const filled = Math.round((percent / 100) * BAR_WIDTH);
  const doneBytes = (percent / 100) * totalBytes;
  const bytesPerSecond = elapsedMs > 0 ? (doneBytes * 1000) / elapsedMs : 0;
  const left =
    bytesPerSecond > 0 && percent < 100 ? `, ${Math.ceil((totalBytes - doneBytes) / bytesPerSecond)} s left` : "";
  return (
    `${verb} ${percent.toFixed(0).padStart(3)}% [${"#".repeat(filled)}${".".repeat(BAR_WIDTH - filled)}] ` +
    `${formatBytes(Math.round(bytesPerSecond))}/s${left}`
  );
}

/** Feeds qemu-img's -p output in; draws the line. `done()` ends it with the total time. */
export class ConvertProgress {
  private readonly startedAt = Date.now();
  private lastStep = -1;
  private percent = 0;
  private pending = "";

  constructor(
    private readonly verb: string,
    private readonly totalBytes: number,
    private readonly terminal: boolean = process.stderr.isTTY === true,
    private readonly write: (text: string) => void = (text) => process.stderr.write(text),
  ) {}

  /** The percent qemu-img reported last. */
  get reported(): number {
    return this.percent;
  }

  feed(chunk: string): void {
    // A report may arrive split across two chunks: keep what follows the last complete one.
    const text = this.pending + chunk;
    const end = text.lastIndexOf(")");
    this.pending = text.slice(end + 1).slice(-64);
    const percent = lastPercent(text.slice(0, end + 1));
    if (percent === undefined) return;
    this.percent = percent;
    const line = progressLine(this.verb, percent, this.totalBytes, Date.now() - this.startedAt);
    if (this.terminal) {
      this.write(`\r${line}${CLEAR_TO_END_OF_LINE}`);
      return;
    }
    const step = Math.floor(percent / LOG_STEP_PERCENT);
    if (step !== this.lastStep) this.write(`${line}\n`);
    this.lastStep = step;
  }

  /** Ends the line: the bytes copied and how long it took. */
  done(): void {
    const seconds = (Date.now() - this.startedAt) / 1000;
    const rate = seconds > 0 ? `, ${formatBytes(Math.round(this.totalBytes / seconds))}/s` : "";
    this.write(
      `${this.terminal ? "\r" : ""}${this.verb} done: ${formatBytes(this.totalBytes)} in ${seconds.toFixed(1)} s${rate}` +
        `${this.terminal ? CLEAR_TO_END_OF_LINE : ""}\n`,
    );
  }

  /** Ends a drawn line so that an error message starts on a line of its own. */
  abandon(): void {
    if (this.terminal) this.write("\n");
  }
}
