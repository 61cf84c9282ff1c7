// QEMU's live migration over QMP, both ends (QEMU's migration.json; the sequence Proxmox and Ganeti
// drive too): the destination QEMU was started paused with `-incoming defer`; it listens, and the
// source sends RAM in passes while the guest runs, then pauses the guest for the last pass and the
// device state. The destination stays paused after the transfer (it was started with -S): Haven
// resumes it only once the disk's primary is there. A transfer that fails leaves the source's guest as
// it was (running), or, after a completed transfer, paused with its disks inactive until `cont`.
//
// The channel is TLS with X.509 (tls-creds-x509) under the cluster's CA when the host has an identity:
// the destination asks for the source's certificate (verify-peer) and the source checks that the
// destination's certificate names the host it meant (tls-hostname, the host's DNS SAN).

import { HavenError } from "../core/errors.js";
import type { QmpClient } from "./qmp-client.js";

/** What QEMU says of an outgoing transfer. */
export interface TransferProgress {
  readonly status: string;
  readonly totalBytes: number;
  readonly transferredBytes: number;
  readonly remainingBytes: number;
  readonly dirtyPagesRate: number;
  readonly pageSize: number;
  readonly expectedDowntimeMs: number;
  readonly passes: number;
  readonly mbps: number;
  /** After completion: the pause QEMU measured (ms), and the whole transfer's time. */
  readonly downtimeMs?: number;
  readonly totalTimeMs?: number;
}

export interface MigrationTls {
  /** The host's identity directory (ca-cert.pem, server-*.pem, client-*.pem). */
  readonly dir: string;
}

export interface OutgoingOptions {
  /** tcp:ADDRESS:PORT of the destination's incoming QEMU. */
  readonly uri: string;
  readonly tls?: MigrationTls & { readonly peerName: string };
  /** The longest pause QEMU plans for the last pass (ms); it sends passes until the rest fits. */
  readonly downtimeLimitMs: number;
  /** Bytes per second the transfer may use. */
  readonly maxBandwidth: number;
  readonly onProgress: (progress: TransferProgress) => void;
  /** How often progress is read. */
  readonly pollMs: number;
  /** Ends the wait early (the destination died): the transfer is cancelled. */
  readonly abort: AbortSignal;
}

const TLS_OBJECT = "haven-migration-tls";
const COMMAND_TIMEOUT = { timeoutMs: 10_000 };

/** Creates the TLS credentials object (again, if an earlier attempt left one). */
async function ensureTlsObject(qmp: QmpClient, tls: MigrationTls, endpoint: "client" | "server"): Promise<void> {
  await qmp.execute("object-del", { id: TLS_OBJECT }, COMMAND_TIMEOUT).catch(() => undefined);
  await qmp.execute(
    "object-add",
    { "qom-type": "tls-creds-x509", id: TLS_OBJECT, dir: tls.dir, endpoint, "verify-peer": true },
    COMMAND_TIMEOUT,
  );
}

/**
 * The destination listens on `address` (port chosen by the kernel) and says where: the uri the source
 * migrates to. The QEMU must have been started with -incoming defer.
 */
export async function listenIncoming(qmp: QmpClient, address: string, tls: MigrationTls | undefined): Promise<string> {
  if (tls !== undefined) {
    await ensureTlsObject(qmp, tls, "server");
    await qmp.execute("migrate-set-parameters", { "tls-creds": TLS_OBJECT }, COMMAND_TIMEOUT);
  }
  await qmp.execute(
    "migrate-set-capabilities",
    { capabilities: [{ capability: "events", state: true }] },
    COMMAND_TIMEOUT,
  );
  const host = address.includes(":") ? `[${address}]` : address;
  await qmp.execute("migrate-incoming", { uri: `tcp:${host}:0` }, COMMAND_TIMEOUT);
  const info = (await qmp.execute("query-migrate", undefined, COMMAND_TIMEOUT)) as {
    "socket-address"?: { type: string; host?: string; port?: string }[];
  };
  const port = info["socket-address"]?.find((entry) => entry.type === "inet")?.port;
  if (port === undefined || !/^[0-9]{1,5}$/.test(port))
    throw new HavenError(
      "HAVEN_ERR_IO",
      `QEMU did not say where it listens for the migration: ${JSON.stringify(info)}`,
    );
  return `tcp:${host}:${port}`;
}

