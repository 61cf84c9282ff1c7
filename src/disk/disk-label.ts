// A disk's label: the file .haven-disk.json at the disk's root, saying which cluster, host and disk
// id the disk belongs to, which physical disk it was written on and how big that was. A host finds
// its disks by their labels, in any order, so no disk is "first" (DESIGN.md, Disks); a label that
// names another cluster or host marks a disk Haven must not touch. The file is read from a disk that
// may come from anywhere, so it is untrusted: parseDiskLabel checks every field and refuses unknown
// ones (a newer Haven that adds a field raises `format`), with HAVEN_ERR_CONFIG and a message naming
// the file and the field. writeDiskLabel replaces the file atomically (temporary file, fsync,
// rename, fsync of the directory), so a crash leaves the old label or the new one, never half of one.
//
// { "format": 1, "cluster": "prod-eu1", "host": "node1", "disk": "disk0",
//   "identity": { "kind": "serial", "value": "S3Z1NB0K123456", "device": "/dev/sdb" },
//   "sizeBytes": 1000204886016, "createdAt": "2024-05-01T09:30:00.000Z" }

import { randomBytes } from "node:crypto";
import { open, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { HavenError, fromSystemError } from "../core/errors.js";
import { IDENTITY_KINDS, type DiskIdentity } from "./disk-identity.js";

export const LABEL_FILE_NAME = ".haven-disk.json";
export const LABEL_FORMAT = 1;
/** A label is a few hundred bytes; anything much bigger is not one, and is not read into memory. */
export const MAX_LABEL_BYTES = 64 * 1024;

export interface DiskLabel {
  readonly format: 1;
  /** The cluster the disk belongs to. */
  readonly cluster: string;
  /** The host the disk belongs to (a DNS label, as in the agent's config). */
  readonly host: string;
  /** The disk's id on its host, e.g. "disk0" (isValidDiskId). */
  readonly disk: string;
  /** The physical disk the label was written on. */
  readonly identity: DiskIdentity;
  /** The disk's size when it was labelled. */
  readonly sizeBytes: number;
  /** When it was labelled, ISO 8601 in UTC. */
  readonly createdAt: string;
}

/** A disk id: a word of the CLI and a key in etcd, so lower case, no spaces, no slashes, at most 63 characters. */
export function isValidDiskId(id: string): boolean {
  return /^[a-z0-9][a-z0-9_.-]{0,62}$/.test(id);
}

/** Host names are DNS labels (RFC 1123), as the agent's config requires. */
function isValidHostName(name: string): boolean {
  return /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/.test(name);
}

/** Cluster names: a letter or digit, then letters, digits, '_', '.', ':' or '-' (UUIDs fit), at most 128. */
function isValidClusterName(name: string): boolean {
  return /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/.test(name);
}

const LABEL_KEYS = ["format", "cluster", "host", "disk", "identity", "sizeBytes", "createdAt"];
const IDENTITY_KEYS = ["kind", "value", "device"];
const MAX_IDENTITY_VALUE_CHARS = 1024;
const ISO_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?Z$/;

function hasControlCharacter(text: string): boolean {
  return [...text].some((character) => character.charCodeAt(0) < 0x20 || character.charCodeAt(0) === 0x7f);
}

/** Whether an ISO time names a real second (no February 30th): it survives a round trip through Date. */
function sameSecond(iso: string): boolean {
  const time = Date.parse(iso);
  return !Number.isNaN(time) && new Date(time).toISOString().slice(0, 19) === iso.slice(0, 19);
}

/** Parses the text of a label file; `where` names it in every error ("/srv/haven/disk0/.haven-disk.json"). */
export function parseDiskLabel(text: string, where: string): DiskLabel {
  const fail = (field: string, problem: string): never => {
    throw new HavenError("HAVEN_ERR_CONFIG", `disk label ${where}: ${field === "" ? "" : `${field} `}${problem}`);
  };
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    fail("", `is not valid JSON (${(error as Error).message})`);
  }
  // The format is checked before the fields: a newer label's new fields are not this Haven's to judge.
  const object = (value: unknown, field: string, keys?: readonly string[]): Record<string, unknown> => {
    if (typeof value !== "object" || value === null || Array.isArray(value)) fail(field, "must be a JSON object");
    const record = value as Record<string, unknown>;
    const unknown = keys && Object.keys(record).find((key) => !keys.includes(key));
    if (unknown !== undefined) {
      fail(field === "" ? unknown : `${field}.${unknown}`, `is not a field of format ${LABEL_FORMAT} labels`);
    }
    return record;
  };
  const string = (value: unknown, field: string): string => {
    if (value === undefined) fail(field, "is missing");
    if (typeof value !== "string") fail(field, `must be a string, not ${JSON.stringify(value)}`);
    return value as string;
  };

  const root = object(json, "");
  if (root.format === undefined) fail("format", "is missing");
  if (root.format !== LABEL_FORMAT) {
    fail(
      "format",
      typeof root.format === "number" && Number.isInteger(root.format) && root.format > LABEL_FORMAT
        ? `is ${root.format}, newer than this Haven reads (${LABEL_FORMAT}): upgrade Haven`
        : `must be ${LABEL_FORMAT}, not ${JSON.stringify(root.format)}`,
    );
  }
  object(root, "", LABEL_KEYS);
  const cluster = string(root.cluster, "cluster");
  if (!isValidClusterName(cluster)) {
    fail("cluster", `"${cluster}" is not a cluster name (letters, digits, '_', '.', ':', '-'; at most 128)`);
  }
  const host = string(root.host, "host");
  if (!isValidHostName(host)) fail("host", `"${host}" is not a host name (a DNS label: a-z, 0-9, '-')`);
  const disk = string(root.disk, "disk");
  if (!isValidDiskId(disk)) {
    fail("disk", `"${disk}" is not a disk id (a-z, 0-9, '_', '.', '-', starting with a letter or digit; at most 63)`);
  }

  if (root.identity === undefined) fail("identity", "is missing");
  const identityObject = object(root.identity, "identity", IDENTITY_KEYS);
  const kind = string(identityObject.kind, "identity.kind");
  if (!(IDENTITY_KINDS as readonly string[]).includes(kind)) {
    fail("identity.kind", `"${kind}" must be one of ${IDENTITY_KINDS.join(", ")}`);
  }
  const value = string(identityObject.value, "identity.value");
  if (value === "" || value.length > MAX_IDENTITY_VALUE_CHARS || hasControlCharacter(value)) {
    fail("identity.value", `must be 1 to ${MAX_IDENTITY_VALUE_CHARS} printable characters`);
  }
  let device: string | undefined;
  if (identityObject.device !== undefined) {
    device = string(identityObject.device, "identity.device");
    if (!/^\/dev\/.{1,255}$/.test(device) || hasControlCharacter(device))
      fail("identity.device", `"${device}" is not a path under /dev`);
  }
  const identity: DiskIdentity = { kind: kind as DiskIdentity["kind"], value, ...(device !== undefined && { device }) };

  if (root.sizeBytes === undefined) fail("sizeBytes", "is missing");
  const sizeBytes = root.sizeBytes;
  if (typeof sizeBytes !== "number" || !Number.isSafeInteger(sizeBytes) || sizeBytes <= 0) {
    fail("sizeBytes", `must be a whole number of bytes above zero, not ${JSON.stringify(sizeBytes)}`);
  }
  const createdAt = string(root.createdAt, "createdAt");
  if (!ISO_UTC.test(createdAt) || !sameSecond(createdAt)) {
    fail("createdAt", `"${createdAt}" is not a UTC time such as 2024-05-01T09:30:00.000Z`);
  }

  return { format: LABEL_FORMAT, cluster, host, disk, identity, sizeBytes: sizeBytes as number, createdAt };
}

