// Operators' roles enforced by etcd itself (a real etcd with authentication on): a viewer reads but
// writes nothing, an operator writes the day-to-day keys (handovers, VMs) but not volumes, an admin
// adds and revokes operators, a revoked token stops working at once, and a client without credentials
// is told why it was refused.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { bootstrapAuth, hostUser, addUser, etcdRolesFor } from "../../src/cluster/etcd-auth.js";
import { addOperator, listOperators, revokeOperator, tokenDigest } from "../../src/cluster/operators.js";
import { keys } from "../../src/cluster/schema.js";
import { HavenError } from "../../src/core/errors.js";
import { haveEtcd, startTestEtcd, type TestEtcd } from "../helpers/etcd.js";

const ROOT_PASSWORD = "root-password-for-the-test";
let etcd: TestEtcd;

before(async () => {
  if (!haveEtcd()) return;
  etcd = await startTestEtcd("haven-roles-");
  const bootstrap = etcd.client();
  await bootstrapAuth(bootstrap.auth.bind(bootstrap), ROOT_PASSWORD);
});
after(() => etcd?.stop());

const refusedWith = (code: string, message?: RegExp) => (error: unknown) => {
  assert.ok(error instanceof HavenError, String(error));
  assert.equal(error.code, code, error.message);
  if (message !== undefined) assert.match(error.message, message);
  return true;
};

test(
  "roles: viewer reads only, operator writes handovers and VMs but not volumes, revoked tokens die",
  { skip: !haveEtcd() },
  async () => {
    const root = etcd.client({ credentials: { user: "root", password: ROOT_PASSWORD } });
    const rootCall = root.auth.bind(root);
    // A host's agent: reads and writes everything under /haven/.
    await addUser(rootCall, hostUser("h1"), "host-password-h1", etcdRolesFor("host"));
    const host = etcd.client({ credentials: { user: hostUser("h1"), password: "host-password-h1" } });
    await host.put(keys.volume("v1"), "{}");

    const alice = await addOperator(root, rootCall, { name: "alice", role: "viewer" }, "root@test");
    const bob = await addOperator(root, rootCall, { name: "bob", role: "operator" }, "root@test");
    assert.equal(alice.record.tokenSha256, tokenDigest(alice.token));
    assert.deepEqual(
      (await listOperators(root)).map((record) => `${record.name}:${record.role}`),
      ["alice:viewer", "bob:operator"],
    );

    const viewer = etcd.client({ credentials: { user: "alice", password: alice.token } });
    assert.equal((await viewer.get(keys.volume("v1")))?.value, "{}", "a viewer reads");
    await assert.rejects(
      viewer.put(keys.handover("v1"), "{}"),
      refusedWith("HAVEN_ERR_FORBIDDEN", /permission denied/),
    );
    await assert.rejects(viewer.put(keys.event("1"), "{}"), refusedWith("HAVEN_ERR_FORBIDDEN"));

    const operator = etcd.client({ credentials: { user: "bob", password: bob.token } });
    await operator.put(keys.handover("v1"), "{}");
    await operator.put(keys.vm("web"), "{}");
    await assert.rejects(operator.put(keys.volume("v2"), "{}"), refusedWith("HAVEN_ERR_FORBIDDEN"));
    await assert.rejects(operator.delete(keys.volume("v1")), refusedWith("HAVEN_ERR_FORBIDDEN"));
    // Only an admin (root role) manages operators.
    await assert.rejects(
      addOperator(operator, operator.auth.bind(operator), { name: "mallory", role: "admin" }, "bob@test"),
      refusedWith("HAVEN_ERR_FORBIDDEN"),
    );

    // Revoked: the viewer's client held a working token; its next call is refused, and so is a new login.
    await revokeOperator(root, rootCall, "alice", "root@test");
    await assert.rejects(viewer.get(keys.volume("v1")), refusedWith("HAVEN_ERR_UNAUTHORIZED", /alice/));
    await assert.rejects(
      etcd.client({ credentials: { user: "alice", password: alice.token } }).get(keys.volume("v1")),
      refusedWith("HAVEN_ERR_UNAUTHORIZED"),
    );
    assert.deepEqual(
      (await listOperators(root)).map((record) => record.name),
      ["bob"],
    );

    // No credentials at all: refused, saying what is missing.
    await assert.rejects(etcd.client().get(keys.volume("v1")), refusedWith("HAVEN_ERR_UNAUTHORIZED", /no credentials/));
    // A wrong password for a known user.
    await assert.rejects(
      etcd.client({ credentials: { user: "bob", password: "not-bobs-token" } }).get(keys.volume("v1")),
      refusedWith("HAVEN_ERR_UNAUTHORIZED"),
    );
  },
);
