// The transmission phase under a hand-written client: correct data and replies for every command, the
// error the spec prescribes for every kind of bad request, bounded resources under abuse, and data that
// stays intact for everyone else throughout.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { FileDevice } from "../../src/block/file-device.js";
import { NbdServer } from "../../src/nbd/server.js";
import { FaultDevice } from "../../src/block/fault-device.js";
import { ChunkType, Command, CommandFlag, NbdErrno } from "../../src/nbd/constants.js";
import { RawNbdClient } from "../helpers/raw-nbd-client.js";
import { tempDir } from "../helpers/server-process.js";

const SIZE = 32 * 1024 * 1024;
const MiB = 1024 * 1024;

// The suite takes about 10 s; one still running after 2 minutes is hung.
describe("NBD transmission", { timeout: 120_000 }, () => {
  const dir = tempDir();
  const logs: string[] = [];
  const file = join(dir.path, "disk.img");
  let server: NbdServer;
  let device: FileDevice;
  let port: number;
  let readOnlyServer: NbdServer;
  let readOnlyDevice: FileDevice;
  let readOnlyPort: number;

  before(async () => {
    device = await FileDevice.open(file, { createSizeBytes: SIZE });
    server = new NbdServer({ exports: [{ name: "disk", description: "", device }], log: (line) => logs.push(line) });
    port = Number((await server.listen({ kind: "tcp", host: "127.0.0.1", port: 0 })).split(":")[1]);
    readOnlyDevice = await FileDevice.open(file, { readOnly: true });
    readOnlyServer = new NbdServer({
      exports: [{ name: "ro", description: "", device: readOnlyDevice }],
      log: (line) => logs.push(line),
    });
    readOnlyPort = Number((await readOnlyServer.listen({ kind: "tcp", host: "127.0.0.1", port: 0 })).split(":")[1]);
  });
  after(async () => {
    await server.stop();
    await readOnlyServer.stop();
    await device.close();
    await readOnlyDevice.close();
    dir.remove();
  });

  async function client(options: Parameters<RawNbdClient["handshake"]>[0] = {}, target = port): Promise<RawNbdClient> {
    const c = await RawNbdClient.connect({ port: target });
    await c.handshake(options);
    return c;
  }

  async function simple(
    c: RawNbdClient,
    type: number,
    options: Parameters<RawNbdClient["request"]>[1] = {},
    dataBytes = 0,
  ) {
    c.request(type, options);
    const reply = await c.readReply(dataBytes);
    assert.ok(reply?.simple, "expected a simple reply");
    return reply.simple;
  }

  test("WRITE then READ returns the same bytes, with simple replies and the request's cookie", async () => {
    const c = await client();
    const data = randomBytes(128 * 1024);
    const written = await simple(c, Command.WRITE, { offset: MiB, payload: data, cookie: 0xdeadbeefcafen });
    assert.equal(written.error, 0);
    assert.equal(written.cookie, 0xdeadbeefcafen);
    const read = await simple(c, Command.READ, { offset: MiB, length: data.length, cookie: 7n }, data.length);
    assert.equal(read.cookie, 7n);
    assert.ok(read.data.equals(data));
    assert.ok(
      readFileSync(file)
        .subarray(MiB, MiB + data.length)
        .equals(data),
      "the backing file holds the data",
    );
    c.close();
  });

  test("large READ replies sent with sendfile arrive intact and in order, even when the socket fills", async () => {
    const writer = await client();
    const regions = Array.from({ length: 8 }, () => randomBytes(MiB));
    for (let i = 0; i < regions.length; i++) {
      assert.equal((await simple(writer, Command.WRITE, { offset: 8 * MiB + i * MiB, payload: regions[i]! })).error, 0);
    }
    writer.close();
    for (const structured of [false, true]) {
      const reader = await client({ structured });
      // 64 MiB of replies requested at once: far more than the socket buffers hold.
      for (let round = 0; round < 8; round++) {
        for (let i = 0; i < regions.length; i++) {
          reader.request(Command.READ, { offset: 8 * MiB + i * MiB, length: MiB, cookie: BigInt(round * 100 + i) });
        }
      }
      for (let n = 0; n < 64; n++) {
        if (structured) {
          const [chunk] = await reader.readChunks();
          assert.equal(chunk!.type, ChunkType.OFFSET_DATA);
          const region = Number(chunk!.cookie % 100n);
          assert.equal(chunk!.payload.readBigUInt64BE(0), BigInt(8 * MiB + region * MiB));
          assert.ok(chunk!.payload.subarray(8).equals(regions[region]!), `structured reply ${n} (region ${region})`);
        } else {
          const reply = await reader.readReply(MiB);
          const region = Number(reply!.simple!.cookie % 100n);
          assert.equal(reply!.simple!.error, 0);
          assert.ok(reply!.simple!.data.equals(regions[region]!), `simple reply ${n} (region ${region})`);
        }
      }
      reader.close();
    }
  });

  test("pipelined requests all get answered, each with its own cookie", async () => {
    const c = await client();
    const count = 200;
    for (let i = 0; i < count; i++) {
      c.request(Command.WRITE, { offset: 4 * MiB + i * 4096, payload: Buffer.alloc(4096, i % 256), cookie: BigInt(i) });
    }
    const seen = new Set<bigint>();
    for (let i = 0; i < count; i++) {
      const reply = await c.readReply();
      assert.equal(reply?.simple?.error, 0);
      seen.add(reply!.simple!.cookie);
    }
    assert.equal(seen.size, count);
    const back = await simple(c, Command.READ, { offset: 4 * MiB + 199 * 4096, length: 4096 }, 4096);
    assert.ok(back.data.every((byte) => byte === 199));
    c.close();
  });

  test("structured READ of a hole is one OFFSET_HOLE chunk; of data, OFFSET_DATA chunks; DONE on the last", async () => {
    const c = await client({ structured: true });
    c.request(Command.READ, { offset: 24 * MiB, length: MiB, cookie: 3n });
    const holeChunks = await c.readChunks();
    assert.equal(holeChunks.length, 1);
    assert.equal(holeChunks[0]!.type, ChunkType.OFFSET_HOLE);
    assert.equal(holeChunks[0]!.payload.readBigUInt64BE(0), BigInt(24 * MiB));
    assert.equal(holeChunks[0]!.payload.readUInt32BE(8), MiB);

    const data = randomBytes(64 * 1024);
    assert.equal((await simple(c, Command.WRITE, { offset: 24 * MiB + 256 * 1024, payload: data })).error, 0);
    c.request(Command.READ, { offset: 24 * MiB, length: MiB });
    const mixed = await c.readChunks();
    assert.deepEqual(
      mixed.map((chunk) => chunk.type),
      [ChunkType.OFFSET_HOLE, ChunkType.OFFSET_DATA, ChunkType.OFFSET_HOLE],
    );
    const dataChunk = mixed[1]!;
    assert.equal(dataChunk.payload.readBigUInt64BE(0), BigInt(24 * MiB + 256 * 1024));
    assert.ok(dataChunk.payload.subarray(8).equals(data));
    assert.ok(mixed.slice(0, -1).every((chunk) => (chunk.flags & 1) === 0));

    c.request(Command.READ, { offset: 24 * MiB, length: MiB, flags: CommandFlag.DF });
    const unfragmented = await c.readChunks();
    assert.equal(unfragmented.length, 1, "DF: a single data chunk");
    assert.equal(unfragmented[0]!.type, ChunkType.OFFSET_DATA);
    c.close();
  });

  test("BLOCK_STATUS tells holes from data truthfully, and REQ_ONE returns exactly one extent", async () => {
    const c = await client({ structured: true, metaContext: true });
    const base = 16 * MiB;
    await simple(c, Command.TRIM, { offset: base, length: 4 * MiB });
    await simple(c, Command.WRITE, { offset: base + MiB, payload: randomBytes(MiB) });
    c.request(Command.BLOCK_STATUS, { offset: base, length: 4 * MiB });
    const [chunk] = await c.readChunks();
    assert.equal(chunk!.type, ChunkType.BLOCK_STATUS);
    const extents: Array<[number, number]> = [];
    for (let p = 4; p < chunk!.payload.length; p += 8)
      extents.push([chunk!.payload.readUInt32BE(p), chunk!.payload.readUInt32BE(p + 4)]);
    assert.deepEqual(extents, [
      [MiB, 3],
      [MiB, 0],
      [2 * MiB, 3],
    ]);

    c.request(Command.BLOCK_STATUS, { offset: base, length: 4 * MiB, flags: CommandFlag.REQ_ONE });
    const [one] = await c.readChunks();
    assert.equal(one!.payload.length, 4 + 8);
    assert.equal(one!.payload.readUInt32BE(4), MiB);

    await simple(c, Command.TRIM, { offset: base + MiB, length: MiB });
    c.request(Command.BLOCK_STATUS, { offset: base, length: 4 * MiB });
    const [afterTrim] = await c.readChunks();
    assert.equal(afterTrim!.payload.readUInt32BE(4), 4 * MiB, "TRIM punched the hole back");
    assert.equal(afterTrim!.payload.readUInt32BE(8), 3);
    c.close();
  });

  test("TRIM frees space in the backing file and reads back zeroes", async () => {
    const c = await client();
    const offset = 8 * MiB;
    await simple(c, Command.WRITE, { offset, payload: randomBytes(4 * MiB) });
    await simple(c, Command.FLUSH);
    const before = statSync(file).blocks;
    assert.equal((await simple(c, Command.TRIM, { offset, length: 4 * MiB })).error, 0);
    const after = statSync(file).blocks;
    assert.ok(
      before - after >= (4 * MiB) / 512 - 16,
      `allocated blocks fell by 4 MiB (before ${before}, after ${after})`,
    );
    const back = await simple(c, Command.READ, { offset, length: 4 * MiB }, 4 * MiB);
    assert.ok(back.data.every((byte) => byte === 0));
    c.close();
  });

  test("WRITE_ZEROES zeroes, punching a hole unless NO_HOLE; FAST_ZERO is honoured", async () => {
    const c = await client();
    const offset = 12 * MiB;
    await simple(c, Command.WRITE, { offset, payload: randomBytes(2 * MiB) });
    assert.equal((await simple(c, Command.WRITE_ZEROES, { offset, length: MiB })).error, 0);
    assert.equal(
      (
        await simple(c, Command.WRITE_ZEROES, {
          offset: offset + MiB,
          length: MiB,
          flags: CommandFlag.NO_HOLE | CommandFlag.FUA,
        })
      ).error,
      0,
    );
    assert.equal(
      (await simple(c, Command.WRITE_ZEROES, { offset, length: 4096, flags: CommandFlag.FAST_ZERO })).error,
      0,
    );
    const back = await simple(c, Command.READ, { offset, length: 2 * MiB }, 2 * MiB);
    assert.ok(back.data.every((byte) => byte === 0));
    c.close();
  });

  test("FUA is accepted on every command; FLUSH and CACHE succeed", async () => {
    const c = await client();
    for (const [type, extra] of [
      [Command.WRITE, { payload: Buffer.alloc(4096, 1) }],
      [Command.READ, { length: 4096 }],
      [Command.TRIM, { length: 4096 }],
      [Command.WRITE_ZEROES, { length: 4096 }],
      [Command.CACHE, { length: MiB }],
      [Command.FLUSH, {}],
    ] as const) {
      const reply = await simple(
        c,
        type,
        { offset: type === Command.FLUSH ? 0 : 20 * MiB, flags: CommandFlag.FUA, ...extra },
        type === Command.READ ? 4096 : 0,
      );
      assert.equal(reply.error, 0, `command ${type} with FUA`);
    }
    c.close();
  });

  test("bad requests get EINVAL/ENOSPC/EPERM as the spec prescribes and the connection carries on", async () => {
    const c = await client({ blockSize: true });
    const cases: Array<[string, number, Parameters<RawNbdClient["request"]>[1], number]> = [
      ["unknown command", 42, { length: 512 }, NbdErrno.EINVAL],
      ["unknown flag", Command.READ, { length: 512, flags: 1 << 9 }, NbdErrno.EINVAL],
      ["flag on the wrong command", Command.READ, { length: 512, flags: CommandFlag.NO_HOLE }, NbdErrno.EINVAL],
      ["REQ_ONE on WRITE_ZEROES", Command.WRITE_ZEROES, { length: 512, flags: CommandFlag.REQ_ONE }, NbdErrno.EINVAL],
      ["read past the end", Command.READ, { offset: SIZE - 512, length: 1024 }, NbdErrno.EINVAL],
      ["read at a huge offset", Command.READ, { offset: 0xffffffffffff0000n, length: 512 }, NbdErrno.EINVAL],
      ["write zeroes past the end", Command.WRITE_ZEROES, { offset: SIZE, length: 512 }, NbdErrno.ENOSPC],
      ["trim past the end", Command.TRIM, { offset: SIZE, length: 512 }, NbdErrno.EINVAL],
      ["misaligned read", Command.READ, { offset: 100, length: 512 }, NbdErrno.EINVAL],
      ["misaligned length", Command.READ, { offset: 0, length: 100 }, NbdErrno.EINVAL],
      ["zero-length read", Command.READ, { offset: 0, length: 0 }, NbdErrno.EINVAL],
      ["oversized read", Command.READ, { offset: 0, length: 33 * MiB }, NbdErrno.EINVAL],
      ["FLUSH with a length", Command.FLUSH, { offset: 0, length: 512 }, NbdErrno.EINVAL],
      ["BLOCK_STATUS without a meta context", Command.BLOCK_STATUS, { length: 512 }, NbdErrno.EINVAL],
    ];
    for (const [what, type, options, errno] of cases) {
      const reply = await simple(c, type, options);
      assert.equal(reply.error, errno, what);
    }
    const past = await simple(c, Command.WRITE, { offset: SIZE - 512, payload: Buffer.alloc(1024, 9) });
    assert.equal(past.error, NbdErrno.ENOSPC, "write past the end");
    const misaligned = await simple(c, Command.WRITE, { offset: 700, payload: Buffer.alloc(512, 9) });
    assert.equal(misaligned.error, NbdErrno.EINVAL, "misaligned write (its payload is consumed)");
    const fine = await simple(c, Command.READ, { offset: 0, length: 512 }, 512);
    assert.equal(fine.error, 0, "the connection is still in sync after the refusals");
    c.close();
    assert.ok(logs.some((line) => line.includes("refused: unknown command 42")));
  });

  test("structured errors for READ are ERROR chunks carrying the errno and a message", async () => {
    const c = await client({ structured: true });
    c.request(Command.READ, { offset: SIZE, length: 4096 });
    const [chunk] = await c.readChunks();
    assert.equal(chunk!.type, ChunkType.ERROR);
    assert.equal(chunk!.payload.readUInt32BE(0), NbdErrno.EINVAL);
    const messageLength = chunk!.payload.readUInt16BE(4);
    assert.match(chunk!.payload.subarray(6, 6 + messageLength).toString(), /past/);
    c.close();
  });

  test("writes to a read-only export get EPERM and change nothing", async () => {
    const c = await client({}, readOnlyPort);
    const original = readFileSync(file).subarray(0, 4096);
    for (const [type, options] of [
      [Command.WRITE, { payload: Buffer.alloc(4096, 0xee) }],
      [Command.TRIM, { length: 4096 }],
      [Command.WRITE_ZEROES, { length: 4096 }],
    ] as const) {
      assert.equal((await simple(c, type, options)).error, NbdErrno.EPERM);
    }
    assert.ok(readFileSync(file).subarray(0, 4096).equals(original));
    const read = await simple(c, Command.READ, { length: 4096 }, 4096);
    assert.ok(read.data.equals(original));
    c.close();
  });

  test("a WRITE larger than the maximum payload drops only that connection", async () => {
    const bystander = await client();
    const marker = randomBytes(4096);
    await simple(bystander, Command.WRITE, { offset: 30 * MiB, payload: marker });
    const c = await client();
    c.request(Command.WRITE, { offset: 0, length: 64 * MiB });
    assert.ok(await c.waitForClose());
    assert.ok(logs.some((line) => line.includes("exceeds the 33554432-byte maximum payload")));
    const back = await simple(bystander, Command.READ, { offset: 30 * MiB, length: 4096 }, 4096);
    assert.ok(back.data.equals(marker));
    bystander.close();
  });

  test("a bad request magic drops the connection; a client vanishing mid-payload writes nothing", async () => {
    const c = await client();
    c.request(Command.READ, { length: 512, magic: 0x12345678 });
    assert.ok(await c.waitForClose());
    assert.ok(logs.some((line) => line.includes("bad request magic")));

    const before = readFileSync(file).subarray(28 * MiB, 28 * MiB + MiB);
    const quitter = await client();
    const header = Buffer.alloc(28);
    header.writeUInt32BE(0x25609513, 0);
    header.writeUInt16BE(Command.WRITE, 6);
    header.writeBigUInt64BE(BigInt(28 * MiB), 16);
    header.writeUInt32BE(MiB, 24);
    quitter.send(Buffer.concat([header, Buffer.alloc(1000, 0xab)]));
    quitter.socket.end();
    await quitter.closed;
    const witness = await client();
    const reply = await simple(witness, Command.READ, { offset: 28 * MiB, length: MiB }, MiB);
    assert.ok(reply.data.equals(before), "the half-sent write changed nothing");
    witness.close();
    await waitFor(() => logs.some((line) => line.includes("in the middle of a WRITE payload")));
  });

  test("CAN_MULTI_CONN holds: a write on one connection is read by another, FLUSH on either covers it", async () => {
    const a = await client();
    const b = await client();
    const data = randomBytes(64 * 1024);
    await simple(a, Command.WRITE, { offset: 2 * MiB, payload: data });
    assert.equal((await simple(b, Command.FLUSH)).error, 0);
    const seen = await simple(b, Command.READ, { offset: 2 * MiB, length: data.length }, data.length);
    assert.ok(seen.data.equals(data));
    a.close();
    b.close();
  });

  test("in-flight requests are bounded: a client that never reads replies stalls only itself", async () => {
    const greedy = await client();
    // 4000 x 1 MiB reads = 4 GiB of replies the client never reads; the server must stop reading requests.
    for (let i = 0; i < 4000; i++)
      greedy.request(Command.READ, { offset: (i % 16) * MiB, length: MiB, cookie: BigInt(i) });
    const other = await client();
    const reply = await simple(other, Command.READ, { offset: 0, length: 4096 }, 4096);
    assert.equal(reply.error, 0);
    const rss = process.memoryUsage().rss;
    assert.ok(rss < 1024 * MiB, `server memory stays bounded (rss ${Math.round(rss / MiB)} MiB)`);
    greedy.close();
    other.close();
  });

  test("two thousand connections at once are served, and the server carries on", async () => {
    // All from 127.0.0.1: this checks capacity, so the per-address and handshake bounds (nbd-bounds.test.ts) are lifted.
    const roomy = new NbdServer({
      exports: [{ name: "disk", description: "", device }],
      log: () => undefined,
      limits: { maxConnectionsPerAddress: 4096, maxHandshakes: 4096 },
    });
    const roomyPort = Number((await roomy.listen({ kind: "tcp", host: "127.0.0.1", port: 0 })).split(":")[1]);
    try {
      const clients = await Promise.all(Array.from({ length: 2000 }, () => RawNbdClient.connect({ port: roomyPort })));
      await Promise.all(clients.slice(0, 50).map((c) => c.handshake()));
      for (const c of clients) c.close();
      const after = await RawNbdClient.connect({ port: roomyPort });
      await after.handshake();
      assert.equal((await simple(after, Command.READ, { length: 4096 }, 4096)).error, 0);
      after.close();
    } finally {
      await roomy.stop();
    }
  });

  test("DISC closes the connection after in-flight requests are answered", async () => {
    const c = await client();
    c.request(Command.WRITE, { offset: 6 * MiB, payload: Buffer.alloc(MiB, 0x42), cookie: 77n });
    c.request(Command.DISC);
    const reply = await c.readReply();
    assert.equal(reply?.simple?.cookie, 77n);
    assert.equal(reply?.simple?.error, 0);
    assert.ok(await c.waitForClose());
  });
});

