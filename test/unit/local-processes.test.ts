// A local cluster's processes are found by pid, by the cluster's files on their command lines, relative
// paths resolved against each process's own working directory: never by a process's name.

import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { clusterProcesses, optionValue } from "../../src/cluster/local-processes.js";
import { boundedTest } from "../helpers/bounded-test.js";
import { tempDir } from "../helpers/server-process.js";

const test = boundedTest(20_000);

test("an option's value is read as --flag VALUE or --flag=VALUE", () => {
  assert.equal(optionValue(["agent", "--config", "a.json"], "--config"), "a.json");
  assert.equal(optionValue(["etcd", "--data-dir=/d/etcd", "--name=h1"], "--data-dir"), "/d/etcd");
  assert.equal(optionValue(["etcd", "--data-dirx=/d"], "--data-dir"), undefined);
  assert.equal(optionValue(["agent", "--config"], "--config"), undefined);
});

/** A process that only sleeps, with `args` on its command line, started in `cwd`. */
function sleeper(args: string[], cwd: string): ChildProcess & { pid: number } {
  const child = spawn(process.execPath, ["-e", "setInterval(() => undefined, 60_000)", "--", ...args], {
    cwd,
    stdio: "ignore",
  });
  assert.ok(child.pid !== undefined);
  return child as ChildProcess & { pid: number };
}

async function until(check: () => Promise<boolean>): Promise<void> {
  while (!(await check())) await new Promise((resolve) => setTimeout(resolve, 20));
}

test("relative paths count from the process's working directory: the same command line elsewhere is not the cluster's", async () => {
  const dir = tempDir("haven-local-processes-");
  const clusterDir = join(dir.path, "cluster");
  const elsewhere = join(dir.path, "elsewhere");
  mkdirSync(join(clusterDir, "hosts", "h1"), { recursive: true });
  mkdirSync(elsewhere, { recursive: true });
  const layout = {
    dir: clusterDir,
    agents: [{ name: "h1" }, { name: "h2" }],
    etcd: [{ name: "haven", dataDir: join(clusterDir, "etcd") }],
  };
  const started = [
    sleeper(["agent", "--config", "hosts/h1/agent.json"], clusterDir),
    sleeper(["--name=haven", "--data-dir=etcd"], clusterDir),
    sleeper(["agent", "--config", "hosts/h1/agent.json"], elsewhere),
    sleeper(["cluster", "down", "--dir", clusterDir], elsewhere),
  ];
  const [agent, member] = started;
  try {
    // A child's command line is its own once it has exec'd: wait until the first two are found.
    let found: Awaited<ReturnType<typeof clusterProcesses>> = [];
    await until(async () => {
      found = await clusterProcesses(layout);
      return found.length >= 2;
    });
    const ours = found.filter((each) => started.some((child) => child.pid === each.pid));
    assert.deepEqual(
      ours.map((each) => [each.pid, each.role, each.host ?? null, each.state]).sort(),
      [
        [agent!.pid, "agent", "h1", "running"],
        [member!.pid, "etcd member", null, "running"],
      ].sort(),
    );
    assert.deepEqual(
      (await clusterProcesses(layout, { host: "h1" })).map((each) => each.pid),
      [agent!.pid],
      "host h1's processes: its agent, not the cluster's single member",
    );
    process.kill(agent!.pid, "SIGSTOP");
    await until(async () => (await clusterProcesses(layout, { host: "h1" }))[0]?.state === "frozen");
    process.kill(agent!.pid, "SIGCONT");
  } finally {
    for (const child of started) child.kill("SIGKILL");
    dir.remove();
  }
});
