// What the operator reads from `haven status`, `host list`, `volume list`, `volume show` and `events`:
// the summary line counts only what is there, dead hosts and unhealthy volumes say so in words (colors
// are extra, and only when asked for), the NBD URI is where clients connect, and text from etcd cannot
// move the cursor.

import assert from "node:assert/strict";
import { clusterView, volumeView } from "../../src/cluster/cluster-view.js";
import {
  renderEvent,
  renderEventHeader,
  eventTime,
  renderHostList,
  renderStatus,
  renderSummary,
  renderVolume,
  renderVolumeList,
} from "../../src/cli/cluster-render.js";
import { clusterRecords, GiB, hostRecord, TIME } from "../helpers/cluster-records.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** Every test here takes well under a second; one still running after this bound is hung, not slow. */
const test = boundedTest(10_000);

const a = hostRecord("node1", { address: "10.0.0.1" });
const b = hostRecord("node2", {
  address: "10.0.0.2",
  disks: [
    { name: "ssd0", capacityBytes: 100 * GiB, usedBytes: 0 },
    { name: "hdd0", capacityBytes: 1024 * GiB, usedBytes: 512 * GiB },
  ],
});
const c = hostRecord("node3", { address: "10.0.0.3", disks: [] });

const summary = (hosts: number, alive: number, volumes: number, healthy: number, degraded: number, down: number) => ({
  hosts,
  aliveHosts: alive,
  volumes,
  healthyVolumes: healthy,
  degradedVolumes: degraded,
  downVolumes: down,
});

test("the summary line counts hosts and volumes and names only the states that occur", () => {
  assert.equal(renderSummary(summary(3, 3, 2, 2, 0, 0)), "3 hosts (3 alive), 2 volumes (2 healthy)");
  assert.equal(
    renderSummary(summary(3, 2, 3, 1, 1, 1)),
    "3 hosts (2 alive, 1 dead), 3 volumes (1 healthy, 1 degraded, 1 down)",
  );
  assert.equal(renderSummary(summary(1, 0, 1, 0, 0, 1)), "1 host (1 dead), 1 volume (1 down)");
  assert.equal(renderSummary(summary(0, 0, 0, 0, 0, 0)), "0 hosts, 0 volumes");
});

const records = clusterRecords({
  alive: [a, b],
  dead: [c],
  volumes: [
    { name: "web", copies: { node1: "in-sync", node2: "in-sync" } },
    { name: "db", copies: { node2: "out-of-sync", node1: "in-sync" }, epoch: 3 },
    { name: "old", copies: { node3: "in-sync", node1: "in-sync" } },
  ],
});

test("status: the summary, a host table and a volume table with health, primary, copies and NBD URI", () => {
  const text = renderStatus(clusterView(records));
  assert.equal(
    text,
    [
      "3 hosts (2 alive, 1 dead), 3 volumes (1 healthy, 1 degraded, 1 down)",
      "",
      "HOST   STATE  ADDRESS   NBD PORT  COPIES  DISKS (USED/CAPACITY)                        LINKS  HEALTH",
      "node1  alive  10.0.0.1  10809     3       ssd0 10.0 GiB/100.0 GiB                      -      -",
      "node2  alive  10.0.0.2  10809     2       ssd0 0 B/100.0 GiB, hdd0 512.0 GiB/1.00 TiB  -      -",
      "node3  dead   10.0.0.3  10809     1       (no disks)                                   -      -",
      "",
      "VOLUME  SIZE      HEALTH    PRIMARY                COPIES                                    NBD",
      "db      10.0 GiB  degraded  node2 (epoch 3)        node2 out-of-sync, node1 in-sync          nbd://10.0.0.2:10809/db",
      "old     10.0 GiB  down      node3 (epoch 1, dead)  node3 in-sync (host dead), node1 in-sync  -",
      "web     10.0 GiB  healthy   node1 (epoch 1)        node1 in-sync, node2 in-sync              nbd://10.0.0.1:10809/web",
      "",
    ].join("\n"),
  );
});

test("host and volume lists say what to do when there are none", () => {
  const empty = clusterView(clusterRecords({ alive: [] }));
  assert.match(renderHostList(empty.hosts), /^no hosts have joined the cluster/);
  assert.match(
    renderVolumeList(empty.volumes),
    /^no volumes \(create one with 'haven volume create NAME --size SIZE'\)/,
  );
});

test("volume show: every field, each copy's row, and where clients connect", () => {
  const text = renderVolume(volumeView(records, records.volumes.get("web")!));
  assert.equal(
    text,
    [
      "volume      web",
      "size        10.0 GiB (10737418240 bytes)",
      "health      healthy",
      `primary     node1 (alive), epoch 1, since ${TIME} (created)`,
      "nbd         nbd://10.0.0.1:10809/web",
      `created     ${TIME}`,
      "",
      "HOST   DISK  HOST STATE  RECORDED  DETAIL   EPOCH  UPDATED",
      `node1  ssd0  alive       in-sync   in-sync  1      ${TIME}`,
      `node2  ssd0  alive       in-sync   in-sync  1      ${TIME}`,
      "",
    ].join("\n"),
  );
});

