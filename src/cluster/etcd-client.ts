// Haven's client for etcd v3, the store of the control plane's desired state and leases. It speaks the
// JSON gateway over HTTP or HTTPS with client certificates (no gRPC dependency): key-value reads and writes, transactions for
// compare-and-swap (how a host takes a volume's primary key with a higher epoch), leases (how a host's
// liveness is known), and prefix watches (how agents learn of changes). Keys and values are UTF-8 text.
//
// Every call is bounded by requestTimeoutMs across all endpoints, fails over to the next endpoint when
// that is safe (see etcd-transport.ts), and fails with a HavenError: HAVEN_ERR_UNAVAILABLE when etcd
// cannot be reached, HAVEN_ERR_NOT_FOUND for a lease etcd does not know, HAVEN_ERR_IO with etcd's own
// message for anything else it refuses.

import { HavenError } from "../core/errors.js";
import type { TlsIdentity } from "../security/tls-identity.js";
import { putIf, type PutCondition } from "./store.js";
import type {
  ClusterStore,
  Compare,
  Lease,
  LeaseStatus,
  RangeOptions,
  RangePage,
  TxnOperation,
  TxnOperationResult,
  TxnResult,
} from "./store.js";
import {
  asArray,
  asObject,
  booleanField,
  encodeText,
  headerRevision,
  int64Field,
  leaseField,
  parseKeyValue,
  prefixRange,
  textField,
  type JsonObject,
  type KeyValue,
  type LeaseId,
  type WatchEvent,
} from "./etcd-codec.js";
import { EtcdTransport, type Repeatable } from "./etcd-transport.js";
import { watchPrefix, type Watch, type WatchOptions } from "./etcd-watch.js";
import { authenticate } from "./etcd-auth.js";

export type { KeyValue, LeaseId, WatchEvent } from "./etcd-codec.js";
export type { Watch, WatchOptions } from "./etcd-watch.js";
export type {
  Compare,
  CompareResult,
  CompareSubject,
  Lease,
  LeaseStatus,
  RangeOptions,
  RangePage,
  TxnOperation,
  TxnOperationResult,
  TxnResult,
} from "./store.js";

export interface EtcdClientOptions {
  /** Bound on one call, across every endpoint it tries (default 5000). */
  readonly requestTimeoutMs?: number;
  /** Bound on connecting to one endpoint (default 1000, at most requestTimeoutMs). */
  readonly connectTimeoutMs?: number;
  /** Bound on one answer or one watch message (default 64 MiB). */
  readonly maxResponseBytes?: number;
  /** The client's TLS identity (loadTlsIdentity), required for https:// endpoints. */
  readonly tls?: TlsIdentity | undefined;
  /** Offer the last TLS session again on each new connection (default true). */
  readonly tlsSessionResumption?: boolean;
  /** etcd's user and password (an operator's token, a host's password) when etcd has auth on. */
  readonly credentials?: { readonly user: string; readonly password: string };
}

/** Bound on authenticating (etcd checks the password with bcrypt). */
const AUTHENTICATE_TIMEOUT_MS = 5_000;

const COMPARE_TARGETS = {
  version: ["VERSION", "version"],
  createRevision: ["CREATE", "create_revision"],
  modRevision: ["MOD", "mod_revision"],
  value: ["VALUE", "value"],
  lease: ["LEASE", "lease"],
} as const;
const COMPARE_RESULTS = { equal: "EQUAL", notEqual: "NOT_EQUAL", greater: "GREATER", less: "LESS" } as const;

export class EtcdClient implements ClusterStore {
  private readonly transport: EtcdTransport;
  private readonly requestTimeoutMs: number;
  private readonly maxResponseBytes: number;

