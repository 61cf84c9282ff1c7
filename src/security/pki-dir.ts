// A cluster's PKI directory, as `haven cluster up` and `haven cert` keep it: the CA and one directory per
// identity, named after its kind and name, so an identity is found (and renewed) by its name alone.
//
//   PKI/ca/                   the cluster CA (ca-cert.pem, ca-key.pem)
//   PKI/hosts/NAME/           host NAME's identity (pki.ts's layout)
//   PKI/operators/NAME/       operator NAME's identity
//
// Expiry is judged here once for every front end: a certificate within EXPIRY_WARNING_DAYS of its end
// is "expiring", one past it "expired".

import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { HavenError } from "../core/errors.js";
import {
  CA_CERT,
  CERT,
  checkIdentityName,
  createCa,
  daysLeft,
  issueCertificate,
  readCertificate,
  type CertificateInfo,
  type Identity,
} from "./pki.js";

/** A certificate this close to its end (in days) is reported by `haven cert list` and `haven status`. */
export const EXPIRY_WARNING_DAYS = 30;

export type IdentityKind = "host" | "operator";

export interface PkiIdentity {
  readonly kind: "ca" | IdentityKind;
  readonly dir: string;
  readonly info: CertificateInfo;
}

export function caDir(pki: string): string {
  return join(pki, "ca");
}

export function identityDir(pki: string, kind: IdentityKind, name: string): string {
  checkIdentityName(name);
  return join(pki, kind === "host" ? "hosts" : "operators", name);
}

/** The cluster CA in `pki`, made on first use and kept afterwards (a new one would orphan every certificate). */
export async function ensureCa(pki: string, clusterId: string): Promise<void> {
  if (!existsSync(join(caDir(pki), CA_CERT))) await createCa(caDir(pki), clusterId);
}

/** Issues `identity` under `pki` unless it has a certificate already; returns its directory. */
export async function ensureIdentity(pki: string, identity: Identity, days?: number): Promise<string> {
  const dir = identityDir(pki, identity.kind, identity.name);
  if (!existsSync(join(dir, CERT))) await issueCertificate(caDir(pki), dir, identity, days);
  return dir;
}

/** Every certificate under `pki`: the CA first, then hosts and operators by name. */
export async function listIdentities(pki: string): Promise<PkiIdentity[]> {
  if (!existsSync(join(caDir(pki), CA_CERT)))
    throw new HavenError(
      "HAVEN_ERR_NOT_FOUND",
      `${pki} holds no cluster CA (${join("ca", CA_CERT)}); 'haven cluster up' makes one, or pass --dir PKI`,
    );
  const found: PkiIdentity[] = [
    { kind: "ca", dir: caDir(pki), info: await readCertificate(join(caDir(pki), CA_CERT)) },
  ];
  for (const kind of ["host", "operator"] as const) {
    const parent = join(pki, kind === "host" ? "hosts" : "operators");
    const names = existsSync(parent) ? readdirSync(parent).sort() : [];
    for (const name of names) {
      const dir = join(parent, name);
      if (!statSync(dir).isDirectory() || !existsSync(join(dir, CERT))) continue;
      found.push({ kind, dir, info: await readCertificate(join(dir, CERT)) });
    }
  }
  return found;
}

/** "expired", "expiring" (within EXPIRY_WARNING_DAYS) or "ok". */
export function expiryState(info: CertificateInfo, now: Date): "expired" | "expiring" | "ok" {
  const left = daysLeft(info, now);
  return info.notAfter.getTime() <= now.getTime() ? "expired" : left < EXPIRY_WARNING_DAYS ? "expiring" : "ok";
}

/** One line per certificate under `pki` that has expired or expires within EXPIRY_WARNING_DAYS. */
export async function expiryWarnings(pki: string, now: Date): Promise<string[]> {
  const warnings: string[] = [];
  for (const identity of await listIdentities(pki)) {
    const state = expiryState(identity.info, now);
    if (state === "ok") continue;
    const what = `${identity.kind === "ca" ? "the cluster CA" : `${identity.kind} ${identity.info.name}`}'s certificate`;
    const when = identity.info.notAfter.toISOString().slice(0, 10);
    const renew = identity.kind === "ca" ? "" : `: 'haven cert renew ${identity.info.name}'`;
    warnings.push(
      state === "expired"
        ? `${what} expired on ${when}${renew}`
        : `${what} expires in ${daysLeft(identity.info, now)} days (${when})${renew}`,
    );
  }
  return warnings;
}
