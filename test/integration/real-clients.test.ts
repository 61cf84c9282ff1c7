// Haven's NBD server under the real clients people will point at it: nbdinfo, qemu-img, qemu-io,
// nbdcopy, fio's nbd engine and libnbd's Python bindings (nbdsh). Every test checks concrete
// values (sizes, flags, extents, bytes on both sides, errno names, per-connection counters from the
// server's log), never only an exit status. A test skips when its tool is missing, except in CI
// (CI=true), where a missing tool is a failure.

import { after, before, describe, test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { closeSync, openSync, readFileSync, readSync, statSync, truncateSync, writeFileSync, writeSync } from "node:fs";
import { open } from "node:fs/promises";
import { join } from "node:path";
import { haveTool, run, startServer, tempDir, type ServerHandle } from "../helpers/server-process.js";

const KiB = 1024;
const MiB = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------------------------

/** True when every tool is on PATH; otherwise skips the test (haveTool throws in CI instead). */
function needs(t: TestContext, ...tools: string[]): boolean {
  const missing = tools.filter((tool) => !haveTool(tool));
  if (missing.length === 0) return true;
  t.skip(`${missing.join(", ")} not installed`);
  return false;
}

let nbdPythonLookup: Promise<string | undefined> | undefined;

/**
 * The python3 that has libnbd's `nbd` module. /usr/bin/nbdsh runs whatever `python3` is first on
 * PATH, which may be another interpreter (pyenv, venv) without the module, so try the system one first.
 */
function findNbdPython(): Promise<string | undefined> {
  nbdPythonLookup ??= (async () => {
    for (const candidate of ["/usr/bin/python3", "python3"]) {
      try {
        if ((await run(candidate, ["-c", "import nbd"], { timeoutMs: 20_000 })).code === 0) return candidate;
      } catch {
        // not installed: try the next one
      }
    }
    return undefined;
  })();
  return nbdPythonLookup;
}

/** The interpreter to run nbdsh snippets with, or undefined after skipping the test. */
async function needsNbdsh(t: TestContext): Promise<string | undefined> {
  if (!needs(t, "nbdsh")) return undefined;
  const python = await findNbdPython();
  if (python !== undefined) return python;
  if (process.env.CI === "true") throw new Error("nbdsh is installed but no python3 can import the nbd module");
  t.skip("no python3 with libnbd's nbd module");
  return undefined;
}

/**
 * Runs a Python snippet in nbdsh (`python3 -m nbd -n -c CODE`); values reach it through the
 * environment and it must print one JSON object as its last line, which is returned.
 */
async function nbdsh<T>(python: string, code: string, env: Record<string, string>): Promise<T> {
  const result = await run(python, ["-m", "nbd", "-n", "-c", code], {
    env: { ...process.env, ...env },
    timeoutMs: 30_000,
  });
  assert.equal(result.code, 0, `nbdsh snippet failed:\n${result.stderr}\n${result.stdout}`);
  const lines = result.stdout.trim().split("\n");
  return JSON.parse(lines[lines.length - 1]!) as T;
}

/** Runs a tool that must succeed; returns its stdout. */
async function mustRun(command: string, args: string[], timeoutMs = 60_000): Promise<string> {
  const result = await run(command, args, { timeoutMs });
  assert.equal(
    result.code,
    0,
    `${command} ${args.join(" ")} exited with ${result.code}\nstdout:\n${result.stdout}\nstderr:\n${result.stderr}`,
  );
  return result.stdout;
}

/**
 * Runs qemu-io commands (plain byte numbers only) in one session and checks that every write, read
 * and discard printed its "N/N bytes at offset X" line, in order, and that no pattern check failed.
 */
async function qemuIo(uri: string, commands: string[]): Promise<string> {
  const result = await run("qemu-io", ["-f", "raw", ...commands.flatMap((command) => ["-c", command]), uri], {
    timeoutMs: 60_000,
  });
  const output = `${result.stdout}\n${result.stderr}`;
  assert.doesNotMatch(output, /Pattern verification failed/, `qemu-io found wrong data:\n${output}`);
  assert.doesNotMatch(output, /failed|error/i, `qemu-io reported an error:\n${output}`);
  assert.equal(result.code, 0, `qemu-io exited with ${result.code}:\n${output}`);
  let searchFrom = 0;
  for (const command of commands) {
    const words = command.split(/\s+/);
    const verb = words[0]!;
    if (verb === "flush") continue;
    const [offset, length] = words.slice(-2);
    const label = verb === "write" ? "wrote" : verb;
    const line = `${label} ${length}/${length} bytes at offset ${offset}`;
    const found = result.stdout.indexOf(line, searchFrom);
    assert.ok(found >= 0, `qemu-io did not print "${line}" for "${command}":\n${result.stdout}`);
    searchFrom = found + line.length;
  }
  return result.stdout;
}

interface ClosedConnection {
  id: number;
  requests: number;
  errors: number;
  bytesRead: number;
  bytesWritten: number;
}

/** The per-connection counters the server logs when a connection closes. */
function closedConnections(log: string): ClosedConnection[] {
  const pattern =
    /conn (\d+) \([^)]*\): closed: [^\n]*?; (\d+) requests, (\d+) errors, (\d+) bytes read, (\d+) bytes written/g;
  return [...log.matchAll(pattern)].map((match) => ({
    id: Number(match[1]),
    requests: Number(match[2]),
    errors: Number(match[3]),
    bytesRead: Number(match[4]),
    bytesWritten: Number(match[5]),
  }));
}

function openedConnections(log: string): number {
  return [...log.matchAll(/conn \d+ \([^)]*\): export "[^"]*" opened/g)].length;
}

