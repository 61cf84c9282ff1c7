// This host's disks: which there are, what each is, and the operator's requests about them.
//
// The disks are those of the agent's config plus those `haven disk add` gave it, which it keeps in
// STATEDIR/disks.json (a block device is formatted and mounted at STATEDIR/disks/ID, and mounted there
// again when the agent starts). Each disk carries a label (src/disk/disk-label.ts): a configured disk
// without one is labelled at start (the config names it, so it is Haven's); a disk whose label names
// another cluster or host is foreign, and no copy is opened or created on it.
//
// Each round the disks are classified (src/disk/disk-scan.ts: missing, failed when read-only or its
// probe fails, online) and published as /haven/disks/HOST/DISK (disk-schema.ts) when their state
// changes, or every DISK_PUBLISH_INTERVAL_MS for their usage. Requests (/haven/disk-requests/HOST/ID:
// add, remove, identify) are carried out here and answered in place, each with its reason when refused:
// the checks that keep a wrong command from destroying data (a path holding data or another cluster's
// label without --wipe naming its identity, the same disk twice, a disk that still holds copies, a
// disk whose identity no longer matches) run on the host, just before acting.

import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import {
  diskKeys,
  parseDiskRequest,
  type DiskRecord,
  type DiskRequest,
  type DiskState,
} from "../cluster/disk-schema.js";
import type { ClusterStore } from "../cluster/store.js";
import { errorMessage } from "../core/errors.js";
import { formatIdentity, sameIdentity, type DiskIdentity } from "../disk/disk-identity.js";
import type { DiskLabel } from "../disk/disk-label.js";
import { classifyDisk } from "../disk/disk-scan.js";
import type { AgentConfig, DiskConfig } from "./config.js";
import type { EventLog } from "./event-log.js";
import type { OwnDisk } from "./disk-decide.js";
import type { DiskInfoSource } from "./world.js";

/** A disk whose probe failed within this long, and passes again, is failing: still used, to be replaced. */
const FAILING_WINDOW_MS = 10 * 60_000;

/** Usage is republished at least this often (state changes go out at once). */
const DISK_PUBLISH_INTERVAL_MS = 10_000;

/** A disk `haven disk add` gave this host, as disks.json keeps it. */
interface AddedDisk {
  readonly name: string;
  readonly path: string;
  /** The block device Haven formatted and mounts at `path`. */
  readonly device?: string;
  readonly spare: boolean;
}

interface KnownDisk {
  readonly name: string;
  readonly path: string;
  readonly capacityBytes?: number;
  /** From disks.json (removable with `disk remove`), else from the config. */
  readonly added: AddedDisk | undefined;
  spare: boolean;
  label: DiskLabel | undefined;
  labelError: string | undefined;
  identity: DiskIdentity;
  state: DiskState;
  reason: string;
  published: string;
  publishedAt: number;
  /** Free bytes at the last publish. */
  freeBytes: number;
  /** When its probe went from passing to failing, within FAILING_WINDOW_MS. */
  probeErrors: number[];
  lastProbeOk: boolean | undefined;
}

export interface DiskRegistryOptions {
  readonly config: AgentConfig;
  readonly store: ClusterStore;
  readonly events: EventLog;
  readonly wallTime: () => Date;
  readonly now: () => number;
  readonly log: (line: string) => void;
  readonly source: DiskInfoSource;
  /** A disk of this cluster moved here from another host: its copies there become copies here. */
  readonly onMovedHere: (from: { host: string; disk: string }, disk: string) => Promise<void>;
}

export class DiskRegistry {
  private readonly disks = new Map<string, KnownDisk>();
  private clusterId = "";

  constructor(private readonly options: DiskRegistryOptions) {}

  /**
   * The disks copies may be placed on or found on (labelled for this host; not new, foreign or with an
   * unreadable label), in config order, then found by pattern, then in the order they were added.
   */
  list(): DiskConfig[] {
    return [...this.disks.values()]
      .filter((disk) => this.refusal(disk.name) === undefined)
      .map((disk) => ({
        name: disk.name,
        path: disk.path,
        ...(disk.capacityBytes !== undefined && { capacityBytes: disk.capacityBytes }),
      }));
  }

