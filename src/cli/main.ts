// The `haven` command line: routes "noun verb" (or a noun that is a command on its own, such as
// `haven status`) to a command, and turns every error into a message and the exit status that the
// error registry assigns.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { HavenError } from "../core/errors.js";
import { packageRoot } from "../util/repo-root.js";
import { AGENT_USAGE, agentCommand } from "./commands/agent.js";
import {
  CLUSTER_DOWN_USAGE,
  CLUSTER_HOST_USAGE,
  CLUSTER_KILL_USAGE,
  CLUSTER_REVIVE_USAGE,
  CLUSTER_STATUS_USAGE,
  CLUSTER_UP_USAGE,
  clusterDownCommand,
  clusterHostCommand,
  clusterKillCommand,
  clusterReviveCommand,
  clusterStatusCommand,
  clusterUpCommand,
} from "./commands/cluster.js";
import { CERT_VERB_USAGE, certCommand } from "./commands/cert.js";
import { EVENTS_USAGE, events } from "./commands/events.js";
import { HOST_DRAIN_USAGE, HOST_UNDRAIN_USAGE, hostDrain, hostUndrain } from "./commands/host-drain.js";
import { HOST_LIST_USAGE, hostList } from "./commands/host-list.js";
import { NBD_SERVE_USAGE, nbdServe } from "./commands/nbd-serve.js";
import { REPLICA_SERVE_USAGE, replicaServe } from "./commands/replica-serve.js";
import { STATUS_USAGE, status } from "./commands/status.js";
import { DISK_VERB_USAGE, diskCommand } from "./commands/disk.js";
import {
  VOLUME_ADD_COPY_USAGE,
  VOLUME_REMOVE_COPY_USAGE,
  volumeAddCopy,
  volumeRemoveCopy,
} from "./commands/volume-copies.js";
import { VOLUME_CREATE_USAGE, volumeCreate } from "./commands/volume-create.js";
import { VOLUME_DELETE_USAGE, volumeDelete } from "./commands/volume-delete.js";
import { VOLUME_EXPORT_USAGE, volumeExport } from "./commands/volume-export.js";
import { VOLUME_IMPORT_USAGE, volumeImport } from "./commands/volume-import.js";
import { OPERATOR_VERB_USAGE, operatorCommand } from "./commands/operator.js";
import { CLUSTER_INIT_USAGE, clusterInitCommand } from "./commands/cluster-init.js";
import { VOLUME_LIST_USAGE, volumeList } from "./commands/volume-list.js";
import { VOLUME_PROMOTE_USAGE, volumePromote } from "./commands/volume-promote.js";
import { VOLUME_RESIZE_USAGE, volumeResize } from "./commands/volume-resize.js";
import { VOLUME_SWITCHOVER_USAGE, volumeSwitchover } from "./commands/volume-switchover.js";
import { VOLUME_RESOLVE_SPLIT_BRAIN_USAGE, volumeResolveSplitBrain } from "./commands/volume-resolve-split-brain.js";
import { VOLUME_SERVE_USAGE, volumeServe } from "./commands/volume-serve.js";
import { VOLUME_SHOW_USAGE, volumeShow } from "./commands/volume-show.js";
import { VOLUME_STATUS_USAGE, volumeStatus } from "./commands/volume-status.js";
import { VOLUME_VERIFY_USAGE, volumeVerify } from "./commands/volume-verify.js";
import { VM_COMMANDS, VM_VERB_USAGE } from "./commands/vm.js";
import { readCommandLine } from "./command-line.js";
import { reportError, usageHint } from "./usage-error.js";

