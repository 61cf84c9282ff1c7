// Strict parsing of a command's options: unknown options, missing values and stray arguments are
// usage errors with the command's own help text, never silently ignored.

import { parseArgs, type ParseArgsConfig } from "node:util";
import { HavenError } from "../core/errors.js";

export type OptionSpec = NonNullable<ParseArgsConfig["options"]>;

export function parseCommandArgs<T extends OptionSpec>(
  argv: string[],
  options: T,
  usage: string,
): { values: Record<string, string | boolean | undefined>; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
    return { values: values as Record<string, string | boolean | undefined>, positionals };
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    throw new HavenError("HAVEN_ERR_USAGE", `${message}\n\n${usage}`);
  }
}
