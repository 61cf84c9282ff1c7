// A whole cluster on this machine, for trying Haven and for tests: etcd and N agents on loopback, each
// host with its own directory, disk directory and ports, started as background processes (their own
// sessions, so they outlive the command that started them) with their logs in the cluster's directory.
// cluster.json records what runs, so `haven cluster down` can stop exactly that, by pid.
//
// etcd runs as one member (etcdMembers 1, the default here: the store alone, on PORT and PORT+1), or as
// one member per host for the first etcdMembers hosts (what `haven cluster up` starts: three for three
// hosts), bootstrapped statically (--initial-cluster) with each member's data, log and ports beside its
// host's; every agent lists every member's client URL, and a test or demo that kills a host can kill
// its member too (its pid is recorded next to the agent's). A cluster started again from its directory
// keeps the layout it was first started with (its members restart from their data).
//
// `haven cluster kill HOST` stops a host as a power loss would: SIGKILL, all at once, to its agent, the
// agent's watchdog and other children, every QEMU of the host's VMs (found by the pidfiles in the host's
// VM runtime directories, trusted only while the pid's command line names the VM: QEMU runs detached,
// so neither the agent's process tree nor its group is a reliable way to find it once the agent is
// gone), and its etcd member; cluster.json records it as killed. `haven cluster revive HOST` starts
// its member again (joining the running cluster from its data) and its agent with the same config, and
// waits until the host registers. Every pid is checked against its command line before it is signalled.
//
// Every link to etcd is mutual TLS under the cluster's own CA, made on the first `cluster up` and kept
// on every later one: etcd serves https:// only and asks clients and peers for a certificate, each agent
// gets its host's identity (its config's "tls"), and the CLI the operator identity "admin" (the context
// file's "tls"; localClusterClient for tests). A cluster given etcdEndpoints keeps that etcd as it is.
//
//   DIR/cluster.json                  pids, endpoints, hosts
//   DIR/pki/ca/                       the cluster CA (pki-dir.ts)
//   DIR/pki/hosts/hN/, hosts/etcd/    host hN's identity; the single etcd member's
//   DIR/pki/operators/admin/          the operator identity the CLI uses (role admin)
//   DIR/secret, DIR/token             the cluster secret and the API token (0600)
//   DIR/etcd/ , DIR/etcd.log          the single member's data and log
//   DIR/hosts/hN/etcd/, etcd.log      host hN's member's data and log (one member per host)
//   DIR/hosts/hN/agent.json           host hN's agent config; DIR/hosts/hN/agent.log its log
//   DIR/hosts/hN/disk0/               host hN's copies
//   DIR/hosts/hN/vms/NAME/            the runtime directory of VM NAME on host hN (vmRuntimeRoot)

import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, openSync, readFileSync, writeFileSync, closeSync } from "node:fs";
import { join, resolve } from "node:path";
import { HavenError } from "../core/errors.js";
import { running } from "../util/processes.js";
import { clusterProcesses, type ClusterProcess, type FindVms } from "./local-processes.js";
import { packageRoot } from "../util/repo-root.js";
import { ensureCa, ensureIdentity } from "../security/pki-dir.js";
import { loadTlsIdentity } from "../security/tls-identity.js";
import { EtcdClient, type EtcdClientOptions } from "./etcd-client.js";
import { hostUser } from "./etcd-auth.js";
import { ensureClusterAuth } from "./cluster-auth.js";
import { readIdentityToken } from "../security/identity-token.js";
import { etcdArgs, etcdMemberUrls } from "./etcd-process.js";
import { keys } from "./schema.js";

