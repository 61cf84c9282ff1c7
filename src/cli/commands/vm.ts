// `haven vm ...`: virtual servers. Each verb changes the VM's desired state in etcd
// (src/cluster/vm-admin.ts) and, by default, waits until the agents have made it true, so that what it
// prints is what runs. A VM runs where its disk's primary is.

import { cliActor } from "../actor.js";
import { readShownRecords } from "../cluster-report.js";
import { existsSync, readFileSync } from "node:fs";
import { createConnection, isIP } from "node:net";
import { readClusterRecords } from "../../cluster/cluster-read.js";
import type { ClusterStore } from "../../cluster/store.js";
import {
  createVm,
  deleteVm,
  hostsWithRoom,
  setVm,
  startVm,
  stopVm,
  type VmCreateRequest,
} from "../../cluster/vm-admin.js";
import { formatCpuList, parseCpuList } from "../../cluster/vm-resources.js";
import { isHostName } from "../../cluster/names.js";
import type { VmRecord, VmStatusRecord } from "../../cluster/vm-schema.js";
import { vmEntries, type VmListEntry } from "../../cluster/cluster-view.js";
import { renderVmTable } from "../cluster-render.js";
import { deleteVolume } from "../../cluster/volume-admin.js";
import { HavenError, errorMessage } from "../../core/errors.js";
import { formatBytes, parseHostPort, parseSize } from "../../util/units.js";
import { ipv4FromMac, macAddress, parseNicSpec } from "../../vm/network.js";
import { parseCommand } from "../args.js";
import { CLUSTER_OPTIONS, CLUSTER_OPTIONS_USAGE, connectCluster, resolveCluster } from "../context.js";
import { inspectImage, parseImageFormat, resolveImage } from "../image-copy.js";
import { createVolumeFromImage, volumeSizeFor } from "../image-volume.js";
import { abortOnStopSignal, pause } from "../poll.js";
import { terminalRenderOptions } from "../terminal.js";
import { WATCH_OPTIONS, WATCH_OPTIONS_USAGE, watchFrames, watchSeconds } from "../watch.js";
import { VM_MIGRATE_USAGE, vmMigrate } from "./vm-migrate.js";
import { VM_EXPORT_USAGE, VM_IMPORT_USAGE, VM_TRANSFER_USAGE, vmExport, vmImport } from "./vm-transfer.js";

export { imageDir } from "../image-copy.js";

const MAX_VCPUS = 64;
const DEFAULT_WAIT_SECONDS = 120;

export const VM_USAGE = `usage: haven vm <verb> ...

  vm create NAME --vcpus N --memory SIZE (--disk VOLUME | --disk-size SIZE [--replicas N] [--host HOST])
            [--image haven-test|FILE (disk size: the image's when no --disk-size)] [--format raw|qcow2|vmdk|vdi|vhdx] [--cpus LIST] [--shared-cpus] [--nic SPEC]...
            [--max-restart N] [--max-relocate N] [--failback HOST] [--heartbeat | --no-heartbeat] [--tcp-check ADDRESS:PORT] [--boot disk|haven-test-kernel] [--stopped]
  vm start NAME [--host HOST]     start it (on HOST: its disk's primary moves there first)
  vm migrate NAME --to HOST [--copy]  live-migrate it (the guest pauses briefly, never reboots)
  vm stop NAME [--force]          ACPI power-down (--force: at once)
  vm restart NAME                 stop and start again (failure counts begin again)
  vm delete NAME --yes [--force] [--with-disk]   delete it (--force stops it first)
  vm list [--json]                every VM: state, host, CPUs, memory, disk
  vm show NAME [--json]           one VM, with its health on several parameters
  vm set NAME [--vcpus N] [--memory SIZE] [--cpus LIST|none] [--failback HOST|none]
                                  change CPUs and memory; --failback: the host it is live-migrated
                                  back to whenever that host is back (none: it stays where it is)
  vm console NAME [--log]         the serial console (--log: print this run's output and exit)
${VM_TRANSFER_USAGE}

${CLUSTER_OPTIONS_USAGE}`;

