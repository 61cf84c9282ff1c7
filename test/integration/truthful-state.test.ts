// What the operator sees is what the hosts know, on a real three-host cluster (default timings, a
// longer lease): a healthy agent's log is silent about its own health probes round after round and
// names its API once, with one scheme; and when a volume's primary host is killed, `volume show` says
// the primary is suspected, on the word of the standby whose replication link to it went down, while the
// primary's lease has not expired yet (its host key is still in etcd).

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe } from "node:test";
import { DEFAULT_TIMINGS } from "../../src/agent/timings.js";
import type { EtcdClient } from "../../src/cluster/etcd-client.js";
import { clusterUp, localClusterClient, type LocalClusterState } from "../../src/cluster/local-cluster.js";
import { keys, parseHostHealthRecord, parsePrimaryRecord } from "../../src/cluster/schema.js";
import { boundedTest } from "../helpers/bounded-test.js";
import { etcdArgs, freeBasePort, stopLocalCluster, until } from "../helpers/cluster.js";
import { haveEtcd } from "../helpers/etcd.js";
import { HAVEN_BIN, run, tempDir } from "../helpers/server-process.js";

const test = boundedTest(180_000);
const VOLUME = "truth";
/** Long enough that a standby's verdict (heartbeats: 4 x 500 ms, then a 1 s health round) comes well before it. */
const TIMINGS = { ...DEFAULT_TIMINGS, leaseTtlMs: 12_000, fenceAfterMs: 7_000 };

describe("the operator sees what the hosts know", { skip: !haveEtcd() && "needs etcd" }, () => {
  const dir = tempDir("haven-truth-");
  const clusterDir = join(dir.path, "cluster");
  let cluster: LocalClusterState;
  let etcd: EtcdClient;
  const haven = (...args: string[]) =>
    run(process.execPath, [HAVEN_BIN, ...args, ...etcdArgs(cluster)], { timeoutMs: 60_000 });

  before(async () => {
    const basePort = await freeBasePort();
    cluster = await clusterUp({ dir: clusterDir, hosts: 3, basePort, timings: { ...TIMINGS } });
    etcd = await localClusterClient(cluster);
  });

  after(async () => {
    await stopLocalCluster(clusterDir);
    dir.remove();
  });

  test("a healthy agent's log says nothing of its own NBD health probe over several probe rounds, and names its API with one scheme", async () => {
    const created = await haven("volume", "create", VOLUME, "--size", "64M", "--replicas", "2");
    assert.equal(created.code, 0, created.stderr);
    // From here on nothing but the agents' own probes opens an NBD connection (volume create's wait for
    // the volume to be served connected to the front, and is over).
    const from = new Map(cluster.agents.map((agent) => [agent.name, readFileSync(agent.log, "utf8").length]));
    // Each health round probes the NBD front once: wait for six rounds of every host.
    const seen = new Map<string, Set<string>>();
    await until(
      "six health rounds of every host",
      async () => {
        for (const host of ["h1", "h2", "h3"]) {
          const kv = await etcd.get(keys.health(host));
          if (kv === undefined) continue;
          const rounds = seen.get(host) ?? new Set<string>();
          rounds.add(parseHostHealthRecord(kv.value, kv.key).checkedAt);
          seen.set(host, rounds);
        }
        return ["h1", "h2", "h3"].every((host) => (seen.get(host)?.size ?? 0) >= 6) ? true : undefined;
      },
      90_000,
    );
    for (const agent of cluster.agents) {
      const log = readFileSync(agent.log, "utf8");
      const since = log.slice(from.get(agent.name));
      assert.doesNotMatch(log, /aborted the handshake/, `${agent.name}'s log`);
      assert.doesNotMatch(
        since,
        /nbd: conn \d+/,
        `${agent.name}'s log: only its own probes connected to its NBD front`,
      );
      assert.match(log, /agent API on https:\/\/127\.0\.0\.1:\d+\n/);
      assert.doesNotMatch(log, /:\/\/[a-z]+:\/\//, `${agent.name}'s log: no doubled scheme`);
    }
  });

  test("after its primary is killed, volume show says the primary is suspected before the primary's lease expires", async () => {
    const primary = await until("the volume's primary serving", async () => {
      const kv = await etcd.get(keys.primary(VOLUME));
      const shown = await haven("volume", "show", VOLUME);
      return kv !== undefined && /health +healthy/.test(shown.stdout)
        ? parsePrimaryRecord(kv.value, kv.key).host
        : undefined;
    });
    const killed = await run(process.execPath, [HAVEN_BIN, "cluster", "host", "kill", primary, "--dir", clusterDir], {
      timeoutMs: 60_000,
    });
    assert.equal(killed.code, 0, killed.stderr);
    const shown = await until(
      "volume show to say the primary is suspected",
      async () => {
        const result = await haven("volume", "show", VOLUME);
        return /suspected/.test(result.stdout) ? result.stdout : undefined;
      },
      60_000,
    );
    // The primary's host key lives as long as its lease: still there, so the lease has not expired.
    assert.ok((await etcd.get(keys.host(primary))) !== undefined, "the primary's lease has not expired yet");
    assert.match(
      shown,
      new RegExp(`^primary +${primary} \\(alive, suspected: h\\d has its link to it down \\(.+\\)\\)`, "m"),
    );
    assert.match(shown, /^health +degraded$/m);
  });
});
