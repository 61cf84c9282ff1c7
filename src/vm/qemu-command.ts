// QEMU's argument list for one VM, built from its spec by a pure function (no I/O, no defaults
// from the environment), so what Haven runs can be read and tested as data.
//
// The model (DESIGN.md, "Virtual servers"): QEMU starts paused (-S) with no default devices; the
// agent sets it up over QMP and then sends `cont`. The disk is the volume's NBD endpoint on this host
// (a unix socket that never moves), opened with -blockdev as an nbd node under a raw format node,
// with cache.direct=on, on a virtio-blk device that stops the VM on an I/O error (werror/rerror=stop)
// instead of handing the error to the guest. The nbd node reconnects (reconnect-delay, open-timeout:
// see DISK_RECONNECT_DELAY_S for what happens to in-flight I/O while it does). Everything the agent watches lives in the VM's runtime
// directory: QMP socket, serial console socket and log, heartbeat port socket, pidfile. A pvpanic
// device reports a guest kernel panic as a QMP event; a virtio-serial port named
// HEARTBEAT_PORT_NAME carries the guest's heartbeat.
//
// Every value is checked here, at the edge, with a HAVEN_ERR_CONFIG that names the field: a name or
// path QEMU's option parser would split (commas) or a MAC it would reject never reaches QEMU.

import { isAbsolute } from "node:path";
import { HavenError } from "../core/errors.js";
import { VM_NAME_PATTERN } from "./qemu-name.js";

/** The name of the guest's virtio-serial heartbeat port (/dev/virtio-ports/<name> in the guest). */
export const HEARTBEAT_PORT_NAME = "org.haven.heartbeat.0";

export const MAX_VCPUS = 64;
export const MIN_MEMORY_MIB = 16;
export const MAX_MEMORY_MIB = 1024 * 1024;
/** The NBD protocol's bound on an export name, in bytes. */
export const MAX_EXPORT_NAME_BYTES = 4096;
/** Linux's bound on an interface name (IFNAMSIZ - 1). */
export const MAX_TAP_NAME_LENGTH = 15;

/**
 * How long QEMU's NBD client holds the disk's requests while it reconnects, in seconds (the nbd
 * driver's `reconnect-delay`). What QEMU 7.2's block/nbd.c does when the endpoint closes a connection
 * (a route change, a primary that died, an agent restart):
 * - The failure is seen by a request: QEMU keeps no reader on an idle connection, so a connection
 *   closed while the disk is idle is noticed by the next request's send or reply read. The client
 *   then goes to "connecting, wait" and every request that failed on the old connection, or arrives
 *   meanwhile, waits instead of completing.
 * - A background thread reconnects to the same socket, retrying after 1, 2, 4, 8, 16, 16... s. A
 *   connection the endpoint accepts and closes at once (route none) counts as a failed attempt.
 * - Once a handshake succeeds, each waiting request is sent again, from the start, on the new
 *   connection: reads and writes alike (its coroutine loops while the client will reconnect). A write
 *   may therefore reach the new primary although the old one applied it too: the same data at the
 *   same offset, which is harmless, and nothing the guest saw acknowledged is lost because the guest
 *   only ever saw acknowledgements the old primary gave after every in-sync copy had the write.
 * - When the delay runs out first, the waiting requests fail with EIO and so do new ones until a
 *   reconnect succeeds; werror=stop/rerror=stop turn that into a paused VM (the guest never sees the
 *   error), and the agent's `cont` after the volume is served again replays them.
 * 40 s covers a failover (lease 6 s, promotion, engine start) with room to spare, and keeps the
 * attempt at 31 s inside the delay (with 30 s the last one would be at 15 s).
 */
export const DEFAULT_DISK_RECONNECT_DELAY_S = 40;
/**
 * How long QEMU keeps trying the first connection, in seconds (`open-timeout`): without it a VM started
 * while its endpoint is routed nowhere fails to start instead of waiting for the primary.
 */
export const DEFAULT_DISK_OPEN_TIMEOUT_S = 10;
/** Bound on both: QEMU takes uint32 seconds, and an hour is longer than any failover Haven plans for. */
export const MAX_DISK_TIMEOUT_S = 3600;

export type Accelerator = "kvm" | "tcg";

/** The files in a VM's runtime directory that QEMU creates or writes (see runtime-dir.ts). */
export interface VmRuntimePaths {
  readonly pidfile: string;
  readonly qmpSocket: string;
  readonly serialSocket: string;
  readonly serialLog: string;
  readonly heartbeatSocket: string;
  /** QEMU's stderr, appended to by whoever starts it (not an argument: QEMU does not open it). */
  readonly qemuLog: string;
}

export interface VmNic {
  /**
   * The host's tap device: QEMU creates it (script=no), and the agent attaches it to its bridge while
   * QEMU is still paused, before `cont` (network.ts plugTap).
   */
  readonly tapName: string;
  /** A fixed unicast MAC, e.g. "52:54:00:12:34:56": the guest's interface keeps its identity across hosts. */
  readonly mac: string;
}

