// A host's disks as its agent finds them (src/agent/disk-registry.ts), over a real etcd and real
// directories: a configured disk is labelled at start; disks found by a pattern are known by their
// labels, so the same disks found in another order (or in other slots) keep their ids and no disk is
// "first"; an unlabelled one is listed as new and takes no copy; another cluster's is foreign and never
// written to; a record's usage is the filesystem's and the copies'.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { DiskRegistry } from "../../src/agent/disk-registry.js";
import { parseAgentConfig, type AgentConfig } from "../../src/agent/config.js";
import type { DiskInfoSource } from "../../src/agent/world.js";
import { diskKeys, parseDiskRecord, type DiskRecord } from "../../src/cluster/disk-schema.js";
import type { EtcdClient } from "../../src/cluster/etcd-client.js";
import { identifyPath } from "../../src/disk/disk-identity.js";
import { readDiskLabel, writeDiskLabel } from "../../src/disk/disk-label.js";
import { diskUsage } from "../../src/disk/disk-usage.js";
import { expandDiskPaths } from "../../src/disk/disk-scan.js";
import { isReadOnlyMount } from "../../src/disk/disk-format.js";
import { haveEtcd, startTestEtcd, type TestEtcd } from "../helpers/etcd.js";
import { run, tempDir } from "../helpers/server-process.js";

const skip = haveEtcd() ? false : "needs etcd";

/** The real disk layer, minus what needs a block device (this test has directories only). */
const source: DiskInfoSource = {
  identify: (path) => identifyPath(path),
  expand: (patterns) => expandDiskPaths(patterns),
  readLabel: (root) => readDiskLabel(root),
  writeLabel: (root, label) => writeDiskLabel(root, label),
  usage: (root, dirs) => diskUsage(root, dirs),
  readOnly: (path) => isReadOnlyMount(path),
  filesystemId: (path) => `dev-${statSync(path).dev}`,
  inspect: () => Promise.reject(new Error("not used here")),
  format: () => Promise.reject(new Error("not used here")),
  mount: () => Promise.reject(new Error("not used here")),
  unmount: () => Promise.reject(new Error("not used here")),
  mountedDevice: () => Promise.resolve(undefined),
  locate: () => Promise.resolve({ supported: false, detail: "not here" }),
};