/** Resolves once `predicate(log)` holds, re-checking whenever the server logs something. */
function waitForServerLog(
  server: ServerHandle,
  predicate: (log: string) => boolean,
  what: string,
  timeoutMs = 10_000,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const stream = server.process.stderr!;
    const cleanup = (): void => {
      clearTimeout(timer);
      stream.off("data", check);
    };
    const check = (): void => {
      if (predicate(server.log())) {
        cleanup();
        resolve();
      }
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`server log never showed ${what}; log:\n${server.log()}`));
    }, timeoutMs);
    stream.on("data", check);
    check();
  });
}

/**
 * Waits until at least `minimum` connections opened after `mark` (a log length) have closed, and
 * every connection that opened since then has logged its close; returns their counters.
 */
async function connectionsClosedSince(
  server: ServerHandle,
  mark: number,
  minimum: number,
): Promise<ClosedConnection[]> {
  await waitForServerLog(
    server,
    (log) => {
      const closed = closedConnections(log.slice(mark)).length;
      return closed >= minimum && closed >= openedConnections(log.slice(mark));
    },
    `${minimum} closed connections`,
  );
  return closedConnections(server.log().slice(mark));
}

/** A success-path server must not have refused, failed or dropped anything (in `log`, all it logged by default). */
function assertNoServerErrors(server: ServerHandle, log = server.log()): void {
  assert.doesNotMatch(log, / refused: | failed: |dropping connection/, `the server reported errors:\n${log}`);
  for (const connection of closedConnections(log)) {
    assert.equal(connection.errors, 0, `connection ${connection.id} had errors; log:\n${log}`);
  }
}

/** Stops a server and checks it shut down cleanly (exit status 0, "stopped cleanly" logged). */
async function stopCleanly(server: ServerHandle | undefined): Promise<void> {
  if (server === undefined) return;
  const code = await server.stop();
  assert.equal(code, 0, `server exited with ${code}; log:\n${server.log()}`);
}

/**
 * A describe block's teardown: stops every server (each one, whatever the checks find), checks the
 * error-free ones logged no error while the tests ran and that all shut down cleanly, and removes the
 * directories last.
 */
async function stopAndCheck(
  servers: { server: ServerHandle | undefined; errorFree: boolean }[],
  dirs: { remove(): void }[],
): Promise<void> {
  const logs = servers.map(({ server }) => server?.log());
  const stops = await Promise.allSettled(servers.map(({ server }) => stopCleanly(server)));
  for (const dir of dirs) dir.remove();
  servers.forEach(({ server, errorFree }, index) => {
    if (server !== undefined && errorFree) assertNoServerErrors(server, logs[index]);
  });
  for (const stop of stops) if (stop.status === "rejected") throw stop.reason;
}

/** Offset of the first differing byte, or -1 when equal (lengths must match too). */
function firstDifference(a: Buffer, b: Buffer): number {
  if (a.length === b.length && a.equals(b)) return -1;
  const length = Math.min(a.length, b.length);
  for (let offset = 0; offset < length; offset += 4096) {
    const end = Math.min(offset + 4096, length);
    if (!a.subarray(offset, end).equals(b.subarray(offset, end))) {
      for (let i = offset; i < end; i++) if (a[i] !== b[i]) return i;
    }
  }
  return length;
}

/** Streams two files and returns the offset of the first difference, or -1 when identical. */
async function compareFiles(pathA: string, pathB: string): Promise<number> {
  const [a, b] = [await open(pathA, "r"), await open(pathB, "r")];
  try {
    const [sizeA, sizeB] = [(await a.stat()).size, (await b.stat()).size];
    const chunk = 8 * MiB;
    const bufferA = Buffer.alloc(chunk);
    const bufferB = Buffer.alloc(chunk);
    for (let position = 0; position < Math.min(sizeA, sizeB); position += chunk) {
      const { bytesRead: readA } = await a.read(bufferA, 0, chunk, position);
      const { bytesRead: readB } = await b.read(bufferB, 0, chunk, position);
      const difference = firstDifference(bufferA.subarray(0, readA), bufferB.subarray(0, readB));
      if (difference >= 0) return position + difference;
    }
    return sizeA === sizeB ? -1 : Math.min(sizeA, sizeB);
  } finally {
    await a.close();
    await b.close();
  }
}

/** Writes a sparse file of `size` bytes holding `islands` (offset -> data) and nothing else. */
function writeSparseFile(path: string, size: number, islands: ReadonlyMap<number, Buffer>): void {
  const fd = openSync(path, "w");
  try {
    for (const [offset, data] of islands) writeSync(fd, data, 0, data.length, offset);
  } finally {
    closeSync(fd);
  }
  truncateSync(path, size);
}

/** `length` bytes of a file from `offset`. */
function readRange(path: string, offset: number, length: number): Buffer {
  const fd = openSync(path, "r");
  try {
    const buffer = Buffer.alloc(length);
    const bytesRead = readSync(fd, buffer, 0, length, offset);
    return buffer.subarray(0, bytesRead);
  } finally {
    closeSync(fd);
  }
}

function assertBytes(actual: Buffer, expected: Buffer, what: string): void {
  const difference = firstDifference(actual, expected);
  assert.equal(difference, -1, `${what}: first difference at byte ${difference}`);
}

interface NbdinfoExport {
  "export-name": string;
  description?: string;
  contexts: string[];
  is_read_only: boolean;
  is_rotational: boolean;
  can_cache: boolean;
  can_df: boolean;
  can_fast_zero: boolean;
  can_flush: boolean;
  can_fua: boolean;
  can_multi_conn: boolean;
  can_trim: boolean;
  can_zero: boolean;
  block_size_minimum: number;
  block_size_preferred: number;
  block_size_maximum: number;
  "export-size": number;
}

interface NbdinfoJson {
  protocol: string;
  TLS: boolean;
  structured: boolean;
  exports: NbdinfoExport[];
}

