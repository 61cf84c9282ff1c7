/*
 * haven_io: the few Linux file-system calls Node.js does not expose, for the file block device.
 *
 *   fallocate(fd, mode, offset, length) -> Promise<void>   (runs on the libuv thread pool)
 *   startWriteback(fd, offset, length) -> Promise<void>  (sync_file_range WRITE, on the thread pool)
 *   seekData(fd, offset) -> number    lseek(SEEK_DATA); -1 when there is no data at or after offset
 *   seekHole(fd, offset) -> number    lseek(SEEK_HOLE); the file's end counts as a hole
 *   seekEnd(fd) -> number             size of a file or block device
 *   readNoWait(fd, buffer, position) / writeNoWait(...) -> bytes, or -1 if it would block
 *   sendFileReply(socketFd, header, fileFd, position, length) -> Promise<bytes sent>
 *   lockExclusive(fd) -> boolean      flock(LOCK_EX|LOCK_NB); false when another holder has it
 *   copyRange(fdIn, posIn, fdOut, posOut, length) -> Promise<bytes>  (copy_file_range, thread pool)
 *   writeSegments(fd, buffers, position, segmentBytes) -> Promise<bytes>  (pwritev per segment, pool)
 *
 * Errors reject or throw an Error whose `code` is the errno name (EOPNOTSUPP, EINVAL, ...) so the
 * TypeScript side can map it to an NBD error without parsing messages.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/falloc.h>
#include <node_api.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define CHECK(call)                                                                                \
  do {                                                                                             \
    if ((call) != napi_ok) {                                                                       \
      napi_throw_error(env, "EHAVEN_NAPI", "N-API call failed: " #call);                           \
      return NULL;                                                                                 \
    }                                                                                              \
  } while (0)

static const char *errno_name(int err) {
  switch (err) {
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case EINVAL: return "EINVAL";
    case EIO: return "EIO";
    case ENOSPC: return "ENOSPC";
    case EBADF: return "EBADF";
    case EFBIG: return "EFBIG";
    case EPERM: return "EPERM";
    case EROFS: return "EROFS";
    case ENXIO: return "ENXIO";
    case EINTR: return "EINTR";
    case ENODEV: return "ENODEV";
    case EAGAIN: return "EAGAIN";
    case EPIPE: return "EPIPE";
    case ECONNRESET: return "ECONNRESET";
    case ETIMEDOUT: return "ETIMEDOUT";
    case ESPIPE: return "ESPIPE";
    case EXDEV: return "EXDEV";
    case ENOSYS: return "ENOSYS";
    default: return "EUNKNOWN";
  }
}

static napi_value make_error(napi_env env, const char *syscall, int err) {
  napi_value code, message, error;
  char text[160];
  snprintf(text, sizeof text, "%s failed: %s", syscall, strerror(err));
  napi_create_string_utf8(env, errno_name(err), NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &message);
  napi_create_error(env, code, message, &error);
  napi_value errno_value;
  napi_create_int32(env, -err, &errno_value);
  napi_set_named_property(env, error, "errno", errno_value);
  return error;
}

static int get_args(napi_env env, napi_callback_info info, size_t expected, napi_value *argv) {
  size_t argc = expected;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != expected) {
    napi_throw_type_error(env, "EHAVEN_ARGS", "wrong number of arguments");
    return 0;
  }
  return 1;
}

static int get_int64(napi_env env, napi_value value, int64_t *out) {
  if (napi_get_value_int64(env, value, out) != napi_ok || *out < 0) {
    napi_throw_type_error(env, "EHAVEN_ARGS", "expected a non-negative integer");
    return 0;
  }
  return 1;
}

/* A system call on a byte range of a file, run on the thread pool: fallocate, or sync_file_range. */
typedef enum { RANGE_FALLOCATE, RANGE_WRITEBACK } range_op;

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  range_op op;
  int fd;
  int mode;
  int64_t offset;
  int64_t length;
  int err;
} range_job;

static void range_execute(napi_env env, void *data) {
  (void)env;
  range_job *job = data;
  int rc;
  do {
    if (job->op == RANGE_FALLOCATE)
      rc = fallocate(job->fd, job->mode, (off_t)job->offset, (off_t)job->length);
    else
      rc = sync_file_range(job->fd, (off64_t)job->offset, (off64_t)job->length, SYNC_FILE_RANGE_WRITE);
  } while (rc != 0 && errno == EINTR);
  job->err = rc == 0 ? 0 : errno;
}

