import { unmountAllUnder } from "../../disk/disk-format.js";
import { createHash } from "node:crypto";
import { cpus } from "node:os";
import { resolve } from "node:path";
import { errorMessage } from "../../core/errors.js";
import { parseSize } from "../../util/units.js";
import { ensureNamespaceNetwork, localClusterNetwork, removeNamespaceNetwork } from "../../vm/network.js";
import { imageDir } from "./vm.js";
// `haven cluster up|down|status|host ...`: a local cluster (etcd and N agents on loopback) for trying
// Haven and as a test bench, started in the background, with a context file so later commands find it
// by themselves; `cluster host start|stop|kill|freeze|thaw HOST` brings one host up, stops it cleanly,
// takes it down as a power loss would, or hangs it and wakes it (`cluster kill` and `cluster revive` are
// the older names of host kill and host start).

import { homedir } from "node:os";
import { isAbsolute, join } from "node:path";
import { HavenError } from "../../core/errors.js";
import { clusterDown, clusterUp } from "../../cluster/local-cluster.js";
import {
  clusterHostFreeze,
  clusterHostStart,
  clusterHostStop,
  clusterKill,
  clusterStatus,
  type ClusterStatus,
} from "../../cluster/local-hosts.js";
import type { ClusterProcess } from "../../cluster/local-processes.js";
import { runningVms } from "../../vm/runtime-dir.js";
import { parseCommand, refuseArguments } from "../args.js";
import { defaultContextPath, readContext, writeContext } from "../context.js";

export const CLUSTER_UP_USAGE = `usage: haven cluster up [--hosts N] [--etcd-members M] [--dir DIR] [--base-port PORT] [--vm-memory SIZE] [--no-vms] [--context FILE]

Starts etcd and N host agents on 127.0.0.1 in the background, each host with its own directory,
disk directory and ports, and writes a context file so that 'haven status', 'haven volume create' and
the other cluster commands use this cluster by default. Stop it with 'haven cluster down'.
etcd runs one member per host, so losing one host's member of three changes nothing; every agent
knows every member. A cluster started again from its directory keeps the members it had.
etcd speaks mutual TLS only, under the cluster's own CA in DIR/pki (made once, kept afterwards): each
host has its identity (DIR/pki/hosts/hI) and the CLI the operator "admin" (DIR/pki/operators/admin,
named by the context file's "tls"). 'haven cert list' shows them.

options:
  --hosts N          hosts to start, 1 to 9 (default 3)
  --etcd-members M   etcd members, 1 to N: one on each of the first M hosts (default N). An even count
                     tolerates no more lost members than one fewer: with 2 hosts, 1 or a witness is better
  --dir DIR          where the cluster's data, configs and logs live (default ~/.local/state/haven/cluster)
  --vm-memory SIZE   memory each host gives to VMs (default 2G); every host may use every CPU
  --no-vms           hosts run no VMs (no network namespace is made)
  --base-port PORT   host hI listens on PORT+10*I (API), +1 (replication), +2 (NBD), and its etcd member on
                     +3 (clients) and +4 (peers); a single etcd member on PORT and PORT+1 (default 17400)
  --context FILE     the context file to write (default: $HAVEN_CONTEXT, else ~/.config/haven/context.json)`;

export const CLUSTER_DOWN_USAGE = `usage: haven cluster down [--dir DIR] [--context FILE]

Stops every process of a cluster started by 'haven cluster up', however each was started (by
'cluster up', 'cluster host start', or by hand with a relative path): the agents first (each stops its
VMs, flushes the volumes it serves and gives its lease back), then what is left of the hosts, then the
etcd members. Processes are found by pid, in /proc, by the cluster's config files and data directories
on their command lines; each one stopped is listed with its pid. The data stays in DIR; 'haven cluster
up --dir DIR' starts it again.

options:
  --dir DIR        the cluster's directory (default: the context's, else ~/.local/state/haven/cluster)
  --context FILE   the context file (default: $HAVEN_CONTEXT, else ~/.config/haven/context.json)`;

