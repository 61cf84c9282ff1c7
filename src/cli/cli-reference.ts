// docs/cli.md, made from the commands' own usage texts so that the reference cannot drift from what
// `--help` prints: scripts/cli-reference.mjs writes it (`npm run docs:cli`), and a unit test fails
// when the file differs from what this would write.

import { usageTexts } from "./main.js";

/** The whole of docs/cli.md. */
export function cliReference(): string {
  const sections = usageTexts().map(({ command, usage }) =>
    [`## ${command}`, "", "```text", usage, "```", ""].join("\n"),
  );
  return [
    "# The haven command line",
    "",
    "<!-- Written by scripts/cli-reference.mjs from each command's --help; run `npm run docs:cli` after changing a usage text. -->",
    "",
    "Every command below prints its section with `--help` (or `-h`), wherever that stands on the line.",
    "The global options `--etcd`, `--context` and `--tls-dir` may stand before or after the command.",
    "A usage error prints one line, `haven: <what is wrong> [HAVEN_ERR_USAGE]`, then where the",
    "command's help is, and exits with status 2.",
    "",
    ...sections,
  ].join("\n");
}