static void range_complete(napi_env env, napi_status status, void *data) {
  range_job *job = data;
  if (status != napi_ok && job->err == 0) job->err = EIO;
  if (job->err == 0) {
    napi_value undefined;
    napi_get_undefined(env, &undefined);
    napi_resolve_deferred(env, job->deferred, undefined);
  } else {
    const char *syscall = job->op == RANGE_FALLOCATE ? "fallocate" : "sync_file_range";
    napi_reject_deferred(env, job->deferred, make_error(env, syscall, job->err));
  }
  napi_delete_async_work(env, job->work);
  free(job);
}

static napi_value queue_range_job(napi_env env, range_op op, int64_t fd, int64_t mode, int64_t offset,
                                  int64_t length) {
  range_job *job = calloc(1, sizeof *job);
  if (job == NULL) {
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  job->op = op;
  job->fd = (int)fd;
  job->mode = (int)mode;
  job->offset = offset;
  job->length = length;
  napi_value promise, name;
  CHECK(napi_create_promise(env, &job->deferred, &promise));
  CHECK(napi_create_string_utf8(env, op == RANGE_FALLOCATE ? "haven_fallocate" : "haven_writeback",
                                NAPI_AUTO_LENGTH, &name));
  CHECK(napi_create_async_work(env, NULL, name, range_execute, range_complete, job, &job->work));
  CHECK(napi_queue_async_work(env, job->work));
  return promise;
}

static napi_value js_fallocate(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!get_args(env, info, 4, argv)) return NULL;
  int64_t fd, mode, offset, length;
  if (!get_int64(env, argv[0], &fd) || !get_int64(env, argv[1], &mode) ||
      !get_int64(env, argv[2], &offset) || !get_int64(env, argv[3], &length))
    return NULL;
  return queue_range_job(env, RANGE_FALLOCATE, fd, mode, offset, length);
}

/* startWriteback(fd, offset, length): sync_file_range(SYNC_FILE_RANGE_WRITE), starting the disk
 * write of the range's dirty pages without waiting for it; a hint, not a durability point. */
static napi_value js_start_writeback(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv)) return NULL;
  int64_t fd, offset, length;
  if (!get_int64(env, argv[0], &fd) || !get_int64(env, argv[1], &offset) || !get_int64(env, argv[2], &length))
    return NULL;
  return queue_range_job(env, RANGE_WRITEBACK, fd, 0, offset, length);
}

/* copyRange(fdIn, positionIn, fdOut, positionOut, length): copy_file_range(2) on the thread pool,
 * repeated until `length` bytes are copied; the data moves inside the kernel, from one page cache to
 * the other, without a round trip through a user buffer. Resolves with the bytes copied (fewer when
 * the source ended); rejects with the errno (EXDEV, EINVAL, ENOSYS: the caller copies by hand). */
typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  int fd_in, fd_out;
  int64_t position_in, position_out, length, copied;
  int err;
} copy_job;

static void copy_execute(napi_env env, void *data) {
  (void)env;
  copy_job *job = data;
  while (job->copied < job->length) {
    loff_t in = (loff_t)(job->position_in + job->copied);
    loff_t out = (loff_t)(job->position_out + job->copied);
    ssize_t n = copy_file_range(job->fd_in, &in, job->fd_out, &out, (size_t)(job->length - job->copied), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      job->err = errno;
      return;
    }
    if (n == 0) return; /* the source ended */
    job->copied += n;
  }
}

static void copy_complete(napi_env env, napi_status status, void *data) {
  copy_job *job = data;
  if (status != napi_ok && job->err == 0) job->err = EIO;
  if (job->err == 0) {
    napi_value copied;
    napi_create_int64(env, job->copied, &copied);
    napi_resolve_deferred(env, job->deferred, copied);
  } else {
    napi_reject_deferred(env, job->deferred, make_error(env, "copy_file_range", job->err));
  }
  napi_delete_async_work(env, job->work);
  free(job);
}

