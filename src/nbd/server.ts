// The NBD front: listens on TCP and/or a unix socket, runs the handshake on each connection, then hands
// it to a transmission session. It bounds the number of connections, logs one line when a connection
// is established and one when it ends, and shuts down cleanly: stop accepting, let in-flight requests
// finish (new ones get ESHUTDOWN), flush the devices, then close.

import { createServer, type Server, type Socket } from "node:net";
import { HavenError } from "../core/errors.js";
import { ConnectionClosedError } from "./byte-reader.js";
import { negotiate, ProtocolViolation, type ExportCatalog } from "./handshake.js";
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
}

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

  constructor(options: NbdServerOptions) {
    if (options.exports.length === 0 && !options.dynamicExports)
      throw new HavenError("HAVEN_ERR_CONFIG", "an NBD server needs at least one export");
    this.exports = [...options.exports];
    this.limits = { ...DEFAULT_LIMITS, ...options.limits };
    this.log = options.log ?? ((line) => process.stderr.write(`${line}\n`));
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
    const handshaking = [...this.sockets].filter((socket) => ![...this.sessions].some((s) => s.socketIs(socket)));
    for (const socket of handshaking) socket.destroy();
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

  private accept(socket: Socket, peerName?: string): void {
    const id = this.nextConnectionId++;
    const peer = peerName ?? (socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : "unix socket");
    const log = (line: string): void => this.log(`conn ${id} (${peer}): ${line}`);
    if (this.stopping || socket.destroyed) {
      socket.destroy();
      return;
    }
    this.sockets.add(socket);
    socket.on("close", () => this.sockets.delete(socket));
    socket.on("error", () => undefined); // reported by whoever owns the socket at that stage
    negotiate(socket, this, this.limits, log).then(
      (negotiated) => {
        if (negotiated === undefined) {
          log("client aborted the handshake");
          return;
        }
        if (this.stopping) {
          socket.destroy();
          return;
        }
        const session = new TransmissionSession(socket, negotiated, this.limits, log, this.bufferPool);
        this.sessions.add(session);
        log(
          `export "${negotiated.export.name}" opened (${negotiated.structuredReplies ? "structured" : "simple"} replies` +
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
        if (error instanceof ProtocolViolation) log(`dropping connection during handshake: ${error.message}`);
        else if (error instanceof ConnectionClosedError) log(`handshake ended: ${error.message}`);
        else log(`handshake failed: ${(error as Error).message}`);
        socket.destroy();
      },
    );
  }
}
