// Who may do what in etcd: its own users and roles (RBAC), turned on for a Haven cluster. Every client
// authenticates with a name and a password (etcd's JSON gateway does not take a certificate's name as
// the user, so the certificate admits the connection and the password names who is on it), and gets a
// token that etcd checks on every request; a user deleted or given a new password loses its tokens at
// once. An operator's password is their Haven token.
//
// The roles, over the keys under /haven/ (a role may do what the ones before it may):
//   haven-viewer     reads everything: state, events, metrics;
//   haven-operator   also writes what day-to-day actions write: switchover and drain requests (handover),
//                    VM start and stop (the VM records), disk identify (disk requests), and their events;
//   haven-admin      also writes everything else under /haven/ (create, delete, promote --force, disk
//                    replace, split-brain resolution), and holds etcd's root role to manage operators;
//   haven-host       a host's agent: reads and writes everything under /haven/.
// etcd checks the key, not the action: an operator could write a VM record that creates a VM (on a
// volume an admin made) as well as one that starts it; the CLI refuses that, etcd does not.

import { HavenError } from "../core/errors.js";
import { prefixRange, type JsonObject } from "./etcd-codec.js";
import { CLUSTER_PREFIX } from "./schema.js";

/** One gateway call: POST `path` (under /v3/) with `body`, resolving with etcd's answer or throwing its refusal. */
export type AuthCall = (path: string, body: JsonObject, what: string) => Promise<JsonObject>;

export type OperatorRole = "viewer" | "operator" | "admin";

interface Permission {
  readonly type: "READ" | "READWRITE";
  readonly prefix: string;
}

const everything = CLUSTER_PREFIX;

/** etcd's role for each of Haven's, with its permissions. */
export const ETCD_ROLES: Readonly<Record<string, readonly Permission[]>> = {
  "haven-viewer": [{ type: "READ", prefix: everything }],
  "haven-operator": [
    { type: "READ", prefix: everything },
    ...["handover/", "vms/", "migrations/", "maintenance/", "disk-requests/", "events/"].map((part): Permission => ({
      type: "READWRITE",
      prefix: `${CLUSTER_PREFIX}${part}`,
    })),
  ],
  "haven-admin": [{ type: "READWRITE", prefix: everything }],
  "haven-host": [{ type: "READWRITE", prefix: everything }],
};

/** The etcd roles a Haven role is given. */
export function etcdRolesFor(role: OperatorRole | "host"): string[] {
  return role === "admin" ? ["haven-admin", "root"] : [`haven-${role}`];
}

/** The etcd user of host `name`'s agent. */
export function hostUser(name: string): string {
  return `host.${name}`;
}

/** Whether etcd refused because the thing exists already (adding a role or user twice). */
function alreadyExists(error: unknown): boolean {
  return /already exists/.test((error as Error).message ?? "");
}

/** Creates Haven's roles (what exists already is left as it is). */
export async function createRoles(call: AuthCall): Promise<void> {
  for (const [name, permissions] of [["root", []] as const, ...Object.entries(ETCD_ROLES)]) {
    await call("auth/role/add", { name }, `adding role ${name}`).catch((error: unknown) => {
      if (!alreadyExists(error)) throw error;
    });
    for (const permission of permissions) {
      const range = prefixRange(permission.prefix);
      await call(
        "auth/role/grant",
        { name, perm: { permType: permission.type, key: range.key, range_end: range.range_end } },
        `granting ${permission.type} on ${permission.prefix} to role ${name}`,
      );
    }
  }
}

/** Adds user `name` with `password` and the given roles; refused when the user exists. */
export async function addUser(call: AuthCall, name: string, password: string, roles: readonly string[]): Promise<void> {
  await call("auth/user/add", { name, password }, `adding user ${name}`).catch((error: unknown) => {
    if (alreadyExists(error))
      throw new HavenError("HAVEN_ERR_CONFLICT", `etcd has a user named ${name} already; revoke it first`);
    throw error;
  });
  for (const role of roles) await call("auth/user/grant", { user: name, role }, `granting role ${role} to ${name}`);
}

/** Makes sure user `name` exists with `password` and the given roles (a user left by a run cut short is reset). */
export async function ensureUser(
  call: AuthCall,
  name: string,
  password: string,
  roles: readonly string[],
): Promise<void> {
  try {
    await addUser(call, name, password, roles);
  } catch (error) {
    if (!(error instanceof HavenError && error.code === "HAVEN_ERR_CONFLICT")) throw error;
    await call("auth/user/changepw", { name, password }, `setting the password of ${name}`);
    for (const role of roles) await call("auth/user/grant", { user: name, role }, `granting role ${role} to ${name}`);
  }
}

/** Removes user `name`: its tokens stop working at once. */
export async function deleteUser(call: AuthCall, name: string): Promise<void> {
  await call("auth/user/delete", { name }, `deleting user ${name}`).catch((error: unknown) => {
    if (/user name not found/.test((error as Error).message ?? ""))
      throw new HavenError("HAVEN_ERR_NOT_FOUND", `etcd has no user named ${name}`);
    throw error;
  });
}

/** Every user with its roles. */
export async function listUsers(call: AuthCall): Promise<{ name: string; roles: string[] }[]> {
  const answer = await call("auth/user/list", {}, "listing users");
  const names = Array.isArray(answer.users) ? answer.users.filter((name) => typeof name === "string") : [];
  const users: { name: string; roles: string[] }[] = [];
  for (const name of names as string[]) {
    const user = await call("auth/user/get", { name }, `reading user ${name}`);
    users.push({ name, roles: Array.isArray(user.roles) ? (user.roles as unknown[]).map(String) : [] });
  }
  return users;
}

/** Turns authentication on: from then on every request needs a token. */
export async function enableAuth(call: AuthCall): Promise<void> {
  await call("auth/enable", {}, "enabling authentication");
}

/** A token for `name`, or HAVEN_ERR_UNAUTHORIZED when etcd does not know that name and password. */
export async function authenticate(call: AuthCall, name: string, password: string): Promise<string> {
  let answer: JsonObject;
  try {
    answer = await call("auth/authenticate", { name, password }, `authenticating as ${name}`);
  } catch (error) {
    if (/authentication failed/.test((error as Error).message ?? ""))
      throw new HavenError(
        "HAVEN_ERR_UNAUTHORIZED",
        `etcd does not know user ${name} with that token (revoked, or a wrong token file)`,
      );
    throw error;
  }
  if (typeof answer.token !== "string" || answer.token === "")
    throw new HavenError("HAVEN_ERR_IO", `etcd answered authenticating as ${name} without a token`);
  return answer.token;
}

/** Whether etcd refused a request because its token is no longer valid (expired, or its user changed). */
export function tokenRefused(grpcCode: number, message: string): boolean {
  return grpcCode === 16 || /invalid auth token|auth: revision in header is old/.test(message);
}

/**
 * Turns etcd's authentication on for a new cluster: Haven's roles, the root user (its password is the
 * cluster's recovery credential, kept by whoever set the cluster up) and auth enabled. From then on
 * every change to users and roles needs a root-role token (an admin operator's).
 */
export async function bootstrapAuth(call: AuthCall, rootPassword: string): Promise<void> {
  await createRoles(call);
  await addUser(call, "root", rootPassword, ["root"]);
  await enableAuth(call);
}
