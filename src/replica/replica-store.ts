// One volume's copy on one disk: a directory holding the data as a plain sparse raw file of the
// volume's size (so qemu-img, cmp or a loop mount can read any copy without Haven) and the replica's
// metadata beside it (crash-safe, see metadata-store.ts). It enforces the epoch rule of DESIGN.md
// rule 4 at the storage level: a writer's epoch lower than the highest ever seen is refused, and a
// higher one is made durable before the first write under it is accepted.

import { mkdir, open as openFile, stat, truncate } from "node:fs/promises";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { FileDevice } from "../block/file-device.js";
import { HavenError } from "../core/errors.js";
import { checkGenerations, isValidGenerationId, NEW_COPY, type Generations } from "./generations.js";
import { grownMetadata, mustGrow } from "./grow.js";
import { FileMetadataFile } from "./metadata-file.js";
import { MetadataStore } from "./metadata-store.js";
import { DEFAULT_REGION_BYTES } from "./region-bitmap.js";

export const DATA_FILE = "data.raw";
export const METADATA_FILE = "meta";

/** Extents of the activity log: a write first records its extents here, on every in-sync copy. */
export const ACTIVITY_EXTENT_BYTES = 4 * 1024 * 1024;

export interface ReplicaMetadata {
  readonly volumeId: string;
  /** This copy's own identity (16 hex digits), for logs and status. */
  readonly copyId: string;
  readonly sizeBytes: number;
  /** Granularity of the out-of-sync bitmaps. */
  readonly regionBytes: number;
  readonly generations: Generations;
  /** The highest writer epoch this copy has accepted; lower ones are refused forever. */
  readonly highestEpoch: number;
  /** False from the first write after open until a clean close: a dirty copy needs its activity log resynced. */
  readonly cleanShutdown: boolean;
  /**
   * Regions written since each older generation, as encoded bitmaps (bitmap-codec.ts): a copy whose
   * current generation is a key here misses exactly those regions (plus the activity log's extents).
   */
  readonly changedSince: Readonly<Record<string, string>>;
  /** Extents (of ACTIVITY_EXTENT_BYTES) that may have writes in flight; resynced after a writer's crash. */
  readonly activityLog: readonly number[];
  /**
   * Set on a copy being resynced: what it still misses (an encoded bitmap) as of the volume's
   * generation `validFor`. Everything not in `remaining` was copied and flushed before this was saved.
   */
  readonly resync: { readonly validFor: string; readonly remaining: string } | null;
  /**
   * The copies (copy ids) the writer held in sync with this one at generation `generations.current`,
   * this one included: a copy not listed had left the in-sync set by then, so it holds no write this
   * copy lacks unless a later writer started from it (which the engine's start plan refuses without
   * proof). null when unknown (a new copy, or metadata written before this was recorded).
   */
  readonly inSyncCopies: readonly string[] | null;
}

/** The fields a writer may change, all at once, in one durable save. */
export type MetadataPatch = Partial<
  Pick<ReplicaMetadata, "generations" | "changedSince" | "activityLog" | "resync" | "inSyncCopies">
>;

/** Most copy ids an inSyncCopies list may hold (a volume has at most a handful of copies). */
export const MAX_IN_SYNC_COPIES = 16;

export function isInSyncCopies(value: unknown): value is string[] | null {
  return (
    value === null ||
    (Array.isArray(value) &&
      value.length <= MAX_IN_SYNC_COPIES &&
      value.every((id) => typeof id === "string" && isValidGenerationId(id)))
  );
}

