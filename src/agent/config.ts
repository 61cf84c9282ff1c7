// The agent's config file (`haven agent --config FILE`): which host this is, where etcd is, where the
// agent listens, which directories hold its replicas, and optional timing overrides. The file is JSON
// and untrusted: parseAgentConfig turns it into a typed AgentConfig or fails with HAVEN_ERR_CONFIG and a
// message that names the file and the JSON path of the first problem ("agent.json: disks[1].path must be
// an absolute path"). Unknown keys are refused, with a "did you mean" for near misses, because a
// misspelt optional key would otherwise silently keep its default.
//
// Every link is TLS under the cluster CA: "tls.dir" names this host's identity directory ('haven cert
// issue host NAME' makes one), whose certificate the agent shows etcd (and, once wired, its peers and
// clients). An agent that listens on anything but loopback refuses to start without it, unless the file
// says "insecure": true in so many words; on loopback alone it may run without TLS (tests, one machine).
//
// {
//   "host": { "name": "node1", "address": "10.0.0.1" },
//   "tls": { "dir": "/etc/haven/tls/node1" },
//   "etcd": { "endpoints": ["https://10.0.0.1:2379", "https://10.0.0.2:2379", "https://10.0.0.3:2379"] },
//   "api": { "listen": "0.0.0.0:7480", "tokenFile": "/etc/haven/api.token" },
//   "replication": { "listen": "0.0.0.0:7481", "secretFile": "/etc/haven/cluster.secret" },
//   "nbd": { "listen": "0.0.0.0:10809" },
//   "disks": [{ "name": "ssd0", "path": "/srv/haven/ssd0", "capacity": "500G" }],
//   "timings": { "leaseTtlMs": 8000 },
//   "events": { "maxAgeDays": 14, "maxCount": 100000 }
// }

import { readFile, stat } from "node:fs/promises";
import { isIP } from "node:net";
import { isAbsolute, normalize } from "node:path";
import { HavenError, errorMessage } from "../core/errors.js";
import { parseEndpoint } from "../cluster/etcd-transport.js";
import { parseHostPort, parseSize } from "../util/units.js";
import { DEFAULT_EVENT_RETENTION, type EventRetention } from "../cluster/event-retention.js";
import { parseCpuList, formatCpuList } from "../cluster/vm-resources.js";
import { DEFAULT_VM_TIMINGS, type VmTimings } from "./vm-decide.js";
import { checkTimings, DEFAULT_TIMINGS, TIMING_NAMES, type Timings } from "./timings.js";

export interface ListenAddress {
  /** An IP address or host name; 0.0.0.0 or :: for every interface. */
  readonly host: string;
  readonly port: number;
}

export interface DiskConfig {
  /** Unique on this host; a DNS label, as it appears in placement and in the CLI. */
  readonly name: string;
  /** An existing directory (usually a mount point) that holds one subdirectory per replica. */
  readonly path: string;
  /** How much of the disk Haven may use; absent means the file system's free space. */
  readonly capacityBytes?: number;
}

