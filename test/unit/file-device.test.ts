// The file block device against a real sparse file: data, holes, zeroing, durability calls and
// range checks, each checked against what the file system itself reports.

import { after, before } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import fc from "fast-check";
import { FileDevice } from "../../src/block/file-device.js";
import { nativeIo } from "../../src/block/native.js";
import { HavenError } from "../../src/core/errors.js";
import { tempDir } from "../helpers/server-process.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** Every test here takes well under a second; one still running after this bound is hung, not slow. */
const test = boundedTest(10_000);

const MiB = 1024 * 1024;
const dir = tempDir("haven-file-device-");
let device: FileDevice;
const path = join(dir.path, "disk.img");

before(async () => {
  device = await FileDevice.open(path, { createSizeBytes: 16 * MiB });
});
after(async () => {
  await device.close();
  dir.remove();
});

test("a new device is one sparse hole of the requested size", async () => {
  assert.equal(device.size, 16 * MiB);
  assert.equal(statSync(path).blocks, 0);
  assert.deepEqual(await device.blockStatus(0, 16 * MiB), [{ length: 16 * MiB, hole: true, zero: true }]);
});

test("writes land at their offsets, in one piece or in several", async () => {
  const a = randomBytes(4096);
  const pieces = [randomBytes(1000), randomBytes(3000), randomBytes(96)];
  await device.write(MiB, a);
  await device.write(2 * MiB, pieces, { fua: true });
  const file = readFileSync(path);
  assert.ok(file.subarray(MiB, MiB + 4096).equals(a));
  assert.ok(file.subarray(2 * MiB, 2 * MiB + 4096).equals(Buffer.concat(pieces)));
  const back = Buffer.alloc(4096);
  await device.read(2 * MiB, back);
  assert.ok(back.equals(Buffer.concat(pieces)));
});

test("block status matches a model of written and trimmed 64 KiB blocks", async () => {
  const blocks = 16 * 16; // 16 MiB / 64 KiB
  const model = new Array<boolean>(blocks).fill(false);
  await device.trim(0, 16 * MiB);
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 0, max: blocks - 1 }), fc.integer({ min: 1, max: 8 })), {
        maxLength: 20,
      }),
      async (operations) => {
        for (const [write, first, count] of operations) {
          const n = Math.min(count, blocks - first);
          if (write) await device.write(first * 65536, Buffer.alloc(n * 65536, 7));
          else await device.trim(first * 65536, n * 65536);
          for (let i = first; i < first + n; i++) model[i] = write;
        }
        let position = 0;
        const extents = await device.blockStatus(0, 16 * MiB);
        for (const extent of extents) {
          for (let p = position; p < position + extent.length; p += 65536) {
            assert.equal(!extent.hole, model[p / 65536], `block ${p / 65536}`);
          }
          position += extent.length;
        }
        assert.equal(position, 16 * MiB, "extents cover the whole range");
      },
    ),
    { numRuns: 30 },
  );
});

test("write zeroes reads back zero with and without keeping the allocation", async () => {
  await device.write(4 * MiB, randomBytes(2 * MiB));
  await device.writeZeroes(4 * MiB, MiB);
  await device.writeZeroes(5 * MiB, MiB, { keepAllocated: true, fua: true });
  const back = Buffer.alloc(2 * MiB);
  await device.read(4 * MiB, back);
  assert.ok(back.every((byte) => byte === 0));
});

test("concurrent flushes coalesce but each still covers the writes before it", async () => {
  const writes = Array.from({ length: 20 }, (_, i) => device.write(8 * MiB + i * 4096, Buffer.alloc(4096, i)));
  await Promise.all(writes);
  await Promise.all(Array.from({ length: 10 }, () => device.flush()));
  const file = readFileSync(path);
  for (let i = 0; i < 20; i++) assert.equal(file[8 * MiB + i * 4096], i);
});

test("requests past the end are refused and change nothing", async () => {
  const before = readFileSync(path);
  await assert.rejects(
    device.write(16 * MiB - 100, Buffer.alloc(200)),
    (e: unknown) => e instanceof HavenError && e.code === "HAVEN_ERR_OUT_OF_RANGE",
  );
  await assert.rejects(device.read(16 * MiB, Buffer.alloc(1)), HavenError);
  await assert.rejects(device.trim(15 * MiB, 2 * MiB), HavenError);
  assert.ok(readFileSync(path).equals(before));
});

