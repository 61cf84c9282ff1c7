// A copy on another host, reached through its replica server (tcp://HOST:PORT): the same ReplicaPort
// the engine uses for a local copy, over one authenticated replication connection. Requests larger
// than one frame allows are split; a write's buffers go to the socket as they are. Every request has a
// deadline: a timeout or a lost connection ends the connection, rejects everything pending with one
// HAVEN_ERR_IO that says what happened, and calls onLost once (never after close()). Error replies
// come back as the HavenError codes a LocalReplicaPort would have thrown.

import assert from "node:assert/strict";
import type { Extent, WriteData } from "../block/device.js";
import { HavenError, type ErrorCode } from "../core/errors.js";
import { isValidVolumeName, REGION_DIGEST_BYTES, type CreateOptions, type ReplicaPort } from "./port.js";
import {
  FrameFlag,
  FrameType,
  MAX_CHECKSUM_BYTES,
  MAX_CHECKSUM_REGION_BYTES,
  MAX_READ_BYTES,
  MAX_WRITE_BYTES,
  ReplyStatus,
} from "./protocol/constants.js";
import type { Frame } from "./protocol/frame-codec.js";
import { decodeExtents, encodeMetadataPatch, encodeRegionBytes, parseMetadata } from "./protocol/payloads.js";
import { ReplicaClient, ReplicaRequestError } from "./replica-client.js";
import { parseHostPort } from "../util/units.js";
import type { TlsIdentity } from "../security/tls-identity.js";
import type { MetadataPatch, ReplicaMetadata } from "./replica-store.js";

export interface RemoteReplicaOptions {
  /** The cluster's shared secret (at least 16 bytes). */
  readonly secret: Buffer;
  /** A request not answered within this is a lost copy. */
  readonly requestTimeoutMs: number;
  /** Deadline for connecting and authenticating. */
  readonly connectTimeoutMs: number;
  readonly log?: (line: string) => void;
  /** This host's identity: the link is then mutual TLS, and `serverName` is required. */
  readonly tls?: TlsIdentity;
  /** The host name the replica server's certificate must carry (the location holds only its address). */
  readonly serverName?: string;
}

/** TRIM, WRITE_ZEROES and BLOCK_STATUS carry a 32-bit length: larger ranges go in pieces of this. */
const MAX_RANGE_BYTES = 2 ** 31;

const CODE_FOR_STATUS: Record<number, ErrorCode> = {
  [ReplyStatus.STALE_EPOCH]: "HAVEN_ERR_STALE_EPOCH",
  [ReplyStatus.NO_SUCH_REPLICA]: "HAVEN_ERR_NOT_FOUND",
  [ReplyStatus.OUT_OF_RANGE]: "HAVEN_ERR_OUT_OF_RANGE",
  [ReplyStatus.IO_ERROR]: "HAVEN_ERR_IO",
  [ReplyStatus.BAD_REQUEST]: "HAVEN_ERR_INVALID_REQUEST",
};

export class RemoteReplicaPort implements ReplicaPort {
  readonly local = false;
  onLost: ((error: Error) => void) | undefined;
  private current: ReplicaMetadata;
  private closing = false;

  private constructor(
    readonly location: string,
    private readonly client: ReplicaClient,
    metadata: ReplicaMetadata,
  ) {
    this.current = metadata;
    client.onClose = (reason) => {
      if (this.closing) return;
      const onLost = this.onLost;
      if (onLost) queueMicrotask(() => onLost(reason));
    };
  }

  /**
   * Connects to the replica server at `location` (tcp://HOST:PORT, or tcp://HOST:PORT/DISK for the copy
   * on one of that host's disks) and opens (or creates) copy `name`.
   */
  static async open(
    location: string,
    name: string,
    create: CreateOptions | undefined,
    options: RemoteReplicaOptions,
  ): Promise<RemoteReplicaPort> {
    const { host, port, disk } = parseTcpLocation(location);
    if (!isValidVolumeName(name))
      throw new HavenError("HAVEN_ERR_USAGE", `volume name "${name.slice(0, 70)}" is not valid (a-z, 0-9, . _ -)`);
    if (options.secret.length < 16)
      throw new HavenError("HAVEN_ERR_CONFIG", "the shared secret must be at least 16 bytes");
    const client = await ReplicaClient.connect(host, port, options.secret, {
      connectTimeoutMs: options.connectTimeoutMs,
      requestTimeoutMs: options.requestTimeoutMs,
      label: `replica ${location}`,
      ...(options.log && { log: options.log }),
      ...(options.tls && { tls: options.tls }),
      ...(options.serverName !== undefined && { serverName: options.serverName }),
    });
    try {
      const reply = await client.openReplica(name, create, disk);
      return new RemoteReplicaPort(location, client, parseMetadata(reply.payload));
    } catch (error) {
      client.close();
      throw toHavenError(client, error);
    }
  }

