// Chooses the accelerator a host's VMs run under: KVM when it really works, TCG otherwise.
//
// The model: /dev/kvm being present and openable is not enough. On some hosts (nested
// virtualization, this project's CI machines) KVM guests hang without an error, so a VM started
// under KVM would look started and never run. The probe therefore boots something: a 512-byte boot
// sector that prints PROBE_MARKER on the first serial port and halts, under `-accel kvm`, and
// expects the marker within a bound (default 3 s; SeaBIOS and the sector take ~0.1 s under a working
// KVM). No marker in time, an open failure, or QEMU refusing KVM all mean TCG, with the reason.
// The probe is bounded end to end: QEMU runs in its own process group and is killed by its pid
// whatever happens, and the wait for its exit is bounded too.

import { spawn } from "node:child_process";
import { constants } from "node:fs";
import { mkdtemp, open, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { errorMessage } from "../core/errors.js";
import type { Accelerator } from "./qemu-command.js";

/** What the probe guest prints on its serial port once it runs. */
export const PROBE_MARKER = "HAVEN-ACCEL-PROBE-OK";
export const DEFAULT_PROBE_TIMEOUT_MS = 3_000;
/** How long to wait for a killed QEMU to be reaped before the probe returns anyway. */
const EXIT_WAIT_MS = 2_000;
/** Output kept from QEMU for the verdict's reason (stderr), in characters. */
const MAX_KEPT_OUTPUT_CHARS = 4096;

export interface AcceleratorVerdict {
  readonly accelerator: Accelerator;
  /** Why: what was tried and what happened, for the operator and the event log. */
  readonly reason: string;
}

export interface ProbeOptions {
  /** The QEMU binary. Default qemu-system-x86_64. */
  readonly qemuBinary?: string;
  /** The KVM device. Default /dev/kvm. */
  readonly kvmDevice?: string;
  /** How long the probe guest has to print its marker. */
  readonly timeoutMs?: number;
}

export interface BootProbeResult {
  readonly ok: boolean;
  readonly reason: string;
  readonly elapsedMs: number;
}

/**
 * The probe guest: a 16-bit boot sector that prints PROBE_MARKER and CR LF on COM1 (port 0x3f8;
 * QEMU's UART sends without setup) and halts with interrupts off.
 */
export function probeBootSector(): Buffer {
  const CODE_AT = 0x7c00;
  const message = Buffer.from(`${PROBE_MARKER}\r\n\0`, "latin1");
  // prettier-ignore
  const code = [
    0xfa,                   // cli
    0xfc,                   // cld
    0x31, 0xc0,             // xor ax, ax
    0x8e, 0xd8,             // mov ds, ax
    0xbe, 0x00, 0x00,       // mov si, message (patched below)
    0xac,                   // next: lodsb
    0x84, 0xc0,             // test al, al
    0x74, 0x06,             // jz done
    0xba, 0xf8, 0x03,       // mov dx, 0x3f8
    0xee,                   // out dx, al
    0xeb, 0xf5,             // jmp next
    0xf4,                   // done: hlt
    0xeb, 0xfd,             // jmp done
  ];
  const messageAddress = CODE_AT + code.length;
  code[7] = messageAddress & 0xff;
  code[8] = messageAddress >> 8;
  const sector = Buffer.alloc(512);
  Buffer.from(code).copy(sector, 0);
  message.copy(sector, code.length);
  sector[510] = 0x55;
  sector[511] = 0xaa;
  return sector;
}

/**
 * Boots the probe sector under `accelerator` and reports whether PROBE_MARKER appeared on the
 * serial port within the timeout. Never throws; QEMU is always killed by its pid.
 */
export async function bootProbe(accelerator: Accelerator, options: ProbeOptions = {}): Promise<BootProbeResult> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_PROBE_TIMEOUT_MS;
  const started = Date.now();
  const elapsed = (): number => Date.now() - started;
  let dir: string | undefined;
  try {
    dir = await mkdtemp(join(tmpdir(), "haven-accel-probe-"));
    const image = join(dir, "probe.img");
    await writeFile(image, probeBootSector());
    const child = spawn(
      options.qemuBinary ?? "qemu-system-x86_64",
      [
        "-name",
        "guest=haven-accel-probe",
        "-machine",
        "pc",
        "-accel",
        accelerator,
        "-m",
        "16",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-drive",
        `file=${image},format=raw,if=ide`,
        "-boot",
        "c",
        "-no-reboot",
      ],
      { stdio: ["ignore", "pipe", "pipe"], detached: true },
    );
    let stdout = "";
    let stderr = "";
    const outcome = await new Promise<BootProbeResult>((resolve) => {
      const finish = (result: BootProbeResult): void => {
        clearTimeout(timer);
        resolve(result);
      };
      const timer = setTimeout(
        () =>
          finish({
            ok: false,
            reason: `the probe guest printed nothing under ${accelerator} within ${timeoutMs} ms (the accelerator hangs)`,
            elapsedMs: elapsed(),
          }),
        timeoutMs,
      );
      child.stdout.setEncoding("latin1");
      child.stderr.setEncoding("utf8");
      child.stdout.on("data", (text: string) => {
        stdout = (stdout + text).slice(-MAX_KEPT_OUTPUT_CHARS);
        if (stdout.includes(PROBE_MARKER))
          finish({
            ok: true,
            reason: `the probe guest ran under ${accelerator} in ${elapsed()} ms`,
            elapsedMs: elapsed(),
          });
      });
      child.stderr.on("data", (text: string) => {
        stderr = (stderr + text).slice(-MAX_KEPT_OUTPUT_CHARS);
      });
      child.once("error", (error) =>
        finish({ ok: false, reason: `QEMU did not start: ${error.message}`, elapsedMs: elapsed() }),
      );
      child.once("exit", (code, signal) =>
        finish({
          ok: false,
          reason: `QEMU exited (${code ?? signal}) under ${accelerator} before the probe guest ran: ${stderr.trim() || "no message"}`,
          elapsedMs: elapsed(),
        }),
      );
    });
    await killAndReap(
      child.pid,
      () => child.exitCode !== null || child.signalCode !== null,
      (listener) => child.once("exit", listener),
    );
    child.stdout.destroy();
    child.stderr.destroy();
    return outcome;
  } catch (error) {
    return { ok: false, reason: `the probe failed: ${errorMessage(error)}`, elapsedMs: elapsed() };
  } finally {
    if (dir !== undefined) await rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
}

/** Sends SIGKILL to `pid` unless it has exited, then waits (bounded) for its exit. */
async function killAndReap(
  pid: number | undefined,
  exited: () => boolean,
  onExit: (listener: () => void) => void,
): Promise<void> {
  if (pid === undefined || exited()) return;
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    return; // already gone
  }
  await new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, EXIT_WAIT_MS);
    onExit(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** Whether `device` opens read-write; the reason if not. */
async function openReadWrite(device: string): Promise<string | undefined> {
  try {
    const handle = await open(device, constants.O_RDWR);
    await handle.close();
    return undefined;
  } catch (error) {
    return `${device} does not open read-write: ${errorMessage(error)}`;
  }
}

/**
 * KVM if `kvmDevice` opens read-write and the probe guest runs under KVM within the timeout,
 * otherwise TCG; the verdict says why. Bounded by about timeoutMs + 2 s; never throws.
 */
export async function chooseAccelerator(options: ProbeOptions = {}): Promise<AcceleratorVerdict> {
  const device = options.kvmDevice ?? "/dev/kvm";
  const openFailure = await openReadWrite(device);
  if (openFailure !== undefined) return { accelerator: "tcg", reason: `TCG: ${openFailure}` };
  const probe = await bootProbe("kvm", options);
  return probe.ok
    ? { accelerator: "kvm", reason: `KVM: ${probe.reason}` }
    : { accelerator: "tcg", reason: `TCG: ${device} opens, but ${probe.reason}` };
}
