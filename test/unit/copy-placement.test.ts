// Placement for copies on (host, disk) pairs: a local mirror's second copy on the first host's
// next-best disk, copies placed by name (no disk twice, the disk must exist and have room), one more
// copy of a live volume (never on a disk that holds one, another host first unless asked), and the
// disks' records making capacity real (allocated bytes not counted twice, a shared filesystem's free
// space counted once, failed disks and spares left out unless a spare is named).

import assert from "node:assert/strict";
import { HavenError } from "../../src/core/errors.js";
import type { DiskRecord } from "../../src/cluster/disk-schema.js";
import { checkPlacement, placeAnotherCopy, placeReplicas, withDiskRecords } from "../../src/cluster/placement.js";
import type { HostRecord, VolumeSpec } from "../../src/cluster/schema.js";
import { boundedTest } from "../helpers/bounded-test.js";

const test = boundedTest(10_000);
const GiB = 1024 ** 3;

function host(name: string, disks: [string, number][]): HostRecord {
  return {
    name,
    address: "127.0.0.1",
    apiPort: 1,
    replicationPort: 2,
    nbdPort: 3,
    disks: disks.map(([disk, capacityGiB]) => ({ name: disk, capacityBytes: capacityGiB * GiB, usedBytes: 0 })),
    startedAt: "2026-01-01T00:00:00Z",
  };
}

function volume(name: string, sizeGiB: number, copies: string[]): VolumeSpec {
  return {
    name,
    sizeBytes: sizeGiB * GiB,
    replicas: copies.map((id) => ({ host: id.split("/")[0]!, disk: id.split("/")[1]! })),
    createdAt: "2026-01-01T00:00:00Z",
  };
}

function record(hostName: string, disk: string, fields: Partial<DiskRecord> = {}): DiskRecord {
  return {
    host: hostName,
    disk,
    path: `/srv/${disk}`,
    state: "online",
    reason: "ok",
    spare: false,
    identity: { kind: "serial", value: `${hostName}-${disk}` },
    sizeBytes: 100 * GiB,
    freeBytes: 100 * GiB,
    usedBytes: 0,
    fsId: `${hostName}-${disk}`,
    copies: [],
    updatedAt: "2026-01-01T00:00:00Z",
    ...fields,
  };
}

const refused = (code: string, message: RegExp) => (error: unknown) => {
  assert.ok(error instanceof HavenError, String(error));
  assert.equal(error.code, code);
  assert.match(error.message, message);
  return true;
};

test("a local mirror puts the first host's second copy on its next-best disk, and says when it has none", () => {
  const hosts = [
    host("a", [
      ["d0", 50],
      ["d1", 40],
    ]),
    host("b", [["d0", 30]]),
  ];
  assert.deepEqual(placeReplicas(hosts, [], 10 * GiB, 2, new Map(), { mirrorFirst: true }), [
    { host: "a", disk: "d0" },
    { host: "a", disk: "d1" },
    { host: "b", disk: "d0" },
  ]);
  assert.throws(
    () => placeReplicas([host("a", [["d0", 50]])], [], 10 * GiB, 1, new Map(), { mirrorFirst: true }),
    refused(
      "HAVEN_ERR_NO_SPACE",
      /a local mirror needs a second disk on a .* a has no usable disk: disk d0 holds a copy/,
    ),
  );
});

test("a VM's new disk has its primary on a host with room for the VM, the other copies placed as usual", () => {
  const hosts = [host("a", [["d0", 90]]), host("b", [["d0", 50]]), host("c", [["d0", 40]])];
  // Without a constraint the most free host is first; with one, the best allowed host is.
  assert.deepEqual(placeReplicas(hosts, [], 10 * GiB, 2), [
    { host: "a", disk: "d0" },
    { host: "b", disk: "d0" },
  ]);
  const among = (names: string[]) => ({ primaryAmong: { hosts: new Set(names), why: "the hosts with room for VM v" } });
  assert.deepEqual(placeReplicas(hosts, [], 10 * GiB, 2, new Map(), among(["c"])), [
    { host: "c", disk: "d0" },
    { host: "a", disk: "d0" },
  ]);
  assert.deepEqual(placeReplicas(hosts, [], 10 * GiB, 2, new Map(), among(["b", "c"])), [
    { host: "b", disk: "d0" },
    { host: "a", disk: "d0" },
  ]);
  // The allowed host cannot take the copy, or is not live: the reason names it.
  assert.throws(
    () => placeReplicas(hosts, [], 45 * GiB, 2, new Map(), among(["c", "z"])),
    refused(
      "HAVEN_ERR_NO_SPACE",
      /must go on c or z \(the hosts with room for VM v\), but c has no disk with 45\.0 GiB free .*; z is not live/,
    ),
  );
});

