// `--watch [--interval SECONDS]` for the commands that show the cluster (`status`, `host list`,
// `volume list`, `volume show`, `vm show`, `disk list`), as watch(1) does it for any command:
//
//   on a terminal   the screen is cleared and redrawn each time, under a header with the time
//   otherwise       each frame is appended after a separator line "--- TIME", so a log keeps them all
//                   (with --json: one JSON document per line, no separator)
//
// A frame that fails (etcd does not answer, the volume was deleted) shows the error in its place and
// the watch goes on: watching is how an operator sees an outage end. Ctrl-C (or SIGTERM) ends the
// watch at once, with exit status 0.

import { HavenError } from "../core/errors.js";
import type { OptionSpec } from "./args.js";
import { abortOnStopSignal, pause } from "./poll.js";
import { CLEAR_SCREEN, isTerminal } from "./terminal.js";

export const DEFAULT_WATCH_SECONDS = 2;
const MIN_WATCH_SECONDS = 0.1;
const MAX_WATCH_SECONDS = 3600;

/** The options of a command that can watch, for parseCommand. */
export const WATCH_OPTIONS = {
  watch: { type: "boolean" },
  interval: { type: "string" },
} as const satisfies OptionSpec;

/** How WATCH_OPTIONS read in a command's usage. */
export const WATCH_OPTIONS_USAGE = `  --watch              show it again every --interval seconds until Ctrl-C (redrawn on a terminal)
  --interval SECONDS   how often --watch shows it (default ${DEFAULT_WATCH_SECONDS}, from ${MIN_WATCH_SECONDS} to ${MAX_WATCH_SECONDS})`;

/** The watch interval in seconds when --watch is given, else undefined; a bad --interval is a usage error. */
export function watchSeconds(values: Record<string, string | boolean | undefined>): number | undefined {
  const text = values.interval;
  if (values.watch !== true) {
    if (text !== undefined) throw new HavenError("HAVEN_ERR_USAGE", "--interval goes with --watch");
    return undefined;
  }
  if (typeof text !== "string") return DEFAULT_WATCH_SECONDS;
  const seconds = Number(text);
  if (!/^\d+(\.\d+)?$/.test(text) || seconds < MIN_WATCH_SECONDS || seconds > MAX_WATCH_SECONDS)
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `--interval must be a number of seconds from ${MIN_WATCH_SECONDS} to ${MAX_WATCH_SECONDS}, got "${text}"`,
    );
  return seconds;
}

/** The text a failed frame shows instead of the view. */
function failedFrame(error: unknown): string {
  if (!(error instanceof HavenError)) throw error;
  return `haven: ${error.message} [${error.code}]\n`;
}

/**
 * Shows `frame()` every `seconds` until Ctrl-C; `title` is the command, for the header. `json` frames
 * are appended one per line, never redrawn.
 */
export async function watchFrames(
  frame: () => Promise<string>,
  options: { readonly seconds: number; readonly title: string; readonly json: boolean },
): Promise<number> {
  const redraw = isTerminal() && !options.json;
  const stop = abortOnStopSignal();
  try {
    do {
      const time = new Date().toISOString();
      let text: string;
      try {
        text = await frame();
      } catch (error) {
        text = failedFrame(error);
        // A JSON consumer reads stdout line by line: the error goes to stderr, not into the stream.
        if (options.json) {
          process.stderr.write(`${time} ${text}`);
          continue;
        }
      }
      if (redraw)
        process.stdout.write(
          `${CLEAR_SCREEN}Every ${options.seconds} s: ${options.title}    ${time}    (Ctrl-C to stop)\n\n${text}`,
        );
      else if (options.json) process.stdout.write(text.endsWith("\n") ? text : `${text}\n`);
      else process.stdout.write(`--- ${time} ${options.title}\n${text}`);
    } while (await pause(options.seconds * 1000, stop.signal));
  } finally {
    stop.dispose();
  }
  return 0;
}
