// How `haven` reads a command line before a command sees it. Pure, so that its rules are tested
// without a process.
//
//   haven [global options] NOUN [VERB] [options and arguments, global options among them]
//
// Global options may stand anywhere on the line, as with kubectl or git -C: `haven --context F status`
// and `haven status --context F` are the same command. The ones given before the command words are
// moved after them, where the command's own parser reads them (every cluster command knows --etcd,
// --context and --tls-dir; a command that does not know one refuses it as it refuses any option).
//
// Help and version follow the usual convention:
//   haven --help | -h | help           the list of commands (exit 0)
//   haven NOUN --help                  the commands of that group
//   haven NOUN VERB --help             that command's own usage, wherever --help stands on the line
//   haven --version | -V | version     "haven X.Y.Z" (--json: {"version": "X.Y.Z"})
// Anything after a lone "--" is an argument, never an option.

import { HavenError } from "../core/errors.js";

/** Global options that take a value (--etcd URL or --etcd=URL). */
const GLOBAL_VALUE_OPTIONS = new Set(["--etcd", "--context", "--tls-dir"]);
/** Global options without a value. */
const GLOBAL_FLAGS = new Set(["--json", "--help", "-h", "--version", "-V"]);
const HELP_FLAGS = new Set(["--help", "-h"]);
const VERSION_FLAGS = new Set(["--version", "-V"]);

export interface CommandLine {
  /** The command words: [] (none), [NOUN] or [NOUN, VERB]. */
  readonly words: string[];
  /** Everything else, in order: the options before the command words first, then the rest. */
  readonly rest: string[];
  /** --help or -h stands somewhere before a lone "--". */
  readonly help: boolean;
  /** --version or -V stands before the command words, or there are none. */
  readonly version: boolean;
}

/**
 * Splits `argv` into its command words and the rest. `takesVerb(noun)` says whether NOUN is a group
 * whose next word is a verb (`volume create`) rather than a command on its own (`status`).
 */
export function readCommandLine(argv: readonly string[], takesVerb: (noun: string) => boolean): CommandLine {
  const words: string[] = [];
  const moved: string[] = [];
  let index = 0;
  let version = false;
  const wanted = (): number => (words.length === 0 || (words.length === 1 && takesVerb(words[0]!)) ? 1 : 0);
  while (index < argv.length && wanted() > 0) {
    const token = argv[index]!;
    if (token === "--") break;
    if (!token.startsWith("-") || token === "-") {
      words.push(token);
      index++;
      continue;
    }
    const name = token.split("=", 1)[0]!;
    if (GLOBAL_VALUE_OPTIONS.has(name)) {
      if (name === token) {
        const value = argv[index + 1];
        if (value === undefined) throw new HavenError("HAVEN_ERR_USAGE", `option ${name} needs a value`);
        moved.push(token, value);
        index += 2;
      } else {
        moved.push(token);
        index++;
      }
      continue;
    }
    if (GLOBAL_FLAGS.has(token)) {
      if (VERSION_FLAGS.has(token) && words.length === 0) version = true;
      else moved.push(token);
      index++;
      continue;
    }
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      words.length === 0
        ? `option ${name} before the command: only --etcd, --context, --tls-dir, --json, --help and --version may stand there`
        : `option ${name} before the verb of "${words[0]}": put it after the command`,
    );
  }
  const rest = [...moved, ...argv.slice(index)];
  const end = rest.indexOf("--");
  const options = end === -1 ? rest : rest.slice(0, end);
  return {
    words,
    rest,
    help: options.some((token) => HELP_FLAGS.has(token)),
    version: version || (words.length === 1 && words[0] === "version"),
  };
}

/** The options in `rest` other than `--help`/`-h` and `--version`/`-V`. */
export function withoutHelpAndVersion(rest: readonly string[]): string[] {
  return rest.filter((token) => !HELP_FLAGS.has(token) && !VERSION_FLAGS.has(token));
}
