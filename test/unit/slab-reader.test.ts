// SlabReader over a real loopback TCP connection: it is used on this Node.js (not silently replaced
// by 'data' events), it delivers exactly the bytes sent, in order, and it never reads into memory a
// consumer still holds: held chunks keep their contents while megabytes more arrive, released slabs
// are read into again, and with every slab pinned, reads fall back to fresh buffers.

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { createServer, connect, type Socket } from "node:net";
import { once } from "node:events";
import { FIRST_SLAB_BYTES, SlabReader } from "../../src/util/slab-reader.js";
import { ChunkQueue } from "../../src/util/chunk-queue.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** The longest test here (every slab pinned) takes about 5 s; one still running after this bound is hung, not slow. */
const test = boundedTest(60_000);

const KIB = 1024;
const MIB = 1024 * KIB;

/** A deterministic byte stream: block i is filled from a hash of i, so any overwrite shows. */
function pattern(totalBytes: number): Buffer {
  const out = Buffer.allocUnsafe(totalBytes);
  for (let at = 0, i = 0; at < totalBytes; at += 32, i++) {
    createHash("sha256").update(String(i)).digest().copy(out, at);
  }
  return out;
}

/** A server that accepts one connection and hands back its socket; the client writes `data` and ends. */
async function pair(data: Buffer): Promise<{ server: Socket; close: () => void }> {
  const listener = createServer();
  listener.listen(0, "127.0.0.1");
  await once(listener, "listening");
  const address = listener.address() as { port: number };
  const accepted = once(listener, "connection");
  const client = connect(address.port, "127.0.0.1");
  const [server] = (await accepted) as [Socket];
  client.end(data);
  return {
    server,
    close: () => {
      client.destroy();
      server.destroy();
      listener.close();
    },
  };
}

test("an accepted socket reads into slabs on this Node.js, delivering the bytes in order", async () => {
  const data = pattern(24 * MIB);
  const { server, close } = await pair(data);
  try {
    const received: Buffer[] = [];
    // attach() may deliver what the socket buffered before it returns: the reader is reached through a holder.
    const holder: { reader?: SlabReader } = {};
    const reader = (holder.reader = SlabReader.attach(server, (chunk) => {
      received.push(Buffer.from(chunk));
      holder.reader?.release(chunk);
    }));
    assert.ok(reader, "SlabReader.attach fell back to 'data' events on this Node.js");
    await once(server, "end");
    assert.ok(Buffer.concat(received).equals(data), "the bytes delivered differ from the bytes sent");
    // Released at once, the first slab is read into again and again: 24 MiB went through 256 KiB.
    assert.deepEqual(reader.stats, { slabs: 1, slabBytes: FIRST_SLAB_BYTES, unpooledReads: 0 });
  } finally {
    close();
  }
});

test("chunks a consumer holds keep their contents while more data arrives, until released", async () => {
  const data = pattern(16 * MIB);
  const { server, close } = await pair(data);
  try {
    const held: { chunk: Buffer; at: number }[] = [];
    let position = 0;
    const holder: { reader?: SlabReader } = {};
    const reader = (holder.reader = SlabReader.attach(
      server,
      (chunk) => {
        // Hold everything in the first 3 MiB (it pins the first slabs); release the rest at once.
        if (position < 3 * MIB) held.push({ chunk, at: position });
        else holder.reader?.release(chunk);
        position += chunk.length;
      },
      { slabBytes: 1 * MIB, maxSlabs: 5 },
    ));
    assert.ok(reader);
    await once(server, "end");
    assert.equal(position, data.length);
    for (const { chunk, at } of held) {
      assert.ok(chunk.equals(data.subarray(at, at + chunk.length)), `a held chunk at ${at} was overwritten`);
    }
    // Three or four slabs stay pinned, so the stream went through the one or two left.
    assert.ok(reader.stats.slabs <= 5);
    for (const { chunk } of held) reader.release(chunk);
  } finally {
    close();
  }
});

test("with every slab pinned, reads get fresh buffers and the data stays right", async () => {
  const data = pattern(6 * MIB);
  const { server, close } = await pair(data);
  try {
    const held: Buffer[] = [];
    const reader = SlabReader.attach(server, (chunk) => held.push(chunk), { slabBytes: 1 * MIB, maxSlabs: 2 });
    assert.ok(reader);
    await once(server, "end");
    assert.ok(Buffer.concat(held).equals(data), "data read while every slab was pinned is wrong");
    // Two slabs, the second twice the first, then fresh buffers.
    assert.equal(reader.stats.slabs, 2);
    assert.equal(reader.stats.slabBytes, 3 * FIRST_SLAB_BYTES);
    assert.ok(reader.stats.unpooledReads > 0, "expected reads past the two pinned slabs to use fresh buffers");
  } finally {
    close();
  }
});

test("releasing more than was read is refused (a consumer releasing twice would free live memory)", async () => {
  const data = pattern(64 * KIB);
  const { server, close } = await pair(data);
  try {
    const chunks: Buffer[] = [];
    const reader = SlabReader.attach(server, (chunk) => chunks.push(chunk));
    assert.ok(reader);
    await once(server, "end");
    for (const chunk of chunks) reader.release(chunk);
    assert.throws(() => reader.release(chunks[0]!), /more bytes released than were read/);
  } finally {
    close();
  }
});

test("a ChunkQueue with a release callback hands back what take() parsed, not what takePieces() gave out", () => {
  const released: number[] = [];
  const queue = new ChunkQueue((pieces) => {
    for (const piece of Buffer.isBuffer(pieces) ? [pieces] : pieces) released.push(piece.length);
  });
  queue.push(Buffer.from("0123456789"));
  queue.push(Buffer.from("abcdefghij"));
  assert.equal(queue.take(4).toString(), "0123");
  assert.deepEqual(released, [4]);
  const pieces = queue.takePieces(8);
  assert.equal(Buffer.concat(pieces).toString(), "456789ab");
  assert.deepEqual(released, [4], "takePieces must leave releasing to the caller");
  const copy = queue.takeCopy(5);
  assert.equal(copy.toString(), "cdefg");
  assert.deepEqual(released, [4, 5]);
  assert.equal(queue.take(3).toString(), "hij");
  assert.deepEqual(released, [4, 5, 3]);
});
