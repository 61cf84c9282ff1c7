// Finding a host's disks: disk path patterns expand like a shell's (sorted, no hidden entries, a plain
// path kept even when missing), and classifyDisk puts every combination of what was found at a path
// into exactly the state its rules say, identity before health, with a reason that says whose a
// foreign disk is.

import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before } from "node:test";
import { classifyDisk, expandDiskPaths, type DiskClassifyInput, type DiskState } from "../../src/disk/disk-scan.js";
import type { DiskLabel } from "../../src/disk/disk-label.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** Every test here takes well under a second; one still running after this bound is hung, not slow. */
const test = boundedTest(10_000);

const CLUSTER = "prod";
const HOST = "node1";

function label(cluster: string, host: string, disk = "disk0"): DiskLabel {
  return {
    format: 1,
    cluster,
    host,
    disk,
    identity: { kind: "serial", value: "S1" },
    sizeBytes: 1 << 30,
    createdAt: "2024-01-01T00:00:00.000Z",
  };
}

const healthy: DiskClassifyInput = {
  label: label(CLUSTER, HOST),
  cluster: CLUSTER,
  host: HOST,
  present: true,
  probeOk: true,
  readOnly: false,
};

const classify = (change: Partial<DiskClassifyInput>) => classifyDisk({ ...healthy, ...change });

test("a present disk with this host's label, writable and probing fine, is online", () => {
  assert.deepEqual(classify({}), { state: "online", reason: "disk disk0 of host node1 in cluster prod, probe ok" });
  assert.deepEqual(classify({ probeOk: undefined }), {
    state: "online",
    reason: "disk disk0 of host node1 in cluster prod, not probed yet",
  });
});

test("a disk that is not there is missing, whatever its last label said", () => {
  assert.deepEqual(classify({ present: false }), {
    state: "missing",
    reason: "disk disk0 of host node1 in cluster prod is not found at its path",
  });
  assert.deepEqual(classify({ present: false, label: undefined, probeOk: false }), {
    state: "missing",
    reason: "not found at its path",
  });
});

test("another cluster's disk is foreign and the reason names its cluster, host and disk", () => {
  const result = classify({ label: label("staging", "node7", "ssd3") });
  assert.equal(result.state, "foreign");
  assert.match(result.reason, /disk ssd3 of host node7 in cluster staging, not of this cluster \(prod\)/);
});

test("this cluster's disk of another host is foreign and the reason names that host", () => {
  const result = classify({ label: label(CLUSTER, "node2", "disk4") });
  assert.equal(result.state, "foreign");
  assert.match(result.reason, /disk disk4 of host node2 of this cluster, not of this host \(node1\)/);
});

test("a foreign disk stays foreign when it is also read-only or failing its probe", () => {
  assert.equal(classify({ label: label(CLUSTER, "node2"), readOnly: true, probeOk: false }).state, "foreign");
});

test("a disk without a label is new, and its reason notes a health problem", () => {
  assert.deepEqual(classify({ label: undefined }), {
    state: "new",
    reason: "no Haven label: `haven disk add` can take it",
  });
  assert.match(
    classify({ label: undefined, readOnly: true, probeOk: false }).reason,
    /but it is read-only and its probe failed/,
  );
});

test("a label that cannot be read makes the disk failed, with the label's error", () => {
  assert.deepEqual(classify({ label: undefined, labelError: "host is missing" }), {
    state: "failed",
    reason: "its Haven label cannot be used: host is missing",
  });
});

test("this host's disk on a read-only filesystem, or failing its probe, is failed", () => {
  assert.equal(classify({ readOnly: true }).state, "failed");
  assert.match(classify({ readOnly: true }).reason, /read-only/);
  assert.deepEqual(classify({ probeOk: false, probeDetail: "EIO" }), {
    state: "failed",
    reason: "its probe write failed: EIO",
  });
});

test("this host's disk that takes writes but saw I/O errors is failing", () => {
  assert.deepEqual(classify({ ioErrors: 1 }), {
    state: "failing",
    reason: "1 I/O error was seen on it, though it still takes writes: replace it soon",
  });
  assert.match(classify({ ioErrors: 3, probeOk: undefined }).reason, /^3 I\/O errors were seen/);
  assert.equal(classify({ ioErrors: 3, probeOk: false }).state, "failed");
});

