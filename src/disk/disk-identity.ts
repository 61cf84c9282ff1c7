// Which physical disk a path is on. Device names move (sdb today is sdc after a reboot or a swap),
// so a disk label records the disk's identity, and dangerous disk commands check it again just before
// acting (DESIGN.md, Disks). The identity of a block device is the first of:
//   1. wwn    /sys/class/block/DISK/device/wwid, else /sys/class/block/DISK/wwid (SCSI, SATA, NVMe)
//   2. serial /sys/class/block/DISK/device/serial, else /sys/class/block/DISK/serial (NVMe, virtio)
//   3. serial udev's ID_SERIAL_SHORT, else ID_SERIAL (`udevadm info --query=property`), for disks
//             whose serial only udev reads (SATA through ata_id, USB)
//   4. path   a loop device's backing file
//   5. path   the device node itself (/dev/NAME)
// sysfs comes first because it is always there, while udev's database may be missing (containers) or
// not settled yet at boot: a disk must not change identity with the order in which daemons start.
// A partition is its disk's identity with "-partN" appended, as /dev/disk/by-id names it, so two
// partitions of one disk never pass for each other. A directory's identity is that of the block
// device its filesystem lives on; a directory on a filesystem without one (tmpfs, NFS) is kind
// "path" with the directory itself. Two identities are the same when kind and value are: the device
// node is where the disk was seen, not what it is.

import { realpath, stat, statfs } from "node:fs/promises";
import { join } from "node:path";
import { HavenError } from "../core/errors.js";
import {
  SYSFS_ROOT,
  blockDeviceName,
  blockDeviceNumbers,
  blockSizeBytes,
  isLoopName,
  loopBackingFile,
  nameOfDeviceNode,
  partitionOf,
  readAttribute,
  type DeviceNumbers,
} from "./block-sysfs.js";
import { runCommand } from "./disk-command.js";
import { mountHolding, mountsOfDevice, readMountInfo, type MountEntry } from "./mountinfo.js";

export interface DiskIdentity {
  readonly kind: "serial" | "wwn" | "path";
  readonly value: string;
  /** The device node it was seen at, e.g. /dev/loop3 or /dev/sdb; absent for a directory without one. */
  readonly device?: string;
}

export const IDENTITY_KINDS: readonly DiskIdentity["kind"][] = ["serial", "wwn", "path"];

export interface PathIdentity {
  readonly identity: DiskIdentity;
  /** A block device's size; for a directory, its filesystem's size (statfs). */
  readonly sizeBytes: number;
  /** Whether the path itself is a block device (else a directory). */
  readonly blockDevice: boolean;
  /** A directory's filesystem's mount point; a block device's, when its filesystem is mounted. */
  readonly mountedAt?: string;
}

/** How identities are read from the machine; tests pass a fake sysfs tree and udev database. */
export interface IdentitySources {
  readonly sysRoot: string;
  /** udev's properties of a device node (empty when udev knows nothing of it or is absent). */
  readonly udevProperties: (device: string) => Promise<Record<string, string>>;
}

const UDEVADM_TIMEOUT_MS = 5_000;

/** udev's properties of `device`, or none when udevadm is missing or has no database entry. */
export async function udevProperties(device: string): Promise<Record<string, string>> {
  try {
    const { stdout } = await runCommand("udevadm", ["info", "--query=property", `--name=${device}`], {
      timeoutMs: UDEVADM_TIMEOUT_MS,
    });
    const properties: Record<string, string> = {};
    for (const line of stdout.split("\n")) {
      const equals = line.indexOf("=");
      if (equals > 0) properties[line.slice(0, equals)] = line.slice(equals + 1);
    }
    return properties;
  } catch {
    return {};
  }
}

export const SYSTEM_SOURCES: IdentitySources = { sysRoot: SYSFS_ROOT, udevProperties };

/** The identity of the whole disk `disk` (a kernel name), without the device field; undefined when only its node names it. */
async function wholeDiskIdentity(disk: string, sources: IdentitySources): Promise<DiskIdentity | undefined> {
  const entry = join(sources.sysRoot, "class", "block", disk);
  const firstOf = async (paths: string[]): Promise<string | undefined> => {
    for (const path of paths) {
      const value = await readAttribute(path);
      if (value !== undefined && value !== "") return value;
    }
    return undefined;
  };
  const wwn = await firstOf([join(entry, "device", "wwid"), join(entry, "wwid")]);
  if (wwn !== undefined) return { kind: "wwn", value: wwn };
  const serial = await firstOf([join(entry, "device", "serial"), join(entry, "serial")]);
  if (serial !== undefined) return { kind: "serial", value: serial };
  const udev = await sources.udevProperties(`/dev/${disk}`);
  const udevSerial = [udev.ID_SERIAL_SHORT, udev.ID_SERIAL].find((value) => value !== undefined && value !== "");
  if (udevSerial !== undefined) return { kind: "serial", value: udevSerial };
  if (isLoopName(disk)) {
    const backing = await loopBackingFile(disk, sources.sysRoot);
    if (backing !== undefined && backing !== "") return { kind: "path", value: backing };
  }
  return undefined;
}

