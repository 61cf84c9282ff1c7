// The errno an NBD client sees for each of Haven's error codes (src/core/errors.ts). The NBD protocol
// carries only a small set of errnos (constants.ts); a guest's kernel turns each into its own error, so
// the choice matters: EIO makes QEMU stop the guest (werror=stop) where EINVAL would fail one request.

import type { ErrorCode } from "../core/errors.js";
import { HavenError } from "../core/errors.js";
import { NbdErrno } from "./constants.js";

const ERRNO_FOR_CODE: Record<ErrorCode, NbdErrno> = {
  HAVEN_ERR_USAGE: NbdErrno.EINVAL,
  HAVEN_ERR_CONFIG: NbdErrno.EINVAL,
  HAVEN_ERR_NOT_FOUND: NbdErrno.EINVAL,
  HAVEN_ERR_INVALID_REQUEST: NbdErrno.EINVAL,
  HAVEN_ERR_CONFLICT: NbdErrno.EINVAL,
  HAVEN_ERR_OUT_OF_RANGE: NbdErrno.EINVAL,
  HAVEN_ERR_NO_SPACE: NbdErrno.ENOSPC,
  HAVEN_ERR_READ_ONLY: NbdErrno.EPERM,
  HAVEN_ERR_STALE_EPOCH: NbdErrno.EIO,
  HAVEN_ERR_UNSAFE_START: NbdErrno.EIO,
  HAVEN_ERR_FENCED: NbdErrno.EIO,
  HAVEN_ERR_SPLIT_BRAIN: NbdErrno.EIO,
  HAVEN_ERR_NOT_SUPPORTED: NbdErrno.ENOTSUP,
  HAVEN_ERR_TOO_LARGE: NbdErrno.EOVERFLOW,
  HAVEN_ERR_IO: NbdErrno.EIO,
  HAVEN_ERR_UNAVAILABLE: NbdErrno.EIO,
  HAVEN_ERR_UNAUTHORIZED: NbdErrno.EPERM,
  HAVEN_ERR_FORBIDDEN: NbdErrno.EPERM,
  HAVEN_ERR_SHUTTING_DOWN: NbdErrno.ESHUTDOWN,
};

/** The errno for a failed request: the code's own, EIO for anything that is not a HavenError. */
export function nbdErrnoOf(error: unknown): NbdErrno {
  return error instanceof HavenError ? ERRNO_FOR_CODE[error.code] : NbdErrno.EIO;
}
