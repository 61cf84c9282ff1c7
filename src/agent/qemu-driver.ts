// The real VmDriver: a VM is a QEMU process (src/vm/qemu-process.ts) in its own runtime directory under
// the host's `vms.runtimeDir`, its disk reached through the host's stable endpoint for the volume. The
// driver watches each QEMU three ways: the process (its exit), QMP (events, and a query-status probe
// each round), and the guest's heartbeat lines on its virtio-serial port.

import { createConnection, type Socket } from "node:net";
import { rename, rm } from "node:fs/promises";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import type { VmRecord } from "../cluster/vm-schema.js";
import { HavenError, errorMessage } from "../core/errors.js";
import type { Clock } from "../util/clock.js";
import { chooseAccelerator } from "../vm/accelerator.js";
import { DISK_NODE_NAME, type Accelerator, type VmKernelBoot, type VmSpec } from "../vm/qemu-command.js";
import { plugTap, tapName, tcpAnswers } from "../vm/network.js";
import { QemuProcess } from "../vm/qemu-process.js";
import { createRuntimeDir, runtimePaths, trustedPid } from "../vm/runtime-dir.js";
import type { VmsConfig } from "./config.js";
import type { VmRunState } from "./vm-decide.js";
import type { IncomingVm, VmDriver, VmInstance } from "./world.js";
import { incomingCompleted, listenIncoming, migrateOut, type TransferProgress } from "../vm/migration.js";
import type { QmpClient } from "../vm/qmp-client.js";

/** How often a VM's TCP check runs, and its bound. */
const TCP_CHECK_INTERVAL_MS = 2_000;
const TCP_CHECK_TIMEOUT_MS = 2_000;
/** Between two attempts to grow a VM's disk while its nbd node has not reconnected yet. */
const GROW_RETRY_MS = 250;
/** How long a guest has to power off after ACPI power-down before QEMU is told to quit. */
const POWERDOWN_TIMEOUT_MS = 30_000;

export interface QemuDriverOptions {
  readonly config: VmsConfig;
  readonly clock: Clock;
  readonly log: (line: string) => void;
  /** The stable endpoint for the volume on this host: a unix socket and the export name to ask for. */
  readonly diskEndpoint: (volume: string) => Promise<{ socketPath: string; exportName: string }>;
  /** Routes the volume's endpoint to another host's NBD front while this host does not serve it. */
  readonly routeDiskTo: (volume: string, primary: { host: string; port: number; name: string } | undefined) => void;
  /** This host's name and the address its incoming migrations listen on. */
  readonly host: { readonly name: string; readonly address: string };
  /** The host's identity directory: migrations run over TLS under the cluster's CA; absent: plain TCP. */
  readonly tlsDir?: string;
}

/** The longest pause QEMU may plan for a migration's last pass. */
const MIGRATION_DOWNTIME_LIMIT_MS = 300;
/** A migration may use the link at up to this many bytes per second (QEMU's default is 128 MiB/s). */
const MIGRATION_MAX_BANDWIDTH = 4 * 1024 ** 3;
const MIGRATION_POLL_MS = 100;

export class QemuDriver implements VmDriver {
  private accelerator: Promise<Accelerator> | undefined;

  constructor(private readonly options: QemuDriverOptions) {}

  private runtimeDir(name: string): string {
    return join(this.options.config.runtimeDir, "vms", name);
  }

  serialLog(name: string): string | undefined {
    return runtimePaths(this.runtimeDir(name)).serialLog;
  }

  serialSocket(name: string): string | undefined {
    return runtimePaths(this.runtimeDir(name)).serialSocket;
  }

  async killLeftovers(): Promise<string[]> {
    const root = join(this.options.config.runtimeDir, "vms");
    if (!existsSync(root)) return [];
    const killed: string[] = [];
    for (const name of readdirSync(root)) {
      const pid = await trustedPid(join(root, name), name);
      if (pid === undefined) continue;
      try {
        process.kill(pid, "SIGKILL");
        killed.push(`VM ${name} (pid ${pid})`);
      } catch {
        // gone meanwhile
      }
    }
    return killed;
  }

  routeDiskTo(volume: string, primary: { host: string; port: number; name: string } | undefined): void {
    this.options.routeDiskTo(volume, primary);
  }

  launch(vm: VmRecord, hostCpus: readonly number[] | undefined, track: (pid: number) => void): Promise<VmInstance> {
    return this.start(vm, hostCpus, track, false);
  }

  async launchIncoming(
    vm: VmRecord,
    hostCpus: readonly number[] | undefined,
    track: (pid: number) => void,
  ): Promise<IncomingVm> {
    const instance = await this.start(vm, hostCpus, track, true);
    try {
      const tls = this.options.tlsDir === undefined ? undefined : { dir: this.options.tlsDir };
      const uri = await listenIncoming(instance.qmp, this.options.host.address, tls);
      const completed = incomingCompleted(instance.qmp);
      completed.catch(() => undefined); // read by whoever waits for it
      return { instance, uri, completed };
    } catch (error) {
      instance.kill();
      throw error;
    }
  }

