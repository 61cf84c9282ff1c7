// What the kernel says about a block device in sysfs (/sys/class/block/NAME, /sys/dev/block/MAJ:MIN):
// its name from a device node's numbers, its size, whether it is a partition and of which disk, a
// loop device's backing file, what holds it (md, device-mapper). Every function takes the sysfs root,
// so tests can hand it a fake tree; an attribute the kernel does not provide reads as undefined.

import { readdir, readFile, readlink, realpath, stat } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { HavenError, fromSystemError } from "../core/errors.js";

export const SYSFS_ROOT = "/sys";
const SECTOR_BYTES = 512;

export interface DeviceNumbers {
  readonly major: number;
  readonly minor: number;
}

/** Splits a dev_t as glibc's major()/minor() do. */
export function splitDeviceNumber(device: bigint): DeviceNumbers {
  return {
    major: Number(((device >> 8n) & 0xfffn) | ((device >> 32n) & 0xfffff000n)),
    minor: Number((device & 0xffn) | ((device >> 12n) & 0xffffff00n)),
  };
}

/** A sysfs attribute's text, trimmed; undefined when the kernel does not provide it. */
export async function readAttribute(path: string): Promise<string | undefined> {
  try {
    return (await readFile(path, "utf8")).trim();
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR" || code === "EINVAL" || code === "ENODEV") return undefined;
    throw fromSystemError(error, `reading ${path}`);
  }
}

/** The device numbers of the block device node at `path` (symbolic links followed), or undefined if it is not one. */
export async function blockDeviceNumbers(path: string): Promise<DeviceNumbers | undefined> {
  const info = await stat(path, { bigint: true });
  return info.isBlockDevice() ? splitDeviceNumber(info.rdev) : undefined;
}

/** The kernel's name of block device major:minor ("sdb", "loop3", "nvme0n1p2"), or undefined if there is none. */
export async function blockDeviceName(numbers: DeviceNumbers, sysRoot = SYSFS_ROOT): Promise<string | undefined> {
  try {
    return basename(await readlink(join(sysRoot, "dev", "block", `${numbers.major}:${numbers.minor}`)));
  } catch {
    return undefined;
  }
}

/** The kernel's name of the block device node at `path`; refuses a path that is not a block device. */
export async function nameOfDeviceNode(path: string, sysRoot = SYSFS_ROOT): Promise<string> {
  const numbers = await blockDeviceNumbers(path);
  if (numbers === undefined) throw new HavenError("HAVEN_ERR_INVALID_REQUEST", `${path} is not a block device`);
  const name = await blockDeviceName(numbers, sysRoot);
  if (name === undefined) {
    throw new HavenError(
      "HAVEN_ERR_NOT_FOUND",
      `${path} is block device ${numbers.major}:${numbers.minor}, which the kernel does not list in ${sysRoot}/dev/block`,
    );
  }
  return name;
}

/** The device's size in bytes (sysfs counts 512-byte sectors whatever the device's block size). */
export async function blockSizeBytes(name: string, sysRoot = SYSFS_ROOT): Promise<number> {
  const sectors = await readAttribute(join(sysRoot, "class", "block", name, "size"));
  if (sectors === undefined || !/^\d+$/.test(sectors)) {
    throw new HavenError("HAVEN_ERR_NOT_FOUND", `block device ${name} has no size in ${sysRoot}/class/block`);
  }
  return Number(sectors) * SECTOR_BYTES;
}

/** For a partition ("sdb2"), its disk's name and its number; undefined for a whole disk. */
export async function partitionOf(
  name: string,
  sysRoot = SYSFS_ROOT,
): Promise<{ readonly disk: string; readonly number: number } | undefined> {
  const entry = join(sysRoot, "class", "block", name);
  const number = await readAttribute(join(entry, "partition"));
  if (number === undefined) return undefined;
  // A partition's sysfs directory sits inside its disk's: .../block/sdb/sdb2.
  return { disk: basename(dirname(await realpath(entry))), number: Number(number) };
}

/** Whether `name` is a loop device (a whole one: loop3, not loop3p1). */
export function isLoopName(name: string): boolean {
  return /^loop\d+$/.test(name);
}

/** The file a loop device reads and writes, or undefined when it has none attached. */
export function loopBackingFile(name: string, sysRoot = SYSFS_ROOT): Promise<string | undefined> {
  return readAttribute(join(sysRoot, "class", "block", name, "loop", "backing_file"));
}

/** What holds the device open for itself (md arrays, device-mapper targets), by kernel name. */
export async function holdersOf(name: string, sysRoot = SYSFS_ROOT): Promise<string[]> {
  try {
    return (await readdir(join(sysRoot, "class", "block", name, "holders"))).sort();
  } catch {
    return [];
  }
}

/** The partitions of disk `name` ("sdb1", "sdb2"), by kernel name. */
export async function partitionsOf(name: string, sysRoot = SYSFS_ROOT): Promise<string[]> {
  let entries: string[];
  try {
    entries = await readdir(join(sysRoot, "class", "block", name));
  } catch {
    return [];
  }
  const found: string[] = [];
  for (const entry of entries) {
    if (entry.startsWith(name) && (await readAttribute(join(sysRoot, "class", "block", name, entry, "partition"))))
      found.push(entry);
  }
  return found.sort();
}
