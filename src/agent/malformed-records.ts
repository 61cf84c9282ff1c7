// What the agent does with records it read from etcd that failed the checks (cluster-read.ts): it
// ignores them, and says so once. A forged or corrupt key is seen again every round (every few
// seconds), so each is logged once per key and revision: a rewrite of the key is logged again, and a
// key that is gone (deleted or repaired) is forgotten, which keeps the memory bounded by what is
// malformed now. Nothing else happens: no retry, no event.
//
// A volume with a malformed spec, primary or copy record is held rather than treated as deleted: its
// engine keeps running as it is and its copies stay where they are, since a corrupted record must not
// make the agent remove a volume's data or take a role it was not given.

import type { MalformedRecord } from "../cluster/cluster-read.js";
import { isDiskName, isHostName, isVolumeName } from "../cluster/names.js";
import { keys } from "../cluster/schema.js";

export class MalformedRecords {
  /** The revision of each malformed key as last logged. */
  private logged = new Map<string, number>();
  private held: ReadonlySet<string> = new Set();

  constructor(private readonly log: (line: string) => void) {}

  /** Takes the malformed records of one read: logs those not logged yet at this revision. */
  note(records: readonly MalformedRecord[]): void {
    const now = new Map<string, number>();
    const held = new Set<string>();
    for (const record of records) {
      now.set(record.key, record.modRevision);
      if (this.logged.get(record.key) !== record.modRevision)
        this.log(`ignoring a malformed record (logged once): ${record.error.message}`);
      const volume = volumeOf(record.key);
      if (volume !== undefined) held.add(volume);
    }
    this.logged = now;
    this.held = held;
  }

  /** The volumes (with a valid name) that have a malformed spec, primary or copy record. */
  get heldVolumes(): ReadonlySet<string> {
    return this.held;
  }
}

/**
 * The volume a spec, primary or copy key is of, when the key itself is well formed (VOLUME, or
 * VOLUME/HOST/DISK for a copy, each a valid name) and only its value is not. A key that is not one of
 * a volume's (`/haven/replicas/web/../../x`) holds nothing: it is ignored, as any stray key is.
 */
function volumeOf(key: string): string | undefined {
  for (const prefix of [keys.volumes(), keys.primaries()]) {
    if (!key.startsWith(prefix)) continue;
    const name = key.slice(prefix.length);
    return isVolumeName(name) ? name : undefined;
  }
  if (!key.startsWith(keys.replicas())) return undefined;
  const [volume, host, disk, ...rest] = key.slice(keys.replicas().length).split("/");
  const wellFormed =
    volume !== undefined &&
    host !== undefined &&
    disk !== undefined &&
    rest.length === 0 &&
    isVolumeName(volume) &&
    isHostName(host) &&
    isDiskName(disk);
  return wellFormed ? volume : undefined;
}