/** Each verb's own usage, for `haven vm VERB --help` (migrate, import and export have theirs in their files). */
export const VM_VERB_USAGE: Record<string, string> = {
  create: `usage: haven vm create NAME --vcpus N --memory SIZE (--disk VOLUME | --disk-size SIZE | --image FILE) [options] [cluster options]

A virtual server on a replicated volume, running where its disk's primary is. Waits until it runs.

options:
  --vcpus N            virtual CPUs (1 to ${MAX_VCPUS})
  --memory SIZE        memory, a whole number of MiB from 16M (e.g. 512M, 2G)
  --disk VOLUME        boot from an existing volume
  --disk-size SIZE     a new volume of SIZE for its disk (--replicas N copies, --host HOST its primary)
  --image haven-test|FILE   write a disk image onto the new disk (its size when no --disk-size)
  --format F           the image's format: raw, qcow2, vmdk, vdi or vhdx (default: detected)
  --cpus LIST          pin the vCPUs to these host CPUs (2,3 or 0-3); --shared-cpus lets VMs share them
  --nic SPEC           a network interface: default, bridge=NAME, mac=MAC (repeat for more)
  --max-restart N      restarts in place before relocating (default 1)
  --max-relocate N     relocations to another host before giving up (default 1)
  --failback HOST      the host it goes back to whenever that host is back
  --heartbeat | --no-heartbeat   watch the guest's heartbeat
  --tcp-check ADDRESS:PORT       a health check: the guest accepts TCP there
  --boot disk|haven-test-kernel  what it boots
  --stopped            create it stopped
  --no-wait            return once the request is recorded

${CLUSTER_OPTIONS_USAGE}`,
  start: `usage: haven vm start NAME [--host HOST] [--no-wait] [cluster options]

Starts the VM and waits until it runs. With --host, its disk's primary moves to HOST first.

${CLUSTER_OPTIONS_USAGE}`,
  restart: `usage: haven vm restart NAME [--no-wait] [cluster options]

Stops the VM and starts it again (its failure counts begin again).

${CLUSTER_OPTIONS_USAGE}`,
  stop: `usage: haven vm stop NAME [--force] [--no-wait] [cluster options]

Powers the VM down through ACPI and waits until it stopped; --force stops it at once.

${CLUSTER_OPTIONS_USAGE}`,
  delete: `usage: haven vm delete NAME --yes [--force] [--with-disk] [cluster options]

Deletes the VM (--force stops it first). Its disk stays unless --with-disk deletes that volume too.

${CLUSTER_OPTIONS_USAGE}`,
  list: `usage: haven vm list [--json] [cluster options]

Every VM: state, host, CPUs, memory, disk, restarts and relocations.

${CLUSTER_OPTIONS_USAGE}`,
  show: `usage: haven vm show NAME [--json] [--watch [--interval SECONDS]] [cluster options]

One VM: its state and why, CPUs, memory, disk, NICs, policy, run and health checks.

options:
  --json               print the VM as JSON
${WATCH_OPTIONS_USAGE}

${CLUSTER_OPTIONS_USAGE}`,
  set: `usage: haven vm set NAME [--vcpus N] [--memory SIZE] [--cpus LIST|none] [--failback HOST|none] [cluster options]

Changes CPUs and memory (they apply at the next start); --failback names the host the VM is
live-migrated back to whenever that host is back (none: it stays where it is).

${CLUSTER_OPTIONS_USAGE}`,
  console: `usage: haven vm console NAME [--log] [cluster options]

The VM's serial console (--log: print this run's output and exit).

${CLUSTER_OPTIONS_USAGE}`,
  migrate: VM_MIGRATE_USAGE,
  import: VM_IMPORT_USAGE,
  export: VM_EXPORT_USAGE,
};

function usage(message: string): HavenError {
  return new HavenError("HAVEN_ERR_USAGE", `${message}\n\n${VM_USAGE}`);
}

function actor(): { actor: string } {
  return { actor: cliActor() };
}

function nameArgument(positionals: readonly string[]): string {
  if (positionals.length === 0) throw usage("the VM's NAME is missing");
  if (positionals.length > 1) throw usage(`one VM NAME expected, got ${positionals.join(" ")}`);
  return positionals[0]!;
}

