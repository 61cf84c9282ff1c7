// `haven nbd serve` as an operator runs it: wrong arguments and dangerous requests get a clear message
// and a non-zero exit without touching data; a good command serves until SIGTERM and exits 0.

import { after } from "node:test";
import assert from "node:assert/strict";
import type { ChildProcessWithoutNullStreams } from "node:child_process";
import { createServer } from "node:net";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  HAVEN_BIN,
  killStartedProcesses,
  run,
  startServer,
  tempDir,
  type ServerHandle,
} from "../helpers/server-process.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** The longest test here takes about 10 s (the usage errors: one process each); past this bound it is hung. */
const test = boundedTest(120_000);

// A server a failed test left running is stopped here, or it would keep the run alive.
after(() => killStartedProcesses());

const haven = (...args: string[]) => run(process.execPath, [HAVEN_BIN, ...args], { timeoutMs: 30_000 });

test("usage errors exit 2 with a message that says what is wrong", async () => {
  const cases: Array<[string[], RegExp]> = [
    [[], /no command given[^\n]*\nRun 'haven --help' for the commands\./],
    [["frobnicate"], /unknown command "frobnicate"/],
    [["nbd"], /unknown or missing verb/],
    [["nbd", "serve"], /expected exactly one FILE, got 0/],
    [["nbd", "serve", "a", "b"], /expected exactly one FILE, got 2/],
    [["nbd", "serve", "x.img", "--bogus"], /unknown option --bogus/],
    [["nbd", "serve", "x.img", "--size", "lots"], /--size "lots" is not a size/],
    [["nbd", "serve", "x.img", "--size", "1G", "--listen", "nowhere"], /--listen "nowhere" is not HOST:PORT/],
  ];
  for (const [args, message] of cases) {
    const result = await haven(...args);
    assert.equal(result.code, 2, `exit status for ${args.join(" ")}`);
    assert.match(result.stderr + result.stdout, message, args.join(" "));
  }
});

test("errors name their registry code on the first line; version prints the package version", async () => {
  const wrong = await haven("nbd", "serve");
  assert.match(wrong.stderr.split("\n")[0]!, /^haven: expected exactly one FILE, got 0 \[HAVEN_ERR_USAGE\]$/);
  const version = await haven("version");
  assert.equal(version.code, 0);
  assert.match(version.stdout, /^haven \d+\.\d+\.\d+\n$/);
});

test("replica serve refuses a missing or too short secret, and missing options", async () => {
  const dir = tempDir();
  try {
    const serve = (secretFile: string) =>
      haven("replica", "serve", "--dir", dir.path, "--listen", "127.0.0.1:0", "--secret-file", secretFile);
    const missing = await serve(join(dir.path, "nope"));
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /cannot read --secret-file/);
    writeFileSync(join(dir.path, "short"), "tiny", { mode: 0o600 });
    const short = await serve(join(dir.path, "short"));
    assert.equal(short.code, 2);
    assert.match(short.stderr, /at least 16 bytes/);
    const noDir = await haven("replica", "serve", "--listen", "127.0.0.1:0", "--secret-file", join(dir.path, "short"));
    assert.match(noDir.stderr, /--dir is required/);
  } finally {
    dir.remove();
  }
});

