// Live migration's rules as pure functions: what each of the two hosts does at each phase
// (migration-decide.ts), what an operator's request must pass (migration-admin.ts planMigration), and
// the record's checks (migration-schema.ts).

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  INCOMING_PREPARE_TIMEOUT_MS,
  decideMigration,
  type MigrationHere,
  type MigrationView,
} from "../../src/agent/migration-decide.js";
import { planMigration } from "../../src/cluster/migration-admin.js";
import { parseMigrationRecord, type MigrationRecord } from "../../src/cluster/migration-schema.js";
import type { ClusterRecords } from "../../src/cluster/cluster-read.js";
import { DEFAULT_VM_POLICY, type VmRecord } from "../../src/cluster/vm-schema.js";
import { TIME, clusterRecords, hostRecord } from "../helpers/cluster-records.js";

const record: MigrationRecord = {
  vm: "web",
  volume: "web",
  from: "h1",
  to: "h2",
  id: "0b7c1d2e-aaaa-4bbb-8ccc-123456789abc",
  phase: "requested",
  requestedBy: "admin@laptop",
  requestedAt: TIME,
  since: TIME,
};

function view(overrides: Partial<MigrationView> = {}): MigrationView {
  return {
    me: "h2",
    now: 10_000,
    alive: new Set(["h1", "h2"]),
    primary: "h1",
    servedHere: false,
    handoverPending: false,
    ...overrides,
  };
}

const idle: MigrationHere = { runsHere: false, seenAtMs: 10_000 };

test("the destination prepares an incoming QEMU once, and only while the source is the primary", () => {
  assert.equal(decideMigration(record, idle, view()).kind, "prepare");
  assert.equal(decideMigration(record, { ...idle, incoming: "listening" }, view()).kind, "none");
  // The disk moved elsewhere meanwhile (a failover): the request is moot and the destination ends it.
  assert.deepEqual(decideMigration(record, idle, view({ primary: "h3" })), {
    kind: "abandon",
    reason: "the disk's primary moved to h3 meanwhile (not the source h1)",
    end: true,
  });
  assert.equal(decideMigration({ ...record, phase: "incoming" }, idle, view()).kind, "none");
});

test("the destination resumes the guest only with the whole state, as the disk's served primary", () => {
  const complete = { ...idle, incoming: "completed" as const };
  assert.equal(decideMigration(record, complete, view({ primary: "h2", servedHere: true })).kind, "resume-here");
  assert.equal(decideMigration(record, complete, view({ primary: "h2", servedHere: false })).kind, "none");
  assert.equal(decideMigration(record, complete, view({ primary: "h1" })).kind, "none");
  // The source died after a complete transfer: the state is here, so the guest waits for its disk.
  assert.equal(decideMigration(record, complete, view({ alive: new Set(["h2"]) })).kind, "none");
  const listening = { ...idle, incoming: "listening" as const };
  assert.equal(decideMigration(record, listening, view({ primary: "h2", servedHere: true })).kind, "none");
});

test("the destination abandons its QEMU when the transfer fails or the source dies before the end", () => {
  const failed = decideMigration(record, { ...idle, incoming: "failed" }, view());
  assert.equal(failed.kind, "abandon");
  const dead = decideMigration(record, { ...idle, incoming: "listening" }, view({ alive: new Set(["h2"]) }));
  assert.deepEqual(dead, { kind: "abandon", reason: "the source h1 is down", end: true });
  assert.equal((decideMigration(record, { ...idle, incoming: "failed" }, view()) as { end: boolean }).end, false);
  // Nothing started here yet and the source is gone: the record ends here too.
  assert.equal(decideMigration(record, idle, view({ alive: new Set(["h2"]) })).kind, "abandon");
});

test("the source transfers once the destination listens, then switches the disk, then waits", () => {
  const here: MigrationHere = { runsHere: true, seenAtMs: 10_000 };
  const source = view({ me: "h1", primary: "h1", servedHere: true });
  assert.equal(decideMigration(record, here, source).kind, "none");
  const listening = { ...record, phase: "incoming" as const, incoming: "tcp:127.0.0.1:4444" };
  assert.deepEqual(decideMigration(listening, here, source), { kind: "transfer", uri: "tcp:127.0.0.1:4444" });
  assert.equal(decideMigration(listening, { ...here, outgoing: "transferring" }, source).kind, "none");
  assert.equal(decideMigration(listening, { ...here, outgoing: "completed" }, source).kind, "switch");
  const switching = { ...listening, phase: "switching" as const };
  assert.equal(
    decideMigration(switching, { ...here, outgoing: "completed" }, { ...source, handoverPending: true }).kind,
    "none",
  );
  // The switchover moved the disk: the destination resumes, the source does nothing.
  assert.equal(
    decideMigration(switching, { ...here, outgoing: "completed" }, { ...source, primary: "h2" }).kind,
    "none",
  );
});

