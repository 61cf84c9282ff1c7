// `haven cluster init` for a cluster of real machines: the CA, a certificate per host and the admin,
// what each host's config needs; then, with etcd running on a host's certificate, --etcd turns etcd's
// roles on (a user per host, the admin's token) and writes a context file the CLI works with, while a
// client without credentials is refused. Wrong arguments are refused before anything is made.

import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { startEtcd, type EtcdProcess } from "../../src/cluster/etcd-process.js";
import { EtcdClient } from "../../src/cluster/etcd-client.js";
import { keys } from "../../src/cluster/schema.js";
import { HavenError } from "../../src/core/errors.js";
import { loadTlsIdentity } from "../../src/security/tls-identity.js";
import { haveEtcd } from "../helpers/etcd.js";
import { run, tempDir } from "../helpers/server-process.js";

describe("haven cluster init", { skip: !haveEtcd() && "needs etcd" }, () => {
  const dir = tempDir("haven-cluster-init-");
  const clusterDir = join(dir.path, "cluster");
  const pki = join(clusterDir, "pki");
  const context = join(dir.path, "context.json");
  const env: NodeJS.ProcessEnv = { ...process.env, HAVEN_CONTEXT: context, HAVEN_ETCD: "", HAVEN_TLS_DIR: "" };
  const haven = (...args: string[]) => run(process.execPath, ["bin/haven.js", ...args], { env, timeoutMs: 60_000 });
  let etcd: EtcdProcess | undefined;

  after(async () => {
    await etcd?.stop();
    dir.remove();
  });

  test("wrong arguments are refused and nothing is made", async () => {
    for (const [args, message] of [
      [["--dir", clusterDir], /at least one --host/],
      [["--dir", clusterDir, "--host", "n1"], /not NAME=ADDR/],
      [["--dir", clusterDir, "--host", "n1=127.0.0.1", "--host", "n1=127.0.0.2"], /given twice/],
      [["--dir", clusterDir, "--host", "n1=127.0.0.1", "--etcd", "http://127.0.0.1:2379"], /must speak TLS/],
      [["--host", "n1=127.0.0.1"], /give --dir/],
    ] as const) {
      const result = await haven("cluster", "init", ...args);
      assert.equal(result.code, 2, `${args.join(" ")}: ${result.stderr}`);
      assert.match(result.stderr, message);
    }
    assert.equal(existsSync(pki), false, "nothing was made");
  });

  test("makes the CA and identities, then turns etcd's roles on", async () => {
    const first = await haven("cluster", "init", "--dir", clusterDir, "--host", "n1=127.0.0.1,localhost");
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stdout, /"tls": \{ "dir": ".*hosts\/n1" \}/);
    assert.match(first.stdout, /"user": "host\.n1"/);
    for (const file of ["ca/ca-key.pem", "hosts/n1/cert.pem", "operators/admin/cert.pem"])
      assert.ok(existsSync(join(pki, file)), file);

    etcd = await startEtcd({ dataDir: join(dir.path, "etcd"), name: "n1", tlsDir: join(pki, "hosts", "n1") });
    const second = await haven(
      "cluster",
      "init",
      "--dir",
      clusterDir,
      "--host",
      "n1=127.0.0.1,localhost",
      "--etcd",
      etcd.endpoint,
    );
    assert.equal(second.code, 0, second.stderr);
    assert.ok(existsSync(join(pki, "operators", "admin", "token")));
    assert.ok(existsSync(join(pki, "hosts", "n1", "etcd.password")));
    const status = await haven("status");
    assert.equal(status.code, 0, status.stderr);
    const operators = await haven("operator", "list");
    assert.match(operators.stdout, /admin\s+admin/);

    // The CA's certificate alone (no credentials) is refused now.
    const anonymous = new EtcdClient([etcd.endpoint], { tls: await loadTlsIdentity(join(pki, "operators", "admin")) });
    await assert.rejects(anonymous.get(keys.hosts()), (error: unknown) => {
      assert.ok(error instanceof HavenError && error.code === "HAVEN_ERR_UNAUTHORIZED", String(error));
      return true;
    });
    // Run again: nothing is lost, a new host is added.
    const third = await haven(
      "cluster",
      "init",
      "--dir",
      clusterDir,
      "--host",
      "n1=127.0.0.1,localhost",
      "--host",
      "n2=127.0.0.1",
      "--etcd",
      etcd.endpoint,
    );
    assert.equal(third.code, 0, third.stderr);
    assert.ok(existsSync(join(pki, "hosts", "n2", "etcd.password")));
    assert.equal((await haven("status")).code, 0);
  });
});
