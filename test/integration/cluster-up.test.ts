// `haven cluster up` as a user runs it: one etcd member per host (three for three hosts), bootstrapped
// together, each member's pid recorded in cluster.json next to its host's agent, every agent's config
// listing every member; `haven cluster down` stops every agent and every member by pid; started again
// from its directory the cluster keeps its members and their data; a member count above the host count
// is refused.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { get as httpsGet } from "node:https";
import { join } from "node:path";
import { loadTlsIdentity } from "../../src/security/tls-identity.js";
import {
  alive,
  clusterDown,
  localClusterClient,
  readClusterState,
  type LocalClusterState,
} from "../../src/cluster/local-cluster.js";
import { freeBasePort } from "../helpers/cluster.js";
import { haveEtcd } from "../helpers/etcd.js";
import { run, tempDir } from "../helpers/server-process.js";

/** A GET of a member's peer /version with the credentials given: "HTTP nnn" or "error: ...". */
function peerProbe(peerUrl: string, credentials: { ca: Buffer; cert?: Buffer; key?: Buffer }): Promise<string> {
  return new Promise((resolve) => {
    const req = httpsGet(new URL("/version", peerUrl), { agent: false, ...credentials }, (response) => {
      response.resume();
      response.once("end", () => resolve(`HTTP ${response.statusCode}`));
    });
    req.once("error", (error) => resolve(`error: ${error.message}`));
    req.setTimeout(5_000, () => req.destroy(new Error("timed out")));
  });
}

describe("haven cluster up runs one etcd member per host", { skip: !haveEtcd() && "needs etcd" }, () => {
  const dir = tempDir("haven-cluster-up-");
  const clusterDir = join(dir.path, "cluster");
  const env = { ...process.env, HAVEN_CONTEXT: join(dir.path, "context.json") };
  const haven = (...args: string[]) => run(process.execPath, ["bin/haven.js", ...args], { env, timeoutMs: 60_000 });
  let basePort = 0;
  /** The cluster CA the first cluster up made, which every later one keeps. */
  let caFirst = "";
  /** Every pid a cluster up recorded, so the after hook can make sure none is left. */
  const pids = new Set<number>();
  const record = (state: LocalClusterState) => {
    for (const pid of [...state.agents.map((agent) => agent.pid), ...state.etcd.map((member) => member.pid)])
      pids.add(pid);
  };

  before(async () => {
    basePort = await freeBasePort();
  });

  after(async () => {
    if (readClusterState(clusterDir)) await clusterDown(clusterDir, 10_000).catch(() => undefined);
    for (const pid of pids) if (alive(pid)) process.kill(pid, "SIGKILL");
    dir.remove();
  });

  test("three hosts get three etcd members, every agent lists them all, and cluster down stops every pid", async () => {
    const up = await haven("cluster", "up", "--hosts", "3", "--dir", clusterDir, "--base-port", String(basePort));
    const state = readClusterState(clusterDir)!;
    record(state);
    assert.equal(up.code, 0, up.stderr);
    assert.equal(state.etcd.length, 3);
    assert.deepEqual(
      state.etcd.map((member) => [member.name, member.host, member.endpoint]),
      [1, 2, 3].map((i) => [`h${i}`, `h${i}`, `https://127.0.0.1:${basePort + 10 * i + 3}`]),
    );
    assert.deepEqual(
      state.endpoints,
      state.etcd.map((member) => member.endpoint),
    );
    for (const agent of state.agents) {
      const member = state.etcd.find((candidate) => candidate.host === agent.name)!;
      assert.equal(agent.etcdPid, member.pid, `${agent.name}'s member pid is recorded next to its agent`);
      const config = JSON.parse(readFileSync(agent.config, "utf8")) as {
        etcd: { endpoints: string[] };
        tls: { dir: string };
      };
      assert.deepEqual(config.etcd.endpoints, state.endpoints, `${agent.name}'s agent knows every member`);
      assert.equal(config.tls.dir, join(clusterDir, "pki", "hosts", agent.name), `${agent.name} has its own identity`);
    }
    assert.ok([...pids].every(alive));
    assert.match(up.stdout, new RegExp(`etcd ${state.endpoints.join(",")}, hosts h1, h2, h3`));
    const context = JSON.parse(readFileSync(env.HAVEN_CONTEXT, "utf8")) as { etcd: string[]; tls: string };
    assert.deepEqual(context.etcd, state.endpoints);
    assert.ok(
      state.endpoints.every((endpoint) => endpoint.startsWith("https://")),
      "etcd speaks TLS only",
    );
    assert.equal(context.tls, join(clusterDir, "pki", "operators", "admin"));
    caFirst = readFileSync(join(clusterDir, "pki", "ca", "ca-cert.pem"), "utf8");
    // Members talk to each other over TLS too, and a peer without a certificate of the CA is refused.
    assert.ok(state.etcd.every((member) => member.peerUrl.startsWith("https://")));
    const admin = await loadTlsIdentity(context.tls);
    assert.match(await peerProbe(state.etcd[0]!.peerUrl, { ca: admin.ca }), /^error: /);
    assert.match(await peerProbe(state.etcd[0]!.peerUrl, { ca: admin.ca, cert: admin.cert, key: admin.key }), /^HTTP /);

    const status = await haven("status");
    assert.match(status.stdout, /^3 hosts \(3 alive\)/m, status.stderr);
    // Each member answers, and they form one cluster: a write through one is read through another.
    const through = (member: number) => localClusterClient({ ...state, endpoints: [state.etcd[member]!.endpoint] });
    await (await through(0)).put("/test/marker", "kept");
    assert.equal((await (await through(2)).get("/test/marker"))?.value, "kept");

    const down = await haven("cluster", "down", "--dir", clusterDir);
    assert.equal(down.code, 0, down.stderr);
    assert.match(down.stdout, /stopped 3 agents, 3 etcd members, 0 VMs/);
    assert.deepEqual([...pids].filter(alive), [], "processes left running after cluster down");
  });

  test("started again from its directory, the cluster keeps its three members and their data", async () => {
    const up = await haven(
      "cluster",
      "up",
      "--hosts",
      "3",
      "--etcd-members",
      "1",
      "--dir",
      clusterDir,
      "--base-port",
      String(basePort),
    );
    const state = readClusterState(clusterDir)!;
    record(state);
    assert.equal(up.code, 0, up.stderr);
    assert.equal(state.etcd.length, 3, "the members the cluster was first started with");
    assert.equal(readFileSync(join(clusterDir, "pki", "ca", "ca-cert.pem"), "utf8"), caFirst, "the CA is kept");
    assert.equal((await (await localClusterClient(state)).get("/test/marker"))?.value, "kept");
    const down = await haven("cluster", "down", "--dir", clusterDir);
    assert.equal(down.code, 0, down.stderr);
    assert.deepEqual([...pids].filter(alive), [], down.stdout);
  });

  test("more etcd members than hosts is refused", async () => {
    const refused = await haven(
      "cluster",
      "up",
      "--hosts",
      "2",
      "--etcd-members",
      "3",
      "--dir",
      join(dir.path, "other"),
      "--base-port",
      String(basePort),
    );
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /--etcd-members must be 1 to 2/);
  });
});
