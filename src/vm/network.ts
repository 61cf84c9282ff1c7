// A VM's network: each NIC is a tap on a host bridge named in the host config, with a MAC that is
// the same on every host, so the guest keeps its identity (and, for the test guests, its fixed IP)
// wherever it runs. The pure half names things; the other half sets up links with iproute2.
//
// The model:
//   - MAC: 52:54:00:XX:YY:ZZ (QEMU's locally administered, unicast prefix), XX:YY:ZZ taken from
//     SHA-256(VM name, NIC index). The test guests take their IPv4 address from the last two bytes,
//     10.99.YY.ZZ/16 (ipv4FromMac), so YY:ZZ is never 00:00 or ff:ff (the subnet's network and
//     broadcast addresses). Collisions: a derived MAC has 24 random bits, so among n NICs two share
//     one with a chance of about n²/2^25 (0.03 % at 100 NICs, 3 % at 1000), and two share an IP with
//     about n²/2^17 (1 % at 36 NICs). Haven cannot see every MAC on an operator's network: a NIC
//     spec's explicit `mac=` overrides the derived one.
//   - Tap: `hv` + 12 hex digits of SHA-256(VM name) + the NIC index (0-7): 15 characters, the most a
//     Linux interface name holds, the same on every host, and the NICs of one VM share a prefix.
//     QEMU creates the tap (`-netdev tap,ifname=...,script=no`); the agent attaches it to its bridge
//     (plugTap) while QEMU is still paused, before `cont`, so the guest never runs unplugged.
//   - Host config: `{ "bridge": NAME, "namespace"?: NAME }`. A production host names its own bridge;
//     the local cluster (all hosts are processes on one machine) creates one network namespace
//     `haven-<cluster-id>` with one bridge, QEMU runs inside it (`ip netns exec`), and the bridge has
//     10.99.0.1/16 there, so `ip netns exec NS ping 10.99.Y.Z` reaches a guest on whichever host
//     runs it, and no guest traffic touches the machine's own namespace.
//
// Text from the CLI (--nic) is refused with HAVEN_ERR_USAGE, a host config with HAVEN_ERR_CONFIG; each
// message names the field and the fix. `ip` failures are HAVEN_ERR_IO with ip's stderr (ip-command.ts).

import { execFile } from "node:child_process";
import { createConnection } from "node:net";
import { createHash } from "node:crypto";
import { HavenError, type ErrorCode } from "../core/errors.js";
import { ipFailed, runIp, tryIp } from "./ip-command.js";
import { MAX_TAP_NAME_LENGTH, type VmNic } from "./qemu-command.js";
import { VM_NAME_PATTERN } from "./qemu-name.js";

/** QEMU's own prefix: locally administered (bit 1 of the first byte) and unicast (bit 0 clear). */
export const MAC_PREFIX = "52:54:00";
/** A tap name has room for one index digit. */
export const MAX_NICS_PER_VM = 8;
/** The test guests' subnet, 10.99.0.0/16, and the bridge's address in a local cluster's namespace. */
export const GUEST_SUBNET_PREFIX = "10.99";
export const BRIDGE_ADDRESS = "10.99.0.1/16";
/** The bridge a local cluster creates in its namespace. */
export const LOCAL_CLUSTER_BRIDGE = "havenbr0";

const TAP_PREFIX = "hv";
const TAP_HASH_HEX_DIGITS = MAX_TAP_NAME_LENGTH - TAP_PREFIX.length - 1;
/** Linux refuses '/', ':', whitespace and more; Haven keeps to characters QEMU's option parser and shells leave alone. */
const INTERFACE_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
/** `ip netns` names are file names under /var/run/netns. */
const NAMESPACE_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
const MAC_TEXT_PATTERN = /^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$/;

// ---------------------------------------------------------------------------------------------
// Names (pure)

function checkVmName(vmName: string, nicIndex: number): void {
  if (typeof vmName !== "string" || !VM_NAME_PATTERN.test(vmName))
    throw new HavenError(
      "HAVEN_ERR_CONFIG",
      `VM name ${JSON.stringify(vmName)} must be 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit`,
    );
  if (!Number.isSafeInteger(nicIndex) || nicIndex < 0 || nicIndex >= MAX_NICS_PER_VM)
    throw new HavenError(
      "HAVEN_ERR_CONFIG",
      `VM ${vmName}: NIC index ${nicIndex} is not an integer from 0 to ${MAX_NICS_PER_VM - 1}`,
    );
}

function sha256(text: string): Buffer {
  return createHash("sha256").update(text, "utf8").digest();
}

function hex(byte: number): string {
  return byte.toString(16).padStart(2, "0");
}

