// The JSON shapes of etcd v3's gRPC gateway, turned into typed values and back. Pure: no I/O.
//
// The gateway speaks protobuf's JSON mapping: keys and values are base64, int64 fields are decimal
// strings, and fields holding their zero value are left out (an absent "value" is "", an absent
// "type" on a watch event is PUT, an absent "TTL" is 0). Everything that comes back is untrusted and
// checked here; a malformed answer becomes HAVEN_ERR_IO naming what was being asked.

import { HavenError } from "../core/errors.js";

/** An etcd lease id: a decimal int64, kept as a string because it exceeds 2^53. */
export type LeaseId = string;

export interface KeyValue {
  readonly key: string;
  readonly value: string;
  readonly createRevision: number;
  readonly modRevision: number;
  /** How many times the key was written since it was created (1 after the first put). */
  readonly version: number;
  /** The lease the key is attached to, if any. */
  readonly lease: LeaseId | undefined;
}

export type WatchEvent =
  | ({ readonly type: "PUT" } & KeyValue)
  | { readonly type: "DELETE"; readonly key: string; readonly modRevision: number };

export type JsonObject = Record<string, unknown>;

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** Base64 of a key or value as etcd stores it (UTF-8 bytes). */
export function encodeText(text: string): string {
  return Buffer.from(text, "utf8").toString("base64");
}

/**
 * The [key, range_end) pair, both base64, that selects every key starting with `prefix`. etcd's rule:
 * range_end is the prefix with its last byte below 0xff incremented and the rest dropped; "\0" means
 * "no upper bound", which an empty prefix (all keys, from "\0" on) uses too.
 */
export function prefixRange(prefix: string): { key: string; range_end: string } {
  const bytes = Buffer.from(prefix, "utf8");
  const noUpperBound = Buffer.from([0]).toString("base64");
  if (bytes.length === 0) return { key: noUpperBound, range_end: noUpperBound };
  for (let index = bytes.length - 1; index >= 0; index--) {
    if (bytes[index]! < 0xff) {
      const end = Buffer.from(bytes.subarray(0, index + 1));
      end[index]!++;
      return { key: bytes.toString("base64"), range_end: end.toString("base64") };
    }
  }
  return { key: bytes.toString("base64"), range_end: noUpperBound };
}

export function malformed(what: string, detail: string): HavenError {
  return new HavenError("HAVEN_ERR_IO", `etcd answered ${what} with ${detail}`);
}

export function asObject(value: unknown, what: string, name = "the answer"): JsonObject {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw malformed(what, `${name} not a JSON object: ${JSON.stringify(value)?.slice(0, 200)}`);
  }
  return value as JsonObject;
}

export function asArray(value: unknown, what: string, name: string): unknown[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw malformed(what, `"${name}" not an array`);
  return value;
}

/** An int64 field as a number; absent means 0. Revisions, counts and TTLs stay far below 2^53. */
export function int64Field(object: JsonObject, name: string, what: string): number {
  const raw = object[name];
  if (raw === undefined) return 0;
  const number = typeof raw === "string" && /^-?\d{1,16}$/.test(raw) ? Number(raw) : raw;
  if (typeof number !== "number" || !Number.isSafeInteger(number)) {
    throw malformed(what, `"${name}" not an integer: ${JSON.stringify(raw)}`);
  }
  return number;
}

/** A lease id field; absent or "0" means no lease. */
export function leaseField(object: JsonObject, name: string, what: string): LeaseId | undefined {
  const raw = object[name];
  if (raw === undefined || raw === "0" || raw === 0) return undefined;
  if (typeof raw !== "string" || !/^-?\d{1,19}$/.test(raw)) {
    throw malformed(what, `"${name}" not a lease id: ${JSON.stringify(raw)}`);
  }
  return raw;
}

/** A base64 key or value field as UTF-8 text; absent means "". */
export function textField(object: JsonObject, name: string, what: string): string {
  const raw = object[name];
  if (raw === undefined) return "";
  if (typeof raw !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(raw) || raw.length % 4 !== 0) {
    throw malformed(what, `"${name}" not base64`);
  }
  try {
    return utf8.decode(Buffer.from(raw, "base64"));
  } catch {
    throw malformed(what, `"${name}" not UTF-8 text (Haven keeps only text in etcd)`);
  }
}

