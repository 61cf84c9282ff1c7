// A real QEMU guest (TCG) on a disk served by `haven nbd serve` over its unix socket: the first boot
// makes an ext4 file system and writes files, the second boot checks them. The server is restarted
// in between, so the second boot reads what the first one left durable in the file.

import { test } from "node:test";
import assert from "node:assert/strict";
import { bootGuest, ensureGuest, scenarioResult } from "../helpers/guest.js";
import { haveTool, startServer, tempDir, type ServerHandle } from "../helpers/server-process.js";

// Two boots under TCG: about 55 s in all, each boot bounded by 120 s; past 5 minutes the test is hung.
test(
  "a QEMU guest makes a file system on a Haven export and reads it back after a restart",
  { timeout: 300_000 },
  async (t) => {
    if (!haveTool("qemu-system-x86_64")) {
      t.skip("qemu-system-x86_64 is not installed");
      return;
    }
    await ensureGuest();
    const dir = tempDir("haven-guest-");
    const servers: ServerHandle[] = [];
    try {
      const first = await startServer({ dir: dir.path, size: "64M", name: "vda" });
      servers.push(first);
      const written = await bootGuest({ nbdSocket: first.socketPath, exportName: "vda", scenario: "format-write" });
      const formatResult = scenarioResult(written.markers, "format-write");
      assert.ok(
        formatResult?.ok,
        `format-write failed: ${written.markers.join(" | ")}\n${written.output.slice(-2000)}`,
      );
      assert.equal(await first.stop("SIGTERM"), 0, "the server exits cleanly on SIGTERM");
      assert.match(first.log(), /stopped cleanly/);

      const second = await startServer({ dir: dir.path, file: first.file, name: "vda" });
      servers.push(second);
      const verified = await bootGuest({ nbdSocket: second.socketPath, exportName: "vda", scenario: "read-verify" });
      const verifyResult = scenarioResult(verified.markers, "read-verify");
      assert.ok(
        verifyResult?.ok,
        `read-verify failed: ${verified.markers.join(" | ")}\n${verified.output.slice(-2000)}`,
      );
      assert.equal(verifyResult.detail, formatResult.detail, "the second boot read the checksum the first one wrote");
      assert.equal(await second.stop("SIGINT"), 0);
      assert.doesNotMatch(
        first.log() + second.log(),
        /refused|failed|dropping/,
        "the guest sent no request the server refused",
      );
    } finally {
      // A server a failure left running (stop resolves at once for one that exited).
      await Promise.all(servers.map((server) => server.stop("SIGKILL")));
      dir.remove();
    }
  },
);