export interface AgentConfig {
  readonly host: {
    /** The host's name in the cluster: a DNS label, unique among hosts. */
    readonly name: string;
    /** The IP address or DNS name other hosts and clients reach this host at (no port). */
    readonly address: string;
  };
  /** This host's TLS identity directory (pki.ts's layout); absent: no TLS (loopback, or insecure). */
  readonly tls?: { readonly dir: string };
  /** The file said "insecure": true: the agent may listen beyond loopback without TLS, and reports so. */
  readonly insecure?: true;
  /** etcd endpoints, normalised to http://HOST:PORT or https://HOST:PORT. */
  readonly etcd: {
    readonly endpoints: readonly string[];
    /** etcd's user for this host (host.NAME) when etcd has authentication on; its password is in passwordFile. */
    readonly user?: string;
    readonly passwordFile?: string;
  };
  /** The HTTP API, for the CLI and the dashboard, guarded by the bearer token in tokenFile. */
  readonly api: { readonly listen: ListenAddress; readonly tokenFile: string };
  /** The replica server and peer heartbeats, authenticated with the cluster secret in secretFile. */
  readonly replication: {
    readonly listen: ListenAddress;
    readonly secretFile: string;
    /** The port other hosts reach the replica server at, when a port forward stands between (default: listen's). */
    readonly advertisePort?: number;
  };
  /** The NBD front of the volumes this host is primary for (one export per volume). */
  readonly nbd: { readonly listen: ListenAddress };
  readonly disks: readonly DiskConfig[];
  /**
   * Where the agent keeps what it learns at run time: the disks `haven disk add` gave it (disks.json)
   * and the mount points of the block devices it formatted (disks/ID). Absent: disks come from the
   * config only, and `disk add` is refused.
   */
  readonly stateDir?: string;
  /**
   * Where to look for more disks at start, as paths or patterns ("/srv/haven/*"): each directory found
   * is known by its label, not by its path or order. A labelled disk of this host is used under its
   * label's id; an unlabelled one is listed as new (`haven disk add` takes it), another's as foreign.
   */
  readonly diskPaths?: readonly string[];
  /** DEFAULT_TIMINGS with the file's overrides, checked by checkTimings. */
  readonly timings: Timings;
  /** How long the cluster keeps its events; every agent trims them (DEFAULT_EVENT_RETENTION). */
  readonly events: EventRetention;
  /** What this host gives to VMs and where their files live; absent: the host runs no VMs. */
  readonly vms?: VmsConfig;
}

export interface VmsConfig {
  /** Host CPUs VMs may use (pinned vCPUs must be among them). */
  readonly cpus: readonly number[];
  /** Memory for all VMs together; never overcommitted. */
  readonly memoryMiB: number;
  /** Per-VM runtime directories (QMP, serial console, heartbeat, pidfile) and the disk endpoints. */
  readonly runtimeDir: string;
  /** Where built-in images (haven-test) are found. */
  readonly imageDir?: string;
  /** The default bridge for NICs, and the network namespace it lives in (the local cluster's). */
  readonly bridge?: string;
  readonly netns?: string;
  /** kvm, tcg, or auto (probe KVM with a tiny guest, else TCG). Default auto. */
  readonly accelerator: "auto" | "kvm" | "tcg";
  readonly timings: VmTimings;
}

/** Bounds on the lists, so that a generated or corrupted file cannot make the agent do silly amounts of work. */
export const MAX_ETCD_ENDPOINTS = 16;
export const MAX_DISKS = 64;
export const MAX_CONFIG_BYTES = 1024 * 1024;

const TOP_KEYS = {
  required: ["host", "etcd", "api", "replication", "nbd", "disks"],
  optional: ["tls", "insecure", "timings", "events", "vms", "stateDir", "diskPaths"],
} as const;
const TLS_KEYS = { required: ["dir"], optional: [] } as const;
const VMS_KEYS = {
  required: ["cpus", "memory", "runtimeDir"],
  optional: ["imageDir", "bridge", "netns", "accelerator", "heartbeatTimeoutMs", "bootTimeoutMs", "qmpTimeoutMs"],
} as const;
const VM_TIMEOUT_BOUNDS = { min: 100, max: 3_600_000 };
const DAY_MS = 24 * 60 * 60 * 1000;
const EVENTS_KEYS = { required: [], optional: ["maxAgeDays", "maxCount"] } as const;
/** Bounds on the event retention: at least a day and a thousand events, so an operator can still look back. */
const EVENT_MAX_AGE_DAYS = { min: 1, max: 3650 };
const EVENT_MAX_COUNT = { min: 1_000, max: 10_000_000 };
const HOST_KEYS = { required: ["name", "address"], optional: [] } as const;
const ETCD_KEYS = { required: ["endpoints"], optional: ["user", "passwordFile"] } as const;
const API_KEYS = { required: ["listen", "tokenFile"], optional: [] } as const;
const REPLICATION_KEYS = { required: ["listen", "secretFile"], optional: ["advertisePort"] } as const;
const NBD_KEYS = { required: ["listen"], optional: [] } as const;
const DISK_KEYS = { required: ["name", "path"], optional: ["capacity"] } as const;

