// Every number of the NBD protocol that Haven uses, in one place (NetworkBlockDevice doc/proto.md).
// The handshake, the transmission phase and the tests all read their magics, flags and codes from here.

export const NBD_MAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT"
export const OPTION_REPLY_MAGIC = 0x0003e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags the server sends (u16) and the client echoes (u32). */
export const HandshakeFlag = {
  FIXED_NEWSTYLE: 1 << 0,
  NO_ZEROES: 1 << 1,
} as const;

export const Option = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

const REP_ERROR_BIT = 0x80000000;
export const OptionReply = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: REP_ERROR_BIT + 1,
  ERR_POLICY: REP_ERROR_BIT + 2,
  ERR_INVALID: REP_ERROR_BIT + 3,
  ERR_PLATFORM: REP_ERROR_BIT + 4,
  ERR_TLS_REQD: REP_ERROR_BIT + 5,
  ERR_UNKNOWN: REP_ERROR_BIT + 6,
  ERR_SHUTDOWN: REP_ERROR_BIT + 7,
  ERR_BLOCK_SIZE_REQD: REP_ERROR_BIT + 8,
  ERR_TOO_BIG: REP_ERROR_BIT + 9,
} as const;

export const Info = {
  EXPORT: 0,
  NAME: 1,
  DESCRIPTION: 2,
  BLOCK_SIZE: 3,
} as const;

/** Transmission flags (u16) sent with the export size. */
export const TransmissionFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const;

export const Command = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const;

export const COMMAND_NAMES: Record<number, string> = {
  0: "READ",
  1: "WRITE",
  2: "DISC",
  3: "FLUSH",
  4: "TRIM",
  5: "CACHE",
  6: "WRITE_ZEROES",
  7: "BLOCK_STATUS",
};

export const CommandFlag = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
} as const;

export const ReplyFlag = { DONE: 1 << 0 } as const;

export const ChunkType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: 32769,
  ERROR_OFFSET: 32770,
} as const;

/** Error values carried in replies (they are Linux errno numbers). */
export const NbdErrno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;
export type NbdErrno = (typeof NbdErrno)[keyof typeof NbdErrno];

export const BASE_ALLOCATION = "base:allocation";
export const BASE_ALLOCATION_CONTEXT_ID = 1;
export const AllocationState = { HOLE: 1 << 0, ZERO: 1 << 1 } as const;

export const Size = {
  REQUEST_HEADER: 28,
  SIMPLE_REPLY: 16,
  CHUNK_HEADER: 20,
  OPTION_HEADER: 16,
  OPTION_REPLY_HEADER: 20,
  MAX_STRING: 4096,
} as const;
