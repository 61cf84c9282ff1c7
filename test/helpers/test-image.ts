// Test helper for haven-test, the built-in test image (scripts/build-test-image.sh): builds it, names
// its files, and talks to its serial console.
//
// What the guest does, in both boot modes (its own bootloader, or direct kernel boot of the same
// kernel, initramfs and command line): counts its boots on its disk's data partition and prints
// `boot-count=N`, then `haven-test: nproc=X memtotal-kb=Y`; mounts that partition at /data; sends
// `heartbeat boot=N seq=M` once a second on the heartbeat port, except while /run/heartbeat.frozen
// exists (a client that connects late first gets the beats QEMU held back); gives each NIC
// 10.99.YY.ZZ/16 from its MAC 52:54:00:XX:YY:ZZ and serves /boot-count and /health over HTTP on
// port 80; powers off cleanly on `poweroff` or the ACPI power button; and keeps a root shell on
// ttyS0, announced by `haven-test: ready`, whose prompt is `haven-test# `.
//
// API:
//   ensureTestImage()            build if needed (quick when up to date), resolve the file paths
//   directKernelBoot(image)      the spec's kernelBoot for the same guest without its bootloader
//   SerialConsole.connect(path)  a client of the VM's serial socket (runtime.serialSocket):
//     waitFor(regexp, timeoutMs)   the next match in what the guest printed since the last match
//     type(command)                a command line for the shell
// A console command's output is best matched on text only the output has, not the echoed command
// line: `echo "count=$(cat /data/f)"` echoes `count=$(cat`, and prints `count=<contents>`.

import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { join, resolve } from "node:path";
import type { VmKernelBoot } from "../../src/vm/qemu-command.js";
import { packageRoot } from "../../src/util/repo-root.js";

/** The line the guest prints when its services run and its console shell reads commands. */
export const READY_PATTERN = /haven-test: ready/;
/** The console shell's prompt. */
export const PROMPT = "haven-test# ";

export interface TestImage {
  /** The raw disk: MBR, FAT boot partition with syslinux, ext4 data partition. Boot a copy of it. */
  readonly disk: string;
  /** The kernel for direct kernel boot (the uncompressed PVH vmlinux when the kernel has one). */
  readonly kernel: string;
  readonly initrd: string;
  /** The kernel command line the bootloader passes. */
  readonly cmdline: string;
}

const BUILD_TIMEOUT_MS = 120_000;
let imagePromise: Promise<TestImage> | undefined;

/** Builds the image into $HAVEN_IMAGE_DIR or <repo>/.cache/images if needed and returns its files. */
export function ensureTestImage(): Promise<TestImage> {
  imagePromise ??= buildTestImage().catch((error: unknown) => {
    imagePromise = undefined;
    throw error;
  });
  return imagePromise;
}

function buildTestImage(): Promise<TestImage> {
  const root = packageRoot();
  const outDir = resolve(process.env.HAVEN_IMAGE_DIR ?? join(root, ".cache", "images"));
  return new Promise((resolvePromise, reject) => {
    execFile(
      "bash",
      [join(root, "scripts", "build-test-image.sh"), outDir],
      { cwd: root, timeout: BUILD_TIMEOUT_MS, maxBuffer: 16 * 1024 * 1024 },
      (error, _stdout, stderr) => {
        if (error) {
          reject(new Error(`scripts/build-test-image.sh failed: ${error.message}\n${stderr}`));
          return;
        }
        resolvePromise({
          disk: join(outDir, "haven-test.raw"),
          kernel: join(outDir, "haven-test-kernel"),
          initrd: join(outDir, "haven-test-initrd"),
          cmdline: readFileSync(join(outDir, "haven-test.cmdline"), "utf8").trim(),
        });
      },
    );
  });
}

/** A VM spec's kernelBoot that boots `image` directly: the same guest, its bootloader skipped. */
export function directKernelBoot(image: TestImage): VmKernelBoot {
  return { kernel: image.kernel, initrd: image.initrd, append: image.cmdline };
}