/** What to write when a key is missing: a hint at the expected value. */
const EXAMPLES: Record<string, string> = {
  host: '{ "name": "node1", "address": "10.0.0.1" }',
  etcd: '{ "endpoints": ["https://10.0.0.1:2379"] }',
  "tls.dir": '"/etc/haven/tls/node1"',
  api: '{ "listen": "0.0.0.0:7480", "tokenFile": "/etc/haven/api.token" }',
  replication: '{ "listen": "0.0.0.0:7481", "secretFile": "/etc/haven/cluster.secret" }',
  nbd: '{ "listen": "0.0.0.0:10809" }',
  "host.name": '"node1"',
  "host.address": '"10.0.0.1"',
  "etcd.endpoints": '["https://10.0.0.1:2379"]',
  "etcd.user": '"host.node1"',
  "etcd.passwordFile": '"/etc/haven/etcd.password"',
  "api.listen": '"0.0.0.0:7480"',
  "api.tokenFile": '"/etc/haven/api.token"',
  "replication.listen": '"0.0.0.0:7481"',
  "replication.secretFile": '"/etc/haven/cluster.secret"',
  "nbd.listen": '"0.0.0.0:10809"',
  disks: '[{ "name": "ssd0", "path": "/srv/haven/ssd0" }]',
  "disks[].name": '"ssd0"',
  "disks[].path": '"/srv/haven/ssd0"',
};

