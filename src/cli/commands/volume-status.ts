// `haven volume status`: asks a running engine for its volume's status over the engine API and shows
// it as the operator's table (src/cli/status-render.ts) or as JSON, once or every few seconds.

import { HavenError } from "../../core/errors.js";
import { renderVolumeStatus } from "../status-render.js";
import type { VolumeStatus } from "../../engine/status.js";
import { parseCommand } from "../args.js";
import { ENGINE_API_OPTIONS, ENGINE_API_OPTIONS_USAGE, engineApiFromOptions } from "../engine-api-client.js";
import { abortOnStopSignal, pause } from "../poll.js";
import { CLEAR_SCREEN, isTerminal, terminalRenderOptions } from "../terminal.js";

export const VOLUME_STATUS_USAGE = `usage: haven volume status --api HOST:PORT [--volume NAME] [--token-file FILE] [--json] [--watch [SECONDS]]

Shows the volume a running engine serves: its state, epoch and generation, each copy (in sync,
resyncing with progress and ETA, faulted or in split brain with the reason), a verify in progress
and the I/O counters.

options:
${ENGINE_API_OPTIONS_USAGE}
  --volume NAME        ask a host agent's API (its "api.listen") for the volume NAME its host serves
  --json               print the status as JSON (with --watch, one line per refresh)
  --watch [SECONDS]    refresh every SECONDS (default 1, at least 0.1) until Ctrl-C`;

const DEFAULT_WATCH_SECONDS = 1;
const MIN_WATCH_SECONDS = 0.1;
const MAX_WATCH_SECONDS = 3600;

export async function volumeStatus(argv: string[]): Promise<number> {
  // parseArgs has no optional option values: "--watch=5" becomes "--watch 5", and the one positional
  // this command takes is --watch's SECONDS.
  const args = argv.flatMap((arg) => (arg.startsWith("--watch=") ? ["--watch", arg.slice("--watch=".length)] : [arg]));
  const parsed = parseCommand(
    args,
    {
      ...ENGINE_API_OPTIONS,
      volume: { type: "string" },
      json: { type: "boolean" },
      watch: { type: "boolean" },
    },
    VOLUME_STATUS_USAGE,
  );
  if (parsed === undefined) return 0; // --help was printed
  const { values, positionals } = parsed;
  const watch = values.watch === true;
  if (positionals.length > (watch ? 1 : 0))
    throw new HavenError("HAVEN_ERR_USAGE", `unexpected argument "${positionals.at(-1)}"\n\n${VOLUME_STATUS_USAGE}`);
  const seconds = positionals[0] === undefined ? DEFAULT_WATCH_SECONDS : parseWatchSeconds(positionals[0]);
  const client = await engineApiFromOptions(values, VOLUME_STATUS_USAGE);
  const volume = typeof values.volume === "string" ? values.volume : undefined;
  const json = values.json === true;
  const show = (status: VolumeStatus): string =>
    json
      ? `${JSON.stringify(status, null, watch ? undefined : 2)}\n`
      : renderVolumeStatus(status, { ...terminalRenderOptions(), api: client.address });

  if (!watch) {
    process.stdout.write(show(await client.status(volume)));
    return 0;
  }
  const redraw = isTerminal() && !json;
  const stop = abortOnStopSignal();
  try {
    let first = true;
    do {
      let text: string;
      try {
        text = show(await client.status(volume));
      } catch (error) {
        // An engine that restarts while watched is shown, not fatal; an engine never reached is.
        if (first || !(error instanceof HavenError)) throw error;
        text = `haven: ${error.message} [${error.code}]; retrying every ${seconds} s\n`;
      }
      first = false;
      if (redraw) process.stdout.write(`${CLEAR_SCREEN}${text}\nevery ${seconds} s; Ctrl-C to stop\n`);
      else process.stdout.write(json ? text : `--- ${new Date().toISOString()}\n${text}`);
    } while (await pause(seconds * 1000, stop.signal));
  } finally {
    stop.dispose();
  }
  return 0;
}

function parseWatchSeconds(text: string): number {
  const seconds = Number(text);
  if (!/^\d+(\.\d+)?$/.test(text) || seconds < MIN_WATCH_SECONDS || seconds > MAX_WATCH_SECONDS) {
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `--watch SECONDS must be a number from ${MIN_WATCH_SECONDS} to ${MAX_WATCH_SECONDS}, got "${text}"\n\n${VOLUME_STATUS_USAGE}`,
    );
  }
  return seconds;
}
