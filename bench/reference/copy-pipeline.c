// bench/reference/copy-pipeline.c: what this machine allows for replicated 1 MiB writes, as the
// ceiling bench/replication compares the engine's two-copy ratios with.
//
// It moves the same bytes the benchmark's seq-write-1m workload moves, with nothing else: no NBD, no
// replication protocol, no metadata, no checks. A client process streams 1 MiB blocks over loopback
// TCP (as fio does through NBD, up to four in flight); the receiver reads each block into one of four
// buffers and writes it to every copy in 64 KiB pwrites (as the engine's FileDevice does), a thread per
// copy. A remote copy is a process of its own behind a second loopback TCP connection that reads each
// block, writes it the same way and acknowledges it with one byte (as the replica server does).
//
//   copy-pipeline one|two|remote DIR FILE_BYTES SECONDS
//
// one: one local copy (DIR/copy-1); two: two local copies (DIR/copy-1, DIR/copy-2); remote: one local
// copy and one in the remote process (DIR/copy-2). The first pass over FILE_BYTES is not timed: it
// fills the files (so the timed writes overwrite cached pages, as after the benchmark's prefill) and
// ends with an fdatasync of every copy. Then blocks are counted for SECONDS; a block counts once every
// copy wrote it. Prints one JSON line: {"mode":..., "bytes":..., "seconds":..., "bytesPerSecond":...}.

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BLOCK_BYTES (1L << 20)
#define SEGMENT_BYTES (64L * 1024)
#define IN_FLIGHT 4
#define MAX_COPIES 2

static void die(const char *format, ...) {
  va_list args;
  va_start(args, format);
  fprintf(stderr, "copy-pipeline: ");
  vfprintf(stderr, format, args);
  if (errno != 0) fprintf(stderr, ": %s", strerror(errno));
  fprintf(stderr, "\n");
  va_end(args);
  exit(1);
}

static double now_seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/** Returns 0 once `bytes` are read, -1 if the peer closed the connection first; dies on an error. */
static int read_fully(int fd, char *buffer, long bytes, const char *what) {
  for (long done = 0; done < bytes;) {
    ssize_t n = read(fd, buffer + done, (size_t)(bytes - done));
    if (n == 0) return -1;
    if (n < 0) {
      if (errno == EINTR) continue;
      die("%s: read", what);
    }
    done += n;
  }
  return 0;
}

/** Returns 0 once all bytes are sent, -1 if the peer went away (the normal end of the client). */
static int write_fully(int fd, const char *buffer, long bytes) {
  for (long done = 0; done < bytes;) {
    ssize_t n = write(fd, buffer + done, (size_t)(bytes - done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    done += n;
  }
  return 0;
}

static void write_block(int fd, const char *block, long offset) {
  for (long at = 0; at < BLOCK_BYTES; at += SEGMENT_BYTES) {
    if (pwrite(fd, block + at, SEGMENT_BYTES, offset + at) != SEGMENT_BYTES) die("pwrite at %ld", offset + at);
  }
}

static int open_copy(const char *dir, int number) {
  char path[4096];
  snprintf(path, sizeof path, "%s/copy-%d", dir, number);
  int fd = open(path, O_RDWR | O_CREAT, 0600);
  if (fd < 0) die("open %s", path);
  return fd;
}

static int listen_loopback(struct sockaddr_in *address) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) die("socket");
  memset(address, 0, sizeof *address);
  address->sin_family = AF_INET;
  address->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof *address;
  if (bind(fd, (struct sockaddr *)address, length) != 0) die("bind 127.0.0.1:0");
  if (listen(fd, 1) != 0) die("listen");
  if (getsockname(fd, (struct sockaddr *)address, &length) != 0) die("getsockname");
  return fd;
}

static int connect_loopback(const struct sockaddr_in *address) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  if (fd < 0) die("socket");
  if (connect(fd, (const struct sockaddr *)address, sizeof *address) != 0) die("connect");
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

static int accept_one(int listener) {
  int fd = accept(listener, NULL, NULL);
  int one = 1;
  if (fd < 0) die("accept");
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  close(listener);
  return fd;
}

