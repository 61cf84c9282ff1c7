// `haven volume export NAME FILE`: the volume's data written into an image file, read over NBD from its
// primary (volume-to-file.ts), with progress. An existing FILE is kept unless --force; a volume that a
// running VM writes is refused unless --force (Haven takes no snapshot: see volume-to-file.ts).

import { HavenError } from "../../core/errors.js";
import { formatBytes } from "../../util/units.js";
import { parseCommand } from "../args.js";
import { CLUSTER_OPTIONS, CLUSTER_OPTIONS_USAGE, connectCluster, resolveCluster } from "../context.js";
import { IMAGE_FORMATS, formatOfFileName, parseImageFormat } from "../image-copy.js";
import { volumeNameArgument } from "../volume-argument.js";
import { exportVolume, refuseExisting } from "../volume-to-file.js";

export const VOLUME_EXPORT_USAGE = `usage: haven volume export NAME FILE [--format FORMAT] [--force] [cluster options]

Writes volume NAME into the image file FILE, read over NBD from the volume's primary, with progress.
The file appears only once the copy is whole (it is written as FILE.partial first).

A volume that is the disk of a running VM is refused: without a snapshot, a copy read while the guest
writes holds blocks from different moments, which is not even crash-consistent. Stop the VM first
('haven vm stop NAME'), or give --force to take such a copy knowingly.

options:
  --format FORMAT   ${IMAGE_FORMATS.join(", ")} (default: FILE's extension when it names one, else raw)
  --force           replace an existing FILE, and copy the disk of a running VM

${CLUSTER_OPTIONS_USAGE}`;

export async function volumeExport(argv: string[]): Promise<number> {
  const parsed = parseCommand(
    argv,
    { ...CLUSTER_OPTIONS, format: { type: "string" }, force: { type: "boolean" } },
    VOLUME_EXPORT_USAGE,
  );
  if (parsed === undefined) return 0; // --help was printed
  const { values, positionals } = parsed;
  if (positionals.length !== 2)
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `give the volume's NAME and the image FILE, got ${positionals.length} arguments\n\n${VOLUME_EXPORT_USAGE}`,
    );
  const name = volumeNameArgument([positionals[0]!], VOLUME_EXPORT_USAGE);
  const file = positionals[1]!;
  const format = parseImageFormat(values.format as string | undefined) ?? formatOfFileName(file) ?? "raw";
  const force = values.force === true;
  refuseExisting(file, force);
  const tlsDir = resolveCluster(values).tlsDir;
  const { sizeBytes } = await exportVolume(connectCluster(values), name, file, format, {
    force,
    ...(tlsDir !== undefined && { tlsDir }),
  });
  process.stdout.write(`volume ${name} (${formatBytes(sizeBytes)}) written into ${file} (${format})\n`);
  return 0;
}
