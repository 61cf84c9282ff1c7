// Real `haven replica serve` and `haven volume serve` processes for integration tests, with waits
// on conditions (log lines, the engine's status over its HTTP API), never on the clock alone.

import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { VolumeStatus } from "../../src/engine/status.js";
import { readyOrKilled, spawnHaven, type HavenProcess } from "./server-process.js";

export function writeSecret(dir: string, text = "integration-test-secret-0123456789"): string {
  const path = join(dir, `secret-${text.length}-${text.slice(0, 4)}`);
  writeFileSync(path, `${text}\n`, { mode: 0o600 });
  return path;
}

export interface ReplicaServerProcess extends HavenProcess {
  readonly port: number;
}

/** Starts a replica server on `port` (0: any) and waits until it listens. */
export async function startReplicaServer(dir: string, secretFile: string, port = 0): Promise<ReplicaServerProcess> {
  const child = spawnHaven([
    "replica",
    "serve",
    "--dir",
    dir,
    "--listen",
    `127.0.0.1:${port}`,
    "--secret-file",
    secretFile,
  ]);
  await readyOrKilled(child, child.waitForLog(/serving replicas in .* on 127\.0\.0\.1:\d+/));
  const bound = Number(/on 127\.0\.0\.1:(\d+)/.exec(child.log())![1]);
  return { ...child, port: bound };
}

export interface VolumeProcess extends HavenProcess {
  readonly api: string;
  status(): Promise<VolumeStatus>;
  /** Polls the status until `predicate` holds; rejects with the last status after timeoutMs. */
  waitForStatus(predicate: (status: VolumeStatus) => boolean, what: string, timeoutMs?: number): Promise<VolumeStatus>;
}

/** The engine API token the volumes started here take, and the file that holds it. */
export const ENGINE_API_TOKEN = "integration-engine-api-token-0123456789";
let tokenFile: string | undefined;

function engineApiTokenFile(): string {
  tokenFile ??= join(mkdtempSync(join(tmpdir(), "haven-api-token-")), "token");
  writeFileSync(tokenFile, `${ENGINE_API_TOKEN}\n`, { mode: 0o600 });
  return tokenFile;
}

/** Starts `haven volume serve ARGS --api-listen 127.0.0.1:0 --api-token-file FILE` and waits for its API. */
export async function startVolume(args: string[]): Promise<VolumeProcess> {
  const child = spawnHaven([
    "volume",
    "serve",
    ...args,
    "--api-listen",
    "127.0.0.1:0",
    "--api-token-file",
    engineApiTokenFile(),
  ]);
  await readyOrKilled(child, child.waitForLog(/engine API on http:\/\/127\.0\.0\.1:\d+/, 60_000));
  const api = /engine API on http:\/\/(127\.0\.0\.1:\d+)/.exec(child.log())![1]!;
  const status = async (): Promise<VolumeStatus> => {
    const response = await fetch(`http://${api}/v1/status`, {
      headers: { authorization: `Bearer ${ENGINE_API_TOKEN}` },
    });
    return (await response.json()) as VolumeStatus;
  };
  const waitForStatus = async (
    predicate: (status: VolumeStatus) => boolean,
    what: string,
    timeoutMs = 60_000,
  ): Promise<VolumeStatus> => {
    const deadline = Date.now() + timeoutMs;
    let last: VolumeStatus | undefined;
    while (Date.now() < deadline) {
      last = await status();
      if (predicate(last)) return last;
      await new Promise((resolve) => setTimeout(resolve, 100)); // polling an HTTP API: no event to wait on
    }
    throw new Error(`timed out waiting for ${what}; last status ${JSON.stringify(last)}\nlog:\n${child.log()}`);
  };
  return { ...child, api, status, waitForStatus };
}

export const replicaState = (status: VolumeStatus, location: string): string | undefined =>
  status.replicas.find((replica) => replica.location === location)?.state;