  constructor(endpoints: string[], options: EtcdClientOptions = {}) {
    const limits = {
      requestTimeoutMs: options.requestTimeoutMs ?? 5_000,
      connectTimeoutMs: Math.min(options.connectTimeoutMs ?? 1_000, options.requestTimeoutMs ?? 5_000),
      maxResponseBytes: options.maxResponseBytes ?? 64 * 1024 * 1024,
    };
    for (const [name, value] of Object.entries(limits)) {
      if (!(Number.isSafeInteger(value) && value > 0)) {
        throw new HavenError("HAVEN_ERR_CONFIG", `etcd client ${name} must be a whole number above 0, not ${value}`);
      }
    }
    this.requestTimeoutMs = limits.requestTimeoutMs;
    this.maxResponseBytes = limits.maxResponseBytes;
    this.transport = new EtcdTransport(endpoints, {
      ...limits,
      tls: options.tls,
      ...(options.tlsSessionResumption !== undefined && { tlsSessionResumption: options.tlsSessionResumption }),
    });
    this.credentials = options.credentials;
  }

  private readonly credentials: EtcdClientOptions["credentials"];
  private authenticating: Promise<void> | undefined;

  /** Gets a token for the credentials (one request at a time asks; the others wait for it). */
  private authenticate(): Promise<void> {
    const credentials = this.credentials!;
    this.authenticating ??= (async () => {
      try {
        this.transport.authorization = undefined;
        this.transport.authorization = await authenticate(
          // Checking a password is slow by design (bcrypt): this call gets longer than a round's bound.
          (path, body, what) =>
            this.transport.call(
              `/v3/${path}`,
              body,
              what,
              "read",
              Math.max(this.requestTimeoutMs, AUTHENTICATE_TIMEOUT_MS),
            ),
          credentials.user,
          credentials.password,
        );
      } finally {
        this.authenticating = undefined;
      }
    })();
    return this.authenticating;
  }

  get endpoints(): string[] {
    return this.transport.endpointNames;
  }

  /** The key's current value and revisions, or undefined when it does not exist. */
  async get(key: string): Promise<KeyValue | undefined> {
    const what = `get "${key}"`;
    const response = await this.call("/v3/kv/range", { key: encodeText(key) }, what, "read");
    const kvs = asArray(response.kvs, what, "kvs").map((kv) => parseKeyValue(kv, what));
    return kvs[0];
  }

  /** Every key starting with `prefix` (all keys for ""), in key order. */
  async getPrefix(prefix: string): Promise<KeyValue[]> {
    const what = `get prefix "${prefix}"`;
    const response = await this.call("/v3/kv/range", prefixRange(prefix), what, "read");
    return asArray(response.kvs, what, "kvs").map((kv) => parseKeyValue(kv, what));
  }

  /**
   * The first keys starting with `prefix`, in key order, and how many there are in all; one consistent
   * read. With keysOnly and a small limit, a way to find a boundary key without reading every value.
   */
  async getPrefixPage(prefix: string, options: RangeOptions = {}): Promise<RangePage> {
    const what = `get prefix "${prefix}"`;
    const body: JsonObject = { ...prefixRange(prefix) };
    if (options.limit !== undefined) {
      if (!(Number.isSafeInteger(options.limit) && options.limit > 0)) {
        throw new HavenError(
          "HAVEN_ERR_INVALID_REQUEST",
          `${what}: limit ${options.limit} is not a whole number above 0`,
        );
      }
      body.limit = String(options.limit);
    }
    if (options.keysOnly === true) body.keys_only = true;
    const response = await this.call("/v3/kv/range", body, what, "read");
    return {
      kvs: asArray(response.kvs, what, "kvs").map((kv) => parseKeyValue(kv, what)),
      count: int64Field(response, "count", what),
      revision: headerRevision(response, what),
    };
  }

  /** Sets the key, attached to `lease` if given (HAVEN_ERR_NOT_FOUND when that lease has expired). */
  async put(key: string, value: string, options: { lease?: LeaseId } = {}): Promise<{ revision: number }> {
    const what = `put "${key}"`;
    const response = await this.call("/v3/kv/put", putRequest(key, value, options.lease), what, "write");
    return { revision: headerRevision(response, what) };
  }

