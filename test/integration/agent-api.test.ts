// The agent's HTTP API over real HTTP: every request needs the bearer token (none, a wrong one and a
// malformed header are 401 and reveal nothing), bodies are validated (400 with the field named), an
// unknown volume or endpoint is 404, and every error is JSON with the registry code.

import type { DiskRecord } from "../../src/cluster/disk-schema.js";
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { AgentApiServer } from "../../src/api/agent-api.js";
import type { HostHealth } from "../../src/agent/view.js";
import { FakeEngineControl, healthyStatus } from "../helpers/fake-engine.js";
import { tokenDigest } from "../../src/cluster/operators.js";
import { noAgentMetrics } from "../helpers/agent-metrics.js";

const TOKEN = "a-token-of-more-than-16-characters";
const VIEWER_TOKEN = "haven_viewer-token-of-alice";
const OPERATOR_TOKEN = "haven_operator-token-of-bob";
const engine = new FakeEngineControl(healthyStatus());
const health: HostHealth = {
  name: "h1",
  leaseHeld: true,
  lastKeepaliveAgoMs: 120,
  eventLoopLagMs: 3,
  volumes: ["vol"],
  disks: [{ name: "d0", ok: true, detail: "ok", probeMs: 1.25 }],
  links: [{ peer: "h2", up: false, rttMs: null, detail: "4 heartbeats missed in a row (connection refused)" }],
};
const vm = {
  name: "web",
  volume: "vol",
  pid: 4242,
  runState: "running",
  checks: { heartbeat: { ok: true, value: "beating", at: "2026-12-05T00:00:00.000Z" } },
};
const disk: DiskRecord = {
  host: "h1",
  disk: "disk0",
  path: "/srv/haven/disk0",
  state: "online",
  reason: "ours, writable, probe passing",
  spare: false,
  identity: { kind: "serial", value: "S3Z1NB0K123456", device: "/dev/sdb" },
  sizeBytes: 1 << 30,
  freeBytes: 1 << 29,
  usedBytes: 1 << 29,
  fsId: "dev-2049",
  copies: [{ volume: "vol", allocatedBytes: 1 << 20 }],
  updatedAt: "2026-12-05T00:00:00.000Z",
};
const server = new AgentApiServer(
  {
    health: () => health,
    engines: () => new Map([["vol", engine]]),
    vms: () => [vm],
    disks: () => [disk],
    metrics: noAgentMetrics,
  },
  TOKEN,
  {
    callers: {
      operatorByDigest: (digest) =>
        digest === tokenDigest(VIEWER_TOKEN)
          ? { name: "alice", role: "viewer" }
          : digest === tokenDigest(OPERATOR_TOKEN)
            ? { name: "bob", role: "operator" }
            : undefined,
    },
  },
);
let base = "";

before(async () => {
  base = `http://${await server.listen("127.0.0.1", 0)}`;
});
after(() => server.stop());