/** Parses and validates the text of an agent config file; `sourceName` names it in every error. */
export function parseAgentConfig(text: string, sourceName: string): AgentConfig {
  const fail: (path: string, problem: string) => never = (path, problem) => {
    throw new HavenError("HAVEN_ERR_CONFIG", `${sourceName}: ${path === "" ? "" : `${path} `}${problem}`);
  };
  let json: unknown;
  try {
    json = JSON.parse(text.replace(/^\uFEFF/, ""));
  } catch (error) {
    fail("", `not valid JSON: ${jsonErrorWithLine((error as Error).message, text)}`);
  }
  const read = new Reader(fail);
  const root = read.object(json, "", TOP_KEYS);

  const hostObject = read.object(root.host, "host", HOST_KEYS);
  const host = {
    name: read.label(hostObject.name, "host.name"),
    address: read.hostAddress(hostObject.address, "host.address"),
  };

  const etcdObject = read.object(root.etcd, "etcd", ETCD_KEYS);
  const endpointList = read.array(etcdObject.endpoints, "etcd.endpoints", 1, MAX_ETCD_ENDPOINTS);
  const endpoints: string[] = [];
  endpointList.forEach((value, index) => {
    const path = `etcd.endpoints[${index}]`;
    const text = read.string(value, path);
    let name = "";
    try {
      name = parseEndpoint(text).name;
    } catch {
      const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(text)?.[1];
      fail(
        path,
        scheme !== undefined && !["http", "https"].includes(scheme.toLowerCase())
          ? `"${text}" uses ${scheme}: etcd is reached over https://HOST:PORT (or http:// without TLS)`
          : `"${text}" is not an etcd endpoint: use https://HOST:PORT with a port from 1 to 65535`,
      );
    }
    const earlier = endpoints.indexOf(name);
    if (earlier >= 0) fail(path, `"${text}" repeats etcd.endpoints[${earlier}]`);
    endpoints.push(name);
  });

  const apiObject = read.object(root.api, "api", API_KEYS);
  const api = {
    listen: read.listen(apiObject.listen, "api.listen"),
    tokenFile: read.absolutePath(apiObject.tokenFile, "api.tokenFile"),
  };
  const replicationObject = read.object(root.replication, "replication", REPLICATION_KEYS);
  const replication = {
    listen: read.listen(replicationObject.listen, "replication.listen"),
    secretFile: read.absolutePath(replicationObject.secretFile, "replication.secretFile"),
    ...(replicationObject.advertisePort !== undefined && {
      advertisePort: read.port(replicationObject.advertisePort, "replication.advertisePort"),
    }),
  };
  const nbdObject = read.object(root.nbd, "nbd", NBD_KEYS);
  const nbd = { listen: read.listen(nbdObject.listen, "nbd.listen") };

  const listens: [string, ListenAddress][] = [
    ["api.listen", api.listen],
    ["replication.listen", replication.listen],
    ["nbd.listen", nbd.listen],
  ];
  listens.forEach(([path, listen], index) => {
    for (const [otherPath, other] of listens.slice(0, index)) {
      if (listen.port === other.port && hostsOverlap(listen.host, other.host)) {
        fail(path, `"${formatListen(listen)}" uses the same port as ${otherPath} "${formatListen(other)}"`);
      }
    }
  });
  const tls =
    root.tls === undefined
      ? undefined
      : { dir: read.absolutePath(read.object(root.tls, "tls", TLS_KEYS).dir, "tls.dir") };
  if (root.insecure !== undefined && typeof root.insecure !== "boolean")
    fail("insecure", `must be true or false, not ${JSON.stringify(root.insecure)}`);
  const insecure = root.insecure === true;
  if (tls !== undefined && insecure) fail("insecure", `is true but "tls" is given too: keep one of them`);
  if ((etcdObject.user === undefined) !== (etcdObject.passwordFile === undefined))
    fail(
      "etcd",
      `gives ${etcdObject.user === undefined ? "passwordFile without user" : "user without passwordFile"}: give both or neither`,
    );
  const exposed = listens.find(([, listen]) => !isLoopback(listen.host));
  if (exposed !== undefined && tls === undefined && !insecure) {
    fail(
      exposed[0],
      `"${formatListen(exposed[1])}" is reachable beyond this machine, and without "tls" anyone who reaches it ` +
        `could talk to this host: add "tls": { "dir": "/etc/haven/tls/${host.name}" } ('haven cert issue host ` +
        `${host.name} --address ${host.address}' makes it), or say "insecure": true to run without TLS`,
    );
  }
  const secureEndpoint = endpoints.findIndex((endpoint) => endpoint.startsWith("https://"));
  if (secureEndpoint >= 0 && tls === undefined)
    fail(`etcd.endpoints[${secureEndpoint}]`, `uses TLS, which needs this host's identity: add "tls": { "dir": ... }`);
  if (isLoopback(replication.listen.host) && !isLoopback(host.address)) {
    fail(
      "replication.listen",
      `"${formatListen(replication.listen)}" is a loopback address, so other hosts could not reach ` +
        `host.address "${host.address}"; listen on 0.0.0.0 or on that address`,
    );
  }

  const stateDir = root.stateDir === undefined ? undefined : read.absolutePath(root.stateDir, "stateDir");
  const diskPaths =
    root.diskPaths === undefined
      ? undefined
      : read
          .array(root.diskPaths, "diskPaths", 1, MAX_DISKS)
          .map((pattern, index) => read.absolutePath(pattern, `diskPaths[${index}]`));
  // With a state directory, disks may all come from `haven disk add`.
  const diskList = read.array(root.disks, "disks", stateDir === undefined ? 1 : 0, MAX_DISKS);
  const disks: DiskConfig[] = [];
  diskList.forEach((value, index) => {
    const path = `disks[${index}]`;
    const diskObject = read.object(value, path, DISK_KEYS);
    const name = read.label(diskObject.name, `${path}.name`);
    const directory = read.absolutePath(diskObject.path, `${path}.path`);
    disks.forEach((earlier, earlierIndex) => {
      if (earlier.name === name) fail(`${path}.name`, `"${name}" is already the name of disks[${earlierIndex}]`);
      if (earlier.path === directory) {
        fail(`${path}.path`, `"${directory}" is already the path of disks[${earlierIndex}]`);
      }
      if (directory.startsWith(`${earlier.path}/`) || earlier.path.startsWith(`${directory}/`)) {
        fail(`${path}.path`, `"${directory}" and disks[${earlierIndex}].path "${earlier.path}" must not be nested`);
      }
    });
    const disk: DiskConfig = { name, path: directory };
    if (diskObject.capacity !== undefined) {
      const capacity = read.string(diskObject.capacity, `${path}.capacity`);
      let capacityBytes = 0;
      try {
        capacityBytes = parseSize(capacity);
      } catch {
        fail(`${path}.capacity`, `"${capacity}" is not a size: use bytes or a unit such as 512M, 500G, 2T`);
      }
      disks.push({ ...disk, capacityBytes });
    } else {
      disks.push(disk);
    }
  });

  const overrides: Partial<Record<keyof Timings, unknown>> =
    root.timings === undefined
      ? {}
      : read.object(root.timings, "timings", { required: [], optional: TIMING_NAMES as readonly string[] });
  const timings = checkTimings({ ...DEFAULT_TIMINGS, ...overrides } as Timings, sourceName);

  const eventsObject = root.events === undefined ? {} : read.object(root.events, "events", EVENTS_KEYS);
  const events: EventRetention = {
    maxAgeMs:
      eventsObject.maxAgeDays === undefined
        ? DEFAULT_EVENT_RETENTION.maxAgeMs
        : read.integer(eventsObject.maxAgeDays, "events.maxAgeDays", EVENT_MAX_AGE_DAYS) * DAY_MS,
    maxCount:
      eventsObject.maxCount === undefined
        ? DEFAULT_EVENT_RETENTION.maxCount
        : read.integer(eventsObject.maxCount, "events.maxCount", EVENT_MAX_COUNT),
  };

  const vms = root.vms === undefined ? undefined : readVmsConfig(read, read.object(root.vms, "vms", VMS_KEYS), fail);
  return {
    host,
    ...(tls !== undefined && { tls }),
    ...(insecure && { insecure: true as const }),
    etcd: {
      endpoints,
      ...(etcdObject.user !== undefined && { user: read.string(etcdObject.user, "etcd.user") }),
      ...(etcdObject.passwordFile !== undefined && {
        passwordFile: read.absolutePath(etcdObject.passwordFile, "etcd.passwordFile"),
      }),
    },
    api,
    replication,
    nbd,
    disks,
    ...(stateDir !== undefined && { stateDir }),
    ...(diskPaths !== undefined && { diskPaths }),
    timings,
    events,
    ...(vms && { vms }),
  };
}

