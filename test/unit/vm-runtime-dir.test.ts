// The VM runtime directory: created (or tightened) to mode 0700 with the files QEMU uses; a
// pidfile's pid is trusted only while /proc/PID/cmdline names this VM, so a stale pidfile whose pid
// is dead, or now belongs to another process, is never trusted.

import assert from "node:assert/strict";
import { after, before } from "node:test";
import { spawn, type ChildProcess } from "node:child_process";
import { chmod, mkdir, mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  commandLineNamesVm,
  createRuntimeDir,
  readPidfile,
  runtimePaths,
  trustedPid,
} from "../../src/vm/runtime-dir.js";
import { boundedTest } from "../helpers/bounded-test.js";

const test = boundedTest(10_000);

let base: string;
const children: ChildProcess[] = [];

before(async () => {
  base = await mkdtemp(join(tmpdir(), "haven-vm-runtime-"));
});
after(async () => {
  for (const child of children) {
    if (child.pid !== undefined && child.exitCode === null && child.signalCode === null)
      process.kill(child.pid, "SIGKILL");
  }
  await rm(base, { recursive: true, force: true });
});

/** A child of ours whose command line carries `-name guest=NAME,...` like a QEMU of that VM. */
async function fakeQemu(vmName: string): Promise<number> {
  const child = spawn(
    process.execPath,
    ["-e", "setTimeout(() => {}, 60000)", "--", "-name", `guest=${vmName},debug-threads=on`, "-S"],
    { stdio: "ignore" },
  );
  children.push(child);
  await new Promise<void>((resolve, reject) => {
    child.once("spawn", resolve);
    child.once("error", reject);
  });
  assert.ok(child.pid !== undefined);
  return child.pid;
}

test("the runtime directory is created with mode 0700, and an existing one is tightened to 0700", async () => {
  const dir = join(base, "vms", "web-1");
  const paths = await createRuntimeDir(dir);
  assert.equal((await stat(dir)).mode & 0o777, 0o700);
  assert.deepEqual(paths, runtimePaths(dir));
  assert.equal(paths.qmpSocket, join(dir, "qmp.sock"));
  assert.equal(paths.serialSocket, join(dir, "serial.sock"));
  assert.equal(paths.serialLog, join(dir, "serial.log"));

  await chmod(dir, 0o755);
  await createRuntimeDir(dir);
  assert.equal((await stat(dir)).mode & 0o777, 0o700);
});

test("a runtime directory path that is a file is refused", async () => {
  const path = join(base, "not-a-dir");
  await writeFile(path, "x");
  await assert.rejects(createRuntimeDir(path));
});

test("a pidfile is read only when it holds one decimal pid", async () => {
  const dir = join(base, "pidfiles");
  await mkdir(dir);
  const file = join(dir, "p");
  assert.equal(await readPidfile(file), undefined, "no pidfile");
  await writeFile(file, "1234\n");
  assert.equal(await readPidfile(file), 1234);
  for (const bad of ["", "abc\n", "-5\n", "0\n", "12 34\n", "9".repeat(100)]) {
    await writeFile(file, bad);
    assert.equal(await readPidfile(file), undefined, JSON.stringify(bad));
  }
});

test("the command line names the VM only through -name guest=NAME or -name NAME, exactly", () => {
  assert.ok(commandLineNamesVm(["qemu", "-name", "guest=web-1,debug-threads=on"], "web-1"));
  assert.ok(commandLineNamesVm(["qemu", "-name", "web-1"], "web-1"));
  assert.ok(!commandLineNamesVm(["qemu", "-name", "guest=web-10,debug-threads=on"], "web-1"));
  assert.ok(!commandLineNamesVm(["qemu", "guest=web-1"], "web-1"));
  assert.ok(!commandLineNamesVm(["qemu", "-name"], "web-1"));
});

test("the pidfile's pid is trusted while its process's command line names this VM", async () => {
  const dir = join(base, "trusted");
  const paths = await createRuntimeDir(dir);
  const pid = await fakeQemu("web-1");
  await writeFile(paths.pidfile, `${pid}\n`);
  assert.equal(await trustedPid(dir, "web-1"), pid);
});

test("a stale pidfile whose pid now belongs to another VM or another process is not trusted", async () => {
  const dir = join(base, "stale");
  const paths = await createRuntimeDir(dir);
  const otherVm = await fakeQemu("web-2");
  await writeFile(paths.pidfile, `${otherVm}\n`);
  assert.equal(await trustedPid(dir, "web-1"), undefined);
  await writeFile(paths.pidfile, `${process.pid}\n`);
  assert.equal(await trustedPid(dir, "web-1"), undefined, "the test runner itself is no QEMU");
});

test("a pidfile naming a dead process, or no pidfile at all, is not trusted", async () => {
  const dir = join(base, "dead");
  const paths = await createRuntimeDir(dir);
  assert.equal(await trustedPid(dir, "web-1"), undefined);
  const child = spawn(process.execPath, ["-e", "", "--", "-name", "guest=web-1"], { stdio: "ignore" });
  children.push(child);
  const pid = child.pid;
  await new Promise((resolve) => child.once("exit", resolve));
  assert.ok(pid !== undefined);
  await writeFile(paths.pidfile, `${pid}\n`);
  assert.equal(await trustedPid(dir, "web-1"), undefined);
});
