// A copy whose disk turns read-only (the kernel remounts a file system read-only after an error, and
// every write then fails with EROFS) is a fault of that one copy (DESIGN.md: "a disk failure faults the
// copies on it, nothing more"): the volume keeps serving from the other copy, the client sees no error,
// and the engine is not fenced (only a stale epoch fences). For a local copy the engine sees
// HAVEN_ERR_READ_ONLY; for a remote one the replica server answers IO_ERROR (replica-session.ts).
// Twice: with EROFS raised by the data file's device (always), and with a real ext4 on a loop device
// remounted read-only by the kernel (needs root, losetup and mkfs.ext4).

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { FileDevice } from "../../src/block/file-device.js";
import { fromSystemError } from "../../src/core/errors.js";
import { VolumeEngine } from "../../src/engine/engine.js";
import { replicaOpener } from "../../src/replica/open-replica.js";
import { ReplicaServer } from "../../src/replica/replica-server.js";
import { tempDir } from "../helpers/server-process.js";

const SECRET = Buffer.from("read-only-copy-test-secret-0123456789");
const MiB = 1024 * 1024;

/** The error the kernel gives a write to a file system it remounted read-only. */
function erofs(syscall: string, path: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`EROFS: read-only file system, ${syscall} '${path}'`), {
    code: "EROFS",
    errno: -30,
    syscall,
    path,
  });
}

/**
 * Makes every data file under `root` fail its writes, flushes, trims and zeroing with EROFS, as
 * FileDevice reports it (fromSystemError: HAVEN_ERR_READ_ONLY). Returns the undo.
 */
function readOnlyDataFiles(root: string): () => void {
  const proto = FileDevice.prototype;
  const original = { write: proto.write, flush: proto.flush, trim: proto.trim, writeZeroes: proto.writeZeroes };
  const refuse = (device: FileDevice, what: string, syscall: string): Promise<never> =>
    Promise.reject(fromSystemError(erofs(syscall, device.path), `${what} ${device.path}`));
  proto.write = function (this: FileDevice, ...args: Parameters<FileDevice["write"]>) {
    return this.path.startsWith(root) ? refuse(this, "write to", "pwritev") : original.write.apply(this, args);
  };
  proto.flush = function (this: FileDevice) {
    return this.path.startsWith(root) ? refuse(this, "fdatasync", "fdatasync") : original.flush.apply(this);
  };
  proto.trim = function (this: FileDevice, ...args: Parameters<FileDevice["trim"]>) {
    return this.path.startsWith(root) ? refuse(this, "trim", "fallocate") : original.trim.apply(this, args);
  };
  proto.writeZeroes = function (this: FileDevice, ...args: Parameters<FileDevice["writeZeroes"]>) {
    return this.path.startsWith(root) ? refuse(this, "zero", "fallocate") : original.writeZeroes.apply(this, args);
  };
  return () => Object.assign(proto, original);
}

/** A file system on a loop device that the kernel can be made to remount read-only, or why not. */
function loopFileSystem(dir: string): { mountPoint: string; remountReadOnly(): void; remove(): void } | string {
  if (process.getuid?.() !== 0) return "needs root (losetup, mount)";
  const image = join(dir, "disk.img");
  const mountPoint = join(dir, "mnt");
  mkdirSync(mountPoint);
  let device: string;
  try {
    execFileSync("truncate", ["-s", "64M", image]);
    execFileSync("mkfs.ext4", ["-q", "-F", image], { stdio: "ignore" });
    device = execFileSync("losetup", ["-f", "--show", image]).toString().trim();
  } catch (error) {
    return `no loop device: ${(error as Error).message.split("\n")[0]}`;
  }
  try {
    execFileSync("mount", ["-o", "errors=remount-ro", device, mountPoint]);
  } catch (error) {
    execFileSync("losetup", ["-d", device]);
    return `cannot mount a loop device here: ${(error as Error).message.split("\n")[0]}`;
  }
  const trigger = `/sys/fs/ext4/${basename(device)}/trigger_fs_error`;
  if (!existsSync(trigger)) {
    execFileSync("umount", [mountPoint]);
    execFileSync("losetup", ["-d", device]);
    return `this kernel has no ${trigger}`;
  }
  return {
    mountPoint,
    // An ext4 error with errors=remount-ro: the journal aborts and every later write fails with EROFS.
    remountReadOnly: () => writeFileSync(trigger, "1"),
    remove: () => {
      try {
        execFileSync("umount", [mountPoint]);
      } catch {
        execFileSync("umount", ["-l", mountPoint]);
      }
      execFileSync("losetup", ["-d", device]);
    },
  };
}

/**
 * The promise itself: a volume over a healthy local copy and `readOnly` (a local directory or a
 * remote replica server); `turnReadOnly` makes its disk refuse writes. Client writes, a FUA write, a
 * trim and flushes all succeed; the copy is faulted with a read-only reason; nothing is fenced.
 */
