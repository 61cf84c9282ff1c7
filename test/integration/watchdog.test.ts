// The agent's watchdog (src/agent/watchdog-process.ts), the compiled script run as the agent runs it: a
// fake agent (a small node process) spawns it with its own pid and forwards the lines the test gives
// it; fake VMs are processes whose command line names a guest (`-name guest=NAME,debug-threads=on`, as
// QEMU's does), each in a process group of its own as QEMU is. Every process the test starts is in a
// process group of its own and killed by it (the watchdog is in its fake agent's group), even when a
// test fails.

import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { after, afterEach, describe } from "node:test";
import { fileURLToPath } from "node:url";
import { boundedTest } from "../helpers/bounded-test.js";
import { until } from "../helpers/cluster.js";

const test = boundedTest(30_000);
const WATCHDOG_SCRIPT = fileURLToPath(new URL("../../src/agent/watchdog-process.js", import.meta.url));

/**
 * The fake agent: starts the watchdog (argv: script, timeout, kick interval or 0), prints its pid, kicks
 * it every interval, and forwards each line of its own stdin to it, whole.
 */
const FAKE_AGENT = `
const { spawn } = require("node:child_process");
const { createInterface } = require("node:readline");
const [script, timeoutMs, kickMs] = process.argv.slice(1);
const watchdog = spawn(process.execPath, [script, String(process.pid), timeoutMs], { stdio: ["pipe", "inherit", "inherit"] });
watchdog.stdin.on("error", () => undefined);
process.stdout.write("watchdog " + watchdog.pid + "\\n");
if (Number(kickMs) > 0) setInterval(() => watchdog.stdin.write("kick\\n"), Number(kickMs));
createInterface({ input: process.stdin }).on("line", (line) => watchdog.stdin.write(line + "\\n"));
setInterval(() => undefined, 60_000);
`;

/** Process groups the tests started (each leader's pid); killed after each test. */
const groups = new Set<number>();

function killGroups(): void {
  for (const pgid of groups) {
    try {
      process.kill(-pgid, "SIGKILL");
    } catch {
      // the whole group is gone already
    }
  }
  groups.clear();
}

/** Whether `pid` has exited (a zombie counts as exited: it runs nothing). */
function gone(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
  } catch {
    return true;
  }
}

/** How a child of this test ended; resolves when it has. */
function exitOf(child: ChildProcess): Promise<NodeJS.Signals | number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.signalCode ?? child.exitCode);
  return new Promise((resolve) => child.once("exit", (code, signal) => resolve(signal ?? code)));
}

/** A process whose command line names guest `name`, as QEMU's does, in a process group of its own. */
function fakeVm(name: string): ChildProcess & { pid: number } {
  const child = spawn(
    process.execPath,
    ["-e", "setInterval(() => undefined, 60_000)", "--", "-name", `guest=${name},debug-threads=on`],
    { detached: true, stdio: "ignore" },
  );
  assert.ok(child.pid !== undefined);
  groups.add(child.pid);
  return child as ChildProcess & { pid: number };
}

interface FakeAgent {
  readonly child: ChildProcess & { pid: number };
  readonly watchdogPid: number;
  /** Everything the watchdog logged so far. */
  log(): string;
  send(...lines: string[]): void;
}

async function fakeAgent(timeoutMs: number, kickMs: number): Promise<FakeAgent> {
  const child = spawn(process.execPath, ["-e", FAKE_AGENT, WATCHDOG_SCRIPT, String(timeoutMs), String(kickMs)], {
    detached: true,
    stdio: ["pipe", "pipe", "pipe"],
  });
  assert.ok(child.pid !== undefined);
  groups.add(child.pid);
  child.stdin!.on("error", () => undefined);
  let log = "";
  child.stderr!.on("data", (chunk: Buffer) => (log += chunk.toString("utf8")));
  let out = "";
  const watchdogPid = await new Promise<number>((resolve, reject) => {
    child.stdout!.on("data", (chunk: Buffer) => {
      out += chunk.toString("utf8");
      const match = /^watchdog (\d+)\n/.exec(out);
      if (match) resolve(Number(match[1]));
    });
    child.once("exit", () => reject(new Error(`the fake agent exited: ${log}`)));
  });
  return {
    child: child as ChildProcess & { pid: number },
    watchdogPid,
    log: () => log,
    send: (...lines) => child.stdin!.write(lines.map((line) => `${line}\n`).join("")),
  };
}

/**
 * Waits until the watchdog has read every line sent before a last "not-a-message" line: it reads in
 * order and logs that one.
 */
async function readAll(agent: FakeAgent): Promise<void> {
  await until("the watchdog to read every line", async () => (/"not-a-message"/.test(agent.log()) ? true : undefined));
}