  /** Reads (or writes) each disk's label and mounts the added block devices; one disk's trouble shows in its state. */
  async start(): Promise<void> {
    this.clusterId = await clusterIdentity(this.options.store);
    for (const disk of this.options.config.disks) await this.know(disk.name, disk.path, undefined, disk.capacityBytes);
    for (const path of await this.options.source.expand(this.options.config.diskPaths ?? [])) {
      if ([...this.disks.values()].some((disk) => disk.path === path)) continue;
      const label = await this.options.source.readLabel(path).catch(() => undefined);
      const mine = label?.cluster === this.clusterId && label.host === this.options.config.host.name;
      // Known by its label: the same disk in another slot, or found in another order, is the same disk.
      const name = mine
        ? label.disk
        : `found-${basename(path)}`
            .toLowerCase()
            .replace(/[^a-z0-9-]/g, "-")
            .slice(0, 63);
      if (this.disks.has(name)) continue;
      await this.know(name, path, undefined, undefined, { scanned: true });
    }
    for (const added of await this.loadAdded()) {
      if (added.device !== undefined && !(await this.isMounted(added.path)))
        await this.options.source
          .mount(added.device, added.path)
          .catch((error: unknown) =>
            this.options.log(`disk ${added.name}: mounting ${added.device}: ${errorMessage(error)}`),
          );
      await this.know(added.name, added.path, added);
    }
  }

  private async isMounted(path: string): Promise<boolean> {
    return (await this.options.source.mountedDevice(path).catch(() => undefined)) !== undefined;
  }

  private async know(
    name: string,
    path: string,
    added: AddedDisk | undefined,
    capacityBytes?: number,
    how: { readonly scanned?: boolean } = {},
  ): Promise<KnownDisk> {
    const known: KnownDisk = {
      name,
      path,
      ...(capacityBytes !== undefined && { capacityBytes }),
      added,
      spare: added?.spare ?? false,
      label: undefined,
      labelError: undefined,
      identity: { kind: "path", value: path },
      state: "online",
      reason: "",
      published: "",
      publishedAt: -Infinity,
      freeBytes: 0,
      probeErrors: [],
      lastProbeOk: undefined,
    };
    this.disks.set(name, known);
    if (!existsSync(path)) return known; // missing: its state says so
    try {
      const found = await this.options.source.identify(path);
      known.identity = found.identity;
      known.label = await this.options.source.readLabel(path);
      if (known.label === undefined && how.scanned) {
        // Found by a pattern, with no label: a new disk, used once `haven disk add` takes it.
      } else if (known.label === undefined) {
        known.label = this.newLabel(name, found.identity, found.sizeBytes);
        await this.options.source.writeLabel(path, known.label);
        await this.options.events.event(
          "disk-labelled",
          `disk ${name} at ${path} labelled for this host (${formatIdentity(found.identity)})`,
        );
      } else if (known.label.disk !== name && known.label.host === this.options.config.host.name) {
        known.labelError = `its label names it ${known.label.disk}, but the config calls it ${name}: fix the config`;
      }
    } catch (error) {
      known.labelError = errorMessage(error);
    }
    return known;
  }

  private newLabel(disk: string, identity: DiskIdentity, sizeBytes: number): DiskLabel {
    return {
      format: 1,
      cluster: this.clusterId,
      host: this.options.config.host.name,
      disk,
      identity,
      sizeBytes,
      createdAt: this.options.wallTime().toISOString(),
    };
  }

  /** Each disk's record as last published (for the agent API). */
  records(): DiskRecord[] {
    return [...this.disks.values()]
      .filter((disk) => disk.published !== "")
      .map((disk) => JSON.parse(disk.published) as DiskRecord);
  }

  /** This host's disks as the failed-disk decision needs them (disk-decide.ts). */
  ownDisks(): OwnDisk[] {
    return [...this.disks.values()].map((disk) => ({
      name: disk.name,
      state: disk.state,
      spare: disk.spare,
      freeBytes: disk.freeBytes,
      path: disk.path,
      identity: formatIdentity(disk.identity),
      reason: disk.reason,
    }));
  }

  /** Why copies may not live on disk `name` (foreign, unreadable label), or undefined when they may. */
  refusal(name: string): string | undefined {
    const known = this.disks.get(name);
    if (known === undefined) return undefined;
    if (known.labelError !== undefined) return `disk ${name}'s label: ${known.labelError}`;
    if (known.label === undefined) return `disk ${name} has no label: add it with 'haven disk add'`;
    if (known.state === "foreign") return `disk ${name} is foreign: ${known.reason}`;
    const label = known.label;
    if (label !== undefined && (label.cluster !== this.clusterId || label.host !== this.options.config.host.name))
      return `disk ${name} belongs to host ${label.host} of cluster ${label.cluster}`;
    return undefined;
  }

