// Import and export on a real local cluster (etcd, two agents, QEMU under TCG, the haven-test image),
// through the CLI as an operator runs it: a qcow2 made by qemu-img from an ext4 filesystem with known
// files goes onto a new volume and comes back out byte for byte; the haven-test disk converted to qcow2
// becomes a VM that boots with its own bootloader; vm export then vm import --from makes the same VM
// (CPUs, memory, MACs) with the same disk; and every bad input is refused with the reason and the fix,
// with nothing created or left behind.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before } from "node:test";
import { clusterUp, type LocalClusterState } from "../../src/cluster/local-cluster.js";
import { packageRoot } from "../../src/util/repo-root.js";
import { LOCAL_CLUSTER_BRIDGE, ensureNamespaceNetwork, removeNamespaceNetwork } from "../../src/vm/network.js";
import { boundedTest } from "../helpers/bounded-test.js";
import { TEST_TIMINGS, freeBasePort, stopLocalCluster, until } from "../helpers/cluster.js";
import { run } from "../helpers/server-process.js";
import { ensureTestImage } from "../helpers/test-image.js";

// A TCG boot of haven-test takes 10 to 60 s on a loaded two-CPU machine; a test past 5 minutes is hung.
const test = boundedTest(300_000);
const MIB = 1024 * 1024;

const dir = mkdtempSync(join(tmpdir(), "haven-import-export-"));
const files = join(dir, "files");
const context = join(dir, "context.json");
const namespace = `haven-ietest-${process.pid}`;
let state: LocalClusterState;

function haven(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [join(packageRoot(), "bin", "haven.js"), ...args],
      { env: { ...process.env, HAVEN_CONTEXT: context }, timeout: 240_000, maxBuffer: 16 * MIB },
      (error, stdout, stderr) => resolve({ code: error ? Number(error.code ?? 1) : 0, stdout, stderr }),
    );
  });
}

async function ok(...args: string[]): Promise<{ stdout: string; stderr: string }> {
  const result = await haven(...args);
  assert.equal(result.code, 0, `haven ${args.join(" ")}: ${result.stderr}`);
  return result;
}

async function tool(command: string, args: string[]): Promise<string> {
  const result = await run(command, args, { timeoutMs: 120_000 });
  assert.equal(result.code, 0, `${command} ${args.join(" ")}: ${result.stderr}`);
  return result.stdout;
}

async function volumeNames(): Promise<string[]> {
  const { stdout } = await ok("volume", "list", "--json");
  return (JSON.parse(stdout) as { name: string }[]).map((volume) => volume.name).sort();
}

async function vmNames(): Promise<string[]> {
  const { stdout } = await ok("vm", "list", "--json");
  return (JSON.parse(stdout) as { name: string }[]).map((vm) => vm.name).sort();
}

interface VmShow {
  spec: { name: string; vcpus: number; memoryMiB: number; boot: string; nics: { mac: string; bridge?: string }[] };
  state: string;
  status: { run?: { pid: number; serialLog?: string } } | null;
}

async function show(name: string): Promise<VmShow> {
  return JSON.parse((await ok("vm", "show", name, "--json")).stdout) as VmShow;
}

/** The guest's console log once it booted (haven-test prints `ready`), from its current run. */
async function bootedLog(name: string): Promise<string> {
  return until(
    `VM ${name} booted`,
    async () => {
      const vm = await show(name);
      const log = vm.state === "running" ? vm.status?.run?.serialLog : undefined;
      const text = log === undefined ? "" : readFileSync(log, "utf8");
      return /haven-test: ready/.test(text) ? text : undefined;
    },
    240_000,
  );
}

/** The copies of `volume` still on the hosts' disks (a deleted volume's go within seconds). */
function copiesOnDisk(volume: string): string[] {
  const hosts = join(dir, "cluster", "hosts");
  return readdirSync(hosts).flatMap((host) =>
    readdirSync(join(hosts, host))
      .filter((entry) => entry.startsWith("disk"))
      .filter((disk) => existsSync(join(hosts, host, disk, volume)))
      .map((disk) => `${host}/${disk}`),
  );
}