  get metadata(): ReplicaMetadata {
    return this.current;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.checkRange(offset, length);
    if (length <= MAX_READ_BYTES) return this.readOne(offset, length);
    const pieces: Promise<Buffer>[] = [];
    for (let at = offset; at < offset + length; at += MAX_READ_BYTES)
      pieces.push(this.readOne(at, Math.min(MAX_READ_BYTES, offset + length - at)));
    return Buffer.concat(await Promise.all(pieces), length);
  }

  async write(epoch: number, offset: number, data: WriteData, fua: boolean): Promise<void> {
    const pieces = Buffer.isBuffer(data) ? [data] : data;
    let length = 0;
    for (const piece of pieces) length += piece.length;
    this.checkRange(offset, length);
    const flags = fua ? FrameFlag.FUA : 0;
    if (length <= MAX_WRITE_BYTES) {
      // The common case without call()'s extra async layer: a 4 KiB write's cost is mostly this path.
      return this.client
        .request(FrameType.WRITE, { epoch: BigInt(epoch), offset: BigInt(offset), flags }, pieces)
        .then(ignoreReply, (error: unknown) => {
          throw toHavenError(this.client, error);
        });
    }
    const writes: Promise<Frame>[] = [];
    for (let at = 0; at < length; at += MAX_WRITE_BYTES) {
      const chunk = slicePieces(pieces, at, Math.min(MAX_WRITE_BYTES, length - at));
      writes.push(this.call(FrameType.WRITE, { epoch: BigInt(epoch), offset: BigInt(offset + at), flags }, chunk));
    }
    // Every part settles before this does: the caller may reuse the data's memory once it has.
    const settled = await Promise.allSettled(writes);
    for (const result of settled) if (result.status === "rejected") throw result.reason;
  }

  trim(epoch: number, offset: number, length: number, fua: boolean): Promise<void> {
    return this.rangeRequest(FrameType.TRIM, epoch, offset, length, fua);
  }

  writeZeroes(epoch: number, offset: number, length: number, fua: boolean): Promise<void> {
    return this.rangeRequest(FrameType.WRITE_ZEROES, epoch, offset, length, fua);
  }

  async flush(): Promise<void> {
    await this.call(FrameType.FLUSH);
  }

  async updateMetadata(epoch: number, patch: MetadataPatch): Promise<ReplicaMetadata> {
    const reply = await this.call(FrameType.SET_METADATA, {
      epoch: BigInt(epoch),
      payload: encodeMetadataPatch(patch),
    });
    this.current = this.parseMetadataReply(reply);
    return this.current;
  }

  async grow(epoch: number, sizeBytes: number): Promise<ReplicaMetadata> {
    const reply = await this.call(FrameType.GROW, { epoch: BigInt(epoch), offset: BigInt(sizeBytes) });
    this.current = this.parseMetadataReply(reply);
    return this.current;
  }

  /** Asks the server for the copy's metadata now. */
  async refreshMetadata(): Promise<ReplicaMetadata> {
    this.current = this.parseMetadataReply(await this.call(FrameType.GET_METADATA));
    return this.current;
  }

  async checksum(offset: number, length: number, regionBytes: number): Promise<Buffer> {
    this.checkRange(offset, length);
    if (!(regionBytes >= 4096 && regionBytes <= MAX_CHECKSUM_REGION_BYTES && (regionBytes & (regionBytes - 1)) === 0))
      throw new HavenError(
        "HAVEN_ERR_INVALID_REQUEST",
        `checksum region of ${regionBytes} bytes is not a power of two from 4096 to 64 MiB`,
      );
    // Whole regions per frame, so the digests are the same as one request's would be.
    const step = Math.max(regionBytes, MAX_CHECKSUM_BYTES - (MAX_CHECKSUM_BYTES % regionBytes));
    const parts: Buffer[] = [];
    for (let at = offset; at < offset + length; at += step) {
      const partBytes = Math.min(step, offset + length - at);
      const reply = await this.call(FrameType.CHECKSUM, {
        offset: BigInt(at),
        length: partBytes,
        payload: encodeRegionBytes(regionBytes),
      });
      const expected = Math.ceil(partBytes / regionBytes) * REGION_DIGEST_BYTES;
      if (reply.payload.length !== expected)
        throw this.violation(`CHECKSUM reply of ${reply.payload.length} bytes, expected ${expected}`);
      parts.push(reply.payload);
    }
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.checkRange(offset, length);
    const asked = Math.min(length, MAX_RANGE_BYTES);
    const reply = await this.call(FrameType.BLOCK_STATUS, { offset: BigInt(offset), length: asked });
    try {
      return decodeExtents(reply.payload, asked);
    } catch (error) {
      throw this.violation((error as Error).message);
    }
  }

