// `haven cluster up|down`: a local cluster (etcd and N agents on loopback) for trying Haven and for
// tests, started in the background, with a context file so later commands find it by themselves.

import { homedir } from "node:os";
import { isAbsolute, join } from "node:path";
import { HavenError } from "../../core/errors.js";
import { clusterDown, clusterUp } from "../../cluster/local-cluster.js";
import { parseCommand, refuseArguments } from "../args.js";
import { defaultContextPath, readContext, writeContext } from "../context.js";

export const CLUSTER_UP_USAGE = `usage: haven cluster up [--hosts N] [--etcd-members M] [--dir DIR] [--base-port PORT] [--context FILE]

Starts etcd and N host agents on 127.0.0.1 in the background, each host with its own directory,
disk directory and ports, and writes a context file so that 'haven status', 'haven volume create' and
the other cluster commands use this cluster by default. Stop it with 'haven cluster down'.
etcd runs one member per host, so losing one host's member of three changes nothing; every agent
knows every member. A cluster started again from its directory keeps the members it had.

options:
  --hosts N          hosts to start, 1 to 9 (default 3)
  --etcd-members M   etcd members, 1 to N: one on each of the first M hosts (default N). An even count
                     tolerates no more lost members than one fewer: with 2 hosts, 1 or a witness is better
  --dir DIR          where the cluster's data, configs and logs live (default ~/.local/state/haven/cluster)
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

function defaultClusterDir(): string {
  const xdg = process.env.XDG_STATE_HOME;
  return join(
    xdg !== undefined && isAbsolute(xdg) ? xdg : join(process.env.HOME || homedir(), ".local", "state"),
    "haven",
    "cluster",
  );
}

function contextPath(flag: string | boolean | undefined): string {
  if (typeof flag === "string") return flag;
  return process.env.HAVEN_CONTEXT || defaultContextPath();
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
  const state = await clusterUp({ dir, hosts, basePort, etcdMembers });
  const context = contextPath(values.context);
  writeContext(context, { etcd: [...state.endpoints], clusterDir: state.dir });
  process.stdout.write(
    [
      `cluster up: etcd ${state.endpoints.join(",")}, hosts ${state.agents.map((agent) => agent.name).join(", ")}`,
      `  data, configs and logs: ${state.dir}`,
      `  context: ${context} (the cluster commands use it by default)`,
      "  try: haven status; haven volume create demo --size 1G; haven events --follow",
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
  const context = readContext(contextPath(values.context), true);
  const dir = typeof values.dir === "string" ? values.dir : (context?.clusterDir ?? defaultClusterDir());
  const state = await clusterDown(dir);
  const members = state.etcd.length === 1 ? "etcd" : `${state.etcd.length} etcd members`;
  process.stdout.write(
    `cluster down: stopped ${state.agents.length} agents and ${members}; data kept in ${state.dir}\n`,
  );
  return 0;
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
