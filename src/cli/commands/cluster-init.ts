// `haven cluster init`: prepares a cluster whose hosts are real machines. It makes the cluster's CA, a
// certificate per host (valid for its name and addresses) and the operator admin, prints what each host
// needs (its identity directory, its agent config's "tls" and "etcd" keys, etcd's TLS flags), and, once
// etcd runs with those certificates, turns etcd's roles on (--etcd) and writes the CLI's context file.
// Run again, it keeps what exists: a host added later gets its certificate and etcd user.

import { join, resolve } from "node:path";
import { HavenError } from "../../core/errors.js";
import { ensureClusterAuth, hostPasswordFile } from "../../cluster/cluster-auth.js";
import { EtcdClient } from "../../cluster/etcd-client.js";
import { hostUser } from "../../cluster/etcd-auth.js";
import { etcdTlsArgs } from "../../cluster/etcd-process.js";
import { parseEndpoint } from "../../cluster/etcd-transport.js";
import { ensureCa, ensureIdentity } from "../../security/pki-dir.js";
import { checkIdentityName } from "../../security/pki.js";
import { loadTlsIdentity } from "../../security/tls-identity.js";
import { parseCommand, refuseArguments } from "../args.js";
import { writeContext } from "../context.js";
import { contextPath } from "./cluster.js";

export const CLUSTER_INIT_USAGE = `usage: haven cluster init --dir DIR --host NAME=ADDR[,ADDR...] [--host ...] [--etcd URL[,URL...]] [--context FILE]

Prepares a cluster of real machines: its CA (DIR/pki/ca: keep ca-key.pem on this machine only), a
certificate per host for its name and addresses (DIR/pki/hosts/NAME: copy it to that host), and the
operator admin (DIR/pki/operators/admin). It prints each host's agent config keys and etcd's TLS
flags. Once etcd runs with them, --etcd https://... turns etcd's roles on (a user per host, its
password in DIR/pki/hosts/NAME/etcd.password; the admin's token beside its certificate) and writes the
context file the CLI uses. Running it again keeps what exists and adds what is new.

options:
  --dir DIR            where the cluster's PKI directory goes (DIR/pki)
  --host NAME=ADDR,... a host and the addresses others reach it at (repeat for each host)
  --etcd URL,...       etcd's client URLs (https), to turn its roles on
  --context FILE       the context file to write (default: $HAVEN_CONTEXT, else ~/.config/haven/context.json)`;

function usage(message: string): HavenError {
  return new HavenError("HAVEN_ERR_USAGE", `${message}\n\n${CLUSTER_INIT_USAGE}`);
}

function parseHost(text: string): { name: string; addresses: string[] } {
  const match = /^([^=]+)=(.+)$/.exec(text);
  if (match === null) throw usage(`--host "${text}" is not NAME=ADDR[,ADDR...]`);
  const name = match[1]!;
  checkIdentityName(name);
  const addresses = match[2]!.split(",").map((address) => address.trim());
  if (addresses.some((address) => address === "")) throw usage(`--host ${text} has an empty address`);
  return { name, addresses };
}

export async function clusterInitCommand(argv: string[]): Promise<number> {
  const parsed = parseCommand(
    argv,
    {
      dir: { type: "string" },
      host: { type: "string", multiple: true },
      etcd: { type: "string" },
      context: { type: "string" },
    },
    CLUSTER_INIT_USAGE,
  );
  if (parsed === undefined) return 0;
  const { values, positionals } = parsed;
  refuseArguments(positionals, CLUSTER_INIT_USAGE);
  if (typeof values.dir !== "string") throw usage("give --dir DIR");
  const hosts = ((values.host as string[] | undefined) ?? []).map(parseHost);
  if (hosts.length === 0) throw usage("name at least one --host NAME=ADDR");
  const names = hosts.map((host) => host.name);
  const twice = names.find((name, index) => names.indexOf(name) !== index);
  if (twice !== undefined) throw usage(`--host ${twice} is given twice`);
  const endpoints = typeof values.etcd === "string" ? values.etcd.split(",").map((url) => url.trim()) : [];
  for (const endpoint of endpoints) {
    if (!endpoint.startsWith("https://"))
      throw usage(`--etcd ${endpoint}: etcd must speak TLS (https://), with a certificate made here`);
    parseEndpoint(endpoint);
  }

  const dir = resolve(values.dir);
  const pki = join(dir, "pki");
  await ensureCa(pki, dir.split("/").filter(Boolean).at(-1) ?? "haven");
  for (const host of hosts) await ensureIdentity(pki, { kind: "host", ...host });
  const admin = await ensureIdentity(pki, { kind: "operator", name: "admin", role: "admin" });
  const lines = [`cluster CA and certificates in ${pki} (keep ${join(pki, "ca", "ca-key.pem")} on this machine only)`];
  for (const host of hosts) {
    const identity = join(pki, "hosts", host.name);
    lines.push(
      ``,
      `host ${host.name} (${host.addresses.join(", ")}): copy ${identity} to it, then in its agent config:`,
      `  "tls": { "dir": "${identity}" },`,
      `  "etcd": { "endpoints": [${endpoints.map((url) => `"${url}"`).join(", ") || '"https://..."'}], "user": "${hostUser(host.name)}", "passwordFile": "${hostPasswordFile(pki, host.name)}" }`,
      `  an etcd member on it: etcd ... ${etcdTlsArgs(identity).join(" ")} --bcrypt-cost=4`,
    );
  }
  if (endpoints.length > 0) {
    const client = new EtcdClient(endpoints, { requestTimeoutMs: 10_000, tls: await loadTlsIdentity(admin) });
    await ensureClusterAuth(pki, client, admin, names);
    const context = contextPath(values.context);
    writeContext(context, { etcd: endpoints.map((url) => parseEndpoint(url).name), tls: admin });
    lines.push(
      ``,
      `etcd's roles are on: a user per host, the admin's token in ${join(admin, "token")}`,
      `context: ${context} (the CLI acts as admin; 'haven operator add' and 'haven cert issue operator' for others)`,
    );
  } else {
    lines.push(
      ``,
      `once etcd runs with these certificates: haven cluster init --dir ${values.dir} ... --etcd https://ADDR:2379`,
    );
  }
  process.stdout.write(`${lines.join("\n")}\n`);
  return 0;
}
