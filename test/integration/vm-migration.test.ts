// Live migration on a real local cluster (etcd, agents, QEMU under TCG with TLS between the QEMUs, the
// haven-test image): a guest that writes a counter to its replicated disk (fsynced) and prints each value
// on its serial console is migrated back and forth ten times. It never reboots, the counter never goes
// backwards, and the last value it printed is what its disk holds. A migration whose destination agent
// is killed during the transfer leaves the guest running on the source. A drain moves three VMs away
// live. Every bad request is refused with the reason and the fix.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { alive, localClusterClient, type LocalClusterState } from "../../src/cluster/local-cluster.js";
import { clusterRevive } from "../../src/cluster/local-hosts.js";
import { havenCli, runningVm, vmClusterUp, type VmShow } from "../helpers/vm-cluster.js";
import { readEvents } from "../../src/cluster/cluster-read.js";
import { parseMigrationRecord } from "../../src/cluster/migration-schema.js";
import { keys } from "../../src/cluster/schema.js";
import { stopLocalCluster, until } from "../helpers/cluster.js";
import {
  LOCAL_CLUSTER_BRIDGE,
  ensureNamespaceNetwork,
  ipv4FromMac,
  removeNamespaceNetwork,
} from "../../src/vm/network.js";

const dir = mkdtempSync(join(tmpdir(), "haven-vm-migration-"));
const context = join(dir, "context.json");
const namespace = `haven-migtest-${process.pid}`;
let state: LocalClusterState;

const haven = havenCli(context, 300_000);
const running = (name: string, accept?: (vm: VmShow) => boolean): Promise<VmShow> => runningVm(haven, name, accept);

before(async () => {
  await ensureNamespaceNetwork({ namespace, bridge: LOCAL_CLUSTER_BRIDGE });
  state = await vmClusterUp({ dir, context, hosts: 2, network: { bridge: LOCAL_CLUSTER_BRIDGE, namespace } });
  const created = await haven(
    "vm",
    "create",
    "web",
    "--vcpus",
    "1",
    "--memory",
    "256M",
    "--disk-size",
    "128M",
    "--replicas",
    "2",
    "--image",
    "haven-test",
    "--nic",
    "default",
    "--host",
    "h1",
  );
  assert.equal(created.code, 0, created.stderr);
});

after(async () => {
  await stopLocalCluster(dir, 20_000);
  await removeNamespaceNetwork(namespace).catch(() => undefined);
  rmSync(dir, { recursive: true, force: true });
});

/** A serial console that keeps each line the guest prints with the time it arrived. */
class TimedConsole {
  readonly lines: { atMs: number; text: string }[] = [];
  private partial = "";
  private socket: Socket;
  private closed = false;

  constructor(path: string) {
    this.socket = this.open(path);
  }

  /** Connects, and again after a refusal (the socket may not be there yet). */
  private open(path: string): Socket {
    const socket = connect(path);
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      const atMs = Date.now();
      const text = this.partial + chunk.replace(/\r/g, "");
      const parts = text.split("\n");
      this.partial = parts.pop()!;
      for (const line of parts) this.lines.push({ atMs, text: line });
    });
    socket.on("error", () => {
      if (!this.closed) setTimeout(() => (this.socket = this.open(path)), 50);
    });
    return socket;
  }

  type(line: string): void {
    this.socket.write(`${line}\n`);
  }

  /** The counter values printed (c=N lines), with their arrival times. */
  counters(): { atMs: number; value: number }[] {
    return this.lines
      .map((line) => ({ atMs: line.atMs, match: /^c=(\d+)$/.exec(line.text.trim()) }))
      .filter((line) => line.match !== null)
      .map((line) => ({ atMs: line.atMs, value: Number(line.match![1]) }));
  }

  close(): void {
    this.closed = true;
    this.socket.destroy();
  }
}

