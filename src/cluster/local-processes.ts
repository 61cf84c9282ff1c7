// Every process of a local cluster (local-cluster.ts), found by pid in /proc however it was started:
// by `haven cluster up`, by `cluster host start`, or by hand from any directory with a relative path.
// A process belongs to the cluster when its command line refers to the cluster's files, each path
// resolved against the process's own working directory (/proc/PID/cwd):
// - an agent:        `... agent --config FILE`, FILE under DIR/hosts/HOST/ (its host is HOST);
// - an etcd member:  `--data-dir DIR2` with DIR2 a member's data directory (its host, if it has one);
// - a VM's QEMU:     found by its pidfile in the host's VM runtime directory (trusted only while the pid's
//                    command line names the VM: runningVms, injected from the VM layer), or by a command
//                    line that names a path under DIR/hosts/HOST/vms/VM/;
// - the agent's watchdog and other children: below an agent in the process tree (or in its group).
// Nothing is found by a process's name: another cluster's etcd or agent, or a CLI command that names
// the directory (`haven cluster down --dir DIR`), is not this cluster's process.

import { isAbsolute, resolve, sep } from "node:path";
import { commandLineOf, descendants, processTable, workingDirectoryOf } from "../util/processes.js";

export type ClusterProcessRole = "agent" | "watchdog" | "agent's child" | "VM" | "etcd member";

export interface ClusterProcess {
  readonly role: ClusterProcessRole;
  readonly pid: number;
  /** The host it belongs to; undefined for the single etcd member of a one-member cluster. */
  readonly host: string | undefined;
  /** The VM's or the member's name. */
  readonly name?: string;
  /** Frozen: stopped by SIGSTOP (state T), until SIGCONT. */
  readonly state: "running" | "frozen";
}

export interface ClusterLayout {
  /** The cluster's directory. */
  readonly dir: string;
  readonly agents: readonly { readonly name: string }[];
  readonly etcd: readonly { readonly name: string; readonly host?: string; readonly dataDir: string }[];
}

/** The QEMUs of a host's VMs, from its state directory (the VM layer's runningVms). */
export type FindVms = (hostStateDir: string) => Promise<readonly { name: string; pid: number }[]>;

/** The value of `--flag VALUE` or `--flag=VALUE` in argv, or undefined. */
export function optionValue(argv: readonly string[], flag: string): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === flag) return argv[i + 1];
    if (arg.startsWith(`${flag}=`)) return arg.slice(flag.length + 1);
  }
  return undefined;
}

/** `path` as the process `pid` means it: relative paths against its working directory. */
function resolvedFor(pid: number, path: string): string | undefined {
  if (isAbsolute(path)) return resolve(path);
  const cwd = workingDirectoryOf(pid);
  return cwd === undefined ? undefined : resolve(cwd, path);
}

/** The HOST of a path under DIR/hosts/HOST/, or undefined. */
function hostOfPath(dir: string, path: string): string | undefined {
  const hosts = `${resolve(dir, "hosts")}${sep}`;
  if (!path.startsWith(hosts)) return undefined;
  const host = path.slice(hosts.length).split(sep)[0];
  return host === undefined || host === "" ? undefined : host;
}

/**
 * The cluster's processes now, in pid order: all of them, or only host `host`'s (its agent and what
 * runs below it, its VMs, its etcd member). `findVms` adds the QEMUs found by their pidfiles (a QEMU
 * runs detached, out of its agent's tree).
 */
export async function clusterProcesses(
  layout: ClusterLayout,
  options: { readonly host?: string; readonly findVms?: FindVms } = {},
): Promise<ClusterProcess[]> {
  const { host: only, findVms } = options;
  const hostNames = only !== undefined ? [only] : layout.agents.map((agent) => agent.name);
  const dir = resolve(layout.dir);
  const table = processTable().filter((entry) => !entry.zombie && entry.pid !== process.pid);
  const stoppedOf = new Map(table.map((entry) => [entry.pid, entry.stopped]));
  const found = new Map<number, Omit<ClusterProcess, "state">>();
  const dataDirs = new Map(layout.etcd.map((member) => [resolve(member.dataDir), member]));
  for (const { pid } of table) {
    const argv = commandLineOf(pid);
    if (argv === undefined) continue;
    const config = argv.includes("agent") ? optionValue(argv, "--config") : undefined;
    const configPath = config === undefined ? undefined : resolvedFor(pid, config);
    const agentHost = configPath === undefined ? undefined : hostOfPath(dir, configPath);
    if (agentHost !== undefined && argv.indexOf("agent") < argv.indexOf(config!)) {
      found.set(pid, { role: "agent", pid, host: agentHost });
      continue;
    }
    const dataDir = optionValue(argv, "--data-dir");
    const dataPath = dataDir === undefined ? undefined : resolvedFor(pid, dataDir);
    const member = dataPath === undefined ? undefined : dataDirs.get(dataPath);
    if (member !== undefined) {
      found.set(pid, { role: "etcd member", pid, host: member.host, name: member.name });
      continue;
    }
    // A QEMU the agent started names its runtime directory (absolute: the agent's config makes it so).
    for (const arg of argv) {
      const at = arg.indexOf(`${dir}${sep}hosts${sep}`);
      if (at < 0) continue;
      const path = arg.slice(at).split(/[,\s]/)[0]!;
      const parts = path.slice(dir.length + 1).split(sep); // hosts, HOST, vms, VM, ...
      if (parts[2] === "vms" && parts[3] !== undefined && parts[3] !== "") {
        found.set(pid, { role: "VM", pid, host: parts[1], name: parts[3] });
        break;
      }
    }
  }
  if (findVms !== undefined)
    for (const host of hostNames)
      for (const vm of await findVms(resolve(dir, "hosts", host)))
        found.set(vm.pid, { role: "VM", pid: vm.pid, host, name: vm.name });
  for (const agent of [...found.values()].filter((each) => each.role === "agent")) {
    for (const child of descendants(agent.pid, table)) {
      if (found.has(child)) continue;
      const watchdog = (commandLineOf(child) ?? []).some((arg) => arg.endsWith("watchdog-process.js"));
      found.set(child, { role: watchdog ? "watchdog" : "agent's child", pid: child, host: agent.host });
    }
  }
  return [...found.values()]
    .filter((each) => (only === undefined ? true : each.host === only))
    .filter((each) => stoppedOf.has(each.pid))
    .map((each): ClusterProcess => ({ ...each, state: stoppedOf.get(each.pid) ? "frozen" : "running" }))
    .sort((a, b) => a.pid - b.pid);
}
