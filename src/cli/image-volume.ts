// A new volume made for a disk image (`volume import`, `vm create --image`, `vm import`): placed and
// recorded like any volume (volume-admin.ts), waited for until its primary serves it, filled with the
// image over NBD (image-copy.ts), and then handed to what it was made for (a VM's record, or nothing).
// Nothing is left half-made: when the wait, the copy or that last step fails, or the operator stops it
// with Ctrl-C, the volume is deleted again, so a failed import can be run again under the same name.

import { cliActor } from "./actor.js";
import { readClusterRecords } from "../cluster/cluster-read.js";
import type { EtcdClient } from "../cluster/etcd-client.js";
import { createVolume, deleteVolume, type CreatedVolume } from "../cluster/volume-admin.js";
import { HavenError, errorMessage } from "../core/errors.js";
import { formatBytes } from "../util/units.js";
import { copyImageToVolume, type ImageFile } from "./image-copy.js";
import { abortOnStopSignal } from "./poll.js";
import { waitUntilServed } from "./volume-served.js";

/** Copies are written in 4 KiB blocks: a volume's size is a multiple of it. */
const VOLUME_SIZE_ALIGNMENT_BYTES = 4096;
const SERVED_TIMEOUT_MS = 60_000;

export interface NewVolume {
  readonly name: string;
  readonly sizeBytes: number;
  readonly copies: number;
  /** The hosts the primary may go on, and why (a VM's disk goes where the VM has room). */
  readonly primaryAmong?: { readonly hosts: ReadonlySet<string>; readonly why: string };
}

/** The smallest volume size that holds `bytes`. */
export function volumeSizeFor(bytes: number): number {
  return Math.ceil(bytes / VOLUME_SIZE_ALIGNMENT_BYTES) * VOLUME_SIZE_ALIGNMENT_BYTES;
}

/** createVolume, with the fix for an image no host has room for. */
async function placeVolume(
  client: EtcdClient,
  request: NewVolume,
  image: ImageFile | undefined,
): Promise<CreatedVolume> {
  try {
    return await createVolume(client, request, { actor: cliActor() });
  } catch (error) {
    if (!(error instanceof HavenError) || error.code !== "HAVEN_ERR_NO_SPACE" || image === undefined) throw error;
    throw new HavenError(
      "HAVEN_ERR_NO_SPACE",
      `${error.message}. Nothing was created: ${image.file} needs ${formatBytes(request.sizeBytes)} on each of ` +
        `${request.copies} hosts; import it with fewer --replicas, or give the hosts room first ('haven disk add')`,
      { cause: error },
    );
  }
}

/**
 * Creates the volume, waits until it is served, copies `image` onto it (when given) and runs `then`;
 * deletes the volume again when any of it fails or is stopped. Resolves with `then`'s result.
 */
export async function createVolumeFromImage<T>(
  client: EtcdClient,
  request: NewVolume,
  image: ImageFile | undefined,
  tlsDir: string | undefined,
  then: () => Promise<T>,
): Promise<T> {
  const created = await placeVolume(client, request, image);
  const { name } = request;
  // Ctrl-C stops the wait or the copy (qemu-img is stopped) and comes to the catch below.
  const stop = abortOnStopSignal();
  try {
    process.stderr.write(
      `volume ${name} created (${formatBytes(request.sizeBytes)}, ${request.copies} copies); ` +
        `waiting for ${created.primary.host} to serve it\n`,
    );
    if (!(await waitUntilServed(client, created, SERVED_TIMEOUT_MS, stop.signal)))
      throw new HavenError("HAVEN_ERR_UNAVAILABLE", `stopped before volume ${name} was served`);
    if (image !== undefined) {
      const host = (await readClusterRecords(client)).liveHosts.get(created.primary.host);
      if (host === undefined)
        throw new HavenError("HAVEN_ERR_UNAVAILABLE", `the primary's host ${created.primary.host} is no longer live`);
      await copyImageToVolume(
        image,
        { address: host.address, nbdPort: host.nbdPort, volume: name, ...(tlsDir !== undefined && { tlsDir }) },
        stop.signal,
      );
    }
    return await then();
  } catch (error) {
    try {
      await deleteVolume(client, name, { actor: cliActor() });
      process.stderr.write(`volume ${name} deleted again: ${errorMessage(error).split("\n")[0]}\n`);
    } catch (cleanup) {
      process.stderr.write(
        `volume ${name} could not be deleted again (${errorMessage(cleanup)}): ` +
          `delete it with 'haven volume delete ${name} --yes'\n`,
      );
    }
    throw error;
  } finally {
    stop.dispose();
  }
}
