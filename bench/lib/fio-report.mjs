#!/usr/bin/env node
// Reads the per-server fio JSON written by bench/nbd and prints the comparison
// table (also written to OUT/summary.txt, with the numbers in OUT/summary.json).
//
// Usage: node bench/lib/fio-report.mjs --out DIR --servers a,b,c WORKLOAD=METRIC...
//   METRIC is "MB/s" (read+write bytes/s / 1e6) or "IOPS" (read+write IOPS).
// Layout read from DIR: meta.txt, and per server SERVER/status, SERVER/rss,
// SERVER/WORKLOAD.json, SERVER/WORKLOAD.err (a one-line failure reason).

import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";

const COLUMNS = ["haven", "nbdkit", "qemu-nbd"];
const BASE = "haven";
const METRICS = new Set(["MB/s", "IOPS"]);

function fail(msg) {
  process.stderr.write(`fio-report: ${msg}\n`);
  process.exit(2);
}

const { values, positionals } = parseArgs({
  options: { out: { type: "string" }, servers: { type: "string" } },
  allowPositionals: true,
});
if (!values.out || !values.servers || positionals.length === 0) {
  fail("usage: fio-report.mjs --out DIR --servers a,b WORKLOAD=METRIC...");
}
const out = values.out;
const selected = new Set(values.servers.split(",").filter(Boolean));
for (const s of selected) {
  if (!COLUMNS.includes(s)) fail(`unknown server '${s}'`);
}
const workloads = positionals.map((arg) => {
  const i = arg.indexOf("=");
  const name = arg.slice(0, i);
  const metric = arg.slice(i + 1);
  if (i <= 0 || !METRICS.has(metric)) fail(`bad workload argument '${arg}'`);
  return { name, metric };
});

const readText = (path) => (existsSync(path) ? readFileSync(path, "utf8").trim() : null);
const notes = [];

function serverStatus(server) {
  if (!selected.has(server)) return "skipped";
  return readText(join(out, server, "status")) ?? "no result";
}

// Short form of a status/reason for a table cell: "failed to start (exit 1, ...)"
// becomes "failed to start".
const short = (text) => text.replace(/\s*\(.*$/, "").slice(0, 20);

// fio may print warnings before the JSON document; parse from the first "{".
function parseFio(path) {
  const text = readFileSync(path, "utf8");
  const start = text.indexOf("{");
  if (start < 0) throw new Error("no JSON object in fio output");
  return JSON.parse(text.slice(start));
}

// Returns { value } or { cell } (a short reason to show instead of a number).
function measure(server, wl) {
  const status = serverStatus(server);
  const dir = join(out, server);
  const jsonPath = join(dir, `${wl.name}.json`);
  const err = readText(join(dir, `${wl.name}.err`));
  if (err !== null) {
    notes.push(`${server} ${wl.name}: ${err} (see ${dir}/${wl.name}.stderr)`);
    return { cell: "error" };
  }
  if (!existsSync(jsonPath)) return { cell: short(status) };
  let job;
  try {
    const doc = parseFio(jsonPath);
    if (!Array.isArray(doc.jobs) || doc.jobs.length !== 1) {
      throw new Error(`expected 1 job (group_reporting), got ${doc.jobs?.length}`);
    }
    job = doc.jobs[0];
  } catch (e) {
    notes.push(`${server} ${wl.name}: unreadable fio JSON: ${e.message}`);
    return { cell: "bad json" };
  }
  if (job.error) {
    notes.push(`${server} ${wl.name}: fio job error ${job.error}`);
    return { cell: "error" };
  }
  const value = wl.metric === "MB/s" ? (job.read.bw_bytes + job.write.bw_bytes) / 1e6 : job.read.iops + job.write.iops;
  if (!(value > 0)) {
    notes.push(`${server} ${wl.name}: no I/O completed`);
    return { cell: "no I/O" };
  }
  return { value };
}

const fmt = (v, metric) => (metric === "MB/s" ? v.toFixed(1) : String(Math.round(v)));
const ratio = (a, b) => (a.value !== undefined && b.value !== undefined ? `${(a.value / b.value).toFixed(2)}x` : "n/a");

const others = COLUMNS.filter((s) => s !== BASE);
const header = ["workload", "metric", ...COLUMNS, ...others.map((s) => `${BASE}/${s}`)];
const rows = [];
const results = {};
for (const wl of workloads) {
  const m = Object.fromEntries(COLUMNS.map((s) => [s, measure(s, wl)]));
  results[wl.name] = {
    metric: wl.metric,
    ...Object.fromEntries(COLUMNS.map((s) => [s, m[s].value ?? null])),
  };
  rows.push([
    wl.name,
    wl.metric,
    ...COLUMNS.map((s) => m[s].cell ?? fmt(m[s].value, wl.metric)),
    ...others.map((s) => ratio(m[BASE], m[s])),
  ]);
}

const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
const line = (cells) =>
  cells
    .map((c, i) => (i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i])))
    .join("  ")
    .trimEnd();

const lines = [];
const meta = readText(join(out, "meta.txt"));
if (meta) lines.push(meta, "");
lines.push(line(header), line(widths.map((w) => "-".repeat(w))));
for (const r of rows) lines.push(line(r));
lines.push("");

const mib = (kib) => (Number(kib) / 1024).toFixed(1);
const rss = {};
const nameWidth = Math.max(...COLUMNS.map((s) => s.length)) + 1;
for (const s of COLUMNS) {
  const status = serverStatus(s);
  const text = readText(join(out, s, "rss"));
  let msg = short(status);
  if (text !== null) {
    const kv = Object.fromEntries(text.split("\n").map((l) => l.split("=", 2).map((x) => x.trim())));
    const scope = kv.scope === "qd32" ? "peak during QD32 workloads" : "peak over the whole run";
    rss[s] = { peak_kib: Number(kv.peak_kib), idle_kib: Number(kv.idle_kib) };
    msg = `${mib(kv.peak_kib)} MiB RSS ${scope} (${mib(kv.idle_kib)} MiB after start)`;
    if (status !== "ok") msg += `; ${status}`;
  } else if (status !== "skipped" && status !== short(status)) {
    notes.push(`${s}: ${status}`);
  }
  lines.push(`${`${s}:`.padEnd(nameWidth)} ${msg}`);
}
if (notes.length > 0) lines.push("", "notes:", ...notes.map((n) => `  ${n}`));

const summary = `${lines.join("\n")}\n`;
writeFileSync(join(out, "summary.txt"), summary);
writeFileSync(join(out, "summary.json"), `${JSON.stringify({ workloads: results, rss }, null, 2)}\n`);
process.stdout.write(summary);
