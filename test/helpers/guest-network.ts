// Test helper: gives the test guest (scripts/build-guest.sh) a network driver without changing its
// image. The guest's initramfs holds only disk modules; Linux unpacks every cpio archive appended to
// an initramfs in turn, so this helper writes a second, small archive with virtio_net and its
// dependencies (from the host's /lib/modules of the guest's kernel) into /lib/modules/net/ and
// appends it to a copy of the guest's initramfs. The guest's `shell` scenario then loads them when
// told to over its serial console (guestNetworkCommand).

import { readFile, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { gzipSync } from "node:zlib";
import type { GuestImage } from "./guest.js";

/** virtio_net and what it needs beyond the virtio core the guest already loads, dependencies first. */
const NET_MODULES = ["failover", "net_failover", "virtio_net"];
const MODULE_DIR_IN_GUEST = "/lib/modules/net";

/** One entry of a newc cpio archive: header, name, data, each padded to 4 bytes. */
function cpioEntry(name: string, mode: number, data: Buffer, inode: number): Buffer {
  const nameBytes = Buffer.from(`${name}\0`, "utf8");
  const fields = [inode, mode, 0, 0, 1, 0, data.length, 0, 0, 0, 0, nameBytes.length, 0];
  const header = Buffer.from("070701" + fields.map((value) => value.toString(16).padStart(8, "0")).join(""), "ascii");
  const pad = (length: number): Buffer => Buffer.alloc((4 - (length % 4)) % 4);
  return Buffer.concat([header, nameBytes, pad(header.length + nameBytes.length), data, pad(data.length)]);
}

/** The guest's kernel version, from the stamp build-guest.sh leaves next to its output. */
async function guestKernelVersion(guest: GuestImage): Promise<string | undefined> {
  const stamp = await readFile(join(dirname(guest.initramfs), ".stamp"), "utf8").catch(() => "");
  return /kernel=\S*\/vmlinuz-(\S+)/.exec(stamp)?.[1];
}

/**
 * Writes `dir`/initramfs-net.img, the guest's initramfs with the network modules appended, and
 * returns the guest with it; or a reason why it cannot (modules absent or compressed).
 */
export async function guestWithNetworkModules(guest: GuestImage, dir: string): Promise<GuestImage | string> {
  const version = await guestKernelVersion(guest);
  if (version === undefined) return "the guest's kernel version is unknown (no .stamp from build-guest.sh)";
  const moduleRoot = join("/lib/modules", version);
  const dependencies = await readFile(join(moduleRoot, "modules.dep"), "utf8").catch(() => "");
  const entries = [cpioEntry(MODULE_DIR_IN_GUEST.slice(1), 0o40755, Buffer.alloc(0), 1)];
  for (const [index, module] of NET_MODULES.entries()) {
    const line = dependencies.split("\n").find((text) => text.split(":")[0]?.endsWith(`/${module}.ko`));
    const relative = line?.split(":")[0];
    if (relative === undefined || !existsSync(join(moduleRoot, relative)))
      return `${module}.ko (uncompressed) is not in ${moduleRoot}`;
    const data = await readFile(join(moduleRoot, relative));
    entries.push(cpioEntry(`${MODULE_DIR_IN_GUEST.slice(1)}/${module}.ko`, 0o100644, data, index + 2));
  }
  entries.push(cpioEntry("TRAILER!!!", 0, Buffer.alloc(0), 0));
  const base = await readFile(guest.initramfs);
  // Zero bytes between archives are skipped; they keep the next one 4-byte aligned.
  const padding = Buffer.alloc((4 - (base.length % 4)) % 4);
  const initramfs = join(dir, "initramfs-net.img");
  await writeFile(initramfs, Buffer.concat([base, padding, gzipSync(Buffer.concat(entries))]));
  return { kernel: guest.kernel, initramfs };
}

/**
 * The shell line that loads the network modules, gives eth0 `address`/16 and prints
 * "HAVEN-NET-2 <eth0's MAC>" (the marker is computed by the guest's shell, so the echoed command
 * line itself never matches it).
 */
export function guestNetworkCommand(address: string): string {
  const modules = NET_MODULES.map((module) => `insmod ${MODULE_DIR_IN_GUEST}/${module}.ko`).join(" && ");
  return (
    `${modules} && ip link set eth0 up && ip address add ${address}/16 dev eth0 && ` +
    `echo "HAVEN-NET-$((1+1)) $(cat /sys/class/net/eth0/address)"\n`
  );
}

/** The marker guestNetworkCommand's line prints once eth0 is up. */
export const GUEST_NETWORK_MARKER = /HAVEN-NET-2 ([0-9a-f:]{17})/;
