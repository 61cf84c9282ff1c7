// The kernel's table of this process's mounts (/proc/self/mountinfo, proc(5)), parsed into typed
// entries, and the two questions the disk layer asks of it: which mount holds a path (the longest
// mount point that is a prefix of it, on path-component boundaries; of mounts stacked on one point,
// the last listed, the one on top) and where a device is mounted. One line reads
//   36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
// mount id, parent id, major:minor, root within the filesystem, mount point, per-mount options,
// optional fields up to "-", filesystem type, source, superblock options. Paths escape space, tab,
// newline and backslash as octal (\040); they are unescaped here.

import { readFile } from "node:fs/promises";
import { HavenError } from "../core/errors.js";

export interface MountEntry {
  readonly mountId: number;
  readonly parentId: number;
  /** The filesystem's device number (st_dev of its files); major 0 for filesystems without a block device. */
  readonly major: number;
  readonly minor: number;
  /** The directory of the filesystem this mount shows ("/" unless a bind mount of a subdirectory). */
  readonly root: string;
  readonly mountPoint: string;
  readonly mountOptions: readonly string[];
  readonly fsType: string;
  /** What was mounted, as mount(8) was told: "/dev/sdb1", "tmpfs", "server:/export". */
  readonly source: string;
  readonly superOptions: readonly string[];
}

const MOUNTINFO_PATH = "/proc/self/mountinfo";

function unescape(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

/** Parses the text of a mountinfo file; a line that does not have the shape of proc(5) is refused. */
export function parseMountInfo(text: string): MountEntry[] {
  const entries: MountEntry[] = [];
  text.split("\n").forEach((line, index) => {
    if (line.trim() === "") return;
    const fields = line.split(" ");
    const separator = fields.indexOf("-", 6);
    const numbers = /^(\d+):(\d+)$/.exec(fields[2] ?? "");
    if (separator < 0 || fields.length < separator + 4 || numbers === null || !/^\d+$/.test(fields[0]!)) {
      throw new HavenError("HAVEN_ERR_IO", `${MOUNTINFO_PATH} line ${index + 1} is not a mount: "${line}"`);
    }
    entries.push({
      mountId: Number(fields[0]),
      parentId: Number(fields[1]),
      major: Number(numbers[1]),
      minor: Number(numbers[2]),
      root: unescape(fields[3]!),
      mountPoint: unescape(fields[4]!),
      mountOptions: fields[5]!.split(","),
      fsType: fields[separator + 1]!,
      source: unescape(fields[separator + 2]!),
      superOptions: fields[separator + 3]!.split(","),
    });
  });
  return entries;
}

export async function readMountInfo(): Promise<MountEntry[]> {
  return parseMountInfo(await readFile(MOUNTINFO_PATH, "utf8"));
}

/** Whether `path` is `mountPoint` or lies under it (both absolute and normalised). */
function isUnder(path: string, mountPoint: string): boolean {
  return mountPoint === "/" || path === mountPoint || path.startsWith(`${mountPoint}/`);
}

/** The mount that holds `path` (absolute, symbolic links resolved), or undefined if none does. */
export function mountHolding(entries: readonly MountEntry[], path: string): MountEntry | undefined {
  let best: MountEntry | undefined;
  for (const entry of entries) {
    if (!isUnder(path, entry.mountPoint)) continue;
    // ">=": of mounts on the same point, the later one is on top and hides the others.
    if (best === undefined || entry.mountPoint.length >= best.mountPoint.length) best = entry;
  }
  return best;
}

/** The mount whose mount point is exactly `mountPoint` (the top one if several are stacked there). */
export function mountAt(entries: readonly MountEntry[], mountPoint: string): MountEntry | undefined {
  return entries.filter((entry) => entry.mountPoint === mountPoint).at(-1);
}

/**
 * Where the filesystem on device major:minor is mounted: its mounts of the filesystem's root first
 * (a bind mount of a subdirectory shows only part of it), each group in the table's order.
 */
export function mountsOfDevice(entries: readonly MountEntry[], major: number, minor: number): MountEntry[] {
  const ofDevice = entries.filter((entry) => entry.major === major && entry.minor === minor);
  return [...ofDevice.filter((entry) => entry.root === "/"), ...ofDevice.filter((entry) => entry.root !== "/")];
}

/** Whether a mount refuses writes: mounted read-only, or its filesystem is (ext4's errors=remount-ro). */
export function isReadOnly(entry: MountEntry): boolean {
  return entry.mountOptions.includes("ro") || entry.superOptions.includes("ro");
}
