// The dashboard's pure views: a snapshot says how old each host's health check is and puts the disks
// under their host; the event filters match names whole (h1 is not h10, VM web is not VM web2).

import { test } from "node:test";
import assert from "node:assert/strict";
import { dashboardSnapshot, filterEvents } from "../../src/api/dashboard-snapshot.js";
import type { StoredEvent } from "../../src/cluster/cluster-read.js";
import { clusterRecords, hostRecord } from "../helpers/cluster-records.js";

test("a snapshot gives each live host's health age from the clock passed in; a dead host has none", () => {
  const base = clusterRecords({
    alive: [hostRecord("h1")],
    dead: [hostRecord("h2")],
    volumes: [{ name: "v1", copies: { h1: "in-sync", h2: "in-sync" } }],
  });
  const records = {
    ...base,
    health: new Map([
      [
        "h1",
        { checkedAt: "2024-05-01T12:00:00.000Z", eventLoopLagMs: 2, problems: [], copies: [], disks: [], links: [] },
      ],
    ]),
  };
  const snapshot = dashboardSnapshot(records, "h1", new Date("2024-05-01T12:00:02.500Z"));
  assert.equal(snapshot.servedBy, "h1");
  assert.deepEqual(
    snapshot.hosts.map((host) => [host.name, host.state, host.healthAgeMs]),
    [
      ["h1", "alive", 2500],
      ["h2", "dead", null],
    ],
  );
  assert.deepEqual(
    snapshot.hosts.map((host) => host.diskViews.map((disk) => `${disk.host}/${disk.disk}`)),
    [["h1/ssd0"], ["h2/ssd0"]],
  );
  assert.equal(snapshot.volumes[0]!.health, "degraded", "a copy on a dead host");
});

function stored(key: string, host: string, message: string, volume?: string): StoredEvent {
  return {
    key,
    createRevision: 1,
    event: { time: `2024-05-01T12:00:0${key}.000Z`, host, kind: "k", message, ...(volume && { volume }) },
  };
}

const events = [
  stored("1", "h1", "agent up", undefined),
  stored("2", "h10", "agent up", undefined),
  stored("3", "admin@cli", "host h1 is in maintenance (drained)"),
  stored("4", "h2", "VM web2 started", "web2"),
  stored("5", "h2", "VM web started", "web"),
  stored("6", "h2", "stop of VM web asked.", "other"),
];
const keysOf = (list: { key: string }[]) => list.map((event) => event.key);

test("the host filter takes the host's own events and those naming it whole, never a longer name", () => {
  assert.deepEqual(keysOf(filterEvents(events, { host: "h1" }, 100)), ["1", "3"]);
  assert.deepEqual(keysOf(filterEvents(events, { host: "h10" }, 100)), ["2"]);
});

test("the VM filter takes its disk's events and the ones naming it, not a VM whose name starts the same", () => {
  assert.deepEqual(keysOf(filterEvents(events, { vm: { name: "web", volume: "web" } }, 100)), ["5", "6"]);
});

test("after, since and limit: only newer events, the newest N, oldest first", () => {
  assert.deepEqual(keysOf(filterEvents(events, { after: "4" }, 100)), ["5", "6"]);
  assert.deepEqual(keysOf(filterEvents(events, { since: new Date("2024-05-01T12:00:05.000Z") }, 100)), ["5", "6"]);
  assert.deepEqual(keysOf(filterEvents(events, {}, 2)), ["5", "6"]);
});
