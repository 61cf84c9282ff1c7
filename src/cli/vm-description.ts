// vm.json: what `haven vm export NAME DIR` writes beside the VM's disk image, and what `haven vm import
// NAME --from DIR` on another cluster reads back to make the same VM: its CPUs, memory, how it boots,
// its NICs with their MACs and bridges (a guest keeps its addresses), its health checks and its policy,
// and which file in DIR holds its disk. What only makes sense on the cluster it came from (pinned host
// CPUs, the failback host, the volume's name and copies, run state) is left out.
//
// The file may come from anywhere, so it is checked whole before anything is made: a known "kind" and
// "version" (a newer version is refused, not half-read), no unknown keys, every value in range, and a
// disk file name that stays inside DIR. Errors are HAVEN_ERR_CONFIG naming the file and the key.
//
//   {
//     "kind": "haven-vm", "version": 1,
//     "name": "web", "vcpus": 2, "memoryMiB": 512, "boot": "disk",
//     "nics": [{ "mac": "52:54:00:12:34:56", "bridge": "br0" }],
//     "heartbeat": false, "tcpCheck": { "address": "10.0.0.5", "port": 80 },
//     "policy": { "maxRestart": 1, "maxRelocate": 1 },
//     "disk": { "file": "disk.qcow2", "format": "qcow2", "virtualSizeBytes": 1073741824 },
//     "exportedAt": "2026-12-05T18:00:00.000Z"
//   }

import { isIP } from "node:net";
import { join } from "node:path";
import { isVmName } from "../cluster/names.js";
import type { VmBoot, VmRecord } from "../cluster/vm-schema.js";
import { HavenError } from "../core/errors.js";
import { IMAGE_FORMATS, type ImageFormat } from "./image-copy.js";

export const VM_DESCRIPTION_FILE = "vm.json";
export const VM_DESCRIPTION_KIND = "haven-vm";
export const VM_DESCRIPTION_VERSION = 1;

const MAX_VCPUS = 64;
const MIN_MEMORY_MIB = 16;
const MAX_MEMORY_MIB = 16 * 1024 * 1024;
const MAX_NICS = 8;
const MAX_POLICY_COUNT = 100;
const MAX_FILE_BYTES = 64 * 1024;
const MAC_PATTERN = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const BRIDGE_PATTERN = /^[A-Za-z0-9_.-]{1,15}$/;
/** A file name in DIR: no directory part, not hidden, no "..". */
const DISK_FILE_PATTERN = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$/;

export interface VmDescription {
  readonly kind: typeof VM_DESCRIPTION_KIND;
  readonly version: typeof VM_DESCRIPTION_VERSION;
  readonly name: string;
  readonly vcpus: number;
  readonly memoryMiB: number;
  readonly boot: VmBoot;
  readonly nics: readonly { readonly mac: string; readonly bridge?: string }[];
  readonly heartbeat: boolean;
  readonly tcpCheck?: { readonly address: string; readonly port: number };
  readonly policy: { readonly maxRestart: number; readonly maxRelocate: number };
  readonly disk: { readonly file: string; readonly format: ImageFormat; readonly virtualSizeBytes: number };
  readonly exportedAt: string;
}

/** The description of a VM whose disk was written to `disk`. */
export function describeVm(vm: VmRecord, disk: VmDescription["disk"], now: Date): VmDescription {
  return {
    kind: VM_DESCRIPTION_KIND,
    version: VM_DESCRIPTION_VERSION,
    name: vm.name,
    vcpus: vm.vcpus,
    memoryMiB: vm.memoryMiB,
    boot: vm.boot,
    nics: vm.nics.map((nic) => ({ mac: nic.mac, ...(nic.bridge !== undefined && { bridge: nic.bridge }) })),
    heartbeat: vm.heartbeat,
    ...(vm.tcpCheck !== undefined && { tcpCheck: { address: vm.tcpCheck.address, port: vm.tcpCheck.port } }),
    policy: { maxRestart: vm.policy.maxRestart, maxRelocate: vm.policy.maxRelocate },
    disk,
    exportedAt: now.toISOString(),
  };
}

const TOP_KEYS = ["kind", "version", "name", "vcpus", "memoryMiB", "boot", "nics", "heartbeat", "tcpCheck"];
const KEYS = new Set([...TOP_KEYS, "policy", "disk", "exportedAt"]);

type Fail = (key: string, detail: string) => never;

function object(value: unknown, key: string, fail: Fail, known?: readonly string[]): Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) fail(key, "is not a JSON object");
  const o = value as Record<string, unknown>;
  const unknown = known === undefined ? undefined : Object.keys(o).find((k) => !known.includes(k));
  if (unknown !== undefined) fail(key, `has an unknown key "${unknown}" (known: ${known!.join(", ")})`);
  return o;
}

function whole(o: Record<string, unknown>, key: string, where: string, min: number, max: number, fail: Fail): number {
  const value = o[key];
  if (!Number.isSafeInteger(value) || (value as number) < min || (value as number) > max)
    fail(`${where}${key}`, `must be a whole number from ${min} to ${max}, got ${JSON.stringify(value)}`);
  return value as number;
}

function text(o: Record<string, unknown>, key: string, where: string, fail: Fail): string {
  const value = o[key];
  if (typeof value !== "string") fail(`${where}${key}`, `must be a string, got ${JSON.stringify(value)}`);
  return value as string;
}