  private async start(
    vm: VmRecord,
    hostCpus: readonly number[] | undefined,
    track: (pid: number) => void,
    incoming: boolean,
  ): Promise<QemuInstance> {
    const { config } = this.options;
    const dir = this.runtimeDir(vm.name);
    const runtime = await createRuntimeDir(dir);
    // `vm console --log` shows the current run: the last run's log moves aside.
    await rename(runtime.serialLog, `${runtime.serialLog}.1`).catch(() => undefined);
    const disk = await this.options.diskEndpoint(vm.volume);
    const taps = vm.nics.map((_nic, index) => tapName(vm.name, index, this.options.host.name));
    const bridges = vm.nics.map((nic) => nic.bridge ?? config.bridge);
    if (bridges.some((bridge) => bridge === undefined))
      throw new HavenError(
        "HAVEN_ERR_CONFIG",
        `VM ${vm.name} has a NIC on the host's default bridge, but this host's config names none (vms.bridge)`,
      );
    const spec: VmSpec = {
      name: vm.name,
      vcpus: vm.vcpus,
      memoryMiB: vm.memoryMiB,
      accelerator: await this.chooseAccelerator(),
      disk,
      ...(vm.boot === "haven-test-kernel" && { kernelBoot: this.testKernel() }),
      nics: vm.nics.map((nic, index) => ({ tapName: taps[index]!, mac: nic.mac })),
      runtime,
      incoming,
    };
    const namespace = config.netns;
    const qemu = await QemuProcess.start({
      spec,
      ...(hostCpus !== undefined && { vcpuHostCpus: hostCpus }),
      ...(namespace !== undefined && { netns: namespace }),
      // The taps join their bridges while QEMU is still paused: the guest's first packet finds its network.
      beforeResume: async (paused) => {
        track(paused.pid);
        for (const [index, tap] of taps.entries())
          await plugTap({ tap, bridge: bridges[index]!, ...(namespace !== undefined && { namespace }) });
      },
      stayPaused: incoming,
    });
    const instance = new QemuInstance(qemu, runtime.heartbeatSocket, this.options.clock, this.options.log, vm.name, {
      ...(this.options.tlsDir !== undefined && { tlsDir: this.options.tlsDir }),
      incoming,
    });
    if (vm.tcpCheck !== undefined) instance.checkTcp({ ...vm.tcpCheck, ...(namespace !== undefined && { namespace }) });
    return instance;
  }

  private chooseAccelerator(): Promise<Accelerator> {
    const wanted = this.options.config.accelerator;
    if (wanted !== "auto") return Promise.resolve(wanted);
    this.accelerator ??= chooseAccelerator().then((verdict) => {
      this.options.log(`VMs run under ${verdict.accelerator}: ${verdict.reason}`);
      return verdict.accelerator;
    });
    return this.accelerator;
  }

  private testKernel(): VmKernelBoot {
    const dir = this.options.config.imageDir;
    if (dir === undefined)
      throw new HavenError("HAVEN_ERR_CONFIG", "the haven-test image needs vms.imageDir in the agent config");
    // The same command line the image's own bootloader passes (scripts/build-test-image.sh writes it).
    const cmdline = join(dir, "haven-test.cmdline");
    if (!existsSync(cmdline))
      throw new HavenError(
        "HAVEN_ERR_NOT_FOUND",
        `the haven-test image is not built in ${dir}: run scripts/build-test-image.sh`,
      );
    return {
      kernel: join(dir, "haven-test-kernel"),
      initrd: join(dir, "haven-test-initrd"),
      append: readFileSync(cmdline, "utf8").trim(),
    };
  }
}

const QMP_STATES: Readonly<Record<string, VmRunState>> = {
  running: "running",
  paused: "paused",
  "io-error": "io-error",
  "guest-panicked": "guest-panicked",
  shutdown: "shutdown",
  prelaunch: "starting",
  inmigrate: "starting",
};

class QemuInstance implements VmInstance {
  readonly pid: number;
  readonly exited: Promise<string>;
  private state: VmRunState = "running";
  private heartbeatAt: number | undefined;
  private tcpOkAt: number | undefined;
  private heartbeat: Socket | undefined;
  private done = false;

  constructor(
    private readonly qemu: QemuProcess,
    private readonly heartbeatSocket: string,
    private readonly clock: Clock,
    private readonly log: (line: string) => void,
    private readonly name: string,
    private readonly migration: { readonly tlsDir?: string; readonly incoming?: boolean },
  ) {
    this.pid = qemu.pid;
    // A migration's destination waits paused until Haven resumes it (RESUME then says running).
    if (migration.incoming === true) this.state = "starting";
    this.exited = qemu.exited.then((exit) => {
      this.done = true;
      this.heartbeat?.destroy();
      return exit.signal !== null ? `killed by ${exit.signal}` : `exit code ${exit.code}`;
    });
    qemu.qmp.onEvent((event) => {
      if (event.event === "GUEST_PANICKED") this.state = "guest-panicked";
      else if (event.event === "SHUTDOWN" && (event.data as { guest?: boolean } | undefined)?.guest === true)
        this.state = "shutdown";
      else if (event.event === "RESUME") this.state = "running";
      else if (event.event === "BLOCK_IO_ERROR") this.state = "io-error";
      else if (event.event === "STOP" && this.state === "running") this.state = "paused";
    });
    this.listenHeartbeat();
  }

