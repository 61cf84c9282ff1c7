// `haven cert`: the cluster's certificates, kept in its PKI directory (security/pki-dir.ts): list them
// with their expiry, issue one for a host or an operator, renew one (the same identity, a new expiry).
// The PKI directory is --dir (a cluster directory holding pki/, or the PKI directory itself), else the
// context file's cluster directory, else the local cluster's default directory.

import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { HavenError } from "../../core/errors.js";
import { ROLES, daysLeft, issueCertificate, readCertificate, type Identity, type Role } from "../../security/pki.js";
import {
  EXPIRY_WARNING_DAYS,
  caDir,
  expiryState,
  identityDir,
  listIdentities,
  type IdentityKind,
} from "../../security/pki-dir.js";
import { CA_CERT, CA_KEY, CERT } from "../../security/pki.js";
import { parseCommand } from "../args.js";
import { CLUSTER_OPTIONS, CLUSTER_OPTIONS_USAGE, connectCluster, readContext } from "../context.js";
import { cliActor } from "../actor.js";
import { revokeCertificate } from "../../cluster/revocations.js";
import { contextPath, defaultClusterDir } from "./cluster.js";

const DIR_USAGE = `  --dir DIR            the cluster directory (holding pki/) or the PKI directory itself
                       (default: the context file's cluster, else the local cluster's directory)
  --context FILE       the context file that names the cluster directory`;

export const CERT_USAGE = `usage: haven cert list [--json] [--dir DIR]
       haven cert issue host NAME --address ADDR[,ADDR...] [--days N] [--dir DIR]
       haven cert issue operator NAME --role viewer|operator|admin [--days N] [--dir DIR]
       haven cert renew NAME [--kind host|operator] [--days N] [--dir DIR]
       haven cert revoke NAME [--kind host|operator] [--dir DIR] [cluster options]

The cluster's certificates, signed by its CA: one per host (it serves and connects as the host; valid
for its name and addresses) and one per operator (it names the operator and their role). list shows
each with its serial and expiry, and marks those that expire within ${EXPIRY_WARNING_DAYS} days or have expired;
issue makes a new identity directory (what an agent's "tls.dir" or the CLI's --tls-dir names); renew
issues the same identity again with a new expiry and a new key, in place; revoke records the
certificate's serial in the cluster, and every agent refuses it from then on (its API, the replication
port), though the CA signed it (renew to give the identity a new one).

options:
  --json               list as JSON
  --address ADDR,...   a host's IP addresses or DNS names (its name is always included)
  --role ROLE          an operator's role: viewer, operator or admin
  --days N             how long the certificate lasts (default 365)
  --kind KIND          which identity renew means when a host and an operator share NAME
${DIR_USAGE}`;

/** Each verb's own usage, for `haven cert VERB --help`. */
export const CERT_VERB_USAGE: Record<string, string> = {
  list: `usage: haven cert list [--json] [--dir DIR]

Every host and operator certificate of the cluster's CA, with its serial and expiry; marks those that
expire within ${EXPIRY_WARNING_DAYS} days or have expired.

options:
  --json               print the list as JSON
${DIR_USAGE}`,
  issue: `usage: haven cert issue host NAME --address ADDR[,ADDR...] [--days N] [--dir DIR]
       haven cert issue operator NAME --role viewer|operator|admin [--days N] [--dir DIR]

Makes a new identity directory signed by the cluster's CA: a host's (it serves and connects as the
host, valid for its name and addresses; an agent's "tls.dir" names it) or an operator's (it names the
operator and their role; the CLI's --tls-dir names it).

options:
  --address ADDR,...   a host's IP addresses or DNS names (its name is always included)
  --role ROLE          an operator's role: viewer, operator or admin
  --days N             how long the certificate lasts (default 365)
${DIR_USAGE}`,
  renew: `usage: haven cert renew NAME [--kind host|operator] [--days N] [--dir DIR]

Issues the same identity again, in place, with a new expiry and a new key.

options:
  --kind KIND          which identity NAME means when a host and an operator share it
  --days N             how long the certificate lasts (default 365)
${DIR_USAGE}`,
  revoke: `usage: haven cert revoke NAME [--kind host|operator] [--dir DIR] [cluster options]

Records the certificate's serial in the cluster: every agent refuses it from then on (its API, the
replication port), though the CA signed it. 'haven cert renew NAME' gives the identity a new one.

options:
  --kind KIND          which identity NAME means when a host and an operator share it
${DIR_USAGE}

${CLUSTER_OPTIONS_USAGE}`,
};