test("volume show of a down volume says why it is not served", () => {
  const old = renderVolume(volumeView(records, records.volumes.get("old")!));
  assert.match(old, /^health {6}down$/m);
  assert.match(old, /^nbd {9}\(not served: primary host node3 is dead\)$/m);
  const none = clusterRecords({ alive: [a], volumes: [{ name: "x", copies: { node1: undefined }, primary: null }] });
  const text = renderVolume(volumeView(none, none.volumes.get("x")!));
  assert.match(text, /^primary {5}-$/m);
  assert.match(text, /^nbd {9}\(not served: the volume has no primary\)$/m);
  assert.match(text, /^node1 {2}ssd0 {2}alive {7}unrecorded {2}- {7}- {6}-$/m);
});

const ESC = "\x1b";

test("colors only when asked, on the state word and not its padding", () => {
  const view = clusterView(records);
  assert.ok(!renderStatus(view).includes(ESC));
  const colored = renderStatus(view, { color: true });
  assert.ok(colored.includes(`node3  ${ESC}[31mdead${ESC}[0m   10.0.0.3`), colored);
  assert.ok(colored.includes(`${ESC}[33mdegraded${ESC}[0m`), colored);
  assert.ok(colored.includes(`${ESC}[32mhealthy${ESC}[0m `), colored);
  // Without the escapes, the colored text is the plain text.
  assert.equal(colored.replace(/\x1b\[\d+m/g, ""), renderStatus(view)); // eslint-disable-line no-control-regex
});

test("text from etcd cannot carry terminal escapes", () => {
  const evil = clusterRecords({ alive: [hostRecord("node1", { address: `10.0.0.1${ESC}[2J` })] });
  assert.ok(!renderHostList(clusterView(evil).hosts).includes(ESC));
  const line = renderEvent({ time: TIME, host: "node1", kind: "x", message: `bad${ESC}[31m\nline` });
  assert.equal(line.split("\n").length, 2, "one line");
  assert.ok(!line.includes(ESC));
});

test("an event is one line: time, host, volume (or -), kind, message; under a header naming the time zone", () => {
  const utc = { utc: true };
  assert.equal(
    renderEvent(
      { time: TIME, host: "node1", volume: "web", kind: "failover", message: "node2 took over at epoch 2" },
      utc,
    ),
    `2024-05-01 12:00:00.000  node1         web           failover              node2 took over at epoch 2\n`,
  );
  assert.equal(
    renderEvent({ time: TIME, host: "cli@admin-laptop", kind: "host-joined", message: "m" }, utc),
    `2024-05-01 12:00:00.000  cli@admin-laptop  -             host-joined           m\n`,
  );
  assert.equal(
    renderEventHeader(utc),
    "TIME (UTC)               HOST          VOLUME        KIND                  MESSAGE\n",
  );
});

test("event times are local unless --utc: the same instant, shifted by the local offset the header names", () => {
  const event = { time: TIME, host: "node1", kind: "x", message: "m" };
  const local = renderEvent(event).slice(0, 23);
  const offsetMs = -new Date(TIME).getTimezoneOffset() * 60_000;
  assert.equal(local, eventTime(new Date(Date.parse(TIME) + offsetMs).toISOString(), { utc: true }));
  assert.match(renderEventHeader({}, new Date(TIME)), /^TIME \(UTC[+-]\d\d:\d\d\) /);
  assert.equal(eventTime("not a time"), "not a time", "a malformed time is shown as stored");
});

test("health checks: each live host's verdict, and a resyncing copy's progress as a bar with rate and time left", () => {
  const withHealth = {
    ...records,
    health: new Map([
      [
        "node1",
        {
          checkedAt: TIME,
          eventLoopLagMs: 3,
          problems: [],
          copies: [],
          disks: [],
          links: [
            { peer: "node2", up: true, rttMs: 0.42, detail: "ok" },
            { peer: "node3", up: false, rttMs: null, detail: "4 heartbeats missed in a row (refused)" },
            { peer: "node4", up: false, rttMs: null, detail: "0 heartbeats missed in a row", starting: true },
          ],
        },
      ],
      [
        "node2",
        {
          checkedAt: TIME,
          eventLoopLagMs: 1500,
          problems: ["event loop stalled 1500 ms (limit 1000)", "volume db: node1's copy is faulted"],
          copies: [
            { volume: "db", host: "node2", disk: "ssd0", state: "in-sync", resync: null },
            {
              volume: "db",
              host: "node1",
              disk: "ssd0",
              state: "resyncing",
              resync: { percent: 42, bytesPerSecond: 80 * 1024 * 1024, etaSeconds: 12 },
            },
          ],
          disks: [],
          links: [],
        },
      ],
      // A dead host's last check is not shown: it says nothing about now.
      ["node3", { checkedAt: TIME, eventLoopLagMs: 0, problems: ["stale"], copies: [], disks: [], links: [] }],
    ]),
  };
  const view = clusterView(withHealth);
  const hosts = renderStatus(view).split("\n");
  assert.match(
    hosts.find((line) => line.startsWith("node1"))!,
    / node2 up 0\.4 ms, node3 DOWN, node4 starting +ok$/,
  );
  assert.match(
    hosts.find((line) => line.startsWith("node2"))!,
    / event loop stalled 1500 ms \(limit 1000\) \(\+1 more\)$/,
  );
  assert.match(
    hosts.find((line) => line.startsWith("node3"))!,
    / -$/,
  );
  assert.match(
    hosts.find((line) => line.startsWith("db "))!,
    /node1 resyncing 42%/,
  );
  const shown = renderVolume(volumeView(withHealth, withHealth.volumes.get("db")!));
  assert.match(shown, /resyncing {2}42% \[########\.{12}\] 80\.0 MiB\/s, 12 s left/);
});
