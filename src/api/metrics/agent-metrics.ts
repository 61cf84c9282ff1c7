// The agent's Prometheus metrics (GET /metrics on the agent API; docs/metrics.md lists every one with
// its meaning). Everything is read from the agent through AgentView at scrape time, once per scrape (one
// snapshot that every metric's collect reads), and rendered by prom-client in the text exposition
// format 0.0.4. Nothing is counted here: the counters are the engine's and the agent's own, so a
// scrape costs the same whether Prometheus comes every second or never.
//
// Naming: every name starts with `haven_`; counters end in `_total` and nothing else does; values are in
// base units (`_seconds`, `_bytes`); facts that are only labels are `_info` gauges set to 1; a state is
// one gauge per possible state, 1 for the current one (so `== 1` selects it and nothing goes stale).
// Labels name only bounded things: hosts, volumes, disks, VMs, peers, states, results.
//
// Two kinds of facts, so that alerts work when a host is dead (a dead agent reports nothing):
// - `haven_host_*`, `haven_volume_*`, `haven_copy_*`, `haven_disk_*`, `haven_vm_*`: what this agent
//   sees of itself and of what it serves (a volume's metrics come from its primary only);
// - `haven_cluster_*`: the cluster as this agent's last round read it from etcd (which hosts hold a
//   lease, each volume's primary, each copy's record), the same from every agent: rules aggregate
//   them with max/min by (host) or by (volume), so any one live agent is enough to see a host down or
//   a volume without a live primary. `haven_cluster_view_age_seconds` says how fresh that view is.

import { Counter, Gauge, Registry } from "prom-client";
import { DISK_STATES, type DiskRecord } from "../../cluster/disk-schema.js";
import type { VmState } from "../../cluster/vm-schema.js";
import type { ReplicaState, VolumeState } from "../../engine/status.js";
import type { AgentMetrics, AgentView, HostHealth, VmHere } from "../../agent/view.js";
import { SnapshotHistogram, type LabelledHistogram } from "./snapshot-histogram.js";

export const METRICS_CONTENT_TYPE = Registry.PROMETHEUS_CONTENT_TYPE;

const VOLUME_STATES: readonly VolumeState[] = ["starting", "healthy", "degraded", "resyncing", "failed", "stopping"];
const COPY_STATES: readonly ReplicaState[] = [
  "connecting",
  "in-sync",
  "resyncing",
  "faulted",
  "split-brain",
  "refused",
];
const VM_STATES: readonly VmState[] = ["starting", "running", "paused", "stopping", "stopped", "pending", "error"];

/** Everything one scrape reads of the agent, taken once before any metric is rendered. */
interface Scrape {
  readonly health: HostHealth;
  readonly metrics: AgentMetrics;
  readonly disks: readonly DiskRecord[];
  readonly vms: readonly VmHere[];
}

type Labels = Record<string, string>;
type Emit = (labels: Labels, value: number) => void;

