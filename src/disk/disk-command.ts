// Runs the system's disk tools (blkid, mkfs, mount, umount, udevadm, ledctl) for the disk layer: one
// bounded child process per command, its arguments an array (never a shell), so a device path or a
// label is never parsed by anything but the tool. A tool that ran and failed resolves with its exit
// code when the caller said that code is an answer (blkid's 2, "nothing found"); any other failure
// becomes HAVEN_ERR_IO carrying the command line and the tool's stderr, because the operator fixes
// what mkfs or mount said, not what Node saw. A missing tool names the Debian package that has it.

import { execFile } from "node:child_process";
import { HavenError } from "../core/errors.js";

/** Most tools answer in well under a second; a device that hangs I/O must not hang the caller. */
export const DEFAULT_COMMAND_TIMEOUT_MS = 30_000;
/** blkid and udevadm print a few lines; mkfs prints a page at most. */
const MAX_OUTPUT_BYTES = 1024 * 1024;

/** The Debian package of each tool, for the message when it is missing (scripts/install-deps.sh installs them). */
const PACKAGE_OF: Record<string, string> = {
  blkid: "util-linux",
  "mkfs.ext4": "e2fsprogs",
  "mkfs.xfs": "xfsprogs",
  mount: "mount",
  umount: "mount",
  losetup: "mount",
  udevadm: "udev",
  ledctl: "ledmon",
};

export interface CommandOptions {
  readonly timeoutMs?: number;
  /** Non-zero exit codes that are answers, not failures (the result carries the code). */
  readonly answerCodes?: readonly number[];
}

export interface CommandResult {
  readonly exitCode: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** `command args...` as an operator would type it, for messages. */
export function commandLine(command: string, args: readonly string[]): string {
  return [command, ...args].join(" ");
}

/**
 * Runs `command args...`; resolves when it exits 0 or with one of `answerCodes`, rejects with
 * HAVEN_ERR_IO otherwise (not found, killed at the timeout, another exit code: stderr in the message).
 */
export function runCommand(
  command: string,
  args: readonly string[],
  options: CommandOptions = {},
): Promise<CommandResult> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
  const shown = commandLine(command, args);
  return new Promise((resolve, reject) => {
    execFile(
      command,
      [...args],
      { timeout: timeoutMs, killSignal: "SIGKILL", maxBuffer: MAX_OUTPUT_BYTES, encoding: "utf8" },
      (error, stdout, stderr) => {
        if (error === null) {
          resolve({ exitCode: 0, stdout, stderr });
          return;
        }
        const failure = error as NodeJS.ErrnoException & { killed?: boolean; code?: unknown };
        if (failure.code === "ENOENT") {
          const name = command.slice(command.lastIndexOf("/") + 1);
          const hint = PACKAGE_OF[name] === undefined ? "" : ` (apt-get install ${PACKAGE_OF[name]})`;
          reject(new HavenError("HAVEN_ERR_IO", `\`${name}\` was not found: install it${hint}`));
        } else if (failure.killed) {
          reject(new HavenError("HAVEN_ERR_IO", `\`${shown}\` did not finish within ${timeoutMs} ms`));
        } else if (typeof failure.code === "number") {
          if (options.answerCodes?.includes(failure.code)) resolve({ exitCode: failure.code, stdout, stderr });
          else reject(commandFailed(shown, failure.code, stderr || stdout));
        } else {
          reject(new HavenError("HAVEN_ERR_IO", `\`${shown}\` failed: ${failure.message}`));
        }
      },
    );
  });
}

function commandFailed(shown: string, exitCode: number, output: string): HavenError {
  const text = output.trim().replace(/\s*\n\s*/g, "; ") || "no message";
  return new HavenError("HAVEN_ERR_IO", `\`${shown}\` failed (exit ${exitCode}): ${text}`);
}