/** The MAC of NIC `nicIndex` of VM `vmName`: the same on every host (see the header for collisions). */
export function macAddress(vmName: string, nicIndex: number): string {
  checkVmName(vmName, nicIndex);
  const hash = sha256(`haven-mac\0${vmName}\0${nicIndex}`);
  // YY:ZZ in 0x0001..0xfffe: never the subnet's network (.0.0) or broadcast (.255.255) address.
  const low = 1 + (hash.readUInt16BE(1) % 0xfffe);
  return `${MAC_PREFIX}:${hex(hash[0] as number)}:${hex(low >> 8)}:${hex(low & 0xff)}`;
}

/**
 * The tap of NIC `nicIndex` of VM `vmName`: `hv` + 12 hex digits + the index, 15 characters. With
 * `host`, the name is that host's own: during a live migration the VM has a QEMU on two hosts at once,
 * and hosts that share one network namespace (a local cluster) must not ask for the same tap.
 */
export function tapName(vmName: string, nicIndex: number, host?: string): string {
  checkVmName(vmName, nicIndex);
  const seed = host === undefined ? `haven-tap\0${vmName}` : `haven-tap\0${vmName}\0${host}`;
  const digest = sha256(seed).toString("hex").slice(0, TAP_HASH_HEX_DIGITS);
  return `${TAP_PREFIX}${digest}${nicIndex}`;
}

/**
 * The test guests' IPv4 address for `mac`: 52:54:00:XX:YY:ZZ is 10.99.YY.ZZ (on 10.99.0.0/16).
 * Refuses a MAC whose YY:ZZ is 00:00 or ff:ff, which no derived MAC has.
 */
export function ipv4FromMac(mac: string): string {
  const bytes = parseMac(mac, "HAVEN_ERR_CONFIG", "MAC").split(":");
  const high = parseInt(bytes[4] as string, 16);
  const low = parseInt(bytes[5] as string, 16);
  if ((high === 0 && low === 0) || (high === 0xff && low === 0xff))
    throw new HavenError(
      "HAVEN_ERR_CONFIG",
      `MAC ${mac} would give the guest ${GUEST_SUBNET_PREFIX}.${high}.${low}, the subnet's network or broadcast address; choose other last two bytes`,
    );
  return `${GUEST_SUBNET_PREFIX}.${high}.${low}`;
}

/** A MAC in lower case, checked: six hex pairs, unicast, not all zero. */
function parseMac(text: string, code: ErrorCode, what: string): string {
  if (typeof text !== "string" || !MAC_TEXT_PATTERN.test(text))
    throw new HavenError(
      code,
      `${what} ${JSON.stringify(text)} is not a MAC address: write six hex pairs like 52:54:00:12:34:56`,
    );
  const mac = text.toLowerCase();
  if ((parseInt(mac.slice(0, 2), 16) & 1) !== 0)
    throw new HavenError(
      code,
      `${what} ${mac} is a multicast address: a NIC needs a unicast one (even first byte, e.g. 52:54:00:...)`,
    );
  if (mac === "00:00:00:00:00:00") throw new HavenError(code, `${what} ${mac} is the all-zero address: choose another`);
  return mac;
}

/** Checks a Linux interface name (a bridge or a tap): 1 to 15 characters Haven can pass anywhere. */
function checkInterfaceName(name: unknown, code: ErrorCode, what: string): string {
  if (
    typeof name !== "string" ||
    name.length > MAX_TAP_NAME_LENGTH ||
    !INTERFACE_NAME_PATTERN.test(name) ||
    name === "." ||
    name === ".."
  )
    throw new HavenError(
      code,
      `${what} ${JSON.stringify(name)} is not an interface name: use 1 to ${MAX_TAP_NAME_LENGTH} letters, digits, '.', '_' or '-', starting with a letter or digit`,
    );
  return name;
}

/** Checks a network namespace name (a file name under /var/run/netns). */
export function checkNamespaceName(
  name: unknown,
  code: ErrorCode = "HAVEN_ERR_CONFIG",
  what = "network namespace",
): string {
  if (typeof name !== "string" || !NAMESPACE_NAME_PATTERN.test(name))
    throw new HavenError(
      code,
      `${what} ${JSON.stringify(name)} is not a namespace name: use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit`,
    );
  return name;
}

// ---------------------------------------------------------------------------------------------
// NIC specs from the CLI and the host config (pure)

/** One `--nic` as the operator wrote it; what is absent comes from the host config or is derived. */
export interface NicSpec {
  readonly bridge?: string;
  readonly mac?: string;
}

