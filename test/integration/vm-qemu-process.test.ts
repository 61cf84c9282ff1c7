// QemuProcess with the repository's test guest under TCG with 2 vCPUs, its disk served by qemu-nbd
// on a unix socket: after start the VM is running and the guest boots (its marker reaches the
// serial log), QEMU has two vCPU threads, each pinned to its host CPU (read back from
// /proc/PID/task/TID/status), the pidfile's pid is trusted, and stop ends QEMU with nothing left
// running. A hung QEMU is killed by its pid once powerdown and quit time out; a new start in its
// directory is not fooled by what it left; a second start of a running VM is refused. A QEMU that
// cannot open its disk fails start and leaves nothing behind. Every process the test starts is
// stopped by its pid.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, readFile, readdir, rm, stat, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { QemuProcess } from "../../src/vm/qemu-process.js";
import { HavenError, hasCode } from "../../src/core/errors.js";
import type { VmRuntimePaths, VmSpec } from "../../src/vm/qemu-command.js";
import { commandLineNamesVm, createRuntimeDir, processCommandLine, trustedPid } from "../../src/vm/runtime-dir.js";
import { ensureGuest, type GuestImage } from "../helpers/guest.js";
import { haveTool } from "../helpers/server-process.js";

const QEMU = "qemu-system-x86_64";
const missing = [QEMU, "qemu-nbd", "taskset"].filter((tool) => !haveTool(tool));

