// `haven vm migrate NAME --to HOST`: live migration. The guest keeps running while its RAM is copied to
// the destination, pauses for the last pass and the disk's switchover, and resumes there; a failure
// before that leaves it running where it was. Progress is drawn while it runs.

import { cliActor } from "../actor.js";
import { HavenError } from "../../core/errors.js";
import { parseSize } from "../../util/units.js";
import { parseCommand } from "../args.js";
import { CLUSTER_OPTIONS, CLUSTER_OPTIONS_USAGE, connectCluster } from "../context.js";
import { migrateVm } from "../../cluster/migration-wait.js";
import { waitForCopies } from "../copy-progress.js";
import { isTerminal } from "../terminal.js";
import { abortOnStopSignal } from "../poll.js";

const DEFAULT_WAIT_SECONDS = 600;

export const VM_MIGRATE_USAGE = `usage: haven vm migrate NAME --to HOST [--copy] [--bandwidth RATE] [--no-wait] [--wait-timeout SECONDS] [cluster options]

Live-migrates running VM NAME to HOST, which must hold a copy of its disk recorded in sync (with
--copy, one is built there first, with progress) and have room for its vCPUs and memory. The guest
runs on while its memory is copied over TLS between the two hosts' QEMUs, then pauses for the last
pass while its disk's primary moves to HOST (no write lost), and resumes there. Any failure before
that leaves it running where it was, and the event says why. A stopped VM is not migrated: start it
where you want it with 'haven vm start NAME --host HOST'. --bandwidth caps the transfer (bytes per
second: 64M is 64 MiB/s) so that it leaves the link to the replication traffic.

${CLUSTER_OPTIONS_USAGE}`;

/** --bandwidth RATE: bytes per second, with the units of sizes (64M), at least 1 MiB/s. */
function bandwidth(text: string): number {
  let bytes: number;
  try {
    bytes = parseSize(text);
  } catch {
    bytes = 0;
  }
  if (!(bytes >= 1024 * 1024))
    throw new HavenError("HAVEN_ERR_USAGE", `--bandwidth "${text}" is not a rate of at least 1M (bytes per second)`);
  return bytes;
}

export async function vmMigrate(argv: string[]): Promise<number> {
  const parsed = parseCommand(
    argv,
    {
      ...CLUSTER_OPTIONS,
      to: { type: "string" },
      copy: { type: "boolean" },
      "no-wait": { type: "boolean" },
      "wait-timeout": { type: "string" },
      bandwidth: { type: "string" },
    },
    VM_MIGRATE_USAGE,
  );
  if (parsed === undefined) return 0;
  const { values, positionals } = parsed;
  if (positionals.length !== 1) throw new HavenError("HAVEN_ERR_USAGE", `give one VM NAME\n\n${VM_MIGRATE_USAGE}`);
  if (typeof values.to !== "string" || values.to === "")
    throw new HavenError("HAVEN_ERR_USAGE", `--to HOST is required: where the VM goes\n\n${VM_MIGRATE_USAGE}`);
  const wait = values["wait-timeout"] === undefined ? DEFAULT_WAIT_SECONDS : Number(values["wait-timeout"]);
  if (!Number.isSafeInteger(wait) || wait <= 0)
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `--wait-timeout "${values["wait-timeout"]}" is not a whole number of seconds`,
    );
  const name = positionals[0]!;
  const maxBandwidth = values.bandwidth === undefined ? undefined : bandwidth(values.bandwidth as string);
  const client = connectCluster(values);
  const stop = abortOnStopSignal();
  try {
    const done = await migrateVm(client, name, values.to, {
      actor: cliActor(),
      copy: values.copy === true,
      timeoutMs: wait * 1000,
      signal: stop.signal,
      noWait: values["no-wait"] === true,
      redraw: isTerminal(),
      waitForCopies,
      ...(maxBandwidth !== undefined && { maxBandwidth }),
    });
    if (values["no-wait"] === true) return 0;
    if (done === undefined) {
      process.stderr.write(`stopped waiting; the migration goes on: follow it with 'haven vm show ${name}'\n`);
      return 130;
    }
    const paused = done.pausedMs === undefined ? "" : `, guest paused ${done.pausedMs} ms`;
    process.stdout.write(
      `VM ${name}: migrated from ${done.from} to ${done.to} in ${done.seconds.toFixed(1)} s${paused}\n`,
    );
    return 0;
  } finally {
    stop.dispose();
  }
}
