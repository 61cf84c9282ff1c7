// A volume written into an image file (`volume export`, `vm export`): read over NBD from its primary's
// front (image-copy.ts), into FILE.partial beside FILE, renamed onto FILE only once qemu-img finished.
// So a failed or stopped export leaves nothing behind, and never half-overwrites a FILE that was there.
//
// A volume that a running VM writes is refused unless forced: Haven takes no snapshot, so a copy read
// while the guest writes holds blocks from different moments. That is not even crash-consistent (a
// crash leaves one moment on disk; this is many), and its filesystem may need a repair or be beyond
// one. Stop the VM first (`haven vm stop`), as VMware, oVirt and virsh's offline export ask, or take that
// risk knowingly with --force.

import { existsSync, renameSync, rmSync } from "node:fs";
import { readClusterRecords, type ClusterRecords } from "../cluster/cluster-read.js";
import type { ClusterStore } from "../cluster/store.js";
import { HavenError } from "../core/errors.js";
import { formatBytes } from "../util/units.js";
import { copyVolumeToFile, type ImageFormat } from "./image-copy.js";
import { abortOnStopSignal } from "./poll.js";

/** VM states in which QEMU may be writing the disk. */
const WRITING_STATES = new Set(["starting", "running", "paused", "stopping"]);

/** The VM whose disk `volume` is, when it is wanted running or still runs. */
export function runningUser(records: ClusterRecords, volume: string): string | undefined {
  const vm = [...records.vms.values()].find((candidate) => candidate.volume === volume);
  if (vm === undefined) return undefined;
  const state = records.vmStatus.get(vm.name)?.record.state;
  return vm.desired === "started" || (state !== undefined && WRITING_STATES.has(state)) ? vm.name : undefined;
}

/** Refuses an existing file unless `force`: nothing of the operator's is overwritten by surprise. */
export function refuseExisting(file: string, force: boolean): void {
  if (!force && existsSync(file))
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `${file} exists already; nothing was written: give another file name, or --force to replace it`,
    );
}

/**
 * Writes volume `name` into `file` as `format`. Refused (nothing written) when the volume is unknown or
 * not served, or a running VM writes it and not `force`.
 */
export async function exportVolume(
  client: ClusterStore,
  name: string,
  file: string,
  format: ImageFormat,
  options: { readonly force: boolean; readonly tlsDir?: string },
): Promise<{ sizeBytes: number }> {
  const records = await readClusterRecords(client);
  const spec = records.volumes.get(name);
  if (spec === undefined)
    throw new HavenError("HAVEN_ERR_NOT_FOUND", `no volume named "${name}" (see 'haven volume list')`);
  const user = runningUser(records, name);
  if (user !== undefined && !options.force)
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `volume ${name} is the disk of VM ${user}, which runs: a copy read while it writes is not consistent. ` +
        `Stop it first ('haven vm stop ${user}'), or give --force to copy it anyway (its filesystem may need a repair)`,
    );
  const primary = records.primaries.get(name)?.host;
  const host = primary === undefined ? undefined : records.liveHosts.get(primary);
  if (host === undefined)
    throw new HavenError(
      "HAVEN_ERR_UNAVAILABLE",
      `volume ${name} is not served: its primary ${primary ?? "(none)"} is not live ('haven volume show ${name}')`,
    );
  if (user !== undefined)
    process.stderr.write(`VM ${user} runs: this copy holds blocks from different moments (--force)\n`);
  process.stderr.write(
    `writing volume ${name} (${formatBytes(spec.sizeBytes)}) from ${host.name} into ${file} (${format})\n`,
  );
  const partial = `${file}.partial`;
  const stop = abortOnStopSignal();
  try {
    await copyVolumeToFile(
      {
        address: host.address,
        nbdPort: host.nbdPort,
        volume: name,
        ...(options.tlsDir !== undefined && { tlsDir: options.tlsDir }),
      },
      spec.sizeBytes,
      partial,
      format,
      stop.signal,
    );
    renameSync(partial, file);
  } catch (error) {
    rmSync(partial, { force: true });
    throw error;
  } finally {
    stop.dispose();
  }
  return { sizeBytes: spec.sizeBytes };
}
