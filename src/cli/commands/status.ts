// `haven status`: the cluster at a glance, read from etcd: a summary line, each host (alive or dead,
// its address and disks) and each volume (size, primary and epoch, each copy's recorded state, health,
// and where clients connect).

import type { ClusterRecords } from "../../cluster/cluster-read.js";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { CA_CERT } from "../../security/pki.js";
import { EXPIRY_WARNING_DAYS, caDir, expiryWarnings } from "../../security/pki-dir.js";
import { renderStatus } from "../cluster-render.js";
import { clusterReport } from "../cluster-report.js";
import { CLUSTER_OPTIONS_USAGE, resolveCluster } from "../context.js";
import { WATCH_OPTIONS_USAGE } from "../watch.js";

export const STATUS_USAGE = `usage: haven status [--json] [--watch [--interval SECONDS]] [cluster options]

Shows the cluster at a glance: how many hosts are alive and how many volumes are healthy, then every
host (alive or dead, address, disks) and every volume (size, health, primary host and epoch, each
copy's recorded state, NBD URI).

A volume is healthy when its primary's host is alive and every copy is in sync, degraded when a copy
is out of sync or on a dead host, and down when no live host serves it.

It warns (on stderr) about every certificate of the cluster's PKI directory (the context file's
cluster, or the one holding the --tls-dir identity) that expires within ${EXPIRY_WARNING_DAYS} days or has expired.

Tables fit the terminal (80 columns in a pipe unless $COLUMNS says otherwise): the least needed
columns are cut (…) or left out; --json has every detail.

options:
  --json               print the hosts and volumes as JSON
${WATCH_OPTIONS_USAGE}

${CLUSTER_OPTIONS_USAGE}`;

export function status(argv: string[]): Promise<number> {
  return clusterReport(
    argv,
    STATUS_USAGE,
    (view) => view,
    renderStatus,
    async (values, records) => [...insecureHosts(records), ...(await certificateWarnings(values))],
    "haven status",
  );
}

/** Hosts whose config says "insecure": true: their links beyond loopback are in clear. */
function insecureHosts(records: ClusterRecords): string[] {
  return [...records.knownHosts.values()]
    .filter((host) => host.insecure === true)
    .map(
      (host) =>
        `host ${host.name} runs without TLS ("insecure": true in its config): its replication, NBD and API ` +
        `traffic at ${host.address} is in clear`,
    );
}

/**
 * The cluster's certificates near their end: those of the PKI directory of the context's cluster, or
 * else of the one the operator identity sits in (PKI/operators/NAME). None when neither is on this machine.
 */
async function certificateWarnings(values: Record<string, string | boolean | undefined>): Promise<string[]> {
  const cluster = resolveCluster(values);
  const candidates = [
    ...(cluster.clusterDir !== undefined ? [join(cluster.clusterDir, "pki")] : []),
    ...(cluster.tlsDir !== undefined ? [dirname(dirname(cluster.tlsDir))] : []),
  ];
  const pki = candidates.find((dir) => existsSync(join(caDir(dir), CA_CERT)));
  if (pki === undefined) return [];
  return expiryWarnings(pki, new Date()).catch((error: Error) => [
    `cannot check the certificates in ${pki}: ${error.message}`,
  ]);
}
