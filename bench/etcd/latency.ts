// What TLS costs Haven's etcd client (issue 16): one etcd member over plain HTTP and one over mutual
// TLS, side by side in one run; for each, READS sequential range reads (each its own connection, as
// etcd-transport.ts makes them) and WATCHES put-to-watch-event delays, with TLS measured twice: a full
// handshake per request, and resuming the endpoint's last TLS session. Prints medians, p99 and ratios
// to plain HTTP. Run after `npm run build`: node dist/bench/etcd/latency.js [READS] [WATCHES]

import { join } from "node:path";
import { EtcdClient, type EtcdClientOptions } from "../../src/cluster/etcd-client.js";
import { startEtcd, type EtcdProcess } from "../../src/cluster/etcd-process.js";
import { createCa, issueCertificate } from "../../src/security/pki.js";
import { loadTlsIdentity } from "../../src/security/tls-identity.js";
import { tempDir } from "../../test/helpers/server-process.js";

const READS = Number(process.argv[2] ?? 200);
const WATCHES = Number(process.argv[3] ?? 50);

interface Row {
  readonly name: string;
  readonly readMs: number[];
  readonly watchMs: number[];
}

function quantile(samples: number[], q: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

async function measure(name: string, endpoint: string, options: EtcdClientOptions): Promise<Row> {
  const client = new EtcdClient([endpoint], options);
  await client.put("bench/key", "value");
  for (let i = 0; i < 10; i++) await client.get("bench/key"); // warm up
  const readMs: number[] = [];
  for (let i = 0; i < READS; i++) {
    const started = performance.now();
    await client.get("bench/key");
    readMs.push(performance.now() - started);
  }
  const watchMs: number[] = [];
  let arrived: (() => void) | undefined;
  const watch = client.watchPrefix("bench/watched/", {}, () => arrived?.());
  await watch.ready;
  for (let i = 0; i < WATCHES; i++) {
    const seen = new Promise<void>((resolve) => (arrived = resolve));
    const started = performance.now();
    await client.put(`bench/watched/${i}`, "x");
    await seen;
    watchMs.push(performance.now() - started);
  }
  watch.cancel();
  return { name, readMs, watchMs };
}

async function main(): Promise<void> {
  const dir = tempDir("haven-bench-etcd-");
  const members: EtcdProcess[] = [];
  try {
    const pki = join(dir.path, "pki");
    await createCa(join(pki, "ca"), "bench");
    await issueCertificate(join(pki, "ca"), join(pki, "hosts", "etcd"), {
      kind: "host",
      name: "etcd",
      addresses: ["127.0.0.1"],
    });
    await issueCertificate(join(pki, "ca"), join(pki, "operators", "admin"), {
      kind: "operator",
      name: "admin",
      role: "admin",
    });
    const identity = await loadTlsIdentity(join(pki, "operators", "admin"));
    const plain = await startEtcd({ dataDir: join(dir.path, "plain"), name: "plain" });
    members.push(plain);
    const secure = await startEtcd({
      dataDir: join(dir.path, "tls"),
      name: "tls",
      tlsDir: join(pki, "hosts", "etcd"),
    });
    members.push(secure);
    const rows = [
      await measure("http", plain.endpoint, {}),
      await measure("https, full handshake", secure.endpoint, { tls: identity, tlsSessionResumption: false }),
      await measure("https, resumed session", secure.endpoint, { tls: identity }),
    ];
    const base = rows[0]!;
    console.log(`${READS} sequential range reads and ${WATCHES} put-to-watch-event delays, one etcd each, 127.0.0.1`);
    console.log("client                   read p50  read p99  ratio   watch p50  watch p99  ratio");
    for (const row of rows) {
      const read50 = quantile(row.readMs, 0.5);
      const watch50 = quantile(row.watchMs, 0.5);
      console.log(
        `${row.name.padEnd(24)} ${read50.toFixed(2).padStart(7)}ms ${quantile(row.readMs, 0.99).toFixed(2).padStart(7)}ms ` +
          `${(read50 / quantile(base.readMs, 0.5)).toFixed(2).padStart(5)}x ` +
          `${watch50.toFixed(2).padStart(8)}ms ${quantile(row.watchMs, 0.99).toFixed(2).padStart(8)}ms ` +
          `${(watch50 / quantile(base.watchMs, 0.5)).toFixed(2).padStart(5)}x`,
      );
    }
  } finally {
    for (const member of members) await member.stop();
    dir.remove();
  }
}

await main();
