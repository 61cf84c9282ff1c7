// Operators: named people (or programs) with a role and a token. The token is the operator's etcd
// password (etcd-auth.ts), so etcd itself refuses what the role does not allow; its SHA-256 is kept in
// /haven/operators/NAME so that the agents' APIs can check a bearer token without etcd. Revoking an
// operator deletes the etcd user (its tokens stop working at once) and the record.

import { createHash, randomBytes } from "node:crypto";
import { HavenError } from "../core/errors.js";
import { addUser, deleteUser, etcdRolesFor, type AuthCall, type OperatorRole } from "./etcd-auth.js";
import { CLUSTER_PREFIX, bad, eventSequence, object, type EventRecord } from "./schema.js";
import type { ClusterStore } from "./store.js";

export const OPERATOR_ROLES: readonly OperatorRole[] = ["viewer", "operator", "admin"];

export interface OperatorRecord {
  readonly name: string;
  readonly role: OperatorRole;
  /** SHA-256 of the token, hex. */
  readonly tokenSha256: string;
  readonly createdAt: string;
  readonly createdBy: string;
}

export const operatorKeys = {
  operator: (name: string): string => `${CLUSTER_PREFIX}operators/${name}`,
  operators: (): string => `${CLUSTER_PREFIX}operators/`,
};

/** An operator's name: letters, digits, '.', '_', '-'; never a host's etcd user (host.NAME) or root. */
export function checkOperatorName(name: string): void {
  if (!/^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$/.test(name) || name.startsWith("host.") || name === "root")
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `"${name.slice(0, 64)}" is not an operator name: 1 to 63 letters, digits, '.', '_' or '-', not root or host.*`,
    );
}

export function parseRole(text: string | undefined): OperatorRole {
  const role = OPERATOR_ROLES.find((candidate) => candidate === text);
  if (role === undefined)
    throw new HavenError("HAVEN_ERR_USAGE", `--role must be one of ${OPERATOR_ROLES.join(", ")}, not "${text ?? ""}"`);
  return role;
}

export function tokenDigest(token: string): string {
  return createHash("sha256").update(token, "utf8").digest("hex");
}

export function parseOperatorRecord(text: string, key: string): OperatorRecord {
  const o = object(text, key);
  const field = (name: string): string => {
    const value = o[name];
    if (typeof value !== "string") throw bad(key, `"${name}" is not a string`);
    return value;
  };
  const record: OperatorRecord = {
    name: field("name"),
    role: OPERATOR_ROLES.find((role) => role === o.role) ?? (undefined as never),
    tokenSha256: field("tokenSha256"),
    createdAt: field("createdAt"),
    createdBy: field("createdBy"),
  };
  if (record.role === undefined) throw bad(key, `"role" is not one of ${OPERATOR_ROLES.join(", ")}`);
  if (!/^[0-9a-f]{64}$/.test(record.tokenSha256)) throw bad(key, `"tokenSha256" is not a SHA-256 in hex`);
  if (key !== operatorKeys.operator(record.name)) throw bad(key, `the name ${record.name} is not the key's`);
  return record;
}

function event(kind: string, message: string, actor: string, now: Date): [string, string] {
  const record: EventRecord = { time: now.toISOString(), host: actor, kind, message };
  return [`${CLUSTER_PREFIX}events/${eventSequence(now.getTime())}`, JSON.stringify(record)];
}

/**
 * Adds operator `name` with `role`: an etcd user whose password is a new random token, and its record.
 * Resolves with the token, which is shown once and kept nowhere else.
 */
export async function addOperator(
  store: ClusterStore,
  call: AuthCall,
  request: { readonly name: string; readonly role: OperatorRole },
  actor: string,
  now = new Date(),
): Promise<{ record: OperatorRecord; token: string }> {
  checkOperatorName(request.name);
  const existing = await store.get(operatorKeys.operator(request.name));
  if (existing !== undefined)
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `operator ${request.name} exists already; 'haven operator revoke ${request.name}' first to give a new token`,
    );
  const token = `haven_${randomBytes(24).toString("base64url")}`;
  await addUser(call, request.name, token, etcdRolesFor(request.role));
  const record: OperatorRecord = {
    name: request.name,
    role: request.role,
    tokenSha256: tokenDigest(token),
    createdAt: now.toISOString(),
    createdBy: actor,
  };
  const [eventKey, eventValue] = event(
    "operator-added",
    `operator ${record.name} added with role ${record.role}`,
    actor,
    now,
  );
  await store.txn(
    [],
    [
      { type: "put", key: operatorKeys.operator(record.name), value: JSON.stringify(record) },
      { type: "put", key: eventKey, value: eventValue },
    ],
    [],
  );
  return { record, token };
}

/** Revokes operator `name`: its etcd user goes first, so its token is dead before the record is. */
export async function revokeOperator(
  store: ClusterStore,
  call: AuthCall,
  name: string,
  actor: string,
  now = new Date(),
): Promise<void> {
  checkOperatorName(name);
  const existing = await store.get(operatorKeys.operator(name));
  await deleteUser(call, name).catch((error: unknown) => {
    // A user already gone (an earlier revoke cut short) still has its record removed below.
    if (!(error instanceof HavenError && error.code === "HAVEN_ERR_NOT_FOUND" && existing !== undefined)) throw error;
  });
  const [eventKey, eventValue] = event(
    "operator-revoked",
    `operator ${name} revoked: its token no longer works`,
    actor,
    now,
  );
  await store.txn(
    [],
    [
      { type: "delete", key: operatorKeys.operator(name) },
      { type: "put", key: eventKey, value: eventValue },
    ],
    [],
  );
}

/** Every operator on record; malformed records are left out (they grant nothing). */
export async function listOperators(store: ClusterStore): Promise<OperatorRecord[]> {
  const records: OperatorRecord[] = [];
  for (const kv of await store.getPrefix(operatorKeys.operators())) {
    try {
      records.push(parseOperatorRecord(kv.value, kv.key));
    } catch {
      // A forged or damaged record: never a grant.
    }
  }
  return records.sort((a, b) => a.name.localeCompare(b.name));
}
