// The replica server: serves the copies in a directory (DIR/<volume name>/) to remote engines over
// the replication protocol (protocol/constants.ts). Every connection must first prove it knows the
// shared secret (mutual challenge-response); an unauthenticated peer gets a refusal and nothing else.
// Each copy is opened once, as a LocalReplicaPort shared by every connection to it, so a remote engine
// gets exactly the semantics of a local copy, epoch fence included: a deposed primary's writes are
// refused. A copy is closed (its lock released) once the last connection to it has closed and every
// request it started has finished, so the host's own engine can open it when this host becomes
// primary; evict() forces that for a copy whose old primary may still be connected. Requests are
// handled by one ReplicaSession per connection (replica-session.ts); malformed traffic ends only its
// own connection, with a logged reason. A host agent with several disks gives a function instead of one
// directory: it names the disk that holds (or is to hold) each copy. An engine may say which disk it
// means (a host can hold two copies of a volume, on different disks); the copy is then known as
// VOLUME@DISK (copyKey).

import { createServer, type Server, type Socket } from "node:net";
import { HavenError } from "../core/errors.js";
import { LocalReplicaPort } from "./local-port.js";
import { copyKey, isCopyOf, type CreateOptions } from "./port.js";
import { authenticateEngine, FrameConnection } from "./protocol/connection.js";
import { DEFAULT_SESSION_LIMITS, ReplicaSession, type SessionLimits, type SessionLoad } from "./replica-session.js";

export interface ReplicaServerOptions {
  /**
   * Where copies live: one directory, or the directory for each copy, from its volume and the disk the
   * engine named (throws a HavenError to refuse).
   */
  readonly directory: string | ((volume: string, disk: string | undefined) => string | Promise<string>);
  readonly secret: Buffer;
  readonly log?: (line: string) => void;
  readonly limits?: Partial<SessionLimits>;
}

export class ReplicaServer {
  /** One open port per copy (copyKey), shared by every connection to that copy. */
  private readonly copies = new Map<string, CopyEntry>();
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
    for (const entry of this.copies.values()) {
      await entry.closing;
      await (await entry.port.catch(() => undefined))?.close();
    }
    this.copies.clear();
  }

  /**
   * Drops every connection to the copies of volume `name` (only its copy on `disk` when given), waits for the requests they started, and
   * closes the copies, so that this host's own engine can open them. Resolves when they are closed.
   */
  async evict(name: string, disk?: string): Promise<void> {
    const matches = (key: string): boolean => (disk === undefined ? isCopyOf(key, name) : key === copyKey(name, disk));
    const sessions = [...this.sessions].filter((session) => {
      const copy = session.copyName;
      return copy !== undefined && matches(copy);
    });
    for (const session of sessions) session.destroy();
    await Promise.all(sessions.map((session) => session.finished));
    await Promise.all([...this.copies].filter(([key]) => matches(key)).map(([, entry]) => entry.closing));
  }

  /** Names of the copies open now (for status and tests). */
  openCopies(): string[] {
    return [...this.copies.keys()];
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
        const session: ReplicaSession = new ReplicaSession(
          connection,
          (name, create, disk) => this.openCopy(session, name, create, disk),
          this.limits,
          log,
        );
        this.sessions.add(session);
        void session.finished.then(() => {
          this.sessions.delete(session);
          this.release(session);
        });
        session.start();
      },
      (error: unknown) => {
        log(`refused: ${(error as Error).message}`);
        socket.pause(); // nothing more from this peer is read
        connection.end(); // the refusal goes out first
        setTimeout(() => socket.destroy(), 1000).unref();
      },
    );
  }

  /**
   * The shared port of copy `name`, opening it (or creating it, with `create`) on first use. Never
   * overwrites: an existing copy is opened as it is, whatever `create` says (the engine checks identity).
   */
  private async openCopy(
    session: ReplicaSession,
    volume: string,
    create: CreateOptions | undefined,
    disk: string | undefined,
  ): Promise<LocalReplicaPort> {
    const name = copyKey(volume, disk);
    for (;;) {
      if (this.stopping) throw new HavenError("HAVEN_ERR_SHUTTING_DOWN", "the replica server is shutting down");
      const entry = this.copies.get(name);
      if (entry?.closing) {
        // The last user just left: a new one waits for the close (and the lock) before opening again.
        await entry.closing;
        continue;
      }
      if (entry === undefined) {
        const { directory } = this.options;
        const opening = (async () =>
          LocalReplicaPort.open(
            typeof directory === "string" ? directory : await directory(volume, disk),
            volume,
            create,
          ))();
        const created: CopyEntry = { port: opening, users: new Set([session]), closing: undefined };
        this.copies.set(name, created);
        opening.catch(() => {
          if (this.copies.get(name) === created) this.copies.delete(name);
        });
        return opening;
      }
      entry.users.add(session);
      try {
        return await entry.port;
      } catch (error) {
        entry.users.delete(session);
        // Another connection's open (without `create`) found nothing: this one may create it.
        if (!(error instanceof HavenError && error.code === "HAVEN_ERR_NOT_FOUND" && create !== undefined)) throw error;
      }
    }
  }

  /** A session is done: its copy closes when it was the last user. */
  private release(session: ReplicaSession): void {
    const name = session.copyName;
    const entry = name === undefined ? undefined : this.copies.get(name);
    if (name === undefined || entry === undefined || !entry.users.delete(session)) return;
    if (entry.users.size > 0 || entry.closing || this.stopping) return;
    entry.closing = entry.port
      .then((port) => port.close())
      .catch((error: unknown) => this.log(`closing copy "${name}" failed: ${(error as Error).message}`))
      .finally(() => {
        if (this.copies.get(name) === entry) this.copies.delete(name);
      });
  }
}

interface CopyEntry {
  readonly port: Promise<LocalReplicaPort>;
  /** Sessions that opened this copy and have not finished. */
  readonly users: Set<ReplicaSession>;
  /** Set once the last user left: the close under way. */
  closing: Promise<void> | undefined;
}
