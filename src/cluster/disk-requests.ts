// Asking a host's agent to act on one of its disks: the request goes into etcd
// (/haven/disk-requests/HOST/ID, disk-schema.ts), the host's agent carries it out on its next round and
// answers in the same record (the CLI's `disk` commands and the dashboard ask the same way), and the answer is read back and the request removed. A host whose agent
// does not answer in time gets its request withdrawn, so it is never carried out later by surprise.

import { randomBytes } from "node:crypto";
import { diskKeys, parseDiskRequest, type DiskRequest } from "./disk-schema.js";
import type { ClusterStore } from "./store.js";
import { HavenError } from "../core/errors.js";

const POLL_MS = 200;

export type DiskAsk = Pick<DiskRequest, "kind" | "path" | "disk" | "spare" | "fs" | "wipe" | "identity" | "off">;

/** The agent's answer: what it did (done) or why not (refused). */
export async function askHost(
  client: ClusterStore,
  host: string,
  ask: DiskAsk,
  timeoutMs: number,
  /** Who asks, as the request records it ("cli@HOSTNAME", "alice@dashboard"). */
  actor: string,
): Promise<{ state: "done" | "refused"; result: string; disk?: string }> {
  const id = `${Date.now()}-${randomBytes(4).toString("hex")}`;
  const key = diskKeys.request(host, id);
  const request: DiskRequest = {
    ...ask,
    requestedBy: actor,
    requestedAt: new Date().toISOString(),
    state: "pending",
  };
  await client.put(key, JSON.stringify(request));
  const deadline = Date.now() + timeoutMs;
  try {
    for (;;) {
      const kv = await client.get(key);
      if (kv !== undefined) {
        const answer = parseDiskRequest(kv.value, kv.key);
        if (answer.state !== "pending")
          return {
            state: answer.state,
            result: answer.result ?? "",
            ...(answer.answeredDisk !== undefined && { disk: answer.answeredDisk }),
          };
      }
      if (Date.now() > deadline)
        throw new HavenError(
          "HAVEN_ERR_UNAVAILABLE",
          `host ${host}'s agent did not answer within ${Math.round(timeoutMs / 1000)} s (is it running? 'haven host list'); the request is withdrawn`,
        );
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  } finally {
    await client.delete(key).catch(() => undefined);
  }
}
