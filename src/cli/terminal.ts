// How the CLI draws on the operator's terminal: colors and the width of the table only when stdout is
// a terminal (never in a pipe or a log), and never when NO_COLOR is set (https://no-color.org).

export const CLEAR_SCREEN = "\x1b[H\x1b[2J";
export const CLEAR_TO_END_OF_LINE = "\x1b[K";

export function isTerminal(): boolean {
  return process.stdout.isTTY === true;
}

/** Options for src/cli/status-render.ts as this process's stdout allows. */
export function terminalRenderOptions(): { color: boolean; width?: number } {
  const color = isTerminal() && process.env.NO_COLOR === undefined;
  const width = process.stdout.columns;
  return width !== undefined && width > 0 ? { color, width } : { color };
}
