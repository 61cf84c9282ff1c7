// Helpers for tests that run a local cluster (haven cluster up's code): a base port whose whole range
// is free, and waiting for a condition in the cluster's state.

import { createServer } from "node:net";
import { checkTimings, FAST_TIMINGS, type Timings } from "../../src/agent/timings.js";
import type { EtcdClient } from "../../src/cluster/etcd-client.js";
import { localHostPorts } from "../../src/cluster/local-cluster.js";
import {
  keys,
  parsePrimaryRecord,
  parseReplicaRecord,
  type PrimaryRecord,
  type ReplicaRecord,
} from "../../src/cluster/schema.js";
import { run } from "./server-process.js";

/**
 * A base port for clusterUp with 2 hosts whose ports (base, +1, +10..12, +20..22) are free now, and
 * also +50..52 and +60..62 (for tests that run their own etcd members there).
 */
export async function freeBasePort(): Promise<number> {
  for (;;) {
    const base = 30_000 + 100 * Math.floor(Math.random() * 300);
    const free = await Promise.all(
      [0, 1, 10, 11, 12, 20, 21, 22, 50, 51, 52, 60, 61, 62].map(
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

  async replica(host: string): Promise<ReplicaRecord | undefined> {
    const kv = await this.etcd.get(keys.replica(this.volume, host));
    return kv ? parseReplicaRecord(kv.value, kv.key) : undefined;
  }

  uri(host: string): string {
    return `nbd://127.0.0.1:${localHostPorts(this.basePort, host).nbd}/${this.volume}`;
  }

  async qemuIo(host: string, command: string): Promise<boolean> {
    return (await run("qemu-io", ["-f", "raw", "-c", command, this.uri(host)], { timeoutMs: 20_000 })).code === 0;
  }
}
