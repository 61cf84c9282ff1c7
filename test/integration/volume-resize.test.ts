// `haven volume resize` on a real local cluster: a volume with a local mirror on h1 and a copy on h2
// grows from 64 MiB to 96 MiB while a writer runs over NBD; the old data is intact on every copy, every
// copy's file is the new size, the new space reads and writes through NBD, and after a switchover h2
// serves the full new size with the data. Shrinking, the same size, an unknown volume and malformed
// sizes are refused with the reason, and change nothing.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { alive, clusterUp, localClusterClient, type LocalClusterState } from "../../src/cluster/local-cluster.js";
import type { EtcdClient } from "../../src/cluster/etcd-client.js";
import { readClusterRecords } from "../../src/cluster/cluster-read.js";
import { copyId, type VolumeSpec } from "../../src/cluster/schema.js";
import { parseReplicaMetadata } from "../../src/replica/replica-store.js";
import { MetadataStore } from "../../src/replica/metadata-store.js";
import { FileMetadataFile } from "../../src/replica/metadata-file.js";
import { haveEtcd } from "../helpers/etcd.js";
import { haveTool, run, tempDir } from "../helpers/server-process.js";
import {
  ClusterAgents,
  etcdArgs,
  freeBasePort,
  stopLocalCluster,
  until,
  TEST_TIMINGS,
  VolumeProbe,
} from "../helpers/cluster.js";

const skip = !haveEtcd() || !haveTool("qemu-io") || !haveTool("nbdinfo") ? "needs etcd, qemu-io and nbdinfo" : false;
const MiB = 1024 * 1024;
const BLOCK = 64 * 1024;

