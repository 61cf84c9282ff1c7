// The stable disk endpoints of this host's VMs (DESIGN.md, "Virtual servers"): one unix socket per
// volume, DIR/<volume>.sock, that QEMU's NBD client opens and, after any failure, reopens. The address
// never moves; Haven moves what is behind it. Each endpoint has one route:
//
//   local   this host's engine serves the volume: the accepted connection is handed to the local NBD
//           front (NbdServer.serveConnection), which runs the same handshake and transmission as for a
//           listened connection, with no byte copied in between.
//   remote  the primary is another host: bytes are piped both ways to its NBD TCP port, with stream
//           backpressure (neither side buffers more than a socket's high-water mark), half-close passed
//           on, and an error on either side closing both.
//   none    no engine serves the volume right now (a failover or switchover is in progress): a new
//           connection is closed at once. QEMU's client counts that as a failed attempt and retries
//           (see vm/qemu-command.ts for reconnect-delay and what happens to in-flight I/O meanwhile).
//
// A connection is routed when it is accepted and stays on that route: when the route changes, every
// open connection is closed, so the client reconnects to the same socket and lands on the new route.
// A deposed primary therefore never keeps a VM's connection, and no request is ever split between two
// primaries.
//
// Trust: the directory is 0700 and each socket 0600, owned by Haven's user, so only Haven (and QEMU
// running as that user) can connect; the socket is bound before its mode is narrowed, which is safe
// because nobody else can enter the directory. The volume name is checked before it becomes a path.
// A stale socket file from a dead agent is replaced; a live one, or a path that is not a socket, is
// refused. This class owns the sockets and their connections; nothing else closes them.

