// The agent's metrics as Prometheus reads them: the registry renders valid text exposition (checked by
// a strict reader of the format's grammar, which itself refuses what the format forbids), every name
// follows the naming rules (haven_ prefix, _total exactly on counters, _seconds and _bytes units, _info
// gauges of 1, no unbounded labels), the values are the agent's, every metric is documented, and the
// alert rules and the dashboard only use metrics that exist (promtool checks the rules when present).

import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { AgentMetricsRegistry } from "../../src/api/metrics/agent-metrics.js";
import type { AgentMetrics, AgentView, HostHealth } from "../../src/agent/view.js";
import type { DiskRecord } from "../../src/cluster/disk-schema.js";
import { packageRoot } from "../../src/util/repo-root.js";
import { ROLE_CHANGE_SECONDS_BOUNDS } from "../../src/agent/role-changes.js";
import { degradedStatus, FakeEngineControl } from "../helpers/fake-engine.js";
import { histogramOf, noAgentMetrics } from "../helpers/agent-metrics.js";
import { parseExposition, sampleValue, type Family } from "../helpers/exposition.js";

const root = packageRoot();
const status = degradedStatus(); // web1-disk0, epoch 7, one copy in sync and one faulted
const [local, remote] = status.replicas.map((replica) => replica.location) as [string, string];
const statusWithResync = {
  ...status,
  replicas: [
    status.replicas[0]!,
    {
      ...status.replicas[1]!,
      state: "resyncing" as const,
      resync: {
        mode: "incremental" as const,
        doneBytes: 4 << 20,
        totalBytes: 12 << 20,
        bytesPerSecond: 2_000_000,
        etaSeconds: 4,
        rule: "test",
      },
    },
  ],
};

const health: HostHealth = {
  name: "h1",
  leaseHeld: true,
  lastKeepaliveAgoMs: 250,
  eventLoopLagMs: 12,
  volumes: ["web1-disk0"],
  disks: [
    { name: "disk0", ok: true, detail: "ok", probeMs: 3.5 },
    { name: "disk1", ok: false, detail: "probe write and fsync hung for 6000 ms", probeMs: null },
  ],
  links: [
    { peer: "h2", up: true, rttMs: 0.8, detail: "ok" },
    { peer: "h3", up: false, rttMs: null, detail: "4 heartbeats missed in a row", starting: true },
  ],
};

const disk = (name: string, state: DiskRecord["state"]): DiskRecord => ({
  host: "h1",
  disk: name,
  path: `/srv/haven/${name}`,
  state,
  reason: "test",
  spare: false,
  identity: { kind: "serial", value: `S-${name}` },
  sizeBytes: 100 << 30,
  freeBytes: 60 << 30,
  usedBytes: 40 << 30,
  fsId: "dev-1",
  copies: [],
  updatedAt: "2026-12-05T00:00:00.000Z",
});

function metrics(): AgentMetrics {
  const noChanges = histogramOf([], ROLE_CHANGE_SECONDS_BOUNDS);
  return {
    timings: { leaseTtlMs: 6_000, renewIntervalMs: 1_000, fenceAfterMs: 3_500 },
    served: [
      {
        status: statusWithResync,
        copies: new Map([
          [local, { host: "h1", disk: "disk0" }],
          [remote, { host: "h2", disk: "disk0" }],
        ]),
        requests: {
          reads: 3,
          readBytes: 3 * 65536,
          writes: 2,
          writtenBytes: 4096,
          errors: 1,
          readSeconds: histogramOf([0.0002, 0.0003, 0.004]),
          writeSeconds: histogramOf([0.001, 7]),
        },
      },
    ],
    roleChanges: new Map([
      [
        "web1-disk0",
        {
          failovers: 1,
          failoverSeconds: histogramOf([1.5], ROLE_CHANGE_SECONDS_BOUNDS),
          switchovers: { done: 2, refused: 1 },
          switchoverSeconds: histogramOf([0.3, 0.4, 0.05], ROLE_CHANGE_SECONDS_BOUNDS),
        },
      ],
      [
        "db",
        {
          failovers: 0,
          failoverSeconds: noChanges,
          switchovers: { done: 0, refused: 0 },
          switchoverSeconds: noChanges,
        },
      ],
    ]),
    vms: [
      { name: "web1", volume: "web1-disk0", state: "running", restarts: 2, relocations: 0, runState: "running" },
      { name: "db", volume: "db", state: "error", restarts: 3, relocations: 1, runState: undefined },
    ],
    cluster: {
      ageMs: 800,
      hosts: [
        { name: "h1", alive: true },
        { name: "h2", alive: true },
        { name: "h3", alive: false },
      ],
      volumes: [
        {
          name: "web1-disk0",
          primaryHost: "h1",
          primaryAlive: true,
          copies: [
            { host: "h1", disk: "disk0", inSync: true },
            { host: "h2", disk: "disk0", inSync: false },
          ],
        },
        { name: "db", primaryHost: "h3", primaryAlive: false, copies: [{ host: "h3", disk: "disk0", inSync: true }] },
      ],
    },
  };
}

