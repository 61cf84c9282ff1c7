// Which host answers at an address: a copy's location names an address and port, and over TLS the
// engine must know whose certificate to expect there. Read from the hosts' records in etcd every few
// seconds; a location no host record names cannot be opened over TLS until one does.

import { keys, parseHostRecord } from "../cluster/schema.js";
import type { ClusterStore } from "../cluster/store.js";
import { HavenError } from "../core/errors.js";

const REFRESH_MS = 3_000;

export class PeerNames {
  private byAddress = new Map<string, string>();
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly store: ClusterStore) {}

  async refresh(): Promise<void> {
    const next = new Map<string, string>();
    try {
      for (const kv of await this.store.getPrefix(keys.hosts())) {
        try {
          const host = parseHostRecord(kv.value, kv.key);
          next.set(`${host.address}:${host.replicationPort}`, host.name);
        } catch {
          // A malformed host record names nobody.
        }
      }
      this.byAddress = next;
    } catch {
      // etcd unreachable: the last copy holds (hosts rarely move).
    }
  }

  start(): void {
    void this.refresh();
    this.timer = setInterval(() => void this.refresh(), REFRESH_MS);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** The host whose replica server is at address:port; throws when no host record says so. */
  nameOf = (address: string, port: number): string => {
    const name = this.byAddress.get(`${address}:${port}`);
    if (name === undefined)
      throw new HavenError(
        "HAVEN_ERR_UNAVAILABLE",
        `no host record names the replica server at ${address}:${port}, so its certificate cannot be checked yet`,
      );
    return name;
  };
}
