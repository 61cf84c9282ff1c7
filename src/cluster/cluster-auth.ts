// etcd's users and roles for a cluster (etcd-auth.ts), made from its PKI directory: set up on the first
// run (Haven's roles, root, a user per host, the operator admin with a token beside its certificate,
// authentication on) and completed on a later one (a host added since gets its user). `haven cluster
// up` runs it for the local cluster, `haven cluster init --etcd` for one whose etcd runs elsewhere. The
// files, all 0600:
//   PKI/etcd-root.password           root's password: the recovery credential
//   PKI/hosts/NAME/etcd.password     host NAME's (its agent's config names it: etcd.passwordFile)
//   PKI/operators/admin/token        the admin's token (the CLI finds it beside the certificate)

import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { TOKEN_FILE, readIdentityToken } from "../security/identity-token.js";
import { identityDir } from "../security/pki-dir.js";
import { loadTlsIdentity } from "../security/tls-identity.js";
import { EtcdClient } from "./etcd-client.js";
import { createRoles, enableAuth, ensureUser, etcdRolesFor, hostUser } from "./etcd-auth.js";
import { addOperator } from "./operators.js";

/** Where host `name`'s etcd password is kept under `pki`. */
export function hostPasswordFile(pki: string, name: string): string {
  return join(identityDir(pki, "host", name), "etcd.password");
}

/**
 * Sets up (or completes) etcd's authentication for `hosts`. `client` reaches etcd with the admin's
 * certificate (`adminDir`); before authentication is on it needs no credentials, and afterwards root's
 * password file is what lets this run add users again.
 */
export async function ensureClusterAuth(
  pki: string,
  client: EtcdClient,
  adminDir: string,
  hosts: readonly string[],
): Promise<{ hostPasswordFile: (name: string) => string }> {
  const rootFile = join(pki, "etcd-root.password");
  const secret = (): string => randomBytes(24).toString("base64url");
  const fresh = !existsSync(rootFile);
  const rootPassword = fresh ? secret() : readFileSync(rootFile, "utf8").trim();
  const root = fresh
    ? client
    : new EtcdClient([...client.endpoints], {
        requestTimeoutMs: 5_000,
        tls: await loadTlsIdentity(adminDir),
        credentials: { user: "root", password: rootPassword },
      });
  const call = root.auth.bind(root);
  if (fresh) {
    await createRoles(call);
    await ensureUser(call, "root", rootPassword, ["root"]);
  }
  for (const name of hosts) {
    if (existsSync(hostPasswordFile(pki, name))) continue;
    const password = secret();
    await ensureUser(call, hostUser(name), password, etcdRolesFor("host"));
    writeFileSync(hostPasswordFile(pki, name), `${password}\n`, { mode: 0o600 });
  }
  if (readIdentityToken(adminDir) === undefined) {
    const { token } = await addOperator(root, call, { name: "admin", role: "admin" }, "cluster-init");
    writeFileSync(join(adminDir, TOKEN_FILE), `${token}\n`, { mode: 0o600 });
  }
  if (fresh) {
    await enableAuth(call);
    writeFileSync(rootFile, `${rootPassword}\n`, { mode: 0o600 });
  }
  return { hostPasswordFile: (name) => hostPasswordFile(pki, name) };
}
