// A host with several disks: placement names the disk for each copy (the one with the most room), and
// the agent keeps the copy exactly there, both its own engine's local copy and the copy it serves to
// the primary's engine; deleting the volume removes the copy from that disk.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { clusterUp, localClusterClient, type LocalClusterState } from "../../src/cluster/local-cluster.js";
import type { EtcdClient } from "../../src/cluster/etcd-client.js";
import { keys, parseVolumeSpec } from "../../src/cluster/schema.js";
import { haveEtcd } from "../helpers/etcd.js";
import { haveTool, run, tempDir } from "../helpers/server-process.js";
import { etcdArgs, freeBasePort, stopLocalCluster, until, TEST_TIMINGS, VolumeProbe } from "../helpers/cluster.js";

const VOLUME = "placed";
const skip = !haveEtcd() || !haveTool("qemu-io") ? "needs etcd and qemu-io" : false;

// The suite takes about 5 s; one still running after 2 minutes is hung.
describe("hosts with several disks", { skip, timeout: 120_000 }, () => {
  const dir = tempDir("haven-disks-");
  let cluster: LocalClusterState;
  let etcd: EtcdClient;
  let probe: VolumeProbe;
  const haven = (args: string[]) =>
    run(process.execPath, ["bin/haven.js", ...args, ...etcdArgs(cluster)], { timeoutMs: 60_000 });
  const copyDir = (host: string, disk: string) => join(dir.path, "cluster", "hosts", host, disk, VOLUME);

  before(async () => {
    const basePort = await freeBasePort();
    cluster = await clusterUp({
      dir: join(dir.path, "cluster"),
      hosts: 2,
      basePort,
      timings: { ...TEST_TIMINGS },
      disks: [
        { name: "small", capacity: "100M" },
        { name: "big", capacity: "10G" },
      ],
    });
    etcd = await localClusterClient(cluster);
    probe = new VolumeProbe(etcd, VOLUME, basePort);
  });

  after(async () => {
    await stopLocalCluster(join(dir.path, "cluster"));
    dir.remove();
  });

  test("each copy lives on the disk placement chose, and goes from there when the volume is deleted", async () => {
    const created = await haven(["volume", "create", VOLUME, "--size", "256M", "--replicas", "2"]);
    assert.equal(created.code, 0, created.stderr);
    const kv = await etcd.get(keys.volume(VOLUME));
    const spec = parseVolumeSpec(kv!.value, kv!.key);
    assert.deepEqual(
      spec.replicas.map((replica) => replica.disk),
      ["big", "big"],
      "only the big disk has room for 256 MiB",
    );
    const primary = (await probe.primary())!.host;
    const standby = primary === "h1" ? "h2" : "h1";
    assert.ok(await probe.qemuIo(primary, "write -P 0x42 0 1M"));
    await until("both copies in sync", async () =>
      (await probe.replica(standby))?.state === "in-sync" ? true : undefined,
    );
    for (const host of ["h1", "h2"]) {
      assert.ok(existsSync(join(copyDir(host, "big"), "data.raw")), `${host}'s copy is on disk big`);
      assert.ok(!existsSync(copyDir(host, "small")), `${host} has nothing on disk small`);
    }

    const deleted = await haven(["volume", "delete", VOLUME, "--yes"]);
    assert.equal(deleted.code, 0, deleted.stderr);
    await until("both copies removed", async () =>
      ["h1", "h2"].every((host) => !existsSync(copyDir(host, "big"))) ? true : undefined,
    );
  });
});
