// A copy behind a replica server is the same ReplicaPort as a copy on a local disk (DESIGN.md: local
// RAID1 and network RAID are one mechanism): the same contract passes for LocalReplicaPort, for
// RemoteReplicaPort against an in-process ReplicaServer, and against a real `haven replica serve`,
// with byte-identical reads, checksums and block status. A remote copy that stops answering is given
// up within its timeout (onLost once, every pending request rejected saying why); a server that breaks
// the protocol is disconnected with a logged reason; bad locations and missing secrets are refused.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Server, type Socket } from "node:net";
import { createHash, randomBytes } from "node:crypto";
import { HavenError } from "../../src/core/errors.js";
import { LocalReplicaPort } from "../../src/replica/local-port.js";
import { parseReplicaLocation, replicaOpener } from "../../src/replica/open-replica.js";
import { REGION_DIGEST_BYTES, type CreateOptions, type ReplicaPort } from "../../src/replica/port.js";
import { FrameType } from "../../src/replica/protocol/constants.js";
import { authenticateEngine, frame, FrameConnection } from "../../src/replica/protocol/connection.js";
import type { Frame } from "../../src/replica/protocol/frame-codec.js";
import { RemoteReplicaPort } from "../../src/replica/remote-port.js";
import { ReplicaServer } from "../../src/replica/replica-server.js";
import { tempDir } from "../helpers/server-process.js";
import { TcpProxy } from "../helpers/tcp-proxy.js";
import { startReplicaServer, writeSecret } from "../helpers/volume-process.js";

const SECRET = Buffer.from("a shared secret of the test cluster");
const MiB = 1024 * 1024;
const SIZE = 80 * MiB;
const REGION = 64 * 1024;
const GEN_A = "0123456789abcdef";
const createOptions = (volumeId: string): CreateOptions => ({ volumeId, sizeBytes: SIZE, regionBytes: REGION });
const remoteOptions = { secret: SECRET, requestTimeoutMs: 10_000, connectTimeoutMs: 5_000 };

type Opener = (name: string, create: CreateOptions | undefined) => Promise<ReplicaPort>;

const havenError = (code: string, message: RegExp) => (error: unknown) =>
  error instanceof HavenError && error.code === code && message.test(error.message);

/**
 * The ReplicaPort contract, checked against a LocalReplicaPort `reference` that gets the same
 * operations: every answer (bytes, checksums, block status, metadata, errors) must match it.
 */
