// The agent's real world (world.ts): etcd over the network, the replica server and the NBD front on
// TCP, copies as directories on the host's disks, heartbeats over authenticated replication
// connections, probes that write to the disks and shake hands with the NBD front, and a watchdog
// process that kills the agent and its VMs when its event loop stops checking in, and its VMs when it dies.

import { takeWatchdogReports, watchdogReportFile } from "./watchdog-reports.js";
import { spawn } from "node:child_process";
import { existsSync, readFileSync, statSync } from "node:fs";
import { identifyPath } from "../disk/disk-identity.js";
import { formatDevice, isReadOnlyMount, mountDisk, mountedDevice, unmountDisk } from "../disk/disk-format.js";
import { inspectForAdd } from "../disk/disk-inspect.js";
import { expandDiskPaths } from "../disk/disk-scan.js";
import { setLocateLed } from "../disk/locate-led.js";
import { readDiskLabel, writeDiskLabel } from "../disk/disk-label.js";
import { diskUsage } from "../disk/disk-usage.js";
import { mkdir, rm, statfs } from "node:fs/promises";
import { join } from "node:path";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { EtcdClient } from "../cluster/etcd-client.js";
import { eventSequence } from "../cluster/schema.js";
import { clientTlsOptions, loadTlsIdentitySync } from "../security/tls-identity.js";
import { NbdServer } from "../nbd/server.js";
import { replicaOpener } from "../replica/open-replica.js";
import { copyKey } from "../replica/port.js";
import { ReplicaServer } from "../replica/replica-server.js";
import { systemClock } from "../util/clock.js";
import type { AgentConfig } from "./config.js";
import { probeDisk, probeNbdFront } from "./health-probes.js";
import { HavenError } from "../core/errors.js";
import { replicaPinger } from "./replica-pinger.js";
import { DiskEndpoints } from "./disk-endpoints.js";
import { OperatorCache } from "./operator-cache.js";
import { PeerNames } from "./peer-names.js";
import { QemuDriver } from "./qemu-driver.js";
import { watchdogLine, type WatchdogMessage } from "./watchdog-protocol.js";
import type { AgentWorld, VmDriver, Watchdog } from "./world.js";

/** A copy that does not answer within this is faulted (the volume carries on without it). */
const REPLICA_TIMEOUT_MS = 3_000;
/** An NBD front probe still running after this is reported as hung. */
const NBD_PROBE_TIMEOUT_MS = 5_000;

/** The real world, and what the agent's API and stop need of it beyond AgentWorld. */
export interface RealWorld extends AgentWorld {
  /** Operators' tokens and revoked certificates, refreshed from etcd. */
  readonly operators: OperatorCache;
  /** Stops the refreshing of operators and peers' names. */
  stopCaches(): void;
}

/** The first line of a secret file the config names; a config error naming the key when unreadable. */
function readSecretLine(file: string, key: string): string {
  try {
    return readFileSync(file, "utf8").trim();
  } catch (error) {
    throw new HavenError("HAVEN_ERR_CONFIG", `cannot read ${key} ${file}: ${(error as Error).message}`);
  }
}

function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\./.test(host);
}