  /** Deletes the key; resolves with whether it existed. */
  async delete(key: string): Promise<boolean> {
    const what = `delete "${key}"`;
    const response = await this.call("/v3/kv/deleterange", { key: encodeText(key) }, what, "write");
    return int64Field(response, "deleted", what) > 0;
  }

  /** Deletes every key starting with `prefix`; resolves with how many there were. */
  async deletePrefix(prefix: string): Promise<number> {
    const what = `delete prefix "${prefix}"`;
    const response = await this.call("/v3/kv/deleterange", prefixRange(prefix), what, "write");
    return int64Field(response, "deleted", what);
  }

  /**
   * Deletes every key from `from` up to but not including `to` (in byte order); resolves with how many
   * there were. A key written meanwhile at or after `to` is never touched.
   */
  async deleteRange(from: string, to: string): Promise<number> {
    const what = `delete from "${from}" to "${to}"`;
    const response = await this.call("/v3/kv/deleterange", keyRange(from, to, what), what, "write");
    return int64Field(response, "deleted", what);
  }

  /**
   * Compare-and-swap: puts the value only if the key is as expected, atomically. expectModRevision 0 means
   * "the key must not exist"; expectValue compares the current value (a missing key never matches).
   * Resolves with whether the put happened.
   */
  async putIf(key: string, value: string, expect: PutCondition): Promise<boolean> {
    return putIf(this, key, value, expect);
  }

  /** Runs `success` if every comparison holds, otherwise `failure`, as one atomic step. */
  async txn(compare: Compare[], success: TxnOperation[], failure: TxnOperation[]): Promise<TxnResult> {
    const keys = [...compare, ...success, ...failure].map((item) => ("key" in item ? item.key : `${item.prefix}*`));
    const what = `transaction on ${[...new Set(keys)].map((key) => `"${key}"`).join(", ")}`;
    const body = {
      compare: compare.map(compareRequest),
      success: success.map(operationRequest),
      failure: failure.map(operationRequest),
    };
    // A transaction of reads only changes nothing: like a range, it may be asked of another member.
    const readOnly = [...success, ...failure].every((item) => item.type === "get" || item.type === "getPrefix");
    const response = await this.call("/v3/kv/txn", body, what, readOnly ? "read" : "write");
    const succeeded = booleanField(response, "succeeded", what);
    const ran = succeeded ? success : failure;
    const responses = asArray(response.responses, what, "responses");
    if (responses.length !== ran.length) {
      throw new HavenError("HAVEN_ERR_IO", `etcd answered ${what} with ${responses.length} results for ${ran.length}`);
    }
    return {
      succeeded,
      revision: headerRevision(response, what),
      results: ran.map((operation, index) => operationResult(operation, responses[index], what)),
    };
  }

  /** Grants a lease that expires ttlSeconds after its last keepalive. */
  async grantLease(ttlSeconds: number): Promise<Lease> {
    if (!(Number.isSafeInteger(ttlSeconds) && ttlSeconds > 0)) {
      throw new HavenError("HAVEN_ERR_INVALID_REQUEST", `lease TTL ${ttlSeconds} s is not a whole number above 0`);
    }
    const what = `grant a lease of ${ttlSeconds} s`;
    const response = await this.call("/v3/lease/grant", { TTL: String(ttlSeconds) }, what, "write");
    const id = leaseField(response, "ID", what);
    if (id === undefined) throw new HavenError("HAVEN_ERR_IO", `etcd answered ${what} without a lease id`);
    return { id, ttlSeconds: int64Field(response, "TTL", what) };
  }

  /**
   * Renews the lease once; resolves with the seconds it now has left, 0 when it has already expired or
   * was revoked (its keys are gone then).
   */
  async keepAliveOnce(leaseId: LeaseId): Promise<number> {
    const what = `keep lease ${leaseId} alive`;
    // A streaming endpoint: one request in the body, one {"result": ...} line back.
    const response = await this.call("/v3/lease/keepalive", { ID: checkLeaseId(leaseId) }, what, "read");
    return Math.max(0, int64Field(asObject(response.result, what, '"result"'), "TTL", what));
  }

