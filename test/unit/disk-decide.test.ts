// What a host does about its failed disks (disk-decide.ts): each copy on a failed or missing disk
// whose volume has another copy in sync moves to a spare with room (the largest first, never one that
// holds a copy of the volume); a volume whose only in-sync copy is there stays; without a spare the
// operator is told once which disk to replace, with its identity and path.

import assert from "node:assert/strict";
import { decideFailedDisks, type OwnDisk } from "../../src/agent/disk-decide.js";
import type { ReplicaRecord, VolumeSpec } from "../../src/cluster/schema.js";
import { boundedTest } from "../helpers/bounded-test.js";

const test = boundedTest(10_000);
const GiB = 1024 ** 3;

function disk(name: string, fields: Partial<OwnDisk> = {}): OwnDisk {
  return {
    name,
    state: "online",
    spare: false,
    freeBytes: 100 * GiB,
    path: `/srv/${name}`,
    identity: `serial ${name.toUpperCase()}`,
    reason: "ok",
    ...fields,
  };
}

function spec(name: string, sizeGiB: number, copies: string[]): VolumeSpec {
  return {
    name,
    sizeBytes: sizeGiB * GiB,
    replicas: copies.map((id) => ({ host: id.split("/")[0]!, disk: id.split("/")[1]! })),
    createdAt: "2026-01-01T00:00:00Z",
  };
}

function records(
  entries: Record<string, Record<string, "in-sync" | "out-of-sync">>,
): Map<string, Map<string, ReplicaRecord>> {
  return new Map(
    Object.entries(entries).map(([volume, copies]) => [
      volume,
      new Map(Object.entries(copies).map(([id, state]) => [id, { state, detail: state, epoch: 1, updatedAt: "t" }])),
    ]),
  );
}

test("a failed disk's copies move to the spare with the most room; a healthy disk's stay", () => {
  const actions = decideFailedDisks({
    me: "h1",
    disks: [
      disk("d0", { state: "failed", reason: "read-only" }),
      disk("s1", { spare: true, freeBytes: 10 * GiB }),
      disk("s2", { spare: true, freeBytes: 50 * GiB }),
      disk("d3"),
    ],
    volumes: [spec("v", 8, ["h1/d0", "h2/d0"]), spec("w", 4, ["h1/d3", "h2/d0"])],
    records: records({
      v: { "h1/d0": "out-of-sync", "h2/d0": "in-sync" },
      w: { "h1/d3": "in-sync", "h2/d0": "in-sync" },
    }),
    announced: new Set(),
  });
  assert.deepEqual(actions, [
    { kind: "rebuild-on-spare", volume: "v", from: { host: "h1", disk: "d0" }, to: { host: "h1", disk: "s2" } },
  ]);
});

test("a volume whose only in-sync copy is on the failed disk keeps it there", () => {
  const actions = decideFailedDisks({
    me: "h1",
    disks: [disk("d0", { state: "missing" }), disk("s1", { spare: true })],
    volumes: [spec("v", 1, ["h1/d0", "h2/d0"])],
    records: records({ v: { "h1/d0": "in-sync", "h2/d0": "out-of-sync" } }),
    announced: new Set(),
  });
  assert.deepEqual(actions, []);
});

test("spares fill up: what does not fit is announced once, naming the disk's identity and path", () => {
  const input = {
    me: "h1",
    disks: [disk("d0", { state: "failed", reason: "probe failed" }), disk("s1", { spare: true, freeBytes: 5 * GiB })],
    volumes: [spec("a", 4, ["h1/d0", "h2/d0"]), spec("b", 4, ["h1/d0", "h2/d0"])],
    records: records({ a: { "h2/d0": "in-sync" }, b: { "h2/d0": "in-sync" } }),
    announced: new Set<string>(),
  };
  const actions = decideFailedDisks(input);
  assert.equal(actions.length, 2);
  assert.deepEqual(actions[0], {
    kind: "rebuild-on-spare",
    volume: "a",
    from: { host: "h1", disk: "d0" },
    to: { host: "h1", disk: "s1" },
  });
  assert.equal(actions[1]!.kind, "needs-replacement");
  assert.match(
    (actions[1] as { message: string }).message,
    /disk d0 of h1 is failed \(probe failed\) and no spare has room .* It is serial D0, at \/srv\/d0\. Degraded meanwhile: b\./,
  );
  assert.deepEqual(
    decideFailedDisks({ ...input, announced: new Set(["d0"]) }).map((a) => a.kind),
    ["rebuild-on-spare"],
  );
});

test("a spare that holds a copy of the volume already is not used for it; a failed spare is no spare", () => {
  const actions = decideFailedDisks({
    me: "h1",
    disks: [disk("d0", { state: "failed" }), disk("s1", { spare: true }), disk("s2", { spare: true, state: "failed" })],
    volumes: [spec("v", 1, ["h1/d0", "h1/s1", "h2/d0"])],
    records: records({ v: { "h2/d0": "in-sync", "h1/s1": "in-sync" } }),
    announced: new Set(),
  });
  assert.equal(actions.length, 1);
  assert.equal(actions[0]!.kind, "needs-replacement");
});