export function realWorld(
  config: AgentConfig,
  secret: Buffer,
  log: (line: string) => void,
  /** The directory of this host's copy of a volume (the agent knows where the cluster placed it). */
  copyDirectory: (volume: string, disk: string | undefined) => Promise<string>,
): RealWorld {
  // This host's certificate: every network link is mutual TLS under the cluster CA when the config names one.
  const identity = config.tls !== undefined ? loadTlsIdentitySync(config.tls.dir) : undefined;
  const { user, passwordFile } = config.etcd;
  const store = new EtcdClient([...config.etcd.endpoints], {
    requestTimeoutMs: config.timings.renewTimeoutMs * 2,
    tls: identity,
    ...(user !== undefined &&
      passwordFile !== undefined && {
        credentials: { user, password: readSecretLine(passwordFile, "etcd.passwordFile") },
      }),
  });
  const operators = new OperatorCache(store, log);
  const peers = new PeerNames(store);
  operators.start();
  peers.start();
  const replicaServer = new ReplicaServer({
    directory: copyDirectory,
    secret,
    log: (line) => log(`replica server: ${line}`),
    ...(identity !== undefined && { tls: identity, revoked: operators.revoked }),
  });
  operators.onRevocations = () =>
    void replicaServer
      .dropRevoked()
      .then((ended) => ended > 0 && log(`replica server: ended ${ended} connection(s) of a revoked certificate`));
  // Over the network TLS is offered, and insisted on where the front listens beyond loopback; a local
  // QEMU's unix socket needs none.
  const nbd = new NbdServer({
    exports: [],
    dynamicExports: true,
    log: (line) => log(`nbd: ${line}`),
    ...(identity !== undefined && { tls: { identity, required: !isLoopback(config.nbd.listen.host) } }),
  });
  let nbdPort = 0;
  const lag = monitorEventLoopDelay({ resolution: 20 });
  lag.enable();
  const vmsConfig = config.vms;
  // QEMU's disk: one unix socket per volume on this host (only Haven's user can open it), routed to
  // this host's NBD front while the volume is served here, and nowhere otherwise (QEMU's NBD client
  // waits and reconnects to the same socket).
  const endpoints =
    vmsConfig === undefined
      ? undefined
      : new DiskEndpoints({
          directory: join(vmsConfig.runtimeDir, "endpoints"),
          local: nbd,
          log: (line) => log(`disk endpoints: ${line}`),
          ...(identity !== undefined && { remoteTls: (name: string) => clientTlsOptions(identity, name) }),
        });
  // A live migration's destination reaches the disk through the primary's NBD front until it is the
  // primary itself (VmDriver.routeDiskTo).
  const remoteRoutes = new Map<string, { host: string; port: number; name: string }>();
  const routeEndpoint = (volume: string): void => {
    if (!endpoints?.status().some((endpoint) => endpoint.volume === volume)) return;
    const remote = remoteRoutes.get(volume);
    endpoints.route(
      volume,
      nbd.find(volume)
        ? { kind: "local" }
        : remote !== undefined
          ? { kind: "remote", ...remote, hold: true }
          : { kind: "none", reason: "not served on this host" },
    );
  };
  const vms: VmDriver =
    vmsConfig === undefined || endpoints === undefined
      ? noVms(config.host.name)
      : new QemuDriver({
          config: vmsConfig,
          clock: systemClock,
          log,
          diskEndpoint: async (volume) => {
            const socketPath = await endpoints.open(volume);
            routeEndpoint(volume);
            return { socketPath, exportName: volume };
          },
          routeDiskTo: (volume, primary) => {
            if (primary === undefined) remoteRoutes.delete(volume);
            else remoteRoutes.set(volume, primary);
            routeEndpoint(volume);
          },
          host: { name: config.host.name, address: config.host.address },
          ...(config.tls !== undefined && { tlsDir: config.tls.dir }),
        });
  return {
    store,
    clock: systemClock,
    wallTime: () => new Date(),
    eventId: () => eventSequence(),
    replicaService: {
      listen: async (host, port) => portOf(await replicaServer.listen(host, port)),
      evict: (volume) => replicaServer.evict(volume),
      evictCopy: (volume, disk) => replicaServer.evict(volume, disk),
      isOpen: (volume, disk) => replicaServer.openCopies().includes(copyKey(volume, disk)),
      stop: () => replicaServer.stop(),
    },
    nbd: {
      listen: async (host, port) => (nbdPort = portOf(await nbd.listen({ kind: "tcp", host, port }))),
      addExport: (entry) => {
        nbd.addExport(entry);
        routeEndpoint(entry.name);
      },
      removeExport: (name) => {
        nbd.removeExport(name);
        routeEndpoint(name);
      },
      has: (name) => nbd.find(name) !== undefined,
      stop: async () => {
        await endpoints?.stop();
        await nbd.stop();
      },
    },
    storage: {
      prepare: async (diskPath) => void (await mkdir(diskPath, { recursive: true })),
      holds: (diskPath, volume) => existsSync(join(diskPath, volume)),
      remove: async (diskPath, volume) => {
        const directory = join(diskPath, volume);
        if (!existsSync(directory)) return false;
        await rm(directory, { recursive: true, force: true });
        return true;
      },
      freeBytes: async (diskPath) => {
        const fs = await statfs(diskPath).catch(() => undefined);
        return fs ? fs.bavail * fs.bsize : 0;
      },
    },
    opener: replicaOpener({
      secret,
      requestTimeoutMs: REPLICA_TIMEOUT_MS,
      connectTimeoutMs: REPLICA_TIMEOUT_MS,
      ...(identity !== undefined && { tls: identity, serverName: peers.nameOf }),
    }),
    pinger: replicaPinger(secret, (line) => log(`heartbeat: ${line}`), identity),
    operators,
    stopCaches: () => {
      operators.stop();
      peers.stop();
    },
    diskInfo: {
      identify: (path) => identifyPath(path),
      readLabel: (root) => readDiskLabel(root),
      writeLabel: (root, label) => writeDiskLabel(root, label),
      usage: (root, copyDirs) => diskUsage(root, copyDirs),
      readOnly: (path) => isReadOnlyMount(path),
      filesystemId: (path) => `dev-${statSync(path).dev}`,
      inspect: (path) => inspectForAdd(path),
      expand: (patterns) => expandDiskPaths(patterns),
      format: (device, fs, label) => formatDevice(device, fs, label),
      mount: (device, mountPoint) => mountDisk(device, mountPoint),
      unmount: (mountPoint) => unmountDisk(mountPoint),
      mountedDevice: (mountPoint) => mountedDevice(mountPoint),
      locate: (device, on) => setLocateLed(device, on),
    },
    probeDisk,
    probeNbdFront: (served) => probeNbdFront(config.host.address, nbdPort, served, NBD_PROBE_TIMEOUT_MS),
    startWatchdog: (timeoutMs) =>
      startWatchdogProcess(timeoutMs, config.stateDir === undefined ? undefined : watchdogReportFile(config.stateDir)),
    vms,
    eventLoopLag: {
      maxMs: () => lag.max / 1e6,
      reset: () => lag.reset(),
      stop: () => lag.disable(),
    },
  };
}

