// The payloads of replication frames (constants.ts lists which request carries which): encoders for
// the sending side and strict parsers for the receiving side. Both sides treat what they receive as
// untrusted: a parser never asserts, it throws a HavenError whose message names the field at fault,
// so a bad payload costs one refused request (or, from a server, one dropped connection), nothing more.

import type { Extent } from "../../block/device.js";
import { HavenError, type ErrorCode } from "../../core/errors.js";
import { isValidGenerationId, MAX_HISTORY, type Generations } from "../generations.js";
import { isValidVolumeName, type CreateOptions } from "../port.js";
import {
  isInSyncCopies,
  MAX_IN_SYNC_COPIES,
  parseReplicaMetadata,
  type MetadataPatch,
  type ReplicaMetadata,
} from "../replica-store.js";
import { EXTENT_RECORD_BYTES, ExtentFlag, MAX_OPEN_PAYLOAD_BYTES } from "./constants.js";

export interface OpenRequest {
  readonly name: string;
  /** Which of the host's disks holds the copy; absent: the server decides (one copy per host). */
  readonly disk?: string;
  readonly create: CreateOptions | undefined;
}

/** Largest region a copy may track out-of-sync data in (1 GiB), as OPEN_REPLICA accepts it. */
const MAX_REGION_BYTES = 1024 * 1024 * 1024;
/** An encoded bitmap (bitmap-codec.ts): empty, "all", or base64. */
const ENCODED_BITMAP = /^(?:|all|[A-Za-z0-9+/]+={0,2})$/;

export function encodeOpenRequest(name: string, create: CreateOptions | undefined, disk?: string): Buffer {
  const body = {
    name,
    ...(disk !== undefined && { disk }),
    ...(create && {
      create: { volumeId: create.volumeId, sizeBytes: create.sizeBytes, regionBytes: create.regionBytes },
    }),
  };
  return Buffer.from(JSON.stringify(body), "utf8");
}

/** OPEN_REPLICA's payload; throws HAVEN_ERR_INVALID_REQUEST saying what is wrong. */
export function parseOpenRequest(payload: Buffer): OpenRequest {
  const bad = (reason: string): HavenError => new HavenError("HAVEN_ERR_INVALID_REQUEST", `OPEN_REPLICA: ${reason}`);
  if (payload.length > MAX_OPEN_PAYLOAD_BYTES)
    throw bad(`payload of ${payload.length} bytes exceeds ${MAX_OPEN_PAYLOAD_BYTES}`);
  const body = parseJson(payload, bad);
  const fields = objectWithKeys(body, ["name", "disk", "create"], "payload", bad);
  if (typeof fields.name !== "string") throw bad(`"name" must be a string`);
  if (!isValidVolumeName(fields.name))
    throw bad(`volume name ${quote(fields.name, 70)} is not valid (a-z, 0-9, . _ -, at most 63 characters)`);
  if (fields.disk !== undefined && (typeof fields.disk !== "string" || !isValidVolumeName(fields.disk)))
    throw bad(`"disk" must be a disk id (a-z, 0-9, . _ -, at most 63 characters)`);
  const disk = fields.disk === undefined ? {} : { disk: fields.disk };
  if (fields.create === undefined) return { name: fields.name, ...disk, create: undefined };
  const create = objectWithKeys(fields.create, ["volumeId", "sizeBytes", "regionBytes"], `"create"`, bad);
  for (const key of ["volumeId", "sizeBytes", "regionBytes"])
    if (create[key] === undefined) throw bad(`"create.${key}" is missing`);
  if (typeof create.volumeId !== "string" || !isValidGenerationId(create.volumeId))
    throw bad(`"create.volumeId" must be 16 hex digits`);
  if (!isSafeCount(create.sizeBytes) || create.sizeBytes === 0)
    throw bad(`"create.sizeBytes" must be a whole number of bytes above zero`);
  if (!isPowerOfTwo(create.regionBytes) || create.regionBytes < 4096 || create.regionBytes > MAX_REGION_BYTES)
    throw bad(`"create.regionBytes" must be a power of two from 4096 to ${MAX_REGION_BYTES}`);
  return {
    name: fields.name,
    ...disk,
    create: { volumeId: create.volumeId, sizeBytes: create.sizeBytes, regionBytes: create.regionBytes },
  };
}

