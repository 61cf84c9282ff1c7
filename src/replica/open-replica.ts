// How the engine reaches a replica from the location an operator gave: "tcp://HOST:PORT" is a copy
// behind a replica server on another host (RemoteReplicaPort), anything else a directory on this
// host's disks (LocalReplicaPort). Either way the copy of volume NAME lives in LOCATION/NAME/.
// With a TLS identity, remote copies are reached over mutual TLS; the location holds only an
// address, so the caller says which host's certificate to expect there (serverName).

import { HavenError } from "../core/errors.js";
import type { TlsIdentity } from "../security/tls-identity.js";
import { LocalReplicaPort } from "./local-port.js";
import type { ReplicaOpener } from "./port.js";
import { parseTcpLocation, RemoteReplicaPort } from "./remote-port.js";
import { DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_REQUEST_TIMEOUT_MS } from "./replica-client.js";

export type ReplicaLocation =
  | { readonly kind: "local"; readonly directory: string }
  | { readonly kind: "remote"; readonly host: string; readonly port: number };

/** A URL scheme ("tcp://", "nbd://"...): such a location is never taken for a directory. */
const SCHEME = /^[a-z][a-z0-9+.-]*:\/\//i;

/**
 * What a --replica LOCATION names: tcp://HOST:PORT (a replica server) or a directory. A location with
 * any other scheme, a malformed tcp:// one, or an empty one is HAVEN_ERR_USAGE.
 */
export function parseReplicaLocation(text: string): ReplicaLocation {
  if (text.trim() === "") throw new HavenError("HAVEN_ERR_USAGE", "a replica location cannot be empty");
  if (!SCHEME.test(text)) return { kind: "local", directory: text };
  return { kind: "remote", ...parseTcpLocation(text) };
}

export interface ReplicaOpenerOptions {
  /** The cluster's shared secret; required for remote replicas. */
  readonly secret?: Buffer;
  readonly requestTimeoutMs?: number;
  readonly connectTimeoutMs?: number;
  readonly log?: (line: string) => void;
  /** This host's identity: remote copies are then reached over mutual TLS, and `serverName` is required. */
  readonly tls?: TlsIdentity;
  /**
   * The host name whose certificate the replica server at ADDRESS:PORT must present (from the cluster's
   * host records); throws a HavenError when no host of the cluster is known there.
   */
  readonly serverName?: (address: string, port: number) => string;
}

export function replicaOpener(options: ReplicaOpenerOptions): ReplicaOpener {
  return async (location, name, create) => {
    const parsed = parseReplicaLocation(location);
    if (parsed.kind === "local") return LocalReplicaPort.open(parsed.directory, name, create);
    if (options.secret === undefined)
      throw new HavenError("HAVEN_ERR_CONFIG", `a remote replica needs --secret-file (for ${location})`);
    if (options.tls !== undefined && options.serverName === undefined)
      throw new HavenError(
        "HAVEN_ERR_CONFIG",
        `a remote replica over TLS needs the host name its server's certificate carries (for ${location})`,
      );
    return RemoteReplicaPort.open(location, name, create, {
      ...(options.tls && { tls: options.tls, serverName: options.serverName?.(parsed.host, parsed.port) }),
      secret: options.secret,
      requestTimeoutMs: options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS,
      connectTimeoutMs: options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
      ...(options.log && { log: options.log }),
    });
  };
}
