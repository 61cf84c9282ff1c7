// Integration test of the test guest itself, with qemu-nbd as a known-good NBD
// server: boot 1 formats the disk and writes files, boot 2 re-reads and checks
// them. If this fails, the guest tooling is broken, not Haven's NBD server.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtemp, open, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bootGuest, ensureGuest, scenarioResult } from "../helpers/guest.js";
import { haveTool } from "../helpers/server-process.js";

const DISK_BYTES = 64 * 1024 * 1024;
const EXPORT = "haven";

/** md5 of the guest's generated data.bin: 65536 lines "100000000000000\n", ... */
function expectedDataMd5(): string {
  const hash = createHash("md5");
  for (let i = 0; i < 65536; i++) hash.update(`${100000000000000 + i}\n`);
  return hash.digest("hex");
}

async function waitForSocket(path: string, server: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (server.exitCode !== null || server.signalCode !== null) {
      throw new Error(`qemu-nbd exited (${server.exitCode ?? server.signalCode}) before creating ${path}`);
    }
    try {
      if ((await stat(path)).isSocket()) return;
    } catch {
      // not there yet
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${path}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

// Two boots under TCG: about 20 s in all, each boot bounded by 120 s; past 5 minutes the test is hung.
test("test guest formats, writes and re-reads a disk served by qemu-nbd", { timeout: 300_000 }, async (t) => {
  if (!haveTool("qemu-system-x86_64")) {
    t.skip("qemu-system-x86_64 is not installed");
    return;
  }
  await ensureGuest();

  const dir = await mkdtemp(join(tmpdir(), "haven-guest-"));
  const image = join(dir, "disk.raw");
  const socket = join(dir, "nbd.sock");
  const file = await open(image, "w");
  await file.truncate(DISK_BYTES);
  await file.close();

  const nbd = spawn("qemu-nbd", ["-f", "raw", "--socket", socket, "--persistent", "--shared=4", "-x", EXPORT, image], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let nbdStderr = "";
  nbd.stderr?.setEncoding("utf8").on("data", (chunk: string) => (nbdStderr += chunk));
  const nbdClosed = new Promise<void>((r) => nbd.once("close", () => r()));
  nbd.on("error", () => {}); // reported through waitForSocket / exitCode
  t.after(async () => {
    if (nbd.exitCode === null && nbd.signalCode === null) {
      nbd.kill("SIGTERM");
      await nbdClosed;
    }
    await rm(dir, { recursive: true, force: true });
  });

  try {
    await waitForSocket(socket, nbd, 10_000);
  } catch (err) {
    throw new Error(`${(err as Error).message}\nqemu-nbd stderr:\n${nbdStderr}`);
  }

  const want = expectedDataMd5();

  const write = await bootGuest({
    nbdSocket: socket,
    exportName: EXPORT,
    scenario: "format-write",
  });
  t.diagnostic(`format-write boot: ${write.durationMs} ms`);
  assert.ok(write.markers.includes("HAVEN-TEST: booted"), `no boot marker:\n${write.output}`);
  const written = scenarioResult(write.markers, "format-write");
  assert.deepEqual(written, { ok: true, detail: want }, `format-write markers: ${write.markers.join(" | ")}`);

  // The writes reached the server's file: ext2/3/4 superblock magic 0xEF53 at byte 1080.
  const raw = await open(image, "r");
  const magic = Buffer.alloc(2);
  await raw.read(magic, 0, 2, 1080);
  await raw.close();
  assert.equal(magic.readUInt16LE(0), 0xef53, "no ext4 superblock in the qemu-nbd image");

  const read = await bootGuest({
    nbdSocket: socket,
    exportName: EXPORT,
    scenario: "read-verify",
  });
  t.diagnostic(`read-verify boot: ${read.durationMs} ms`);
  const verified = scenarioResult(read.markers, "read-verify");
  assert.deepEqual(verified, { ok: true, detail: want }, `read-verify markers: ${read.markers.join(" | ")}`);
  assert.equal(verified?.detail, written?.detail);
});
