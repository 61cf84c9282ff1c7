// The replication port: accepts connections, over mutual TLS when the server has an identity, and
// decides who may go on to the shared-secret AUTH (protocol/connection.ts). It owns every socket the
// port accepted until the server stops.
//
// Before a peer has authenticated it may hold very little: the admission gate (admission.ts) bounds
// unauthenticated connections per source address and in total and gives each a deadline covering the
// TLS handshake and AUTH; a connection over the bounds is closed at once, before its first byte is
// read. With TLS, a plaintext client fails the handshake. The client's certificate is checked here
// once the handshake is done, not by node inside it, so that the engine learns why it was refused
// (one NOT_AUTHENTICATED reply) instead of seeing a reset: it must be signed by the cluster CA and
// valid now (node's verification, socket.authorized), name a host (an operator's certificate is for
// the API, not for moving data), and not be one the `revoked` hook names. Nothing but that reply
// is sent to a refused peer, and nothing it sends is read.

import { createServer as createTcpServer, type Server, type Socket } from "node:net";
import { createServer as createTlsServer, type TLSSocket } from "node:tls";
import { HavenError } from "../core/errors.js";
import type { CertificateInfo } from "../security/pki.js";
import { peerIdentity, serverTlsOptions, type TlsIdentity } from "../security/tls-identity.js";
import { AdmissionGate, isRefusal, type Admission, type AdmissionLimits } from "./admission.js";
import { FrameConnection } from "./protocol/connection.js";

export interface ReplicaListenerOptions {
  /** This host's identity: with it the port speaks only mutual TLS; without it, plain TCP. */
  readonly tls?: TlsIdentity;
  /** Whether the certificate with this serial (lower-case hex) was revoked; checked after each handshake. */
  readonly revoked?: (serial: string) => boolean;
  readonly limits: AdmissionLimits;
  readonly log: (line: string) => void;
}

/** A connection that got through the port (and TLS, when on): its peer has yet to prove the secret. */
export interface IncomingConnection {
  readonly connection: FrameConnection;
  /** The peer's certificate (a host's) with TLS; undefined on plain TCP. */
  readonly peer: CertificateInfo | undefined;
  /** Logs a line about this connection. */
  readonly log: (line: string) => void;
  /** The peer proved the secret: it no longer counts against the admission limits or the deadline. */
  authenticated(): void;
}

/** An admitted connection until it authenticates or ends. */
interface Pending {
  readonly id: number;
  /** The peer's address and port, as logged. */
  readonly peer: string;
  readonly admission: Admission;
  readonly deadline: NodeJS.Timeout;
  /** The socket the protocol runs on (the TLS socket once its handshake is done); the deadline ends it. */
  socket: Socket;
}

export class ReplicaListener {
  private readonly gate: AdmissionGate;
  private readonly sockets = new Set<Socket>();
  /** By the peer's address and port, which the raw and the TLS socket share. */
  private readonly pending = new Map<string, Pending>();
  private server: Server | undefined;
  private nextConnectionId = 1;

  constructor(
    private readonly options: ReplicaListenerOptions,
    private readonly onConnection: (incoming: IncomingConnection) => void,
  ) {
    this.gate = new AdmissionGate(options.limits);
  }

