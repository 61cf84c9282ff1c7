// Strict parsing of a command's options: unknown options, missing values and stray arguments are
// usage errors that say what is wrong (src/cli/usage-error.ts adds where the help is), never silently
// ignored.
//
// A value that starts with a dash and a digit ("--size -1G", "--replicas -2") is taken as the option's
// value, not as an option of its own as node's parseArgs would: the option's parser then says why a
// negative value is refused, instead of "Unknown option '-1'".

import { parseArgs, type ParseArgsConfig } from "node:util";
import { HavenError, errorMessage } from "../core/errors.js";

export type OptionSpec = NonNullable<ParseArgsConfig["options"]>;

export function parseCommandArgs<T extends OptionSpec>(
  argv: string[],
  options: T,
  /** Kept for the commands that pass it; the hint under the error names the command's --help. */
  _usage: string,
): { values: Record<string, string | boolean | undefined>; positionals: string[] } {
  try {
    const args = withNegativeValues(argv, options);
    const { values, positionals } = parseArgs({ args, options, allowPositionals: true, strict: true });
    return { values: values as Record<string, string | boolean | undefined>, positionals };
  } catch (error) {
    throw new HavenError("HAVEN_ERR_USAGE", parseArgsMessage(error), { cause: error });
  }
}

const NEGATIVE_NUMBER = /^-[0-9.]/;

/** `argv` with "--opt -1G" written "--opt=-1G" for every option that takes a value. */
export function withNegativeValues(argv: readonly string[], options: OptionSpec): string[] {
  const takesValue = (token: string): boolean => {
    const long = token.startsWith("--") ? token.slice(2) : undefined;
    const spec = long !== undefined ? options[long] : Object.values(options).find((o) => `-${o.short}` === token);
    return spec?.type === "string";
  };
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const token = argv[i]!;
    if (token === "--") {
      out.push(...argv.slice(i));
      break;
    }
    const next = argv[i + 1];
    if (next !== undefined && NEGATIVE_NUMBER.test(next) && takesValue(token)) {
      const name = token.startsWith("--")
        ? token
        : `--${Object.keys(options).find((k) => `-${options[k]!.short}` === token)}`;
      out.push(`${name}=${next}`);
      i++;
    } else out.push(token);
  }
  return out;
}

/** node's parseArgs error in the CLI's words. */
function parseArgsMessage(error: unknown): string {
  const message = errorMessage(error);
  const option = /'(-{1,2}[^' =<]+)/.exec(message)?.[1] ?? "";
  switch ((error as NodeJS.ErrnoException).code) {
    case "ERR_PARSE_ARGS_UNKNOWN_OPTION":
      return `unknown option ${option}`;
    case "ERR_PARSE_ARGS_INVALID_OPTION_VALUE":
      return /does not take an argument/.test(message)
        ? `option ${option} takes no value`
        : `option ${option} needs a value`;
    default:
      return message.split("\n")[0]!;
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
export function refuseArguments(positionals: readonly string[], _usage: string): void {
  if (positionals.length > 0) throw new HavenError("HAVEN_ERR_USAGE", `unexpected argument "${positionals[0]}"`);
}