interface MapEntry {
  offset: number;
  length: number;
  type: number;
  description: string;
}

async function nbdinfoMap(uri: string): Promise<{ offset: number; length: number; description: string }[]> {
  const entries = JSON.parse(await mustRun("nbdinfo", ["--map", "--json", uri])) as MapEntry[];
  return entries.map(({ offset, length, description }) => ({
    offset,
    length,
    description,
  }));
}

interface FioSide {
  io_bytes: number;
  total_ios: number;
}

interface FioJob {
  jobname: string;
  error: number;
  read: FioSide;
  write: FioSide;
}

/**
 * Runs fio and parses its JSON (the nbd engine prints "fio: connected to NBD server" first). Verify
 * state files are not saved: fio would leave them in the current directory.
 */
async function fio(args: string[]): Promise<{ code: number | null; jobs: FioJob[]; stderr: string }> {
  const result = await run("fio", [...args, "--verify_state_save=0", "--output-format=json"], {
    timeoutMs: 60_000,
  });
  const start = result.stdout.indexOf("{");
  assert.ok(start >= 0, `fio printed no JSON (exit ${result.code}):\n${result.stdout}\n${result.stderr}`);
  const report = JSON.parse(result.stdout.slice(start)) as { jobs: FioJob[] };
  return { code: result.code, jobs: report.jobs, stderr: result.stderr };
}

// ---------------------------------------------------------------------------------------------
// nbdinfo: what the server advertises
// ---------------------------------------------------------------------------------------------

/** One server for a describe block: started before its tests, checked for errors and stopped after. */
function serveForSuite(prefix: string, size: string): () => ServerHandle {
  const dir = tempDir(prefix);
  let server: ServerHandle | undefined;
  before(async () => {
    server = await startServer({ dir: dir.path, size });
  });
  after(() => stopAndCheck([{ server, errorFree: true }], [dir]));
  return () => server!;
}

describe("nbdinfo", () => {
  const dir = tempDir("haven-real-nbdinfo-");
  const readOnlyDir = tempDir("haven-real-nbdinfo-ro-");
  const readOnlyFile = join(readOnlyDir.path, "ro.img");
  let server: ServerHandle | undefined;
  let readOnly: ServerHandle | undefined;

  before(async () => {
    writeFileSync(readOnlyFile, Buffer.alloc(MiB, 0x42));
    truncateSync(readOnlyFile, 8 * MiB);
    server = await startServer({
      dir: dir.path,
      size: "64M",
      extraArgs: ["--description", "Haven integration disk"],
    });
    readOnly = await startServer({
      dir: readOnlyDir.path,
      file: readOnlyFile,
      name: "ro",
      extraArgs: ["--read-only"],
    });
  });
  after(() =>
    stopAndCheck(
      [
        { server, errorFree: true },
        { server: readOnly, errorFree: false },
      ],
      [dir, readOnlyDir],
    ),
  );

  test("nbdinfo reports exactly the sizes, flags and contexts the server offers", async (t) => {
    if (!needs(t, "nbdinfo")) return;
    const info = JSON.parse(await mustRun("nbdinfo", ["--json", server!.uri])) as NbdinfoJson;
    assert.equal(info.protocol, "newstyle-fixed");
    assert.equal(info.TLS, false);
    assert.equal(info.structured, true);
    assert.equal(info.exports.length, 1);
    const disk = info.exports[0]!;
    assert.equal(disk["export-name"], "disk");
    assert.equal(disk.description, "Haven integration disk");
    assert.equal(disk["export-size"], 64 * MiB);
    assert.equal(disk["export-size"], statSync(server!.file).size, "export size is the backing file's size");
    assert.deepEqual(disk.contexts, ["base:allocation"]);
    assert.deepEqual(
      {
        is_read_only: disk.is_read_only,
        is_rotational: disk.is_rotational,
        can_multi_conn: disk.can_multi_conn,
        can_trim: disk.can_trim,
        can_zero: disk.can_zero,
        can_fua: disk.can_fua,
        can_flush: disk.can_flush,
        can_fast_zero: disk.can_fast_zero,
        can_cache: disk.can_cache,
        can_df: disk.can_df,
      },
      {
        is_read_only: false,
        is_rotational: false,
        can_multi_conn: true,
        can_trim: true,
        can_zero: true,
        can_fua: true,
        can_flush: true,
        can_fast_zero: true,
        can_cache: true,
        can_df: true,
      },
    );
    assert.deepEqual(
      [disk.block_size_minimum, disk.block_size_preferred, disk.block_size_maximum],
      [512, 4096, 32 * MiB],
    );
  });

  test("nbdinfo reaches the same export over the unix socket", async (t) => {
    if (!needs(t, "nbdinfo")) return;
    const uri = `nbd+unix:///${server!.name}?socket=${server!.socketPath}`;
    const info = JSON.parse(await mustRun("nbdinfo", ["--json", uri])) as NbdinfoJson;
    assert.equal(info.exports[0]!["export-name"], "disk");
    assert.equal(info.exports[0]!["export-size"], 64 * MiB);
    assert.equal(info.exports[0]!.can_multi_conn, true);
    assert.equal((await mustRun("nbdinfo", ["--size", uri])).trim(), String(64 * MiB));
  });

  test("nbdinfo --list shows the export's name and description", async (t) => {
    if (!needs(t, "nbdinfo")) return;
    const listing = JSON.parse(await mustRun("nbdinfo", ["--list", "--json", server!.uri])) as NbdinfoJson;
    assert.deepEqual(
      listing.exports.map((entry) => [entry["export-name"], entry.description, entry["export-size"]]),
      [["disk", "Haven integration disk", 64 * MiB]],
    );
  });

  test("nbdinfo --can answers yes (exit 0) for every advertised capability", async (t) => {
    if (!needs(t, "nbdinfo")) return;
    const capabilities = ["multi-conn", "write", "trim", "zero", "fast-zero", "fua", "flush", "cache", "df"];
    const codes: Record<string, number | null> = {};
    for (const capability of capabilities) {
      codes[capability] = (await run("nbdinfo", ["--can", capability, server!.uri])).code;
    }
    codes["is read-only"] = (await run("nbdinfo", ["--is", "read-only", server!.uri])).code;
    assert.deepEqual(codes, {
      ...Object.fromEntries(capabilities.map((c) => [c, 0])),
      "is read-only": 2,
    });
  });

  test("a --read-only export says is_read_only and offers no write, trim or zero (nbdinfo --can write exits 2)", async (t) => {
    if (!needs(t, "nbdinfo")) return;
    const info = JSON.parse(await mustRun("nbdinfo", ["--json", readOnly!.uri])) as NbdinfoJson;
    const ro = info.exports[0]!;
    assert.equal(ro["export-name"], "ro");
    assert.equal(ro["export-size"], 8 * MiB);
    assert.equal(ro.is_read_only, true);
    assert.equal(ro.can_trim, false);
    assert.equal(ro.can_zero, false);
    assert.equal(ro.can_fast_zero, false);
    assert.equal(ro.can_multi_conn, true);
    // man nbdinfo: "--can"/"--is" exit 0 when true, 2 when false, anything else is an error.
    assert.equal((await run("nbdinfo", ["--can", "write", readOnly!.uri])).code, 2);
    assert.equal((await run("nbdinfo", ["--can", "trim", readOnly!.uri])).code, 2);
    assert.equal((await run("nbdinfo", ["--is", "read-only", readOnly!.uri])).code, 0);
    assert.equal((await run("nbdinfo", ["--can", "read", readOnly!.uri])).code, 0);
  });
});