  async close(): Promise<void> {
    this.closing = true;
    this.client.close();
  }

  private async readOne(offset: number, length: number): Promise<Buffer> {
    const reply = await this.call(FrameType.READ, { offset: BigInt(offset), length });
    if (reply.payload.length !== length)
      throw this.violation(`READ of ${length} bytes answered with ${reply.payload.length}`);
    return reply.payload;
  }

  private async rangeRequest(type: number, epoch: number, offset: number, length: number, fua: boolean): Promise<void> {
    this.checkRange(offset, length);
    const flags = fua ? FrameFlag.FUA : 0;
    const requests: Promise<Frame>[] = [];
    // A zero-length request still goes out, so the server refuses it exactly as a local copy would.
    let at = 0;
    do {
      const part = Math.min(MAX_RANGE_BYTES, length - at);
      requests.push(this.call(type, { epoch: BigInt(epoch), offset: BigInt(offset + at), length: part, flags }));
      at += part;
    } while (at < length);
    await Promise.all(requests);
  }

  /** One request; an error reply becomes the HavenError a local copy would have thrown. */
  private async call(
    type: number,
    fields: Partial<Omit<Frame, "type" | "requestId">> = {},
    pieces?: readonly Buffer[],
  ): Promise<Frame> {
    try {
      return await this.client.request(type, fields, pieces);
    } catch (error) {
      throw toHavenError(this.client, error);
    }
  }

  private parseMetadataReply(reply: Frame): ReplicaMetadata {
    try {
      return parseMetadata(reply.payload);
    } catch (error) {
      throw this.violation((error as Error).message);
    }
  }

  /** The server answered something impossible: drop the connection (the copy is lost) and say why. */
  private violation(reason: string): HavenError {
    this.client.protocolViolation(reason);
    return this.client.closed ?? new HavenError("HAVEN_ERR_IO", `replica ${this.location}: ${reason}`);
  }

  private checkRange(offset: number, length: number): void {
    if (!(Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length >= 0))
      throw new HavenError("HAVEN_ERR_INVALID_REQUEST", `bad range ${offset}+${length}`);
    if (offset + length > this.current.sizeBytes)
      throw new HavenError(
        "HAVEN_ERR_OUT_OF_RANGE",
        `range ${offset}+${length} is past the copy's ${this.current.sizeBytes} bytes`,
      );
  }
}

function ignoreReply(): void {}

function toHavenError(client: ReplicaClient, error: unknown): HavenError {
  if (error instanceof ReplicaRequestError) {
    const code = CODE_FOR_STATUS[error.status] ?? "HAVEN_ERR_IO";
    return new HavenError(code, `${client.label}: ${error.message}`);
  }
  if (error instanceof HavenError) return error;
  return new HavenError("HAVEN_ERR_IO", `${client.label}: ${(error as Error).message}`, { cause: error });
}

/** tcp://HOST:PORT as host and port; HAVEN_ERR_USAGE otherwise. */
export function parseTcpLocation(location: string): { host: string; port: number; disk?: string } {
  const match = /^tcp:\/\/([^/]*)(?:\/([^/]*))?$/i.exec(location);
  const hostPort = match?.[1] ?? "";
  const disk = match?.[2];
  const usage = (): HavenError =>
    new HavenError(
      "HAVEN_ERR_USAGE",
      `replica location "${location.slice(0, 200)}" is not tcp://HOST:PORT or tcp://HOST:PORT/DISK (for example tcp://10.0.0.2:7400)`,
    );
  if (match === null || /[/?#@\s]/.test(hostPort.replace(/^\[[^\]]*\]/, ""))) throw usage();
  if (disk !== undefined && !isValidVolumeName(disk)) throw usage();
  let parsed: { host: string; port: number };
  try {
    parsed = parseHostPort(hostPort, "replica location");
  } catch {
    throw usage();
  }
  if (parsed.port === 0) throw usage();
  return disk === undefined ? parsed : { ...parsed, disk };
}

/** The byte range [start, start+length) of consecutive `pieces`, as slices (no copy). */
function slicePieces(pieces: readonly Buffer[], start: number, length: number): Buffer[] {
  const slices: Buffer[] = [];
  let skip = start;
  let need = length;
  for (const piece of pieces) {
    if (need === 0) break;
    if (skip >= piece.length) {
      skip -= piece.length;
      continue;
    }
    const slice = piece.subarray(skip, skip + need);
    slices.push(slice);
    need -= slice.length;
    skip = 0;
  }
  assert.equal(need, 0, "write pieces shorter than their length");
  return slices;
}