const view: AgentView = {
  health: () => health,
  engines: () => new Map([["web1-disk0", new FakeEngineControl(statusWithResync)]]),
  vms: () => [],
  disks: () => [disk("disk0", "online"), disk("disk1", "failing")],
  metrics,
};

/** A version with every character the label escaping must handle. */
const ODD_VERSION = 'v1 "quoted" back\\slash\nnewline';

async function scrape(agent: AgentView = view): Promise<{ text: string; families: Map<string, Family> }> {
  const text = await new AgentMetricsRegistry(agent, ODD_VERSION).render();
  return { text, families: parseExposition(text) };
}

test("the exposition reader refuses what the text format forbids", () => {
  const bad: [string, RegExp][] = [
    ['# TYPE x gauge\nx{a="unclosed} 1\n', /not closed/],
    ['# TYPE x gauge\nx{a="b\\q"} 1\n', /escape/],
    ["# TYPE x gauge\nx{a=b} 1\n", /="value" expected/],
    ["# TYPE x gauge\nx one\n", /not a sample value/],
    ["# TYPE x gauge\nx 1\n# TYPE x counter\n", /second TYPE|after its samples/],
    ['# TYPE x gauge\n# TYPE y gauge\nx 1\ny 1\nx{a="b"} 2\n', /not together/],
    ["# TYPE x gauge\nx 1\nx 2\n", /twice/],
    ["# TYPE 1x gauge\n", /not a metric name/],
    ["# TYPE x gauge\nx 1", /newline/],
    ["y 1\n", /no declared family/],
    ['# TYPE h histogram\nh_bucket{le="1"} 5\nh_bucket{le="+Inf"} 4\nh_sum 1\nh_count 4\n', /not cumulative/],
    ['# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 3\n', /not _count/],
  ];
  for (const [text, why] of bad) assert.throws(() => parseExposition(text), why, JSON.stringify(text));
  const good = parseExposition(
    '# HELP x a \\\\ and a \\n\n# TYPE x gauge\nx{a="q\\"b\\\\c\\nd",b="2",} -1.5e3 1700000000000\n\n# comment\n',
  );
  assert.equal(good.get("x")!.help, "a \\ and a \n");
  assert.deepEqual(good.get("x")!.samples[0], { name: "x", labels: { a: 'q"b\\c\nd', b: "2" }, value: -1500 });
});

test("the registry renders valid text exposition, label values escaped", async () => {
  const { text, families } = await scrape();
  assert.ok(text.endsWith("\n"));
  const info = families.get("haven_host_info")!;
  assert.deepEqual(info.samples, [{ name: "haven_host_info", labels: { host: "h1", version: ODD_VERSION }, value: 1 }]);
  for (const family of families.values()) {
    assert.ok(family.help !== undefined && family.help.length > 10, `${family.name} has a HELP that says something`);
    assert.notEqual(family.type, "untyped", `${family.name} has a TYPE`);
  }
});

