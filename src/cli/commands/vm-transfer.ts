// `haven vm export NAME DIR` and `haven vm import NAME (--image FILE | --from DIR)`: moving a virtual
// server between clusters, or onto Haven from another platform. Export writes the VM's disk into
// DIR/disk.FORMAT (volume-to-file.ts) and then DIR/vm.json (vm-description.ts); import reads them back
// and makes the VM with `vm create`'s own code, so an imported VM is checked, placed, copied and cleaned
// up after a failure exactly as a created one: the description only becomes vm create's arguments.

import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { readClusterRecords } from "../../cluster/cluster-read.js";
import { HavenError, errorMessage } from "../../core/errors.js";
import { formatBytes } from "../../util/units.js";
import { parseCommand } from "../args.js";
import { CLUSTER_OPTIONS, CLUSTER_OPTIONS_USAGE, connectCluster, resolveCluster } from "../context.js";
import { IMAGE_FORMATS, inspectImage, parseImageFormat } from "../image-copy.js";
import {
  VM_DESCRIPTION_FILE,
  createArguments,
  describeVm,
  parseVmDescription,
  type VmDescription,
} from "../vm-description.js";
import { exportVolume, refuseExisting } from "../volume-to-file.js";

/** vm import and vm export in `haven vm`'s usage. */
export const VM_TRANSFER_USAGE = `  vm export NAME DIR [--format F] [--force]   its disk (DIR/disk.qcow2) and DIR/vm.json (CPUs, memory, NICs, MACs);
                                  a running VM is refused unless --force (no snapshot: stop it first)
  vm import NAME --image FILE [--format F] [vm create's options]   a VM on a copy of a disk image
                                  (--vcpus 1 and --memory 512M unless given; formats ${IMAGE_FORMATS.join(", ")})
  vm import NAME --from DIR [--replicas N] [--host HOST] [--stopped]   the VM vm export wrote into DIR`;

const VM_TRANSFER_HELP = `usage: haven vm import|export ...

${VM_TRANSFER_USAGE}

${CLUSTER_OPTIONS_USAGE}`;

export const VM_EXPORT_USAGE = `usage: haven vm export NAME DIR [--format F] [--force] [cluster options]

Writes the VM's disk (DIR/disk.qcow2, or --format F) and DIR/vm.json (CPUs, memory, NICs, MACs). A
running VM is refused unless --force (no snapshot: stop it first).

${CLUSTER_OPTIONS_USAGE}`;

export const VM_IMPORT_USAGE = `usage: haven vm import NAME --image FILE [--format F] [vm create's options] [cluster options]
       haven vm import NAME --from DIR [--replicas N] [--host HOST] [--stopped] [cluster options]

--image: a VM on a copy of a disk image (--vcpus 1 and --memory 512M unless given; formats
${IMAGE_FORMATS.join(", ")}). --from: the VM 'haven vm export' wrote into DIR.

${CLUSTER_OPTIONS_USAGE}`;

const DEFAULT_EXPORT_FORMAT = "qcow2";
const IMPORT_DEFAULTS: readonly (readonly [string, string])[] = [
  ["--vcpus", "1"],
  ["--memory", "512M"],
];
const MAX_DESCRIPTION_BYTES = 64 * 1024;

type Command = (argv: string[]) => Promise<number>;

function usage(message: string): HavenError {
  return new HavenError("HAVEN_ERR_USAGE", `${message}\n\n${VM_TRANSFER_HELP}`);
}

function given(argv: readonly string[], option: string): boolean {
  return argv.some((arg) => arg === option || arg.startsWith(`${option}=`));
}

/** The cluster options as they were given, for vm create. */
function clusterArguments(values: Record<string, string | boolean | undefined>): string[] {
  return Object.keys(CLUSTER_OPTIONS).flatMap((option) =>
    typeof values[option] === "string" ? [`--${option}`, values[option]] : [],
  );
}

/** vm.json in `dir`, read and checked (HAVEN_ERR_CONFIG naming what is wrong). */
function readDescription(dir: string): VmDescription {
  const file = join(dir, VM_DESCRIPTION_FILE);
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (error) {
    throw new HavenError(
      "HAVEN_ERR_NOT_FOUND",
      `cannot read ${file} (${errorMessage(error)}): --from names a directory that 'haven vm export' wrote`,
    );
  }
  if (text.length > MAX_DESCRIPTION_BYTES)
    throw new HavenError("HAVEN_ERR_CONFIG", `${file} is larger than a vm.json (${MAX_DESCRIPTION_BYTES} bytes)`);
  return parseVmDescription(text, file);
}

