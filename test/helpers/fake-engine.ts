// Volume statuses for the tests of what shows and serves them (the renderer, the engine API, the
// `haven volume` commands), and a fake EngineControl that records what it was asked, so a test can
// check that the API layer passed a request on, or that a bad request never reached the engine.

import { HavenError } from "../../src/core/errors.js";
import type { EngineControl, ReplicaStatus, VerifyStatus, VolumeStatus } from "../../src/engine/status.js";

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

export const GEN_A = "0123456789abcdef";
export const GEN_B = "fedcba9876543210";
export const GEN_C = "a1b2c3d4e5f60718";

const inSync = (location: string, local: boolean): ReplicaStatus => ({
  location,
  local,
  copyId: `copy-${location}`,
  state: "in-sync",
  reason: null,
  generations: { current: GEN_A, bitmap: "", history: [] },
  outOfSyncBytes: 0,
  resync: null,
  splitBrain: null,
});

export function healthyStatus(): VolumeStatus {
  return {
    name: "web1-disk0",
    volumeId: "3f2a6c1e-0b7d-4e58-9a41-5c0d2e8f7b13",
    sizeBytes: 10 * GiB,
    regionBytes: 64 * 1024,
    epoch: 7,
    state: "healthy",
    generations: { current: GEN_A, bitmap: "", history: [] },
    replicas: [inSync("/var/lib/haven/web1-disk0", true), inSync("node2:7400", false)],
    verify: null,
    io: { reads: 1234, writes: 567, flushes: 12, bytesRead: 3 * GiB, bytesWritten: 300 * MiB, errors: 0 },
    nbd: ["nbd://10.0.0.1:10809/web1-disk0", "nbd+unix:///web1-disk0?socket=/run/haven/web1-disk0.sock"],
  };
}

export function degradedStatus(): VolumeStatus {
  const status = healthyStatus();
  return {
    ...status,
    state: "degraded",
    replicas: [
      status.replicas[0]!,
      {
        ...status.replicas[1]!,
        state: "faulted",
        reason: "write timed out after 5000 ms (replication link down?)",
        generations: { current: GEN_B, bitmap: "", history: [] },
        outOfSyncBytes: 12 * MiB,
      },
    ],
  };
}

/** The remote copy is 41.2% through an incremental resync at 312 MiB/s, 42 s left. */
export function resyncingStatus(): VolumeStatus {
  const status = degradedStatus();
  return {
    ...status,
    state: "resyncing",
    replicas: [
      status.replicas[0]!,
      {
        ...status.replicas[1]!,
        state: "resyncing",
        reason: null,
        outOfSyncBytes: 588 * MiB,
        resync: {
          mode: "incremental",
          doneBytes: 412 * MiB,
          totalBytes: 1000 * MiB,
          bytesPerSecond: 312 * MiB,
          etaSeconds: 42,
          rule: "rule 4: we moved on from the peer's current generation: incremental resync to the peer",
        },
      },
    ],
  };
}

export function splitBrainStatus(): VolumeStatus {
  const status = degradedStatus();
  return {
    ...status,
    replicas: [
      status.replicas[0]!,
      {
        ...status.replicas[1]!,
        state: "split-brain",
        reason: "rule 6: both copies took writes after they parted",
        generations: { current: GEN_C, bitmap: GEN_B, history: [] },
        outOfSyncBytes: 0,
        splitBrain: { volumeChangedBytes: 1.5 * GiB, copyChangedBytes: 300 * MiB },
      },
    ],
  };
}

export function verifyStatus(overrides: Partial<VerifyStatus> = {}): VerifyStatus {
  return {
    state: "running",
    repair: false,
    doneBytes: 2.5 * GiB,
    totalBytes: 10 * GiB,
    mismatches: [],
    startedAt: "2024-05-01T10:00:00.000Z",
    finishedAt: null,
    error: null,
    ...overrides,
  };
}

/** `count` mismatching 64 KiB regions, the first at 64 MiB, one every 1 MiB after it. */
export function mismatches(count: number): VerifyStatus["mismatches"] {
  return Array.from({ length: count }, (_, i) => ({
    offset: 64 * MiB + i * MiB,
    length: 64 * 1024,
    locations: ["/var/lib/haven/web1-disk0", "node2:7400"],
  }));
}

/** A scriptable engine: the API layer under test talks to this. */
export class FakeEngineControl implements EngineControl {
  current: VolumeStatus;
  readonly verifyRequests: { repair: boolean }[] = [];
  readonly resolveRequests: string[] = [];
  /** The verify that startVerify starts; the next statuses can advance it (see onStatus). */
  nextVerify: (repair: boolean) => VerifyStatus = (repair) => verifyStatus({ repair, doneBytes: 0 });
  /** Called before each status() returns, to move time on (a verify that makes progress, say). */
  onStatus: ((control: FakeEngineControl) => void) | undefined;
  /** Thrown by status(), to test an engine failing underneath the API. */
  statusError: Error | undefined;

  constructor(status: VolumeStatus = healthyStatus()) {
    this.current = status;
  }

  status(): VolumeStatus {
    if (this.statusError) throw this.statusError;
    this.onStatus?.(this);
    return this.current;
  }

  startVerify(options: { repair: boolean }): VerifyStatus {
    if (this.current.verify?.state === "running")
      throw new HavenError("HAVEN_ERR_CONFLICT", "a verify is running already; wait for it to finish");
    this.verifyRequests.push(options);
    const verify = this.nextVerify(options.repair);
    this.current = { ...this.current, verify };
    return verify;
  }

  async resolveSplitBrain(survivor: string): Promise<VolumeStatus> {
    const replica = this.current.replicas.find((r) => r.location === survivor);
    if (replica === undefined)
      throw new HavenError("HAVEN_ERR_INVALID_REQUEST", `no copy at "${survivor}" in volume ${this.current.name}`);
    if (!this.current.replicas.some((r) => r.state === "split-brain"))
      throw new HavenError("HAVEN_ERR_INVALID_REQUEST", `volume ${this.current.name} is not in split brain`);
    // As the engine: only the side being served can win while it serves.
    if (replica.state !== "in-sync")
      throw new HavenError(
        "HAVEN_ERR_INVALID_REQUEST",
        `${survivor} is ${replica.state}: only an in-sync copy can be the survivor`,
      );
    this.resolveRequests.push(survivor);
    this.current = {
      ...this.current,
      state: "resyncing",
      replicas: this.current.replicas.map((r) =>
        r.state === "split-brain" ? { ...r, state: "resyncing", reason: null, splitBrain: null } : r,
      ),
    };
    return this.current;
  }
}