describe("the watchdog fences the agent and its VMs", () => {
  afterEach(killGroups);
  after(killGroups);

  test("an agent that stops kicking is killed, and every VM it tracks with it", async () => {
    const agent = await fakeAgent(500, 50);
    const vms = [fakeVm("vm1"), fakeVm("vm2")];
    agent.send(...vms.map((vm, i) => `vm +${vm.pid} vm${i + 1}`), "not-a-message");
    await readAll(agent);
    process.kill(agent.child.pid, "SIGSTOP");
    assert.equal(await exitOf(agent.child), "SIGKILL");
    for (const vm of vms) assert.equal(await exitOf(vm), "SIGKILL");
    assert.match(agent.log(), /watchdog: agent \d+ silent for \d+ ms; killing it \(fence\)/);
    for (const [i, vm] of vms.entries())
      assert.match(agent.log(), new RegExp(`killed VM vm${i + 1}'s QEMU \\(pid ${vm.pid}\\): agent \\d+ hung`));
    await until("the watchdog to exit", async () => (gone(agent.watchdogPid) ? true : undefined));
  });

  test("an agent killed with kill -9 leaves no VM running: the watchdog's stdin ends without bye", async () => {
    // A timeout far beyond the test's own: only the end of stdin can make the watchdog act here.
    const agent = await fakeAgent(120_000, 50);
    const vms = [fakeVm("web1"), fakeVm("web2")];
    const stopped = fakeVm("web3");
    agent.send(...vms.map((vm, i) => `vm +${vm.pid} web${i + 1}`), `vm +${stopped.pid} web3`, `vm -${stopped.pid}`);
    agent.send("not-a-message");
    await readAll(agent);
    process.kill(agent.child.pid, "SIGKILL");
    for (const vm of vms) assert.equal(await exitOf(vm), "SIGKILL");
    await until("the watchdog to exit", async () => (gone(agent.watchdogPid) ? true : undefined));
    assert.match(
      agent.log(),
      /killed VM web1's QEMU \(pid \d+\): the agent closed the watchdog's stdin without saying bye/,
    );
    assert.equal(stopped.exitCode, null, "an untracked VM is left alone");
    assert.equal(stopped.signalCode, null);
  });

  test("bye, then the end of stdin: the watchdog exits and kills nothing", async () => {
    const agent = await fakeAgent(500, 50);
    const vm = fakeVm("db1");
    agent.send(`vm +${vm.pid} db1`, "bye");
    agent.child.stdin!.end();
    await until("the watchdog to exit", async () => (gone(agent.watchdogPid) ? true : undefined));
    assert.ok(!gone(agent.child.pid), "the agent still runs");
    assert.ok(!gone(vm.pid), "its VM still runs");
    assert.doesNotMatch(agent.log(), /killed/);
    assert.match(agent.log(), /stopped cleanly with VMs still tracked/);
  });

  test("a tracked pid whose command line no longer names its VM is not killed (a reused pid)", async () => {
    const agent = await fakeAgent(120_000, 50);
    const reused = fakeVm("someone-else");
    const real = fakeVm("app1");
    agent.send(`vm +${reused.pid} app0`, `vm +${real.pid} app1`, "not-a-message");
    await readAll(agent);
    process.kill(agent.child.pid, "SIGKILL");
    assert.equal(await exitOf(real), "SIGKILL");
    await until("the watchdog to exit", async () => (gone(agent.watchdogPid) ? true : undefined));
    assert.ok(!gone(reused.pid), "the process that reused the pid still runs");
    assert.match(agent.log(), new RegExp(`not killing pid ${reused.pid}: its command line no longer names VM app0`));
  });

  test("lines that are not watchdog messages are ignored and logged; the good ones still count", async () => {
    const agent = await fakeAgent(120_000, 50);
    const vm = fakeVm("ok1");
    const bad = [
      "hello",
      "vm +abc ok1",
      "vm +1 init",
      "vm -0",
      `vm +${vm.pid}`,
      `vm +${vm.pid} two words`,
      `vm +${vm.pid} bad,name`,
      "KICK",
      "x".repeat(10_000),
    ];
    agent.send(...bad, `vm +${vm.pid} ok1`, "last-line");
    await until("the watchdog to read every line", async () => (/last-line/.test(agent.log()) ? true : undefined));
    for (const line of bad.slice(0, -1))
      assert.ok(agent.log().includes(`ignored a line that is not a watchdog message: ${JSON.stringify(line)}`), line);
    assert.match(agent.log(), /ignored a line longer than 256 bytes/);
    assert.ok(!gone(agent.child.pid), "bad lines kill nothing");
    process.kill(agent.child.pid, "SIGKILL");
    assert.equal(await exitOf(vm), "SIGKILL");
  });
});