export function encodeMetadataPatch(patch: MetadataPatch): Buffer {
  return Buffer.from(JSON.stringify(patch), "utf8");
}

/**
 * SET_METADATA's payload: only the writer-owned keys, each well formed (generation ids, history
 * length, encoded bitmaps, activity-log extents). Throws HAVEN_ERR_INVALID_REQUEST saying what is wrong.
 */
export function parseMetadataPatch(payload: Buffer): MetadataPatch {
  const bad = (reason: string): HavenError => new HavenError("HAVEN_ERR_INVALID_REQUEST", `SET_METADATA: ${reason}`);
  const body = parseJson(payload, bad);
  const fields = objectWithKeys(
    body,
    ["generations", "changedSince", "activityLog", "resync", "inSyncCopies"],
    "patch",
    bad,
  );
  const patch: { -readonly [K in keyof MetadataPatch]: MetadataPatch[K] } = {};
  if (fields.generations !== undefined) {
    const reason = generationsProblem(fields.generations);
    if (reason !== undefined) throw bad(`"generations": ${reason}`);
    const g = fields.generations as Generations;
    patch.generations = { current: g.current, bitmap: g.bitmap, history: [...g.history] };
  }
  if (fields.changedSince !== undefined) {
    const changed = objectWithKeys(fields.changedSince, undefined, `"changedSince"`, bad);
    for (const [id, encoded] of Object.entries(changed)) {
      if (!isValidGenerationId(id)) throw bad(`"changedSince" key ${quote(id)} is not a generation id`);
      if (typeof encoded !== "string" || !ENCODED_BITMAP.test(encoded))
        throw bad(`"changedSince.${id}" is not an encoded bitmap`);
    }
    patch.changedSince = changed as Record<string, string>;
  }
  if (fields.activityLog !== undefined) {
    if (!Array.isArray(fields.activityLog) || !fields.activityLog.every(isSafeCount))
      throw bad(`"activityLog" must be an array of extent numbers`);
    patch.activityLog = fields.activityLog as number[];
  }
  if (fields.resync !== undefined) {
    if (fields.resync === null) patch.resync = null;
    else {
      const resync = objectWithKeys(fields.resync, ["validFor", "remaining"], `"resync"`, bad);
      if (typeof resync.validFor !== "string" || !isValidGenerationId(resync.validFor))
        throw bad(`"resync.validFor" must be a generation id`);
      if (typeof resync.remaining !== "string" || !ENCODED_BITMAP.test(resync.remaining))
        throw bad(`"resync.remaining" is not an encoded bitmap`);
      patch.resync = { validFor: resync.validFor, remaining: resync.remaining };
    }
  }
  if (fields.inSyncCopies !== undefined) {
    if (!isInSyncCopies(fields.inSyncCopies))
      throw bad(`"inSyncCopies" must be null or at most ${MAX_IN_SYNC_COPIES} copy ids (16 hex digits)`);
    patch.inSyncCopies = fields.inSyncCopies === null ? null : [...fields.inSyncCopies];
  }
  return patch;
}

export function encodeMetadata(metadata: ReplicaMetadata): Buffer {
  return Buffer.from(JSON.stringify(metadata), "utf8");
}

/** A copy's metadata as a server sent it; throws `code` (the server broke the protocol) if malformed. */
export function parseMetadata(payload: Buffer, code: ErrorCode = "HAVEN_ERR_IO"): ReplicaMetadata {
  const bad = (reason: string): HavenError => new HavenError(code, `malformed replica metadata: ${reason}`);
  const body = parseJson(payload, bad);
  if (typeof body !== "object" || body === null) throw bad("not a JSON object");
  const reason = generationsProblem((body as { generations?: unknown }).generations);
  if (reason !== undefined) throw bad(`generations: ${reason}`);
  try {
    return parseReplicaMetadata(body);
  } catch (error) {
    throw bad((error as Error).message);
  }
}

export function encodeRegionBytes(regionBytes: number): Buffer {
  const payload = Buffer.alloc(4);
  payload.writeUInt32BE(regionBytes, 0);
  return payload;
}