async function readOnlyCopyIsFaulted(
  healthy: string,
  readOnly: string,
  turnReadOnly: () => void,
  reason: RegExp,
): Promise<void> {
  const logs: string[] = [];
  const engine = new VolumeEngine({
    name: "vol",
    locations: [healthy, readOnly],
    opener: replicaOpener({ secret: SECRET, requestTimeoutMs: 5000, connectTimeoutMs: 2000 }),
    sizeBytes: 16 * MiB,
    reconnectMs: 60_000,
    writebackMs: 0,
    log: (line) => logs.push(line),
  });
  await engine.start();
  try {
    await engine.write(0, Buffer.alloc(65536, 1));
    await engine.flush();
    assert.equal(engine.status().state, "healthy");
    turnReadOnly();
    await engine.write(MiB, Buffer.alloc(65536, 2));
    await engine.write(2 * MiB, Buffer.alloc(4096, 3), { fua: true });
    await engine.trim(0, 4096);
    await engine.flush();
    const status = engine.status();
    const copy = status.replicas[1]!;
    assert.equal(copy.state, "faulted", JSON.stringify(status.replicas));
    assert.match(copy.reason ?? "", reason);
    assert.equal(status.replicas[0]!.state, "in-sync");
    assert.equal(engine.fenced, null, "a read-only disk is not another engine taking over");
    assert.equal(status.state, "degraded");
    assert.equal(status.io.errors, 0, "the client saw no error");
    const back = Buffer.alloc(65536);
    await engine.read(MiB, back);
    assert.ok(back.equals(Buffer.alloc(65536, 2)));
    assert.ok(!logs.some((line) => /FENCED/.test(line)), logs.join("\n"));
  } finally {
    await engine.stop();
  }
}

test("a local copy whose disk returns EROFS is faulted; the volume serves on, unfenced, without a client error", async () => {
  const dir = tempDir("haven-erofs-");
  const readOnly = join(dir.path, "readonly");
  let undo = (): void => undefined;
  try {
    await readOnlyCopyIsFaulted(
      join(dir.path, "healthy"),
      readOnly,
      () => (undo = readOnlyDataFiles(readOnly)),
      /failed: .*EROFS: read-only file system/,
    );
  } finally {
    undo();
    dir.remove();
  }
});

test("a remote copy whose disk returns EROFS is faulted (the replica server answers IO_ERROR); the volume serves on, unfenced", async () => {
  const dir = tempDir("haven-erofs-");
  const remoteDir = join(dir.path, "remote");
  const serverLogs: string[] = [];
  const server = new ReplicaServer({ directory: remoteDir, secret: SECRET, log: (line) => serverLogs.push(line) });
  const address = await server.listen("127.0.0.1", 0);
  let undo = (): void => undefined;
  try {
    await readOnlyCopyIsFaulted(
      join(dir.path, "healthy"),
      `tcp://${address}`,
      () => (undo = readOnlyDataFiles(remoteDir)),
      /failed: .*(IO_ERROR|read-only)/,
    );
    assert.ok(
      serverLogs.some((line) => /refused \(IO_ERROR\).*EROFS/.test(line)),
      `the server logged the EROFS:\n${serverLogs.join("\n")}`,
    );
  } finally {
    undo();
    await server.stop();
    dir.remove();
  }
});

test("a local copy on a file system the kernel remounts read-only is faulted; the volume serves on, unfenced", async (t) => {
  const dir = tempDir("haven-erofs-loop-");
  const fs = loopFileSystem(dir.path);
  if (typeof fs === "string") {
    dir.remove();
    t.skip(fs);
    return;
  }
  try {
    await readOnlyCopyIsFaulted(
      join(dir.path, "healthy"),
      join(fs.mountPoint, "copies"),
      () => fs.remountReadOnly(),
      /read-only file system|EROFS/i,
    );
  } finally {
    fs.remove();
    dir.remove();
  }
});

test("a remote copy on a file system the kernel remounts read-only is faulted; the volume serves on, unfenced", async (t) => {
  const dir = tempDir("haven-erofs-loop-");
  const fs = loopFileSystem(dir.path);
  if (typeof fs === "string") {
    dir.remove();
    t.skip(fs);
    return;
  }
  const server = new ReplicaServer({ directory: join(fs.mountPoint, "remote"), secret: SECRET, log: () => undefined });
  const address = await server.listen("127.0.0.1", 0);
  try {
    await readOnlyCopyIsFaulted(
      join(dir.path, "healthy"),
      `tcp://${address}`,
      () => fs.remountReadOnly(),
      /failed: .*(IO_ERROR|read-only)/i,
    );
  } finally {
    await server.stop();
    fs.remove();
    dir.remove();
  }
});