export function parseReplicaMetadata(value: unknown): ReplicaMetadata {
  const v = value as Partial<ReplicaMetadata> | null;
  const ok =
    v !== null &&
    typeof v === "object" &&
    typeof v.volumeId === "string" &&
    isValidGenerationId(v.volumeId) &&
    typeof v.copyId === "string" &&
    isValidGenerationId(v.copyId) &&
    Number.isSafeInteger(v.sizeBytes) &&
    v.sizeBytes! > 0 &&
    Number.isSafeInteger(v.regionBytes) &&
    v.regionBytes! >= 4096 &&
    (v.regionBytes! & (v.regionBytes! - 1)) === 0 &&
    isChangedSince(v.changedSince) &&
    Array.isArray(v.activityLog) &&
    v.activityLog.every((extent) => Number.isSafeInteger(extent) && extent >= 0) &&
    (v.resync === null ||
      (typeof v.resync === "object" &&
        isValidGenerationId(v.resync.validFor) &&
        typeof v.resync.remaining === "string")) &&
    (v.inSyncCopies === undefined || isInSyncCopies(v.inSyncCopies)) &&
    Number.isSafeInteger(v.highestEpoch) &&
    v.highestEpoch! >= 0 &&
    typeof v.cleanShutdown === "boolean" &&
    typeof v.generations === "object" &&
    v.generations !== null;
  if (!ok) throw new HavenError("HAVEN_ERR_CONFIG", "replica metadata is malformed");
  const generations = v.generations!;
  checkGenerations(generations);
  return {
    volumeId: v.volumeId!,
    copyId: v.copyId!,
    sizeBytes: v.sizeBytes!,
    regionBytes: v.regionBytes!,
    generations: { current: generations.current, bitmap: generations.bitmap, history: [...generations.history] },
    highestEpoch: v.highestEpoch!,
    cleanShutdown: v.cleanShutdown!,
    changedSince: { ...v.changedSince },
    activityLog: [...v.activityLog!],
    resync: v.resync ? { validFor: v.resync.validFor, remaining: v.resync.remaining } : null,
    inSyncCopies: v.inSyncCopies ? [...v.inSyncCopies] : null,
  };
}

function isChangedSince(value: unknown): value is Record<string, string> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return false;
  return Object.entries(value).every(([id, encoded]) => isValidGenerationId(id) && typeof encoded === "string");
}

export class ReplicaStore {
  private constructor(
    readonly directory: string,
    private dataDevice: FileDevice,
    private readonly metaFile: FileMetadataFile,
    private readonly store: MetadataStore<ReplicaMetadata>,
  ) {}

  /** Creates a new, empty copy (a sparse data file and fresh metadata). Refuses an existing one. */
  static async create(
    directory: string,
    options: { volumeId?: string; sizeBytes: number; regionBytes?: number },
  ): Promise<ReplicaStore> {
    const volumeId = options.volumeId ?? randomBytes(8).toString("hex");
    if (!isValidGenerationId(volumeId))
      throw new HavenError("HAVEN_ERR_USAGE", `volume id "${volumeId}" must be 16 hex digits`);
    await mkdir(directory, { recursive: true });
    if (await exists(join(directory, METADATA_FILE))) {
      throw new HavenError("HAVEN_ERR_USAGE", `${directory} already holds a replica; refusing to overwrite it`);
    }
    const data = await FileDevice.open(join(directory, DATA_FILE), { createSizeBytes: options.sizeBytes });
    const metaFile = await FileMetadataFile.open(join(directory, METADATA_FILE));
    await lockOrRefuse(metaFile, directory);
    const store = await MetadataStore.open(metaFile, parseReplicaMetadata);
    await store.save({
      volumeId,
      copyId: randomBytes(8).toString("hex"),
      sizeBytes: options.sizeBytes,
      regionBytes: options.regionBytes ?? DEFAULT_REGION_BYTES,
      generations: NEW_COPY,
      highestEpoch: 0,
      cleanShutdown: true,
      changedSince: {},
      activityLog: [],
      resync: null,
      inSyncCopies: null,
    });
    return new ReplicaStore(directory, data, metaFile, store);
  }

  /** Opens an existing copy, checking that the data file matches the metadata. */
  static async open(directory: string): Promise<ReplicaStore> {
    if (!(await exists(join(directory, METADATA_FILE)))) {
      throw new HavenError("HAVEN_ERR_NOT_FOUND", `${directory} holds no replica (no ${METADATA_FILE} file)`);
    }
    const metaFile = await FileMetadataFile.open(join(directory, METADATA_FILE));
    await lockOrRefuse(metaFile, directory);
    const store = await MetadataStore.open(metaFile, parseReplicaMetadata);
    const metadata = store.current?.value;
    if (metadata === undefined) {
      await metaFile.close();
      throw new HavenError(
        "HAVEN_ERR_CONFIG",
        `${directory}: no valid metadata record in either slot; the copy cannot be trusted`,
      );
    }
    let data = await FileDevice.open(join(directory, DATA_FILE));
    if (data.size > metadata.sizeBytes) {
      // A grow (grow.ts) that extended the file and crashed before its metadata was saved: the tail was
      // never written, so the copy is as it was before the grow began.
      await data.close();
      await truncate(join(directory, DATA_FILE), metadata.sizeBytes);
      data = await FileDevice.open(join(directory, DATA_FILE));
    }
    if (data.size !== metadata.sizeBytes) {
      await data.close();
      await metaFile.close();
      throw new HavenError(
        "HAVEN_ERR_CONFIG",
        `${directory}: data file has ${data.size} bytes, metadata says ${metadata.sizeBytes}`,
      );
    }
    return new ReplicaStore(directory, data, metaFile, store);
  }