  runState(): VmRunState {
    return this.state;
  }

  lastTcpOkAtMs(): number | undefined {
    return this.tcpOkAt;
  }

  /** Tries the guest's service every TCP_CHECK_INTERVAL_MS while QEMU runs. */
  checkTcp(target: { address: string; port: number; namespace?: string }): void {
    if (this.done) return;
    void tcpAnswers({ ...target, timeoutMs: TCP_CHECK_TIMEOUT_MS }).then((ok) => {
      if (ok) this.tcpOkAt = this.clock.now();
      this.clock.schedule(TCP_CHECK_INTERVAL_MS, () => this.checkTcp(target));
    });
  }

  lastHeartbeatAtMs(): number | undefined {
    return this.heartbeatAt;
  }

  async probe(timeoutMs: number): Promise<void> {
    const reply = (await this.qemu.qmp.execute("query-status", undefined, { timeoutMs })) as { status?: string };
    const state = QMP_STATES[reply.status ?? ""];
    if (state === undefined) throw new HavenError("HAVEN_ERR_IO", `QMP reports status "${reply.status}"`);
    this.state = state;
  }

  async pause(): Promise<void> {
    await this.qemu.qmp.execute("stop");
  }

  async resume(): Promise<void> {
    await this.qemu.qmp.execute("cont");
  }

  async stop(force: boolean): Promise<string> {
    const outcome = await this.qemu.stop(
      force ? { powerdownTimeoutMs: 0, quitTimeoutMs: 0 } : { powerdownTimeoutMs: POWERDOWN_TIMEOUT_MS },
    );
    this.heartbeat?.destroy();
    return outcome;
  }

  get qmp(): QmpClient {
    return this.qemu.qmp;
  }

  migrateOut(
    target: { uri: string; host: string; maxBandwidth?: number },
    onProgress: (progress: TransferProgress) => void,
    abort: AbortSignal,
  ): Promise<TransferProgress> {
    const tlsDir = this.migration.tlsDir;
    return migrateOut(this.qemu.qmp, {
      uri: target.uri,
      ...(tlsDir !== undefined && { tls: { dir: tlsDir, peerName: target.host } }),
      downtimeLimitMs: MIGRATION_DOWNTIME_LIMIT_MS,
      maxBandwidth: target.maxBandwidth ?? MIGRATION_MAX_BANDWIDTH,
      onProgress,
      pollMs: MIGRATION_POLL_MS,
      abort,
    });
  }

  kill(): void {
    try {
      process.kill(this.pid, "SIGKILL");
    } catch {
      // already gone
    }
  }

  /**
   * QEMU 7.2's nbd node refuses to grow past the export size it learned at its last handshake
   * (block/nbd.c nbd_co_truncate: "Cannot grow NBD nodes"), and learns the size again only when it
   * reconnects (nbd_co_establish_connection fills its info anew). The endpoint closed the node's
   * connection when the engine restarted at the new size, but an idle client notices that only at its
   * next request: a read through the node (HMP qemu-io) makes it reconnect, then block_resize grows the
   * raw format node above it, and virtio-blk tells the guest (its /sys/block/vda/size changes). While
   * the node has not reconnected yet, block_resize fails and is tried again, until timeoutMs.
   */
  async growDisk(sizeBytes: number, timeoutMs: number): Promise<void> {
    const deadline = this.clock.now() + timeoutMs;
    for (;;) {
      const leftMs = (): number => Math.max(1, deadline - this.clock.now());
      await this.qemu.qmp.execute(
        "human-monitor-command",
        { "command-line": `qemu-io ${DISK_NODE_NAME} "read 0 512"` },
        { timeoutMs: leftMs() },
      );
      try {
        await this.qemu.qmp.execute(
          "block_resize",
          { "node-name": DISK_NODE_NAME, size: sizeBytes },
          { timeoutMs: leftMs() },
        );
        return;
      } catch (error) {
        if (this.clock.now() + GROW_RETRY_MS >= deadline) throw error;
        await this.clock.sleep(GROW_RETRY_MS);
      }
    }
  }

  /** Reads the guest's heartbeat lines (one per beat); reconnects while QEMU runs. */
  private listenHeartbeat(): void {
    if (this.done) return;
    const socket = createConnection(this.heartbeatSocket);
    this.heartbeat = socket;
    socket.on("data", (chunk) => {
      if (chunk.includes(0x0a)) this.heartbeatAt = this.clock.now();
    });
    socket.on("error", (error) => {
      if (!this.done) this.log(`VM ${this.name}: heartbeat port: ${errorMessage(error)}`);
    });
    socket.on("close", () => {
      if (!this.done) this.clock.schedule(1_000, () => this.listenHeartbeat());
    });
  }
}

/** Removes a VM's runtime directory (after it is deleted). */
export async function removeRuntimeDir(config: VmsConfig, name: string): Promise<void> {
  await rm(join(config.runtimeDir, "vms", name), { recursive: true, force: true });
}
