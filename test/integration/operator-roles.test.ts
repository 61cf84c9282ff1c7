// Operators on a running local cluster, as an administrator and their colleagues use it: every link is
// mutual TLS and etcd has its roles on. A viewer's CLI reads but cannot switch over (etcd refuses, exit
// 2, HAVEN_ERR_FORBIDDEN) and nothing moves; an operator's can; an operator cannot delete a volume; the
// events name who did what; a revoked operator's token stops working at once. The agent API (HTTPS)
// takes an operator's certificate or token with the same roles, and refuses a certificate the cluster
// CA did not sign.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { request } from "node:https";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import {
  alive,
  clusterDown,
  localHostPorts,
  readClusterState,
  type LocalClusterState,
} from "../../src/cluster/local-cluster.js";
import { createCa, issueCertificate } from "../../src/security/pki.js";
import { freeBasePort, until } from "../helpers/cluster.js";
import { haveEtcd } from "../helpers/etcd.js";
import { run, tempDir } from "../helpers/server-process.js";

/** An HTTPS call to an agent API with a client identity directory and/or a bearer token. */
function apiCall(
  port: number,
  method: string,
  path: string,
  options: { identity?: string; token?: string; body?: unknown },
  caFile: string,
): Promise<{ status: number; body: string }> {
  const files = options.identity;
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: "127.0.0.1",
        port,
        method,
        path,
        agent: false,
        ca: readFileSync(caFile),
        ...(files !== undefined && {
          cert: readFileSync(join(files, "cert.pem")),
          key: readFileSync(join(files, "key.pem")),
        }),
        // The agent's certificate names host h1, valid for 127.0.0.1.
        headers: {
          "content-type": "application/json",
          ...(options.token !== undefined && { authorization: `Bearer ${options.token}` }),
        },
      },
      (response) => {
        let body = "";
        response.setEncoding("utf8");
        response.on("data", (chunk: string) => (body += chunk));
        response.on("end", () => resolve({ status: response.statusCode ?? 0, body }));
      },
    );
    req.once("error", reject);
    req.setTimeout(10_000, () => req.destroy(new Error("timed out")));
    req.end(options.body === undefined ? undefined : JSON.stringify(options.body));
  });
}