function wholeNumber(text: string | undefined, option: string, min: number, max: number): number | undefined {
  if (text === undefined) return undefined;
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < min || value > max)
    throw usage(`${option} must be a whole number from ${min} to ${max}, got "${text}"`);
  return value;
}

function memoryMiB(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const bytes = parseSize(text, "--memory");
  const mib = bytes / (1024 * 1024);
  if (!Number.isInteger(mib) || mib < 16)
    throw usage(`--memory "${text}" must be a whole number of MiB, at least 16M (e.g. 512M, 2G)`);
  return mib;
}

function cpuList(text: string | undefined): number[] | undefined {
  if (text === undefined) return undefined;
  const cpus = parseCpuList(text);
  if (cpus === undefined || cpus.length === 0) throw usage(`--cpus "${text}" is not a CPU list such as 2,3 or 0-3`);
  return cpus;
}

/** --nic SPEC: the host's default bridge or a named one, and a MAC derived from the VM's name unless given. */
function parseNic(spec: string, vm: string, index: number): { bridge?: string; mac: string } {
  const nic = parseNicSpec(spec);
  return { ...(nic.bridge !== undefined && { bridge: nic.bridge }), mac: nic.mac ?? macAddress(vm, index) };
}

/** --failback HOST: the VM's home host. */
function failbackHost(text: string): string {
  if (!isHostName(text)) throw usage(`--failback "${text}" is not a host name (or "none" with vm set)`);
  return text;
}

/** --tcp-check ADDRESS:PORT: the guest's service that must accept connections. */
function tcpCheck(text: string): { address: string; port: number } {
  const { host, port } = parseHostPort(text, "--tcp-check");
  if (isIP(host) === 0) throw usage(`--tcp-check "${text}": give the guest's IP address and a port, e.g. 10.0.0.5:80`);
  return { address: host, port };
}