describe("volume resize", { skip, timeout: 300_000 }, () => {
  const dir = tempDir("haven-resize-");
  let cluster: LocalClusterState;
  let etcd: EtcdClient;
  let basePort: number;
  const writers: ChildProcess[] = [];
  const haven = (args: string[]) =>
    run(process.execPath, ["bin/haven.js", ...args, ...etcdArgs(cluster)], { timeoutMs: 120_000 });
  const agents = new ClusterAgents(() => cluster);
  const copyDir = (copy: { host: string; disk: string }, volume = "grow") =>
    join(dir.path, "cluster", "hosts", copy.host, copy.disk, volume);
  const spec = async (volume: string): Promise<VolumeSpec | undefined> =>
    (await readClusterRecords(etcd)).volumes.get(volume);
  const allInSync = async (volume: string): Promise<true | undefined> => {
    const records = await readClusterRecords(etcd);
    const found = records.volumes.get(volume);
    const recorded = records.replicas.get(volume);
    return found !== undefined && found.replicas.every((copy) => recorded?.get(copyId(copy))?.state === "in-sync")
      ? true
      : undefined;
  };
  const exportSize = async (uri: string): Promise<number | undefined> => {
    const info = await run("nbdinfo", ["--size", uri], { timeoutMs: 10_000 });
    return info.code === 0 ? Number(info.stdout.trim()) : undefined;
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
    for (const writer of writers) if (writer.exitCode === null && writer.pid !== undefined) process.kill(writer.pid);
    agents.killRestarted();
    await stopLocalCluster(join(dir.path, "cluster"));
    dir.remove();
  });

  test("every copy grows before the new size is served; old data stays, new space works, a switchover keeps both", async (t) => {
    const created = await haven(["volume", "create", "grow", "--size", "64M", "--copies", "h1:d0,h1:d1,h2:d0"]);
    assert.equal(created.code, 0, created.stderr);
    const probe = new VolumeProbe(etcd, "grow", basePort);
    assert.ok(await probe.qemuIo("h1", "write -P 0x5a 0 8M"));
    assert.ok(await probe.qemuIo("h1", "write -P 0x3c 60M 4M"));

    // A writer over NBD across the resize: it reconnects when the engine restarts at the new size.
    const stopFile = join(dir.path, "stop-writer");
    const writer = spawn(
      "/usr/bin/python3",
      ["test/helpers/nbd_writer.py", probe.uri("h1"), String(16 * MiB), String(16 * MiB), stopFile],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    writers.push(writer);
    let written = "";
    writer.stdout!.on("data", (chunk: Buffer) => (written += chunk.toString()));
    let writerErrors = "";
    writer.stderr!.on("data", (chunk: Buffer) => (writerErrors += chunk.toString()));
    const writerDone = new Promise<number | null>((resolve) => writer.on("close", resolve));

    const resized = await haven(["volume", "resize", "grow", "--size", "96M"]);
    assert.equal(resized.code, 0, resized.stderr);
    assert.match(resized.stdout, /volume grow grows from 64\.0 MiB to 96\.0 MiB/);
    assert.match(resized.stdout, /served at 96\.0 MiB \(was 64\.0 MiB\)/);
    writeFileSync(stopFile, "");
    assert.equal(await writerDone, 0, `the writer failed: ${writerErrors}`);
    const [acked, longestGapMs] = written.trim().split(" ").map(Number) as [number, number];
    assert.ok(acked > 0, "the writer wrote across the resize");
    t.diagnostic(`the writer's longest wait for an acknowledgement across the resize: ${longestGapMs} ms`);

    assert.equal((await spec("grow"))?.sizeBytes, 96 * MiB);
    assert.equal(await exportSize(probe.uri("h1")), 96 * MiB);
    // Old data, and every write the writer saw acknowledged, read back through the new engine.
    assert.ok(await probe.qemuIo("h1", "read -P 0x5a 0 8M"));
    assert.ok(await probe.qemuIo("h1", "read -P 0x3c 60M 4M"));
    for (let block = 0; block < acked; block += Math.max(1, Math.floor(acked / 16)))
      assert.ok(
        await probe.qemuIo("h1", `read -P ${(block % 251) + 1} ${16 * MiB + block * BLOCK} ${BLOCK}`),
        `acknowledged block ${block} is intact`,
      );
    // The new space: zeroes at first, then writable end to end.
    assert.ok(await probe.qemuIo("h1", "read -P 0 64M 32M"));
    assert.ok(await probe.qemuIo("h1", "write -P 0x77 88M 8M"));
    assert.ok(await probe.qemuIo("h1", "read -P 0x77 88M 8M"));
    // Past the new end is still refused.
    assert.equal(await probe.qemuIo("h1", "read 96M 4k"), false);

    await until("every copy in sync", () => allInSync("grow"));
    for (const copy of (await spec("grow"))!.replicas) {
      const data = join(copyDir(copy), "data.raw");
      assert.equal(statSync(data).size, 96 * MiB, `${copyId(copy)}'s data file grew`);
      const bytes = readFileSync(data);
      assert.ok(
        bytes.subarray(0, 8 * MiB).every((b) => b === 0x5a),
        `${copyId(copy)} keeps the old data`,
      );
      assert.ok(
        bytes.subarray(60 * MiB, 64 * MiB).every((b) => b === 0x3c),
        `${copyId(copy)} keeps the old end`,
      );
      assert.ok(
        bytes.subarray(88 * MiB, 96 * MiB).every((b) => b === 0x77),
        `${copyId(copy)} has the new write`,
      );
    }
    // Every copy's metadata says the new size (read while the copies are open: the file is not locked for reading).
    for (const copy of (await spec("grow"))!.replicas) {
      const file = await FileMetadataFile.open(join(copyDir(copy), "meta"));
      try {
        const store = await MetadataStore.open(file, parseReplicaMetadata);
        assert.equal(store.current?.value.sizeBytes, 96 * MiB, `${copyId(copy)}'s metadata grew`);
      } finally {
        await file.close();
      }
    }

    const moved = await haven(["volume", "switchover", "grow", "--to", "h2"]);
    assert.equal(moved.code, 0, moved.stderr);
    assert.equal(await until("h2 serves the volume", () => exportSize(probe.uri("h2"))), 96 * MiB);
    assert.ok(await probe.qemuIo("h2", "read -P 0x5a 0 8M"));
    assert.ok(await probe.qemuIo("h2", "read -P 0x3c 60M 4M"));
    assert.ok(await probe.qemuIo("h2", "read -P 0x77 88M 8M"));
    assert.ok(await probe.qemuIo("h2", "write -P 0x11 95M 1M"));
    assert.ok(await probe.qemuIo("h2", "read -P 0x11 95M 1M"));
  });

  test("shrinking, the same size, an unknown volume and malformed sizes are refused and change nothing", async () => {
    const before = await spec("grow");
    assert.equal(before?.sizeBytes, 96 * MiB);
    const shrink = await haven(["volume", "resize", "grow", "--size", "32M"]);
    assert.equal(shrink.code, 2, shrink.stderr);
    assert.match(shrink.stderr, /never shrinks .*destroy the data/);
    assert.match(shrink.stderr, /haven volume create NAME --size 33554432/);
    const same = await haven(["volume", "resize", "grow", "--size", "96M"]);
    assert.equal(same.code, 2, same.stderr);
    assert.match(same.stderr, /is 96\.0 MiB already: nothing to do/);
    const unknown = await haven(["volume", "resize", "nope", "--size", "1G"]);
    assert.equal(unknown.code, 3, unknown.stderr);
    assert.match(unknown.stderr, /no volume "nope"/);
    const malformed = await haven(["volume", "resize", "grow", "--size", "12Q"]);
    assert.equal(malformed.code, 2, malformed.stderr);
    assert.match(malformed.stderr, /"12Q" is not a size/);
    const unaligned = await haven(["volume", "resize", "grow", "--size", "100000001"]);
    assert.equal(unaligned.code, 2, unaligned.stderr);
    assert.match(unaligned.stderr, /not a multiple of 4096/);
    const missing = await haven(["volume", "resize", "grow"]);
    assert.equal(missing.code, 2, missing.stderr);
    assert.match(missing.stderr, /--size is required/);
    assert.deepEqual(await spec("grow"), before);
  });

  /** Kills host's agent (and with it its replica server) by pid, and waits until it is gone. */
  const killAgent = async (host: string): Promise<void> => {
    const pid = agents.pid(host);
    process.kill(pid, "SIGKILL");
    await until(`${host}'s agent gone`, async () => (alive(pid) ? undefined : true));
  };
  const fileOf = (host: string, volume: string) => join(copyDir({ host, disk: "d0" }, volume), "data.raw");

  test("a copy on a host that is down grows before it rejoins, and then holds the volume's data", async () => {
    const created = await haven(["volume", "create", "away", "--size", "64M", "--copies", "h1:d0,h2:d0"]);
    assert.equal(created.code, 0, created.stderr);
    const probe = new VolumeProbe(etcd, "away", basePort);
    assert.ok(await probe.qemuIo("h1", "write -P 0x5a 0 4M"));
    await until("both copies in sync", () => allInSync("away"));
    await killAgent("h2");

    const resized = await haven(["volume", "resize", "away", "--size", "96M"]);
    assert.equal(resized.code, 0, resized.stderr);
    assert.match(resized.stdout, /the copies on h2 \(down\) grow when their host returns|served at 96\.0 MiB/);
    assert.equal(await exportSize(probe.uri("h1")), 96 * MiB);
    assert.ok(await probe.qemuIo("h1", "write -P 0x66 90M 4M"));
    assert.equal((await probe.replica("h2"))?.state, "out-of-sync");
    assert.equal(statSync(fileOf("h2", "away")).size, 64 * MiB, "h2's copy has not grown while its host was down");

    agents.restart("h2");
    await until("h2's copy grown and back in sync", () => allInSync("away"), 60_000);
    const data = readFileSync(fileOf("h2", "away"));
    assert.equal(data.length, 96 * MiB);
    assert.ok(
      data.subarray(0, 4 * MiB).every((b) => b === 0x5a),
      "h2 keeps the old data",
    );
    assert.ok(
      data.subarray(90 * MiB, 94 * MiB).every((b) => b === 0x66),
      "h2 has the write to the new space",
    );
  });

  test("the primary dies after the new size is recorded, before its engine grew: the standby takes over at the new size", async () => {
    const created = await haven(["volume", "create", "crash", "--size", "64M", "--copies", "h1:d0,h2:d0"]);
    assert.equal(created.code, 0, created.stderr);
    const probe = new VolumeProbe(etcd, "crash", basePort);
    assert.equal((await probe.primary())?.host, "h1");
    assert.ok(await probe.qemuIo("h1", "write -P 0x5a 0 4M"));
    await until("both copies in sync", () => allInSync("crash"));
    await killAgent("h1");

    // The new size is on record; no engine has grown anything yet (the primary is dead).
    const resized = await haven(["volume", "resize", "crash", "--size", "96M", "--no-wait"]);
    assert.equal(resized.code, 0, resized.stderr);
    assert.equal(statSync(fileOf("h2", "crash")).size, 64 * MiB);
    await until("h2 promoted", async () => ((await probe.primary())?.host === "h2" ? true : undefined), 60_000);
    assert.equal(await until("h2 serves", () => exportSize(probe.uri("h2"))), 96 * MiB);
    assert.equal(statSync(fileOf("h2", "crash")).size, 96 * MiB);
    assert.ok(await probe.qemuIo("h2", "read -P 0x5a 0 4M"));
    assert.ok(await probe.qemuIo("h2", "write -P 0x66 90M 4M"));

    agents.restart("h1");
    await until("h1's copy grown and back in sync", () => allInSync("crash"), 60_000);
    const data = readFileSync(fileOf("h1", "crash"));
    assert.equal(data.length, 96 * MiB);
    assert.ok(
      data.subarray(0, 4 * MiB).every((b) => b === 0x5a),
      "h1 keeps the old data",
    );
    assert.ok(
      data.subarray(90 * MiB, 94 * MiB).every((b) => b === 0x66),
      "h1 has the write to the new space",
    );
  });
});
