// A whole cluster on this machine, for trying Haven and for tests: one etcd and N agents on loopback,
// each host with its own directory, disk directory and ports, started as background processes (their
// own sessions, so they outlive the command that started them) with their logs in the cluster's
// directory. cluster.json records what runs, so `haven cluster down` can stop exactly that.
//
//   DIR/cluster.json            pids, endpoint, hosts
//   DIR/secret, DIR/token       the cluster secret and the API token (0600)
//   DIR/etcd/ , DIR/etcd.log    etcd's data and log
//   DIR/hosts/hN/agent.json     host hN's agent config; DIR/hosts/hN/agent.log its log
//   DIR/hosts/hN/disk0/         host hN's copies

import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, openSync, readdirSync, readFileSync, writeFileSync, closeSync } from "node:fs";
import { join, resolve } from "node:path";
import { HavenError } from "../core/errors.js";
import { packageRoot } from "../util/repo-root.js";
import { EtcdClient } from "./etcd-client.js";
import { keys } from "./schema.js";

export interface LocalClusterOptions {
  readonly dir: string;
  readonly hosts: number;
  /** etcd's client port is basePort, its peer port basePort+1; host i (from 1) uses basePort + 10i .. +2. */
  readonly basePort: number;
  /** Agent timing overrides written into each config (for tests wanting fast failover). */
  readonly timings?: Record<string, number>;
  readonly readyTimeoutMs?: number;
  /** An etcd that runs already (several members, a witness): cluster up then starts only the agents. */
  readonly etcdEndpoints?: readonly string[];
  /** The etcd endpoint host NAME's agent uses (default: etcd's own); tests put a proxy they control here. */
  readonly etcdEndpointOf?: (name: string) => string;
  /** The replication port host NAME advertises to the others (default: its own); tests put a proxy here. */
  readonly replicationPortOf?: (name: string) => number | undefined;
  /** Each host's disks (directories under its host directory); default one, disk0, with the file system's space. */
  readonly disks?: readonly { readonly name: string; readonly capacity?: string }[];
}

export interface LocalClusterState {
  readonly dir: string;
  readonly endpoint: string;
  readonly etcdPid: number;
  readonly agents: { readonly name: string; readonly pid: number; readonly config: string; readonly log: string }[];
}

export const CLUSTER_FILE = "cluster.json";

/** Host NAME's (hI's) ports in a local cluster: API at basePort+10*I, replication +1, NBD +2. */
export function localHostPorts(basePort: number, name: string): { api: number; replication: number; nbd: number } {
  const api = basePort + 10 * Number(name.slice(1));
  return { api, replication: api + 1, nbd: api + 2 };
}

export async function clusterUp(options: LocalClusterOptions): Promise<LocalClusterState> {
  const dir = resolve(options.dir);
  if (!(Number.isInteger(options.hosts) && options.hosts >= 1 && options.hosts <= 9))
    throw new HavenError("HAVEN_ERR_USAGE", `--hosts must be 1 to 9, not ${options.hosts}`);
  const existing = readClusterState(dir);
  if (existing && existing.agents.some((agent) => alive(agent.pid)))
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `a cluster is already running from ${dir}: run 'haven cluster down --dir ${dir}' first`,
    );
  mkdirSync(join(dir, "hosts"), { recursive: true });
  const secretFile = join(dir, "secret");
  const tokenFile = join(dir, "token");
  for (const file of [secretFile, tokenFile])
    if (!existsSync(file)) writeFileSync(file, `${randomBytes(24).toString("base64")}\n`, { mode: 0o600 });

  const endpoints = options.etcdEndpoints ?? [`http://127.0.0.1:${options.basePort}`];
  const endpoint = endpoints[0]!;
  const peer = `http://127.0.0.1:${options.basePort + 1}`;
  const etcdPid =
    options.etcdEndpoints !== undefined
      ? 0
      : spawnBackground(
          "etcd",
          [
            "--name=haven",
            `--data-dir=${join(dir, "etcd")}`,
            `--listen-client-urls=${endpoint}`,
            `--advertise-client-urls=${endpoint}`,
            `--listen-peer-urls=${peer}`,
            `--initial-advertise-peer-urls=${peer}`,
            `--initial-cluster=haven=${peer}`,
            "--logger=zap",
            "--log-outputs=stderr",
          ],
          join(dir, "etcd.log"),
        );
  const etcd = new EtcdClient([...endpoints], { requestTimeoutMs: 2000 });
  const deadline = Date.now() + (options.readyTimeoutMs ?? 30_000);
  await until(
    deadline,
    async () => (await etcd.status().catch(() => undefined)) !== undefined,
    () => {
      return `etcd did not answer on ${endpoint} (see ${join(dir, "etcd.log")})`;
    },
  );

  const agents: LocalClusterState["agents"][number][] = [];
  for (let i = 1; i <= options.hosts; i++) {
    const name = `h${i}`;
    const hostDir = join(dir, "hosts", name);
    const disks = (options.disks ?? [{ name: "disk0" }]).map((disk) => ({ ...disk, path: join(hostDir, disk.name) }));
    for (const disk of disks) mkdirSync(disk.path, { recursive: true });
    const ports = localHostPorts(options.basePort, name);
    const config = {
      host: { name, address: "127.0.0.1" },
      etcd: { endpoints: options.etcdEndpointOf ? [options.etcdEndpointOf(name)] : [...endpoints] },
      api: { listen: `127.0.0.1:${ports.api}`, tokenFile },
      replication: {
        listen: `127.0.0.1:${ports.replication}`,
        secretFile,
        ...(options.replicationPortOf?.(name) !== undefined && { advertisePort: options.replicationPortOf(name) }),
      },
      nbd: { listen: `127.0.0.1:${ports.nbd}` },
      disks,
      ...(options.timings && { timings: options.timings }),
    };
    const configFile = join(hostDir, "agent.json");
    writeFileSync(configFile, `${JSON.stringify(config, null, 2)}\n`);
    const log = join(hostDir, "agent.log");
    const pid = spawnBackground(
      process.execPath,
      [join(packageRoot(), "bin", "haven.js"), "agent", "--config", configFile],
      log,
    );
    agents.push({ name, pid, config: configFile, log });
  }
  const state: LocalClusterState = { dir, endpoint, etcdPid, agents };
  writeFileSync(join(dir, CLUSTER_FILE), `${JSON.stringify(state, null, 2)}\n`);
  await until(
    deadline,
    async () => {
      const hosts = await etcd.getPrefix(keys.hosts()).catch(() => []);
      return agents.every((agent) => hosts.some((kv) => kv.key === keys.host(agent.name)));
    },
    () => {
      const dead = agents
        .filter((agent) => !alive(agent.pid))
        .map((agent) => `${agent.name} exited (see ${agent.log})`);
      return `not every agent registered in time${dead.length > 0 ? `: ${dead.join("; ")}` : ""}`;
    },
  );
  return state;
}

