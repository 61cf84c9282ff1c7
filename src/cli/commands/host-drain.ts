// `haven host drain HOST` and `haven host undrain HOST`: maintenance without downtime. Drain puts HOST
// in maintenance first (nothing is placed, promoted or migrated there from then on), live-migrates
// every VM running there to another host with an in-sync copy and room (falling back to a stop and a
// start elsewhere only with --allow-restart), moves the primary of every other volume it serves with
// a switchover, and ends with a summary of what went where. Undrain ends the maintenance. The work is
// src/cluster/host-drain.ts's (the dashboard drains the same way); this file prints it.

import { cliActor } from "../actor.js";
import { HavenError } from "../../core/errors.js";
import { drainHost, undrainHost } from "../../cluster/host-drain.js";
import { parseCommand } from "../args.js";
import { CLUSTER_OPTIONS, CLUSTER_OPTIONS_USAGE, connectCluster } from "../context.js";
import { abortOnStopSignal } from "../poll.js";

export const HOST_DRAIN_USAGE = `usage: haven host drain HOST [--allow-restart] [cluster options]

drain: puts HOST in maintenance (nothing is placed, promoted or migrated there until undrain), then
live-migrates every VM running on HOST to another live host that holds an in-sync copy of its disk and
has room for it (the guests pause briefly, never reboot), and moves the primary of every other volume
HOST serves with a switchover (no write lost). A VM that cannot be live-migrated stays on HOST, unless
--allow-restart lets it be stopped and started on another host. Ends with a summary; exits 1 when
anything stayed on HOST.

'haven host undrain HOST' ends the maintenance.

${CLUSTER_OPTIONS_USAGE}`;

export const HOST_UNDRAIN_USAGE = `usage: haven host undrain HOST [cluster options]

Ends HOST's maintenance: volumes and VMs may be placed, promoted and migrated there again. Nothing
moves back by itself (see a VM's failback policy).

${CLUSTER_OPTIONS_USAGE}`;

export async function hostDrain(argv: string[]): Promise<number> {
  const parsed = parseCommand(argv, { ...CLUSTER_OPTIONS, "allow-restart": { type: "boolean" } }, HOST_DRAIN_USAGE);
  if (parsed === undefined) return 0; // --help was printed
  const { values, positionals } = parsed;
  if (positionals.length !== 1) throw new HavenError("HAVEN_ERR_USAGE", `give one HOST\n\n${HOST_DRAIN_USAGE}`);
  const host = positionals[0]!;
  const client = connectCluster(values);
  const stop = abortOnStopSignal();
  let outcomes;
  try {
    outcomes = await drainHost(client, host, {
      actor: cliActor(),
      allowRestart: values["allow-restart"] === true,
      signal: stop.signal,
      write: (text) => process.stdout.write(text),
    });
  } finally {
    stop.dispose();
  }
  process.stdout.write(`\nhost ${host} drained:\n`);
  const width = Math.max(0, ...outcomes.map((outcome) => outcome.what.length));
  for (const outcome of outcomes)
    process.stdout.write(`  ${outcome.ok ? "ok  " : "LEFT"}  ${outcome.what.padEnd(width)}  ${outcome.result}\n`);
  if (outcomes.length === 0) process.stdout.write("  nothing ran or was served there\n");
  const left = outcomes.filter((outcome) => !outcome.ok);
  if (left.length > 0)
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `host ${host} still runs or serves ${left.map((outcome) => outcome.what).join(", ")}; it stays in maintenance`,
    );
  return 0;
}

export async function hostUndrain(argv: string[]): Promise<number> {
  const parsed = parseCommand(argv, { ...CLUSTER_OPTIONS }, HOST_UNDRAIN_USAGE);
  if (parsed === undefined) return 0;
  const { values, positionals } = parsed;
  if (positionals.length !== 1) throw new HavenError("HAVEN_ERR_USAGE", `give one HOST\n\n${HOST_UNDRAIN_USAGE}`);
  const host = positionals[0]!;
  await undrainHost(connectCluster(values), host, cliActor());
  process.stdout.write(`host ${host}: maintenance ended; VMs and copies may be placed there again\n`);
  return 0;
}