function formatVmsConfig(vms: VmsConfig): Record<string, unknown> {
  const { cpus, memoryMiB, timings, accelerator, ...paths } = vms;
  return {
    cpus: formatCpuList(cpus),
    memory: `${memoryMiB}M`,
    ...paths,
    ...(accelerator !== "auto" && { accelerator }),
    ...Object.fromEntries(
      (Object.keys(timings) as (keyof VmTimings)[])
        .filter((name) => timings[name] !== DEFAULT_VM_TIMINGS[name])
        .map((name) => [name, timings[name]]),
    ),
  };
}

function readVmsConfig(
  read: Reader,
  o: Record<string, unknown>,
  fail: (path: string, problem: string) => never,
): VmsConfig {
  const cpuText = read.string(o.cpus, "vms.cpus");
  const cpus = parseCpuList(cpuText);
  if (cpus === undefined || cpus.length === 0)
    fail("vms.cpus", `"${cpuText}" is not a CPU list such as "0-3" or "2,3"`);
  const memoryText = read.string(o.memory, "vms.memory");
  let memoryMiB = 0;
  try {
    memoryMiB = Math.floor(parseSize(memoryText) / (1024 * 1024));
  } catch {
    fail("vms.memory", `"${memoryText}" is not a size: use a unit such as 2G or 512M`);
  }
  if (memoryMiB < 16) fail("vms.memory", `"${memoryText}" is less than 16 MiB`);
  const accelerator = o.accelerator === undefined ? "auto" : read.string(o.accelerator, "vms.accelerator");
  if (accelerator !== "auto" && accelerator !== "kvm" && accelerator !== "tcg")
    fail("vms.accelerator", `"${accelerator}" is not auto, kvm or tcg`);
  const timeout = (field: "heartbeatTimeoutMs" | "bootTimeoutMs" | "qmpTimeoutMs"): number =>
    o[field] === undefined ? DEFAULT_VM_TIMINGS[field] : read.integer(o[field], `vms.${field}`, VM_TIMEOUT_BOUNDS);
  return {
    cpus: cpus!,
    memoryMiB,
    runtimeDir: read.absolutePath(o.runtimeDir, "vms.runtimeDir"),
    ...(o.imageDir !== undefined && { imageDir: read.absolutePath(o.imageDir, "vms.imageDir") }),
    ...(o.bridge !== undefined && { bridge: read.label(o.bridge, "vms.bridge") }),
    ...(o.netns !== undefined && { netns: read.label(o.netns, "vms.netns") }),
    accelerator,
    timings: {
      heartbeatTimeoutMs: timeout("heartbeatTimeoutMs"),
      bootTimeoutMs: timeout("bootTimeoutMs"),
      qmpTimeoutMs: timeout("qmpTimeoutMs"),
    },
  };
}

