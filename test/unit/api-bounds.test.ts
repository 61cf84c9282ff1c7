// The HTTP APIs' bounds and details against a real server and real sockets (issue 16, items 3 and 7):
// a flood of idle sockets from one address leaves another client served at once, idle sockets are
// reaped, a slow body is cut with 408, the bearer scheme is case-insensitive, and fastify's own
// refusals, like every other error, use Haven's error body with what the request sent cut short and
// escaped.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { request } from "node:http";
import { connect, type Socket } from "node:net";
import { AgentApiServer } from "../../src/api/agent-api.js";
import { EngineApiServer } from "../../src/api/engine-api.js";
import { FakeEngineControl, healthyStatus } from "../helpers/fake-engine.js";
import { noAgentMetrics } from "../helpers/agent-metrics.js";

const TOKEN = "api-bounds-test-token-0123456789";
const AUTHORIZATION = `Bearer ${TOKEN}`;
/** A second loopback address: on Linux the whole of 127.0.0.0/8 is the loopback interface. */
const FLOOD_ADDRESS = "127.0.0.2";
/** Each test floods from its own address, so sockets a test closed do not count in the next one. */
const LIMIT_ADDRESS = "127.0.0.3";
const IDLE_ADDRESS = "127.0.0.4";
const LIMITS = { maxConnectionsPerAddress: 16, firstRequestTimeoutMs: 400, bodyTimeoutMs: 400 };

const control = new FakeEngineControl(healthyStatus());
const engineApi = new EngineApiServer(control, TOKEN, { log: () => {}, limits: LIMITS });
const agentApi = new AgentApiServer(
  {
    health: () => ({
      name: "h1",
      leaseHeld: true,
      lastKeepaliveAgoMs: 1,
      eventLoopLagMs: 1,
      volumes: [],
      disks: [],
      links: [],
    }),
    engines: () => new Map([["vol", control]]),
    vms: () => [],
    disks: () => [],
    metrics: noAgentMetrics,
  },
  TOKEN,
  { log: () => {}, limits: LIMITS },
);
let enginePort = 0;
let agentPort = 0;

before(async () => {
  enginePort = Number((await engineApi.listen("127.0.0.1", 0)).split(":")[1]);
  agentPort = Number((await agentApi.listen("127.0.0.1", 0)).split(":")[1]);
});
after(async () => {
  await engineApi.stop();
  await agentApi.stop();
});

interface Answer {
  readonly status: number;
  readonly contentType: string | undefined;
  readonly text: string;
}

/** One request over node:http (so the path goes out exactly as written). */
function call(
  port: number,
  method: string,
  path: string,
  options: { headers?: Record<string, string>; body?: string } = {},
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: "127.0.0.1", port, method, path, agent: false, headers: { ...options.headers } },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => (text += chunk));
        res.on("end", () => resolve({ status: res.statusCode!, contentType: res.headers["content-type"], text }));
      },
    );
    req.on("error", reject);
    req.end(options.body);
  });
}

/** The Haven error body of an answer, checked to be one. */
function havenError(answer: Answer): { code: string; message: string } {
  assert.equal(answer.contentType, "application/json", answer.text);
  const body = JSON.parse(answer.text) as { error: { code: string; message: string } };
  assert.deepEqual(Object.keys(body), ["error"], answer.text);
  assert.deepEqual(Object.keys(body.error).sort(), ["code", "message"], answer.text);
  assert.match(body.error.code, /^HAVEN_ERR_[A-Z_]+$/);
  return body.error;
}

/** A socket from `localAddress` that connects and then sends nothing. */
function idleSocket(port: number, localAddress: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port, localAddress }, () => resolve(socket));
    socket.on("error", reject);
  });
}

/** Resolves with what the server sent on `socket` once it closed it. */
function closedBy(socket: Socket): Promise<string> {
  return new Promise((resolve) => {
    let text = "";
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => (text += chunk));
    socket.on("error", () => {});
    socket.on("close", () => resolve(text));
  });
}