async function vmCreate(argv: string[]): Promise<number> {
  const parsed = parseCommand(
    argv,
    {
      ...CLUSTER_OPTIONS,
      vcpus: { type: "string" },
      memory: { type: "string" },
      disk: { type: "string" },
      "disk-size": { type: "string" },
      replicas: { type: "string" },
      host: { type: "string" },
      image: { type: "string" },
      format: { type: "string" },
      boot: { type: "string" },
      cpus: { type: "string" },
      "shared-cpus": { type: "boolean" },
      nic: { type: "string", multiple: true },
      "max-restart": { type: "string" },
      "max-relocate": { type: "string" },
      failback: { type: "string" },
      stopped: { type: "boolean" },
      "no-heartbeat": { type: "boolean" },
      heartbeat: { type: "boolean" },
      "tcp-check": { type: "string" },
      "no-wait": { type: "boolean" },
    },
    VM_USAGE,
  );
  if (parsed === undefined) return 0;
  const { values, positionals } = parsed;
  const name = nameArgument(positionals);
  const vcpus = wholeNumber(values.vcpus as string | undefined, "--vcpus", 1, MAX_VCPUS);
  if (vcpus === undefined) throw usage("--vcpus is required");
  const memory = memoryMiB(values.memory as string | undefined);
  if (memory === undefined) throw usage("--memory is required");
  const disk = values.disk as string | undefined;
  const diskSize = values["disk-size"] as string | undefined;
  if (disk !== undefined && diskSize !== undefined) throw usage("give one of --disk VOLUME and --disk-size SIZE");
  if (disk === undefined && diskSize === undefined && values.image === undefined)
    throw usage("give --disk VOLUME, --disk-size SIZE or --image FILE (a disk of the image's size)");
  if (disk !== undefined && values.replicas !== undefined)
    throw usage("--replicas goes with --disk-size (a new volume)");
  if (disk !== undefined && values.host !== undefined)
    throw usage(
      `--host goes with --disk-size (a new volume); VM on volume ${disk} runs where its primary is (move it with 'haven volume switchover ${disk} --to HOST')`,
    );
  const cpus = cpuList(values.cpus as string | undefined);
  if (cpus !== undefined && cpus.length !== vcpus)
    throw usage(`--cpus names ${cpus.length} CPUs for ${vcpus} vCPUs: name one host CPU per vCPU`);
  const image = values.image === undefined ? undefined : resolveImage(values.image as string);
  if (image !== undefined && disk !== undefined)
    throw usage("--image writes a new disk: use it with --disk-size, not --disk");
  const format = parseImageFormat(values.format as string | undefined);
  const boot = (values.boot as string | undefined) ?? (image?.builtIn ? "haven-test-kernel" : "disk");
  if (boot !== "disk" && boot !== "haven-test-kernel")
    throw usage(`--boot must be disk or haven-test-kernel, got "${boot}"`);
  const nics = ((values.nic as string[] | undefined) ?? []).map((spec, index) => parseNic(spec, name, index));
  const policy = {
    maxRestart: wholeNumber(values["max-restart"] as string | undefined, "--max-restart", 0, 100) ?? 1,
    maxRelocate: wholeNumber(values["max-relocate"] as string | undefined, "--max-relocate", 0, 100) ?? 1,
    ...(values.failback !== undefined && { failback: failbackHost(values.failback as string) }),
  };
  const client = connectCluster(values);
  const request: VmCreateRequest = {
    name,
    vcpus,
    memoryMiB: memory,
    volume: disk ?? name,
    ...(image !== undefined && { image: values.image as string }),
    boot,
    ...(cpus !== undefined && { cpus }),
    ...(values["shared-cpus"] === true && { sharedCpus: true }),
    nics,
    // haven-test sends Haven's guest heartbeat; another guest does when its image runs a sender (--heartbeat).
    heartbeat: values.heartbeat === true || (values["no-heartbeat"] !== true && (image?.builtIn ?? false)),
    ...(values["tcp-check"] !== undefined && { tcpCheck: tcpCheck(values["tcp-check"] as string) }),
    policy,
    ...(values.stopped === true && { stopped: true }),
  };

  if (disk === undefined) {
    const info = image && (await inspectImage(image.file, format));
    const sizeBytes = volumeSizeFor(
      diskSize !== undefined ? parseSize(diskSize, "--disk-size") : info!.virtualSizeBytes,
    );
    if (info !== undefined && info.virtualSizeBytes > sizeBytes)
      throw usage(
        `--disk-size ${formatBytes(sizeBytes)} is smaller than the image (${formatBytes(info.virtualSizeBytes)})`,
      );
    const copies = wholeNumber(values.replicas as string | undefined, "--replicas", 1, 4) ?? 2;
    // Refuse before anything is made: the name, and the room on some host.
    const records = await readClusterRecords(client);
    if (records.vms.has(name) || records.volumes.has(name))
      throw new HavenError("HAVEN_ERR_CONFLICT", `a VM or volume named "${name}" exists already; choose another name`);
    const primaryAmong = hostsWithRoom(records, request, values.host as string | undefined);
    // Nothing is left half-made: a VM that cannot be recorded takes its new volume with it.
    const vm = await createVolumeFromImage(
      client,
      { name, sizeBytes, copies, primaryAmong },
      info,
      resolveCluster(values).tlsDir,
      () => createVm(client, request, actor()),
    );
    return reportAndWait(client, vm, values["no-wait"] === true || vm.desired === "stopped" ? undefined : "running");
  }
  const vm = await createVm(client, request, actor());
  return reportAndWait(client, vm, values["no-wait"] === true || vm.desired === "stopped" ? undefined : "running");
}

