// How the CLI draws on the operator's terminal: colors only when stdout is a terminal (never in a pipe
// or a log), and never when NO_COLOR is set (https://no-color.org); tables fit the terminal's width.

export const CLEAR_SCREEN = "\x1b[H\x1b[2J";
export const CLEAR_TO_END_OF_LINE = "\x1b[K";

export function isTerminal(): boolean {
  return process.stdout.isTTY === true;
}

/** The least width a table is fitted to when stdout is not a terminal and $COLUMNS does not say. */
export const PIPE_COLUMNS = 80;

/**
 * The width tables fit: the terminal's on a TTY, else $COLUMNS when it is a number (as `ps` and `ls`
 * read it), else 80. `--json` is the way to every detail.
 */
export function terminalWidth(env: NodeJS.ProcessEnv = process.env): number {
  const columns = process.stdout.isTTY === true ? process.stdout.columns : undefined;
  if (columns !== undefined && columns > 0) return columns;
  const fromEnvironment = Number(env.COLUMNS);
  return Number.isInteger(fromEnvironment) && fromEnvironment > 0 ? fromEnvironment : PIPE_COLUMNS;
}

/** Options for src/cli/status-render.ts and cluster-render.ts as this process's stdout allows. */
export function terminalRenderOptions(): { color: boolean; width: number } {
  const color = isTerminal() && process.env.NO_COLOR === undefined;
  return { color, width: terminalWidth() };
}