const CONNECT_TIMEOUT_MS = 10_000;
/** What a console keeps of the guest's output; older text is dropped (the serial log has it all). */
const MAX_CONSOLE_CHARS = 1024 * 1024;

interface Waiter {
  readonly pattern: RegExp;
  readonly resolve: (match: RegExpExecArray) => void;
  readonly reject: (error: Error) => void;
  readonly timer: NodeJS.Timeout;
}

/**
 * A client of a VM's serial console socket. It sees what the guest prints after it connects (QEMU's
 * serial log has everything): connect right after QemuProcess.start, before the guest's first line.
 */
export class SerialConsole {
  private readonly socket: Socket;
  private received = "";
  /** Where the next waitFor starts looking in `received`. */
  private cursor = 0;
  private waiter: Waiter | undefined;
  private closedReason: string | undefined;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      this.received += chunk.replace(/\r/g, "");
      if (this.received.length > MAX_CONSOLE_CHARS) {
        const drop = this.received.length - MAX_CONSOLE_CHARS;
        this.received = this.received.slice(drop);
        this.cursor = Math.max(0, this.cursor - drop);
      }
      this.check();
    });
    socket.on("error", (error) => this.closed(`console socket error: ${error.message}`));
    socket.on("close", () => this.closed("the console socket closed (QEMU exited?)"));
  }

  /** Connects to the serial socket at `path`. */
  static connect(path: string, timeoutMs = CONNECT_TIMEOUT_MS): Promise<SerialConsole> {
    return new Promise((resolvePromise, reject) => {
      const socket = connect(path);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`no connection to serial console ${path} within ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once("error", (error) => {
        clearTimeout(timer);
        reject(new Error(`cannot connect to serial console ${path}: ${error.message}`));
      });
      socket.once("connect", () => {
        clearTimeout(timer);
        resolvePromise(new SerialConsole(socket));
      });
    });
  }

  /** Everything received so far (\r removed), up to the last MAX_CONSOLE_CHARS. */
  get output(): string {
    return this.received;
  }

  /**
   * Resolves with the first match of `pattern` in the output after the previous match, and moves
   * past it; rejects after `timeoutMs`, or when the console closes first. One wait at a time.
   */
  waitFor(pattern: RegExp, timeoutMs: number): Promise<RegExpExecArray> {
    if (this.waiter) return Promise.reject(new Error("SerialConsole.waitFor: a wait is already pending"));
    const flags = pattern.flags.replace(/[gy]/g, "");
    const search = new RegExp(pattern.source, flags);
    return new Promise((resolvePromise, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new Error(`no ${pattern} on the serial console within ${timeoutMs} ms; it printed:\n${this.tail()}`));
      }, timeoutMs);
      this.waiter = { pattern: search, resolve: resolvePromise, reject, timer };
      this.check();
      if (this.waiter && this.closedReason !== undefined) this.closed(this.closedReason);
    });
  }

  /** Types `command` and Enter on the console. */
  type(command: string): void {
    if (this.closedReason !== undefined)
      throw new Error(`cannot type ${JSON.stringify(command)}: ${this.closedReason}`);
    this.socket.write(`${command}\n`);
  }

  close(): void {
    this.socket.destroy();
  }

  private check(): void {
    const waiter = this.waiter;
    if (!waiter) return;
    const match = waiter.pattern.exec(this.received.slice(this.cursor));
    if (!match) return;
    this.cursor += match.index + match[0].length;
    this.waiter = undefined;
    clearTimeout(waiter.timer);
    waiter.resolve(match);
  }

  private closed(reason: string): void {
    this.closedReason ??= reason;
    const waiter = this.waiter;
    if (!waiter) return;
    this.waiter = undefined;
    clearTimeout(waiter.timer);
    waiter.reject(new Error(`waiting for ${waiter.pattern}: ${this.closedReason}; it printed:\n${this.tail()}`));
  }

  private tail(chars = 3000): string {
    return this.received.length > chars ? `...${this.received.slice(-chars)}` : this.received;
  }
}
