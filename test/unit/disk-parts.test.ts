// The disk layer's parsers and its identity rules, without real devices: mountinfo lines (escapes,
// optional fields, stacked mounts, the longest prefix on component boundaries), blkid's export format,
// the order in which a disk's identity is taken from a fake sysfs tree and udev (wwn, serial, udev
// serial, loop backing file, device node; a partition is its disk's identity with -partN), and the
// filesystem label limits that formatDevice checks before it touches a device.

import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before } from "node:test";
import { splitDeviceNumber } from "../../src/disk/block-sysfs.js";
import {
  blockDeviceIdentity,
  identifyPath,
  formatIdentity,
  sameIdentity,
  type IdentitySources,
} from "../../src/disk/disk-identity.js";
import { formatDevice } from "../../src/disk/disk-format.js";
import { parseBlkidExport } from "../../src/disk/disk-inspect.js";
import { isReadOnly, mountHolding, mountsOfDevice, parseMountInfo } from "../../src/disk/mountinfo.js";
import { boundedTest } from "../helpers/bounded-test.js";
import { failsWith } from "../helpers/errors.js";

/** Every test here takes well under a second; one still running after this bound is hung, not slow. */
const test = boundedTest(10_000);

const MOUNTINFO = [
  "26 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard",
  "44 26 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw,discard",
  "45 26 7:3 / /srv/haven/disk0 rw,relatime - ext4 /dev/loop3 rw",
  "46 26 7:4 / /srv/haven/disk0-old rw,relatime master:2 propagate_from:1 - xfs /dev/loop4 ro,attr2",
  "47 26 0:40 / /srv/my\\040disk rw,relatime - tmpfs my\\134tmp rw,size=1024k",
  "48 45 7:5 / /srv/haven/disk0 ro,relatime - ext4 /dev/loop5 rw",
  "49 26 7:3 /sub /mnt/bind rw - ext4 /dev/loop3 rw",
].join("\n");

test("mountinfo lines parse into their fields, with octal escapes undone", () => {
  const entries = parseMountInfo(`${MOUNTINFO}\n`);
  assert.equal(entries.length, 7);
  assert.deepEqual(entries[3], {
    mountId: 46,
    parentId: 26,
    major: 7,
    minor: 4,
    root: "/",
    mountPoint: "/srv/haven/disk0-old",
    mountOptions: ["rw", "relatime"],
    fsType: "xfs",
    source: "/dev/loop4",
    superOptions: ["ro", "attr2"],
  });
  assert.equal(entries[4]!.mountPoint, "/srv/my disk");
  assert.equal(entries[4]!.source, "my\\tmp");
});

test("a line that is not a mount is refused with its number", () => {
  assert.throws(
    () => parseMountInfo("26 1 254:0 / / rw - ext4 /dev/vda rw\ngarbage here"),
    failsWith("HAVEN_ERR_IO", /line 2/),
  );
  assert.throws(() => parseMountInfo("26 1 254:0 / / rw ext4 /dev/vda rw"), failsWith("HAVEN_ERR_IO", /line 1/));
});

test("the mount holding a path is the longest mount point on component boundaries, the top one if stacked", () => {
  const entries = parseMountInfo(MOUNTINFO);
  assert.equal(mountHolding(entries, "/srv/haven/disk0/copies/v1")?.mountId, 48);
  assert.equal(mountHolding(entries, "/srv/haven/disk0")?.mountId, 48);
  assert.equal(mountHolding(entries, "/srv/haven/disk0-old/x")?.mountId, 46);
  assert.equal(mountHolding(entries, "/srv/haven/disk00")?.mountId, 26);
  assert.equal(mountHolding(entries, "/srv/my disk/f")?.mountId, 47);
  assert.equal(mountHolding([], "/x"), undefined);
});

test("a device's mounts list the mounts of its whole filesystem before bind mounts of a subdirectory", () => {
  const entries = parseMountInfo(
    ["49 26 7:3 /sub /mnt/bind rw - ext4 /dev/loop3 rw", "45 26 7:3 / /srv/haven/disk0 rw - ext4 /dev/loop3 rw"].join(
      "\n",
    ),
  );
  assert.deepEqual(
    mountsOfDevice(entries, 7, 3).map((entry) => entry.mountPoint),
    ["/srv/haven/disk0", "/mnt/bind"],
  );
  assert.deepEqual(mountsOfDevice(entries, 7, 4), []);
});