/** Extents as BLOCK_STATUS replies carry them: per extent u64 length, u8 flags (ExtentFlag). */
export function encodeExtents(extents: readonly Extent[]): Buffer {
  const payload = Buffer.alloc(extents.length * EXTENT_RECORD_BYTES);
  extents.forEach((extent, index) => {
    const at = index * EXTENT_RECORD_BYTES;
    payload.writeBigUInt64BE(BigInt(extent.length), at);
    payload.writeUInt8((extent.hole ? ExtentFlag.HOLE : 0) | (extent.zero ? ExtentFlag.ZERO : 0), at + 8);
  });
  return payload;
}

/**
 * A BLOCK_STATUS reply for a request of `requestedBytes`: at least one extent, each non-empty, no
 * unknown flag, together at most the requested length. Throws HAVEN_ERR_IO (the server broke the protocol).
 */
export function decodeExtents(payload: Buffer, requestedBytes: number): Extent[] {
  const bad = (reason: string): HavenError => new HavenError("HAVEN_ERR_IO", `malformed BLOCK_STATUS reply: ${reason}`);
  if (payload.length === 0 || payload.length % EXTENT_RECORD_BYTES !== 0)
    throw bad(`${payload.length} bytes is not a whole number of ${EXTENT_RECORD_BYTES}-byte extents`);
  const extents: Extent[] = [];
  let total = 0;
  for (let at = 0; at < payload.length; at += EXTENT_RECORD_BYTES) {
    const length = payload.readBigUInt64BE(at);
    const flags = payload.readUInt8(at + 8);
    if (length === 0n) throw bad("an extent of 0 bytes");
    if ((flags & ~(ExtentFlag.HOLE | ExtentFlag.ZERO)) !== 0) throw bad(`unknown extent flags 0x${flags.toString(16)}`);
    if (length > BigInt(requestedBytes - total)) throw bad(`extents cover more than the ${requestedBytes} bytes asked`);
    total += Number(length);
    extents.push({
      length: Number(length),
      hole: (flags & ExtentFlag.HOLE) !== 0,
      zero: (flags & ExtentFlag.ZERO) !== 0,
    });
  }
  return extents;
}

/** Why `value` is not a valid generation history, or undefined when it is (generations.ts, without asserting). */
export function generationsProblem(value: unknown): string | undefined {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return "must be an object";
  const keys = Object.keys(value);
  const unknown = keys.find((key) => !["current", "bitmap", "history"].includes(key));
  if (unknown !== undefined) return `unknown field ${quote(unknown)}`;
  const g = value as { current?: unknown; bitmap?: unknown; history?: unknown };
  const isId = (id: unknown): id is string => typeof id === "string" && (id === "" || isValidGenerationId(id));
  if (!isId(g.current) || !isId(g.bitmap)) return `"current" and "bitmap" must be 16 hex digits or ""`;
  if (!Array.isArray(g.history) || !g.history.every(isId)) return `"history" must be an array of generation ids`;
  if (g.history.length > MAX_HISTORY) return `"history" holds more than ${MAX_HISTORY} generations`;
  if (g.current === "" && (g.bitmap !== "" || g.history.length > 0)) return "a copy without data has no past";
  return undefined;
}

/** Untrusted text echoed in a message (and so in a log line): shortened, quoted, control characters escaped. */
function quote(text: string, maxLength = 40): string {
  return JSON.stringify(text.slice(0, maxLength));
}

function parseJson(payload: Buffer, bad: (reason: string) => HavenError): unknown {
  try {
    return JSON.parse(payload.toString("utf8")) as unknown;
  } catch {
    throw bad(`payload of ${payload.length} bytes is not JSON`);
  }
}

/** `value` as a plain object whose keys are all in `allowed` (any keys when undefined). */
function objectWithKeys(
  value: unknown,
  allowed: readonly string[] | undefined,
  what: string,
  bad: (reason: string) => HavenError,
): Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw bad(`${what} must be a JSON object`);
  if (allowed !== undefined) {
    const unknown = Object.keys(value).find((key) => !allowed.includes(key));
    if (unknown !== undefined) throw bad(`${what} has an unknown field ${quote(unknown)}`);
  }
  return value as Record<string, unknown>;
}

function isSafeCount(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

function isPowerOfTwo(value: unknown): value is number {
  return isSafeCount(value) && value > 0 && (value & (value - 1)) === 0;
}
