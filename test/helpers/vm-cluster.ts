// What the VM tests share: a local cluster with VMs (real etcd, agents and QEMU under TCG), the CLI run
// against it through its context file, and the VM as `vm show --json` reports it.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { clusterUp, type LocalClusterState } from "../../src/cluster/local-cluster.js";
import { packageRoot } from "../../src/util/repo-root.js";
import { TEST_TIMINGS, freeBasePort, until } from "./cluster.js";
import { ensureTestImage } from "./test-image.js";

export interface CliResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** `haven ARGS...` against the cluster of `context` (never throws: the exit code says how it went). */
export type Haven = (...args: string[]) => Promise<CliResult>;

export function havenCli(context: string, timeoutMs = 240_000): Haven {
  return (...args) =>
    new Promise((resolve) => {
      execFile(
        process.execPath,
        [join(packageRoot(), "bin", "haven.js"), ...args],
        { env: { ...process.env, HAVEN_CONTEXT: context }, timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 },
        (error, stdout, stderr) => resolve({ code: error ? Number(error.code ?? 1) : 0, stdout, stderr }),
      );
    });
}

/** The fields of `vm show --json` the tests read. */
export interface VmShow {
  readonly spec: { name: string; vcpus: number; memoryMiB: number; boot: string; nics: { mac: string }[] };
  readonly state: string;
  readonly host: string | null;
  readonly status: {
    readonly run?: { pid: number; serialLog?: string; serialSocket?: string; startedAt: string };
    readonly startRequest: number;
  } | null;
}

export async function showVm(haven: Haven, name: string): Promise<VmShow> {
  const result = await haven("vm", "show", name, "--json");
  assert.equal(result.code, 0, result.stderr);
  return JSON.parse(result.stdout) as VmShow;
}

/** The VM once it runs and `accept` agrees (e.g. on another host). */
export function runningVm(
  haven: Haven,
  name: string,
  accept: (vm: VmShow) => boolean = () => true,
  timeoutMs = 180_000,
): Promise<VmShow> {
  return until(
    `VM ${name} running`,
    async () => {
      const vm = await showVm(haven, name);
      return vm.state === "running" && vm.status?.run !== undefined && accept(vm) ? vm : undefined;
    },
    timeoutMs,
  );
}

/**
 * A local cluster of `hosts` hosts that run VMs (2 CPUs and 1 GiB each, the haven-test image's
 * directory, test timings), with its context file written for the CLI.
 */
export async function vmClusterUp(options: {
  readonly dir: string;
  readonly context: string;
  readonly hosts: number;
  /** The cluster's bridge in this network namespace (it must exist): VMs get NICs there. */
  readonly network?: { readonly bridge: string; readonly namespace: string };
}): Promise<LocalClusterState> {
  const image = await ensureTestImage();
  const state = await clusterUp({
    dir: options.dir,
    hosts: options.hosts,
    basePort: await freeBasePort(),
    timings: { ...TEST_TIMINGS },
    vms: {
      cpus: "0-1",
      memory: "1G",
      imageDir: join(image.disk, ".."),
      heartbeatTimeoutMs: 15_000,
      bootTimeoutMs: 60_000,
      ...(options.network !== undefined && { bridge: options.network.bridge, netns: options.network.namespace }),
    },
  });
  await writeFile(
    options.context,
    JSON.stringify({ etcd: state.endpoints, clusterDir: options.dir, tls: state.tlsDir }),
  );
  return state;
}
