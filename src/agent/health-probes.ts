// The agent's active health probes, run each health check round:
// - a disk probe: a small write and fsync of a probe file in each disk's directory. It catches a disk
//   (or filesystem) that errors, is read-only or full, before a volume's copy trips over it, and its
//   time shows a disk that is still answering but slow.
// - an NBD front probe: a real client handshake with the host's own NBD server (NBD_OPT_LIST), which
//   must list every volume this host serves. It catches a front that no longer accepts or answers, and
//   an export that went missing.
// Each probe is bounded by a timeout; a probe that has not finished by then is a failure in itself
// (a hung disk or a hung server), reported as such.

import { connect } from "node:net";
import { open } from "node:fs/promises";
import { join } from "node:path";
import type { DiskHealth } from "../cluster/schema.js";
import { IHAVEOPT, NBD_MAGIC, Option, OPTION_REPLY_MAGIC, OptionReply, HandshakeFlag } from "../nbd/constants.js";
import { errorMessage } from "../core/errors.js";

/** The probe file in each disk's directory (rewritten in place each round). */
export const DISK_PROBE_FILE = ".haven-health-probe";
const DISK_PROBE_BYTES = 4096;
/** Largest option reply the NBD probe accepts (an export name is at most 4 KiB). */
const MAX_OPTION_REPLY_BYTES = 8192;

/**
 * Writes and fsyncs the probe file on one disk; never throws. It has no timeout of its own: a hung
 * write cannot be cancelled, so BackgroundProbe reports it as hung and starts no second one meanwhile.
 */
export async function probeDisk(disk: { readonly name: string; readonly path: string }): Promise<DiskHealth> {
  const started = performance.now();
  const write = async (): Promise<void> => {
    const file = await open(join(disk.path, DISK_PROBE_FILE), "w");
    try {
      const block = Buffer.alloc(DISK_PROBE_BYTES);
      block.write(`haven disk probe ${new Date().toISOString()}\n`);
      await file.write(block, 0, block.length, 0);
      await file.sync();
    } finally {
      await file.close();
    }
  };
  try {
    await write();
    return { name: disk.name, ok: true, detail: "ok", probeMs: Math.round((performance.now() - started) * 100) / 100 };
  } catch (error) {
    const message = errorMessage(error);
    return { name: disk.name, ok: false, detail: `probe write in ${disk.path} failed: ${message}`, probeMs: null };
  }
}

/**
 * Lists the exports of the NBD server at host:port as a client would (fixed newstyle handshake,
 * NBD_OPT_LIST, NBD_OPT_ABORT). Rejects with what went wrong; "tls-required" when the server answers
 * but lists nothing before TLS (a front that requires it).
 */
export function listNbdExports(host: string, port: number, timeoutMs: number): Promise<string[] | "tls-required"> {
  return new Promise<string[] | "tls-required">((resolve, reject) => {
    const socket = connect({ host, port });
    let buffered = Buffer.alloc(0);
    let stage: "greeting" | "replies" = "greeting";
    const names: string[] = [];
    const timer = setTimeout(() => finish(new Error(`no complete answer within ${timeoutMs} ms`)), timeoutMs);
    let tlsRequired = false;
    const finish = (error?: Error): void => {
      clearTimeout(timer);
      socket.removeAllListeners("data");
      socket.removeAllListeners("close");
      if (error) {
        socket.destroy();
        reject(error);
        return;
      }
      const abort = Buffer.alloc(16);
      abort.writeBigUInt64BE(IHAVEOPT, 0);
      abort.writeUInt32BE(Option.ABORT, 8);
      socket.end(abort);
      resolve(tlsRequired ? "tls-required" : names);
    };
    socket.on("error", (error) => finish(error));
    socket.on("close", () => finish(new Error("the server closed the connection during the handshake")));
    socket.on("data", (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      if (stage === "greeting") {
        if (buffered.length < 18) return;
        if (buffered.readBigUInt64BE(0) !== NBD_MAGIC || buffered.readBigUInt64BE(8) !== IHAVEOPT)
          return finish(new Error("the server's greeting is not an NBD newstyle greeting"));
        const flags = buffered.readUInt16BE(16);
        buffered = buffered.subarray(18);
        stage = "replies";
        const request = Buffer.alloc(4 + 16);
        request.writeUInt32BE(flags & (HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES), 0);
        request.writeBigUInt64BE(IHAVEOPT, 4);
        request.writeUInt32BE(Option.LIST, 12);
        request.writeUInt32BE(0, 16);
        socket.write(request);
      }
      while (buffered.length >= 20) {
        if (buffered.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) return finish(new Error("bad option reply magic"));
        const type = buffered.readUInt32BE(12);
        const length = buffered.readUInt32BE(16);
        if (length > MAX_OPTION_REPLY_BYTES) return finish(new Error(`option reply of ${length} bytes`));
        if (buffered.length < 20 + length) return;
        const data = buffered.subarray(20, 20 + length);
        buffered = buffered.subarray(20 + length);
        if (type === OptionReply.ACK) return finish();
        if (type === OptionReply.ERR_TLS_REQD) {
          tlsRequired = true;
          return finish();
        }
        if (type !== OptionReply.SERVER || data.length < 4)
          return finish(new Error(`NBD_OPT_LIST was answered with reply type 0x${type.toString(16)}`));
        const nameBytes = data.readUInt32BE(0);
        if (4 + nameBytes > data.length) return finish(new Error("an export name runs past its reply"));
        names.push(data.subarray(4, 4 + nameBytes).toString("utf8"));
      }
    });
  });
}

/** What is wrong with the NBD front, given what it should serve; empty when nothing is. */
export async function probeNbdFront(
  host: string,
  port: number,
  served: readonly string[],
  timeoutMs: number,
): Promise<{ problems: string[]; missing: string[] }> {
  let listed: string[] | "tls-required";
  try {
    listed = await listNbdExports(host, port, timeoutMs);
    // It answers the handshake; its list is for clients that came over TLS.
    if (listed === "tls-required") return { problems: [], missing: [] };
  } catch (error) {
    const message = errorMessage(error);
    return { problems: [`the NBD front on ${host}:${port} does not answer a handshake: ${message}`], missing: [] };
  }
  const missing = served.filter((name) => !listed.includes(name));
  return {
    problems: missing.map((name) => `volume ${name}: served here but missing from the NBD front's export list`),
    missing,
  };
}

/**
 * A probe that runs in the background, so a hung disk or server never holds up the health check round
 * (or a failover decision behind it): each round reads the latest result and starts the next probe,
 * unless the last one is still running, which past timeoutMs is reported as hung.
 */
export class BackgroundProbe<T> {
  private latest: T | undefined;
  private startedAt: number | undefined;

  constructor(
    private readonly probe: () => Promise<T>,
    private readonly timeoutMs: number,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** The latest finished result (undefined before the first), or `hung` when one is overdue. */
  poll(hung: (runningMs: number) => T): T | undefined {
    if (this.startedAt !== undefined) {
      const runningMs = this.now() - this.startedAt;
      return runningMs > this.timeoutMs ? hung(Math.round(runningMs)) : this.latest;
    }
    this.startedAt = this.now();
    void this.probe()
      .then((result) => (this.latest = result))
      .finally(() => (this.startedAt = undefined));
    return this.latest;
  }
}
