// The cluster's records come from etcd, where any process with access can write: each parser accepts
// exactly the shape schema.ts documents and refuses anything else with HAVEN_ERR_IO naming the key and
// the field. Health records: disks and links are checked like the rest, and may be absent (an agent
// from before they existed).

import assert from "node:assert/strict";
import { parseHostHealthRecord, parseHostRecord, type HostHealthRecord } from "../../src/cluster/schema.js";
import { failsWith } from "../helpers/errors.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** Every test here takes well under a second; one still running after this bound is hung, not slow. */
const test = boundedTest(10_000);

const KEY = "/haven/health/h1";
const good: HostHealthRecord = {
  checkedAt: "2026-11-27T00:00:00.000Z",
  eventLoopLagMs: 12,
  problems: ["disk d1: probe write in /srv/d1 failed: EIO"],
  copies: [
    {
      volume: "v",
      host: "h2",
      disk: "d0",
      state: "resyncing",
      resync: { percent: 42.5, bytesPerSecond: 1000, etaSeconds: 3 },
    },
  ],
  disks: [
    { name: "d0", ok: true, detail: "ok", probeMs: 1.25 },
    { name: "d1", ok: false, detail: "probe write in /srv/d1 failed: EIO", probeMs: null },
  ],
  links: [
    { peer: "h2", up: true, rttMs: 0.42, detail: "ok" },
    { peer: "h3", up: false, rttMs: null, detail: "4 heartbeats missed in a row (connection refused)" },
    { peer: "h4", up: false, rttMs: null, detail: "0 heartbeats missed in a row", starting: true },
  ],
};

test("a health record round-trips through JSON, disks and links included", () => {
  assert.deepEqual(parseHostHealthRecord(JSON.stringify(good), KEY), good);
});

test("a health record without disks and links (an older agent) reads as having none", () => {
  const old: Record<string, unknown> = { ...good };
  delete old.disks;
  delete old.links;
  assert.deepEqual(parseHostHealthRecord(JSON.stringify(old), KEY), { ...good, disks: [], links: [] });
});

test("each malformed field of a health record is refused, naming the key and the field", () => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ disks: "d0" }, /health\/h1 is malformed: disks is not a list/],
    [{ links: {} }, /links is not a list/],
    [
      { disks: [{ name: "d0", ok: "yes", detail: "ok", probeMs: 1 }] },
      /disks\[0\] is malformed: ok is not true or false/,
    ],
    [
      { disks: [{ name: "d0", ok: true, detail: "ok", probeMs: -1 }] },
      /disks\[0\] is malformed: probeMs is not a number >= 0/,
    ],
    [{ disks: [{ ok: true, detail: "ok" }] }, /disks\[0\] is malformed: name is not a string/],
    [
      { links: [{ peer: "h2", up: true, rttMs: "fast", detail: "ok" }] },
      /links\[0\] is malformed: rttMs is not a number >= 0/,
    ],
    [{ links: [{ peer: "h2", up: 1, rttMs: null, detail: "ok" }] }, /links\[0\] is malformed: up is not true or false/],
    [{ links: [{ peer: "h2", up: true, rttMs: null }] }, /links\[0\] is malformed: detail is not a string/],
    [
      { links: [{ peer: "h2", up: false, rttMs: null, detail: "0 missed", starting: "yes" }] },
      /links\[0\] is malformed: starting is not true or false/,
    ],
    [{ problems: [1] }, /problems is not a list of strings/],
  ];
  for (const [change, message] of cases) {
    assert.throws(
      () => parseHostHealthRecord(JSON.stringify({ ...good, ...change }), KEY),
      failsWith("HAVEN_ERR_IO", message),
    );
  }
  assert.throws(() => parseHostHealthRecord("not json", KEY), failsWith("HAVEN_ERR_IO", /not JSON/));
});

test('a host record says "insecure" only when its agent runs without TLS by choice', () => {
  const record = {
    name: "h1",
    address: "10.0.0.1",
    apiPort: 7480,
    replicationPort: 7481,
    nbdPort: 10809,
    disks: [],
    startedAt: "2026-12-05T00:00:00.000Z",
  };
  assert.equal(parseHostRecord(JSON.stringify(record), "/hosts/h1").insecure, undefined);
  assert.equal(parseHostRecord(JSON.stringify({ ...record, insecure: true }), "/hosts/h1").insecure, true);
  assert.equal(parseHostRecord(JSON.stringify({ ...record, insecure: "yes" }), "/hosts/h1").insecure, undefined);
});
