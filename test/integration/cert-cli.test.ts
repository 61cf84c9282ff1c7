// `haven cert` over a cluster's PKI directory, and `haven status` warning about certificates near their
// end: issue a host and an operator, list them with expiry (one issued for 10 days is marked), renew
// one in place (new serial and expiry, same identity), and every wrong use refused with a clear message.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { createCa, readCertificate } from "../../src/security/pki.js";
import { haveEtcd, startTestEtcd, type TestEtcd } from "../helpers/etcd.js";
import { run, tempDir } from "../helpers/server-process.js";

interface ListedCert {
  kind: string;
  name: string;
  role: string | null;
  serial: string;
  daysLeft: number;
  state: string;
}

describe("haven cert lists, issues and renews the cluster's certificates", () => {
  const dir = tempDir("haven-cert-cli-");
  const clusterDir = join(dir.path, "cluster");
  const pki = join(clusterDir, "pki");
  const context = join(dir.path, "context.json");
  const env: NodeJS.ProcessEnv = { ...process.env, HAVEN_CONTEXT: context, HAVEN_ETCD: "", HAVEN_TLS_DIR: "" };
  const haven = (...args: string[]) => run(process.execPath, ["bin/haven.js", ...args], { env, timeoutMs: 60_000 });
  const list = async (): Promise<ListedCert[]> => {
    const listed = await haven("cert", "list", "--dir", clusterDir, "--json");
    assert.equal(listed.code, 0, listed.stderr);
    return JSON.parse(listed.stdout) as ListedCert[];
  };

  before(async () => {
    await createCa(join(pki, "ca"), "cert-cli");
  });
  after(() => dir.remove());

  test("issue makes a host's and an operator's identity; list shows both and marks the one near its end", async () => {
    const host = await haven("cert", "issue", "host", "h9", "--address", "10.0.0.9,h9.example", "--dir", clusterDir);
    assert.equal(host.code, 0, host.stderr);
    const hostInfo = await readCertificate(join(pki, "hosts", "h9", "cert.pem"));
    assert.deepEqual([...hostInfo.altNames].sort(), ["10.0.0.9", "h9", "h9.example"]);
    const alice = await haven("cert", "issue", "operator", "alice", "--role", "viewer", "--days", "10", "--dir", pki);
    assert.equal(alice.code, 0, alice.stderr);

    const listed = await list();
    assert.deepEqual(
      listed.map((cert) => [cert.kind, cert.name, cert.role, cert.state]),
      [
        ["ca", listed[0]!.name, null, "ok"],
        ["host", "h9", null, "ok"],
        ["operator", "alice", "viewer", "expiring"],
      ],
    );
    assert.ok(listed[2]!.daysLeft >= 9 && listed[2]!.daysLeft <= 10, `alice has ${listed[2]!.daysLeft} days left`);
    const table = await haven("cert", "list", "--dir", clusterDir);
    assert.match(table.stdout, /^operator\s+alice\s+viewer\s+\S+\s+\S+\s+(9|10)\s+expires within 30 days$/m);
    assert.match(table.stdout, /^host\s+h9\s+-\s+\S+\s+\S+\s+36[45]$/m);
  });

  test("renew issues the same identity again with a new serial and expiry", async () => {
    const before = (await list()).find((cert) => cert.name === "alice")!;
    const renewed = await haven("cert", "renew", "alice", "--days", "400", "--dir", clusterDir);
    assert.equal(renewed.code, 0, renewed.stderr);
    const after = (await list()).find((cert) => cert.name === "alice")!;
    assert.notEqual(after.serial, before.serial);
    assert.equal(after.role, "viewer");
    assert.equal(after.state, "ok");
    assert.ok(after.daysLeft >= 399);
    const host = await haven("cert", "renew", "h9", "--dir", clusterDir);
    assert.equal(host.code, 0, host.stderr);
    const hostInfo = await readCertificate(join(pki, "hosts", "h9", "cert.pem"));
    assert.deepEqual([...hostInfo.altNames].sort(), ["10.0.0.9", "h9", "h9.example"], "the host keeps its addresses");
  });

  test("wrong uses are refused, each saying what to do", async () => {
    const cases: [string[], RegExp][] = [
      [["cert", "issue", "host", "h8"], /a host's certificate names its addresses: --address/],
      [["cert", "issue", "host", "h8", "--address", "1.2.3.4", "--role", "admin"], /--role is for operators/],
      [["cert", "issue", "operator", "bob"], /names a role: --role viewer\|operator\|admin/],
      [["cert", "issue", "operator", "bob", "--role", "root"], /--role viewer\|operator\|admin, not "root"/],
      [["cert", "issue", "vm", "x"], /"vm" is not host or operator/],
      [["cert", "issue", "operator", "bad/name", "--role", "admin"], /is not a host or operator name/],
      [
        ["cert", "issue", "operator", "alice", "--role", "admin"],
        /operator alice has a certificate already.*cert renew alice/,
      ],
      [["cert", "issue", "host", "h8", "--address", "1.2.3.4", "--days", "0"], /--days must be a whole number/],
      [["cert", "renew", "nobody"], /no host or operator named nobody/],
      [["cert", "renew"], /name the identity to renew/],
      [["cert", "list", "--role", "admin"], /--role does not apply to 'haven cert list'/],
    ];
    for (const [args, message] of cases) {
      const refused = await haven(...args, "--dir", clusterDir);
      assert.notEqual(refused.code, 0, args.join(" "));
      assert.match(refused.stderr, message, args.join(" "));
    }
    const nowhere = await haven("cert", "list", "--dir", join(dir.path, "empty"));
    assert.notEqual(nowhere.code, 0);
    assert.match(nowhere.stderr, /holds no cluster CA/);
  });

  describe("haven status", { skip: !haveEtcd() && "etcd is not installed" }, () => {
    let etcd: TestEtcd;
    before(async () => {
      etcd = await startTestEtcd("haven-cert-status-");
      writeFileSync(context, JSON.stringify({ etcd: [etcd.endpoint], clusterDir }));
    });
    after(async () => etcd?.stop());

    test("warns about a certificate that expires within 30 days, and not once it is renewed", async () => {
      const short = await haven("cert", "issue", "operator", "carol", "--role", "operator", "--days", "10");
      assert.equal(short.code, 0, short.stderr);
      const warned = await haven("status");
      assert.equal(warned.code, 0, warned.stderr);
      assert.match(
        warned.stderr,
        /^warning: operator carol's certificate expires in (9|10) days \(.*\): 'haven cert renew carol'$/m,
      );
      const json = await haven("status", "--json");
      assert.doesNotThrow(() => JSON.parse(json.stdout), "--json keeps stdout JSON");
      assert.equal((await haven("cert", "renew", "carol")).code, 0);
      const quiet = await haven("status");
      assert.equal(quiet.code, 0, quiet.stderr);
      assert.doesNotMatch(quiet.stderr, /warning/);
    });
  });
});
