// The agent's active probes: the disk probe writes and fsyncs a file and reports a failing disk with
// the error; the NBD front probe lists exports through a real NbdServer and names the missing ones;
// a background probe that hangs is reported as hung and never run twice at once.

import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  BackgroundProbe,
  DISK_PROBE_FILE,
  listNbdExports,
  probeDisk,
  probeNbdFront,
} from "../../src/agent/health-probes.js";
import { NbdServer } from "../../src/nbd/server.js";
import { FileDevice } from "../../src/block/file-device.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** Every test here takes well under a second; one still running after this bound is hung, not slow. */
const test = boundedTest(10_000);

test("a disk probe writes and fsyncs its file; a disk where that fails is reported with the error", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "haven-probe-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const good = await probeDisk({ name: "d0", path: dir });
  assert.equal(good.ok, true);
  assert.equal(good.detail, "ok");
  assert.ok(good.probeMs !== null && good.probeMs >= 0);
  assert.match(readFileSync(join(dir, DISK_PROBE_FILE), "utf8"), /^haven disk probe /);

  const broken = join(dir, "broken");
  mkdirSync(join(broken, DISK_PROBE_FILE), { recursive: true }); // the probe file cannot be opened for writing
  const bad = await probeDisk({ name: "d1", path: broken });
  assert.equal(bad.ok, false);
  assert.equal(bad.probeMs, null);
  assert.match(bad.detail, /probe write in .*broken failed: .*EISDIR/);
  const missing = await probeDisk({ name: "d2", path: join(dir, "not-there") });
  assert.match(missing.detail, /ENOENT/);
});

test("the NBD front probe lists exports as a client would and names the served volumes it lacks", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "haven-nbd-probe-"));
  const device = await FileDevice.open(join(dir, "disk.raw"), { createSizeBytes: 1 << 20 });
  const server = new NbdServer({ exports: [], dynamicExports: true, log: () => undefined });
  t.after(async () => {
    await server.stop();
    await device.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const address = await server.listen({ kind: "tcp", host: "127.0.0.1", port: 0 });
  const port = Number(address.slice(address.lastIndexOf(":") + 1));
  assert.deepEqual(await listNbdExports("127.0.0.1", port, 2_000), []);
  server.addExport({ name: "alpha", description: "a", device });
  server.addExport({ name: "beta", description: "b", device });
  assert.deepEqual(await listNbdExports("127.0.0.1", port, 2_000), ["alpha", "beta"]);
  assert.deepEqual(await probeNbdFront("127.0.0.1", port, ["alpha", "beta"], 2_000), { problems: [], missing: [] });
  server.removeExport("beta");
  const probe = await probeNbdFront("127.0.0.1", port, ["alpha", "beta"], 2_000);
  assert.deepEqual(probe.missing, ["beta"]);
  assert.match(probe.problems[0]!, /volume beta: served here but missing/);
  await server.stop();
  const dead = await probeNbdFront("127.0.0.1", port, ["alpha"], 2_000);
  assert.match(dead.problems[0]!, /does not answer a handshake/);
});

test("a background probe returns its latest result, and one that hangs is reported hung and not started twice", async () => {
  let now = 0;
  let starts = 0;
  let finish: (value: string) => void = () => undefined;
  const probe = new BackgroundProbe<string>(
    () => {
      starts++;
      return new Promise((resolve) => (finish = resolve));
    },
    1_000,
    () => now,
  );
  const hung = (ms: number) => `hung ${ms}`;
  assert.equal(probe.poll(hung), undefined, "nothing finished yet");
  now = 500;
  assert.equal(probe.poll(hung), undefined);
  now = 1_500;
  assert.equal(probe.poll(hung), "hung 1500");
  assert.equal(starts, 1, "no second probe while the first hangs");
  finish("ok");
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(probe.poll(hung), "ok", "the latest result, and the next probe starts");
  assert.equal(starts, 2);
});