const DIR_OPTIONS = `  --dir DIR        the cluster's directory (default: the context's, else ~/.local/state/haven/cluster)
  --context FILE   the context file (default: $HAVEN_CONTEXT, else ~/.config/haven/context.json)`;

export const CLUSTER_HOST_USAGE = `usage: haven cluster host start|stop|kill|freeze|thaw HOST [--keep-etcd] [--dir DIR] [--context FILE]

Acts on one host of a cluster started by 'haven cluster up', as a test bench: each of its processes
(agent, the agent's watchdog, the QEMU of each of its VMs, its etcd member) is found by pid, however it
was started, and each one acted on is printed with its pid.

  start    starts what of the host does not run: its etcd member (joining the running cluster from its
           data) and its agent (same config), then waits until the host registers
  stop     a clean stop: the agent (it stops its VMs, flushes its volumes, gives its lease back), then
           what is left, then its etcd member
  kill     a power loss: SIGKILL to all of them at once; nothing is flushed and no lease is given back:
           the other hosts take over once its lease expires (--keep-etcd: its etcd member lives on)
  freeze   a hung host: SIGSTOP to all of them (the other hosts see its heartbeats and lease stop)
  thaw     SIGCONT to all of them: the host wakes up and finds out what happened meanwhile; frozen
           longer than the watchdog's timeout, its watchdog may fence (kill) the agent at once, as on a
           real machine that hung: 'cluster host start' brings it back

'haven cluster status' shows each host's processes. 'haven cluster kill HOST' and 'haven cluster
revive HOST' are older names of 'cluster host kill' and 'cluster host start'.

options:
  --keep-etcd      (kill) leave the host's etcd member running
${DIR_OPTIONS}`;

export const CLUSTER_KILL_USAGE = `usage: haven cluster kill HOST [--keep-etcd] [--dir DIR] [--context FILE]

The older name of 'haven cluster host kill HOST': kills HOST as a power loss would (SIGKILL, all at
once, to its agent, watchdog, VMs' QEMUs and etcd member). See 'haven cluster host --help'.

options:
  --keep-etcd      leave the host's etcd member running (only the host's own processes die)
${DIR_OPTIONS}`;

export const CLUSTER_REVIVE_USAGE = `usage: haven cluster revive HOST [--dir DIR] [--context FILE]

The older name of 'haven cluster host start HOST': starts what of HOST does not run (its etcd member
and agent) and waits until it registers. See 'haven cluster host --help'.

options:
${DIR_OPTIONS}`;

export const CLUSTER_STATUS_USAGE = `usage: haven cluster status [--json] [--dir DIR] [--context FILE]

Each host of a cluster started by 'haven cluster up': its state (running, partial, frozen, stopped),
its processes (agent, watchdog, VMs' QEMUs, etcd member) with pids and state (running, or frozen: T in
/proc/PID/stat), its ports, config and log; and the etcd endpoints and the context file.

options:
  --json           the same as one JSON object
${DIR_OPTIONS}`;

export function defaultClusterDir(): string {
  const xdg = process.env.XDG_STATE_HOME;
  return join(
    xdg !== undefined && isAbsolute(xdg) ? xdg : join(process.env.HOME || homedir(), ".local", "state"),
    "haven",
    "cluster",
  );
}

export function contextPath(flag: string | boolean | undefined): string {
  if (typeof flag === "string") return flag;
  return process.env.HAVEN_CONTEXT || defaultContextPath();
}

/**
 * What each local host gives to VMs: every CPU of this machine (the hosts share it), `--vm-memory` (default
 * 2G) each, the built-in images, and the cluster's own network namespace with one bridge, so a guest's
 * address answers from whichever host runs it (reach it with 'ip netns exec NAMESPACE ...').
 */
/** The local cluster's VM network: a namespace named after its directory, with one bridge. */
export function localNetwork(dir: string): ReturnType<typeof localClusterNetwork> {
  return localClusterNetwork(createHash("sha256").update(resolve(dir)).digest("hex").slice(0, 8));
}