/** Parses and checks a vm.json; `file` names it in errors. */
export function parseVmDescription(source: string, file: string): VmDescription {
  const fail: Fail = (key, detail) => {
    throw new HavenError(
      "HAVEN_ERR_CONFIG",
      `${file}: ${key === "" ? "" : `"${key}" `}${detail}; it is not a vm.json that 'haven vm export' wrote`,
    );
  };
  if (source.length > MAX_FILE_BYTES) fail("", `is ${source.length} bytes, more than a vm.json's ${MAX_FILE_BYTES}`);
  let value: unknown;
  try {
    value = JSON.parse(source);
  } catch (error) {
    fail("", `is not valid JSON (${(error as Error).message})`);
  }
  // The kind and version first: a newer Haven's file is refused for its version, not for a new key.
  const loose = object(value, "", fail);
  if (loose.kind !== VM_DESCRIPTION_KIND)
    fail("kind", `must be "${VM_DESCRIPTION_KIND}", got ${JSON.stringify(loose.kind)}`);
  if (loose.version !== VM_DESCRIPTION_VERSION)
    throw new HavenError(
      "HAVEN_ERR_CONFIG",
      `${file} is of version ${JSON.stringify(loose.version)}; this Haven reads version ${VM_DESCRIPTION_VERSION}: ` +
        `import it with the Haven that exported it, or export the VM again with this one`,
    );
  const o = object(value, "", fail, [...KEYS]);
  const name = text(o, "name", "", fail);
  if (!isVmName(name)) fail("name", `"${name}" is not a VM name`);
  const boot = text(o, "boot", "", fail);
  if (boot !== "disk" && boot !== "haven-test-kernel") fail("boot", `must be disk or haven-test-kernel, got "${boot}"`);
  if (!Array.isArray(o.nics) || o.nics.length > MAX_NICS) fail("nics", `must be a list of at most ${MAX_NICS} NICs`);
  const nics = (o.nics as unknown[]).map((value, i) => {
    const nic = object(value, `nics[${i}]`, fail, ["mac", "bridge"]);
    const mac = text(nic, "mac", `nics[${i}].`, fail);
    if (!MAC_PATTERN.test(mac)) fail(`nics[${i}].mac`, `"${mac}" is not a lower-case MAC address`);
    if (nic.bridge === undefined) return { mac };
    const bridge = text(nic, "bridge", `nics[${i}].`, fail);
    if (!BRIDGE_PATTERN.test(bridge)) fail(`nics[${i}].bridge`, `"${bridge}" is not a network interface name`);
    return { mac, bridge };
  });
  if (typeof o.heartbeat !== "boolean") fail("heartbeat", "must be true or false");
  let tcpCheck: VmDescription["tcpCheck"];
  if (o.tcpCheck !== undefined) {
    const check = object(o.tcpCheck, "tcpCheck", fail, ["address", "port"]);
    const address = text(check, "address", "tcpCheck.", fail);
    if (isIP(address) === 0) fail("tcpCheck.address", `"${address}" is not an IP address`);
    tcpCheck = { address, port: whole(check, "port", "tcpCheck.", 1, 65535, fail) };
  }
  const policy = object(o.policy, "policy", fail, ["maxRestart", "maxRelocate"]);
  const disk = object(o.disk, "disk", fail, ["file", "format", "virtualSizeBytes"]);
  const diskFile = text(disk, "file", "disk.", fail);
  if (!DISK_FILE_PATTERN.test(diskFile) || diskFile.includes(".."))
    fail("disk.file", `"${diskFile}" must be a file name in the export's directory`);
  const format = text(disk, "format", "disk.", fail);
  if (!(IMAGE_FORMATS as readonly string[]).includes(format))
    fail("disk.format", `must be one of ${IMAGE_FORMATS.join(", ")}, got "${format}"`);
  const exportedAt = text(o, "exportedAt", "", fail);
  if (Number.isNaN(Date.parse(exportedAt))) fail("exportedAt", `"${exportedAt}" is not a time`);
  return {
    kind: VM_DESCRIPTION_KIND,
    version: VM_DESCRIPTION_VERSION,
    name,
    vcpus: whole(o, "vcpus", "", 1, MAX_VCPUS, fail),
    memoryMiB: whole(o, "memoryMiB", "", MIN_MEMORY_MIB, MAX_MEMORY_MIB, fail),
    boot,
    nics,
    heartbeat: o.heartbeat as boolean,
    ...(tcpCheck !== undefined && { tcpCheck }),
    policy: {
      maxRestart: whole(policy, "maxRestart", "policy.", 0, MAX_POLICY_COUNT, fail),
      maxRelocate: whole(policy, "maxRelocate", "policy.", 0, MAX_POLICY_COUNT, fail),
    },
    disk: {
      file: diskFile,
      format: format as ImageFormat,
      virtualSizeBytes: whole(disk, "virtualSizeBytes", "disk.", 1, Number.MAX_SAFE_INTEGER, fail),
    },
    exportedAt,
  };
}

/** `vm create`'s arguments for the described VM, named `name`, with its disk image in `dir`. */
export function createArguments(description: VmDescription, name: string, dir: string): string[] {
  const { tcpCheck } = description;
  return [
    name,
    ...["--vcpus", String(description.vcpus), "--memory", `${description.memoryMiB}M`],
    ...["--image", join(dir, description.disk.file), "--format", description.disk.format],
    ...["--boot", description.boot],
    ...description.nics.flatMap((nic) => [
      "--nic",
      nic.bridge === undefined ? `mac=${nic.mac}` : `bridge=${nic.bridge},mac=${nic.mac}`,
    ]),
    description.heartbeat ? "--heartbeat" : "--no-heartbeat",
    ...(tcpCheck === undefined
      ? []
      : [
          "--tcp-check",
          isIP(tcpCheck.address) === 6
            ? `[${tcpCheck.address}]:${tcpCheck.port}`
            : `${tcpCheck.address}:${tcpCheck.port}`,
        ]),
    ...[
      "--max-restart",
      String(description.policy.maxRestart),
      "--max-relocate",
      String(description.policy.maxRelocate),
    ],
  ];
}
