// The disk label (.haven-disk.json): a good label survives a write and a read unchanged; every kind of
// malformed label is refused with HAVEN_ERR_CONFIG and a message that names the file and the field;
// a missing label reads as none while a corrupt one fails; writing is atomic (no temporary file is
// left behind, a bad label is never written, an old label is replaced whole).

import assert from "node:assert/strict";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after } from "node:test";
import fc from "fast-check";
import { HavenError } from "../../src/core/errors.js";
import {
  LABEL_FILE_NAME,
  MAX_LABEL_BYTES,
  formatDiskLabel,
  isValidDiskId,
  parseDiskLabel,
  readDiskLabel,
  writeDiskLabel,
  type DiskLabel,
} from "../../src/disk/disk-label.js";
import { boundedTest } from "../helpers/bounded-test.js";
import { failsWith } from "../helpers/errors.js";

/** Every test here takes well under a second; one still running after this bound is hung, not slow. */
const test = boundedTest(10_000);

const WHERE = "/srv/haven/disk0/.haven-disk.json";

const good: DiskLabel = {
  format: 1,
  cluster: "prod-eu1",
  host: "node1",
  disk: "disk0",
  identity: { kind: "serial", value: "S3Z1NB0K123456", device: "/dev/sdb" },
  sizeBytes: 1_000_204_886_016,
  createdAt: "2024-05-01T09:30:00.000Z",
};

type Json = Record<string, unknown>;

/** The good label as JSON text, with `edit` applied to its object first. */
function variant(edit: (label: Json) => void): string {
  const label = JSON.parse(JSON.stringify(good)) as Json;
  edit(label);
  return JSON.stringify(label);
}

/** The message parseDiskLabel refuses `text` with (failing the test if it accepts it). */
function refusal(text: string): string {
  try {
    parseDiskLabel(text, WHERE);
  } catch (error) {
    assert.ok(error instanceof HavenError, `expected a HavenError, got ${String(error)}`);
    assert.equal(error.code, "HAVEN_ERR_CONFIG");
    assert.ok(error.message.includes(WHERE), `the message names the file: ${error.message}`);
    return error.message;
  }
  assert.fail(`accepted: ${text}`);
}

const directories: string[] = [];
async function freshDirectory(): Promise<string> {
  const directory = await mkdtemp(join(tmpdir(), "haven-disk-label-"));
  directories.push(directory);
  return directory;
}
after(async () => {
  for (const directory of directories) await rm(directory, { recursive: true, force: true });
});

test("a good label parses to the same value, and its text parses back to it", () => {
  assert.deepEqual(parseDiskLabel(JSON.stringify(good), WHERE), good);
  assert.deepEqual(parseDiskLabel(formatDiskLabel(good), WHERE), good);
  const noDevice = { ...good, identity: { kind: good.identity.kind, value: good.identity.value } };
  assert.deepEqual(parseDiskLabel(JSON.stringify(noDevice), WHERE), noDevice);
});

