// The disk procedures with real agents, real etcd and real block devices (loop devices on files,
// formatted and mounted by Haven): `disk add` and its refusals (data on the device, another cluster's
// label, the same disk twice, a file that is not a disk, a --wipe that names another disk), `disk list`
// against du and df, `disk remove` refused while a disk holds copies, `disk replace` under fio
// write+verify load, a disk that fails (remounted read-only) faulting only its copies while the volume
// carries on and a hot spare taking them over by itself, and `disk evacuate` with nowhere to go.
// Every loop device and mount the test makes is released in `after`, pass or fail.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { closeSync, mkdirSync, openSync, readSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { clusterUp, localClusterClient, type LocalClusterState } from "../../src/cluster/local-cluster.js";
import type { EtcdClient } from "../../src/cluster/etcd-client.js";
import { readClusterRecords, readEvents } from "../../src/cluster/cluster-read.js";
import { copyId } from "../../src/cluster/schema.js";
import type { DiskView } from "../../src/cluster/cluster-view.js";
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

const root = process.getuid?.() === 0;
const skip =
  !root || !haveEtcd() || !haveTool("fio") || !haveTool("losetup") || !haveTool("mkfs.ext4") || !haveTool("nbdfuse")
    ? "needs root, etcd, fio, losetup, mkfs.ext4 and nbdfuse"
    : false;

const MiB = 1024 * 1024;

