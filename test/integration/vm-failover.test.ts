// A VM on a real local cluster (etcd, agents, QEMU under TCG, the haven-test image): created with the
// CLI, it boots with the vCPUs and memory it was given; when its host's agent is killed with kill -9,
// the watchdog takes its QEMU down, the other host promotes the disk and boots the VM there, and the
// guest's boot counter (on its replicated disk) has gone up by one.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { alive, clusterUp, type LocalClusterState } from "../../src/cluster/local-cluster.js";
import { clusterRevive } from "../../src/cluster/local-hosts.js";
import { packageRoot } from "../../src/util/repo-root.js";
import { TEST_TIMINGS, freeBasePort, stopLocalCluster, until } from "../helpers/cluster.js";
import { SerialConsole, ensureTestImage } from "../helpers/test-image.js";
import {
  LOCAL_CLUSTER_BRIDGE,
  ensureNamespaceNetwork,
  ipv4FromMac,
  macAddress,
  removeNamespaceNetwork,
} from "../../src/vm/network.js";

const dir = mkdtempSync(join(tmpdir(), "haven-vm-failover-"));
const context = join(dir, "context.json");
const namespace = `haven-vmtest-${process.pid}`;
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
  spec: { name: string };
  state: string;
  host: string | null;
  status: {
    run?: { pid: number; serialLog?: string; serialSocket?: string; startedAt: string };
    startRequest: number;
  } | null;
}

async function show(name: string): Promise<VmShow> {
  const result = await haven("vm", "show", name, "--json");
  assert.equal(result.code, 0, result.stderr);
  return JSON.parse(result.stdout) as VmShow;
}

before(async () => {
  const image = await ensureTestImage();
  await ensureNamespaceNetwork({ namespace, bridge: LOCAL_CLUSTER_BRIDGE });
  state = await clusterUp({
    dir,
    hosts: 2,
    basePort: await freeBasePort(),
    timings: { ...TEST_TIMINGS },
    vms: {
      cpus: "0-1",
      memory: "1G",
      imageDir: join(image.disk, ".."),
      heartbeatTimeoutMs: 15_000,
      bootTimeoutMs: 60_000,
      bridge: LOCAL_CLUSTER_BRIDGE,
      netns: namespace,
    },
  });
  await import("node:fs/promises").then((fs) =>
    fs.writeFile(context, JSON.stringify({ etcd: state.endpoints, clusterDir: dir, tls: state.tlsDir })),
  );
});

after(async () => {
  await stopLocalCluster(dir, 20_000);
  await removeNamespaceNetwork(namespace).catch(() => undefined);
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
    [
      ["vm", "create", "x", "--vcpus", "1", "--memory", "64M", "--disk-size", "64M", "--host", "h9"],
      /no host named "h9"/,
    ],
    [
      ["vm", "create", "x", "--vcpus", "1", "--memory", "64M", "--disk", "web", "--host", "h1"],
      /--host goes with --disk-size/,
    ],
  ];
  for (const [args, message] of cases) {
    const result = await haven(...args);
    assert.notEqual(result.code, 0, args.join(" "));
    assert.match(result.stderr, message, args.join(" "));
  }
  const volumes = await haven("volume", "list", "--json");
  assert.doesNotMatch(volumes.stdout, /"name": "x"/, "a refused VM leaves no volume behind");
});

/** The VM as `vm show --json` reports it, once it runs (on another host than `notOn`, when given). */
async function running(name: string, what: string, accept: (vm: VmShow) => boolean = () => true): Promise<VmShow> {
  return until(
    what,
    async () => {
      const vm = await show(name);
      return vm.state === "running" && vm.status?.run !== undefined && accept(vm) ? vm : undefined;
    },
    180_000,
  );
}

/**
 * The boot counter the guest printed in its current run's console log, once it booted. The run is read
 * afresh each time, so a VM restarted again meanwhile is followed rather than waited for in vain.
 */
async function bootCount(vm: VmShow): Promise<number> {
  const text = await until(
    "the guest's boot",
    async () => {
      const now = await show(vm.spec.name);
      const log = now.status?.run?.serialLog ?? vm.status!.run!.serialLog!;
      const content = readFileSync(log, "utf8");
      return /haven-test: ready/.test(content) ? content : undefined;
    },
    180_000,
  );
  return Number(/boot-count=(\d+)/.exec(text)![1]);
}