/** The client: 1 MiB blocks of random-looking bytes, until the receiver closes the connection. */
static void run_client(const struct sockaddr_in *address) {
  int fd = connect_loopback(address);
  char *block = malloc(BLOCK_BYTES);
  if (block == NULL) die("malloc");
  uint64_t x = 0x9e3779b97f4a7c15ULL;
  for (long i = 0; i < BLOCK_BYTES; i += 8) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    memcpy(block + i, &x, 8);
  }
  while (write_fully(fd, block, BLOCK_BYTES) == 0) {
  }
  _exit(0);
}

/** The remote copy: read a block, write it, acknowledge it; block k goes to (k * 1 MiB) mod file size. */
static void run_remote(int fd, int file, long file_blocks) {
  char *block = aligned_alloc(4096, BLOCK_BYTES);
  if (block == NULL) die("aligned_alloc");
  for (long k = 0;; k++) {
    if (read_fully(fd, block, BLOCK_BYTES, "remote") != 0) _exit(0); /* the receiver is done */
    write_block(file, block, (k % file_blocks) * BLOCK_BYTES);
    if (k + 1 == file_blocks && fdatasync(file) != 0) die("remote: fdatasync");
    if (write_fully(fd, "k", 1) != 0) _exit(0);
  }
}

// ---- the receiver: the main thread reads blocks; one thread per copy writes (or forwards) them.

static struct {
  pthread_mutex_t lock;
  pthread_cond_t changed;
  long received;                /* blocks read into buffers so far */
  long written[MAX_COPIES];     /* blocks each copy has written (remote: acknowledged) */
  int stopping;
} state = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, {0, 0}, 0};

static char *buffers[IN_FLIGHT];
static int copies;
static int files[MAX_COPIES];
static int remote_fd = -1; /* copy 2 in remote mode */
static long file_blocks;

static long slowest_copy(void) {
  long slowest = state.written[0];
  for (int c = 1; c < copies; c++)
    if (state.written[c] < slowest) slowest = state.written[c];
  return slowest;
}

/** Waits until block k is received (returns 1) or the run is over with nothing left (returns 0). */
static int wait_received(long k) {
  pthread_mutex_lock(&state.lock);
  while (k >= state.received && !state.stopping) pthread_cond_wait(&state.changed, &state.lock);
  int more = k < state.received;
  pthread_mutex_unlock(&state.lock);
  return more;
}

static void note_written(int copy, long blocks) {
  pthread_mutex_lock(&state.lock);
  state.written[copy] = blocks;
  pthread_cond_broadcast(&state.changed);
  pthread_mutex_unlock(&state.lock);
}

static void *local_writer(void *argument) {
  int copy = (int)(intptr_t)argument;
  for (long k = 0; wait_received(k); k++) {
    write_block(files[copy], buffers[k % IN_FLIGHT], (k % file_blocks) * BLOCK_BYTES);
    if (k + 1 == file_blocks && fdatasync(files[copy]) != 0) die("fdatasync");
    note_written(copy, k + 1);
  }
  return NULL;
}

static void *remote_sender(void *argument) {
  (void)argument;
  for (long k = 0; wait_received(k); k++) {
    if (write_fully(remote_fd, buffers[k % IN_FLIGHT], BLOCK_BYTES) != 0) die("sending to the remote copy");
  }
  return NULL;
}

