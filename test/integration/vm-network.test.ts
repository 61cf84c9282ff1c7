// VM networking against the real thing: a network namespace of the test's own (named after its pid,
// as a local cluster's `haven-<cluster-id>`) with a bridge, real QEMUs (TCG) started by QemuProcess
// inside it, the test guest with virtio_net appended to its initramfs (test/helpers/guest-network.ts).
// Promises checked:
//   - the namespace's bridge is up with 10.99.0.1/16, and setting it up again changes nothing;
//   - QEMU runs in the namespace with the pidfile's pid (ip netns exec execs in place) and pinned vCPUs;
//     its tap joins the bridge while QEMU is paused, before `cont`, and QEMU reports the derived MAC;
//     the tap exists only inside the namespace;
//   - the guest answers ping at 10.99.YY.ZZ (from its MAC) from the namespace; when it stops and the
//     same VM is started by another host's agent, that QEMU joins the same bridge with the same tap
//     and MAC, and the guest answers at the same address;
//   - a tap that cannot be plugged fails the start and QEMU is killed by its pid; a namespace that
//     does not exist is refused before QEMU is spawned; a removed namespace is gone, twice is fine.
// Every QEMU and qemu-nbd is stopped by its pid, and both namespaces are removed, even on failure.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { connect } from "node:net";
import { once } from "node:events";
import { mkdtemp, readFile, readlink, rm, stat, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hasCode } from "../../src/core/errors.js";
import { tryIp, runIp } from "../../src/vm/ip-command.js";
import {
  BRIDGE_ADDRESS,
  LOCAL_CLUSTER_BRIDGE,
  bridgePorts,
  ensureNamespaceNetwork,
  ipv4FromMac,
  macAddress,
  namespaceExists,
  planNics,
  plugNics,
  plugTap,
  removeNamespaceNetwork,
  tapName,
  type BridgePort,
  type PlannedNic,
} from "../../src/vm/network.js";
import { QemuProcess } from "../../src/vm/qemu-process.js";
import type { VmRuntimePaths, VmSpec } from "../../src/vm/qemu-command.js";
import { createRuntimeDir, runtimePaths, trustedPid } from "../../src/vm/runtime-dir.js";
import { ensureGuest, type GuestImage } from "../helpers/guest.js";
import { GUEST_NETWORK_MARKER, guestNetworkCommand, guestWithNetworkModules } from "../helpers/guest-network.js";
import { haveTool } from "../helpers/server-process.js";

const QEMU = "qemu-system-x86_64";
const missing = [QEMU, "qemu-nbd", "taskset", "ip", "busybox"].filter((tool) => !haveTool(tool));
const notRoot = process.getuid?.() !== 0 && "network namespaces need root";
const GUEST_BOOT_TIMEOUT_MS = 120_000;
const PING_TIMEOUT_MS = 30_000;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function waitForSocket(path: string, child: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`qemu-nbd exited before ${path}`);
    if (
      await stat(path).then(
        (s) => s.isSocket(),
        () => false,
      )
    )
      return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${path}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Waits until `file` matches `pattern` (the serial log grows as the guest prints). */
