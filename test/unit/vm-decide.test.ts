// The VM policy as a pure function: where a VM starts, when it stops, and the HA ladder (restart in
// place, relocate, error), with no QEMU, no etcd and no clock.

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  DEFAULT_VM_TIMINGS,
  decideVm,
  vmFailure,
  type VmHostView,
  type VmObservation,
} from "../../src/agent/vm-decide.js";
import { DEFAULT_VM_POLICY, type VmRecord, type VmStatusRecord } from "../../src/cluster/vm-schema.js";
import { formatCpuList, parseCpuList, vmLacks } from "../../src/cluster/vm-resources.js";

const vm: VmRecord = {
  name: "web",
  vcpus: 2,
  memoryMiB: 512,
  volume: "web",
  boot: "disk",
  nics: [],
  heartbeat: true,
  desired: "started",
  startRequest: 3,
  policy: DEFAULT_VM_POLICY,
  createdAt: "2026-12-05T00:00:00.000Z",
};

function host(overrides: Partial<VmHostView> = {}): VmHostView {
  return {
    me: "h1",
    holdsLease: true,
    now: 100_000,
    alive: new Set(["h1", "h2", "h3"]),
    primaryOf: () => "h1",
    servedHere: () => true,
    handoverPending: () => true,
    inSyncHosts: () => ["h1", "h2"],
    lacks: () => undefined,
    hostLacks: () => undefined,
    timings: DEFAULT_VM_TIMINGS,
    ...overrides,
  };
}

function status(overrides: Partial<VmStatusRecord> = {}): VmStatusRecord {
  return {
    host: "h1",
    state: "running",
    reason: "",
    since: "",
    startRequest: 3,
    restarts: 0,
    relocations: 0,
    checks: {},
    updatedAt: "",
    ...overrides,
  };
}

const healthy: VmObservation = { runState: "running", startedAtMs: 90_000, lastHeartbeatAtMs: 99_500, startRequest: 3 };

test("a VM starts only on its disk's primary, while served there, with the lease, and with room", () => {
  assert.equal(decideVm(vm, undefined, undefined, host()).kind, "start");
  assert.equal(decideVm(vm, undefined, undefined, host({ primaryOf: () => "h2" })).kind, "none");
  assert.equal(decideVm(vm, undefined, undefined, host({ servedHere: () => false })).kind, "none");
  assert.equal(decideVm(vm, undefined, undefined, host({ holdsLease: false })).kind, "none");
  assert.equal(decideVm({ ...vm, desired: "stopped" }, undefined, undefined, host()).kind, "none");
  const pending = decideVm(vm, undefined, undefined, host({ lacks: () => "memory: 512 MiB needed, 256 MiB free" }));
  assert.deepEqual(pending, { kind: "pending", reason: "host h1 lacks memory: 512 MiB needed, 256 MiB free" });
  assert.equal(decideVm(vm, status({ state: "error" }), undefined, host()).kind, "none", "error stays error");
  assert.equal(
    decideVm(vm, status({ state: "error", startRequest: 2 }), undefined, host()).kind,
    "start",
    "a new start request clears it",
  );
});

test("a relocation's target starts it; the old host waits unless the target died", () => {
  const relocating = status({ state: "stopping", relocatingTo: "h2", relocations: 1 });
  assert.equal(decideVm(vm, relocating, undefined, host()).kind, "none");
  assert.equal(decideVm(vm, relocating, undefined, host({ alive: new Set(["h1"]) })).kind, "start");
  assert.equal(decideVm(vm, relocating, undefined, host({ handoverPending: () => false })).kind, "start", "refused");
  const there = decideVm(vm, relocating, undefined, host({ me: "h2", primaryOf: () => "h2" }));
  assert.equal(there.kind, "start");
  assert.deepEqual(there.kind === "start" && there.counts, { restarts: 0, relocations: 1 });
});

test("a running VM stops when its disk moves, when stopped, when deleted, and dies with the lease", () => {
  assert.deepEqual(decideVm(vm, status(), healthy, host({ primaryOf: () => "h2" })), {
    kind: "stop",
    reason: "its disk's primary is h2 now, not h1",
    force: true,
  });
  assert.equal(decideVm({ ...vm, desired: "stopped" }, status(), healthy, host()).kind, "stop");
  const forced = decideVm({ ...vm, desired: "stopped", forceStop: true }, status(), healthy, host());
  assert.equal(forced.kind === "stop" && forced.force, true);
  assert.equal(decideVm(undefined, status(), healthy, host()).kind, "stop");
  assert.equal(decideVm(vm, status(), healthy, host({ holdsLease: false })).kind, "stop");
  assert.equal(decideVm(vm, status(), healthy, host()).kind, "none", "a healthy VM is left alone");
  assert.equal(decideVm(vm, status(), { ...healthy, startRequest: 2 }, host()).kind, "restart", "vm restart");
});