// ---------------------------------------------------------------------------------------------
// nbdinfo --map: block status follows writes and trims
// ---------------------------------------------------------------------------------------------

describe("nbdinfo --map", () => {
  const server = serveForSuite("haven-real-map-", "64M");

  test("the map shows one hole, then data exactly where 1 MiB was written, then a hole again after TRIM", async (t) => {
    if (!needs(t, "nbdinfo", "qemu-io")) return;
    const uri = server().uri;
    const hole = "hole,zero";
    const freshBlocks = statSync(server().file).blocks;
    assert.deepEqual(await nbdinfoMap(uri), [{ offset: 0, length: 64 * MiB, description: hole }]);

    await qemuIo(uri, [`write -P 0xab ${4 * MiB} ${MiB}`]);
    assert.deepEqual(await nbdinfoMap(uri), [
      { offset: 0, length: 4 * MiB, description: hole },
      { offset: 4 * MiB, length: MiB, description: "data" },
      { offset: 5 * MiB, length: 59 * MiB, description: hole },
    ]);
    const writtenBlocks = statSync(server().file).blocks;
    assert.ok(writtenBlocks - freshBlocks >= MiB / 512, `1 MiB allocated (${freshBlocks} -> ${writtenBlocks} blocks)`);
    assertBytes(
      readFileSync(server().file).subarray(4 * MiB, 5 * MiB),
      Buffer.alloc(MiB, 0xab),
      "backing file after write",
    );

    await qemuIo(uri, [`discard ${4 * MiB} ${MiB}`, `read -P 0 ${4 * MiB} ${MiB}`]);
    assert.deepEqual(await nbdinfoMap(uri), [{ offset: 0, length: 64 * MiB, description: hole }]);
    const trimmedBlocks = statSync(server().file).blocks;
    assert.ok(
      trimmedBlocks <= freshBlocks,
      `TRIM released the allocation (${freshBlocks} fresh, ${writtenBlocks} written, ${trimmedBlocks} trimmed blocks)`,
    );
  });
});

// ---------------------------------------------------------------------------------------------
// qemu-img: convert in, compare, convert out, map
// ---------------------------------------------------------------------------------------------

describe("qemu-img", () => {
  const dir = tempDir("haven-real-qemu-img-");
  const source = join(dir.path, "source.img");
  const copy = join(dir.path, "copy.img");
  let server: ServerHandle | undefined;

  before(async () => {
    server = await startServer({ dir: dir.path, size: "64M" });
    // 48 MiB of random data followed by a 16 MiB sparse tail: the same size as the export.
    writeSparseFile(source, 64 * MiB, new Map([[0, randomBytes(48 * MiB)]]));
  });
  after(() => stopAndCheck([{ server, errorFree: true }], [dir]));

  test("qemu-img convert copies 48 MiB of random data in; compare and a convert back out find identical bytes", async (t) => {
    if (!needs(t, "qemu-img", "qemu-io")) return;
    const uri = server!.uri;
    // Dirty the region the source leaves sparse, so convert must really zero it on the export.
    await qemuIo(uri, [`write -P 0xee ${56 * MiB} ${2 * MiB}`]);

    await mustRun("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", source, uri]);
    assert.equal(
      (await mustRun("qemu-img", ["compare", "-f", "raw", "-F", "raw", source, uri])).trim(),
      "Images are identical.",
    );
    assertBytes(readFileSync(server!.file), readFileSync(source), "backing file after convert");

    await mustRun("qemu-img", ["convert", "-f", "raw", "-O", "raw", uri, copy]);
    assertBytes(readFileSync(copy), readFileSync(source), "image converted back out");

    // compare must be able to fail: change one sector on the export and it notices exactly there.
    await qemuIo(uri, [`write -P 0x01 ${50 * MiB} 512`]);
    const mismatch = await run("qemu-img", ["compare", "-f", "raw", "-F", "raw", source, uri]);
    assert.equal(mismatch.code, 1, mismatch.stderr);
    assert.match(mismatch.stdout, new RegExp(`Content mismatch at offset ${50 * MiB}!`));
    await qemuIo(uri, [`write -z ${50 * MiB} 512`]);
  });

  test("qemu-img map over NBD reports data for the written 48 MiB and zeroes for the tail", async (t) => {
    if (!needs(t, "qemu-img")) return;
    await mustRun("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", source, server!.uri]);
    const entries = JSON.parse(await mustRun("qemu-img", ["map", "--output=json", "-f", "raw", server!.uri])) as {
      start: number;
      length: number;
      zero: boolean;
      data: boolean;
    }[];
    // Merge neighbours of the same kind: qemu may split ranges at arbitrary points.
    const merged: {
      start: number;
      length: number;
      zero: boolean;
      data: boolean;
    }[] = [];
    for (const { start, length, zero, data } of entries) {
      const previous = merged[merged.length - 1];
      if (previous !== undefined && previous.zero === zero && previous.data === data) previous.length += length;
      else merged.push({ start, length, zero, data });
    }
    assert.deepEqual(merged, [
      { start: 0, length: 48 * MiB, zero: false, data: true },
      { start: 48 * MiB, length: 16 * MiB, zero: true, data: false },
    ]);
  });
});