async function typeOnConsole(vm: VmShow, command: string): Promise<void> {
  const console = await SerialConsole.connect(vm.status!.run!.serialSocket!);
  try {
    console.type(command);
    await new Promise((resolve) => setTimeout(resolve, 300)); // the line reaches QEMU's chardev
  } finally {
    console.close();
  }
}

/** Runs a shell command on the guest's console and resolves with what it printed before a marker. */
async function onConsole(vm: VmShow, command: string): Promise<string> {
  const console = await SerialConsole.connect(vm.status!.run!.serialSocket!);
  try {
    // The marker is computed by the shell, so the echo of the typed line does not match it.
    console.type(`${command}; echo DONE-$((40+2))`);
    const done = await console.waitFor(/DONE-42/, 60_000);
    return done.input.slice(0, done.index);
  } finally {
    console.close();
  }
}

/** The guest's boot counter over its NIC, from inside the cluster's network namespace. */
async function httpBootCount(address: string): Promise<number | undefined> {
  // A node client in the namespace: no dependency on which wget the machine has.
  const client =
    `require("http").get("http://${address}/boot-count", { timeout: 2000 }, (r) => r.pipe(process.stdout))` +
    `.on("timeout", function () { this.destroy(); }).on("error", () => process.exit(1));`;
  const result = await new Promise<{ code: number; stdout: string }>((resolve) =>
    execFile("ip", ["netns", "exec", namespace, process.execPath, "-e", client], { timeout: 10_000 }, (error, stdout) =>
      resolve({ code: error ? 1 : 0, stdout }),
    ),
  );
  return result.code === 0 && /^\d+\s*$/.test(result.stdout) ? Number(result.stdout.trim()) : undefined;
}

async function hostAgentPid(host: string): Promise<number> {
  const state = JSON.parse(readFileSync(join(dir, "cluster.json"), "utf8")) as LocalClusterState;
  return state.agents.find((agent) => agent.name === host)!.pid;
}