test("every metric name follows the naming rules: haven_ prefix, _total exactly on counters, base units", async () => {
  const { families } = await scrape();
  const names = new AgentMetricsRegistry(view, "1").names();
  assert.ok(names.length >= 40, `${names.length} metrics`);
  for (const name of names) {
    const family = families.get(name);
    assert.ok(family !== undefined, `${name} is rendered`);
    assert.match(name, /^haven_[a-z0-9_]+$/, name);
    assert.equal(family.type === "counter", name.endsWith("_total"), `${name} (${family.type}): _total iff counter`);
    assert.doesNotMatch(name, /_total_|_(ms|milliseconds|kb|mb|mib|gib|percent)(_|$)/, `${name}: base units only`);
    // A time is in seconds and a size in bytes, said last (before _total), and a rate is per second.
    if (/duration|latency|_age|_lag|_rtt|_ttl|_interval|_after|_time/.test(name))
      assert.match(name, /_seconds(_total)?$/, `${name} is a time: _seconds`);
    if (/bytes/.test(name)) assert.match(name, /_bytes(_total|_per_second)?$/, `${name} is a size: _bytes`);
    if (name.endsWith("_info")) {
      assert.equal(family.type, "gauge", `${name}: an _info metric is a gauge`);
      for (const sample of family.samples) assert.equal(sample.value, 1, `${name}: an _info sample is 1`);
    }
  }
});

test("no label is unbounded: only names of hosts, volumes, disks, VMs, peers, and states, results, versions", async () => {
  const { families } = await scrape();
  const allowed = new Set(["host", "volume", "disk", "vm", "peer", "state", "result", "version", "le"]);
  for (const family of families.values())
    for (const sample of family.samples)
      for (const label of Object.keys(sample.labels))
        assert.ok(allowed.has(label), `${sample.name} has label ${label}`);
});

test("the samples carry the agent's values", async () => {
  const { families } = await scrape();
  const value = (name: string, labels: Record<string, string> = {}) => sampleValue(families, name, labels);
  const vol = { volume: "web1-disk0" };
  assert.equal(value("haven_host_lease_held", { host: "h1" }), 1);
  assert.equal(value("haven_host_lease_age_seconds", { host: "h1" }), 0.25);
  assert.equal(value("haven_host_fence_after_seconds", { host: "h1" }), 3.5);
  assert.equal(value("haven_host_event_loop_lag_seconds"), 0.012);
  assert.equal(value("haven_host_peer_link_up", { peer: "h3" }), 0);
  assert.equal(value("haven_host_peer_heartbeat_rtt_seconds", { peer: "h2" }), 0.0008);
  assert.equal(value("haven_host_peer_heartbeat_rtt_seconds", { peer: "h3" }), undefined, "no answer yet: no sample");
  assert.equal(value("haven_volume_health", { ...vol, state: "degraded" }), 1);
  assert.equal(value("haven_volume_health", { ...vol, state: "healthy" }), 0);
  assert.equal(value("haven_volume_epoch", vol), 7);
  assert.equal(value("haven_volume_primary_info", { ...vol, host: "h1" }), 1);
  assert.equal(value("haven_volume_in_sync_copies", vol), 1);
  assert.equal(value("haven_volume_copies", vol), 2);
  assert.equal(value("haven_volume_reads_total", vol), 3);
  assert.equal(value("haven_volume_read_bytes_total", vol), 3 * 65536);
  assert.equal(value("haven_volume_written_bytes_total", vol), 4096);
  assert.equal(value("haven_volume_request_errors_total", vol), 1);
  assert.equal(value("haven_volume_flushes_total", vol), status.io.flushes);
  assert.equal(value("haven_volume_read_duration_seconds_bucket", { ...vol, le: "0.00025" }), 1);
  assert.equal(value("haven_volume_read_duration_seconds_bucket", { ...vol, le: "0.005" }), 3);
  assert.equal(value("haven_volume_read_duration_seconds_count", vol), 3);
  assert.equal(value("haven_volume_write_duration_seconds_bucket", { ...vol, le: "5" }), 1, "7 s is above 5 s");
  assert.equal(value("haven_volume_write_duration_seconds_bucket", { ...vol, le: "+Inf" }), 2);
  assert.equal(value("haven_volume_write_duration_seconds_sum", vol), 7.001);
  assert.equal(value("haven_volume_failovers_total", vol), 1);
  assert.equal(value("haven_volume_failovers_total", { volume: "db" }), 0, "a volume placed here starts at 0");
  assert.equal(value("haven_volume_switchovers_total", { ...vol, result: "refused" }), 1);
  assert.equal(value("haven_volume_switchover_duration_seconds_bucket", { ...vol, le: "0.1" }), 1);
  const copy = { volume: "web1-disk0", host: "h2", disk: "disk0" };
  assert.equal(value("haven_copy_state", { ...copy, state: "resyncing" }), 1);
  assert.equal(value("haven_copy_state", { ...copy, state: "in-sync" }), 0);
  assert.equal(value("haven_copy_resync_remaining_bytes", copy), 8 << 20);
  assert.equal(value("haven_copy_resync_bytes_per_second", copy), 2_000_000);
  assert.equal(value("haven_copy_out_of_sync_bytes", copy), 12 << 20);
  assert.equal(value("haven_disk_state", { disk: "disk1", state: "failing" }), 1);
  assert.equal(value("haven_disk_used_bytes", { disk: "disk0" }), 40 << 30);
  assert.equal(value("haven_disk_probe_duration_seconds", { disk: "disk0" }), 0.0035);
  assert.equal(value("haven_disk_probe_ok", { disk: "disk1" }), 0);
  assert.equal(value("haven_vm_state", { vm: "db", state: "error" }), 1);
  assert.equal(value("haven_vm_restarts", { vm: "db" }), 3);
  assert.equal(value("haven_vm_running", { vm: "web1" }), 1);
  assert.equal(value("haven_cluster_host_up", { host: "h3" }), 0);
  assert.equal(value("haven_cluster_volume_primary_up", { volume: "db" }), 0);
  assert.equal(value("haven_cluster_volume_in_sync_copies", vol), 1);
  assert.equal(value("haven_cluster_copy_in_sync", copy), 0);
  assert.equal(value("haven_cluster_view_age_seconds"), 0.8);
});

