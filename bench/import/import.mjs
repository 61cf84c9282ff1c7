#!/usr/bin/env node
// bench/import/import.mjs: how fast `haven volume import` puts a disk image onto a Haven volume, against
// the floor qemu-img itself sets on this machine. One 1 GiB qcow2 (BENCH_SIZE) of real data (bytes from
// /dev/urandom, so neither side can skip zeros) is, in each round and in alternating order (ABBA):
//
//   haven   `haven volume import` onto a new volume of a local cluster (real etcd, two agents, each copy
//           on its own host, NBD over TLS as the operator): qemu-img reads the qcow2 and writes over NBD,
//           every write goes to both copies and the final flush makes them durable. Timed end to end
//           (placement, the wait for the primary to serve it, the copy) and the copy alone (the CLI's
//           "importing done" line). The volume is deleted between rounds.
//   plain   diagnosis, not a side: the same qemu-img copy onto a new Haven volume over NBD in clear (the
//           front on loopback allows it), which tells what TLS costs from what the volume costs.
//   peer    `qemu-img convert -W -f qcow2 -O raw` of the same image to a raw file on the same disk (its
//           close flushes the file), the same qemu-img with the same out-of-order writes Haven uses.
//
// The image is read once before the rounds, so both sides read it from the page cache. Prints each
// round, the medians and the ratio haven/peer (the target: >= 0.7x). Every process the bench
// starts is stopped by its pid (cluster down stops the agents and etcd members it started).
//
//   npm run build && node bench/import/import.mjs        (about 2 minutes; BENCH_ROUNDS=1 for a look)

import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { cpus } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const dist = (path) => import(join(ROOT, "dist", "src", path));
const { clusterUp, clusterDown } = await dist("cluster/local-cluster.js");
const { parseSize } = await dist("util/units.js");

const SIZE_BYTES = parseSize(process.env.BENCH_SIZE ?? "1G", "BENCH_SIZE");
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const REPLICAS = process.env.BENCH_REPLICAS ?? "2";
const TARGET_RATIO = 0.7;
const MIB = 1024 * 1024;
const log = (line) => process.stderr.write(`[bench] ${line}\n`);

function run(command, args, options = {}) {
  return new Promise((done) =>
    execFile(command, args, { timeout: 600_000, maxBuffer: 64 * MIB, ...options }, (error, stdout, stderr) =>
      done({ code: error ? (error.code ?? 1) : 0, stdout, stderr }),
    ),
  );
}

async function must(command, args, options) {
  const result = await run(command, args, options);
  if (result.code !== 0) throw new Error(`${command} ${args.join(" ")} failed: ${result.stderr}`);
  return result;
}

async function freeBasePort() {
  for (;;) {
    const base = 20_000 + 100 * Math.floor(Math.random() * 125);
    const ok = await Promise.all(
      [0, 1, 10, 11, 12, 13, 14, 20, 21, 22, 23, 24].map(
        (offset) =>
          new Promise((done) => {
            const server = createServer();
            server.once("error", () => done(false));
            server.listen(base + offset, "127.0.0.1", () => server.close(() => done(true)));
          }),
      ),
    );
    if (ok.every(Boolean)) return base;
  }
}

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const rate = (seconds) => SIZE_BYTES / MIB / seconds;

