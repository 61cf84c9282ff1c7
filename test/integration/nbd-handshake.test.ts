// The handshake, driven byte by byte by a hand-written client: what the spec requires for good
// options, and a clean refusal or disconnect (with a log line) for every kind of bad one.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { FileDevice } from "../../src/block/file-device.js";
import { NbdServer } from "../../src/nbd/server.js";
import {
  HandshakeFlag,
  IHAVEOPT,
  Info,
  NBD_MAGIC,
  Option,
  OptionReply,
  TransmissionFlag,
} from "../../src/nbd/constants.js";
import { infoPayload, metaContextPayload, RawNbdClient } from "../helpers/raw-nbd-client.js";
import { tempDir } from "../helpers/server-process.js";

const SIZE = 16 * 1024 * 1024;

// The suite takes about 4 s; one still running after 60 s is hung.
describe("NBD handshake", { timeout: 60_000 }, () => {
  const dir = tempDir();
  const logs: string[] = [];
  let server: NbdServer;
  let device: FileDevice;
  let port: number;

  before(async () => {
    device = await FileDevice.open(join(dir.path, "disk.img"), { createSizeBytes: SIZE });
    server = new NbdServer({
      exports: [{ name: "disk", description: "test disk", device }],
      log: (line) => logs.push(line),
      limits: { handshakeTimeoutMs: 2000 },
    });
    port = Number((await server.listen({ kind: "tcp", host: "127.0.0.1", port: 0 })).split(":")[1]);
  });
  after(async () => {
    await server.stop();
    await device.close();
    dir.remove();
  });

  async function opened(flags = HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES): Promise<RawNbdClient> {
    const client = await RawNbdClient.connect({ port });
    const greeting = await client.readGreeting();
    assert.equal(greeting.magic, NBD_MAGIC);
    assert.equal(greeting.optMagic, IHAVEOPT);
    assert.equal(greeting.flags, HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES);
    client.sendClientFlags(flags);
    return client;
  }

  test("GO answers INFO_EXPORT with the size and flags, then ACK, then transmission starts", async () => {
    const client = await opened();
    client.sendOption(Option.GO, infoPayload("disk", [Info.NAME, Info.DESCRIPTION, Info.BLOCK_SIZE]));
    const replies = await client.readOptionReplies();
    const byInfo = new Map(
      replies.filter((r) => r.type === OptionReply.INFO).map((r) => [r.data.readUInt16BE(0), r.data]),
    );
    assert.equal(byInfo.get(Info.EXPORT)!.readBigUInt64BE(2), BigInt(SIZE));
    const flags = byInfo.get(Info.EXPORT)!.readUInt16BE(10);
    for (const flag of [
      TransmissionFlag.HAS_FLAGS,
      TransmissionFlag.SEND_FLUSH,
      TransmissionFlag.SEND_FUA,
      TransmissionFlag.CAN_MULTI_CONN,
      TransmissionFlag.SEND_TRIM,
      TransmissionFlag.SEND_WRITE_ZEROES,
    ]) {
      assert.ok((flags & flag) !== 0, `flag ${flag} advertised`);
    }
    assert.equal(flags & TransmissionFlag.READ_ONLY, 0);
    assert.equal(flags & TransmissionFlag.SEND_DF, 0, "DF is not offered without structured replies");
    assert.equal(byInfo.get(Info.NAME)!.subarray(2).toString(), "disk");
    assert.equal(byInfo.get(Info.DESCRIPTION)!.subarray(2).toString(), "test disk");
    const sizes = byInfo.get(Info.BLOCK_SIZE)!;
    assert.deepEqual(
      [sizes.readUInt32BE(2), sizes.readUInt32BE(6), sizes.readUInt32BE(10)],
      [512, 4096, 32 * 1024 * 1024],
    );
    assert.equal(replies[replies.length - 1]!.type, OptionReply.ACK);
    client.close();
  });

  test("INFO reports the export and leaves option haggling open", async () => {
    const client = await opened();
    client.sendOption(Option.INFO, infoPayload("", []));
    const replies = await client.readOptionReplies();
    assert.equal(replies[0]!.type, OptionReply.INFO);
    assert.equal(replies.at(-1)!.type, OptionReply.ACK);
    client.sendOption(Option.GO, infoPayload("disk", []));
    assert.equal((await client.readOptionReplies()).at(-1)!.type, OptionReply.ACK);
    client.close();
  });

  test("an unknown export gets ERR_UNKNOWN with a message, and the client may try again", async () => {
    const client = await opened();
    client.sendOption(Option.GO, infoPayload("nope", []));
    const [reply] = await client.readOptionReplies();
    assert.equal(reply!.type, OptionReply.ERR_UNKNOWN);
    assert.match(reply!.data.toString(), /nope/);
    client.sendOption(Option.GO, infoPayload("disk", []));
    assert.equal((await client.readOptionReplies()).at(-1)!.type, OptionReply.ACK);
    client.close();
  });

  test("LIST names every export with its description", async () => {
    const client = await opened();
    client.sendOption(Option.LIST);
    const replies = await client.readOptionReplies();
    assert.equal(replies.length, 2);
    const server = replies[0]!;
    assert.equal(server.type, OptionReply.SERVER);
    const nameLength = server.data.readUInt32BE(0);
    assert.equal(server.data.subarray(4, 4 + nameLength).toString(), "disk");
    assert.equal(server.data.subarray(4 + nameLength).toString(), "test disk");
    client.close();
  });

  test("unknown options get ERR_UNSUP and the handshake carries on", async () => {
    const client = await opened();
    client.sendOption(9999, Buffer.from("some payload"));
    assert.equal((await client.readOptionReply()).type, OptionReply.ERR_UNSUP);
    client.sendOption(Option.EXTENDED_HEADERS);
    assert.equal((await client.readOptionReply()).type, OptionReply.ERR_UNSUP);
    client.sendOption(Option.GO, infoPayload("disk", []));
    assert.equal((await client.readOptionReplies()).at(-1)!.type, OptionReply.ACK);
    client.close();
  });

  test("STARTTLS gets POLICY (no TLS configured, as the spec's NOTLS mode) and the connection stays usable in plain text", async () => {
    const client = await opened();
    client.sendOption(Option.STARTTLS);
    const reply = await client.readOptionReply();
    assert.equal(reply.type, OptionReply.ERR_POLICY);
    client.sendOption(Option.STARTTLS, Buffer.from("x"));
    assert.equal((await client.readOptionReply()).type, OptionReply.ERR_INVALID);
    client.sendOption(Option.GO, infoPayload("disk", []));
    assert.equal((await client.readOptionReplies()).at(-1)!.type, OptionReply.ACK);
    client.close();
  });

  test("SET_META_CONTEXT before STRUCTURED_REPLY is ERR_INVALID; after it, base:allocation gets an id", async () => {
    const client = await opened();
    client.sendOption(Option.SET_META_CONTEXT, metaContextPayload("disk", ["base:allocation"]));
    assert.equal((await client.readOptionReply()).type, OptionReply.ERR_INVALID);
    client.sendOption(Option.STRUCTURED_REPLY);
    assert.equal((await client.readOptionReply()).type, OptionReply.ACK);
    client.sendOption(Option.LIST_META_CONTEXT, metaContextPayload("disk", []));
    const listed = await client.readOptionReplies();
    assert.equal(listed[0]!.type, OptionReply.META_CONTEXT);
    assert.equal(listed[0]!.data.subarray(4).toString(), "base:allocation");
    client.sendOption(Option.SET_META_CONTEXT, metaContextPayload("disk", ["base:allocation", "qemu:dirty-bitmap:x"]));
    const set = await client.readOptionReplies();
    assert.equal(set.length, 2, "one context selected, then ACK");
    assert.notEqual(set[0]!.data.readUInt32BE(0), 0);
    client.sendOption(Option.SET_META_CONTEXT, metaContextPayload("disk", ["other:thing"]));
    assert.deepEqual(
      (await client.readOptionReplies()).map((r) => r.type),
      [OptionReply.ACK],
    );
    client.close();
  });

  test("malformed option payloads get ERR_INVALID, not a crash", async () => {
    const client = await opened();
    const truncated = infoPayload("disk", [Info.NAME]).subarray(0, 7);
    client.sendOption(Option.GO, truncated);
    assert.equal((await client.readOptionReply()).type, OptionReply.ERR_INVALID);
    const lying = infoPayload("disk", []);
    lying.writeUInt32BE(4000, 0); // name length past the payload
    client.sendOption(Option.INFO, lying);
    assert.equal((await client.readOptionReply()).type, OptionReply.ERR_INVALID);
    client.sendOption(Option.STRUCTURED_REPLY);
    await client.readOptionReply();
    const badMeta = metaContextPayload("disk", ["base:allocation"]);
    badMeta.writeUInt32BE(7, 8); // claims 7 queries
    client.sendOption(Option.SET_META_CONTEXT, badMeta);
    assert.equal((await client.readOptionReply()).type, OptionReply.ERR_INVALID);
    client.sendOption(Option.LIST, Buffer.from("x"));
    assert.equal((await client.readOptionReply()).type, OptionReply.ERR_INVALID);
    client.close();
  });

  test("EXPORT_NAME ends the handshake with size, flags and 124 zero bytes unless NO_ZEROES", async () => {
    const client = await opened(HandshakeFlag.FIXED_NEWSTYLE);
    client.sendOption(Option.EXPORT_NAME, Buffer.from("disk"));
    const answer = await client.mustRead(10 + 124);
    assert.equal(answer.readBigUInt64BE(0), BigInt(SIZE));
    assert.ok(answer.subarray(10).every((byte) => byte === 0));
    client.close();
    const noZeroes = await opened();
    noZeroes.sendOption(Option.EXPORT_NAME, Buffer.from("disk"));
    assert.equal((await noZeroes.mustRead(10)).readBigUInt64BE(0), BigInt(SIZE));
    noZeroes.request(3); // FLUSH works right after: no stray padding was sent
    const reply = await noZeroes.readReply();
    assert.equal(reply?.simple?.error, 0);
    noZeroes.close();
  });

  test("EXPORT_NAME for an unknown export drops the connection (it cannot carry an error)", async () => {
    const client = await opened();
    client.sendOption(Option.EXPORT_NAME, Buffer.from("missing"));
    assert.ok(await client.waitForClose());
    assert.ok(logs.some((line) => line.includes('unknown export "missing"')));
  });

  test("ABORT is acknowledged and the connection closed", async () => {
    const client = await opened();
    client.sendOption(Option.ABORT);
    assert.equal((await client.readOptionReply()).type, OptionReply.ACK);
    assert.ok(await client.waitForClose());
  });

  test("bad magic, unknown client flags and huge option lengths end the connection with a log line", async () => {
    const badMagic = await opened();
    badMagic.sendOption(Option.LIST, Buffer.alloc(0), 0x1234n);
    assert.ok(await badMagic.waitForClose());
    assert.ok(logs.some((line) => line.includes("bad option magic")));

    const badFlags = await opened(0x80);
    assert.ok(await badFlags.waitForClose());
    assert.ok(logs.some((line) => line.includes("unknown handshake flags")));

    const huge = await opened();
    huge.sendOption(Option.GO, Buffer.alloc(0), IHAVEOPT, 0xfffffff0);
    assert.ok(await huge.waitForClose());
    assert.ok(logs.some((line) => line.includes("exceeds")));
  });

  test("a client that stalls mid-handshake is dropped after the handshake timeout", async () => {
    const client = await RawNbdClient.connect({ port });
    await client.readGreeting();
    client.send(Buffer.from([0, 0])); // half of the client flags, then silence
    assert.ok(await client.waitForClose(5000));
    assert.ok(logs.some((line) => line.includes("handshake not finished")));
  });

  test("garbage instead of a handshake is refused and other clients are unaffected", async () => {
    const garbage = await RawNbdClient.connect({ port });
    garbage.send(Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(100)));
    assert.ok(await garbage.waitForClose());
    const good = await RawNbdClient.connect({ port });
    const { size } = await good.handshake({ name: "disk" });
    assert.equal(size, BigInt(SIZE));
    good.close();
  });
});