test("a VM: its vCPUs pinned, its memory; the HA ladder on real QEMU; kill -9 and SIGSTOP of its host's agent; drain", async (t) => {
  t.after(async () => {
    // What the cluster did, for whoever reads a failure.
    t.diagnostic((await haven("events", "--limit", "80")).stdout);
  });
  const created = await haven(
    "vm",
    "create",
    "web",
    "--vcpus",
    "2",
    "--cpus",
    "0,1",
    "--memory",
    "256M",
    "--disk-size",
    "128M",
    "--image",
    "haven-test",
    "--max-restart",
    "1",
    "--max-relocate",
    "1",
    "--nic",
    "default",
  );
  assert.equal(created.code, 0, created.stderr);
  let vm = await running("web", "the VM running");
  assert.equal(await bootCount(vm), 1);
  const console1 = readFileSync(vm.status!.run!.serialLog!, "utf8");
  assert.match(console1, /nproc=2 /);
  const memTotalKb = Number(/memtotal-kb=(\d+)/.exec(console1)![1]);
  assert.ok(memTotalKb > 150 * 1024 && memTotalKb <= 256 * 1024, `MemTotal ${memTotalKb} kB for 256 MiB`);
  // Each vCPU thread is pinned to its own host CPU.
  const pid = vm.status!.run!.pid;
  const pinned = readdirSync(`/proc/${pid}/task`)
    .map((tid) => ({
      comm: readFileSync(`/proc/${pid}/task/${tid}/comm`, "utf8").trim(),
      allowed: /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync(`/proc/${pid}/task/${tid}/status`, "utf8"))![1],
    }))
    .filter((task) => /^CPU \d+\//.test(task.comm))
    .sort((a, b) => a.comm.localeCompare(b.comm));
  assert.deepEqual(
    pinned.map((task) => task.allowed),
    ["0", "1"],
    JSON.stringify(pinned),
  );
  await until(
    "the guest heartbeat",
    async () => (/heartbeat\s+ok/.test((await haven("vm", "show", "web")).stdout) ? true : undefined),
    60_000,
  );

  // Bad input next to a running VM: its volume, its pinned CPUs.
  const taken = await haven("vm", "create", "other", "--vcpus", "1", "--memory", "64M", "--disk", "web");
  assert.match(taken.stderr, /volume web is already the disk of VM web/);
  // On web's host, CPU 1 is web's: refused there before any volume is made. Anywhere, the new VM's disk
  // goes where the VM has room.
  const pinnedAway = await haven(
    "vm",
    "create",
    "other",
    "--vcpus",
    "1",
    "--memory",
    "64M",
    "--disk-size",
    "16M",
    "--cpus",
    "1",
    "--host",
    vm.host!,
  );
  assert.match(pinnedAway.stderr, new RegExp(`VM other cannot run on ${vm.host}: .*CPU 1: it is pinned to VM web`));
  assert.notEqual(pinnedAway.code, 0);
  const afterRefusal = await haven("volume", "list", "--json");
  assert.doesNotMatch(afterRefusal.stdout, /"name": "other"/, "a refused VM makes no volume");

  // The HA ladder: QEMU killed -> restarted in place; the guest panics -> relocated; its heartbeat stops -> error.
  const firstHost = vm.host!;
  process.kill(pid, "SIGKILL");
  vm = await running("web", "a restart in place", (now) => now.status!.run!.pid !== pid);
  assert.equal(vm.host, firstHost, "restarted in place");
  assert.equal(await bootCount(vm), 2);
  await typeOnConsole(vm, "echo c > /proc/sysrq-trigger");
  vm = await running("web", "a relocation", (now) => now.host !== firstHost);
  assert.equal(await bootCount(vm), 3);
  // On the new host the restarts count again (as Proxmox HA's max_restart does, per node): the heartbeat
  // stops -> restarted there; it stops again -> restarts and relocations are used up: error.
  const relocatedHost = vm.host!;
  const relocatedPid = vm.status!.run!.pid;
  await typeOnConsole(vm, "touch /run/heartbeat.frozen");
  vm = await running("web", "a restart after the heartbeat stopped", (now) => now.status!.run!.pid !== relocatedPid);
  assert.equal(vm.host, relocatedHost);
  assert.equal(await bootCount(vm), 4);
  await typeOnConsole(vm, "touch /run/heartbeat.frozen");
  await until("the VM marked error", async () => ((await show("web")).state === "error" ? true : undefined), 120_000);
  assert.match(
    (await haven("vm", "show", "web")).stdout,
    /heartbeat silent.*1 restart\(s\) and 1 relocation\(s\) used up/s,
  );
  assert.equal(alive(vm.status!.run!.pid), false, "a VM in error does not run");
  assert.equal((await haven("vm", "start", "web")).code, 0, "vm start clears error");
  vm = await running("web", "the VM running again");
  const count = await bootCount(vm);
  assert.equal(count, 5);

  // kill -9 of the VM host's agent: the watchdog takes QEMU down; the other host boots the VM, on the
  // same data (a file written and fsynced just before reads back) and at the same address.
  const address = ipv4FromMac(JSON.parse((await haven("vm", "show", "web", "--json")).stdout).spec.nics[0].mac);
  assert.equal(await until("the guest's HTTP answer", () => httpBootCount(address), 60_000), count);
  await onConsole(vm, "echo fsynced-before-the-kill > /data/probe && sync");
  const oldHost = vm.host!;
  const oldPid = vm.status!.run!.pid;
  process.kill(await hostAgentPid(oldHost), "SIGKILL");
  await until("the old QEMU gone", async () => (alive(oldPid) ? undefined : true), 30_000);
  vm = await running("web", "the VM on the other host", (now) => now.host !== oldHost);
  assert.equal(await bootCount(vm), count + 1, "the counter on the replicated disk went up by one");
  assert.match(await onConsole(vm, "cat /data/probe"), /fsynced-before-the-kill/);
  assert.equal(await until("the guest's HTTP answer there", () => httpBootCount(address), 60_000), count + 1);
  await clusterRevive(dir, oldHost);

  // Drain: the VM is live-migrated to the other host, once the revived host's copy is in sync.
  await until(
    "the revived host's copy in sync",
    async () => {
      const volume = JSON.parse((await haven("volume", "show", "web", "--json")).stdout) as {
        copies: { host: string; state: string }[];
      };
      return volume.copies.every((copy) => copy.state === "in-sync") ? true : undefined;
    },
    120_000,
  );
  const drainedFrom = vm.host!;
  const drained = await haven("host", "drain", drainedFrom);
  assert.equal(drained.code, 0, drained.stderr);
  assert.match(drained.stdout, /VM web\s+live-migrated to/);
  vm = await running("web", "the VM after the drain", (now) => now.host !== drainedFrom);
  // Live-migrated: the same boot (its counter unchanged), its service answering on the new host.
  assert.equal(await until("the guest's HTTP answer after the drain", () => httpBootCount(address), 60_000), count + 1);
  assert.equal((await haven("host", "undrain", drainedFrom)).code, 0);

  // SIGSTOP of the VM host's agent: its watchdog kills it and its QEMU before the lease can expire,
  // so the VM never runs on two hosts: the old QEMU is gone before the new one starts.
  const frozenHost = vm.host!;
  const frozenQemu = vm.status!.run!.pid;
  const agentPid = await hostAgentPid(frozenHost);
  process.kill(agentPid, "SIGSTOP");
  // The last moment the old QEMU was seen alive: it died after it, and before it was seen gone.
  let lastSeenAlive = Date.now();
  await until(
    "the frozen host's QEMU killed by the watchdog",
    async () => {
      if (!alive(frozenQemu)) return true;
      lastSeenAlive = Date.now();
      return undefined;
    },
    30_000,
  );
  vm = await running("web", "the VM elsewhere", (now) => now.host !== frozenHost);
  // An ordering, not a duration: the new QEMU did not start while the old one was seen running.
  assert.ok(
    Date.parse(vm.status!.run!.startedAt) > lastSeenAlive,
    `the new QEMU started at ${vm.status!.run!.startedAt}, the old one was alive at ${new Date(lastSeenAlive).toISOString()}`,
  );
  assert.equal(await bootCount(vm), count + 2);
  await clusterRevive(dir, frozenHost);

  assert.equal((await haven("vm", "delete", "web", "--yes")).code === 0, false, "a running VM is not deleted");
  const deleted = await haven("vm", "delete", "web", "--yes", "--force", "--with-disk");
  assert.equal(deleted.code, 0, deleted.stderr);
  await until("QEMU stopped", async () => (alive(vm.status!.run!.pid) ? undefined : true), 60_000);
});

