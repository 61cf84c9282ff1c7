// Test helper: builds Haven's tiny QEMU test guest (scripts/build-guest.sh) and
// boots it against an NBD export, returning its "HAVEN-TEST:" console markers.
// Guest scenarios: format-write, read-verify, probe, shell (see the script).

import { execFile, spawn } from "node:child_process";
import { accessSync, constants, existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { packageRoot } from "../../src/util/repo-root.js";

export interface GuestImage {
  /** Kernel to pass to -kernel: the uncompressed PVH vmlinux when available, else the vmlinuz. */
  kernel: string;
  initramfs: string;
}

export interface BootGuestOptions {
  /** Unix socket of the NBD server. */
  nbdSocket?: string;
  /** nbd://host[:port][/export] or nbd+unix:///export?socket=/path. */
  nbdUri?: string;
  /** Export name; overrides one from nbdUri. Empty or absent: the default export. */
  exportName?: string;
  /** Guest scenario (haven.test=): format-write, read-verify, probe, shell. */
  scenario: string;
  /** Kill QEMU and reject after this long. Default 120 000. */
  timeoutMs?: number;
  /** Guest RAM. Default 256. */
  memoryMiB?: number;
  /** Attach the disk read-only. */
  readOnly?: boolean;
  /** Extra kernel command line words. */
  extraAppend?: string;
  /** Extra QEMU arguments. */
  extraQemuArgs?: string[];
}

export interface BootGuestResult {
  /** Everything the guest printed on its serial console (\r removed). */
  output: string;
  /** The "HAVEN-TEST: ..." lines, in order, starting at "HAVEN-TEST:". */
  markers: string[];
  /** QEMU's own stderr. */
  stderr: string;
  durationMs: number;
}

const SCRIPT_REL = join("scripts", "build-guest.sh");

/**
 * Kernel options that only make boot faster under TCG (~0.65 s of ~4 s): skip
 * mitigations, LSMs, audit, crypto self-tests, the X.509 certificate list (module
 * signatures then fail to verify: the modules still load, the kernel is just
 * tainted), TCP cubic and extra UART probing.
 */
const FAST_BOOT_APPEND = [
  "mitigations=off",
  "security=none",
  "audit=0",
  "cryptomgr.notests",
  "8250.nr_uarts=1",
  "tsc=reliable",
  "no_timer_check",
  "random.trust_cpu=on",
  "initcall_blacklist=crypto_kdf108_init,cubictcp_register,load_system_certificate_list",
].join(" ");

/** The repository root (where scripts/build-guest.sh lives). */
export function repoRoot(): string {
  return packageRoot();
}

let guestPromise: Promise<GuestImage> | undefined;

/** Builds the guest if needed (idempotent and quick when up to date) and returns its files. */
export function ensureGuest(): Promise<GuestImage> {
  guestPromise ??= buildGuest().catch((err: unknown) => {
    guestPromise = undefined;
    throw err;
  });
  return guestPromise;
}

function buildGuest(): Promise<GuestImage> {
  const root = repoRoot();
  const outDir = resolve(process.env.HAVEN_GUEST_DIR ?? join(root, ".cache", "guest"));
  return new Promise((resolvePromise, reject) => {
    execFile(
      "bash",
      [join(root, SCRIPT_REL), outDir],
      { cwd: root, maxBuffer: 16 * 1024 * 1024 },
      (err, _stdout, stderr) => {
        if (err) {
          reject(new Error(`scripts/build-guest.sh failed: ${err.message}\n${stderr}`));
          return;
        }
        const vmlinux = join(outDir, "vmlinux");
        resolvePromise({
          kernel: existsSync(vmlinux) ? vmlinux : join(outDir, "vmlinuz"),
          initramfs: join(outDir, "initramfs.img"),
        });
      },
    );
  });
}

/** True when HAVEN_TRY_KVM=1 and /dev/kvm is usable; the default is TCG (KVM guests hang on some hosts). */
export function useKvm(): boolean {
  if (process.env.HAVEN_TRY_KVM !== "1") return false;
  try {
    accessSync("/dev/kvm", constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

type NbdServer = { type: "unix"; path: string } | { type: "inet"; host: string; port: string };

function nbdTarget(opts: BootGuestOptions): { server: NbdServer; exportName: string } | undefined {
  if (opts.nbdSocket !== undefined && opts.nbdUri !== undefined) {
    throw new Error("bootGuest: give nbdSocket or nbdUri, not both");
  }
  if (opts.nbdSocket !== undefined) {
    return {
      server: { type: "unix", path: opts.nbdSocket },
      exportName: opts.exportName ?? "",
    };
  }
  if (opts.nbdUri === undefined) return undefined;
  const url = new URL(opts.nbdUri);
  const fromPath = decodeURIComponent(url.pathname.replace(/^\//, ""));
  const exportName = opts.exportName ?? fromPath;
  if (url.protocol === "nbd+unix:") {
    const path = url.searchParams.get("socket");
    if (!path) throw new Error(`bootGuest: ${opts.nbdUri} has no ?socket=`);
    return { server: { type: "unix", path }, exportName };
  }
  if (url.protocol === "nbd:" || url.protocol === "nbd+tcp:") {
    const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
    return {
      server: { type: "inet", host, port: url.port || "10809" },
      exportName,
    };
  }
  throw new Error(`bootGuest: unsupported NBD URI ${opts.nbdUri} (nbd://, nbd+unix://; no TLS)`);
}

/** Builds the QEMU command line (exported for debugging and for humans: join it and run it). */
export function qemuArgs(guest: GuestImage, opts: BootGuestOptions): string[] {
  if (!/^[A-Za-z0-9._-]+$/.test(opts.scenario)) {
    throw new Error(`bootGuest: bad scenario name ${JSON.stringify(opts.scenario)}`);
  }
  const append = [`console=ttyS0 panic=-1 quiet haven.test=${opts.scenario}`, FAST_BOOT_APPEND, opts.extraAppend ?? ""]
    .join(" ")
    .trim();
  const args = [
    "-machine",
    "q35",
    // TCG: qemu64 plus RDRAND, so the kernel's RNG is ready at once (random.trust_cpu);
    // without it mke2fs's UUID read blocks ~4 s on the kernel gathering jitter entropy.
    ...(useKvm() ? ["-accel", "kvm", "-cpu", "host"] : ["-accel", "tcg", "-cpu", "qemu64,+rdrand"]),
    "-m",
    String(opts.memoryMiB ?? 256),
    "-smp",
    "1",
    "-nodefaults",
    "-display",
    "none",
    "-monitor",
    "none",
    "-serial",
    "stdio",
    "-no-reboot",
    "-kernel",
    guest.kernel,
    "-initrd",
    guest.initramfs,
    "-append",
    append,
  ];
  const target = nbdTarget(opts);
  if (target) {
    const blockdev: Record<string, unknown> = {
      driver: "nbd",
      server: target.server,
      "node-name": "disk0",
      ...(target.exportName ? { export: target.exportName } : {}),
      ...(opts.readOnly ? { "read-only": true } : {}),
    };
    args.push("-blockdev", JSON.stringify(blockdev), "-device", "virtio-blk-pci,drive=disk0");
  }
  args.push(...(opts.extraQemuArgs ?? []));
  return args;
}

/** Extracts the "HAVEN-TEST: ..." lines from console output. */
export function parseMarkers(output: string): string[] {
  const markers: string[] = [];
  for (const line of output.split(/\r?\n/)) {
    const at = line.indexOf("HAVEN-TEST:");
    if (at >= 0) markers.push(line.slice(at).trim());
  }
  return markers;
}

/** The result marker of a scenario: { ok, detail } from "HAVEN-TEST: <scenario> OK|FAIL <detail>". */
export function scenarioResult(markers: string[], scenario: string): { ok: boolean; detail: string } | undefined {
  const prefix = `HAVEN-TEST: ${scenario} `;
  for (const m of markers) {
    if (!m.startsWith(prefix)) continue;
    const rest = m.slice(prefix.length);
    const match = /^(OK|FAIL)(?: (.*))?$/.exec(rest);
    if (match) return { ok: match[1] === "OK", detail: match[2] ?? "" };
  }
  return undefined;
}

function tail(text: string, chars = 3000): string {
  return text.length > chars ? `...${text.slice(-chars)}` : text;
}

/**
 * Boots the guest with the NBD export as its virtio-blk disk, runs `scenario`,
 * and resolves with the console output when QEMU exits (the guest powers off).
 * Rejects if QEMU fails to start, exits non-zero or outlives timeoutMs (then it
 * is killed); the error carries the end of the console output and QEMU's stderr.
 * HAVEN_GUEST_DEBUG=1 echoes the console to stderr and enables guest timing lines.
 */
export async function bootGuest(opts: BootGuestOptions): Promise<BootGuestResult> {
  const guest = await ensureGuest();
  const debug = process.env.HAVEN_GUEST_DEBUG === "1";
  const args = qemuArgs(guest, debug ? { ...opts, extraAppend: `${opts.extraAppend ?? ""} haven.debug=1` } : opts);
  const qemu = process.env.HAVEN_QEMU ?? "qemu-system-x86_64";
  const timeoutMs = opts.timeoutMs ?? 120_000;
  const started = Date.now();

  return new Promise((resolvePromise, reject) => {
    const child = spawn(qemu, args, { stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    let stderr = "";
    let settled = false;
    child.stdout.setEncoding("utf8");
    child.stderr.setEncoding("utf8");
    child.stdout.on("data", (chunk: string) => {
      output += chunk;
      if (debug) process.stderr.write(chunk);
    });
    child.stderr.on("data", (chunk: string) => {
      stderr += chunk;
    });
    const describe = (): string =>
      `scenario ${opts.scenario}; console output tail:\n${tail(output.replace(/\r/g, ""))}\nqemu stderr:\n${tail(stderr)}`;
    const finish = (err: Error | undefined): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err) reject(err);
      else {
        const clean = output.replace(/\r/g, "");
        resolvePromise({
          output: clean,
          markers: parseMarkers(clean),
          stderr,
          durationMs: Date.now() - started,
        });
      }
    };
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      finish(new Error(`guest timed out after ${timeoutMs} ms (killed QEMU); ${describe()}`));
    }, timeoutMs);
    child.on("error", (err) => finish(new Error(`cannot run ${qemu}: ${err.message}`)));
    child.on("close", (code, signal) => {
      if (code === 0) finish(undefined);
      else finish(new Error(`${qemu} exited with ${code ?? signal}; ${describe()}`));
    });
  });
}