async function main() {
  const dir = mkdtempSync(join(process.env.BENCH_DIR ?? "/var/tmp", "haven-bench-import-"));
  const context = join(dir, "context.json");
  const haven = (...args) =>
    run(process.execPath, [join(ROOT, "bin", "haven.js"), ...args], {
      env: { ...process.env, HAVEN_CONTEXT: context },
    });
  let up = false;
  try {
    const raw = join(dir, "source.raw");
    const image = join(dir, "source.qcow2");
    log(`writing ${SIZE_BYTES / MIB} MiB of random data and converting it to qcow2`);
    await must("dd", ["if=/dev/urandom", `of=${raw}`, "bs=1M", `count=${SIZE_BYTES / MIB}`, "status=none"]);
    await must("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, image]);
    rmSync(raw);
    await must("dd", [`if=${image}`, "of=/dev/null", "bs=1M", "status=none"]); // into the page cache for both sides
    const state = await clusterUp({ dir: join(dir, "cluster"), hosts: 2, basePort: await freeBasePort() });
    up = true;
    writeFileSync(
      context,
      JSON.stringify({ etcd: state.endpoints, clusterDir: join(dir, "cluster"), tls: state.tlsDir }),
    );

    const rounds = [];
    for (let round = 0; round < ROUNDS; round++) {
      const order = round % 2 === 0 ? ["haven", "plain", "peer"] : ["peer", "plain", "haven"];
      const result = { round: round + 1 };
      for (const side of order) {
        if (side === "plain") {
          // Diagnosis: the same qemu-img copy onto a Haven volume, without TLS (the front on loopback
          // allows it), to tell the cost of TLS from the cost of the volume.
          const name = `plain-${round + 1}`;
          const created = await haven(
            "volume",
            "create",
            name,
            "--size",
            String(SIZE_BYTES),
            "--replicas",
            REPLICAS,
            "--json",
          );
          if (created.code !== 0) throw new Error(`haven volume create failed: ${created.stderr}`);
          const uri = JSON.parse(created.stdout).nbd;
          const started = process.hrtime.bigint();
          await must("qemu-img", ["convert", "-n", "--target-is-zero", "-W", "-f", "qcow2", "-O", "raw", image, uri]);
          result.plain = Number(process.hrtime.bigint() - started) / 1e9;
          await must(process.execPath, [join(ROOT, "bin", "haven.js"), "volume", "delete", name, "--yes"], {
            env: { ...process.env, HAVEN_CONTEXT: context },
          });
        } else if (side === "peer") {
          const target = join(dir, "peer.raw");
          const started = process.hrtime.bigint();
          await must("qemu-img", ["convert", "-W", "-f", "qcow2", "-O", "raw", image, target]);
          result.peer = Number(process.hrtime.bigint() - started) / 1e9;
          if (statSync(target).size !== SIZE_BYTES) throw new Error("the peer's copy has another size");
          rmSync(target);
        } else {
          const started = process.hrtime.bigint();
          // A new name each round: the agents remove the last round's copies in the background.
          const name = `bench-${round + 1}`;
          const imported = await haven("volume", "import", name, image, "--replicas", REPLICAS);
          result.haven = Number(process.hrtime.bigint() - started) / 1e9;
          if (imported.code !== 0) throw new Error(`haven volume import failed: ${imported.stderr}`);
          const copy = /importing done: .* in ([\d.]+) s/.exec(imported.stderr);
          result.havenCopy = copy === null ? NaN : Number(copy[1]);
          const deleted = await haven("volume", "delete", name, "--yes");
          if (deleted.code !== 0) throw new Error(`haven volume delete failed: ${deleted.stderr}`);
        }
      }
      log(
        `round ${result.round} (${order.join(" then ")}): haven ${result.haven.toFixed(2)} s ` +
          `(copy ${result.havenCopy.toFixed(2)} s), without TLS ${result.plain.toFixed(2)} s, peer ${result.peer.toFixed(2)} s`,
      );
      rounds.push(result);
    }

    const havenS = median(rounds.map((r) => r.haven));
    const havenCopyS = median(rounds.map((r) => r.havenCopy));
    const peerS = median(rounds.map((r) => r.peer));
    const plainS = median(rounds.map((r) => r.plain));
    const lines = [
      `import of a ${SIZE_BYTES / MIB} MiB qcow2 of random data, ${ROUNDS} rounds (ABBA), ${cpus().length} CPUs, ` +
        `haven volume with ${REPLICAS} copies`,
      "",
      "| side                                        | median s | MiB/s  | vs peer |",
      "| ------------------------------------------- | -------- | ------ | ------- |",
      `| qemu-img convert to a local raw file (peer) | ${peerS.toFixed(2).padStart(8)} | ${rate(peerS).toFixed(1).padStart(6)} | 1.00x   |`,
      `| haven volume import, end to end             | ${havenS.toFixed(2).padStart(8)} | ${rate(havenS).toFixed(1).padStart(6)} | ${(peerS / havenS).toFixed(2)}x   |`,
      `| haven volume import, the copy alone         | ${havenCopyS.toFixed(2).padStart(8)} | ${rate(havenCopyS).toFixed(1).padStart(6)} | ${(peerS / havenCopyS).toFixed(2)}x   |`,
      `| qemu-img onto a haven volume, NBD w/o TLS   | ${plainS.toFixed(2).padStart(8)} | ${rate(plainS).toFixed(1).padStart(6)} | ${(peerS / plainS).toFixed(2)}x   |`,
      "",
      `target: end to end >= ${TARGET_RATIO}x the peer: ${peerS / havenS >= TARGET_RATIO ? "PASS" : "FAIL"}`,
    ];
    process.stdout.write(`${lines.join("\n")}\n`);
  } finally {
    if (up) await clusterDown(join(dir, "cluster"), 20_000).catch((error) => log(`cluster down: ${error.message}`));
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
