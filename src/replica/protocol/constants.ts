// Every number of Haven's replication protocol (engine <-> replica server), in one place.
// Frames are: a fixed 48-byte header (big-endian), then `payloadLength` bytes of payload.
//
// A connection: the server sends HELLO (a 32-byte challenge); the engine answers AUTH (its proof, then
// its own challenge); the server answers AUTH_OK (its proof). Then the engine sends requests, each with
// a fresh requestId, pipelined; every request gets exactly one REPLY with the same requestId, in any
// order. The first request must be OPEN_REPLICA: one connection serves one copy. Until AUTH_OK, a
// frame may carry at most MAX_HANDSHAKE_PAYLOAD_BYTES: a header announcing more ends the connection
// before its payload is read, so a peer that has not authenticated cannot make the other side buffer
// anything. A server refusing a peer before HELLO (a certificate it does not accept) sends one REPLY
// with status NOT_AUTHENTICATED and the reason, and closes.
//
// The link may run over mutual TLS (replica-listener.ts, replica-client.ts): the frames are the same,
// and AUTH still runs inside it (the shared secret and the certificate are two independent proofs).
//
// Requests (header fields not named are ignored and sent as zero; a request with a status, a flag it
// does not take or a payload it does not take is refused with BAD_REQUEST):
//   OPEN_REPLICA   payload: JSON { "name": volume name, "create"?: { "volumeId", "sizeBytes", "regionBytes" } };
//                  opens DIR/NAME/, creating it when `create` is given and there is none (never overwriting).
//                  Reply payload: the copy's metadata (JSON, ReplicaMetadata).
//   READ           offset, length (at most MAX_READ_BYTES). Reply payload: the bytes.
//   WRITE          epoch, offset, flags FUA; payload: the bytes (at most MAX_WRITE_BYTES).
//   TRIM           epoch, offset, length, flags FUA.
//   WRITE_ZEROES   epoch, offset, length, flags FUA.
//   FLUSH          makes every write completed before it durable.
//   GET_METADATA   reply payload: the copy's metadata (JSON).
//   SET_METADATA   epoch; payload: JSON MetadataPatch (keys generations, changedSince, activityLog, resync,
//                  inSyncCopies).
//                  Reply payload: the new metadata (JSON), durable before the reply.
//   CHECKSUM       offset, length (at most MAX_CHECKSUM_BYTES, or one region); payload: u32 regionBytes.
//                  Reply payload: one REGION_DIGEST_BYTES digest per region (the last may be partial).
//   BLOCK_STATUS   offset, length (> 0). Reply payload: extents, EXTENT_RECORD_BYTES each:
//                  u64 length | u8 flags (ExtentFlag) — consecutive from `offset`, at least one,
//                  together covering at least the first byte and at most `length` bytes.
//   PING           reply: empty.
//   GROW           epoch, offset = the copy's new size in bytes (never smaller: refused). Extends the data
//                  file with zeroes, then saves the metadata at the new size (bitmaps re-sized, grow.ts).
//                  Reply payload: the new metadata (JSON), durable before the reply. A server that
//                  predates GROW ends the connection (unknown type): the engine leaves that copy out
//                  until its host runs a Haven that knows it.
// A request from an epoch lower than the highest the copy has seen gets STALE_EPOCH and changes nothing.
// A frame with a bad magic, another version, an unknown type or a payload over MAX_PAYLOAD_BYTES ends
// its connection (the stream cannot be trusted past it). The server runs at most 64 requests / 64 MiB
// per connection at once and stops reading the socket beyond that (replica-session.ts).

export const FRAME_MAGIC = 0x4856_5250; // "HVRP"
/**
 * 2: copies are opened by volume name with a JSON OPEN_REPLICA; SET_METADATA, CHECKSUM, BLOCK_STATUS.
 * 3: metadata carries inSyncCopies (the in-sync set a copy belonged to), which a version 2 server refuses.
 */
export const PROTOCOL_VERSION = 3;
export const FRAME_HEADER_BYTES = 48;
/** Largest payload a frame may carry: one maximum NBD write plus room for metadata. */
export const MAX_PAYLOAD_BYTES = 32 * 1024 * 1024 + 64 * 1024;
/** Largest READ and WRITE in one frame; the engine's side splits larger ones. */
export const MAX_READ_BYTES = 32 * 1024 * 1024;
export const MAX_WRITE_BYTES = 32 * 1024 * 1024;
/** Most bytes one CHECKSUM frame may cover (bounds the server's work per request). */
export const MAX_CHECKSUM_BYTES = 64 * 1024 * 1024;
/** Largest checksum region a CHECKSUM frame may ask for (the server reads one region at a time). */
export const MAX_CHECKSUM_REGION_BYTES = 64 * 1024 * 1024;
/**
 * Largest payload of a frame before authentication: HELLO and AUTH_OK carry 32 bytes, AUTH 64, and a
 * refusal's reason is cut to fit (the engine shows at most 200 characters of it).
 */
export const MAX_HANDSHAKE_PAYLOAD_BYTES = 256;
/** Largest JSON payload of OPEN_REPLICA. */
export const MAX_OPEN_PAYLOAD_BYTES = 4096;
/** Bytes of one extent in a BLOCK_STATUS reply: u64 length, u8 flags. */
export const EXTENT_RECORD_BYTES = 9;

export const FrameType = {
  /** Server -> engine, first frame: a random challenge. */
  HELLO: 1,
  /** Engine -> server: HMAC of the challenge, and its own challenge for the server. */
  AUTH: 2,
  /** Server -> engine: HMAC of the engine's challenge (mutual authentication). */
  AUTH_OK: 3,
  OPEN_REPLICA: 10,
  READ: 11,
  WRITE: 12,
  FLUSH: 13,
  TRIM: 14,
  WRITE_ZEROES: 15,
  GET_METADATA: 16,
  SET_METADATA: 17,
  CHECKSUM: 18,
  PING: 19,
  BLOCK_STATUS: 20,
  GROW: 21,
  /** Reply to any request, same requestId; status 0 or an error code with a message payload. */
  REPLY: 100,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

export const FRAME_TYPE_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(FrameType).map(([name, value]) => [value, name]),
);

export const FrameFlag = {
  /** Durable before the reply (FUA): WRITE, TRIM, WRITE_ZEROES only. */
  FUA: 1 << 0,
} as const;

/** Flags of one extent in a BLOCK_STATUS reply; other bits must be zero. */
export const ExtentFlag = {
  /** Not allocated on the copy's disk. */
  HOLE: 1 << 0,
  /** Reads as zeroes. */
  ZERO: 1 << 1,
} as const;

/** Status codes carried in REPLY frames; an error reply's payload is the reason, UTF-8. */
export const ReplyStatus = {
  OK: 0,
  STALE_EPOCH: 1,
  NO_SUCH_REPLICA: 2,
  OUT_OF_RANGE: 3,
  IO_ERROR: 4,
  BAD_REQUEST: 5,
  NOT_AUTHENTICATED: 6,
} as const;
