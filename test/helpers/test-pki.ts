// Certificates for tests of the TLS links, made by the real pki.ts (openssl): one cluster CA, host and
// operator identities under it, a host identity under a second CA (a stranger's), and one whose
// certificate expired. pki.ts refuses to issue for less than a day, so the expired certificate is
// signed with `openssl ca -startdate -enddate` (OpenSSL 3.0's x509 has no way to set a past start).

import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CA_CERT, CA_KEY, CERT, KEY, createCa, issueCertificate } from "../../src/security/pki.js";
import { loadTlsIdentity, type TlsIdentity } from "../../src/security/tls-identity.js";

export interface TestPki {
  readonly caDir: string;
  /** A host identity of the cluster (addresses 127.0.0.1 and 127.0.0.2). */
  host(name: string): Promise<TlsIdentity>;
  /** An operator identity of the cluster. */
  operator(name: string): Promise<TlsIdentity>;
  /** A host identity signed by another CA, that trusts only that CA. */
  stranger(name: string): Promise<TlsIdentity>;
  /** A host identity of the cluster whose certificate expired a year ago. */
  expiredHost(name: string): Promise<TlsIdentity>;
}

const ADDRESSES = ["127.0.0.1", "127.0.0.2"];

export async function testPki(root: string): Promise<TestPki> {
  const caDir = join(root, "ca");
  await createCa(caDir, "test-cluster");
  let strangerCa: string | undefined;
  return {
    caDir,
    host: async (name) => {
      await issueCertificate(caDir, join(root, `host-${name}`), { kind: "host", name, addresses: ADDRESSES });
      return loadTlsIdentity(join(root, `host-${name}`));
    },
    operator: async (name) => {
      await issueCertificate(caDir, join(root, `operator-${name}`), { kind: "operator", name, role: "admin" });
      return loadTlsIdentity(join(root, `operator-${name}`));
    },
    stranger: async (name) => {
      if (strangerCa === undefined) {
        strangerCa = join(root, "stranger-ca");
        await createCa(strangerCa, "another-cluster");
      }
      const dir = join(root, `stranger-${name}`);
      await issueCertificate(strangerCa, dir, { kind: "host", name, addresses: ADDRESSES });
      return loadTlsIdentity(dir);
    },
    expiredHost: async (name) => {
      const dir = join(root, `expired-${name}`);
      await issueCertificate(caDir, dir, { kind: "host", name, addresses: ADDRESSES });
      resignExpired(caDir, dir, name);
      return loadTlsIdentity(dir);
    },
  };
}

/** Replaces DIR/cert.pem by one for the same key and subject, valid only during 2020-01-01. */
function resignExpired(caDir: string, dir: string, name: string): void {
  const work = join(dir, "expired-ca");
  mkdirSync(join(work, "new"), { recursive: true });
  writeFileSync(join(work, "index.txt"), "");
  writeFileSync(join(work, "serial"), "1000\n");
  writeFileSync(
    join(work, "ca.cnf"),
    [
      "[ca]",
      "default_ca = test",
      "[test]",
      `database = ${join(work, "index.txt")}`,
      `new_certs_dir = ${join(work, "new")}`,
      `serial = ${join(work, "serial")}`,
      "default_md = sha256",
      "policy = any",
      "unique_subject = no",
      "[any]",
      "organizationName = optional",
      "organizationalUnitName = optional",
      "commonName = supplied",
      "[ext]",
      "basicConstraints = critical,CA:FALSE",
      "keyUsage = critical,digitalSignature,keyEncipherment",
      "extendedKeyUsage = serverAuth,clientAuth",
      `subjectAltName = DNS:${name},${ADDRESSES.map((address) => `IP:${address}`).join(",")}`,
      "",
    ].join("\n"),
  );
  const csr = join(work, "request.csr");
  execFileSync("openssl", ["req", "-new", "-key", join(dir, KEY), "-subj", `/O=haven/OU=host/CN=${name}`, "-out", csr]);
  execFileSync(
    "openssl",
    [
      "ca",
      "-batch",
      "-config",
      join(work, "ca.cnf"),
      "-extensions",
      "ext",
      "-cert",
      join(caDir, CA_CERT),
      "-keyfile",
      join(caDir, CA_KEY),
      "-startdate",
      "20200101000000Z",
      "-enddate",
      "20200102000000Z",
      "-in",
      csr,
      "-out",
      join(dir, CERT),
      "-notext",
    ],
    { stdio: "ignore" },
  );
}
