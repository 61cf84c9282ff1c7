// What is on a path an operator wants to add as a Haven disk (`haven disk add PATH`), so the command
// can refuse to erase data or to take another host's disk, and say why. One answer per path:
//   not-a-disk   missing, a regular file, a character device, a socket; a block device of size 0
//   haven-label  a directory, or the filesystem on a block device, with a Haven label at its root
//   filesystem   a block device with a filesystem, RAID, LVM or partition table signature (blkid -p)
//   holds-data   a directory with entries other than lost+found; a block device held by md or
//                device-mapper, or whose first MiB is not all zeros though blkid knows no signature
//   empty        an empty directory (lost+found aside); a block device without signature, zeros in its first MiB
// A filesystem's label is read where it is mounted; an unmounted ext2/3/4 or xfs filesystem is
// mounted read-only without journal recovery (ro,norecovery: nothing is written to the device) in a
// private temporary directory to read it, so a labelled disk moved between hosts is recognised before
// anyone formats it. A label that cannot be read does not change the answer's kind; labelError says why.

import { lstat, mkdtemp, open, readdir, rmdir, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { HavenError, errorMessage, fromSystemError } from "../core/errors.js";
import { formatBytes } from "../util/units.js";
import { blockSizeBytes, holdersOf, nameOfDeviceNode, partitionsOf, blockDeviceNumbers } from "./block-sysfs.js";
import { runCommand } from "./disk-command.js";
import { mountDisk, unmountDisk } from "./disk-format.js";
import { readDiskLabel, type DiskLabel } from "./disk-label.js";
import { mountsOfDevice, readMountInfo } from "./mountinfo.js";

export interface AddInspection {
  readonly kind: "empty" | "holds-data" | "filesystem" | "haven-label" | "not-a-disk";
  /** A sentence for the operator, starting with the path: "/dev/sdb has an existing filesystem (ext4, labelled data)". */
  readonly detail: string;
  readonly label?: DiskLabel;
  /** blkid's TYPE ("ext4", "xfs", "LVM2_member") or, for a partitioned disk, PTTYPE ("gpt", "dos"). */
  readonly fsType?: string;
  /** Why a label that is there could not be used (corrupt, unreadable). */
  readonly labelError?: string;
}

/** The start of a device that must read as zeros for it to count as empty: partition tables, boot sectors, superblocks. */
export const ZERO_CHECK_BYTES = 1024 * 1024;
const BLKID_TIMEOUT_MS = 30_000;
/** Filesystems this module mounts read-only with norecovery to look for a label. */
const MOUNTABLE_FOR_LABEL = ["ext2", "ext3", "ext4", "xfs"];
const SHOWN_ENTRIES = 5;

export async function inspectForAdd(path: string): Promise<AddInspection> {
  let info;
  try {
    info = await stat(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") {
      const dangling = await lstat(path).then(
        () => true,
        () => false,
      );
      return notADisk(`${path} does not exist${dangling ? " (a symbolic link to nothing)" : ""}`);
    }
    throw fromSystemError(error, `inspecting ${path}`);
  }
  if (info.isDirectory()) return inspectDirectory(path);
  if (info.isBlockDevice()) return inspectBlockDevice(path);
  if (info.isFile()) {
    return notADisk(
      `${path} is a regular file, not a disk: give a block device (/dev/sdb) or the directory a disk is mounted at ` +
        "(an image file becomes a block device with `losetup --find --show FILE`)",
    );
  }
  if (info.isCharacterDevice()) return notADisk(`${path} is a character device, not a block device`);
  return notADisk(`${path} is neither a block device nor a directory`);
}

function notADisk(detail: string): AddInspection {
  return { kind: "not-a-disk", detail };
}

/** The label at `root`, or the reason it could not be read. */
async function labelAt(root: string): Promise<{ label?: DiskLabel; labelError?: string }> {
  try {
    const label = await readDiskLabel(root);
    return label === undefined ? {} : { label };
  } catch (error) {
    return { labelError: errorMessage(error) };
  }
}

function describeLabel(label: DiskLabel): string {
  return `the Haven label of disk ${label.disk} of host ${label.host} in cluster ${label.cluster}`;
}

async function inspectDirectory(directory: string): Promise<AddInspection> {
  const { label, labelError } = await labelAt(directory);
  if (label !== undefined) return { kind: "haven-label", detail: `${directory} has ${describeLabel(label)}`, label };
  const names = await readdir(directory).catch((error: unknown) => {
    throw fromSystemError(error, `listing ${directory}`);
  });
  const entries = names.filter((name) => name !== "lost+found").sort();
  if (entries.length === 0) return { kind: "empty", detail: `${directory} is an empty directory` };
  const shown = entries.slice(0, SHOWN_ENTRIES).join(", ") + (entries.length > SHOWN_ENTRIES ? ", ..." : "");
  return {
    kind: "holds-data",
    detail:
      labelError === undefined
        ? `${directory} is not empty: it holds ${entries.length} entries (${shown})`
        : `${directory} has a Haven label that cannot be used: ${labelError}`,
    ...(labelError !== undefined && { labelError }),
  };
}

async function inspectBlockDevice(device: string): Promise<AddInspection> {
  const name = await nameOfDeviceNode(device);
  const sizeBytes = await blockSizeBytes(name);
  if (sizeBytes === 0) {
    return notADisk(`${device} has size 0: no medium, or a loop device with no file attached`);
  }
  const holders = await holdersOf(name);
  if (holders.length > 0) {
    return { kind: "holds-data", detail: `${device} is in use by ${holders.join(", ")} (RAID or device-mapper)` };
  }

  const signature = await probeSignature(device);
  if (signature.ambivalent) {
    return { kind: "holds-data", detail: `${device} carries several signatures blkid cannot tell apart` };
  }
  if (signature.type !== undefined) return inspectFilesystem(device, signature.type, signature.fsLabel);
  if (signature.partitionTable !== undefined) {
    const partitions = await partitionsOf(name);
    return {
      kind: "filesystem",
      fsType: signature.partitionTable,
      detail:
        `${device} has a ${signature.partitionTable} partition table` +
        (partitions.length > 0 ? ` (partitions ${partitions.join(", ")})` : ""),
    };
  }
  const checkedBytes = Math.min(ZERO_CHECK_BYTES, sizeBytes);
  if (!(await readsAsZeros(device, checkedBytes))) {
    return {
      kind: "holds-data",
      detail: `${device} has data in its first ${formatBytes(checkedBytes)}, though no signature blkid knows`,
    };
  }
  return { kind: "empty", detail: `${device} has no signature and its first ${formatBytes(checkedBytes)} are zeros` };
}

interface Signature {
  readonly type?: string;
  readonly fsLabel?: string;
  readonly partitionTable?: string;
  readonly ambivalent: boolean;
}

/** blkid's low-level probe of the device itself (-p: not its cache); exit 2 is "nothing found", 8 "ambivalent". */
async function probeSignature(device: string): Promise<Signature> {
  const result = await runCommand("blkid", ["-p", "-o", "export", device], {
    timeoutMs: BLKID_TIMEOUT_MS,
    answerCodes: [2, 8],
  });
  if (result.exitCode === 2) return { ambivalent: false };
  if (result.exitCode === 8) return { ambivalent: true };
  const values = parseBlkidExport(result.stdout);
  return {
    ambivalent: false,
    ...(values.TYPE !== undefined && { type: values.TYPE }),
    ...(values.LABEL !== undefined && { fsLabel: values.LABEL }),
    ...(values.PTTYPE !== undefined && { partitionTable: values.PTTYPE }),
  };
}

/** `blkid -o export` output: KEY=value lines, special characters in values escaped with a backslash. */
export function parseBlkidExport(text: string): Record<string, string> {
  const values: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const equals = line.indexOf("=");
    if (equals <= 0) continue;
    values[line.slice(0, equals)] = line.slice(equals + 1).replace(/\\(.)/g, "$1");
  }
  return values;
}

