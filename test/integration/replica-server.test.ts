// The replica server over real TCP, spoken to frame by frame: only peers that know the shared secret
// get anything; copies are opened by volume name and never overwritten; writes carry epochs and a
// stale epoch is refused (DESIGN.md rule 4); every bad input gets a status or ends only its own
// connection, always with a logged reason, while an engine on another volume carries on with its data
// intact (rule 6); one connection cannot make the server hold more than its in-flight limits.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { connect, type Socket } from "node:net";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { ReplicaServer } from "../../src/replica/replica-server.js";
import { ReplicaClient, ReplicaRequestError } from "../../src/replica/replica-client.js";
import { RemoteReplicaPort } from "../../src/replica/remote-port.js";
import {
  ExtentFlag,
  FrameFlag,
  FrameType,
  FRAME_HEADER_BYTES,
  PROTOCOL_VERSION,
  ReplyStatus,
} from "../../src/replica/protocol/constants.js";
import { authenticateServer, frame, FrameConnection } from "../../src/replica/protocol/connection.js";
import { encodeFrame, type Frame } from "../../src/replica/protocol/frame-codec.js";
import { proof } from "../../src/replica/protocol/auth.js";
import type { CreateOptions } from "../../src/replica/port.js";
import type { ReplicaMetadata } from "../../src/replica/replica-store.js";
import { MAX_HISTORY } from "../../src/replica/generations.js";
import { tempDir } from "../helpers/server-process.js";

const SECRET = Buffer.from("correct horse battery staple, 2026");
const MiB = 1024 * 1024;
const create = (volumeId: string, sizeBytes = 4 * MiB): CreateOptions => ({ volumeId, sizeBytes, regionBytes: 65536 });
const GEN_A = "0123456789abcdef";
const GEN_B = "fedcba9876543210";