/**
 * Reads and parses the config file, then checks that the files and directories it names exist (their
 * content is read later, by whoever uses them). Every failure is HAVEN_ERR_CONFIG with the OS's reason.
 */
export async function loadAgentConfig(file: string): Promise<AgentConfig> {
  let text: string;
  try {
    if ((await stat(file)).size > MAX_CONFIG_BYTES) {
      throw new HavenError("HAVEN_ERR_CONFIG", `the agent config ${file} is larger than ${MAX_CONFIG_BYTES} bytes`);
    }
    text = await readFile(file, "utf8");
  } catch (error) {
    if (error instanceof HavenError) throw error;
    throw new HavenError("HAVEN_ERR_CONFIG", `cannot read the agent config ${file}: ${osReason(error)}`, {
      cause: error,
    });
  }
  const config = parseAgentConfig(text, file);
  const expected: [string, string, "file" | "directory"][] = [
    ...(config.tls !== undefined ? [["tls.dir", config.tls.dir, "directory"] as [string, string, "directory"]] : []),
    ["api.tokenFile", config.api.tokenFile, "file"],
    ["replication.secretFile", config.replication.secretFile, "file"],
    ...config.disks.map((disk, index): [string, string, "directory"] => [
      `disks[${index}].path`,
      disk.path,
      "directory",
    ]),
  ];
  for (const [path, target, kind] of expected) {
    let isKind: boolean;
    try {
      const stats = await stat(target);
      isKind = kind === "file" ? stats.isFile() : stats.isDirectory();
    } catch (error) {
      throw new HavenError("HAVEN_ERR_CONFIG", `${file}: ${path} ${target}: ${osReason(error)}`, { cause: error });
    }
    if (!isKind) throw new HavenError("HAVEN_ERR_CONFIG", `${file}: ${path} ${target} is not a ${kind}`);
  }
  return config;
}

/** The config as file text that parseAgentConfig reads back to an equal config; timings only where not default. */
export function formatAgentConfig(config: AgentConfig): string {
  const timings: Partial<Record<keyof Timings, number>> = {};
  for (const name of TIMING_NAMES) {
    if (config.timings[name] !== DEFAULT_TIMINGS[name]) timings[name] = config.timings[name];
  }
  const file = {
    host: { name: config.host.name, address: config.host.address },
    ...(config.tls !== undefined && { tls: { dir: config.tls.dir } }),
    ...(config.insecure === true && { insecure: true }),
    etcd: {
      endpoints: [...config.etcd.endpoints],
      ...(config.etcd.user !== undefined && { user: config.etcd.user }),
      ...(config.etcd.passwordFile !== undefined && { passwordFile: config.etcd.passwordFile }),
    },
    api: { listen: formatListen(config.api.listen), tokenFile: config.api.tokenFile },
    replication: {
      listen: formatListen(config.replication.listen),
      secretFile: config.replication.secretFile,
      ...(config.replication.advertisePort !== undefined && { advertisePort: config.replication.advertisePort }),
    },
    nbd: { listen: formatListen(config.nbd.listen) },
    disks: config.disks.map((disk) => ({
      name: disk.name,
      path: disk.path,
      ...(disk.capacityBytes === undefined ? {} : { capacity: formatCapacity(disk.capacityBytes) }),
    })),
    ...(config.stateDir !== undefined && { stateDir: config.stateDir }),
    ...(config.diskPaths !== undefined && { diskPaths: [...config.diskPaths] }),
    ...(Object.keys(timings).length === 0 ? {} : { timings }),
    ...(config.events.maxAgeMs === DEFAULT_EVENT_RETENTION.maxAgeMs &&
    config.events.maxCount === DEFAULT_EVENT_RETENTION.maxCount
      ? {}
      : { events: { maxAgeDays: config.events.maxAgeMs / DAY_MS, maxCount: config.events.maxCount } }),
    ...(config.vms !== undefined && { vms: formatVmsConfig(config.vms) }),
  };
  return `${JSON.stringify(file, null, 2)}\n`;
}