async function localVms(dir: string, memoryText: unknown): Promise<Record<string, unknown>> {
  const memory = typeof memoryText === "string" ? memoryText : "2G";
  parseSize(memory, "--vm-memory");
  const network = localNetwork(dir);
  let networkConfig: Record<string, string> = {};
  try {
    await ensureNamespaceNetwork({ namespace: network.namespace!, bridge: network.bridge });
    networkConfig = { bridge: network.bridge, netns: network.namespace! };
  } catch (error) {
    process.stderr.write(`no VM network (VMs run without NICs): ${errorMessage(error)}\n`);
  }
  return { cpus: `0-${cpus().length - 1}`, memory, imageDir: imageDir(), ...networkConfig };
}

export async function clusterUpCommand(argv: string[]): Promise<number> {
  const parsed = parseCommand(
    argv,
    {
      hosts: { type: "string" },
      "etcd-members": { type: "string" },
      dir: { type: "string" },
      "base-port": { type: "string" },
      context: { type: "string" },
      "vm-memory": { type: "string" },
      "no-vms": { type: "boolean" },
    },
    CLUSTER_UP_USAGE,
  );
  if (parsed === undefined) return 0; // --help was printed
  const { values, positionals } = parsed;
  refuseArguments(positionals, CLUSTER_UP_USAGE);
  const hosts = wholeNumber(values.hosts, "--hosts", 3, CLUSTER_UP_USAGE);
  const etcdMembers = wholeNumber(values["etcd-members"], "--etcd-members", hosts, CLUSTER_UP_USAGE);
  if (etcdMembers < 1 || etcdMembers > hosts)
    throw usage(`--etcd-members must be 1 to ${hosts} (one per host at most), not ${etcdMembers}`, CLUSTER_UP_USAGE);
  const basePort = wholeNumber(values["base-port"], "--base-port", 17400, CLUSTER_UP_USAGE);
  if (basePort < 1024 || basePort + 10 * hosts + 4 > 65535)
    throw usage(`--base-port ${basePort} leaves no room for ${hosts} hosts below port 65536`, CLUSTER_UP_USAGE);
  const dir = typeof values.dir === "string" ? values.dir : defaultClusterDir();
  process.stderr.write(`starting etcd and ${hosts} agents in ${dir} ...\n`);
  const vms = values["no-vms"] === true ? undefined : await localVms(dir, values["vm-memory"]);
  const state = await clusterUp({ dir, hosts, basePort, etcdMembers, ...(vms && { vms }) });
  const context = contextPath(values.context);
  writeContext(context, {
    etcd: [...state.endpoints],
    clusterDir: state.dir,
    ...(state.tlsDir !== undefined && { tls: state.tlsDir }),
  });
  process.stdout.write(
    [
      `cluster up: etcd ${state.endpoints.join(",")}, hosts ${state.agents.map((agent) => agent.name).join(", ")}`,
      `  data, configs and logs: ${state.dir}`,
      `  certificates: ${state.dir}/pki (the CLI shows etcd the operator identity ${state.tlsDir ?? "(none)"})`,
      `  context: ${context} (the cluster commands use it by default)`,
      "  try: haven status; haven vm create web --vcpus 1 --memory 256M --disk-size 256M --image haven-test --nic default",
      "",
    ].join("\n"),
  );
  return 0;
}

export async function clusterDownCommand(argv: string[]): Promise<number> {
  const parsed = parseCommand(argv, { dir: { type: "string" }, context: { type: "string" } }, CLUSTER_DOWN_USAGE);
  if (parsed === undefined) return 0; // --help was printed
  const { values, positionals } = parsed;
  refuseArguments(positionals, CLUSTER_DOWN_USAGE);
  const { state, stopped } = await clusterDown(clusterDirOf(values), undefined, runningVms);
  // The VMs are gone with their agents: their network namespace goes too.
  await removeNamespaceNetwork(localNetwork(state.dir).namespace!).catch(() => undefined);
  // Disks `disk add` mounted in the hosts' directories are let go of (the devices stay as they are).
  const unmounted = await unmountAllUnder(state.dir).catch(() => []);
  if (unmounted.length > 0) process.stdout.write(`unmounted ${unmounted.join(", ")}\n`);
  const count = (role: ClusterProcess["role"]): number => stopped.filter((each) => each.role === role).length;
  const summary =
    stopped.length === 0
      ? "nothing was running"
      : `stopped ${plural(count("agent"), "agent")}, ${plural(count("etcd member"), "etcd member")}, ${plural(count("VM"), "VM")}`;
  process.stdout.write(
    `cluster down: ${summary}; data kept in ${state.dir}\n${stopped.map((each) => `${processLine(each)}\n`).join("")}`,
  );
  return 0;
}

