// How the CLI finds the cluster it talks to (its etcd endpoints and the operator identity it shows etcd
// over TLS). For the endpoints, the first of these wins:
//
//   1. --etcd URL[,URL...]
//   2. the environment variable HAVEN_ETCD (same syntax)
//   3. a context file: --context FILE, else $HAVEN_CONTEXT, else $XDG_CONFIG_HOME/haven/context.json
//      (~/.config/haven/context.json without XDG_CONFIG_HOME)
//
// For the identity (a directory as `haven cert issue operator` makes it), the first of: --tls-dir DIR,
// $HAVEN_TLS_DIR, the context file's "tls" when the endpoints came from that file. https:// endpoints
// need one; http:// endpoints ignore it.
//
// A context file is what `haven cluster up` leaves behind so that later commands need no flags:
//
//   { "etcd": ["https://127.0.0.1:2379"], "clusterDir": "/path/to/the/cluster",
//     "tls": "/path/to/the/cluster/pki/operators/admin" }
//
// The file is untrusted input: it is checked and refused with HAVEN_ERR_CONFIG naming the file. A
// context file named explicitly (--context, $HAVEN_CONTEXT) must exist; the default one may not.

import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, isAbsolute, join } from "node:path";
import { HavenError, type ErrorCode } from "../core/errors.js";
import { EtcdClient } from "../cluster/etcd-client.js";
import { readIdentityToken } from "../security/identity-token.js";
import { actAs } from "./actor.js";
import { parseEndpoint } from "../cluster/etcd-transport.js";
import { loadTlsIdentitySync } from "../security/tls-identity.js";
import type { OptionSpec } from "./args.js";

export interface ClusterContext {
  /** etcd endpoints, http://HOST:PORT. */
  readonly etcd: readonly string[];
  /** Where `haven cluster up` keeps the cluster's files, when it made this context. */
  readonly clusterDir?: string;
  /** The operator identity directory to show etcd over TLS. */
  readonly tls?: string;
}

export interface ResolvedCluster {
  readonly endpoints: string[];
  /** Where the endpoints came from, for messages: "--etcd", "HAVEN_ETCD" or "context file PATH". */
  readonly source: string;
  /** The operator identity directory, when one was given (see the top of this file). */
  readonly tlsDir?: string;
  /** The cluster's directory, when the context file names one (its pki/ is checked for expiry). */
  readonly clusterDir?: string;
}

/** The options every cluster command accepts, for parseCommandArgs. */
export const CLUSTER_OPTIONS = {
  etcd: { type: "string" },
  context: { type: "string" },
  "tls-dir": { type: "string" },
} as const satisfies OptionSpec;

/** The help text of CLUSTER_OPTIONS, for each command's USAGE. */
export const CLUSTER_OPTIONS_USAGE = `cluster options (the first given wins):
  --etcd URL[,URL...]  etcd endpoints (https://HOST:PORT or http://); or set HAVEN_ETCD
  --context FILE       a context file (default: $HAVEN_CONTEXT, else ~/.config/haven/context.json)
  --tls-dir DIR        the operator identity to show etcd over TLS; or set HAVEN_TLS_DIR
                       (default: the context file's "tls")`;

const CONTEXT_KEYS = new Set(["etcd", "clusterDir", "tls"]);

/** $XDG_CONFIG_HOME/haven/context.json, or ~/.config/haven/context.json. */
export function defaultContextPath(env: NodeJS.ProcessEnv = process.env): string {
  // The XDG spec says a relative XDG_CONFIG_HOME is invalid and must be ignored.
  const xdg = env.XDG_CONFIG_HOME;
  const configHome = xdg !== undefined && isAbsolute(xdg) ? xdg : join(env.HOME || homedir(), ".config");
  return join(configHome, "haven", "context.json");
}

/** The endpoints in a comma-separated list, normalised; `code` is the error for a bad one. */
function parseEndpointList(text: string, source: string, code: ErrorCode): string[] {
  const items = text.split(",").map((item) => item.trim());
  if (items.some((item) => item === "")) {
    throw new HavenError(code, `${source} "${text}" has an empty endpoint; use URL[,URL...]`);
  }
  return items.map((item) => checkedEndpoint(item, source, code));
}

function checkedEndpoint(text: string, source: string, code: ErrorCode): string {
  try {
    return parseEndpoint(text).name;
  } catch (error) {
    if (!(error instanceof HavenError)) throw error;
    throw new HavenError(code, `${source}: ${error.message}`);
  }
}

