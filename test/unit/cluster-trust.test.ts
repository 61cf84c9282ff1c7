// The trust boundary of the control plane (issue 16, item 5): names read from etcd follow the name
// rules before anything acts on them (a volume `../../escape` never reaches a path), every parser
// refuses a record whose names break them, messages show untrusted names cut short and escaped, and
// the agent logs each malformed record once per key and revision and holds the volume it is about.

import assert from "node:assert/strict";
import fc from "fast-check";
import type { MalformedRecord } from "../../src/cluster/cluster-read.js";
import { parseDiskRecord } from "../../src/cluster/disk-schema.js";
import {
  escapeControls,
  isDiskName,
  isEventKind,
  isHostName,
  isVmName,
  isVolumeName,
  quoteName,
} from "../../src/cluster/names.js";
import {
  parseEventRecord,
  parseHandoverRecord,
  parseHostRecord,
  parsePrimaryRecord,
  parseVolumeSpec,
} from "../../src/cluster/schema.js";
import { parseVmRecord, parseVmStatusRecord } from "../../src/cluster/vm-schema.js";
import { HavenError } from "../../src/core/errors.js";
import { MalformedRecords } from "../../src/agent/malformed-records.js";
import { hostRecord } from "../helpers/cluster-records.js";
import { failsWith } from "../helpers/errors.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** Every test here takes well under a second; one still running after this bound is hung, not slow. */
const test = boundedTest(10_000);

const TIME = "2026-12-05T00:00:00.000Z";
const PATHS = ["../../escape", "..", ".", "/etc", "a/b", "a@b", "", "-x", "a b", "a\nb", "x".repeat(64), "é"];

test("no name that could leave a directory or a key segment passes any name rule", () => {
  for (const name of PATHS) {
    for (const valid of [isHostName, isDiskName, isVmName, isVolumeName])
      assert.equal(valid(name), false, `${valid.name}(${JSON.stringify(name)})`);
  }
  for (const name of ["h1", "node-2.example", "disk0", "web_1", "a".repeat(63)]) {
    assert.ok(isHostName(name) && isDiskName(name) && isVmName(name), name);
  }
  assert.ok(isVolumeName("web1-disk0"));
  assert.equal(isVolumeName("Web1"), false, "volume names are lower case, as volume create takes them");
  assert.ok(isEventKind("replica-out-of-sync"));
  assert.equal(isEventKind("<b>failover</b>"), false);
});

test("any string that passes a name rule is one path segment that stays in its directory", () => {
  fc.assert(
    fc.property(fc.string({ maxLength: 80 }), (name) => {
      if (!isHostName(name) && !isVolumeName(name)) return;
      assert.ok(!name.includes("/") && !name.includes("\0") && name !== "." && name !== "..");
      assert.ok(!name.startsWith("."), "no name is hidden or a parent");
    }),
  );
});

test("an untrusted name is quoted cut short, control characters as \\uXXXX, no raw markup", () => {
  assert.equal(quoteName("web"), `"web"`);
  assert.equal(quoteName(`a"b\\c`), `"a\\"b\\\\c"`);
  assert.equal(quoteName("a\u0001b\nc\u007f"), `"a\\u0001b\\u000ac\\u007f"`);
  assert.equal(quoteName("<script>&"), `"\\u003cscript\\u003e\\u0026"`);
  const long = quoteName("x".repeat(500));
  assert.equal(long, `"${"x".repeat(64)}..."`);
  fc.assert(
    fc.property(fc.string({ maxLength: 300 }), (name) => {
      const quoted = quoteName(name);
      // eslint-disable-next-line no-control-regex
      assert.ok(!/[\u0000-\u001f\u007f-\u009f<>&\u2028\u2029]/.test(quoted), quoted);
      assert.ok(quoted.length <= 2 + 6 * 64 + 3);
      assert.equal(typeof JSON.parse(quoted), "string", "it is a JSON string");
    }),
  );
  assert.equal(escapeControls("line\r\nforged"), "line\\u000d\\u000aforged");
});

test("a volume spec named like a path, or placing a copy on such a host or disk, is refused", () => {
  const spec = { name: "web", sizeBytes: 1024, replicas: [{ host: "h1", disk: "d0" }], createdAt: TIME };
  const key = "/haven/volumes/web";
  assert.deepEqual(parseVolumeSpec(JSON.stringify(spec), key), spec);
  for (const [change, message] of [
    [{ name: "../../escape" }, /name "..\/..\/escape" is not a volume name/],
    [{ replicas: [{ host: "../h1", disk: "d0" }] }, /replicas\[0\] is malformed: host "..\/h1" is not a host name/],
    [{ replicas: [{ host: "h1", disk: "/dev/sda" }] }, /disk "\/dev\/sda" is not a disk name/],
  ] as const) {
    assert.throws(
      () => parseVolumeSpec(JSON.stringify({ ...spec, ...change }), key),
      failsWith("HAVEN_ERR_IO", message),
    );
  }
});