import { chmodSync, lstatSync, mkdirSync, unlinkSync } from "node:fs";
import { connect, createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { errorMessage, HavenError } from "../core/errors.js";
import { isValidVolumeName } from "../replica/port.js";
import { removeStaleSocket } from "../util/unix-socket.js";
import type { Duplex } from "node:stream";
import type { ConnectionOptions } from "node:tls";
import { upgradeRelay } from "./nbd-tls-relay.js";

export type DiskRoute =
  | { readonly kind: "local" }
  | {
      readonly kind: "remote";
      readonly host: string;
      readonly port: number;
      /** The primary host's name: with TLS, its certificate must name it. */
      readonly name?: string;
      /** Keep the client's connection when the primary goes away, until the route changes (see pipeToRemote). */
      readonly hold?: boolean;
    }
  | { readonly kind: "none"; readonly reason: string };

/** The local NBD front as the endpoints see it: it takes over an accepted connection. */
export interface LocalNbdFront {
  serveConnection(socket: Socket, peer: string): void;
}

export interface DiskEndpointsOptions {
  /** The endpoints' directory; created (0700) if missing, and it must belong to this process's user. */
  readonly directory: string;
  readonly local: LocalNbdFront;
  readonly log?: (line: string) => void;
  /** How long a remote route may take to connect to the primary before the client's connection is closed. */
  readonly remoteConnectTimeoutMs?: number;
  /**
   * TLS for remote routes (the primary's NBD front beyond loopback insists on it): the client options
   * for a server that must be host `name`. Absent: remote routes pipe plain NBD.
   */
  readonly remoteTls?: (name: string) => ConnectionOptions;
  /** Open connections one endpoint accepts (QEMU opens one per disk; nbdcopy up to four). */
  readonly maxConnectionsPerVolume?: number;
}

export interface DiskEndpointStatus {
  readonly volume: string;
  readonly socketPath: string;
  readonly route: DiskRoute;
  /** Connections open through the endpoint now, all on `route`. */
  readonly connections: number;
  /** Connections accepted since the endpoint opened. */
  readonly accepted: number;
  /** Connections closed at once because the route was none or the endpoint was full. */
  readonly refused: number;
}

export const DEFAULT_REMOTE_CONNECT_TIMEOUT_MS = 5_000;
export const DEFAULT_MAX_CONNECTIONS_PER_VOLUME = 64;
/** How long a piped connection whose primary has closed may wait for the client to close its side. */
const CLOSE_LINGER_MS = 5_000;
/**
 * How long a held connection (route `hold`) whose primary has gone stays open for its client when the
 * route does not change meanwhile (a change closes it at once): long enough for a switchover on a
 * loaded host.
 */
const HOLD_LINGER_MS = 30_000;
/** Linux's bound on a unix socket path (sun_path is 108 bytes with the terminating NUL). */
const MAX_SOCKET_PATH_BYTES = 107;

const NOT_ROUTED: DiskRoute = { kind: "none", reason: "not routed yet" };

interface Endpoint {
  readonly volume: string;
  readonly socketPath: string;
  readonly server: Server;
  /** Resolves once the socket is bound and its mode narrowed; rejects if that failed. */
  readonly listening: Promise<void>;
  route: DiskRoute;
  /** Each open connection with the function that closes it (and its upstream, for a remote route). */
  readonly connections: Map<Socket, () => void>;
  accepted: number;
  refused: number;
}

export class DiskEndpoints {
  private readonly directory: string;
  private readonly local: LocalNbdFront;
  private readonly log: (line: string) => void;
  private readonly remoteConnectTimeoutMs: number;
  private readonly remoteTls: ((name: string) => ConnectionOptions) | undefined;
  private readonly maxConnectionsPerVolume: number;
  private readonly endpoints = new Map<string, Endpoint>();
  private stopped = false;

  constructor(options: DiskEndpointsOptions) {
    this.directory = options.directory;
    this.local = options.local;
    this.log = options.log ?? ((line) => process.stderr.write(`disk endpoints: ${line}\n`));
    this.remoteConnectTimeoutMs = options.remoteConnectTimeoutMs ?? DEFAULT_REMOTE_CONNECT_TIMEOUT_MS;
    this.remoteTls = options.remoteTls;
    this.maxConnectionsPerVolume = options.maxConnectionsPerVolume ?? DEFAULT_MAX_CONNECTIONS_PER_VOLUME;
    if (!(Number.isSafeInteger(this.remoteConnectTimeoutMs) && this.remoteConnectTimeoutMs > 0))
      throw new HavenError("HAVEN_ERR_CONFIG", `remoteConnectTimeoutMs must be a positive integer`);
    if (!(Number.isSafeInteger(this.maxConnectionsPerVolume) && this.maxConnectionsPerVolume > 0))
      throw new HavenError("HAVEN_ERR_CONFIG", `maxConnectionsPerVolume must be a positive integer`);
    prepareDirectory(this.directory);
  }

  /** Where volume's endpoint is (or would be); throws HAVEN_ERR_INVALID_REQUEST for a name unsafe as a file name. */
  socketPath(volume: string): string {
    if (typeof volume !== "string" || !isValidVolumeName(volume))
      throw new HavenError(
        "HAVEN_ERR_INVALID_REQUEST",
        `volume name ${JSON.stringify(String(volume).slice(0, 70))} cannot name a disk endpoint: ` +
          "use 1 to 63 of a-z, 0-9, '.', '_', '-'",
      );
    const path = join(this.directory, `${volume}.sock`);
    if (Buffer.byteLength(path) > MAX_SOCKET_PATH_BYTES)
      throw new HavenError(
        "HAVEN_ERR_CONFIG",
        `disk endpoint path ${path} is longer than the ${MAX_SOCKET_PATH_BYTES} bytes a unix socket allows; ` +
          "choose a shorter endpoint directory",
      );
    return path;
  }

  /**
   * Opens volume's endpoint, routed nowhere until route() says otherwise; resolves with its path once
   * clients can connect. Opening an open endpoint is a no-op.
   */
  async open(volume: string): Promise<string> {
    const socketPath = this.socketPath(volume);
    if (this.stopped)
      throw new HavenError("HAVEN_ERR_SHUTTING_DOWN", `disk endpoints are stopped; cannot open ${volume}`);
    const existing = this.endpoints.get(volume);
    if (existing) {
      await existing.listening;
      return existing.socketPath;
    }
    // Allow half-open: a client's FIN must not end our side before the replies to its last requests are out.
    const server = createServer({ allowHalfOpen: true }, (socket) => this.accept(endpoint, socket));
    const endpoint: Endpoint = {
      volume,
      socketPath,
      server,
      listening: this.bind(server, socketPath),
      route: NOT_ROUTED,
      connections: new Map(),
      accepted: 0,
      refused: 0,
    };
    this.endpoints.set(volume, endpoint);
    try {
      await endpoint.listening;
    } catch (error) {
      if (this.endpoints.get(volume) === endpoint) this.endpoints.delete(volume);
      throw error;
    }
    server.on("error", (error) => this.log(`${volume}: listener error: ${error.message}`));
    this.log(`${volume}: endpoint open at ${socketPath}`);
    return socketPath;
  }

  /**
   * Sends volume's new connections along `route`. When the route changes, every connection opened
   * along the old one is closed, so its client reconnects onto the new one; the same route again
   * changes nothing. Throws HAVEN_ERR_NOT_FOUND when the endpoint is not open.
   */
  route(volume: string, route: DiskRoute): void {
    const endpoint = this.endpoint(volume);
    const checked = checkRoute(volume, route);
    if (sameRoute(endpoint.route, checked)) return;
    const before = endpoint.route;
    endpoint.route = checked;
    const open = [...endpoint.connections.values()];
    for (const close of open) close();
    this.log(
      `${volume}: route ${describeRoute(before)} -> ${describeRoute(checked)}` +
        (open.length > 0 ? `; closed ${open.length} connection(s) on the old route` : ""),
    );
  }

  /** Closes volume's endpoint: its connections, its listener and its socket file. A closed one is a no-op. */
  async close(volume: string): Promise<void> {
    this.socketPath(volume);
    const endpoint = this.endpoints.get(volume);
    if (!endpoint) return;
    this.endpoints.delete(volume);
    await endpoint.listening.catch(() => undefined);
    const closed = new Promise<void>((resolve) => endpoint.server.close(() => resolve()));
    for (const close of [...endpoint.connections.values()]) close();
    await closed;
    // server.close() unlinks the socket file in Node; make sure, but never remove what is not a socket.
    try {
      if (lstatSync(endpoint.socketPath).isSocket()) unlinkSync(endpoint.socketPath);
    } catch {
      // already gone
    }
    this.log(`${volume}: endpoint closed`);
  }

  /** Closes every endpoint; later open() calls are refused. */
  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all([...this.endpoints.keys()].map((volume) => this.close(volume)));
  }

  /** The open endpoints, by volume name. */
  status(): DiskEndpointStatus[] {
    return [...this.endpoints.values()]
      .map((endpoint) => ({
        volume: endpoint.volume,
        socketPath: endpoint.socketPath,
        route: endpoint.route,
        connections: endpoint.connections.size,
        accepted: endpoint.accepted,
        refused: endpoint.refused,
      }))
      .sort((a, b) => (a.volume < b.volume ? -1 : a.volume > b.volume ? 1 : 0));
  }

  private endpoint(volume: string): Endpoint {
    this.socketPath(volume);
    const endpoint = this.endpoints.get(volume);
    if (!endpoint)
      throw new HavenError("HAVEN_ERR_NOT_FOUND", `volume ${volume} has no disk endpoint open on this host`);
    return endpoint;
  }

  private async bind(server: Server, socketPath: string): Promise<void> {
    await removeStaleSocket(socketPath);
    await new Promise<void>((resolve, reject) => {
      server.once("error", (error: NodeJS.ErrnoException) =>
        reject(
          new HavenError("HAVEN_ERR_CONFIG", `cannot listen on ${socketPath}: ${error.message}`, { cause: error }),
        ),
      );
      server.listen(socketPath, resolve);
    });
    try {
      chmodSync(socketPath, 0o600);
    } catch (error) {
      server.close();
      throw new HavenError("HAVEN_ERR_CONFIG", `cannot restrict ${socketPath} to mode 0600: ${errorMessage(error)}`, {
        cause: error,
      });
    }
  }

  private accept(endpoint: Endpoint, client: Socket): void {
    client.on("error", () => undefined); // each route reports errors its own way; none may crash the agent
    if (this.endpoints.get(endpoint.volume) !== endpoint) {
      client.destroy();
      return;
    }
    endpoint.accepted++;
    const route = endpoint.route;
    if (route.kind === "none" || endpoint.connections.size >= this.maxConnectionsPerVolume) {
      endpoint.refused++;
      this.log(
        `${endpoint.volume}: refused a connection: ` +
          (route.kind === "none"
            ? `no primary serves the volume (${route.reason})`
            : `${this.maxConnectionsPerVolume} connections already open`),
      );
      client.destroy();
      return;
    }
    if (route.kind === "local") {
      endpoint.connections.set(client, () => client.destroy());
      client.once("close", () => endpoint.connections.delete(client));
      this.local.serveConnection(client, `disk endpoint ${endpoint.volume}`);
      return;
    }
    this.pipeToRemote(endpoint, client, route);
  }

  /** Pipes `client` to the primary's NBD port; closing either side closes the other. */
  private pipeToRemote(
    endpoint: Endpoint,
    client: Socket,
    route: { host: string; port: number; name?: string; hold?: boolean },
  ): void {
    const target = `${route.host}:${route.port}`;
    const upstream = connect({ host: route.host, port: route.port, allowHalfOpen: true, noDelay: true });
    let closed = false;
    const closeBoth = (why?: string): void => {
      if (closed) return;
      closed = true;
      clearTimeout(connectTimer);
      if (why !== undefined) this.log(`${endpoint.volume}: connection to ${target} closed: ${why}`);
      client.destroy();
      upstream.destroy();
    };
    const connectTimer = setTimeout(
      () => closeBoth(`no connection within ${this.remoteConnectTimeoutMs} ms`),
      this.remoteConnectTimeoutMs,
    );
    upstream.once("connect", () => clearTimeout(connectTimer));
    endpoint.connections.set(client, () => closeBoth());
    client.once("close", () => {
      endpoint.connections.delete(client);
      // Nobody is left to read what the primary sends: drop the upstream connection.
      closeBoth();
    });
    // With `hold` (a live migration's destination, whose QEMU waits paused for the switch), the primary
    // going away (its engine stopped for the switchover) does not close the client's side at once: an
    // EOF now would have QEMU reconnect while the route still leads to the old primary, fail, and back
    // off for a second or more. Its side is closed when the route changes (to the new primary: QEMU's
    // next attempt lands there) or after a bound. Without `hold`, the primary's close is passed on
    // (a client that disconnects waits for it), and the client's own side closes soon after.
    const hold = route.hold === true;
    let piping = false;
    let upstreamGone = false;
    const upstreamEnded = (why?: string): void => {
      if (!piping || (!hold && why !== undefined)) return closeBoth(why);
      if (upstreamGone) return;
      upstreamGone = true;
      if (why !== undefined) this.log(`${endpoint.volume}: connection to ${target} lost: ${why}`);
      if (hold) upstream.destroy();
      setTimeout(() => closeBoth(), hold ? HOLD_LINGER_MS : CLOSE_LINGER_MS).unref();
    };
    upstream.once("close", () => {
      clearTimeout(connectTimer);
      upstreamEnded();
    });
    upstream.on("error", (error) => upstreamEnded(error.message));
    client.on("error", (error) => closeBoth(`client: ${error.message}`));
    // pipe() gives backpressure both ways (a full socket pauses the other side's reads); the client's
    // half-close is passed on, and the primary's too unless held (see above).
    const start = (remote: Duplex): void => {
      piping = true;
      client.pipe(remote);
      remote.pipe(client, { end: !hold });
    };
    const tls = route.name !== undefined ? this.remoteTls?.(route.name) : undefined;
    if (tls === undefined) {
      upstream.once("connect", () => start(upstream));
      return;
    }
    upstream.once("connect", () =>
      upgradeRelay(client, upstream, tls).then(
        (secure) => {
          secure.on("error", (error) => upstreamEnded(error.message));
          start(secure);
        },
        (error) => closeBoth(`TLS to the primary: ${errorMessage(error)}`),
      ),
    );
  }
}