static napi_value js_copy_range(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  if (!get_args(env, info, 5, argv)) return NULL;
  int64_t fd_in, position_in, fd_out, position_out, length;
  if (!get_int64(env, argv[0], &fd_in) || !get_int64(env, argv[1], &position_in) ||
      !get_int64(env, argv[2], &fd_out) || !get_int64(env, argv[3], &position_out) ||
      !get_int64(env, argv[4], &length))
    return NULL;
  copy_job *job = calloc(1, sizeof *job);
  if (job == NULL) {
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  job->fd_in = (int)fd_in;
  job->fd_out = (int)fd_out;
  job->position_in = position_in;
  job->position_out = position_out;
  job->length = length;
  napi_value promise, name;
  CHECK(napi_create_promise(env, &job->deferred, &promise));
  CHECK(napi_create_string_utf8(env, "haven_copy_range", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_create_async_work(env, NULL, name, copy_execute, copy_complete, job, &job->work));
  CHECK(napi_queue_async_work(env, job->work));
  return promise;
}

static napi_value seek(napi_env env, napi_callback_info info, int whence, const char *syscall) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv)) return NULL;
  int64_t fd, offset;
  if (!get_int64(env, argv[0], &fd) || !get_int64(env, argv[1], &offset)) return NULL;
  off_t result = lseek((int)fd, (off_t)offset, whence);
  if (result < 0) {
    if (errno == ENXIO) result = -1; /* no data (or hole) at or after offset */
    else {
      napi_throw(env, make_error(env, syscall, errno));
      return NULL;
    }
  }
  napi_value value;
  CHECK(napi_create_int64(env, (int64_t)result, &value));
  return value;
}

static napi_value js_seek_data(napi_env env, napi_callback_info info) {
  return seek(env, info, SEEK_DATA, "lseek(SEEK_DATA)");
}

static napi_value js_seek_hole(napi_env env, napi_callback_info info) {
  return seek(env, info, SEEK_HOLE, "lseek(SEEK_HOLE)");
}

/*
 * preadv2/pwritev2 with RWF_NOWAIT on the calling thread: the page-cache fast path. Returns the byte
 * count, or -1 when the call would block (data not cached, or the file system cannot promise not to
 * block), in which case the caller goes to the thread pool. Never blocks the event loop on the disk.
 * Arguments: fd, buffer, position.
 */
static napi_value nowait_io(napi_env env, napi_callback_info info, int writing) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv)) return NULL;
  int64_t fd, position;
  void *data;
  size_t length;
  if (!get_int64(env, argv[0], &fd) || !get_int64(env, argv[2], &position)) return NULL;
  if (napi_get_buffer_info(env, argv[1], &data, &length) != napi_ok) {
    napi_throw_type_error(env, "EHAVEN_ARGS", "expected a Buffer");
    return NULL;
  }
  struct iovec iov = {.iov_base = data, .iov_len = length};
  ssize_t result;
  do {
    result = writing ? pwritev2((int)fd, &iov, 1, (off_t)position, RWF_NOWAIT)
                     : preadv2((int)fd, &iov, 1, (off_t)position, RWF_NOWAIT);
  } while (result < 0 && errno == EINTR);
  if (result < 0) {
    if (errno == EAGAIN || errno == EOPNOTSUPP) result = -1;
    else {
      napi_throw(env, make_error(env, writing ? "pwritev2" : "preadv2", errno));
      return NULL;
    }
  }
  napi_value value;
  CHECK(napi_create_int64(env, (int64_t)result, &value));
  return value;
}

static napi_value js_read_nowait(napi_env env, napi_callback_info info) { return nowait_io(env, info, 0); }
static napi_value js_write_nowait(napi_env env, napi_callback_info info) { return nowait_io(env, info, 1); }

/*
 * writeSegments(fd, buffers, position, segmentBytes) -> Promise<number>
 * On a thread-pool thread: writes the buffers back to back from `position`, one pwritev per aligned
 * segment of `segmentBytes` of the file (the first and last may be shorter). Why not one pwritev:
 * Linux sizes the page-cache folios a buffered write creates by the write's length, and on ext4 a
 * later 4 KiB write into a 1 MiB folio walks all 256 of its block heads (measured here: 14 us per
 * 4 KiB write against 5 us in 64 KiB folios), and the kernel counts the whole folio dirty. Keeping
 * writes to 64 KiB keeps folios at 64 KiB, in one pool job. Resolves with the bytes written (all of
 * them); rejects with the errno's name in `code` and the bytes written before the failure in
 * `bytesWritten`. The buffers are kept alive by references until the job completes.
 */
typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref *refs;
  struct iovec *iov;
  uint32_t count;
  int fd;
  int64_t position;
  int64_t segment;
  int64_t total;
  int64_t written;
  int err;
} segments_job;

static void segments_execute(napi_env env, void *data) {
  (void)env;
  segments_job *job = data;
  uint32_t index = 0;
  size_t skip = 0; /* bytes of iov[index] already written */
  while (job->written < job->total) {
    int64_t at = job->position + job->written;
    int64_t boundary = (at / job->segment + 1) * job->segment;
    int64_t want = boundary - at;
    if (want > job->total - job->written) want = job->total - job->written;
    struct iovec parts[IOV_MAX < 1024 ? IOV_MAX : 1024];
    int used = 0;
    int64_t gathered = 0;
    uint32_t i = index;
    size_t offset = skip;
    while (gathered < want && i < job->count && used < (int)(sizeof parts / sizeof parts[0])) {
      size_t available = job->iov[i].iov_len - offset;
      size_t take = (int64_t)available > want - gathered ? (size_t)(want - gathered) : available;
      if (take > 0) {
        parts[used].iov_base = (char *)job->iov[i].iov_base + offset;
        parts[used].iov_len = take;
        used++;
        gathered += (int64_t)take;
      }
      if (take == available) {
        i++;
        offset = 0;
      } else {
        offset += take;
      }
    }
    ssize_t n = pwritev(job->fd, parts, used, (off_t)at);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      job->err = errno;
      return;
    }
    if (n == 0) {
      job->err = EIO;
      return;
    }
    job->written += n;
    /* Advance the cursor over what was written (a short write resumes mid-segment). */
    size_t left = (size_t)n;
    while (left > 0) {
      size_t available = job->iov[index].iov_len - skip;
      if (left >= available) {
        left -= available;
        index++;
        skip = 0;
      } else {
        skip += left;
        left = 0;
      }
    }
    while (index < job->count && job->iov[index].iov_len == skip) {
      index++;
      skip = 0;
    }
  }
}

static void segments_complete(napi_env env, napi_status status, void *data) {
  segments_job *job = data;
  if (status != napi_ok && job->err == 0) job->err = EIO;
  napi_value written;
  napi_create_int64(env, job->written, &written);
  if (job->err == 0) {
    napi_resolve_deferred(env, job->deferred, written);
  } else {
    napi_value error = make_error(env, "pwritev", job->err);
    napi_set_named_property(env, error, "bytesWritten", written);
    napi_reject_deferred(env, job->deferred, error);
  }
  for (uint32_t i = 0; i < job->count; i++) napi_delete_reference(env, job->refs[i]);
  napi_delete_async_work(env, job->work);
  free(job->refs);
  free(job->iov);
  free(job);
}

