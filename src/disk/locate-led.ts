// The locate LED of a disk's bay, so the operator pulls the right disk (`haven disk locate`). It is
// lit and put out with ledmon's ledctl (`ledctl locate=/dev/sdb`, `ledctl locate_off=/dev/sdb`),
// which drives SES enclosures, VMD and NPEM bays. Many disks have no LED Haven can reach: loop
// devices, virtual disks, disks behind controllers ledctl does not know, machines without ledctl.
// That is an answer, not an error: setLocateLed then says { supported: false, detail: why }, and the
// caller shows the disk's identity instead. It throws only when the device itself is wrong
// (missing, not a block device). A partition's LED is its disk's.

import { realpath } from "node:fs/promises";
import { errorMessage, hasCode, HavenError } from "../core/errors.js";
import { isLoopName, nameOfDeviceNode, partitionOf } from "./block-sysfs.js";
import { runCommand } from "./disk-command.js";

export interface LocateLedResult {
  readonly supported: boolean;
  /** What was done, or why it cannot be. */
  readonly detail: string;
}

export interface LocateLedOptions {
  /** The ledctl to run (a path, or a name looked up on PATH). */
  readonly ledctl?: string;
  readonly timeoutMs?: number;
}

/** ledctl scans the enclosures first; on a large JBOD that takes a few seconds. */
export const LEDCTL_TIMEOUT_MS = 20_000;

/** Lights (`on`) or puts out the locate LED of the bay holding `device`. */
export async function setLocateLed(
  device: string,
  on: boolean,
  options: LocateLedOptions = {},
): Promise<LocateLedResult> {
  let resolved: string;
  try {
    resolved = await realpath(device);
  } catch {
    throw new HavenError("HAVEN_ERR_NOT_FOUND", `${device} does not exist`);
  }
  const name = await nameOfDeviceNode(resolved);
  const disk = (await partitionOf(name))?.disk ?? name;
  if (isLoopName(disk)) {
    return { supported: false, detail: `${device} is a loop device (a file), which has no bay and no LED` };
  }
  const target = `/dev/${disk}`;
  const pattern = `${on ? "locate" : "locate_off"}=${target}`;
  try {
    await runCommand(options.ledctl ?? "ledctl", [pattern], { timeoutMs: options.timeoutMs ?? LEDCTL_TIMEOUT_MS });
  } catch (error) {
    if (!hasCode(error, "HAVEN_ERR_IO")) throw error;
    return { supported: false, detail: `no locate LED for ${target}: ${errorMessage(error)}` };
  }
  return { supported: true, detail: `locate LED of ${target} ${on ? "on" : "off"}` };
}
