// The local cluster as a test bench: `haven cluster host freeze|thaw|stop|start|kill HOST` and
// `haven cluster status` on a three-host cluster (one etcd member per host, test timings), each checked
// against /proc: a frozen host's processes are in state T and thawed ones are not; a stopped host's
// processes are gone and its agent gave its lease back (its host key is gone at once, not after the
// TTL); a killed host's are gone; a started host runs again under new pids and registers. And `cluster
// down` stops an agent started by hand from the cluster's directory with a relative config path, which
// cluster.json knows nothing of, and lists it with its pid.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe } from "node:test";
import { clusterUp, localClusterClient, type LocalClusterState } from "../../src/cluster/local-cluster.js";
import type { ClusterStatus } from "../../src/cluster/local-hosts.js";
import { keys } from "../../src/cluster/schema.js";
import { HAVEN_BIN } from "../helpers/server-process.js";
import { processEntry, running } from "../../src/util/processes.js";
import { boundedTest } from "../helpers/bounded-test.js";
import { freeBasePort, stopLocalCluster, TEST_TIMINGS, until } from "../helpers/cluster.js";
import { haveEtcd } from "../helpers/etcd.js";
import { run, tempDir } from "../helpers/server-process.js";

const test = boundedTest(120_000);

/** The state letter of /proc/PID/stat ("T": stopped by a signal), or undefined once the process is gone. */
function procState(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[0];
  } catch {
    return undefined;
  }
}