test("failures on several parameters: QEMU gone, panic, QMP silent, heartbeat silent or never", () => {
  const t = DEFAULT_VM_TIMINGS;
  assert.equal(vmFailure(vm, healthy, 100_000, t), undefined);
  assert.match(
    vmFailure(vm, { ...healthy, exited: "killed by SIGKILL" }, 100_000, t)!,
    /QEMU exited \(killed by SIGKILL\)/,
  );
  assert.match(vmFailure(vm, { ...healthy, runState: "guest-panicked" }, 100_000, t)!, /panicked/);
  assert.match(
    vmFailure(vm, { ...healthy, qmpFailingSinceMs: 100_000 - t.qmpTimeoutMs }, 100_000, t)!,
    /QMP has not answered/,
  );
  assert.equal(vmFailure(vm, { ...healthy, qmpFailingSinceMs: 99_000 }, 100_000, t), undefined, "within its bound");
  const silent = { ...healthy, lastHeartbeatAtMs: 100_000 - t.heartbeatTimeoutMs };
  assert.match(vmFailure(vm, silent, 100_000, t)!, /heartbeat silent for 10 s/);
  assert.equal(
    vmFailure({ ...vm, heartbeat: false }, silent, 100_000, t),
    undefined,
    "no heartbeat asked, none checked",
  );
  assert.equal(vmFailure(vm, { ...silent, runState: "paused" }, 100_000, t), undefined, "a paused guest cannot beat");
  const checked = { ...vm, heartbeat: false, tcpCheck: { address: "10.0.0.5", port: 80 } };
  assert.equal(vmFailure(checked, { ...healthy, lastTcpOkAtMs: 99_000 }, 100_000, t), undefined);
  assert.match(
    vmFailure(checked, { ...healthy, lastTcpOkAtMs: 80_000 }, 100_000, t)!,
    /TCP check of 10.0.0.5:80 silent for 20 s/,
  );
  assert.match(
    vmFailure(checked, { ...healthy, startedAtMs: 0 }, t.bootTimeoutMs, t)!,
    /no TCP check of 10.0.0.5:80 within/,
  );
  const never = { runState: "running" as const, startedAtMs: 0, startRequest: 3 };
  assert.match(vmFailure(vm, never, t.bootTimeoutMs, t)!, /did not boot/);
  assert.equal(vmFailure(vm, never, t.bootTimeoutMs - 1, t), undefined);
});

test("the HA ladder: restart in place up to maxRestart, relocate up to maxRelocate, then error", () => {
  const crashed = { ...healthy, exited: "killed by SIGSEGV" };
  const first = decideVm(vm, status(), crashed, host());
  assert.equal(first.kind, "restart");
  assert.deepEqual(first.kind === "restart" && first.counts, { restarts: 1, relocations: 0 });
  const second = decideVm(vm, status({ restarts: 1 }), crashed, host());
  assert.equal(second.kind, "relocate");
  assert.equal(second.kind === "relocate" && second.to, "h2");
  assert.deepEqual(second.kind === "relocate" && second.counts, { restarts: 0, relocations: 1 });
  const third = decideVm(vm, status({ restarts: 1, relocations: 1 }), crashed, host());
  assert.equal(third.kind, "fail");
  assert.match(third.kind === "fail" ? third.reason : "", /1 restart\(s\) and 1 relocation\(s\) used up/);
  // No host to go to: error, saying why each candidate was refused.
  const nowhere = decideVm(vm, status({ restarts: 1 }), crashed, host({ hostLacks: () => "memory" }));
  assert.match(nowhere.kind === "fail" ? nowhere.reason : "", /h2 lacks memory/);
  const down = decideVm(vm, status({ restarts: 1 }), crashed, host({ alive: new Set(["h1"]) }));
  assert.match(down.kind === "fail" ? down.reason : "", /h2 is down/);
  // Counts of an older start request do not count.
  assert.equal(decideVm(vm, status({ restarts: 5, relocations: 5, startRequest: 1 }), crashed, host()).kind, "restart");
});

test("a storage pause is resumed once the disk is served; a guest's own power-off is respected", () => {
  assert.equal(decideVm(vm, status(), { ...healthy, runState: "io-error" }, host()).kind, "resume");
  assert.equal(
    decideVm(vm, status(), { ...healthy, runState: "io-error" }, host({ servedHere: () => false })).kind,
    "none",
  );
  assert.equal(decideVm(vm, status(), { ...healthy, runState: "shutdown" }, host()).kind, "guest-off");
});

test("resources: memory never overcommitted, pinned CPUs exclusive unless shared, CPU lists", () => {
  const capacity = { cpus: [0, 1, 2, 3], memoryMiB: 1024 };
  const other = { name: "db", vcpus: 1, memoryMiB: 768, cpus: [2] };
  assert.match(
    vmLacks("h1", capacity, [other], { name: "web", vcpus: 1, memoryMiB: 512 })!,
    /memory: web needs 512 MiB, h1 has 256 MiB free/,
  );
  assert.equal(vmLacks("h1", capacity, [other], { name: "web", vcpus: 1, memoryMiB: 256 }), undefined);
  assert.match(
    vmLacks("h1", capacity, [], { name: "web", vcpus: 5, memoryMiB: 64 })!,
    /needs 5 vCPUs, h1 gives 4 CPUs/,
  );
  assert.match(vmLacks("h1", capacity, [], { name: "web", vcpus: 1, memoryMiB: 64, cpus: [7] })!, /CPU 7/);
  assert.match(
    vmLacks("h1", capacity, [other], { name: "web", vcpus: 1, memoryMiB: 64, cpus: [2] })!,
    /pinned to VM db/,
  );
  const shared = { ...other, sharedCpus: true };
  assert.equal(
    vmLacks("h1", capacity, [shared], { name: "web", vcpus: 1, memoryMiB: 64, cpus: [2], sharedCpus: true }),
    undefined,
  );
  assert.match(vmLacks("h1", undefined, [], { name: "web", vcpus: 1, memoryMiB: 64 })!, /no "vms" section/);
  assert.deepEqual(parseCpuList("0-2,5"), [0, 1, 2, 5]);
  assert.equal(parseCpuList("2-1"), undefined);
  assert.equal(parseCpuList("a"), undefined);
  assert.equal(formatCpuList([5, 0, 1, 2]), "0-2,5");
});