/** The guest's boot counter over its NIC, from inside the cluster's network namespace. */
async function httpBootCount(address: string): Promise<number | undefined> {
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

/** The guest's writer: a counter written and fsynced to its disk every 10 ms, each value then printed. */
// It runs in the background, so the shell takes the commands that stop it and read the disk back.
const WRITER =
  "rm -f /run/stop; (i=$(cat /data/counter 2>/dev/null || echo 0); " +
  "while [ ! -e /run/stop ]; do i=$((i+1)); echo $i | dd of=/data/counter conv=fsync 2>/dev/null && echo c=$i; usleep 10000; done; " +
  "echo stopped-$((40+2))) &";

test("bad requests are refused with the reason and the fix", async () => {
  const vm = await running("web");
  const from = vm.host!;
  const other = from === "h1" ? "h2" : "h1";
  const cases: [string[], RegExp][] = [
    [["vm", "migrate", "ghost", "--to", other], /no VM named "ghost"/],
    [["vm", "migrate", "web"], /--to HOST is required/],
    [["vm", "migrate", "web", "--to", "h9"], /no host named "h9"/],
    [["vm", "migrate", "web", "--to", from], /runs on .* already/],
    [["vm", "migrate", "web", "--to", other, "--bandwidth", "10k"], /--bandwidth "10k" is not a rate/],
  ];
  for (const [args, message] of cases) {
    const result = await haven(...args);
    assert.notEqual(result.code, 0, args.join(" "));
    assert.match(result.stderr, message, args.join(" "));
  }
  // A host in maintenance takes nothing.
  assert.equal((await haven("host", "drain", other)).code, 0);
  const toMaintenance = await haven("vm", "migrate", "web", "--to", other);
  assert.match(toMaintenance.stderr, /in maintenance.*undrain/);
  assert.equal((await haven("host", "undrain", other)).code, 0);
  // Two migrations of one VM at once: the second is refused while the first runs.
  const first = await haven("vm", "migrate", "web", "--to", other, "--no-wait");
  assert.equal(first.code, 0, first.stderr);
  const second = await haven("vm", "migrate", "web", "--to", other);
  assert.notEqual(second.code, 0);
  assert.match(second.stderr, /being migrated already/);
  await running("web", (now) => now.host === other);
  await until("the migration record gone", async () =>
    /being migrated/.test((await haven("vm", "migrate", "web", "--to", other)).stderr) ? undefined : true,
  );
  // A stopped VM is started where it should be, not migrated.
  assert.equal((await haven("vm", "stop", "web", "--force")).code, 0);
  const stopped = await haven("vm", "migrate", "web", "--to", from);
  assert.match(stopped.stderr, /not running.*vm start web --host/);
  assert.equal((await haven("vm", "start", "web", "--host", from)).code, 0);
  await running("web", (now) => now.host === from);
});

test("ten live migrations back and forth: no reboot, the counter never goes back, the last value is on disk", async (t) => {
  let vm = await running("web");
  const address = ipv4FromMac(vm.spec.nics[0]!.mac);
  const boots = await until("the guest's HTTP answer", () => httpBootCount(address), 120_000);
  let console = new TimedConsole(vm.status!.run!.serialSocket!);
  console.type(WRITER);
  await until("the writer's first values", async () => (console.counters().length > 5 ? true : undefined), 60_000);
  const gaps: number[] = [];
  let lastValue = 0;
  for (let round = 1; round <= 10; round++) {
    const from = vm.host!;
    const to = from === "h1" ? "h2" : "h1";
    const moved = await haven("vm", "migrate", "web", "--to", to);
    assert.equal(moved.code, 0, `migration ${round}: ${moved.stderr}`);
    assert.match(moved.stdout, new RegExp(`migrated from ${from} to ${to}`));
    vm = await running("web", (now) => now.host === to);
    const before = console.counters();
    const next = new TimedConsole(vm.status!.run!.serialSocket!);
    await until(`values printed on ${to}`, async () => (next.counters().length > 3 ? true : undefined), 60_000);
    console.close();
    const after = next.counters();
    const last = before.at(-1)!;
    const firstThere = after[0]!;
    // Never backwards, and nothing the guest saw written is lost across the switch.
    assert.ok(firstThere.value > last.value, `round ${round}: ${firstThere.value} follows ${last.value}`);
    for (const [i, entry] of [...before, ...after].entries())
      if (i > 0) assert.ok(entry.value > [...before, ...after][i - 1]!.value, `round ${round}: the counter went back`);
    assert.ok(last.value > lastValue, `round ${round}: the guest wrote on`);
    lastValue = last.value;
    gaps.push(firstThere.atMs - last.atMs);
    console = next;
  }
  console.type("touch /run/stop");
  await until("the writer stopped", async () =>
    console.lines.some((l) => /stopped-42/.test(l.text)) ? true : undefined,
  );
  const printed = console.counters().at(-1)!.value;
  console.type("echo disk=$(cat /data/counter)");
  const onDisk = await until("the counter read back", async () => {
    const line = console.lines.find((l) => /^disk=\d+$/.test(l.text.trim()));
    return line === undefined ? undefined : Number(line.text.trim().slice(5));
  });
  console.close();
  // Every value the guest printed was fsynced first: the disk holds at least the last one printed (one
  // more if the console lost the last line to the echo of the typed command).
  assert.ok(onDisk >= printed && onDisk <= printed + 1, `on disk ${onDisk}, last printed ${printed}`);
  // No reboot: the same boot counter, and no new boot on any host.
  assert.equal(await until("the guest's HTTP answer", () => httpBootCount(address), 60_000), boots);
  const log = readFileSync(vm.status!.run!.serialLog!, "utf8");
  assert.doesNotMatch(log, /haven-test: ready/, "the destination's QEMU never booted the guest");
  const sorted = [...gaps].sort((a, b) => a - b);
  t.diagnostic(`serial gaps (ms): ${gaps.join(", ")}; p50 ${sorted[4]}, max ${sorted[9]}`);
});

test("a migration whose destination agent is killed during the transfer leaves the guest on the source", async (t) => {
  const vm = await running("web");
  const from = vm.host!;
  const to = from === "h1" ? "h2" : "h1";
  const pid = vm.status!.run!.pid;
  const etcd = await localClusterClient(state);
  t.after(() => clusterRevive(dir, to));
  const asked = Date.now();
  // Capped at 16 MiB/s, the transfer of 256 MiB lasts long enough to be cut in the middle.
  const request = await haven("vm", "migrate", "web", "--to", to, "--no-wait", "--bandwidth", "16M");
  assert.equal(request.code, 0, request.stderr);
  // Kill the destination's agent once RAM is moving (its watchdog takes the incoming QEMU down).
  await until(
    "the transfer under way",
    async () => {
      const kv = await etcd.get(keys.migration("web"));
      const record = kv === undefined ? undefined : parseMigrationRecord(kv.value, kv.key);
      return record?.progress !== undefined && record.progress.transferredBytes > 0 ? true : undefined;
    },
    60_000,
  );
  const clusterState = JSON.parse(readFileSync(join(dir, "cluster.json"), "utf8")) as LocalClusterState;
  process.kill(clusterState.agents.find((entry) => entry.name === to)!.pid, "SIGKILL");
  const failed = await until(
    "the migration's failure event",
    async () =>
      (await readEvents(etcd))
        .map((stored) => stored.event)
        .find((event) => event.kind === "vm-migration-failed" && Date.parse(event.time) >= asked - 1000),
    120_000,
  );
  assert.match(failed.message, new RegExp(`runs on ${from}`));
  const still = await running("web");
  assert.equal(still.host, from, "the guest stays on the source");
  assert.equal(still.status!.run!.pid, pid, "the same QEMU runs it");
  assert.ok(alive(pid));
});

test("drain live-migrates three VMs off a host and undrain ends the maintenance", async () => {
  for (const name of ["a", "b"]) {
    const created = await haven(
      "vm",
      "create",
      name,
      "--vcpus",
      "1",
      "--memory",
      "128M",
      "--disk-size",
      "128M",
      "--replicas",
      "2",
      "--image",
      "haven-test",
      "--host",
      (await running("web")).host!,
    );
    assert.equal(created.code, 0, created.stderr);
  }
  const from = (await running("web")).host!;
  const to = from === "h1" ? "h2" : "h1";
  for (const name of ["web", "a", "b"]) await running(name, (vm) => vm.host === from);
  // The copies on the revived host must be in sync before anything can move there.
  await until(
    "every copy in sync",
    async () => {
      const volumes = JSON.parse((await haven("volume", "list", "--json")).stdout) as {
        copies: { state: string }[];
      }[];
      return volumes.every((v) => v.copies.every((c) => c.state === "in-sync")) ? true : undefined;
    },
    180_000,
  );
  const pids = new Map<string, number>();
  const drained = await haven("host", "drain", from);
  assert.equal(drained.code, 0, `${drained.stdout}\n${drained.stderr}`);
  for (const name of ["web", "a", "b"]) {
    assert.match(drained.stdout, new RegExp(`VM ${name}\\s+live-migrated to ${to}`));
    const vm = await running(name, (now) => now.host === to);
    pids.set(name, vm.status!.run!.pid);
  }
  // In maintenance: a new VM is not placed there.
  const placed = await haven(
    "vm",
    "create",
    "c",
    "--vcpus",
    "1",
    "--memory",
    "64M",
    "--disk-size",
    "32M",
    "--host",
    from,
  );
  assert.notEqual(placed.code, 0);
  // Failback: web's home is the drained host; a and b have none.
  const homed = await haven("vm", "set", "web", "--failback", from);
  assert.equal(homed.code, 0, homed.stderr);
  assert.match((await haven("vm", "show", "web")).stdout, new RegExp(`failback:\\s+to ${from}`));
  assert.match((await haven("vm", "set", "web", "--failback", "h9")).stderr, /no host named "h9"/);
  // In maintenance, nothing moves home.
  assert.equal((await running("web")).host, to);
  assert.equal((await haven("host", "undrain", from)).code, 0);
  const again = await haven("host", "undrain", from);
  assert.match(again.stderr, /not in maintenance/);
  const home = await running("web", (vm) => vm.host === from);
  assert.notEqual(home.status!.run!.pid, pids.get("web"), "web went home");
  assert.match((await haven("events", "--limit", "400")).stdout, /vm-failback/);
  for (const name of ["a", "b"])
    assert.equal((await running(name)).status!.run!.pid, pids.get(name), `${name} (no failback) stayed put`);
});
