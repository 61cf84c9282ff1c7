// `haven volume verify`: starts an online verify of a running engine's volume (its copies compared
// region by region while clients carry on) and, with --wait, follows it to the end: the exit status
// then says whether the copies agree.

import { HavenError } from "../../core/errors.js";
import { formatVerifyProgress, renderVerifyStatus } from "../status-render.js";
import type { VerifyStatus } from "../../engine/status.js";
import { parseCommand, refuseArguments } from "../args.js";
import { ENGINE_API_OPTIONS, ENGINE_API_OPTIONS_USAGE, engineApiFromOptions } from "../engine-api-client.js";
import { abortOnStopSignal, pause } from "../poll.js";
import { CLEAR_TO_END_OF_LINE, isTerminal, terminalRenderOptions } from "../terminal.js";

export const VOLUME_VERIFY_USAGE = `usage: haven volume verify --api HOST:PORT [--token-file FILE] [--repair] [--wait]

Starts an online verify: every region of the volume is compared across its in-sync copies while
clients carry on. Only one verify runs at a time.

options:
${ENGINE_API_OPTIONS_USAGE}
  --repair          resync the regions that differ from the volume's data
  --wait            follow the verify to the end, then list the regions that differ; exit status 1 if
                    copies differ (without --repair) or the verify failed, 0 if they agree`;

export interface VolumeVerifyOptions {
  /** How often --wait asks for the status. */
  readonly pollIntervalMs?: number;
}

const DEFAULT_POLL_INTERVAL_MS = 1000;
/** Exit status when Ctrl-C stops the wait (the verify itself goes on in the engine). */
const EXIT_INTERRUPTED = 130;

export async function volumeVerify(argv: string[], options: VolumeVerifyOptions = {}): Promise<number> {
  const parsed = parseCommand(
    argv,
    {
      ...ENGINE_API_OPTIONS,
      repair: { type: "boolean" },
      wait: { type: "boolean" },
    },
    VOLUME_VERIFY_USAGE,
  );
  if (parsed === undefined) return 0; // --help was printed
  const { values, positionals } = parsed;
  refuseArguments(positionals, VOLUME_VERIFY_USAGE);
  const client = await engineApiFromOptions(values, VOLUME_VERIFY_USAGE);
  const repair = values.repair === true;
  const started = await client.startVerify({ repair });
  const follow = `haven volume status --api ${client.address} --watch`;
  if (values.wait !== true) {
    process.stdout.write(`verify started${repair ? " with repair" : ""}; follow it with: ${follow}\n`);
    return 0;
  }

  const tty = isTerminal();
  const stop = abortOnStopSignal();
  let verify: VerifyStatus = started;
  try {
    while (verify.state === "running") {
      if (tty) {
        const progress = `verify ${formatVerifyProgress(verify)}  mismatches ${verify.mismatches.length}`;
        process.stdout.write(`\r${progress}${CLEAR_TO_END_OF_LINE}`);
      }
      if (!(await pause(options.pollIntervalMs ?? DEFAULT_POLL_INTERVAL_MS, stop.signal))) {
        process.stdout.write(`${tty ? "\n" : ""}stopped waiting; the verify goes on in the engine: ${follow}\n`);
        return EXIT_INTERRUPTED;
      }
      const current = (await client.status()).verify;
      // The engine may have restarted (and lost the verify) or, after it ended, started another.
      if (current === null || current.startedAt !== started.startedAt) {
        throw new HavenError(
          "HAVEN_ERR_CONFLICT",
          `the verify started at ${started.startedAt} is no longer the engine's (did the engine restart?); see ${follow}`,
        );
      }
      verify = current;
    }
  } finally {
    stop.dispose();
  }
  if (tty) process.stdout.write(`\r${CLEAR_TO_END_OF_LINE}`);
  process.stdout.write(renderVerifyStatus(verify, terminalRenderOptions()));
  if (verify.state === "failed")
    throw new HavenError("HAVEN_ERR_IO", `the verify failed: ${verify.error ?? "no reason given"}`);
  if (verify.mismatches.length > 0 && !repair) {
    process.stdout.write(
      `copies differ in ${verify.mismatches.length} region(s); to resync them from the volume's data: ` +
        `haven volume verify --api ${client.address} --repair\n`,
    );
    return 1;
  }
  return 0;
}
