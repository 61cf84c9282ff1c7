// Making a filesystem on a disk and mounting it: what `haven disk add` does to a new device once the
// operator has confirmed it (disk-inspect.ts says what is on it first). mkfs runs only on a block
// device that is not mounted, with a filesystem label the tool accepts (ext4 up to 16 characters,
// xfs up to 12), checked here so the error names Haven's limit rather than mkfs's. Mounts are read
// back from /proc/self/mountinfo (mountinfo.ts), which is what the kernel has, not what fstab wishes.

import { mkdir, realpath } from "node:fs/promises";
import { resolve } from "node:path";
import { HavenError } from "../core/errors.js";
import { blockDeviceName, blockDeviceNumbers } from "./block-sysfs.js";
import { runCommand } from "./disk-command.js";
import { isReadOnly, mountAt, mountHolding, mountsOfDevice, readMountInfo } from "./mountinfo.js";

export type FilesystemType = "ext4" | "xfs";

/** The longest filesystem label each mkfs takes. */
export const MAX_FS_LABEL_CHARS: Record<FilesystemType, number> = { ext4: 16, xfs: 12 };
/** mkfs discards the whole device first (fast on SSDs, not on every SAN); a terabyte disk stays well inside. */
export const FORMAT_TIMEOUT_MS = 10 * 60_000;
/** Mounting replays a journal at most; unmounting writes back dirty pages, bounded by the dirty limits. */
export const MOUNT_TIMEOUT_MS = 2 * 60_000;

async function requireUnmountedBlockDevice(device: string, action: string): Promise<void> {
  let numbers;
  try {
    numbers = await blockDeviceNumbers(device);
  } catch {
    throw new HavenError("HAVEN_ERR_NOT_FOUND", `cannot ${action} ${device}: it does not exist`);
  }
  if (numbers === undefined) {
    throw new HavenError("HAVEN_ERR_INVALID_REQUEST", `cannot ${action} ${device}: it is not a block device`);
  }
  const mounted = mountsOfDevice(await readMountInfo(), numbers.major, numbers.minor);
  if (mounted.length > 0) {
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `cannot ${action} ${device}: it is mounted at ${mounted.map((entry) => entry.mountPoint).join(", ")}; unmount it first`,
    );
  }
}

/** Makes a new, empty filesystem on `device`, erasing what it held. */
export async function formatDevice(device: string, fs: FilesystemType, label: string): Promise<void> {
  const maxChars = MAX_FS_LABEL_CHARS[fs];
  if (maxChars === undefined) {
    throw new HavenError("HAVEN_ERR_INVALID_REQUEST", `filesystem "${String(fs)}" is not one of ext4, xfs`);
  }
  if (!/^[A-Za-z0-9_.-]+$/.test(label) || label.length > maxChars) {
    throw new HavenError(
      "HAVEN_ERR_INVALID_REQUEST",
      `filesystem label "${label}" must be 1 to ${maxChars} letters, digits, '_', '.' or '-' for ${fs}`,
    );
  }
  await requireUnmountedBlockDevice(device, `format`);
  const [command, args] =
    fs === "ext4"
      ? ["mkfs.ext4", ["-F", "-q", "-L", label, device]]
      : // -f: write over an existing filesystem signature, as -F does for ext4 (the caller has checked).
        ["mkfs.xfs", ["-f", "-q", "-L", label, device]];
  await runCommand(command, args, { timeoutMs: FORMAT_TIMEOUT_MS });
}

/** Mounts the filesystem on `device` at `mountPoint`, creating the directory if needed. */
export async function mountDisk(
  device: string,
  mountPoint: string,
  options: { readonly readOnly?: boolean; readonly mountOptions?: readonly string[] } = {},
): Promise<void> {
  await mkdir(mountPoint, { recursive: true });
  const mountOptions = [...(options.readOnly ? ["ro"] : []), ...(options.mountOptions ?? [])];
  await runCommand("mount", [...(mountOptions.length > 0 ? ["-o", mountOptions.join(",")] : []), device, mountPoint], {
    timeoutMs: MOUNT_TIMEOUT_MS,
  });
}

/**
 * Unmounts the filesystem at `mountPoint`. `lazy` detaches it now and lets the kernel finish when its
 * last user goes (umount -l): for a disk that is gone and whose I/O will never finish.
 */
export async function unmountDisk(mountPoint: string, options: { readonly lazy?: boolean } = {}): Promise<void> {
  await runCommand("umount", [...(options.lazy ? ["-l"] : []), mountPoint], { timeoutMs: MOUNT_TIMEOUT_MS });
}

/**
 * The device mounted at `mountPoint` (exactly there, not above it): /dev/NAME for a filesystem on a
 * block device, else the mount's source ("tmpfs"); undefined when nothing is mounted there.
 */
export async function mountedDevice(mountPoint: string): Promise<string | undefined> {
  let resolved: string;
  try {
    resolved = await realpath(mountPoint);
  } catch {
    return undefined;
  }
  const entry = mountAt(await readMountInfo(), resolved);
  if (entry === undefined) return undefined;
  const name = await blockDeviceName({ major: entry.major, minor: entry.minor });
  return name === undefined ? entry.source : `/dev/${name}`;
}

/** Whether the filesystem holding `path` refuses writes (mounted read-only, or remounted so after errors). */
export async function isReadOnlyMount(path: string): Promise<boolean> {
  let resolved: string;
  try {
    resolved = await realpath(path);
  } catch {
    throw new HavenError("HAVEN_ERR_NOT_FOUND", `${path} does not exist`);
  }
  const entry = mountHolding(await readMountInfo(), resolved);
  if (entry === undefined) throw new HavenError("HAVEN_ERR_NOT_FOUND", `no mounted filesystem holds ${path}`);
  return isReadOnly(entry);
}

/**
 * Lazily unmounts every filesystem mounted under `dir` (deepest first), as `cluster down` does for
 * the disks `disk add` mounted in a local cluster's directory. Returns the mount points it let go of.
 */
export async function unmountAllUnder(dir: string): Promise<string[]> {
  const root = resolve(dir);
  const points = (await readMountInfo())
    .map((entry) => entry.mountPoint)
    .filter((point) => point.startsWith(`${root}/`))
    .sort((a, b) => b.length - a.length);
  const done: string[] = [];
  for (const point of [...new Set(points)]) {
    await unmountDisk(point, { lazy: true }).then(
      () => done.push(point),
      () => undefined,
    );
  }
  return done;
}
