// Replica metadata survives a crash at any point of a save: the torn slot is ignored and the load
// returns the last completed record or the one being saved, never garbage and never an older one.

import assert from "node:assert/strict";
import fc from "fast-check";
import {
  decodeSlot,
  encodeSlot,
  MetadataStore,
  SLOT_BYTES,
  type MetadataFile,
} from "../../src/replica/metadata-store.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** The longest test here takes about 1 s; one still running after this bound is hung, not slow. */
const test = boundedTest(20_000);

/** An in-memory disk that can "crash": the write in progress lands only up to a chosen byte. */
class TearableFile implements MetadataFile {
  data = Buffer.alloc(2 * SLOT_BYTES);
  tearAtWrite = -1;
  tearAfterBytes = 0;
  tornGarbage = false;
  private writes = 0;

  async read(offset: number, length: number): Promise<Buffer> {
    return Buffer.from(this.data.subarray(offset, offset + length));
  }
  async write(offset: number, data: Buffer): Promise<void> {
    if (this.writes++ === this.tearAtWrite) {
      data.copy(this.data, offset, 0, this.tearAfterBytes);
      if (this.tornGarbage)
        this.data.fill(0xa5, offset + this.tearAfterBytes, offset + Math.min(data.length, this.tearAfterBytes + 4096));
      throw new Error("crash");
    }
    data.copy(this.data, offset);
  }
  async sync(): Promise<void> {}
}

const validate = (value: unknown): { n: number; note: string } => {
  const v = value as { n?: unknown; note?: unknown };
  assert.ok(typeof v.n === "number" && typeof v.note === "string", "bad record");
  return { n: v.n, note: v.note };
};

test("slots round-trip and any flipped byte makes them invalid", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 2 ** 40 }),
      fc.string({ maxLength: 200 }),
      fc.integer({ min: 0, max: 300 }),
      (sequence, note, flip) => {
        const slot = encodeSlot(sequence, { n: 1, note });
        assert.deepEqual(decodeSlot(slot), { sequence, value: { n: 1, note } });
        const bodyEnd = 64 + Buffer.byteLength(JSON.stringify({ n: 1, note }));
        const position = flip % bodyEnd;
        slot[position] = slot[position]! ^ 0x01;
        assert.equal(decodeSlot(slot), undefined, `flipped byte ${position}`);
      },
    ),
  );
});

test("a new file has no record; saves alternate slots and the newest wins on reload", async () => {
  const file = new TearableFile();
  const store = await MetadataStore.open(file, validate);
  assert.equal(store.current, undefined);
  for (let n = 1; n <= 5; n++) await store.save({ n, note: `save ${n}` });
  const reloaded = await MetadataStore.open(file, validate);
  assert.deepEqual(reloaded.current, { sequence: 5, value: { n: 5, note: "save 5" } });
});

test("a crash at any byte of any save leaves the last completed record or the new one, never garbage", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 8 }),
      fc.integer({ min: 0, max: 7 }),
      fc.integer({ min: 0, max: SLOT_BYTES }),
      fc.boolean(),
      async (saves, crashAt, tearAfterBytes, garbage) => {
        const file = new TearableFile();
        file.tearAtWrite = crashAt;
        file.tearAfterBytes = tearAfterBytes;
        file.tornGarbage = garbage;
        const store = await MetadataStore.open(file, validate);
        let completed = 0;
        for (let n = 1; n <= saves; n++) {
          try {
            await store.save({ n, note: "x".repeat(n * 100) });
            completed = n;
          } catch {
            break; // the process "crashed" here
          }
        }
        const after = await MetadataStore.open(file, validate);
        if (completed === 0 && crashAt === 0) {
          assert.ok(after.current === undefined || after.current.value.n === 1);
        } else {
          const n = after.current!.value.n;
          assert.ok(n === completed || n === completed + 1, `loaded ${n}, last completed ${completed}`);
          assert.equal(after.current!.value.note, "x".repeat(n * 100));
        }
      },
    ),
    { numRuns: 500 },
  );
});

test("a record too large for a slot is refused before anything is written", async () => {
  const file = new TearableFile();
  const store = await MetadataStore.open(file, validate);
  await store.save({ n: 1, note: "ok" });
  await assert.rejects(store.save({ n: 2, note: "y".repeat(SLOT_BYTES) }), /exceeds/);
  assert.deepEqual((await MetadataStore.open(file, validate)).current?.value, { n: 1, note: "ok" });
});

test("on a real file, records survive closing and reopening, and a corrupted newest slot falls back", async () => {
  const { FileMetadataFile } = await import("../../src/replica/metadata-file.js");
  const { tempDir } = await import("../helpers/server-process.js");
  const { openSync, writeSync, closeSync } = await import("node:fs");
  const { join } = await import("node:path");
  const dir = tempDir("haven-meta-");
  try {
    const path = join(dir.path, "meta");
    const file = await FileMetadataFile.open(path);
    const store = await MetadataStore.open(file, validate);
    await store.save({ n: 1, note: "first" });
    await store.save({ n: 2, note: "second" }); // lands in slot 1
    await file.close();
    const reopened = await FileMetadataFile.open(path);
    assert.deepEqual((await MetadataStore.open(reopened, validate)).current?.value, { n: 2, note: "second" });
    await reopened.close();
    const fd = openSync(path, "r+");
    writeSync(fd, Buffer.from("garbage"), 0, 7, SLOT_BYTES + 70); // damage the newest slot's body
    closeSync(fd);
    const damaged = await FileMetadataFile.open(path);
    assert.deepEqual((await MetadataStore.open(damaged, validate)).current?.value, { n: 1, note: "first" });
    await damaged.close();
  } finally {
    dir.remove();
  }
});