test("64 idle sockets from one address leave a client on another address served at once", async () => {
  const flood: Socket[] = [];
  try {
    for (let i = 0; i < 64; i++) flood.push(await idleSocket(enginePort, FLOOD_ADDRESS));
    const started = Date.now();
    const answer = await call(enginePort, "GET", "/v1/status", { headers: { authorization: AUTHORIZATION } });
    assert.equal(answer.status, 200, answer.text);
    assert.ok(Date.now() - started < 300, `served in ${Date.now() - started} ms while the flood is open`);
  } finally {
    flood.forEach((socket) => socket.destroy());
  }
});

test("a connection over the per-address limit is answered 503 in Haven's error body and closed", async () => {
  const open: Socket[] = [];
  try {
    for (let i = 0; i < LIMITS.maxConnectionsPerAddress; i++) open.push(await idleSocket(enginePort, LIMIT_ADDRESS));
    const extra = await idleSocket(enginePort, LIMIT_ADDRESS);
    const answer = await closedBy(extra);
    assert.match(answer, /^HTTP\/1\.1 503 /);
    const body = JSON.parse(answer.slice(answer.indexOf("\r\n\r\n") + 4)) as {
      error: { code: string; message: string };
    };
    assert.equal(body.error.code, "HAVEN_ERR_UNAVAILABLE");
    assert.match(body.error.message, /too many connections from 127\.0\.0\.3 \(at most 16\)/);
  } finally {
    open.forEach((socket) => socket.destroy());
  }
});

test("a socket that sends no request is closed after the first-request deadline", async () => {
  const socket = await idleSocket(enginePort, IDLE_ADDRESS);
  const started = Date.now();
  await closedBy(socket);
  const tookMs = Date.now() - started;
  assert.ok(
    tookMs >= LIMITS.firstRequestTimeoutMs - 50 && tookMs < LIMITS.firstRequestTimeoutMs + 1500,
    `${tookMs} ms`,
  );
});

test("an authenticated slow request body is cut with 408 in Haven's error body", async () => {
  for (const port of [enginePort, agentPort]) {
    const path = port === enginePort ? "/v1/verify" : "/v1/volumes/vol/verify";
    const started = Date.now();
    const answer = await new Promise<Answer>((resolve, reject) => {
      const req = request(
        {
          host: "127.0.0.1",
          port,
          method: "POST",
          path,
          agent: false,
          headers: { authorization: AUTHORIZATION, "content-type": "application/json", "content-length": "100" },
        },
        (res) => {
          let text = "";
          res.setEncoding("utf8");
          res.on("data", (chunk: string) => (text += chunk));
          res.on("end", () => resolve({ status: res.statusCode!, contentType: res.headers["content-type"], text }));
        },
      );
      req.on("error", reject);
      req.write(`{"repair":`); // and never the rest
    });
    assert.equal(answer.status, 408, answer.text);
    const error = havenError(answer);
    assert.equal(error.code, "HAVEN_ERR_INVALID_REQUEST");
    assert.match(error.message, /the request body did not arrive within 400 ms/);
    assert.ok(Date.now() - started < 2000);
  }
  assert.deepEqual(control.verifyRequests, [], "the cut request never reached the engine");
});

test("the Bearer scheme is case-insensitive; another scheme or token is 401", async () => {
  for (const scheme of ["Bearer", "bearer", "BEARER", "bEaReR"]) {
    const answer = await call(enginePort, "GET", "/v1/status", { headers: { authorization: `${scheme} ${TOKEN}` } });
    assert.equal(answer.status, 200, `${scheme}: ${answer.text}`);
  }
  for (const authorization of [`Basic ${TOKEN}`, `Bearer ${TOKEN}x`, "Bearer", `${TOKEN}`]) {
    const answer = await call(enginePort, "GET", "/v1/status", { headers: { authorization } });
    assert.equal(answer.status, 401, authorization);
    assert.equal(havenError(answer).code, "HAVEN_ERR_UNAUTHORIZED");
  }
  const none = await call(enginePort, "GET", "/v1/status");
  assert.equal(none.status, 401);
});