test("a mount is read-only when mounted so or when its filesystem is", () => {
  const entries = parseMountInfo(MOUNTINFO);
  assert.equal(isReadOnly(entries[0]!), false);
  assert.equal(isReadOnly(entries[3]!), true, "superblock ro (remounted after errors)");
  assert.equal(isReadOnly(entries[5]!), true, "mount ro");
});

test("device numbers split as glibc's major() and minor() do", () => {
  assert.deepEqual(splitDeviceNumber(0x0703n), { major: 7, minor: 3 });
  assert.deepEqual(splitDeviceNumber(0xfe00n), { major: 254, minor: 0 });
  // major 259, minor 1048575: the wide encoding of large numbers.
  assert.deepEqual(splitDeviceNumber((0x103n << 8n) | 0xffn | (0xfffn << 20n)), { major: 259, minor: 1048575 });
});

test("blkid's export format: KEY=value lines with backslash escapes", () => {
  assert.deepEqual(parseBlkidExport("DEVNAME=/dev/loop3\nLABEL=my\\ disk\nTYPE=ext4\nUUID=1-2\n\n"), {
    DEVNAME: "/dev/loop3",
    LABEL: "my disk",
    TYPE: "ext4",
    UUID: "1-2",
  });
});

// ---- identity from a fake sysfs ----------------------------------------------------------------

let sysRoot = "";
const udev: Record<string, Record<string, string>> = {
  "/dev/sdc": { ID_SERIAL: "Samsung_SSD_860_S3Z1NB0K123456", ID_SERIAL_SHORT: "S3Z1NB0K123456" },
  "/dev/sdf": { ID_SERIAL: "USB_Disk_0001" },
  "/dev/sdb": { ID_SERIAL_SHORT: "FROM-UDEV" },
};
const sources = (): IdentitySources => ({ sysRoot, udevProperties: async (device) => udev[device] ?? {} });

/** A block device in the fake tree: its directory under devices/, linked from class/block/NAME. */
async function fakeDevice(path: string, attributes: Record<string, string>): Promise<void> {
  const directory = join(sysRoot, "devices", path);
  await mkdir(directory, { recursive: true });
  for (const [name, value] of Object.entries(attributes)) {
    await mkdir(dirname(join(directory, name)), { recursive: true });
    await writeFile(join(directory, name), value);
  }
  const name = path.split("/").at(-1)!;
  await symlink(directory, join(sysRoot, "class", "block", name));
}

before(async () => {
  sysRoot = await mkdtemp(join(tmpdir(), "haven-fake-sysfs-"));
  await mkdir(join(sysRoot, "class", "block"), { recursive: true });
  await fakeDevice("scsi/sda", { "device/wwid": "naa.5002538e40a0b1c2\n", "device/serial": "S1\n" });
  await fakeDevice("scsi/sdb", { "device/serial": "  S3Z1NB0K999999 \n" });
  await fakeDevice("scsi/sdc", { "device/wwid": "\n" });
  await fakeDevice("scsi/sdd", {});
  await fakeDevice("nvme/nvme0n1", { wwid: "eui.0025388b71b1c2d3\n", "device/serial": "NV1\n" });
  await fakeDevice("virtio/vdb", { serial: "virt-disk-1\n" });
  await fakeDevice("scsi/sde", { "device/serial": "SER-E\n" });
  await fakeDevice("scsi/sde/sde2", { partition: "2\n" });
  await fakeDevice("scsi/sdd/sdd1", { partition: "1\n" });
  await fakeDevice("usb/sdf", {});
  await fakeDevice("virtual/loop5", { "loop/backing_file": "/var/tmp/disk1.img\n" });
  await fakeDevice("virtual/loop5/loop5p1", { partition: "1\n" });
  await fakeDevice("virtual/loop6", {});
});
after(async () => {
  if (sysRoot !== "") await rm(sysRoot, { recursive: true, force: true });
});