/** Resolves when the incoming transfer has completed; rejects when it failed or QEMU went away. */
export function incomingCompleted(qmp: QmpClient): Promise<void> {
  return new Promise((resolve, reject) => {
    const settle = (status: string, detail?: string): boolean => {
      if (status === "completed") resolve();
      else if (status === "failed" || status === "cancelled")
        reject(new HavenError("HAVEN_ERR_IO", `the incoming migration ${status}${detail ? `: ${detail}` : ""}`));
      else return false;
      return true;
    };
    const off = qmp.onEvent((event) => {
      if (event.event !== "MIGRATION") return;
      const status = (event.data as { status?: string } | undefined)?.status ?? "";
      if (settle(status)) {
        off();
        offClose();
      }
    });
    const offClose = qmp.onClose((reason) => {
      off();
      reject(reason);
    });
  });
}

/**
 * Migrates the source's QEMU to `options.uri` and resolves once QEMU reports `completed` (the guest
 * is paused here, its disks flushed and inactive); rejects with QEMU's reason when the transfer fails,
 * after cancelling it when the wait was aborted. A rejected transfer leaves the guest running here.
 */
export async function migrateOut(qmp: QmpClient, options: OutgoingOptions): Promise<TransferProgress> {
  if (options.tls !== undefined) await ensureTlsObject(qmp, options.tls, "client");
  await qmp.execute(
    "migrate-set-capabilities",
    { capabilities: [{ capability: "events", state: true }] },
    COMMAND_TIMEOUT,
  );
  await qmp.execute(
    "migrate-set-parameters",
    {
      "downtime-limit": options.downtimeLimitMs,
      "max-bandwidth": options.maxBandwidth,
      ...(options.tls !== undefined
        ? { "tls-creds": TLS_OBJECT, "tls-hostname": options.tls.peerName }
        : { "tls-creds": "" }),
    },
    COMMAND_TIMEOUT,
  );
  // QEMU's MIGRATION event says when the status changes; progress is polled between events.
  let wake: (() => void) | undefined;
  const off = qmp.onEvent((event) => {
    if (event.event === "MIGRATION") wake?.();
  });
  const onAbort = (): void => wake?.();
  options.abort.addEventListener("abort", onAbort);
  try {
    await qmp.execute("migrate", { uri: options.uri }, COMMAND_TIMEOUT);
    for (;;) {
      const progress = readProgress(await qmp.execute("query-migrate", undefined, COMMAND_TIMEOUT));
      options.onProgress(progress);
      if (progress.status === "completed") return progress;
      if (progress.status === "failed" || progress.status === "cancelled")
        throw new HavenError("HAVEN_ERR_IO", `QEMU's migration ${progress.status}: ${failureOf(progress)}`);
      if (options.abort.aborted) {
        await cancelOutgoing(qmp);
        throw new HavenError("HAVEN_ERR_UNAVAILABLE", String(options.abort.reason ?? "the migration was aborted"));
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, options.pollMs);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      wake = undefined;
    }
  } finally {
    off();
    options.abort.removeEventListener("abort", onAbort);
  }
}

/** migrate_cancel, and waits (bounded) until QEMU says the transfer is over. */
export async function cancelOutgoing(qmp: QmpClient): Promise<void> {
  await qmp.execute("migrate_cancel", undefined, COMMAND_TIMEOUT).catch(() => undefined);
  for (let i = 0; i < 100; i++) {
    const info = (await qmp.execute("query-migrate", undefined, COMMAND_TIMEOUT).catch(() => ({}))) as {
      status?: string;
    };
    if (info.status === undefined || ["cancelled", "failed", "completed", "none"].includes(info.status)) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

const errorDescriptions = new WeakMap<TransferProgress, string>();

function failureOf(progress: TransferProgress): string {
  return errorDescriptions.get(progress) ?? "no reason given";
}

function readProgress(reply: unknown): TransferProgress {
  const info = (reply ?? {}) as Record<string, unknown>;
  const ram = (info.ram ?? {}) as Record<string, number>;
  const whole = (value: unknown): number => (typeof value === "number" && value > 0 ? Math.round(value) : 0);
  const progress: TransferProgress = {
    status: typeof info.status === "string" ? info.status : "unknown",
    totalBytes: whole(ram.total),
    transferredBytes: whole(ram.transferred),
    remainingBytes: whole(ram.remaining),
    dirtyPagesRate: whole(ram["dirty-pages-rate"]),
    pageSize: whole(ram["page-size"]) || 4096,
    expectedDowntimeMs: whole(info["expected-downtime"]),
    passes: whole(ram["dirty-sync-count"]),
    mbps: whole(ram.mbps),
    ...(typeof info.downtime === "number" && { downtimeMs: info.downtime }),
    ...(typeof info["total-time"] === "number" && { totalTimeMs: info["total-time"] }),
  };
  if (typeof info["error-desc"] === "string") errorDescriptions.set(progress, info["error-desc"]);
  return progress;
}
