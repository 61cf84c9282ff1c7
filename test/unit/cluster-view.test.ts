// The cluster view's rules: a host is alive while its lease-bound record exists and dead when only
// its permanent record does; a volume is down when no live host serves it, degraded when a copy is not
// recorded in-sync or is on a dead host, healthy otherwise; clients are pointed at the primary's NBD
// URI only while its host is alive.

import assert from "node:assert/strict";
import { clusterView, diskEntries, nbdUri, volumeView } from "../../src/cluster/cluster-view.js";
import type { CopyHealth, HostHealthRecord, LinkHealth } from "../../src/cluster/schema.js";
import { clusterRecords, hostRecord } from "../helpers/cluster-records.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** Every test here takes well under a second; one still running after this bound is hung, not slow. */
const test = boundedTest(10_000);

const a = hostRecord("a", { address: "10.0.0.1", nbdPort: 10809 });
const b = hostRecord("b", { address: "10.0.0.2" });
const c = hostRecord("c", { address: "10.0.0.3" });

test("a host is alive with its lease-bound record, dead with only its permanent one; hosts sort by name", () => {
  const view = clusterView(clusterRecords({ alive: [c, a], dead: [b] }));
  assert.deepEqual(
    view.hosts.map((host) => [host.name, host.state]),
    [
      ["a", "alive"],
      ["b", "dead"],
      ["c", "alive"],
    ],
  );
  assert.equal(view.summary.hosts, 3);
  assert.equal(view.summary.aliveHosts, 2);
});

test("a live host's own record is shown (fresher disk usage) over its permanent one", () => {
  const records = clusterRecords({ alive: [a] });
  const stale = { ...a, disks: [] };
  const view = clusterView({ ...records, knownHosts: new Map([["a", stale]]) });
  assert.deepEqual(view.hosts[0]!.disks, a.disks);
});

test("volume health: healthy, degraded (a copy out of sync, unrecorded or on a dead host), down (primary dead or none)", () => {
  const records = clusterRecords({
    alive: [a, b],
    dead: [c],
    volumes: [
      { name: "fine", copies: { a: "in-sync", b: "in-sync" } },
      { name: "behind", copies: { a: "in-sync", b: "out-of-sync" } },
      { name: "unrecorded", copies: { a: "in-sync", b: undefined } },
      { name: "lost-copy", copies: { a: "in-sync", c: "in-sync" } },
      { name: "primary-dead", copies: { c: "in-sync", a: "in-sync" } },
      { name: "no-primary", copies: { a: "in-sync", b: "in-sync" }, primary: null },
      { name: "unknown-primary", copies: { a: "in-sync" }, primary: "zz" },
    ],
  });
  const health = Object.fromEntries(clusterView(records).volumes.map((v) => [v.name, v.health]));
  assert.deepEqual(health, {
    behind: "degraded",
    fine: "healthy",
    "lost-copy": "degraded",
    "no-primary": "down",
    "primary-dead": "down",
    unrecorded: "degraded",
    "unknown-primary": "down",
  });
  const summary = clusterView(records).summary;
  assert.deepEqual(
    [summary.volumes, summary.healthyVolumes, summary.degradedVolumes, summary.downVolumes],
    [7, 1, 3, 3],
  );
});

test("the NBD URI is the primary host's address and NBD port while it is alive, none otherwise", () => {
  const records = clusterRecords({
    alive: [a, b],
    dead: [c],
    volumes: [
      { name: "web", copies: { a: "in-sync", b: "in-sync" } },
      { name: "db", copies: { c: "in-sync", b: "in-sync" } },
    ],
  });
  assert.equal(volumeView(records, records.volumes.get("web")!).nbd, "nbd://10.0.0.1:10809/web");
  const db = volumeView(records, records.volumes.get("db")!);
  assert.equal(db.nbd, null);
  assert.deepEqual([db.primary?.host, db.primary?.hostState], ["c", "dead"]);
  assert.equal(nbdUri({ address: "fd00::1", nbdPort: 10809 }, "web"), "nbd://[fd00::1]:10809/web");
});

