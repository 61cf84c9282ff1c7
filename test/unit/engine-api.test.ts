// The engine's HTTP API against a fake engine: each route passes its request on and answers with the
// engine's result; every malformed request gets a 4xx naming what is wrong and never reaches the
// engine (DESIGN.md rule 6); errors carry the registry's code and HTTP status.

import { after, before, beforeEach, test } from "node:test";
import assert from "node:assert/strict";
import { request } from "node:http";
import { connect } from "node:net";
import { EngineApiServer, MAX_REQUEST_BODY_BYTES } from "../../src/api/engine-api.js";
import { HavenError } from "../../src/core/errors.js";
import { FakeEngineControl, healthyStatus, splitBrainStatus, verifyStatus } from "../helpers/fake-engine.js";

/** The engine API's bearer token; every request here carries it unless a test says otherwise. */
const TOKEN = "engine-api-test-token-0123456789";
const AUTHORIZATION = { authorization: `Bearer ${TOKEN}` };

let control: FakeEngineControl;
let server: EngineApiServer;
let base: string;
const logLines: string[] = [];

before(async () => {
  control = new FakeEngineControl();
  // The fake is replaced per test; the server always asks whichever is current.
  const proxy = {
    status: () => control.status(),
    startVerify: (options: { repair: boolean }) => control.startVerify(options),
    resolveSplitBrain: (survivor: string) => control.resolveSplitBrain(survivor),
  };
  server = new EngineApiServer(proxy, TOKEN, { log: (line) => logLines.push(line) });
  base = `http://${await server.listen("127.0.0.1", 0)}`;
});

after(() => server.stop());

beforeEach(() => {
  control = new FakeEngineControl();
  logLines.length = 0;
});

async function call(
  method: string,
  path: string,
  body?: string,
): Promise<{ status: number; json: unknown; headers: Headers }> {
  const response = await fetch(`${base}${path}`, {
    method,
    headers: { ...AUTHORIZATION, ...(body !== undefined && { "content-type": "application/json" }) },
    ...(body !== undefined && { body }),
  });
  const text = await response.text();
  return { status: response.status, json: JSON.parse(text), headers: response.headers };
}

function assertApiError(
  reply: { status: number; json: unknown; headers: Headers },
  status: number,
  code: string,
  message: RegExp,
): void {
  assert.equal(reply.status, status, JSON.stringify(reply.json));
  assert.equal(reply.headers.get("content-type"), "application/json");
  const error = (reply.json as { error: { code: string; message: string } }).error;
  assert.equal(error.code, code);
  assert.match(error.message, message);
}

/** A request the API refuses must leave the engine exactly as it was. */
function assertEngineUntouched(): void {
  assert.deepEqual(control.verifyRequests, []);
  assert.deepEqual(control.resolveRequests, []);
  assert.deepEqual(control.current, healthyStatus());
}

test("GET /v1/status answers 200 with the engine's status as JSON", async () => {
  const reply = await call("GET", "/v1/status");
  assert.equal(reply.status, 200);
  assert.equal(reply.headers.get("content-type"), "application/json");
  assert.deepEqual(reply.json, healthyStatus());
  assert.deepEqual(logLines, [], "reads are not logged");
});

test("a query string does not change the route", async () => {
  assert.equal((await call("GET", "/v1/status?verbose=1")).status, 200);
});

test("POST /v1/verify starts a verify with the repair flag and answers 202 with it", async () => {
  const reply = await call("POST", "/v1/verify", `{"repair": true}`);
  assert.equal(reply.status, 202);
  assert.equal(reply.headers.get("location"), "/v1/status");
  assert.deepEqual(control.verifyRequests, [{ repair: true }]);
  assert.deepEqual(reply.json, control.current.verify);
  assert.equal(logLines.length, 1);
  assert.match(logLines[0]!, /^api: POST \/v1\/verify from 127\.0\.0\.1:\d+: 202$/);
});

test("POST /v1/verify without a body, or without repair, does not repair", async () => {
  assert.equal((await call("POST", "/v1/verify")).status, 202);
  control.current = { ...control.current, verify: null };
  assert.equal((await call("POST", "/v1/verify", "{}")).status, 202);
  assert.deepEqual(control.verifyRequests, [{ repair: false }, { repair: false }]);
});

