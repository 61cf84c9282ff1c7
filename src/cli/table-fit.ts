// Fitting a table into the terminal's width. Pure: the widths the cells want, each column's rank
// (how much the operator needs it) and the width available go in; each column's width comes out.
//
// The least needed column gives way first: it shrinks down to its minimum, then the next one does;
// when every column is at its minimum and the table is still too wide, the least needed columns are
// left out, one by one (width 0), and the room that frees goes back to the most needed columns shown.
// The first column (what the row is: a host, a volume) stays whole; it is cut only when it alone is
// wider than the terminal. A cell wider than its column is cut, with "…" marking the cut; `--json` always has everything.

import assert from "node:assert/strict";

export interface ColumnNeed {
  /** The width of the widest cell, heading included. */
  readonly width: number;
  /** Higher is needed more; the lowest gives way first. */
  readonly rank: number;
  /** The narrowest it may get before it is left out (at most `width`). */
  readonly min: number;
}

/** The narrowest a column gets by default: a few characters and the cut mark. */
export const DEFAULT_MIN_COLUMN_WIDTH = 8;

/**
 * Each column's width so that the table, with `gap` characters between columns, fits `total`
 * characters; 0 means the column is left out.
 */
export function fitColumnWidths(columns: readonly ColumnNeed[], total: number, gap: number): number[] {
  assert.ok(columns.length > 0, "a table has at least one column");
  const widths = columns.map((column) => column.width);
  const shown = (): number[] => widths.flatMap((width, index) => (width > 0 ? [index] : []));
  const used = (): number => {
    const visible = shown();
    return visible.reduce((sum, index) => sum + widths[index]!, 0) + gap * (visible.length - 1);
  };
  // Lowest rank first; among equals, the one further right.
  const order = columns.map((_, index) => index).sort((a, b) => columns[a]!.rank - columns[b]!.rank || b - a);
  for (const index of order) {
    const over = used() - total;
    if (over <= 0) return widths;
    if (index === 0) continue;
    const min = Math.min(columns[index]!.min, columns[index]!.width);
    widths[index] = Math.max(min, widths[index]! - over);
  }
  for (const index of order) {
    if (used() <= total) break;
    if (index === 0) continue;
    widths[index] = 0;
  }
  if (used() > total) widths[0] = Math.max(1, widths[0]! - (used() - total));
  // What leaving columns out freed goes back to the columns shown, the most needed first.
  for (const index of [...order].reverse()) {
    if (widths[index] === 0) continue;
    widths[index] = Math.min(columns[index]!.width, widths[index]! + Math.max(0, total - used()));
  }
  return widths;
}

/** `text` cut to `width` characters, its last one "…" when anything was cut. */
export function cutToWidth(text: string, width: number): string {
  if (text.length <= width) return text;
  if (width <= 0) return "";
  return `${text.slice(0, width - 1)}…`;
}