/** The label file's text for `label` (checked by parseDiskLabel first, so a bad label is never written). */
export function formatDiskLabel(label: DiskLabel): string {
  const text = `${JSON.stringify(label, null, 2)}\n`;
  parseDiskLabel(text, "(label to write)");
  return text;
}

export function labelPath(root: string): string {
  return join(root, LABEL_FILE_NAME);
}

/** The label at the root of a disk, undefined when it has none; a label that cannot be read or parsed throws. */
export async function readDiskLabel(root: string): Promise<DiskLabel | undefined> {
  const path = labelPath(root);
  let handle;
  try {
    handle = await open(path, "r");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw fromSystemError(error, `reading disk label ${path}`);
  }
  try {
    const info = await handle.stat();
    if (!info.isFile()) throw new HavenError("HAVEN_ERR_CONFIG", `disk label ${path} is not a regular file`);
    if (info.size > MAX_LABEL_BYTES) {
      throw new HavenError(
        "HAVEN_ERR_CONFIG",
        `disk label ${path} is ${info.size} bytes, more than a label's ${MAX_LABEL_BYTES}`,
      );
    }
    const buffer = Buffer.alloc(MAX_LABEL_BYTES + 1);
    let length = 0;
    while (length < buffer.length) {
      const { bytesRead } = await handle.read(buffer, length, buffer.length - length, length);
      if (bytesRead === 0) break;
      length += bytesRead;
    }
    if (length > MAX_LABEL_BYTES) {
      throw new HavenError("HAVEN_ERR_CONFIG", `disk label ${path} is more than a label's ${MAX_LABEL_BYTES} bytes`);
    }
    return parseDiskLabel(buffer.subarray(0, length).toString("utf8"), path);
  } catch (error) {
    throw fromSystemError(error, `reading disk label ${path}`);
  } finally {
    await handle.close();
  }
}

/** Writes `label` to the root of a disk, replacing any label there atomically and durably. */
export async function writeDiskLabel(root: string, label: DiskLabel): Promise<void> {
  const text = formatDiskLabel(label);
  const path = labelPath(root);
  const temporary = join(root, `${LABEL_FILE_NAME}.${process.pid}-${randomBytes(4).toString("hex")}.tmp`);
  try {
    const file = await open(temporary, "wx", 0o644);
    try {
      await file.writeFile(text);
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(temporary, path);
  } catch (error) {
    await rm(temporary, { force: true });
    throw fromSystemError(error, `writing disk label ${path}`);
  }
  // The rename is durable only once the directory is: until then a crash may bring the old label back.
  const directory = await open(root, "r").catch((error: unknown) => {
    throw fromSystemError(error, `opening ${root} to make the disk label durable`);
  });
  try {
    await directory.sync();
  } catch (error) {
    throw fromSystemError(error, `making disk label ${path} durable`);
  } finally {
    await directory.close();
  }
}