  /**
   * Classifies each disk and publishes its record when its state changed or its usage is due.
   * `probeOk` is the disk's latest health probe; `volumesOn` the volumes with a copy placed on it.
   */
  async publish(probeOk: (disk: string) => boolean | undefined, volumesOn: (disk: string) => string[]): Promise<void> {
    for (const known of this.disks.values()) {
      try {
        await this.publishOne(known, probeOk(known.name), volumesOn(known.name));
      } catch (error) {
        this.options.log(`disk ${known.name}: publishing its record failed: ${errorMessage(error)}`);
      }
    }
  }

  private async publishOne(known: KnownDisk, probeOk: boolean | undefined, volumes: string[]): Promise<void> {
    const { config, store, events, wallTime, now, source } = this.options;
    const path = known.path;
    const present = existsSync(path);
    const readOnly = present && (await source.readOnly(path).catch(() => false));
    if (probeOk === false && known.lastProbeOk !== false) known.probeErrors.push(now());
    known.lastProbeOk = probeOk;
    known.probeErrors = known.probeErrors.filter((at) => now() - at < FAILING_WINDOW_MS);
    const verdict = classifyDisk({
      ioErrors: known.probeErrors.length,
      label: known.label,
      ...(known.labelError !== undefined && { labelError: known.labelError }),
      cluster: this.clusterId,
      host: config.host.name,
      present,
      probeOk,
      readOnly,
    });
    // A spare that got copies (a rebuild or a replacement used it) is a disk in service.
    if (known.spare && volumes.length > 0) await this.setSpare(known, false);
    const changed = verdict.state !== known.state || verdict.reason !== known.reason;
    if (changed && known.published !== "")
      await events.event("disk-state", `disk ${known.name} (${path}) is ${verdict.state}: ${verdict.reason}`);
    known.state = verdict.state;
    known.reason = verdict.reason;
    if (!changed && now() - known.publishedAt < DISK_PUBLISH_INTERVAL_MS) return;
    const usage = present
      ? await source.usage(
          path,
          volumes.map((volume) => join(path, volume)),
        )
      : undefined;
    const record: DiskRecord = {
      host: config.host.name,
      disk: known.name,
      path,
      state: verdict.state,
      reason: verdict.reason,
      spare: known.spare,
      identity: known.identity,
      sizeBytes: usage?.sizeBytes ?? 0,
      freeBytes: usage?.freeBytes ?? 0,
      usedBytes: usage?.usedBytes ?? 0,
      fsId: present ? source.filesystemId(path) : "",
      copies: (usage?.copies ?? [])
        .map((copy, i) => ({ volume: volumes[i]!, allocatedBytes: copy.allocatedBytes, missing: copy.missing }))
        .filter((copy) => !copy.missing)
        .map(({ volume, allocatedBytes }) => ({ volume, allocatedBytes })),
      updatedAt: wallTime().toISOString(),
    };
    known.freeBytes = record.freeBytes;
    const value = JSON.stringify(record);
    await store.put(diskKeys.disk(config.host.name, known.name), value);
    known.published = value;
    known.publishedAt = now();
  }

  // ---- the operator's requests --------------------------------------------------------------------

  /** Carries out this host's pending disk requests; `placedOn(disk)` names the volumes with a copy placed there. */
  async handleRequests(placedOn: (disk: string) => string[]): Promise<void> {
    const { store, config, log } = this.options;
    for (const kv of await store.getPrefix(diskKeys.requestsOf(config.host.name))) {
      let request: DiskRequest;
      try {
        request = parseDiskRequest(kv.value, kv.key);
      } catch (error) {
        log(`dropping a malformed disk request: ${errorMessage(error)}`);
        await store.delete(kv.key);
        continue;
      }
      if (request.state !== "pending") continue;
      let answer: { state: "done" | "refused"; result: string; answeredDisk?: string };
      try {
        answer = { state: "done", ...(await this.carryOut(request, placedOn)) };
      } catch (error) {
        answer = { state: "refused", result: errorMessage(error), ...(request.disk && { answeredDisk: request.disk }) };
      }
      await store.txn(
        [{ key: kv.key, target: "modRevision", result: "equal", value: kv.modRevision }],
        [{ type: "put", key: kv.key, value: JSON.stringify({ ...request, ...answer }) }],
        [],
      );
    }
  }

  private async carryOut(
    request: DiskRequest,
    placedOn: (disk: string) => string[],
  ): Promise<{ result: string; answeredDisk?: string }> {
    switch (request.kind) {
      case "add":
        return this.add(request);
      case "remove":
        return this.remove(request, placedOn);
      case "identify":
        return this.identify(request);
    }
  }

