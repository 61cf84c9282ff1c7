// Every number of Haven's replication protocol (engine <-> replica server), in one place.
// Frames are: a fixed 48-byte header (big-endian), then `payloadLength` bytes of payload.

export const FRAME_MAGIC = 0x4856_5250; // "HVRP"
export const PROTOCOL_VERSION = 1;
export const FRAME_HEADER_BYTES = 48;
/** Largest payload a frame may carry: one maximum NBD write plus room for metadata. */
export const MAX_PAYLOAD_BYTES = 32 * 1024 * 1024 + 64 * 1024;

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
  /** Reply to any request, same requestId; status 0 or an error code with a message payload. */
  REPLY: 100,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

export const FRAME_TYPE_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(FrameType).map(([name, value]) => [value, name]),
);

export const FrameFlag = {
  /** Durable before the reply (FUA). */
  FUA: 1 << 0,
  /** OPEN_REPLICA: create the replica (size in `offset`) if it does not exist. */
  CREATE: 1 << 1,
} as const;

/** Status codes carried in REPLY frames. */
export const ReplyStatus = {
  OK: 0,
  STALE_EPOCH: 1,
  NO_SUCH_REPLICA: 2,
  OUT_OF_RANGE: 3,
  IO_ERROR: 4,
  BAD_REQUEST: 5,
  NOT_AUTHENTICATED: 6,
} as const;