/** Block device `name`'s identity from what the disk itself says, or undefined when nothing but its node names it. */
async function lastingIdentity(name: string, sources: IdentitySources): Promise<DiskIdentity | undefined> {
  const partition = await partitionOf(name, sources.sysRoot);
  if (partition === undefined) return wholeDiskIdentity(name, sources);
  const disk = await wholeDiskIdentity(partition.disk, sources);
  return disk && { kind: disk.kind, value: `${disk.value}-part${partition.number}` };
}

/** The identity of block device `name` (a kernel name: "sdb", "sdb2", "loop3"), seen at /dev/NAME. */
export async function blockDeviceIdentity(
  name: string,
  sources: IdentitySources = SYSTEM_SOURCES,
): Promise<DiskIdentity> {
  const device = `/dev/${name}`;
  const identity = await lastingIdentity(name, sources);
  return identity === undefined ? { kind: "path", value: device, device } : { ...identity, device };
}

/**
 * What identifies `path`: a block device node (/dev/sdb, /dev/disk/by-id/..., /dev/loop3) or a
 * directory on a mounted filesystem. Refuses anything else.
 */
export async function identifyPath(path: string, sources: IdentitySources = SYSTEM_SOURCES): Promise<PathIdentity> {
  let resolved: string;
  try {
    resolved = await realpath(path);
  } catch {
    throw new HavenError("HAVEN_ERR_NOT_FOUND", `${path} does not exist`);
  }
  const info = await stat(resolved);
  const mounts = await readMountInfo();

  if (info.isBlockDevice()) {
    const numbers = (await blockDeviceNumbers(resolved)) as DeviceNumbers;
    const name = await blockDeviceName(numbers, sources.sysRoot);
    if (name === undefined) {
      throw new HavenError(
        "HAVEN_ERR_NOT_FOUND",
        `${path}: the kernel lists no block device ${numbers.major}:${numbers.minor}`,
      );
    }
    const mountedAt = mountsOfDevice(mounts, numbers.major, numbers.minor)[0]?.mountPoint;
    return {
      identity: await blockDeviceIdentity(name, sources),
      sizeBytes: await blockSizeBytes(name, sources.sysRoot),
      blockDevice: true,
      ...(mountedAt !== undefined && { mountedAt }),
    };
  }
  if (!info.isDirectory()) {
    throw new HavenError("HAVEN_ERR_INVALID_REQUEST", `${path} is neither a block device nor a directory`);
  }

  const mount = mountHolding(mounts, resolved);
  const fs = await statfs(resolved);
  const sizeBytes = fs.blocks * fs.bsize;
  const name = mount === undefined ? undefined : await mountDeviceName(mount, sources.sysRoot);
  // A device node is no identity for a directory (it moves between boots): the directory is.
  const lasting = name === undefined ? undefined : await lastingIdentity(name, sources);
  const device = name === undefined ? undefined : `/dev/${name}`;
  const identity: DiskIdentity = {
    ...(lasting ?? { kind: "path", value: resolved }),
    ...(device !== undefined && { device }),
  };
  return { identity, sizeBytes, blockDevice: false, ...(mount !== undefined && { mountedAt: mount.mountPoint }) };
}

/**
 * The block device under a mount: its device number's, or, for filesystems that report an anonymous
 * number (btrfs), the device node it was mounted from; undefined for tmpfs, NFS and the like.
 */
async function mountDeviceName(mount: MountEntry, sysRoot: string): Promise<string | undefined> {
  const name = await blockDeviceName({ major: mount.major, minor: mount.minor }, sysRoot);
  if (name !== undefined || !mount.source.startsWith("/dev/")) return name;
  return nameOfDeviceNode(mount.source, sysRoot).catch(() => undefined);
}

/** The identity for an operator: "serial S3Z1NB0K123456", "wwn naa.5002538e...", "path /var/tmp/disk1.img". */
export function formatIdentity(identity: DiskIdentity): string {
  return `${identity.kind} ${identity.value}`;
}

/** Whether two identities name the same disk: same kind and value (the device node may differ). */
export function sameIdentity(a: DiskIdentity, b: DiskIdentity): boolean {
  return a.kind === b.kind && a.value === b.value;
}
