// A real single-member etcd for one test file: started in a temporary directory with startEtcd (the
// same code `haven cluster up` will use) and removed with its data when the tests are done (stop() in
// an after hook). One still running when the test process exits is killed then.

import { join } from "node:path";
import { EtcdClient, type EtcdClientOptions } from "../../src/cluster/etcd-client.js";
import { startEtcd, type EtcdProcess } from "../../src/cluster/etcd-process.js";
import { haveTool, tempDir } from "./server-process.js";

export interface TestEtcd {
  readonly etcd: EtcdProcess;
  readonly endpoint: string;
  /** A client of this etcd; each call gives a new one. */
  client(options?: EtcdClientOptions): EtcdClient;
  /** Stops etcd and deletes its data directory. */
  stop(): Promise<void>;
}

/** True when etcd is installed; outside CI a test without it skips (haveTool throws in CI instead). */
export function haveEtcd(): boolean {
  return haveTool("etcd");
}

/** The etcd processes started here and not stopped yet. */
const running = new Set<EtcdProcess>();

process.once("exit", () => {
  for (const etcd of running) etcd.kill("SIGKILL");
});

/** Starts etcd; with tlsDir (a host identity valid for 127.0.0.1) it asks clients for certificates. */
export async function startTestEtcd(prefix = "haven-etcd-", tlsDir?: string): Promise<TestEtcd> {
  const dir = tempDir(prefix);
  let etcd: EtcdProcess;
  try {
    etcd = await startEtcd({ dataDir: join(dir.path, "data"), name: "test", ...(tlsDir !== undefined && { tlsDir }) });
  } catch (error) {
    dir.remove();
    throw error;
  }
  running.add(etcd);
  return {
    etcd,
    endpoint: etcd.endpoint,
    client: (options) => new EtcdClient([etcd.endpoint], options),
    stop: async () => {
      await etcd.stop();
      running.delete(etcd);
      dir.remove();
    },
  };
}
