// VM records read back from etcd are checked before an agent acts on them: anything with etcd access
// could have written them.

import assert from "node:assert/strict";
import { test } from "node:test";
import { parseVmRecord, parseVmStatusRecord } from "../../src/cluster/vm-schema.js";
import { parseAgentConfig, formatAgentConfig } from "../../src/agent/config.js";

const good = {
  name: "web",
  vcpus: 2,
  memoryMiB: 256,
  volume: "web",
  boot: "disk",
  cpus: [2, 3],
  nics: [{ mac: "52:54:00:01:02:03" }],
  heartbeat: true,
  desired: "started",
  startRequest: 1,
  policy: { maxRestart: 1, maxRelocate: 1 },
  createdAt: "2026-12-05T00:00:00.000Z",
};

test("a VM record round-trips, and every malformed field is refused by name", () => {
  assert.deepEqual(parseVmRecord(JSON.stringify(good), "k"), good);
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ name: "../../escape" }, /is not a VM name/],
    [{ desired: "maybe" }, /desired "maybe"/],
    [{ boot: "pxe" }, /boot "pxe"/],
    [{ vcpus: 0 }, /vcpus is 0/],
    [{ cpus: [1] }, /one CPU per vCPU/],
    [{ cpus: [-1, 2] }, /cpus is not a list/],
    [{ nics: [{ mac: "ZZ" }] }, /mac "ZZ"/],
    [{ memoryMiB: "lots" }, /memoryMiB/],
  ];
  for (const [change, message] of bad)
    assert.throws(() => parseVmRecord(JSON.stringify({ ...good, ...change }), "/haven/vms/web"), message);
  assert.throws(() => parseVmStatusRecord(JSON.stringify({ host: "h1", state: "dancing" }), "k"), /state "dancing"/);
});

test("the agent config's vms section: parsed, checked, and written back the same", () => {
  const base = {
    host: { name: "h1", address: "127.0.0.1" },
    etcd: { endpoints: ["http://127.0.0.1:2379"] },
    api: { listen: "127.0.0.1:7480", tokenFile: "/t" },
    replication: { listen: "127.0.0.1:7481", secretFile: "/s" },
    nbd: { listen: "127.0.0.1:10809" },
    disks: [{ name: "d0", path: "/d0" }],
  };
  const config = parseAgentConfig(
    JSON.stringify({ ...base, vms: { cpus: "0-3", memory: "2G", runtimeDir: "/run/haven", bridge: "br0" } }),
    "a.json",
  );
  assert.deepEqual(config.vms?.cpus, [0, 1, 2, 3]);
  assert.equal(config.vms?.memoryMiB, 2048);
  assert.deepEqual(parseAgentConfig(formatAgentConfig(config), "b.json"), config);
  const refusals: [Record<string, unknown>, RegExp][] = [
    [{ cpus: "x", memory: "1G", runtimeDir: "/r" }, /vms.cpus "x" is not a CPU list/],
    [{ cpus: "0", memory: "lots", runtimeDir: "/r" }, /vms.memory "lots" is not a size/],
    [{ cpus: "0", memory: "1G", runtimeDir: "relative" }, /vms.runtimeDir/],
    [{ cpus: "0", memory: "1G", runtimeDir: "/r", accelerator: "xen" }, /vms.accelerator "xen"/],
    [{ cpus: "0", memory: "1G" }, /runtimeDir/],
  ];
  for (const [vms, message] of refusals)
    assert.throws(() => parseAgentConfig(JSON.stringify({ ...base, vms }), "a.json"), message);
});
