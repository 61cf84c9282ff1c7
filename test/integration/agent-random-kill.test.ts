// Failover under write load, with the kill at a random moment: a libnbd client (test/helpers/nbd_ledger.py)
// writes 4 KiB blocks at queue depth 8 to a two-copy volume and keeps a ledger of every write it sent
// and every write the primary acknowledged. At a random moment (seeded; the seed is printed and
// HAVEN_KILL_SEED replays it) the test kill -9s the primary host's agent, with writes in flight. The
// standby must promote, and every acknowledged write must read back from the new primary: each block
// holds its last acknowledged write, or a later one that was sent but not yet acknowledged (a write in
// flight may land or not), never an older one. Then the killed agent returns, resyncs into the in-sync
// set, and the next round kills the other host.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import {
  alive,
  clusterDown,
  clusterUp,
  localClusterClient,
  type LocalClusterState,
} from "../../src/cluster/local-cluster.js";
import type { EtcdClient } from "../../src/cluster/etcd-client.js";
import { packageRoot } from "../../src/util/repo-root.js";
import { haveEtcd } from "../helpers/etcd.js";
import { run, tempDir } from "../helpers/server-process.js";
import {
  ClusterAgents,
  createTestVolume,
  freeBasePort,
  stopLocalCluster,
  until,
  TEST_TIMINGS,
  VolumeProbe,
} from "../helpers/cluster.js";

const VOLUME = "ledger";
const SIZE_BYTES = 64 * 1024 * 1024;
const BLOCKS = SIZE_BYTES / 4096;
const ROUNDS = 3;
const PYTHON = "/usr/bin/python3";
const LEDGER = join(packageRoot(), "test", "helpers", "nbd_ledger.py");

async function havePythonNbd(): Promise<boolean> {
  try {
    return (await run(PYTHON, ["-c", "import nbd"], { timeoutMs: 20_000 })).code === 0;
  } catch {
    return false;
  }
}

const skip = !haveEtcd()
  ? "needs etcd"
  : !(await havePythonNbd()) && process.env.CI !== "true"
    ? "needs /usr/bin/python3 with libnbd's nbd module"
    : false;

/**
 * What the writers sent and what was acknowledged, per block, over every round (sequence numbers are
 * unique across rounds, so a block may hold an earlier round's write).
 */
class Ledger {
  readonly sent = new Map<number, number[]>();
  readonly acked = new Map<number, number>();

  /** Adds one writer's output; returns its acknowledged writes and why it ended. */
  add(text: string): { acks: number; blocks: Set<number>; end: string | undefined } {
    let acks = 0;
    let end: string | undefined;
    const blocks = new Set<number>();
    for (const line of text.split("\n")) {
      const [kind, a, b] = line.split(" ");
      const block = Number(a);
      const seq = Number(b);
      if (kind === "sent") {
        this.sent.set(block, [...(this.sent.get(block) ?? []), seq]);
        blocks.add(block);
      } else if (kind === "ack") {
        // Writes to one block are never in flight together, so its acks come in sequence order.
        assert.ok((this.acked.get(block) ?? 0) < seq, `acks of block ${block} out of order`);
        this.acked.set(block, seq);
        acks++;
      } else if (kind === "end") end = line.slice(4);
    }
    return { acks, blocks, end };
  }

  /** What `block` may hold: its last acknowledged write (0: zeroes), or a later one that was sent. */
  allowed(block: number): Set<number> {
    const acked = this.acked.get(block) ?? 0;
    return new Set([acked, ...(this.sent.get(block) ?? []).filter((seq) => seq > acked)]);
  }
}

/** Sequence numbers of one round start here, so that rounds never reuse one. */
const ROUND_SEQ_SPAN = 1_000_000_000;

