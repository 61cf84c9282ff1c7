// The CLI's side of the engine's HTTP API (src/api/engine-api.ts): one call per route, each bounded
// in time, each carrying the API's bearer token, and every failure turned into a coded HavenError. An error the engine answers with keeps its
// code and message; an engine that cannot be reached, or an address that is not an engine API, is a
// configuration error that names the address.

import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { ERRORS, HavenError, type ErrorCode } from "../core/errors.js";
import type { VerifyStatus, VolumeStatus } from "../engine/status.js";
import { parseHostPort } from "../util/units.js";
import { API_TOKEN_ENV, clientApiToken } from "./api-token.js";
import { resolveCluster } from "./context.js";
import { loadTlsIdentity, type TlsIdentity } from "../security/tls-identity.js";

/** How long one call may take, connecting included. */
export const ENGINE_API_TIMEOUT_MS = 10_000;
/** A status of a volume with a few copies is a few KiB; anything near this is not the engine API. */
const MAX_RESPONSE_BYTES = 8 * 1024 * 1024;

export class EngineApiClient {
  /** The address as the operator typed it (HOST:PORT), for messages. */
  readonly address: string;
  private readonly host: string;
  private readonly port: number;

  /** `address` is HOST:PORT from `--api`; a malformed one is a usage error naming `what`. */
  constructor(
    address: string,
    private readonly options: {
      readonly token: string;
      /** Where the token came from ("--token-file FILE", ...), for a refusal's message. */
      readonly tokenSource?: string;
      /** Over HTTPS (a host agent's API): the operator identity shown, and the cluster CA trusted. */
      readonly tls?: TlsIdentity;
      readonly timeoutMs?: number;
      readonly what?: string;
    },
  ) {
    const { host, port } = parseHostPort(address, options.what ?? "--api");
    this.address = address;
    this.host = host;
    this.port = port;
  }

  /**
   * The volume's status: from an engine's own API, or, given `volume`, from a host agent's API (which
   * serves the status of every engine running on its host at /v1/volumes/NAME).
   */
  async status(volume?: string): Promise<VolumeStatus> {
    const path = volume === undefined ? "/v1/status" : `/v1/volumes/${encodeURIComponent(volume)}`;
    return checkVolumeStatus(await this.call("GET", path), this.address);
  }

  async startVerify(options: { repair: boolean }): Promise<VerifyStatus> {
    return checkVerifyStatus(await this.call("POST", "/v1/verify", { repair: options.repair }), this.address);
  }

  async resolveSplitBrain(survivor: string): Promise<VolumeStatus> {
    return checkVolumeStatus(await this.call("POST", "/v1/resolve-split-brain", { survivor }), this.address);
  }

  /** One request; resolves with the parsed JSON of a 2xx answer, rejects with a HavenError otherwise. */
  private async call(method: "GET" | "POST", path: string, body?: unknown): Promise<unknown> {
    const timeoutMs = this.options.timeoutMs ?? ENGINE_API_TIMEOUT_MS;
    const { status, text } = await this.exchange(method, path, body, timeoutMs);
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw this.notTheApi(`HTTP ${status} with a body that is not JSON`);
    }
    if (status >= 200 && status < 300) return parsed;
    const error = (parsed as { error?: { code?: unknown; message?: unknown } } | null)?.error;
    if (typeof error?.code === "string" && Object.hasOwn(ERRORS, error.code) && typeof error.message === "string") {
      if (status === 401 || status === 403) throw this.refused(error.code as ErrorCode, error.message);
      throw new HavenError(error.code as ErrorCode, error.message);
    }
    throw this.notTheApi(`HTTP ${status} without a Haven error`);
  }

  /**
   * The HTTP exchange itself, with node:http rather than fetch(): fetch refuses the ports browsers
   * block (6000, 10080, ...), which an operator may well have given the engine API.
   */
  private exchange(
    method: string,
    path: string,
    body: unknown,
    timeoutMs: number,
  ): Promise<{ status: number; text: string }> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    return new Promise((resolve, reject) => {
      // A TLS server (a host agent's API) hangs up on a request in clear: say what to try.
      const hint = (reason: string): string =>
        this.options.tls === undefined && reason === "socket hang up"
          ? " (a host agent's API speaks TLS: give --api https://HOST:PORT)"
          : "";
      const unreachable = (reason: string, cause?: unknown): void =>
        reject(
          new HavenError(
            "HAVEN_ERR_CONFIG",
            `cannot reach the engine API at ${this.address}: ${reason}${hint(reason)}`,
            {
              cause,
            },
          ),
        );
      const tls = this.options.tls;
      const request = (tls === undefined ? httpRequest : httpsRequest)(
        {
          host: this.host,
          port: this.port,
          path,
          method,
          agent: false,
          ...(tls !== undefined && { ca: tls.ca, cert: tls.cert, key: tls.key }),
          headers: {
            accept: "application/json",
            authorization: `Bearer ${this.options.token}`,
            ...(payload !== undefined && {
              "content-type": "application/json",
              "content-length": Buffer.byteLength(payload),
            }),
          },
        },
        (response) => {
          const chunks: Buffer[] = [];
          let received = 0;
          response.on("data", (chunk: Buffer) => {
            received += chunk.length;
            if (received > MAX_RESPONSE_BYTES) {
              request.destroy();
              reject(this.notTheApi(`more than ${MAX_RESPONSE_BYTES} bytes to ${method} ${path}`));
            } else chunks.push(chunk);
          });
          response.on("end", () =>
            resolve({ status: response.statusCode ?? 0, text: Buffer.concat(chunks).toString("utf8") }),
          );
          response.on("error", (error) => unreachable(error.message, error));
          // After "end" this is a no-op; before it, the answer was cut short.
          response.on("close", () => unreachable("the connection closed before the whole answer arrived"));
        },
      );
      // Bounds the whole exchange, connecting included, not just a silence on the socket.
      const timer = setTimeout(() => request.destroy(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
      request.on("error", (error) => unreachable(error.message, error));
      request.on("close", () => clearTimeout(timer));
      request.end(payload);
    });
  }

  /** A 401 or 403: which token was refused, and how to give another. */
  private refused(code: ErrorCode, message: string): HavenError {
    const source = this.options.tokenSource ?? "the token given";
    return new HavenError(
      code,
      `the API at ${this.address} refused ${source}: ${message}. Give the API's token with --token-file FILE ` +
        `or ${API_TOKEN_ENV} (a local cluster keeps it in its directory, in the file "token")`,
    );
  }

  private notTheApi(what: string): HavenError {
    return new HavenError(
      "HAVEN_ERR_CONFIG",
      `the engine API at ${this.address} answered ${what}; is that the engine's --api address?`,
    );
  }
}