// The suite takes about 3 s; one still running after 60 s is hung.
describe("replica server", { timeout: 60_000 }, () => {
  const dir = tempDir("haven-replica-server-");
  const logs: string[] = [];
  const logWaiters = new Set<() => void>();
  let server: ReplicaServer;
  let port: number;
  let bystander: RemoteReplicaPort;
  const bystanderData = randomBytes(MiB);
  let bystanderLost = 0;

  /** Resolves when a line logged at index `from` or later matches. */
  const waitForLog = (pattern: RegExp, from = 0): Promise<string> =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        logWaiters.delete(check);
        reject(new Error(`no log line matched ${pattern}; log:\n${logs.join("\n")}`));
      }, 10_000);
      const check = (): void => {
        const line = logs.slice(from).find((l) => pattern.test(l));
        if (line === undefined) return;
        clearTimeout(timer);
        logWaiters.delete(check);
        resolve(line);
      };
      logWaiters.add(check);
      check();
    });

  /** The engine on the other volume still has its connection, its data, and can write. */
  const assertBystanderCarriesOn = async (): Promise<void> => {
    assert.equal(bystanderLost, 0, "the bystander's connection was never lost");
    assert.ok((await bystander.read(0, MiB)).equals(bystanderData), "the bystander's data is intact");
    const block = randomBytes(4096);
    await bystander.write(1, 2 * MiB, block, false);
    assert.ok((await bystander.read(2 * MiB, 4096)).equals(block), "the bystander can still write");
    assert.ok(
      readFileSync(join(dir.path, "bystander", "data.raw"))
        .subarray(0, MiB)
        .equals(bystanderData),
    );
  };

  const rawConnection = async (): Promise<Socket> => {
    const socket = connect(port, "127.0.0.1");
    await new Promise((resolve, reject) => socket.once("connect", resolve).once("error", reject));
    return socket;
  };

  /** An authenticated connection whose bytes the test writes itself. */
  const authenticated = async (): Promise<{ socket: Socket; connection: FrameConnection }> => {
    const socket = await rawConnection();
    const connection = new FrameConnection(socket);
    await authenticateServer(connection, SECRET);
    return { socket, connection };
  };

  const closed = (socket: Socket): Promise<void> =>
    new Promise((resolve) => (socket.destroyed ? resolve() : socket.once("close", () => resolve())));

  const refusedWith = (status: number, message: RegExp) => (error: unknown) =>
    error instanceof ReplicaRequestError && error.status === status && message.test(error.message);

  before(async () => {
    server = new ReplicaServer({
      directory: dir.path,
      secret: SECRET,
      log: (line) => {
        logs.push(line);
        for (const waiter of [...logWaiters]) waiter();
      },
    });
    port = Number((await server.listen("127.0.0.1", 0)).split(":")[1]);
    bystander = await RemoteReplicaPort.open(`tcp://127.0.0.1:${port}`, "bystander", create("00000000000000aa"), {
      secret: SECRET,
      requestTimeoutMs: 10_000,
      connectTimeoutMs: 5_000,
    });
    bystander.onLost = () => bystanderLost++;
    await bystander.write(1, 0, bystanderData, true);
  });
  after(async () => {
    await bystander.close();
    await server.stop();
    dir.remove();
  });

  test("a wrong secret gets a refusal and nothing else, even for requests sent ahead", async () => {
    const from = logs.length;
    const socket = await rawConnection();
    const connection = new FrameConnection(socket);
    const hello = await connection.next();
    assert.equal(hello.type, FrameType.HELLO);
    const wrong = Buffer.from("not the secret at all, but long");
    connection.send(
      frame(FrameType.AUTH, { payload: Buffer.concat([proof(wrong, "engine", hello.payload), randomBytes(32)]) }),
    );
    const payload = Buffer.from(JSON.stringify({ name: "bystander" }));
    connection.send(frame(FrameType.OPEN_REPLICA, { requestId: 1n, payload }));
    connection.send(frame(FrameType.READ, { requestId: 2n, length: 4096 }));
    const received: Frame[] = [];
    for (;;) {
      try {
        received.push(await connection.next());
      } catch {
        break;
      }
    }
    assert.deepEqual(
      received.map((f) => [f.type, f.status, f.payload.toString()]),
      [[FrameType.REPLY, ReplyStatus.NOT_AUTHENTICATED, "wrong secret"]],
    );
    await waitForLog(/refused: engine's proof does not match the shared secret/, from);
    assert.ok(!logs.slice(from).some((line) => /opened|authenticated/.test(line)), logs.slice(from).join("\n"));
    await assert.rejects(
      ReplicaClient.connect("127.0.0.1", port, Buffer.from("not the secret at all!")),
      (e: unknown) => e instanceof Error && /refused us: wrong secret/.test(e.message),
    );
    await assertBystanderCarriesOn();
  });

  test("garbage before authentication ends only that connection, with a logged reason", async () => {
    const from = logs.length;
    const socket = await rawConnection();
    socket.resume();
    socket.write(Buffer.alloc(FRAME_HEADER_BYTES * 3, 0x41));
    await closed(socket);
    await waitForLog(/refused: bad frame magic 0x41414141/, from);
    await assertBystanderCarriesOn();
  });

  test("a copy is created by name in DIR/NAME/, its data file plain raw, and opening never overwrites it", async () => {
    const client = await ReplicaClient.connect("127.0.0.1", port, SECRET);
    const opened = JSON.parse((await client.openReplica("vol-a", create("00000000000000b1"))).payload.toString());
    assert.equal(opened.volumeId, "00000000000000b1");
    assert.equal(opened.sizeBytes, 4 * MiB);
    assert.equal(opened.regionBytes, 65536);
    const data = randomBytes(65536);
    await client.request(FrameType.WRITE, { epoch: 3n, offset: BigInt(MiB), payload: data, flags: FrameFlag.FUA });
    const read = await client.request(FrameType.READ, { offset: BigInt(MiB), length: data.length });
    assert.ok(read.payload.equals(data));
    assert.ok(
      readFileSync(join(dir.path, "vol-a", "data.raw"))
        .subarray(MiB, MiB + data.length)
        .equals(data),
    );
    client.close();

    // Another engine asks to create it with another identity and size: it gets the existing copy, untouched.
    const other = await ReplicaClient.connect("127.0.0.1", port, SECRET);
    const again: ReplicaMetadata = JSON.parse(
      (await other.openReplica("vol-a", create("00000000000000b2", 8 * MiB))).payload.toString(),
    );
    assert.equal(again.volumeId, "00000000000000b1");
    assert.equal(again.sizeBytes, 4 * MiB);
    const reread = await other.request(FrameType.READ, { offset: BigInt(MiB), length: data.length });
    assert.ok(reread.payload.equals(data));
    other.close();
  });

  test("OPEN_REPLICA payloads are checked strictly: each bad one gets BAD_REQUEST saying what is wrong", async () => {
    const client = await ReplicaClient.connect("127.0.0.1", port, SECRET);
    const good = { volumeId: "00000000000000c1", sizeBytes: MiB, regionBytes: 65536 };
    const cases: Array<[string | Buffer, RegExp]> = [
      ["{not json", /payload of 9 bytes is not JSON/],
      ["[]", /payload must be a JSON object/],
      ['"vol"', /payload must be a JSON object/],
      [JSON.stringify({ name: "vol", extra: 1 }), /unknown field "extra"/],
      [JSON.stringify({ name: 7 }), /"name" must be a string/],
      [JSON.stringify({}), /"name" must be a string/],
      [JSON.stringify({ name: "../escape" }), /volume name "..\/escape" is not valid/],
      [JSON.stringify({ name: "Upper" }), /is not valid/],
      [JSON.stringify({ name: ".." }), /is not valid/],
      [JSON.stringify({ name: "x".repeat(64) }), /is not valid/],
      [JSON.stringify({ name: "vol", create: "yes" }), /"create" must be a JSON object/],
      [JSON.stringify({ name: "vol", create: { ...good, sizeBytes: undefined } }), /"create.sizeBytes" is missing/],
      [JSON.stringify({ name: "vol", create: { ...good, colour: "red" } }), /"create" has an unknown field "colour"/],
      [JSON.stringify({ name: "vol", create: { ...good, volumeId: "xyz" } }), /"create.volumeId" must be 16 hex/],
      [JSON.stringify({ name: "vol", create: { ...good, sizeBytes: 0 } }), /"create.sizeBytes" must be a whole/],
      [JSON.stringify({ name: "vol", create: { ...good, sizeBytes: 1.5 } }), /"create.sizeBytes" must be a whole/],
      [JSON.stringify({ name: "vol", create: { ...good, sizeBytes: "1M" } }), /"create.sizeBytes" must be a whole/],
      [JSON.stringify({ name: "vol", create: { ...good, regionBytes: 5000 } }), /"create.regionBytes" must be a power/],
      [Buffer.alloc(5000, 0x20), /payload of 5000 bytes exceeds 4096/],
    ];
    for (const [payload, message] of cases) {
      const from = logs.length;
      await assert.rejects(
        client.request(FrameType.OPEN_REPLICA, { payload: Buffer.isBuffer(payload) ? payload : Buffer.from(payload) }),
        refusedWith(ReplyStatus.BAD_REQUEST, message),
        String(payload).slice(0, 80),
      );
      await waitForLog(/OPEN_REPLICA #\d+ refused \(BAD_REQUEST\): OPEN_REPLICA: /, from);
    }
    assert.deepEqual(readdirSync(dir.path).sort(), ["bystander", "vol-a"], "no bad name made a directory");
    assert.ok(!existsSync(join(dir.path, "..", "escape")));
    await assert.rejects(
      client.openReplica("absent"),
      refusedWith(ReplyStatus.NO_SUCH_REPLICA, /holds no replica/),
      "no copy and no create",
    );
    // After all those refusals, the connection still opens a copy.
    await client.openReplica("vol-a");
    await assert.rejects(
      client.openReplica("bystander"),
      refusedWith(ReplyStatus.BAD_REQUEST, /already serves "vol-a"/),
    );
    client.close();
    await assertBystanderCarriesOn();
  });

  test("a request before OPEN_REPLICA is refused with a reason", async () => {
    const from = logs.length;
    const client = await ReplicaClient.connect("127.0.0.1", port, SECRET);
    await assert.rejects(
      client.request(FrameType.READ, { offset: 0n, length: 10 }),
      refusedWith(ReplyStatus.BAD_REQUEST, /OPEN_REPLICA first/),
    );
    await assert.rejects(
      client.request(FrameType.WRITE, { epoch: 99n, payload: Buffer.alloc(4096) }),
      refusedWith(ReplyStatus.BAD_REQUEST, /OPEN_REPLICA first/),
    );
    await waitForLog(/WRITE #2 refused \(BAD_REQUEST\): OPEN_REPLICA first/, from);
    assert.ok((await client.request(FrameType.PING)).status === ReplyStatus.OK);
    client.close();
    await assertBystanderCarriesOn();
  });

  test("malformed requests on an open copy get BAD_REQUEST or OUT_OF_RANGE and change nothing", async () => {
    const client = await ReplicaClient.connect("127.0.0.1", port, SECRET);
    await client.openReplica("vol-a");
    const before = readFileSync(join(dir.path, "vol-a", "data.raw"));
    const cases: Array<[number, Partial<Frame>, number, RegExp]> = [
      [
        FrameType.READ,
        { flags: FrameFlag.FUA, length: 10 },
        ReplyStatus.BAD_REQUEST,
        /flags 0x1 are not valid for READ/,
      ],
      [FrameType.WRITE, { flags: 0x80, payload: Buffer.alloc(10) }, ReplyStatus.BAD_REQUEST, /flags 0x80/],
      [FrameType.WRITE, { status: 3, payload: Buffer.alloc(10) }, ReplyStatus.BAD_REQUEST, /carries no status/],
      [FrameType.FLUSH, { payload: Buffer.alloc(3) }, ReplyStatus.BAD_REQUEST, /FLUSH takes no payload/],
      [FrameType.REPLY, {}, ReplyStatus.BAD_REQUEST, /REPLY is not a request/],
      [FrameType.HELLO, {}, ReplyStatus.BAD_REQUEST, /HELLO is not a request/],
      [FrameType.READ, { length: 33 * MiB }, ReplyStatus.BAD_REQUEST, /exceeds the 33554432-byte limit/],
      [FrameType.READ, { offset: 4n * BigInt(MiB), length: 1 }, ReplyStatus.OUT_OF_RANGE, /ends past the copy's/],
      [FrameType.READ, { offset: 2n ** 64n - 1n, length: 1 }, ReplyStatus.OUT_OF_RANGE, /ends past/],
      [FrameType.WRITE, { offset: BigInt(4 * MiB - 1), payload: Buffer.alloc(2) }, ReplyStatus.OUT_OF_RANGE, /past/],
      [FrameType.TRIM, { offset: BigInt(3 * MiB), length: 2 * MiB }, ReplyStatus.OUT_OF_RANGE, /past/],
      [FrameType.WRITE, { epoch: 2n ** 60n, payload: Buffer.alloc(1) }, ReplyStatus.BAD_REQUEST, /epoch .* too large/],
      [FrameType.CHECKSUM, { length: 4096, payload: Buffer.alloc(3) }, ReplyStatus.BAD_REQUEST, /4-byte region size/],
      [FrameType.CHECKSUM, { length: 4096, payload: u32(1000) }, ReplyStatus.BAD_REQUEST, /not a power of two/],
      [FrameType.CHECKSUM, { length: 4096, payload: u32(2 ** 31) }, ReplyStatus.BAD_REQUEST, /not a power of two/],
      [FrameType.BLOCK_STATUS, { length: 0 }, ReplyStatus.BAD_REQUEST, /BLOCK_STATUS of 0 bytes/],
      [FrameType.BLOCK_STATUS, { offset: BigInt(4 * MiB), length: 1 }, ReplyStatus.OUT_OF_RANGE, /past/],
    ];
    for (const [type, fields, status, message] of cases) {
      const from = logs.length;
      await assert.rejects(client.request(type, fields), refusedWith(status, message), `${type} ${message}`);
      await waitForLog(/refused \((BAD_REQUEST|OUT_OF_RANGE)\): /, from);
    }
    assert.ok(readFileSync(join(dir.path, "vol-a", "data.raw")).equals(before), "the copy is unchanged");
    const meta: ReplicaMetadata = JSON.parse((await client.request(FrameType.GET_METADATA)).payload.toString());
    assert.equal(meta.highestEpoch, 3, "no refused request admitted its epoch");
    client.close();
    await assertBystanderCarriesOn();
  });

  test("a replayed WRITE from an older epoch is refused once a newer epoch was admitted, and changes nothing", async () => {
    const newer = await ReplicaClient.connect("127.0.0.1", port, SECRET);
    await newer.openReplica("vol-a");
    await newer.request(FrameType.WRITE, { epoch: 7n, offset: 0n, payload: Buffer.alloc(4096, 7) });
    const metaBefore = (await newer.request(FrameType.GET_METADATA)).payload.toString();
    const deposed = await ReplicaClient.connect("127.0.0.1", port, SECRET);
    await deposed.openReplica("vol-a");
    const from = logs.length;
    const stale = refusedWith(ReplyStatus.STALE_EPOCH, /epoch 6 is stale: this replica has seen epoch 7/);
    await assert.rejects(
      deposed.request(FrameType.WRITE, { epoch: 6n, offset: 0n, payload: Buffer.alloc(4096, 6) }),
      stale,
    );
    await assert.rejects(deposed.request(FrameType.TRIM, { epoch: 6n, offset: 0n, length: 4096 }), stale);
    await assert.rejects(deposed.request(FrameType.WRITE_ZEROES, { epoch: 6n, offset: 0n, length: 4096 }), stale);
    const patch = Buffer.from(JSON.stringify({ activityLog: [0] }));
    await assert.rejects(deposed.request(FrameType.SET_METADATA, { epoch: 6n, payload: patch }), stale);
    await waitForLog(/WRITE #\d+ refused \(STALE_EPOCH\): epoch 6 is stale/, from);
    const read = await newer.request(FrameType.READ, { offset: 0n, length: 4096 });
    assert.ok(read.payload.every((byte) => byte === 7));
    assert.equal((await newer.request(FrameType.GET_METADATA)).payload.toString(), metaBefore, "metadata unchanged");
    newer.close();
    deposed.close();
    await assertBystanderCarriesOn();
  });

  test("SET_METADATA with a bad patch is refused and changes nothing; a good one is durable", async () => {
    const client = await ReplicaClient.connect("127.0.0.1", port, SECRET);
    await client.openReplica("vol-a");
    const before = (await client.request(FrameType.GET_METADATA)).payload.toString();
    const generations = { current: GEN_A, bitmap: "", history: [] };
    const bad: Array<[unknown, RegExp]> = [
      ["{", /payload of 1 bytes is not JSON/],
      [[], /patch must be a JSON object/],
      [{ highestEpoch: 0 }, /unknown field "highestEpoch"/],
      [{ volumeId: "00000000000000ff" }, /unknown field "volumeId"/],
      [{ cleanShutdown: true }, /unknown field "cleanShutdown"/],
      [{ generations: "x" }, /"generations": must be an object/],
      [{ generations: { ...generations, current: "nothex" } }, /"current" and "bitmap" must be 16 hex/],
      [{ generations: { ...generations, extra: 1 } }, /unknown field "extra"/],
      [
        { generations: { ...generations, history: Array<string>(MAX_HISTORY + 1).fill(GEN_B) } },
        new RegExp(`more than ${MAX_HISTORY} generations`),
      ],
      [{ generations: { current: "", bitmap: GEN_B, history: [] } }, /a copy without data has no past/],
      [{ generations: { ...generations, history: "none" } }, /"history" must be an array/],
      [{ changedSince: { nothex: "" } }, /"changedSince" key "nothex" is not a generation id/],
      [{ changedSince: { [GEN_B]: 5 } }, /is not an encoded bitmap/],
      [{ changedSince: { [GEN_B]: "not base64!" } }, /is not an encoded bitmap/],
      [{ activityLog: [-1] }, /"activityLog" must be an array of extent numbers/],
      [{ activityLog: [1.5] }, /"activityLog" must be/],
      [{ activityLog: "0" }, /"activityLog" must be/],
      [{ resync: { validFor: GEN_A } }, /"resync.remaining" is not an encoded bitmap/],
      [{ resync: { validFor: "x", remaining: "" } }, /"resync.validFor" must be a generation id/],
    ];
    for (const [patch, message] of bad) {
      const from = logs.length;
      const payload = Buffer.from(typeof patch === "string" ? patch : JSON.stringify(patch));
      await assert.rejects(
        client.request(FrameType.SET_METADATA, { epoch: 7n, payload }),
        refusedWith(ReplyStatus.BAD_REQUEST, message),
        JSON.stringify(patch),
      );
      await waitForLog(/SET_METADATA #\d+ refused \(BAD_REQUEST\): SET_METADATA: /, from);
    }
    assert.equal((await client.request(FrameType.GET_METADATA)).payload.toString(), before, "metadata unchanged");

    const good = { generations: { current: GEN_B, bitmap: GEN_A, history: [] }, activityLog: [0, 3] };
    const reply: ReplicaMetadata = JSON.parse(
      (
        await client.request(FrameType.SET_METADATA, { epoch: 7n, payload: Buffer.from(JSON.stringify(good)) })
      ).payload.toString(),
    );
    assert.deepEqual(reply.generations, good.generations);
    assert.deepEqual(reply.activityLog, [0, 3]);
    assert.equal(reply.volumeId, "00000000000000b1");
    client.close();
    await assertBystanderCarriesOn();
  });

  test("GROW from a stale epoch, to a smaller size or with a payload is refused and changes nothing; a good one grows file and metadata", async () => {
    const grower = await RemoteReplicaPort.open(`tcp://127.0.0.1:${port}`, "vol-g", create("00000000000000c1"), {
      secret: SECRET,
      requestTimeoutMs: 10_000,
      connectTimeoutMs: 5_000,
    });
    const head = randomBytes(4096);
    await grower.write(3, 0, head, true);
    const file = join(dir.path, "vol-g", "data.raw");
    const client = await ReplicaClient.connect("127.0.0.1", port, SECRET);
    await client.openReplica("vol-g");
    const before = (await client.request(FrameType.GET_METADATA)).payload.toString();
    await assert.rejects(
      client.request(FrameType.GROW, { epoch: 2n, offset: BigInt(8 * MiB) }),
      refusedWith(ReplyStatus.STALE_EPOCH, /epoch 2 is stale/),
    );
    await assert.rejects(
      client.request(FrameType.GROW, { epoch: 3n, offset: BigInt(MiB) }),
      refusedWith(ReplyStatus.BAD_REQUEST, /never shrinks/),
    );
    await assert.rejects(
      client.request(FrameType.GROW, { epoch: 3n, offset: BigInt(8 * MiB), payload: Buffer.alloc(1) }),
      refusedWith(ReplyStatus.BAD_REQUEST, /GROW takes no payload/),
    );
    await assert.rejects(
      client.request(FrameType.GROW, { epoch: 3n, offset: 1n << 60n }),
      refusedWith(ReplyStatus.BAD_REQUEST, /too large/),
    );
    assert.equal((await client.request(FrameType.GET_METADATA)).payload.toString(), before, "metadata unchanged");
    assert.equal(readFileSync(file).length, 4 * MiB, "data file unchanged");

    const grown = await grower.grow(3, 8 * MiB);
    assert.equal(grown.sizeBytes, 8 * MiB);
    assert.equal(grower.metadata.sizeBytes, 8 * MiB);
    const data = readFileSync(file);
    assert.equal(data.length, 8 * MiB);
    assert.ok(data.subarray(0, 4096).equals(head), "the old data stays");
    const tail = randomBytes(4096);
    await grower.write(3, 8 * MiB - 4096, tail, true);
    assert.ok((await grower.read(8 * MiB - 4096, 4096)).equals(tail), "the new space takes writes");
    client.close();
    await grower.close();
    await assertBystanderCarriesOn();
  });

  test("CHECKSUM and BLOCK_STATUS answer in their documented binary forms", async () => {
    const client = await ReplicaClient.connect("127.0.0.1", port, SECRET);
    await client.openReplica("vol-a");
    const region = Buffer.alloc(65536, 0x5c);
    await client.request(FrameType.WRITE, { epoch: 7n, offset: BigInt(3 * MiB), payload: region });
    const digests = (
      await client.request(FrameType.CHECKSUM, { offset: BigInt(3 * MiB), length: 65536 + 100, payload: u32(65536) })
    ).payload;
    assert.equal(digests.length, 32, "one 16-byte digest per region, the last one partial");
    assert.ok(digests.subarray(0, 16).equals(createHash("sha256").update(region).digest().subarray(0, 16)));
    await client.request(FrameType.TRIM, { epoch: 7n, offset: BigInt(3 * MiB), length: MiB });
    const extents = (await client.request(FrameType.BLOCK_STATUS, { offset: BigInt(3 * MiB), length: MiB })).payload;
    assert.equal(extents.length % 9, 0);
    assert.equal(extents.readBigUInt64BE(0), BigInt(MiB), "one extent covers the trimmed MiB");
    assert.equal(extents.readUInt8(8), ExtentFlag.HOLE | ExtentFlag.ZERO);
    client.close();
  });

  test("a frame cut short, then a close, ends only that connection, with a logged reason", async () => {
    const { socket, connection } = await authenticated();
    const from = logs.length;
    const opened = new Promise<Frame>((resolve) => connection.listen(resolve));
    connection.send(frame(FrameType.OPEN_REPLICA, { requestId: 1n, payload: Buffer.from('{"name":"vol-a"}') }));
    assert.equal((await opened).status, ReplyStatus.OK);
    const write = Buffer.concat(
      encodeFrame(frame(FrameType.WRITE, { requestId: 2n, epoch: 7n, payload: Buffer.alloc(4096, 0xee) })),
    );
    socket.end(write.subarray(0, FRAME_HEADER_BYTES + 100));
    await closed(socket);
    await waitForLog(/closed: .*ended mid-frame, 148 bytes of an incomplete frame discarded/, from);
    const check = await ReplicaClient.connect("127.0.0.1", port, SECRET);
    await check.openReplica("vol-a");
    const read = await check.request(FrameType.READ, { offset: 0n, length: 4096 });
    assert.ok(
      read.payload.every((byte) => byte === 7),
      "the cut-short write was not applied",
    );
    check.close();
    await assertBystanderCarriesOn();
  });

  test("a header claiming a huge payload ends its connection before anything is buffered", async () => {
    const { socket } = await authenticated();
    const from = logs.length;
    const header = Buffer.concat(encodeFrame(frame(FrameType.WRITE, { requestId: 1n })));
    header.writeUInt32BE(0xffffffff, 44);
    socket.write(header);
    await closed(socket);
    await waitForLog(/closed: frame payload of 4294967295 bytes exceeds the \d+-byte limit/, from);
    await assertBystanderCarriesOn();
  });

  test("an unknown frame type or protocol version ends its connection with a logged reason", async () => {
    for (const [damage, reason] of [
      [(b: Buffer) => b.writeUInt16BE(999, 6), /closed: unknown frame type 999/],
      [
        (b: Buffer) => b.writeUInt16BE(PROTOCOL_VERSION - 1, 4),
        new RegExp(`closed: protocol version ${PROTOCOL_VERSION - 1} is not supported`),
      ],
    ] as const) {
      const { socket } = await authenticated();
      const from = logs.length;
      const header = Buffer.concat(encodeFrame(frame(FrameType.PING, { requestId: 1n })));
      damage(header);
      socket.write(header);
      await closed(socket);
      await waitForLog(reason, from);
    }
    await assertBystanderCarriesOn();
  });

  test("random requests of every type each get exactly one reply, and nothing crashes", async () => {
    const requestTypes = [
      FrameType.OPEN_REPLICA,
      FrameType.READ,
      FrameType.WRITE,
      FrameType.FLUSH,
      FrameType.TRIM,
      FrameType.WRITE_ZEROES,
      FrameType.GET_METADATA,
      FrameType.SET_METADATA,
      FrameType.CHECKSUM,
      FrameType.PING,
      FrameType.BLOCK_STATUS,
      FrameType.REPLY,
    ];
    const payload = fc.oneof(
      { weight: 5, arbitrary: fc.constant(Buffer.alloc(0)) },
      fc.uint8Array({ maxLength: 64 }).map((bytes) => Buffer.from(bytes)),
      fc.jsonValue().map((value) => Buffer.from(JSON.stringify(value))),
      fc.jsonValue().map((value) => Buffer.from(JSON.stringify({ name: "fuzz", create: value }))),
      fc.jsonValue().map((value) => Buffer.from(JSON.stringify({ generations: value, activityLog: value }))),
    );
    const requests = fc.sample(
      fc.record({
        type: fc.constantFrom(...requestTypes),
        flags: fc.oneof(
          { weight: 6, arbitrary: fc.constant(0) },
          { weight: 3, arbitrary: fc.constant(FrameFlag.FUA) },
          { weight: 1, arbitrary: fc.nat({ max: 0xffffffff }) },
        ),
        epoch: fc.oneof(fc.bigInt({ min: 0n, max: 20n }), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })),
        offset: fc.oneof(
          { weight: 4, arbitrary: fc.bigInt({ min: 0n, max: BigInt(2 * MiB) }) },
          { weight: 1, arbitrary: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }) },
        ),
        length: fc.oneof(
          { weight: 4, arbitrary: fc.nat({ max: MiB }) },
          { weight: 1, arbitrary: fc.nat({ max: 0xffffffff }) },
        ),
        payload,
      }),
      { numRuns: 400, seed: 20261127 },
    );
    const client = await ReplicaClient.connect("127.0.0.1", port, SECRET);
    await client.openReplica("fuzz", create("00000000000000f0"));
    const outcomes = await Promise.allSettled(requests.map((request) => client.request(request.type, request)));
    for (const outcome of outcomes) {
      if (outcome.status === "rejected")
        assert.ok(outcome.reason instanceof ReplicaRequestError, String(outcome.reason));
    }
    assert.ok((await client.request(FrameType.PING)).status === ReplyStatus.OK, "the connection is still served");
    client.close();
    await assertBystanderCarriesOn();
  });

  test("a connection that does not read its replies is held to its in-flight limits; others carry on", async () => {
    const { socket, connection } = await authenticated();
    let replies = 0;
    connection.listen((reply) => {
      assert.equal(reply.status, ReplyStatus.OK);
      replies++;
    });
    connection.send(frame(FrameType.OPEN_REPLICA, { requestId: 1n, payload: Buffer.from('{"name":"vol-a"}') }));
    await poll(() => replies === 1 || undefined, "the OPEN_REPLICA reply");
    const requests = 300;
    socket.pause(); // the engine stops reading: replies pile up on the server's side
    for (let id = 2; id < requests + 2; id++) {
      connection.send(frame(FrameType.READ, { requestId: BigInt(id), offset: 0n, length: MiB }));
    }
    const stalled = await poll(() => {
      const load = server.load().find((l) => l.name === "vol-a" && l.waitingRequests > 0);
      return load && load.inflightRequests === 0 ? load : undefined;
    }, "the hog's session to stall");
    assert.ok(stalled.requestsStarted < requests, `stopped starting requests (${stalled.requestsStarted} started)`);
    assert.ok(stalled.peakInflightRequests <= 64, `peak ${stalled.peakInflightRequests} requests in flight`);
    assert.ok(stalled.peakInflightBytes <= 64 * MiB, `peak ${stalled.peakInflightBytes} bytes in flight`);
    assert.ok(stalled.queuedReplyBytes <= 128 * MiB, `${stalled.queuedReplyBytes} reply bytes queued`);
    await assertBystanderCarriesOn();
    socket.resume();
    await poll(() => replies === requests + 1 || undefined, "every reply once the hog reads again");
    socket.destroy();
  });
});

function u32(value: number): Buffer {
  const buffer = Buffer.alloc(4);
  buffer.writeUInt32BE(value >>> 0, 0);
  return buffer;
}

/** Re-checks `condition` every few milliseconds until it yields a value (state with no event to wait on). */
async function poll<T>(condition: () => T | undefined, what: string, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = condition();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
