// The NBD front: listens on TCP and/or a unix socket, runs the handshake on each connection, then hands
// it to a transmission session. It bounds the number of connections, logs one line when a connection
// is established and one when it ends, and shuts down cleanly: stop accepting, let in-flight requests
// finish (new ones get ESHUTDOWN), flush the devices, then close.
//
// Bounds against idle and slow clients (issue 16: 4,200 idle sockets from one address kept nbdinfo out
// for 20-25 s): every handshake has a deadline (limits.handshakeTimeoutMs); one address holds at most
// maxConnectionsPerAddress connections and all addresses together at most maxHandshakes handshakes. Over
// either bound the server drops the oldest handshake in the way (silent ones first) rather than refusing
// the newcomer, so a flood of idle sockets only ever evicts itself and a real client is served at once.
// WRITE payloads of all connections share one WriteBudget. With `tls`, STARTTLS upgrades a connection to
// mutual TLS under the cluster CA (handshake.ts); `required` refuses to serve anything in clear.

import { createServer, type Server, type Socket } from "node:net";
import { DEFAULT_CIPHERS } from "node:tls";
import { HavenError } from "../core/errors.js";
import { ConnectionClosedError } from "./byte-reader.js";
import { negotiate, ProtocolViolation, type ExportCatalog, type HandshakeTls } from "./handshake.js";
import { peerIdentity, serverTlsOptions, type TlsIdentity } from "../security/tls-identity.js";
import { WriteBudget } from "./write-budget.js";
import { DEFAULT_LIMITS, type NbdExport, type NbdLimits } from "./export.js";
import { TransmissionSession } from "./transmission.js";
import { BufferPool } from "../util/buffer-pool.js";
import { removeStaleSocket } from "../util/unix-socket.js";

export type Listen =
  | { readonly kind: "tcp"; readonly host: string; readonly port: number }
  | { readonly kind: "unix"; readonly path: string };

export interface NbdServerOptions {
  readonly exports: readonly NbdExport[];
  /** Allow starting with no export, for a host agent that adds and removes volumes as it runs. */
  readonly dynamicExports?: boolean;
  readonly limits?: Partial<NbdLimits>;
  readonly log?: (line: string) => void;
  /**
   * Offer NBD_OPT_STARTTLS with this identity (security/tls-identity.ts loadTlsIdentity): the client must
   * present a certificate signed by the same cluster CA. `required`: nothing is served before STARTTLS.
   */
  readonly tls?: { readonly identity: TlsIdentity; readonly required: boolean };
}

interface Handshaking {
  readonly address: string | undefined;
  /** The client has sent at least one byte. */
  spoke: boolean;
}

/** Refusals and evictions are logged one by one up to this many, then one line per this many. */
const FLOOD_LOG_EVERY = 1000;

export class NbdServer implements ExportCatalog {
  readonly limits: NbdLimits;
  private readonly servers: Server[] = [];
  private readonly sockets = new Set<Socket>();
  private readonly sessions = new Set<TransmissionSession>();
  private readonly log: (line: string) => void;
  private nextConnectionId = 1;
  private stopping: Promise<void> | undefined;
  private readonly exports: NbdExport[];
  /** Large READ reply buffers, reused across connections (see BufferPool for why). */
  private readonly bufferPool = new BufferPool(128 * 1024, 64 * 1024 * 1024);
  /** Connections still in the handshake, oldest first (Map keeps insertion order). */
  private readonly handshaking = new Map<Socket, Handshaking>();
  /** Open TCP connections by remote address. */
  private readonly perAddress = new Map<string, number>();
  /** Each TCP connection's remote address as it was when accepted (node forgets it once closed). */
  private readonly addressOf = new Map<Socket, string>();
  private readonly writeBudget: WriteBudget;
  private readonly tls: HandshakeTls | undefined;
  private floodEvents = 0;

  constructor(options: NbdServerOptions) {
    if (options.exports.length === 0 && !options.dynamicExports)
      throw new HavenError("HAVEN_ERR_CONFIG", "an NBD server needs at least one export");
    this.exports = [...options.exports];
    this.limits = { ...DEFAULT_LIMITS, ...options.limits };
    this.log = options.log ?? ((line) => process.stderr.write(`${line}\n`));
    if (this.limits.writeBudgetBytes < this.limits.maxPayloadBytes)
      throw new HavenError("HAVEN_ERR_CONFIG", "the NBD write budget must hold at least one maximum-size WRITE");
    this.writeBudget = new WriteBudget(this.limits.writeBudgetBytes);
    if (options.tls !== undefined) {
      this.tls = {
        // The NBD spec requires TLS 1.2 support; the rest (CA, client certificate required) as every Haven link.
        // AES-128-GCM first: the bulk cipher is most of TLS's cost on 1 MiB requests, and 128-bit keys
        // take fewer AES rounds than the 256-bit suite both ends would otherwise pick.
        options: {
          ...serverTlsOptions(options.tls.identity),
          minVersion: "TLSv1.2",
          ciphers: `TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:${DEFAULT_CIPHERS}`,
          honorCipherOrder: true,
        },
        required: options.tls.required,
        describePeer: (socket) => {
          const peer = peerIdentity(socket);
          return peer === undefined
            ? "an unnamed peer"
            : `${peer.kind} ${peer.name}${peer.role ? ` (${peer.role})` : ""}`;
        },
      };
    }
  }