/** Checks a context file's JSON; every error names the file. */
export function parseContext(text: string, file: string): ClusterContext {
  const bad = (detail: string): HavenError => new HavenError("HAVEN_ERR_CONFIG", `context file ${file}: ${detail}`);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw bad(`not valid JSON (${(error as Error).message})`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw bad(`must be a JSON object such as {"etcd": ["http://127.0.0.1:2379"]}`);
  }
  const o = value as Record<string, unknown>;
  const unknown = Object.keys(o).filter((key) => !CONTEXT_KEYS.has(key));
  if (unknown.length > 0) throw bad(`unknown key "${unknown[0]}" (known: ${[...CONTEXT_KEYS].join(", ")})`);
  if (!Array.isArray(o.etcd) || o.etcd.length === 0 || o.etcd.some((item) => typeof item !== "string")) {
    throw bad(`"etcd" must be a non-empty list of endpoints such as ["http://127.0.0.1:2379"]`);
  }
  const etcd = (o.etcd as string[]).map((item, i) =>
    checkedEndpoint(item, `context file ${file}: etcd[${i}]`, "HAVEN_ERR_CONFIG"),
  );
  if (o.clusterDir !== undefined && (typeof o.clusterDir !== "string" || !isAbsolute(o.clusterDir))) {
    throw bad(`"clusterDir" must be an absolute path`);
  }
  if (o.tls !== undefined && (typeof o.tls !== "string" || !isAbsolute(o.tls))) {
    throw bad(`"tls" must be the absolute path of an operator identity directory`);
  }
  return {
    etcd,
    ...(o.clusterDir !== undefined && { clusterDir: o.clusterDir as string }),
    ...(o.tls !== undefined && { tls: o.tls as string }),
  };
}

/** Reads a context file; undefined when it does not exist and `optional`. */
export function readContext(file: string, optional = false): ClusterContext | undefined {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (optional && code === "ENOENT") return undefined;
    throw new HavenError("HAVEN_ERR_CONFIG", `cannot read context file ${file}: ${(error as Error).message}`);
  }
  return parseContext(text, file);
}

/** Writes a context file (creating its directory), atomically: a reader never sees half of it. */
export function writeContext(file: string, context: ClusterContext): void {
  const text = `${JSON.stringify(context, null, 2)}\n`;
  parseContext(text, file); // refuse to write what could not be read back
  mkdirSync(dirname(file), { recursive: true });
  const temporary = `${file}.${process.pid}.tmp`;
  writeFileSync(temporary, text, { mode: 0o644 });
  renameSync(temporary, file);
}

/** Which etcd endpoints the command uses, by the order at the top of this file. */
export function resolveCluster(
  values: {
    readonly etcd?: string | boolean | undefined;
    readonly context?: string | boolean | undefined;
    readonly "tls-dir"?: string | boolean | undefined;
  },
  env: NodeJS.ProcessEnv = process.env,
): ResolvedCluster {
  const given =
    typeof values["tls-dir"] === "string"
      ? values["tls-dir"]
      : env.HAVEN_TLS_DIR !== undefined && env.HAVEN_TLS_DIR !== ""
        ? env.HAVEN_TLS_DIR
        : undefined;
  const tlsDir = given !== undefined ? { tlsDir: given } : {};
  if (typeof values.etcd === "string") {
    return { endpoints: parseEndpointList(values.etcd, "--etcd", "HAVEN_ERR_USAGE"), source: "--etcd", ...tlsDir };
  }
  if (env.HAVEN_ETCD !== undefined && env.HAVEN_ETCD !== "") {
    const endpoints = parseEndpointList(env.HAVEN_ETCD, "HAVEN_ETCD", "HAVEN_ERR_CONFIG");
    return { endpoints, source: "HAVEN_ETCD", ...tlsDir };
  }
  const named =
    typeof values.context === "string"
      ? values.context
      : env.HAVEN_CONTEXT !== undefined && env.HAVEN_CONTEXT !== ""
        ? env.HAVEN_CONTEXT
        : undefined;
  const file = named ?? defaultContextPath(env);
  const context = readContext(file, named === undefined);
  if (context === undefined) {
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `no cluster configured: pass --etcd URL[,URL...], set HAVEN_ETCD, or write a context file ` +
        `(--context FILE, $HAVEN_CONTEXT, or ${file}; 'haven cluster up' writes one)`,
    );
  }
  const fromContext = context.tls !== undefined ? { tlsDir: context.tls } : {};
  return {
    endpoints: [...context.etcd],
    source: `context file ${file}`,
    ...(given !== undefined ? tlsDir : fromContext),
    ...(context.clusterDir !== undefined && { clusterDir: context.clusterDir }),
  };
}

/** A client of the cluster's etcd, found by resolveCluster, showing the operator identity it names. */
export function connectCluster(
  values: Parameters<typeof resolveCluster>[0],
  env: NodeJS.ProcessEnv = process.env,
): EtcdClient {
  const cluster = resolveCluster(values, env);
  const secure = cluster.endpoints.some((endpoint) => endpoint.startsWith("https://"));
  if (secure && cluster.tlsDir === undefined) {
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `etcd at ${cluster.endpoints.join(",")} (from ${cluster.source}) speaks TLS: pass --tls-dir DIR (an operator ` +
        `identity, 'haven cert issue operator NAME' makes one), set HAVEN_TLS_DIR, or use a context file with "tls"`,
    );
  }
  const tls = secure && cluster.tlsDir !== undefined ? loadTlsIdentitySync(cluster.tlsDir) : undefined;
  // The operator named by the identity, with their token when it is kept beside the certificate: etcd
  // then checks the operator's role, and events name them.
  const token = cluster.tlsDir !== undefined ? readIdentityToken(cluster.tlsDir) : undefined;
  const operator = tls?.info.kind === "operator" ? tls.info.name : undefined;
  actAs(operator);
  return new EtcdClient(cluster.endpoints, {
    tls,
    ...(token !== undefined && operator !== undefined && { credentials: { user: operator, password: token } }),
  });
}