async function waitForLog(file: string, pattern: RegExp, vm: QemuProcess, timeoutMs: number): Promise<RegExpExecArray> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = await readFile(file, "utf8").catch(() => "");
    const match = pattern.exec(text);
    if (match) return match;
    assert.equal(vm.hasExited, false, `QEMU exited while waiting for ${pattern} in ${file}`);
    assert.ok(Date.now() < deadline, `no ${pattern} in ${file} within ${timeoutMs} ms; it ends:\n${text.slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** One ping from inside `namespace`, bounded by its own -W 1. */
function pingOnce(namespace: string, address: string): Promise<boolean> {
  return new Promise((resolve) => {
    execFile(
      "ip",
      ["netns", "exec", namespace, "busybox", "ping", "-c", "1", "-W", "1", address],
      { timeout: 5_000 },
      (error) => resolve(error === null),
    );
  });
}

/** Pings until an answer comes or the time is up: each try waits for its reply, so no sleeps. */
async function pingUntilAnswered(namespace: string, address: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await pingOnce(namespace, address))) {
    assert.ok(Date.now() < deadline, `${address} did not answer ping from ${namespace} within ${timeoutMs} ms`);
  }
}

describe(
  "VM network in a namespace of the test's own",
  { timeout: 600_000, skip: (missing.length > 0 && `missing ${missing.join(", ")}`) || notRoot },
  () => {
    const namespace = `haven-test-${process.pid}`;
    const otherNamespace = `haven-test-${process.pid}-b`;
    const bridge = LOCAL_CLUSTER_BRIDGE;
    const network = { bridge, namespace };
    let dir: string;
    let nbd: ChildProcess | undefined;
    let nbdSocket: string;
    let guest: GuestImage;
    let networkGuest: GuestImage | string;
    const vms: QemuProcess[] = [];

    before(async () => {
      dir = await mkdtemp(join(tmpdir(), "haven-vm-network-"));
      guest = await ensureGuest();
      networkGuest = await guestWithNetworkModules(guest, dir);
      const disk = join(dir, "disk.raw");
      await writeFile(disk, Buffer.alloc(0));
      await truncate(disk, 16 * 1024 * 1024);
      nbdSocket = join(dir, "nbd.sock");
      const server = spawn("qemu-nbd", ["-f", "raw", "-k", nbdSocket, "-x", "vol", "-t", "--shared=4", disk], {
        stdio: ["ignore", "ignore", "pipe"],
      });
      nbd = server;
      await waitForSocket(nbdSocket, server, 10_000);
      await ensureNamespaceNetwork(network);
    });

    after(async () => {
      for (const vm of vms) {
        if (vm.hasExited) continue;
        process.kill(vm.pid, "SIGKILL");
        await Promise.race([vm.exited, new Promise((r) => setTimeout(r, 10_000).unref())]);
      }
      if (nbd?.pid !== undefined && nbd.exitCode === null && nbd.signalCode === null) process.kill(nbd.pid, "SIGKILL");
      await removeNamespaceNetwork(namespace);
      await removeNamespaceNetwork(otherNamespace);
      await rm(dir, { recursive: true, force: true });
      assert.equal(await namespaceExists(namespace), false, `${namespace} is left behind`);
    });

    function spec(name: string, runtime: VmRuntimePaths, nics: readonly PlannedNic[], image: GuestImage): VmSpec {
      return {
        name,
        vcpus: 1,
        memoryMiB: 256,
        accelerator: "tcg",
        disk: { socketPath: nbdSocket, exportName: "vol" },
        kernelBoot: {
          kernel: image.kernel,
          initrd: image.initramfs,
          append: "console=ttyS0 panic=-1 quiet haven.test=shell mitigations=off audit=0 random.trust_cpu=on",
        },
        nics,
        runtime,
      };
    }

    /** What beforeResume saw: whether the VM ran, and the bridge's ports after plugging. */
    interface Paused {
      running?: boolean;
      ports?: BridgePort[];
    }

    /** Starts VM `name` as host `host`'s agent would: QEMU in the namespace, taps plugged before cont. */
    async function startVm(host: string, name: string, image: GuestImage, paused: Paused): Promise<QemuProcess> {
      const runtimeDir = join(dir, host, name);
      const runtime = await createRuntimeDir(runtimeDir);
      const nics = planNics(name, [{}], network);
      const vm = await QemuProcess.start({
        spec: spec(name, runtime, nics, image),
        netns: namespace,
        vcpuHostCpus: [1],
        startTimeoutMs: 60_000,
        beforeResume: async ({ qmp }) => {
          paused.running = ((await qmp.execute("query-status")) as { running: boolean }).running;
          await plugNics(nics, { namespace });
          paused.ports = await bridgePorts({ bridge, namespace });
        },
      });
      vms.push(vm);
      return vm;
    }

    /** Gives the running guest its address over its serial console; resolves with the MAC it reports. */
    async function bringUpGuestNetwork(vm: QemuProcess, runtime: VmRuntimePaths, address: string): Promise<string> {
      await waitForLog(runtime.serialLog, /Haven test guest shell/, vm, GUEST_BOOT_TIMEOUT_MS);
      const console = connect(runtime.serialSocket);
      try {
        await once(console, "connect");
        console.write(guestNetworkCommand(address));
        const marker = await waitForLog(runtime.serialLog, GUEST_NETWORK_MARKER, vm, 30_000);
        return marker[1] as string;
      } finally {
        console.destroy();
      }
    }

    it("the namespace's bridge is up with 10.99.0.1/16, and setting it up again changes nothing", async () => {
      await ensureNamespaceNetwork(network);
      assert.equal(await namespaceExists(namespace), true);
      const shown = JSON.parse(await runIp(["-json", "address", "show", "dev", bridge], { namespace })) as Array<{
        flags: string[];
        addr_info: Array<{ family: string; local: string; prefixlen: number }>;
      }>;
      assert.ok(shown[0]?.flags.includes("UP"), JSON.stringify(shown));
      const ipv4 = (shown[0]?.addr_info ?? []).filter((address) => address.family === "inet");
      assert.deepEqual(
        ipv4.map((address) => `${address.local}/${address.prefixlen}`),
        [BRIDGE_ADDRESS],
      );
      assert.deepEqual(await bridgePorts({ bridge, namespace }), []);
    });

    it("QEMU runs in the namespace with the pidfile's pid and pinned vCPUs; its tap joins the bridge before cont; the guest answers ping at the address from its MAC, and again when another host's agent runs it", async (t) => {
      if (typeof networkGuest === "string") {
        t.skip(`the guest cannot get a network driver: ${networkGuest}`);
        return;
      }
      const image = networkGuest;
      const name = "net-a";
      const tap = tapName(name, 0);
      const mac = macAddress(name, 0);
      const address = ipv4FromMac(mac);

      const pausedA: Paused = {};
      const onA = await startVm("host-a", name, image, pausedA);
      const runtimeA = runtimePaths(join(dir, "host-a", name));

      // Plugged while paused, before cont: the guest never ran without its network.
      assert.equal(pausedA.running, false);
      assert.deepEqual(
        pausedA.ports?.map((port) => ({ name: port.name, up: port.up })),
        [{ name: tap, up: true }],
      );

      // ip netns exec execs QEMU in place: one pid for the child, the pidfile and the vCPU threads.
      assert.equal(await trustedPid(join(dir, "host-a", name), name), onA.pid);
      assert.equal(Number((await readFile(runtimeA.pidfile, "utf8")).trim()), onA.pid);
      const argv0 = (await readFile(`/proc/${onA.pid}/cmdline`, "utf8")).split("\0")[0] ?? "";
      assert.match(argv0, /qemu-system-x86_64$/);
      assert.equal(await readlink(`/proc/${onA.pid}/ns/net`), await netnsLink(namespace));
      const vcpu = onA.vcpuThreads[0];
      assert.ok(vcpu);
      const status = await readFile(`/proc/${onA.pid}/task/${vcpu.threadId}/status`, "utf8");
      assert.match(status, /^Cpus_allowed_list:\s*1$/m);

      // QEMU's NIC has the derived MAC on that tap; the tap exists only inside the namespace.
      const info = (await onA.qmp.execute("human-monitor-command", { "command-line": "info network" })) as string;
      assert.match(info, new RegExp(`ifname=${tap}`));
      assert.match(info, new RegExp(`macaddr=${mac}`));
      const filters = (await onA.qmp.execute("query-rx-filter", { name: "nic0" })) as Array<{ "main-mac": string }>;
      assert.equal(filters[0]?.["main-mac"], mac);
      assert.equal((await tryIp(["link", "show", "dev", tap])).ok, false, "the tap is not in the host's namespace");

      // The guest's NIC is on the bridge for real: it answers at the address its MAC gives it.
      assert.equal(await bringUpGuestNetwork(onA, runtimeA, address), mac);
      await pingUntilAnswered(namespace, address, PING_TIMEOUT_MS);

      // The VM moves: host A's QEMU stops (its tap goes with it), host B's agent starts the same VM.
      assert.notEqual(await onA.stop({ powerdownTimeoutMs: 1_000, quitTimeoutMs: 10_000 }), "killed");
      assert.deepEqual(await bridgePorts({ bridge, namespace }), []);
      assert.equal(await pingOnce(namespace, address), false, "nothing answers while the VM is down");

      const pausedB: Paused = {};
      const onB = await startVm("host-b", name, image, pausedB);
      const runtimeB = runtimePaths(join(dir, "host-b", name));
      assert.notEqual(onB.pid, onA.pid);
      assert.equal(pausedB.running, false);
      assert.deepEqual(
        pausedB.ports?.map((port) => port.name),
        [tap],
      );
      assert.equal(await bringUpGuestNetwork(onB, runtimeB, address), mac, "the same MAC on the new host");
      await pingUntilAnswered(namespace, address, PING_TIMEOUT_MS);
      assert.notEqual(await onB.stop({ powerdownTimeoutMs: 1_000, quitTimeoutMs: 10_000 }), "killed");
    });

    it("a tap that cannot be plugged fails the start, and QEMU is killed by its pid with its tap", async () => {
      const name = "net-c";
      const runtime = await createRuntimeDir(join(dir, "host-a", name));
      const nics = planNics(name, [{ bridge: "nosuchbr0" }], network);
      let pid: number | undefined;
      await assert.rejects(
        QemuProcess.start({
          spec: spec(name, runtime, nics, guest),
          netns: namespace,
          startTimeoutMs: 60_000,
          beforeResume: async (paused) => {
            pid = paused.pid;
            await plugTap({ tap: nics[0]!.tapName, bridge: nics[0]!.bridge, namespace });
          },
        }),
        (error: unknown) => hasCode(error, "HAVEN_ERR_CONFIG") && /nosuchbr0 does not exist/.test(String(error)),
      );
      assert.ok(pid !== undefined);
      assert.equal(alive(pid), false, "QEMU is gone");
      assert.equal((await tryIp(["link", "show", "dev", nics[0]!.tapName], { namespace })).ok, false);
    });

    it("a network namespace that does not exist is refused before QEMU is spawned", async () => {
      const name = "net-d";
      const runtime = await createRuntimeDir(join(dir, "host-a", name));
      await assert.rejects(
        QemuProcess.start({
          spec: spec(name, runtime, planNics(name, [{}], network), guest),
          netns: otherNamespace,
          startTimeoutMs: 10_000,
        }),
        (error: unknown) => hasCode(error, "HAVEN_ERR_CONFIG") && /does not exist; create it/.test(String(error)),
      );
      assert.equal(await readFile(runtime.qemuLog, "utf8").catch(() => ""), "", "QEMU never ran");
    });

    it("a removed namespace is gone with its bridge, and removing it again is fine", async () => {
      await ensureNamespaceNetwork({ namespace: otherNamespace, bridge: "br-test" });
      assert.equal(await namespaceExists(otherNamespace), true);
      await removeNamespaceNetwork(otherNamespace);
      assert.equal(await namespaceExists(otherNamespace), false);
      await removeNamespaceNetwork(otherNamespace);
    });
  },
);

/** What /proc/PID/ns/net reads for a process inside network namespace `namespace`. */
async function netnsLink(namespace: string): Promise<string> {
  const { ino } = await stat(`/var/run/netns/${namespace}`);
  return `net:[${ino}]`;
}