  private async add(request: DiskRequest): Promise<{ result: string; answeredDisk: string }> {
    const { source, config, events } = this.options;
    const path = request.path ?? "";
    const refuse = (why: string): never => {
      throw new Error(why);
    };
    if (config.stateDir === undefined)
      refuse(`host ${config.host.name}'s agent config has no stateDir, where added disks are kept: add one`);
    if (!path.startsWith("/")) refuse(`"${path}" is not an absolute path`);
    const inspection = await source.inspect(path);
    if (inspection.kind === "not-a-disk") refuse(inspection.detail);
    const found = await source.identify(path);
    const identity = formatIdentity(found.identity);
    for (const known of [...this.disks.values()]) {
      const same = known.path === path || sameIdentity(known.identity, found.identity);
      if (!same) continue;
      // A directory a pattern found without a label is only listed: adding it is what takes it.
      if (known.label === undefined && known.added === undefined && known.path === path) this.disks.delete(known.name);
      else refuse(`${path} (${identity}) is disk ${known.name} of this host already`);
    }
    const ours =
      inspection.label !== undefined &&
      inspection.label.cluster === this.clusterId &&
      inspection.label.host === config.host.name;
    const wiped = request.wipe !== undefined && request.wipe === found.identity.value;
    if (request.wipe !== undefined && !wiped)
      refuse(
        `--wipe ${request.wipe} does not match the disk at ${path}, which is ${identity}: nothing was changed; ` +
          "check that this is the disk you mean",
      );
    const label = inspection.label;
    const movedHere =
      inspection.kind === "haven-label" && !ours && !wiped && label !== undefined && label.cluster === this.clusterId;
    if (movedHere) {
      // A disk of this cluster moved from another host: its copies rejoin here, once that host no
      // longer uses it (its record there is not online).
      const there = await this.options.store.get(diskKeys.disk(label.host, label.disk));
      const record =
        there === undefined
          ? undefined
          : (JSON.parse(there.value) as { state?: string; identity?: { value?: string } });
      if (record?.state === "online" && record.identity?.value === found.identity.value)
        refuse(`${path} is disk ${label.disk} of host ${label.host}, which still has it online: remove it there first`);
    }
    if (inspection.kind === "haven-label" && !ours && !wiped && !movedHere) {
      const label = inspection.label!;
      refuse(
        `${path} holds disk ${label.disk} of host ${label.host} in cluster ${label.cluster}: another cluster's or ` +
          `host's data. To destroy it and add the disk here, repeat its identity: --wipe ${found.identity.value}`,
      );
    }
    if ((inspection.kind === "filesystem" || inspection.kind === "holds-data") && !wiped)
      refuse(
        `${inspection.detail}. To destroy what is on it and add it, repeat its identity: --wipe ${found.identity.value}`,
      );
    if (!found.blockDevice && wiped && inspection.kind !== "empty")
      refuse(
        `${path} is a directory: Haven never deletes a directory's contents; empty it yourself, or give a block device`,
      );
    const name =
      (ours || movedHere) && !wiped ? (request.disk ?? inspection.label!.disk) : (request.disk ?? this.nextDiskName());
    if (this.disks.has(name)) refuse(`this host has a disk named ${name} already`);
    let diskPath = path;
    let device: string | undefined;
    if (found.blockDevice) {
      device = path;
      diskPath = join(config.stateDir!, "disks", name);
      await mkdir(diskPath, { recursive: true });
      if ((!ours && !movedHere) || wiped)
        await source.format(device, request.fs ?? "ext4", `haven-${name}`.slice(0, 12));
      await source.mount(device, diskPath);
    }
    const added: AddedDisk = {
      name,
      path: diskPath,
      ...(device !== undefined && { device }),
      spare: request.spare ?? false,
    };
    if (!ours || wiped || name !== label?.disk)
      await source.writeLabel(diskPath, this.newLabel(name, found.identity, found.sizeBytes));
    await this.saveAdded([...(await this.loadAdded()).filter((disk) => disk.name !== name), added]);
    await this.know(name, diskPath, added);
    const what =
      `${request.spare ? "spare " : ""}disk ${name} (${identity}) added at ${diskPath}` +
      (device !== undefined ? ` (on ${device})` : "") +
      (ours && !wiped ? "; its copies rejoin" : "") +
      (movedHere ? `; it was disk ${label!.disk} of ${label!.host}: its copies move here and rejoin` : "");
    await events.event("disk-added", what);
    if (movedHere) await this.options.onMovedHere({ host: label!.host, disk: label!.disk }, name);
    return { result: what, answeredDisk: name };
  }