export interface LocalClusterOptions {
  readonly dir: string;
  readonly hosts: number;
  /**
   * Host i (from 1) uses basePort + 10i .. +2 (API, replication, NBD) and, with one etcd member per host,
   * +3 and +4 for its member (client, peer); a single member uses basePort and basePort+1.
   */
  readonly basePort: number;
  /** etcd members: 1 (default), or one on each of the first etcdMembers hosts (2 to hosts). */
  readonly etcdMembers?: number;
  /** Agent timing overrides written into each config (for tests wanting fast failover). */
  readonly timings?: Record<string, number>;
  readonly readyTimeoutMs?: number;
  /** An etcd that runs already (several members, a witness): cluster up then starts only the agents. */
  readonly etcdEndpoints?: readonly string[];
  /** The etcd endpoint host NAME's agent uses (default: etcd's own); tests put a proxy they control here. */
  readonly etcdEndpointOf?: (name: string) => string;
  /** The replication port host NAME advertises to the others (default: its own); tests put a proxy here. */
  readonly replicationPortOf?: (name: string) => number | undefined;
  /** What each host gives to VMs (the agent config's `vms`, without runtimeDir: each host's directory). */
  readonly vms?: Readonly<Record<string, unknown>>;
  /** Each host's disks (directories under its host directory); default one, disk0, with the file system's space. */
  readonly disks?: readonly { readonly name: string; readonly capacity?: string }[];
}

/** An etcd member cluster up started. */
export interface LocalEtcdMember {
  readonly name: string;
  /** The host it runs beside (killed with it in tests); absent for the single member of a one-member cluster. */
  readonly host?: string;
  readonly pid: number;
  /** Its client URL. */
  readonly endpoint: string;
  readonly peerUrl: string;
  readonly dataDir: string;
  readonly log: string;
  /** Its host identity directory, when it serves TLS. */
  readonly tlsDir?: string;
}

export interface LocalClusterState {
  readonly dir: string;
  /** The first etcd endpoint (one to give a client; `endpoints` has them all). */
  readonly endpoint: string;
  /** Every etcd client URL, as each agent's config lists them (unless a test routes an agent elsewhere). */
  readonly endpoints: readonly string[];
  /** The members cluster up started (none when it was given etcdEndpoints). */
  readonly etcd: readonly LocalEtcdMember[];
  /** The operator identity a client of this cluster's etcd uses (absent for a cluster from before TLS). */
  readonly tlsDir?: string;
  readonly agents: {
    readonly name: string;
    readonly pid: number;
    readonly config: string;
    readonly log: string;
    /** The pid of this host's etcd member, when it runs one. */
    readonly etcdPid?: number;
    /** When `haven cluster kill` killed this host (absent once it is revived). */
    readonly killedAt?: string;
  }[];
}

type LocalAgent = LocalClusterState["agents"][number];

export const CLUSTER_FILE = "cluster.json";

/**
 * Host NAME's (hI's) ports in a local cluster: API at basePort+10*I, replication +1, NBD +2, and its etcd
 * member's client and peer ports +3 and +4 (when it runs one).
 */
export function localHostPorts(
  basePort: number,
  name: string,
): { api: number; replication: number; nbd: number; etcdClient: number; etcdPeer: number } {
  const api = basePort + 10 * Number(name.slice(1));
  return { api, replication: api + 1, nbd: api + 2, etcdClient: api + 3, etcdPeer: api + 4 };
}

