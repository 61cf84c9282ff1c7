// A volume's stable disk endpoint under real NBD clients (nbdinfo, nbdcopy, qemu-io): one unix socket
// that is routed to this host's NBD front, to another host's NBD port, or nowhere, and that QEMU's
// client keeps using across a route change from one primary to another. Two real NbdServers over
// files stand for the two hosts' primaries: "host A" is local (the endpoint hands it connections and
// it also serves its own unix socket, for checking), "host B" listens on TCP 127.0.0.1. Every wait is
// for an event (a log line, a socket closing, a line of qemu-io output), bounded by the test timeout.

import { after, before, describe, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { connect, createServer, type Socket } from "node:net";
import { join } from "node:path";
import { DiskEndpoints } from "../../src/agent/disk-endpoints.js";
import { FileDevice } from "../../src/block/file-device.js";
import { NbdServer } from "../../src/nbd/server.js";
import { boundedTest } from "../helpers/bounded-test.js";
import { failsWith } from "../helpers/errors.js";
import { haveTool, run, tempDir } from "../helpers/server-process.js";

const test = boundedTest(120_000);

const VOLUME = "vol1";
const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 16 * MiB;

/** Log lines, with a wait for the first line (already seen or still to come) that matches. */
class LogWatch {
  readonly lines: string[] = [];
  private readonly waiters: Array<{ pattern: RegExp; from: number; resolve: (line: string) => void }> = [];

  readonly push = (line: string): void => {
    this.lines.push(line);
    for (const waiter of [...this.waiters]) {
      if (waiter.pattern.test(line)) {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        waiter.resolve(line);
      }
    }
  };

  /** A mark for `next`: only lines logged after it count. */
  mark(): number {
    return this.lines.length;
  }

  next(pattern: RegExp, from: number): Promise<string> {
    const seen = this.lines.slice(from).find((line) => pattern.test(line));
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve) => this.waiters.push({ pattern, from, resolve }));
  }
}

/**
 * One interactive qemu-io process (commands on stdin, one at a time): the same NBD client code as a
 * QEMU VM's disk, kept open across route changes. Stopped by its pid.
 */
class QemuIoSession {
  private output = "";
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly exited: Promise<number | null>;

  constructor(imageOpts: string) {
    this.child = spawn("qemu-io", ["--image-opts", imageOpts], { stdio: ["pipe", "pipe", "pipe"] });
    this.child.stdout.on("data", (chunk: Buffer) => (this.output += chunk.toString("utf8")));
    this.child.stderr.on("data", (chunk: Buffer) => (this.output += chunk.toString("utf8")));
    this.child.stdin.on("error", () => undefined);
    this.exited = new Promise((resolve) => this.child.once("exit", (code) => resolve(code)));
  }

  /** Sends a command without waiting for it (it may be held while the client reconnects). */
  send(command: string): number {
    const mark = this.output.length;
    this.child.stdin.write(`${command}\n`);
    return mark;
  }

  /** Waits for `expected` in the output after `mark`; fails on an error or a pattern mismatch. */
  async expect(mark: number, expected: string): Promise<void> {
    for (;;) {
      const since = this.output.slice(mark);
      assert.doesNotMatch(since, /Pattern verification failed|failed|error/i, `qemu-io reported:\n${since}`);
      if (since.includes(expected)) return;
      const exitedEarly = await Promise.race([
        this.exited.then(() => true),
        new Promise<false>((resolve) => this.child.stdout.once("data", () => resolve(false))),
      ]);
      if (exitedEarly) assert.fail(`qemu-io exited before printing "${expected}":\n${this.output}`);
    }
  }

  async command(command: string, expected: string): Promise<void> {
    await this.expect(this.send(command), expected);
  }

  /** Quits, or kills it by pid if it does not exit after quit. */
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.stdin.end("quit\n");
    const timer = setTimeout(() => this.child.pid !== undefined && process.kill(this.child.pid, "SIGKILL"), 10_000);
    await this.exited;
    clearTimeout(timer);
  }
}

/** True when every tool is on PATH; otherwise skips the test (haveTool throws in CI instead). */
function needs(t: TestContext, ...tools: string[]): boolean {
  const missing = tools.filter((tool) => !haveTool(tool));
  if (missing.length === 0) return true;
  t.skip(`${missing.join(", ")} not installed`);
  return false;
}

async function mustRun(command: string, args: string[]): Promise<string> {
  const result = await run(command, args, { timeoutMs: 60_000 });
  const output = `${result.stdout}\n${result.stderr}`;
  assert.equal(result.code, 0, `${command} ${args.join(" ")} exited with ${result.code}:\n${output}`);
  assert.doesNotMatch(output, /Pattern verification failed/, output);
  return result.stdout;
}