export interface VmKernelBoot {
  readonly kernel: string;
  readonly initrd?: string;
  readonly append?: string;
}

export interface VmSpec {
  /** The VM's name: letters, digits, '.', '_', '-'; it names the QEMU process (-name guest=NAME). */
  readonly name: string;
  readonly vcpus: number;
  readonly memoryMiB: number;
  readonly accelerator: Accelerator;
  /** The volume's NBD endpoint on this host (agent/disk-endpoints.ts). */
  readonly disk: {
    readonly socketPath: string;
    readonly exportName: string;
    /** QEMU's reconnect-delay; DEFAULT_DISK_RECONNECT_DELAY_S when absent. */
    readonly reconnectDelaySeconds?: number;
    /** QEMU's open-timeout; DEFAULT_DISK_OPEN_TIMEOUT_S when absent. */
    readonly openTimeoutSeconds?: number;
  };
  /** Direct kernel boot (the test guest); without it the VM boots from its disk. */
  readonly kernelBoot?: VmKernelBoot;
  readonly nics: readonly VmNic[];
  readonly runtime: VmRuntimePaths;
  /**
   * The QEMU is a live migration's destination (-incoming defer): it waits for the source's state
   * instead of booting, and stays paused (-S) after the transfer until Haven resumes it.
   */
  readonly incoming?: boolean;
}

const MAC_PATTERN = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const TAP_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

function invalid(name: string, detail: string): never {
  throw new HavenError("HAVEN_ERR_CONFIG", `VM ${JSON.stringify(name)}: ${detail}`);
}

/** Checks that `path` can be given to QEMU: absolute, and inside an option string, without commas. */
function checkPath(vm: string, field: string, path: string, inOptionString: boolean): void {
  if (typeof path !== "string" || path === "" || !isAbsolute(path))
    invalid(vm, `${field} must be an absolute path, got ${JSON.stringify(path)}`);
  if (path.includes("\0")) invalid(vm, `${field} contains a NUL byte`);
  if (inOptionString && path.includes(","))
    invalid(vm, `${field} ${JSON.stringify(path)} contains a comma, which QEMU's option parser would split`);
}

/** Validates a VM spec; throws HAVEN_ERR_CONFIG naming the first bad field. */
export function validateVmSpec(spec: VmSpec): void {
  if (typeof spec.name !== "string" || !VM_NAME_PATTERN.test(spec.name))
    invalid(
      String(spec.name),
      "the name must be 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit",
    );
  const vm = spec.name;
  if (!Number.isSafeInteger(spec.vcpus) || spec.vcpus < 1 || spec.vcpus > MAX_VCPUS)
    invalid(vm, `vcpus must be an integer from 1 to ${MAX_VCPUS}, got ${spec.vcpus}`);
  if (!Number.isSafeInteger(spec.memoryMiB) || spec.memoryMiB < MIN_MEMORY_MIB || spec.memoryMiB > MAX_MEMORY_MIB)
    invalid(vm, `memoryMiB must be an integer from ${MIN_MEMORY_MIB} to ${MAX_MEMORY_MIB}, got ${spec.memoryMiB}`);
  if (spec.accelerator !== "kvm" && spec.accelerator !== "tcg")
    invalid(vm, `accelerator must be "kvm" or "tcg", got ${JSON.stringify(spec.accelerator)}`);
  checkPath(vm, "disk.socketPath", spec.disk.socketPath, false);
  if (typeof spec.disk.exportName !== "string" || Buffer.byteLength(spec.disk.exportName) > MAX_EXPORT_NAME_BYTES)
    invalid(vm, `disk.exportName must be a string of at most ${MAX_EXPORT_NAME_BYTES} bytes`);
  for (const field of ["reconnectDelaySeconds", "openTimeoutSeconds"] as const) {
    const value = spec.disk[field];
    if (value !== undefined && (!Number.isSafeInteger(value) || value < 0 || value > MAX_DISK_TIMEOUT_S))
      invalid(vm, `disk.${field} must be an integer from 0 to ${MAX_DISK_TIMEOUT_S}, got ${value}`);
  }
  if (spec.kernelBoot) {
    checkPath(vm, "kernelBoot.kernel", spec.kernelBoot.kernel, false);
    if (spec.kernelBoot.initrd !== undefined) checkPath(vm, "kernelBoot.initrd", spec.kernelBoot.initrd, true);
    if (spec.kernelBoot.append?.includes("\0")) invalid(vm, "kernelBoot.append contains a NUL byte");
  }
  checkPath(vm, "runtime.pidfile", spec.runtime.pidfile, false);
  checkPath(vm, "runtime.qmpSocket", spec.runtime.qmpSocket, true);
  checkPath(vm, "runtime.serialSocket", spec.runtime.serialSocket, true);
  checkPath(vm, "runtime.serialLog", spec.runtime.serialLog, true);
  checkPath(vm, "runtime.heartbeatSocket", spec.runtime.heartbeatSocket, true);
  const taps = new Set<string>();
  const macs = new Set<string>();
  spec.nics.forEach((nic, index) => {
    const field = `nics[${index}]`;
    if (typeof nic.tapName !== "string" || nic.tapName.length > MAX_TAP_NAME_LENGTH || !TAP_PATTERN.test(nic.tapName))
      invalid(
        vm,
        `${field}.tapName must be 1 to ${MAX_TAP_NAME_LENGTH} letters, digits, '.', '_' or '-', got ${JSON.stringify(nic.tapName)}`,
      );
    if (typeof nic.mac !== "string" || !MAC_PATTERN.test(nic.mac))
      invalid(
        vm,
        `${field}.mac must be six lower-case hex pairs like 52:54:00:12:34:56, got ${JSON.stringify(nic.mac)}`,
      );
    if ((parseInt(nic.mac.slice(0, 2), 16) & 1) !== 0)
      invalid(vm, `${field}.mac ${nic.mac} is a multicast address; a NIC needs a unicast one`);
    if (taps.has(nic.tapName)) invalid(vm, `${field}.tapName ${nic.tapName} is used twice`);
    if (macs.has(nic.mac)) invalid(vm, `${field}.mac ${nic.mac} is used twice`);
    taps.add(nic.tapName);
    macs.add(nic.mac);
  });
}

