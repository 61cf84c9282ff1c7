// Who is calling an API, and whether their role allows the route. A caller is known by one of:
// - the cluster's API token (the host's own, from its config): the agent's administrator;
// - an operator's token, checked against the SHA-256 digests the operators' records hold;
// - a client certificate the cluster CA signed, presented over HTTPS: an operator's carries its role, a
//   host's is trusted as its administrator.
// Without any of them every path is the same 401 and reveals nothing; with a role too weak, 403 names
// the role needed.

import { timingSafeEqual } from "node:crypto";
import { bearerToken, digest } from "./auth.js";
import type { TLSSocket } from "node:tls";
import { HavenError } from "../core/errors.js";
import { peerIdentity } from "../security/tls-identity.js";
import { roleAllows, type Caller, type Role } from "../security/pki.js";

export type { Caller };

export interface CallerSources {
  /** The cluster's API token (the agent's own). */
  readonly clusterToken: string;
  /** The operator whose token has this SHA-256 (hex), if any is on record. */
  readonly operatorByDigest?: (digest: string) => Caller | undefined;
  /** Whether a certificate's serial (lower-case hex) was revoked. */
  readonly revoked?: (serial: string) => boolean;
}

/** Resolves a request's caller from its Authorization header and its TLS socket, or throws 401. */
export function callerResolver(sources: CallerSources): (authorization: string | undefined, socket: unknown) => Caller {
  const clusterDigest = digest(sources.clusterToken);
  return (authorization, socket) => {
    const token = bearerToken(authorization);
    if (token !== undefined) {
      const given = digest(token);
      if (timingSafeEqual(given, clusterDigest)) return { name: "cluster-token", role: "admin" };
      const operator = sources.operatorByDigest?.(given.toString("hex"));
      if (operator !== undefined) return operator;
    } else if (socket !== null && typeof socket === "object" && "getPeerX509Certificate" in socket) {
      const identity = peerIdentity(socket as TLSSocket);
      if (identity !== undefined && !(sources.revoked?.(identity.serial) ?? false)) {
        if (identity.kind === "host") return { name: identity.name, role: "admin" };
        if (identity.kind === "operator" && identity.role !== undefined)
          return { name: identity.name, role: identity.role };
      }
    }
    throw new HavenError(
      "HAVEN_ERR_UNAUTHORIZED",
      "a valid bearer token (the cluster's API token or an operator's) or an operator's certificate is required",
    );
  };
}

/** Throws HAVEN_ERR_FORBIDDEN unless `caller`'s role allows what needs `needs`. */
export function requireRole(caller: Caller, needs: Role, what: string): void {
  if (!roleAllows(caller.role, needs))
    throw new HavenError(
      "HAVEN_ERR_FORBIDDEN",
      `${what} needs the ${needs} role; ${caller.name} is ${/^[aeiou]/.test(caller.role) ? "an" : "a"} ${caller.role}`,
    );
}