test("copies placed by name: each must be a live host's disk with room, and no disk twice", () => {
  const hosts = [
    host("a", [
      ["d0", 50],
      ["d1", 5],
    ]),
  ];
  assert.deepEqual(
    checkPlacement(hosts, [], 4 * GiB, [
      { host: "a", disk: "d0" },
      { host: "a", disk: "d1" },
    ]),
    [
      { host: "a", disk: "d0" },
      { host: "a", disk: "d1" },
    ],
  );
  assert.throws(
    () =>
      checkPlacement(hosts, [], 4 * GiB, [
        { host: "a", disk: "d0" },
        { host: "a", disk: "d0" },
      ]),
    refused("HAVEN_ERR_USAGE", /two copies cannot share disk a\/d0/),
  );
  assert.throws(
    () => checkPlacement(hosts, [], 10 * GiB, [{ host: "a", disk: "d1" }]),
    refused("HAVEN_ERR_NO_SPACE", /cannot place a copy on a\/d1: a has no disk with 10\.0 GiB free/),
  );
  assert.throws(
    () => checkPlacement(hosts, [], GiB, [{ host: "a", disk: "d9" }]),
    refused("HAVEN_ERR_NO_SPACE", /a has no disk d9 \(its disks: d0, d1\)/),
  );
  assert.throws(
    () => checkPlacement(hosts, [], GiB, [{ host: "z", disk: "d0" }]),
    refused("HAVEN_ERR_UNAVAILABLE", /host z is not a live host/),
  );
  // Two copies of the new volume on one disk count twice against it.
  assert.throws(
    () =>
      checkPlacement(
        [
          host("a", [
            ["d0", 5],
            ["d1", 5],
          ]),
        ],
        [],
        3 * GiB,
        [
          { host: "a", disk: "d0" },
          { host: "a", disk: "d1" },
          { host: "a", disk: "d0" },
        ],
      ),
    refused("HAVEN_ERR_USAGE", /share disk a\/d0/),
  );
});

test("one more copy goes to a host without one first, never on a disk holding one, and on the named host when asked", () => {
  const hosts = [
    host("a", [
      ["d0", 50],
      ["d1", 50],
    ]),
    host("b", [["d0", 20]]),
  ];
  const spec = volume("v", 5, ["a/d0"]);
  assert.deepEqual(placeAnotherCopy(hosts, [spec], spec, {}), { host: "b", disk: "d0" });
  assert.deepEqual(placeAnotherCopy(hosts, [spec], spec, { host: "a" }), { host: "a", disk: "d1" });
  assert.throws(
    () => placeAnotherCopy(hosts, [spec], spec, { host: "a", disk: "d0" }),
    refused("HAVEN_ERR_NO_SPACE", /disk d0 holds a copy of the volume already/),
  );
  const mirrored = volume("v", 5, ["a/d0", "a/d1"]);
  assert.throws(
    () =>
      placeAnotherCopy(
        [
          host("a", [
            ["d0", 50],
            ["d1", 50],
          ]),
        ],
        [mirrored],
        mirrored,
        {},
      ),
    refused("HAVEN_ERR_NO_SPACE", /no disk can take another copy of v/),
  );
});

test("disk records make capacity real: allocated bytes count once, a shared filesystem's free space once", () => {
  const hosts = [host("a", [["d0", 1000]]), host("b", [["d0", 1000]])];
  // Both hosts' disks are on one filesystem with 30 GiB free; a 20 GiB copy on a/d0 has allocated 5 GiB.
  const existing = [volume("old", 20, ["a/d0"])];
  const disks = new Map([
    [
      "a/d0",
      record("a", "d0", { freeBytes: 30 * GiB, fsId: "one", copies: [{ volume: "old", allocatedBytes: 5 * GiB }] }),
    ],
    ["b/d0", record("b", "d0", { freeBytes: 30 * GiB, fsId: "one" })],
  ]);
  const seen = withDiskRecords(hosts, disks, existing);
  // a/d0: 30 free + 5 allocated, minus the 20 promised to old: 15 GiB for a new copy.
  // b/d0: 30 free, minus the 15 GiB old may still grow into on the shared filesystem: 15 GiB.
  assert.deepEqual(
    placeReplicas(seen, existing, 15 * GiB, 2)
      .map((place) => `${place.host}/${place.disk}`)
      .sort(),
    ["a/d0", "b/d0"],
  );
  assert.throws(
    () => placeReplicas(seen, existing, 16 * GiB, 1),
    refused("HAVEN_ERR_NO_SPACE", /no disk with 16\.0 GiB free/),
  );
});

test("failed disks and spares take no new copy, unless the spare is named", () => {
  const hosts = [
    host("a", [
      ["d0", 100],
      ["d1", 100],
      ["d2", 100],
    ]),
  ];
  const disks = new Map([
    ["a/d0", record("a", "d0", { state: "failed" })],
    ["a/d1", record("a", "d1", { spare: true })],
    ["a/d2", record("a", "d2")],
  ]);
  const seen = withDiskRecords(hosts, disks, []);
  assert.deepEqual(
    seen[0]!.disks.map((disk) => disk.name),
    ["d2"],
  );
  const named = withDiskRecords(hosts, disks, [], { host: "a", disk: "d1" });
  assert.deepEqual(
    named[0]!.disks.map((disk) => disk.name),
    ["d1", "d2"],
  );
  // A disk added after the host registered is known from its record alone.
  const added = withDiskRecords([host("a", [])], new Map([["a/d5", record("a", "d5")]]), []);
  assert.deepEqual(
    added[0]!.disks.map((disk) => disk.name),
    ["d5"],
  );
});