/** The directory exists, is a real directory owned by this user, and has mode 0700. */
function prepareDirectory(directory: string): void {
  if (typeof directory !== "string" || !directory.startsWith("/"))
    throw new HavenError(
      "HAVEN_ERR_CONFIG",
      `disk endpoint directory must be an absolute path, got ${JSON.stringify(directory)}`,
    );
  try {
    mkdirSync(directory, { recursive: true, mode: 0o700 });
  } catch (error) {
    throw new HavenError(
      "HAVEN_ERR_CONFIG",
      `cannot create disk endpoint directory ${directory}: ${errorMessage(error)}`,
      {
        cause: error,
      },
    );
  }
  const stats = lstatSync(directory);
  if (!stats.isDirectory())
    throw new HavenError(
      "HAVEN_ERR_CONFIG",
      `disk endpoint directory ${directory} is not a directory (or is a symlink)`,
    );
  const uid = process.getuid?.();
  if (uid !== undefined && stats.uid !== uid)
    throw new HavenError(
      "HAVEN_ERR_CONFIG",
      `disk endpoint directory ${directory} belongs to uid ${stats.uid}, not to Haven's user (uid ${uid}); ` +
        "another user could replace its sockets",
    );
  chmodSync(directory, 0o700);
}

function checkRoute(volume: string, route: DiskRoute): DiskRoute {
  const bad = (detail: string): never => {
    throw new HavenError("HAVEN_ERR_INVALID_REQUEST", `route for volume ${volume}: ${detail}`);
  };
  switch (route?.kind) {
    case "local":
      return { kind: "local" };
    case "remote":
      if (typeof route.host !== "string" || route.host === "" || route.host.length > 255)
        bad(`remote host must be a host name or address, got ${JSON.stringify(route.host)}`);
      if (!Number.isSafeInteger(route.port) || route.port < 1 || route.port > 65_535)
        bad(`remote port must be an integer from 1 to 65535, got ${String(route.port)}`);
      return {
        kind: "remote",
        host: route.host,
        port: route.port,
        ...(route.name !== undefined && { name: route.name }),
        ...(route.hold === true && { hold: true }),
      };
    case "none":
      if (typeof route.reason !== "string") bad("a route to none needs a reason");
      return { kind: "none", reason: route.reason };
    default:
      return bad(
        `kind must be "local", "remote" or "none", got ${JSON.stringify((route as { kind?: unknown })?.kind)}`,
      );
  }
}

function sameRoute(a: DiskRoute, b: DiskRoute): boolean {
  if (a.kind === "remote" && b.kind === "remote") return a.host === b.host && a.port === b.port;
  if (a.kind === "none" && b.kind === "none") return a.reason === b.reason;
  return a.kind === b.kind;
}

export function describeRoute(route: DiskRoute): string {
  switch (route.kind) {
    case "local":
      return "local";
    case "remote":
      return `remote ${route.host}:${route.port}`;
    case "none":
      return `none (${route.reason})`;
  }
}