export async function clusterUp(options: LocalClusterOptions): Promise<LocalClusterState> {
  const dir = resolve(options.dir);
  if (!(Number.isInteger(options.hosts) && options.hosts >= 1 && options.hosts <= 9))
    throw new HavenError("HAVEN_ERR_USAGE", `--hosts must be 1 to 9, not ${options.hosts}`);
  const existing = readClusterState(dir);
  const runningHere = existing === undefined ? [] : await clusterProcesses(existing);
  if (runningHere.length > 0) {
    const hosts = [...new Set(runningHere.map((each) => each.host ?? "etcd"))].join(", ");
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `the cluster in ${dir} is running already (processes of ${hosts}; 'haven cluster status --dir ${dir}' lists ` +
        `them): start a stopped host with 'haven cluster host start HOST --dir ${dir}', or stop them all with ` +
        `'haven cluster down --dir ${dir}' first`,
    );
  }
  // A cluster started again keeps its members: their data holds the cluster's state.
  const memberCount = existing && existing.etcd.length > 0 ? existing.etcd.length : (options.etcdMembers ?? 1);
  if (!(Number.isInteger(memberCount) && memberCount >= 1 && memberCount <= options.hosts))
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `etcd members must be 1 to ${options.hosts} (one per host), not ${memberCount}`,
    );
  mkdirSync(join(dir, "hosts"), { recursive: true });
  const secretFile = join(dir, "secret");
  const tokenFile = join(dir, "token");
  for (const file of [secretFile, tokenFile])
    if (!existsSync(file)) writeFileSync(file, `${randomBytes(24).toString("base64")}\n`, { mode: 0o600 });

  const pki = await ensureLocalPki(dir, options.hosts, memberCount);
  const members = options.etcdEndpoints !== undefined ? [] : startMembers(dir, options.basePort, memberCount);
  const endpoints = options.etcdEndpoints ?? members.map((member) => member.endpoint);
  const endpoint = endpoints[0]!;
  const tls = await loadTlsIdentity(pki.operator);
  // etcd's authentication is on once a first `cluster up` set it up (the admin's token is kept then).
  const adminToken = readIdentityToken(pki.operator);
  const credentials = adminToken !== undefined ? { user: "admin", password: adminToken } : undefined;
  const etcd = new EtcdClient([...endpoints], { requestTimeoutMs: 2000, tls, credentials });
  const deadline = Date.now() + (options.readyTimeoutMs ?? 30_000);
  // Ready when every member started here sees a leader (each answers status before that), or, for an
  // etcd given, when one endpoint answers.
  const probes =
    members.length > 0 ? members.map((member) => new EtcdClient([member.endpoint], { tls, credentials })) : [etcd];
  try {
    await until(
      deadline,
      async () => {
        const statuses = await Promise.all(probes.map((probe) => probe.status().catch(() => undefined)));
        if (!statuses.every((status) => status !== undefined && (members.length === 0 || status.leader !== "0")))
          return false;
        if (members.length === 0) return true;
        // What each agent does first: a lease grant goes through raft, so this needs a working leader.
        const lease = await etcd.grantLease(2).catch(() => undefined);
        if (lease !== undefined) await etcd.revokeLease(lease.id).catch(() => undefined);
        return lease !== undefined;
      },
      () => {
        const dead = members.filter((member) => !alive(member.pid)).map((member) => `${member.name} exited`);
        return (
          `etcd did not answer with a leader on ${endpoints.join(", ")}${dead.length > 0 ? ` (${dead.join("; ")})` : ""} ` +
          `(see ${members.map((member) => member.log).join(", ") || "its log"})`
        );
      },
    );
  } catch (error) {
    // Nothing records these members yet: stop them here, or nobody could.
    await Promise.all(members.map((member) => stopProcess(member.pid, 5_000)));
    throw error;
  }

  const hostNames = Array.from({ length: options.hosts }, (_, i) => `h${i + 1}`);
  // Roles in the etcd this cluster runs (an etcd given is kept as it is): each host and the admin get
  // users of their own, and authentication goes on.
  const auth =
    members.length > 0 ? await ensureClusterAuth(localPkiDir(dir), etcd, pki.operator, hostNames) : undefined;
  const authed = auth === undefined ? etcd : await localClusterClient({ endpoints, tlsDir: pki.operator });

  const agents: LocalAgent[] = [];
  for (let i = 1; i <= options.hosts; i++) {
    const name = `h${i}`;
    const hostDir = hostStateDir(dir, name);
    const disks = (options.disks ?? [{ name: "disk0" }]).map((disk) => ({ ...disk, path: join(hostDir, disk.name) }));
    for (const disk of disks) mkdirSync(disk.path, { recursive: true });
    const ports = localHostPorts(options.basePort, name);
    const config = {
      host: { name, address: "127.0.0.1" },
      tls: { dir: hostTlsDir(dir, name) },
      etcd: {
        endpoints: options.etcdEndpointOf ? [options.etcdEndpointOf(name)] : [...endpoints],
        ...(auth !== undefined && { user: hostUser(name), passwordFile: auth.hostPasswordFile(name) }),
      },
      api: { listen: `127.0.0.1:${ports.api}`, tokenFile },
      replication: {
        listen: `127.0.0.1:${ports.replication}`,
        secretFile,
        ...(options.replicationPortOf?.(name) !== undefined && { advertisePort: options.replicationPortOf(name) }),
      },
      nbd: { listen: `127.0.0.1:${ports.nbd}` },
      disks,
      // Where `disk add` keeps the disks it gave the host (and mounts block devices).
      stateDir: hostDir,
      ...(options.timings && { timings: options.timings }),
      ...(options.vms && { vms: { ...options.vms, runtimeDir: hostDir } }),
    };
    const configFile = join(hostDir, "agent.json");
    writeFileSync(configFile, `${JSON.stringify(config, null, 2)}\n`);
    const log = join(hostDir, "agent.log");
    const pid = spawnAgent(configFile, log);
    const member = members.find((candidate) => candidate.host === name);
    agents.push({ name, pid, config: configFile, log, ...(member && { etcdPid: member.pid }) });
  }
  const state: LocalClusterState = { dir, endpoint, endpoints, etcd: members, agents, tlsDir: pki.operator };
  writeClusterState(state);
  let unregistered = agents;
  // An agent gives up at once when etcd does not answer its first reads in time, which a machine under
  // heavy load can make happen just after the members answered here: start it again, a bounded number
  // of times, before the whole start counts as failed.
  const restarts = new Map<string, number>();
  await until(
    deadline,
    async () => {
      const hosts = await authed.getPrefix(keys.hosts()).catch(() => undefined);
      if (hosts !== undefined)
        unregistered = agents.filter((agent) => !hosts.some((kv) => kv.key === keys.host(agent.name)));
      for (const [i, agent] of agents.entries()) {
        const count = restarts.get(agent.name) ?? 0;
        if (!unregistered.includes(agent) || running(agent.pid) || count >= MAX_AGENT_START_RETRIES) continue;
        restarts.set(agent.name, count + 1);
        agents[i] = { ...agent, pid: spawnAgent(agent.config, agent.log) };
        writeClusterState({ ...state, agents: [...agents] });
      }
      return hosts !== undefined && unregistered.length === 0;
    },
    () => {
      const missing = unregistered.map((agent) =>
        alive(agent.pid)
          ? `${agent.name}'s log ends: ${lastLine(agent.log)}`
          : `${agent.name} exited (see ${agent.log}): ${lastLine(agent.log)}`,
      );
      return `not every agent registered in time: ${missing.join("; ")}`;
    },
  );
  return { ...state, agents: [...agents] };
}