const unixUri = (socketPath: string): string => `nbd+unix:///${VOLUME}?socket=${socketPath}`;

/** Connects to a unix socket and resolves with the first bytes it receives (an NBD server's greeting). */
function connectAndGreet(path: string): Promise<{ socket: Socket; greeting: Buffer; closed: Promise<void> }> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    const closed = new Promise<void>((done) => socket.once("close", () => done()));
    socket.once("error", reject);
    socket.once("data", (greeting: Buffer) => resolve({ socket, greeting, closed }));
  });
}

describe("disk endpoints", { timeout: 300_000 }, () => {
  const dir = tempDir("haven-endpoint-");
  const endpointDir = join(dir.path, "endpoints");
  const hostALog = new LogWatch();
  const hostBLog = new LogWatch();
  const endpointLog = new LogWatch();
  let deviceA: FileDevice;
  let deviceB: FileDevice;
  let hostA: NbdServer;
  let hostB: NbdServer;
  let hostBPort: number;
  const hostADirect = join(dir.path, "host-a.sock");
  let endpoints: DiskEndpoints;
  let endpoint: string;

  before(async () => {
    deviceA = await FileDevice.open(join(dir.path, "a.img"), { createSizeBytes: SIZE });
    deviceB = await FileDevice.open(join(dir.path, "b.img"), { createSizeBytes: SIZE });
    hostA = new NbdServer({ exports: [{ name: VOLUME, description: "", device: deviceA }], log: hostALog.push });
    hostB = new NbdServer({ exports: [{ name: VOLUME, description: "", device: deviceB }], log: hostBLog.push });
    await hostA.listen({ kind: "unix", path: hostADirect });
    hostBPort = Number((await hostB.listen({ kind: "tcp", host: "127.0.0.1", port: 0 })).split(":").pop());
    endpoints = new DiskEndpoints({ directory: endpointDir, local: hostA, log: endpointLog.push });
    endpoint = await endpoints.open(VOLUME);
  });

  after(async () => {
    await endpoints?.stop();
    await hostA?.stop();
    await hostB?.stop();
    await deviceA?.close();
    await deviceB?.close();
    dir.remove();
  });

  test("the endpoint is a 0600 socket in a 0700 directory, at DIR/<volume>.sock", () => {
    assert.equal(endpoint, join(endpointDir, `${VOLUME}.sock`));
    assert.equal(endpoints.socketPath(VOLUME), endpoint);
    const socket = statSync(endpoint);
    assert.ok(socket.isSocket());
    assert.equal(socket.mode & 0o777, 0o600);
    assert.equal(statSync(endpointDir).mode & 0o777, 0o700);
  });

  test("an endpoint routed nowhere closes new connections: nbdinfo fails, nothing reaches a server", async (t) => {
    if (!needs(t, "nbdinfo")) return;
    assert.equal(endpoints.status()[0]?.route.kind, "none", "a new endpoint is routed nowhere");
    const refusedBefore = endpoints.status()[0]!.refused;
    const hostAConnections = hostALog.lines.filter((line) => / opened /.test(line)).length;
    const result = await run("nbdinfo", [unixUri(endpoint)], { timeoutMs: 30_000 });
    assert.notEqual(result.code, 0, `nbdinfo must fail while the endpoint is routed nowhere:\n${result.stdout}`);
    assert.ok(endpoints.status()[0]!.refused > refusedBefore);
    assert.equal(hostALog.lines.filter((line) => / opened /.test(line)).length, hostAConnections);
  });

  test("routed local, the local NBD front serves the endpoint: what is written through it is in the volume", async (t) => {
    if (!needs(t, "nbdinfo", "qemu-io")) return;
    endpoints.route(VOLUME, { kind: "local" });
    const info = JSON.parse(await mustRun("nbdinfo", ["--json", unixUri(endpoint)])) as {
      exports: Array<{ "export-size": number }>;
    };
    assert.equal(info.exports[0]?.["export-size"], SIZE);
    await mustRun("qemu-io", ["-f", "raw", "-c", "write -P 0x5a 1M 256k", "-c", "flush", unixUri(endpoint)]);
    // Read back through host A's own export, not through the endpoint.
    await mustRun("qemu-io", ["-f", "raw", "-c", "read -P 0x5a 1M 256k", unixUri(hostADirect)]);
    assert.ok(
      hostALog.lines.some((line) => /disk endpoint vol1.*bytes written/.test(line) && !/ 0 bytes written/.test(line)),
      `host A logged no connection from the endpoint that wrote:\n${hostALog.lines.join("\n")}`,
    );
  });

  test("routed remote, bytes go both ways to the primary's NBD port: nbdcopy in, read back from its own export", async (t) => {
    if (!needs(t, "nbdcopy", "qemu-io")) return;
    endpoints.route(VOLUME, { kind: "remote", host: "127.0.0.1", port: hostBPort });
    const data = randomBytes(4 * MiB);
    const input = join(dir.path, "in.bin");
    const viaEndpoint = join(dir.path, "via-endpoint.bin");
    writeFileSync(input, Buffer.concat([data, Buffer.alloc(SIZE - data.length)]));
    await mustRun("nbdcopy", ["--flush", input, unixUri(endpoint)]);
    // Host B's own export holds the bytes; host A's does not.
    const viaHostB = join(dir.path, "via-b.bin");
    await mustRun("nbdcopy", [`nbd://127.0.0.1:${hostBPort}/${VOLUME}`, viaHostB]);
    assert.ok(readFileSync(viaHostB).subarray(0, data.length).equals(data), "host B's export lacks the data");
    // And reading through the endpoint (replies piped back) gives the same bytes.
    await mustRun("nbdcopy", [unixUri(endpoint), viaEndpoint]);
    assert.ok(readFileSync(viaEndpoint).equals(readFileSync(input)), "reading through the endpoint differs");
    const hostAFirst = join(dir.path, "via-a.bin");
    await mustRun("nbdcopy", [unixUri(hostADirect), hostAFirst]);
    assert.ok(!readFileSync(hostAFirst).subarray(0, data.length).equals(data), "the remote route wrote to host A");
  });

  test("a route change closes every connection opened on the old route, and new ones take the new route", async () => {
    endpoints.route(VOLUME, { kind: "local" });
    const onLocal = await connectAndGreet(endpoint);
    assert.equal(onLocal.greeting.subarray(0, 8).toString("latin1"), "NBDMAGIC");
    assert.equal(endpoints.status()[0]!.connections, 1);
    endpoints.route(VOLUME, { kind: "remote", host: "127.0.0.1", port: hostBPort });
    await onLocal.closed;
    const onRemote = await connectAndGreet(endpoint);
    assert.equal(onRemote.greeting.subarray(0, 8).toString("latin1"), "NBDMAGIC");
    // The greeting came from host B, which holds the piped connection; host A holds none.
    assert.equal(hostB.connectionCount, 1);
    assert.equal(hostA.connectionCount, 0);
    endpoints.route(VOLUME, { kind: "remote", host: "127.0.0.1", port: hostBPort });
    assert.ok(!onRemote.socket.destroyed, "routing to the same target again keeps its connections");
    endpoints.route(VOLUME, { kind: "none", reason: "switchover in progress" });
    await onRemote.closed;
    assert.equal(endpoints.status()[0]!.connections, 0);
  });

  test("QEMU's NBD client (reconnect-delay) keeps working across a switchover from host A to host B", async (t) => {
    if (!needs(t, "qemu-io", "nbdcopy")) return;
    endpoints.route(VOLUME, { kind: "local" });
    const qemu = new QemuIoSession(
      `driver=nbd,server.type=unix,server.path=${endpoint},export=${VOLUME},reconnect-delay=20`,
    );
    try {
      await qemu.command("write -P 0x11 0 64k", "wrote 65536/65536 bytes at offset 0");
      await qemu.command("flush", "qemu-io> ");

      // The switchover: no primary for a while, then host B, holding what host A held.
      const refusals = endpointLog.mark();
      endpoints.route(VOLUME, { kind: "none", reason: "switchover" });
      await mustRun("nbdcopy", ["--flush", unixUri(hostADirect), `nbd://127.0.0.1:${hostBPort}/${VOLUME}`]);
      // This write finds its connection closed and waits while the client retries the same socket.
      const heldWrite = qemu.send("write -P 0x22 64k 64k");
      await endpointLog.next(/vol1: refused a connection: no primary serves the volume \(switchover\)/, refusals);
      const hostBMark = hostBLog.mark();
      endpoints.route(VOLUME, { kind: "remote", host: "127.0.0.1", port: hostBPort });
      await qemu.expect(heldWrite, "wrote 65536/65536 bytes at offset 65536");
      await hostBLog.next(/export "vol1" opened/, hostBMark);

      await qemu.command("write -P 0x33 128k 64k", "wrote 65536/65536 bytes at offset 131072");
      await qemu.command("read -P 0x11 0 64k", "read 65536/65536 bytes at offset 0");
      await qemu.command("read -P 0x22 64k 64k", "read 65536/65536 bytes at offset 65536");
      await qemu.command("read -P 0x33 128k 64k", "read 65536/65536 bytes at offset 131072");
      await qemu.command("flush", "qemu-io> ");
    } finally {
      await qemu.stop();
    }
    // Host B's own export has every write; host A's stopped at the switchover.
    await mustRun("qemu-io", [
      "-f",
      "raw",
      "-c",
      "read -P 0x11 0 64k",
      "-c",
      "read -P 0x22 64k 64k",
      "-c",
      "read -P 0x33 128k 64k",
      `nbd://127.0.0.1:${hostBPort}/${VOLUME}`,
    ]);
    await mustRun("qemu-io", ["-f", "raw", "-c", "read -P 0x00 64k 128k", unixUri(hostADirect)]);
  });

  test("a volume name that is not a safe file name is refused with HAVEN_ERR_INVALID_REQUEST", async () => {
    for (const name of ["", "..", ".", "a/b", "../etc", "Vol", "x".repeat(64), "a\0b"]) {
      await assert.rejects(endpoints.open(name), failsWith("HAVEN_ERR_INVALID_REQUEST", /cannot name a disk endpoint/));
      assert.throws(() => endpoints.socketPath(name), failsWith("HAVEN_ERR_INVALID_REQUEST", /cannot name/));
    }
    assert.throws(
      () => endpoints.route("nothere", { kind: "local" }),
      failsWith("HAVEN_ERR_NOT_FOUND", /no disk endpoint open/),
    );
    assert.throws(
      () => endpoints.route(VOLUME, { kind: "remote", host: "127.0.0.1", port: 70_000 }),
      failsWith("HAVEN_ERR_INVALID_REQUEST", /port must be/),
    );
    assert.throws(
      () => endpoints.route(VOLUME, { kind: "sideways" } as never),
      failsWith("HAVEN_ERR_INVALID_REQUEST", /kind must be/),
    );
  });

  test("a path that exists and is not a socket is refused and left alone; a live socket is refused too", async () => {
    const file = join(endpointDir, "vol2.sock");
    writeFileSync(file, "not a socket");
    await assert.rejects(endpoints.open("vol2"), failsWith("HAVEN_ERR_CONFIG", /exists and is not a socket/));
    assert.equal(readFileSync(file, "utf8"), "not a socket");
    mkdirSync(join(endpointDir, "vol3.sock"));
    await assert.rejects(endpoints.open("vol3"), failsWith("HAVEN_ERR_CONFIG", /exists and is not a socket/));

    const live = createServer();
    await new Promise<void>((resolve) => live.listen(join(endpointDir, "vol4.sock"), resolve));
    try {
      await assert.rejects(endpoints.open("vol4"), failsWith("HAVEN_ERR_CONFIG", /in use by another running server/));
    } finally {
      await new Promise<void>((resolve) => live.close(() => resolve()));
    }
    const notADirectory = join(dir.path, "plain-file");
    writeFileSync(notADirectory, "");
    assert.throws(
      () => new DiskEndpoints({ directory: notADirectory, local: hostA }),
      failsWith("HAVEN_ERR_CONFIG", /disk endpoint directory/),
    );
  });

  test("a stale socket file left by a dead agent is replaced", async (t) => {
    if (!needs(t, "python3")) return;
    const stale = join(endpointDir, "vol5.sock");
    // A socket bound and never closed by a process that then exited: the file stays, nobody listens.
    const made = spawnSync("python3", [
      "-c",
      `import socket; socket.socket(socket.AF_UNIX).bind(${JSON.stringify(stale)})`,
    ]);
    assert.equal(made.status, 0, made.stderr.toString());
    assert.ok(statSync(stale).isSocket());
    assert.equal(await endpoints.open("vol5"), stale);
    assert.equal(statSync(stale).mode & 0o777, 0o600);
    await endpoints.close("vol5");
    assert.ok(!existsSync(stale), "close removes the socket file");
  });

  test("the NBD front's connection limit holds for connections handed over by an endpoint", async () => {
    const limited = new NbdServer({
      exports: [{ name: VOLUME, description: "", device: deviceA }],
      limits: { maxConnections: 1 },
      log: () => undefined,
    });
    const limitedEndpoints = new DiskEndpoints({
      directory: join(dir.path, "limited"),
      local: limited,
      log: () => undefined,
    });
    try {
      const path = await limitedEndpoints.open(VOLUME);
      limitedEndpoints.route(VOLUME, { kind: "local" });
      const first = await connectAndGreet(path);
      const second = connect(path);
      second.on("error", () => undefined);
      await new Promise<void>((resolve) => second.once("close", () => resolve()));
      assert.ok(!first.socket.destroyed, "the connection within the limit stays open");
      first.socket.destroy();
      await first.closed;
    } finally {
      await limitedEndpoints.stop();
      await limited.stop();
    }
  });
});
