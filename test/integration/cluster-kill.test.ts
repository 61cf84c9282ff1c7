// `haven cluster kill HOST` and `haven cluster revive HOST` on a three-host local cluster (one etcd member
// per host, test timings): kill takes down the host's agent, its watchdog, the QEMU of each VM whose
// pidfile in the host's VM runtime directories is trusted (never a process that merely reused a pid) and
// its etcd member, all at once; the other hosts carry on and see it dead; revive brings its member and
// agent back under new pids, recorded in cluster.json, and the host is alive again; cluster down then
// leaves nothing running. A host the cluster does not have, a host with nothing left to kill and a host
// that runs are refused with a clear error. Fake VMs are processes whose command line names a guest, as
// QEMU's does, each in a process group of its own, killed by it after the tests.

import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe } from "node:test";
import {
  clusterUp,
  hostStateDir,
  localClusterClient,
  readClusterState,
  type LocalClusterState,
} from "../../src/cluster/local-cluster.js";
import { commandLineOf, running } from "../../src/util/processes.js";
import { runtimePaths, vmRuntimeDir } from "../../src/vm/runtime-dir.js";
import { boundedTest } from "../helpers/bounded-test.js";
import { freeBasePort, stopLocalCluster, TEST_TIMINGS, until } from "../helpers/cluster.js";
import { haveEtcd } from "../helpers/etcd.js";
import { run, tempDir } from "../helpers/server-process.js";

const test = boundedTest(90_000);

/** A process whose command line names guest `name`, in a process group of its own. */
function fakeVm(name: string): ChildProcess & { pid: number } {
  const child = spawn(
    process.execPath,
    ["-e", "setInterval(() => undefined, 60_000)", "--", "-name", `guest=${name},debug-threads=on`],
    { detached: true, stdio: "ignore" },
  );
  assert.ok(child.pid !== undefined);
  return child as ChildProcess & { pid: number };
}

function exitOf(child: ChildProcess): Promise<NodeJS.Signals | number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.signalCode ?? child.exitCode);
  return new Promise((resolve) => child.once("exit", (code, signal) => resolve(signal ?? code)));
}

/** The processes `pid` started (its watchdog, for an agent). */
function childrenOf(pid: number): number[] {
  try {
    const text = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim();
    return text === "" ? [] : text.split(/\s+/).map(Number);
  } catch {
    return [];
  }
}

