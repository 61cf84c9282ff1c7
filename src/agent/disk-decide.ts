// What a host does about its failed disks, decided from its disks and the volumes' records: pure, so
// every case is a unit test. A disk that failed (I/O errors, read-only, unreadable label) or went
// missing holds copies the volumes can no longer use. For each such copy whose volume has another copy
// recorded in sync, the copy moves to one of this host's spare disks with room (the spare then takes a
// rebuild from the in-sync copies); with no spare left, the operator is told once which disk to replace
// (identity, path, host) and which volumes are degraded meanwhile. A copy that is its volume's last in
// sync stays where it is: only that disk can still hold data nothing else has.

import { copyId, type CopyPlace, type ReplicaRecord, type VolumeSpec } from "../cluster/schema.js";

export interface OwnDisk {
  readonly name: string;
  readonly state: string;
  readonly spare: boolean;
  readonly freeBytes: number;
  readonly path: string;
  readonly identity: string;
  readonly reason: string;
}

export type DiskAction =
  | { readonly kind: "rebuild-on-spare"; readonly volume: string; readonly from: CopyPlace; readonly to: CopyPlace }
  | { readonly kind: "needs-replacement"; readonly disk: string; readonly message: string };

const FAILED = new Set(["failed", "missing"]);

export function decideFailedDisks(input: {
  readonly me: string;
  readonly disks: readonly OwnDisk[];
  readonly volumes: readonly VolumeSpec[];
  readonly records: ReadonlyMap<string, ReadonlyMap<string, ReplicaRecord>>;
  /** Disks already announced as needing replacement (not announced again). */
  readonly announced: ReadonlySet<string>;
}): DiskAction[] {
  const actions: DiskAction[] = [];
  const room = new Map(
    input.disks.filter((disk) => disk.spare && disk.state === "online").map((disk) => [disk.name, disk.freeBytes]),
  );
  for (const disk of input.disks) {
    if (!FAILED.has(disk.state)) continue;
    const from = { host: input.me, disk: disk.name };
    const degraded: string[] = [];
    for (const spec of input.volumes) {
      if (!spec.replicas.some((copy) => copyId(copy) === copyId(from))) continue;
      const recorded = input.records.get(spec.name);
      const othersInSync = spec.replicas.some(
        (copy) => copyId(copy) !== copyId(from) && recorded?.get(copyId(copy))?.state === "in-sync",
      );
      if (!othersInSync) continue; // its last in-sync copy: it stays, whatever the disk's state
      const taken = new Set(spec.replicas.filter((copy) => copy.host === input.me).map((copy) => copy.disk));
      const spare = [...room]
        .filter(([name, free]) => !taken.has(name) && free >= spec.sizeBytes)
        .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))[0];
      if (spare === undefined) {
        degraded.push(spec.name);
        continue;
      }
      room.set(spare[0], spare[1] - spec.sizeBytes);
      actions.push({ kind: "rebuild-on-spare", volume: spec.name, from, to: { host: input.me, disk: spare[0] } });
    }
    if (degraded.length > 0 && !input.announced.has(disk.name))
      actions.push({
        kind: "needs-replacement",
        disk: disk.name,
        message:
          `disk ${disk.name} of ${input.me} is ${disk.state} (${disk.reason}) and no spare has room for its copies: ` +
          `replace it. It is ${disk.identity}, at ${disk.path}. Degraded meanwhile: ${degraded.join(", ")}. ` +
          `Add a disk ('haven disk add ${input.me} PATH'), then 'haven disk replace ${input.me} ${disk.name} NEW'`,
      });
  }
  return actions;
}
