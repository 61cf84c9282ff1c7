// How every error reaches the operator, in one style:
//
//   haven: <what is wrong> [HAVEN_ERR_...]
//   Run 'haven volume create --help' for its options.      (usage errors only)
//
// The exit status is the registry's (src/core/errors.ts): 2 for a usage error. A usage error never
// prints the whole usage text: the one line says what is wrong, the hint says where the rest is. Some
// commands still end their message with their usage text ("\n\nusage: haven ..."); it is cut here, so
// that the style does not depend on each thrower.

import { HavenError } from "../core/errors.js";

/** The message without a usage text appended to it. */
export function withoutUsageText(message: string): string {
  const appended = message.indexOf("\n\nusage: ");
  return appended === -1 ? message : message.slice(0, appended);
}

/** Where a usage error sends the operator: the help of `command` ("haven volume create"), or of a group. */
export function usageHint(command: string, group = false): string {
  if (command === "haven") return "Run 'haven --help' for the commands.";
  return `Run '${command} --help' for its ${group ? "commands" : "options"}.`;
}

/** The text for `error`; `hint` (usageHint) follows a usage error. */
export function errorText(error: HavenError, hint: string): string {
  const [first, ...rest] = withoutUsageText(error.message).split("\n");
  const lines = [`haven: ${first} [${error.code}]`, ...rest];
  if (error.code === "HAVEN_ERR_USAGE") lines.push(hint);
  return `${lines.join("\n")}\n`;
}

/** Writes `error` to stderr in the style above and returns the exit status; anything else is rethrown. */
export function reportError(error: unknown, hint: string): number {
  if (!(error instanceof HavenError)) throw error;
  process.stderr.write(errorText(error, hint));
  return error.exitCode;
}