before(async () => {
  mkdirSync(files);
  const image = await ensureTestImage();
  await ensureNamespaceNetwork({ namespace, bridge: LOCAL_CLUSTER_BRIDGE });
  state = await clusterUp({
    dir: join(dir, "cluster"),
    hosts: 2,
    basePort: await freeBasePort(),
    timings: { ...TEST_TIMINGS },
    vms: {
      cpus: "0-1",
      memory: "1G",
      imageDir: join(image.disk, ".."),
      heartbeatTimeoutMs: 15_000,
      bootTimeoutMs: 90_000,
      bridge: LOCAL_CLUSTER_BRIDGE,
      netns: namespace,
    },
  });
  writeFileSync(
    context,
    JSON.stringify({ etcd: state.endpoints, clusterDir: join(dir, "cluster"), tls: state.tlsDir }),
  );
});

after(async () => {
  await stopLocalCluster(join(dir, "cluster"), 20_000);
  await removeNamespaceNetwork(namespace).catch(() => undefined);
  rmSync(dir, { recursive: true, force: true });
});

/** A raw disk holding an ext4 filesystem with known files, and the same disk as qcow2. */
async function knownFilesystem(): Promise<{ raw: string; qcow2: string }> {
  const content = join(files, "content");
  mkdirSync(join(content, "etc"), { recursive: true });
  writeFileSync(join(content, "etc", "motd"), "imported by haven\n");
  // 3 MiB of bytes that are not zeros, so the copy cannot pass by writing nothing.
  const data = Buffer.alloc(3 * MIB);
  for (let i = 0; i < data.length; i++) data[i] = (i * 2654435761) >>> 24;
  writeFileSync(join(content, "data.bin"), data);
  const raw = join(files, "fs.raw");
  await tool("truncate", ["-s", "24M", raw]);
  await tool("mkfs.ext4", ["-q", "-F", "-d", content, "-E", "lazy_itable_init=0,lazy_journal_init=0", raw]);
  const qcow2 = join(files, "fs.qcow2");
  await tool("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, qcow2]);
  return { raw, qcow2 };
}

test("a qcow2 of a filesystem with known files imports onto a new volume and exports back byte for byte", async () => {
  const { raw, qcow2 } = await knownFilesystem();
  const imported = await ok("volume", "import", "fsvol", qcow2);
  assert.match(imported.stderr, /copying .*fs\.qcow2 \(qcow2, 24\.0 MiB\) onto fsvol/);
  assert.match(imported.stderr, /importing 100% \[#{20}\]/, "progress is drawn as a bar");
  assert.match(imported.stdout, /size\s+24\.0 MiB/);
  const back = join(files, "back.raw");
  const exported = await ok("volume", "export", "fsvol", back);
  assert.match(exported.stderr, /exporting 100% \[#{20}\]/);
  await tool("cmp", [raw, back]);
  // Another format on the way out: qemu-img reads the same disk from it.
  const backQcow2 = join(files, "back.qcow2");
  await ok("volume", "export", "fsvol", backQcow2);
  assert.match(await tool("qemu-img", ["info", backQcow2]), /file format: qcow2/);
  await tool("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", raw, backQcow2]);
  // And the files are there, as debugfs reads them from the exported disk.
  assert.equal(await tool("debugfs", ["-R", "cat /etc/motd", back]), "imported by haven\n");
});

/** A qcow2 whose L2 entry for a cluster at 43.75 MiB has an unaligned offset: qemu-img fails there. */
async function corruptHalfWay(): Promise<string> {
  const raw = join(files, "random.raw");
  const data = Buffer.alloc(64 * MIB);
  for (let i = 0; i < data.length; i += 4) data.writeUInt32LE((i * 2654435761) >>> 0, i);
  writeFileSync(raw, data);
  const qcow2 = join(files, "corrupt.qcow2");
  await tool("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, qcow2]);
  const image = readFileSync(qcow2);
  const l1 = Number(image.readBigUInt64BE(40));
  const l2 = Number(image.readBigUInt64BE(l1) & 0x00fffffffffffe00n);
  const entry = l2 + 8 * 700; // 64 KiB clusters: cluster 700 starts at 43.75 MiB
  image.writeBigUInt64BE(image.readBigUInt64BE(entry) | 0x200n, entry);
  writeFileSync(qcow2, image);
  return qcow2;
}

test("bad input is refused with the reason and the fix, and nothing is created or left behind", async () => {
  const before = { volumes: await volumeNames(), vms: await vmNames() };
  const text = join(files, "notes.txt");
  writeFileSync(text, Array.from({ length: 400 }, (_, i) => `line ${i}`).join("\n"));
  const textSectors = join(files, "notes-4k.txt");
  writeFileSync(textSectors, "a".repeat(4095) + "\n");
  const { qcow2 } = await knownFilesystem();
  const huge = join(files, "huge.qcow2");
  await tool("qemu-img", ["create", "-f", "qcow2", huge, "64T"]);
  const badJson = join(files, "bad-json");
  mkdirSync(badJson);
  writeFileSync(join(badJson, "vm.json"), '{"kind": "haven-vm", "version": 1, "vcpus": ');
  const newer = join(files, "newer");
  mkdirSync(newer);
  writeFileSync(join(newer, "vm.json"), JSON.stringify({ kind: "haven-vm", version: 2, vcpus: 1, gpu: "a100" }));
  const existing = join(files, "existing.raw");
  writeFileSync(existing, "keep me");

  const cases: [string[], RegExp][] = [
    [
      ["volume", "import", "t1", text],
      /notes\.txt is not a disk image: .* not whole 512-byte sectors; give a raw, qcow2/,
    ],
    [["volume", "import", "t1", textSectors], /notes-4k\.txt is not a disk image: it reads as text/],
    [
      ["volume", "import", "t1", qcow2, "--format", "vmdk"],
      /fs\.qcow2 is a qcow2 image, not vmdk: give --format qcow2/,
    ],
    [["volume", "import", "t1", qcow2, "--format", "ova"], /--format must be one of raw, qcow2, vmdk, vdi, vhdx/],
    [
      ["volume", "import", "t1", huge],
      /64\.0 TiB .* only 0 of 2 live hosts qualify.*Nothing was created.*fewer --replicas/,
    ],
    [["volume", "import", "fsvol", qcow2], /volume "fsvol" exists already; nothing was imported: choose another name/],
    [["vm", "import", "fsvol", "--image", qcow2], /a VM or volume named "fsvol" exists already; choose another name/],
    [["vm", "import", "t1", "--image", text], /not a disk image/],
    [["vm", "import", "t1", "--image", huge, "--memory", "64M"], /64\.0 TiB .*Nothing was created/],
    [["vm", "import", "t1"], /needs one of --image FILE and --from DIR/],
    [["vm", "import", "t1", "--from", badJson], /bad-json\/vm\.json: is not valid JSON/],
    [["vm", "import", "t1", "--from", newer], /is of version 2; this Haven reads version 1/],
    [["vm", "import", "t1", "--from", join(files, "nowhere")], /cannot read .*nowhere\/vm\.json/],
    [["volume", "export", "fsvol", existing], /existing\.raw exists already; nothing was written: .* --force/],
    [["volume", "export", "ghost", join(files, "ghost.raw")], /no volume named "ghost"/],
    [["vm", "export", "ghost", join(files, "ghost")], /no VM named "ghost"/],
  ];
  for (const [args, message] of cases) {
    const result = await haven(...args);
    assert.notEqual(result.code, 0, args.join(" "));
    assert.match(result.stderr, message, `${args.join(" ")}: ${result.stderr}`);
  }
  assert.equal(readFileSync(existing, "utf8"), "keep me", "an existing file is not touched without --force");
  for (const left of ["ghost.raw", "ghost.raw.partial", "ghost"])
    assert.ok(!existsSync(join(files, left)), `a refused export left ${left} behind`);

  // A copy that fails half way (the image is corrupt at 43.75 MiB of 64): the new volume goes again.
  const corrupt = await corruptHalfWay();
  const failed = await haven("volume", "import", "half", corrupt, "--replicas", "1");
  assert.notEqual(failed.code, 0);
  assert.match(failed.stderr, /volume half created/, "the volume was made before the copy failed");
  assert.match(failed.stderr, /copying .*corrupt\.qcow2 onto volume half failed: .*Image is corrupt/);
  assert.match(failed.stderr, /volume half deleted again/);
  const failedVm = await haven("vm", "import", "halfvm", "--image", corrupt, "--memory", "64M");
  assert.match(failedVm.stderr, /volume halfvm deleted again/);
  await until("the failed imports' copies removed from the hosts' disks", async () =>
    copiesOnDisk("half").length + copiesOnDisk("halfvm").length === 0 ? true : undefined,
  );

  assert.deepEqual(await volumeNames(), before.volumes, "no volume was left behind");
  assert.deepEqual(await vmNames(), before.vms, "no VM was left behind");
  // --force replaces the file, which is written whole or not at all.
  await ok("volume", "export", "fsvol", existing, "--force");
  assert.equal(readFileSync(existing).length, 24 * MIB);
});

test("vm import of the haven-test disk as qcow2 boots with its own bootloader; export refuses it running", async () => {
  const image = await ensureTestImage();
  const qcow2 = join(files, "haven-test.qcow2");
  await tool("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", image.disk, qcow2]);
  const imported = await ok(
    ...["vm", "import", "moved", "--image", qcow2, "--format", "qcow2", "--vcpus", "1", "--memory", "128M"],
    ...["--nic", "default", "--heartbeat"],
  );
  assert.match(imported.stderr, /copying .*haven-test\.qcow2 \(qcow2, 96\.0 MiB\) onto moved/);
  const log = await bootedLog("moved");
  assert.match(log, /SYSLINUX/i, "its own bootloader ran");
  assert.match(log, /boot-count=1\b/);
  assert.match(log, /nproc=1 /);
  const vm = await show("moved");
  assert.equal(vm.spec.boot, "disk");
  assert.equal(vm.spec.memoryMiB, 128);

  // Running, its disk is refused (no snapshot: the copy would mix moments), and nothing is written.
  const out = join(files, "moved-export");
  const refused = await haven("vm", "export", "moved", out);
  assert.notEqual(refused.code, 0);
  assert.match(
    refused.stderr,
    /disk of VM moved, which runs: .*Stop it first \('haven vm stop moved'\), or give --force/,
  );
  assert.ok(!existsSync(out), "the refused export left no directory behind");
  const volumeRefused = await haven("volume", "export", "moved", join(files, "moved.raw"));
  assert.match(volumeRefused.stderr, /which runs/);
});

test("vm export then vm import --from makes the same VM (CPUs, memory, MACs) with the same disk", async () => {
  await ok("vm", "stop", "moved");
  const out = join(files, "moved-export");
  const exported = await ok("vm", "export", "moved", out);
  assert.match(exported.stdout, /disk\.qcow2 \(96\.0 MiB\) and vm\.json/);
  const description = JSON.parse(readFileSync(join(out, "vm.json"), "utf8")) as Record<string, unknown>;
  const original = await show("moved");
  assert.deepEqual(
    { version: description.version, vcpus: description.vcpus, memoryMiB: description.memoryMiB },
    { version: 1, vcpus: 1, memoryMiB: 128 },
  );
  assert.deepEqual(description.nics, original.spec.nics);
  assert.deepEqual(description.disk, { file: "disk.qcow2", format: "qcow2", virtualSizeBytes: 96 * MIB });
  // A second export into the same directory is refused without --force.
  assert.match((await haven("vm", "export", "moved", out)).stderr, /vm\.json exists already/);

  await ok("vm", "import", "copy", "--from", out, "--stopped");
  const copy = await show("copy");
  assert.equal(copy.spec.vcpus, original.spec.vcpus);
  assert.equal(copy.spec.memoryMiB, original.spec.memoryMiB);
  assert.deepEqual(copy.spec.nics, original.spec.nics, "the same MACs and bridges");
  assert.equal(copy.spec.boot, original.spec.boot);
  // The copy boots from the exported disk: its boot counter goes on from the original's one boot.
  await ok("vm", "delete", "moved", "--yes", "--with-disk");
  await ok("vm", "start", "copy");
  assert.match(await bootedLog("copy"), /boot-count=2\b/);
  await ok("vm", "stop", "copy", "--force");
  await ok("vm", "delete", "copy", "--yes", "--with-disk");
});
