// A running VM's disk grows under it (real QEMU 7.2 under TCG, the haven-test image): `haven volume
// resize` restarts the volume's engine at the new size, QEMU's nbd node reconnects to the host's stable
// endpoint and learns the new export size, block_resize grows the disk, and the guest's
// /sys/block/vda/size changes, with no reboot (same QEMU process, same boot count) and the new last
// sector readable inside the guest.

import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { stopLocalCluster, until } from "../helpers/cluster.js";
import { SerialConsole } from "../helpers/test-image.js";
import { havenCli, showVm, vmClusterUp, type VmShow } from "../helpers/vm-cluster.js";

const dir = mkdtempSync(join(tmpdir(), "haven-vm-resize-"));
const context = join(dir, "context.json");

const haven = havenCli(context);
const show = (name: string): Promise<VmShow> => showVm(haven, name);

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

/** The number the guest printed for `command` (the last whole number on its own line). */
async function guestNumber(vm: VmShow, command: string): Promise<number> {
  const printed = await onConsole(vm, command);
  const numbers = [...printed.matchAll(/^(\d+)\s*$/gm)].map((match) => Number(match[1]));
  assert.ok(numbers.length > 0, `the guest printed no number for ${command}: ${printed}`);
  return numbers.at(-1)!;
}

before(async () => {
  await vmClusterUp({ dir, context, hosts: 2 });
});

after(async () => {
  await stopLocalCluster(dir, 20_000);
  rmSync(dir, { recursive: true, force: true });
});

test("a running guest sees its disk grow, without a reboot", async (t) => {
  t.after(async () => {
    t.diagnostic((await haven("events", "--limit", "40")).stdout);
  });
  const created = await haven(
    "vm",
    "create",
    "web",
    "--vcpus",
    "1",
    "--memory",
    "128M",
    "--disk-size",
    "128M",
    "--image",
    "haven-test",
  );
  assert.equal(created.code, 0, created.stderr);
  const vm = await until(
    "the guest booted",
    async () => {
      const now = await show("web");
      const log = now.status?.run?.serialLog;
      return now.state === "running" && log !== undefined && /haven-test: ready/.test(readFileSync(log, "utf8"))
        ? now
        : undefined;
    },
    180_000,
  );
  const bootLog = readFileSync(vm.status!.run!.serialLog!, "utf8");
  const bootCount = Number(/boot-count=(\d+)/.exec(bootLog)![1]);
  assert.equal(await guestNumber(vm, "cat /sys/block/vda/size"), (128 * 1024 * 1024) / 512);

  const resized = await haven("volume", "resize", "web", "--size", "192M");
  assert.equal(resized.code, 0, resized.stderr);
  await until(
    "the guest told of its disk's new size",
    async () => {
      const events = await haven("events", "--volume", "web", "--limit", "40");
      assert.doesNotMatch(events.stdout, /vm-disk-grow-failed/);
      return /vm-disk-grown/.test(events.stdout) ? true : undefined;
    },
    60_000,
  );
  assert.equal(await guestNumber(vm, "cat /sys/block/vda/size"), (192 * 1024 * 1024) / 512);
  // The new last sector reads inside the guest.
  const lastSector = (192 * 1024 * 1024) / 512 - 1;
  assert.match(
    await onConsole(vm, `dd if=/dev/vda of=/dev/null bs=512 skip=${lastSector} count=1 && echo READ-$((1+1))`),
    /READ-2/,
  );
  // The same QEMU, the same boot: the guest never restarted.
  const after = await show("web");
  assert.equal(after.state, "running");
  assert.equal(after.status!.run!.pid, vm.status!.run!.pid);
  assert.equal(Number(/boot-count=(\d+)/.exec(readFileSync(after.status!.run!.serialLog!, "utf8"))![1]), bootCount);
});