const NIC_SPEC_KEYS = ["bridge", "mac"] as const;
const NIC_SPEC_USAGE =
  "write --nic default, --nic bridge=NAME, --nic mac=52:54:00:XX:YY:ZZ or --nic bridge=NAME,mac=...";

/**
 * Parses `--nic SPEC`: `default` (the host's bridge, a derived MAC) or comma-separated `key=value`
 * with the keys bridge and mac, each at most once. Throws HAVEN_ERR_USAGE naming the fix.
 */
export function parseNicSpec(text: string): NicSpec {
  if (typeof text !== "string" || text.trim() === "")
    throw new HavenError("HAVEN_ERR_USAGE", `--nic needs a value: ${NIC_SPEC_USAGE}`);
  if (text.trim() === "default") return {};
  const spec: { bridge?: string; mac?: string } = {};
  for (const part of text.split(",")) {
    const equals = part.indexOf("=");
    const key = (equals < 0 ? part : part.slice(0, equals)).trim();
    const value = equals < 0 ? undefined : part.slice(equals + 1).trim();
    if (!(NIC_SPEC_KEYS as readonly string[]).includes(key)) {
      const near = NIC_SPEC_KEYS.find((known) => known.startsWith(key.slice(0, 2).toLowerCase()) && key !== "");
      throw new HavenError(
        "HAVEN_ERR_USAGE",
        `--nic ${JSON.stringify(text)}: unknown key ${JSON.stringify(key)}` +
          (near === undefined ? "" : ` (did you mean ${near}?)`) +
          `; ${NIC_SPEC_USAGE}`,
      );
    }
    if (value === undefined || value === "")
      throw new HavenError(
        "HAVEN_ERR_USAGE",
        `--nic ${JSON.stringify(text)}: ${key} needs a value (${key}=...); ${NIC_SPEC_USAGE}`,
      );
    if (spec[key as keyof NicSpec] !== undefined)
      throw new HavenError("HAVEN_ERR_USAGE", `--nic ${JSON.stringify(text)}: ${key} is given twice; give it once`);
    if (key === "bridge") spec.bridge = checkInterfaceName(value, "HAVEN_ERR_USAGE", "--nic bridge");
    else spec.mac = parseMac(value, "HAVEN_ERR_USAGE", "--nic mac");
  }
  return spec;
}

/** The VM section of a host config: the bridge its VMs' taps join, and the namespace it lives in. */
export interface HostNetworkConfig {
  /** The bridge NICs join unless their spec names another. */
  readonly bridge: string;
  /** The network namespace the bridge is in and QEMU runs in (the local cluster); absent: the host's own. */
  readonly namespace?: string;
}

/**
 * Checks the host config's network section (untrusted JSON) and returns it typed; `where` is the
 * JSON path used in messages ("agent.json: vms.bridge ..."). Throws HAVEN_ERR_CONFIG.
 */
export function checkHostNetworkConfig(value: unknown, where = "vms"): HostNetworkConfig {
  if (typeof value !== "object" || value === null || Array.isArray(value))
    throw new HavenError("HAVEN_ERR_CONFIG", `${where} must be an object like { "bridge": "br0" }`);
  const record = value as Record<string, unknown>;
  for (const key of Object.keys(record)) {
    if (key !== "bridge" && key !== "namespace")
      throw new HavenError(
        "HAVEN_ERR_CONFIG",
        `${where}.${key} is not a known key (known: bridge, namespace); remove it or fix its spelling`,
      );
  }
  if (record.bridge === undefined)
    throw new HavenError("HAVEN_ERR_CONFIG", `${where}.bridge is missing: name the host bridge VMs' taps join`);
  const bridge = checkInterfaceName(record.bridge, "HAVEN_ERR_CONFIG", `${where}.bridge`);
  if (record.namespace === undefined) return { bridge };
  return { bridge, namespace: checkNamespaceName(record.namespace, "HAVEN_ERR_CONFIG", `${where}.namespace`) };
}

/** The network of a local cluster: one namespace `haven-<cluster-id>` with one bridge, shared by its hosts. */
export function localClusterNetwork(clusterId: string): HostNetworkConfig {
  return {
    bridge: LOCAL_CLUSTER_BRIDGE,
    namespace: checkNamespaceName(`haven-${clusterId}`, "HAVEN_ERR_CONFIG", "local cluster namespace"),
  };
}

/** A NIC as QEMU and the agent use it: its tap and fixed MAC (a VmNic), and the bridge its tap joins. */
export interface PlannedNic extends VmNic {
  readonly bridge: string;
}

