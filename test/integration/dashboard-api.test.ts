// The dashboard's routes on a running local cluster (etcd with its roles, two agents, HTTPS): the page's
// files are open, every data route and action needs a token; a viewer reads but every action is 403;
// bad input is 400 with Haven's error body and changes nothing; a preview runs the guards and writes
// nothing; an operator's action is done and recorded as NAME@dashboard; the live stream sends a
// snapshot, the new events and the tasks' progress.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  alive,
  clusterDown,
  localHostPorts,
  readClusterState,
  type LocalClusterState,
} from "../../src/cluster/local-cluster.js";
import { freeBasePort, until } from "../helpers/cluster.js";
import { agentCall, openStream } from "../helpers/dashboard.js";
import { haveEtcd } from "../helpers/etcd.js";
import { run, tempDir } from "../helpers/server-process.js";
import { readFileSync } from "node:fs";

describe("the dashboard's routes on a local cluster", { skip: !haveEtcd() && "needs etcd" }, () => {
  const dir = tempDir("haven-dashboard-api-");
  const clusterDir = join(dir.path, "cluster");
  const pki = join(clusterDir, "pki");
  const ca = join(pki, "ca", "ca-cert.pem");
  const env: NodeJS.ProcessEnv = { ...process.env, HAVEN_CONTEXT: join(dir.path, "context.json"), HAVEN_TLS_DIR: "" };
  const haven = (...args: string[]) => run(process.execPath, ["bin/haven.js", ...args], { env, timeoutMs: 60_000 });
  let state: LocalClusterState | undefined;
  let port = 0;
  let admin = "";
  const tokens: Record<string, string> = {};
  let loop: string | undefined;
  const call = (method: string, path: string, token?: string, body?: unknown) =>
    agentCall(port, ca, method, path, token, body);
  const primaryOf = async (): Promise<string> =>
    (
      (await call("GET", "/v1/dashboard/cluster", admin)).json.volumes as { name: string; primary: { host: string } }[]
    ).find((volume) => volume.name === "v1")!.primary.host;

  before(async () => {
    const basePort = await freeBasePort();
    const up = await haven("cluster", "up", "--dir", clusterDir, "--hosts", "2", "--base-port", String(basePort));
    assert.equal(up.code, 0, up.stderr);
    state = readClusterState(clusterDir);
    port = localHostPorts(basePort, "h1").api;
    admin = readFileSync(join(clusterDir, "token"), "utf8").trim();
    for (const [name, role] of [
      ["alice", "viewer"],
      ["bob", "operator"],
    ] as const) {
      const issued = await haven("cert", "issue", "operator", name, "--role", role, "--dir", clusterDir);
      assert.equal(issued.code, 0, issued.stderr);
      const tokenFile = join(pki, "operators", name, "token");
      const added = await haven("operator", "add", name, "--role", role, "--token-file", tokenFile);
      assert.equal(added.code, 0, added.stderr);
      tokens[name] = readFileSync(tokenFile, "utf8").trim();
    }
    const created = await haven("volume", "create", "v1", "--size", "16M");
    assert.equal(created.code, 0, created.stderr);
    // The agents learn of new operators from etcd (operator-cache.ts): wait until bob is known.
    await until("the agent knowing bob's token", async () =>
      (await call("GET", "/v1/dashboard/tasks", tokens.bob)).status === 200 ? true : undefined,
    );
  });

  after(async () => {
    if (readClusterState(clusterDir)) await clusterDown(clusterDir, 10_000).catch(() => undefined);
    for (const agent of state?.agents ?? []) if (alive(agent.pid)) process.kill(agent.pid, "SIGKILL");
    for (const member of state?.etcd ?? []) if (alive(member.pid)) process.kill(member.pid, "SIGKILL");
    if (loop !== undefined) {
      await run("umount", ["-l", join(clusterDir, "hosts", "h1", "disks", "disk1")]).catch(() => undefined);
      await run("losetup", ["-d", loop]).catch(() => undefined);
    }
    dir.remove();
  });

  test("the page's files are served without a token, with no data; every data route needs one", async () => {
    const page = await call("GET", "/");
    assert.equal(page.status, 200);
    assert.match(String(page.headers["content-type"]), /^text\/html/);
    assert.match(String(page.headers["content-security-policy"]), /default-src 'self'/);
    assert.match(page.body, /<script type="module" src="\/dashboard\/app.js">/);
    for (const data of ["disk0", "127.0.0.1", admin, "alive"])
      assert.ok(!page.body.includes(data), `the page holds no cluster data (${data})`);
    const script = await call("GET", "/dashboard/app.js");
    assert.equal(script.status, 200);
    assert.match(String(script.headers["content-type"]), /^text\/javascript/);
    // Only the listed files: anything else under /dashboard/ is a route like any, and needs a token.
    assert.equal((await call("GET", "/dashboard/package.json")).status, 401);
    assert.equal((await call("GET", "/dashboard/package.json", admin)).status, 404);
    for (const path of [
      "/v1/dashboard/cluster",
      "/v1/dashboard/events",
      "/v1/dashboard/tasks",
      "/v1/dashboard/stream",
    ]) {
      for (const token of [undefined, "not-a-token-of-this-cluster"]) {
        const refused = await call("GET", path, token);
        assert.equal(refused.status, 401, `${path}: ${refused.body}`);
        assert.equal(refused.json.error.code, "HAVEN_ERR_UNAUTHORIZED");
      }
    }
    const refused = await call("POST", "/v1/dashboard/hosts/h1/drain", undefined, { preview: true });
    assert.equal(refused.status, 401);
  });

  test("a viewer sees the cluster and its events, and every action is 403 naming the role", async () => {
    const snapshot = await call("GET", "/v1/dashboard/cluster", tokens.alice);
    assert.equal(snapshot.status, 200, snapshot.body);
    assert.deepEqual(
      snapshot.json.hosts.map((host: { name: string; state: string }) => `${host.name} ${host.state}`),
      ["h1 alive", "h2 alive"],
    );
    const h1 = snapshot.json.hosts[0];
    assert.equal(typeof h1.healthAgeMs, "number");
    assert.ok(
      h1.health.links.some((link: { peer: string }) => link.peer === "h2"),
      "h1's heartbeat link to h2",
    );
    assert.deepEqual(
      h1.diskViews.map((disk: { disk: string; copies: { volume: string }[] }) => [disk.disk, disk.copies[0]?.volume]),
      [["disk0", "v1"]],
    );
    const volume = snapshot.json.volumes.find((one: { name: string }) => one.name === "v1");
    assert.deepEqual(volume.copies.map((copy: { state: string }) => copy.state).sort(), ["in-sync", "in-sync"]);
    const events = await call("GET", "/v1/dashboard/events?volume=v1", tokens.alice);
    assert.equal(events.status, 200);
    assert.ok(events.json.events.length > 0);
    assert.ok(events.json.events.every((event: { volume?: string }) => event.volume === "v1"));
    assert.ok(events.json.events.some((event: { kind: string }) => event.kind === "volume-created"));
    const other = (await primaryOf()) === "h1" ? "h2" : "h1";
    for (const [path, body] of [
      ["/v1/dashboard/volumes/v1/switchover", { to: other, preview: true }],
      ["/v1/dashboard/hosts/h1/drain", { preview: true }],
      ["/v1/dashboard/hosts/h1/undrain", {}],
      ["/v1/dashboard/disks/h1/disk0/identify", {}],
    ] as const) {
      const refused = await call("POST", path, tokens.alice, body);
      assert.equal(refused.status, 403, `${path}: ${refused.body}`);
      assert.equal(refused.json.error.code, "HAVEN_ERR_FORBIDDEN");
      assert.match(refused.json.error.message, /needs the operator role; alice is a viewer/);
    }
  });

  test("bad input is 400 with Haven's error body, and changes nothing", async () => {
    const before = await primaryOf();
    const other = before === "h1" ? "h2" : "h1";
    for (const [method, path, body, pattern] of [
      ["POST", "/v1/dashboard/volumes/v1/switchover", {}, /field "to" is required/],
      ["POST", "/v1/dashboard/volumes/v1/switchover", { to: 7 }, /field "to" is required/],
      ["POST", "/v1/dashboard/volumes/v1/switchover", { to: "../h2" }, /is not a host name/],
      ["POST", "/v1/dashboard/volumes/v1/switchover", { to: other, now: true }, /unknown field "now"/],
      ["POST", "/v1/dashboard/volumes/v1/switchover", { to: other, preview: "yes" }, /"preview" must be a boolean/],
      ["POST", "/v1/dashboard/volumes/V1!/switchover", { to: other }, /is not a volume name/],
      ["POST", "/v1/dashboard/hosts/h1/drain", [], /must be a JSON object/],
      ["POST", "/v1/dashboard/vms/web/stop", { force: 1 }, /"force" must be a boolean/],
      ["GET", "/v1/dashboard/events?since=yesterday", undefined, /not an ISO time/],
      ["GET", "/v1/dashboard/events?limit=0", undefined, /from 1 to 1000/],
      ["GET", "/v1/dashboard/events?limit=5&limit=6", undefined, /given more than once/],
      ["GET", "/v1/dashboard/events?colour=red", undefined, /unknown query parameter "colour"/],
      ["GET", "/v1/dashboard/events?host=a%20b", undefined, /is not a host name/],
    ] as const) {
      const refused = await call(method, path, tokens.bob, body);
      assert.equal(refused.status, 400, `${method} ${path}: ${refused.body}`);
      assert.equal(refused.json.error.code, "HAVEN_ERR_INVALID_REQUEST", refused.body);
      assert.match(refused.json.error.message, pattern);
    }
    const unknown = await call("POST", "/v1/dashboard/vms/web/reboot", tokens.bob, {});
    assert.equal(unknown.status, 404);
    const noVm = await call("POST", "/v1/dashboard/vms/web/start", tokens.bob, { preview: true });
    assert.equal(noVm.status, 404, noVm.body);
    assert.match(noVm.json.error.message, /no VM named "web"/);
    assert.equal(await primaryOf(), before, "nothing moved");
  });

  test("a switchover preview runs the CLI's guards and writes nothing; the operator's switchover names them", async () => {
    const from = await primaryOf();
    const to = from === "h1" ? "h2" : "h1";
    const events = (await call("GET", "/v1/dashboard/events", admin)).json.events.length;
    const preview = await call("POST", "/v1/dashboard/volumes/v1/switchover", tokens.bob, { to, preview: true });
    assert.equal(preview.status, 200, preview.body);
    assert.equal(preview.json.summary, `volume v1: the primary moves from ${from} to ${to}`);
    const guard = await call("POST", "/v1/dashboard/volumes/v1/switchover", tokens.bob, { to: from, preview: true });
    assert.equal(guard.status, 400, guard.body);
    assert.equal(guard.json.error.message, `${from} is already the primary of volume v1`);
    const nowhere = await call("POST", "/v1/dashboard/volumes/v1/switchover", tokens.bob, { to: "h7" });
    assert.equal(nowhere.status, 404, nowhere.body);
    assert.match(nowhere.json.error.message, /there is no host "h7" in the cluster \(hosts: h1, h2\)/);
    assert.equal(await primaryOf(), from, "the previews moved nothing");
    assert.equal((await call("GET", "/v1/dashboard/events", admin)).json.events.length, events, "and wrote no event");

    const stream = await openStream(port, ca, "/v1/dashboard/stream", tokens.bob);
    try {
      assert.equal(stream.status, 200);
      await stream.waitFor("a first snapshot", (event) => event === "snapshot");
      const started = await call("POST", "/v1/dashboard/volumes/v1/switchover", tokens.bob, { to });
      assert.equal(started.status, 202, started.body);
      assert.equal(started.json.task.actor, "bob@dashboard");
      const done = await stream.waitFor(
        "the switchover task's end",
        (event, task) => event === "task" && task.id === started.json.task.id && task.state !== "running",
      );
      assert.equal(done.state, "done", done.summary);
      assert.match(done.summary, new RegExp(`switched over to ${to} \\(epoch \\d+`));
      await stream.waitFor(
        "the new primary in a snapshot",
        (event, snapshot) =>
          event === "snapshot" &&
          snapshot.volumes.some((volume: { name: string; primary: { host: string } }) => volume.primary?.host === to),
      );
      const requested = await stream.waitFor(
        "the switchover-requested event",
        (event, record) => event === "event" && record.kind === "switchover-requested",
      );
      assert.equal(requested.host, "bob@dashboard");
    } finally {
      stream.close();
    }
  });

  test("drain previews, moves the primary off the host and keeps it in maintenance; undrain ends it once", async () => {
    const host = await primaryOf();
    const other = host === "h1" ? "h2" : "h1";
    const preview = await call("POST", `/v1/dashboard/hosts/${host}/drain`, tokens.bob, { preview: true });
    assert.equal(preview.status, 200, preview.body);
    assert.deepEqual(preview.json.steps, [`volume v1: switches over to ${other}`]);
    assert.equal((await call("GET", "/v1/dashboard/cluster", admin)).json.hosts[0].maintenance, false);
    const started = await call("POST", `/v1/dashboard/hosts/${host}/drain`, tokens.bob, {});
    assert.equal(started.status, 202, started.body);
    const task = await until("the drain's end", async () => {
      const tasks = (await call("GET", "/v1/dashboard/tasks", tokens.alice)).json.tasks as {
        id: string;
        state: string;
      }[];
      const found = tasks.find((one) => one.id === started.json.task.id);
      return found?.state === "running" ? undefined : found;
    });
    assert.equal(task.state, "done", JSON.stringify(task));
    assert.equal(await primaryOf(), other);
    const snapshot = (await call("GET", "/v1/dashboard/cluster", admin)).json;
    assert.equal(snapshot.hosts.find((one: { name: string }) => one.name === host).maintenance, true);
    const undrained = await call("POST", `/v1/dashboard/hosts/${host}/undrain`, tokens.bob, {});
    assert.equal(undrained.status, 200, undrained.body);
    const again = await call("POST", `/v1/dashboard/hosts/${host}/undrain`, tokens.bob, {});
    assert.equal(again.status, 409, again.body);
    assert.equal(again.json.error.message, `host ${host} is not in maintenance`);
    const events = (await call("GET", `/v1/dashboard/events?host=${host}`, admin)).json.events as {
      kind: string;
      host: string;
    }[];
    assert.ok(events.some((event) => event.kind === "host-maintenance" && event.host === "bob@dashboard"));
    assert.ok(events.some((event) => event.kind === "host-maintenance-ended" && event.host === "bob@dashboard"));
  });

  test("disk identify asks the disk's host through etcd and shows its answer", async () => {
    const answer = await call("POST", "/v1/dashboard/disks/h2/disk0/identify", tokens.bob, {});
    // A loop file's disk has no bay LED: the agent says so and gives the identity; either way it answered.
    assert.ok(answer.status === 200 || answer.status === 409, answer.body);
    assert.match(answer.body, /h2: /);
    const missing = await call("POST", "/v1/dashboard/disks/h2/disk9/identify", tokens.bob, {});
    assert.equal(missing.status, 404, missing.body);
  });

  test("disk replace needs the admin role, checks the new disk first, and moves the copy onto it", async () => {
    // A disk of its own (a loop device: a directory on disk0's filesystem would be the same device).
    const image = join(dir.path, "disk1.img");
    assert.equal((await run("truncate", ["-s", String(256 * 1024 * 1024), image])).code, 0);
    const attached = await run("losetup", ["--find", "--show", image]);
    assert.equal(attached.code, 0, attached.stderr);
    loop = attached.stdout.trim();
    const added = await haven("disk", "add", "h1", loop, "--name", "disk1");
    assert.equal(added.code, 0, added.stderr);
    await until("h1/disk1 online in the snapshot", async () => {
      const h1 = (await call("GET", "/v1/dashboard/cluster", admin)).json.hosts[0];
      return h1.diskViews.some(
        (disk: { disk: string; state: string }) => disk.disk === "disk1" && disk.state === "online",
      )
        ? true
        : undefined;
    });
    const path1 = "/v1/dashboard/disks/h1/disk0/replace";
    const operator = await call("POST", path1, tokens.bob, { with: "disk1", preview: true });
    assert.equal(operator.status, 403, operator.body);
    assert.match(operator.json.error.message, /a disk replace needs the admin role; bob is an operator/);
    const itself = await call("POST", path1, admin, { with: "disk0", preview: true });
    assert.equal(itself.status, 409, itself.body);
    assert.match(itself.json.error.message, /cannot replace disk0: it is the same disk; nothing was changed/);
    const preview = await call("POST", path1, admin, { with: "disk1", preview: true });
    assert.equal(preview.status, 200, preview.body);
    assert.deepEqual(preview.json.steps, ["v1: a new copy on h1/disk1, then h1/disk0's is released"]);
    const copiesOfV1 = async (): Promise<string[]> =>
      (await call("GET", "/v1/dashboard/cluster", admin)).json.volumes
        .find((volume: { name: string }) => volume.name === "v1")
        .copies.map((copy: { host: string; disk: string; state: string }) => `${copy.host}/${copy.disk} ${copy.state}`)
        .sort();
    assert.deepEqual(await copiesOfV1(), ["h1/disk0 in-sync", "h2/disk0 in-sync"], "the preview moved nothing");
    const started = await call("POST", path1, admin, { with: "disk1" });
    assert.equal(started.status, 202, started.body);
    const task = await until(
      "the disk replace's end",
      async () => {
        const tasks = (await call("GET", "/v1/dashboard/tasks", admin)).json.tasks as { id: string; state: string }[];
        const found = tasks.find((one) => one.id === started.json.task.id);
        return found?.state === "running" ? undefined : found;
      },
      120_000,
    );
    assert.equal(task.state, "done", JSON.stringify(task));
    assert.deepEqual(await copiesOfV1(), ["h1/disk1 in-sync", "h2/disk0 in-sync"]);
  });
});