function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

/** "  h2 agent: pid 1234", "  h2 VM web's QEMU: pid 1300 (frozen)". */
function processLine(each: ClusterProcess): string {
  const what =
    each.role === "VM"
      ? `VM ${each.name}'s QEMU`
      : each.role === "etcd member"
        ? `etcd member ${each.name}`
        : each.role;
  return `  ${each.host === undefined ? "" : `${each.host} `}${what}: pid ${each.pid}`;
}

const HOST_VERBS = ["start", "stop", "kill", "freeze", "thaw"] as const;

/** `haven cluster host VERB HOST`. */
export async function clusterHostCommand(argv: string[]): Promise<number> {
  const [verb, ...rest] = argv;
  if (verb === "--help" || verb === "-h") {
    process.stdout.write(`${CLUSTER_HOST_USAGE}\n`);
    return 0;
  }
  if (!HOST_VERBS.includes(verb as (typeof HOST_VERBS)[number]))
    throw usage(
      verb === undefined ? "say what to do with the host" : `unknown host action "${verb}"`,
      CLUSTER_HOST_USAGE,
    );
  if (verb === "start") return hostStart(rest, CLUSTER_HOST_USAGE);
  if (verb === "kill") return hostKill(rest, CLUSTER_HOST_USAGE);
  const parsed = parseCommand(rest, { dir: { type: "string" }, context: { type: "string" } }, CLUSTER_HOST_USAGE);
  if (parsed === undefined) return 0; // --help was printed
  const host = oneHost(parsed.positionals, CLUSTER_HOST_USAGE);
  const dir = clusterDirOf(parsed.values);
  if (verb === "stop") {
    const { stopped } = await clusterHostStop(dir, host, { findVms: runningVms });
    process.stdout.write(
      `cluster host stop: host ${host} stopped cleanly; stopped:\n${stopped.map(processLine).join("\n")}\n`,
    );
    return 0;
  }
  const how = verb === "freeze" ? "freeze" : "thaw";
  const acted = await clusterHostFreeze(dir, host, how, { findVms: runningVms });
  const what = how === "freeze" ? "frozen (SIGSTOP), as a hung machine" : "thawed (SIGCONT)";
  process.stdout.write(`cluster host ${how}: host ${host} is ${what}:\n${acted.map(processLine).join("\n")}\n`);
  return 0;
}

export function clusterKillCommand(argv: string[]): Promise<number> {
  return hostKill(argv, CLUSTER_KILL_USAGE);
}

export function clusterReviveCommand(argv: string[]): Promise<number> {
  return hostStart(argv, CLUSTER_REVIVE_USAGE);
}

async function hostKill(argv: string[], help: string): Promise<number> {
  const parsed = parseCommand(
    argv,
    { dir: { type: "string" }, context: { type: "string" }, "keep-etcd": { type: "boolean" } },
    help,
  );
  if (parsed === undefined) return 0; // --help was printed
  const host = oneHost(parsed.positionals, help);
  const { killed } = await clusterKill(clusterDirOf(parsed.values), host, {
    keepEtcd: parsed.values["keep-etcd"] === true,
    findVms: runningVms,
  });
  const lines = killed.map((each) => processLine({ ...each, host: undefined }));
  process.stdout.write(`cluster kill: host ${host} is down, as after a power loss; killed:\n${lines.join("\n")}\n`);
  return 0;
}

