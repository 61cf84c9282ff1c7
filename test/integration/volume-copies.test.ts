// Copies on (host, disk) pairs, with real agents and etcd: a volume keeps two copies on one host on
// different disks (local RAID1) next to a copy on another host; a live single-copy volume becomes a
// mirror with `volume add-copy` while fio writes and verifies, then loses its first copy with
// `volume remove-copy`, and every byte of the new copy matches the volume; the refusals leave the
// volume as it was.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { clusterUp, localClusterClient, type LocalClusterState } from "../../src/cluster/local-cluster.js";
import type { EtcdClient } from "../../src/cluster/etcd-client.js";
import { readClusterRecords, readEvents } from "../../src/cluster/cluster-read.js";
import { copyId, type VolumeSpec } from "../../src/cluster/schema.js";
import { haveEtcd } from "../helpers/etcd.js";
import { haveTool, run, tempDir } from "../helpers/server-process.js";
import {
  fioWriteVerify,
  freeBasePort,
  stopLocalCluster,
  until,
  TEST_TIMINGS,
  VolumeProbe,
} from "../helpers/cluster.js";
import { etcdArgs } from "../helpers/cluster.js";

const skip = !haveEtcd() || !haveTool("fio") || !haveTool("nbdcopy") ? "needs etcd, fio and nbdcopy" : false;