// The suite takes about 50 s; one still running after 5 minutes is hung.
describe("kill -9 of the primary at a random moment under write load", { skip, timeout: 300_000 }, () => {
  const dir = tempDir("haven-random-kill-");
  let cluster: LocalClusterState;
  let etcd: EtcdClient;
  let probe: VolumeProbe;
  const agents = new ClusterAgents(() => cluster);
  const ledger = new Ledger();
  const seed = Number(process.env.HAVEN_KILL_SEED ?? Math.floor(Math.random() * 2 ** 31));
  let state = seed;
  /** A small seeded generator (LCG), so a failing schedule can be replayed. */
  const random = (): number => {
    state = (state * 1103515245 + 12345) % 2 ** 31;
    return state / 2 ** 31;
  };

  before(async () => {
    const basePort = await freeBasePort();
    cluster = await clusterUp({ dir: join(dir.path, "cluster"), hosts: 2, basePort, timings: { ...TEST_TIMINGS } });
    etcd = await localClusterClient(cluster);
    probe = new VolumeProbe(etcd, VOLUME, basePort);
    await createTestVolume(cluster, VOLUME, String(SIZE_BYTES));
  });

  /** The ledger writer of the round in progress, killed by the after hook if a round fails with it running. */
  let roundWriter: ChildProcess | undefined;

  after(async () => {
    if (roundWriter !== undefined && roundWriter.exitCode === null && roundWriter.signalCode === null) {
      roundWriter.kill("SIGKILL");
    }
    agents.killRestarted();
    await stopLocalCluster(join(dir.path, "cluster"));
    dir.remove();
  });

  test(`every acknowledged write survives ${ROUNDS} kills at random moments (replay: HAVEN_KILL_SEED)`, async () => {
    process.stderr.write(`random kill seed ${seed} (HAVEN_KILL_SEED=${seed} replays it)\n`);
    for (let round = 1; round <= ROUNDS; round++) {
      const first = (await probe.primary())!;
      const standby = first.host === "h1" ? "h2" : "h1";
      await until(
        `the standby ${standby} to be in sync`,
        async () => ((await probe.replica(standby))?.state === "in-sync" ? true : undefined),
        60_000,
      );

      const writer = spawn(
        PYTHON,
        [LEDGER, "write", probe.uri(first.host), String(BLOCKS), String(seed + round), String(round * ROUND_SEQ_SPAN)],
        { stdio: ["ignore", "pipe", "pipe"] },
      );
      roundWriter = writer;
      let output = "";
      let errors = "";
      writer.stdout.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")));
      writer.stderr.on("data", (chunk: Buffer) => (errors += chunk.toString("utf8")));
      const exited = new Promise<void>((resolve) => writer.on("exit", () => resolve()));
      await until("the writer's first acknowledged writes", async () =>
        (output.match(/^ack /gm)?.length ?? 0) >= 100 ? true : undefined,
      );
      const delayMs = Math.floor(200 + random() * 1_500);
      await new Promise((resolve) => setTimeout(resolve, delayMs));
      process.kill(agents.pid(first.host), "SIGKILL");

      const promoted = await until("the standby to promote", async () => {
        const now = await probe.primary();
        return now && now.host === standby ? now : undefined;
      });
      assert.equal(promoted.epoch, first.epoch + 1);
      // The writer ends when its connection dies; give it a bound in case the kernel keeps it open.
      const ended = await Promise.race([
        exited.then(() => true),
        new Promise((r) => setTimeout(() => r(false), 20_000)),
      ]);
      if (!ended) writer.kill("SIGKILL");
      await exited;
      const thisRound = ledger.add(output);
      assert.ok(thisRound.acks >= 100, `round ${round}: the writer had writes acknowledged (${errors})`);

      // Every block any round wrote is checked, not only this round's.
      const blocks = [...ledger.sent.keys()].sort((a, b) => a - b);
      const read = await until("the new primary to serve the blocks", async () => {
        const result = await run(PYTHON, [LEDGER, "read", probe.uri(standby), blocks.join(",")], { timeoutMs: 60_000 });
        return result.code === 0 ? result.stdout : undefined;
      });
      let checked = 0;
      for (const line of read.trim().split("\n")) {
        const [block, seq] = line.split(" ").map(Number) as [number, number];
        const allowed = ledger.allowed(block);
        assert.ok(
          allowed.has(seq),
          `round ${round} (seed ${seed}, kill after ${delayMs} ms): block ${block} reads as write #${seq}, ` +
            `but write #${ledger.acked.get(block) ?? 0} was acknowledged (may also hold: ${[...allowed].join(", ")})`,
        );
        checked++;
      }
      assert.equal(checked, blocks.length);
      process.stderr.write(
        `round ${round}: killed ${first.host} ${delayMs} ms into the load; ${thisRound.acks} acknowledged writes ` +
          `on ${thisRound.blocks.size} blocks, ${blocks.length} blocks in all verified through ${standby} ` +
          `(writer: ${thisRound.end ?? "killed"})\n`,
      );
      agents.restart(first.host);
    }
  });

  test("cluster down also stops the agents restarted by hand", async () => {
    const pids = agents.restartedPids();
    assert.ok(pids.length > 0);
    await clusterDown(cluster.dir, 10_000);
    await until("the restarted agents to exit", async () => (pids.every((pid) => !alive(pid)) ? true : undefined));
  });
});