test("the source gives up, keeping the guest, on every failure before the switch", () => {
  const here: MigrationHere = { runsHere: true, seenAtMs: 10_000 };
  const source = view({ me: "h1", primary: "h1", servedHere: true });
  const listening = { ...record, phase: "incoming" as const, incoming: "tcp:127.0.0.1:4444" };
  const cases: [MigrationRecord, MigrationHere, MigrationView, RegExp][] = [
    [listening, { ...here, outgoing: "failed", failure: "connection reset" }, source, /connection reset/],
    [listening, { ...here, outgoing: "transferring" }, { ...source, alive: new Set(["h1"]) }, /h2 is down/],
    [record, { ...here, runsHere: false }, source, /does not run on h1/],
    [record, here, { ...source, primary: "h3" }, /no longer h1/],
    [record, here, { ...source, now: 10_000 + INCOMING_PREPARE_TIMEOUT_MS }, /did not start its incoming QEMU/],
    [{ ...listening, phase: "switching" }, { ...here, outgoing: "completed" }, source, /switchover to h2 was refused/],
  ];
  for (const [r, h, v, reason] of cases) {
    const action = decideMigration(r, h, v);
    assert.equal(action.kind, "give-up", `${reason}`);
    assert.match((action as { reason: string }).reason, reason);
  }
});

test("a host neither source nor destination does nothing", () => {
  assert.equal(decideMigration(record, idle, view({ me: "h3" })).kind, "none");
});

const vm: VmRecord = {
  name: "web",
  vcpus: 1,
  memoryMiB: 256,
  volume: "web",
  boot: "disk",
  nics: [],
  heartbeat: true,
  desired: "started",
  startRequest: 1,
  policy: DEFAULT_VM_POLICY,
  createdAt: TIME,
};

const capacity = { cpus: [0, 1], memoryMiB: 1024 };

function records(overrides: Partial<ClusterRecords> = {}, h3Copy?: "in-sync" | "out-of-sync"): ClusterRecords {
  const base = clusterRecords({
    alive: ["h1", "h2", "h3"].map((name) => hostRecord(name, { vmCapacity: capacity })),
    volumes: [{ name: "web", copies: { h1: "in-sync", h2: "in-sync", ...(h3Copy && { h3: h3Copy }) } }],
  });
  return {
    ...base,
    vms: new Map([["web", vm]]),
    vmStatus: new Map([
      [
        "web",
        {
          record: {
            host: "h1",
            state: "running",
            reason: "",
            since: TIME,
            startRequest: 1,
            restarts: 0,
            relocations: 0,
            checks: {},
            updatedAt: TIME,
          },
          modRevision: 1,
        },
      ],
    ]),
    ...overrides,
  };
}

test("a request passes to a live host with an in-sync copy and room", () => {
  const plan = planMigration(records(), "web", "h2", false);
  assert.deepEqual(
    { from: plan.from, to: plan.to, needsCopy: plan.needsCopy },
    { from: "h1", to: "h2", needsCopy: false },
  );
  assert.equal(planMigration(records(), "web", "h3", true).needsCopy, true);
});

test("each bad request is refused with the reason and the fix", () => {
  const base = records();
  const cases: [ClusterRecords, string, RegExp][] = [
    [base, "h3", /holds no copy .* add --copy/],
    [records({}, "out-of-sync"), "h3", /not in sync yet/],
    [base, "h1", /runs on h1 already/],
    [base, "h9", /no host named "h9"/],
    [records({ liveHosts: new Map([["h1", hostRecord("h1", { vmCapacity: capacity })]]) }), "h2", /h2 is down/],
    [records({ maintenance: new Map([["h2", { since: TIME, by: "admin" }]]) }), "h2", /in maintenance/],
    [records({ handovers: new Set(["web"]) }), "h2", /switchover .* under way/],
    [records({ vms: new Map([["web", { ...vm, memoryMiB: 4096 }]]) }), "h2", /no room .* lacks memory/],
    [
      records({ migrations: new Map([["web", { record, modRevision: 3 }]]) }),
      "h2",
      /being migrated already \(h1 to h2/,
    ],
    [records({ vms: new Map([["web", { ...vm, desired: "stopped" }]]) }), "h2", /not running.*vm start web --host h2/],
  ];
  for (const [r, to, message] of cases) assert.throws(() => planMigration(r, "web", to, false), message);
  assert.throws(() => planMigration(base, "ghost", "h2", false), /no VM named "ghost"/);
});

test("the record's checks refuse what no agent wrote", () => {
  const text = JSON.stringify(record);
  assert.deepEqual(parseMigrationRecord(text, "k"), record);
  for (const bad of [
    { ...record, phase: "flying" },
    { ...record, incoming: "unix:/tmp/x" },
    { ...record, to: "../etc" },
    { ...record, id: "Not An Id" },
  ])
    assert.throws(() => parseMigrationRecord(JSON.stringify(bad), "k"));
});