async function waitForSocket(path: string, child: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`qemu-nbd exited before ${path}`);
    try {
      if ((await stat(path)).isSocket()) return;
    } catch {
      // not there yet
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${path}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function cpusAllowed(pid: number, tid: number): Promise<string> {
  const status = await readFile(`/proc/${pid}/task/${tid}/status`, "utf8");
  const line = status.split("\n").find((l) => l.startsWith("Cpus_allowed_list:"));
  return (line ?? "").split(":")[1]?.trim() ?? "";
}

/** Pids whose command line names VM `vmName` (read from /proc; nothing is killed by name). */
async function processesNaming(vmName: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^[0-9]+$/.test(entry)) continue;
    const argv = await processCommandLine(Number(entry)).catch(() => undefined);
    if (argv && commandLineNamesVm(argv, vmName)) pids.push(Number(entry));
  }
  return pids;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe(
  "QEMU process with the test guest",
  { timeout: 300_000, skip: missing.length > 0 && `missing ${missing.join(", ")}` },
  () => {
    let dir: string;
    let nbd: ChildProcess | undefined;
    let nbdSocket: string;
    let guest: GuestImage;
    const vms: QemuProcess[] = [];

    before(async () => {
      dir = await mkdtemp(join(tmpdir(), "haven-vm-process-"));
      guest = await ensureGuest();
      const disk = join(dir, "disk.raw");
      await writeFile(disk, Buffer.alloc(0));
      await truncate(disk, 64 * 1024 * 1024);
      nbdSocket = join(dir, "nbd.sock");
      // --shared: each test's QEMU is a client of its own.
      const server = spawn("qemu-nbd", ["-f", "raw", "-k", nbdSocket, "-x", "vol", "-t", "--shared=4", disk], {
        stdio: ["ignore", "ignore", "pipe"],
      });
      nbd = server;
      await waitForSocket(nbdSocket, server, 10_000);
    });

    after(async () => {
      for (const vm of vms) if (!vm.hasExited) process.kill(vm.pid, "SIGKILL");
      if (nbd?.pid !== undefined && nbd.exitCode === null && nbd.signalCode === null) process.kill(nbd.pid, "SIGKILL");
      await rm(dir, { recursive: true, force: true });
    });

    function spec(name: string, runtime: VmRuntimePaths, diskSocket = nbdSocket): VmSpec {
      return {
        name,
        vcpus: 2,
        memoryMiB: 256,
        accelerator: "tcg",
        disk: { socketPath: diskSocket, exportName: "vol" },
        kernelBoot: {
          kernel: guest.kernel,
          initrd: guest.initramfs,
          append: "console=ttyS0 panic=-1 quiet haven.test=shell",
        },
        nics: [],
        runtime,
      };
    }

    it("runs after cont with two vCPU threads pinned to their CPUs, and stops with nothing left running", async () => {
      const runtimeDir = join(dir, "vms", "guest-1");
      const runtime = await createRuntimeDir(runtimeDir);
      const started = await QemuProcess.start({
        spec: spec("guest-1", runtime),
        vcpuHostCpus: [0, 1],
        startTimeoutMs: 60_000,
      });
      vms.push(started);

      const status = (await started.qmp.execute("query-status")) as { status: string; running: boolean };
      assert.equal(status.status, "running");
      assert.equal(status.running, true);

      assert.equal(started.vcpuThreads.length, 2);
      const threadIds = new Set(started.vcpuThreads.map((t) => t.threadId));
      assert.equal(threadIds.size, 2);
      for (const vcpu of started.vcpuThreads) {
        assert.equal(await cpusAllowed(started.pid, vcpu.threadId), String(vcpu.cpuIndex));
      }
      assert.equal(await trustedPid(runtimeDir, "guest-1"), started.pid);
      assert.equal(await trustedPid(runtimeDir, "guest-2"), undefined);

      // The guest really runs: its init prints its first marker on the serial console (logged).
      const deadline = Date.now() + 120_000;
      while (!(await readFile(runtime.serialLog, "utf8").catch(() => "")).includes("HAVEN-TEST: booted")) {
        assert.ok(Date.now() < deadline, "the guest printed no boot marker within 120 s");
        assert.equal(started.hasExited, false, "QEMU exited while the guest booted");
        await new Promise((r) => setTimeout(r, 100));
      }

      // The test guest's shell ignores the ACPI power button: stop goes on to quit.
      const outcome = await started.stop({ powerdownTimeoutMs: 2_000, quitTimeoutMs: 10_000 });
      assert.ok(outcome === "powerdown" || outcome === "quit", outcome);
      const exit = await started.exited;
      assert.equal(exit.code, 0);
      assert.equal(alive(started.pid), false, "QEMU is gone");
      assert.equal(await trustedPid(runtimeDir, "guest-1"), undefined);
      assert.equal(await started.stop(), "already-exited");
    });

    it("a hung QEMU is killed by its pid after powerdown and quit time out; a restart is not fooled by its leftovers, and a second start is refused", async () => {
      const runtimeDir = join(dir, "vms", "guest-3");
      const runtime = await createRuntimeDir(runtimeDir);
      const started = await QemuProcess.start({
        spec: spec("guest-3", runtime),
        startTimeoutMs: 60_000,
        qmpCommandTimeoutMs: 500,
      });
      vms.push(started);
      process.kill(started.pid, "SIGSTOP"); // hung: QMP gets no reply
      const outcome = await started.stop({ powerdownTimeoutMs: 500, quitTimeoutMs: 500 });
      assert.equal(outcome, "killed");
      assert.equal((await started.exited).signal, "SIGKILL");
      assert.equal(alive(started.pid), false);

      // The killed QEMU left its pidfile and sockets: a new start in the same directory is not fooled.
      const again = await QemuProcess.start({ spec: spec("guest-3", runtime), startTimeoutMs: 60_000 });
      vms.push(again);
      assert.equal(await trustedPid(runtimeDir, "guest-3"), again.pid);
      // A VM never runs twice: a second start while it runs is refused.
      await assert.rejects(
        QemuProcess.start({ spec: spec("guest-3", runtime), startTimeoutMs: 60_000 }),
        (error: unknown) => hasCode(error, "HAVEN_ERR_CONFLICT") && /already running/.test(String(error)),
      );
      assert.equal(alive(again.pid), true);
      assert.notEqual(await again.stop({ powerdownTimeoutMs: 500, quitTimeoutMs: 10_000 }), "killed");
    });

    it("a QEMU that cannot open its disk fails start with its log, and nothing is left running", async () => {
      const runtimeDir = join(dir, "vms", "guest-4");
      const runtime = await createRuntimeDir(runtimeDir);
      await assert.rejects(
        QemuProcess.start({ spec: spec("guest-4", runtime, join(dir, "absent.sock")), startTimeoutMs: 30_000 }),
        (error: unknown) => {
          assert.ok(error instanceof HavenError, String(error));
          return true;
        },
      );
      assert.match(await readFile(runtime.qemuLog, "utf8"), /absent\.sock/);
      assert.deepEqual(await processesNaming("guest-4"), []);
    });
  },
);