describe(
  "haven cluster host and cluster status act on one host's processes, found by pid",
  { skip: !haveEtcd() && "needs etcd" },
  () => {
    const dir = tempDir("haven-cluster-host-");
    const clusterDir = join(dir.path, "cluster");
    let state: LocalClusterState;
    const haven = (...args: string[]) =>
      run(process.execPath, [HAVEN_BIN, ...args, "--dir", clusterDir], { timeoutMs: 90_000 });
    const status = async (): Promise<ClusterStatus> => {
      const shown = await haven("cluster", "status", "--json");
      assert.equal(shown.code, 0, shown.stderr);
      return JSON.parse(shown.stdout) as ClusterStatus;
    };
    const pidsOf = async (host: string): Promise<number[]> =>
      (await status()).hosts.find((each) => each.name === host)!.processes.map((each) => each.pid);
    /** An agent started by hand, stopped by pid after the tests if cluster down did not. */
    let byHand: number | undefined;

    before(async () => {
      const basePort = await freeBasePort();
      state = await clusterUp({ dir: clusterDir, hosts: 3, basePort, etcdMembers: 3, timings: { ...TEST_TIMINGS } });
    });

    after(async () => {
      // A frozen process cannot act on SIGTERM: thaw whatever a failed test left frozen.
      await haven("cluster", "host", "thaw", "h2").catch(() => undefined);
      await stopLocalCluster(clusterDir);
      if (byHand !== undefined && running(byHand)) process.kill(byHand, "SIGKILL");
      dir.remove();
    });

    test("cluster status shows each host's agent, watchdog and etcd member with pids, running, and its ports", async () => {
      const shown = await status();
      assert.deepEqual(
        shown.hosts.map((host) => [host.name, host.state]),
        [
          ["h1", "running"],
          ["h2", "running"],
          ["h3", "running"],
        ],
      );
      for (const host of shown.hosts) {
        const agent = state.agents.find((each) => each.name === host.name)!;
        const roles = host.processes.map((each) => each.role).sort();
        assert.deepEqual(roles, ["agent", "etcd member", "watchdog"], host.name);
        assert.equal(host.processes.find((each) => each.role === "agent")!.pid, agent.pid);
        for (const each of host.processes) assert.ok(running(each.pid) && procState(each.pid) !== "T");
        assert.match(host.api, /^127\.0\.0\.1:\d+$/);
      }
      const text = await haven("cluster", "status");
      assert.match(text.stdout, new RegExp(`^ +agent +pid ${state.agents[1]!.pid} +running$`, "m"));
    });

    test("host freeze stops every process of the host (state T); thaw wakes them, and the watchdog fences an agent frozen too long", async () => {
      const before = (await status()).hosts[1]!.processes;
      const pids = before.map((each) => each.pid);
      const frozen = await haven("cluster", "host", "freeze", "h2");
      assert.equal(frozen.code, 0, frozen.stderr);
      for (const pid of pids) {
        assert.equal(procState(pid), "T", `pid ${pid} is stopped`);
        assert.match(frozen.stdout, new RegExp(`pid ${pid}\\b`));
      }
      assert.equal((await status()).hosts[1]!.state, "frozen");
      const again = await haven("cluster", "host", "freeze", "h2");
      assert.equal(again.code, 1, again.stderr);
      assert.match(again.stderr, /host h2 has nothing to freeze: it is frozen already/);
      const thawed = await haven("cluster", "host", "thaw", "h2");
      assert.equal(thawed.code, 0, thawed.stderr);
      // Nothing is left stopped. The agent was silent far beyond watchdogTimeoutMs: its watchdog may wake
      // first and fence it, as on a real machine that hung; then the log says so.
      for (const each of before) {
        if (running(each.pid)) assert.notEqual(procState(each.pid), "T", `${each.role} ${each.pid} runs again`);
        else
          assert.match(readFileSync(state.agents[1]!.log, "utf8"), /watchdog: agent \d+ silent for \d+ ms; killing it/);
      }
      const member = before.find((each) => each.role === "etcd member")!;
      assert.ok(running(member.pid), "the etcd member runs again");
      assert.notEqual((await status()).hosts[1]!.state, "frozen");
      // Whatever the watchdog did, the host is brought back for the tests below.
      if (!(await status()).hosts[1]!.processes.some((each) => each.role === "agent")) {
        const started = await haven("cluster", "host", "start", "h2");
        assert.equal(started.code, 0, started.stderr);
      }
    });

    test("a watchdog kill is a cluster event: an agent frozen alone is killed by its watchdog, and 'haven events' says so", async () => {
      const agent = (await status()).hosts[2]!.processes.find((each) => each.role === "agent")!;
      process.kill(agent.pid, "SIGSTOP");
      await until("the watchdog to kill the frozen agent", async () => (running(agent.pid) ? undefined : true));
      const started = await haven("cluster", "host", "start", "h3");
      assert.equal(started.code, 0, started.stderr);
      const etcdEnv = { ...process.env, HAVEN_ETCD: state.endpoints.join(","), HAVEN_TLS_DIR: state.tlsDir };
      const shown = await until("the watchdog-kill event", async () => {
        const events = await run(process.execPath, [HAVEN_BIN, "events", "--host", "h3"], {
          env: etcdEnv,
          timeoutMs: 30_000,
        });
        return /watchdog-kill/.test(events.stdout) ? events.stdout : undefined;
      });
      assert.match(
        shown,
        new RegExp(
          `h3 +- +watchdog-kill +the watchdog killed the agent \\(pid ${agent.pid}\\): its event loop was silent for \\d+ ms`,
        ),
      );
    });

    test("host stop ends the host's processes cleanly: its lease is given back, so its host key is gone at once", async () => {
      const pids = await pidsOf("h2");
      const etcd = await localClusterClient(state);
      assert.ok((await etcd.get(keys.host("h2"))) !== undefined);
      const stopped = await haven("cluster", "host", "stop", "h2");
      assert.equal(stopped.code, 0, stopped.stderr);
      for (const pid of pids) {
        assert.equal(running(pid), false, `pid ${pid} is gone`);
        assert.match(stopped.stdout, new RegExp(`pid ${pid}\\b`));
      }
      // A lease given back deletes the host key now; a lease left to expire would keep it for the TTL.
      assert.equal(await etcd.get(keys.host("h2")), undefined);
      assert.match(readFileSync(state.agents[1]!.log, "utf8"), /giving the lease back/);
      assert.equal((await status()).hosts[1]!.state, "stopped");
    });

    test("host start starts the stopped host's member and agent under new pids, and waits until it registers", async () => {
      const started = await haven("cluster", "host", "start", "h2");
      assert.equal(started.code, 0, started.stderr);
      const etcd = await localClusterClient(state);
      assert.ok((await etcd.get(keys.host("h2"))) !== undefined, "h2 registered");
      const h2 = (await status()).hosts[1]!;
      assert.equal(h2.state, "running");
      assert.match(
        started.stdout,
        new RegExp(`agent pid ${h2.processes.find((each) => each.role === "agent")!.pid}\\b`),
      );
      const again = await haven("cluster", "host", "start", "h2");
      assert.equal(again.code, 1);
      assert.match(again.stderr, /host h2 is running \(agent pid \d+\)/);
    });

    test("host kill takes every process of the host down at once (SIGKILL), and host start brings it back", async () => {
      const pids = await pidsOf("h3");
      const killed = await haven("cluster", "host", "kill", "h3");
      assert.equal(killed.code, 0, killed.stderr);
      for (const pid of pids) assert.equal(processEntry(pid) === undefined || processEntry(pid)!.zombie, true);
      assert.equal((await status()).hosts[2]!.state, "stopped");
      const started = await haven("cluster", "host", "start", "h3");
      assert.equal(started.code, 0, started.stderr);
      assert.equal((await status()).hosts[2]!.state, "running");
    });

    test("cluster down finds an agent started by hand with a relative config path, and stops it by pid", async () => {
      const stopped = await haven("cluster", "host", "stop", "h1");
      assert.equal(stopped.code, 0, stopped.stderr);
      const etcd = await localClusterClient(state);
      // The killed agent's host key lives until its lease expires: only a later write is the new agent's.
      const killedRevision = (await etcd.get(keys.host("h1")))?.modRevision ?? 0;
      const log = openSync(join(clusterDir, "hosts", "h1", "agent.log"), "a");
      const child = spawn(process.execPath, [HAVEN_BIN, "agent", "--config", "hosts/h1/agent.json"], {
        cwd: clusterDir,
        detached: true,
        stdio: ["ignore", log, log],
      });
      closeSync(log);
      child.unref();
      byHand = child.pid!;
      await until(
        "the agent started by hand to register",
        async () => {
          const kv = await etcd.get(keys.host("h1"));
          return kv !== undefined && kv.modRevision > killedRevision && running(byHand!) ? true : undefined;
        },
        60_000,
      );
      const shown = await status();
      assert.equal(shown.hosts[0]!.processes.find((each) => each.role === "agent")?.pid, byHand);
      const down = await haven("cluster", "down");
      assert.equal(down.code, 0, down.stderr);
      assert.match(down.stdout, new RegExp(`h1 agent: pid ${byHand}\\b`));
      // Every process the status showed, each listed with its pid.
      const shownPids = shown.hosts.flatMap((host) => host.processes);
      assert.match(down.stdout, /^cluster down: stopped 3 agents, \d etcd members?, 0 VMs/);
      for (const each of shownPids)
        assert.match(down.stdout, new RegExp(`pid ${each.pid}\\b`), `${each.role} ${each.pid}`);
      assert.equal(running(byHand), false, "the agent started by hand is stopped");
      for (const host of shown.hosts)
        for (const each of host.processes)
          assert.equal(running(each.pid), false, `${host.name} ${each.role} ${each.pid}`);
    });
  },
);
