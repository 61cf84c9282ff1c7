// Strict parsing of a command's options: unknown options, missing values and stray arguments are
// usage errors with the command's own help text, never silently ignored.

import { parseArgs, type ParseArgsConfig } from "node:util";
import { HavenError, errorMessage } from "../core/errors.js";

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
    const message = errorMessage(error);
    throw new HavenError("HAVEN_ERR_USAGE", `${message}\n\n${usage}`);
  }
}

const HELP_OPTION = { help: { type: "boolean", short: "h" } } as const satisfies OptionSpec;

/**
 * parseCommandArgs with -h/--help added: prints `usage` and returns undefined when help was asked for
 * (the command then exits 0), else the parsed options and arguments.
 */
export function parseCommand<T extends OptionSpec>(
  argv: string[],
  options: T,
  usage: string,
): { values: Record<string, string | boolean | undefined>; positionals: string[] } | undefined {
  const parsed = parseCommandArgs(argv, { ...options, ...HELP_OPTION }, usage);
  if (parsed.values.help) {
    process.stdout.write(`${usage}\n`);
    return undefined;
  }
  return parsed;
}

/** For commands that take options only: any argument is a usage error naming it. */
export function refuseArguments(positionals: readonly string[], usage: string): void {
  if (positionals.length > 0)
    throw new HavenError("HAVEN_ERR_USAGE", `unexpected argument "${positionals[0]}"\n\n${usage}`);
}