// The answers are checked only as far as the CLI relies on them: enough that a wrong address or a
// different version fails with a message instead of a TypeError deep in the renderer.

function checkVolumeStatus(value: unknown, address: string): VolumeStatus {
  const status = value as Partial<VolumeStatus> | null;
  const ok =
    typeof status === "object" &&
    status !== null &&
    typeof status.name === "string" &&
    typeof status.state === "string" &&
    Array.isArray(status.replicas) &&
    Array.isArray(status.nbd) &&
    typeof status.io === "object" &&
    status.io !== null &&
    (status.verify === null || isVerifyStatus(status.verify));
  if (!ok) throw malformed(address, "volume status");
  return status as VolumeStatus;
}

function checkVerifyStatus(value: unknown, address: string): VerifyStatus {
  if (!isVerifyStatus(value)) throw malformed(address, "verify status");
  return value;
}

function isVerifyStatus(value: unknown): value is VerifyStatus {
  const verify = value as Partial<VerifyStatus> | null;
  return (
    typeof verify === "object" &&
    verify !== null &&
    typeof verify.state === "string" &&
    typeof verify.doneBytes === "number" &&
    typeof verify.totalBytes === "number" &&
    Array.isArray(verify.mismatches)
  );
}

function malformed(address: string, what: string): HavenError {
  return new HavenError(
    "HAVEN_ERR_CONFIG",
    `the engine API at ${address} answered with a malformed ${what}; is the engine the same Haven version as this CLI?`,
  );
}

/** The options every engine API command takes, for parseCommand. */
export const ENGINE_API_OPTIONS = {
  api: { type: "string" },
  "token-file": { type: "string" },
  context: { type: "string" },
  "tls-dir": { type: "string" },
} as const;

/** How ENGINE_API_OPTIONS read in a command's usage. */
export const ENGINE_API_OPTIONS_USAGE = `  --api HOST:PORT      the engine's API address (http://HOST:PORT is taken too; https://HOST:PORT
                       for a host agent's API over TLS, showing the --tls-dir or context's identity)
  --token-file FILE    the API's token (default: $${API_TOKEN_ENV}, else the token in the directory of the
                       context file's cluster)
  --context FILE       the context file whose cluster's token (and identity) to use
  --tls-dir DIR        the operator identity for https:// (default: $HAVEN_TLS_DIR, the context's "tls")`;

/** What the context names, if there is one: a local cluster keeps its API token in its directory. */
function contextOf(values: {
  readonly context?: string | boolean | undefined;
  readonly "tls-dir"?: string | boolean | undefined;
}): { clusterDir?: string; tlsDir?: string } {
  try {
    return resolveCluster(values, { ...process.env, HAVEN_ETCD: "" });
  } catch {
    // No context file: the token comes from --token-file or the environment, the identity from --tls-dir.
    const tlsDir = typeof values["tls-dir"] === "string" ? values["tls-dir"] : process.env.HAVEN_TLS_DIR;
    return tlsDir !== undefined && tlsDir !== "" ? { tlsDir } : {};
  }
}

/**
 * The client for a command's `--api HOST:PORT`, which every `haven volume` command requires, with the
 * token of --token-file, $HAVEN_API_TOKEN or the context's cluster directory.
 */
export async function engineApiFromOptions(
  values: {
    readonly api?: string | boolean | undefined;
    readonly "token-file"?: string | boolean | undefined;
    readonly context?: string | boolean | undefined;
  },
  usage: string,
): Promise<EngineApiClient> {
  if (typeof values.api !== "string") throw new HavenError("HAVEN_ERR_USAGE", "--api HOST:PORT is required");
  const secure = values.api.startsWith("https://");
  const address = values.api.replace(/^https?:\/\//, "").replace(/\/$/, "");
  parseHostPort(address, "--api");
  const context = contextOf(values);
  if (secure && context.tlsDir === undefined)
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `--api ${values.api} speaks TLS: give --tls-dir DIR (an operator identity), set HAVEN_TLS_DIR, or use a ` +
        `context file with "tls"`,
    );
  const tls = secure ? await loadTlsIdentity(context.tlsDir!) : undefined;
  const clusterDir = typeof values["token-file"] === "string" ? undefined : context.clusterDir;
  const { token, source } = await clientApiToken(values["token-file"], usage, clusterDir);
  return new EngineApiClient(address, { token, tokenSource: source, ...(tls !== undefined && { tls }) });
}