async function hostStart(argv: string[], help: string): Promise<number> {
  const parsed = parseCommand(argv, { dir: { type: "string" }, context: { type: "string" } }, help);
  if (parsed === undefined) return 0; // --help was printed
  const host = oneHost(parsed.positionals, help);
  process.stderr.write(`starting host ${host} ...\n`);
  const { agentPid, etcdPid } = await clusterHostStart(clusterDirOf(parsed.values), host);
  const started = [
    ...(agentPid !== undefined ? [`agent pid ${agentPid}`] : []),
    ...(etcdPid !== undefined ? [`etcd member pid ${etcdPid}`] : []),
  ];
  process.stdout.write(
    `cluster host start: host ${host} ${agentPid !== undefined ? "registered again" : "runs its etcd member again"} (${started.join(", ")})\n`,
  );
  return 0;
}

export async function clusterStatusCommand(argv: string[]): Promise<number> {
  const parsed = parseCommand(
    argv,
    { dir: { type: "string" }, context: { type: "string" }, json: { type: "boolean" } },
    CLUSTER_STATUS_USAGE,
  );
  if (parsed === undefined) return 0; // --help was printed
  refuseArguments(parsed.positionals, CLUSTER_STATUS_USAGE);
  const status = await clusterStatus(clusterDirOf(parsed.values), runningVms);
  const context = contextPath(parsed.values.context);
  if (parsed.values.json === true) {
    process.stdout.write(`${JSON.stringify({ ...status, context }, null, 2)}\n`);
    return 0;
  }
  process.stdout.write(renderClusterStatus(status, context));
  return 0;
}

function renderClusterStatus(status: ClusterStatus, context: string): string {
  const lines = [`cluster ${status.dir}`, `  etcd:    ${status.endpoints.join(", ")}`, `  context: ${context}`, ""];
  const processRows = (processes: readonly ClusterProcess[]): string[] =>
    processes.map((each) => {
      const what =
        each.role === "VM" ? `VM ${each.name}` : each.role === "etcd member" ? `etcd member ${each.name}` : each.role;
      return `    ${what.padEnd(22)} pid ${String(each.pid).padEnd(8)} ${each.state}`;
    });
  for (const host of status.hosts) {
    lines.push(
      `${host.name}: ${host.state}${host.killedAt !== null && host.state === "stopped" ? ` (killed at ${host.killedAt})` : ""}`,
    );
    lines.push(`  ports: API ${host.api || "?"}, replication ${host.replication || "?"}, NBD ${host.nbd || "?"}`);
    if (host.etcd !== null)
      lines.push(`  etcd member ${host.etcd.name}: ${host.etcd.endpoint} (peers ${host.etcd.peerUrl})`);
    lines.push(`  config ${host.config}, log ${host.log}`);
    const hasAgent = host.processes.some((each) => each.role === "agent");
    const hasMember = host.processes.some((each) => each.role === "etcd member");
    lines.push(...processRows(host.processes));
    if (!hasAgent) lines.push(`    ${"agent".padEnd(22)} -            stopped`);
    if (host.etcd !== null && !hasMember)
      lines.push(`    ${`etcd member ${host.etcd.name}`.padEnd(22)} -            stopped`);
    lines.push("");
  }
  if (status.etcd !== null) {
    lines.push(
      `etcd (one member, ${status.etcd.endpoint}): ${status.etcd.processes.length > 0 ? status.etcd.processes[0]!.state : "stopped"}`,
    );
    lines.push(...processRows(status.etcd.processes), "");
  }
  return `${lines.join("\n")}`;
}

/** The cluster's directory: --dir, else the context file's, else the default. */
function clusterDirOf(values: Record<string, string | boolean | undefined>): string {
  if (typeof values.dir === "string") return values.dir;
  return readContext(contextPath(values.context), true)?.clusterDir ?? defaultClusterDir();
}

function oneHost(positionals: readonly string[], help: string): string {
  const [host, ...extra] = positionals;
  if (host === undefined) throw usage("name the host (for example h2)", help);
  refuseArguments(extra, help);
  return host;
}

function wholeNumber(text: string | boolean | undefined, flag: string, fallback: number, help: string): number {
  if (text === undefined) return fallback;
  if (typeof text !== "string" || !/^\d{1,6}$/.test(text))
    throw usage(`${flag} must be a whole number, not "${String(text)}"`, help);
  return Number(text);
}

function usage(message: string, help: string): HavenError {
  return new HavenError("HAVEN_ERR_USAGE", `${message}\n\n${help}`);
}
