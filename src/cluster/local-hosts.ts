// One host of a local cluster (local-cluster.ts), as a test bench: `haven cluster host
// start|stop|kill|freeze|thaw HOST` and `haven cluster status`. Each acts on the host's processes as
// local-processes.ts finds them now, by pid (never by name), however they were started:
// - stop:   a clean stop: SIGTERM to the agent (it stops its VMs, flushes its volumes and gives its
//           lease back), then to what is left of the host, then to its etcd member;
// - kill:   a power loss: SIGKILL, all at once, to the agent, its watchdog and children, the QEMU of
//           every VM of the host, and its etcd member (unless keepEtcd); the host is recorded as killed;
// - freeze: a hung host: SIGSTOP to all of them (state T in /proc/PID/stat), until thaw's SIGCONT;
// - start:  starts what does not run (its etcd member, joining the running cluster from its data;
//           its agent, with the same config), records the pids, and waits until the host registers.
// `cluster kill` and `cluster revive` are the older names of host kill and host start.

import { readFileSync } from "node:fs";
import { HavenError } from "../core/errors.js";
import { running } from "../util/processes.js";
import { etcdArgs } from "./etcd-process.js";
import {
  hostOf,
  lastLine,
  localClusterClient,
  replaceAgent,
  requireClusterState,
  signal,
  spawnAgent,
  spawnBackground,
  stopProcess,
  until,
  writeClusterState,
  type LocalClusterState,
} from "./local-cluster.js";
import { clusterProcesses, type ClusterProcess, type FindVms } from "./local-processes.js";
import { keys } from "./schema.js";

/** How long a host's processes get to end after SIGTERM (then SIGKILL), or to die after SIGKILL. */
const DEFAULT_STOP_TIMEOUT_MS = 20_000;

export interface HostActionOptions {
  /** The QEMUs of a host's VMs, from its state directory (the VM layer's runningVms; injected from above). */
  readonly findVms?: FindVms;
  readonly timeoutMs?: number;
}

async function hostProcesses(
  state: LocalClusterState,
  name: string,
  options: HostActionOptions,
): Promise<ClusterProcess[]> {
  return clusterProcesses(state, { host: name, ...(options.findVms && { findVms: options.findVms }) });
}

/** Waits until every one of `pids` no longer runs, or fails naming those that do. */
async function untilGone(name: string, pids: readonly number[], timeoutMs: number): Promise<void> {
  await until(
    Date.now() + timeoutMs,
    async () => pids.every((pid) => !running(pid)),
    () => `host ${name}'s processes did not all end: ${pids.filter(running).join(", ")} still run`,
  );
}

/**
 * Kills host NAME as a power loss would: every process of it found first, then SIGKILL to all of them
 * at once, then waits until they are gone, and records the host as killed. Refused for a host the
 * cluster does not have, and for one with nothing running.
 */
export async function clusterKill(
  dir: string,
  name: string,
  options: HostActionOptions & { readonly keepEtcd?: boolean },
): Promise<{ state: LocalClusterState; killed: ClusterProcess[] }> {
  const state = requireClusterState(dir);
  const agent = hostOf(state, name);
  const killed = (await hostProcesses(state, name, options)).filter(
    (each) => !(options.keepEtcd === true && each.role === "etcd member"),
  );
  if (killed.length === 0)
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `host ${name} runs nothing to kill${agent.killedAt ? ` (killed at ${agent.killedAt})` : ""}: ` +
        `'haven cluster host start ${name}' starts it again`,
    );
  for (const each of killed) signal(each.pid, "SIGKILL");
  await untilGone(
    name,
    killed.map((each) => each.pid),
    options.timeoutMs ?? 10_000,
  );
  const after = replaceAgent(state, { ...agent, killedAt: new Date().toISOString() });
  writeClusterState(after);
  return { state: after, killed };
}

/**
 * Stops host NAME cleanly: its agent (SIGTERM: it stops its VMs, flushes its volumes and gives its
 * lease back), then what is left of the host (SIGTERM, SIGKILL after the timeout), then its etcd
 * member. A frozen process is thawed first. Refused for a host that runs nothing.
 */
