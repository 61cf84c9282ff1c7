// The replica server: serves the copies in a directory (DIR/<volume name>/) to remote engines over
// the replication protocol (protocol/constants.ts). Every connection must first prove it knows the
// shared secret (mutual challenge-response); an unauthenticated peer gets a refusal and nothing else.
// Who may get that far is the port's business (replica-listener.ts): mutual TLS under the cluster CA
// when the server has an identity, and bounds on connections that have not authenticated yet. AUTH
// stays on under TLS: a certificate and the secret are two independent proofs, so a host key that
// leaks alone (or a CA mistake) does not open the copies, and plain-TCP clusters keep their one proof.
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

import { HavenError } from "../core/errors.js";
import type { CertificateInfo } from "../security/pki.js";
import type { TlsIdentity } from "../security/tls-identity.js";
import { DEFAULT_ADMISSION_LIMITS, type AdmissionLimits } from "./admission.js";
import { LocalReplicaPort } from "./local-port.js";
import { copyKey, isCopyOf, type CreateOptions } from "./port.js";
import { authenticateEngine } from "./protocol/connection.js";
import { ReplicaListener, type IncomingConnection } from "./replica-listener.js";
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
  /** This host's identity: the port then speaks only mutual TLS, to clients with host certificates. */
  readonly tls?: TlsIdentity;
  /** Whether a client certificate's serial (lower-case hex) is revoked; checked after each TLS handshake. */
  readonly revoked?: (serial: string) => boolean;
  /** Bounds on connections that have not authenticated yet (admission.ts). */
  readonly admission?: Partial<AdmissionLimits>;
}

export class ReplicaServer {
  /** One open port per copy (copyKey), shared by every connection to that copy. */
  private readonly copies = new Map<string, CopyEntry>();
  private readonly sessions = new Set<ReplicaSession>();
  /** The client certificate each session's connection presented (TLS only). */
  private readonly peers = new Map<ReplicaSession, CertificateInfo>();
  private readonly listener: ReplicaListener;
  private stopping = false;
  private readonly log: (line: string) => void;
  private readonly limits: SessionLimits;

  constructor(private readonly options: ReplicaServerOptions) {
    if (options.secret.length < 16)
      throw new HavenError("HAVEN_ERR_CONFIG", "the shared secret must be at least 16 bytes");
    this.log = options.log ?? ((line) => process.stderr.write(`${line}\n`));
    this.limits = { ...DEFAULT_SESSION_LIMITS, ...options.limits };
    this.listener = new ReplicaListener(
      {
        ...(options.tls && { tls: options.tls }),
        ...(options.revoked && { revoked: options.revoked }),
        limits: { ...DEFAULT_ADMISSION_LIMITS, ...options.admission },
        log: this.log,
      },
      (incoming) => this.accept(incoming),
    );
  }

  /** Listens on HOST:PORT (port 0: any free one); resolves with the address it listens on. */
  listen(host: string, port: number): Promise<string> {
    return this.listener.listen(host, port);
  }

  /** Connections that have not authenticated yet (for status and the tests of the bounds). */
  get unauthenticatedConnections(): number {
    return this.listener.unauthenticated;
  }

  /** Per-connection load, for status and for the tests of the bounds. */
  load(): SessionLoad[] {
    return [...this.sessions].map((session) => session.load());
  }

  async stop(): Promise<void> {
    this.stopping = true;
    await this.listener.stop();
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

  /**
   * Ends the connections whose client certificate the `revoked` hook names now: the hook is asked at
   * each handshake, so a certificate revoked later needs this (call it when the revocations change).
   * Resolves with how many were ended, once their requests have finished.
   */
  async dropRevoked(): Promise<number> {
    const revoked = this.options.revoked;
    if (revoked === undefined) return 0;
    const ended = [...this.peers].filter(([, peer]) => revoked(peer.serial)).map(([session]) => session);
    for (const session of ended) {
      const peer = this.peers.get(session);
      this.log(
        `dropping the connection of host ${peer?.name ?? "?"}: its certificate (serial ${peer?.serial ?? "?"}) is revoked`,
      );
      session.destroy();
    }
    await Promise.all(ended.map((session) => session.finished));
    return ended.length;
  }

  /** Names of the copies open now (for status and tests). */
  openCopies(): string[] {
    return [...this.copies.keys()];
  }

  private accept({ connection, peer, log, authenticated }: IncomingConnection): void {
    const socket = connection.socket;
    authenticateEngine(connection, this.options.secret).then(
      () => {
        if (socket.destroyed) return log(`closed during authentication: ${connection.failed?.message ?? "?"}`);
        authenticated();
        log(peer === undefined ? "engine authenticated" : `engine authenticated (host ${peer.name})`);
        const session: ReplicaSession = new ReplicaSession(
          connection,
          (name, create, disk) => this.openCopy(session, name, create, disk),
          this.limits,
          log,
        );
        this.sessions.add(session);
        if (peer !== undefined) this.peers.set(session, peer);
        void session.finished.then(() => {
          this.sessions.delete(session);
          this.peers.delete(session);
          this.release(session);
        });
        session.start();
      },
      (error: unknown) => {
        log(`refused: ${(error as Error).message}`);
        connection.linger(); // the refusal authenticateEngine sent goes out; nothing more is read
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