/** Waits until the agents report the VM in `state` (or error), printing where it runs. */
async function reportAndWait(
  client: ClusterStore,
  vm: VmRecord,
  state: "running" | "stopped" | undefined,
): Promise<number> {
  if (state === undefined) {
    process.stdout.write(`VM ${vm.name} recorded (${vm.desired}); 'haven vm show ${vm.name}' follows it\n`);
    return 0;
  }
  const stop = abortOnStopSignal();
  try {
    const deadline = Date.now() + DEFAULT_WAIT_SECONDS * 1000;
    for (;;) {
      const records = await readClusterRecords(client);
      const status = records.vmStatus.get(vm.name)?.record;
      const current: VmStatusRecord | undefined =
        status?.startRequest === vm.startRequest || state === "stopped" ? status : undefined;
      if (current?.state === "error") {
        process.stderr.write(`VM ${vm.name} is in error: ${current.reason}\n`);
        return 1;
      }
      if (current?.state === "pending") process.stderr.write(`VM ${vm.name} is pending: ${current.reason}\n`);
      if (current?.state === state || (state === "stopped" && current === undefined)) {
        process.stdout.write(
          state === "running"
            ? `VM ${vm.name} is running on ${current!.host} (pid ${current!.run?.pid ?? "?"}); console: haven vm console ${vm.name}\n`
            : `VM ${vm.name} is stopped\n`,
        );
        return 0;
      }
      if (Date.now() > deadline) {
        process.stderr.write(
          `VM ${vm.name} is not ${state} after ${DEFAULT_WAIT_SECONDS} s; follow it with 'haven events --follow'\n`,
        );
        return 1;
      }
      if (!(await pause(500, stop.signal))) return 130;
    }
  } finally {
    stop.dispose();
  }
}

async function vmStart(argv: string[], restart: boolean): Promise<number> {
  const parsed = parseCommand(
    argv,
    { ...CLUSTER_OPTIONS, host: { type: "string" }, "no-wait": { type: "boolean" } },
    VM_USAGE,
  );
  if (parsed === undefined) return 0;
  const name = nameArgument(parsed.positionals);
  if (restart && parsed.values.host !== undefined) throw usage("vm restart takes no --host (use vm start --host)");
  const client = connectCluster(parsed.values);
  const host = parsed.values.host as string | undefined;
  const { vm, host: where } = await startVm(client, name, { ...(host !== undefined && { host }), restart }, actor());
  process.stderr.write(`VM ${name}: ${restart ? "restart" : "start"} asked; it runs on ${where}\n`);
  return reportAndWait(client, vm, parsed.values["no-wait"] === true ? undefined : "running");
}

async function vmStop(argv: string[]): Promise<number> {
  const parsed = parseCommand(
    argv,
    { ...CLUSTER_OPTIONS, force: { type: "boolean" }, "no-wait": { type: "boolean" } },
    VM_USAGE,
  );
  if (parsed === undefined) return 0;
  const name = nameArgument(parsed.positionals);
  const client = connectCluster(parsed.values);
  const vm = await stopVm(client, name, parsed.values.force === true, actor());
  return reportAndWait(client, vm, parsed.values["no-wait"] === true ? undefined : "stopped");
}

async function vmDelete(argv: string[]): Promise<number> {
  const parsed = parseCommand(
    argv,
    { ...CLUSTER_OPTIONS, yes: { type: "boolean" }, force: { type: "boolean" }, "with-disk": { type: "boolean" } },
    VM_USAGE,
  );
  if (parsed === undefined) return 0;
  const name = nameArgument(parsed.positionals);
  if (parsed.values.yes !== true) throw usage(`deleting VM ${name} needs --yes`);
  const client = connectCluster(parsed.values);
  if (parsed.values.force === true) {
    const records = await readClusterRecords(client);
    if (records.vms.get(name)?.desired === "started") {
      const vm = await stopVm(client, name, true, actor());
      const code = await reportAndWait(client, vm, "stopped");
      if (code !== 0) return code;
    }
  }
  const vm = await deleteVm(client, name, actor());
  process.stdout.write(`VM ${name} deleted\n`);
  if (parsed.values["with-disk"] === true) {
    await deleteVolume(client, vm.volume, actor());
    process.stdout.write(`volume ${vm.volume} deleted with the data on every copy\n`);
  } else
    process.stdout.write(
      `its disk, volume ${vm.volume}, stays (delete it with 'haven volume delete ${vm.volume} --yes')\n`,
    );
  return 0;
}

