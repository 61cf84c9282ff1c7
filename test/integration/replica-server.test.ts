// The replica server over real TCP: only peers that know the shared secret get anything; writes
// carry epochs and a stale epoch is refused (DESIGN.md rule 4); bad traffic ends only its own
// connection with a logged reason; the copy on disk is a plain raw file.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { connect } from "node:net";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ReplicaServer } from "../../src/replica/replica-server.js";
import { ReplicaClient, ReplicaRequestError } from "../../src/replica/replica-client.js";
import { FrameType, ReplyStatus } from "../../src/replica/protocol/constants.js";
import { tempDir } from "../helpers/server-process.js";

const SECRET = Buffer.from("correct horse battery staple, 2026");
const VOLUME = "00000000000000b1";
const MiB = 1024 * 1024;

describe("replica server", () => {
  const dir = tempDir("haven-replica-server-");
  const logs: string[] = [];
  let server: ReplicaServer;
  let port: number;

  before(async () => {
    server = new ReplicaServer({ directory: dir.path, secret: SECRET, log: (line) => logs.push(line) });
    port = Number((await server.listen("127.0.0.1", 0)).split(":")[1]);
  });
  after(async () => {
    await server.stop();
    dir.remove();
  });

  test("a wrong secret is refused and gets nothing", async () => {
    await assert.rejects(
      ReplicaClient.connect("127.0.0.1", port, Buffer.from("not the secret at all!")),
      /refused us: wrong secret/,
    );
    assert.ok(logs.some((line) => /refused: engine's proof does not match/.test(line)));
  });

  test("an authenticated engine creates a replica, writes and reads it; the data file is plain raw", async () => {
    const client = await ReplicaClient.connect("127.0.0.1", port, SECRET);
    const opened = await client.openReplica(VOLUME, { sizeBytes: 4 * MiB });
    assert.equal(JSON.parse(opened.payload.toString()).sizeBytes, 4 * MiB);
    const data = randomBytes(65536);
    await client.request(FrameType.WRITE, { epoch: 3n, offset: BigInt(MiB), payload: data, flags: 1 });
    const read = await client.request(FrameType.READ, { offset: BigInt(MiB), length: data.length });
    assert.ok(read.payload.equals(data));
    assert.ok(
      readFileSync(join(dir.path, VOLUME, "data.raw"))
        .subarray(MiB, MiB + data.length)
        .equals(data),
    );
    client.close();
  });

  test("writes from an epoch lower than the highest seen are refused and change nothing", async () => {
    const newer = await ReplicaClient.connect("127.0.0.1", port, SECRET);
    await newer.openReplica(VOLUME);
    await newer.request(FrameType.WRITE, { epoch: 7n, offset: 0n, payload: Buffer.alloc(4096, 7) });
    const deposed = await ReplicaClient.connect("127.0.0.1", port, SECRET);
    await deposed.openReplica(VOLUME);
    await assert.rejects(
      deposed.request(FrameType.WRITE, { epoch: 6n, offset: 0n, payload: Buffer.alloc(4096, 6) }),
      (e: unknown) =>
        e instanceof ReplicaRequestError && e.status === ReplyStatus.STALE_EPOCH && /epoch 6 is stale/.test(e.message),
    );
    await assert.rejects(deposed.request(FrameType.TRIM, { epoch: 1n, offset: 0n, length: 4096 }), /stale/);
    const read = await newer.request(FrameType.READ, { offset: 0n, length: 4096 });
    assert.ok(read.payload.every((byte) => byte === 7));
    newer.close();
    deposed.close();
  });

  test("bad requests get a status, and garbage drops only its own connection", async () => {
    const client = await ReplicaClient.connect("127.0.0.1", port, SECRET);
    await assert.rejects(client.request(FrameType.READ, { offset: 0n, length: 10 }), /OPEN_REPLICA first/);
    await assert.rejects(client.openReplica("not-hex"), /must be 16 hex digits/);
    await assert.rejects(
      client.openReplica("00000000000000ff"),
      (e: unknown) => e instanceof ReplicaRequestError && e.status === ReplyStatus.NO_SUCH_REPLICA,
    );
    await client.openReplica(VOLUME);
    await assert.rejects(
      client.request(FrameType.READ, { offset: BigInt(4 * MiB), length: 4096 }),
      (e: unknown) => e instanceof ReplicaRequestError && e.status === ReplyStatus.OUT_OF_RANGE,
    );
    await assert.rejects(client.request(FrameType.READ, { offset: 0n, length: 0xffffffff }), /out of range/);

    const garbage = connect(port, "127.0.0.1");
    await new Promise((resolve) => garbage.once("connect", resolve));
    garbage.resume();
    garbage.write(Buffer.alloc(48 * 3, 0x41));
    await new Promise((resolve) => garbage.once("close", resolve));
    assert.ok(
      logs.some((line) => /refused: .*bad frame magic|refused: expected AUTH/.test(line)),
      logs.join("\n"),
    );
    const read = await client.request(FrameType.READ, { offset: 0n, length: 4096 });
    assert.ok(
      read.payload.every((byte) => byte === 7),
      "the other connection carries on",
    );
    client.close();
  });
});