/** The node name of the disk's format node, the one the virtio-blk device uses. */
export const DISK_NODE_NAME = "disk0";

/** QEMU's arguments (without the program name) for `spec`; throws HAVEN_ERR_CONFIG for a bad spec. */
export function qemuCommand(spec: VmSpec): string[] {
  validateVmSpec(spec);
  const { runtime } = spec;
  const args: string[] = [
    // debug-threads names each vCPU thread ("CPU 0/TCG"), which helps whoever reads `ps -T`.
    "-name",
    `guest=${spec.name},debug-threads=on`,
    "-machine",
    "q35",
    // TCG: qemu64 plus RDRAND, so the guest kernel's RNG is ready at once (see test/helpers/guest.ts).
    ...(spec.accelerator === "kvm" ? ["-accel", "kvm", "-cpu", "host"] : ["-accel", "tcg", "-cpu", "qemu64,+rdrand"]),
    "-smp",
    String(spec.vcpus),
    "-m",
    String(spec.memoryMiB),
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    // Start paused: the agent pins vCPUs and checks the VM over QMP before `cont`.
    "-S",
    "-pidfile",
    runtime.pidfile,
    "-chardev",
    `socket,id=qmp,path=${runtime.qmpSocket},server=on,wait=off`,
    "-mon",
    "chardev=qmp,mode=control",
    "-chardev",
    `socket,id=serial0,path=${runtime.serialSocket},server=on,wait=off,logfile=${runtime.serialLog},logappend=on`,
    "-serial",
    "chardev:serial0",
    "-blockdev",
    JSON.stringify({
      driver: "nbd",
      "node-name": `${DISK_NODE_NAME}-nbd`,
      server: { type: "unix", path: spec.disk.socketPath },
      export: spec.disk.exportName,
      "reconnect-delay": spec.disk.reconnectDelaySeconds ?? DEFAULT_DISK_RECONNECT_DELAY_S,
      "open-timeout": spec.disk.openTimeoutSeconds ?? DEFAULT_DISK_OPEN_TIMEOUT_S,
      cache: { direct: true },
    }),
    "-blockdev",
    JSON.stringify({
      driver: "raw",
      "node-name": DISK_NODE_NAME,
      file: `${DISK_NODE_NAME}-nbd`,
      cache: { direct: true },
    }),
    "-device",
    `virtio-blk-pci,id=${DISK_NODE_NAME}-device,drive=${DISK_NODE_NAME},werror=stop,rerror=stop` +
      (spec.kernelBoot ? "" : ",bootindex=1"),
    "-device",
    "pvpanic",
    // A panicked guest stays, paused, for the agent to see (GUEST_PANICKED, run state guest-panicked)
    // and to act on by its policy; QEMU's default would power it off like a clean shutdown.
    "-action",
    "panic=pause",
    "-device",
    "virtio-serial-pci,id=virtio-serial0",
    "-chardev",
    `socket,id=heartbeat,path=${runtime.heartbeatSocket},server=on,wait=off`,
    "-device",
    `virtserialport,bus=virtio-serial0.0,chardev=heartbeat,name=${HEARTBEAT_PORT_NAME}`,
  ];
  spec.nics.forEach((nic, index) => {
    args.push(
      "-netdev",
      `tap,id=net${index},ifname=${nic.tapName},script=no,downscript=no`,
      "-device",
      `virtio-net-pci,id=nic${index},netdev=net${index},mac=${nic.mac}`,
    );
  });
  if (spec.kernelBoot) {
    args.push("-kernel", spec.kernelBoot.kernel);
    if (spec.kernelBoot.initrd !== undefined) args.push("-initrd", spec.kernelBoot.initrd);
    if (spec.kernelBoot.append !== undefined) args.push("-append", spec.kernelBoot.append);
  }
  if (spec.incoming === true) args.push("-incoming", "defer");
  return args;
}