  get metadata(): ReplicaMetadata {
    return this.store.current!.value;
  }

  /** The copy's data file (replaced, never changed in place, when the copy grows). */
  get data(): FileDevice {
    return this.dataDevice;
  }

  /**
   * Grows the copy to `sizeBytes` for a writer at `epoch` (refused below the highest seen; the epoch is
   * not taken: growing writes no data). The data file is extended with zeroes and made durable before
   * the metadata of the new size is saved (grow.ts says why that order is safe). A smaller size is
   * refused; the same size changes nothing. The engine grows a copy just after opening it, with no I/O
   * in flight on it.
   */
  async grow(epoch: number, sizeBytes: number): Promise<ReplicaMetadata> {
    checkEpoch(epoch, this.metadata);
    if (!mustGrow(this.metadata, sizeBytes)) return this.metadata;
    const path = join(this.directory, DATA_FILE);
    await this.dataDevice.flush();
    await truncate(path, sizeBytes);
    const handle = await openFile(path, "r+");
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
    const grown = await FileDevice.open(path);
    const before = this.dataDevice;
    this.dataDevice = grown;
    await before.close();
    await this.store.modify((newest) => {
      checkEpoch(epoch, newest!);
      return newest!.sizeBytes >= sizeBytes ? undefined : grownMetadata(newest!, sizeBytes);
    });
    return this.metadata;
  }

  /**
   * Admits a writer's epoch: refused if lower than the highest seen; if higher, persisted (and the copy
   * marked dirty) before this resolves, so no write under it lands before the fence is durable.
   */
  /** True when writes under `epoch` need no metadata save first (the usual case, checked without a promise). */
  admitted(epoch: number): boolean {
    const current = this.metadata;
    return epoch === current.highestEpoch && !current.cleanShutdown;
  }

  async admitEpoch(epoch: number): Promise<void> {
    const current = this.metadata;
    checkEpoch(epoch, current);
    if (epoch === current.highestEpoch && !current.cleanShutdown) return;
    await this.store.modify((newest) => {
      checkEpoch(epoch, newest!);
      if (epoch === newest!.highestEpoch && !newest!.cleanShutdown) return undefined;
      return { ...newest!, highestEpoch: epoch, cleanShutdown: false };
    });
  }

  /** A writer (admitted at `epoch`) durably changes generations, change bitmaps or activity log. */
  async update(epoch: number, patch: MetadataPatch): Promise<ReplicaMetadata> {
    if (patch.generations) checkGenerations(patch.generations);
    await this.store.modify((newest) => {
      checkEpoch(epoch, newest!);
      return { ...newest!, ...patch, highestEpoch: epoch, cleanShutdown: false };
    });
    return this.metadata;
  }

  /** Closes the files without flushing or recording a clean shutdown: what a crash leaves behind. */
  async abandon(): Promise<void> {
    await this.data.close();
    await this.metaFile.close();
  }

  /** Flushes the data, records a clean shutdown and closes. */
  async close(): Promise<void> {
    await this.data.flush();
    if (!this.metadata.cleanShutdown) await this.store.save({ ...this.metadata, cleanShutdown: true });
    await this.data.close();
    await this.metaFile.close();
  }
}

async function lockOrRefuse(metaFile: FileMetadataFile, directory: string): Promise<void> {
  if (metaFile.lockExclusive()) return;
  await metaFile.close();
  throw new HavenError(
    "HAVEN_ERR_CONFLICT",
    `${directory} is in use by another Haven process (engine or replica server)`,
  );
}

function checkEpoch(epoch: number, current: ReplicaMetadata): void {
  if (epoch < current.highestEpoch) {
    throw new HavenError(
      "HAVEN_ERR_STALE_EPOCH",
      `epoch ${epoch} is stale: this replica has seen epoch ${current.highestEpoch}`,
    );
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}