test("POST /v1/verify while one runs is 409 HAVEN_ERR_CONFLICT, with the engine's message", async () => {
  control.current = { ...control.current, verify: verifyStatus() };
  const reply = await call("POST", "/v1/verify", `{"repair": false}`);
  assertApiError(reply, 409, "HAVEN_ERR_CONFLICT", /a verify is running already/);
  assert.deepEqual(control.verifyRequests, []);
  assert.match(logLines[0]!, /: 409 HAVEN_ERR_CONFLICT: a verify is running/);
});

test("POST /v1/resolve-split-brain passes the survivor on and answers 200 with the new status", async () => {
  control = new FakeEngineControl(splitBrainStatus());
  const reply = await call("POST", "/v1/resolve-split-brain", `{"survivor": "/var/lib/haven/web1-disk0"}`);
  assert.equal(reply.status, 200);
  assert.deepEqual(control.resolveRequests, ["/var/lib/haven/web1-disk0"]);
  assert.deepEqual(reply.json, control.current);
  assert.equal((reply.json as { state: string }).state, "resyncing");
  assert.match(logLines[0]!, /POST \/v1\/resolve-split-brain .*: 200$/);
});

test("the engine refusing a survivor is a 400 with its code and reason", async () => {
  const reply = await call("POST", "/v1/resolve-split-brain", `{"survivor": "node9:1"}`);
  assertApiError(reply, 400, "HAVEN_ERR_INVALID_REQUEST", /no copy at "node9:1"/);
  assertEngineUntouched();
});

test("unknown routes are 404, known routes with the wrong method 405 with Allow", async () => {
  for (const path of ["/", "/v1", "/v1/status/", "/v2/status", "/v1/statusx", "//v1/status"]) {
    assertApiError(await call("GET", path), 404, "HAVEN_ERR_NOT_FOUND", /no such route/);
  }
  const wrong = [
    ["POST", "/v1/status"],
    ["DELETE", "/v1/status"],
    ["GET", "/v1/verify"],
    ["PUT", "/v1/resolve-split-brain"],
  ] as const;
  for (const [method, path] of wrong) {
    const reply = await call(method, path, method === "GET" ? undefined : `{}`);
    assertApiError(reply, 405, "HAVEN_ERR_INVALID_REQUEST", new RegExp(`takes (GET|POST), not ${method}`));
    assert.equal(reply.headers.get("allow"), path === "/v1/status" ? "GET" : "POST");
  }
  assertEngineUntouched();
});

test("bodies that are not JSON, or not an object, are 400 and never reach the engine", async () => {
  for (const path of ["/v1/verify", "/v1/resolve-split-brain"]) {
    assertApiError(await call("POST", path, "{repair: true"), 400, "HAVEN_ERR_INVALID_REQUEST", /not JSON/);
    assertApiError(await call("POST", path, "\xff\xfe"), 400, "HAVEN_ERR_INVALID_REQUEST", /not JSON/);
    for (const notObject of ["[]", "null", "true", "42", `"repair"`]) {
      assertApiError(await call("POST", path, notObject), 400, "HAVEN_ERR_INVALID_REQUEST", /must be a JSON object/);
    }
  }
  assertEngineUntouched();
});

test("fields of the wrong type, missing or unknown are 400 naming the field", async () => {
  const cases: [string, string, RegExp][] = [
    ["/v1/verify", `{"repair": "yes"}`, /field "repair" must be a boolean, got string/],
    ["/v1/verify", `{"repair": null}`, /field "repair" must be a boolean, got null/],
    ["/v1/verify", `{"repair": 1}`, /field "repair" must be a boolean, got number/],
    ["/v1/verify", `{"repair": true, "force": true}`, /unknown field "force" \(known: repair\)/],
    ["/v1/verify", `{"__proto__": {"repair": true}}`, /unknown field "__proto__"/],
    ["/v1/resolve-split-brain", `{}`, /field "survivor" is required/],
    ["/v1/resolve-split-brain", `{"survivor": 7}`, /field "survivor" must be a string, got number/],
    ["/v1/resolve-split-brain", `{"survivor": ["a"]}`, /field "survivor" must be a string, got array/],
    ["/v1/resolve-split-brain", `{"survivor": ""}`, /field "survivor" must be a copy's location/],
    ["/v1/resolve-split-brain", JSON.stringify({ survivor: "x".repeat(5000) }), /field "survivor" must be/],
    ["/v1/resolve-split-brain", `{"survivor": "node2:7400", "name": "x"}`, /unknown field "name"/],
  ];
  for (const [path, body, message] of cases) {
    assertApiError(await call("POST", path, body), 400, "HAVEN_ERR_INVALID_REQUEST", message);
  }
  assertEngineUntouched();
  assert.equal(logLines.length, cases.length, "one log line per refused request");
});

test("a body over 64 KiB is 413, whether its length is declared or streamed", async () => {
  const big = JSON.stringify({ survivor: "x".repeat(MAX_REQUEST_BODY_BYTES) });
  assertApiError(await call("POST", "/v1/resolve-split-brain", big), 413, "HAVEN_ERR_TOO_LARGE", /exceeds 65536 bytes/);

  const streamed = await new Promise<{ status: number; body: string }>((resolve, reject) => {
    const url = new URL(`${base}/v1/verify`);
    const options = { host: url.hostname, port: url.port, path: url.pathname, method: "POST", headers: AUTHORIZATION };
    const req = request(options, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => (body += chunk));
      res.on("end", () => resolve({ status: res.statusCode!, body }));
    });
    req.on("error", reject);
    // Chunked, no content-length: the limit must hold while reading.
    const chunk = Buffer.alloc(16 * 1024, 0x20);
    for (let i = 0; i < 6; i++) req.write(chunk);
    req.end();
  });
  assert.equal(streamed.status, 413);
  assert.equal((JSON.parse(streamed.body) as { error: { code: string } }).error.code, "HAVEN_ERR_TOO_LARGE");
  assertEngineUntouched();
  assert.equal((await call("GET", "/v1/status")).status, 200, "the server carries on");
});