/** `vm import NAME --from DIR`: the exported VM, under NAME, with its disk. */
async function importFrom(argv: string[], create: Command): Promise<number> {
  const parsed = parseCommand(
    argv,
    {
      ...CLUSTER_OPTIONS,
      from: { type: "string" },
      replicas: { type: "string" },
      host: { type: "string" },
      stopped: { type: "boolean" },
      "no-wait": { type: "boolean" },
    },
    VM_TRANSFER_HELP,
  );
  if (parsed === undefined) return 0;
  const { values, positionals } = parsed;
  if (positionals.length !== 1) throw usage(`vm import takes one VM NAME, got ${positionals.length} arguments`);
  const dir = values.from as string;
  const description = readDescription(dir);
  // The disk must be the one exported with the description, not another file put in its place.
  const disk = await inspectImage(join(dir, description.disk.file), description.disk.format);
  if (disk.virtualSizeBytes !== description.disk.virtualSizeBytes)
    throw new HavenError(
      "HAVEN_ERR_CONFIG",
      `${disk.file} holds ${formatBytes(disk.virtualSizeBytes)}, but ${VM_DESCRIPTION_FILE} says its disk holds ` +
        `${formatBytes(description.disk.virtualSizeBytes)}: export the VM again`,
    );
  process.stderr.write(
    `importing VM ${description.name} (exported ${description.exportedAt}) as ${positionals[0]}: ` +
      `${description.vcpus} vCPUs, ${description.memoryMiB} MiB, ${description.nics.length} NIC(s)\n`,
  );
  return create([
    ...createArguments(description, positionals[0]!, dir),
    ...(typeof values.replicas === "string" ? ["--replicas", values.replicas] : []),
    ...(typeof values.host === "string" ? ["--host", values.host] : []),
    ...(values.stopped === true ? ["--stopped"] : []),
    ...(values["no-wait"] === true ? ["--no-wait"] : []),
    ...clusterArguments(values),
  ]);
}

/**
 * `vm import NAME --image FILE ...` is `vm create NAME --image FILE ...` with a disk of the image's size
 * and one vCPU and 512 MiB unless given; `--from DIR` reads what `vm export` wrote. `create` is vm create.
 */
export async function vmImport(argv: string[], create: Command): Promise<number> {
  if (given(argv, "--help") || given(argv, "-h")) {
    process.stdout.write(`${VM_TRANSFER_HELP}\n`);
    return 0;
  }
  const fromDir = given(argv, "--from");
  if (fromDir === given(argv, "--image")) throw usage("vm import needs one of --image FILE and --from DIR");
  if (fromDir) return importFrom(argv, create);
  if (given(argv, "--disk")) throw usage("vm import makes a new disk from the image: --disk does not go with it");
  return create([...argv, ...IMPORT_DEFAULTS.filter(([option]) => !given(argv, option)).flat()]);
}

/** `vm export NAME DIR`: DIR/disk.FORMAT, then DIR/vm.json (its presence says the export is whole). */
export async function vmExport(argv: string[]): Promise<number> {
  const parsed = parseCommand(
    argv,
    { ...CLUSTER_OPTIONS, format: { type: "string" }, force: { type: "boolean" } },
    VM_TRANSFER_HELP,
  );
  if (parsed === undefined) return 0;
  const { values, positionals } = parsed;
  if (positionals.length !== 2)
    throw usage(`vm export takes the VM's NAME and a DIR, got ${positionals.length} arguments`);
  const [name, dir] = positionals as [string, string];
  const format = parseImageFormat(values.format as string | undefined) ?? DEFAULT_EXPORT_FORMAT;
  const force = values.force === true;
  const client = connectCluster(values);
  const vm = (await readClusterRecords(client)).vms.get(name);
  if (vm === undefined) throw new HavenError("HAVEN_ERR_NOT_FOUND", `no VM named "${name}" (see 'haven vm list')`);
  const diskFile = `disk.${format}`;
  const descriptionFile = join(dir, VM_DESCRIPTION_FILE);
  refuseExisting(descriptionFile, force);
  refuseExisting(join(dir, diskFile), force);
  // A directory this export makes goes again when it fails: a refusal leaves nothing behind.
  const madeDir = !existsSync(dir);
  mkdirSync(dir, { recursive: true });
  try {
    // A description from an earlier export must not sit beside a disk this one is writing.
    rmSync(descriptionFile, { force: true });
    const tlsDir = resolveCluster(values).tlsDir;
    const { sizeBytes } = await exportVolume(client, vm.volume, join(dir, diskFile), format, {
      force,
      ...(tlsDir !== undefined && { tlsDir }),
    });
    const description = describeVm(vm, { file: diskFile, format, virtualSizeBytes: sizeBytes }, new Date());
    const temporary = `${descriptionFile}.partial`;
    writeFileSync(temporary, `${JSON.stringify(description, null, 2)}\n`);
    renameSync(temporary, descriptionFile);
    process.stdout.write(
      `VM ${name} exported into ${dir}: ${diskFile} (${formatBytes(sizeBytes)}) and ${VM_DESCRIPTION_FILE}; ` +
        `'haven vm import NAME --from ${dir}' makes it again\n`,
    );
  } catch (error) {
    if (madeDir) rmSync(dir, { recursive: true, force: true });
    throw error;
  }
  return 0;
}
