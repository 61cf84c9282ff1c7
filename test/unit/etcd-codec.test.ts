// The etcd gateway codec: a prefix range selects exactly the keys under the prefix, streamed JSON lines
// come out the same however the bytes are chunked, and malformed answers are refused with HAVEN_ERR_IO.

import assert from "node:assert/strict";
import fc from "fast-check";
import {
  int64Field,
  JsonLineSplitter,
  leaseField,
  parseGatewayError,
  parseWatchEvent,
  prefixRange,
  textField,
} from "../../src/cluster/etcd-codec.js";
import { HavenError } from "../../src/core/errors.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** Every test here takes well under a second; one still running after this bound is hung, not slow. */
const test = boundedTest(10_000);

const isIoError = (error: unknown): boolean => error instanceof HavenError && error.code === "HAVEN_ERR_IO";

test("a prefix range holds a key exactly when the key starts with the prefix, compared as bytes like etcd", () => {
  const text = fc.string({ unit: fc.constantFrom("a", "b", "/", "\u00ff", "\u{10ffff}", "z"), maxLength: 6 });
  fc.assert(
    fc.property(text, text, (prefix, key) => {
      const range = prefixRange(prefix);
      const bytes = Buffer.from(key, "utf8");
      const start = Buffer.from(range.key, "base64");
      const end = Buffer.from(range.range_end, "base64");
      const unbounded = end.equals(Buffer.from([0]));
      const inside = Buffer.compare(bytes, start) >= 0 && (unbounded || Buffer.compare(bytes, end) < 0);
      // The empty prefix starts at "\0": every key but the empty one, which etcd does not allow anyway.
      assert.equal(inside, key.startsWith(prefix) && !(prefix === "" && key === ""));
    }),
  );
});

test("JSON lines come out whole and in order however the stream is chunked, even inside a character", () => {
  const messages = [{ result: { created: true } }, { result: { events: [{ kv: { key: "w6k=" } }] } }, { note: "é😀" }];
  const bytes = Buffer.from(messages.map((message) => JSON.stringify(message) + "\n").join(""), "utf8");
  fc.assert(
    fc.property(fc.uniqueArray(fc.integer({ min: 1, max: bytes.length - 1 }), { maxLength: 8 }), (cuts) => {
      const splitter = new JsonLineSplitter(1024, "a watch");
      const points = [0, ...[...cuts].sort((a, b) => a - b), bytes.length];
      const out = points.slice(1).flatMap((end, index) => splitter.push(bytes.subarray(points[index], end)));
      assert.deepEqual(out, messages);
      assert.equal(splitter.bufferedBytes, 0);
    }),
  );
});

test("a streamed message longer than the bound, or not JSON, is refused", () => {
  const splitter = new JsonLineSplitter(16, "a watch");
  assert.throws(() => splitter.push(Buffer.from('{"result":"far too long for sixteen bytes"')), isIoError);
  assert.throws(() => new JsonLineSplitter(1024, "a watch").push(Buffer.from("{nope\n")), isIoError);
});

test("int64 fields arrive as strings and absent means zero; lease ids stay strings", () => {
  assert.equal(int64Field({ revision: "42" }, "revision", "x"), 42);
  assert.equal(int64Field({}, "revision", "x"), 0);
  assert.equal(int64Field({ TTL: "-1" }, "TTL", "x"), -1);
  assert.throws(() => int64Field({ revision: "9007199254740993" }, "revision", "x"), isIoError);
  assert.throws(() => int64Field({ revision: "4x" }, "revision", "x"), isIoError);
  assert.equal(leaseField({ lease: "7587883236428420106" }, "lease", "x"), "7587883236428420106");
  assert.equal(leaseField({ lease: "0" }, "lease", "x"), undefined);
  assert.equal(leaseField({}, "lease", "x"), undefined);
});

test("keys and values must be base64 of UTF-8 text", () => {
  assert.equal(textField({ value: Buffer.from("é").toString("base64") }, "value", "x"), "é");
  assert.equal(textField({}, "value", "x"), "");
  assert.throws(() => textField({ value: "not base64!" }, "value", "x"), isIoError);
  assert.throws(() => textField({ value: Buffer.from([0xff, 0xfe]).toString("base64") }, "value", "x"), isIoError);
});

test("a watch event without a type is a PUT; a DELETE carries only key and revision", () => {
  const key = Buffer.from("k").toString("base64");
  assert.deepEqual(parseWatchEvent({ kv: { key, mod_revision: "3", create_revision: "3", version: "1" } }, "x"), {
    type: "PUT",
    key: "k",
    value: "",
    createRevision: 3,
    modRevision: 3,
    version: 1,
    lease: undefined,
  });
  assert.deepEqual(parseWatchEvent({ type: "DELETE", kv: { key, mod_revision: "4" } }, "x"), {
    type: "DELETE",
    key: "k",
    modRevision: 4,
  });
  assert.throws(() => parseWatchEvent({ type: "RENAME", kv: { key } }, "x"), isIoError);
});

test("gateway errors are read in both the unary and the streamed shape", () => {
  assert.deepEqual(parseGatewayError({ error: "etcdserver: x", message: "etcdserver: x", code: 5 }), {
    message: "etcdserver: x",
    grpcCode: 5,
  });
  assert.deepEqual(parseGatewayError({ error: { grpc_code: 14, http_code: 503, message: "no leader" } }), {
    message: "no leader",
    grpcCode: 14,
  });
  assert.equal(parseGatewayError({ result: {} }), undefined);
});