export function formatListen(listen: ListenAddress): string {
  return `${listen.host.includes(":") ? `[${listen.host}]` : listen.host}:${listen.port}`;
}

/** A DNS label (RFC 1123), lower case: host and disk names are keys in etcd and words on the CLI. */
export function isValidLabel(name: string): boolean {
  return /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/.test(name);
}

/** An IP address, or a DNS name of labels (any case) whose last label is not all digits. */
export function isValidHostAddress(text: string): boolean {
  if (isIP(text) !== 0) return true;
  if (text.length > 253) return false;
  const labels = text.replace(/\.$/, "").split(".");
  return (
    labels.every((label) => /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/i.test(label)) && !/^\d+$/.test(labels.at(-1)!)
  );
}

/**
 * The known key closest to `key`, if it is close enough to be a likely typo: the same but for case, a
 * prefix of at least 3 characters either way, or within an edit distance of about one per four letters.
 */
export function suggestKey(key: string, known: readonly string[]): string | undefined {
  const lower = key.toLowerCase();
  let best: { name: string; distance: number } | undefined;
  for (const name of known) {
    const candidate = name.toLowerCase();
    if (candidate === lower) return name;
    const prefix = lower.length >= 3 && (candidate.startsWith(lower) || lower.startsWith(candidate));
    const distance = prefix ? 0.5 : editDistance(lower, candidate);
    if (distance <= Math.max(1, Math.floor(candidate.length / 4)) && (best === undefined || distance < best.distance)) {
      best = { name, distance };
    }
  }
  return best?.name;
}

class Reader {
  constructor(private readonly fail: (path: string, problem: string) => never) {}

  object(
    value: unknown,
    path: string,
    keys: { readonly required: readonly string[]; readonly optional: readonly string[] },
  ): Record<string, unknown> {
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      this.fail(path, `${path === "" ? "the top level " : ""}must be a JSON object, not ${describe(value)}`);
    }
    const object = value as Record<string, unknown>;
    const known = [...keys.required, ...keys.optional];
    const unknown = Object.keys(object).filter((key) => !known.includes(key));
    if (unknown.length > 0) {
      const where = path === "" ? "the top level" : path;
      const named = unknown.map((key) => {
        const suggestion = suggestKey(key, known);
        return `"${key}"${suggestion === undefined ? "" : ` (did you mean "${suggestion}"?)`}`;
      });
      this.fail(
        "",
        `${where} has unknown ${unknown.length === 1 ? "key" : "keys"} ${named.join(", ")}; ` +
          `known keys: ${known.join(", ")}`,
      );
    }
    for (const key of keys.required) {
      if (object[key] === undefined) {
        const full = path === "" ? key : `${path}.${key}`;
        const example = EXAMPLES[full] ?? EXAMPLES[full.replace(/^disks\[\d+\]/, "disks[]")];
        this.fail(full, `is missing${example === undefined ? "" : `, e.g. ${example}`}`);
      }
    }
    return object;
  }

  array(value: unknown, path: string, min: number, max: number): unknown[] {
    if (!Array.isArray(value)) this.fail(path, `must be a JSON array, not ${describe(value)}`);
    const array = value as unknown[];
    if (array.length < min) this.fail(path, `must not be empty${EXAMPLES[path] ? `, e.g. ${EXAMPLES[path]}` : ""}`);
    if (array.length > max) this.fail(path, `has ${array.length} entries; at most ${max} are allowed`);
    return array;
  }

  string(value: unknown, path: string): string {
    if (typeof value !== "string") this.fail(path, `must be a string, not ${describe(value)}`);
    if (value === "") this.fail(path, "must not be empty");
    return value as string;
  }

  label(value: unknown, path: string): string {
    const name = this.string(value, path);
    if (!isValidLabel(name)) {
      this.fail(
        path,
        `"${name}" is not a valid name: use 1 to 63 lower-case letters, digits and '-', ` +
          "starting and ending with a letter or digit",
      );
    }
    return name;
  }

  hostAddress(value: unknown, path: string): string {
    const address = this.string(value, path);
    if (!isValidHostAddress(address)) {
      this.fail(path, `"${address}" is not an IP address or a DNS name (give the address alone, without a port)`);
    }
    if (isWildcard(address)) this.fail(path, `"${address}" is not an address other hosts can reach`);
    return address;
  }

  listen(value: unknown, path: string): ListenAddress {
    const text = this.string(value, path);
    let listen: ListenAddress = { host: "", port: 0 };
    try {
      listen = parseHostPort(text);
    } catch {
      this.fail(path, `"${text}" is not HOST:PORT (for example 0.0.0.0:7480)`);
    }
    if (!isValidHostAddress(listen.host))
      this.fail(path, `"${text}": "${listen.host}" is not an IP address or a DNS name`);
    // Port 0 would pick a new port at each start, but peers and clients find this host by the address
    // it publishes in etcd, and must find it again after the agent restarts.
    if (listen.port === 0) this.fail(path, `"${text}" must name a fixed port from 1 to 65535`);
    return listen;
  }

  integer(value: unknown, path: string, bounds: { readonly min: number; readonly max: number }): number {
    if (!(typeof value === "number" && Number.isInteger(value) && value >= bounds.min && value <= bounds.max))
      this.fail(path, `must be a whole number from ${bounds.min} to ${bounds.max}, not ${describe(value)}`);
    return value;
  }

  port(value: unknown, path: string): number {
    if (!(typeof value === "number" && Number.isInteger(value) && value >= 1 && value <= 65535))
      this.fail(path, `must be a port number from 1 to 65535, not ${describe(value)}`);
    return value;
  }

  absolutePath(value: unknown, path: string): string {
    const text = this.string(value, path);
    if (!isAbsolute(text)) this.fail(path, `must be an absolute path, not "${text}"`);
    if (text.includes("\0")) this.fail(path, "must not contain a NUL character");
    const normalised = normalize(text);
    return normalised.length > 1 ? normalised.replace(/\/+$/, "") : normalised;
  }
}

