// The operator's view of a volume's status, as `haven volume status` prints it: a header block (what
// the volume is, its epoch, state and generation, where clients connect), a table with one row per
// copy, the verify in progress and the I/O counters. Pure and deterministic: the same status and
// options always give the same text, so the CLI, its --watch mode and the tests share it.

import type {
  ReplicaState,
  ReplicaStatus,
  ResyncProgress,
  VerifyStatus,
  VolumeState,
  VolumeStatus,
} from "../engine/status.js";
import { formatBytes } from "../util/units.js";

export interface RenderOptions {
  /** Terminal columns: a copy's first detail goes in its row when the row fits, else on a line below. */
  readonly width?: number;
  /** ANSI colors for states (green: fine, yellow: on its way, red: needs the operator). */
  readonly color?: boolean;
  /** The engine API address, for the commands suggested to the operator (HOST:PORT). */
  readonly api?: string;
}

export const DEFAULT_RENDER_WIDTH = 120;
const PROGRESS_BAR_CELLS = 22;
/** Mismatching ranges listed by name; the rest are counted. */
const MAX_MISMATCHES_SHOWN = 5;
const LABEL_COLUMNS = 12;
const COLUMN_GAP = "  ";
const DETAIL_INDENT = "    ";

type Tone = "good" | "busy" | "bad";

const REPLICA_TONE: Record<ReplicaState, Tone> = {
  connecting: "busy",
  "in-sync": "good",
  resyncing: "busy",
  faulted: "bad",
  "split-brain": "bad",
  refused: "bad",
};

const VOLUME_TONE: Record<VolumeState, Tone> = {
  starting: "busy",
  healthy: "good",
  degraded: "busy",
  resyncing: "busy",
  failed: "bad",
  stopping: "busy",
};

const ANSI: Record<Tone, string> = { good: "\x1b[32m", busy: "\x1b[33m", bad: "\x1b[31m" };
const ANSI_RESET = "\x1b[0m";

/** A header line: the label, then the value in a column of its own. */
function field(label: string, value: string): string {
  return `${label.padEnd(LABEL_COLUMNS)}${value}`;
}

/** Text from the engine (names, locations, reasons) cannot move the cursor or recolor the terminal. */
function printable<T>(value: T): T {
  return JSON.parse(JSON.stringify(value), (_key, field: unknown) =>
    // eslint-disable-next-line no-control-regex
    typeof field === "string" ? field.replace(/[\x00-\x1f\x7f-\x9f]/g, "?") : field,
  ) as T;
}

type Paint = (tone: Tone, text: string) => string;

function painter(options: Pick<RenderOptions, "color">): Paint {
  return (tone, text) => (options.color ? `${ANSI[tone]}${text}${ANSI_RESET}` : text);
}

/** Rounding down must not turn 0.413 * 1000 = 412.99999999999994 into 41.2%. */
const ROUNDING_SLACK = 1e-9;

function clampFraction(fraction: number): number {
  return Number.isNaN(fraction) ? 0 : Math.min(1, Math.max(0, fraction));
}

/**
 * `[#####.....]` with `cells` cells between the brackets. The fraction is clamped to [0, 1] and rounded
 * down, so the bar is full only when the work is; NaN (nothing known yet) draws an empty bar.
 */
export function progressBar(fraction: number, cells: number): string {
  const inside = Math.max(0, Math.floor(cells));
  const filled = Math.min(inside, Math.floor(clampFraction(fraction) * inside + ROUNDING_SLACK));
  return `[${"#".repeat(filled)}${".".repeat(inside - filled)}]`;
}

/** Seconds as m:ss, or h:mm:ss from an hour up; "--" when unknown (null, NaN, negative, infinite). */
export function formatDuration(seconds: number | null): string {
  if (seconds === null || !Number.isFinite(seconds) || seconds < 0) return "--";
  const total = Math.round(seconds);
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const secs = String(total % 60).padStart(2, "0");
  return hours > 0 ? `${hours}:${String(minutes).padStart(2, "0")}:${secs}` : `${minutes}:${secs}`;
}

/** done/total as a fraction; an empty job (total 0) is complete. */
function fractionOf(doneBytes: number, totalBytes: number): number {
  return totalBytes > 0 ? doneBytes / totalBytes : 1;
}

