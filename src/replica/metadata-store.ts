// Crash-safe storage of a replica's metadata (volume id, size, generations, epoch, clean shutdown...)
// in two fixed slots of one small file, written alternately. Each slot holds a header (magic, format
// version, sequence number, body length, SHA-256 of the body) and a JSON body. A save writes the slot
// NOT holding the newest record and syncs it before it is relied on; a load takes the valid slot with
// the highest sequence. A crash mid-save can only tear the slot being written, so a load always finds
// either the previous record or the new one, never a mix and never nothing (once one save completed).
// The file is reached through `MetadataFile`, so tests can tear writes at any byte.

import { createHash } from "node:crypto";
import assert from "node:assert/strict";
import { HavenError } from "../core/errors.js";

export const SLOT_BYTES = 64 * 1024;
const HEADER_BYTES = 64;
const MAGIC = 0x4856_4d44; // "HVMD"
const FORMAT_VERSION = 1;
export const MAX_BODY_BYTES = SLOT_BYTES - HEADER_BYTES;

/** The few file operations the store needs; the real one is a file descriptor, tests inject faults. */
export interface MetadataFile {
  read(offset: number, length: number): Promise<Buffer>;
  write(offset: number, data: Buffer): Promise<void>;
  sync(): Promise<void>;
}

export interface StoredRecord<T> {
  readonly sequence: number;
  readonly value: T;
}

/** Encodes one slot. Pure. */
export function encodeSlot(sequence: number, body: unknown): Buffer {
  assert.ok(Number.isSafeInteger(sequence) && sequence > 0, "sequence must be a positive integer");
  const json = Buffer.from(JSON.stringify(body), "utf8");
  if (json.length > MAX_BODY_BYTES) {
    throw new HavenError("HAVEN_ERR_TOO_LARGE", `replica metadata of ${json.length} bytes exceeds ${MAX_BODY_BYTES}`);
  }
  const slot = Buffer.alloc(SLOT_BYTES);
  slot.writeUInt32BE(MAGIC, 0);
  slot.writeUInt32BE(FORMAT_VERSION, 4);
  slot.writeBigUInt64BE(BigInt(sequence), 8);
  slot.writeUInt32BE(json.length, 16);
  createHash("sha256").update(slot.subarray(0, 20)).update(json).digest().copy(slot, 20);
  json.copy(slot, HEADER_BYTES);
  return slot;
}

/** Decodes one slot; undefined when it is empty, torn or corrupt (any check fails). Pure. */
export function decodeSlot(slot: Buffer): StoredRecord<unknown> | undefined {
  if (slot.length < HEADER_BYTES || slot.readUInt32BE(0) !== MAGIC) return undefined;
  if (slot.readUInt32BE(4) !== FORMAT_VERSION) return undefined;
  if (!slot.subarray(52, HEADER_BYTES).every((byte) => byte === 0)) return undefined; // reserved
  const length = slot.readUInt32BE(16);
  if (length > MAX_BODY_BYTES || HEADER_BYTES + length > slot.length) return undefined;
  const json = slot.subarray(HEADER_BYTES, HEADER_BYTES + length);
  const digest = createHash("sha256").update(slot.subarray(0, 20)).update(json).digest();
  if (!digest.subarray(0, 32).equals(slot.subarray(20, 52))) return undefined;
  const sequence = Number(slot.readBigUInt64BE(8));
  try {
    return { sequence, value: JSON.parse(json.toString("utf8")) as unknown };
  } catch {
    return undefined;
  }
}

export class MetadataStore<T> {
  private newest: StoredRecord<T> | undefined;
  private newestSlot = 1;
  private saving: Promise<void> = Promise.resolve();

  private constructor(
    private readonly file: MetadataFile,
    private readonly validate: (value: unknown) => T,
  ) {}

  /** Opens the store and loads the newest valid record (undefined for a new, empty file). */
  static async open<T>(file: MetadataFile, validate: (value: unknown) => T): Promise<MetadataStore<T>> {
    const store = new MetadataStore(file, validate);
    const slots = await Promise.all([file.read(0, SLOT_BYTES), file.read(SLOT_BYTES, SLOT_BYTES)]);
    slots.forEach((slot, index) => {
      const record = decodeSlot(slot);
      if (record === undefined) return;
      if (store.newest === undefined || record.sequence > store.newest.sequence) {
        store.newest = { sequence: record.sequence, value: validate(record.value) };
        store.newestSlot = index;
      }
    });
    return store;
  }

  get current(): StoredRecord<T> | undefined {
    return this.newest;
  }

  /** Durably replaces the record; resolves only after the data is synced. Saves are serialized. */
  async save(value: T): Promise<void> {
    await this.modify(() => value);
  }

  /**
   * Durably replaces the record with `change(newest)`, computed when the saves queued before it are
   * done (so concurrent changes never overwrite each other); `undefined` from `change` saves nothing.
   * Resolves with the newest record after it.
   */
  modify(change: (current: T | undefined) => T | undefined): Promise<T | undefined> {
    const run = this.saving.then(async () => {
      const value = change(this.newest?.value);
      if (value === undefined) return this.newest?.value;
      const sequence = (this.newest?.sequence ?? 0) + 1;
      const target = 1 - this.newestSlot;
      const slot = encodeSlot(sequence, this.validate(value));
      await this.file.write(target * SLOT_BYTES, slot);
      await this.file.sync();
      this.newest = { sequence, value };
      this.newestSlot = target;
      return value;
    });
    this.saving = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }
}
