// Placement of a new volume's copies: one copy per live host, on the disk with the most free space
// after what existing copies were promised, load spread by copy count then free space, ties by name,
// and a refusal that says which hosts do not qualify and why; a disk that failed its host's latest
// health check is never chosen. A property test checks the promises over random clusters: distinct
// hosts, every choice fits on a healthy disk, the count is met exactly when it can be.

import assert from "node:assert/strict";
import fc from "fast-check";
import { HavenError } from "../../src/core/errors.js";
import { placeReplicas } from "../../src/cluster/placement.js";
import type { DiskHealth, HostHealthRecord, HostRecord, VolumeSpec } from "../../src/cluster/schema.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** Every test here takes well under a second; one still running after this bound is hung, not slow. */
const test = boundedTest(10_000);

const GiB = 1024 ** 3;

function host(name: string, disks: [string, number, number][]): HostRecord {
  return {
    name,
    address: "127.0.0.1",
    apiPort: 7480,
    replicationPort: 7481,
    nbdPort: 10809,
    disks: disks.map(([disk, capacityGiB, usedGiB]) => ({
      name: disk,
      capacityBytes: capacityGiB * GiB,
      usedBytes: usedGiB * GiB,
    })),
    startedAt: "2024-01-01T00:00:00.000Z",
  };
}

function volume(name: string, sizeGiB: number, replicas: [string, string][]): VolumeSpec {
  return {
    name,
    sizeBytes: sizeGiB * GiB,
    replicas: replicas.map(([h, disk]) => ({ host: h, disk })),
    createdAt: "2024-01-01T00:00:00.000Z",
  };
}

/** A health check of one host that found `failed` disks failed (disk -> detail) and `ok` disks fine. */
function health(failed: Record<string, string>, ok: string[] = []): HostHealthRecord {
  const disks: DiskHealth[] = [
    ...Object.entries(failed).map(([name, detail]) => ({ name, ok: false, detail, probeMs: null })),
    ...ok.map((name) => ({ name, ok: true, detail: "ok", probeMs: 3 })),
  ];
  return { checkedAt: "2024-01-01T00:00:00.000Z", eventLoopLagMs: 1, problems: [], copies: [], disks, links: [] };
}

function noSpace(message: RegExp) {
  return (error: unknown): boolean => {
    assert.ok(error instanceof HavenError, String(error));
    assert.equal(error.code, "HAVEN_ERR_NO_SPACE");
    assert.match(error.message, message);
    return true;
  };
}

test("each copy goes on the disk of its host with the most free space", () => {
  const hosts = [
    host("a", [
      ["hdd0", 100, 10],
      ["ssd0", 100, 50],
      ["ssd1", 200, 60],
    ]),
  ];
  assert.deepEqual(placeReplicas(hosts, [], GiB, 1), [{ host: "a", disk: "ssd1" }]);
});

test("space promised to existing copies counts as used", () => {
  const hosts = [
    host("a", [
      ["d0", 100, 0],
      ["d1", 80, 0],
    ]),
  ];
  // d0 has 100 GiB free by its report, but 30 GiB of it are promised: d1 has more.
  const existing = [volume("v1", 30, [["a", "d0"]])];
  assert.deepEqual(placeReplicas(hosts, existing, GiB, 1), [{ host: "a", disk: "d1" }]);
});

test("hosts with fewer copies come first, then more free space, then name order", () => {
  const hosts = [
    host("c", [["d", 100, 0]]),
    host("b", [["d", 500, 0]]),
    host("a", [["d", 100, 0]]),
    host("e", [["d", 900, 0]]),
  ];
  // e has the most free space, but already holds two copies; b holds one.
  const existing = [
    volume("v1", 1, [
      ["e", "d"],
      ["b", "d"],
    ]),
    volume("v2", 1, [["e", "d"]]),
  ];
  assert.deepEqual(
    placeReplicas(hosts, existing, GiB, 4).map((p) => p.host),
    ["a", "c", "b", "e"],
  );
  assert.deepEqual(
    placeReplicas(hosts, [], GiB, 4).map((p) => p.host),
    ["e", "b", "a", "c"],
  );
});