/**
 * The NICs of VM `vmName` from its specs (in order: the index names the tap and derives the MAC) and
 * the host's network config. Throws HAVEN_ERR_CONFIG for too many NICs or a MAC given twice.
 */
export function planNics(vmName: string, specs: readonly NicSpec[], host: HostNetworkConfig): PlannedNic[] {
  if (specs.length > MAX_NICS_PER_VM)
    throw new HavenError("HAVEN_ERR_CONFIG", `VM ${vmName}: ${specs.length} NICs; a VM has at most ${MAX_NICS_PER_VM}`);
  const nics = specs.map((spec, index) => ({
    tapName: tapName(vmName, index),
    mac: spec.mac ?? macAddress(vmName, index),
    bridge: spec.bridge ?? host.bridge,
  }));
  const macs = new Set<string>();
  for (const nic of nics) {
    if (macs.has(nic.mac))
      throw new HavenError(
        "HAVEN_ERR_CONFIG",
        `VM ${vmName}: MAC ${nic.mac} is used by two of its NICs; give each its own`,
      );
    macs.add(nic.mac);
  }
  return nics;
}

// ---------------------------------------------------------------------------------------------
// Links (effects, through `ip`)

export interface NamespaceNetworkOptions {
  readonly namespace: string;
  readonly bridge: string;
  /** The bridge's address inside the namespace; default BRIDGE_ADDRESS. */
  readonly address?: string;
  /** Bound on each `ip` command. */
  readonly timeoutMs?: number;
}

/**
 * Creates, idempotently, network namespace `namespace` with its loopback up and bridge `bridge` in
 * it, up, with `address`. An existing namespace and bridge are kept; an existing non-bridge link of
 * that name is refused (HAVEN_ERR_CONFIG).
 */
export async function ensureNamespaceNetwork(options: NamespaceNetworkOptions): Promise<void> {
  const namespace = checkNamespaceName(options.namespace);
  const bridge = checkInterfaceName(options.bridge, "HAVEN_ERR_CONFIG", "bridge");
  const timeoutMs = options.timeoutMs;
  const added = await tryIp(["netns", "add", namespace], { timeoutMs });
  if (!added.ok && !/File exists/i.test(added.stderr)) throw ipFailed(["netns", "add", namespace], {}, added.stderr);
  const inside = { namespace, timeoutMs };
  const linkAdd = ["link", "add", "name", bridge, "type", "bridge"];
  const created = await tryIp(linkAdd, inside);
  if (!created.ok && !/File exists/i.test(created.stderr)) throw ipFailed(linkAdd, inside, created.stderr);
  await checkBridge({ bridge, namespace, timeoutMs });
  await runIp(["link", "set", "dev", "lo", "up"], inside);
  await runIp(["link", "set", "dev", bridge, "up"], inside);
  // replace: adding an address the bridge already has is not an error.
  await runIp(["address", "replace", options.address ?? BRIDGE_ADDRESS, "dev", bridge], inside);
}

/** Deletes network namespace `namespace` and the links in it; a namespace that is not there is fine. */
export async function removeNamespaceNetwork(namespace: string, options: { timeoutMs?: number } = {}): Promise<void> {
  checkNamespaceName(namespace);
  const args = ["netns", "delete", namespace];
  const result = await tryIp(args, options);
  if (!result.ok && !/No such file|does not exist/i.test(result.stderr)) throw ipFailed(args, {}, result.stderr);
}

/** Whether network namespace `namespace` exists. */
export async function namespaceExists(namespace: string, options: { timeoutMs?: number } = {}): Promise<boolean> {
  checkNamespaceName(namespace);
  const listing = await runIp(["netns", "list"], options);
  // One namespace a line: "NAME" or "NAME (id: N)".
  return listing.split("\n").some((line) => line.split(" ")[0] === namespace);
}

interface LinkOptions {
  readonly bridge: string;
  readonly namespace?: string;
  readonly timeoutMs?: number;
}

/** Checks that `bridge` exists (in `namespace` when given) and is a bridge; HAVEN_ERR_CONFIG naming the fix if not. */
export async function checkBridge(options: LinkOptions): Promise<void> {
  const where = options.namespace === undefined ? "on this host" : `in network namespace ${options.namespace}`;
  const args = ["-details", "-json", "link", "show", "dev", options.bridge];
  const result = await tryIp(args, options);
  if (!result.ok) {
    if (/does not exist|Cannot find device/i.test(result.stderr))
      throw new HavenError(
        "HAVEN_ERR_CONFIG",
        `bridge ${options.bridge} does not exist ${where}: create it (ip link add ${options.bridge} type bridge) or name another in the host config`,
      );
    throw ipFailed(args, options, result.stderr);
  }
  const links = JSON.parse(result.stdout) as Array<{ linkinfo?: { info_kind?: string } }>;
  const kind = links[0]?.linkinfo?.info_kind;
  if (kind !== "bridge")
    throw new HavenError(
      "HAVEN_ERR_CONFIG",
      `${options.bridge} ${where} is a ${kind ?? "plain"} link, not a bridge: name a bridge in the host config`,
    );
}

