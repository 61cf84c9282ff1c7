// The real heartbeat connection for peer-links.ts: an authenticated replication connection to the
// peer's replica server (cluster secret, challenge-response both ways) that sends PING frames. A peer
// with another secret fails the authentication, which the link reports as its reason for being down.
// With a TLS identity the connection is mutual TLS, and the peer's certificate must name the peer.

import { FrameType } from "../replica/protocol/constants.js";
import { ReplicaClient } from "../replica/replica-client.js";
import type { TlsIdentity } from "../security/tls-identity.js";
import type { PingerFactory } from "./peer-links.js";

export function replicaPinger(secret: Buffer, log: (line: string) => void, tls?: TlsIdentity): PingerFactory {
  return async (peer, at, timeoutMs) => {
    const client = await ReplicaClient.connect(at.address, at.port, secret, {
      connectTimeoutMs: timeoutMs,
      requestTimeoutMs: timeoutMs,
      label: `host ${peer}'s replica server (${at.address}:${at.port})`,
      log,
      ...(tls && { tls, serverName: peer }),
    });
    return {
      ping: async () => {
        await client.request(FrameType.PING);
      },
      close: () => client.close(),
      get ended() {
        return client.closed !== undefined;
      },
    };
  };
}