const OPTIONS = {
  ...CLUSTER_OPTIONS,
  json: { type: "boolean" },
  dir: { type: "string" },
  context: { type: "string" },
  address: { type: "string" },
  role: { type: "string" },
  days: { type: "string" },
  kind: { type: "string" },
} as const;

function usage(message: string): HavenError {
  return new HavenError("HAVEN_ERR_USAGE", `${message}\n\n${CERT_USAGE}`);
}

/** The PKI directory the command works on (see the top of this file). */
export function pkiDirOf(values: {
  dir?: string | boolean | undefined;
  context?: string | boolean | undefined;
}): string {
  const base =
    typeof values.dir === "string"
      ? resolve(values.dir)
      : (readContext(contextPath(values.context), true)?.clusterDir ?? defaultClusterDir());
  if (existsSync(join(caDir(base), CA_CERT))) return base;
  return join(base, "pki");
}

function days(text: string | boolean | undefined): number | undefined {
  if (text === undefined) return undefined;
  if (typeof text !== "string" || !/^\d{1,5}$/.test(text) || Number(text) < 1)
    throw usage(`--days must be a whole number of days from 1, not "${String(text)}"`);
  return Number(text);
}

function refuse(values: Record<string, unknown>, names: readonly string[], verb: string): void {
  for (const name of names)
    if (values[name] !== undefined) throw usage(`--${name} does not apply to 'haven cert ${verb}'`);
}

export async function certCommand(argv: string[]): Promise<number> {
  const parsed = parseCommand(argv, OPTIONS, CERT_USAGE);
  if (parsed === undefined) return 0; // --help was printed
  const { values, positionals } = parsed;
  const [verb, ...rest] = positionals;
  const pki = pkiDirOf(values);
  switch (verb) {
    case "list":
      if (rest.length > 0) throw usage(`unexpected argument "${rest[0]}"`);
      refuse(values, ["address", "role", "days", "kind"], "list");
      return certList(pki, values.json === true);
    case "issue":
      refuse(values, ["json", "kind"], "issue");
      return certIssue(pki, rest, values);
    case "renew":
      refuse(values, ["json", "address", "role"], "renew");
      return certRenew(pki, rest, values);
    case "revoke":
      refuse(values, ["json", "address", "role", "days"], "revoke");
      return certRevoke(pki, rest, values);
    default:
      throw usage(verb === undefined ? "name a verb: list, issue, renew or revoke" : `unknown verb "${verb}"`);
  }
}

async function certList(pki: string, json: boolean): Promise<number> {
  const now = new Date();
  const rows = (await listIdentities(pki)).map(({ kind, dir, info }) => ({
    kind,
    name: info.name,
    role: info.role ?? null,
    serial: info.serial,
    notAfter: info.notAfter.toISOString(),
    daysLeft: daysLeft(info, now),
    state: expiryState(info, now),
    dir,
  }));
  if (json) {
    process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
    return 0;
  }
  const table = [
    ["KIND", "NAME", "ROLE", "SERIAL", "EXPIRES", "DAYS LEFT", ""],
    ...rows.map((row) => [
      row.kind,
      row.name,
      row.role ?? "-",
      row.serial.slice(0, 16),
      row.notAfter.slice(0, 10),
      String(row.daysLeft),
      row.state === "ok" ? "" : row.state === "expired" ? "EXPIRED" : `expires within ${EXPIRY_WARNING_DAYS} days`,
    ]),
  ];
  const widths = table[0]!.map((_, column) => Math.max(...table.map((row) => row[column]!.length)));
  const lines = table.map((row) =>
    row
      .map((cell, column) => cell.padEnd(widths[column]!))
      .join("  ")
      .trimEnd(),
  );
  process.stdout.write(`${lines.join("\n")}\n`);
  return 0;
}

function parseKind(text: string | undefined): IdentityKind {
  if (text === "host" || text === "operator") return text;
  throw usage(text === undefined ? "name the kind: host or operator" : `"${text}" is not host or operator`);
}

