// The cluster's certificate authority: one CA per cluster, a certificate per host (it names the host,
// and serves and connects as it) and per operator (it names the operator and their role). Keys and
// certificates are made by Debian's openssl, never by hand-written ASN.1; they are read back with
// node's X509Certificate.
//
// Every identity lives in a directory of its own, laid out the way QEMU's tls-creds-x509, nbdkit's
// --tls-certificates and libnbd's tls-certificates read one, so any of them can be pointed at it:
//   ca-cert.pem                          the cluster CA's certificate
//   cert.pem, key.pem                    this identity's certificate and key (key 0600)
//   server-cert.pem, server-key.pem      the same, as a TLS server reads them
//   client-cert.pem, client-key.pem      the same, as a TLS client reads them
// The CA's own directory also holds ca-key.pem (0600), which signs; it stays on the host that issues.

import { execFile } from "node:child_process";
import { X509Certificate, randomBytes } from "node:crypto";
import { chmod, copyFile, mkdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { isIP } from "node:net";
import { join } from "node:path";
import { HavenError } from "../core/errors.js";

/** Operators' roles, weakest first: a role may do what every role before it may. */
export const ROLES = ["viewer", "operator", "admin"] as const;
export type Role = (typeof ROLES)[number];

/** Who calls a Haven service, and with what role. */
export interface Caller {
  /** Who, for the log and the event log: an operator's name, a host's, or "cluster-token". */
  readonly name: string;
  readonly role: Role;
}

export type Identity =
  | { readonly kind: "host"; readonly name: string; readonly addresses: readonly string[] }
  | { readonly kind: "operator"; readonly name: string; readonly role: Role };

export const CA_CERT = "ca-cert.pem";
export const CA_KEY = "ca-key.pem";
export const CERT = "cert.pem";
export const KEY = "key.pem";

const DEFAULT_CA_DAYS = 3650;
export const DEFAULT_CERT_DAYS = 365;

/** What a certificate says, read back from its PEM. */
export interface CertificateInfo {
  /** host, operator or ca. */
  readonly kind: "host" | "operator" | "ca";
  readonly name: string;
  /** The operator's role; undefined for hosts and the CA. */
  readonly role: Role | undefined;
  readonly serial: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  /** DNS names and IP addresses it is valid for (hosts). */
  readonly altNames: readonly string[];
  readonly fingerprint: string;
}

function openssl(args: readonly string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile("openssl", args, { timeout: 30_000 }, (error, _stdout, stderr) => {
      if (error === null) return resolve();
      const missing = (error as NodeJS.ErrnoException).code === "ENOENT";
      reject(
        new HavenError(
          "HAVEN_ERR_CONFIG",
          missing
            ? "openssl is not installed (apt-get install openssl): Haven makes its certificates with it"
            : `openssl ${args[0]} failed: ${stderr.trim() || error.message}`,
        ),
      );
    });
  });
}

/** openssl req's arguments for a new P-256 key, unencrypted, written to `keyFile`. */
function newKeyArgs(keyFile: string): string[] {
  return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", keyFile];
}

function checkDays(days: number): void {
  if (!Number.isInteger(days) || days < 1 || days > 36500)
    throw new HavenError("HAVEN_ERR_USAGE", `a certificate lasts 1 to 36500 days, not ${days}`);
}

/** A name that can sit in a subject and a file name: a host or operator name. */
export function checkIdentityName(name: string): void {
  if (!/^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$/.test(name))
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `"${name.slice(0, 64)}" is not a host or operator name: 1 to 63 letters, digits, '.', '_' or '-'`,
    );
}

/** Links the server-/client- names QEMU, nbdkit and libnbd look for to the identity's own files. */
async function linkTlsNames(dir: string): Promise<void> {
  for (const side of ["server", "client"]) {
    for (const [link, target] of [
      [`${side}-cert.pem`, CERT],
      [`${side}-key.pem`, KEY],
    ] as const) {
      await rm(join(dir, link), { force: true });
      await symlink(target, join(dir, link));
    }
  }
}

/**
 * Creates a cluster CA in `dir` (ca-cert.pem, ca-key.pem 0600); refuses when one is there already,
 * since a new CA would orphan every certificate the old one issued.
 */
export async function createCa(dir: string, clusterId: string, days = DEFAULT_CA_DAYS): Promise<CertificateInfo> {
  checkDays(days);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const existing = await readFile(join(dir, CA_CERT)).catch(() => undefined);
  if (existing !== undefined)
    throw new HavenError("HAVEN_ERR_CONFLICT", `${dir} holds a CA already; its certificates would be orphaned`);
  await openssl([
    "req",
    "-x509",
    ...newKeyArgs(join(dir, CA_KEY)),
    "-out",
    join(dir, CA_CERT),
    "-days",
    String(days),
    "-subj",
    `/O=haven/OU=ca/CN=haven-ca-${clusterId.slice(0, 40)}`,
    "-addext",
    "basicConstraints=critical,CA:TRUE,pathlen:0",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  ]);
  await chmod(join(dir, CA_KEY), 0o600);
  return readCertificate(join(dir, CA_CERT));
}