// The suite takes well under a second; one still running after 30 s is hung.
describe("NBD shutdown", { timeout: 30_000 }, () => {
  test("stopping the server answers new requests with ESHUTDOWN, finishes in-flight ones and closes", async () => {
    const dir = tempDir();
    const file = await FileDevice.open(join(dir.path, "d.img"), { createSizeBytes: 8 * MiB });
    const device = new FaultDevice(file);
    const server = new NbdServer({ exports: [{ name: "d", description: "", device }], log: () => undefined });
    try {
      const port = Number((await server.listen({ kind: "tcp", host: "127.0.0.1", port: 0 })).split(":")[1]);
      const c = await RawNbdClient.connect({ port });
      await c.handshake();
      device.inject({ kinds: ["write"], hold: true });
      c.request(Command.WRITE, { offset: 0, payload: Buffer.alloc(MiB, 1), cookie: 1n });
      await waitFor(() => device.heldCount === 1);
      const stopping = server.stop();
      c.request(Command.READ, { offset: 0, length: 4096, cookie: 2n });
      const refused = await c.readReply();
      assert.deepEqual([refused?.simple?.cookie, refused?.simple?.error], [2n, NbdErrno.ESHUTDOWN]);
      device.heal();
      const completed = await c.readReply();
      assert.deepEqual([completed?.simple?.cookie, completed?.simple?.error], [1n, 0], "the in-flight write completed");
      assert.ok(await c.waitForClose(), "the server closed the connection once idle");
      await stopping;
      assert.ok(
        readFileSync(join(dir.path, "d.img"))
          .subarray(0, MiB)
          .every((byte) => byte === 1),
      );
    } finally {
      // After a failure too: the held write released, the server stopped (it drops what is left).
      device.heal();
      await server.stop();
      await device.close();
      dir.remove();
    }
  });
});

async function waitFor(condition: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}
