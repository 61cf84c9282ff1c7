// The replication link over mutual TLS, on real sockets with certificates made by openssl: data
// crosses intact; only a host certificate from the cluster CA gets to AUTH, and the server's
// certificate must name the host the engine expects; a plaintext client gets nothing served; the
// shared secret is still checked inside TLS.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { connect as connectTls } from "node:tls";
import { join } from "node:path";
import { replicaPinger } from "../../src/agent/replica-pinger.js";
import { replicaOpener } from "../../src/replica/open-replica.js";
import { RemoteReplicaPort } from "../../src/replica/remote-port.js";
import { ReplicaClient } from "../../src/replica/replica-client.js";
import { ReplicaServer } from "../../src/replica/replica-server.js";
import { FRAME_MAGIC, FrameType, ReplyStatus } from "../../src/replica/protocol/constants.js";
import { FrameConnection } from "../../src/replica/protocol/connection.js";
import type { TlsIdentity } from "../../src/security/tls-identity.js";
import { tempDir } from "../helpers/server-process.js";
import { testPki, type TestPki } from "../helpers/test-pki.js";

const SECRET = Buffer.from("tls-test-secret-0123456789abcdef");
const MiB = 1024 * 1024;
const CREATE = { volumeId: "00000000000000c1", sizeBytes: 8 * MiB, regionBytes: 65536 };

