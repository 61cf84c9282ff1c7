// Haven's etcd client beside the `etcd3` npm package (gRPC over one long-lived HTTP/2 connection), over
// mutual TLS against one etcd member: sequential range reads and put-to-watch-event delays, medians,
// p99 and ratios to Haven's client. etcd3 is not a dependency of Haven; install it apart and name it:
//   mkdir /tmp/etcd3-bench && cd /tmp/etcd3-bench && npm install etcd3@1.1.2
//   npm run build && ETCD3_DIR=/tmp/etcd3-bench node bench/etcd/etcd3-compare.mjs [READS] [WATCHES]

import { createRequire } from "node:module";
import { performance } from "node:perf_hooks";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EtcdClient } from "../../dist/src/cluster/etcd-client.js";
import { startEtcd } from "../../dist/src/cluster/etcd-process.js";
import { createCa, issueCertificate } from "../../dist/src/security/pki.js";
import { loadTlsIdentity } from "../../dist/src/security/tls-identity.js";

const READS = Number(process.argv[2] ?? 200);
const WATCHES = Number(process.argv[3] ?? 50);
if (!process.env.ETCD3_DIR) throw new Error("set ETCD3_DIR to a directory where etcd3 is installed (see the header)");
const { Etcd3 } = createRequire(join(process.env.ETCD3_DIR, "package.json"))("etcd3");

const quantile = (samples, q) =>
  [...samples].sort((a, b) => a - b)[Math.min(samples.length - 1, Math.floor(q * samples.length))];

/** Times READS reads and WATCHES put-to-event delays through `ops`. */
async function measure(name, ops) {
  await ops.put("bench/key", "value");
  for (let i = 0; i < 10; i++) await ops.get("bench/key");
  const readMs = [];
  for (let i = 0; i < READS; i++) {
    const started = performance.now();
    await ops.get("bench/key");
    readMs.push(performance.now() - started);
  }
  let arrived;
  const stop = await ops.watch("bench/watched/", () => arrived?.());
  const watchMs = [];
  for (let i = 0; i < WATCHES; i++) {
    const seen = new Promise((resolve) => (arrived = resolve));
    const started = performance.now();
    await ops.put(`bench/watched/${name.length}-${i}`, "x");
    await seen;
    watchMs.push(performance.now() - started);
  }
  await stop();
  return { name, readMs, watchMs };
}

const dir = mkdtempSync(join(tmpdir(), "haven-bench-etcd3-"));
let member;
try {
  const pki = join(dir, "pki");
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
  member = await startEtcd({ dataDir: join(dir, "data"), name: "bench", tlsDir: join(pki, "hosts", "etcd") });

  const haven = new EtcdClient([member.endpoint], { tls: identity });
  const havenOps = {
    get: (key) => haven.get(key),
    put: (key, value) => haven.put(key, value),
    watch: async (prefix, onEvent) => {
      const watch = haven.watchPrefix(prefix, {}, onEvent);
      await watch.ready;
      return async () => watch.cancel();
    },
  };
  const etcd3 = new Etcd3({
    hosts: member.endpoint,
    credentials: { rootCertificate: identity.ca, certChain: identity.cert, privateKey: identity.key },
  });
  const etcd3Ops = {
    get: (key) => etcd3.get(key).string(),
    put: (key, value) => etcd3.put(key).value(value),
    watch: async (prefix, onEvent) => {
      const watcher = await etcd3.watch().prefix(prefix).create();
      watcher.on("put", onEvent);
      return () => watcher.cancel();
    },
  };
  const rows = [await measure("haven (https, resumed)", havenOps), await measure("etcd3 1.1.2 (grpc, tls)", etcd3Ops)];
  etcd3.close();
  const base = rows[0];
  console.log(
    `${READS} sequential range reads, ${WATCHES} put-to-watch-event delays, one TLS etcd member on 127.0.0.1`,
  );
  console.log("client                    read p50  read p99  ratio   watch p50  watch p99  ratio");
  for (const row of rows) {
    const [read50, watch50] = [quantile(row.readMs, 0.5), quantile(row.watchMs, 0.5)];
    console.log(
      `${row.name.padEnd(25)} ${read50.toFixed(2).padStart(7)}ms ${quantile(row.readMs, 0.99).toFixed(2).padStart(7)}ms ` +
        `${(read50 / quantile(base.readMs, 0.5)).toFixed(2).padStart(5)}x ` +
        `${watch50.toFixed(2).padStart(8)}ms ${quantile(row.watchMs, 0.99).toFixed(2).padStart(8)}ms ` +
        `${(watch50 / quantile(base.watchMs, 0.5)).toFixed(2).padStart(5)}x`,
    );
  }
} finally {
  await member?.stop();
  rmSync(dir, { recursive: true, force: true });
}