test("host, primary, handover, VM, VM status and disk records refuse names that break the rules", () => {
  const host = hostRecord("h1");
  assert.throws(
    () => parseHostRecord(JSON.stringify({ ...host, name: "h1/../x" }), "/haven/hosts/x"),
    failsWith("HAVEN_ERR_IO", /is not a host name/),
  );
  assert.throws(
    () => parseHostRecord(JSON.stringify({ ...host, disks: [{ ...host.disks[0], name: ".." }] }), "/haven/hosts/h1"),
    failsWith("HAVEN_ERR_IO", /is not a disk name/),
  );
  assert.throws(
    () => parsePrimaryRecord(JSON.stringify({ host: "../h2", epoch: 1, since: TIME, reason: "x" }), "/haven/primary/v"),
    failsWith("HAVEN_ERR_IO", /host "..\/h2" is not a host name/),
  );
  assert.throws(
    () => parseHandoverRecord(JSON.stringify({ to: "h2\n", requestedBy: "x", requestedAt: TIME }), "/haven/handover/v"),
    failsWith("HAVEN_ERR_IO", /to "h2\\u000a" is not a host name/),
  );
  const vm = { name: "web", vcpus: 1, memoryMiB: 64, volume: "web-disk", boot: "disk", nics: [], heartbeat: false };
  const vmRecord = {
    ...vm,
    desired: "started",
    startRequest: 0,
    policy: { maxRestart: 1, maxRelocate: 1 },
    createdAt: TIME,
  };
  assert.equal(parseVmRecord(JSON.stringify(vmRecord), "/haven/vms/web").volume, "web-disk");
  assert.throws(
    () => parseVmRecord(JSON.stringify({ ...vmRecord, volume: "../../etc" }), "/haven/vms/web"),
    failsWith("HAVEN_ERR_IO", /volume "..\/..\/etc" is not a volume name/),
  );
  const status = {
    host: "h1",
    state: "running",
    reason: "ok",
    since: TIME,
    startRequest: 0,
    restarts: 0,
    relocations: 0,
    checks: {},
    updatedAt: TIME,
  };
  assert.throws(
    () => parseVmStatusRecord(JSON.stringify({ ...status, relocatingTo: "a/b" }), "/haven/vm-status/web"),
    failsWith("HAVEN_ERR_IO", /relocatingTo "a\/b" is not a host name/),
  );
  const disk = {
    host: "h1",
    disk: "d0",
    path: "/srv/d0",
    state: "online",
    reason: "ok",
    spare: false,
    identity: { kind: "serial", value: "S1" },
    sizeBytes: 1,
    freeBytes: 1,
    usedBytes: 0,
    fsId: "x",
    copies: [{ volume: "../../escape", allocatedBytes: 0 }],
    updatedAt: TIME,
  };
  assert.throws(
    () => parseDiskRecord(JSON.stringify(disk), "/haven/disks/h1/d0"),
    failsWith("HAVEN_ERR_IO", /volume "..\/..\/escape" is not a volume name/),
  );
});

test("an event with a forged author, kind, volume, time or an endless message is refused", () => {
  const event = { time: TIME, host: "cli@laptop", volume: "web", kind: "failover", message: "promoted h2" };
  const key = "/haven/events/000000000000001-00000000";
  assert.deepEqual(parseEventRecord(JSON.stringify(event), key), event);
  for (const [change, message] of [
    [{ host: "h1\nh2 fenced" }, /host "h1\\u000ah2 fenced" is not a host or an operator/],
    [{ kind: "<b>failover</b>" }, /kind "\\u003cb\\u003efailover/],
    [{ volume: "../../escape" }, /volume "..\/..\/escape" is not a volume name/],
    [{ time: "yesterday" }, /time is not a time/],
    [{ message: "x".repeat(5000) }, /message is over 4096 characters/],
  ] as const) {
    assert.throws(
      () => parseEventRecord(JSON.stringify({ ...event, ...change }), key),
      failsWith("HAVEN_ERR_IO", message),
    );
  }
});

test("the agent logs a malformed record once per key and revision, and holds its volume", () => {
  const lines: string[] = [];
  const records = new MalformedRecords((line) => lines.push(line));
  const malformed = (key: string, modRevision: number): MalformedRecord => ({
    key,
    modRevision,
    error: new HavenError("HAVEN_ERR_IO", `cluster state at ${key} is malformed: test`),
  });
  const round = [
    malformed("/haven/volumes/../../escape", 5),
    malformed("/haven/primary/web", 6),
    malformed("/haven/replicas/db/../../h1/d0", 8),
    malformed("/haven/replicas/db/h1", 9),
  ];
  for (let i = 0; i < 10; i++) records.note(round);
  assert.equal(lines.length, 4, "ten rounds, four records, four lines");
  assert.deepEqual([...records.heldVolumes], ["web"], "a valid volume with a bad record is held; a bad key holds none");
  records.note([...round.slice(1), malformed("/haven/volumes/../../escape", 7)]);
  assert.equal(lines.length, 5, "a rewrite (new revision) is logged again, the rest not");
  records.note([]);
  assert.deepEqual([...records.heldVolumes], []);
  records.note([malformed("/haven/primary/web", 6), malformed("/haven/replicas/db/h1/d0", 10)]);
  assert.equal(lines.length, 7, "a key that went away and came back is logged again");
  assert.deepEqual([...records.heldVolumes].sort(), ["db", "web"], "a well-formed copy key with a bad value holds");
});
