// haven-test, the built-in test image, under QemuProcess with Haven's own device model (TCG, 2 vCPUs,
// 256 MiB, the disk an NBD unix socket served by qemu-nbd from a copy of haven-test.raw). The image
// boots with its own bootloader (SeaBIOS, syslinux from the disk), counts boot 1 and sees the spec's
// vCPUs and memory; its heartbeat arrives once a second on the heartbeat socket and stops while the
// console freezes it; system_powerdown powers it off; the next boot from the same disk counts 2 and
// reads back a file the first boot wrote; direct kernel boot of the same image counts 3; a kernel panic
// typed on the console reaches QEMU through pvpanic and the guest does not reboot. The time from
// spawning QEMU to `haven-test: ready` is reported for both boot modes. Every process the test starts
// (qemu-nbd, QEMU) is stopped by its pid.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { spawn, type ChildProcess } from "node:child_process";
import { copyFile, mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { QemuProcess } from "../../src/vm/qemu-process.js";
import type { VmKernelBoot, VmRuntimePaths, VmSpec } from "../../src/vm/qemu-command.js";
import { createRuntimeDir } from "../../src/vm/runtime-dir.js";
import { haveTool } from "../helpers/server-process.js";
import {
  READY_PATTERN,
  SerialConsole,
  directKernelBoot,
  ensureTestImage,
  type TestImage,
} from "../helpers/test-image.js";

const TOOLS = ["qemu-system-x86_64", "qemu-nbd", "busybox", "cpio", "mkfs.vfat", "mcopy", "syslinux", "sfdisk"];
const missing = TOOLS.filter((tool) => !haveTool(tool));

const VCPUS = 2;
const MEMORY_MIB = 256;
const EXPORT_NAME = "haven-test";
/**
 * From spawn to `haven-test: ready` under TCG on 2 host CPUs: ~10-11 s from the disk, ~6.5 s with
 * direct boot; three times that when other jobs load the machine.
 */
const BOOT_TIMEOUT_MS = 90_000;
const COMMAND_TIMEOUT_MS = 10_000;
const POWERDOWN_TIMEOUT_MS = 20_000;
const SOCKET_WAIT_MS = 10_000;
const PANIC_TIMEOUT_MS = 20_000;
/** How long a frozen heartbeat is watched for a beat that should not come. */
const FROZEN_WATCH_MS = 3_000;

/** Waits (bounded) until `path` is a socket, or rejects if `child` exits first. */
async function waitForSocket(path: string, child: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`qemu-nbd exited before ${path}`);
    if (
      await stat(path).then(
        (stats) => stats.isSocket(),
        () => false,
      )
    )
      return;
    if (Date.now() > deadline) throw new Error(`no socket ${path} within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Stops `child` by its pid: SIGTERM, then SIGKILL if it is still there after `graceMs`. */
async function stopChild(child: ChildProcess, graceMs: number): Promise<void> {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  process.kill(child.pid, "SIGTERM");
  let timer: NodeJS.Timeout | undefined;
  const gone = await Promise.race([
    exited.then(() => true),
    new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), graceMs))),
  ]);
  clearTimeout(timer);
  if (!gone && child.exitCode === null && child.signalCode === null) {
    process.kill(child.pid, "SIGKILL");
    await exited;
  }
}

interface Heartbeat {
  readonly boot: number;
  readonly seq: number;
  readonly atMs: number;
}

/** A client of the heartbeat socket that parses each line the guest sends. */
class HeartbeatListener {
  readonly beats: Heartbeat[] = [];
  /** Lines that are not "heartbeat boot=N seq=M". */
  readonly malformed: string[] = [];
  private readonly socket: Socket;
  private partial = "";
  private onBeat: (() => void) | undefined;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      const lines = (this.partial + chunk).split("\n");
      this.partial = lines.pop() ?? "";
      for (const line of lines) {
        const match = /^heartbeat boot=(\d+) seq=(\d+)$/.exec(line);
        if (match) this.beats.push({ boot: Number(match[1]), seq: Number(match[2]), atMs: Date.now() });
        else this.malformed.push(line);
      }
      this.onBeat?.();
    });
  }

  static connect(path: string): Promise<HeartbeatListener> {
    return new Promise((resolve, reject) => {
      const socket = connect(path);
      socket.once("error", reject);
      socket.once("connect", () => {
        socket.off("error", reject);
        socket.on("error", () => undefined); // a closed VM ends the stream; the test checks the beats
        resolve(new HeartbeatListener(socket));
      });
    });
  }

  /** Resolves once `count` beats have arrived in all; rejects after `timeoutMs`. */
  waitForBeats(count: number, timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.onBeat = undefined;
        reject(new Error(`${this.beats.length} heartbeats arrived, not ${count}, within ${timeoutMs} ms`));
      }, timeoutMs);
      this.onBeat = () => {
        if (this.beats.length < count) return;
        this.onBeat = undefined;
        clearTimeout(timer);
        resolve();
      };
      this.onBeat();
    });
  }

  close(): void {
    this.socket.destroy();
  }
}

describe(
  "haven-test, the built-in test image, in a Haven VM under TCG",
  { timeout: 240_000, skip: missing.length > 0 && `missing ${missing.join(", ")}` },
  () => {
    let dir: string;
    let image: TestImage;
    let nbd: ChildProcess | undefined;
    let nbdSocket: string;
    let runtime: VmRuntimePaths;
    const vms: QemuProcess[] = [];
    const closers: Array<{ close(): void }> = [];
    /** The VM and console of the boot under test. */
    let vm: QemuProcess;
    let serial: SerialConsole;

    before(async () => {
      image = await ensureTestImage();
      dir = await mkdtemp(join(tmpdir(), "haven-test-image-"));
      const disk = join(dir, "haven-test.raw");
      await copyFile(image.disk, disk);
      nbdSocket = join(dir, "nbd.sock");
      // --persistent: one server for every boot, as a volume's endpoint outlives its VM.
      const server = spawn(
        "qemu-nbd",
        ["--socket", nbdSocket, "--format", "raw", "--export-name", EXPORT_NAME, "--persistent", disk],
        { stdio: ["ignore", "ignore", "inherit"] },
      );
      nbd = server;
      await waitForSocket(nbdSocket, server, SOCKET_WAIT_MS);
      runtime = await createRuntimeDir(join(dir, "vm"));
    });

    after(async () => {
      for (const closer of closers) closer.close();
      for (const started of vms) {
        if (started.hasExited) continue;
        process.kill(started.pid, "SIGKILL");
        await started.exited;
      }
      if (nbd) await stopChild(nbd, 5_000);
      if (dir) await rm(dir, { recursive: true, force: true });
    });

    function spec(kernelBoot: VmKernelBoot | undefined): VmSpec {
      return {
        name: "haven-test",
        vcpus: VCPUS,
        memoryMiB: MEMORY_MIB,
        accelerator: "tcg",
        disk: { socketPath: nbdSocket, exportName: EXPORT_NAME },
        ...(kernelBoot ? { kernelBoot } : {}),
        nics: [],
        runtime,
      };
    }

    /** Starts the VM, waits for its boot count and `haven-test: ready`; returns the count and the boot time. */
    async function boot(kernelBoot?: VmKernelBoot): Promise<{ bootCount: number; readyMs: number }> {
      const spawnedAt = Date.now();
      vm = await QemuProcess.start({ spec: spec(kernelBoot), startTimeoutMs: SOCKET_WAIT_MS });
      vms.push(vm);
      serial = await SerialConsole.connect(runtime.serialSocket);
      closers.push(serial);
      const count = await serial.waitFor(/boot-count=(\d+)\n/, BOOT_TIMEOUT_MS);
      await serial.waitFor(READY_PATTERN, BOOT_TIMEOUT_MS);
      return { bootCount: Number(count[1]), readyMs: Date.now() - spawnedAt };
    }

    /** Powers the guest off with the ACPI power button (system_powerdown) and waits for QEMU's exit. */
    async function powerOff(): Promise<void> {
      const outcome = await vm.stop({ powerdownTimeoutMs: POWERDOWN_TIMEOUT_MS, quitTimeoutMs: 5_000 });
      assert.equal(outcome, "powerdown", "the guest powers off on the ACPI power button");
      assert.equal((await vm.exited).code, 0);
      serial.close();
    }

    it("boots from its own disk through SeaBIOS and syslinux, counts boot 1, and sees the spec's vCPUs and memory", async (t) => {
      const { bootCount, readyMs } = await boot();
      t.diagnostic(`boot from disk (syslinux): spawn to ready ${readyMs} ms`);
      assert.equal(bootCount, 1);
      assert.match(await readFile(runtime.serialLog, "utf8"), /SYSLINUX/, "syslinux ran from the disk");
      const facts = /haven-test: nproc=(\d+) memtotal-kb=(\d+)/.exec(serial.output);
      assert.ok(facts, "the guest reports nproc and MemTotal");
      assert.equal(Number(facts[1]), VCPUS);
      const memTotalKiB = Number(facts[2]);
      // MemTotal is RAM less what firmware and kernel keep: within 25% below the spec's size.
      assert.ok(memTotalKiB <= MEMORY_MIB * 1024 && memTotalKiB > MEMORY_MIB * 1024 * 0.75, `MemTotal ${memTotalKiB}`);

      // Its HTTP server answers on port 80 (from inside: the test VM has no NIC).
      serial.type('echo "http=$(wget -qO- http://127.0.0.1/boot-count) $(wget -qO- http://127.0.0.1/health)"');
      await serial.waitFor(/http=1 ok/, COMMAND_TIMEOUT_MS);
      serial.type('echo haven-first-boot >/data/f && sync && echo "wrote=$((40 + 2))"');
      await serial.waitFor(/wrote=42/, COMMAND_TIMEOUT_MS);
    });

    it("sends a heartbeat every second on the heartbeat socket, and none while frozen", async () => {
      const heartbeat = await HeartbeatListener.connect(runtime.heartbeatSocket);
      closers.push(heartbeat);
      await heartbeat.waitForBeats(3, 5_000);
      const [first, second, third] = heartbeat.beats.slice(-3) as [Heartbeat, Heartbeat, Heartbeat];
      assert.deepEqual(
        [first, second, third].map((beat) => beat.boot),
        [1, 1, 1],
      );
      assert.deepEqual([second.seq, third.seq], [first.seq + 1, first.seq + 2], "seq counts up");
      // Beats sent before the test connected may arrive at once; the last one came after a second.
      const intervalMs = third.atMs - second.atMs;
      assert.ok(intervalMs > 500 && intervalMs < 2_500, `heartbeat interval ${intervalMs} ms`);

      serial.type('touch /run/heartbeat.frozen && echo "frozen=$((1 + 1))"');
      await serial.waitFor(/frozen=2/, COMMAND_TIMEOUT_MS);
      // A beat already on its way when the file appeared may still arrive; none after it.
      const atFreeze = heartbeat.beats.length;
      await new Promise((resolve) => setTimeout(resolve, FROZEN_WATCH_MS));
      assert.ok(heartbeat.beats.length <= atFreeze + 1, `${heartbeat.beats.length - atFreeze} beats while frozen`);

      const beforeThaw = heartbeat.beats.length;
      const lastSeq = heartbeat.beats.at(-1)?.seq ?? 0;
      serial.type("rm /run/heartbeat.frozen");
      await heartbeat.waitForBeats(beforeThaw + 1, 5_000);
      assert.equal(heartbeat.beats[beforeThaw]?.seq, lastSeq + 1, "seq goes on after a freeze");
      assert.deepEqual(heartbeat.malformed, []);
      heartbeat.close();
    });

    it("powers off on system_powerdown; the next boot from the disk counts 2 and reads the file the first wrote", async (t) => {
      await powerOff();
      const { bootCount, readyMs } = await boot();
      t.diagnostic(`boot from disk (syslinux), second: spawn to ready ${readyMs} ms`);
      assert.equal(bootCount, 2);
      serial.type('echo "file=$(cat /data/f)"');
      await serial.waitFor(/file=haven-first-boot\n/, COMMAND_TIMEOUT_MS);
    });

    it("direct kernel boot of the same image counts the next boot", async (t) => {
      await powerOff();
      const { bootCount, readyMs } = await boot(directKernelBoot(image));
      t.diagnostic(`direct kernel boot: spawn to ready ${readyMs} ms`);
      assert.equal(bootCount, 3);
      serial.type('echo "file=$(cat /data/f)"');
      await serial.waitFor(/file=haven-first-boot\n/, COMMAND_TIMEOUT_MS);
    });

    it("a kernel panic typed on the console of that boot reaches QEMU as GUEST_PANICKED through pvpanic, and the guest does not reboot", async (t) => {
      // The direct boot of the test before.
      const events: Array<{ event: string; data?: unknown }> = [];
      let sawPanic = (): void => undefined;
      const panicked = new Promise<void>((resolve) => (sawPanic = resolve));
      const stopListening = vm.qmp.onEvent((event) => {
        events.push(event);
        if (event.event === "GUEST_PANICKED") sawPanic();
      });
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<void>((_resolve, reject) => {
        timer = setTimeout(
          () => reject(new Error(`no GUEST_PANICKED within ${PANIC_TIMEOUT_MS} ms`)),
          PANIC_TIMEOUT_MS,
        );
      });
      try {
        serial.type("echo c >/proc/sysrq-trigger");
        await Promise.race([panicked, timedOut]);
        // What QEMU does next is its -action panic= policy (7.2's default: shut the VM down); the
        // guest itself only waits (panic=0). Either way the VM ends here without a reset.
        const outcome = await vm.stop({ powerdownTimeoutMs: 1_000, quitTimeoutMs: 5_000 });
        assert.notEqual(outcome, "killed");
      } finally {
        clearTimeout(timer);
        stopListening();
      }
      const panic = events.find((event) => event.event === "GUEST_PANICKED");
      t.diagnostic(`GUEST_PANICKED ${JSON.stringify(panic?.data)}`);
      assert.deepEqual(
        events.filter((event) => event.event === "RESET").map((event) => event.event),
        [],
        "the guest does not reboot after its panic",
      );
      assert.match(serial.output, /Kernel panic/);
      serial.close();
    });
  },
);
