// The lines the agent writes to its watchdog's stdin (watchdog-process.ts), spelled and parsed in one
// place. One message a line:
//   kick              the agent's event loop is alive
//   vm +PID NAME      the agent started VM NAME's QEMU as PID: kill it too when fencing
//   vm -PID           that QEMU is gone (stopped by the agent): forget it
//   bye               a clean stop: the watchdog exits without killing anything
// Pure, and light to import: the watchdog is a small standalone process.

import { VM_NAME_PATTERN } from "../vm/qemu-name.js";

/** A line longer than this is not one of ours: it is dropped, never buffered without bound. */
export const WATCHDOG_MAX_LINE_BYTES = 256;

const PID_PATTERN = /^[1-9][0-9]{0,9}$/;

export type WatchdogMessage =
  | { readonly kind: "kick" }
  | { readonly kind: "bye" }
  | { readonly kind: "track"; readonly pid: number; readonly name: string }
  | { readonly kind: "untrack"; readonly pid: number };

/** The line (with its newline) for a message; throws on a pid or VM name the protocol cannot carry. */
export function watchdogLine(message: WatchdogMessage): string {
  switch (message.kind) {
    case "kick":
    case "bye":
      return `${message.kind}\n`;
    case "track":
      if (!validPid(message.pid) || !VM_NAME_PATTERN.test(message.name))
        throw new RangeError(`watchdog: cannot track VM "${message.name}" as pid ${message.pid}`);
      return `vm +${message.pid} ${message.name}\n`;
    case "untrack":
      if (!validPid(message.pid)) throw new RangeError(`watchdog: cannot untrack pid ${message.pid}`);
      return `vm -${message.pid}\n`;
  }
}

/** The message of one line (without its newline), or undefined for a line that is not one. */
export function parseWatchdogLine(line: string): WatchdogMessage | undefined {
  if (line === "kick" || line === "bye") return { kind: line };
  const words = line.split(" ");
  if (words[0] !== "vm" || words[1] === undefined) return undefined;
  const sign = words[1][0];
  const pidText = words[1].slice(1);
  if (!PID_PATTERN.test(pidText)) return undefined;
  const pid = Number(pidText);
  if (!validPid(pid)) return undefined;
  if (sign === "+" && words.length === 3 && VM_NAME_PATTERN.test(words[2]!))
    return { kind: "track", pid, name: words[2]! };
  if (sign === "-" && words.length === 2) return { kind: "untrack", pid };
  return undefined;
}

/** A pid that names one process: not 0, 1 (init) or a negative number (a process group). */
function validPid(pid: number): boolean {
  return Number.isInteger(pid) && pid > 1 && pid <= 0x7fffffff;
}