describe("copies on (host, disk) pairs", { skip, timeout: 300_000 }, () => {
  const dir = tempDir("haven-copies-");
  let cluster: LocalClusterState;
  let etcd: EtcdClient;
  let basePort: number;
  const haven = (args: string[]) =>
    run(process.execPath, ["bin/haven.js", ...args, ...etcdArgs(cluster)], { timeoutMs: 120_000 });
  const copyFile = (host: string, disk: string, volume: string) =>
    join(dir.path, "cluster", "hosts", host, disk, volume, "data.raw");
  const spec = async (volume: string): Promise<VolumeSpec | undefined> =>
    (await readClusterRecords(etcd)).volumes.get(volume);
  const states = async (volume: string): Promise<Record<string, string>> => {
    const records = await readClusterRecords(etcd);
    return Object.fromEntries([...(records.replicas.get(volume) ?? new Map())].map(([id, r]) => [id, r.state]));
  };
  const allInSync = async (volume: string): Promise<true | undefined> => {
    const found = await spec(volume);
    const recorded = await states(volume);
    return found !== undefined && found.replicas.every((copy) => recorded[copyId(copy)] === "in-sync")
      ? true
      : undefined;
  };

  before(async () => {
    basePort = await freeBasePort();
    cluster = await clusterUp({
      dir: join(dir.path, "cluster"),
      hosts: 2,
      basePort,
      timings: { ...TEST_TIMINGS },
      disks: [
        { name: "d0", capacity: "2G" },
        { name: "d1", capacity: "2G" },
      ],
    });
    etcd = await localClusterClient(cluster);
  });

  after(async () => {
    await stopLocalCluster(join(dir.path, "cluster"));
    dir.remove();
  });

  test("a local mirror: two copies on one host's two disks, one on another host, all in sync", async () => {
    const created = await haven(["volume", "create", "mirror", "--size", "32M", "--copies", "h1:d0,h1:d1,h2:d0"]);
    assert.equal(created.code, 0, created.stderr);
    assert.deepEqual((await spec("mirror"))?.replicas.map(copyId), ["h1/d0", "h1/d1", "h2/d0"]);
    const probe = new VolumeProbe(etcd, "mirror", basePort);
    assert.ok(await probe.qemuIo("h1", "write -P 0x5a 1M 2M"));
    await until("the three copies in sync", () => allInSync("mirror"));
    for (const [host, disk] of [
      ["h1", "d0"],
      ["h1", "d1"],
      ["h2", "d0"],
    ] as const) {
      const data = readFileSync(copyFile(host, disk, "mirror"));
      assert.ok(
        data.subarray(1 << 20, 3 << 20).every((byte) => byte === 0x5a),
        `${host}/${disk} holds the write`,
      );
    }
    const shown = await haven(["volume", "show", "mirror"]);
    assert.match(shown.stdout, /^h1 +d0 /m);
    assert.match(shown.stdout, /^h1 +d1 /m);
    assert.match(shown.stdout, /^h2 +d0 /m);
  });

  test("two copies on one disk, an unknown disk or a host that is not live are refused, and nothing is created", async () => {
    const shared = await haven(["volume", "create", "bad1", "--size", "16M", "--copies", "h1:d0,h1:d0"]);
    assert.equal(shared.code, 2, shared.stderr);
    assert.match(shared.stderr, /two copies cannot share disk h1\/d0/);
    const unknown = await haven(["volume", "create", "bad2", "--size", "16M", "--copies", "h1:d9"]);
    assert.notEqual(unknown.code, 0);
    assert.match(unknown.stderr, /h1 has no disk d9 \(its disks: d0, d1\)/);
    const nohost = await haven(["volume", "create", "bad3", "--size", "16M", "--copies", "h7:d0"]);
    assert.notEqual(nohost.code, 0);
    assert.match(nohost.stderr, /host h7 is not a live host/);
    const both = await haven(["volume", "create", "bad4", "--size", "16M", "--copies", "h1:d0", "--replicas", "2"]);
    assert.equal(both.code, 2);
    for (const name of ["bad1", "bad2", "bad3", "bad4"])
      assert.equal(await spec(name), undefined, `${name} not created`);
  });

  test("add-copy turns a live single-copy volume into a mirror under fio write+verify; remove-copy drops the first copy", async () => {
    const created = await haven(["volume", "create", "solo", "--size", "64M", "--copies", "h1:d0"]);
    assert.equal(created.code, 0, created.stderr);
    const probe = new VolumeProbe(etcd, "solo", basePort);
    // fio writes the whole volume with checksummed blocks, then reads every block back and checks it,
    // while the copy is added and built: any I/O error or wrong block fails it.
    const fio = fioWriteVerify(probe.uri("h1"), "solo", 3);
    const added = await haven(["volume", "add-copy", "solo", "--host", "h1", "--disk", "d1", "--wait-timeout", "200"]);
    assert.equal(added.code, 0, added.stderr);
    assert.match(added.stdout, /copy added on h1\/d1/);
    assert.match(added.stderr, /solo on h1\/d1: in sync/);
    const fioResult = await fio;
    assert.equal(fioResult.code, 0, `fio failed:\n${fioResult.stdout}\n${fioResult.stderr}`);
    assert.deepEqual(await states("solo"), { "h1/d0": "in-sync", "h1/d1": "in-sync" });
    // The rebuild's start and end are events, the end with its duration and average rate.
    const progress = await until("the rebuild's events", async () => {
      const events = (await readEvents(etcd)).map(({ event }) => event).filter((event) => event.volume === "solo");
      return events.some((event) => event.kind === "resync-done") ? events : undefined;
    });
    assert.ok(
      progress.some((event) => event.kind === "resync-started" && /copy on h1\/d1 started/.test(event.message)),
    );
    assert.ok(
      progress.some(
        (event) => event.kind === "resync-done" && /h1\/d1 done: .* in [\d.]+ s, .*\/s on average/.test(event.message),
      ),
    );

    // The last in-sync copy cannot go; the other can, and the volume reads the same afterwards.
    const removed = await haven(["volume", "remove-copy", "solo", "--host", "h1", "--disk", "d0"]);
    assert.equal(removed.code, 0, removed.stderr);
    const last = await haven(["volume", "remove-copy", "solo", "--host", "h1", "--disk", "d1"]);
    assert.equal(last.code, 1);
    assert.match(last.stderr, /the copy on h1\/d1 is the last copy of volume solo recorded in sync/);
    assert.deepEqual((await spec("solo"))?.replicas.map(copyId), ["h1/d1"]);
    await until("the dropped copy's data deleted", async () =>
      (await run("test", ["-e", copyFile("h1", "d0", "solo")])).code !== 0 ? true : undefined,
    );
    const image = join(dir.path, "solo.raw");
    const copied = await run("nbdcopy", [probe.uri("h1"), image], { timeoutMs: 60_000 });
    assert.equal(copied.code, 0, copied.stderr);
    assert.ok(readFileSync(image).equals(readFileSync(copyFile("h1", "d1", "solo"))), "the new copy holds the volume");
  });

  test("add-copy refuses a disk that holds a copy of the volume, and a fifth copy", async () => {
    const twice = await haven(["volume", "add-copy", "mirror", "--host", "h1", "--disk", "d0", "--no-wait"]);
    assert.equal(twice.code, 1);
    assert.match(twice.stderr, /volume mirror has a copy on h1\/d0 already/);
    const fourth = await haven(["volume", "add-copy", "mirror", "--host", "h2", "--disk", "d1", "--no-wait"]);
    assert.equal(fourth.code, 0, fourth.stderr);
    const fifth = await haven(["volume", "add-copy", "mirror", "--no-wait"]);
    assert.equal(fifth.code, 1);
    assert.match(fifth.stderr, /volume mirror has 4 copies already/);
    await until("the fourth copy in sync", () => allInSync("mirror"));
  });
});
