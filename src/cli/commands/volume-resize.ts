// `haven volume resize NAME --size SIZE`: grows a volume online. Records the larger size in the volume's
// spec (src/cluster/volume-resize.ts, which says how the order "every copy grows before any client sees
// the new size" is kept), then waits until the primary's agent reports the volume served at it.

import { cliActor } from "../actor.js";
import { HavenError } from "../../core/errors.js";
import { readEvents } from "../../cluster/cluster-read.js";
import { resizeVolume } from "../../cluster/volume-resize.js";
import { formatBytes } from "../../util/units.js";
import { parseCommand } from "../args.js";
import { CLUSTER_OPTIONS, CLUSTER_OPTIONS_USAGE, connectCluster } from "../context.js";
import { abortOnStopSignal, pause } from "../poll.js";
import { volumeNameArgument } from "../volume-argument.js";
import { parseVolumeSize } from "./volume-create.js";

export const VOLUME_RESIZE_USAGE = `usage: haven volume resize NAME --size SIZE [--no-wait] [--wait-timeout SECONDS] [cluster options]

Grows the volume to SIZE while it stays in use. Its primary restarts the volume's engine at the new
size, which grows every copy it reaches before serving it (clients and VMs see a pause of about a
second, then the new size); a copy on a host that is down grows before it rejoins. A running VM's
guest sees the new size when its disk reconnects. Growing only: a volume never shrinks.

options:
  --size SIZE             the new size, larger than the current one, a multiple of 4 KiB (e.g. 20G)
  --no-wait               return once the new size is recorded
  --wait-timeout SECONDS  how long to wait for the primary to serve the new size (default 60)

${CLUSTER_OPTIONS_USAGE}`;

const POLL_INTERVAL_MS = 250;
/** Exit status when Ctrl-C stops the wait (the new size stays recorded). */
const EXIT_INTERRUPTED = 130;

export async function volumeResize(argv: string[]): Promise<number> {
  const parsed = parseCommand(
    argv,
    {
      ...CLUSTER_OPTIONS,
      size: { type: "string" },
      "no-wait": { type: "boolean" },
      "wait-timeout": { type: "string" },
    },
    VOLUME_RESIZE_USAGE,
  );
  if (parsed === undefined) return 0; // --help was printed
  const { values, positionals } = parsed;
  const name = volumeNameArgument(positionals, VOLUME_RESIZE_USAGE);
  const sizeBytes = parseVolumeSize(values.size as string | undefined);
  const timeoutText = typeof values["wait-timeout"] === "string" ? values["wait-timeout"] : "60";
  if (!/^\d{1,5}$/.test(timeoutText) || Number(timeoutText) === 0)
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `--wait-timeout must be a whole number of seconds above 0, not "${timeoutText}"`,
    );
  const client = connectCluster(values);
  const request = await resizeVolume(client, name, sizeBytes, { actor: cliActor() });
  const grows = `from ${formatBytes(request.fromBytes)} to ${formatBytes(sizeBytes)}`;
  process.stdout.write(`volume ${name} grows ${grows}\n`);
  if (values["no-wait"] === true) return 0;
  const deadline = Date.now() + Number(timeoutText) * 1000;
  const stop = abortOnStopSignal();
  try {
    for (;;) {
      // The primary's grow, or any engine started since at the new size (a standby promoted meanwhile).
      const served = (await readEvents(client)).find(
        ({ event, createRevision }) =>
          createRevision > request.revision &&
          event.volume === name &&
          (event.kind === "volume-grown" ||
            (event.kind === "volume-serving" && event.message.startsWith(`serving ${formatBytes(sizeBytes)} `))),
      );
      if (served !== undefined) {
        process.stdout.write(
          `volume ${name} is served at ${formatBytes(sizeBytes)} (was ${formatBytes(request.fromBytes)}) by ${served.event.host}\n`,
        );
        return 0;
      }
      const leftMs = deadline - Date.now();
      if (leftMs <= 0)
        throw new HavenError(
          "HAVEN_ERR_UNAVAILABLE",
          `volume ${name}'s new size is recorded, but its primary has not served it after ${timeoutText} s ` +
            `(is its agent running?); it grows when the primary's engine next starts. ` +
            `Follow it with 'haven events --volume ${name} --follow'`,
        );
      if (!(await pause(Math.min(POLL_INTERVAL_MS, leftMs), stop.signal))) {
        process.stderr.write(`stopped waiting; volume ${name} still grows ${grows}\n`);
        return EXIT_INTERRUPTED;
      }
    }
  } finally {
    stop.dispose();
  }
}