// Certificates take about 0.1 s each; the whole file about 3 s. Past 60 s something hangs.
describe("replication over mutual TLS", { timeout: 60_000 }, () => {
  const dir = tempDir("haven-replica-tls-");
  const logs: string[] = [];
  let pki: TestPki;
  let hostA: TlsIdentity;
  let hostB: TlsIdentity;
  let server: ReplicaServer;
  let port: number;
  const revokedSerials = new Set<string>();

  /** A TLS replica server as `identity`, listening on a free port of 127.0.0.1. */
  const startServer = async (
    identity: TlsIdentity,
    directory: string,
  ): Promise<{ server: ReplicaServer; port: number }> => {
    const started = new ReplicaServer({
      directory,
      secret: SECRET,
      tls: identity,
      revoked: (serial) => revokedSerials.has(serial),
      // A plaintext client waits for a HELLO that never comes: the deadline ends it sooner than 5 s.
      admission: { authDeadlineMs: 1_000 },
      log: (line) => logs.push(line),
    });
    return { server: started, port: Number((await started.listen("127.0.0.1", 0)).split(":")[1]) };
  };

  const connectAs = (identity: TlsIdentity | undefined, serverName = "a", secret = SECRET): Promise<ReplicaClient> =>
    ReplicaClient.connect("127.0.0.1", port, secret, {
      connectTimeoutMs: 5_000,
      ...(identity && { tls: identity, serverName }),
    });

  /** Nothing was served since log line `from`: no peer got past AUTH. */
  const nothingServedSince = (from: number): void =>
    assert.ok(!logs.slice(from).some((line) => /engine authenticated|opened/.test(line)), logs.slice(from).join("\n"));

  /** Waits (bounded) until a line logged at `from` or later matches. */
  const logged = async (pattern: RegExp, from: number): Promise<void> => {
    const deadline = Date.now() + 10_000;
    while (!logs.slice(from).some((line) => pattern.test(line))) {
      if (Date.now() > deadline) assert.fail(`no log line matched ${pattern}:\n${logs.slice(from).join("\n")}`);
      await new Promise((resolve) => setImmediate(resolve));
    }
  };

  before(async () => {
    pki = await testPki(join(dir.path, "pki"));
    [hostA, hostB] = await Promise.all([pki.host("a"), pki.host("b")]);
    ({ server, port } = await startServer(hostA, join(dir.path, "served")));
  });
  after(async () => {
    await server.stop();
    dir.remove();
  });

  test("data written through a remote copy over TLS reads back the same, and lands on the copy's disk", async () => {
    const opener = replicaOpener({
      secret: SECRET,
      tls: hostB,
      serverName: (address) => (address === "127.0.0.1" ? "a" : assert.fail(`unexpected address ${address}`)),
    });
    const remote = (await opener(`tcp://127.0.0.1:${port}`, "vol-tls", CREATE)) as RemoteReplicaPort;
    try {
      const big = randomBytes(4 * MiB); // spans many TLS records
      const small = randomBytes(4096);
      await remote.write(1, 0, big, false);
      await remote.write(1, 5 * MiB, [small.subarray(0, 1000), small.subarray(1000)], true);
      await remote.flush();
      assert.ok((await remote.read(0, 4 * MiB)).equals(big));
      assert.ok((await remote.read(5 * MiB, 4096)).equals(small));
      const onDisk = readFileSync(join(dir.path, "served", "vol-tls", "data.raw"));
      assert.ok(onDisk.subarray(0, 4 * MiB).equals(big), "the copy's file holds what was written");
      assert.ok(
        logs.some((line) => /engine authenticated \(host b\)/.test(line)),
        logs.join("\n"),
      );
    } finally {
      await remote.close();
    }
  });

  test("a client certificate signed by another CA is refused in the handshake", async () => {
    const from = logs.length;
    const stranger = await pki.stranger("b");
    // The stranger trusts only its own CA, so it refuses host a's certificate first...
    await assert.rejects(connectAs(stranger), /TLS refused: self-signed certificate in certificate chain/);
    nothingServedSince(from);
    // ...and a client that trusts the cluster CA but holds the other CA's certificate is refused by the server.
    const mixed: TlsIdentity = { ...stranger, ca: hostB.ca };
    await assert.rejects(
      connectAs(mixed),
      /refused us: client certificate not accepted: it was not signed by this cluster's CA/,
    );
    await logged(/refused: client certificate not accepted: it was not signed by this cluster's CA/, from);
    nothingServedSince(from);
  });

  test("an expired client certificate is refused in the handshake, and an expired server certificate by the client", async () => {
    const expired = await pki.expiredHost("old");
    assert.ok(expired.info.notAfter.getTime() < Date.now(), "the test certificate has expired");
    const from = logs.length;
    await assert.rejects(connectAs(expired), /refused us: client certificate not accepted: it has expired/);
    await logged(/refused: client certificate not accepted: it has expired/, from);
    nothingServedSince(from);

    const { server: expiredServer, port: at } = await startServer(expired, join(dir.path, "expired-served"));
    try {
      await assert.rejects(
        ReplicaClient.connect("127.0.0.1", at, SECRET, { tls: hostB, serverName: "old" }),
        (error: unknown) =>
          error instanceof Error &&
          /TLS refused: certificate has expired/.test(error.message) &&
          (error as { code?: string }).code === "HAVEN_ERR_CONFIG",
      );
    } finally {
      await expiredServer.stop();
    }
  });

  test("the server's certificate must name the host the engine expects: host a's certificate is refused for host b", async () => {
    const from = logs.length;
    await assert.rejects(
      connectAs(hostB, "b"),
      (error: unknown) =>
        error instanceof Error &&
        /the server's certificate names host a, not host b/.test(error.message) &&
        (error as { code?: string }).code === "HAVEN_ERR_CONFIG",
    );
    nothingServedSince(from);
    // And the pinger (peer heartbeats) checks the same: host a's server answers as a, not as b.
    const pinger = replicaPinger(SECRET, () => undefined, hostB);
    const link = await pinger("a", { address: "127.0.0.1", port }, 5_000);
    await link.ping();
    link.close();
    await assert.rejects(pinger("b", { address: "127.0.0.1", port }, 5_000), /names host a, not host b/);
  });

  test("a TLS client without a certificate gets one refusal and nothing else", async () => {
    const from = logs.length;
    const socket = connectTls({ host: "127.0.0.1", port, ca: hostB.ca, checkServerIdentity: () => undefined });
    socket.on("error", () => undefined);
    await new Promise((resolve, reject) => socket.once("secureConnect", resolve).once("error", reject));
    const connection = new FrameConnection(socket);
    const reply = await connection.next();
    assert.equal(reply.type, FrameType.REPLY);
    assert.equal(reply.status, ReplyStatus.NOT_AUTHENTICATED);
    assert.match(reply.payload.toString(), /client certificate not accepted/);
    await assert.rejects(connection.next(), /connection closed/, "nothing follows the refusal");
    nothingServedSince(from);
  });

  test("an operator's certificate is refused on the replication port, with the reason", async () => {
    const operator = await pki.operator("alice");
    const from = logs.length;
    await assert.rejects(
      connectAs(operator),
      /refused us: the replication port takes host certificates only, not the operator certificate of alice/,
    );
    nothingServedSince(from);
  });

  test("a revoked host certificate is refused after the handshake", async () => {
    const revoked = await pki.host("c");
    revokedSerials.add(revoked.info.serial);
    const from = logs.length;
    try {
      await assert.rejects(connectAs(revoked), /refused us: the certificate of host c \(serial [0-9a-f]+\) is revoked/);
      nothingServedSince(from);
    } finally {
      revokedSerials.delete(revoked.info.serial);
    }
    const client = await connectAs(revoked);
    client.close();
  });

  test("a certificate revoked after its connection authenticated loses the connection when the server is told", async () => {
    const later = await pki.host("d");
    const opener = replicaOpener({ secret: SECRET, tls: later, serverName: () => "a" });
    const remote = (await opener(`tcp://127.0.0.1:${port}`, "vol-revoked-later", CREATE)) as RemoteReplicaPort;
    const lost = new Promise<Error>((resolve) => (remote.onLost = resolve));
    try {
      await remote.write(1, 0, Buffer.alloc(4096, 1), false);
      assert.equal(await server.dropRevoked(), 0, "nothing is revoked yet");
      revokedSerials.add(later.info.serial);
      assert.equal(await server.dropRevoked(), 1);
      assert.match((await lost).message, /connection lost/);
      await assert.rejects(remote.write(1, 0, Buffer.alloc(4096, 2), false), /connection lost/);
    } finally {
      revokedSerials.delete(later.info.serial);
      await remote.close();
    }
  });

  test("the shared secret is still checked inside TLS", async () => {
    const from = logs.length;
    await assert.rejects(connectAs(hostB, "a", Buffer.from("a wrong secret, long enough")), /refused us: wrong secret/);
    nothingServedSince(from);
  });

  test("a plaintext client on the TLS port is refused before anything is served", async () => {
    const from = logs.length;
    await assert.rejects(connectAs(undefined), /cannot connect to replica server 127\.0\.0\.1:\d+: connection closed/);
    // Byte by byte: what a plaintext peer gets back is never a replication frame (no HELLO).
    const socket: Socket = connect(port, "127.0.0.1");
    const received: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => received.push(chunk));
    socket.on("error", () => undefined);
    await new Promise((resolve) => socket.once("connect", resolve));
    const header = Buffer.alloc(48);
    header.writeUInt32BE(FRAME_MAGIC, 0);
    socket.write(header);
    await new Promise((resolve) => socket.once("close", resolve));
    const bytes = Buffer.concat(received);
    assert.ok(bytes.length < 4 || bytes.readUInt32BE(0) !== FRAME_MAGIC, "no frame came back");
    await logged(/refused: TLS handshake failed/, from);
    nothingServedSince(from);
  });

  test("a TLS client on a plain-TCP port fails with an error, not a hang", async () => {
    const plain = new ReplicaServer({ directory: join(dir.path, "plain"), secret: SECRET, log: () => undefined });
    try {
      const at = Number((await plain.listen("127.0.0.1", 0)).split(":")[1]);
      await assert.rejects(
        ReplicaClient.connect("127.0.0.1", at, SECRET, { tls: hostB, serverName: "a", connectTimeoutMs: 5_000 }),
        /cannot connect to replica server 127\.0\.0\.1:\d+: (?!no answer)/,
      );
    } finally {
      await plain.stop();
    }
  });

  test("TLS without the expected server name is a configuration error, before any connection", async () => {
    await assert.rejects(
      ReplicaClient.connect("127.0.0.1", port, SECRET, { tls: hostB }),
      /without the host name its certificate must carry/,
    );
    await assert.rejects(
      replicaOpener({ secret: SECRET, tls: hostB })(`tcp://127.0.0.1:${port}`, "x", undefined),
      /needs the host name its server's certificate carries/,
    );
  });
});