test("a disk that exactly fits qualifies; one byte short does not", () => {
  const hosts = [host("a", [["d", 10, 9]])];
  assert.deepEqual(placeReplicas(hosts, [], GiB, 1), [{ host: "a", disk: "d" }]);
  assert.throws(() => placeReplicas(hosts, [], GiB + 4096, 1), noSpace(/a has no disk with 1\.00 GiB free/));
});

test("too few qualifying hosts: the error counts them and says why each other one does not qualify", () => {
  const hosts = [host("a", [["d", 100, 0]]), host("b", [["ssd0", 10, 9]]), host("c", [])];
  assert.throws(
    () => placeReplicas(hosts, [], 5 * GiB, 2),
    noSpace(
      /needs 2 different live hosts with room for it, but only 1 of 3 live hosts qualifies: b has no disk with 5\.00 GiB free \(most free: ssd0, 1\.00 GiB\); c has no disks/,
    ),
  );
  assert.throws(() => placeReplicas(hosts.slice(0, 1), [], GiB, 3), noSpace(/only 1 of 1 live host qualifies$/));
  assert.throws(() => placeReplicas([], [], GiB, 1), noSpace(/only 0 of 0 live hosts qualify$/));
});

test("an over-full disk (used above capacity) is reported with 0 free, not a negative size", () => {
  assert.throws(() => placeReplicas([host("a", [["d", 10, 12]])], [], GiB, 1), noSpace(/most free: d, 0 B\)/));
});

test("a disk that failed its health check is never chosen, even with the most free space", () => {
  const hosts = [
    host("a", [
      ["d0", 500, 0],
      ["d1", 100, 0],
    ]),
    host("b", [["d0", 900, 0]]),
  ];
  const checks = new Map([
    ["a", health({ d0: "fsync failed: EIO" }, ["d1"])],
    ["b", health({}, ["d0"])],
  ]);
  assert.deepEqual(placeReplicas(hosts, [], GiB, 2, checks), [
    { host: "b", disk: "d0" },
    { host: "a", disk: "d1" },
  ]);
});

test("a host whose every disk failed is refused, saying which disk failed its health check and why", () => {
  const hosts = [host("a", [["d0", 100, 0]]), host("b", [["d0", 100, 0]])];
  const checks = new Map([["b", health({ d0: "write timed out after 5000 ms" })]]);
  assert.deepEqual(placeReplicas(hosts, [], GiB, 1, checks), [{ host: "a", disk: "d0" }]);
  assert.throws(
    () => placeReplicas(hosts, [], GiB, 2, checks),
    noSpace(
      /only 1 of 2 live hosts qualifies: b has no usable disk: disk d0 failed its health check \(write timed out after 5000 ms\)$/,
    ),
  );
});

test("a failed disk beside one too small: the refusal gives both reasons", () => {
  const hosts = [
    host("a", [
      ["d0", 100, 0],
      ["d1", 2, 0],
    ]),
  ];
  assert.throws(
    () => placeReplicas(hosts, [], 5 * GiB, 1, new Map([["a", health({ d0: "EIO" })]])),
    noSpace(
      /a has no disk with 5\.00 GiB free \(most free: d1, 2\.00 GiB\), and disk d0 failed its health check \(EIO\)$/,
    ),
  );
});

test("a disk with no probe yet counts as healthy; a failed disk the host does not report, or another host's, changes nothing", () => {
  const hosts = [host("a", [["d0", 100, 0]])];
  const checks = new Map([
    ["a", health({ d9: "gone" })],
    ["z", health({ d0: "EIO" })],
  ]);
  assert.deepEqual(placeReplicas(hosts, [], GiB, 1, checks), [{ host: "a", disk: "d0" }]);
  assert.deepEqual(placeReplicas(hosts, [], GiB, 1, new Map([["a", health({})]])), [{ host: "a", disk: "d0" }]);
});