test("a read-only device refuses every write", async () => {
  const readOnly = await FileDevice.open(path, { readOnly: true });
  try {
    await assert.rejects(
      readOnly.write(0, Buffer.alloc(1)),
      (e: unknown) => e instanceof HavenError && e.code === "HAVEN_ERR_READ_ONLY",
    );
    await assert.rejects(readOnly.trim(0, 512), HavenError);
    await assert.rejects(readOnly.writeZeroes(0, 512), HavenError);
    assert.equal(readOnly.capabilities.readOnly, true);
  } finally {
    await readOnly.close();
  }
});

test("opening refuses to resize, to create without a size, and empty files", async () => {
  await assert.rejects(FileDevice.open(path, { createSizeBytes: 8 * MiB }), /never resizes/);
  await assert.rejects(FileDevice.open(join(dir.path, "absent.img")), /pass --size/);
  writeFileSync(join(dir.path, "empty.img"), "");
  await assert.rejects(FileDevice.open(join(dir.path, "empty.img")), /empty/);
  await assert.rejects(FileDevice.open(dir.path), /directory/);
});

test("start writeback is a hint on an open device and an error on a closed one or a bad descriptor", async () => {
  const data = randomBytes(2 * MiB);
  await device.write(4 * MiB, data);
  await device.startWriteback(4 * MiB, 2 * MiB);
  assert.ok(
    readFileSync(path)
      .subarray(4 * MiB, 6 * MiB)
      .equals(data),
    "the data is unchanged by it",
  );
  await assert.rejects(nativeIo().startWriteback(999_999, 0, 4096), /sync_file_range failed: Bad file descriptor/);
  const other = await FileDevice.open(join(dir.path, "closed.img"), { createSizeBytes: MiB });
  await other.close();
  await assert.rejects(other.startWriteback(0, 4096), HavenError);
});

test("copyFrom copies another file's bytes inside the kernel, and refuses what does not fit", async () => {
  const sourcePath = join(dir.path, "source.img");
  const bytes = randomBytes(3 * MiB);
  writeFileSync(sourcePath, bytes);
  const source = await FileDevice.open(sourcePath);
  try {
    const from = source.zeroCopySource(MiB, 2 * MiB)!;
    await device.copyFrom(from, 8 * MiB, 2 * MiB);
    assert.ok(
      readFileSync(path)
        .subarray(8 * MiB, 10 * MiB)
        .equals(bytes.subarray(MiB, 3 * MiB)),
    );
    // The source ends before the length asked: an error, not a silent short copy.
    await assert.rejects(device.copyFrom({ fd: from.fd, position: 2 * MiB }, 0, 2 * MiB), (error: unknown) => {
      assert.ok(error instanceof HavenError);
      assert.match(error.message, /the source ended after 1048576 of 2097152 bytes/);
      return true;
    });
    await assert.rejects(device.copyFrom(from, 15 * MiB, 2 * MiB), (error: unknown) => {
      assert.ok(error instanceof HavenError);
      assert.equal(error.code, "HAVEN_ERR_OUT_OF_RANGE");
      return true;
    });
  } finally {
    await source.close();
  }
});

test("large writes land whole however they are cut into pieces and wherever they start", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 0, max: 8 * MiB }),
      fc.array(fc.integer({ min: 1, max: 200_000 }), { minLength: 1, maxLength: 12 }),
      async (offset, sizes) => {
        const pieces = sizes.map((size) => randomBytes(size));
        const data = Buffer.concat(pieces);
        if (data.length <= 64 * 1024) pieces.push(randomBytes(64 * 1024)); // always past one segment
        const whole = Buffer.concat(pieces);
        await device.write(offset, pieces);
        const back = Buffer.alloc(whole.length);
        await device.read(offset, back);
        assert.ok(
          back.equals(whole),
          `${whole.length} bytes written at ${offset} in ${pieces.length} pieces read back wrong`,
        );
      },
    ),
    { numRuns: 25 },
  );
});

test("a large write of thousands of tiny pieces lands whole (more than one system call's worth)", async () => {
  const pieces = Array.from({ length: 5000 }, (_, i) => Buffer.alloc(37, i % 251));
  const whole = Buffer.concat(pieces);
  await device.write(3 * MiB + 123, pieces);
  assert.ok(
    readFileSync(path)
      .subarray(3 * MiB + 123, 3 * MiB + 123 + whole.length)
      .equals(whole),
  );
});

test("writeSegments reports a failing descriptor with the errno's name", async () => {
  await assert.rejects(nativeIo().writeSegments(987654, [Buffer.alloc(128 * 1024)], 0, 64 * 1024), { code: "EBADF" });
  assert.throws(() => nativeIo().writeSegments(1, [], 0, 64 * 1024), /non-empty array/);
});
