import { unmountAllUnder } from "../../disk/disk-format.js";
import { createHash } from "node:crypto";
import { cpus } from "node:os";
import { resolve } from "node:path";
import { errorMessage } from "../../core/errors.js";
import { parseSize } from "../../util/units.js";
import { ensureNamespaceNetwork, localClusterNetwork, removeNamespaceNetwork } from "../../vm/network.js";
import { imageDir } from "./vm.js";
// `haven cluster up|down|kill|revive`: a local cluster (etcd and N agents on loopback) for trying Haven
// and for tests, started in the background, with a context file so later commands find it by
// themselves; kill and revive take one host down as a power loss would, and bring it back.

import { homedir } from "node:os";
import { isAbsolute, join } from "node:path";
import { HavenError } from "../../core/errors.js";
import { clusterDown, clusterKill, clusterRevive, clusterUp } from "../../cluster/local-cluster.js";
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

Stops the agents of a cluster started by 'haven cluster up' (each flushes the volumes it serves and
gives its lease back), then its etcd members, each by the pid cluster.json records. The data stays in
DIR; 'haven cluster up --dir DIR' starts it again.

options:
  --dir DIR        the cluster's directory (default: the context's, else ~/.local/state/haven/cluster)
  --context FILE   the context file (default: $HAVEN_CONTEXT, else ~/.config/haven/context.json)`;

export const CLUSTER_KILL_USAGE = `usage: haven cluster kill HOST [--keep-etcd] [--dir DIR] [--context FILE]

Kills HOST of a cluster started by 'haven cluster up' as a power loss would: SIGKILL, all at once, to
its agent, the agent's watchdog, the QEMU of every VM it runs (found by the pidfiles in the host's VM
runtime directories, each trusted only while the process's command line names its VM) and its etcd
member. Nothing is flushed and no lease is given back: the other hosts take over once its lease
expires. Prints what was killed, with pids. 'haven cluster revive HOST' brings it back.

options:
  --keep-etcd      leave the host's etcd member running (only the host's own processes die)
  --dir DIR        the cluster's directory (default: the context's, else ~/.local/state/haven/cluster)
  --context FILE   the context file (default: $HAVEN_CONTEXT, else ~/.config/haven/context.json)`;

export const CLUSTER_REVIVE_USAGE = `usage: haven cluster revive HOST [--dir DIR] [--context FILE]

Brings back HOST of a cluster started by 'haven cluster up' after 'haven cluster kill' (or any crash):
starts its etcd member again, joining the running cluster from its data, and its agent with the same
config, records their pids in cluster.json, and waits until the host registers. Refused while the
host's agent runs, and when the cluster is not up.

options:
  --dir DIR        the cluster's directory (default: the context's, else ~/.local/state/haven/cluster)
  --context FILE   the context file (default: $HAVEN_CONTEXT, else ~/.config/haven/context.json)`;

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
  const state = await clusterDown(clusterDirOf(values));
  // The VMs are gone with their agents: their network namespace goes too.
  await removeNamespaceNetwork(localNetwork(state.dir).namespace!).catch(() => undefined);
  // Disks `disk add` mounted in the hosts' directories are let go of (the devices stay as they are).
  const unmounted = await unmountAllUnder(state.dir).catch(() => []);
  if (unmounted.length > 0) process.stdout.write(`unmounted ${unmounted.join(", ")}\n`);
  const members = state.etcd.length === 1 ? "etcd" : `${state.etcd.length} etcd members`;
  process.stdout.write(
    `cluster down: stopped ${state.agents.length} agents and ${members}; data kept in ${state.dir}\n`,
  );
  return 0;
}

export async function clusterKillCommand(argv: string[]): Promise<number> {
  const parsed = parseCommand(
    argv,
    { dir: { type: "string" }, context: { type: "string" }, "keep-etcd": { type: "boolean" } },
    CLUSTER_KILL_USAGE,
  );
  if (parsed === undefined) return 0; // --help was printed
  const host = oneHost(parsed.positionals, CLUSTER_KILL_USAGE);
  const { killed } = await clusterKill(clusterDirOf(parsed.values), host, {
    keepEtcd: parsed.values["keep-etcd"] === true,
    findVms: runningVms,
  });
  const lines = killed.map((target) => {
    const what =
      target.role === "VM" ? `VM ${target.name}'s QEMU` : target.name ? `${target.role} ${target.name}` : target.role;
    return `  ${what}: pid ${target.pid}`;
  });
  process.stdout.write(`cluster kill: host ${host} is down, as after a power loss; killed:\n${lines.join("\n")}\n`);
  return 0;
}

export async function clusterReviveCommand(argv: string[]): Promise<number> {
  const parsed = parseCommand(argv, { dir: { type: "string" }, context: { type: "string" } }, CLUSTER_REVIVE_USAGE);
  if (parsed === undefined) return 0; // --help was printed
  const host = oneHost(parsed.positionals, CLUSTER_REVIVE_USAGE);
  process.stderr.write(`starting host ${host} again ...\n`);
  const { agentPid, etcdPid } = await clusterRevive(clusterDirOf(parsed.values), host);
  process.stdout.write(
    `cluster revive: host ${host} registered again (agent pid ${agentPid}${etcdPid !== undefined ? `, etcd member pid ${etcdPid}` : ""})\n`,
  );
  return 0;
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