test("an engine failure that is not a HavenError is a 500, logged, and the server carries on", async () => {
  control.statusError = new Error("status table is gone");
  const reply = await call("GET", "/v1/status");
  assertApiError(reply, 500, "HAVEN_ERR_IO", /status table is gone/);
  assert.match(logLines[0]!, /GET \/v1\/status .*: 500 HAVEN_ERR_IO/);
  control.statusError = undefined;
  assert.equal((await call("GET", "/v1/status")).status, 200);
});

test("garbage that is not HTTP does not crash the server", async () => {
  for (const garbage of [
    "HELLO\r\n\r\n",
    "GET /v1/status HTTP/9.9\r\n\r\n",
    "\x00\x01\x02\r\n\r\n",
    "GET http://[ HTTP/1.1\r\n\r\n",
  ]) {
    const address = new URL(base);
    await new Promise<void>((resolve) => {
      const socket = connect(Number(address.port), address.hostname, () => socket.end(garbage));
      socket.on("error", () => resolve());
      socket.on("close", () => resolve());
      socket.resume();
    });
  }
  assert.equal((await call("GET", "/v1/status")).status, 200);
});

test("a path that is not valid URL encoding, and input that is not HTTP, get the same coded error body", async () => {
  assertApiError(
    await call("GET", "/v1/%zz"),
    400,
    "HAVEN_ERR_INVALID_REQUEST",
    /the path \/v1\/%zz is not valid URL encoding/,
  );
  const address = new URL(base);
  const answer = await new Promise<string>((resolve) => {
    let text = "";
    const socket = connect(Number(address.port), address.hostname, () => socket.write("HELLO\r\n\r\n"));
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => (text += chunk));
    socket.on("error", () => resolve(text));
    socket.on("close", () => resolve(text));
  });
  assert.match(answer, /^HTTP\/1\.1 400 /);
  const body = JSON.parse(answer.slice(answer.indexOf("\r\n\r\n") + 4)) as { error: { code: string } };
  assert.equal(body.error.code, "HAVEN_ERR_INVALID_REQUEST");
  assertEngineUntouched();
});

test("listening on an address in use is HAVEN_ERR_CONFIG saying so", async () => {
  const port = Number(new URL(base).port);
  const second = new EngineApiServer(control, TOKEN, { log: () => {} });
  await assert.rejects(
    second.listen("127.0.0.1", port),
    (error: unknown) =>
      error instanceof HavenError &&
      error.code === "HAVEN_ERR_CONFIG" &&
      error.message.includes(`127.0.0.1:${port}`) &&
      /address is in use/.test(error.message),
  );
  await second.stop();
});

test("stop() closes the listener, keep-alive connections included", async () => {
  const own = new EngineApiServer(control, TOKEN, { log: () => {} });
  const address = await own.listen("127.0.0.1", 0);
  assert.equal((await fetch(`http://${address}/v1/status`, { headers: AUTHORIZATION })).status, 200);
  await own.stop();
  await assert.rejects(fetch(`http://${address}/v1/status`, { headers: AUTHORIZATION }));
  await own.stop(); // twice is harmless
});
