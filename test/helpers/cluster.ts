// Helpers for tests that run a local cluster (haven cluster up's code): a base port whose whole range
// is free, and waiting for a condition in the cluster's state.

import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import { createServer } from "node:net";
import { unmountAllUnder } from "../../src/disk/disk-format.js";
import { checkTimings, FAST_TIMINGS, type Timings } from "../../src/agent/timings.js";
import type { EtcdClient } from "../../src/cluster/etcd-client.js";
import { clusterDown, localHostPorts, type LocalClusterState } from "../../src/cluster/local-cluster.js";
import {
  keys,
  parseEventRecord,
  parsePrimaryRecord,
  parseReplicaRecord,
  type EventRecord,
  type PrimaryRecord,
  type ReplicaRecord,
} from "../../src/cluster/schema.js";
import { run } from "./server-process.js";

/**
 * A base port for clusterUp with up to 3 hosts, each with its etcd member, whose ports (base, +1,
 * +10..14, +20..24, +30..34) are free now, and also +50..52 and +60..62 (for tests that run their own
 * etcd members there).
 */
export async function freeBasePort(): Promise<number> {
  for (;;) {
    // Below Linux's ephemeral range (32768 and up): an outgoing connection's local port can never take
    // a port a host restarted later wants to listen on again.
    const base = 20_000 + 100 * Math.floor(Math.random() * 125);
    const free = await Promise.all(
      [0, 1, 10, 11, 12, 13, 14, 20, 21, 22, 23, 24, 30, 31, 32, 33, 34, 50, 51, 52, 60, 61, 62].map(
        (offset) =>
          new Promise<boolean>((resolve) => {
            const server = createServer();
            server.once("error", () => resolve(false));
            server.listen(base + offset, "127.0.0.1", () => server.close(() => resolve(true)));
          }),
      ),
    );
    if (free.every(Boolean)) return base;
  }
}

/**
 * Stops what `haven cluster up` started from `dir`, for an after hook: also when clusterUp failed
 * halfway (once it wrote cluster.json), and never throwing, so the hook's other cleanup still runs.
 * (An etcd clusterUp started before it failed to answer is not in cluster.json: clusterUp leaves it.)
 */
export async function stopLocalCluster(dir: string, timeoutMs = 10_000): Promise<void> {
  await clusterDown(dir, timeoutMs).catch(() => undefined);
  await unmountAllUnder(dir).catch(() => undefined);
}

/** The CLI options that reach `target`'s etcd: --etcd, and --tls-dir for a local cluster's identity. */
export function etcdArgs(target: string | Pick<LocalClusterState, "endpoint" | "tlsDir">): string[] {
  if (typeof target === "string") return ["--etcd", target];
  return ["--etcd", target.endpoint, ...(target.tlsDir !== undefined ? ["--tls-dir", target.tlsDir] : [])];
}

/** Polls `probe` until it gives a value (errors count as not yet), or fails naming `what`. */
export async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/**
 * Fast failover for tests, with more slack than FAST_TIMINGS: a test machine runs etcd, two agents,
 * fio and the test at once on two CPUs, and a 500 ms watchdog can fire on a busy one (seen when two test
 * runs overlapped). Checked by the same rules as any config.
 */
export const TEST_TIMINGS: Timings = checkTimings(
  { ...FAST_TIMINGS, leaseTtlMs: 3_000, fenceAfterMs: 1_500, watchdogTimeoutMs: 1_000 },
  "test timings",
);

/**
 * What the agent tests ask of one volume in a local cluster: its primary and copy records in etcd, a
 * host's NBD URI, and a qemu-io command against it (true when qemu-io succeeded).
 */
export class VolumeProbe {
  constructor(
    private readonly etcd: EtcdClient,
    private readonly volume: string,
    private readonly basePort: number,
  ) {}

  async primary(): Promise<PrimaryRecord | undefined> {
    const kv = await this.etcd.get(keys.primary(this.volume));
    return kv ? parsePrimaryRecord(kv.value, kv.key) : undefined;
  }