const clusterArbitrary = fc
  .uniqueArray(fc.constantFrom("a", "b", "c", "d", "e", "f", "g"), { minLength: 0, maxLength: 7 })
  .chain((names) =>
    fc.record({
      hosts: fc.tuple(
        ...names.map((name) =>
          fc
            .uniqueArray(
              fc.record({
                name: fc.constantFrom("d0", "d1", "d2"),
                capacityBytes: fc.integer({ min: 0, max: 64 }).map((n) => n * GiB),
                usedBytes: fc.integer({ min: 0, max: 64 }).map((n) => n * GiB),
              }),
              { selector: (disk) => disk.name, maxLength: 3 },
            )
            .map((disks): HostRecord => ({ ...host(name, []), disks })),
        ),
      ),
      existing: fc.array(
        fc.record({
          sizeGiB: fc.integer({ min: 1, max: 16 }),
          replicas: fc.uniqueArray(
            fc.tuple(fc.constantFrom("a", "b", "c", "d", "e", "f", "g"), fc.constantFrom("d0", "d1", "d2")),
            { selector: ([h]) => h, minLength: 1, maxLength: 3 },
          ),
        }),
        { maxLength: 6 },
      ),
      failed: fc.uniqueArray(
        fc.tuple(fc.constantFrom("a", "b", "c", "d", "e", "f", "g"), fc.constantFrom("d0", "d1", "d2")),
        { selector: ([h, disk]) => `${h}/${disk}`, maxLength: 6 },
      ),
      sizeGiB: fc.integer({ min: 1, max: 32 }),
      count: fc.integer({ min: 1, max: 4 }),
    }),
  );

test("property: distinct hosts, every choice fits on a healthy disk, and the count is met exactly when enough hosts can take it", () => {
  fc.assert(
    fc.property(clusterArbitrary, ({ hosts, existing, failed, sizeGiB, count }) => {
      const checks = new Map<string, HostHealthRecord>();
      for (const [h, disk] of failed) {
        const record = checks.get(h) ?? health({});
        checks.set(h, { ...record, disks: [...record.disks, { name: disk, ok: false, detail: "EIO", probeMs: null }] });
      }
      const healthy = (h: HostRecord): HostRecord["disks"] =>
        h.disks.filter((d) => !failed.some(([fh, fd]) => fh === h.name && fd === d.name));
      const specs = existing.map((v, i) => volume(`v${i}`, v.sizeGiB, v.replicas));
      const sizeBytes = sizeGiB * GiB;
      const free = (h: HostRecord, disk: string): number => {
        const d = h.disks.find((x) => x.name === disk)!;
        const promised = specs
          .filter((s) => s.replicas.some((r) => r.host === h.name && r.disk === disk))
          .reduce((sum, s) => sum + s.sizeBytes, 0);
        return d.capacityBytes - d.usedBytes - promised;
      };
      const qualifying = hosts.filter((h) => healthy(h).some((d) => free(h, d.name) >= sizeBytes));
      let chosen;
      try {
        chosen = placeReplicas(hosts, specs, sizeBytes, count, checks);
      } catch (error) {
        assert.ok(error instanceof HavenError && error.code === "HAVEN_ERR_NO_SPACE", String(error));
        assert.ok(qualifying.length < count, `refused although ${qualifying.length} hosts qualify for ${count}`);
        assert.match(error.message, new RegExp(`only ${qualifying.length} of ${hosts.length} live host`));
        return;
      }
      assert.ok(qualifying.length >= count);
      assert.equal(chosen.length, count);
      assert.equal(new Set(chosen.map((c) => c.host)).size, count, "hosts are distinct");
      for (const choice of chosen) {
        const h = hosts.find((x) => x.name === choice.host);
        assert.ok(h !== undefined, `${choice.host} is one of the live hosts`);
        assert.ok(free(h, choice.disk) >= sizeBytes, `${choice.host}/${choice.disk} fits`);
        assert.ok(
          healthy(h).some((d) => d.name === choice.disk),
          `${choice.host}/${choice.disk} did not fail its check`,
        );
        // The disk is the host's best healthy one: no other has more free space.
        for (const other of healthy(h)) assert.ok(free(h, other.name) <= free(h, choice.disk));
      }
      // Same input, same answer.
      assert.deepEqual(placeReplicas([...hosts].reverse(), specs, sizeBytes, count, checks), chosen);
    }),
    { numRuns: 500 },
  );
});