export async function clusterHostStop(
  dir: string,
  name: string,
  options: HostActionOptions = {},
): Promise<{ state: LocalClusterState; stopped: ClusterProcess[] }> {
  const state = requireClusterState(dir);
  hostOf(state, name);
  const timeoutMs = options.timeoutMs ?? DEFAULT_STOP_TIMEOUT_MS;
  const stopped = new Map<number, ClusterProcess>();
  const scan = async (): Promise<ClusterProcess[]> => {
    const found = await hostProcesses(state, name, options);
    for (const each of found) {
      if (!stopped.has(each.pid)) stopped.set(each.pid, each);
      if (each.state === "frozen") signal(each.pid, "SIGCONT");
    }
    return found;
  };
  const first = await scan();
  if (first.length === 0)
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `host ${name} runs nothing to stop: 'haven cluster host start ${name}' starts it`,
    );
  await Promise.all(first.filter((each) => each.role === "agent").map((each) => stopProcess(each.pid, timeoutMs)));
  const rest = (await scan()).filter((each) => each.role !== "etcd member");
  await Promise.all(rest.map((each) => stopProcess(each.pid, timeoutMs)));
  for (const member of (await scan()).filter((each) => each.role === "etcd member"))
    await stopProcess(member.pid, timeoutMs);
  return { state, stopped: [...stopped.values()] };
}

/**
 * Freezes host NAME as a hung machine (SIGSTOP to every process of it: agent, watchdog, QEMUs, etcd
 * member), or thaws it (SIGCONT); waits until each shows the state asked for in /proc/PID/stat.
 * Refused when nothing of the host runs, or nothing is left to freeze or to thaw.
 */
export async function clusterHostFreeze(
  dir: string,
  name: string,
  how: "freeze" | "thaw",
  options: HostActionOptions = {},
): Promise<ClusterProcess[]> {
  const state = requireClusterState(dir);
  hostOf(state, name);
  const found = await hostProcesses(state, name, options);
  const targets = found.filter((each) => (how === "freeze" ? each.state === "running" : each.state === "frozen"));
  if (targets.length === 0)
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      found.length === 0
        ? `host ${name} runs nothing to ${how}: 'haven cluster host start ${name}' starts it`
        : `host ${name} has nothing to ${how}: ${how === "freeze" ? "it is frozen already" : "nothing of it is frozen"}`,
    );
  for (const each of targets) signal(each.pid, how === "freeze" ? "SIGSTOP" : "SIGCONT");
  const want = how === "freeze" ? "frozen" : "running";
  await until(
    Date.now() + (options.timeoutMs ?? 10_000),
    async () => {
      const now = await hostProcesses(state, name, {});
      return targets.every((target) => {
        const seen = now.find((each) => each.pid === target.pid);
        return seen === undefined || seen.state === want;
      });
    },
    () => `host ${name}'s processes did not all become ${want}`,
  );
  return targets.map((each) => ({ ...each, state: want }));
}

/**
 * Starts what of host NAME does not run: its etcd member (if it has one), joining the running cluster
 * from its data directory, and its agent with the same config and log; records the new pids, and when
 * it started the agent, waits until the host registers (a host key written after this call began).
 * Refused for a host the cluster does not have, a frozen host (thaw it), a host that runs everything
 * already, and a cluster whose etcd does not answer.
 */
export async function clusterHostStart(
  dir: string,
  name: string,
  options: { readonly readyTimeoutMs?: number } = {},
): Promise<{ state: LocalClusterState; agentPid?: number; etcdPid?: number }> {
  const state = requireClusterState(dir);
  const agent = hostOf(state, name);
  const found = await hostProcesses(state, name, {});
  const frozen = found.filter((each) => each.state === "frozen");
  if (frozen.length > 0)
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `host ${name} is frozen (pids ${frozen.map((each) => each.pid).join(", ")}): 'haven cluster host thaw ${name}' wakes it`,
    );
  const runningAgents = found.filter((each) => each.role === "agent");
  let member = state.etcd.find((candidate) => candidate.host === name);
  const memberUp = found.some((each) => each.role === "etcd member");
  if (runningAgents.length > 0 && (member === undefined || memberUp))
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `host ${name} is running (agent pid ${runningAgents.map((each) => each.pid).join(", ")}); ` +
        `'haven cluster host stop ${name}' or 'haven cluster host kill ${name}' stops it first`,
    );
  const othersUp = (await clusterProcesses(state)).some((each) => each.host !== name);
  if (!othersUp)
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `the cluster in ${state.dir} is not up: start it with 'haven cluster up --dir ${state.dir}'`,
    );
  const deadline = Date.now() + (options.readyTimeoutMs ?? 30_000);
  let etcd = state.etcd;
  let etcdPid: number | undefined;
  if (member !== undefined && !memberUp) {
    const args = etcdArgs({
      name: member.name,
      dataDir: member.dataDir,
      clientPort: Number(new URL(member.endpoint).port),
      peerPort: Number(new URL(member.peerUrl).port),
      initialCluster: etcd.map((each) => `${each.name}=${each.peerUrl}`).join(","),
      initialClusterState: "existing",
      ...(member.tlsDir !== undefined && { tlsDir: member.tlsDir }),
    });
    etcdPid = spawnBackground("etcd", args, member.log);
    member = { ...member, pid: etcdPid };
    const restarted = member;
    etcd = etcd.map((each) => (each.name === restarted.name ? restarted : each));
  }
  // The host key may still be there from the killed agent's lease (it lives until the lease expires):
  // only a key written after this revision is the started agent's.
  const client = await localClusterClient(state, { requestTimeoutMs: 2000 });
  let before = 0;
  await until(
    deadline,
    async () => {
      const read = await client.get(keys.host(name)).then(
        (kv) => ({ revision: kv?.modRevision ?? 0 }),
        () => undefined,
      );
      if (read !== undefined) before = read.revision;
      return read !== undefined;
    },
    () => `etcd did not answer on ${state.endpoints.join(", ")}`,
  );
  if (runningAgents.length > 0) {
    const after: LocalClusterState = { ...state, etcd };
    writeClusterState(after);
    return { state: after, ...(etcdPid !== undefined && { etcdPid }) };
  }
  const agentPid = spawnAgent(agent.config, agent.log);
  const started = {
    name,
    pid: agentPid,
    config: agent.config,
    log: agent.log,
    ...(member && { etcdPid: member.pid }),
  };
  const after: LocalClusterState = { ...replaceAgent(state, started), etcd };
  writeClusterState(after);
  await until(
    deadline,
    async () => {
      const kv = await client.get(keys.host(name)).catch(() => undefined);
      return kv !== undefined && kv.modRevision > before;
    },
    () =>
      running(agentPid)
        ? `host ${name} did not register in time; its log ends: ${lastLine(agent.log)}`
        : `host ${name}'s agent exited (see ${agent.log}): ${lastLine(agent.log)}`,
  );
  return { state: after, agentPid, ...(etcdPid !== undefined && { etcdPid }) };
}

