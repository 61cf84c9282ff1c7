// Asking for a live migration and following it to its end, as `vm migrate` and `host drain` do: a
// progress line from the source's reports in the migration record (a bar of RAM sent, the rate, how
// fast the guest dirties memory, the pause QEMU expects), redrawn in place on a terminal and printed
// at most every 25 percent otherwise; then the outcome from the events the agents wrote.

import { readClusterRecords, readEvents } from "./cluster-read.js";
import { planMigration, requestMigration } from "./migration-admin.js";
import { parseMigrationRecord, type MigrationProgress } from "./migration-schema.js";
import { keys, type CopyPlace, type EventRecord } from "./schema.js";
import type { ClusterStore } from "./store.js";
import { addCopy } from "./volume-admin.js";
import { HavenError } from "../core/errors.js";
import { formatBytes } from "../util/units.js";

/** Erases the rest of a terminal line (ANSI EL), after a progress line redrawn in place. */
const CLEAR_TO_END_OF_LINE = "\x1b[K";

const POLL_MS = 250;

export interface MigrationOutcome {
  readonly vm: string;
  readonly from: string;
  readonly to: string;
  /** The pause the guest saw, as the destination measured it (ms), when it said. */
  readonly pausedMs?: number;
  readonly seconds: number;
}

export interface MigrateOptions {
  readonly actor: string;
  /** Build an in-sync copy on the destination first when it has none. */
  readonly copy: boolean;
  readonly timeoutMs: number;
  readonly signal: AbortSignal;
  readonly write?: (text: string) => void;
  /** Ask only: do not wait for the end. */
  readonly noWait?: boolean;
  /** The most the transfer may send per second (bytes). */
  readonly maxBandwidth?: number;
  /** Redraw the progress line in place (a terminal) rather than print a line every 25 percent. */
  readonly redraw?: boolean;
  /**
   * Waits until a new copy is in sync (the CLI's copy-progress.ts, with its progress lines); needed
   * only with `copy`. Resolves false when stopped.
   */
  readonly waitForCopies?: (
    client: ClusterStore,
    copies: readonly { readonly volume: string; readonly copy: CopyPlace }[],
    timeoutMs: number,
    signal: AbortSignal,
    write: (text: string) => void,
  ) => Promise<boolean>;
}

/** Migrates VM `name` to `to` and resolves when it runs there; rejects with the reason when it failed. */
export async function migrateVm(
  client: ClusterStore,
  name: string,
  to: string,
  options: MigrateOptions,
): Promise<MigrationOutcome | undefined> {
  const write = options.write ?? ((text: string) => process.stderr.write(text));
  let records = await readClusterRecords(client);
  let plan = planMigration(records, name, to, options.copy);
  if (plan.needsCopy) {
    const added = await addCopy(client, plan.vm.volume, { host: to }, { actor: options.actor });
    write(`VM ${name}: building a copy of ${plan.vm.volume} on ${to}/${added.copy.disk} first\n`);
    const copy = { volume: plan.vm.volume, copy: added.copy };
    const waitForCopies = options.waitForCopies;
    if (waitForCopies === undefined)
      throw new HavenError(
        "HAVEN_ERR_USAGE",
        `VM ${name}: ${to} needs a copy built first, and this caller cannot wait for one`,
      );
    if (!(await waitForCopies(client, [copy], options.timeoutMs, options.signal, write))) return undefined;
    records = await readClusterRecords(client);
    plan = planMigration(records, name, to, false);
  }
  const started = Date.now();
  const record = await requestMigration(client, plan, records, {
    actor: options.actor,
    ...(options.maxBandwidth !== undefined && { maxBandwidth: options.maxBandwidth }),
  });
  write(`VM ${name}: live migration from ${plan.from} to ${to} asked\n`);
  if (options.noWait === true) return undefined;
  const terminal = options.redraw === true;
  let lastStep = -1;
  for (;;) {
    if (options.signal.aborted) return undefined;
    const kv = await client.get(keys.migration(name));
    const current = kv === undefined ? undefined : parseMigrationRecord(kv.value, kv.key);
    if (current === undefined || current.id !== record.id) break;
    const line = `${name} ${plan.from} -> ${to}: ${progressText(current.phase, current.progress)}`;
    if (terminal) write(`\r${line}${CLEAR_TO_END_OF_LINE}`);
    else {
      const step = current.phase === "switching" ? 4 : Math.floor(percentOf(current.progress) / 25);
      if (step > lastStep) {
        write(`${line}\n`);
        lastStep = step;
      }
    }
    if (Date.now() - started > options.timeoutMs)
      throw new HavenError(
        "HAVEN_ERR_UNAVAILABLE",
        `VM ${name}'s migration has not ended after ${options.timeoutMs / 1000} s; it goes on: follow it with 'haven vm show ${name}'`,
      );
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
  if (terminal) write("\n");
  // The record goes first; the destination writes its event once the guest runs there.
  const done = await outcomeEvent(client, name, started);
  if (done.kind === "vm-migration-failed") throw new HavenError("HAVEN_ERR_CONFLICT", done.message);
  const paused = /paused for about (\d+) ms/.exec(done.message);
  return {
    vm: name,
    from: plan.from,
    to,
    ...(paused !== null && { pausedMs: Number(paused[1]) }),
    seconds: (Date.now() - started) / 1000,
  };
}

const OUTCOME_WAIT_MS = 15_000;

async function outcomeEvent(client: ClusterStore, name: string, since: number): Promise<EventRecord> {
  const deadline = Date.now() + OUTCOME_WAIT_MS;
  for (;;) {
    const events = (await readEvents(client)).map((stored) => stored.event);
    const outcome = events.find(
      (event) =>
        Date.parse(event.time) >= since - 1_000 &&
        event.message.startsWith(`VM ${name}`) &&
        (event.kind === "vm-migrated" || event.kind === "vm-migration-failed"),
    );
    if (outcome !== undefined) return outcome;
    if (Date.now() > deadline)
      throw new HavenError("HAVEN_ERR_CONFLICT", `VM ${name}'s migration ended without a result; see 'haven events'`);
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

function percentOf(progress: MigrationProgress | undefined): number {
  if (progress === undefined || progress.totalBytes === 0) return 0;
  return Math.min(100, (100 * (progress.totalBytes - progress.remainingBytes)) / progress.totalBytes);
}

/** "sending RAM 42% [########............] 98 MB/s, dirtying 1.2 MB/s, pass 2, pause ~120 ms" */
export function progressText(phase: string, progress: MigrationProgress | undefined): string {
  if (phase === "requested") return "the destination prepares";
  if (phase === "switching") return "RAM and devices sent; the disk moves and the guest resumes there";
  if (progress === undefined) return "starting the transfer";
  const percent = percentOf(progress);
  const width = 20;
  const filled = Math.round((percent / 100) * width);
  const dirty = progress.dirtyPagesRate * progress.pageSize;
  return (
    `sending RAM ${percent.toFixed(0).padStart(3)}% [${"#".repeat(filled)}${".".repeat(width - filled)}] ` +
    `${formatBytes(progress.mbps * 125_000)}/s, guest dirties ${formatBytes(dirty)}/s, pass ${progress.passes}, ` +
    `pause ~${progress.expectedDowntimeMs} ms`
  );
}
