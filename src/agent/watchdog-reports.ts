// What the watchdog did, carried to the cluster's events. The watchdog (watchdog-process.ts) has no
// client of etcd and often acts when the agent is gone, so it appends each kill to a file in the host's
// state directory; the host's next agent, once registered, records each as a "watchdog-kill" event
// and removes the file. A report that cannot be parsed is recorded as it is (bounded), never dropped.

import { appendFileSync, readFileSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";

/** The report file in a host's state directory. */
export function watchdogReportFile(stateDir: string): string {
  return join(stateDir, "watchdog-reports.jsonl");
}

export interface WatchdogReport {
  readonly time: string;
  readonly message: string;
}

/** Most reports taken at once, and most characters of one: a runaway file cannot flood the events. */
const MAX_REPORTS = 100;
const MAX_REPORT_CHARS = 1000;

export function appendWatchdogReport(file: string, report: WatchdogReport): void {
  appendFileSync(file, `${JSON.stringify(report)}\n`, { mode: 0o600 });
}

/**
 * Takes the reports out of `file` (renamed away first, so a watchdog appending meanwhile starts a new
 * one): the oldest MAX_REPORTS, each parsed, or its text when it is not a report. None without a file.
 */
export function takeWatchdogReports(file: string): WatchdogReport[] {
  const taken = `${file}.taking`;
  try {
    renameSync(file, taken);
  } catch {
    return []; // no file: nothing to report
  }
  let text: string;
  try {
    text = readFileSync(taken, "utf8");
  } finally {
    rmSync(taken, { force: true });
  }
  return text
    .split("\n")
    .filter((line) => line.trim() !== "")
    .slice(0, MAX_REPORTS)
    .map((line): WatchdogReport => {
      try {
        const parsed = JSON.parse(line) as Partial<WatchdogReport>;
        if (typeof parsed.time === "string" && typeof parsed.message === "string")
          return { time: parsed.time.slice(0, 40), message: parsed.message.slice(0, MAX_REPORT_CHARS) };
      } catch {
        // shown as it is below
      }
      return { time: "unknown", message: `unreadable watchdog report: ${line.slice(0, MAX_REPORT_CHARS)}` };
    });
}
