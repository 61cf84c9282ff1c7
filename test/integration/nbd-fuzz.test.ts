// Random traffic against a live server: arbitrary bytes in the handshake, and requests with a valid
// magic but random command, flags, offset and length in transmission. After every case the server
// is still up, a bystander connection still reads its data intact, and nothing outside the written
// regions changed. A failing case prints its fast-check seed and replays from it.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import fc from "fast-check";
import { FileDevice } from "../../src/block/file-device.js";
import { NbdServer } from "../../src/nbd/server.js";
import { Command, REQUEST_MAGIC } from "../../src/nbd/constants.js";
import { RawNbdClient } from "../helpers/raw-nbd-client.js";
import { tempDir } from "../helpers/server-process.js";

const SIZE = 8 * 1024 * 1024;
const MARKER_OFFSET = SIZE - 65536;

// The suite takes about 4 s; one still running after 60 s is hung.
describe("NBD fuzzing", { timeout: 60_000 }, () => {
  const dir = tempDir();
  let device: FileDevice;
  let server: NbdServer;
  let port: number;
  let bystander: RawNbdClient;
  const marker = randomBytes(65536);

  before(async () => {
    device = await FileDevice.open(join(dir.path, "disk.img"), { createSizeBytes: SIZE });
    server = new NbdServer({
      exports: [{ name: "disk", description: "", device }],
      log: (line) => (line.startsWith("shutdown") ? console.error(line) : undefined),
      limits: { handshakeTimeoutMs: 1000 },
    });
    port = Number((await server.listen({ kind: "tcp", host: "127.0.0.1", port: 0 })).split(":")[1]);
    bystander = await RawNbdClient.connect({ port });
    await bystander.handshake();
    bystander.request(Command.WRITE, { offset: MARKER_OFFSET, payload: marker });
    assert.equal((await bystander.readReply())?.simple?.error, 0);
  });
  after(async () => {
    bystander.close();
    await server.stop();
    await device.close();
    dir.remove();
  });

  async function bystanderStillReadsMarker(): Promise<void> {
    bystander.request(Command.READ, { offset: MARKER_OFFSET, length: marker.length, cookie: 99n });
    const reply = await bystander.readReply(marker.length);
    assert.equal(reply?.simple?.error, 0);
    assert.ok(reply!.simple!.data.equals(marker), "the bystander's data is intact");
  }

  test("random bytes during the handshake never take the server down", async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 0, maxLength: 300 }), async (bytes) => {
        const client = await RawNbdClient.connect({ port });
        await client.readGreeting();
        client.send(Buffer.from(bytes));
        client.socket.end();
        await client.waitForClose(3000);
        client.close();
        await bystanderStillReadsMarker();
      }),
      { numRuns: 150 },
    );
  });

  test("random requests with a valid magic get a reply or a clean disconnect, never a crash", async () => {
    const request = fc.record({
      type: fc.oneof(fc.integer({ min: 0, max: 9 }), fc.integer({ min: 0, max: 0xffff })),
      flags: fc.oneof(fc.integer({ min: 0, max: 31 }), fc.integer({ min: 0, max: 0xffff })),
      offset: fc.oneof(fc.integer({ min: 0, max: SIZE / 2 }), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })),
      length: fc.oneof(fc.integer({ min: 0, max: 65536 }), fc.integer({ min: 0, max: 0xffffffff })),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(request, { minLength: 1, maxLength: 8 }), async (requests) => {
        const client = await RawNbdClient.connect({ port });
        await client.handshake({ structured: true, metaContext: true });
        for (const r of requests) {
          const isWrite = r.type === Command.WRITE && r.length <= 65536;
          const offset = typeof r.offset === "bigint" ? r.offset : BigInt(r.offset);
          // Keep random writes away from the bystander's marker, so its check stays meaningful.
          const safeOffset =
            isWrite && offset + BigInt(r.length) > BigInt(MARKER_OFFSET) && offset < BigInt(SIZE) ? 0n : offset;
          client.request(r.type, {
            magic: REQUEST_MAGIC,
            flags: r.flags,
            offset: safeOffset,
            length: r.length,
            ...(isWrite && { payload: Buffer.alloc(r.length, 0x11) }),
          });
        }
        client.request(Command.DISC);
        client.socket.end();
        await client.waitForClose(5000);
        client.close();
        await bystanderStillReadsMarker();
      }),
      { numRuns: 200 },
    );
  });
});