async function checkContract(open: Opener, referenceDir: string, name: string, local: boolean): Promise<void> {
  const create = createOptions("00000000000000d1");
  await assert.rejects(open(name, undefined), havenError("HAVEN_ERR_NOT_FOUND", /holds no replica/));
  const port = await open(name, create);
  const reference = await LocalReplicaPort.open(referenceDir, name, create);
  const both = <T>(op: (p: ReplicaPort) => Promise<T>): Promise<[T, T]> => Promise.all([op(port), op(reference)]);
  try {
    assert.equal(port.local, local);
    assert.equal(port.metadata.volumeId, "00000000000000d1");
    assert.equal(port.metadata.sizeBytes, SIZE);
    assert.equal(port.metadata.regionBytes, REGION);
    assert.equal(port.metadata.highestEpoch, 0);

    // Writes of one buffer, of several pieces (FUA), and one larger than a frame (split, pieces kept).
    const first = randomBytes(4 * MiB);
    await both((p) => p.write(1, 0, first, false));
    const pieces = [randomBytes(3000), randomBytes(5000), randomBytes(1)];
    await both((p) => p.write(1, 6 * MiB + 512, pieces, true));
    const big = Array.from({ length: 7 }, () => randomBytes(6 * MiB));
    await both((p) => p.write(1, 8 * MiB, big, false));
    assert.ok((await port.read(0, 4 * MiB)).equals(first));
    assert.ok((await port.read(6 * MiB + 512, 8001)).equals(Buffer.concat(pieces)));
    assert.ok((await port.read(8 * MiB, 42 * MiB)).equals(Buffer.concat(big)), "a read larger than a frame");

    // Trim and write-zeroes read back as zeroes; block status reports the trimmed range as a hole.
    await both((p) => p.trim(1, 2 * MiB, 2 * MiB, false));
    await both((p) => p.writeZeroes(1, 9 * MiB, MiB, true));
    assert.ok((await port.read(2 * MiB, 2 * MiB)).every((byte) => byte === 0));
    assert.ok((await port.read(9 * MiB, MiB)).every((byte) => byte === 0));
    const [holes, referenceHoles] = await both((p) => p.blockStatus(2 * MiB, 2 * MiB));
    assert.deepEqual(holes, referenceHoles);
    assert.deepEqual(holes[0], { length: 2 * MiB, hole: true, zero: true });
    const [extents, referenceExtents] = await both((p) => p.blockStatus(0, SIZE));
    assert.deepEqual(extents, referenceExtents);
    assert.equal(
      extents.reduce((sum, e) => sum + e.length, 0),
      SIZE,
    );
    await both((p) => p.flush());

    // Checksums: equal to the local copy's for the same bytes, over several frames and a partial region.
    const [sums, referenceSums] = await both((p) => p.checksum(0, SIZE, REGION));
    assert.equal(sums.length, (SIZE / REGION) * REGION_DIGEST_BYTES);
    assert.ok(sums.equals(referenceSums));
    const firstRegion = createHash("sha256").update(first.subarray(0, REGION)).digest();
    assert.ok(sums.subarray(0, REGION_DIGEST_BYTES).equals(firstRegion.subarray(0, REGION_DIGEST_BYTES)));
    const [partial, referencePartial] = await both((p) => p.checksum(100, 200_000, 4096));
    assert.equal(partial.length, Math.ceil(200_000 / 4096) * REGION_DIGEST_BYTES);
    assert.ok(partial.equals(referencePartial));
    assert.ok((await port.checksum(0, 0, REGION)).length === 0);

    // Metadata: the writer's patch is durable and returned; the epoch is admitted.
    const patch = {
      generations: { current: GEN_A, bitmap: "", history: [] },
      changedSince: {},
      activityLog: [0, 2],
      resync: null,
    };
    const updated = await port.updateMetadata(2, patch);
    assert.deepEqual(updated.generations, patch.generations);
    assert.deepEqual(updated.activityLog, [0, 2]);
    assert.equal(updated.highestEpoch, 2);
    assert.deepEqual(port.metadata, updated);

    // Refusals come back as the same error codes.
    await assert.rejects(
      port.write(1, 0, Buffer.alloc(4096, 1), false),
      havenError("HAVEN_ERR_STALE_EPOCH", /epoch 1 is stale/),
    );
    await assert.rejects(port.trim(1, 0, 4096, false), havenError("HAVEN_ERR_STALE_EPOCH", /stale/));
    await assert.rejects(port.updateMetadata(1, { activityLog: [] }), havenError("HAVEN_ERR_STALE_EPOCH", /stale/));
    assert.ok((await port.read(0, 2 * MiB)).equals(first.subarray(0, 2 * MiB)), "refused writes changed nothing");
    await assert.rejects(port.read(SIZE - 10, 20), havenError("HAVEN_ERR_OUT_OF_RANGE", /past/));
    await assert.rejects(port.write(2, SIZE - 1, Buffer.alloc(2), false), havenError("HAVEN_ERR_OUT_OF_RANGE", /past/));
    await assert.rejects(port.checksum(0, REGION, 1000), havenError("HAVEN_ERR_INVALID_REQUEST", /power of two/));
  } finally {
    await port.close();
    await port.close(); // closing twice is harmless
    await reference.close();
  }
  // Reopened (asking to create it anew), the copy is the same one, with its metadata.
  const again = await open(name, createOptions("00000000000000d2"));
  try {
    assert.equal(again.metadata.volumeId, "00000000000000d1");
    assert.equal(again.metadata.generations.current, GEN_A);
    assert.equal(again.metadata.highestEpoch, 2);
  } finally {
    await again.close();
  }
}