/** How many times cluster up starts an agent again that exited before it registered. */
const MAX_AGENT_START_RETRIES = 3;

/** The PKI directory of a local cluster. */
export function localPkiDir(clusterDir: string): string {
  return join(clusterDir, "pki");
}

function hostTlsDir(clusterDir: string, name: string): string {
  return join(localPkiDir(clusterDir), "hosts", name);
}

/** The name of the single etcd member's identity (a host identity: it serves). */
const SINGLE_MEMBER_IDENTITY = "etcd";

/**
 * The CA (made once, kept on every later `cluster up`), an identity for each host (valid for 127.0.0.1
 * and localhost) and the single member's, and the operator "admin"; existing ones are kept.
 */
async function ensureLocalPki(dir: string, hosts: number, members: number): Promise<{ operator: string }> {
  const pki = localPkiDir(dir);
  await ensureCa(pki, dir.split("/").filter(Boolean).at(-1) ?? "local");
  const addresses = ["127.0.0.1", "localhost"];
  const names = Array.from({ length: hosts }, (_, i) => `h${i + 1}`);
  if (members === 1) names.push(SINGLE_MEMBER_IDENTITY);
  for (const name of names) await ensureIdentity(pki, { kind: "host", name, addresses });
  return { operator: await ensureIdentity(pki, { kind: "operator", name: "admin", role: "admin" }) };
}

/** A client of a local cluster's etcd, with the operator identity (and token) cluster up made for it. */
export async function localClusterClient(
  state: Pick<LocalClusterState, "endpoints" | "tlsDir">,
  options: Omit<EtcdClientOptions, "tls" | "credentials"> = {},
): Promise<EtcdClient> {
  const tls = state.tlsDir !== undefined ? await loadTlsIdentity(state.tlsDir) : undefined;
  const token = state.tlsDir !== undefined ? readIdentityToken(state.tlsDir) : undefined;
  const credentials = token !== undefined && tls !== undefined ? { user: tls.info.name, password: token } : undefined;
  return new EtcdClient([...state.endpoints], { ...options, tls, credentials });
}

