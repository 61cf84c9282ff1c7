// A replicated volume with real processes: `haven volume serve` over a local copy and a remote one
// (a `haven replica serve` behind a TCP proxy the test controls), with fio writing through NBD.
// The replica server is killed with SIGKILL and restarted, its link is cut and blackholed, the
// engine is killed with SIGKILL and restarted; every acknowledged write survives (fio verifies),
// each returning copy catches up, and in the end both data files compare identical with cmp.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { Command as NbdCommand } from "../../src/nbd/constants.js";
import { RawNbdClient } from "../helpers/raw-nbd-client.js";
import { haveTool, killStartedProcesses, run, spawnHaven, tempDir } from "../helpers/server-process.js";
import { TcpProxy } from "../helpers/tcp-proxy.js";
import {
  replicaState,
  startReplicaServer,
  startVolume,
  writeSecret,
  type ReplicaServerProcess,
  type VolumeProcess,
} from "../helpers/volume-process.js";

const MiB = 1024 * 1024;
const VOLUME = "vol1";

// The suite takes about 50 s; one still running after 5 minutes is hung.
describe("replicated volume under failures (real processes)", { timeout: 300_000 }, () => {
  const dir = tempDir("haven-volume-");
  const localDir = join(dir.path, "local");
  const remoteDir = join(dir.path, "remote");
  const socket = join(dir.path, "nbd.sock");
  let secret: string;
  let server: ReplicaServerProcess;
  let proxy: TcpProxy;
  let engine: VolumeProcess;
  let remote: string;

  const engineArgs = (): string[] => [
    VOLUME,
    "--size",
    "256M",
    "--replica",
    localDir,
    "--replica",
    remote,
    "--secret-file",
    secret,
    "--socket",
    socket,
    "--replica-timeout",
    "1500",
    "--startup-wait",
    "20000",
  ];

  before(async () => {
    haveTool("fio");
    mkdirSync(localDir);
    mkdirSync(remoteDir);
    secret = writeSecret(dir.path);
    server = await startReplicaServer(remoteDir, secret);
    proxy = new TcpProxy("127.0.0.1", server.port);
    remote = `tcp://127.0.0.1:${await proxy.start()}`;
    engine = await startVolume(engineArgs());
  });

  after(async () => {
    await engine?.stop("SIGKILL");
    await server?.stop("SIGKILL");
    await killStartedProcesses(); // the engines and servers a failed test left, the refused ones too
    await proxy?.stop();
    dir.remove();
  });

  const fio = (extra: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> =>
    run(
      "fio",
      [
        "--name=replicated",
        "--ioengine=nbd",
        `--uri=nbd+unix:///${VOLUME}?socket=${socket}`,
        "--bs=4k",
        "--offset=0",
        "--size=96M",
        "--iodepth=16",
        "--verify=crc32c",
        "--randrepeat=1",
        "--verify_state_save=0",
        "--output-format=terse",
        ...extra,
      ],
      { timeoutMs: 240_000 },
    );

  const writesSoFar = async (): Promise<number> => (await engine.status()).io.writes;
  const waitForWrites = async (more: number): Promise<void> => {
    const target = (await writesSoFar()) + more;
    await engine.waitForStatus((s) => s.io.writes >= target, `${target} writes`);
  };
  const waitRemote = (state: string): Promise<unknown> =>
    engine.waitForStatus((s) => replicaState(s, remote) === state, `remote copy ${state}`);

  test("fio's writes survive a killed replica server, a cut link and a hung link; the copy catches up each time", async () => {
    assert.equal((await engine.status()).state, "healthy");
    const writer = fio(["--rw=randwrite", "--do_verify=0", "--rate_iops=1000"]);

    await waitForWrites(1500);
    await server.stop("SIGKILL");
    const faulted = (await engine.waitForStatus((s) => replicaState(s, remote) === "faulted", "remote faulted"))
      .replicas[1]!;
    assert.match(faulted.reason ?? "", /connection lost|closed|failed/);
    await waitForWrites(1500);
    server = await startReplicaServer(remoteDir, secret, server.port);
    await waitRemote("in-sync");
    assert.match(engine.log(), /incremental resync of \d+ bytes \(rule 4/);

    await waitForWrites(1000);
    proxy.blackhole();
    await waitRemote("faulted");
    assert.match(engine.log(), /timed out/);
    await waitForWrites(1000);
    proxy.restore();
    await waitRemote("in-sync");

    await waitForWrites(1000);
    proxy.cut();
    await waitRemote("faulted");
    await waitForWrites(500);
    proxy.restore();

    const written = await writer;
    assert.equal(written.code, 0, written.stderr);
    await waitRemote("in-sync");
    const verified = await fio(["--rw=randwrite", "--verify_only"]);
    assert.equal(verified.code, 0, `fio verify failed:\n${verified.stdout}\n${verified.stderr}`);
  });

  test("rule 3: an engine killed mid-write restarts, resyncs its activity log, and loses no acknowledged write", async () => {
    const client = await RawNbdClient.connect({ path: socket });
    await client.handshake({ name: VOLUME });
    const base = 128 * MiB;
    const stamp = (n: number): Buffer => Buffer.alloc(4096, n % 251);
    const acked = new Set<number>();
    let sent = 0;
    const inFlight = 8;
    const sendNext = (): void => {
      const n = sent++;
      client.request(NbdCommand.WRITE, { cookie: BigInt(n), offset: base + n * 4096, payload: stamp(n) });
    };
    for (let i = 0; i < inFlight; i++) sendNext();
    let killed = false;
    for (;;) {
      const reply = await client.readReply().catch(() => undefined);
      if (reply?.simple === undefined) break;
      if (reply.simple.error === 0) acked.add(Number(reply.simple.cookie));
      if (acked.size === 3000 && !killed) {
        killed = true;
        void engine.stop("SIGKILL");
      }
      if (!killed) sendNext();
    }
    assert.ok(killed && acked.size >= 3000, `the engine was killed mid-stream after ${acked.size} acknowledged writes`);

    engine = await startVolume(engineArgs());
    assert.match(engine.log(), /rule 3: the last writer did not shut down cleanly; \d+ activity-log extents/);
    await waitRemote("in-sync");
    const reader = await RawNbdClient.connect({ path: socket });
    await reader.handshake({ name: VOLUME });
    for (const n of acked) {
      reader.request(NbdCommand.READ, { cookie: BigInt(n), offset: base + n * 4096, length: 4096 });
      const reply = await reader.readReply(4096);
      assert.equal(reply?.simple?.error, 0);
      assert.ok(reply.simple.data.equals(stamp(n)), `acknowledged write ${n} reads back`);
    }
    reader.socket.destroy();
    const verified = await fio(["--rw=randwrite", "--verify_only"]);
    assert.equal(verified.code, 0, `fio verify after the engine restart failed:\n${verified.stdout}`);
  });

  test("after a clean stop the two copies' data files are byte-identical (cmp)", async () => {
    assert.equal(await engine.stop("SIGTERM"), 0);
    assert.match(engine.log(), /stopped cleanly/);
    const compared = await run("cmp", [join(localDir, VOLUME, "data.raw"), join(remoteDir, VOLUME, "data.raw")]);
    assert.equal(compared.code, 0, compared.stdout + compared.stderr);
  });

  test("an engine that cannot reach every copy refuses to start rather than pick a possibly older one", async () => {
    await server.stop("SIGKILL");
    const refused = spawnHaven(["volume", "serve", ...engineArgs().map((a) => (a === "20000" ? "1000" : a))]);
    assert.equal(await refused.exited, 1);
    assert.match(refused.log(), /not every copy of volume vol1 is reachable .*--degraded-start/s);
    server = await startReplicaServer(remoteDir, secret, server.port);
  });

  test("a wrong secret is refused by the replica server, and the engine says so", async () => {
    const wrong = writeSecret(dir.path, "a-different-secret-of-enough-length");
    const args = engineArgs().map((a) => (a === secret ? wrong : a === "20000" ? "1000" : a));
    const refused = spawnHaven(["volume", "serve", ...args]);
    assert.equal(await refused.exited, 1);
    assert.match(refused.log(), /wrong secret|refused/);
    await server.waitForLog(/refused: engine's proof does not match/);
  });
});