test("every malformed label is refused with a message naming the field and what is wrong", () => {
  const cases: [string, string, RegExp][] = [
    ["not JSON", "{ format: 1", /is not valid JSON/],
    ["an array", "[1]", /must be a JSON object/],
    ["null", "null", /must be a JSON object/],
    ["empty", "", /is not valid JSON/],
    ["format missing", variant((l) => delete l.format), /format is missing/],
    ["format 0", variant((l) => (l.format = 0)), /format must be 1, not 0/],
    ["format as text", variant((l) => (l.format = "1")), /format must be 1, not "1"/],
    ["a newer format", variant((l) => (l.format = 2)), /format is 2, newer than this Haven reads \(1\): upgrade Haven/],
    [
      "a newer format with new fields",
      variant((l) => ((l.format = 2), (l.pool = "a"))),
      /format is 2, .*upgrade Haven/,
    ],
    ["an unknown field", variant((l) => (l.owner = "me")), /owner is not a field of format 1 labels/],
    ["cluster missing", variant((l) => delete l.cluster), /cluster is missing/],
    ["cluster a number", variant((l) => (l.cluster = 7)), /cluster must be a string, not 7/],
    ["cluster empty", variant((l) => (l.cluster = "")), /cluster "" is not a cluster name/],
    ["cluster with a slash", variant((l) => (l.cluster = "a/b")), /cluster "a\/b" is not a cluster name/],
    ["cluster too long", variant((l) => (l.cluster = "c".repeat(129))), /cluster "c+" is not a cluster name/],
    ["host missing", variant((l) => delete l.host), /host is missing/],
    ["host upper case", variant((l) => (l.host = "Node1")), /host "Node1" is not a host name/],
    ["host ending in -", variant((l) => (l.host = "node-")), /host "node-" is not a host name/],
    ["disk missing", variant((l) => delete l.disk), /disk is missing/],
    ["disk with a slash", variant((l) => (l.disk = "../etc")), /disk "..\/etc" is not a disk id/],
    ["disk starting with .", variant((l) => (l.disk = ".d")), /disk ".d" is not a disk id/],
    ["disk too long", variant((l) => (l.disk = "d".repeat(64))), /disk "d+" is not a disk id/],
    ["identity missing", variant((l) => delete l.identity), /identity is missing/],
    ["identity a string", variant((l) => (l.identity = "serial X")), /identity must be a JSON object/],
    [
      "identity kind unknown",
      variant((l) => ((l.identity as Json).kind = "uuid")),
      /identity.kind "uuid" must be one of serial, wwn, path/,
    ],
    ["identity kind missing", variant((l) => delete (l.identity as Json).kind), /identity.kind is missing/],
    ["identity value missing", variant((l) => delete (l.identity as Json).value), /identity.value is missing/],
    [
      "identity value empty",
      variant((l) => ((l.identity as Json).value = "")),
      /identity.value must be 1 to 1024 printable/,
    ],
    [
      "identity value with a newline",
      variant((l) => ((l.identity as Json).value = "a\nb")),
      /identity.value must be 1 to 1024 printable/,
    ],
    [
      "identity value too long",
      variant((l) => ((l.identity as Json).value = "v".repeat(1025))),
      /identity.value must be/,
    ],
    [
      "identity device outside /dev",
      variant((l) => ((l.identity as Json).device = "/tmp/sdb")),
      /identity.device "\/tmp\/sdb" is not a path under \/dev/,
    ],
    ["identity device a number", variant((l) => ((l.identity as Json).device = 3)), /identity.device must be a string/],
    [
      "identity with an unknown field",
      variant((l) => ((l.identity as Json).model = "x")),
      /identity.model is not a field/,
    ],
    ["sizeBytes missing", variant((l) => delete l.sizeBytes), /sizeBytes is missing/],
    [
      "sizeBytes zero",
      variant((l) => (l.sizeBytes = 0)),
      /sizeBytes must be a whole number of bytes above zero, not 0/,
    ],
    ["sizeBytes negative", variant((l) => (l.sizeBytes = -512)), /sizeBytes must be a whole number/],
    ["sizeBytes fractional", variant((l) => (l.sizeBytes = 1.5)), /sizeBytes must be a whole number/],
    [
      "sizeBytes as text",
      variant((l) => (l.sizeBytes = "1T")),
      /sizeBytes must be a whole number of bytes above zero, not "1T"/,
    ],
    ["createdAt missing", variant((l) => delete l.createdAt), /createdAt is missing/],
    ["createdAt not a time", variant((l) => (l.createdAt = "yesterday")), /createdAt "yesterday" is not a UTC time/],
    [
      "createdAt with an offset",
      variant((l) => (l.createdAt = "2024-05-01T09:30:00+02:00")),
      /createdAt .* is not a UTC time/,
    ],
    [
      "createdAt on February 30th",
      variant((l) => (l.createdAt = "2024-02-30T00:00:00Z")),
      /createdAt .* is not a UTC time/,
    ],
  ];
  // Past 2^53 bytes a number is no longer exact: JSON.stringify cannot write one, so edit the text.
  cases.push([
    "sizeBytes past 2^53",
    formatDiskLabel(good).replace(String(good.sizeBytes), "9007199254740993"),
    /sizeBytes must be a whole number/,
  ]);
  for (const [name, text, message] of cases) {
    assert.match(refusal(text), message, name);
  }
});

test("random JSON is refused with HAVEN_ERR_CONFIG, never another kind of failure", () => {
  fc.assert(
    fc.property(fc.jsonValue(), (value) => {
      assert.throws(() => parseDiskLabel(JSON.stringify(value), WHERE), failsWith("HAVEN_ERR_CONFIG", /disk label/));
    }),
  );
});