describe(
  "haven cluster kill and revive take a host down as a power loss would and bring it back",
  {
    skip: !haveEtcd() && "needs etcd",
  },
  () => {
    const dir = tempDir("haven-cluster-kill-");
    const clusterDir = join(dir.path, "cluster");
    let state: LocalClusterState;
    let env: NodeJS.ProcessEnv;
    const haven = (...args: string[]) => run(process.execPath, ["bin/haven.js", ...args], { env, timeoutMs: 60_000 });
    /** Every pid the cluster ran (agents, their watchdogs, members), checked after cluster down. */
    const pids = new Set<number>();
    const vms: (ChildProcess & { pid: number })[] = [];
    const record = (): void => {
      state = readClusterState(clusterDir)!;
      for (const agent of state.agents) {
        pids.add(agent.pid);
        for (const child of childrenOf(agent.pid)) pids.add(child);
      }
      for (const member of state.etcd) pids.add(member.pid);
    };
    const status = async (): Promise<string> => {
      const shown = await haven("status");
      return shown.stdout;
    };

    before(async () => {
      const basePort = await freeBasePort();
      state = await clusterUp({ dir: clusterDir, hosts: 3, basePort, etcdMembers: 3, timings: { ...TEST_TIMINGS } });
      env = {
        ...process.env,
        HAVEN_CONTEXT: join(dir.path, "context.json"),
        HAVEN_ETCD: state.endpoints.join(","),
        HAVEN_TLS_DIR: state.tlsDir,
      };
      record();
    });

    after(async () => {
      await stopLocalCluster(clusterDir);
      for (const vm of vms) {
        try {
          process.kill(-vm.pid, "SIGKILL");
        } catch {
          // gone already
        }
      }
      dir.remove();
    });

    test("kill stops the host's agent, watchdog, trusted VMs and etcd member at once; the others see it dead", async () => {
      const h2 = state.agents.find((agent) => agent.name === "h2")!;
      const member = state.etcd.find((each) => each.host === "h2")!;
      const watchdogs = childrenOf(h2.pid);
      assert.equal(watchdogs.length, 1, "the agent runs one watchdog");
      // VM vm1 runs; vm2's pidfile names a process that is not vm2 (a reused pid), which must survive.
      const vm1 = fakeVm("vm1");
      const stranger = fakeVm("someone-else");
      vms.push(vm1, stranger);
      for (const [name, pid] of [
        ["vm1", vm1.pid],
        ["vm2", stranger.pid],
      ] as const) {
        const runtime = vmRuntimeDir(hostStateDir(clusterDir, "h2"), name);
        mkdirSync(runtime, { recursive: true, mode: 0o700 });
        writeFileSync(runtimePaths(runtime).pidfile, `${pid}\n`);
      }

      const killed = await haven("cluster", "kill", "h2", "--dir", clusterDir);
      assert.equal(killed.code, 0, killed.stderr);
      assert.match(killed.stdout, new RegExp(`agent: pid ${h2.pid}\\b`));
      assert.match(killed.stdout, new RegExp(`watchdog: pid ${watchdogs[0]}\\b`));
      assert.match(killed.stdout, new RegExp(`VM vm1's QEMU: pid ${vm1.pid}\\b`));
      assert.match(killed.stdout, new RegExp(`etcd member h2: pid ${member.pid}\\b`));
      assert.doesNotMatch(killed.stdout, new RegExp(`pid ${stranger.pid}\\b`));
      assert.equal(await exitOf(vm1), "SIGKILL");
      for (const pid of [h2.pid, watchdogs[0]!, member.pid]) assert.ok(!running(pid), `pid ${pid} still runs`);
      assert.ok(running(stranger.pid), "a process that reused a VM's pid is not killed");
      assert.ok(readClusterState(clusterDir)!.agents.find((agent) => agent.name === "h2")!.killedAt);

      await until("h2 to be seen dead", async () =>
        /^3 hosts \(2 alive, 1 dead\)/m.test(await status()) ? true : undefined,
      );
      // The others serve: two members of three are a quorum.
      const etcd = await localClusterClient(state);
      await etcd.put("/test/after-kill", "yes");
      assert.equal((await etcd.get("/test/after-kill"))?.value, "yes");
    });

    test("kill of an unknown host, or of one that runs nothing, and revive of a running host are refused", async () => {
      const unknown = await haven("cluster", "kill", "h9", "--dir", clusterDir);
      assert.equal(unknown.code, 3);
      assert.match(unknown.stderr, /has no host "h9" \(hosts: h1, h2, h3\) \[HAVEN_ERR_NOT_FOUND\]/);
      const again = await haven("cluster", "kill", "h2", "--dir", clusterDir);
      assert.notEqual(again.code, 0);
      assert.match(again.stderr, /host h2 runs nothing to kill \(killed at .*\): 'haven cluster host start h2'/);
      const live = await haven("cluster", "revive", "h1", "--dir", clusterDir);
      assert.notEqual(live.code, 0);
      assert.match(live.stderr, /host h1 is running \(agent pid \d+\)/);
      const nowhere = await haven("cluster", "revive", "h2", "--dir", join(dir.path, "nothing"));
      assert.equal(nowhere.code, 3);
      assert.match(nowhere.stderr, /no cluster was started from/);
    });

    test("revive starts the host's member and agent again under new pids, recorded, and it is alive", async () => {
      const killed = readClusterState(clusterDir)!;
      const revived = await haven("cluster", "revive", "h2", "--dir", clusterDir);
      assert.equal(revived.code, 0, revived.stderr);
      record();
      const h2 = state.agents.find((agent) => agent.name === "h2")!;
      const member = state.etcd.find((each) => each.host === "h2")!;
      assert.equal(h2.killedAt, undefined);
      assert.notEqual(h2.pid, killed.agents.find((agent) => agent.name === "h2")!.pid);
      assert.equal(h2.etcdPid, member.pid);
      assert.match(
        revived.stdout,
        new RegExp(`host h2 registered again \\(agent pid ${h2.pid}, etcd member pid ${member.pid}\\)`),
      );
      assert.ok(running(h2.pid) && running(member.pid));
      assert.ok(commandLineOf(member.pid)!.includes("--initial-cluster-state=existing"));
      await until("h2 to be alive again", async () =>
        /^3 hosts \(3 alive\)/m.test(await status()) ? true : undefined,
      );
      // Its member is back in the cluster: it serves what was written while it was down.
      assert.equal(
        (await (await localClusterClient({ ...state, endpoints: [member.endpoint] })).get("/test/after-kill"))?.value,
        "yes",
      );
    });

    test("cluster down stops the revived host too, and leaves no process running", async () => {
      record();
      const down = await haven("cluster", "down", "--dir", clusterDir);
      assert.equal(down.code, 0, down.stderr);
      assert.deepEqual(
        [...pids].filter((pid) => running(pid)),
        [],
        "processes left running after cluster down",
      );
      // The hosts never killed spoke the watchdog's protocol all along and said bye: it logged nothing.
      for (const agent of state.agents.filter((each) => each.name !== "h2"))
        assert.doesNotMatch(readFileSync(agent.log, "utf8"), /watchdog:/, `${agent.name}'s log`);
    });
  },
);
