// Certificates revoked before they expire: /haven/revoked-certs/SERIAL. Every Haven server that takes a
// client certificate (the agent API, the replication port, NBD) refuses one whose serial is here, even
// though the CA signed it; etcd itself knows only the CA, so an operator whose certificate is revoked is
// also revoked as an operator (their token), which etcd does check.

import { CLUSTER_PREFIX, bad, object } from "./schema.js";
import type { ClusterStore } from "./store.js";

export interface RevocationRecord {
  /** Lower-case hex, as CertificateInfo.serial. */
  readonly serial: string;
  /** Whom the certificate named: "host h1", "operator alice". */
  readonly subject: string;
  readonly revokedAt: string;
  readonly revokedBy: string;
}

export const revocationKeys = {
  revocation: (serial: string): string => `${CLUSTER_PREFIX}revoked-certs/${serial}`,
  revocations: (): string => `${CLUSTER_PREFIX}revoked-certs/`,
};

export function parseRevocation(text: string, key: string): RevocationRecord {
  const o = object(text, key);
  for (const field of ["serial", "subject", "revokedAt", "revokedBy"])
    if (typeof o[field] !== "string") throw bad(key, `"${field}" is not a string`);
  const record = o as unknown as RevocationRecord;
  if (!/^[0-9a-f]{1,64}$/.test(record.serial) || key !== revocationKeys.revocation(record.serial))
    throw bad(key, `"serial" ${record.serial.slice(0, 80)} is not the key's lower-case hex serial`);
  return record;
}

export async function revokeCertificate(store: ClusterStore, record: RevocationRecord): Promise<void> {
  await store.put(revocationKeys.revocation(record.serial), JSON.stringify(record));
}

/** The serials revoked; a malformed record revokes nothing but is not lost from view (the key's serial counts). */
export async function revokedSerials(store: ClusterStore): Promise<Set<string>> {
  const serials = new Set<string>();
  for (const kv of await store.getPrefix(revocationKeys.revocations())) {
    // A record that does not parse still names its serial in the key: refusing it is the safe side.
    serials.add(kv.key.slice(revocationKeys.revocations().length).toLowerCase());
  }
  return serials;
}