const USAGE = `usage: haven <command> [options]

a local cluster (etcd and agents on this machine):
  cluster up [--hosts N]            start etcd and N host agents in the background, and a context file
  cluster down                      stop every process of it, listed with pids (the data stays)
  cluster status                    each host's processes (pids, running/frozen/stopped), ports, context
  cluster host start HOST           start what of a host does not run and wait until it registers
  cluster host stop HOST            stop a host cleanly (the agent flushes and gives its lease back)
  cluster host kill HOST            kill a host's agent, VMs and etcd member at once, as a power loss would
  cluster host freeze|thaw HOST     SIGSTOP / SIGCONT a host's processes: a hung host, and its waking
  cluster kill HOST, cluster revive HOST   older names of cluster host kill and cluster host start

certificates (the cluster CA's, in the cluster directory's pki/):
  cert list                         every host and operator certificate, with expiry (marks those near it)
  cert issue host|operator NAME     a new identity (--address A,B for a host; --role R for an operator)
  cert renew NAME                   the same identity again with a new expiry (--days N)
  cert revoke NAME                  every agent refuses the certificate from then on (renew gives a new one)

a cluster of real machines:
  cluster init --dir DIR --host NAME=ADDR...   its CA, a certificate per host and the admin; --etcd URL turns etcd's roles on

a host:
  agent --config FILE               run this host's agent: lease, replica server, engines, failover

cluster commands (they find etcd by --etcd URL, $HAVEN_ETCD or a context file):
  status                            the cluster at a glance: hosts alive or dead, volumes and their health
  host list                         list the hosts, alive or dead, with their disks
  disk list                         the disks of every host: state, use, identity, the copies on each
  disk add HOST PATH                give a host a disk (--spare); data on it is refused unless --wipe
  disk remove HOST DISK             let go of a disk that holds no copy
  disk evacuate HOST DISK           move every copy off a disk (new copy in sync first), with progress
  disk replace HOST OLD NEW         move every copy from OLD onto NEW, then release OLD
  disk identify HOST DISK           light the disk's locate LED and print its identity
  host drain HOST [--allow-restart] maintenance: live-migrate its VMs away, move its volumes' primaries
  host undrain HOST                 end HOST's maintenance
  vm create NAME --vcpus N --memory SIZE --disk-size SIZE [--image haven-test|FILE]
                                    a virtual server on a replicated volume, running where its disk's primary is
  vm start|stop|restart|delete NAME start it, stop it (ACPI, --force), restart it, delete it (--yes)
  vm list, vm show NAME             VMs: state, host, CPUs, memory, health on several parameters
  vm set NAME --vcpus N --memory S  change CPUs and memory (applies at the next start)
  vm migrate NAME --to HOST [--copy] live-migrate it to HOST (progress; the guest never reboots)
  vm console NAME [--log]           its serial console
  vm export NAME DIR, vm import NAME --image FILE | --from DIR   a VM's disk and description out and in
  volume create NAME --size SIZE    create a replicated volume on the live hosts and wait until it is served
  volume delete NAME --yes          delete a volume and the data on every copy
  volume import NAME FILE           a new volume holding a disk image (qcow2, vmdk, vdi, vhdx, raw), with progress
  volume export NAME FILE           write a volume into an image file (--format; --force), with progress
  volume promote NAME --host H      make H's copy primary when none is in sync (--force; may lose writes)
  volume switchover NAME --to H    move the primary to H with no write lost (a planned move)
  volume add-copy NAME              add a copy while writes go on (--host, --disk: a mirror), with progress
  volume remove-copy NAME           remove a copy (--host H --disk D); never the last one in sync
  volume resize NAME --size SIZE    grow a volume while it is in use (every copy grows first); never shrinks
  volume list                       list the volumes: health, primary, copies, NBD URI
  volume show NAME                  everything about one volume, including its NBD URI
  events                            the cluster's events (--volume, --host, --limit, --follow)
  operator add NAME --role ROLE     add an operator (viewer, operator or admin) with a token of their own
  operator list, operator revoke NAME   who may act on the cluster; revoking ends a token at once

commands on this machine:
  nbd serve FILE                    serve a file or block device over NBD
  replica serve                     serve a directory of replicas to remote engines (replication protocol)
  volume serve NAME                 run a volume over its replicas and serve it over NBD
  volume status                     show a running volume: its copies, resync and verify progress
  volume verify                     compare a volume's copies online (--repair resyncs what differs)
  volume resolve-split-brain NAME   end a split brain by naming the copy whose data survives
  version                           print Haven's version (also --version, -V)

global options, anywhere on the line:
  --etcd URL[,URL...], --context FILE, --tls-dir DIR   which cluster, as who (see any cluster command's --help)
  --json                            machine-readable output, where a command has it
  --help, -h                        the usage of the command they stand with (exit 0)
  --version, -V                     print Haven's version

Run 'haven <command> --help' for a command's options.`;

