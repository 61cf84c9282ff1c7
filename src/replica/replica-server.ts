// The replica server: serves the copies in one directory (DIR/<volume name>/) to remote engines over
// the replication protocol (protocol/constants.ts). Every connection must first prove it knows the
// shared secret (mutual challenge-response); an unauthenticated peer gets a refusal and nothing else.
// Each copy is opened once, as a LocalReplicaPort shared by every connection to it, so a remote engine
// gets exactly the semantics of a local copy, epoch fence included: a deposed primary's writes are
// refused. Requests are handled by one ReplicaSession per connection (replica-session.ts); malformed
// traffic ends only its own connection, with a logged reason.

import { createServer, type Server, type Socket } from "node:net";
import { HavenError } from "../core/errors.js";
import { LocalReplicaPort } from "./local-port.js";
import type { CreateOptions } from "./port.js";
import { authenticateEngine, FrameConnection } from "./protocol/connection.js";
import { DEFAULT_SESSION_LIMITS, ReplicaSession, type SessionLimits, type SessionLoad } from "./replica-session.js";

export interface ReplicaServerOptions {
  readonly directory: string;
  readonly secret: Buffer;
  readonly log?: (line: string) => void;
  readonly limits?: Partial<SessionLimits>;
}

export class ReplicaServer {
  /** One open port per volume name, shared by every connection to that copy, until stop(). */
  private readonly copies = new Map<string, Promise<LocalReplicaPort>>();
  private readonly sockets = new Set<Socket>();
  private readonly sessions = new Set<ReplicaSession>();
  private server: Server | undefined;
  private stopping = false;
  private nextConnectionId = 1;
  private readonly log: (line: string) => void;
  private readonly limits: SessionLimits;

  constructor(private readonly options: ReplicaServerOptions) {
    if (options.secret.length < 16)
      throw new HavenError("HAVEN_ERR_CONFIG", "the shared secret must be at least 16 bytes");
    this.log = options.log ?? ((line) => process.stderr.write(`${line}\n`));
    this.limits = { ...DEFAULT_SESSION_LIMITS, ...options.limits };
  }

  async listen(host: string, port: number): Promise<string> {
    const server = createServer({ noDelay: true }, (socket) => this.accept(socket));
    await new Promise<void>((resolve, reject) => {
      server.once("error", (error) =>
        reject(new HavenError("HAVEN_ERR_CONFIG", `cannot listen on ${host}:${port}: ${error.message}`)),
      );
      server.listen(port, host, resolve);
    });
    this.server = server;
    const address = server.address() as { address: string; port: number };
    return `${address.address}:${address.port}`;
  }

  /** Per-connection load, for status and for the tests of the bounds. */
  load(): SessionLoad[] {
    return [...this.sessions].map((session) => session.load());
  }

  async stop(): Promise<void> {
    this.stopping = true;
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    for (const copy of this.copies.values()) await (await copy.catch(() => undefined))?.close();
    this.copies.clear();
  }

  private accept(socket: Socket): void {
    const id = this.nextConnectionId++;
    const log = (line: string): void =>
      this.log(`replica conn ${id} (${socket.remoteAddress}:${socket.remotePort}): ${line}`);
    this.sockets.add(socket);
    socket.on("close", () => this.sockets.delete(socket));
    const connection = new FrameConnection(socket);
    authenticateEngine(connection, this.options.secret).then(
      () => {
        if (socket.destroyed) return log(`closed during authentication: ${connection.failed?.message ?? "?"}`);
        log("engine authenticated");
        const session = new ReplicaSession(connection, (name, create) => this.openCopy(name, create), this.limits, log);
        this.sessions.add(session);
        socket.on("close", () => this.sessions.delete(session));
        session.start();
      },
      (error: unknown) => {
        log(`refused: ${(error as Error).message}`);
        socket.pause(); // nothing more from this peer is read
        socket.end();
        setTimeout(() => socket.destroy(), 1000).unref();
      },
    );
  }

  /**
   * The shared port of copy `name`, opening it (or creating it, with `create`) on first use. Never
   * overwrites: an existing copy is opened as it is, whatever `create` says (the engine checks identity).
   */
  private async openCopy(name: string, create: CreateOptions | undefined): Promise<LocalReplicaPort> {
    for (;;) {
      if (this.stopping) throw new HavenError("HAVEN_ERR_SHUTTING_DOWN", "the replica server is shutting down");
      let copy = this.copies.get(name);
      if (copy === undefined) {
        const opening = LocalReplicaPort.open(this.options.directory, name, create);
        copy = opening;
        this.copies.set(name, opening);
        opening.catch(() => {
          if (this.copies.get(name) === opening) this.copies.delete(name);
        });
        return opening;
      }
      try {
        return await copy;
      } catch (error) {
        // Another connection's open (without `create`) found nothing: this one may create it.
        if (!(error instanceof HavenError && error.code === "HAVEN_ERR_NOT_FOUND" && create !== undefined)) throw error;
      }
    }
  }
}