  /** WRITE payload bytes reserved across all connections, and connections waiting for the budget. */
  get writeBudgetUse(): { readonly usedBytes: number; readonly waiting: number } {
    return { usedBytes: this.writeBudget.used, waiting: this.writeBudget.waiting };
  }

  find(name: string): NbdExport | undefined {
    if (name === "") return this.exports[0];
    return this.exports.find((exported) => exported.name === name);
  }

  list(): readonly NbdExport[] {
    return this.exports;
  }

  /** Offers a new export to clients that connect from now on. */
  addExport(exported: NbdExport): void {
    if (this.find(exported.name) !== undefined)
      throw new HavenError("HAVEN_ERR_CONFLICT", `export "${exported.name}" is already served`);
    this.exports.push(exported);
  }

  /** Stops offering an export to new clients; connected ones see its device's errors once it stops. */
  removeExport(name: string): void {
    const at = this.exports.findIndex((exported) => exported.name === name);
    if (at >= 0) this.exports.splice(at, 1);
  }

  get connectionCount(): number {
    return this.sockets.size;
  }

  /** Starts listening; resolves with the bound address (the port is real even when 0 was asked). */
  async listen(where: Listen): Promise<string> {
    const server = createServer(
      // Half-open allowed: a client's FIN (after DISC, say) must not end our side before the
      // replies to its earlier requests are out; the session closes the socket itself when idle.
      { noDelay: true, allowHalfOpen: true },
      (socket) => this.accept(socket),
    );
    server.maxConnections = this.limits.maxConnections;
    server.on("drop", (data) => {
      this.log(
        `refused a connection from ${data?.remoteAddress ?? "?"}: ${this.limits.maxConnections} connections already`,
      );
    });
    if (where.kind === "unix") await removeStaleSocket(where.path);
    await new Promise<void>((resolve, reject) => {
      server.once("error", (error: NodeJS.ErrnoException) => {
        const target = where.kind === "unix" ? where.path : `${where.host}:${where.port}`;
        reject(new HavenError("HAVEN_ERR_CONFIG", `cannot listen on ${target}: ${error.message}`, { cause: error }));
      });
      if (where.kind === "unix") server.listen(where.path, resolve);
      else server.listen(where.port, where.host, resolve);
    });
    server.on("error", (error) => this.log(`listener error: ${error.message}`));
    this.servers.push(server);
    const address = server.address();
    if (address === null || typeof address === "string") return where.kind === "unix" ? where.path : String(address);
    return `${address.address}:${address.port}`;
  }

  /** Stops accepting, finishes in-flight requests, closes every connection, flushes every device. */
  stop(): Promise<void> {
    this.stopping ??= this.shutdown();
    return this.stopping;
  }

