// The cluster commands as an operator runs them: the real `haven` CLI as a child process against a real
// etcd, with host records written by the test in place of agents (three live hosts, one dead). Checks
// placement and the records a create leaves, that a name is never taken twice, what status, lists,
// show and events print (text and JSON), that delete destroys nothing without --yes, how create waits
// for the primary to serve the volume, and that every bad input gets its own message and exit status.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type AddressInfo, type Server } from "node:net";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { EtcdClient, Watch } from "../../src/cluster/etcd-client.js";
import {
  eventSequence,
  keys,
  parsePrimaryRecord,
  parseReplicaRecord,
  parseVolumeSpec,
  type EventRecord,
  type HostRecord,
} from "../../src/cluster/schema.js";
import { haveEtcd, startTestEtcd, type TestEtcd } from "../helpers/etcd.js";
import { HAVEN_BIN, killStartedProcesses, run, spawnHaven, tempDir } from "../helpers/server-process.js";

const GiB = 1024 ** 3;

let etcd: TestEtcd;
let client: EtcdClient;
/** Stands in for every host's NBD server: it accepts connections and nothing more. */
let nbd: Server;
let nbdPort: number;
let configHome: ReturnType<typeof tempDir>;

/** The environment of a shell with no cluster configured: no HAVEN_* and an empty config home. */
function cleanEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  // COLUMNS: tables as wide as their cells, since these tests read whole rows (cli-surface.test.ts
  // checks that a pipe gets 80 columns without it).
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    XDG_CONFIG_HOME: configHome.path,
    NO_COLOR: "1",
    COLUMNS: "250",
    ...extra,
  };
  if (extra.HAVEN_ETCD === undefined) delete env.HAVEN_ETCD;
  if (extra.HAVEN_CONTEXT === undefined) delete env.HAVEN_CONTEXT;
  return env;
}

/** `haven ARGS...` with no cluster configured but what the arguments say. */
const haven = (args: string[], env: NodeJS.ProcessEnv = cleanEnv()) =>
  run(process.execPath, [HAVEN_BIN, ...args], { timeoutMs: 30_000, env });

/** `haven ARGS... --etcd ENDPOINT`. */
const cluster = (...args: string[]) => haven([...args, "--etcd", etcd.endpoint]);

function host(name: string, capacityGiB: number, usedGiB: number): HostRecord {
  return {
    name,
    address: "127.0.0.1",
    apiPort: 1,
    replicationPort: 2,
    nbdPort,
    disks: [{ name: "ssd0", capacityBytes: capacityGiB * GiB, usedBytes: usedGiB * GiB }],
    startedAt: "2024-05-01T12:00:00.000Z",
  };
}

async function putEvent(event: EventRecord): Promise<void> {
  await client.put(keys.event(eventSequence()), JSON.stringify(event));
}

async function volumeSpec(name: string) {
  const kv = await client.get(keys.volume(name));
  return kv === undefined ? undefined : parseVolumeSpec(kv.value, kv.key);
}

/** The JSON of the events under keys.events(), oldest first. */
async function eventRecords(): Promise<EventRecord[]> {
  return (await client.getPrefix(keys.events())).map((kv) => JSON.parse(kv.value) as EventRecord);
}

const skip = !haveEtcd() && "etcd is not installed";