  private async remove(
    request: DiskRequest,
    placedOn: (disk: string) => string[],
  ): Promise<{ result: string; answeredDisk: string }> {
    const { source, config, events, store } = this.options;
    const name = request.disk ?? "";
    const known = this.disks.get(name);
    if (known === undefined) throw new Error(`host ${config.host.name} has no disk ${name}`);
    if (known.added === undefined)
      throw new Error(
        `disk ${name} comes from the agent config: remove it there (and restart the agent) once it holds no copy`,
      );
    const volumes = placedOn(name);
    if (volumes.length > 0)
      throw new Error(
        `disk ${name} holds copies of ${volumes.join(", ")}: move them first with 'haven disk evacuate ${config.host.name} ${name}'`,
      );
    const now = existsSync(known.path) ? (await source.identify(known.path)).identity : known.identity;
    const identity = formatIdentity(now);
    if (request.identity !== undefined && request.identity !== identity)
      throw new Error(
        `disk ${name} is now ${identity}, not ${request.identity} as the command saw it: nothing was changed`,
      );
    if (known.added.device !== undefined && (await this.isMounted(known.path))) await source.unmount(known.path);
    this.disks.delete(name);
    await this.saveAdded((await this.loadAdded()).filter((disk) => disk.name !== name));
    await store.delete(diskKeys.disk(config.host.name, name));
    const what = `disk ${name} (${identity}) removed from ${config.host.name}${known.added.device ? `; ${known.added.device} is unmounted and may be pulled` : ""}`;
    await events.event("disk-removed", what);
    return { result: what, answeredDisk: name };
  }

  private async identify(request: DiskRequest): Promise<{ result: string; answeredDisk: string }> {
    const name = request.disk ?? "";
    const known = this.disks.get(name);
    if (known === undefined) throw new Error(`host ${this.options.config.host.name} has no disk ${name}`);
    const identity = formatIdentity(known.identity);
    const device = known.added?.device ?? known.identity.device;
    const led =
      device === undefined
        ? { supported: false, detail: "the disk has no block device of its own (a directory)" }
        : await this.options.source.locate(device, request.off !== true);
    const lit = led.supported ? `locate LED ${request.off ? "off" : "on"}` : `no locate LED: ${led.detail}`;
    return {
      result: `disk ${name}: ${identity}, at ${known.path}${device ? ` on ${device}` : ""}; ${lit}`,
      answeredDisk: name,
    };
  }

  private setSpare(known: KnownDisk, spare: boolean): Promise<void> {
    known.spare = spare;
    if (known.added === undefined) return Promise.resolve();
    return this.loadAdded().then((added) =>
      this.saveAdded(added.map((disk) => (disk.name === known.name ? { ...disk, spare } : disk))),
    );
  }

  private nextDiskName(): string {
    for (let n = 0; ; n++) if (!this.disks.has(`disk${n}`)) return `disk${n}`;
  }

  private async loadAdded(): Promise<AddedDisk[]> {
    const dir = this.options.config.stateDir;
    if (dir === undefined) return [];
    try {
      const parsed = JSON.parse(await readFile(join(dir, "disks.json"), "utf8")) as AddedDisk[];
      return Array.isArray(parsed) ? parsed : [];
    } catch {
      return [];
    }
  }

  private async saveAdded(disks: readonly AddedDisk[]): Promise<void> {
    const dir = this.options.config.stateDir!;
    await mkdir(dir, { recursive: true });
    const temporary = join(dir, `disks.json.${randomBytes(4).toString("hex")}`);
    await writeFile(temporary, `${JSON.stringify(disks, null, 2)}\n`, { flush: true });
    await rename(temporary, join(dir, "disks.json"));
  }
}

/** The cluster's id: read, or written by the first agent to ask (compare-and-swap, so all agree). */
async function clusterIdentity(store: ClusterStore): Promise<string> {
  const key = diskKeys.cluster();
  for (;;) {
    const found = await store.get(key);
    if (found !== undefined) return (JSON.parse(found.value) as { id: string }).id;
    const id = randomBytes(8).toString("hex");
    const result = await store.txn(
      [{ key, target: "createRevision", result: "equal", value: 0 }],
      [{ type: "put", key, value: JSON.stringify({ id, createdAt: new Date().toISOString() }) }],
      [],
    );
    if (result.succeeded) return id;
  }
}