/** The OS's reason without the "open '/path'" that Node appends, since the message names the path already. */
function osReason(error: unknown): string {
  return errorMessage(error).replace(/, \w+ '[^']*'$/, "");
}

function describe(value: unknown): string {
  if (value === undefined) return "nothing";
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "object") return "an object";
  if (typeof value === "string") return `the string ${JSON.stringify(value)}`;
  return `the ${typeof value} ${String(value)}`;
}

function isWildcard(host: string): boolean {
  return host === "0.0.0.0" || host === "::" || host === "[::]";
}

function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\./.test(host);
}

function hostsOverlap(a: string, b: string): boolean {
  return a === b || isWildcard(a) || isWildcard(b);
}

function formatCapacity(bytes: number): string {
  for (const [unit, size] of [
    ["T", 1024 ** 4],
    ["G", 1024 ** 3],
    ["M", 1024 ** 2],
    ["K", 1024],
  ] as const) {
    if (bytes % size === 0) return `${bytes / size}${unit}`;
  }
  return String(bytes);
}

/** Adds line and column to JSON.parse's "at position N", which is all it gives. */
function jsonErrorWithLine(message: string, text: string): string {
  const match = /at position (\d+)/.exec(message);
  if (!match) return message;
  const before = text.replace(/^\uFEFF/, "").slice(0, Number(match[1]));
  const line = before.split("\n").length;
  const column = before.length - before.lastIndexOf("\n");
  return `${message} (line ${line}, column ${column})`;
}

/** Edit distance counting an insertion, a deletion, a substitution or a swap of neighbours as one. */
function editDistance(a: string, b: string): number {
  const rows = Array.from({ length: a.length + 1 }, (_, i) =>
    Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const row = rows[i]!;
      row[j] = Math.min(rows[i - 1]![j]! + 1, row[j - 1]! + 1, rows[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        row[j] = Math.min(row[j]!, rows[i - 2]![j - 2]! + 1);
      }
    }
  }
  return rows[a.length]![b.length]!;
}