/**
 * etcd's members, started in the background: one ("haven", on basePort and basePort+1, data in DIR/etcd)
 * or one per host for the first `count` hosts (named after the host, on its ports +3 and +4, data in
 * its directory), bootstrapped together.
 */
function startMembers(dir: string, basePort: number, count: number): LocalEtcdMember[] {
  const layout =
    count === 1
      ? [{ name: "haven", host: undefined, clientPort: basePort, peerPort: basePort + 1, home: dir }]
      : Array.from({ length: count }, (_, i) => {
          const host = `h${i + 1}`;
          const ports = localHostPorts(basePort, host);
          return {
            name: host,
            host,
            clientPort: ports.etcdClient,
            peerPort: ports.etcdPeer,
            home: join(dir, "hosts", host),
          };
        });
  const initialCluster = layout
    .map((member) => `${member.name}=${etcdMemberUrls(member.clientPort, member.peerPort, true).peerUrl}`)
    .join(",");
  // A token of its own per cluster directory, so members of two local clusters never join each other.
  const initialClusterToken = `haven-${randomBytes(6).toString("hex")}`;
  return layout.map((member) => {
    mkdirSync(member.home, { recursive: true });
    const dataDir = join(member.home, "etcd");
    const log = join(member.home, "etcd.log");
    const tlsDir = hostTlsDir(dir, member.host ?? SINGLE_MEMBER_IDENTITY);
    const flags = { name: member.name, dataDir, clientPort: member.clientPort, peerPort: member.peerPort, tlsDir };
    const args = etcdArgs(count === 1 ? flags : { ...flags, initialCluster, initialClusterToken });
    const pid = spawnBackground("etcd", args, log);
    const { endpoint, peerUrl } = etcdMemberUrls(member.clientPort, member.peerPort, true);
    const host = member.host && { host: member.host };
    return { name: member.name, ...host, pid, endpoint, peerUrl, dataDir, log, tlsDir };
  });
}

/**
 * Stops every process of the cluster, however each was started (local-processes.ts finds them by the
 * cluster's files on their command lines): the agents first (each stops its VMs, flushes its volumes
 * and gives its lease back), then what is left of the hosts (the QEMUs and watchdogs of agents that
 * died), then the etcd members one after another. A frozen process is thawed first, or it could not
 * act on its SIGTERM. Returns the cluster and every process stopped, with its pid.
 */
export async function clusterDown(
  dir: string,
  timeoutMs = 20_000,
  findVms?: FindVms,
): Promise<{ state: LocalClusterState; stopped: ClusterProcess[] }> {
  const state = requireClusterState(dir);
  const stopped = new Map<number, ClusterProcess>();
  const scan = async (): Promise<ClusterProcess[]> => {
    const found = await clusterProcesses(state, findVms && { findVms });
    for (const each of found) {
      if (!stopped.has(each.pid)) stopped.set(each.pid, each);
      if (each.state === "frozen") signal(each.pid, "SIGCONT");
    }
    return found;
  };
  const agents = (await scan()).filter((each) => each.role === "agent");
  await Promise.all(agents.map((agent) => stopProcess(agent.pid, timeoutMs)));
  const rest = (await scan()).filter((each) => each.role !== "etcd member");
  await Promise.all(rest.map((each) => stopProcess(each.pid, timeoutMs)));
  // One member after another: stopped together, each waits for the others on its way out (measured with
  // three: about 9 s together, 5 s in turn); in turn, each but the last leaves a quorum behind it.
  for (const member of (await scan()).filter((each) => each.role === "etcd member"))
    await stopProcess(member.pid, timeoutMs);
  return { state, stopped: [...stopped.values()] };
}

/** The state directory of host NAME: its config, log, disks, etcd member and VM runtime directories. */
export function hostStateDir(clusterDir: string, name: string): string {
  return join(clusterDir, "hosts", name);
}

export function requireClusterState(dir: string): LocalClusterState {
  const state = readClusterState(resolve(dir));
  if (state === undefined) throw new HavenError("HAVEN_ERR_NOT_FOUND", `no cluster was started from ${resolve(dir)}`);
  return state;
}