  async listen(host: string, port: number): Promise<string> {
    const { tls } = this.options;
    const server = tls
      ? createTlsServer({
          ...serverTlsOptions(tls),
          // Checked in secured(), with the reason sent back; requestCert stays on.
          rejectUnauthorized: false,
          handshakeTimeout: this.options.limits.authDeadlineMs,
        })
      : createTcpServer();
    // Registered after the TLS server's own 'connection' listener, which wraps the socket: refusing
    // here destroys the socket before a byte of the handshake is read.
    server.on("connection", (socket: Socket) => this.admit(socket));
    if (tls) {
      server.on("secureConnection", (socket: TLSSocket) => this.secured(socket));
      server.on("tlsClientError", (error: Error, socket: TLSSocket) =>
        this.logFor(socket, `refused: TLS handshake failed: ${error.message}`),
      );
    }
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

  /** Connections admitted that have not authenticated yet (all addresses). */
  get unauthenticated(): number {
    return this.gate.unauthenticated;
  }

  /** Closes the port and every connection it accepted. */
  async stop(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  private admit(socket: Socket): void {
    socket.setNoDelay(true);
    const address = socket.remoteAddress ?? "unknown";
    const admitted = this.gate.admit(address);
    if (isRefusal(admitted)) {
      this.options.log(`replica port: refused ${address}:${socket.remotePort ?? "?"} at once: ${admitted.refused}`);
      socket.destroy();
      return;
    }
    const key = peerKey(socket);
    const id = this.nextConnectionId++;
    const { authDeadlineMs } = this.options.limits;
    const entry: Pending = {
      id,
      peer: key,
      admission: admitted,
      socket,
      deadline: setTimeout(() => {
        this.logFor(entry.socket, `closed: not authenticated within ${authDeadlineMs} ms`);
        entry.socket.destroy();
        socket.destroy();
      }, authDeadlineMs),
    };
    entry.deadline.unref();
    this.pending.set(key, entry);
    this.track(socket, () => this.settle(key, entry));
    if (this.options.tls === undefined) this.handOver(socket, entry, undefined);
  }

  /** TLS is up and the client's certificate chains to the cluster CA: is it a host's, and not revoked? */
  private secured(socket: TLSSocket): void {
    const key = peerKey(socket);
    const entry = this.pending.get(key);
    if (entry === undefined) {
      socket.destroy(); // its deadline passed during the handshake's last step
      return;
    }
    entry.socket = socket;
    this.track(socket, () => this.settle(key, entry));
    const connection = new FrameConnection(socket);
    const refuse = (reason: string): void => {
      this.logFor(socket, `refused: ${reason}`);
      connection.refuse(reason);
    };
    if (!socket.authorized)
      return refuse(`client certificate not accepted: ${describeVerifyError(socket.authorizationError)}`);
    const peer = peerIdentity(socket);
    if (peer === undefined) return refuse("no verified client certificate");
    if (peer.kind !== "host")
      return refuse(
        `the replication port takes host certificates only, not the ${peer.kind} certificate of ${peer.name}`,
      );
    if (this.options.revoked?.(peer.serial))
      return refuse(`the certificate of host ${peer.name} (serial ${peer.serial}) is revoked`);
    this.handOver(socket, entry, peer, connection);
  }

  private handOver(
    socket: Socket,
    entry: Pending,
    peer: CertificateInfo | undefined,
    connection = new FrameConnection(socket),
  ): void {
    const key = peerKey(socket);
    this.onConnection({
      connection,
      peer,
      log: (line) => this.options.log(`replica conn ${entry.id} (${entry.peer}): ${line}`),
      authenticated: () => this.settle(key, entry),
    });
  }

  /** The connection authenticated or ended: its admission and deadline go. */
  private settle(key: string, entry: Pending): void {
    clearTimeout(entry.deadline);
    entry.admission.release();
    if (this.pending.get(key) === entry) this.pending.delete(key);
  }

  private track(socket: Socket, onClose: () => void): void {
    this.sockets.add(socket);
    socket.once("close", () => {
      this.sockets.delete(socket);
      onClose();
    });
  }

  private logFor(socket: Socket, line: string): void {
    const key = peerKey(socket);
    this.options.log(`replica conn ${this.pending.get(key)?.id ?? "-"} (${key}): ${line}`);
  }
}

/** OpenSSL's verification code (node's authorizationError) with what it means for an operator. */
function describeVerifyError(error: Error | string | undefined): string {
  const code = typeof error === "string" ? error : (error?.message ?? "none sent");
  const meaning: Record<string, string> = {
    CERT_HAS_EXPIRED: "it has expired (renew it with 'haven cert issue')",
    CERT_NOT_YET_VALID: "it is not valid yet (check the clocks)",
    UNABLE_TO_VERIFY_LEAF_SIGNATURE: "it was not signed by this cluster's CA",
    UNABLE_TO_GET_ISSUER_CERT_LOCALLY: "it was not signed by this cluster's CA",
    UNABLE_TO_GET_ISSUER_CERT: "it was not signed by this cluster's CA",
    DEPTH_ZERO_SELF_SIGNED_CERT: "it is self-signed, not signed by this cluster's CA",
    CERT_SIGNATURE_FAILURE: "its signature does not verify against this cluster's CA",
  };
  return meaning[code] === undefined ? code : `${meaning[code]} (${code})`;
}

function peerKey(socket: Socket): string {
  return `${socket.remoteAddress ?? "unknown"}:${socket.remotePort ?? "?"}`;
}