static void *remote_acknowledgements(void *argument) {
  (void)argument;
  char acks[256];
  long total = 0;
  for (;;) {
    ssize_t n = read(remote_fd, acks, sizeof acks);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return NULL;
    total += n;
    note_written(1, total);
  }
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: copy-pipeline one|two|remote DIR FILE_BYTES SECONDS\n");
    return 2;
  }
  const char *mode = argv[1];
  const char *dir = argv[2];
  long file_bytes = atol(argv[3]);
  double seconds = atof(argv[4]);
  int remote = strcmp(mode, "remote") == 0;
  if (strcmp(mode, "one") != 0 && strcmp(mode, "two") != 0 && !remote) {
    fprintf(stderr, "copy-pipeline: mode '%s' is not one, two or remote\n", mode);
    return 2;
  }
  if (file_bytes < BLOCK_BYTES || file_bytes % BLOCK_BYTES != 0 || !(seconds > 0)) {
    fprintf(stderr, "copy-pipeline: FILE_BYTES must be a positive multiple of 1 MiB, SECONDS positive\n");
    return 2;
  }
  copies = strcmp(mode, "one") == 0 ? 1 : 2;
  file_blocks = file_bytes / BLOCK_BYTES;
  signal(SIGPIPE, SIG_IGN);

  struct sockaddr_in client_address;
  int client_listener = listen_loopback(&client_address);
  pid_t client = fork();
  if (client < 0) die("fork");
  if (client == 0) run_client(&client_address);
  int client_fd = accept_one(client_listener);

  pid_t remote_process = -1;
  if (remote) {
    struct sockaddr_in remote_address;
    int remote_listener = listen_loopback(&remote_address);
    remote_process = fork();
    if (remote_process < 0) die("fork");
    if (remote_process == 0) {
      close(client_fd);
      run_remote(connect_loopback(&remote_address), open_copy(dir, 2), file_blocks);
    }
    remote_fd = accept_one(remote_listener);
  }

  for (int i = 0; i < IN_FLIGHT; i++) {
    buffers[i] = aligned_alloc(4096, BLOCK_BYTES);
    if (buffers[i] == NULL) die("aligned_alloc");
  }
  pthread_t threads[MAX_COPIES + 1];
  int thread_count = 0;
  files[0] = open_copy(dir, 1);
  pthread_create(&threads[thread_count++], NULL, local_writer, (void *)(intptr_t)0);
  if (copies == 2 && !remote) {
    files[1] = open_copy(dir, 2);
    pthread_create(&threads[thread_count++], NULL, local_writer, (void *)(intptr_t)1);
  } else if (remote) {
    pthread_create(&threads[thread_count++], NULL, remote_sender, NULL);
    pthread_create(&threads[thread_count++], NULL, remote_acknowledgements, NULL);
  }

  double started = 0;
  long counted_from = -1;
  for (long k = 0;; k++) {
    pthread_mutex_lock(&state.lock);
    // A buffer is reused once every copy wrote the block it held; the first pass ends with every
    // copy's fdatasync, and only then does the clock start.
    while (k - slowest_copy() >= IN_FLIGHT || (k == file_blocks && slowest_copy() < file_blocks))
      pthread_cond_wait(&state.changed, &state.lock);
    pthread_mutex_unlock(&state.lock);
    if (k == file_blocks) {
      counted_from = k;
      started = now_seconds();
    }
    if (counted_from >= 0 && now_seconds() - started >= seconds) break;
    if (read_fully(client_fd, buffers[k % IN_FLIGHT], BLOCK_BYTES, "client") != 0) {
      errno = 0;
      die("client: connection closed");
    }
    pthread_mutex_lock(&state.lock);
    state.received = k + 1;
    pthread_cond_broadcast(&state.changed);
    pthread_mutex_unlock(&state.lock);
  }
  pthread_mutex_lock(&state.lock);
  state.stopping = 1;
  pthread_cond_broadcast(&state.changed);
  while (slowest_copy() < state.received) pthread_cond_wait(&state.changed, &state.lock);
  long blocks = state.received - counted_from;
  pthread_mutex_unlock(&state.lock);
  double elapsed = now_seconds() - started;

  close(client_fd);
  if (remote) shutdown(remote_fd, SHUT_RDWR);
  for (int i = 0; i < thread_count; i++) pthread_join(threads[i], NULL);
  waitpid(client, NULL, 0);
  if (remote) waitpid(remote_process, NULL, 0);
  printf("{\"mode\":\"%s\",\"bytes\":%ld,\"seconds\":%.3f,\"bytesPerSecond\":%.0f}\n", mode, blocks * BLOCK_BYTES,
         elapsed, (double)(blocks * BLOCK_BYTES) / elapsed);
  return 0;
}