describe("a host's disk registry", { skip, timeout: 60_000 }, () => {
  const dir = tempDir("haven-registry-");
  let etcd: TestEtcd;
  let client: EtcdClient;
  const events: string[] = [];

  const config = (disks: { name: string; path: string }[], diskPaths?: string[]): AgentConfig =>
    parseAgentConfig(
      JSON.stringify({
        host: { name: "h1", address: "127.0.0.1" },
        etcd: { endpoints: [etcd.endpoint] },
        api: { listen: "127.0.0.1:1", tokenFile: "/dev/null" },
        replication: { listen: "127.0.0.1:2", secretFile: "/dev/null" },
        nbd: { listen: "127.0.0.1:3" },
        disks,
        stateDir: join(dir.path, "state"),
        ...(diskPaths && { diskPaths }),
      }),
      "test config",
    );
  const registry = (agentConfig: AgentConfig): DiskRegistry =>
    new DiskRegistry({
      config: agentConfig,
      store: client,
      events: {
        event: async (kind: string, message: string) => void events.push(`${kind}: ${message}`),
        note: (kind: string, message: string) => void events.push(`${kind}: ${message}`),
      } as never,
      wallTime: () => new Date(),
      now: () => Date.now(),
      log: () => undefined,
      source,
      onMovedHere: () => Promise.resolve(),
    });
  const records = async (): Promise<DiskRecord[]> =>
    (await client.getPrefix(diskKeys.disksOf("h1"))).map((kv) => parseDiskRecord(kv.value, kv.key));

  before(async () => {
    etcd = await startTestEtcd();
    client = etcd.client();
  });
  after(async () => {
    await etcd.stop();
    dir.remove();
  });

  test("a configured disk is labelled at start and recorded with du's and df's numbers", async () => {
    const path = join(dir.path, "cfg0");
    mkdirSync(join(path, "vol"), { recursive: true });
    writeFileSync(join(path, "vol", "data.raw"), Buffer.alloc(1 << 20, 7));
    const disks = registry(config([{ name: "cfg0", path }]));
    await disks.start();
    const label = JSON.parse(readFileSync(join(path, ".haven-disk.json"), "utf8")) as { host: string; disk: string };
    assert.deepEqual([label.host, label.disk], ["h1", "cfg0"]);
    assert.ok(events.some((event) => event.startsWith("disk-labelled: disk cfg0")));
    await disks.publish(
      () => true,
      () => ["vol"],
    );
    const [record] = await records();
    assert.equal(record?.state, "online", record?.reason);
    assert.equal(record?.copies[0]?.volume, "vol");
    const du = await run("du", ["-s", "--block-size=1", join(path, "vol")]);
    assert.equal(record?.copies[0]?.allocatedBytes, Number(du.stdout.split(/\s/)[0]), "the copy's bytes are du's");
    const df = (await run("df", ["--block-size=1", "--output=size", path])).stdout.trim().split("\n")[1];
    assert.equal(record?.sizeBytes, Number(df), "the disk's size is df's");
    assert.deepEqual(
      disks.list().map((disk) => disk.name),
      ["cfg0"],
    );
    // Its probe fails: failed, with an event; it passes again: failing, still used.
    await disks.publish(
      () => false,
      () => ["vol"],
    );
    assert.equal((await records())[0]?.state, "failed");
    assert.ok(events.some((event) => /^disk-state: disk cfg0 .* is failed: its probe write failed/.test(event)));
    await disks.publish(
      () => true,
      () => ["vol"],
    );
    const after = (await records())[0];
    assert.equal(after?.state, "failing");
    assert.match(after?.reason ?? "", /replace it soon/);
    assert.deepEqual(
      disks.list().map((disk) => disk.name),
      ["cfg0"],
    );
  });

  test("disks found by a pattern are known by their labels, in any order; unlabelled ones are new, others' foreign", async () => {
    const slots = join(dir.path, "slots");
    for (const slot of ["a", "b", "c", "d"]) mkdirSync(join(slots, slot), { recursive: true });
    const cluster = JSON.parse((await client.get(diskKeys.cluster()))!.value) as { id: string };
    const label = (disk: string, clusterId = cluster.id, host = "h1") => ({
      format: 1 as const,
      cluster: clusterId,
      host,
      disk,
      identity: { kind: "path" as const, value: disk },
      sizeBytes: 1,
      createdAt: new Date().toISOString(),
    });
    await writeDiskLabel(join(slots, "a"), label("data1"));
    await writeDiskLabel(join(slots, "b"), label("data2"));
    await writeDiskLabel(join(slots, "c"), label("theirs", "ffffffffffffffff", "elsewhere"));
    const first = registry(config([], [`${slots}/*`]));
    await first.start();
    assert.deepEqual(
      first.list().map((disk) => `${disk.name}=${disk.path.slice(slots.length + 1)}`),
      ["data1=a", "data2=b"],
    );
    assert.match(first.refusal("found-c") ?? "", /belongs to host elsewhere of cluster ffffffffffffffff/);
    assert.match(first.refusal("found-d") ?? "", /has no label: add it with 'haven disk add'/);
    assert.equal(readFileSync(join(slots, "c", ".haven-disk.json"), "utf8").includes("elsewhere"), true);

    // The disks swap slots: each is still itself.
    renameSync(join(slots, "a"), join(slots, "tmp"));
    renameSync(join(slots, "b"), join(slots, "a"));
    renameSync(join(slots, "tmp"), join(slots, "b"));
    const again = registry(config([], [`${slots}/*`]));
    await again.start();
    assert.deepEqual(
      again.list().map((disk) => `${disk.name}=${disk.path.slice(slots.length + 1)}`),
      ["data2=a", "data1=b"],
    );
    await again.publish(
      () => undefined,
      () => [],
    );
    const states = Object.fromEntries((await records()).map((record) => [record.disk, record.state]));
    assert.equal(states["found-d"], "new");
    assert.equal(states["found-c"], "foreign");
    assert.equal(states.data1, "online");
  });
});
