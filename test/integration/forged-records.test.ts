// Records forged straight into a real cluster's etcd (as `etcdctl put` would) are refused at the trust
// boundary (issue 16, item 5): a volume named `../../escape`, its primary record, a copy record under
// a key that is not VOLUME/HOST/DISK, a VM named like a path, and an event with a forged kind and
// author. The agents log each once (not every round), write no event about them, create no file for
// them, and carry on with the real volume; the CLI's readers skip them and count them.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { clusterUp, localClusterClient, type LocalClusterState } from "../../src/cluster/local-cluster.js";
import { EtcdClient } from "../../src/cluster/etcd-client.js";
import { readClusterRecords, readEvents } from "../../src/cluster/cluster-read.js";
import { keys } from "../../src/cluster/schema.js";
import { haveEtcd } from "../helpers/etcd.js";
import { run, tempDir } from "../helpers/server-process.js";
import { createTestVolume, etcdArgs, freeBasePort, stopLocalCluster, until, TEST_TIMINGS } from "../helpers/cluster.js";

const VOLUME = "good";
const skip = !haveEtcd() ? "needs etcd" : false;
/** Agent rounds run on every change of the watched prefixes and every few seconds besides. */
const SEVERAL_ROUNDS_MS = 8_000;

/** Every path under `dir`, recursively. */
function allPaths(dir: string): string[] {
  return readdirSync(dir).flatMap((entry) => {
    const path = join(dir, entry);
    let directory = false;
    try {
      directory = statSync(path).isDirectory();
    } catch {
      return [path]; // a socket or a file that went away
    }
    return directory ? [path, ...allPaths(path)] : [path];
  });
}