export class AgentMetricsRegistry {
  private readonly registry = new Registry();
  private scrape: Scrape | undefined;
  /** Renders one at a time: each reads the snapshot its own render took. */
  private rendering: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly agent: AgentView,
    private readonly version: string,
  ) {
    this.defineHostMetrics();
    this.defineVolumeMetrics();
    this.defineCopyMetrics();
    this.defineDiskMetrics();
    this.defineVmMetrics();
    this.defineClusterMetrics();
  }

  /** The exposition text of every metric now. */
  render(): Promise<string> {
    const rendered = this.rendering.then(async () => {
      this.scrape = {
        health: this.agent.health(),
        metrics: this.agent.metrics(),
        disks: this.agent.disks(),
        vms: this.agent.vms(),
      };
      try {
        return await this.registry.metrics();
      } finally {
        this.scrape = undefined;
      }
    });
    this.rendering = rendered.catch(() => undefined);
    return rendered;
  }

  /** The names of every metric family (for the naming tests and the docs check). */
  names(): string[] {
    return this.registry.getMetricsAsArray().map((metric) => metric.name);
  }

  // ---- the metrics --------------------------------------------------------------------------------

  private defineHostMetrics(): void {
    const host = (s: Scrape): Labels => ({ host: s.health.name });
    this.gauge(
      "haven_host_up",
      "1: this host's agent answers (a dead agent is not scraped: see up).",
      ["host"],
      (s, emit) => emit(host(s), 1),
    );
    this.gauge(
      "haven_host_info",
      "Always 1; the agent's host name and Haven version.",
      ["host", "version"],
      (s, emit) => emit({ ...host(s), version: this.version }, 1),
    );
    this.gauge(
      "haven_host_lease_held",
      "1 while this host holds its etcd lease (held or being proven), 0 once it is lost.",
      ["host"],
      (s, emit) => emit(host(s), s.health.leaseHeld ? 1 : 0),
    );
    this.gauge(
      "haven_host_lease_age_seconds",
      "Time since the send of the last lease keepalive etcd accepted; writes stop at haven_host_fence_after_seconds.",
      ["host"],
      (s, emit) => emit(host(s), s.health.lastKeepaliveAgoMs / 1000),
    );
    this.gauge(
      "haven_host_fence_after_seconds",
      "The lease age at which this host stops completing writes (timings.fenceAfterMs).",
      ["host"],
      (s, emit) => emit(host(s), s.metrics.timings.fenceAfterMs / 1000),
    );
    this.gauge(
      "haven_host_lease_ttl_seconds",
      "The TTL of this host's etcd lease (timings.leaseTtlMs).",
      ["host"],
      (s, emit) => emit(host(s), s.metrics.timings.leaseTtlMs / 1000),
    );
    this.gauge(
      "haven_host_lease_renew_interval_seconds",
      "Time between two scheduled lease keepalives (timings.renewIntervalMs).",
      ["host"],
      (s, emit) => emit(host(s), s.metrics.timings.renewIntervalMs / 1000),
    );
    this.gauge(
      "haven_host_event_loop_lag_seconds",
      "The agent's worst event-loop lag since its last health check.",
      ["host"],
      (s, emit) => emit(host(s), s.health.eventLoopLagMs / 1000),
    );
    this.gauge(
      "haven_host_peer_link_up",
      "1 while the heartbeat over the replication link to the peer host is answered.",
      ["host", "peer"],
      (s, emit) => {
        for (const link of s.health.links) emit({ ...host(s), peer: link.peer }, link.up ? 1 : 0);
      },
    );
    this.gauge(
      "haven_host_peer_heartbeat_rtt_seconds",
      "Round trip of the latest answered heartbeat to the peer host (absent before the first answer).",
      ["host", "peer"],
      (s, emit) => {
        for (const link of s.health.links)
          if (link.rttMs !== null) emit({ ...host(s), peer: link.peer }, link.rttMs / 1000);
      },
    );
  }

  private defineVolumeMetrics(): void {
    const served = (s: Scrape) => s.metrics.served;
    const volume = (name: string): Labels => ({ volume: name });
    this.gauge(
      "haven_volume_health",
      "1 for the volume's state as its engine on this host (its primary) sees it, 0 for the others.",
      ["volume", "state"],
      (s, emit) => {
        for (const { status } of served(s))
          for (const state of VOLUME_STATES) emit({ volume: status.name, state }, status.state === state ? 1 : 0);
      },
    );
    this.gauge(
      "haven_volume_primary_info",
      "Always 1, from the volume's primary: the host that serves it.",
      ["volume", "host"],
      (s, emit) => {
        for (const { status } of served(s)) emit({ volume: status.name, host: s.health.name }, 1);
      },
    );
    this.gauge("haven_volume_epoch", "The epoch the volume's engine writes at.", ["volume"], (s, emit) => {
      for (const { status } of served(s)) emit(volume(status.name), status.epoch);
    });
    this.gauge("haven_volume_copies", "The copies the volume's engine writes to.", ["volume"], (s, emit) => {
      for (const { status } of served(s)) emit(volume(status.name), status.replicas.length);
    });
    this.gauge(
      "haven_volume_in_sync_copies",
      "The volume's copies in the in-sync set (each write completes on all of them).",
      ["volume"],
      (s, emit) => {
        for (const { status } of served(s))
          emit(volume(status.name), status.replicas.filter((replica) => replica.state === "in-sync").length);
      },
    );
    this.gauge("haven_volume_size_bytes", "The volume's size.", ["volume"], (s, emit) => {
      for (const { status } of served(s)) emit(volume(status.name), status.sizeBytes);
    });
    type Served = AgentMetrics["served"][number];
    const count = (name: string, help: string, pick: (volume: Served) => number) =>
      this.counter(name, help, ["volume"], (s, emit) => {
        for (const entry of served(s)) emit(volume(entry.status.name), pick(entry));
      });
    count("haven_volume_reads_total", "Client reads the NBD front served from the volume.", (v) => v.requests.reads);
    count(
      "haven_volume_writes_total",
      "Client writes, trims and zeroing the NBD front completed on the volume.",
      (v) => v.requests.writes,
    );
    count("haven_volume_read_bytes_total", "Bytes clients read from the volume.", (v) => v.requests.readBytes);
    count("haven_volume_written_bytes_total", "Bytes clients wrote to the volume.", (v) => v.requests.writtenBytes);
    count(
      "haven_volume_request_errors_total",
      "Client requests to the volume answered with an error.",
      (v) => v.requests.errors,
    );
    count("haven_volume_flushes_total", "Flushes the volume's engine completed.", (v) => v.status.io.flushes);
    this.histogram(
      "haven_volume_read_duration_seconds",
      "Client reads of the volume, from the NBD front's dispatch to the reply.",
      (s) =>
        served(s).map(({ status, requests }) => ({ labels: volume(status.name), histogram: requests.readSeconds })),
    );
    this.histogram(
      "haven_volume_write_duration_seconds",
      "Client writes, trims and zeroing of the volume, from the NBD front's dispatch to the reply (every in-sync copy applied it).",
      (s) =>
        served(s).map(({ status, requests }) => ({ labels: volume(status.name), histogram: requests.writeSeconds })),
    );
    const roleChanges = (s: Scrape) => [...s.metrics.roleChanges];
    this.counter(
      "haven_volume_failovers_total",
      "Failovers this host carried out: it promoted its copy and served the volume.",
      ["volume"],
      (s, emit) => {
        for (const [name, changes] of roleChanges(s)) emit(volume(name), changes.failovers);
      },
    );
    this.histogram(
      "haven_volume_failover_duration_seconds",
      "Failovers this host carried out, from its first round that saw the primary's lease gone to the engine serving.",
      (s) => roleChanges(s).map(([name, changes]) => ({ labels: volume(name), histogram: changes.failoverSeconds })),
    );
    this.counter(
      "haven_volume_switchovers_total",
      "Switchovers asked of this host as the volume's primary: done (handed over) or refused.",
      ["volume", "result"],
      (s, emit) => {
        for (const [name, changes] of roleChanges(s))
          for (const result of ["done", "refused"] as const)
            emit({ volume: name, result }, changes.switchovers[result]);
      },
    );
    this.histogram(
      "haven_volume_switchover_duration_seconds",
      "Switchovers carried out by this host, from the handover's start to the primary record passing (or the refusal).",
      (s) => roleChanges(s).map(([name, changes]) => ({ labels: volume(name), histogram: changes.switchoverSeconds })),
    );
  }

  private defineCopyMetrics(): void {
    /** Each copy of each volume served here, with where it lives. */
    const copies = (s: Scrape) =>
      s.metrics.served.flatMap(({ status, copies: places }) =>
        status.replicas.map((replica) => {
          const place = places.get(replica.location);
          return {
            labels: { volume: status.name, host: place?.host ?? "", disk: place?.disk ?? "" },
            replica,
          };
        }),
      );
    this.gauge(
      "haven_copy_state",
      "1 for the copy's state as the volume's engine sees it, 0 for the others.",
      ["volume", "host", "disk", "state"],
      (s, emit) => {
        for (const { labels, replica } of copies(s))
          for (const state of COPY_STATES) emit({ ...labels, state }, replica.state === state ? 1 : 0);
      },
    );
    this.gauge(
      "haven_copy_out_of_sync_bytes",
      "Bytes the copy is known to miss (0 in sync).",
      ["volume", "host", "disk"],
      (s, emit) => {
        for (const { labels, replica } of copies(s)) emit(labels, replica.outOfSyncBytes);
      },
    );
    this.gauge(
      "haven_copy_resync_remaining_bytes",
      "Bytes the copy's resync or rebuild under way has still to copy (0 when none runs).",
      ["volume", "host", "disk"],
      (s, emit) => {
        for (const { labels, replica } of copies(s))
          emit(labels, replica.resync === null ? 0 : Math.max(0, replica.resync.totalBytes - replica.resync.doneBytes));
      },
    );
    this.gauge(
      "haven_copy_resync_bytes_per_second",
      "The recent copy rate of the copy's resync or rebuild (0 when none runs, or while it is paused).",
      ["volume", "host", "disk"],
      (s, emit) => {
        for (const { labels, replica } of copies(s)) emit(labels, replica.resync?.bytesPerSecond ?? 0);
      },
    );
  }

  private defineDiskMetrics(): void {
    const disk = (record: DiskRecord): Labels => ({ host: record.host, disk: record.disk });
    this.gauge(
      "haven_disk_size_bytes",
      "The size of the filesystem the disk holds copies on.",
      ["host", "disk"],
      (s, emit) => {
        for (const record of s.disks) emit(disk(record), record.sizeBytes);
      },
    );
    this.gauge(
      "haven_disk_used_bytes",
      "The disk's used bytes (everything on its filesystem, not only Haven's).",
      ["host", "disk"],
      (s, emit) => {
        for (const record of s.disks) emit(disk(record), record.usedBytes);
      },
    );
    this.gauge("haven_disk_free_bytes", "The disk's free bytes.", ["host", "disk"], (s, emit) => {
      for (const record of s.disks) emit(disk(record), record.freeBytes);
    });
    this.gauge(
      "haven_disk_state",
      "1 for the disk's state (online, failing, failed, missing, foreign, new, spare), 0 for the others.",
      ["host", "disk", "state"],
      (s, emit) => {
        for (const record of s.disks)
          for (const state of DISK_STATES) emit({ ...disk(record), state }, record.state === state ? 1 : 0);
      },
    );
    this.gauge(
      "haven_disk_probe_ok",
      "1 when the disk's latest health probe (a write and fsync) passed.",
      ["host", "disk"],
      (s, emit) => {
        for (const probe of s.health.disks) emit({ host: s.health.name, disk: probe.name }, probe.ok ? 1 : 0);
      },
    );
    this.gauge(
      "haven_disk_probe_duration_seconds",
      "How long the disk's latest passing health probe (a write and fsync) took.",
      ["host", "disk"],
      (s, emit) => {
        for (const probe of s.health.disks)
          if (probe.probeMs !== null) emit({ host: s.health.name, disk: probe.name }, probe.probeMs / 1000);
      },
    );
  }

  private defineVmMetrics(): void {
    this.gauge(
      "haven_vm_info",
      "Always 1 for a VM this host runs or last ran: its disk's volume and the host.",
      ["vm", "volume", "host"],
      (s, emit) => {
        for (const vm of s.metrics.vms) emit({ vm: vm.name, volume: vm.volume, host: s.health.name }, 1);
      },
    );
    this.gauge(
      "haven_vm_state",
      "1 for the VM's HA state (its status record, written by this host), 0 for the others.",
      ["vm", "state"],
      (s, emit) => {
        for (const vm of s.metrics.vms)
          if (vm.state !== undefined)
            for (const state of VM_STATES) emit({ vm: vm.name, state }, vm.state === state ? 1 : 0);
      },
    );
    this.gauge(
      "haven_vm_running",
      "1 while the VM's QEMU runs here with its guest running (not paused, not exited).",
      ["vm"],
      (s, emit) => {
        for (const vm of s.metrics.vms) emit({ vm: vm.name }, vm.runState === "running" ? 1 : 0);
      },
    );
    this.gauge(
      "haven_vm_restarts",
      "Restarts in place since the VM's last start request (its status record; maxRestart bounds them).",
      ["vm"],
      (s, emit) => {
        for (const vm of s.metrics.vms) emit({ vm: vm.name }, vm.restarts);
      },
    );
    this.gauge(
      "haven_vm_relocations",
      "Relocations to another host since the VM's last start request (maxRelocate bounds them).",
      ["vm"],
      (s, emit) => {
        for (const vm of s.metrics.vms) emit({ vm: vm.name }, vm.relocations);
      },
    );
  }

  private defineClusterMetrics(): void {
    const cluster = (s: Scrape) => s.metrics.cluster;
    this.gauge(
      "haven_cluster_view_age_seconds",
      "How long ago the last round of this host's agent read the cluster from etcd (absent before its first).",
      ["host"],
      (s, emit) => {
        const view = cluster(s);
        if (view !== undefined) emit({ host: s.health.name }, view.ageMs / 1000);
      },
    );
    this.gauge(
      "haven_cluster_host_up",
      "This agent's view from etcd: 1 when the host holds its lease. Aggregate with max by (host).",
      ["host"],
      (s, emit) => {
        for (const host of cluster(s)?.hosts ?? []) emit({ host: host.name }, host.alive ? 1 : 0);
      },
    );
    this.gauge(
      "haven_cluster_volume_primary_up",
      "This agent's view from etcd: 1 when the volume's recorded primary host holds its lease.",
      ["volume"],
      (s, emit) => {
        for (const volume of cluster(s)?.volumes ?? []) emit({ volume: volume.name }, volume.primaryAlive ? 1 : 0);
      },
    );
    this.gauge(
      "haven_cluster_volume_copies",
      "This agent's view from etcd: the copies the volume's spec places.",
      ["volume"],
      (s, emit) => {
        for (const volume of cluster(s)?.volumes ?? []) emit({ volume: volume.name }, volume.copies.length);
      },
    );
    this.gauge(
      "haven_cluster_volume_in_sync_copies",
      "This agent's view from etcd: the volume's copies recorded in sync.",
      ["volume"],
      (s, emit) => {
        for (const volume of cluster(s)?.volumes ?? [])
          emit({ volume: volume.name }, volume.copies.filter((copy) => copy.inSync).length);
      },
    );
    this.gauge(
      "haven_cluster_copy_in_sync",
      "This agent's view from etcd: 1 when the copy's record says in sync.",
      ["volume", "host", "disk"],
      (s, emit) => {
        for (const volume of cluster(s)?.volumes ?? [])
          for (const copy of volume.copies)
            emit({ volume: volume.name, host: copy.host, disk: copy.disk }, copy.inSync ? 1 : 0);
      },
    );
  }

  // ---- how metrics are made -----------------------------------------------------------------------

  private current(): Scrape {
    const scrape = this.scrape;
    if (scrape === undefined) throw new Error("a metric was collected outside render()");
    return scrape;
  }

  /** A gauge whose samples are set afresh from each scrape (a label set gone from it disappears). */
  private gauge(name: string, help: string, labelNames: string[], fill: (s: Scrape, emit: Emit) => void): void {
    const current = () => this.current();
    new Gauge({
      name,
      help,
      labelNames,
      registers: [this.registry],
      collect() {
        this.reset();
        fill(current(), (labels, value) => this.set(labels, value));
      },
    });
  }

  /** A counter whose value the agent or the engine keeps: set afresh from each scrape. */
  private counter(name: string, help: string, labelNames: string[], fill: (s: Scrape, emit: Emit) => void): void {
    const current = () => this.current();
    new Counter({
      name,
      help,
      labelNames,
      registers: [this.registry],
      collect() {
        this.reset();
        fill(current(), (labels, value) => this.inc(labels, value));
      },
    });
  }

  private histogram(name: string, help: string, read: (s: Scrape) => LabelledHistogram[]): void {
    const metric = new SnapshotHistogram(name, help, () => read(this.current()));
    // prom-client's Registry takes any metric with its shape (name, help, type, get); its typings
    // list only its own classes.
    this.registry.registerMetric(metric as unknown as Gauge);
  }
}