test("the engine API refuses every request without its token, a split-brain resolution included", async () => {
  const answer = await call(enginePort, "POST", "/v1/resolve-split-brain", {
    headers: { "content-type": "application/json" },
    body: `{"survivor": "node2:7400"}`,
  });
  assert.equal(answer.status, 401);
  assert.equal(havenError(answer).code, "HAVEN_ERR_UNAUTHORIZED");
  assert.deepEqual(control.resolveRequests, []);
  const framework = await call(enginePort, "GET", "/v1/%zz");
  assert.equal(framework.status, 401, "fastify's own refusals come after authentication too");
});

test("fastify's own refusals use Haven's error body, echoing the path cut short and escaped", async () => {
  const headers = { authorization: AUTHORIZATION };
  const tooLong = await call(agentPort, "GET", `/v1/volumes/${"a".repeat(150)}`, { headers });
  assert.equal(tooLong.status, 414);
  const tooLongError = havenError(tooLong);
  assert.equal(tooLongError.code, "HAVEN_ERR_INVALID_REQUEST");
  assert.match(tooLongError.message, /a segment of the path "\/v1\/volumes\/a+\.\.\." is over 100 characters/);
  assert.ok(!tooLongError.message.includes("a".repeat(100)), "the path is cut short");

  const badEncoding = await call(agentPort, "GET", "/v1/volumes/%zz%3C<b>", { headers });
  assert.equal(badEncoding.status, 400);
  const badEncodingError = havenError(badEncoding);
  assert.match(badEncodingError.message, /is not valid URL encoding/);
  assert.ok(!badEncodingError.message.includes("<"), badEncodingError.message);
  assert.ok(!badEncoding.text.includes("<"), "no raw markup in the body");

  for (const [extra, message] of [
    [{ "content-encoding": "gzip" }, /Content-Encoding "gzip" is not supported/],
    [{ "content-type": "application/json; charset=utf-16" }, /charset "utf-16" is not supported/],
    [{ "content-type": ";;;" }, /Content-Type header is malformed/],
  ] as const) {
    const answer = await call(agentPort, "POST", "/v1/volumes/vol/verify", {
      headers: { ...headers, "content-type": "application/json", ...extra },
      body: `{"repair": false}`,
    });
    assert.equal(answer.status, 415, answer.text);
    assert.match(havenError(answer).message, message);
  }
  assert.deepEqual(control.verifyRequests, []);
});

test("a bad name in a path is echoed cut short, JSON-safe, control characters as \\uXXXX, no raw <", async () => {
  const name = `<script>${"x".repeat(80)}\u0001\u001b[31m`;
  const answer = await call(agentPort, "GET", `/v1/vms/${encodeURIComponent(name)}`, {
    headers: { authorization: AUTHORIZATION },
  });
  assert.equal(answer.status, 404);
  const error = havenError(answer);
  assert.equal(error.code, "HAVEN_ERR_NOT_FOUND");
  assert.match(error.message, /^"\\u003cscript\\u003ex+\.\.\." is not a VM name$/);
  assert.ok(error.message.length < 120, error.message);
  assert.ok(!answer.text.includes("<"), answer.text);

  const control = await call(agentPort, "GET", `/v1/volumes/${encodeURIComponent("a\u0001b\nc")}`, {
    headers: { authorization: AUTHORIZATION },
  });
  assert.equal(control.status, 404);
  assert.equal(havenError(control).message, `"a\\u0001b\\u000ac" is not a volume name`);
  // A good name that is simply not here is named as it is.
  const missing = await call(agentPort, "GET", "/v1/volumes/other", { headers: { authorization: AUTHORIZATION } });
  assert.match(havenError(missing).message, /^volume other is not served on this host/);
});