/**
 * Issues a certificate signed by the CA in `caDir` for `identity` into `outDir` (laid out as above),
 * replacing what was there: renewal is issuing again. A host's certificate is valid for its name and
 * addresses, as a server and as a client; an operator's names the operator and role, as a client.
 */
export async function issueCertificate(
  caDir: string,
  outDir: string,
  identity: Identity,
  days = DEFAULT_CERT_DAYS,
): Promise<CertificateInfo> {
  checkIdentityName(identity.name);
  checkDays(days);
  await mkdir(outDir, { recursive: true, mode: 0o700 });
  const csr = join(outDir, "request.csr");
  const extensions = join(outDir, "extensions.cnf");
  const unit = identity.kind === "host" ? "host" : identity.role;
  // The name is in the subject's alternative names (URI haven:KIND:NAME), not a common name: etcd's JSON
  // gateway refuses every request from a client certificate with a common name once authentication is on.
  const altNames = [
    `URI:haven:${identity.kind}:${identity.name}`,
    ...(identity.kind === "host"
      ? [
          `DNS:${identity.name}`,
          ...identity.addresses.map((address) => (isIP(address) ? `IP:${address}` : `DNS:${address}`)),
        ]
      : []),
  ];
  await writeFile(
    extensions,
    [
      "basicConstraints=critical,CA:FALSE",
      "keyUsage=critical,digitalSignature,keyEncipherment",
      `extendedKeyUsage=${identity.kind === "host" ? "serverAuth,clientAuth" : "clientAuth"}`,
      `subjectAltName=${[...new Set(altNames)].join(",")}`,
      "",
    ].join("\n"),
  );
  try {
    await openssl(["req", "-new", ...newKeyArgs(join(outDir, KEY)), "-out", csr, "-subj", `/O=haven/OU=${unit}`]);
    await chmod(join(outDir, KEY), 0o600);
    await openssl([
      "x509",
      "-req",
      "-in",
      csr,
      "-CA",
      join(caDir, CA_CERT),
      "-CAkey",
      join(caDir, CA_KEY),
      "-set_serial",
      `0x${randomBytes(16)
        .toString("hex")
        .replace(/^[89a-f]/, "1")}`,
      "-days",
      String(days),
      "-extfile",
      extensions,
      "-out",
      join(outDir, CERT),
    ]);
  } finally {
    await rm(csr, { force: true });
    await rm(extensions, { force: true });
  }
  await copyFile(join(caDir, CA_CERT), join(outDir, CA_CERT));
  await linkTlsNames(outDir);
  return readCertificate(join(outDir, CERT));
}

function subjectField(subject: string, field: string): string | undefined {
  return subject
    .split("\n")
    .map((line) => /^([A-Za-z]+)=(.*)$/.exec(line))
    .find((match) => match?.[1] === field)?.[2];
}

/** What the certificate in `pem` says about whom it names. */
export function certificateInfo(pem: string | Buffer): CertificateInfo {
  const certificate = new X509Certificate(pem);
  const unit = subjectField(certificate.subject, "OU");
  const entries = (certificate.subjectAltName ?? "").split(", ").filter((entry) => entry !== "");
  // haven:KIND:NAME names the identity; a certificate without one (made elsewhere) by its common name.
  const named = entries.map((entry) => /^URI:haven:(host|operator):(.+)$/.exec(entry)).find((match) => match !== null);
  const name = named?.[2] ?? subjectField(certificate.subject, "CN") ?? "";
  const namedKind = named?.[1] as "host" | "operator" | undefined;
  const kind = certificate.ca ? "ca" : (namedKind ?? (unit === "host" ? "host" : "operator"));
  const role = kind === "operator" ? ROLES.find((candidate) => candidate === unit) : undefined;
  return {
    kind,
    name,
    role,
    serial: certificate.serialNumber.toLowerCase(),
    notBefore: new Date(certificate.validFrom),
    notAfter: new Date(certificate.validTo),
    altNames: entries
      .filter((entry) => !entry.startsWith("URI:"))
      .map((entry) => entry.replace(/^(DNS|IP Address):/, "")),
    fingerprint: certificate.fingerprint256,
  };
}

export async function readCertificate(file: string): Promise<CertificateInfo> {
  let pem: Buffer;
  try {
    pem = await readFile(file);
  } catch (error) {
    throw new HavenError("HAVEN_ERR_CONFIG", `cannot read the certificate ${file}: ${(error as Error).message}`);
  }
  try {
    return certificateInfo(pem);
  } catch (error) {
    throw new HavenError("HAVEN_ERR_CONFIG", `${file} is not a PEM certificate: ${(error as Error).message}`);
  }
}

/** Days until `info` expires, from `now` (negative once it has). */
export function daysLeft(info: CertificateInfo, now: Date): number {
  return Math.floor((info.notAfter.getTime() - now.getTime()) / 86_400_000);
}

/** Whether role `has` may do what needs role `needs`. */
export function roleAllows(has: Role, needs: Role): boolean {
  return ROLES.indexOf(has) >= ROLES.indexOf(needs);
}
