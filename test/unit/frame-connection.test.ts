// FrameConnection's sending side: small frames of one turn leave together in one socket write, large
// frames go out uncopied after them, order is kept whatever the mix, and a batch buffer is never
// refilled while the socket may still be writing it (checked by a reader that stalls until megabytes
// are queued).

import assert from "node:assert/strict";
import { createServer, connect, type Server, type Socket } from "node:net";
import { once } from "node:events";
import { FrameConnection, frame } from "../../src/replica/protocol/connection.js";
import { FrameDecoder, type Frame } from "../../src/replica/protocol/frame-codec.js";
import { FrameType } from "../../src/replica/protocol/constants.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** The longest test here (a stalled reader) takes about 2 s; one still running after this bound is hung, not slow. */
const test = boundedTest(30_000);

/** A connected pair over loopback: `sender` wrapped in a FrameConnection, `receiver` a plain socket. */
async function pair(): Promise<{ server: Server; sender: FrameConnection; receiver: Socket }> {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const port = (server.address() as { port: number }).port;
  const accepted = once(server, "connection");
  const socket = connect(port, "127.0.0.1");
  await once(socket, "connect");
  const [receiver] = (await accepted) as [Socket];
  return { server, sender: new FrameConnection(socket), receiver };
}

/** Runs `body` with a fresh pair and closes it afterwards. */
async function withPair(body: (sender: FrameConnection, receiver: Socket) => Promise<void>): Promise<void> {
  const { server, sender, receiver } = await pair();
  try {
    await body(sender, receiver);
  } finally {
    sender.socket.destroy();
    receiver.destroy();
    server.close();
  }
}

/** Every frame the receiver gets until `count` have arrived. */
async function receive(receiver: Socket, count: number): Promise<Frame[]> {
  const decoder = new FrameDecoder();
  const frames: Frame[] = [];
  for await (const chunk of receiver) {
    frames.push(...decoder.push(chunk as Buffer));
    if (frames.length >= count) break;
  }
  return frames;
}

/** A payload whose bytes tell which frame it belongs to. */
const payloadOf = (id: number, length: number): Buffer => {
  const payload = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) payload[i] = (id * 31 + i) & 0xff;
  return payload;
};

test("small frames sent in one turn leave in one socket write; the sender's buffers are copied", async () => {
  await withPair(async (sender, receiver) => {
    const writes: number[] = [];
    const write = sender.socket.write.bind(sender.socket);
    sender.socket.write = ((chunk: Buffer, ...rest: never[]) => {
      writes.push(chunk.length);
      return write(chunk, ...rest);
    }) as typeof sender.socket.write;
    const arriving = receive(receiver, 10);
    const payloads = Array.from({ length: 10 }, (_, id) => payloadOf(id, 4096));
    for (let id = 0; id < 10; id++)
      sender.sendPieces(frame(FrameType.WRITE, { requestId: BigInt(id), offset: BigInt(id * 4096) }), [payloads[id]!]);
    for (const payload of payloads) payload.fill(0xee); // a caller reusing its memory changes nothing sent
    const frames = await arriving;
    assert.deepEqual(writes, [10 * (48 + 4096)], "one write of every frame of the turn");
    for (const [id, f] of frames.entries()) {
      assert.equal(f.requestId, BigInt(id));
      assert.deepEqual(f.payload, payloadOf(id, 4096));
    }
  });
});

test("a mix of small and large frames arrives complete and in order, through a stalled reader", async () => {
  await withPair(async (sender, receiver) => {
    // Sizes from a header alone to 1 MiB, over several turns, with the receiver not reading until
    // megabytes are queued: batch buffers then wait on the socket, and one refilled too early would
    // send another frame's bytes.
    const sizes = [0, 1, 4096, 16 * 1024, 16 * 1024 + 1, 65536, 3, 1 << 20, 100, 4096];
    const frames: Array<{ id: number; length: number }> = [];
    receiver.pause();
    let id = 0;
    for (let turn = 0; turn < 12; turn++) {
      for (let i = 0; i < 25; i++) {
        const length = sizes[(turn * 7 + i) % sizes.length]!;
        sender.sendPieces(frame(FrameType.WRITE, { requestId: BigInt(id) }), [payloadOf(id, length)]);
        frames.push({ id, length });
        id++;
      }
      await new Promise((resolve) => setImmediate(resolve));
    }
    assert.ok(sender.socket.writableLength > 1 << 20, "the reader's stall left data queued on the sender");
    receiver.resume();
    const arrived = await receive(receiver, frames.length);
    assert.equal(arrived.length, frames.length);
    for (const [i, f] of arrived.entries()) {
      assert.equal(f.requestId, BigInt(frames[i]!.id), `frame ${i} out of order`);
      assert.ok(f.payload.equals(payloadOf(frames[i]!.id, frames[i]!.length)), `frame ${i}'s payload differs`);
    }
  });
});

test("end() sends what is batched before closing", async () => {
  await withPair(async (sender, receiver) => {
    const arriving = receive(receiver, 1);
    sender.send(frame(FrameType.REPLY, { requestId: 9n, status: 6, payload: Buffer.from("wrong secret") }));
    sender.end();
    const [reply] = await arriving;
    assert.equal(reply!.requestId, 9n);
    assert.equal(reply!.payload.toString(), "wrong secret");
  });
});
