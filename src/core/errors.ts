// The registry of Haven's error codes. Every failure an operator or a client can see carries one of
// these codes: the CLI exit status, the HTTP status and the NBD errno are all derived from it, and the
// message says what to do next.

import { NbdErrno } from "../nbd/constants.js";

interface ErrorSpec {
  /** What went wrong, in general terms; the thrower adds the specifics. */
  readonly summary: string;
  readonly exitCode: number;
  readonly httpStatus: number;
  readonly nbdErrno: NbdErrno;
}

export const ERRORS = {
  HAVEN_ERR_USAGE: { summary: "invalid command line", exitCode: 2, httpStatus: 400, nbdErrno: NbdErrno.EINVAL },
  HAVEN_ERR_CONFIG: { summary: "invalid configuration", exitCode: 2, httpStatus: 400, nbdErrno: NbdErrno.EINVAL },
  HAVEN_ERR_NOT_FOUND: { summary: "not found", exitCode: 3, httpStatus: 404, nbdErrno: NbdErrno.EINVAL },
  HAVEN_ERR_INVALID_REQUEST: { summary: "invalid request", exitCode: 1, httpStatus: 400, nbdErrno: NbdErrno.EINVAL },
  HAVEN_ERR_CONFLICT: {
    summary: "conflicts with an operation in progress",
    exitCode: 1,
    httpStatus: 409,
    nbdErrno: NbdErrno.EINVAL,
  },
  HAVEN_ERR_OUT_OF_RANGE: {
    summary: "request past the end of the device",
    exitCode: 1,
    httpStatus: 400,
    nbdErrno: NbdErrno.EINVAL,
  },
  HAVEN_ERR_NO_SPACE: {
    summary: "write past the end of the device",
    exitCode: 1,
    httpStatus: 507,
    nbdErrno: NbdErrno.ENOSPC,
  },
  HAVEN_ERR_READ_ONLY: { summary: "the device is read-only", exitCode: 1, httpStatus: 403, nbdErrno: NbdErrno.EPERM },
  HAVEN_ERR_NOT_SUPPORTED: {
    summary: "operation not supported",
    exitCode: 1,
    httpStatus: 501,
    nbdErrno: NbdErrno.ENOTSUP,
  },
  HAVEN_ERR_TOO_LARGE: { summary: "request too large", exitCode: 1, httpStatus: 413, nbdErrno: NbdErrno.EOVERFLOW },
  HAVEN_ERR_IO: { summary: "I/O error on the backing store", exitCode: 1, httpStatus: 500, nbdErrno: NbdErrno.EIO },
  HAVEN_ERR_UNAVAILABLE: {
    summary: "a required service is unreachable",
    exitCode: 1,
    httpStatus: 503,
    nbdErrno: NbdErrno.EIO,
  },
  HAVEN_ERR_UNAUTHORIZED: {
    summary: "missing or wrong credentials",
    exitCode: 2,
    httpStatus: 401,
    nbdErrno: NbdErrno.EPERM,
  },
  HAVEN_ERR_SHUTTING_DOWN: {
    summary: "the server is shutting down",
    exitCode: 1,
    httpStatus: 503,
    nbdErrno: NbdErrno.ESHUTDOWN,
  },
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERRORS;

export class HavenError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, detail: string, options?: { cause?: unknown }) {
    super(`${detail}`, options);
    this.name = "HavenError";
    this.code = code;
  }
  get exitCode(): number {
    return ERRORS[this.code].exitCode;
  }
  get httpStatus(): number {
    return ERRORS[this.code].httpStatus;
  }
  get nbdErrno(): NbdErrno {
    return ERRORS[this.code].nbdErrno;
  }
}

/** Maps an errno-style failure from the operating system onto the registry. */
export function fromSystemError(error: unknown, what: string): HavenError {
  if (error instanceof HavenError) return error;
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  const text = error instanceof Error ? error.message : String(error);
  switch (code) {
    case "ENOSPC":
    case "EDQUOT":
    case "EFBIG":
      return new HavenError("HAVEN_ERR_NO_SPACE", `${what}: ${text}`, { cause: error });
    case "EROFS":
    case "EPERM":
    case "EACCES":
      return new HavenError("HAVEN_ERR_READ_ONLY", `${what}: ${text}`, { cause: error });
    case "EOPNOTSUPP":
    case "ENOTSUP":
      return new HavenError("HAVEN_ERR_NOT_SUPPORTED", `${what}: ${text}`, { cause: error });
    case "EINVAL":
      return new HavenError("HAVEN_ERR_INVALID_REQUEST", `${what}: ${text}`, { cause: error });
    default:
      return new HavenError("HAVEN_ERR_IO", `${what}: ${text}`, { cause: error });
  }
}