export function hostOf(state: LocalClusterState, name: string): LocalAgent {
  const agent = state.agents.find((candidate) => candidate.name === name);
  if (agent === undefined)
    throw new HavenError(
      "HAVEN_ERR_NOT_FOUND",
      `the cluster in ${state.dir} has no host "${name}" (hosts: ${state.agents.map((each) => each.name).join(", ")})`,
    );
  return agent;
}

export function replaceAgent(state: LocalClusterState, agent: LocalAgent): LocalClusterState {
  return { ...state, agents: state.agents.map((each) => (each.name === agent.name ? agent : each)) };
}

export function writeClusterState(state: LocalClusterState): void {
  writeFileSync(join(state.dir, CLUSTER_FILE), `${JSON.stringify(state, null, 2)}\n`);
}

/** `haven agent --config CONFIG` in the background, its output appended to `log`. */
export function spawnAgent(config: string, log: string): number {
  return spawnBackground(process.execPath, [join(packageRoot(), "bin", "haven.js"), "agent", "--config", config], log);
}

/** The last line of a log file, for an error message. */
export function lastLine(file: string): string {
  try {
    return readFileSync(file, "utf8").trimEnd().split("\n").at(-1) ?? "";
  } catch {
    return "(no log)";
  }
}

export function readClusterState(dir: string): LocalClusterState | undefined {
  const file = join(dir, CLUSTER_FILE);
  if (!existsSync(file)) return undefined;
  let state: LocalClusterState & { etcdPid?: number };
  try {
    state = JSON.parse(readFileSync(file, "utf8")) as LocalClusterState & { etcdPid?: number };
  } catch {
    throw new HavenError("HAVEN_ERR_CONFIG", `${file} is not the JSON 'haven cluster up' writes`);
  }
  if (state.etcd !== undefined) return state;
  // Written before clusters had several members: one etcd, its pid on its own (0: not started here).
  const { etcdPid, ...rest } = state;
  const single: LocalEtcdMember = {
    name: "haven",
    pid: etcdPid ?? 0,
    endpoint: state.endpoint,
    peerUrl: "",
    dataDir: join(dir, "etcd"),
    log: join(dir, "etcd.log"),
  };
  return { ...rest, endpoints: [state.endpoint], etcd: etcdPid ? [single] : [] };
}

export function spawnBackground(command: string, args: string[], logFile: string): number {
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
  if (!(Number.isInteger(pid) && pid > 0)) return false; // 0 and below name process groups, not a process
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** SIGTERM, then SIGKILL if `pid` still runs `timeoutMs` later; resolves once it no longer runs. */
export async function stopProcess(pid: number, timeoutMs: number): Promise<void> {
  if (!alive(pid)) return; // also refuses 0 and below, which would signal a whole process group
  signal(pid, "SIGTERM");
  const deadline = Date.now() + timeoutMs;
  while (running(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  if (running(pid)) signal(pid, "SIGKILL");
  // Gone, not only exited: its parent (often not this process) reaps it soon after; a caller that then
  // looks the pid up must not find it. Bounded: a parent that never reaps must not hold us up.
  const endedAt = Date.now();
  while (alive(pid) && Date.now() < endedAt + REAP_WAIT_MS) await new Promise((r) => setTimeout(r, 50));
}

/** How long stopProcess waits for an exited process to be reaped by its parent. */
const REAP_WAIT_MS = 5_000;

/** Sends `name` to `pid`; false when it is gone (an exited process is not an error here). */
export function signal(pid: number, name: NodeJS.Signals): boolean {
  if (!(Number.isInteger(pid) && pid > 0)) return false; // 0 and below name process groups
  try {
    process.kill(pid, name);
    return true;
  } catch {
    return false;
  }
}

export async function until(deadline: number, ready: () => Promise<boolean>, failure: () => string): Promise<void> {
  while (!(await ready())) {
    if (Date.now() > deadline) throw new HavenError("HAVEN_ERR_UNAVAILABLE", failure());
    await new Promise((r) => setTimeout(r, 100));
  }
}