// The suite takes about 25 s; one still running after 3 minutes is hung.
describe("RemoteReplicaPort", { timeout: 180_000 }, () => {
  const dir = tempDir("haven-remote-port-");
  const logs: string[] = [];
  let server: ReplicaServer;
  let port: number;

  before(async () => {
    server = new ReplicaServer({ directory: `${dir.path}/served`, secret: SECRET, log: (line) => logs.push(line) });
    port = Number((await server.listen("127.0.0.1", 0)).split(":")[1]);
  });
  after(async () => {
    await server.stop();
    dir.remove();
  });

  test("LocalReplicaPort passes the replica contract (the reference)", async () => {
    await checkContract(
      (name, create) => LocalReplicaPort.open(`${dir.path}/local`, name, create),
      `${dir.path}/reference-local`,
      "vol1",
      true,
    );
  });

  test("a remote copy passes the same contract as a local one (in-process replica server)", async () => {
    const location = `tcp://127.0.0.1:${port}`;
    await checkContract(
      (name, create) => RemoteReplicaPort.open(location, name, create, remoteOptions),
      `${dir.path}/reference-remote`,
      "vol1",
      false,
    );
    assert.ok(logs.some((line) => /opened "vol1" \(volume 00000000000000d1/.test(line)));
  });

  test("a remote copy passes the contract against a real `haven replica serve`", async () => {
    const secretFile = writeSecret(dir.path, SECRET.toString());
    const real = await startReplicaServer(`${dir.path}/real`, secretFile);
    try {
      const opener = replicaOpener({ secret: SECRET, requestTimeoutMs: 10_000, connectTimeoutMs: 5_000 });
      await checkContract(
        (name, create) => opener(`tcp://127.0.0.1:${real.port}`, name, create),
        `${dir.path}/reference-real`,
        "vol-real",
        false,
      );
      await real.waitForLog(/opened "vol-real"/);
    } finally {
      assert.equal(await real.stop(), 0);
    }
    assert.match(real.log(), /stopped cleanly/);
  });

  test("a request not answered in time ends the connection: onLost once, every pending request says why", async () => {
    const proxy = new TcpProxy("127.0.0.1", port);
    await proxy.start();
    const location = `tcp://127.0.0.1:${proxy.port}`;
    try {
      const remote = await RemoteReplicaPort.open(location, "hung", createOptions("00000000000000e1"), {
        ...remoteOptions,
        requestTimeoutMs: 500,
      });
      const lost: Error[] = [];
      remote.onLost = (error) => lost.push(error);
      await remote.write(1, 0, Buffer.alloc(4096, 1), false);
      proxy.blackhole();
      const sentAt = performance.now();
      const pending = await Promise.allSettled([
        remote.write(1, 0, Buffer.alloc(4096, 2), true),
        remote.read(0, 4096),
        remote.flush(),
        remote.updateMetadata(1, { activityLog: [0] }),
      ]);
      // Each request's deadline is its send time plus the timeout on the monotonic clock, and a loaded
      // machine can only make the sweep that enforces it later: a lower bound no load can break.
      assert.ok(performance.now() - sentAt >= 499, "not given up before the timeout");
      const message = `replica ${location} timed out after 500 ms on WRITE`;
      for (const result of pending) {
        assert.equal(result.status, "rejected");
        assert.ok(
          havenError("HAVEN_ERR_IO", new RegExp(`^${escape(message)}$`))((result as PromiseRejectedResult).reason),
        );
      }
      await assert.rejects(remote.read(0, 4096), havenError("HAVEN_ERR_IO", /timed out after 500 ms on WRITE/));
      await new Promise((resolve) => setImmediate(resolve));
      assert.equal(lost.length, 1, "onLost is called exactly once");
      assert.equal(lost[0]!.message, message);
      await remote.close();
    } finally {
      await proxy.stop();
    }
  });

  test("a dropped connection rejects pending requests and calls onLost once; close() never calls it", async () => {
    const proxy = new TcpProxy("127.0.0.1", port);
    await proxy.start();
    const location = `tcp://127.0.0.1:${proxy.port}`;
    try {
      const remote = await RemoteReplicaPort.open(
        location,
        "dropped",
        createOptions("00000000000000e2"),
        remoteOptions,
      );
      const lost: Error[] = [];
      remote.onLost = (error) => lost.push(error);
      proxy.blackhole();
      const pending = remote.read(0, 4096);
      proxy.cut();
      await assert.rejects(
        pending,
        havenError("HAVEN_ERR_IO", new RegExp(`^replica ${escape(location)}: connection lost`)),
      );
      await new Promise((resolve) => setImmediate(resolve));
      assert.equal(lost.length, 1);
      await remote.close();

      proxy.restore();
      const closing = await RemoteReplicaPort.open(location, "dropped", undefined, remoteOptions);
      let called = 0;
      closing.onLost = () => called++;
      await closing.close();
      await new Promise((resolve) => setTimeout(resolve, 20));
      assert.equal(called, 0, "a deliberate close is not a loss");
      await assert.rejects(closing.read(0, 10), havenError("HAVEN_ERR_IO", /closed by this side/));
    } finally {
      await proxy.stop();
    }
  });

  test("connecting fails with a clear error: refused, wrong secret, no answer", async () => {
    const spare = createServer();
    await new Promise<void>((resolve) => spare.listen(0, "127.0.0.1", resolve));
    const sparePort = (spare.address() as { port: number }).port;
    await new Promise((resolve) => spare.close(resolve));
    await assert.rejects(
      RemoteReplicaPort.open(`tcp://127.0.0.1:${sparePort}`, "x", undefined, remoteOptions),
      havenError("HAVEN_ERR_IO", /cannot connect to replica tcp:\/\/127\.0\.0\.1:\d+: .*ECONNREFUSED/),
    );
    await assert.rejects(
      RemoteReplicaPort.open(`tcp://127.0.0.1:${port}`, "x", undefined, {
        ...remoteOptions,
        secret: Buffer.from("another secret, long enough"),
      }),
      havenError("HAVEN_ERR_CONFIG", /refused us: wrong secret/),
    );
    const silent = await listen(() => undefined);
    try {
      // The message names the bound that ended the wait: the 200 ms connect timeout, not the request
      // timeout or anything else (a wall-clock bound would say less and break on a loaded machine).
      await assert.rejects(
        RemoteReplicaPort.open(`tcp://127.0.0.1:${silent.port}`, "x", undefined, {
          ...remoteOptions,
          connectTimeoutMs: 200,
        }),
        havenError("HAVEN_ERR_IO", /cannot connect to replica tcp:\/\/127\.0\.0\.1:\d+: no answer within 200 ms/),
      );
    } finally {
      await silent.close();
    }
  });

  test("a server that breaks the protocol is disconnected with a logged reason", async () => {
    const metadata = {
      volumeId: "00000000000000f1",
      copyId: "00000000000000f2",
      sizeBytes: MiB,
      regionBytes: REGION,
      generations: { current: "", bitmap: "", history: [] },
      highestEpoch: 0,
      cleanShutdown: true,
      changedSince: {},
      activityLog: [],
      resync: null,
    };
    // A fake replica server: authenticates properly, then answers as `answer` says.
    const fake = (answer: (request: Frame, send: (reply: Frame) => void) => void) =>
      listen((socket) => {
        const connection = new FrameConnection(socket);
        authenticateEngine(connection, SECRET).then(
          () => connection.listen((request) => answer(request, (reply) => connection.send(reply))),
          () => socket.destroy(),
        );
      });
    const reply = (request: Frame, fields: Partial<Frame> = {}): Frame =>
      frame(FrameType.REPLY, { requestId: request.requestId, ...fields });
    const okOpen = (request: Frame, send: (reply: Frame) => void): boolean => {
      if (request.type !== FrameType.OPEN_REPLICA) return false;
      send(reply(request, { payload: Buffer.from(JSON.stringify(metadata)) }));
      return true;
    };
    const clientLogs: string[] = [];
    const options = { ...remoteOptions, log: (line: string) => clientLogs.push(line) };

    const cases: Array<
      [string, (request: Frame, send: (reply: Frame) => void) => void, (p: ReplicaPort) => Promise<unknown>, RegExp]
    > = [
      [
        "a reply for a request never sent",
        (request, send) => okOpen(request, send) || send(reply(request, { requestId: request.requestId + 1000n })),
        (p) => p.read(0, 4096),
        /protocol violation: reply for unknown request #\d+/,
      ],
      [
        "a frame that is not a reply",
        (request, send) => okOpen(request, send) || send(frame(FrameType.HELLO, { payload: randomBytes(32) })),
        (p) => p.flush(),
        /protocol violation: got a HELLO frame where only replies may come/,
      ],
      [
        "a READ answered with the wrong number of bytes",
        (request, send) => okOpen(request, send) || send(reply(request, { payload: Buffer.alloc(10) })),
        (p) => p.read(0, 4096),
        /protocol violation: READ of 4096 bytes answered with 10/,
      ],
      [
        "a CHECKSUM answered with the wrong number of digests",
        (request, send) => okOpen(request, send) || send(reply(request, { payload: Buffer.alloc(5) })),
        (p) => p.checksum(0, 2 * REGION, REGION),
        /protocol violation: CHECKSUM reply of 5 bytes, expected 32/,
      ],
      [
        "a BLOCK_STATUS reply with an empty extent",
        (request, send) => okOpen(request, send) || send(reply(request, { payload: Buffer.alloc(9) })),
        (p) => p.blockStatus(0, 4096),
        /protocol violation: malformed BLOCK_STATUS reply: an extent of 0 bytes/,
      ],
      [
        "malformed metadata after SET_METADATA",
        (request, send) => okOpen(request, send) || send(reply(request, { payload: Buffer.from('{"volumeId":1}') })),
        (p) => p.updateMetadata(1, {}),
        /protocol violation: malformed replica metadata/,
      ],
    ];
    for (const [what, answer, act, reason] of cases) {
      const server = await fake(answer);
      try {
        const remote = await RemoteReplicaPort.open(`tcp://127.0.0.1:${server.port}`, "fake", undefined, options);
        let lost = 0;
        remote.onLost = () => lost++;
        const from = clientLogs.length;
        await assert.rejects(act(remote), havenError("HAVEN_ERR_IO", reason), what);
        assert.ok(
          clientLogs.slice(from).some((line) => reason.test(line) && /disconnecting/.test(line)),
          `${what}: ${clientLogs.join("\n")}`,
        );
        await new Promise((resolve) => setImmediate(resolve));
        assert.equal(lost, 1, what);
        await assert.rejects(remote.read(0, 10), havenError("HAVEN_ERR_IO", reason), `${what}: nothing more is sent`);
        await remote.close();
      } finally {
        await server.close();
      }
    }

    const badOpen = await fake((request, send) => send(reply(request, { payload: Buffer.from("{}") })));
    try {
      await assert.rejects(
        RemoteReplicaPort.open(`tcp://127.0.0.1:${badOpen.port}`, "fake", undefined, options),
        havenError("HAVEN_ERR_IO", /malformed replica metadata/),
      );
    } finally {
      await badOpen.close();
    }
  });

  test("replica locations: tcp://HOST:PORT[/DISK] is remote, a path is local, anything else is a usage error", async () => {
    assert.deepEqual(parseReplicaLocation("tcp://10.0.0.2:7400"), { kind: "remote", host: "10.0.0.2", port: 7400 });
    assert.deepEqual(parseReplicaLocation("tcp://10.0.0.2:7400/disk1"), {
      kind: "remote",
      host: "10.0.0.2",
      port: 7400,
      disk: "disk1",
    });
    assert.deepEqual(parseReplicaLocation("tcp://[::1]:7400"), { kind: "remote", host: "::1", port: 7400 });
    assert.deepEqual(parseReplicaLocation("TCP://node2:1"), { kind: "remote", host: "node2", port: 1 });
    assert.deepEqual(parseReplicaLocation("/var/lib/haven"), { kind: "local", directory: "/var/lib/haven" });
    assert.deepEqual(parseReplicaLocation("relative/dir"), { kind: "local", directory: "relative/dir" });
    for (const bad of ["tcp://", "tcp://node2", "tcp://node2:", "tcp://:7400", "tcp://node2:99999", "tcp://node2:0"]) {
      assert.throws(
        () => parseReplicaLocation(bad),
        havenError(
          "HAVEN_ERR_USAGE",
          /is not tcp:\/\/HOST:PORT or tcp:\/\/HOST:PORT\/DISK \(for example tcp:\/\/10\.0\.0\.2:7400\)/,
        ),
        bad,
      );
    }
    for (const bad of [
      "tcp://node2:7400/a/b",
      "tcp://node2:7400/../x",
      "tcp://node2:7400/",
      "tcp://user@node2:7400",
      "udp://node2:7400",
      "nbd://node2:10809",
    ]) {
      assert.throws(() => parseReplicaLocation(bad), havenError("HAVEN_ERR_USAGE", /is not tcp:\/\/HOST:PORT/), bad);
    }
    assert.throws(() => parseReplicaLocation(""), havenError("HAVEN_ERR_USAGE", /cannot be empty/));

    const withoutSecret = replicaOpener({});
    await assert.rejects(
      withoutSecret(`tcp://127.0.0.1:${port}`, "vol1", undefined),
      havenError("HAVEN_ERR_CONFIG", /a remote replica needs --secret-file/),
    );
    await assert.rejects(
      withoutSecret("tcp://nowhere", "vol1", undefined),
      havenError("HAVEN_ERR_USAGE", /tcp:\/\/HOST:PORT/),
    );
    const local = await withoutSecret(`${dir.path}/opener`, "vol9", createOptions("00000000000000a9"));
    assert.ok(local instanceof LocalReplicaPort);
    await local.close();
    const remote = await replicaOpener({ secret: SECRET })(
      `tcp://127.0.0.1:${port}`,
      "vol9",
      createOptions("00000000000000a9"),
    );
    assert.ok(remote instanceof RemoteReplicaPort);
    assert.equal(remote.location, `tcp://127.0.0.1:${port}`);
    await remote.close();
  });
});

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
}

/** A TCP server on an ephemeral port whose connections go to `onConnection`. */
async function listen(onConnection: (socket: Socket) => void): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => undefined);
    onConnection(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as { port: number }).port,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