export function booleanField(object: JsonObject, name: string, what: string): boolean {
  const raw = object[name];
  if (raw === undefined) return false;
  if (typeof raw !== "boolean") throw malformed(what, `"${name}" not a boolean`);
  return raw;
}

export function parseKeyValue(value: unknown, what: string): KeyValue {
  const kv = asObject(value, what, "a key-value");
  return {
    key: textField(kv, "key", what),
    value: textField(kv, "value", what),
    createRevision: int64Field(kv, "create_revision", what),
    modRevision: int64Field(kv, "mod_revision", what),
    version: int64Field(kv, "version", what),
    lease: leaseField(kv, "lease", what),
  };
}

/** The store revision in a response's header. */
export function headerRevision(response: JsonObject, what: string): number {
  return int64Field(asObject(response.header ?? {}, what, "the header"), "revision", what);
}

export function parseWatchEvent(value: unknown, what: string): WatchEvent {
  const event = asObject(value, what, "a watch event");
  const kv = parseKeyValue(event.kv, what);
  switch (event.type) {
    case undefined:
    case "PUT":
      return { type: "PUT", ...kv };
    case "DELETE":
      return { type: "DELETE", key: kv.key, modRevision: kv.modRevision };
    default:
      throw malformed(what, `an unknown watch event type ${JSON.stringify(event.type)}`);
  }
}

/** gRPC status codes etcd's errors carry. */
export const GrpcCode = {
  INVALID_ARGUMENT: 3,
  NOT_FOUND: 5,
  PERMISSION_DENIED: 7,
  UNAVAILABLE: 14,
  UNAUTHENTICATED: 16,
} as const;

/**
 * etcd's error in either of the gateway's two shapes: {"error": "...", "message": "...", "code": N} for a
 * unary call, {"error": {"grpc_code": N, "message": "..."}} inside a streamed response. Undefined when
 * `body` carries no error.
 */
export function parseGatewayError(body: unknown): { message: string; grpcCode: number } | undefined {
  if (typeof body !== "object" || body === null || !("error" in body)) return undefined;
  const { error, message, code } = body as { error: unknown; message?: unknown; code?: unknown };
  if (typeof error === "object" && error !== null) {
    const inner = error as { grpc_code?: unknown; message?: unknown };
    return {
      message: typeof inner.message === "string" ? inner.message : JSON.stringify(error),
      grpcCode: typeof inner.grpc_code === "number" ? inner.grpc_code : -1,
    };
  }
  return {
    message: typeof message === "string" ? message : String(error),
    grpcCode: typeof code === "number" ? code : -1,
  };
}

/**
 * Splits a byte stream into newline-delimited JSON values, as the gateway streams watch and keepalive
 * responses. Works on bytes so a multi-byte character split across chunks stays whole; a line longer
 * than maxLineBytes is refused rather than buffered without bound.
 */
export class JsonLineSplitter {
  private pending: Buffer[] = [];
  private pendingBytes = 0;

  constructor(
    private readonly maxLineBytes: number,
    private readonly what: string,
  ) {}

  /** The JSON values completed by `chunk`, in order. */
  push(chunk: Buffer): unknown[] {
    const values: unknown[] = [];
    let start = 0;
    for (let newline = chunk.indexOf(0x0a); newline !== -1; newline = chunk.indexOf(0x0a, start)) {
      this.append(chunk.subarray(start, newline));
      const line = Buffer.concat(this.pending, this.pendingBytes);
      this.pending = [];
      this.pendingBytes = 0;
      start = newline + 1;
      if (line.toString("latin1").trim() === "") continue;
      try {
        values.push(JSON.parse(line.toString("utf8")));
      } catch {
        throw malformed(this.what, `a line that is not JSON: ${line.toString("utf8").slice(0, 200)}`);
      }
    }
    this.append(chunk.subarray(start));
    return values;
  }

  /** Bytes received after the last newline (a stream that ends here ended mid-message). */
  get bufferedBytes(): number {
    return this.pendingBytes;
  }

  private append(piece: Buffer): void {
    if (piece.length === 0) return;
    this.pendingBytes += piece.length;
    if (this.pendingBytes > this.maxLineBytes) {
      throw malformed(this.what, `a message longer than ${this.maxLineBytes} bytes`);
    }
    this.pending.push(piece);
  }
}