  private async shutdown(): Promise<void> {
    // close() stops accepting at once; its callback waits for every connection, so await it last.
    const listenersClosed = Promise.all(
      this.servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve()))),
    );
    for (const session of this.sessions) session.shutdown();
    for (const socket of [...this.handshaking.keys()]) socket.destroy();
    const drained = Promise.all([...this.sessions].map((session) => session.closed));
    let graceTimer: NodeJS.Timeout | undefined;
    const grace = new Promise<"timeout">((resolve) => {
      graceTimer = setTimeout(() => resolve("timeout"), this.limits.shutdownGraceMs);
    });
    const outcome = await Promise.race([drained, grace]);
    clearTimeout(graceTimer);
    if (outcome === "timeout") {
      this.log(
        `shutdown: in-flight requests did not finish within ${this.limits.shutdownGraceMs} ms; dropping connections`,
      );
      for (const session of this.sessions) this.log(`shutdown: still open: ${session.describeState()}`);
      for (const session of this.sessions) session.destroy();
      for (const socket of this.sockets) socket.destroy();
    }
    await listenersClosed;
    for (const exported of this.exports) {
      try {
        await exported.device.flush();
      } catch (error) {
        this.log(`shutdown: final flush of export "${exported.name}" failed: ${(error as Error).message}`);
      }
    }
  }

  /**
   * Serves a connection accepted elsewhere (a volume's disk endpoint, see agent/disk-endpoints.ts) exactly
   * as a listened one: handshake, transmission, the connection limit, shutdown. `peer` names it in the log.
   * A connection over the limit, or one that arrives while the server stops, is closed at once.
   */
  serveConnection(socket: Socket, peer: string): void {
    if (!this.stopping && this.sockets.size >= this.limits.maxConnections) {
      this.log(`refused a connection from ${peer}: ${this.limits.maxConnections} connections already`);
      socket.destroy();
      return;
    }
    this.accept(socket, peer);
  }

  /** One line for a refused or evicted connection, thinned out when a flood makes thousands. */
  private logFlood(line: string): void {
    this.floodEvents++;
    if (this.floodEvents <= 20 || this.floodEvents % FLOOD_LOG_EVERY === 0) {
      this.log(this.floodEvents <= 20 ? line : `${line} (${this.floodEvents} refused or dropped so far)`);
    }
  }

  /** The oldest handshake that `matches`, silent ones (not a byte sent yet) before talking ones. */
  private oldestHandshake(matches: (entry: Handshaking) => boolean): Socket | undefined {
    let talking: Socket | undefined;
    for (const [socket, entry] of this.handshaking) {
      if (!matches(entry)) continue;
      if (!entry.spoke) return socket;
      talking ??= socket;
    }
    return talking;
  }

  /** Makes room for a new connection from `address`; false if it must be refused. */
  private admit(address: string | undefined, peer: string): boolean {
    if (address !== undefined && (this.perAddress.get(address) ?? 0) >= this.limits.maxConnectionsPerAddress) {
      const victim = this.oldestHandshake((entry) => entry.address === address);
      if (victim === undefined) {
        this.logFlood(
          `refused a connection from ${peer}: ${this.limits.maxConnectionsPerAddress} connections from ${address} already`,
        );
        return false;
      }
      this.logFlood(
        `dropped the oldest handshake from ${address}: ${this.limits.maxConnectionsPerAddress} connections`,
      );
      this.forgetConnection(victim);
      victim.destroy();
    }
    if (this.handshaking.size >= this.limits.maxHandshakes) {
      const victim = this.oldestHandshake(() => true)!;
      this.logFlood(`dropped the oldest handshake (${this.limits.maxHandshakes} in progress)`);
      this.forgetConnection(victim);
      victim.destroy();
    }
    return true;
  }

  /** Takes a connection off the per-address and handshake counts (once, whichever of close/evict comes first). */
  private forgetConnection(socket: Socket): void {
    this.handshaking.delete(socket);
    if (!this.sockets.delete(socket)) return;
    const address = this.addressOf.get(socket);
    this.addressOf.delete(socket);
    if (address === undefined) return;
    const left = (this.perAddress.get(address) ?? 1) - 1;
    if (left <= 0) this.perAddress.delete(address);
    else this.perAddress.set(address, left);
  }

  private accept(socket: Socket, peerName?: string): void {
    const id = this.nextConnectionId++;
    const address = socket.remoteAddress;
    const peer = peerName ?? (address ? `${address}:${socket.remotePort}` : "unix socket");
    const log = (line: string): void => this.log(`conn ${id} (${peer}): ${line}`);
    if (this.stopping || socket.destroyed || !this.admit(address, peer)) {
      socket.destroy();
      return;
    }
    this.sockets.add(socket);
    if (address !== undefined) {
      this.addressOf.set(socket, address);
      this.perAddress.set(address, (this.perAddress.get(address) ?? 0) + 1);
    }
    const entry: Handshaking = { address, spoke: false };
    this.handshaking.set(socket, entry);
    socket.once("data", () => (entry.spoke = true));
    socket.on("close", () => this.forgetConnection(socket));
    socket.on("error", () => undefined); // reported by whoever owns the socket at that stage
    // A unix socket is this host's (its mode lets only Haven's user in: a local QEMU's disk endpoint);
    // TLS is for the network.
    const tls = this.tls !== undefined && address === undefined ? { ...this.tls, required: false } : this.tls;
    negotiate(socket, this, this.limits, log, tls).then(
      (negotiated) => {
        this.handshaking.delete(socket);
        // NBD_OPT_ABORT: a clean end of the handshake (a client that listed the exports and left, such
        // as the agent's own health probe every round, or `nbdinfo --list`): nothing to report.
        if (negotiated === undefined) return;
        if (this.stopping) {
          negotiated.socket.destroy();
          socket.destroy();
          return;
        }
        const session = new TransmissionSession(
          negotiated.socket,
          negotiated,
          this.limits,
          log,
          this.bufferPool,
          this.writeBudget,
        );
        this.sessions.add(session);
        log(
          `export "${negotiated.export.name}" opened${negotiated.tlsPeer ? ` over TLS by ${negotiated.tlsPeer}` : ""} (${negotiated.structuredReplies ? "structured" : "simple"} replies` +
            `${negotiated.baseAllocation ? ", base:allocation" : ""}${negotiated.blockSizesAgreed ? ", block sizes agreed" : ""})`,
        );
        session.start();
        void session.closed.then((reason) => {
          this.sessions.delete(session);
          const c = session.counters;
          log(
            `closed: ${reason}; ${c.requests} requests, ${c.errors} errors, ${c.bytesRead} bytes read, ${c.bytesWritten} bytes written`,
          );
        });
      },
      (error: unknown) => {
        this.handshaking.delete(socket);
        if (error instanceof ProtocolViolation) log(`dropping connection during handshake: ${error.message}`);
        else if (error instanceof ConnectionClosedError) log(`handshake ended: ${error.message}`);
        else log(`handshake failed: ${(error as Error).message}`);
        socket.destroy();
      },
    );
  }
}