/**
 * The watchdog process (watchdog-process.ts): kills this process and the VMs it tracks if the event
 * loop stops kicking it, and the VMs if this process dies without saying bye.
 */
function startWatchdogProcess(timeoutMs: number, reportFile: string | undefined): Watchdog {
  const script = fileURLToPath(new URL("./watchdog-process.js", import.meta.url));
  const args = [script, String(process.pid), String(timeoutMs), ...(reportFile !== undefined ? [reportFile] : [])];
  const watchdog = spawn(process.execPath, args, {
    stdio: ["pipe", "inherit", "inherit"],
  });
  const stdin = watchdog.stdin!;
  stdin.on("error", () => undefined);
  watchdog.unref();
  (stdin as unknown as { unref?: () => void }).unref?.();
  const send = (message: WatchdogMessage): void => {
    if (!stdin.writableEnded) stdin.write(watchdogLine(message));
  };
  return {
    kick: () => send({ kind: "kick" }),
    trackVm: (pid, name) => send({ kind: "track", pid, name }),
    untrackVm: (pid) => send({ kind: "untrack", pid }),
    stop: () => {
      send({ kind: "bye" });
      stdin.end();
    },
    ...(reportFile !== undefined && { takeReports: () => takeWatchdogReports(reportFile) }),
  };
}

/** The driver of a host whose config gives nothing to VMs: every start is refused, with the fix. */
function noVms(host: string): VmDriver {
  const refuse = (): Promise<never> =>
    Promise.reject(
      new HavenError("HAVEN_ERR_CONFIG", `host ${host} runs no VMs: its agent config has no "vms" section`),
    );
  return {
    launch: refuse,
    launchIncoming: refuse,
    routeDiskTo: () => undefined,
    killLeftovers: () => Promise.resolve([]),
    serialLog: () => undefined,
    serialSocket: () => undefined,
  };
}

function portOf(address: string): number {
  return Number(address.slice(address.lastIndexOf(":") + 1));
}