type Command = (argv: string[]) => Promise<number>;

export interface CommandEntry {
  readonly run: Command;
  readonly usage: string;
}

/** Nouns that are commands on their own: `haven status`, not `haven status show`. */
const NOUN_COMMANDS: Record<string, CommandEntry> = {
  status: { run: status, usage: STATUS_USAGE },
  events: { run: events, usage: EVENTS_USAGE },
  agent: { run: agentCommand, usage: AGENT_USAGE },
};

/** Verbs whose command takes the verb as its first argument, each with its own usage. */
function verbsOf(
  verbs: Record<string, string>,
  run: (argv: string[]) => Promise<number>,
): Record<string, CommandEntry> {
  return Object.fromEntries(
    Object.entries(verbs).map(([verb, usage]) => [verb, { run: (argv: string[]) => run([verb, ...argv]), usage }]),
  );
}

const COMMANDS: Record<string, Record<string, CommandEntry>> = {
  cluster: {
    init: { run: clusterInitCommand, usage: CLUSTER_INIT_USAGE },
    up: { run: clusterUpCommand, usage: CLUSTER_UP_USAGE },
    down: { run: clusterDownCommand, usage: CLUSTER_DOWN_USAGE },
    kill: { run: clusterKillCommand, usage: CLUSTER_KILL_USAGE },
    revive: { run: clusterReviveCommand, usage: CLUSTER_REVIVE_USAGE },
    host: { run: clusterHostCommand, usage: CLUSTER_HOST_USAGE },
    status: { run: clusterStatusCommand, usage: CLUSTER_STATUS_USAGE },
  },
  cert: verbsOf(CERT_VERB_USAGE, certCommand),
  operator: verbsOf(OPERATOR_VERB_USAGE, operatorCommand),
  host: {
    list: { run: hostList, usage: HOST_LIST_USAGE },
    drain: { run: hostDrain, usage: HOST_DRAIN_USAGE },
    undrain: { run: hostUndrain, usage: HOST_UNDRAIN_USAGE },
  },
  disk: verbsOf(DISK_VERB_USAGE, diskCommand),
  nbd: { serve: { run: nbdServe, usage: NBD_SERVE_USAGE } },
  replica: { serve: { run: replicaServe, usage: REPLICA_SERVE_USAGE } },
  vm: Object.fromEntries(
    Object.entries(VM_COMMANDS).map(([verb, run]) => [verb, { run, usage: VM_VERB_USAGE[verb]! }]),
  ),
  volume: {
    serve: { run: volumeServe, usage: VOLUME_SERVE_USAGE },
    status: { run: volumeStatus, usage: VOLUME_STATUS_USAGE },
    verify: { run: volumeVerify, usage: VOLUME_VERIFY_USAGE },
    "resolve-split-brain": { run: volumeResolveSplitBrain, usage: VOLUME_RESOLVE_SPLIT_BRAIN_USAGE },
    create: { run: volumeCreate, usage: VOLUME_CREATE_USAGE },
    delete: { run: volumeDelete, usage: VOLUME_DELETE_USAGE },
    list: { run: volumeList, usage: VOLUME_LIST_USAGE },
    promote: { run: volumePromote, usage: VOLUME_PROMOTE_USAGE },
    switchover: { run: volumeSwitchover, usage: VOLUME_SWITCHOVER_USAGE },
    resize: { run: volumeResize, usage: VOLUME_RESIZE_USAGE },
    show: { run: volumeShow, usage: VOLUME_SHOW_USAGE },
    "add-copy": { run: volumeAddCopy, usage: VOLUME_ADD_COPY_USAGE },
    "remove-copy": { run: volumeRemoveCopy, usage: VOLUME_REMOVE_COPY_USAGE },
    import: { run: volumeImport, usage: VOLUME_IMPORT_USAGE },
    export: { run: volumeExport, usage: VOLUME_EXPORT_USAGE },
  },
};