async function certIssue(pki: string, args: string[], values: Record<string, string | boolean | undefined>) {
  const [kindText, name, ...extra] = args;
  const kind = parseKind(kindText);
  if (name === undefined) throw usage(`name the ${kind} (for example: haven cert issue ${kind} h4 ...)`);
  if (extra.length > 0) throw usage(`unexpected argument "${extra[0]}"`);
  let identity: Identity;
  if (kind === "host") {
    if (values.role !== undefined) throw usage("--role is for operators; a host takes --address");
    if (typeof values.address !== "string" || values.address.trim() === "")
      throw usage(`a host's certificate names its addresses: --address ADDR[,ADDR...]`);
    const addresses = values.address.split(",").map((address) => address.trim());
    if (addresses.some((address) => !/^[A-Za-z0-9.:-]+$/.test(address)))
      throw usage(`--address "${values.address}" is not a list of IP addresses or DNS names`);
    identity = { kind, name, addresses };
  } else {
    if (values.address !== undefined) throw usage("--address is for hosts; an operator takes --role");
    const role = values.role;
    if (!ROLES.includes(role as Role))
      throw usage(`an operator's certificate names a role: --role ${ROLES.join("|")}${role ? `, not "${role}"` : ""}`);
    identity = { kind, name, role: role as Role };
  }
  const dir = identityDir(pki, kind, name);
  if (existsSync(join(dir, CERT)))
    throw new HavenError(
      "HAVEN_ERR_CONFLICT",
      `${kind} ${name} has a certificate already (${dir}): 'haven cert renew ${name}' issues it again`,
    );
  if (!existsSync(join(caDir(pki), CA_KEY)))
    throw new HavenError("HAVEN_ERR_NOT_FOUND", `${pki} holds no cluster CA key (ca/ca-key.pem) to sign with`);
  const info = await issueCertificate(caDir(pki), dir, identity, days(values.days));
  process.stdout.write(
    `issued ${kind} ${name}: serial ${info.serial}, expires ${info.notAfter.toISOString()}\n  ${dir}\n`,
  );
  return 0;
}

/** The identity NAME names (of --kind, when a host and an operator share it). */
function findIdentity(
  pki: string,
  args: string[],
  values: Record<string, string | boolean | undefined>,
  verb: string,
): { name: string; kind: IdentityKind; dir: string } {
  const [name, ...extra] = args;
  if (name === undefined) throw usage(`name the identity to ${verb} (for example: haven cert ${verb} h1)`);
  if (extra.length > 0) throw usage(`unexpected argument "${extra[0]}"`);
  const kinds: IdentityKind[] = values.kind !== undefined ? [parseKind(String(values.kind))] : ["host", "operator"];
  const found = kinds.filter((kind) => existsSync(join(identityDir(pki, kind, name), CERT)));
  if (found.length === 0)
    throw new HavenError(
      "HAVEN_ERR_NOT_FOUND",
      `no ${kinds.join(" or ")} named ${name} in ${pki} ('haven cert list' shows them; 'haven cert issue' makes one)`,
    );
  if (found.length > 1) throw usage(`a host and an operator are both named ${name}: say which with --kind`);
  const kind = found[0]!;
  return { name, kind, dir: identityDir(pki, kind, name) };
}

async function certRevoke(pki: string, args: string[], values: Record<string, string | boolean | undefined>) {
  const { name, kind, dir } = findIdentity(pki, args, values, "revoke");
  const info = await readCertificate(join(dir, CERT));
  await revokeCertificate(connectCluster(values), {
    serial: info.serial,
    subject: `${kind} ${name}`,
    revokedAt: new Date().toISOString(),
    revokedBy: cliActor(),
  });
  process.stdout.write(
    `revoked the certificate of ${kind} ${name} (serial ${info.serial}): every agent refuses it within seconds` +
      (kind === "operator" ? `; 'haven operator revoke ${name}' ends their token too` : "") +
      `; 'haven cert renew ${name}' gives a new one\n`,
  );
  return 0;
}

async function certRenew(pki: string, args: string[], values: Record<string, string | boolean | undefined>) {
  const { name, kind, dir } = findIdentity(pki, args, values, "renew");
  const old = await readCertificate(join(dir, CERT));
  const identity: Identity =
    kind === "host"
      ? { kind, name, addresses: old.altNames.filter((address) => address !== name) }
      : { kind, name, role: old.role ?? "viewer" };
  if (kind === "operator" && old.role === undefined)
    throw new HavenError("HAVEN_ERR_CONFIG", `${join(dir, CERT)} names no role; issue it again with a role`);
  const info = await issueCertificate(caDir(pki), dir, identity, days(values.days));
  process.stdout.write(
    `renewed ${kind} ${name}: serial ${info.serial}, expires ${info.notAfter.toISOString()} ` +
      `(was ${old.notAfter.toISOString()})\n  ${dir}\n`,
  );
  return 0;
}