test("replica serve serves an authenticated engine and exits 0 on SIGTERM", async () => {
  const dir = tempDir();
  const { spawn } = await import("node:child_process");
  const { ReplicaClient } = await import("../../src/replica/replica-client.js");
  const { FrameType } = await import("../../src/replica/protocol/constants.js");
  let started: ChildProcessWithoutNullStreams | undefined;
  let client: Awaited<ReturnType<typeof ReplicaClient.connect>> | undefined;
  try {
    writeFileSync(join(dir.path, "secret"), "a cluster secret of some length\n", { mode: 0o600 });
    const child = spawn(process.execPath, [
      HAVEN_BIN,
      "replica",
      "serve",
      "--dir",
      join(dir.path, "replicas"),
      "--listen",
      "127.0.0.1:0",
      "--secret-file",
      join(dir.path, "secret"),
    ]);
    started = child;
    let log = "";
    const listening = new Promise<number>((resolve, reject) => {
      child.stderr.on("data", (chunk: Buffer) => {
        log += chunk.toString();
        const match = /serving replicas in .* on 127\.0\.0\.1:(\d+)/.exec(log);
        if (match) resolve(Number(match[1]));
      });
      child.once("exit", () => reject(new Error(`exited early: ${log}`)));
    });
    const port = await listening;
    client = await ReplicaClient.connect("127.0.0.1", port, Buffer.from("a cluster secret of some length"));
    await client.openReplica("00000000000000c1", {
      volumeId: "00000000000000c1",
      sizeBytes: 1024 * 1024,
      regionBytes: 64 * 1024,
    });
    await client.request(FrameType.WRITE, { epoch: 1n, offset: 0n, payload: Buffer.alloc(4096, 0x33) });
    const read = await client.request(FrameType.READ, { offset: 0n, length: 4096 });
    assert.ok(read.payload.every((byte) => byte === 0x33));
    client.close();
    const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
    child.kill("SIGTERM");
    assert.equal(await exited, 0);
    assert.match(log, /stopped cleanly/);
    assert.ok(
      readFileSync(join(dir.path, "replicas", "00000000000000c1", "data.raw"))
        .subarray(0, 4096)
        .every((b) => b === 0x33),
    );
  } finally {
    client?.close();
    // A server left running by a failure is killed by its pid.
    if (started !== undefined && started.exitCode === null && started.signalCode === null) {
      const gone = new Promise((resolve) => started!.once("exit", resolve));
      started.kill("SIGKILL");
      await gone;
    }
    dir.remove();
  }
});

test("help prints the options and exits 0", async () => {
  const result = await haven("nbd", "serve", "--help");
  assert.equal(result.code, 0);
  assert.match(result.stdout, /--read-only/);
});

test("dangerous or impossible requests are refused and leave the data intact", async () => {
  const dir = tempDir();
  try {
    const file = join(dir.path, "data.img");
    const content = Buffer.alloc(1024 * 1024, 0x5a);
    writeFileSync(file, content);
    const resize = await haven("nbd", "serve", file, "--size", "2M", "--listen", "127.0.0.1:0");
    assert.equal(resize.code, 2);
    assert.match(resize.stderr, /never resizes existing data/);
    const missing = await haven("nbd", "serve", join(dir.path, "absent.img"), "--listen", "127.0.0.1:0");
    assert.equal(missing.code, 3);
    assert.match(missing.stderr, /does not exist; pass --size/);
    const notSocket = await haven("nbd", "serve", file, "--socket", file);
    assert.equal(notSocket.code, 2);
    assert.match(notSocket.stderr, /is not a socket; refusing to replace it/);
    assert.ok(readFileSync(file).equals(content), "the data file is unchanged");
  } finally {
    dir.remove();
  }
});

test("a port or socket already in use is reported, not stolen", async () => {
  const dir = tempDir();
  const blocker = createServer();
  await new Promise<void>((resolve) => blocker.listen(0, "127.0.0.1", resolve));
  const port = (blocker.address() as { port: number }).port;
  let first: ServerHandle | undefined;
  try {
    const busy = await haven("nbd", "serve", join(dir.path, "a.img"), "--size", "1M", "--listen", `127.0.0.1:${port}`);
    assert.equal(busy.code, 2);
    assert.match(busy.stderr, /cannot listen on 127\.0\.0\.1:\d+: .*EADDRINUSE/);
    first = await startServer({ dir: dir.path, size: "1M" });
    const second = await haven("nbd", "serve", first.file, "--socket", first.socketPath);
    assert.equal(second.code, 2);
    assert.match(second.stderr, /in use by another running server/);
    assert.equal(await first.stop(), 0);
  } finally {
    await first?.stop("SIGKILL");
    blocker.close();
    dir.remove();
  }
});

test("the server logs each connection and exits 0 on SIGTERM", async () => {
  const dir = tempDir();
  let server: ServerHandle | undefined;
  try {
    server = await startServer({ dir: dir.path, size: "4M" });
    const { code } = await run("nbdinfo", ["--size", server.uri]);
    assert.equal(code, 0);
    await server.waitForLog(/closed: client sent DISC/);
    assert.match(server.log(), /conn 1 \(127\.0\.0\.1:\d+\): export "disk" opened/);
    assert.equal(await server.stop("SIGTERM"), 0);
    assert.match(server.log(), /SIGTERM: finishing in-flight requests/);
    assert.match(server.log(), /stopped cleanly/);
  } finally {
    await server?.stop("SIGKILL");
    dir.remove();
  }
});
