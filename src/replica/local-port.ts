// A copy on this host's own disk, reached directly through its replica store. The replica server
// serves remote engines through the same class, so both paths share one set of semantics.

import { createHash } from "node:crypto";
import { join } from "node:path";
import type { Extent, WriteData } from "../block/device.js";
import { HavenError } from "../core/errors.js";
import { isValidVolumeName, REGION_DIGEST_BYTES, type CreateOptions, type ReplicaPort } from "./port.js";
import { ReplicaStore, type MetadataPatch, type ReplicaMetadata } from "./replica-store.js";

const CHECKSUM_READ_BYTES = 4 * 1024 * 1024;

export class LocalReplicaPort implements ReplicaPort {
  readonly local = true;
  onLost: ((error: Error) => void) | undefined;

  private constructor(
    readonly location: string,
    readonly store: ReplicaStore,
  ) {}

  static async open(location: string, name: string, create: CreateOptions | undefined): Promise<LocalReplicaPort> {
    if (!isValidVolumeName(name))
      throw new HavenError("HAVEN_ERR_USAGE", `volume name "${name.slice(0, 70)}" is not valid (a-z, 0-9, . _ -)`);
    const directory = join(location, name);
    try {
      return new LocalReplicaPort(location, await ReplicaStore.open(directory));
    } catch (error) {
      if (!(error instanceof HavenError && error.code === "HAVEN_ERR_NOT_FOUND") || create === undefined) throw error;
      return new LocalReplicaPort(location, await ReplicaStore.create(directory, create));
    }
  }

  get metadata(): ReplicaMetadata {
    return this.store.metadata;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.checkRange(offset, length);
    const target = Buffer.allocUnsafe(length);
    await this.store.data.read(offset, target);
    return target;
  }

  readInto(offset: number, target: Buffer): Promise<void> {
    return this.store.data.read(offset, target);
  }

  startWriteback(offset: number, length: number): Promise<void> {
    return this.store.data.startWriteback(offset, length);
  }

  zeroCopySource(offset: number, length: number): { fd: number; position: number } | undefined {
    return this.store.data.zeroCopySource(offset, length);
  }

  async copyFrom(
    epoch: number,
    offset: number,
    source: { fd: number; position: number },
    length: number,
  ): Promise<void> {
    if (!this.store.admitted(epoch)) await this.store.admitEpoch(epoch);
    return this.store.data.copyFrom(source, offset, length);
  }

  async write(epoch: number, offset: number, data: WriteData, fua: boolean): Promise<void> {
    if (!this.store.admitted(epoch)) await this.store.admitEpoch(epoch);
    return this.store.data.write(offset, data, { fua });
  }

  async trim(epoch: number, offset: number, length: number, fua: boolean): Promise<void> {
    await this.store.admitEpoch(epoch);
    await this.store.data.trim(offset, length, { fua });
  }

  async writeZeroes(epoch: number, offset: number, length: number, fua: boolean): Promise<void> {
    await this.store.admitEpoch(epoch);
    await this.store.data.writeZeroes(offset, length, { fua });
  }

  flush(): Promise<void> {
    return this.store.data.flush();
  }

  grow(epoch: number, sizeBytes: number): Promise<ReplicaMetadata> {
    return this.store.grow(epoch, sizeBytes);
  }

  updateMetadata(epoch: number, patch: MetadataPatch): Promise<ReplicaMetadata> {
    return this.store.update(epoch, patch);
  }

  async checksum(offset: number, length: number, regionBytes: number): Promise<Buffer> {
    this.checkRange(offset, length);
    if (regionBytes < 4096 || (regionBytes & (regionBytes - 1)) !== 0)
      throw new HavenError(
        "HAVEN_ERR_INVALID_REQUEST",
        `checksum region of ${regionBytes} bytes is not a power of two`,
      );
    const digests: Buffer[] = [];
    const step = Math.max(regionBytes, CHECKSUM_READ_BYTES - (CHECKSUM_READ_BYTES % regionBytes));
    for (let at = offset; at < offset + length; at += step) {
      const chunk = await this.read(at, Math.min(step, offset + length - at));
      for (let region = 0; region < chunk.length; region += regionBytes) {
        const digest = createHash("sha256")
          .update(chunk.subarray(region, region + regionBytes))
          .digest();
        digests.push(digest.subarray(0, REGION_DIGEST_BYTES));
      }
    }
    return Buffer.concat(digests);
  }

  blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.checkRange(offset, length);
    return this.store.data.blockStatus(offset, length);
  }

  async close(): Promise<void> {
    await this.store.close().catch(() => undefined);
  }

  private checkRange(offset: number, length: number): void {
    if (!(Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length >= 0))
      throw new HavenError("HAVEN_ERR_INVALID_REQUEST", `bad range ${offset}+${length}`);
    if (offset + length > this.store.data.size)
      throw new HavenError(
        "HAVEN_ERR_OUT_OF_RANGE",
        `range ${offset}+${length} is past the copy's ${this.store.data.size} bytes`,
      );
  }
}