describe("disk procedures on loop devices", { skip, timeout: 600_000 }, () => {
  const dir = tempDir("haven-diskproc-");
  const loops: string[] = [];
  const cleanups: (() => Promise<void>)[] = [];
  let cluster: LocalClusterState;
  let etcd: EtcdClient;
  let basePort: number;
  const clusterDir = () => join(dir.path, "cluster");
  const haven = (args: string[]) =>
    run(process.execPath, ["bin/haven.js", ...args, ...etcdArgs(cluster)], { timeoutMs: 300_000 });
  const disks = async (): Promise<DiskView[]> => {
    const listed = await haven(["disk", "list", "--json"]);
    assert.equal(listed.code, 0, listed.stderr);
    return JSON.parse(listed.stdout) as DiskView[];
  };
  const diskNamed = async (host: string, disk: string): Promise<DiskView | undefined> =>
    (await disks()).find((entry) => entry.host === host && entry.disk === disk);
  const states = async (volume: string): Promise<Record<string, string>> => {
    const records = await readClusterRecords(etcd);
    return Object.fromEntries([...(records.replicas.get(volume) ?? new Map())].map(([id, r]) => [id, r.state]));
  };
  const placed = async (volume: string): Promise<string[]> =>
    (await readClusterRecords(etcd)).volumes.get(volume)?.replicas.map(copyId) ?? [];
  const newLoop = async (name: string, bytes: number): Promise<string> => {
    const file = join(dir.path, name);
    const made = await run("truncate", ["-s", String(bytes), file]);
    assert.equal(made.code, 0, made.stderr);
    const attached = await run("losetup", ["--find", "--show", file]);
    assert.equal(attached.code, 0, attached.stderr);
    const device = attached.stdout.trim();
    loops.push(device);
    return device;
  };

  before(async () => {
    basePort = await freeBasePort();
    cluster = await clusterUp({ dir: clusterDir(), hosts: 2, basePort, timings: { ...TEST_TIMINGS } });
    etcd = await localClusterClient(cluster);
  });

  after(async () => {
    await stopLocalCluster(clusterDir());
    for (const device of loops) await run("losetup", ["-d", device]).catch(() => undefined);
    for (const cleanup of cleanups) await cleanup().catch(() => undefined);
    dir.remove();
  });

  test("disk list shows each host's disk with its identity, and says when disks share one filesystem", async () => {
    await until("both hosts' disks on record", async () => ((await disks()).length === 2 ? true : undefined));
    const listed = await disks();
    for (const disk of listed) {
      assert.equal(disk.state, "online", `${disk.host}/${disk.disk}: ${disk.reason}`);
      assert.ok(disk.identity !== null && disk.sizeBytes > 0);
      assert.deepEqual(disk.sharesFilesystemWith, [disk.host === "h1" ? "h2/disk0" : "h1/disk0"]);
    }
    const text = await haven(["disk", "list"]);
    assert.match(text.stdout, /one filesystem, one free space: h1\/disk0, h2\/disk0/);
  });

  test("disk add formats and mounts a block device, and refuses data, the same disk twice, non-disks and a wrong --wipe", async () => {
    const first = await newLoop("a.img", 256 * MiB);
    const added = await haven(["disk", "add", "h1", first]);
    assert.equal(added.code, 0, added.stderr);
    assert.match(
      added.stdout,
      new RegExp(`disk disk1 \\(path ${dir.path}/a\\.img\\) added at .*/hosts/h1/disks/disk1 \\(on ${first}\\)`),
    );
    const mounted = await run("findmnt", ["-n", "-o", "SOURCE", join(clusterDir(), "hosts", "h1", "disks", "disk1")]);
    assert.equal(mounted.stdout.trim(), first);
    await until("h1/disk1 online", async () =>
      (await diskNamed("h1", "disk1"))?.state === "online" ? true : undefined,
    );

    const twice = await haven(["disk", "add", "h1", first]);
    assert.equal(twice.code, 1);
    assert.match(twice.stderr, /is disk disk1 of this host already/);

    const dirty = await newLoop("b.img", 256 * MiB);
    const fd = openSync(dirty, "w");
    writeSync(fd, Buffer.alloc(4096, 0xab), 0, 4096, 8192);
    closeSync(fd);
    const refused = await haven(["disk", "add", "h1", dirty]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, new RegExp(`--wipe ${dir.path}/b\\.img`));
    const wrong = await haven(["disk", "add", "h1", dirty, "--wipe", "S3Z1NB0K123456"]);
    assert.equal(wrong.code, 1);
    assert.match(wrong.stderr, /--wipe S3Z1NB0K123456 does not match the disk/);
    const sample = Buffer.alloc(4096);
    const check = openSync(dirty, "r");
    readSync(check, sample, 0, 4096, 8192);
    closeSync(check);
    assert.ok(
      sample.every((byte) => byte === 0xab),
      "the refused device is untouched",
    );

    const file = join(dir.path, "plain-file");
    closeSync(openSync(file, "w"));
    const notDisk = await haven(["disk", "add", "h1", file]);
    assert.equal(notDisk.code, 1);
    assert.match(notDisk.stderr, /plain-file/);

    // With its identity repeated, the data goes: a spare.
    const spare = await haven(["disk", "add", "h1", dirty, "--wipe", `${dir.path}/b.img`, "--spare"]);
    assert.equal(spare.code, 0, spare.stderr);
    assert.match(spare.stdout, /spare disk disk2/);
  });

  test("another cluster's disk is refused by its label", async () => {
    const foreign = await newLoop("c.img", 128 * MiB);
    assert.equal((await run("mkfs.ext4", ["-q", "-F", foreign])).code, 0);
    const mountPoint = join(dir.path, "foreign-mnt");
    await run("mkdir", ["-p", mountPoint]);
    assert.equal((await run("mount", [foreign, mountPoint])).code, 0);
    const label = {
      format: 1,
      cluster: "0123456789abcdef",
      host: "elsewhere",
      disk: "disk7",
      identity: { kind: "serial", value: "OTHER-1" },
      sizeBytes: 128 * MiB,
      createdAt: new Date().toISOString(),
    };
    writeFileSync(join(mountPoint, ".haven-disk.json"), JSON.stringify(label));
    assert.equal((await run("umount", [mountPoint])).code, 0);
    const refused = await haven(["disk", "add", "h2", foreign]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /holds disk disk7 of host elsewhere in cluster 0123456789abcdef/);
  });

  test("a volume on a loop device: remove refused while it holds a copy; replace under fio load; du and df agree", async () => {
    const created = await haven(["volume", "create", "data", "--size", "64M", "--copies", "h1:disk1,h2:disk0"]);
    assert.equal(created.code, 0, created.stderr);
    const probe = new VolumeProbe(etcd, "data", basePort);
    const refused = await haven(["disk", "remove", "h1", "disk1"]);
    assert.equal(refused.code, 1);
    assert.match(
      refused.stderr,
      /holds copies of data: nothing was changed\. Move them first: haven disk evacuate h1 disk1/,
    );

    const fio = fioWriteVerify(probe.uri("h1"), "data", 3);
    const replaced = await haven(["disk", "replace", "h1", "disk1", "disk2", "--wait-timeout", "240"]);
    assert.equal(replaced.code, 0, replaced.stderr);
    assert.match(replaced.stdout, /\[1\/1\] data: h1\/disk1 released/);
    const fioResult = await fio;
    assert.equal(fioResult.code, 0, `fio failed:\n${fioResult.stdout}\n${fioResult.stderr}`);
    assert.deepEqual(await placed("data"), ["h2/disk0", "h1/disk2"]);
    assert.deepEqual(await states("data"), { "h1/disk2": "in-sync", "h2/disk0": "in-sync" });

    // A replacement too small, or the disk itself, is refused before anything changes.
    const tiny = await newLoop("tiny.img", 32 * MiB);
    assert.equal((await haven(["disk", "add", "h1", tiny, "--name", "tiny"])).code, 0);
    await until("h1/tiny on record", async () =>
      (await diskNamed("h1", "tiny"))?.state === "online" ? true : undefined,
    );
    const small = await haven(["disk", "replace", "h1", "disk2", "tiny"]);
    assert.equal(small.code, 1);
    assert.match(
      small.stderr,
      /disk h1\/tiny cannot replace disk2: it has .* free, and the copies on disk2 need 64\.0 MiB; nothing was changed/,
    );
    const itself = await haven(["disk", "replace", "h1", "disk2", "disk2"]);
    assert.equal(itself.code, 1);
    assert.match(itself.stderr, /it is the same disk/);
    assert.deepEqual(await placed("data"), ["h2/disk0", "h1/disk2"]);
    assert.equal((await haven(["disk", "remove", "h1", "tiny"])).code, 0);

    const removed = await haven(["disk", "remove", "h1", "disk1"]);
    assert.equal(removed.code, 0, removed.stderr);
    assert.match(removed.stdout, /disk disk1 \(path .*a\.img\) removed from h1/);
    const still = await run("findmnt", ["-n", join(clusterDir(), "hosts", "h1", "disks", "disk1")]);
    assert.notEqual(still.code, 0, "disk1 is unmounted");

    // disk list against du and df, once the record is newer than the last write.
    const since = Date.now();
    const fresh = await until(
      "a fresh record of h1/disk2",
      async () => {
        const disk = await diskNamed("h1", "disk2");
        return disk !== undefined && Date.parse(disk.updatedAt ?? "") > since ? disk : undefined;
      },
      30_000,
    );
    const mount = join(clusterDir(), "hosts", "h1", "disks", "disk2");
    const du = Number((await run("du", ["-s", "--block-size=1", join(mount, "data")])).stdout.split(/\s/)[0]);
    const df = (await run("df", ["--block-size=1", "--output=size,avail", mount])).stdout.trim().split("\n")[1]!;
    const [size, avail] = df.trim().split(/\s+/).map(Number) as [number, number];
    assert.equal(fresh.sizeBytes, size);
    assert.equal(fresh.havenBytes, du, "Haven's bytes on the disk are du's");
    assert.ok(Math.abs(fresh.freeBytes - avail) <= 1 * MiB, `free ${fresh.freeBytes} vs df ${avail}`);
  });

  test("a local mirror's disk that starts failing I/O faults only its copy; the volume carries on and the hot spare takes the copy over", async () => {
    // A disk that fails on command: nbdkit's error filter (EIO while the trigger file exists) behind
    // nbdfuse gives a file, and a loop device on it is the block device Haven formats and mounts.
    const fuseDir = join(dir.path, "fuse");
    mkdirSync(fuseDir, { recursive: true });
    const trigger = join(dir.path, "fail-now");
    const backing = join(dir.path, "faulty.img");
    assert.equal((await run("truncate", ["-s", String(256 * MiB), backing])).code, 0);
    const fuse = spawn(
      "nbdfuse",
      [
        join(fuseDir, "disk"),
        "--command",
        "nbdkit",
        "-s",
        "--filter=error",
        "file",
        backing,
        "error-rate=100%",
        `error-file=${trigger}`,
        "error=EIO",
      ],
      { stdio: "ignore", detached: true },
    );
    cleanups.push(async () => {
      await run("umount", ["-l", fuseDir]).catch(() => undefined);
      if (fuse.pid !== undefined && fuse.exitCode === null) process.kill(-fuse.pid, "SIGTERM");
    });
    await until("the nbdfuse file", async () =>
      (await run("test", ["-s", join(fuseDir, "disk")])).code === 0 ? true : undefined,
    );
    const attached = await run("losetup", ["--find", "--show", join(fuseDir, "disk")]);
    assert.equal(attached.code, 0, attached.stderr);
    const faulty = attached.stdout.trim();
    loops.unshift(faulty); // detached before the fuse file goes
    assert.equal((await haven(["disk", "add", "h1", faulty, "--name", "faulty"])).code, 0);
    const hot = await newLoop("hot.img", 256 * MiB);
    const spare = await haven(["disk", "add", "h1", hot, "--spare", "--name", "hot"]);
    assert.equal(spare.code, 0, spare.stderr);
    await until("the spare on record", async () => ((await diskNamed("h1", "hot"))?.spare ? true : undefined));

    // The volume becomes a local mirror on h1 (disk2 and the faulty disk) beside its copy on h2.
    const added = await haven([
      "volume",
      "add-copy",
      "data",
      "--host",
      "h1",
      "--disk",
      "faulty",
      "--wait-timeout",
      "120",
    ]);
    assert.equal(added.code, 0, added.stderr);
    assert.deepEqual(await placed("data"), ["h2/disk0", "h1/disk2", "h1/faulty"]);

    const probe = new VolumeProbe(etcd, "data", basePort);
    const fio = fioWriteVerify(probe.uri("h1"), "data2", 4);
    writeFileSync(trigger, "");
    await until(
      "the copy moved off the failed disk onto the spare",
      async () => {
        const where = await placed("data");
        return where.includes("h1/hot") && !where.includes("h1/faulty") && where.includes("h1/disk2")
          ? true
          : undefined;
      },
      120_000,
    );
    await until(
      "the spare's copy in sync",
      async () => ((await states("data"))["h1/hot"] === "in-sync" ? true : undefined),
      180_000,
    );
    const fioResult = await fio;
    assert.equal(fioResult.code, 0, `fio saw an error:\n${fioResult.stdout}\n${fioResult.stderr}`);
    assert.equal((await diskNamed("h1", "faulty"))?.state, "failed");
    const events = (await readEvents(etcd)).map(({ event }) => event);
    assert.ok(events.some((event) => event.kind === "copy-moved" && /h1\/faulty moves to h1\/hot/.test(event.message)));
    rmSync(trigger);
  });

  test("evacuating a disk with nowhere to go is refused and changes nothing", async () => {
    // h2 has no other disk; on h1, disk0 holds the volume's other copy and the loop devices are too small.
    const created = await haven(["volume", "create", "wide", "--size", "512M", "--copies", "h1:disk0,h2:disk0"]);
    assert.equal(created.code, 0, created.stderr);
    const before = await placed("wide");
    const moved = await haven(["disk", "evacuate", "h2", "disk0"]);
    assert.equal(moved.code, 1, moved.stdout);
    assert.match(moved.stderr, /nowhere to move a copy off h2\/disk0, so nothing was changed/);
    assert.match(moved.stderr, /wide: /);
    assert.deepEqual(await placed("wide"), before);
  });
});