/** `haven NOUN --help`: the lines of USAGE for the noun's commands (one place describes each). */
function nounUsage(noun: string): string {
  const lines = USAGE.split("\n").filter((line) => line.startsWith(`  ${noun} `));
  return [
    `usage: haven ${noun} <command> [options]`,
    "",
    ...lines,
    "",
    `Run 'haven ${noun} <command> --help' for a command's options.`,
  ].join("\n");
}

/** Every usage text of the CLI, by its command words: what `--help` prints and docs/cli.md shows. */
export function usageTexts(): { command: string; usage: string }[] {
  return [
    { command: "haven", usage: USAGE },
    ...Object.entries(NOUN_COMMANDS).map(([noun, entry]) => ({ command: `haven ${noun}`, usage: entry.usage })),
    ...Object.entries(COMMANDS).flatMap(([noun, verbs]) => [
      { command: `haven ${noun}`, usage: nounUsage(noun) },
      ...Object.entries(verbs).map(([verb, entry]) => ({ command: `haven ${noun} ${verb}`, usage: entry.usage })),
    ]),
  ];
}

function version(json: boolean): number {
  const manifest = JSON.parse(readFileSync(join(packageRoot(), "package.json"), "utf8")) as { version: string };
  process.stdout.write(json ? `${JSON.stringify({ version: manifest.version })}\n` : `haven ${manifest.version}\n`);
  return 0;
}

const takesVerb = (noun: string): boolean => Object.hasOwn(COMMANDS, noun);

export async function main(argv: string[]): Promise<number> {
  // Where a usage error sends the operator: the help of the command as far as it was read.
  let hint = usageHint("haven");
  try {
    const line = readCommandLine(argv, takesVerb);
    const [noun, verb] = line.words;
    if (line.version) return version(line.rest.includes("--json"));
    if (noun === undefined || noun === "help") {
      if (noun === "help" || line.help) {
        process.stdout.write(`${USAGE}\n`);
        return 0;
      }
      throw new HavenError("HAVEN_ERR_USAGE", "no command given");
    }
    const nounCommand = Object.hasOwn(NOUN_COMMANDS, noun) ? NOUN_COMMANDS[noun] : undefined;
    if (nounCommand !== undefined) {
      hint = usageHint(`haven ${noun}`);
      if (line.help) {
        process.stdout.write(`${nounCommand.usage}\n`);
        return 0;
      }
      return await nounCommand.run(line.rest);
    }
    const verbs = Object.hasOwn(COMMANDS, noun) ? COMMANDS[noun] : undefined;
    if (verbs === undefined) throw new HavenError("HAVEN_ERR_USAGE", `unknown command "${noun}"`);
    hint = usageHint(`haven ${noun}`, true);
    if (verb === "help" || (verb === undefined && line.help)) {
      process.stdout.write(`${nounUsage(noun)}\n`);
      return 0;
    }
    const entry = verb === undefined || !Object.hasOwn(verbs, verb) ? undefined : verbs[verb];
    if (entry === undefined) {
      const known = Object.keys(verbs).join(", ");
      throw new HavenError("HAVEN_ERR_USAGE", `unknown or missing verb for "${noun}" (known: ${known})`);
    }
    hint = usageHint(`haven ${noun} ${verb}`);
    if (line.help) {
      process.stdout.write(`${entry.usage}\n`);
      return 0;
    }
    return await entry.run(line.rest);
  } catch (error) {
    return reportError(error, hint);
  }
}
