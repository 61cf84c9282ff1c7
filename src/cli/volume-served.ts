// How `haven volume create` knows that a new volume is served: its primary's host is alive, the agent
// there reported it with a "volume-serving" event written after the volume was created, and its NBD
// URI answers a TCP connect. Polled until all three hold or the wait's bound runs out.

import { connect } from "node:net";
import { HavenError } from "../core/errors.js";
import { readEvents } from "../cluster/cluster-read.js";
import { nbdUri } from "../cluster/cluster-view.js";
import type { EtcdClient } from "../cluster/etcd-client.js";
import type { CreatedVolume } from "../cluster/volume-admin.js";
import { keys, parseHostRecord } from "../cluster/schema.js";
import { pause } from "./poll.js";

const POLL_INTERVAL_MS = 250;
const CONNECT_TIMEOUT_MS = 1000;

/** Resolves whether a TCP connection to host:port opens within timeoutMs. */
export function tcpAnswers(host: string, port: number, timeoutMs = CONNECT_TIMEOUT_MS): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (answered: boolean): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(answered);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}

/** What is still missing before the volume counts as served; empty when it is served. */
async function missing(client: EtcdClient, created: CreatedVolume): Promise<string[]> {
  const { name } = created.spec;
  const primary = created.primary.host;
  const kv = await client.get(keys.host(primary));
  if (kv === undefined) return [`the primary's host ${primary} is not alive (is its agent running?)`];
  const host = parseHostRecord(kv.value, kv.key);
  const reasons: string[] = [];
  const events = await readEvents(client);
  const reported = events.some(
    ({ event, createRevision }) =>
      createRevision > created.revision && event.volume === name && event.kind === "volume-serving",
  );
  if (!reported) reasons.push(`host ${primary} has not reported serving it (no "volume-serving" event)`);
  const uri = nbdUri(host, name);
  if (!(await tcpAnswers(host.address, host.nbdPort))) reasons.push(`${uri} does not answer`);
  return reasons;
}

/**
 * Waits until the volume is served: resolves true then, false when `signal` aborts first. After
 * timeoutMs it fails with HAVEN_ERR_UNAVAILABLE saying what is missing (the volume stays created).
 */
export async function waitUntilServed(
  client: EtcdClient,
  created: CreatedVolume,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const reasons = await missing(client, created);
    if (reasons.length === 0) return true;
    const leftMs = deadline - Date.now();
    if (leftMs <= 0) {
      const { name } = created.spec;
      throw new HavenError(
        "HAVEN_ERR_UNAVAILABLE",
        `volume ${name} is created but not served after ${timeoutMs / 1000} s: ${reasons.join("; ")}. ` +
          `It stays created: follow it with 'haven events --volume ${name} --follow', ` +
          `or remove it with 'haven volume delete ${name} --yes'`,
      );
    }
    if (!(await pause(Math.min(POLL_INTERVAL_MS, leftMs), signal))) return false;
  }
}