test("every combination of inputs lands in the state the rules give, with a reason", () => {
  const labels: [string, DiskLabel | undefined][] = [
    ["none", undefined],
    ["ours", label(CLUSTER, HOST)],
    ["other cluster", label("staging", HOST)],
    ["other host", label(CLUSTER, "node2")],
  ];
  const seen = new Set<DiskState>();
  let combinations = 0;
  for (const [labelName, found] of labels)
    for (const labelError of [undefined, "corrupt"])
      for (const present of [true, false])
        for (const probeOk of [true, false, undefined])
          for (const readOnly of [true, false])
            for (const ioErrors of [undefined, 0, 2]) {
              const input: DiskClassifyInput = {
                label: found,
                cluster: CLUSTER,
                host: HOST,
                present,
                probeOk,
                readOnly,
                ...(labelError !== undefined && { labelError }),
                ...(ioErrors !== undefined && { ioErrors }),
              };
              const { state, reason } = classifyDisk(input);
              const name = `${JSON.stringify({ labelName, labelError, present, probeOk, readOnly, ioErrors })} → ${state}`;
              combinations++;
              seen.add(state);
              assert.ok(reason.length > 0, name);
              // Each rule of the file header, as an if-and-only-if over all inputs.
              assert.equal(state === "missing", !present, name);
              if (!present) continue;
              assert.equal(state === "failed" && labelError !== undefined, labelError !== undefined, name);
              if (labelError !== undefined) continue;
              assert.equal(state === "new", found === undefined, name);
              if (found === undefined) continue;
              const ours = found.cluster === CLUSTER && found.host === HOST;
              assert.equal(state === "foreign", !ours, name);
              if (!ours) {
                assert.match(reason, new RegExp(`host ${found.host}`), name);
                continue;
              }
              const broken = readOnly || probeOk === false;
              assert.equal(state === "failed", broken, name);
              if (broken) continue;
              assert.equal(state, (ioErrors ?? 0) > 0 ? "failing" : "online", name);
            }
  assert.equal(combinations, 4 * 2 * 2 * 3 * 2 * 3);
  assert.deepEqual([...seen].sort(), ["failed", "failing", "foreign", "missing", "new", "online"]);
});

// ---- patterns ------------------------------------------------------------------------------------

let root = "";
before(async () => {
  root = await mkdtemp(join(tmpdir(), "haven-disk-scan-"));
  for (const disk of ["disk2", "disk10", "disk1", "data", ".hidden-disk"])
    await mkdir(join(root, "srv", disk), { recursive: true });
  await mkdir(join(root, "srv", "disk1", "copies"));
  await mkdir(join(root, "srv", "disk2", "copies"));
  await writeFile(join(root, "srv", "diskfile"), "not a directory");
  await mkdir(join(root, "dev", "by-id"), { recursive: true });
  for (const id of ["ata-B", "ata-A", "nvme-C"]) await writeFile(join(root, "dev", "by-id", id), "");
  await symlink(join(root, "dev", "by-id", "gone"), join(root, "dev", "by-id", "ata-dangling"));
});
after(async () => {
  if (root !== "") await rm(root, { recursive: true, force: true });
});

test("a path without wildcards is returned as it is, even when it does not exist", async () => {
  assert.deepEqual(await expandDiskPaths([join(root, "srv", "missing"), join(root, "srv", "data")]), [
    join(root, "srv", "missing"),
    join(root, "srv", "data"),
  ]);
});

test("'*' and '?' in the last component match existing entries, sorted, hidden ones excepted", async () => {
  assert.deepEqual(await expandDiskPaths([join(root, "srv", "disk*")]), [
    join(root, "srv", "disk1"),
    join(root, "srv", "disk10"),
    join(root, "srv", "disk2"),
    join(root, "srv", "diskfile"),
  ]);
  assert.deepEqual(await expandDiskPaths([join(root, "srv", "disk?")]), [
    join(root, "srv", "disk1"),
    join(root, "srv", "disk2"),
  ]);
  assert.deepEqual(await expandDiskPaths([join(root, "srv", ".*")]), [join(root, "srv", ".hidden-disk")]);
});

test("a dangling symbolic link does not match", async () => {
  assert.deepEqual(await expandDiskPaths([join(root, "dev", "by-id", "ata-*")]), [
    join(root, "dev", "by-id", "ata-A"),
    join(root, "dev", "by-id", "ata-B"),
  ]);
});

test("wildcards in several components, and a literal after them that must exist", async () => {
  assert.deepEqual(await expandDiskPaths([join(root, "*", "disk?", "copies")]), [
    join(root, "srv", "disk1", "copies"),
    join(root, "srv", "disk2", "copies"),
  ]);
  assert.deepEqual(await expandDiskPaths([join(root, "s?v", "d*")]), [
    join(root, "srv", "data"),
    join(root, "srv", "disk1"),
    join(root, "srv", "disk10"),
    join(root, "srv", "disk2"),
    join(root, "srv", "diskfile"),
  ]);
});

test("a pattern ending in '/' matches directories only", async () => {
  assert.deepEqual(await expandDiskPaths([`${join(root, "srv", "disk*")}/`]), [
    join(root, "srv", "disk1"),
    join(root, "srv", "disk10"),
    join(root, "srv", "disk2"),
  ]);
});

test("characters special to regular expressions are literal", async () => {
  assert.deepEqual(await expandDiskPaths([join(root, "srv", "dis.*")]), []);
  assert.deepEqual(await expandDiskPaths([join(root, "srv", "(disk)*")]), []);
});

test("a pattern that matches nothing adds nothing; the patterns' order is kept and duplicates dropped", async () => {
  assert.deepEqual(await expandDiskPaths([join(root, "nothing", "*"), join(root, "srv", "zz*")]), []);
  assert.deepEqual(
    await expandDiskPaths([join(root, "srv", "disk2"), join(root, "srv", "disk?"), join(root, "srv", "data")]),
    [join(root, "srv", "disk2"), join(root, "srv", "disk1"), join(root, "srv", "data")],
  );
});