export interface PlugTapOptions {
  readonly tap: string;
  readonly bridge: string;
  /** The namespace the tap and the bridge are in (where QEMU runs); absent: the host's own. */
  readonly namespace?: string;
  readonly timeoutMs?: number;
}

/** Attaches the tap QEMU created to its bridge and brings it up (`ip link set TAP master BRIDGE up`). */
export async function plugTap(options: PlugTapOptions): Promise<void> {
  const tap = checkInterfaceName(options.tap, "HAVEN_ERR_CONFIG", "tap");
  const bridge = checkInterfaceName(options.bridge, "HAVEN_ERR_CONFIG", "bridge");
  if (options.namespace !== undefined) checkNamespaceName(options.namespace);
  const args = ["link", "set", "dev", tap, "master", bridge, "up"];
  const result = await tryIp(args, options);
  if (result.ok) return;
  const where = options.namespace === undefined ? "on this host" : `in network namespace ${options.namespace}`;
  if (/Cannot find device|does not exist/i.test(result.stderr)) {
    await checkBridge({ bridge, namespace: options.namespace, timeoutMs: options.timeoutMs });
    throw new HavenError(
      "HAVEN_ERR_IO",
      `tap ${tap} does not exist ${where}: QEMU creates it (-netdev tap,ifname=${tap}) and must run in the bridge's namespace`,
    );
  }
  throw ipFailed(args, options, result.stderr);
}

/** Plugs every NIC's tap into its bridge (the step between QEMU's start and `cont`). */
export async function plugNics(
  nics: readonly PlannedNic[],
  options: { namespace?: string; timeoutMs?: number } = {},
): Promise<void> {
  for (const nic of nics) await plugTap({ tap: nic.tapName, bridge: nic.bridge, ...options });
}

/** One port of a bridge, as `ip link show master BRIDGE` reports it. */
export interface BridgePort {
  readonly name: string;
  /** The port's own MAC (a tap's is the host side's, not the guest's). */
  readonly mac: string;
  /** Administratively up (the UP flag). */
  readonly up: boolean;
}

/** The ports of `bridge` (in `namespace` when given). */
export async function bridgePorts(options: LinkOptions): Promise<BridgePort[]> {
  checkInterfaceName(options.bridge, "HAVEN_ERR_CONFIG", "bridge");
  const stdout = await runIp(["-json", "link", "show", "master", options.bridge], options);
  // iproute2 prints nothing at all (not "[]") for a bridge without ports.
  if (stdout.trim() === "") return [];
  const links = JSON.parse(stdout) as Array<{ ifname?: string; address?: string; flags?: string[] }>;
  return links.map((link) => ({
    name: String(link.ifname),
    mac: String(link.address),
    up: (link.flags ?? []).includes("UP"),
  }));
}

/**
 * Whether `address:port` accepts a TCP connection within `timeoutMs`, tried from inside `namespace`
 * when given (where the guests' bridge is): a VM's service check for guests without Haven's heartbeat.
 */
export function tcpAnswers(options: {
  readonly address: string;
  readonly port: number;
  readonly namespace?: string;
  readonly timeoutMs: number;
}): Promise<boolean> {
  const { address, port, namespace, timeoutMs } = options;
  if (namespace === undefined)
    return new Promise((resolve) => {
      const socket = createConnection({ host: address, port, timeout: timeoutMs });
      const done = (ok: boolean): void => {
        socket.destroy();
        resolve(ok);
      };
      socket.once("connect", () => done(true));
      socket.once("timeout", () => done(false));
      socket.once("error", () => done(false));
    });
  checkNamespaceName(namespace);
  // A short node client run inside the namespace (a process cannot open a socket in another namespace).
  const client =
    `const s = require("net").createConnection({ host: ${JSON.stringify(address)}, port: ${port}, timeout: ${timeoutMs} });` +
    `s.on("connect", () => process.exit(0)); s.on("timeout", () => process.exit(1)); s.on("error", () => process.exit(1));`;
  return new Promise((resolve) =>
    execFile(
      "ip",
      ["netns", "exec", namespace, process.execPath, "-e", client],
      { timeout: timeoutMs + 5_000 },
      (error) => resolve(error === null),
    ),
  );
}