// ---------------------------------------------------------------------------------------------
// qemu-io: unaligned I/O, zeroes, discard, flush, FUA
// ---------------------------------------------------------------------------------------------

describe("qemu-io", () => {
  const server = serveForSuite("haven-real-qemu-io-", "64M");

  test("patterns written at unaligned offsets read back intact, next to untouched zeroes", async (t) => {
    if (!needs(t, "qemu-io")) return;
    const uri = server().uri;
    await qemuIo(uri, [
      "write -P 0x5a 1000 5000",
      "write -P 0xa5 70001 333",
      "read -P 0x5a 1000 5000",
      "read -P 0xa5 70001 333",
      "read -P 0 0 1000",
      "read -P 0 6000 64001",
      "read -P 0 70334 1000",
    ]);
    // A wrong pattern is reported, so the checks above can fail.
    const wrong = await run("qemu-io", ["-f", "raw", "-c", "read -P 0x5a 999 10", uri]);
    assert.match(wrong.stdout, /Pattern verification failed at offset 999, 10 bytes/);
    const file = readFileSync(server().file);
    assertBytes(file.subarray(1000, 6000), Buffer.alloc(5000, 0x5a), "backing file at 1000");
    assertBytes(file.subarray(70001, 70334), Buffer.alloc(333, 0xa5), "backing file at 70001");
    assertBytes(file.subarray(0, 1000), Buffer.alloc(1000), "backing file before 1000");
    assertBytes(file.subarray(6000, 70001), Buffer.alloc(64001), "backing file between the writes");
  });

  test("write -z, write -z -u and discard read back as zeroes; flush and FUA writes land", async (t) => {
    if (!needs(t, "qemu-io", "nbdinfo")) return;
    const uri = server().uri;
    const base = 8 * MiB;
    await qemuIo(uri, [
      `write -P 0x11 ${base} ${4 * MiB}`,
      // unaligned zeroes inside the data
      `write -z ${base + 3000} 2000`,
      `read -P 0x11 ${base} 3000`,
      `read -P 0 ${base + 3000} 2000`,
      `read -P 0x11 ${base + 5000} ${MiB - 5000}`,
      // zero that may unmap, and discard
      `write -z -u ${base + MiB} ${MiB}`,
      `discard ${base + 2 * MiB} ${MiB}`,
      `read -P 0 ${base + MiB} ${2 * MiB}`,
      `read -P 0x11 ${base + 3 * MiB} ${MiB}`,
      "flush",
      // FUA writes, aligned and not
      `write -f -P 0x33 ${base + 3 * MiB} ${64 * KiB}`,
      `write -f -P 0x44 ${base + 3 * MiB + 65537} 1234`,
      `read -P 0x33 ${base + 3 * MiB} ${64 * KiB}`,
      `read -P 0x44 ${base + 3 * MiB + 65537} 1234`,
      "flush",
    ]);
    const file = readFileSync(server().file);
    const expected = Buffer.alloc(4 * MiB, 0x11);
    expected.fill(0, 3000, 5000);
    expected.fill(0, MiB, 3 * MiB);
    expected.fill(0x33, 3 * MiB, 3 * MiB + 64 * KiB);
    expected.fill(0x44, 3 * MiB + 65537, 3 * MiB + 65537 + 1234);
    assertBytes(file.subarray(base, base + 4 * MiB), expected, "backing file after zero/discard/FUA");
    // The unmapping zero and the discard left a hole the block status reports.
    const map = await nbdinfoMap(uri);
    const inHole = map.find((entry) => entry.offset <= base + MiB && entry.offset + entry.length >= base + 3 * MiB);
    assert.equal(inHole?.description, "hole,zero", `map: ${JSON.stringify(map)}`);
  });
});

// ---------------------------------------------------------------------------------------------
// nbdcopy: multi-conn copies in and out
// ---------------------------------------------------------------------------------------------