async function vmSet(argv: string[]): Promise<number> {
  const parsed = parseCommand(
    argv,
    {
      ...CLUSTER_OPTIONS,
      vcpus: { type: "string" },
      memory: { type: "string" },
      cpus: { type: "string" },
      failback: { type: "string" },
    },
    VM_USAGE,
  );
  if (parsed === undefined) return 0;
  const name = nameArgument(parsed.positionals);
  const { values } = parsed;
  if (
    values.vcpus === undefined &&
    values.memory === undefined &&
    values.cpus === undefined &&
    values.failback === undefined
  )
    throw usage("vm set needs --vcpus, --memory, --cpus or --failback");
  const failback =
    values.failback === undefined
      ? undefined
      : values.failback === "none"
        ? null
        : failbackHost(values.failback as string);
  const vcpus = wholeNumber(values.vcpus as string | undefined, "--vcpus", 1, MAX_VCPUS);
  const memory = memoryMiB(values.memory as string | undefined);
  const cpus = values.cpus === "none" ? null : cpuList(values.cpus as string | undefined);
  const client = connectCluster(values);
  const { vm, when } = await setVm(
    client,
    name,
    {
      ...(vcpus !== undefined && { vcpus }),
      ...(memory !== undefined && { memoryMiB: memory }),
      ...(cpus !== undefined && { cpus }),
      ...(failback !== undefined && { failback }),
    },
    actor(),
  );
  process.stdout.write(
    `VM ${name}: ${vm.vcpus} vCPUs, ${vm.memoryMiB} MiB${vm.cpus ? `, pinned to ${formatCpuList(vm.cpus)}` : ""}; ` +
      (when === "now"
        ? "applies at its start\n"
        : `applies at its next start ('haven vm restart ${name}' to apply it now)\n`),
  );
  return 0;
}

async function vmList(argv: string[]): Promise<number> {
  const parsed = parseCommand(argv, { ...CLUSTER_OPTIONS, json: { type: "boolean" } }, VM_USAGE);
  if (parsed === undefined) return 0;
  if (parsed.positionals.length > 0) throw usage(`vm list takes no arguments, got ${parsed.positionals.join(" ")}`);
  const records = await readShownRecords(connectCluster(parsed.values));
  const entries = vmEntries(records);
  process.stdout.write(
    parsed.values.json
      ? `${JSON.stringify(
          entries.map(({ spec: _s, ...e }) => e),
          null,
          2,
        )}\n`
      : renderVmTable(entries, terminalRenderOptions()),
  );
  return 0;
}

function age(iso: string, now: number): string {
  const seconds = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  return seconds < 120 ? `${seconds}s ago` : `${Math.round(seconds / 60)}m ago`;
}

async function vmShow(argv: string[]): Promise<number> {
  const parsed = parseCommand(
    argv,
    { ...CLUSTER_OPTIONS, ...WATCH_OPTIONS, json: { type: "boolean" } },
    VM_VERB_USAGE.show!,
  );
  if (parsed === undefined) return 0;
  const name = nameArgument(parsed.positionals);
  const seconds = watchSeconds(parsed.values);
  const client = connectCluster(parsed.values);
  const json = parsed.values.json === true;
  const show = async (): Promise<string> => {
    const records = await readShownRecords(client);
    const entry = vmEntries(records).find((e) => e.name === name);
    if (entry === undefined) throw new HavenError("HAVEN_ERR_NOT_FOUND", `no VM named "${name}" (see 'haven vm list')`);
    return json ? `${JSON.stringify(entry, null, seconds === undefined ? 2 : undefined)}\n` : describeVm(entry);
  };
  if (seconds !== undefined) return watchFrames(show, { seconds, title: `haven vm show ${name}`, json });
  process.stdout.write(await show());
  return 0;
}

