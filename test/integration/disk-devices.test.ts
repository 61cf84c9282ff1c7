// The disk layer against real block devices: sparse image files in a fresh temporary directory,
// attached as loop devices (losetup --find --show), formatted with the real mkfs.ext4 and mkfs.xfs,
// mounted, labelled, remounted read-only, compared with du and df. Promises checked:
//   - a loop device is identified by its backing file with the device's size; a directory on its
//     mounted filesystem by the same file, with the filesystem's size (as df says) and its mount
//     point; a directory on tmpfs by the directory itself;
//   - inspectForAdd tells an empty device, one with a filesystem (ext4, xfs), a partition table, data
//     without a signature, and a Haven disk (mounted, or not: then read through a ro,norecovery mount
//     that writes nothing to the device and is gone afterwards); a regular file, a character device
//     and a missing path are not disks; a directory is empty, holds data or has a label;
//   - diskUsage gives du's and df's numbers for dense, sparse and hard-linked files;
//   - isReadOnlyMount follows `mount -o remount,ro`; formatDevice refuses a mounted device;
//   - the locate LED of a loop device is unsupported, not an error; ledctl's answer is passed on.
// Every loop device and mount a test makes is removed when the test ends, failed or not (umount -l;
// losetup -d of the device the test got, and only while it still holds the test's file), and the
// temporary directory is deleted once nothing is mounted under it.

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { createReadStream, existsSync, readdirSync } from "node:fs";
import { chmod, link, mkdir, open, readFile, realpath, symlink, truncate, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { after, before, describe, type TestContext } from "node:test";
import { identifyPath, formatIdentity } from "../../src/disk/disk-identity.js";
import { inspectForAdd } from "../../src/disk/disk-inspect.js";
import { formatDevice, isReadOnlyMount, mountDisk, mountedDevice, unmountDisk } from "../../src/disk/disk-format.js";
import { readDiskLabel, writeDiskLabel, type DiskLabel } from "../../src/disk/disk-label.js";
import { diskUsage } from "../../src/disk/disk-usage.js";
import { setLocateLed } from "../../src/disk/locate-led.js";
import { mountsOfDevice, readMountInfo } from "../../src/disk/mountinfo.js";
import { blockDeviceNumbers } from "../../src/disk/block-sysfs.js";
import { boundedTest } from "../helpers/bounded-test.js";
import { failsWith } from "../helpers/errors.js";
import { haveTool, run, tempDir } from "../helpers/server-process.js";

/** mkfs, mount and a hash of a 512 MiB device each take a second or two; a minute is a hang. */
const test = boundedTest(60_000);

const MiB = 1024 * 1024;
/** mkfs.xfs refuses filesystems below 300 MiB; the images are sparse, so size costs nothing. */
const XFS_DISK_BYTES = 512 * MiB;
const DISK_BYTES = 64 * MiB;

const missing = ["losetup", "blkid", "mkfs.ext4", "mount", "umount", "du", "df", "sync"].filter(
  (tool) => !haveTool(tool),
);
const skip =
  (missing.length > 0 && `missing ${missing.join(", ")}`) || (process.getuid?.() !== 0 && "loop devices need root");

interface LoopDisk {
  /** The image file, as the kernel names it in backing_file. */
  readonly image: string;
  readonly device: string;
}

/** Deterministic bytes that are not zeros and no filesystem's signature (xorshift32). */
function patternBytes(length: number, seed: number): Buffer {
  const buffer = Buffer.alloc(length);
  let state = seed || 1;
  for (let index = 0; index < length; index++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    buffer[index] = state & 0xff;
  }
  return buffer;
}

async function sha256(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

async function must(command: string, args: string[], input?: string): Promise<string> {
  const result = await run(command, args, { timeoutMs: 30_000, ...(input !== undefined && { input }) });
  assert.equal(result.code, 0, `${command} ${args.join(" ")}: ${result.stderr}`);
  return result.stdout;
}

/** `df --block-size=1` of a mount: size, used, available. */
async function df(path: string): Promise<{ size: number; used: number; avail: number }> {
  const lines = (await must("df", ["--block-size=1", "--output=size,used,avail", path])).trim().split("\n");
  const [size, used, avail] = lines[1]!.trim().split(/\s+/).map(Number);
  return { size: size!, used: used!, avail: avail! };
}

async function du(path: string, apparent = false): Promise<number> {
  const output = await must("du", ["-s", "--block-size=1", ...(apparent ? ["--apparent-size"] : []), path]);
  return Number(output.split("\t")[0]);
}

async function mountPointsOf(device: string): Promise<string[]> {
  const numbers = (await blockDeviceNumbers(device))!;
  return mountsOfDevice(await readMountInfo(), numbers.major, numbers.minor).map((entry) => entry.mountPoint);
}

describe("disks on real loop devices", { skip, timeout: 600_000 }, () => {
  const work = tempDir("haven-disk-devices-");
  let workPath = "";
  /** Loop devices attached by this file and not detached yet. */
  const attached: LoopDisk[] = [];
  /** Mount points this file mounted and did not unmount yet, in mount order. */
  const mounted: string[] = [];
  let images = 0;

  before(async () => {
    workPath = await realpath(work.path);
  });

  async function attachLoop(
    sizeBytes: number,
    options: { partscan?: boolean; content?: Buffer } = {},
  ): Promise<LoopDisk> {
    const image = join(workPath, `disk${++images}.img`);
    await writeFile(image, options.content ?? "");
    await truncate(image, sizeBytes);
    const device = (
      await must("losetup", ["--find", "--show", ...(options.partscan ? ["--partscan"] : []), image])
    ).trim();
    assert.match(device, /^\/dev\/loop\d+$/);
    const disk = { image, device };
    attached.push(disk);
    return disk;
  }

  /** Detaches the loop device, only while it still holds this test's image (never someone else's). */
  async function detachLoop(disk: LoopDisk): Promise<void> {
    const backing = await readFile(`/sys/class/block/${basename(disk.device)}/loop/backing_file`, "utf8").catch(
      () => "",
    );
    if (backing.trim() === disk.image) await run("losetup", ["-d", disk.device]);
    attached.splice(attached.indexOf(disk), 1);
  }

  async function mount(device: string, mountPoint: string): Promise<void> {
    await mountDisk(device, mountPoint);
    mounted.push(mountPoint);
  }

  async function unmount(mountPoint: string): Promise<void> {
    await unmountDisk(mountPoint);
    mounted.splice(mounted.lastIndexOf(mountPoint), 1);
  }

  /** Removes every mount and loop device still there: after each test, pass or fail. */
  async function cleanUp(): Promise<void> {
    for (const mountPoint of mounted.splice(0).reverse()) await run("umount", ["-l", mountPoint]);
    for (const disk of [...attached].reverse()) await detachLoop(disk);
  }

  /** A test whose loop devices and mounts are removed when it ends. */
  function deviceTest(name: string, fn: (t: TestContext) => Promise<void>): void {
    test(name, async (t) => {
      try {
        await fn(t);
      } finally {
        await cleanUp();
      }
    });
  }

  after(async () => {
    await cleanUp();
    const stillMounted = (await readMountInfo()).filter((entry) => entry.mountPoint.startsWith(`${workPath}/`));
    if (workPath !== "" && stillMounted.length > 0) {
      // Never remove a directory tree with a filesystem mounted in it: that would delete the disk's files.
      throw new Error(`still mounted under ${workPath}: ${stillMounted.map((entry) => entry.mountPoint).join(", ")}`);
    }
    work.remove();
  });

  deviceTest(
    "a loop device is identified by its backing file, with the device's size, and inspects as empty",
    async () => {
      const disk = await attachLoop(DISK_BYTES);
      const found = await identifyPath(disk.device);
      assert.deepEqual(found, {
        identity: { kind: "path", value: disk.image, device: disk.device },
        sizeBytes: DISK_BYTES,
        blockDevice: true,
      });
      assert.equal(formatIdentity(found.identity), `path ${disk.image}`);
      const inspection = await inspectForAdd(disk.device);
      assert.equal(inspection.kind, "empty", inspection.detail);
      assert.match(inspection.detail, /no signature and its first 1\.00 MiB are zeros/);
    },
  );

  deviceTest(
    "a directory on a mounted loop device has the loop's identity, the filesystem's size and mount point",
    async () => {
      const disk = await attachLoop(DISK_BYTES);
      await formatDevice(disk.device, "ext4", "havendisk0");
      const mountPoint = join(workPath, "mnt-identity");
      await mount(disk.device, mountPoint);
      assert.equal(await mountedDevice(mountPoint), disk.device);
      assert.equal(await mountedDevice(workPath), undefined, "not a mount point");
      await mkdir(join(mountPoint, "copies"));

      const found = await identifyPath(join(mountPoint, "copies"));
      const { size } = await df(mountPoint);
      assert.deepEqual(found, {
        identity: { kind: "path", value: disk.image, device: disk.device },
        sizeBytes: size,
        blockDevice: false,
        mountedAt: mountPoint,
      });
      assert.ok(size < DISK_BYTES && size > DISK_BYTES / 2, `filesystem size ${size}`);
      assert.equal((await identifyPath(disk.device)).mountedAt, mountPoint);
    },
  );

  deviceTest("a directory on tmpfs is identified by the directory itself", async () => {
    const mountPoint = join(workPath, "mnt-tmpfs");
    await mkdir(mountPoint);
    await must("mount", ["-t", "tmpfs", "-o", "size=8m", "haven-test-tmpfs", mountPoint]);
    mounted.push(mountPoint);
    assert.equal(await mountedDevice(mountPoint), "haven-test-tmpfs");
    assert.deepEqual(await identifyPath(mountPoint), {
      identity: { kind: "path", value: mountPoint },
      sizeBytes: 8 * MiB,
      blockDevice: false,
      mountedAt: mountPoint,
    });
  });

  deviceTest(
    "an ext4 device is a filesystem; mounted, labelled and unmounted it is a Haven disk, read without a write",
    async () => {
      const disk = await attachLoop(DISK_BYTES);
      await formatDevice(disk.device, "ext4", "havendisk0");
      const formatted = await inspectForAdd(disk.device);
      assert.equal(formatted.kind, "filesystem", formatted.detail);
      assert.equal(formatted.fsType, "ext4");
      assert.match(formatted.detail, /existing filesystem \(ext4, labelled "havendisk0"\), not mounted$/);
      assert.deepEqual(await mountPointsOf(disk.device), [], "the look for a label left nothing mounted");

      const mountPoint = join(workPath, "mnt-label");
      await mount(disk.device, mountPoint);
      const emptyFs = await inspectForAdd(mountPoint);
      assert.equal(emptyFs.kind, "empty", `lost+found does not count: ${emptyFs.detail}`);
      assert.equal((await inspectForAdd(disk.device)).kind, "filesystem");

      const { identity, sizeBytes } = await identifyPath(disk.device);
      const label: DiskLabel = {
        format: 1,
        cluster: "test",
        host: "node1",
        disk: "disk0",
        identity,
        sizeBytes,
        createdAt: new Date().toISOString(),
      };
      await writeDiskLabel(mountPoint, label);
      const atMount = await inspectForAdd(mountPoint);
      assert.equal(atMount.kind, "haven-label", atMount.detail);
      assert.deepEqual(atMount.label, label);
      const viaDevice = await inspectForAdd(disk.device);
      assert.equal(viaDevice.kind, "haven-label", viaDevice.detail);
      assert.deepEqual(viaDevice.label, label);
      assert.match(
        viaDevice.detail,
        new RegExp(`mounted at ${mountPoint}, with the Haven label of disk disk0 of host node1`),
      );

      await unmount(mountPoint);
      const before = await sha256(disk.device);
      const unmounted = await inspectForAdd(disk.device);
      assert.equal(unmounted.kind, "haven-label", unmounted.detail);
      assert.deepEqual(unmounted.label, label);
      assert.match(unmounted.detail, /not mounted, with the Haven label/);
      assert.equal(await sha256(disk.device), before, "reading the label wrote nothing to the device");
      assert.deepEqual(await mountPointsOf(disk.device), [], "the read-only mount is gone");
    },
  );

  deviceTest("an xfs device is a filesystem, and a Haven disk once labelled, mounted or not", async (t) => {
    if (!haveTool("mkfs.xfs")) {
      t.skip("mkfs.xfs is missing (apt-get install xfsprogs)");
      return;
    }
    const disk = await attachLoop(XFS_DISK_BYTES);
    await formatDevice(disk.device, "xfs", "havenxfs0");
    const formatted = await inspectForAdd(disk.device);
    assert.equal(formatted.kind, "filesystem", formatted.detail);
    assert.equal(formatted.fsType, "xfs");
    const mountPoint = join(workPath, "mnt-xfs");
    await mount(disk.device, mountPoint);
    assert.equal((await inspectForAdd(mountPoint)).kind, "empty");
    const label: DiskLabel = {
      format: 1,
      cluster: "test",
      host: "node2",
      disk: "xfs0",
      identity: (await identifyPath(mountPoint)).identity,
      sizeBytes: XFS_DISK_BYTES,
      createdAt: "2025-01-01T00:00:00.000Z",
    };
    await writeDiskLabel(mountPoint, label);
    await unmount(mountPoint);
    const before = await sha256(disk.device);
    const unmounted = await inspectForAdd(disk.device);
    assert.equal(unmounted.kind, "haven-label", unmounted.detail);
    assert.deepEqual(unmounted.label, label);
    assert.equal(await sha256(disk.device), before, "reading the label wrote nothing to the device");
    assert.deepEqual(await mountPointsOf(disk.device), []);
  });

  deviceTest("a device with data but no signature holds data, if the data is in its first MiB", async () => {
    const atStart = await attachLoop(DISK_BYTES, { content: patternBytes(4096, 7) });
    const inspection = await inspectForAdd(atStart.device);
    assert.equal(inspection.kind, "holds-data", inspection.detail);
    assert.match(inspection.detail, /has data in its first 1\.00 MiB, though no signature blkid knows/);

    const nearEnd = await attachLoop(DISK_BYTES);
    const handle = await open(nearEnd.device, "r+");
    try {
      await handle.write(patternBytes(512, 9), 0, 512, MiB - 512);
      await handle.sync();
    } finally {
      await handle.close();
    }
    assert.equal((await inspectForAdd(nearEnd.device)).kind, "holds-data");

    // The documented limit: past the first MiB only signatures count.
    const past = await attachLoop(DISK_BYTES);
    const late = await open(past.device, "r+");
    try {
      await late.write(patternBytes(512, 11), 0, 512, MiB);
      await late.sync();
    } finally {
      await late.close();
    }
    assert.equal((await inspectForAdd(past.device)).kind, "empty");
  });

  deviceTest(
    "a partitioned device has its partition table as fsType; a partition is its disk's identity with -part1",
    async (t) => {
      if (!haveTool("sfdisk") || !haveTool("partx")) {
        t.skip("sfdisk or partx is missing (apt-get install fdisk util-linux)");
        return;
      }
      const disk = await attachLoop(DISK_BYTES, { partscan: true });
      await must("sfdisk", ["--quiet", disk.device], "label: gpt\nsize=8MiB\n");
      // sfdisk's own re-read does not always add the partition's node at once; partx does it now.
      await must("partx", ["--update", disk.device]);
      const inspection = await inspectForAdd(disk.device);
      assert.equal(inspection.kind, "filesystem", inspection.detail);
      assert.equal(inspection.fsType, "gpt");
      assert.match(inspection.detail, new RegExp(`gpt partition table \\(partitions ${basename(disk.device)}p1\\)`));
      const partition = await identifyPath(`${disk.device}p1`);
      assert.deepEqual(partition.identity, { kind: "path", value: `${disk.image}-part1`, device: `${disk.device}p1` });
      assert.equal(partition.sizeBytes, 8 * MiB);
    },
  );

  deviceTest(
    "a regular file, a character device, a missing path and a non-empty directory are refused as such",
    async () => {
      const file = join(workPath, "image-file");
      await writeFile(file, "x");
      assert.deepEqual(await inspectForAdd(file), {
        kind: "not-a-disk",
        detail:
          `${file} is a regular file, not a disk: give a block device (/dev/sdb) or the directory a disk is mounted at ` +
          "(an image file becomes a block device with `losetup --find --show FILE`)",
      });
      assert.deepEqual(await inspectForAdd("/dev/null"), {
        kind: "not-a-disk",
        detail: "/dev/null is a character device, not a block device",
      });
      assert.equal((await inspectForAdd(join(workPath, "nothing-here"))).kind, "not-a-disk");
      await symlink(join(workPath, "gone"), join(workPath, "dangling"));
      assert.match(
        (await inspectForAdd(join(workPath, "dangling"))).detail,
        /does not exist \(a symbolic link to nothing\)/,
      );

      const directory = join(workPath, "full-dir");
      await mkdir(join(directory, "lost+found"), { recursive: true });
      assert.equal((await inspectForAdd(directory)).kind, "empty");
      await writeFile(join(directory, "old-backup.tar"), "data");
      assert.deepEqual(await inspectForAdd(directory), {
        kind: "holds-data",
        detail: `${directory} is not empty: it holds 1 entries (old-backup.tar)`,
      });
      await writeFile(join(directory, ".haven-disk.json"), "{}");
      const corrupt = await inspectForAdd(directory);
      assert.equal(corrupt.kind, "holds-data");
      assert.match(corrupt.labelError ?? "", /format is missing/);
    },
  );

  deviceTest("diskUsage gives du's and df's numbers for dense, sparse and hard-linked files", async () => {
    const disk = await attachLoop(DISK_BYTES);
    await formatDevice(disk.device, "ext4", "usage");
    const mountPoint = join(workPath, "mnt-usage");
    await mount(disk.device, mountPoint);
    const dense = join(mountPoint, "copies", "vol1");
    const sparse = join(mountPoint, "copies", "vol2");
    await mkdir(join(dense, "sub"), { recursive: true });
    await mkdir(sparse, { recursive: true });
    await writeFile(join(dense, "data"), patternBytes(MiB + 100, 3));
    await writeFile(join(dense, "sub", "meta"), "metadata");
    await link(join(dense, "data"), join(dense, "data-link"));
    await symlink("data", join(dense, "data-symlink"));
    const handle = await open(join(sparse, "data"), "w");
    try {
      await handle.truncate(32 * MiB);
      await handle.write(patternBytes(4096, 5), 0, 4096, 10 * MiB);
      await handle.write(patternBytes(100, 6), 0, 100, 32 * MiB - 100);
    } finally {
      await handle.close();
    }
    await must("sync", ["-f", mountPoint]);

    const usage = await diskUsage(mountPoint, ["copies/vol1", sparse, "copies/gone"]);
    const fs = await df(mountPoint);
    assert.equal(usage.sizeBytes, fs.size);
    assert.equal(usage.usedBytes, fs.used);
    assert.equal(usage.freeBytes, fs.avail);
    assert.deepEqual(usage.copies, [
      { dir: "copies/vol1", allocatedBytes: await du(dense), apparentBytes: await du(dense, true), missing: false },
      { dir: sparse, allocatedBytes: await du(sparse), apparentBytes: await du(sparse, true), missing: false },
      { dir: "copies/gone", allocatedBytes: 0, apparentBytes: 0, missing: true },
    ]);
    const [denseUsage, sparseUsage] = usage.copies;
    assert.ok(denseUsage!.allocatedBytes >= MiB + 100, "a dense file takes what it holds, counted once");
    assert.ok(denseUsage!.allocatedBytes < 2 * MiB, "the hard link is counted once");
    assert.ok(sparseUsage!.apparentBytes > 32 * MiB, "the sparse file's logical size counts");
    assert.ok(sparseUsage!.allocatedBytes < MiB, "only the sparse file's written blocks take space");
  });

  deviceTest("isReadOnlyMount follows remount,ro; formatDevice refuses a mounted device", async () => {
    const disk = await attachLoop(DISK_BYTES);
    await formatDevice(disk.device, "ext4", "ro-test");
    const mountPoint = join(workPath, "mnt-ro");
    await mount(disk.device, mountPoint);
    await mkdir(join(mountPoint, "copies"));
    assert.equal(await isReadOnlyMount(mountPoint), false);
    assert.equal(await isReadOnlyMount(join(mountPoint, "copies")), false);
    await must("mount", ["-o", "remount,ro", mountPoint]);
    assert.equal(await isReadOnlyMount(mountPoint), true);
    assert.equal(await isReadOnlyMount(join(mountPoint, "copies")), true);
    assert.equal(await isReadOnlyMount(workPath), false, "the filesystem around it is still writable");
    await must("mount", ["-o", "remount,rw", mountPoint]);
    assert.equal(await isReadOnlyMount(mountPoint), false);

    await assert.rejects(
      formatDevice(disk.device, "ext4", "again"),
      failsWith("HAVEN_ERR_CONFLICT", new RegExp(`it is mounted at ${mountPoint}; unmount it first`)),
    );
    assert.deepEqual(readdirSync(mountPoint).sort(), ["copies", "lost+found"], "nothing was formatted");
    await assert.rejects(
      isReadOnlyMount(join(workPath, "nothing")),
      failsWith("HAVEN_ERR_NOT_FOUND", /does not exist/),
    );
  });

  deviceTest("a lazy unmount detaches the filesystem at once", async () => {
    const disk = await attachLoop(DISK_BYTES);
    await formatDevice(disk.device, "ext4", "lazy");
    const mountPoint = join(workPath, "mnt-lazy");
    await mount(disk.device, mountPoint);
    const busy = await open(join(mountPoint, "held-open"), "w");
    try {
      await unmountDisk(mountPoint, { lazy: true });
      mounted.splice(mounted.indexOf(mountPoint), 1);
      assert.equal(await mountedDevice(mountPoint), undefined);
      assert.deepEqual(await mountPointsOf(disk.device), []);
    } finally {
      await busy.close();
    }
    assert.equal(await readDiskLabel(mountPoint), undefined);
  });

  deviceTest("the locate LED of a loop device is unsupported, and ledctl's own answer is passed on", async () => {
    const disk = await attachLoop(DISK_BYTES);
    const loop = await setLocateLed(disk.device, true);
    assert.equal(loop.supported, false);
    assert.match(loop.detail, /is a loop device \(a file\), which has no bay and no LED/);
    await assert.rejects(
      setLocateLed(join(workPath, "no-device"), true),
      failsWith("HAVEN_ERR_NOT_FOUND", /does not exist/),
    );
    await assert.rejects(setLocateLed("/dev/null", true), failsWith("HAVEN_ERR_INVALID_REQUEST", /not a block device/));

    // ledctl itself needs a disk in an enclosure; a stand-in records what it was asked and answers as told.
    const other = readdirSync("/sys/class/block").find(
      (name) => !name.startsWith("loop") && !name.startsWith("zram") && haveDeviceNode(name),
    );
    if (other === undefined) return;
    const calls = join(workPath, "ledctl-calls");
    const ledctl = join(workPath, "ledctl");
    const script = (exitCode: number, message: string) =>
      `#!/bin/sh\necho "$@" >> ${calls}\necho "${message}" >&2\nexit ${exitCode}\n`;
    await writeFile(ledctl, script(0, ""));
    await chmod(ledctl, 0o755);
    assert.deepEqual(await setLocateLed(`/dev/${other}`, true, { ledctl }), {
      supported: true,
      detail: `locate LED of /dev/${other} on`,
    });
    assert.equal((await setLocateLed(`/dev/${other}`, false, { ledctl })).detail, `locate LED of /dev/${other} off`);
    await writeFile(ledctl, script(33, "ledctl: device not supported"));
    const refused = await setLocateLed(`/dev/${other}`, true, { ledctl });
    assert.equal(refused.supported, false);
    assert.match(refused.detail, /no locate LED for .*exit 33.*device not supported/);
    assert.equal(
      await readFile(calls, "utf8"),
      `locate=/dev/${other}\nlocate_off=/dev/${other}\nlocate=/dev/${other}\n`,
    );
    const absent = await setLocateLed(`/dev/${other}`, true, { ledctl: join(workPath, "no-ledctl") });
    assert.equal(absent.supported, false);
    assert.match(absent.detail, /was not found: install it/);
  });
});

/** Whether /dev has a node for whole disk `name` (not a partition). */
function haveDeviceNode(name: string): boolean {
  return existsSync(`/dev/${name}`) && !existsSync(`/sys/class/block/${name}/partition`);
}