static napi_value js_write_segments(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!get_args(env, info, 4, argv)) return NULL;
  int64_t fd, position, segment;
  uint32_t count;
  bool is_array;
  if (!get_int64(env, argv[0], &fd) || !get_int64(env, argv[2], &position) || !get_int64(env, argv[3], &segment))
    return NULL;
  if (napi_is_array(env, argv[1], &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, argv[1], &count) != napi_ok || count == 0 || segment < 4096) {
    napi_throw_type_error(env, "EHAVEN_ARGS", "expected a non-empty array of Buffers and a segment of at least 4096 bytes");
    return NULL;
  }
  segments_job *job = calloc(1, sizeof *job);
  if (job != NULL) {
    job->refs = calloc(count, sizeof *job->refs);
    job->iov = calloc(count, sizeof *job->iov);
  }
  if (job == NULL || job->refs == NULL || job->iov == NULL) {
    if (job != NULL) { free(job->refs); free(job->iov); free(job); }
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  job->count = count;
  job->fd = (int)fd;
  job->position = position;
  job->segment = segment;
  for (uint32_t i = 0; i < count; i++) {
    napi_value element;
    void *bytes;
    size_t length;
    if (napi_get_element(env, argv[1], i, &element) != napi_ok ||
        napi_get_buffer_info(env, element, &bytes, &length) != napi_ok ||
        napi_create_reference(env, element, 1, &job->refs[i]) != napi_ok) {
      for (uint32_t j = 0; j < i; j++) napi_delete_reference(env, job->refs[j]);
      free(job->refs);
      free(job->iov);
      free(job);
      napi_throw_type_error(env, "EHAVEN_ARGS", "expected an array of Buffers");
      return NULL;
    }
    job->iov[i].iov_base = bytes;
    job->iov[i].iov_len = length;
    job->total += (int64_t)length;
  }
  napi_value promise, name;
  CHECK(napi_create_promise(env, &job->deferred, &promise));
  CHECK(napi_create_string_utf8(env, "haven_write_segments", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_create_async_work(env, NULL, name, segments_execute, segments_complete, job, &job->work));
  CHECK(napi_queue_async_work(env, job->work));
  return promise;
}

/*
 * sendFileReply(socketFd, header, fileFd, position, length) -> Promise<number>
 * On a thread-pool thread: sends `header`, then `length` bytes of the file from `position` with
 * sendfile(2), which hands page-cache pages to the socket without copying them through user space.
 * The socket is Node's, so non-blocking: when it is full the job stops and resolves with the bytes
 * sent so far, and the caller sends the rest through Node (which waits for room without holding a
 * pool thread). The caller owns the socket exclusively while this runs. A rejection carries
 * `bytesSent`, so the caller knows whether part of the reply went out (then the stream is broken).
 */
typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref header_ref;
  const char *header;
  size_t header_length;
  int socket_fd;
  int file_fd;
  int64_t position;
  int64_t length;
  int64_t sent;
  int err;
  const char *syscall;
} sendfile_job;