/** `haven vm show`'s text for one VM. */
function describeVm(entry: VmListEntry): string {
  const name = entry.name;
  const { spec, status } = entry;
  const now = Date.now();
  const lines = [
    `VM ${name}: ${entry.state}${entry.host ? ` on ${entry.host}` : ""} (wanted ${spec.desired})`,
    `  why:       ${entry.reason || "-"}`,
    `  CPUs:      ${spec.vcpus} vCPUs${spec.cpus ? `, pinned to host CPUs ${formatCpuList(spec.cpus)}${spec.sharedCpus ? " (shared)" : ""}` : ", not pinned"}`,
    `  memory:    ${spec.memoryMiB} MiB`,
    `  disk:      volume ${spec.volume}${spec.image ? ` (from ${spec.image})` : ""}, boot ${spec.boot}`,
    ...spec.nics.map(
      (nic, i) =>
        `  nic${i}:      ${nic.mac} on bridge ${nic.bridge ?? "(host default)"}` +
        (spec.image === "haven-test" ? `, guest address ${ipv4FromMac(nic.mac)}` : ""),
    ),
    `  policy:    restart in place ${spec.policy.maxRestart}x, then relocate ${spec.policy.maxRelocate}x, then error; used ${entry.restarts} restart(s), ${entry.relocations} relocation(s)`,
    `  failback:  ${spec.policy.failback === undefined ? "none (it stays where it runs)" : `to ${spec.policy.failback} whenever that host is back with its disk in sync`}`,
  ];
  if (status?.run !== undefined) {
    const run = status.run;
    lines.push(`  run:       pid ${run.pid} since ${run.startedAt}, ${run.vcpus} vCPUs, ${run.memoryMiB} MiB`);
    if (run.vcpus !== spec.vcpus || run.memoryMiB !== spec.memoryMiB)
      lines.push(`             (the spec changed: ${spec.vcpus} vCPUs, ${spec.memoryMiB} MiB at the next start)`);
  }
  const checks = Object.entries(status?.checks ?? {});
  if (checks.length > 0) {
    lines.push("  health:");
    for (const [check, value] of checks)
      lines.push(`    ${check.padEnd(10)} ${value.ok ? "ok  " : "FAIL"} ${value.value} (${age(value.at, now)})`);
  }
  return `${lines.join("\n")}\n`;
}

async function vmConsole(argv: string[]): Promise<number> {
  const parsed = parseCommand(argv, { ...CLUSTER_OPTIONS, log: { type: "boolean" } }, VM_USAGE);
  if (parsed === undefined) return 0;
  const name = nameArgument(parsed.positionals);
  const records = await readShownRecords(connectCluster(parsed.values));
  if (!records.vms.has(name))
    throw new HavenError("HAVEN_ERR_NOT_FOUND", `no VM named "${name}" (see 'haven vm list')`);
  const run = records.vmStatus.get(name)?.record.run;
  if (run?.serialSocket === undefined || run.serialLog === undefined)
    throw new HavenError("HAVEN_ERR_UNAVAILABLE", `VM ${name} is not running (start it with 'haven vm start ${name}')`);
  if (parsed.values.log === true) {
    if (!existsSync(run.serialLog))
      throw new HavenError(
        "HAVEN_ERR_UNAVAILABLE",
        `VM ${name}'s console log ${run.serialLog} is not on this machine: run this on ${records.vmStatus.get(name)!.record.host}`,
      );
    process.stdout.write(readFileSync(run.serialLog));
    return 0;
  }
  return new Promise<number>((resolve, reject) => {
    const socket = createConnection(run.serialSocket!);
    socket.on("error", (error) =>
      reject(
        new HavenError(
          "HAVEN_ERR_UNAVAILABLE",
          `cannot reach VM ${name}'s console at ${run.serialSocket}: ${errorMessage(error)} (run this on the VM's host)`,
        ),
      ),
    );
    socket.on("connect", () => {
      process.stderr.write(`connected to VM ${name}'s serial console; Ctrl-] quits\n`);
      if (process.stdin.isTTY) process.stdin.setRawMode(true);
      process.stdin.on("data", (chunk: Buffer) => {
        if (chunk.includes(0x1d)) {
          socket.end();
          return;
        }
        socket.write(chunk);
      });
      process.stdin.on("end", () => socket.end());
      socket.pipe(process.stdout);
    });
    socket.on("close", () => {
      if (process.stdin.isTTY) process.stdin.setRawMode(false);
      process.stdin.pause();
      resolve(0);
    });
  });
}

export const VM_COMMANDS: Record<string, (argv: string[]) => Promise<number>> = {
  create: vmCreate,
  start: (argv) => vmStart(argv, false),
  restart: (argv) => vmStart(argv, true),
  stop: vmStop,
  delete: vmDelete,
  list: vmList,
  show: vmShow,
  set: vmSet,
  console: vmConsole,
  migrate: vmMigrate,
  import: (argv) => vmImport(argv, vmCreate),
  export: vmExport,
};