// The suite takes about 50 s (a process per command); one still running after 5 minutes is hung.
describe("cluster commands against a real etcd", { skip, timeout: 300_000 }, () => {
  before(async () => {
    configHome = tempDir("haven-cli-config-");
    nbd = createServer((socket) => socket.destroy());
    await new Promise<void>((resolve) => nbd.listen(0, "127.0.0.1", resolve));
    nbdPort = (nbd.address() as AddressInfo).port;
    etcd = await startTestEtcd();
    client = etcd.client();
    // node4 has the most room but is dead (no lease-bound record): placement must never use it.
    for (const record of [host("node1", 100, 10), host("node2", 200, 0), host("node3", 50, 0)]) {
      await client.put(keys.host(record.name), JSON.stringify(record));
      await client.put(keys.hostInfo(record.name), JSON.stringify(record));
    }
    await client.put(keys.hostInfo("node4"), JSON.stringify(host("node4", 1000, 0)));
  });

  after(async () => {
    await killStartedProcesses();
    await etcd?.stop();
    nbd?.close();
    configHome?.remove();
  });

  test("volume create puts the copies on distinct live hosts, most free space first, and records them at once", async () => {
    const result = await cluster("volume", "create", "web", "--size", "1G", "--no-wait");
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /^volume {6}web$/m);
    assert.match(result.stdout, new RegExp(`^nbd {9}nbd://127\\.0\\.0\\.1:${nbdPort}/web$`, "m"));
    assert.match(result.stdout, /^node2 {2}ssd0 {2}alive {7}in-sync {3}new /m);

    const spec = await volumeSpec("web");
    assert.deepEqual(spec?.sizeBytes, GiB);
    assert.deepEqual(spec?.replicas, [
      { host: "node2", disk: "ssd0" },
      { host: "node1", disk: "ssd0" },
    ]);
    const primary = await client.get(keys.primary("web"));
    assert.ok(primary !== undefined);
    const record = parsePrimaryRecord(primary.value, primary.key);
    assert.deepEqual([record.host, record.epoch, record.reason], ["node2", 1, "created"]);
    for (const name of ["node2", "node1"]) {
      const kv = await client.get(keys.replica("web", { host: name, disk: "ssd0" }));
      assert.ok(kv !== undefined, `a record for the copy on ${name}`);
      const replica = parseReplicaRecord(kv.value, kv.key);
      assert.deepEqual([replica.state, replica.detail, replica.epoch], ["in-sync", "new", 1]);
      // One transaction: every record carries the revision of the spec.
      assert.equal(kv.modRevision, (await client.get(keys.volume("web")))!.modRevision);
    }
    const created = (await eventRecords()).filter((event) => event.kind === "volume-created");
    assert.equal(created.length, 1);
    assert.equal(created[0]!.volume, "web");
    assert.match(created[0]!.message, /copies on node2\/ssd0, node1\/ssd0, primary node2/);
  });

  test("the next volume goes to the hosts with the fewest copies first (--json)", async () => {
    const result = await cluster("volume", "create", "db", "--size", "1G", "--replicas", "3", "--no-wait", "--json");
    assert.equal(result.code, 0, result.stderr);
    const volume = JSON.parse(result.stdout) as { name: string; primary: { host: string }; copies: { host: string }[] };
    assert.equal(volume.name, "db");
    assert.equal(volume.primary.host, "node3");
    assert.deepEqual(
      volume.copies.map((copy) => copy.host),
      ["node3", "node2", "node1"],
    );
  });

  test("a name is never taken twice: re-create is a conflict and changes nothing", async () => {
    const before = await client.get(keys.volume("web"));
    const result = await cluster("volume", "create", "web", "--size", "2G", "--no-wait");
    assert.equal(result.code, 1);
    assert.match(
      result.stderr,
      /^haven: volume "web" already exists \(created .*\); choose another name, or delete it first with 'haven volume delete web --yes'.* \[HAVEN_ERR_CONFLICT\]$/m,
    );
    assert.equal((await client.get(keys.volume("web")))!.modRevision, before!.modRevision);
  });

  test("no room: the error says how many hosts qualify and why the others do not, and nothing is written", async () => {
    const result = await cluster("volume", "create", "big", "--size", "150G", "--no-wait");
    assert.equal(result.code, 1);
    assert.match(
      result.stderr,
      /only 1 of 3 live hosts qualifies: node1 has no disk with 150\.0 GiB free \(most free: ssd0, 88\.0 GiB\); node3 has no disk with 150\.0 GiB free .*\[HAVEN_ERR_NO_SPACE\]/,
    );
    assert.equal(await volumeSpec("big"), undefined);
    assert.equal((await client.getPrefix(keys.replicasOf("big"))).length, 0);
  });

  test("status: the summary line, hosts alive and dead, volumes with health and NBD URI; --json", async () => {
    const text = await cluster("status");
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /^4 hosts \(3 alive, 1 dead\), 2 volumes \(2 healthy\)\n/);
    assert.match(text.stdout, /^node4 {2}dead {3}127\.0\.0\.1/m);
    assert.match(text.stdout, /^node1 {2}alive {2}127\.0\.0\.1 .* ssd0 10\.0 GiB\/100\.0 GiB {2}- +-$/m);
    assert.match(
      text.stdout,
      new RegExp(`^web .*healthy .*node2 \\(epoch 1\\) .*nbd://127\\.0\\.0\\.1:${nbdPort}/web$`, "m"),
    );

    // The primary records node1's copy out of sync: the volume is degraded.
    await client.put(
      keys.replica("web", { host: "node1", disk: "ssd0" }),
      JSON.stringify({ state: "out-of-sync", detail: "faulted", epoch: 1, updatedAt: new Date().toISOString() }),
    );
    const degraded = await cluster("status", "--json");
    assert.equal(degraded.code, 0, degraded.stderr);
    const view = JSON.parse(degraded.stdout) as {
      summary: Record<string, number>;
      hosts: { name: string; state: string }[];
      volumes: { name: string; health: string; nbd: string | null }[];
    };
    assert.deepEqual(view.summary, {
      hosts: 4,
      aliveHosts: 3,
      volumes: 2,
      healthyVolumes: 1,
      degradedVolumes: 1,
      downVolumes: 0,
    });
    assert.deepEqual(
      view.hosts.map((h) => `${h.name}:${h.state}`),
      ["node1:alive", "node2:alive", "node3:alive", "node4:dead"],
    );
    const web = view.volumes.find((v) => v.name === "web");
    assert.deepEqual([web?.health, web?.nbd], ["degraded", `nbd://127.0.0.1:${nbdPort}/web`]);
    assert.match(
      (await cluster("status")).stdout,
      /^4 hosts \(3 alive, 1 dead\), 2 volumes \(1 healthy, 1 degraded\)$/m,
    );
  });

  test("host list, volume list and volume show, as text and as JSON", async () => {
    const hosts = await cluster("host", "list");
    assert.equal(hosts.code, 0, hosts.stderr);
    assert.deepEqual(
      hosts.stdout
        .trim()
        .split("\n")
        .map((line) => line.split(/\s+/).slice(0, 2).join(" ")),
      ["HOST STATE", "node1 alive", "node2 alive", "node3 alive", "node4 dead"],
    );
    const hostsJson = JSON.parse((await cluster("host", "list", "--json")).stdout) as {
      name: string;
      copies: number;
    }[];
    assert.deepEqual(
      hostsJson.map((h) => [h.name, h.copies]),
      [
        ["node1", 2],
        ["node2", 2],
        ["node3", 1],
        ["node4", 0],
      ],
    );

    const volumes = await cluster("volume", "list");
    assert.equal(volumes.code, 0, volumes.stderr);
    assert.match(volumes.stdout, /^db {6}1\.00 GiB {2}healthy {3}node3 \(epoch 1\)/m);
    assert.match(volumes.stdout, /^web .* node2 in-sync, node1 out-of-sync /m);
    const volumesJson = JSON.parse((await cluster("volume", "list", "--json")).stdout) as { name: string }[];
    assert.deepEqual(
      volumesJson.map((v) => v.name),
      ["db", "web"],
    );

    const show = await cluster("volume", "show", "web");
    assert.equal(show.code, 0, show.stderr);
    assert.match(show.stdout, /^health {6}degraded$/m);
    assert.match(show.stdout, /^primary {5}node2 \(alive\), epoch 1, since .* \(created\)$/m);
    assert.match(show.stdout, new RegExp(`^nbd {9}nbd://127\\.0\\.0\\.1:${nbdPort}/web$`, "m"));
    assert.match(show.stdout, /^node1 {2}ssd0 {2}alive {7}out-of-sync {2}faulted /m);
    const showJson = JSON.parse((await cluster("volume", "show", "web", "--json")).stdout) as {
      sizeBytes: number;
      nbd: string;
    };
    assert.deepEqual([showJson.sizeBytes, showJson.nbd], [GiB, `nbd://127.0.0.1:${nbdPort}/web`]);
  });

  test("volume show of an unknown volume: not found, exit 3", async () => {
    const result = await cluster("volume", "show", "nope");
    assert.equal(result.code, 3);
    assert.match(
      result.stderr,
      /^haven: no volume "nope" in the cluster; 'haven volume list' shows them \[HAVEN_ERR_NOT_FOUND\]$/m,
    );
  });

  test("events: one line each, filtered by --volume and --host, the last --limit, --json lines", async () => {
    await putEvent({
      time: new Date().toISOString(),
      host: "node1",
      volume: "web",
      kind: "copy-faulted",
      message: "disk error",
    });
    await putEvent({
      time: new Date().toISOString(),
      host: "node3",
      volume: "db",
      kind: "volume-serving",
      message: "ok",
    });

    const web = await cluster("events", "--volume", "web", "--utc");
    assert.equal(web.code, 0, web.stderr);
    const lines = web.stdout.trim().split("\n");
    assert.equal(lines.length, 3, web.stdout);
    assert.match(lines[0]!, /^TIME \(UTC\) +HOST +VOLUME +KIND +MESSAGE$/);
    const time = "\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d\\.\\d{3}";
    assert.match(lines[1]!, new RegExp(`^${time} {2}cli@\\S+ +web +volume-created +volume web created: 1\\.00 GiB`));
    assert.match(lines[2]!, new RegExp(`^${time} {2}node1 +web +copy-faulted +disk error$`));

    const byHost = await cluster("events", "--host", "node3");
    assert.deepEqual(byHost.stdout.trim().split("\n").length, 2, byHost.stdout);
    assert.match(byHost.stdout, /volume-serving/);

    const last = await cluster("events", "--limit", "1", "--json");
    assert.deepEqual(JSON.parse(last.stdout), (await eventRecords()).at(-1));

    const all = await cluster("events", "--json");
    assert.deepEqual(
      all.stdout
        .trim()
        .split("\n")
        .map((line) => (JSON.parse(line) as EventRecord).kind),
      ["volume-created", "volume-created", "copy-faulted", "volume-serving"],
    );
  });

  test("events --follow prints the past, then each new matching event, until SIGINT (exit 0)", async () => {
    const follow = spawnHaven(["events", "--follow", "--volume", "web", "--etcd", etcd.endpoint]);
    try {
      await follow.waitForLog("copy-faulted");
      // The db event comes first: if the filter let it through, it would show before web's.
      await putEvent({ time: new Date().toISOString(), host: "node3", volume: "db", kind: "db-news", message: "x" });
      await putEvent({ time: new Date().toISOString(), host: "node2", volume: "web", kind: "web-news", message: "y" });
      await follow.waitForLog(/node2 +web +web-news +y/);
      assert.doesNotMatch(follow.log(), /db-news/);
      assert.equal(follow.log().match(/copy-faulted/g)?.length, 1, "the past is printed once");
    } finally {
      assert.equal(await follow.stop("SIGINT"), 0);
    }
  });

  test("delete without --yes destroys nothing and says that every copy's data would go", async () => {
    const result = await cluster("volume", "delete", "web");
    assert.equal(result.code, 2);
    assert.match(
      result.stderr,
      /^haven: deleting volume web destroys its data on every copy \(node2\/ssd0, node1\/ssd0\); nothing was deleted\. To go ahead: haven volume delete web --yes \[HAVEN_ERR_USAGE\]$/m,
    );
    assert.ok((await volumeSpec("web")) !== undefined);
    assert.ok((await client.get(keys.primary("web"))) !== undefined);
    assert.equal((await client.getPrefix(keys.replicasOf("web"))).length, 2);
  });

  test("delete --yes removes the spec, primary and copy records at once and records an event", async () => {
    const result = await cluster("volume", "delete", "web", "--yes");
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /^deleted volume web; the agents stop its engine and remove its 2 copies$/m);
    assert.equal(await volumeSpec("web"), undefined);
    assert.equal(await client.get(keys.primary("web")), undefined);
    assert.equal((await client.getPrefix(keys.replicasOf("web"))).length, 0);
    assert.ok((await volumeSpec("db")) !== undefined, "other volumes stay");
    assert.equal((await client.getPrefix(keys.replicasOf("db"))).length, 3);
    const deleted = (await eventRecords()).filter((event) => event.kind === "volume-deleted");
    assert.deepEqual(
      deleted.map((event) => event.volume),
      ["web"],
    );

    const again = await cluster("volume", "delete", "web", "--yes");
    assert.equal(again.code, 3);
    assert.match(again.stderr, /no volume "web" in the cluster;.*\[HAVEN_ERR_NOT_FOUND\]/);
  });

  test("create waits until the primary reports the volume served and its NBD URI answers", async () => {
    // The test plays the primary's agent: once the volume appears, it reports serving it.
    let watch: Watch | undefined;
    const reported = new Promise<void>((resolve, reject) => {
      watch = client.watchPrefix(keys.volume("served"), {}, (event) => {
        if (event.type !== "PUT") return;
        watch?.cancel();
        putEvent({
          time: new Date().toISOString(),
          host: "node3",
          volume: "served",
          kind: "volume-serving",
          message: "",
        }).then(resolve, reject);
      });
      watch.ready.catch(reject);
    });
    const create = spawnHaven(["volume", "create", "served", "--size", "1G", "--etcd", etcd.endpoint]);
    try {
      await reported;
      assert.equal(await create.exited, 0, create.log());
      assert.match(create.log(), /volume served created; waiting up to 30 s for node\d to serve it/);
      assert.match(create.log(), new RegExp(`^nbd {9}nbd://127\\.0\\.0\\.1:${nbdPort}/served$`, "m"));
    } finally {
      watch?.cancel();
      await create.stop("SIGKILL");
    }
  });

  test("create that is not served in time fails with what is missing; an older serving event does not count", async () => {
    // A "volume-serving" event from a former volume of the same name.
    await putEvent({
      time: new Date().toISOString(),
      host: "node1",
      volume: "lonely",
      kind: "volume-serving",
      message: "",
    });
    const result = await cluster("volume", "create", "lonely", "--size", "1G", "--wait-timeout", "0.5");
    assert.equal(result.code, 1);
    assert.match(
      result.stderr,
      /^haven: volume lonely is created but not served after 0\.5 s: host node\d has not reported serving it \(no "volume-serving" event\)\. It stays created: follow it with 'haven events --volume lonely --follow'.*\[HAVEN_ERR_UNAVAILABLE\]$/m,
    );
    assert.ok((await volumeSpec("lonely")) !== undefined);
  });

  test("the cluster is found by HAVEN_ETCD or a context file as well as --etcd", async () => {
    const byEnv = await haven(["volume", "list"], cleanEnv({ HAVEN_ETCD: etcd.endpoint }));
    assert.equal(byEnv.code, 0, byEnv.stderr);
    assert.match(byEnv.stdout, /^db /m);
    const file = join(configHome.path, "ctx.json");
    writeFileSync(file, JSON.stringify({ etcd: [etcd.endpoint] }));
    const byFile = await haven(["volume", "show", "db", "--context", file]);
    assert.equal(byFile.code, 0, byFile.stderr);
    assert.match(byFile.stdout, /^volume {6}db$/m);
  });

  test("bad input: each gets its own message and exit status, and nothing is written", async () => {
    const revision = (await client.get(keys.volume("db")))!.modRevision;
    const cases: [string[], number, RegExp][] = [
      [["volume", "create", "x", "--size", "lots"], 2, /--size "lots" is not a size; use bytes or a unit/],
      [
        ["volume", "create", "x", "--size", "1000"],
        2,
        /--size "1000" is 1000 bytes, not a multiple of 4096 \(4\.00 KiB\)/,
      ],
      [["volume", "create", "x"], 2, /--size is required/],
      [["volume", "create", "Bad!", "--size", "1G"], 2, /volume name "Bad!" is invalid: use 1 to 63 lowercase letters/],
      [
        ["volume", "create", "x", "--size", "1G", "--replicas", "5"],
        2,
        /--replicas must be a whole number from 1 to 4, got "5"/,
      ],
      [
        ["volume", "create", "x", "--size", "1G", "--wait-timeout", "soon"],
        2,
        /--wait-timeout must be a number of seconds/,
      ],
      [["volume", "show"], 2, /expected exactly one volume NAME, got 0/],
      [["volume", "delete", "nope", "--yes"], 3, /no volume "nope" in the cluster/],
      [["events", "--limit", "0"], 2, /--limit must be a whole number from 1 to 100000, got "0"/],
      [["status", "extra"], 2, /unexpected argument "extra"/],
      [["host", "frob"], 2, /unknown or missing verb for "host" \(known: list, drain, undrain\)/],
    ];
    for (const [args, code, message] of cases) {
      const result = await cluster(...args);
      assert.equal(result.code, code, `exit status of ${args.join(" ")}: ${result.stderr}`);
      assert.match(result.stderr, message, args.join(" "));
    }
    assert.equal(await volumeSpec("x"), undefined);
    assert.equal((await client.get(keys.volume("db")))!.modRevision, revision);
  });

  test("creates of one name racing each other: exactly one wins, the others are told it exists", async () => {
    const results = await Promise.all(
      [1, 2, 3, 4].map(() => cluster("volume", "create", "race", "--size", "1G", "--no-wait")),
    );
    assert.deepEqual(
      results.map((result) => result.code).sort(),
      [0, 1, 1, 1],
      results.map((result) => result.stderr).join(""),
    );
    for (const result of results.filter((r) => r.code === 1)) assert.match(result.stderr, /\[HAVEN_ERR_CONFLICT\]/);
    const created = (await eventRecords()).filter((e) => e.kind === "volume-created" && e.volume === "race");
    assert.equal(created.length, 1);
  });

  test("no cluster configured, a bad --etcd, an unreachable etcd: each says so", async () => {
    const none = await haven(["status"]);
    assert.equal(none.code, 2);
    assert.match(
      none.stderr,
      /^haven: no cluster configured: pass --etcd URL\[,URL\.\.\.\], set HAVEN_ETCD, or write a context file \(--context FILE, \$HAVEN_CONTEXT, or .*haven\/context\.json; .*\) \[HAVEN_ERR_USAGE\]$/m,
    );
    const bad = await haven(["status", "--etcd", "ftp://x:2379"]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--etcd: etcd endpoint "ftp:\/\/x:2379" is not https:\/\/HOST:PORT/);
    const anonymous = await haven(["status", "--etcd", "https://127.0.0.1:2379"]);
    assert.equal(anonymous.code, 2);
    assert.match(anonymous.stderr, /speaks TLS: pass --tls-dir DIR/);
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((resolve) => closed.close(resolve));
    const down = await haven(["volume", "list", "--etcd", `127.0.0.1:${port}`]);
    assert.equal(down.code, 1);
    assert.match(down.stderr, new RegExp(`127\\.0\\.0\\.1:${port}.*\\[HAVEN_ERR_UNAVAILABLE\\]`));
  });
});