/** The older name of clusterHostStart (`haven cluster revive`), kept for the tests and scripts that use it. */
export const clusterRevive = clusterHostStart;

/** One host as `haven cluster status` shows it. */
export interface HostStatus {
  readonly name: string;
  /** running: agent (and member) up; frozen: something of it frozen; stopped: nothing runs; partial: some does. */
  readonly state: "running" | "frozen" | "stopped" | "partial";
  readonly processes: readonly ClusterProcess[];
  /** Where it listens, from its agent config ("" when the config cannot be read). */
  readonly api: string;
  readonly replication: string;
  readonly nbd: string;
  /** Its etcd member's client and peer URLs, when it has one. */
  readonly etcd: { readonly name: string; readonly endpoint: string; readonly peerUrl: string } | null;
  readonly config: string;
  readonly log: string;
  readonly killedAt: string | null;
}

export interface ClusterStatus {
  readonly dir: string;
  readonly endpoints: readonly string[];
  readonly hosts: readonly HostStatus[];
  /** The single etcd member of a one-member cluster (no host of its own), when there is one. */
  readonly etcd: { readonly endpoint: string; readonly processes: readonly ClusterProcess[] } | null;
}

function listenOf(config: unknown, section: string): string {
  const value = (config as Record<string, { listen?: unknown } | undefined>)[section]?.listen;
  return typeof value === "string" ? value : "";
}

/** Each host's processes (pids, running or frozen), ports and files, and the etcd endpoints. */
export async function clusterStatus(dir: string, findVms?: FindVms): Promise<ClusterStatus> {
  const state = requireClusterState(dir);
  const all = await clusterProcesses(state, findVms && { findVms });
  const hosts = state.agents.map((agent): HostStatus => {
    let config: unknown = {};
    try {
      config = JSON.parse(readFileSync(agent.config, "utf8"));
    } catch {
      // shown with empty ports
    }
    const processes = all.filter((each) => each.host === agent.name);
    const member = state.etcd.find((each) => each.host === agent.name);
    const agentUp = processes.some((each) => each.role === "agent");
    const memberUp = member === undefined || processes.some((each) => each.role === "etcd member");
    const hostState = processes.some((each) => each.state === "frozen")
      ? "frozen"
      : processes.length === 0
        ? "stopped"
        : agentUp && memberUp
          ? "running"
          : "partial";
    return {
      name: agent.name,
      state: hostState,
      processes,
      api: listenOf(config, "api"),
      replication: listenOf(config, "replication"),
      nbd: listenOf(config, "nbd"),
      etcd: member === undefined ? null : { name: member.name, endpoint: member.endpoint, peerUrl: member.peerUrl },
      config: agent.config,
      log: agent.log,
      killedAt: agent.killedAt ?? null,
    };
  });
  const single = state.etcd.find((each) => each.host === undefined);
  return {
    dir: state.dir,
    endpoints: state.endpoints,
    hosts,
    etcd:
      single === undefined
        ? null
        : { endpoint: single.endpoint, processes: all.filter((each) => each.host === undefined) },
  };
}
