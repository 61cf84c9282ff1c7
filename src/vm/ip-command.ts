// Runs iproute2's `ip` for the VM network (network.ts): one bounded child process per command, its
// arguments an array (never a shell), inside a network namespace when one is named (`ip -n NS ...`,
// which is `ip netns exec NS ip ...` without the extra exec). A failure becomes a HavenError carrying
// the command and its stderr, because the operator fixes what `ip` said, not what Node saw.

import { execFile } from "node:child_process";
import { HavenError } from "../core/errors.js";

export const DEFAULT_IP_COMMAND_TIMEOUT_MS = 5_000;
/** `ip -j link show` of a bridge with a few hundred ports stays well below this. */
const MAX_OUTPUT_BYTES = 4 * 1024 * 1024;

export interface IpCommandOptions {
  /** Run inside this network namespace (`ip -n NAMESPACE`). */
  readonly namespace?: string;
  readonly timeoutMs?: number;
}

/** The outcome of a command that ran to its end, successful or not. */
export interface IpResult {
  readonly ok: boolean;
  readonly stdout: string;
  readonly stderr: string;
}

/** The full argument list `ip` gets for `args` (exported for tests and for error messages). */
export function ipArguments(args: readonly string[], namespace?: string): string[] {
  return namespace === undefined ? [...args] : ["-n", namespace, ...args];
}

/**
 * Runs `ip ARGS`; resolves with ok=false when ip ran and failed (the caller decides whether, say,
 * "File exists" is fine), rejects with HAVEN_ERR_IO when it could not run or ran out of time.
 */
export function tryIp(args: readonly string[], options: IpCommandOptions = {}): Promise<IpResult> {
  const argv = ipArguments(args, options.namespace);
  const timeoutMs = options.timeoutMs ?? DEFAULT_IP_COMMAND_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    execFile(
      "ip",
      argv,
      { timeout: timeoutMs, killSignal: "SIGKILL", maxBuffer: MAX_OUTPUT_BYTES, encoding: "utf8" },
      (error, stdout, stderr) => {
        if (error === null) {
          resolve({ ok: true, stdout, stderr });
          return;
        }
        const failure = error as NodeJS.ErrnoException & { killed?: boolean; code?: unknown };
        if (failure.code === "ENOENT")
          reject(new HavenError("HAVEN_ERR_IO", "`ip` was not found: install iproute2 (apt-get install iproute2)"));
        else if (failure.killed)
          reject(new HavenError("HAVEN_ERR_IO", `\`ip ${argv.join(" ")}\` did not finish within ${timeoutMs} ms`));
        else if (typeof failure.code === "number") resolve({ ok: false, stdout, stderr });
        else reject(new HavenError("HAVEN_ERR_IO", `\`ip ${argv.join(" ")}\` failed: ${failure.message}`));
      },
    );
  });
}

/** Runs `ip ARGS` and resolves with its stdout; any failure rejects with HAVEN_ERR_IO and ip's stderr. */
export async function runIp(args: readonly string[], options: IpCommandOptions = {}): Promise<string> {
  const result = await tryIp(args, options);
  if (!result.ok) throw ipFailed(args, options, result.stderr);
  return result.stdout;
}

/** The HavenError for a failed `ip` command, with a hint when the cause is missing privileges. */
export function ipFailed(args: readonly string[], options: IpCommandOptions, stderr: string): HavenError {
  const text = stderr.trim() || "no message";
  const hint = /Operation not permitted|Permission denied/i.test(text)
    ? " (network setup needs root or CAP_NET_ADMIN)"
    : "";
  return new HavenError(
    "HAVEN_ERR_IO",
    `\`ip ${ipArguments(args, options.namespace).join(" ")}\` failed: ${text}${hint}`,
  );
}