/** Stops the agents (each flushes its volumes and gives its lease back), then etcd. */
export async function clusterDown(dir: string, timeoutMs = 20_000): Promise<LocalClusterState> {
  const state = readClusterState(resolve(dir));
  if (state === undefined) throw new HavenError("HAVEN_ERR_NOT_FOUND", `no cluster was started from ${resolve(dir)}`);
  // An agent restarted by hand has another pid than the one recorded: find it by its config file.
  const pids = new Set(state.agents.map((agent) => agent.pid));
  for (const pid of agentProcesses(state.agents.map((agent) => agent.config))) pids.add(pid);
  await Promise.all([...pids].map((pid) => stopProcess(pid, timeoutMs)));
  if (state.etcdPid > 0) await stopProcess(state.etcdPid, timeoutMs); // 0: an etcd cluster up did not start
  return state;
}

/** Processes running `haven agent --config FILE` for one of `configs` (read from /proc; Linux only). */
function agentProcesses(configs: readonly string[]): number[] {
  let entries: string[];
  try {
    entries = readdirSync("/proc");
  } catch {
    return [];
  }
  const found: number[] = [];
  for (const entry of entries) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    let args: string[];
    try {
      args = readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0");
    } catch {
      continue; // gone meanwhile, or not ours to read
    }
    const at = args.indexOf("--config");
    if (at > 0 && args[at - 1] === "agent" && configs.includes(args[at + 1] ?? "")) found.push(Number(entry));
  }
  return found;
}

export function readClusterState(dir: string): LocalClusterState | undefined {
  const file = join(dir, CLUSTER_FILE);
  if (!existsSync(file)) return undefined;
  try {
    return JSON.parse(readFileSync(file, "utf8")) as LocalClusterState;
  } catch {
    throw new HavenError("HAVEN_ERR_CONFIG", `${file} is not the JSON 'haven cluster up' writes`);
  }
}

function spawnBackground(command: string, args: string[], logFile: string): number {
  const out = openSync(logFile, "a");
  try {
    const child = spawn(command, args, { detached: true, stdio: ["ignore", out, out] });
    child.unref();
    if (child.pid === undefined) throw new HavenError("HAVEN_ERR_IO", `cannot start ${command}`);
    return child.pid;
  } finally {
    closeSync(out);
  }
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function stopProcess(pid: number, timeoutMs: number): Promise<void> {
  if (!alive(pid)) return;
  process.kill(pid, "SIGTERM");
  const deadline = Date.now() + timeoutMs;
  while (alive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  if (alive(pid)) process.kill(pid, "SIGKILL");
}

async function until(deadline: number, ready: () => Promise<boolean>, failure: () => string): Promise<void> {
  while (!(await ready())) {
    if (Date.now() > deadline) throw new HavenError("HAVEN_ERR_UNAVAILABLE", failure());
    await new Promise((r) => setTimeout(r, 100));
  }
}
