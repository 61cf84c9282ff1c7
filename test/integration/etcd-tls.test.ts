// etcd under the cluster CA (issue 16): the member started with a host identity speaks TLS only and
// asks every client for a certificate of the same CA, so a client without one, or with one of another
// CA, is refused before it can read a key; Haven's client, holding an identity of the cluster, reads,
// writes, compares-and-swaps and watches over TLS as it did over plain HTTP.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { request } from "node:https";
import { join } from "node:path";
import { EtcdClient, type WatchEvent } from "../../src/cluster/etcd-client.js";
import { createCa, issueCertificate } from "../../src/security/pki.js";
import { loadTlsIdentity, type TlsIdentity } from "../../src/security/tls-identity.js";
import { haveEtcd, startTestEtcd, type TestEtcd } from "../helpers/etcd.js";
import { tempDir } from "../helpers/server-process.js";
import { failsWith } from "../helpers/errors.js";

/** POSTs a range read with node's https and whatever credentials are given; resolves with how it went. */
function rawRange(endpoint: string, credentials: { ca: Buffer; cert?: Buffer; key?: Buffer }): Promise<string> {
  return new Promise((resolve) => {
    const url = new URL("/v3/kv/range", endpoint);
    const req = request(
      { host: url.hostname, port: url.port, path: url.pathname, method: "POST", agent: false, ...credentials },
      (response) => {
        response.resume();
        response.once("end", () => resolve(`HTTP ${response.statusCode}`));
      },
    );
    req.once("error", (error) => resolve(`error: ${error.message}`));
    req.setTimeout(5_000, () => req.destroy(new Error("timed out")));
    req.end(JSON.stringify({ key: Buffer.from("secret").toString("base64") }));
  });
}

describe("etcd with mutual TLS under the cluster CA", { skip: !haveEtcd() && "etcd is not installed" }, () => {
  const dir = tempDir("haven-etcd-tls-");
  let etcd: TestEtcd;
  let admin: TlsIdentity;
  let stranger: TlsIdentity;

  before(async () => {
    const pki = join(dir.path, "pki");
    await createCa(join(pki, "ca"), "tls-test");
    await issueCertificate(join(pki, "ca"), join(pki, "hosts", "etcd"), {
      kind: "host",
      name: "etcd",
      addresses: ["127.0.0.1", "localhost"],
    });
    await issueCertificate(join(pki, "ca"), join(pki, "operators", "admin"), {
      kind: "operator",
      name: "admin",
      role: "admin",
    });
    await createCa(join(dir.path, "other-ca"), "another-cluster");
    await issueCertificate(join(dir.path, "other-ca"), join(dir.path, "other-admin"), {
      kind: "operator",
      name: "admin",
      role: "admin",
    });
    admin = await loadTlsIdentity(join(pki, "operators", "admin"));
    stranger = await loadTlsIdentity(join(dir.path, "other-admin"));
    etcd = await startTestEtcd("haven-etcd-tls-data-", join(pki, "hosts", "etcd"));
  });

  after(async () => {
    await etcd?.stop();
    dir.remove();
  });

  test("etcd serves https only: its endpoint is https://", () => {
    assert.match(etcd.endpoint, /^https:\/\/127\.0\.0\.1:\d+$/);
  });

  test("a client of the cluster CA is answered (the check below can tell refusal from success)", async () => {
    assert.equal(await rawRange(etcd.endpoint, { ca: admin.ca, cert: admin.cert, key: admin.key }), "HTTP 200");
  });

  test("a client without a certificate is refused", async () => {
    assert.match(await rawRange(etcd.endpoint, { ca: admin.ca }), /^error: /);
  });

  test("a client with a certificate of another CA is refused", async () => {
    assert.match(await rawRange(etcd.endpoint, { ca: admin.ca, cert: stranger.cert, key: stranger.key }), /^error: /);
  });

  test("plain HTTP to the TLS port gets no answer from the store", async () => {
    const plain = new EtcdClient([etcd.endpoint.replace("https://", "http://")], { requestTimeoutMs: 1_500 });
    await assert.rejects(plain.get("anything"));
  });

  test("Haven's client with a stranger's identity fails as etcd unreachable, naming the endpoint", async () => {
    const client = new EtcdClient([etcd.endpoint], { tls: stranger, requestTimeoutMs: 2_000 });
    await assert.rejects(client.get("k"), failsWith("HAVEN_ERR_UNAVAILABLE", new RegExp(etcd.endpoint)));
  });

  test("an https endpoint without an identity is a config error", () => {
    assert.throws(() => new EtcdClient([etcd.endpoint]), /HAVEN_ERR_CONFIG|uses TLS but no client identity/);
  });

  test("Haven's client puts, gets, compares-and-swaps and watches over TLS", async () => {
    const client = new EtcdClient([etcd.endpoint], { tls: admin });
    const events: WatchEvent[] = [];
    let seen!: () => void;
    const second = new Promise<void>((resolve) => (seen = resolve));
    const watch = client.watchPrefix("tls/", {}, (event) => {
      events.push(event);
      if (events.length === 2) seen();
    });
    try {
      await watch.ready;
      const { revision } = await client.put("tls/a", "one");
      assert.equal((await client.get("tls/a"))?.value, "one");
      assert.equal(await client.putIf("tls/a", "two", { expectModRevision: revision }), true);
      assert.equal(await client.putIf("tls/a", "three", { expectModRevision: revision }), false);
      assert.equal((await client.get("tls/a"))?.value, "two");
      await Promise.race([second, new Promise((_, reject) => setTimeout(() => reject(new Error("no events")), 5_000))]);
      assert.deepEqual(
        events.map((event) => (event.type === "PUT" ? event.value : "deleted")),
        ["one", "two"],
      );
    } finally {
      watch.cancel();
    }
  });

  test("many requests in a row reuse the TLS session and all succeed", async () => {
    const client = new EtcdClient([etcd.endpoint], { tls: admin });
    await client.put("tls/many", "x");
    for (let i = 0; i < 20; i++) assert.equal((await client.get("tls/many"))?.value, "x");
  });
});
