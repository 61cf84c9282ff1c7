// `haven volume import NAME FILE`: a new volume of the image's virtual size, filled with the image over
// NBD (image-volume.ts). The image is checked before anything is made: a file that is not a disk image,
// of another format than --format says, or larger than any host can place is refused with nothing
// created; a copy that fails half way deletes the new volume again.

import { HavenError } from "../../core/errors.js";
import { readClusterRecords, type ClusterRecords } from "../../cluster/cluster-read.js";
import { volumeView } from "../../cluster/cluster-view.js";
import { MAX_COPIES } from "../../cluster/volume-admin.js";
import { parseCommand } from "../args.js";
import { renderVolume } from "../cluster-render.js";
import { CLUSTER_OPTIONS, CLUSTER_OPTIONS_USAGE, connectCluster, resolveCluster } from "../context.js";
import { IMAGE_FORMATS, inspectImage, parseImageFormat, resolveImage } from "../image-copy.js";
import { createVolumeFromImage, volumeSizeFor } from "../image-volume.js";
import { terminalRenderOptions } from "../terminal.js";
import { volumeNameArgument } from "../volume-argument.js";

export const VOLUME_IMPORT_USAGE = `usage: haven volume import NAME FILE [--format FORMAT] [--replicas N] [--host HOST] [cluster options]

Creates volume NAME of FILE's virtual size and copies the image onto it over NBD (qemu-img convert,
writing only the image's data: a new volume reads as zeros), with progress. The image's format is read
from the file; a file that is not a disk image is refused, and so is a copy that fails: the new
volume is deleted again.

options:
  --format FORMAT   what FILE must be: ${IMAGE_FORMATS.join(", ")} (refused when it is another)
  --replicas N      how many hosts get a copy, 1 to ${MAX_COPIES} (default 2)
  --host HOST       the primary's host (default: placement's choice)

${CLUSTER_OPTIONS_USAGE}`;

const DEFAULT_COPIES = 2;

function usage(message: string): HavenError {
  return new HavenError("HAVEN_ERR_USAGE", `${message}\n\n${VOLUME_IMPORT_USAGE}`);
}

function parseCopies(text: string | undefined): number {
  if (text === undefined) return DEFAULT_COPIES;
  const copies = Number(text);
  if (!/^\d+$/.test(text) || copies < 1 || copies > MAX_COPIES)
    throw usage(`--replicas must be a whole number from 1 to ${MAX_COPIES}, got "${text}"`);
  return copies;
}

/** --host HOST: the primary goes there, when it is live. */
function primaryOn(records: ClusterRecords, host: string): { hosts: ReadonlySet<string>; why: string } {
  if (!records.liveHosts.has(host))
    throw new HavenError(
      records.knownHosts.has(host) ? "HAVEN_ERR_UNAVAILABLE" : "HAVEN_ERR_NOT_FOUND",
      records.knownHosts.has(host)
        ? `host ${host} is not live: its agent holds no lease (see 'haven status')`
        : `no host named "${host}" (see 'haven status')`,
    );
  return { hosts: new Set([host]), why: "--host" };
}

export async function volumeImport(argv: string[]): Promise<number> {
  const parsed = parseCommand(
    argv,
    { ...CLUSTER_OPTIONS, format: { type: "string" }, replicas: { type: "string" }, host: { type: "string" } },
    VOLUME_IMPORT_USAGE,
  );
  if (parsed === undefined) return 0; // --help was printed
  const { values, positionals } = parsed;
  if (positionals.length !== 2)
    throw usage(`give the volume's NAME and the image FILE, got ${positionals.length} arguments`);
  const name = volumeNameArgument([positionals[0]!], VOLUME_IMPORT_USAGE);
  const copies = parseCopies(values.replicas as string | undefined);
  const format = parseImageFormat(values.format as string | undefined);
  const { file } = resolveImage(positionals[1]!);
  const image = await inspectImage(file, format);
  const client = connectCluster(values);
  const records = await readClusterRecords(client);
  if (records.volumes.has(name))
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `volume "${name}" exists already; nothing was imported: choose another name`,
    );
  const host = values.host as string | undefined;
  await createVolumeFromImage(
    client,
    {
      name,
      sizeBytes: volumeSizeFor(image.virtualSizeBytes),
      copies,
      ...(host !== undefined && { primaryAmong: primaryOn(records, host) }),
    },
    image,
    resolveCluster(values).tlsDir,
    async () => undefined,
  );
  const now = await readClusterRecords(client);
  const spec = now.volumes.get(name);
  if (spec !== undefined) process.stdout.write(renderVolume(volumeView(now, spec), terminalRenderOptions()));
  return 0;
}