static void sendfile_execute(napi_env env, void *data) {
  (void)env;
  sendfile_job *job = data;
  size_t header_done = 0;
  while (header_done < job->header_length) {
    ssize_t n = send(job->socket_fd, job->header + header_done, job->header_length - header_done,
                     MSG_MORE | MSG_NOSIGNAL);
    if (n >= 0) {
      header_done += (size_t)n;
      job->sent += n;
      continue;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return;
    job->err = errno;
    job->syscall = "send";
    return;
  }
  off_t position = (off_t)job->position;
  int64_t remaining = job->length;
  while (remaining > 0) {
    ssize_t n = sendfile(job->socket_fd, job->file_fd, &position, (size_t)remaining);
    if (n > 0) {
      remaining -= n;
      job->sent += n;
      continue;
    }
    if (n == 0) { job->err = EIO; job->syscall = "sendfile (file ended early)"; return; }
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return;
    job->err = errno;
    job->syscall = "sendfile";
    return;
  }
}

static void sendfile_complete(napi_env env, napi_status status, void *data) {
  sendfile_job *job = data;
  if (status != napi_ok && job->err == 0) { job->err = EIO; job->syscall = "napi"; }
  if (job->err == 0) {
    napi_value sent;
    napi_create_int64(env, job->sent, &sent);
    napi_resolve_deferred(env, job->deferred, sent);
  } else {
    napi_value error = make_error(env, job->syscall, job->err), sent;
    napi_create_int64(env, job->sent, &sent);
    napi_set_named_property(env, error, "bytesSent", sent);
    napi_reject_deferred(env, job->deferred, error);
  }
  close(job->socket_fd);
  close(job->file_fd);
  napi_delete_reference(env, job->header_ref);
  napi_delete_async_work(env, job->work);
  free(job);
}

static napi_value js_send_file_reply(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  if (!get_args(env, info, 5, argv)) return NULL;
  int64_t socket_fd, file_fd, position, length;
  void *header;
  size_t header_length;
  if (!get_int64(env, argv[0], &socket_fd) || !get_int64(env, argv[2], &file_fd) ||
      !get_int64(env, argv[3], &position) || !get_int64(env, argv[4], &length))
    return NULL;
  if (napi_get_buffer_info(env, argv[1], &header, &header_length) != napi_ok) {
    napi_throw_type_error(env, "EHAVEN_ARGS", "expected a Buffer header");
    return NULL;
  }
  sendfile_job *job = calloc(1, sizeof *job);
  if (job == NULL) {
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  /*
   * Work on duplicates, made here on the calling thread while both descriptors are known to be open:
   * if Node closes the socket or Haven closes the file while the pool thread runs, the numbers could
   * be reused for something else, and sendfile must never write into an unrelated descriptor.
   */
  job->socket_fd = fcntl((int)socket_fd, F_DUPFD_CLOEXEC, 0);
  job->file_fd = job->socket_fd < 0 ? -1 : fcntl((int)file_fd, F_DUPFD_CLOEXEC, 0);
  if (job->socket_fd < 0 || job->file_fd < 0) {
    int err = errno;
    if (job->socket_fd >= 0) close(job->socket_fd);
    free(job);
    napi_throw(env, make_error(env, "dup", err));
    return NULL;
  }
  job->position = position;
  job->length = length;
  job->header = header;
  job->header_length = header_length;
  napi_value promise, name;
  CHECK(napi_create_reference(env, argv[1], 1, &job->header_ref));
  CHECK(napi_create_promise(env, &job->deferred, &promise));
  CHECK(napi_create_string_utf8(env, "haven_sendfile", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_create_async_work(env, NULL, name, sendfile_execute, sendfile_complete, job, &job->work));
  CHECK(napi_queue_async_work(env, job->work));
  return promise;
}

/* The size of a file or block device (lseek to the end; fstat reports 0 for block devices). */
static napi_value js_seek_end(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv)) return NULL;
  int64_t fd;
  if (!get_int64(env, argv[0], &fd)) return NULL;
  off_t result = lseek((int)fd, 0, SEEK_END);
  if (result < 0) {
    napi_throw(env, make_error(env, "lseek(SEEK_END)", errno));
    return NULL;
  }
  napi_value value;
  CHECK(napi_create_int64(env, (int64_t)result, &value));
  return value;
}

static napi_value js_lock_exclusive(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv)) return NULL;
  int64_t fd;
  if (!get_int64(env, argv[0], &fd)) return NULL;
  int locked = flock((int)fd, LOCK_EX | LOCK_NB) == 0;
  if (!locked && errno != EWOULDBLOCK) {
    napi_throw(env, make_error(env, "flock", errno));
    return NULL;
  }
  napi_value value;
  CHECK(napi_get_boolean(env, locked, &value));
  return value;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor properties[] = {
    {"fallocate", NULL, js_fallocate, NULL, NULL, NULL, napi_enumerable, NULL},
    {"startWriteback", NULL, js_start_writeback, NULL, NULL, NULL, napi_enumerable, NULL},
    {"seekData", NULL, js_seek_data, NULL, NULL, NULL, napi_enumerable, NULL},
    {"seekHole", NULL, js_seek_hole, NULL, NULL, NULL, napi_enumerable, NULL},
    {"seekEnd", NULL, js_seek_end, NULL, NULL, NULL, napi_enumerable, NULL},
    {"sendFileReply", NULL, js_send_file_reply, NULL, NULL, NULL, napi_enumerable, NULL},
    {"readNoWait", NULL, js_read_nowait, NULL, NULL, NULL, napi_enumerable, NULL},
    {"writeNoWait", NULL, js_write_nowait, NULL, NULL, NULL, napi_enumerable, NULL},
    {"lockExclusive", NULL, js_lock_exclusive, NULL, NULL, NULL, napi_enumerable, NULL},
    {"copyRange", NULL, js_copy_range, NULL, NULL, NULL, napi_enumerable, NULL},
    {"writeSegments", NULL, js_write_segments, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  CHECK(napi_define_properties(env, exports, sizeof properties / sizeof properties[0], properties));
  napi_value flags;
  CHECK(napi_create_object(env, &flags));
  const struct { const char *name; int value; } constants[] = {
    {"KEEP_SIZE", FALLOC_FL_KEEP_SIZE},
    {"PUNCH_HOLE", FALLOC_FL_PUNCH_HOLE},
    {"ZERO_RANGE", FALLOC_FL_ZERO_RANGE},
  };
  for (size_t i = 0; i < sizeof constants / sizeof constants[0]; i++) {
    napi_value v;
    CHECK(napi_create_int32(env, constants[i].value, &v));
    CHECK(napi_set_named_property(env, flags, constants[i].name, v));
  }
  CHECK(napi_set_named_property(env, exports, "FALLOC", flags));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
