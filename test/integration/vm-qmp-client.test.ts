// QmpClient against a real QEMU (no machine, started paused): the greeting and negotiation work,
// query-status says the VM is paused in prelaunch, an unknown command comes back as QEMU's error
// class, and `quit` ends QEMU and the connection. QEMU is stopped by its pid whatever happens.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { QmpClient, QmpCommandError } from "../../src/vm/qmp-client.js";
import { haveTool } from "../helpers/server-process.js";

const QEMU = "qemu-system-x86_64";

async function waitForSocket(path: string, child: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`QEMU exited before creating ${path}`);
    try {
      if ((await stat(path)).isSocket()) return;
    } catch {
      // not there yet
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${path}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("QMP client against real QEMU", { timeout: 60_000, skip: !haveTool(QEMU) && `${QEMU} not installed` }, () => {
  let dir: string;
  let qemu: ChildProcess | undefined;
  let client: QmpClient | undefined;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "haven-qmp-qemu-"));
  });

  after(async () => {
    client?.close();
    if (qemu?.pid !== undefined && qemu.exitCode === null && qemu.signalCode === null) {
      process.kill(qemu.pid, "SIGKILL");
    }
    await rm(dir, { recursive: true, force: true });
  });

  it("negotiates, reads prelaunch status, reports QEMU's error class, and quit ends QEMU", async () => {
    const sock = join(dir, "qmp.sock");
    const child = spawn(
      QEMU,
      ["-machine", "none", "-S", "-nodefaults", "-display", "none", "-qmp", `unix:${sock},server=on,wait=off`],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    qemu = child;
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    await waitForSocket(sock, child, 10_000);
    const qmp = await QmpClient.connect(sock, { connectTimeoutMs: 10_000 });
    client = qmp;
    assert.ok(qmp.qemuGreeting?.version);

    const status = (await qmp.execute("query-status", undefined, { timeoutMs: 5000 })) as {
      status: string;
      running: boolean;
    };
    assert.equal(status.status, "prelaunch");
    assert.equal(status.running, false);

    await assert.rejects(qmp.execute("no-such-command"), (error: unknown) => {
      assert.ok(error instanceof QmpCommandError);
      assert.equal(error.errorClass, "CommandNotFound");
      return true;
    });

    const closed = new Promise<void>((resolve) => qmp.onClose(() => resolve()));
    await qmp.execute("quit", undefined, { timeoutMs: 5000 });
    await closed;
    assert.equal(await exited, 0);
  });
});