describe("nbdcopy", () => {
  const dir = tempDir("haven-real-nbdcopy-");
  const size = 512 * MiB;
  const island = 8 * MiB;
  // nbdcopy hands each thread 128 MiB of work, so put data in every 128 MiB segment to keep all
  // four connections busy. A and B never overlap: copying B over A must zero A's islands.
  const islandsA = new Map([0, 1, 2, 3].map((i) => [i * 128 * MiB + 64 * MiB, randomBytes(island)] as const));
  const islandsB = new Map([0, 1, 2, 3].map((i) => [i * 128 * MiB + i * 16 * MiB, randomBytes(island)] as const));
  const imageA = join(dir.path, "a.img");
  const imageB = join(dir.path, "b.img");
  const out = join(dir.path, "out.img");
  let server: ServerHandle | undefined;

  before(async () => {
    server = await startServer({ dir: dir.path, size: "512M" });
    writeSparseFile(imageA, size, islandsA);
    writeSparseFile(imageB, size, islandsB);
  });
  after(() => stopAndCheck([{ server, errorFree: true }], [dir]));

  test("nbdcopy over 4 connections with 16 requests each copies data in and out byte-exactly", async (t) => {
    if (!needs(t, "nbdcopy", "nbdinfo")) return;
    const uri = server!.uri;
    const parallel = ["--connections=4", "--threads=4", "--requests=16"];

    let mark = server!.log().length;
    await mustRun("nbdcopy", [...parallel, imageA, uri]);
    const copyA = await connectionsClosedSince(server!, mark, 4);
    assert.equal(openedConnections(server!.log().slice(mark)), 4, "nbdcopy opened 4 connections");
    assert.equal(
      copyA.reduce((sum, c) => sum + c.bytesWritten, 0),
      4 * island,
      `every data byte written exactly once: ${JSON.stringify(copyA)}`,
    );
    assert.ok(
      copyA.filter((c) => c.bytesWritten > 0).length >= 2,
      `writes spread over several connections: ${JSON.stringify(copyA)}`,
    );
    for (const [offset, data] of islandsA) {
      assertBytes(readRange(server!.file, offset, data.length), data, `backing file island at ${offset}`);
    }

    mark = server!.log().length;
    await mustRun("nbdcopy", [...parallel, "--flush", imageB, uri]);
    await connectionsClosedSince(server!, mark, 4);
    await mustRun("nbdcopy", [...parallel, uri, out]);
    assert.equal(statSync(out).size, size);
    assert.equal(await compareFiles(out, imageB), -1, "copied out image differs from B");
    assert.equal(await compareFiles(server!.file, imageB), -1, "backing file differs from B");
    assert.deepEqual(
      (await nbdinfoMap(uri))
        .filter((entry) => entry.description === "data")
        .map((entry) => [entry.offset, entry.length]),
      [...islandsB.keys()].map((offset) => [offset, island]),
      "only B's islands are allocated: A's were zeroed as holes",
    );
  });
});

// ---------------------------------------------------------------------------------------------
// fio's nbd engine with verification
// ---------------------------------------------------------------------------------------------

describe("fio nbd engine", () => {
  const server = serveForSuite("haven-real-fio-", "64M");

  test("fio random 4 KiB writes at iodepth 32 verify with crc32c, also from a fresh connection", async (t) => {
    if (!needs(t, "fio")) return;
    const common = [
      "--name=verify",
      "--ioengine=nbd",
      `--uri=${server().uri}`,
      "--rw=randwrite",
      "--bs=4k",
      "--iodepth=32",
      "--size=32M",
      "--verify=crc32c",
      "--verify_fatal=1",
      "--do_verify=1",
    ];
    let mark = server().log().length;
    const written = await fio(common);
    assert.equal(written.jobs.length, 1);
    const job = written.jobs[0]!;
    assert.equal(job.error, 0, `fio reported error ${job.error}:\n${written.stderr}`);
    assert.equal(written.code, 0, written.stderr);
    assert.deepEqual(
      [job.write.io_bytes, job.write.total_ios, job.read.io_bytes, job.read.total_ios],
      [32 * MiB, 8192, 32 * MiB, 8192],
      "every 4 KiB block written once and read back for verification",
    );
    const serverSide = (await connectionsClosedSince(server(), mark, 1)).filter((c) => c.requests > 0);
    assert.deepEqual(
      serverSide.map((c) => [c.bytesWritten, c.bytesRead, c.errors]),
      [[32 * MiB, 32 * MiB, 0]],
      "the server saw the same traffic on one connection",
    );

    // Same job, verify only (fio's random sequence repeats): a new connection reads back what the
    // first one wrote. fio counts the skipped writes in its JSON, so check the server's counters.
    mark = server().log().length;
    const reread = await fio([...common, "--verify_only=1"]);
    const verifyJob = reread.jobs[0]!;
    assert.equal(verifyJob.error, 0, `verify-only pass found bad data:\n${reread.stderr}`);
    assert.equal(reread.code, 0, reread.stderr);
    assert.equal(verifyJob.read.io_bytes, 32 * MiB);
    const verifySide = (await connectionsClosedSince(server(), mark, 1)).filter((c) => c.requests > 0);
    assert.deepEqual(
      verifySide.map((c) => [c.bytesWritten, c.bytesRead]),
      [[0, 32 * MiB]],
    );
  });

  test("two fio jobs on two connections write and verify 1 MiB blocks in their own 16 MiB halves", async (t) => {
    if (!needs(t, "fio")) return;
    const mark = server().log().length;
    const result = await fio([
      "--name=seq",
      "--ioengine=nbd",
      `--uri=${server().uri}`,
      "--rw=write",
      "--bs=1M",
      "--iodepth=8",
      "--numjobs=2",
      "--offset_increment=16M",
      "--size=16M",
      "--verify=crc32c",
      "--verify_fatal=1",
      "--do_verify=1",
    ]);
    assert.equal(result.jobs.length, 2);
    for (const job of result.jobs) {
      assert.equal(job.error, 0, `fio job ${job.jobname} reported error ${job.error}:\n${result.stderr}`);
      assert.deepEqual([job.write.io_bytes, job.read.io_bytes], [16 * MiB, 16 * MiB]);
    }
    assert.equal(result.code, 0, result.stderr);
    const closed = await connectionsClosedSince(server(), mark, 2);
    const working = closed.filter((c) => c.requests > 0);
    assert.deepEqual(
      working.map((c) => [c.bytesWritten, c.bytesRead]),
      [
        [16 * MiB, 16 * MiB],
        [16 * MiB, 16 * MiB],
      ],
      `each job used its own connection: ${JSON.stringify(closed)}`,
    );
  });
});