test("a disk's identity is its WWN first, then its sysfs serial, then udev's, then the loop file, then the node", async () => {
  const cases: [string, string][] = [
    ["sda", "wwn naa.5002538e40a0b1c2"],
    ["nvme0n1", "wwn eui.0025388b71b1c2d3"],
    ["sdb", "serial S3Z1NB0K999999"],
    ["vdb", "serial virt-disk-1"],
    ["sdc", "serial S3Z1NB0K123456"],
    ["sdf", "serial USB_Disk_0001"],
    ["loop5", "path /var/tmp/disk1.img"],
    ["loop6", "path /dev/loop6"],
    ["sdd", "path /dev/sdd"],
  ];
  for (const [name, expected] of cases) {
    const identity = await blockDeviceIdentity(name, sources());
    assert.equal(formatIdentity(identity), expected, name);
    assert.equal(identity.device, `/dev/${name}`, name);
  }
});

test("a partition is its disk's identity with -partN, so two partitions of a disk differ", async () => {
  assert.deepEqual(await blockDeviceIdentity("sde2", sources()), {
    kind: "serial",
    value: "SER-E-part2",
    device: "/dev/sde2",
  });
  assert.deepEqual(await blockDeviceIdentity("loop5p1", sources()), {
    kind: "path",
    value: "/var/tmp/disk1.img-part1",
    device: "/dev/loop5p1",
  });
  // A partition of a disk known only by its node is known by its own node.
  assert.deepEqual(await blockDeviceIdentity("sdd1", sources()), {
    kind: "path",
    value: "/dev/sdd1",
    device: "/dev/sdd1",
  });
});

test("identities are the same by kind and value, wherever the disk was seen", () => {
  assert.ok(
    sameIdentity(
      { kind: "serial", value: "A", device: "/dev/sdb" },
      { kind: "serial", value: "A", device: "/dev/sdc" },
    ),
  );
  assert.ok(sameIdentity({ kind: "path", value: "/x" }, { kind: "path", value: "/x", device: "/dev/loop1" }));
  assert.ok(!sameIdentity({ kind: "serial", value: "A" }, { kind: "wwn", value: "A" }));
  assert.ok(!sameIdentity({ kind: "serial", value: "A" }, { kind: "serial", value: "a" }));
});

test("identifyPath refuses a missing path and one that is neither a block device nor a directory", async () => {
  await assert.rejects(identifyPath(join(sysRoot, "no-such-path")), failsWith("HAVEN_ERR_NOT_FOUND", /does not exist/));
  await assert.rejects(
    identifyPath(join(sysRoot, "devices", "scsi", "sda", "device", "wwid")),
    failsWith("HAVEN_ERR_INVALID_REQUEST", /is neither a block device nor a directory/),
  );
});

test("formatDevice refuses a label mkfs would not take before it looks at the device", async () => {
  const missing = "/dev/haven-no-such-device";
  await assert.rejects(
    formatDevice(missing, "ext4", "a".repeat(17)),
    failsWith("HAVEN_ERR_INVALID_REQUEST", /1 to 16 .* for ext4/),
  );
  await assert.rejects(
    formatDevice(missing, "xfs", "a".repeat(13)),
    failsWith("HAVEN_ERR_INVALID_REQUEST", /1 to 12 .* for xfs/),
  );
  await assert.rejects(formatDevice(missing, "ext4", ""), failsWith("HAVEN_ERR_INVALID_REQUEST", /label ""/));
  await assert.rejects(formatDevice(missing, "ext4", "a b"), failsWith("HAVEN_ERR_INVALID_REQUEST", /label "a b"/));
  await assert.rejects(
    formatDevice(missing, "btrfs" as "ext4", "data"),
    failsWith("HAVEN_ERR_INVALID_REQUEST", /"btrfs" is not one of ext4, xfs/),
  );
  // A good label gets as far as the device, which does not exist.
  await assert.rejects(
    formatDevice(missing, "xfs", "a".repeat(12)),
    failsWith("HAVEN_ERR_NOT_FOUND", /does not exist/),
  );
  await assert.rejects(
    formatDevice(tmpdir(), "ext4", "data"),
    failsWith("HAVEN_ERR_INVALID_REQUEST", /not a block device/),
  );
});
