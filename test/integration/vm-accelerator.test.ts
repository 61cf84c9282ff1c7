// The accelerator probe: its boot sector really boots and prints the marker under TCG; the probe of
// KVM returns a verdict with its reason within its bound (on hosts where KVM guests hang, TCG);
// a KVM device that does not open means TCG without booting anything; a missing QEMU is a verdict,
// not a throw.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { readFile, readdir } from "node:fs/promises";
import { PROBE_MARKER, bootProbe, chooseAccelerator, probeBootSector } from "../../src/vm/accelerator.js";
import { haveTool } from "../helpers/server-process.js";

const QEMU = "qemu-system-x86_64";

/** Pids of probe QEMUs still running (read from /proc; nothing is killed by name). */
async function probeProcesses(): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^[0-9]+$/.test(entry)) continue;
    try {
      const cmdline = await readFile(`/proc/${entry}/cmdline`, "utf8");
      if (cmdline.includes("guest=haven-accel-probe")) pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

describe("accelerator probe", { timeout: 60_000 }, () => {
  it("the probe sector is one 512-byte boot sector carrying the marker", () => {
    const sector = probeBootSector();
    assert.equal(sector.length, 512);
    assert.equal(sector[510], 0x55);
    assert.equal(sector[511], 0xaa);
    assert.ok(sector.includes(Buffer.from(PROBE_MARKER)));
  });

  it("the probe sector boots and prints its marker under TCG", { skip: !haveTool(QEMU) }, async () => {
    const result = await bootProbe("tcg", { timeoutMs: 20_000 });
    assert.equal(result.ok, true, result.reason);
    assert.match(result.reason, /ran under tcg/);
  });

  it("chooseAccelerator returns a verdict with its reason within its bound", { skip: !haveTool(QEMU) }, async () => {
    const started = Date.now();
    const verdict = await chooseAccelerator({ timeoutMs: 3_000 });
    const elapsedMs = Date.now() - started;
    assert.ok(verdict.accelerator === "kvm" || verdict.accelerator === "tcg");
    assert.match(verdict.reason, verdict.accelerator === "kvm" ? /^KVM: / : /^TCG: /);
    assert.ok(elapsedMs < 3_000 + 2_000 + 2_000, `the probe took ${elapsedMs} ms`);
  });

  it(
    "a guest that prints nothing in time is a failed probe, and its QEMU is killed",
    { skip: !haveTool(QEMU) },
    async () => {
      // SeaBIOS alone takes longer than 30 ms under TCG: this is what a hung KVM guest looks like.
      const result = await bootProbe("tcg", { timeoutMs: 30 });
      assert.equal(result.ok, false);
      assert.match(result.reason, /printed nothing under tcg within 30 ms/);
      assert.ok(result.elapsedMs < 30 + 2_000 + 1_000, `the probe took ${result.elapsedMs} ms`);
      assert.deepEqual(await probeProcesses(), [], "no probe QEMU is left running");
    },
  );

  it(
    "a KVM device that opens but that QEMU cannot use means TCG, with QEMU's message",
    { skip: !haveTool(QEMU) },
    async () => {
      const verdict = await chooseAccelerator({ kvmDevice: "/dev/null", timeoutMs: 3_000 });
      if (verdict.accelerator === "kvm") return; // this host has a working KVM after all
      assert.match(verdict.reason, /^TCG: \/dev\/null opens, but /);
    },
  );

  it("a KVM device that does not open means TCG, without booting anything", async () => {
    const verdict = await chooseAccelerator({ kvmDevice: "/nonexistent/kvm" });
    assert.equal(verdict.accelerator, "tcg");
    assert.match(verdict.reason, /\/nonexistent\/kvm does not open read-write/);
  });

  it("a missing QEMU binary is a failed probe with its reason, not a throw", async () => {
    const result = await bootProbe("tcg", { qemuBinary: "/nonexistent/qemu", timeoutMs: 2_000 });
    assert.equal(result.ok, false);
    assert.match(result.reason, /QEMU did not start/);
  });
});