  /** The events of `kind` about the volume, or about no volume at all when `volume` is null. */
  async events(kind: string, volume: string | null = this.volume): Promise<EventRecord[]> {
    return (await this.etcd.getPrefix(keys.events()))
      .map((kv) => parseEventRecord(kv.value, kv.key))
      .filter((event) => event.kind === kind && (event.volume ?? null) === volume);
  }

  /** The record of `host`'s copy of the volume (its only one: these clusters keep one per host). */
  async replica(host: string): Promise<ReplicaRecord | undefined> {
    const [kv, ...more] = await this.etcd.getPrefix(keys.replicasOn(this.volume, host));
    assert.equal(more.length, 0, `${host} holds one copy of ${this.volume}`);
    return kv ? parseReplicaRecord(kv.value, kv.key) : undefined;
  }

  uri(host: string): string {
    return `nbd://127.0.0.1:${localHostPorts(this.basePort, host).nbd}/${this.volume}`;
  }

  async qemuIo(host: string, command: string): Promise<boolean> {
    return (await run("qemu-io", ["-f", "raw", "-c", command, this.uri(host)], { timeoutMs: 20_000 })).code === 0;
  }
}

/**
 * The agents of a local cluster as a test kills and restarts them: the pid each host's agent runs
 * under now (restarts replace the one cluster up recorded), a restart with the same config and log,
 * and cleanup of the restarted ones.
 */
export class ClusterAgents {
  private readonly restarted = new Map<string, ChildProcess>();

  constructor(private readonly cluster: () => LocalClusterState) {}

  agent(host: string): LocalClusterState["agents"][number] {
    const found = this.cluster().agents.find((agent) => agent.name === host);
    if (found === undefined) throw new Error(`no agent for host ${host}`);
    return found;
  }

  pid(host: string): number {
    return this.restarted.get(host)?.pid ?? this.agent(host).pid;
  }

  /** Starts host's agent again (the previous one must be gone), appending to its log. */
  restart(host: string): void {
    const { log, config } = this.agent(host);
    const out = openSync(log, "a");
    const child = spawn(process.execPath, ["bin/haven.js", "agent", "--config", config], {
      stdio: ["ignore", out, out],
    });
    closeSync(out);
    this.restarted.set(host, child);
  }

  /** The pids of the agents restarted so far. */
  restartedPids(): number[] {
    return [...this.restarted.values()].map((child) => child.pid!);
  }

  killRestarted(): void {
    for (const child of this.restarted.values()) child.kill("SIGKILL");
  }
}

/**
 * `haven volume create` against the cluster at `target` (endpoints, or a local cluster whose operator
 * identity it shows etcd); fails the test when it does not succeed.
 */
export async function createTestVolume(
  target: string | Pick<LocalClusterState, "endpoint" | "tlsDir">,
  name: string,
  size: string,
  copies = 2,
): Promise<void> {
  const created = await run(
    process.execPath,
    ["bin/haven.js", "volume", "create", name, "--size", size, "--replicas", String(copies), ...etcdArgs(target)],
    { timeoutMs: 60_000 },
  );
  if (created.code !== 0) throw new Error(`volume create ${name} failed: ${created.stderr}`);
}

/**
 * fio over NBD: writes the whole of a 64 MiB volume at `uri` in checksummed 64 KiB blocks, then reads
 * every block back and checks it, `loops` times. Any I/O error or wrong block makes it exit non-zero.
 */
export function fioWriteVerify(
  uri: string,
  name: string,
  loops: number,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return run(
    "fio",
    [
      `--name=${name}`,
      "--ioengine=nbd",
      `--uri=${uri}`,
      "--rw=randwrite",
      "--bs=64k",
      "--size=64M",
      "--iodepth=4",
      "--verify=crc32c",
      "--do_verify=1",
      // No verify state files left in the working directory.
      "--verify_state_save=0",
      `--loops=${loops}`,
    ],
    { timeoutMs: 300_000 },
  );
}