test("a guest that never boots (no heartbeat within the boot timeout) ends in error, saying why", async () => {
  const created = await haven(
    "vm",
    "create",
    "blank",
    "--vcpus",
    "1",
    "--memory",
    "64M",
    "--disk-size",
    "16M",
    "--heartbeat",
    "--max-restart",
    "0",
    "--max-relocate",
    "0",
  );
  assert.equal(created.code, 0, created.stderr);
  const pid = (await show("blank")).status?.run?.pid;
  await until("the VM marked error", async () => ((await show("blank")).state === "error" ? true : undefined), 120_000);
  assert.match(
    (await haven("vm", "show", "blank")).stdout,
    /no guest heartbeat within 60 s of its start \(the guest did not boot\)/,
  );
  if (pid !== undefined) assert.equal(alive(pid), false);
  const deleted = await haven("vm", "delete", "blank", "--yes", "--with-disk");
  assert.equal(deleted.code, 0, deleted.stderr);
  const volumes = await haven("volume", "list", "--json");
  assert.doesNotMatch(volumes.stdout, /"name": "blank"/);
});

test("an image file copied onto a new volume boots with its own bootloader, and its service is checked over TCP", async () => {
  const image = await ensureTestImage();
  const address = ipv4FromMac(macAddress("disky", 0));
  const created = await haven(
    "vm",
    "create",
    "disky",
    "--vcpus",
    "1",
    "--memory",
    "128M",
    "--disk-size",
    "128M",
    "--image",
    image.disk,
    "--nic",
    "default",
    "--tcp-check",
    `${address}:80`,
  );
  assert.equal(created.code, 0, created.stderr);
  assert.match(created.stderr, /copying .*haven-test\.raw \(raw, 96\.0 MiB\) onto disky/);
  let vm = await running("disky", "the VM booted from its disk");
  assert.equal(JSON.parse((await haven("vm", "show", "disky", "--json")).stdout).spec.boot, "disk");
  assert.equal(await bootCount(vm), 1);
  assert.match(readFileSync(vm.status!.run!.serialLog!, "utf8"), /SYSLINUX/i, "its bootloader ran");
  await until(
    "the TCP check answering",
    async () => (/tcp\s+ok/.test((await haven("vm", "show", "disky")).stdout) ? true : undefined),
    60_000,
  );
  // Its service stops: the TCP check fails, and the VM is restarted in place.
  const pid = vm.status!.run!.pid;
  await onConsole(vm, "killall httpd");
  vm = await running("disky", "a restart after the service stopped", (now) => now.status!.run!.pid !== pid);
  assert.equal(await bootCount(vm), 2);
  assert.match(JSON.stringify((await show("disky")).status), /TCP check of .*:80 silent/);
  const stopped = await haven("vm", "stop", "disky");
  assert.equal(stopped.code, 0, stopped.stderr);
  assert.equal((await haven("vm", "delete", "disky", "--yes", "--with-disk")).code, 0);
});