async function inspectFilesystem(device: string, fsType: string, fsLabel: string | undefined): Promise<AddInspection> {
  const numbers = (await blockDeviceNumbers(device))!;
  const mounts = mountsOfDevice(await readMountInfo(), numbers.major, numbers.minor);
  const described =
    `${device} has an existing filesystem (${fsType}` + (fsLabel === undefined ? ")" : `, labelled "${fsLabel}")`);

  let found: { label?: DiskLabel; labelError?: string; where: string } | undefined;
  let unchecked: string | undefined;
  const rootMount = mounts.find((entry) => entry.root === "/");
  if (rootMount !== undefined) {
    found = { ...(await labelAt(rootMount.mountPoint)), where: `mounted at ${rootMount.mountPoint}` };
  } else if (mounts.length > 0) {
    found = { where: `mounted at ${mounts.map((entry) => entry.mountPoint).join(", ")}` };
    unchecked = "only a subdirectory of it is mounted";
  } else if (MOUNTABLE_FOR_LABEL.includes(fsType)) {
    try {
      found = { ...(await labelOfUnmounted(device)), where: "not mounted" };
    } catch (error) {
      found = { where: "not mounted" };
      unchecked = errorMessage(error);
    }
  } else {
    found = { where: "not mounted" };
    unchecked = `Haven does not look inside ${fsType}`;
  }

  if (found.label !== undefined) {
    return {
      kind: "haven-label",
      fsType,
      label: found.label,
      detail: `${described}, ${found.where}, with ${describeLabel(found.label)}`,
    };
  }
  const note =
    found.labelError !== undefined
      ? `; its Haven label cannot be used: ${found.labelError}`
      : unchecked !== undefined
        ? `; whether it has a Haven label is unknown (${unchecked})`
        : "";
  return {
    kind: "filesystem",
    fsType,
    detail: `${described}, ${found.where}${note}`,
    ...(found.labelError !== undefined && { labelError: found.labelError }),
  };
}

/**
 * The label on the unmounted filesystem on `device`, read through a read-only mount without journal
 * recovery (ext4 and xfs write nothing then) in a private directory, unmounted before returning.
 */
async function labelOfUnmounted(device: string): Promise<{ label?: DiskLabel; labelError?: string }> {
  const mountPoint = await mkdtemp(join(tmpdir(), "haven-inspect-"));
  try {
    await mountDisk(device, mountPoint, { readOnly: true, mountOptions: ["norecovery"] });
    try {
      return await labelAt(mountPoint);
    } finally {
      await unmountDisk(mountPoint).catch(() => unmountDisk(mountPoint, { lazy: true }));
    }
  } finally {
    // rmdir, never a recursive removal: if the unmount failed, the disk's files stay untouched.
    await rmdir(mountPoint).catch(() => undefined);
  }
}

/** Whether the first `length` bytes of `device` are all zeros. */
async function readsAsZeros(device: string, length: number): Promise<boolean> {
  const handle = await open(device, "r").catch((error: unknown) => {
    throw fromSystemError(error, `opening ${device}`);
  });
  try {
    const buffer = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await handle.read(buffer, done, length - done, done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    if (done < length) {
      throw new HavenError("HAVEN_ERR_IO", `${device} ended after ${done} bytes, before its size of ${length}`);
    }
    return buffer.every((byte) => byte === 0);
  } finally {
    await handle.close();
  }
}