  /** Revokes the lease, deleting its keys; HAVEN_ERR_NOT_FOUND when it had already expired. */
  async revokeLease(leaseId: LeaseId): Promise<void> {
    await this.call("/v3/lease/revoke", { ID: checkLeaseId(leaseId) }, `revoke lease ${leaseId}`, "write");
  }

  /** The lease's remaining TTL and keys, or undefined when it has expired or was revoked. */
  async leaseTimeToLive(leaseId: LeaseId): Promise<LeaseStatus | undefined> {
    const what = `time to live of lease ${leaseId}`;
    const body = { ID: checkLeaseId(leaseId), keys: true };
    const response = await this.call("/v3/lease/timetolive", body, what, "read");
    const ttlSeconds = int64Field(response, "TTL", what);
    if (ttlSeconds < 0) return undefined;
    return {
      ttlSeconds,
      grantedTtlSeconds: int64Field(response, "grantedTTL", what),
      keys: asArray(response.keys, what, "keys").map((key, index) => textField({ key }, "key", `${what} key ${index}`)),
    };
  }

  /** The answering member's view: etcd version, store revision, leader and own member id. */
  async status(): Promise<{ version: string; revision: number; leader: string; memberId: string }> {
    const what = "status";
    const response = await this.call("/v3/maintenance/status", {}, what, "read");
    const header = asObject(response.header ?? {}, what, "the header");
    return {
      version: typeof response.version === "string" ? response.version : "unknown",
      revision: headerRevision(response, what),
      leader: String(response.leader ?? "0"),
      memberId: String(header.member_id ?? "0"),
    };
  }

  /**
   * Watches every key under `prefix`: `onEvent` gets each PUT and DELETE in revision order. Await `ready`
   * before relying on the watch; options.onClose hears when an established watch ends. There is no
   * reconnect: after onClose, re-read and watch again from `revision + 1`.
   */
  watchPrefix(prefix: string, options: WatchOptions, onEvent: (event: WatchEvent) => void): Watch {
    // A watch carries the token it was opened with and cannot renew it: one refused for its token (or
    // for having none) drops the token, so the next call, or ready(), logs in again before a new watch.
    const refusedToken = (reason: unknown): void => {
      if (
        this.credentials !== undefined &&
        reason instanceof Error &&
        /permission denied|invalid auth token|user name is empty/.test(reason.message)
      )
        this.transport.authorization = undefined;
    };
    const watch = watchPrefix(
      this.transport,
      prefix,
      {
        ...options,
        onClose: (reason) => {
          refusedToken(reason);
          options.onClose?.(reason);
        },
      },
      onEvent,
      { maxMessageBytes: this.maxResponseBytes, createTimeoutMs: this.requestTimeoutMs },
    );
    watch.ready.catch(refusedToken);
    return watch;
  }

  /** One call to etcd's auth API (users, roles, enabling, authenticating), for etcd-auth.ts. */
  auth(path: string, body: JsonObject, what: string): Promise<JsonObject> {
    return this.call(`/v3/${path}`, body, what, "write");
  }

  /**
   * One call with the client's token, when it has credentials: a token etcd no longer takes (expired,
   * or its user changed) is renewed once and the call repeated, which is safe because etcd refused it
   * before applying anything.
   */
  private async call(path: string, body: JsonObject, what: string, repeatable: Repeatable): Promise<JsonObject> {
    if (this.credentials === undefined)
      return this.transport.call(path, body, what, repeatable).catch((error: unknown) => {
        // With authentication on, etcd denies a client that gave no credentials as it would a role.
        if (error instanceof HavenError && error.code === "HAVEN_ERR_FORBIDDEN")
          throw new HavenError(
            "HAVEN_ERR_UNAUTHORIZED",
            `${error.message.replace(/ \(the operator's role does not allow it\)$/, "")}: etcd has authentication ` +
              `on, and this client gave no credentials (an operator's token beside their certificate, or the ` +
              `host's etcd password)`,
          );
        throw error;
      });
    if (this.transport.authorization === undefined) await this.authenticate();
    try {
      return await this.transport.call(path, body, what, repeatable);
    } catch (error) {
      if (!(error instanceof HavenError && error.code === "HAVEN_ERR_UNAUTHORIZED")) throw error;
      await this.authenticate();
      return this.transport.call(path, body, what, repeatable);
    }
  }