async function call(
  method: string,
  path: string,
  options: { token?: string | null; body?: unknown; authorization?: string } = {},
): Promise<{ status: number; json: Record<string, unknown> }> {
  const headers: Record<string, string> = {};
  const token = options.token === undefined ? TOKEN : options.token;
  if (options.authorization !== undefined) headers.authorization = options.authorization;
  else if (token !== null) headers.authorization = `Bearer ${token}`;
  if (options.body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(`${base}${path}`, {
    method,
    headers,
    ...(options.body !== undefined && { body: JSON.stringify(options.body) }),
  });
  return { status: response.status, json: (await response.json()) as Record<string, unknown> };
}

const errorCode = (json: Record<string, unknown>) => (json.error as { code: string }).code;

test("without the right bearer token every endpoint is 401 and says nothing else", async () => {
  for (const options of [{ token: null }, { token: "wrong-token-wrong-token" }, { authorization: `Basic ${TOKEN}` }]) {
    for (const [method, path] of [
      ["GET", "/v1/host"],
      ["GET", "/v1/volumes/vol"],
      ["POST", "/v1/volumes/vol/verify"],
      ["GET", "/v1/nothing"],
    ] as const) {
      const { status, json } = await call(method, path, options);
      assert.equal(status, 401, `${method} ${path}`);
      assert.equal(errorCode(json), "HAVEN_ERR_UNAUTHORIZED");
    }
  }
  assert.equal(engine.verifyRequests.length, 0, "no verify started without the token");
});

test("with it: host health, the volumes served here, one volume's status", async () => {
  assert.deepEqual((await call("GET", "/v1/host")).json, health);
  const list = await call("GET", "/v1/volumes");
  assert.equal(list.status, 200);
  assert.equal((list.json as unknown as { name: string }[])[0]!.name, healthyStatus().name);
  const one = await call("GET", "/v1/volumes/vol");
  assert.equal(one.status, 200);
  assert.equal(one.json.state, "healthy");
  assert.deepEqual((await call("GET", "/v1/vms")).json, [vm]);
  assert.deepEqual((await call("GET", "/v1/disks")).json, [disk]);
  assert.deepEqual((await call("GET", "/v1/vms/web")).json, vm);
  const elsewhere = await call("GET", "/v1/vms/db");
  assert.equal(elsewhere.status, 404);
  assert.match((elsewhere.json.error as { message: string }).message, /VM db does not run on this host/);
});

test("unknown volumes and endpoints are 404 with the registry code", async () => {
  const missing = await call("GET", "/v1/volumes/elsewhere");
  assert.equal(missing.status, 404);
  assert.equal(errorCode(missing.json), "HAVEN_ERR_NOT_FOUND");
  assert.match((missing.json.error as { message: string }).message, /not served on this host/);
  assert.equal((await call("GET", "/v1/whatever")).status, 404);
});

test("a verify body is validated; a good one starts the verify, a second one while it runs is a conflict", async () => {
  for (const body of [{}, { repair: "yes" }, { repair: true, extra: 1 }]) {
    const { status, json } = await call("POST", "/v1/volumes/vol/verify", { body });
    assert.equal(status, 400, JSON.stringify(body));
    assert.equal(errorCode(json), "HAVEN_ERR_INVALID_REQUEST");
  }
  assert.equal(engine.verifyRequests.length, 0);
  const started = await call("POST", "/v1/volumes/vol/verify", { body: { repair: true } });
  assert.equal(started.status, 200);
  assert.deepEqual(engine.verifyRequests, [{ repair: true }]);
  engine.current = { ...engine.current, verify: { ...engine.current.verify!, state: "running" } };
  const again = await call("POST", "/v1/volumes/vol/verify", { body: { repair: false } });
  assert.equal(again.status, 409);
  assert.equal(errorCode(again.json), "HAVEN_ERR_CONFLICT");
});

test("errors take the same shape as the engine API's: a known route's wrong method is 405 with Allow", async () => {
  const response = await fetch(`${base}/v1/host`, { method: "DELETE", headers: { authorization: `Bearer ${TOKEN}` } });
  assert.equal(response.status, 405);
  assert.equal(response.headers.get("allow"), "GET");
  assert.equal(response.headers.get("content-type"), "application/json");
  assert.equal(errorCode((await response.json()) as Record<string, unknown>), "HAVEN_ERR_INVALID_REQUEST");
});

test("operators' tokens carry their role: a viewer reads but cannot verify (403 naming the role), an operator can", async () => {
  const read = await call("GET", "/v1/volumes/vol", { token: VIEWER_TOKEN });
  assert.equal(read.status, 200);
  const before = engine.verifyRequests.length;
  const refused = await call("POST", "/v1/volumes/vol/verify", { token: VIEWER_TOKEN, body: { repair: false } });
  assert.equal(refused.status, 403);
  assert.equal(errorCode(refused.json), "HAVEN_ERR_FORBIDDEN");
  assert.match((refused.json.error as { message: string }).message, /needs the operator role; alice is a viewer/);
  assert.equal(engine.verifyRequests.length, before, "the viewer's verify never reached the engine");
  engine.current = { ...engine.current, verify: null };
  // The scheme's name is case-insensitive.
  const allowed = await call("POST", "/v1/volumes/vol/verify", {
    authorization: `bEaReR ${OPERATOR_TOKEN}`,
    body: { repair: false },
  });
  assert.equal(allowed.status, 200, JSON.stringify(allowed.json));
  assert.equal(engine.verifyRequests.length, before + 1);
});