test("what the agent no longer serves disappears from the next scrape", async () => {
  let served = true;
  const changing: AgentView = {
    ...view,
    metrics: () => (served ? metrics() : noAgentMetrics()),
  };
  const registry = new AgentMetricsRegistry(changing, "1");
  assert.notEqual(sampleValue(parseExposition(await registry.render()), "haven_volume_epoch"), undefined);
  served = false;
  const after = parseExposition(await registry.render());
  assert.equal(sampleValue(after, "haven_volume_epoch"), undefined);
  assert.equal(sampleValue(after, "haven_cluster_view_age_seconds"), undefined, "no round yet: no cluster view");
});

/** The metric names an expression or document mentions (histogram suffixes taken off; `haven_host_*` is a prefix). */
function mentioned(text: string): Set<string> {
  return new Set(
    [...text.matchAll(/\bhaven_[a-z0-9_]+/g)]
      .map(([name]) => name.replace(/_(bucket|sum|count)$/, ""))
      .filter((name) => !name.endsWith("_")),
  );
}

test("docs/metrics.md documents every metric, and nothing else", () => {
  const names = new Set(new AgentMetricsRegistry(view, "1").names());
  const documented = mentioned(readFileSync(join(root, "docs", "metrics.md"), "utf8"));
  for (const name of names) assert.ok(documented.has(name), `docs/metrics.md documents ${name}`);
  for (const name of documented) assert.ok(names.has(name), `docs/metrics.md names ${name}, which does not exist`);
});

test("the alert rules and the dashboard use only metrics that exist", () => {
  const names = new Set(new AgentMetricsRegistry(view, "1").names());
  const dashboard = readFileSync(join(root, "docs", "grafana-dashboard.json"), "utf8");
  const model = JSON.parse(dashboard) as { panels: { targets?: { expr: string }[] }[]; title: string };
  assert.ok(model.panels.length > 5 && model.title.length > 0, "a dashboard with panels");
  for (const file of ["prometheus-alerts.yml", "grafana-dashboard.json"]) {
    const used = mentioned(readFileSync(join(root, "docs", file), "utf8"));
    assert.ok(used.size > 3, `${file} uses metrics`);
    for (const name of used) assert.ok(names.has(name), `${file} uses ${name}, which does not exist`);
  }
});

const promtool = "/usr/bin/promtool";

test(
  "promtool accepts the alert rules and a rendered scrape",
  { skip: !existsSync(promtool) && "promtool is not installed (Debian package prometheus)" },
  async () => {
    const rules = spawnSync(promtool, ["check", "rules", join(root, "docs", "prometheus-alerts.yml")], {
      encoding: "utf8",
    });
    assert.equal(rules.status, 0, `${rules.stdout}\n${rules.stderr}`);
    const { text } = await scrape();
    const lint = spawnSync(promtool, ["check", "metrics"], { input: text, encoding: "utf8" });
    assert.equal(lint.status, 0, `${lint.stdout}\n${lint.stderr}`);
  },
);