describe("records forged into etcd", { skip, timeout: 120_000 }, () => {
  const dir = tempDir("haven-forged-");
  const clusterDir = join(dir.path, "cluster");
  let cluster: LocalClusterState;
  let etcd: EtcdClient;
  const haven = (...args: string[]) =>
    run(process.execPath, ["bin/haven.js", ...args, ...etcdArgs(cluster)], { timeoutMs: 30_000 });

  before(async () => {
    const basePort = await freeBasePort();
    cluster = await clusterUp({ dir: clusterDir, hosts: 2, basePort, timings: { ...TEST_TIMINGS } });
    etcd = await localClusterClient(cluster);
    await createTestVolume(cluster, VOLUME, "16M");
    await until("the volume's primary to serve it", async () => {
      const records = await readClusterRecords(etcd);
      const copies = records.replicas.get(VOLUME);
      return copies !== undefined && [...copies.values()].every((copy) => copy.state === "in-sync") && copies.size === 2
        ? true
        : undefined;
    });
  });

  after(async () => {
    await stopLocalCluster(clusterDir);
    dir.remove();
  });

  test("are refused, logged once by each agent, reach no path and no event; the real volume carries on", async () => {
    const good = (await readClusterRecords(etcd)).volumes.get(VOLUME)!;
    const now = new Date().toISOString();
    const escapeSpec = { name: "../../escape", sizeBytes: 16 << 20, replicas: good.replicas, createdAt: now };
    const forged: [string, unknown][] = [
      [`${keys.volumes()}../../escape`, escapeSpec],
      [`${keys.primaries()}../../escape`, { host: "h1", epoch: 99, since: now, reason: "forged" }],
      [`${keys.replicas()}${VOLUME}/../../h1/disk`, { state: "in-sync", detail: "x", epoch: 1, updatedAt: now }],
      [
        `${keys.vms()}../vm`,
        { name: "../vm", vcpus: 1, memoryMiB: 64, volume: VOLUME, boot: "disk", nics: [], heartbeat: false },
      ],
      [
        keys.event("000000000000001-forged00"),
        { time: now, host: "h1\nh2", volume: VOLUME, kind: "<b>failover</b>", message: "a forged event" },
      ],
    ];
    for (const [key, value] of forged) await etcd.put(key, JSON.stringify(value));
    const eventsBefore = (await readEvents(etcd)).length;

    await new Promise((resolve) => setTimeout(resolve, SEVERAL_ROUNDS_MS));

    const records = await readClusterRecords(etcd);
    assert.deepEqual([...records.volumes.keys()], [VOLUME]);
    assert.ok(!records.primaries.has("../../escape"));
    assert.deepEqual(
      [...records.replicas.get(VOLUME)!.keys()].sort(),
      good.replicas.map((c) => `${c.host}/${c.disk}`).sort(),
    );
    assert.deepEqual([...records.vms.keys()], []);
    assert.deepEqual(
      records.malformed.map((record) => record.key).sort(),
      forged
        .map(([key]) => key)
        .filter((key) => !key.startsWith(keys.events()))
        .sort(),
    );

    for (const agent of cluster.agents) {
      const log = readFileSync(agent.log, "utf8");
      for (const [key] of forged.slice(0, 4)) {
        const lines = log
          .split("\n")
          .filter((line) => line.includes("ignoring a malformed record") && line.includes(key));
        assert.equal(lines.length, 1, `${agent.name} logs ${key} once, not every round:\n${lines.join("\n")}`);
      }
      assert.doesNotMatch(log, /volume \.\.\/\.\.\/escape/, `${agent.name} never acted on the forged volume`);
    }
    const newEvents = (await readEvents(etcd)).slice(eventsBefore);
    assert.deepEqual(
      newEvents.filter((stored) => JSON.stringify(stored.event).includes("escape")),
      [],
      "no event about the forged volume",
    );
    assert.deepEqual(
      allPaths(dir.path).filter((path) => path.includes("escape")),
      [],
      "nothing named after the forged volume on any disk",
    );

    // The real volume is still served, both copies in sync.
    const copies = records.replicas.get(VOLUME)!;
    assert.ok(
      [...copies.values()].every((copy) => copy.state === "in-sync"),
      JSON.stringify([...copies]),
    );
    assert.ok(records.liveHosts.has("h1") && records.liveHosts.has("h2"));

    // The CLI's readers skip the forged records and count them.
    const status = await haven("status");
    assert.equal(status.code, 0, status.stderr);
    assert.match(status.stderr, /haven: 4 records ignored as malformed \(first: /);
    assert.match(status.stdout, new RegExp(VOLUME));
    assert.doesNotMatch(status.stdout, /escape/);
    const list = await haven("volume", "list", "--json");
    assert.equal(list.code, 0, list.stderr);
    assert.deepEqual(
      (JSON.parse(list.stdout) as { name: string }[]).map((volume) => volume.name),
      [VOLUME],
    );
    const events = await haven("events", "--limit", "1000");
    assert.equal(events.code, 0, events.stderr);
    assert.match(events.stderr, /haven: 1 event ignored as malformed \(first: .*host "h1\\u000ah2" is not a host/);
    assert.doesNotMatch(events.stdout, /a forged event/);
  });

  test("a forged key rewritten is logged once more; deleted, it is forgotten", async () => {
    const key = `${keys.volumes()}../../escape`;
    const logLines = (agent: { log: string }): number =>
      readFileSync(agent.log, "utf8")
        .split("\n")
        .filter((line) => line.includes("ignoring a malformed record") && line.includes(key)).length;
    const before = cluster.agents.map(logLines);
    await etcd.put(key, "not JSON");
    await until("each agent to log the rewritten key", async () =>
      cluster.agents.every((agent, i) => logLines(agent) === before[i]! + 1) ? true : undefined,
    );
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    assert.deepEqual(
      cluster.agents.map(logLines),
      before.map((count) => count + 1),
    );
    for (const [prefix] of [[keys.volumes()], [keys.primaries()], [keys.replicas()], [keys.vms()], [keys.events()]])
      for (const kv of await etcd.getPrefix(prefix!))
        if (kv.key.includes("..") || kv.key.includes("forged")) await etcd.delete(kv.key);
    const status = await haven("status");
    assert.equal(status.code, 0, status.stderr);
    assert.doesNotMatch(status.stderr, /ignored as malformed/);
  });
});