// ---------------------------------------------------------------------------------------------
// nbdsh (libnbd Python): multi-conn visibility, and bad requests with strict mode off
// ---------------------------------------------------------------------------------------------

const MULTI_CONN_SNIPPET = `
import json, os
a = nbd.NBD(); a.connect_uri(os.environ["HAVEN_URI"])
b = nbd.NBD(); b.connect_uri(os.environ["HAVEN_URI"])
off = int(os.environ["HAVEN_OFFSET"])
first = open(os.environ["HAVEN_FIRST"], "rb").read()
second = open(os.environ["HAVEN_SECOND"], "rb").read()
before = b.pread(len(first), off)
a.pwrite(first, off)
b_sees_a = b.pread(len(first), off) == first
b.flush()
b.pwrite(second, off + len(first), nbd.CMD_FLAG_FUA)
a_sees_b = a.pread(len(second), off + len(first)) == second
a.flush()
result = {
    "canMultiConn": [a.can_multi_conn(), b.can_multi_conn()],
    "beforeWasZero": before == bytes(len(first)),
    "bSeesA": b_sees_a,
    "aSeesB": a_sees_b,
}
a.shutdown(); b.shutdown()
print(json.dumps(result))
`;

const BAD_REQUESTS_SNIPPET = `
import errno, json, os
MiB = 1024 * 1024
h = nbd.NBD(); h.set_strict_mode(0); h.connect_uri(os.environ["HAVEN_URI"])
r = nbd.NBD(); r.set_strict_mode(0); r.connect_uri(os.environ["HAVEN_RO_URI"])
size = h.get_size()
known = open(os.environ["HAVEN_KNOWN"], "rb").read()
h.pwrite(known, MiB)
ro_known = open(os.environ["HAVEN_RO_KNOWN"], "rb").read()
results = {}
intact = {}
def outcome(fn):
    try:
        fn()
        return "ok"
    except nbd.Error as e:
        return errno.errorcode.get(e.errno, str(e.errno)) if e.errno is not None else "no errno: " + e.string
def attempt(name, fn, handle=h):
    results[name] = outcome(fn)
    # after every bad request, a good read on the same connection returns the data unchanged
    intact[name] = h.pread(len(known), MiB) == known and r.pread(len(ro_known), 0) == ro_known
attempt("read past the end", lambda: h.pread(4096, size))
attempt("read straddling the end", lambda: h.pread(8192, size - 4096))
attempt("write past the end", lambda: h.pwrite(b"\\xff" * 4096, size - 512))
attempt("write zeroes past the end", lambda: h.zero(4096, size - 512))
attempt("trim past the end", lambda: h.trim(4096, size - 512))
attempt("cache past the end", lambda: h.cache(4096, size))
attempt("misaligned read", lambda: h.pread(100, 1))
attempt("misaligned write", lambda: h.pwrite(b"\\xff" * 100, 1))
attempt("zero-length read", lambda: h.pread(0, 0))
attempt("read over the 32 MiB maximum", lambda: h.pread(64 * MiB, 0))
attempt("write with REQ_ONE", lambda: h.pwrite(b"\\xff" * 512, 0, nbd.CMD_FLAG_REQ_ONE))
attempt("read with FAST_ZERO", lambda: h.pread(512, 0, nbd.CMD_FLAG_FAST_ZERO))
attempt("write to the read-only export", lambda: r.pwrite(b"\\xff" * 4096, 0))
attempt("trim on the read-only export", lambda: r.trim(4096, 0))
attempt("zero on the read-only export", lambda: r.zero(4096, 0))
# a burst of pipelined bad requests: every one gets its own error reply
burst = [h.aio_pread(nbd.Buffer(100), 1) for _ in range(64)]
while h.aio_in_flight() > 0:
    h.poll(-1)
burst_outcomes = sorted(set(outcome(lambda c=c: h.aio_command_completed(c)) for c in burst))
# the refused requests must not have touched anything
tail_untouched = h.pread(4096, size - 4096) == bytes(4096)
head_untouched = h.pread(4096, 0) == bytes(4096)
# FAST_ZERO works on this export
h.pwrite(b"\\x77" * 65536, 8 * MiB)
fast_zero = outcome(lambda: h.zero(65536, 8 * MiB, nbd.CMD_FLAG_FAST_ZERO))
fast_zero_reads_zero = h.pread(65536, 8 * MiB) == bytes(65536)
final_intact = h.pread(len(known), MiB) == known
h.shutdown(); r.shutdown()
print(json.dumps({
    "results": results, "intact": intact, "burst": burst_outcomes, "tailUntouched": tail_untouched,
    "headUntouched": head_untouched, "fastZero": fast_zero, "fastZeroReadsZero": fast_zero_reads_zero,
    "finalIntact": final_intact,
}))
`;

