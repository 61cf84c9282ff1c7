// What the NBD front serves: a named export over a block device, and the limits every connection obeys.

import type { BlockDevice } from "../block/device.js";
import type { ServedRequests } from "../util/served-requests.js";

export interface NbdExport {
  readonly name: string;
  readonly description: string;
  readonly device: BlockDevice;
  /** Counts what the export served (requests, bytes, latency) when given: the metrics read it. */
  readonly served?: ServedRequests;
}

export interface NbdLimits {
  /** Largest READ or WRITE payload; also the advertised maximum block size. */
  readonly maxPayloadBytes: number;
  /** Requests a connection may have in flight before the server stops reading from it. */
  readonly maxInflightRequests: number;
  /** Payload bytes (write data and read buffers) a connection may hold before reading pauses. */
  readonly maxInflightBytes: number;
  /** Reply bytes queued on the socket before the server stops reading new requests. */
  readonly maxQueuedReplyBytes: number;
  /** Time a client has from connecting to entering transmission (TLS handshake included). */
  readonly handshakeTimeoutMs: number;
  readonly maxOptionsPerHandshake: number;
  readonly maxConnections: number;
  /**
   * Connections from one remote address (TCP only). Past it, a new connection from that address
   * replaces the oldest one of it still in the handshake, or is refused when all are past it.
   */
  readonly maxConnectionsPerAddress: number;
  /** Connections in the handshake at once, all addresses; past it the oldest handshake is dropped. */
  readonly maxHandshakes: number;
  /** WRITE payload bytes held by all connections together (see write-budget.ts). */
  readonly writeBudgetBytes: number;
  /** How long shutdown waits for in-flight requests before dropping connections. */
  readonly shutdownGraceMs: number;
  /** Minimum block size advertised (and enforced once a client asked for block sizes). */
  readonly minBlockBytes: number;
  readonly preferredBlockBytes: number;
}

export const DEFAULT_LIMITS: NbdLimits = {
  maxPayloadBytes: 32 * 1024 * 1024,
  maxInflightRequests: 128,
  maxInflightBytes: 64 * 1024 * 1024,
  maxQueuedReplyBytes: 64 * 1024 * 1024,
  // Real clients finish the handshake, TLS included, in milliseconds; 10 s leaves room for a loaded host.
  handshakeTimeoutMs: 10_000,
  maxOptionsPerHandshake: 256,
  maxConnections: 4096,
  maxConnectionsPerAddress: 64,
  maxHandshakes: 256,
  writeBudgetBytes: 256 * 1024 * 1024,
  shutdownGraceMs: 10_000,
  minBlockBytes: 512,
  preferredBlockBytes: 4096,
};
