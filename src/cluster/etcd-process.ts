// Starts and stops an etcd member on 127.0.0.1 as a child process (a cluster of its own, or one member of
// a cluster bootstrapped statically with --initial-cluster), for integration tests; etcdArgs is the one
// place that spells etcd's flags, which `haven cluster up` uses too for its background members. Ready
// means the member answers /v3/maintenance/status (it gives no event to wait for, so this polls, within
// a deadline; a member answers before its cluster has a leader); stopping is SIGTERM, then SIGKILL if it
// lingers. A failure to start says why, with the end of etcd's log. Given a host identity directory
// (tlsDir), a member serves clients and peers over TLS only and asks each for a certificate of the same
// CA (--client-cert-auth, --peer-client-cert-auth): nobody without one reads or writes a key.

import { spawn, type ChildProcess } from "node:child_process";
import { createServer, type AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { join } from "node:path";
import { HavenError, errorMessage } from "../core/errors.js";
import { CA_CERT, CERT, KEY } from "../security/pki.js";
import { loadTlsIdentity } from "../security/tls-identity.js";
import { EtcdClient } from "./etcd-client.js";

export interface EtcdProcessOptions {
  /** Where etcd keeps its data; created if missing. A directory with data restarts that member. */
  readonly dataDir: string;
  /** Defaults to a free port. */
  readonly clientPort?: number;
  /** Defaults to a free port. */
  readonly peerPort?: number;
  /** The member's name (default "haven"). */
  readonly name?: string;
  /** The etcd executable (default "etcd" on PATH). */
  readonly binary?: string;
  readonly startTimeoutMs?: number;
  /**
   * Members of a multi-member cluster, NAME=PEER_URL,... including this one (then give clientPort and
   * peerPort). Default: a cluster of this member alone.
   */
  readonly initialCluster?: string;
  readonly stopTimeoutMs?: number;
  /**
   * A host identity directory (pki.ts): etcd then serves clients and peers over TLS only, and asks both
   * for a certificate of the same CA (readiness is probed with this identity as the client).
   */
  readonly tlsDir?: string;
}

/** One member's identity and addresses, all on 127.0.0.1. */
export interface EtcdMemberFlags {
  readonly name: string;
  readonly dataDir: string;
  readonly clientPort: number;
  readonly peerPort: number;
  /** NAME=PEER_URL,... of every member, this one included (default: this member alone). */
  readonly initialCluster?: string;
  /** Tells this cluster's bootstrap apart from another's on the same ports (default etcd's own). */
  readonly initialClusterToken?: string;
  /**
   * "new" (default) bootstraps a cluster; "existing" joins one that runs (a member started again after
   * it was killed, beside its data directory, says so rather than claim to bootstrap).
   */
  readonly initialClusterState?: "new" | "existing";
  /**
   * The member's host identity directory (ca-cert.pem, cert.pem, key.pem; its certificate valid for
   * 127.0.0.1): clients and peers then speak TLS and must show a certificate of the same CA.
   */
  readonly tlsDir?: string;
}

/** A member's client URL (what agents list as an endpoint) and peer URL (what members list). */
export function etcdMemberUrls(
  clientPort: number,
  peerPort: number,
  tls = false,
): { endpoint: string; peerUrl: string } {
  const scheme = tls ? "https" : "http";
  return { endpoint: `${scheme}://127.0.0.1:${clientPort}`, peerUrl: `${scheme}://127.0.0.1:${peerPort}` };
}

/** etcd's flags for mutual TLS with clients and peers, from an identity directory. */
export function etcdTlsArgs(dir: string): string[] {
  const [ca, cert, key] = [join(dir, CA_CERT), join(dir, CERT), join(dir, KEY)];
  return [
    `--cert-file=${cert}`,
    `--key-file=${key}`,
    `--trusted-ca-file=${ca}`,
    "--client-cert-auth=true",
    `--peer-cert-file=${cert}`,
    `--peer-key-file=${key}`,
    `--peer-trusted-ca-file=${ca}`,
    "--peer-client-cert-auth=true",
  ];
}

/**
 * etcd's command line for one member. The --initial-cluster flags only matter the first time: a member
 * whose data directory holds data restarts as the member it was, in the cluster it was in.
 */
export function etcdArgs(member: EtcdMemberFlags): string[] {
  const { endpoint, peerUrl } = etcdMemberUrls(member.clientPort, member.peerPort, member.tlsDir !== undefined);
  return [
    `--name=${member.name}`,
    `--data-dir=${member.dataDir}`,
    `--listen-client-urls=${endpoint}`,
    `--advertise-client-urls=${endpoint}`,
    `--listen-peer-urls=${peerUrl}`,
    `--initial-advertise-peer-urls=${peerUrl}`,
    `--initial-cluster=${member.initialCluster ?? `${member.name}=${peerUrl}`}`,
    `--initial-cluster-state=${member.initialClusterState ?? "new"}`,
    ...(member.initialClusterToken !== undefined ? [`--initial-cluster-token=${member.initialClusterToken}`] : []),
    ...(member.tlsDir !== undefined ? etcdTlsArgs(member.tlsDir) : []),
    // A member that comes back (restarted, or resumed after SIGSTOP) asks before it campaigns, instead of
    // deposing a working leader with a higher term: one election fewer after every such hiccup (etcd
    // 3.5's default; 3.4's is off).
    "--pre-vote=true",
    // Haven's passwords are random 192-bit tokens, which no guessing reaches whatever the hash costs; a
    // cheap bcrypt keeps authenticating (a host's agent at start, every client when a token lapses)
    // from taking hundreds of milliseconds on a busy machine.
    "--bcrypt-cost=4",
    "--logger=zap",
    "--log-outputs=stderr",
  ];
}

export interface EtcdProcess {
  /** The client URL, http://127.0.0.1:PORT (https:// with tlsDir). */
  readonly endpoint: string;
  readonly process: ChildProcess;
  /** Settles when the process has exited. */
  readonly exited: Promise<void>;
  /** The last LOG_TAIL_BYTES of what etcd logged. */
  log(): string;
  /** SIGTERM, then SIGKILL after stopTimeoutMs; resolves once etcd has exited. */
  stop(): Promise<void>;
  /** Sends a signal now, without waiting (tests use SIGKILL and SIGSTOP to make etcd fail). */
  kill(signal: NodeJS.Signals): void;
}

const LOG_TAIL_BYTES = 64 * 1024;
const POLL_INTERVAL_MS = 100;
const PORT_ATTEMPTS = 3;

export async function startEtcd(options: EtcdProcessOptions): Promise<EtcdProcess> {
  const name = options.name ?? "haven";
  if (!/^[A-Za-z0-9._-]+$/.test(name)) {
    throw new HavenError("HAVEN_ERR_CONFIG", `etcd member name "${name}" may hold only letters, digits, ".", "_", "-"`);
  }
  for (const port of [options.clientPort, options.peerPort]) {
    if (port !== undefined && !(Number.isInteger(port) && port > 0 && port < 65536)) {
      throw new HavenError("HAVEN_ERR_CONFIG", `etcd port ${port} is not between 1 and 65535`);
    }
  }
  // Free ports are found by binding and releasing them, so another process may take one in between:
  // when etcd then cannot bind, pick again.
  const choosesPorts = options.clientPort === undefined || options.peerPort === undefined;
  for (let attempt = 1; ; attempt++) {
    const [clientPort, peerPort] = await freePorts(2);
    try {
      return await startOnce(options, name, options.clientPort ?? clientPort!, options.peerPort ?? peerPort!);
    } catch (error) {
      const collided = error instanceof HavenError && /address already in use/.test(error.message);
      if (!(collided && choosesPorts && attempt < PORT_ATTEMPTS)) throw error;
    }
  }
}

async function startOnce(
  options: EtcdProcessOptions,
  name: string,
  clientPort: number,
  peerPort: number,
): Promise<EtcdProcess> {
  const binary = options.binary ?? "etcd";
  const { endpoint } = etcdMemberUrls(clientPort, peerPort, options.tlsDir !== undefined);
  const identity = options.tlsDir !== undefined ? await loadTlsIdentity(options.tlsDir) : undefined;
  const child = spawn(
    binary,
    etcdArgs({
      name,
      dataDir: options.dataDir,
      clientPort,
      peerPort,
      ...(options.initialCluster !== undefined && { initialCluster: options.initialCluster }),
      ...(options.tlsDir !== undefined && { tlsDir: options.tlsDir }),
    }),
    { stdio: ["ignore", "pipe", "pipe"] },
  );

  let log = "";
  const onOutput = (chunk: Buffer): void => {
    log = (log + chunk.toString("utf8")).slice(-LOG_TAIL_BYTES);
  };
  child.stdout!.on("data", onOutput);
  child.stderr!.on("data", onOutput);
  const tail = (lines = 15): string => log.trimEnd().split("\n").slice(-lines).map(readableLogLine).join("\n");

  let spawnError: Error | undefined;
  const exited = new Promise<void>((resolve) => {
    child.once("error", (error) => {
      spawnError = error;
      resolve();
    });
    child.once("exit", () => resolve());
  });
  const hasExited = (): boolean => spawnError !== undefined || child.exitCode !== null || child.signalCode !== null;

  const stop = async (): Promise<void> => {
    if (hasExited()) return;
    child.kill("SIGTERM");
    const timeoutMs = options.stopTimeoutMs ?? 10_000;
    let timer: NodeJS.Timeout | undefined;
    const lingered = await Promise.race([
      exited.then(() => false),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), timeoutMs))),
    ]);
    clearTimeout(timer);
    if (lingered) {
      child.kill("SIGKILL");
      await exited;
    }
  };

  const startTimeoutMs = options.startTimeoutMs ?? 15_000;
  const deadlineAt = Date.now() + startTimeoutMs;
  const probe = new EtcdClient([endpoint], { requestTimeoutMs: 1_000, connectTimeoutMs: 500, tls: identity });
  let lastError = "";
  for (;;) {
    if (spawnError !== undefined) {
      const missing = (spawnError as NodeJS.ErrnoException).code === "ENOENT";
      throw new HavenError(
        "HAVEN_ERR_CONFIG",
        missing
          ? `cannot start etcd: "${binary}" is not installed or not on PATH (Debian: apt-get install etcd-server)`
          : `cannot start etcd "${binary}": ${spawnError.message}`,
        { cause: spawnError },
      );
    }
    if (hasExited()) {
      const how = child.exitCode !== null ? `with status ${child.exitCode}` : `on ${child.signalCode}`;
      throw new HavenError(
        "HAVEN_ERR_CONFIG",
        `etcd (data ${options.dataDir}, client port ${clientPort}, peer port ${peerPort}) exited ${how} before it ` +
          `was ready; its log ends:\n${tail()}`,
      );
    }
    try {
      await probe.status();
      break;
    } catch (error) {
      lastError = errorMessage(error);
    }
    if (Date.now() >= deadlineAt) {
      await stop();
      throw new HavenError(
        "HAVEN_ERR_UNAVAILABLE",
        `etcd at ${endpoint} did not answer within ${startTimeoutMs} ms (last: ${lastError}); its log ends:\n${tail()}`,
      );
    }
    await Promise.race([sleep(POLL_INTERVAL_MS), exited]);
  }

  return {
    endpoint,
    process: child,
    exited,
    log: () => log,
    stop,
    kill: (signal) => {
      if (!hasExited()) child.kill(signal);
    },
  };
}

/** One line of etcd's JSON log as "level: message (field: value, ...)", without time and stack trace. */
function readableLogLine(line: string): string {
  let entry: unknown;
  try {
    entry = JSON.parse(line);
  } catch {
    return line;
  }
  if (typeof entry !== "object" || entry === null) return line;
  const { level, msg, ...fields } = entry as Record<string, unknown>;
  const details = Object.entries(fields)
    .filter(([name]) => !["ts", "caller", "stacktrace"].includes(name))
    .map(([name, value]) => `${name}: ${JSON.stringify(value)}`);
  return `${String(level)}: ${String(msg)}${details.length > 0 ? ` (${details.join(", ")})` : ""}`;
}

/** `count` distinct free TCP ports on 127.0.0.1, found by binding them all at once and releasing them. */
async function freePorts(count: number): Promise<number[]> {
  const servers = Array.from({ length: count }, () => createServer());
  try {
    return await Promise.all(
      servers.map(
        (server) =>
          new Promise<number>((resolve, reject) => {
            server.once("error", reject);
            server.listen(0, "127.0.0.1", () => resolve((server.address() as AddressInfo).port));
          }),
      ),
    );
  } finally {
    await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))));
  }
}