test("any valid label survives writing and reading unchanged", async () => {
  const root = await freshDirectory();
  const label = fc.record({
    format: fc.constant(1 as const),
    cluster: fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}$/),
    host: fc.stringMatching(/^[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?$/),
    disk: fc.stringMatching(/^[a-z0-9][a-z0-9_.-]{0,20}$/),
    identity: fc.record({
      kind: fc.constantFrom("serial" as const, "wwn" as const, "path" as const),
      value: fc.stringMatching(/^[ -~]{1,40}$/),
      device: fc.stringMatching(/^\/dev\/[a-z0-9/]{1,12}$/),
    }),
    sizeBytes: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
    createdAt: fc.integer({ min: 0, max: Date.UTC(2200, 0, 1) }).map((time) => new Date(time).toISOString()),
  });
  await fc.assert(
    fc.asyncProperty(label, async (value) => {
      await writeDiskLabel(root, value);
      // fast-check's records have no prototype; the label read back is a plain object.
      assert.deepEqual(await readDiskLabel(root), JSON.parse(JSON.stringify(value)));
    }),
    { numRuns: 50 },
  );
});

test("a disk without a label reads as none", async () => {
  assert.equal(await readDiskLabel(await freshDirectory()), undefined);
});

test("a corrupt label on disk fails the read with the file's path and the field", async () => {
  const root = await freshDirectory();
  await writeFile(
    join(root, LABEL_FILE_NAME),
    variant((l) => (l.host = "Bad Host")),
  );
  await assert.rejects(
    readDiskLabel(root),
    failsWith("HAVEN_ERR_CONFIG", new RegExp(`${join(root, LABEL_FILE_NAME)}: host "Bad Host" is not a host name`)),
  );
  await writeFile(join(root, LABEL_FILE_NAME), "\u0000\u0000\u0000");
  await assert.rejects(readDiskLabel(root), failsWith("HAVEN_ERR_CONFIG", /is not valid JSON/));
});

test("a label file too big to be a label is refused without reading it whole", async () => {
  const root = await freshDirectory();
  await writeFile(join(root, LABEL_FILE_NAME), " ".repeat(MAX_LABEL_BYTES + 1));
  await assert.rejects(readDiskLabel(root), failsWith("HAVEN_ERR_CONFIG", /more than a label's 65536/));
});

test("a label path that is a directory is refused, not read as none", async () => {
  const root = await freshDirectory();
  await mkdir(join(root, LABEL_FILE_NAME));
  await assert.rejects(readDiskLabel(root), failsWith("HAVEN_ERR_CONFIG", /is not a regular file/));
});

test("writing replaces an old label whole and leaves no temporary file", async () => {
  const root = await freshDirectory();
  await writeDiskLabel(root, good);
  const moved = { ...good, host: "node2", disk: "disk3", createdAt: "2025-01-02T03:04:05.678Z" };
  await writeDiskLabel(root, moved);
  assert.deepEqual(await readDiskLabel(root), moved);
  assert.deepEqual(await readdir(root), [LABEL_FILE_NAME]);
  assert.equal(await readFile(join(root, LABEL_FILE_NAME), "utf8"), formatDiskLabel(moved));
});

test("a bad label is never written: the old one stays and no temporary file is left", async () => {
  const root = await freshDirectory();
  await writeDiskLabel(root, good);
  await assert.rejects(
    writeDiskLabel(root, { ...good, disk: "Disk 0" }),
    failsWith("HAVEN_ERR_CONFIG", /disk "Disk 0"/),
  );
  await assert.rejects(writeDiskLabel(root, { ...good, sizeBytes: -1 }), failsWith("HAVEN_ERR_CONFIG", /sizeBytes/));
  assert.deepEqual(await readDiskLabel(root), good);
  assert.deepEqual(await readdir(root), [LABEL_FILE_NAME]);
});

test("writing to a disk root that does not exist fails with a coded error", async () => {
  const root = join(await freshDirectory(), "gone");
  await assert.rejects(writeDiskLabel(root, good), failsWith("HAVEN_ERR_IO", /writing disk label .*gone/));
});

test("disk ids are lower-case words of up to 63 characters without slashes", () => {
  for (const id of ["disk0", "0", "ssd-1", "nvme0n1.p2", "a_b", "d".repeat(63)]) assert.ok(isValidDiskId(id), id);
  for (const id of ["", "Disk0", "-d", ".d", "_d", "a/b", "a b", "d".repeat(64), "disk0\n", "ü"])
    assert.ok(!isValidDiskId(id), JSON.stringify(id));
});
