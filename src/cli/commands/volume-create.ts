// `haven volume create NAME --size SIZE`: places the volume's copies on distinct live hosts
// (src/cluster/placement.ts), records it in etcd in one transaction (src/cluster/volume-admin.ts), and
// by default waits until the primary's agent serves it over NBD, so that the URI it prints works.

import { cliActor } from "../actor.js";
import { HavenError } from "../../core/errors.js";
import { readClusterRecords } from "../../cluster/cluster-read.js";
import { volumeView } from "../../cluster/cluster-view.js";
import { createVolume } from "../../cluster/volume-admin.js";
import type { CopyPlace } from "../../cluster/schema.js";
import { formatBytes, parseSize } from "../../util/units.js";
import { parseCommand } from "../args.js";
import { renderVolume } from "../cluster-render.js";
import { CLUSTER_OPTIONS, CLUSTER_OPTIONS_USAGE, connectCluster } from "../context.js";
import { abortOnStopSignal } from "../poll.js";
import { terminalRenderOptions } from "../terminal.js";
import { volumeNameArgument } from "../volume-argument.js";
import { waitUntilServed } from "../volume-served.js";

export const VOLUME_CREATE_USAGE = `usage: haven volume create NAME --size SIZE [--replicas N] [--local-mirror] [--copies HOST:DISK,...] [--no-wait] [--json] [cluster options]

Creates a replicated volume: each copy on a different live host, on that host's disk with the most
free space, preferring the hosts with the fewest copies. The first host is the primary: it serves
the volume over NBD at nbd://ADDRESS:PORT/NAME. Waits until it does, unless --no-wait.

options:
  --size SIZE             the volume's size, a multiple of 4 KiB (e.g. 10G, 512M)
  --replicas N            how many hosts get a copy, 1 to 4 (default 2)
  --local-mirror          the primary also keeps a second copy on another of its disks (local RAID1)
  --copies HOST:DISK,...  name every copy's place instead (the first is the primary; two copies may
                          share a host, never a disk), e.g. h1:disk0,h1:disk1,h2:disk0
  --no-wait               return once the volume is recorded, without waiting for it to be served
  --wait-timeout SECONDS  how long to wait for the primary to serve it (default 30)
  --json                  print the volume as JSON

${CLUSTER_OPTIONS_USAGE}`;

/** Copies are written and read in 4 KiB blocks. */
const VOLUME_SIZE_ALIGNMENT_BYTES = 4096;
const DEFAULT_COPIES = 2;
const MAX_COPIES = 4;
const DEFAULT_WAIT_SECONDS = 30;
const MAX_WAIT_SECONDS = 3600;
/** Exit status when Ctrl-C stops the wait (the volume stays created). */
const EXIT_INTERRUPTED = 130;

function usageError(message: string): HavenError {
  return new HavenError("HAVEN_ERR_USAGE", `${message}\n\n${VOLUME_CREATE_USAGE}`);
}

export function parseVolumeSize(text: string | undefined): number {
  if (text === undefined) throw usageError("--size is required");
  const bytes = parseSize(text, "--size");
  if (bytes % VOLUME_SIZE_ALIGNMENT_BYTES !== 0) {
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `--size "${text}" is ${bytes} bytes, not a multiple of ${VOLUME_SIZE_ALIGNMENT_BYTES} ` +
        `(${formatBytes(VOLUME_SIZE_ALIGNMENT_BYTES)})`,
    );
  }
  return bytes;
}

function parseCopies(text: string | undefined): number {
  if (text === undefined) return DEFAULT_COPIES;
  const copies = Number(text);
  if (!/^\d+$/.test(text) || copies < 1 || copies > MAX_COPIES) {
    throw usageError(`--replicas must be a whole number from 1 to ${MAX_COPIES}, got "${text}"`);
  }
  return copies;
}

/** --copies HOST:DISK,...: every copy's place, in order. */
function parsePlaces(text: string | undefined): CopyPlace[] | undefined {
  if (text === undefined) return undefined;
  const places = text.split(",").map((item) => {
    const match = /^([A-Za-z0-9][A-Za-z0-9._-]{0,62}):([A-Za-z0-9][A-Za-z0-9._-]{0,62})$/.exec(item.trim());
    if (match === null) throw usageError(`--copies: "${item}" is not HOST:DISK`);
    return { host: match[1]!, disk: match[2]! };
  });
  if (places.length > MAX_COPIES) throw usageError(`--copies names ${places.length} copies; at most ${MAX_COPIES}`);
  return places;
}

function parseWaitSeconds(text: string | undefined): number {
  if (text === undefined) return DEFAULT_WAIT_SECONDS;
  const seconds = Number(text);
  if (!/^\d+(\.\d+)?$/.test(text) || seconds <= 0 || seconds > MAX_WAIT_SECONDS) {
    throw usageError(`--wait-timeout must be a number of seconds above 0, at most ${MAX_WAIT_SECONDS}, got "${text}"`);
  }
  return seconds;
}

export async function volumeCreate(argv: string[]): Promise<number> {
  const parsed = parseCommand(
    argv,
    {
      ...CLUSTER_OPTIONS,
      size: { type: "string" },
      replicas: { type: "string" },
      "local-mirror": { type: "boolean" },
      copies: { type: "string" },
      "no-wait": { type: "boolean" },
      "wait-timeout": { type: "string" },
      json: { type: "boolean" },
    },
    VOLUME_CREATE_USAGE,
  );
  if (parsed === undefined) return 0; // --help was printed
  const { values, positionals } = parsed;
  const name = volumeNameArgument(positionals, VOLUME_CREATE_USAGE);
  const sizeBytes = parseVolumeSize(values.size as string | undefined);
  const copies = parseCopies(values.replicas as string | undefined);
  const waitSeconds = parseWaitSeconds(values["wait-timeout"] as string | undefined);
  const places = parsePlaces(values.copies as string | undefined);
  if (places !== undefined && (values.replicas !== undefined || values["local-mirror"] === true))
    throw usageError("--copies names every copy: it cannot be used with --replicas or --local-mirror");
  if (values["no-wait"] === true && values["wait-timeout"] !== undefined) {
    throw usageError("--wait-timeout and --no-wait cannot be used together");
  }
  const client = connectCluster(values);

  const created = await createVolume(
    client,
    {
      name,
      sizeBytes,
      copies,
      mirrorFirst: values["local-mirror"] === true,
      ...(places !== undefined && { places }),
    },
    { actor: cliActor() },
  );
  if (values["no-wait"] === true) {
    process.stderr.write(
      `volume ${name} created; ${created.primary.host}'s agent creates the copies and serves it ` +
        `(follow with 'haven events --volume ${name} --follow')\n`,
    );
  } else {
    process.stderr.write(
      `volume ${name} created; waiting up to ${waitSeconds} s for ${created.primary.host} to serve it\n`,
    );
    const stop = abortOnStopSignal();
    try {
      if (!(await waitUntilServed(client, created, waitSeconds * 1000, stop.signal))) {
        process.stderr.write(
          `stopped waiting; volume ${name} stays created: follow it with 'haven events --volume ${name} --follow'\n`,
        );
        return EXIT_INTERRUPTED;
      }
    } finally {
      stop.dispose();
    }
  }

  const records = await readClusterRecords(client);
  const volume = volumeView(records, records.volumes.get(name) ?? created.spec);
  process.stdout.write(
    values.json ? `${JSON.stringify(volume, null, 2)}\n` : renderVolume(volume, terminalRenderOptions()),
  );
  return 0;
}