  /** Makes sure the client holds a token before a watch opens (a watch cannot renew one by itself). */
  async ready(): Promise<void> {
    if (this.credentials !== undefined && this.transport.authorization === undefined) await this.authenticate();
  }
}

function checkLeaseId(leaseId: LeaseId): string {
  if (!/^-?\d{1,19}$/.test(leaseId) || BigInt(leaseId) === 0n) {
    throw new HavenError("HAVEN_ERR_INVALID_REQUEST", `"${leaseId}" is not an etcd lease id`);
  }
  return leaseId;
}

function putRequest(key: string, value: string, lease: LeaseId | undefined): JsonObject {
  return {
    key: encodeText(key),
    value: encodeText(value),
    ...(lease === undefined ? {} : { lease: checkLeaseId(lease) }),
  };
}

/** The [from, to) range as etcd takes it; an empty or backward range is refused as a mistake. */
function keyRange(from: string, to: string, what: string): { key: string; range_end: string } {
  if (from === "" || Buffer.compare(Buffer.from(from, "utf8"), Buffer.from(to, "utf8")) >= 0) {
    throw new HavenError("HAVEN_ERR_INVALID_REQUEST", `${what}: the range must start at a key before its end`);
  }
  return { key: encodeText(from), range_end: encodeText(to) };
}

function compareRequest(compare: Compare): JsonObject {
  const [target, field] = COMPARE_TARGETS[compare.target];
  let value: string;
  if (compare.target === "value") value = encodeText(compare.value);
  else if (compare.target === "lease") value = checkLeaseId(compare.value);
  else {
    if (!(Number.isSafeInteger(compare.value) && compare.value >= 0)) {
      throw new HavenError(
        "HAVEN_ERR_INVALID_REQUEST",
        `compare ${compare.target} of ${"key" in compare ? `"${compare.key}"` : `prefix "${compare.prefix}"`} with ${compare.value}`,
      );
    }
    value = String(compare.value);
  }
  const subject = "key" in compare ? { key: encodeText(compare.key) } : prefixRange(compare.prefix);
  return { ...subject, target, result: COMPARE_RESULTS[compare.result], [field]: value };
}

function operationRequest(operation: TxnOperation): JsonObject {
  switch (operation.type) {
    case "put":
      return { request_put: putRequest(operation.key, operation.value, operation.lease) };
    case "get":
      return { request_range: { key: encodeText(operation.key) } };
    case "getPrefix":
      return { request_range: prefixRange(operation.prefix) };
    case "delete":
      return { request_delete_range: { key: encodeText(operation.key) } };
    case "deletePrefix":
      return { request_delete_range: prefixRange(operation.prefix) };
  }
}

function operationResult(operation: TxnOperation, raw: unknown, what: string): TxnOperationResult {
  const response = asObject(raw, what, "a transaction result");
  switch (operation.type) {
    case "put":
      asObject(response.response_put, what, '"response_put"');
      return { type: "put" };
    case "get":
    case "getPrefix": {
      const range = asObject(response.response_range, what, '"response_range"');
      return { type: "get", kvs: asArray(range.kvs, what, "kvs").map((kv) => parseKeyValue(kv, what)) };
    }
    case "delete":
    case "deletePrefix": {
      const deleted = asObject(response.response_delete_range, what, '"response_delete_range"');
      return { type: "delete", deleted: int64Field(deleted, "deleted", what) };
    }
  }
}