describe("operators and their roles on a local cluster", { skip: !haveEtcd() && "needs etcd" }, () => {
  const dir = tempDir("haven-operator-roles-");
  const clusterDir = join(dir.path, "cluster");
  const pki = join(clusterDir, "pki");
  const env: NodeJS.ProcessEnv = { ...process.env, HAVEN_CONTEXT: join(dir.path, "context.json"), HAVEN_TLS_DIR: "" };
  const haven = (...args: string[]) => run(process.execPath, ["bin/haven.js", ...args], { env, timeoutMs: 60_000 });
  const as = (who: string, ...args: string[]) =>
    run(process.execPath, ["bin/haven.js", ...args], {
      env: { ...env, HAVEN_TLS_DIR: join(pki, "operators", who) },
      timeoutMs: 60_000,
    });
  let basePort = 0;
  let state: LocalClusterState | undefined;

  before(async () => {
    basePort = await freeBasePort();
    const up = await haven("cluster", "up", "--dir", clusterDir, "--hosts", "2", "--base-port", String(basePort));
    assert.equal(up.code, 0, up.stderr);
    state = readClusterState(clusterDir);
    for (const [name, role] of [
      ["alice", "viewer"],
      ["bob", "operator"],
    ]) {
      const issued = await haven("cert", "issue", "operator", name!, "--role", role!, "--dir", clusterDir);
      assert.equal(issued.code, 0, issued.stderr);
      const added = await haven(
        "operator",
        "add",
        name!,
        "--role",
        role!,
        "--token-file",
        join(pki, "operators", name!, "token"),
      );
      assert.equal(added.code, 0, added.stderr);
    }
    const created = await haven("volume", "create", "v1", "--size", "16M");
    assert.equal(created.code, 0, created.stderr);
  });

  after(async () => {
    if (readClusterState(clusterDir)) await clusterDown(clusterDir, 10_000).catch(() => undefined);
    for (const agent of state?.agents ?? []) if (alive(agent.pid)) process.kill(agent.pid, "SIGKILL");
    for (const member of state?.etcd ?? []) if (alive(member.pid)) process.kill(member.pid, "SIGKILL");
    dir.remove();
  });

  test("a viewer reads but cannot switch over; an operator can, but cannot delete; events name them", async () => {
    const listed = await as("alice", "volume", "list");
    assert.equal(listed.code, 0, listed.stderr);
    assert.match(listed.stdout, /v1\s/);
    const primaryOf = async (): Promise<string> => {
      const shown = await haven("volume", "show", "v1", "--json");
      return (JSON.parse(shown.stdout) as { primary: { host: string } }).primary.host;
    };
    const first = await primaryOf();
    const other = first === "h1" ? "h2" : "h1";
    const refused = await as("alice", "volume", "switchover", "v1", "--to", other);
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, /permission denied .*HAVEN_ERR_FORBIDDEN/);
    assert.equal(await primaryOf(), first, "the viewer's switchover moved nothing");

    const moved = await as("bob", "volume", "switchover", "v1", "--to", other);
    assert.equal(moved.code, 0, moved.stderr);
    const deleted = await as("bob", "volume", "delete", "v1", "--yes");
    assert.equal(deleted.code, 2, deleted.stderr);
    assert.match(deleted.stderr, /HAVEN_ERR_FORBIDDEN/);

    const events = await haven("events", "--limit", "50");
    assert.match(events.stdout, /admin@\S+\s+-\s+operator-added\s+operator alice added with role viewer/);
    assert.match(events.stdout, /bob@\S+\s+v1\s+switchover-requested/);
  });

  test("the agent API over HTTPS: an operator's certificate or token with its role; a foreign certificate is no one", async () => {
    const port = localHostPorts(basePort, "h1").api;
    const ca = join(pki, "ca", "ca-cert.pem");
    const alice = join(pki, "operators", "alice");
    const read = await apiCall(port, "GET", "/v1/host", { identity: alice }, ca);
    assert.equal(read.status, 200, read.body);
    const verify = await apiCall(
      port,
      "POST",
      "/v1/volumes/v1/verify",
      { identity: alice, body: { repair: false } },
      ca,
    );
    assert.equal(verify.status, 403, verify.body);
    assert.match(verify.body, /needs the operator role; alice is a viewer/);
    const token = readFileSync(join(alice, "token"), "utf8").trim();
    assert.equal((await apiCall(port, "GET", "/v1/host", { token }, ca)).status, 200);
    // A certificate from another CA names no one, and without a token that is 401.
    const other = join(dir.path, "other");
    await createCa(join(other, "ca"), "other");
    await issueCertificate(join(other, "ca"), join(other, "mallory"), {
      kind: "operator",
      name: "mallory",
      role: "admin",
    });
    const foreign = await apiCall(port, "GET", "/v1/host", { identity: join(other, "mallory") }, ca);
    assert.equal(foreign.status, 401, foreign.body);
  });

  test("a revoked certificate is refused by the agent's API within seconds, though the CA signed it", async () => {
    const port = localHostPorts(basePort, "h2").api;
    const ca = join(pki, "ca", "ca-cert.pem");
    const bob = join(pki, "operators", "bob");
    assert.equal((await apiCall(port, "GET", "/v1/host", { identity: bob }, ca)).status, 200);
    const revoked = await haven("cert", "revoke", "bob", "--dir", clusterDir);
    assert.equal(revoked.code, 0, revoked.stderr);
    assert.match(revoked.stdout, /revoked the certificate of operator bob/);
    await until("the agent refusing bob's certificate", async () =>
      (await apiCall(port, "GET", "/v1/host", { identity: bob }, ca)).status === 401 ? true : undefined,
    );
  });

  test("events --follow watches with the operator's token: a new event shows up", async () => {
    const follower = spawn(process.execPath, ["bin/haven.js", "events", "--follow"], {
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let output = "";
    follower.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
    follower.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()));
    try {
      await until("the past events", async () => (/operator-added/.test(output) ? true : undefined));
      const added = await haven("operator", "add", "carol", "--role", "viewer");
      assert.equal(added.code, 0, added.stderr);
      await until("carol's event in the follow", async () => (/operator carol added/.test(output) ? true : undefined));
      assert.doesNotMatch(output, /permission denied|watching again/);
    } finally {
      follower.kill("SIGTERM");
    }
  });

  test("a revoked operator's token stops working at once", async () => {
    const revoked = await haven("operator", "revoke", "alice");
    assert.equal(revoked.code, 0, revoked.stderr);
    const refused = await as("alice", "volume", "list");
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /etcd does not know user alice .*HAVEN_ERR_UNAUTHORIZED/);
  });
});