test("copies are listed in the spec's order with their recorded state, or 'unrecorded'", () => {
  const records = clusterRecords({
    alive: [a, b],
    volumes: [{ name: "v", copies: { b: "out-of-sync", a: undefined } }],
  });
  const copies = volumeView(records, records.volumes.get("v")!).copies;
  assert.deepEqual(
    copies.map((copy) => [copy.host, copy.state, copy.epoch]),
    [
      ["b", "out-of-sync", 1],
      ["a", "unrecorded", null],
    ],
  );
});

/** A health check of `host` with its links and the copies its engines report. */
function healthOf(links: LinkHealth[], copies: CopyHealth[] = []): HostHealthRecord {
  return { checkedAt: "2024-05-01T12:00:05.000Z", eventLoopLagMs: 1, problems: [], copies, disks: [], links };
}

const link = (peer: string, up: boolean, extra: Partial<LinkHealth> = {}): LinkHealth => ({
  peer,
  up,
  rttMs: up ? 0.3 : null,
  detail: up ? "ok" : "4 heartbeats missed",
  ...extra,
});

test("a primary is suspected as soon as a live copy-holder has its link to it down, before its lease expires", () => {
  const records = clusterRecords({
    alive: [a, b, c],
    volumes: [
      { name: "db", copies: { a: "in-sync", b: "in-sync" } },
      { name: "web", copies: { c: "in-sync", b: "in-sync" } },
    ],
  });
  const health = new Map([
    ["b", healthOf([link("a", false), link("c", true)])],
    // c holds no copy of db: its word on a says nothing about db's primary.
    ["c", healthOf([link("a", false)])],
  ]);
  const view = clusterView({ ...records, health });
  const db = view.volumes.find((volume) => volume.name === "db")!;
  assert.equal(db.primary?.hostState, "alive", "only the lease makes a host dead");
  assert.deepEqual(db.primary?.suspectedBy, [{ host: "b", detail: "4 heartbeats missed" }]);
  assert.equal(db.health, "degraded");
  const web = view.volumes.find((volume) => volume.name === "web")!;
  assert.deepEqual(web.primary?.suspectedBy, []);
  assert.equal(web.health, "healthy");
});

test("a link still starting, a link that is up, or the word of a dead host does not make a primary suspected", () => {
  const records = clusterRecords({
    alive: [a, b],
    dead: [c],
    volumes: [{ name: "db", copies: { a: "in-sync", b: "in-sync", c: "in-sync" } }],
  });
  for (const [host, links] of [
    ["b", [link("a", false, { starting: true })]],
    ["b", [link("a", true)]],
    ["c", [link("a", false)]],
  ] as const) {
    const view = volumeView(
      { ...records, health: new Map([[host, healthOf([...links])]]) },
      records.volumes.get("db")!,
    );
    assert.deepEqual(view.primary?.suspectedBy, [], `${host}: ${JSON.stringify(links)}`);
  }
});

test("a copy is never shown in-sync while the primary resyncs it, whatever its record says", () => {
  const records = clusterRecords({
    alive: [a, b],
    volumes: [{ name: "db", copies: { a: "in-sync", b: "in-sync" } }],
  });
  const resync = { percent: 98, bytesPerSecond: 1e6, etaSeconds: 1 };
  const health = new Map([
    ["a", healthOf([], [{ volume: "db", host: "b", disk: "ssd0", state: "resyncing", resync }])],
  ]);
  const view = clusterView({ ...records, health });
  const db = view.volumes[0]!;
  assert.deepEqual(
    db.copies.map((copy) => [copy.host, copy.state]),
    [
      ["a", "in-sync"],
      ["b", "resyncing"],
    ],
  );
  assert.equal(db.health, "degraded");
  const disk = diskEntries({ ...records, health }).find((entry) => entry.host === "b")!;
  assert.equal(disk.copies[0]!.state, "resyncing");
});
