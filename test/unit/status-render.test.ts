// What `haven volume status` shows an operator: each test names a promise of the view (the state of
// every copy, resync progress with its ETA, why a copy is out, how to resolve a split brain, what a
// verify found) and checks the lines that keep it, not a snapshot of the whole text.

import { test } from "node:test";
import assert from "node:assert/strict";
import { formatDuration, progressBar, renderVerifyStatus, renderVolumeStatus } from "../../src/cli/status-render.js";
import type { VolumeStatus } from "../../src/engine/status.js";
import {
  degradedStatus,
  GEN_A,
  GEN_B,
  healthyStatus,
  mismatches,
  resyncingStatus,
  splitBrainStatus,
  verifyStatus,
} from "../helpers/fake-engine.js";

const ANSI_ESCAPE = /\x1b\[/; // eslint-disable-line no-control-regex

/** The table row of the copy at `location`, and the detail lines below it. */
function rowOf(text: string, location: string): { row: string; below: string[] } {
  const lines = text.split("\n");
  const index = lines.findIndex((line) => line.startsWith(`${location} `));
  assert.ok(index >= 0, `no row for ${location} in:\n${text}`);
  const below: string[] = [];
  for (const line of lines.slice(index + 1)) {
    if (!line.startsWith("    ")) break;
    below.push(line.trim());
  }
  return { row: lines[index]!, below };
}

function headerValue(text: string, label: string): string {
  const line = text.split("\n").find((l) => l.startsWith(`${label} `));
  assert.ok(line !== undefined, `no "${label}" line in:\n${text}`);
  return line.slice(label.length).trim();
}

test("progress bar: proportional, rounded down, clamped, empty when unknown", () => {
  assert.equal(progressBar(0, 10), "[..........]");
  assert.equal(progressBar(1, 10), "[##########]");
  assert.equal(progressBar(0.5, 10), "[#####.....]");
  assert.equal(progressBar(0.999, 10), "[#########.]", "full only when done");
  assert.equal(progressBar(1.7, 10), "[##########]");
  assert.equal(progressBar(-0.2, 10), "[..........]");
  assert.equal(progressBar(NaN, 10), "[..........]");
  assert.equal(progressBar(0.57, 100).split("#").length - 1, 57, "no float error rounds a whole cell away");
  assert.equal(progressBar(0.5, 0), "[]");
});

test("durations: m:ss under an hour, h:mm:ss above, -- when unknown", () => {
  assert.equal(formatDuration(0), "0:00");
  assert.equal(formatDuration(1), "0:01");
  assert.equal(formatDuration(42), "0:42");
  assert.equal(formatDuration(59.6), "1:00");
  assert.equal(formatDuration(61), "1:01");
  assert.equal(formatDuration(3600), "1:00:00");
  assert.equal(formatDuration(3 * 3600 + 5 * 60 + 9), "3:05:09");
  assert.equal(formatDuration(100 * 3600), "100:00:00");
  for (const unknown of [null, NaN, -1, Infinity]) assert.equal(formatDuration(unknown), "--", String(unknown));
});

test("healthy volume: header names the volume, its size, epoch, state, generation and NBD URIs", () => {
  const status = healthyStatus();
  const text = renderVolumeStatus(status);
  assert.equal(headerValue(text, "volume"), "web1-disk0");
  assert.equal(headerValue(text, "volume id"), status.volumeId);
  assert.match(headerValue(text, "size"), /^10\.0 GiB \(10737418240 bytes/);
  assert.equal(headerValue(text, "epoch"), "7");
  assert.equal(headerValue(text, "state"), "healthy");
  assert.equal(headerValue(text, "generation"), GEN_A);
  for (const uri of status.nbd) assert.ok(text.includes(uri), uri);
  assert.match(text, /^LOCATION +LOCAL\/REMOTE +STATE +OUT-OF-SYNC +GENERATION +DETAIL$/m);
  const local = rowOf(text, "/var/lib/haven/web1-disk0").row.split(/ {2,}/);
  assert.deepEqual(local, ["/var/lib/haven/web1-disk0", "local", "in-sync", "0 B", GEN_A.slice(0, 8)]);
  assert.deepEqual(rowOf(text, "node2:7400").row.split(/ {2,}/).slice(1, 3), ["remote", "in-sync"]);
  assert.match(text, /^io +reads 1234 \(3\.00 GiB\) +writes 567 \(300\.0 MiB\) +flushes 12 +errors 0$/m);
  assert.doesNotMatch(text, ANSI_ESCAPE, "no color unless asked");
});

test("degraded volume: a faulted copy shows its reason and what it is missing", () => {
  const text = renderVolumeStatus(degradedStatus(), { width: 80 });
  assert.equal(headerValue(text, "state"), "degraded");
  const { row, below } = rowOf(text, "node2:7400");
  assert.deepEqual(row.split(/ {2,}/).slice(1), ["remote", "faulted", "12.0 MiB", GEN_B.slice(0, 8)]);
  assert.deepEqual(below, ["write timed out after 5000 ms (replication link down?)"]);
});

test("a detail goes in the DETAIL column when the terminal is wide enough, else under the row", () => {
  const wide = rowOf(renderVolumeStatus(degradedStatus(), { width: 200 }), "node2:7400");
  assert.match(wide.row, /faulted .* write timed out after 5000 ms/);
  assert.deepEqual(wide.below, []);
  const narrow = rowOf(renderVolumeStatus(degradedStatus(), { width: 60 }), "node2:7400");
  assert.doesNotMatch(narrow.row, /timed out/);
  assert.equal(narrow.below.length, 1);
});

test("resyncing copy at 41.2%: proportional bar, percent, rate, ETA, mode and rule", () => {
  const text = renderVolumeStatus(resyncingStatus(), { width: 200 });
  assert.equal(headerValue(text, "state"), "resyncing");
  const { row } = rowOf(text, "node2:7400");
  const bar = /\[([#.]+)\]/.exec(row)?.[1];
  assert.ok(bar !== undefined, row);
  const filled = bar.split("").filter((cell) => cell === "#").length;
  assert.equal(filled, Math.floor(0.412 * bar.length), `bar ${bar}`);
  assert.ok(row.endsWith("]  41.2%  312.0 MiB/s  ETA 0:42  (incremental, rule 4)"), row);
  assert.match(row, /resyncing +588\.0 MiB/);
});

test("resync with an unknown ETA shows ETA --, and a finished one never shows less than 100%", () => {
  const status = resyncingStatus();
  const resyncing = status.replicas[1]!;
  const unknown: VolumeStatus = {
    ...status,
    replicas: [status.replicas[0]!, { ...resyncing, resync: { ...resyncing.resync!, etaSeconds: null } }],
  };
  assert.match(renderVolumeStatus(unknown, { width: 60 }), /ETA --/);
  const done: VolumeStatus = {
    ...status,
    replicas: [
      status.replicas[0]!,
      { ...resyncing, resync: { ...resyncing.resync!, doneBytes: 1000, totalBytes: 1000, etaSeconds: 0 } },
    ],
  };
  const { below } = rowOf(renderVolumeStatus(done, { width: 60 }), "node2:7400");
  assert.match(below[0]!, /^\[#+\] {2}100\.0% {2}.* ETA 0:00/);
});

test("split brain is reported with each side's changes and the exact commands that resolve it", () => {
  const text = renderVolumeStatus(splitBrainStatus(), { api: "10.0.0.1:7480", width: 100 });
  const { row, below } = rowOf(text, "node2:7400");
  assert.match(row, /split-brain/);
  assert.ok(below.includes("rule 6: both copies took writes after they parted"), below.join("\n"));
  assert.ok(below.includes("since the split the volume changed 1.50 GiB, this copy changed 300.0 MiB"));
  const commands = below.map((line) => /haven volume resolve-split-brain .*$/.exec(line)?.[0]).filter(Boolean);
  assert.deepEqual(commands, [
    "haven volume resolve-split-brain web1-disk0 --survivor /var/lib/haven/web1-disk0 --api 10.0.0.1:7480",
  ]);
  assert.match(
    below.find((line) => line.includes("resolve-split-brain"))!,
    /^to keep the volume's data/,
  );
  // The split-off copy wins only by restarting the engine on it (the API refuses it while serving).
  assert.ok(
    below.includes(
      "to keep this copy's data instead: stop the engine and restart 'haven volume serve' with " +
        "--survivor node2:7400 (the volume's writes since the split are lost)",
    ),
    below.join("\n"),
  );
});

test("without the API address the resolve hint says HOST:PORT, and odd names are shell-quoted", () => {
  const status = { ...splitBrainStatus(), name: "db disk" };
  const text = renderVolumeStatus(status);
  const hint = "haven volume resolve-split-brain 'db disk' --survivor /var/lib/haven/web1-disk0 --api HOST:PORT";
  assert.ok(text.includes(hint), text);
});

test("refused copy shows why it is never used", () => {
  const status = degradedStatus();
  const refused: VolumeStatus = {
    ...status,
    replicas: [status.replicas[0]!, { ...status.replicas[1]!, state: "refused", reason: "rule 7: unrelated data" }],
  };
  const { row, below } = rowOf(renderVolumeStatus(refused, { width: 60 }), "node2:7400");
  assert.match(row, /refused/);
  assert.deepEqual(below, ["rule 7: unrelated data"]);
});

test("verify: progress bar, mismatch count, the first ranges and how many more", () => {
  const status: VolumeStatus = { ...healthyStatus(), verify: verifyStatus({ mismatches: mismatches(7) }) };
  const text = renderVolumeStatus(status);
  const verifyLine = text.split("\n").find((line) => line.startsWith("verify "))!;
  assert.match(verifyLine, /running +\[#####\.{17}\] {2}25\.0% {2}2\.50 GiB of 10\.0 GiB/);
  assert.match(text, /mismatches 7$/m);
  const ranges = text.split("\n").filter((line) => /^ +offset \d+ length \d+/.test(line));
  assert.equal(ranges.length, 5);
  const first =
    "offset 67108864 length 65536 (64.0 KiB at 64.0 MiB)  differs on: /var/lib/haven/web1-disk0, node2:7400";
  assert.equal(ranges[0]!.trim(), first);
  assert.match(text, /\.\.\. and 2 more/);
});

test("verify alone (for verify --wait): repair is said, a failure shows its error", () => {
  const repaired = renderVerifyStatus(
    verifyStatus({ state: "done", repair: true, doneBytes: 10, totalBytes: 10, mismatches: mismatches(1) }),
  );
  assert.match(repaired, /^verify +done \(repair\) +\[#{22}\] {2}100\.0%/);
  assert.match(repaired, /mismatches 1 \(repair: /);
  const failed = renderVerifyStatus(verifyStatus({ state: "failed", error: "read error on node2:7400" }));
  assert.match(failed, /error: read error on node2:7400/);
});

test("color only when asked: the state words are colored, columns still line up", () => {
  const plain = renderVolumeStatus(splitBrainStatus());
  const colored = renderVolumeStatus(splitBrainStatus(), { color: true });
  assert.match(colored, /\x1b\[31msplit-brain\x1b\[0m/); // eslint-disable-line no-control-regex
  assert.match(colored, /\x1b\[32min-sync\x1b\[0m/); // eslint-disable-line no-control-regex
  assert.equal(colored.replace(/\x1b\[\d+m/g, ""), plain); // eslint-disable-line no-control-regex
});

test("text from the engine cannot send escape sequences to the terminal", () => {
  const status = degradedStatus();
  const hostile: VolumeStatus = {
    ...status,
    replicas: [status.replicas[0]!, { ...status.replicas[1]!, reason: "bad\x1b[2Jreason\n" }],
  };
  const text = renderVolumeStatus(hostile);
  assert.doesNotMatch(text, ANSI_ESCAPE);
  assert.ok(text.includes("bad?[2Jreason?"));
});

test("rendering is deterministic and does not change its input", () => {
  const status = resyncingStatus();
  const before = JSON.stringify(status);
  assert.equal(renderVolumeStatus(status, { width: 90 }), renderVolumeStatus(status, { width: 90 }));
  assert.equal(JSON.stringify(status), before);
});
