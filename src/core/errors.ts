// The registry of Haven's error codes. Every failure an operator or a client can see carries one of
// these codes, one code per condition: the CLI exit status and the HTTP status come from here, the NBD
// errno from the NBD front's own table (src/nbd/errno.ts, so this bottom layer imports nothing above it).
// The thrower's message says what happened and, where the operator can act, what to do next.

interface ErrorSpec {
  /** What went wrong, in general terms; the thrower adds the specifics. */
  readonly summary: string;
  readonly exitCode: number;
  readonly httpStatus: number;
}

export const ERRORS = {
  HAVEN_ERR_USAGE: { summary: "invalid command line", exitCode: 2, httpStatus: 400 },
  HAVEN_ERR_CONFIG: { summary: "invalid configuration", exitCode: 2, httpStatus: 400 },
  HAVEN_ERR_NOT_FOUND: { summary: "not found", exitCode: 3, httpStatus: 404 },
  HAVEN_ERR_INVALID_REQUEST: { summary: "invalid request", exitCode: 1, httpStatus: 400 },
  HAVEN_ERR_CONFLICT: { summary: "conflicts with an operation in progress", exitCode: 1, httpStatus: 409 },
  HAVEN_ERR_OUT_OF_RANGE: { summary: "request past the end of the device", exitCode: 1, httpStatus: 400 },
  HAVEN_ERR_NO_SPACE: { summary: "no space left for the data", exitCode: 1, httpStatus: 507 },
  /** The device or its filesystem refuses writes (opened read-only, or remounted read-only by the kernel). */
  HAVEN_ERR_READ_ONLY: { summary: "the device is read-only", exitCode: 1, httpStatus: 403 },
  /**
   * A copy has seen a higher epoch than the engine writing to it: another engine took the volume over.
   * Only this code fences an engine; a read-only disk is a fault of one copy, not a takeover.
   */
  HAVEN_ERR_STALE_EPOCH: {
    summary: "another engine with a higher epoch took this volume over",
    exitCode: 1,
    httpStatus: 409,
  },
  /**
   * A volume would start from a subset of its copies that its metadata cannot show holds every
   * acknowledged write (a missing copy may be newer): refused unless the operator forces it.
   */
  HAVEN_ERR_UNSAFE_START: {
    summary: "the reachable copies may lack acknowledged writes a missing copy holds",
    exitCode: 1,
    httpStatus: 409,
  },
  /** The engine stopped completing I/O: it was deposed, or its host can no longer prove its lease. */
  HAVEN_ERR_FENCED: { summary: "the volume's engine is fenced", exitCode: 1, httpStatus: 503 },
  /**
   * Copies of a volume took writes apart: neither holds everything the other does. Resolved only by
   * naming the survivor (--survivor, resolve-split-brain), or by the control plane when the copy
   * recorded in sync survives.
   */
  HAVEN_ERR_SPLIT_BRAIN: { summary: "the copies took writes apart (split brain)", exitCode: 1, httpStatus: 409 },
  HAVEN_ERR_NOT_SUPPORTED: { summary: "operation not supported", exitCode: 1, httpStatus: 501 },
  HAVEN_ERR_TOO_LARGE: { summary: "request too large", exitCode: 1, httpStatus: 413 },
  HAVEN_ERR_IO: { summary: "I/O error on the backing store", exitCode: 1, httpStatus: 500 },
  HAVEN_ERR_UNAVAILABLE: { summary: "a required service is unreachable", exitCode: 1, httpStatus: 503 },
  HAVEN_ERR_UNAUTHORIZED: { summary: "missing or wrong credentials", exitCode: 2, httpStatus: 401 },
  HAVEN_ERR_FORBIDDEN: { summary: "the operator's role does not allow it", exitCode: 2, httpStatus: 403 },
  HAVEN_ERR_SHUTTING_DOWN: { summary: "the server is shutting down", exitCode: 1, httpStatus: 503 },
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
}

/** Whether `error` is a HavenError with `code`. */
export function hasCode(error: unknown, code: ErrorCode): error is HavenError {
  return error instanceof HavenError && error.code === code;
}

/** The message of anything thrown: an Error's message, else the value as text. */
export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Maps an errno-style failure from the operating system onto the registry. */
export function fromSystemError(error: unknown, what: string): HavenError {
  if (error instanceof HavenError) return error;
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  const text = errorMessage(error);
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