/** "41.2%", rounded down so that 100.0% means done. */
function formatPercent(fraction: number): string {
  return `${(Math.floor(clampFraction(fraction) * 1000 + ROUNDING_SLACK) / 10).toFixed(1)}%`;
}

/** "rule 4: the peer moved on ..." becomes "rule 4"; the full text is in the engine's log. */
function shortRule(rule: string): string {
  return /^rule \d+/.exec(rule)?.[0] ?? rule;
}

function shortGeneration(id: string | undefined): string {
  return id === undefined || id === "" ? "-" : id.slice(0, 8);
}

/** `[#########.............]  41.2%  312.0 MiB/s  ETA 0:42  (incremental, rule 4)` */
export function formatResync(resync: ResyncProgress): string {
  const fraction = fractionOf(resync.doneBytes, resync.totalBytes);
  return [
    progressBar(fraction, PROGRESS_BAR_CELLS),
    formatPercent(fraction),
    `${formatBytes(resync.bytesPerSecond)}/s`,
    `ETA ${formatDuration(resync.etaSeconds)}`,
    `(${resync.mode}, ${shortRule(resync.rule)})`,
  ].join("  ");
}

/** Stable for copy-pasting: the name and location are quoted only when the shell would need it. */
function shellWord(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

export function resolveSplitBrainCommand(name: string, survivor: string, api: string | undefined): string {
  return `haven volume resolve-split-brain ${shellWord(name)} --survivor ${shellWord(survivor)} --api ${api ?? "HOST:PORT"}`;
}

interface Row {
  readonly cells: readonly string[];
  readonly stateTone: Tone;
  /** The first goes in the DETAIL column when the row fits the width; the others always go below. */
  readonly details: readonly string[];
}

function replicaDetails(status: VolumeStatus, replica: ReplicaStatus, api: string | undefined): string[] {
  const details: string[] = [];
  if (replica.state === "resyncing" && replica.resync !== null) details.push(formatResync(replica.resync));
  else if (replica.reason !== null) details.push(replica.reason);
  if (replica.state === "split-brain") {
    if (replica.splitBrain !== null) {
      details.push(
        `since the split the volume changed ${formatBytes(replica.splitBrain.volumeChangedBytes)}, ` +
          `this copy changed ${formatBytes(replica.splitBrain.copyChangedBytes)}`,
      );
    }
    // The API resolves a split brain only in favour of the side being served (an in-sync copy); keeping
    // the other side's data means restarting the engine on it, which discards the served side's writes.
    const serving = status.replicas.find((other) => other.state === "in-sync");
    if (serving !== undefined) {
      details.push(
        `to keep the volume's data and rebuild this copy: ${resolveSplitBrainCommand(status.name, serving.location, api)}`,
      );
    }
    details.push(
      `to keep this copy's data instead: stop the engine and restart 'haven volume serve' with ` +
        `--survivor ${shellWord(replica.location)} (the volume's writes since the split are lost)`,
    );
  }
  return details;
}

function replicaRow(status: VolumeStatus, replica: ReplicaStatus, api: string | undefined): Row {
  return {
    cells: [
      replica.location,
      replica.local ? "local" : "remote",
      replica.state,
      formatBytes(replica.outOfSyncBytes),
      shortGeneration(replica.generations?.current),
    ],
    stateTone: REPLICA_TONE[replica.state],
    details: replicaDetails(status, replica, api),
  };
}

const HEADINGS = ["LOCATION", "LOCAL/REMOTE", "STATE", "OUT-OF-SYNC", "GENERATION", "DETAIL"];
const STATE_COLUMN = 2;

function renderTable(status: VolumeStatus, options: RenderOptions, paint: Paint): string[] {
  const width = options.width ?? DEFAULT_RENDER_WIDTH;
  const rows = status.replicas.map((replica) => replicaRow(status, replica, options.api));
  const columnWidths = HEADINGS.slice(0, -1).map((heading, column) =>
    Math.max(heading.length, ...rows.map((row) => row.cells[column]!.length)),
  );
  const lines = [HEADINGS.map((heading, column) => heading.padEnd(columnWidths[column] ?? 0)).join(COLUMN_GAP)];
  for (const row of rows) {
    const cells = row.cells.map((cell, column) => {
      const padded = cell.padEnd(columnWidths[column]!);
      // Color the word, not the padding, so that columns line up with or without escapes.
      return column === STATE_COLUMN ? paint(row.stateTone, cell) + padded.slice(cell.length) : padded;
    });
    const [first, ...rest] = row.details;
    const plainLength = columnWidths.reduce((sum, w) => sum + w + COLUMN_GAP.length, 0) + (first?.length ?? 0);
    const inline = first !== undefined && plainLength <= width;
    lines.push([...cells, inline ? first : ""].join(COLUMN_GAP).trimEnd());
    for (const detail of inline ? rest : row.details) lines.push(`${DETAIL_INDENT}${detail}`);
  }
  if (rows.length === 0) lines.push("(no copies)");
  return lines;
}

/** `[#####.................]  23.0%  2.50 GiB of 10.0 GiB`: how far a verify has got. */
export function formatVerifyProgress(verify: VerifyStatus): string {
  const fraction = fractionOf(verify.doneBytes, verify.totalBytes);
  return (
    `${progressBar(fraction, PROGRESS_BAR_CELLS)}  ${formatPercent(fraction)}  ` +
    `${formatBytes(verify.doneBytes)} of ${formatBytes(verify.totalBytes)}`
  );
}

function verifyLines(verify: VerifyStatus, paint: Paint): string[] {
  const count = verify.mismatches.length;
  const tone: Tone = verify.state === "failed" || count > 0 ? "bad" : verify.state === "running" ? "busy" : "good";
  const lines = [
    field("verify", `${paint(tone, verify.state)}${verify.repair ? " (repair)" : ""}  ${formatVerifyProgress(verify)}`),
    field("", `started ${verify.startedAt}${verify.finishedAt !== null ? `, finished ${verify.finishedAt}` : ""}`),
  ];
  if (verify.error !== null) lines.push(field("", `error: ${verify.error}`));
  lines.push(
    field("", `mismatches ${count}`) +
      (count > 0 && verify.repair ? " (repair: the volume's data is resynced over the differing copies)" : ""),
  );
  for (const mismatch of verify.mismatches.slice(0, MAX_MISMATCHES_SHOWN)) {
    lines.push(
      field("", `  offset ${mismatch.offset}`) +
        ` length ${mismatch.length} ` +
        `(${formatBytes(mismatch.length)} at ${formatBytes(mismatch.offset)})  differs on: ${mismatch.locations.join(", ")}`,
    );
  }
  if (count > MAX_MISMATCHES_SHOWN) lines.push(field("", `  ... and ${count - MAX_MISMATCHES_SHOWN} more`));
  return lines;
}

/** The verify block of the status on its own, as `haven volume verify --wait` ends with it. */
export function renderVerifyStatus(verify: VerifyStatus, options: Pick<RenderOptions, "color"> = {}): string {
  return `${verifyLines(printable(verify), painter(options)).join("\n")}\n`;
}

export function renderVolumeStatus(untrusted: VolumeStatus, options: RenderOptions = {}): string {
  const status = printable(untrusted);
  const paint = painter(options);
  const generation = status.generations?.current ?? "";
  const nbd = status.nbd.length === 0 ? ["(not served)"] : status.nbd;
  const { io } = status;
  const lines = [
    field("volume", status.name),
    field("volume id", status.volumeId),
    field(
      "size",
      `${formatBytes(status.sizeBytes)} (${status.sizeBytes} bytes, regions of ${formatBytes(status.regionBytes)})`,
    ),
    field("epoch", String(status.epoch)),
    field("state", paint(VOLUME_TONE[status.state], status.state)),
    field("generation", generation === "" ? "-" : generation),
    ...nbd.map((uri, i) => field(i === 0 ? "nbd" : "", uri)),
    "",
    ...renderTable(status, options, paint),
    "",
  ];
  if (status.verify !== null) lines.push(...verifyLines(status.verify, paint), "");
  lines.push(
    field("io", "") +
      `reads ${io.reads} (${formatBytes(io.bytesRead)})  writes ${io.writes} (${formatBytes(io.bytesWritten)})  ` +
      `flushes ${io.flushes}  errors ${io.errors === 0 ? "0" : paint("bad", String(io.errors))}`,
  );
  return `${lines.join("\n")}\n`;
}
