// A VM on a real local cluster (etcd, agents, QEMU under TCG, the haven-test image): created with the
// CLI, it boots with the vCPUs and memory it was given; when its host's agent is killed with kill -9,
// the watchdog takes its QEMU down, the other host promotes the disk and boots the VM there, and the
// guest's boot counter (on its replicated disk) has gone up by one.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { clusterUp, type LocalClusterState } from "../../src/cluster/local-cluster.js";
import { packageRoot } from "../../src/util/repo-root.js";
import { TEST_TIMINGS, freeBasePort, stopLocalCluster, until } from "../helpers/cluster.js";
import { ensureTestImage } from "../helpers/test-image.js";

const dir = mkdtempSync(join(tmpdir(), "haven-vm-failover-"));
const context = join(dir, "context.json");
let state: LocalClusterState;

function haven(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [join(packageRoot(), "bin", "haven.js"), ...args],
      { env: { ...process.env, HAVEN_CONTEXT: context }, timeout: 240_000 },
      (error, stdout, stderr) => resolve({ code: error ? Number(error.code ?? 1) : 0, stdout, stderr }),
    );
  });
}

interface VmShow {
  state: string;
  host: string | null;
  status: { run?: { pid: number; serialLog?: string }; startRequest: number } | null;
}

async function show(name: string): Promise<VmShow> {
  const result = await haven("vm", "show", name, "--json");
  assert.equal(result.code, 0, result.stderr);
  return JSON.parse(result.stdout) as VmShow;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

before(async () => {
  const image = await ensureTestImage();
  state = await clusterUp({
    dir,
    hosts: 2,
    basePort: await freeBasePort(),
    timings: { ...TEST_TIMINGS },
    vms: { cpus: "0-1", memory: "1G", imageDir: join(image.disk, ".."), heartbeatTimeoutMs: 15_000 },
  });
  await import("node:fs/promises").then((fs) =>
    fs.writeFile(context, JSON.stringify({ etcd: state.endpoints, clusterDir: dir })),
  );
});

after(async () => {
  await stopLocalCluster(dir, 20_000);
  rmSync(dir, { recursive: true, force: true });
});

test("bad input is refused with the fix, and nothing is left half-made", async () => {
  const cases: [string[], RegExp][] = [
    [["vm", "create", "x", "--vcpus", "1", "--memory", "64M", "--disk", "nope"], /no volume named "nope"/],
    [["vm", "create", "x", "--vcpus", "9", "--memory", "64M", "--disk-size", "64M"], /needs 9 vCPUs/],
    [["vm", "create", "x", "--vcpus", "1", "--memory", "64G", "--disk-size", "64M"], /lacks memory/],
    [["vm", "create", "x", "--vcpus", "1", "--memory", "64M", "--disk-size", "64M", "--cpus", "7"], /CPU 7/],
    [["vm", "create", "x", "--vcpus", "1", "--memory", "64M", "--disk-size", "64M", "--image", "nope.img"], /no image/],
    [["vm", "start", "ghost"], /no VM named "ghost"/],
  ];
  for (const [args, message] of cases) {
    const result = await haven(...args);
    assert.notEqual(result.code, 0, args.join(" "));
    assert.match(result.stderr, message, args.join(" "));
  }
  const volumes = await haven("volume", "list", "--json");
  assert.doesNotMatch(volumes.stdout, /"name": "x"/, "a refused VM leaves no volume behind");
});

test("a VM runs with its vCPUs and memory, and comes back on the other host after kill -9 of its host's agent", async () => {
  const created = await haven(
    "vm",
    "create",
    "web",
    "--vcpus",
    "2",
    "--memory",
    "256M",
    "--disk-size",
    "128M",
    "--image",
    "haven-test",
  );
  assert.equal(created.code, 0, created.stderr);
  const first = await show("web");
  assert.equal(first.state, "running");
  const log = first.status!.run!.serialLog!;
  await until(
    "the guest's first boot",
    async () => (/haven-test: ready/.test(readFileSync(log, "utf8")) ? true : undefined),
    120_000,
  );
  const console1 = readFileSync(log, "utf8");
  assert.match(console1, /boot-count=1\b/);
  assert.match(console1, /nproc=2 /);
  const memTotalKb = Number(/memtotal-kb=(\d+)/.exec(console1)![1]);
  assert.ok(memTotalKb > 150 * 1024 && memTotalKb <= 256 * 1024, `MemTotal ${memTotalKb} kB for 256 MiB`);
  await until(
    "the guest heartbeat",
    async () => {
      const status = (await haven("vm", "show", "web")).stdout;
      return /heartbeat\s+ok/.test(status) ? true : undefined;
    },
    60_000,
  );

  const oldHost = first.host!;
  const oldPid = first.status!.run!.pid;
  const agent = state.agents.find((a) => a.name === oldHost)!;
  process.kill(agent.pid, "SIGKILL");
  await until("the old QEMU gone", async () => (alive(oldPid) ? undefined : true), 30_000);
  const moved = await until(
    "the VM running on the other host",
    async () => {
      const now = await show("web");
      return now.state === "running" && now.host !== oldHost ? now : undefined;
    },
    120_000,
  );
  const log2 = moved.status!.run!.serialLog!;
  await until(
    "the guest's boot on the new host",
    async () => (/boot-count=\d+/.test(readFileSync(log2, "utf8")) ? true : undefined),
    120_000,
  );
  assert.match(readFileSync(log2, "utf8"), /boot-count=2\b/, "the counter on the replicated disk went up by one");
  assert.equal(alive(oldPid), false);
});