describe("nbdsh", () => {
  const dir = tempDir("haven-real-nbdsh-");
  const readOnlyDir = tempDir("haven-real-nbdsh-ro-");
  const readOnlyFile = join(readOnlyDir.path, "ro.img");
  const readOnlyKnown = randomBytes(64 * KiB);
  let server: ServerHandle | undefined;
  let readOnly: ServerHandle | undefined;

  before(async () => {
    writeFileSync(readOnlyFile, readOnlyKnown);
    truncateSync(readOnlyFile, 8 * MiB);
    server = await startServer({ dir: dir.path, size: "64M" });
    readOnly = await startServer({
      dir: readOnlyDir.path,
      file: readOnlyFile,
      name: "ro",
      extraArgs: ["--read-only"],
    });
  });
  after(() =>
    stopAndCheck(
      [
        { server, errorFree: false },
        { server: readOnly, errorFree: false },
      ],
      [dir, readOnlyDir],
    ),
  );

  test("a write on one connection is visible on another, and FLUSH works on both (multi-conn)", async (t) => {
    const python = await needsNbdsh(t);
    if (python === undefined) return;
    const first = randomBytes(256 * KiB);
    const second = randomBytes(4 * KiB);
    const offset = 3 * MiB;
    writeFileSync(join(dir.path, "first.bin"), first);
    writeFileSync(join(dir.path, "second.bin"), second);
    const mark = server!.log().length;
    const result = await nbdsh<{
      canMultiConn: boolean[];
      beforeWasZero: boolean;
      bSeesA: boolean;
      aSeesB: boolean;
    }>(python, MULTI_CONN_SNIPPET, {
      HAVEN_URI: server!.uri,
      HAVEN_OFFSET: String(offset),
      HAVEN_FIRST: join(dir.path, "first.bin"),
      HAVEN_SECOND: join(dir.path, "second.bin"),
    });
    assert.deepEqual(result, {
      canMultiConn: [true, true],
      beforeWasZero: true,
      bSeesA: true,
      aSeesB: true,
    });
    const closed = await connectionsClosedSince(server!, mark, 2);
    assert.deepEqual(
      closed.map((c) => c.errors),
      [0, 0],
    );
    assertBytes(
      readFileSync(server!.file).subarray(offset, offset + first.length + second.length),
      Buffer.concat([first, second]),
      "backing file after the two connections wrote",
    );
  });

  test("bad requests get the errno the spec prescribes and the server carries on with data intact", async (t) => {
    const python = await needsNbdsh(t);
    if (python === undefined) return;
    if (!needs(t, "nbdinfo")) return;
    const known = randomBytes(64 * KiB);
    writeFileSync(join(dir.path, "known.bin"), known);
    writeFileSync(join(dir.path, "ro-known.bin"), readOnlyKnown);
    const mark = server!.log().length;
    const readOnlyMark = readOnly!.log().length;

    const result = await nbdsh<{
      results: Record<string, string>;
      intact: Record<string, boolean>;
      burst: string[];
      tailUntouched: boolean;
      headUntouched: boolean;
      fastZero: string;
      fastZeroReadsZero: boolean;
      finalIntact: boolean;
    }>(python, BAD_REQUESTS_SNIPPET, {
      HAVEN_URI: server!.uri,
      HAVEN_RO_URI: readOnly!.uri,
      HAVEN_KNOWN: join(dir.path, "known.bin"),
      HAVEN_RO_KNOWN: join(dir.path, "ro-known.bin"),
    });

    const expected: Record<string, string> = {
      "read past the end": "EINVAL",
      "read straddling the end": "EINVAL",
      "write past the end": "ENOSPC",
      "write zeroes past the end": "ENOSPC",
      "trim past the end": "EINVAL",
      "cache past the end": "EINVAL",
      "misaligned read": "EINVAL",
      "misaligned write": "EINVAL",
      "zero-length read": "EINVAL",
      "read over the 32 MiB maximum": "EINVAL",
      "write with REQ_ONE": "EINVAL",
      "read with FAST_ZERO": "EINVAL",
      "write to the read-only export": "EPERM",
      "trim on the read-only export": "EPERM",
      "zero on the read-only export": "EPERM",
    };
    assert.deepEqual(result.results, expected);
    assert.deepEqual(
      result.intact,
      Object.fromEntries(Object.keys(expected).map((name) => [name, true])),
      "a good read after each bad request returns the data unchanged",
    );
    assert.deepEqual(result.burst, ["EINVAL"], "64 pipelined misaligned reads each got EINVAL");
    assert.equal(result.tailUntouched, true, "the refused write at the end wrote nothing");
    assert.equal(result.headUntouched, true, "the refused misaligned write wrote nothing");
    assert.equal(result.fastZero, "ok");
    assert.equal(result.fastZeroReadsZero, true);
    assert.equal(result.finalIntact, true);

    // The errors came from the server (libnbd did not filter them): it counted every refusal.
    const readOnlyCount = Object.keys(expected).filter((name) => name.includes("read-only")).length;
    const closed = await connectionsClosedSince(server!, mark, 1);
    assert.equal(
      closed.reduce((sum, c) => sum + c.errors, 0),
      Object.keys(expected).length - readOnlyCount + 64,
      `refusals counted by the server:\n${server!.log().slice(mark)}`,
    );
    const readOnlyClosed = await connectionsClosedSince(readOnly!, readOnlyMark, 1);
    assert.equal(
      readOnlyClosed.reduce((sum, c) => sum + c.errors, 0),
      readOnlyCount,
    );

    // And it is still alive for new clients, with the data as it was.
    assert.equal(server!.process.exitCode, null);
    assert.equal(readOnly!.process.exitCode, null);
    const info = JSON.parse(await mustRun("nbdinfo", ["--json", server!.uri])) as NbdinfoJson;
    assert.equal(info.exports[0]!["export-size"], 64 * MiB);
    const file = readFileSync(server!.file);
    assertBytes(file.subarray(MiB, MiB + known.length), known, "known data in the backing file");
    assertBytes(file.subarray(0, 4096), Buffer.alloc(4096), "head of the backing file");
    assertBytes(file.subarray(file.length - 4096), Buffer.alloc(4096), "tail of the backing file");
    assertBytes(readFileSync(readOnlyFile).subarray(0, readOnlyKnown.length), readOnlyKnown, "read-only file");
    assert.doesNotMatch(server!.log(), /dropping connection| failed: /);
  });
});
