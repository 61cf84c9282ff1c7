// Creating volumes against a real etcd while other creates race: placement never over-promises a disk,
// because a create's transaction holds only if no volume spec was written since the snapshot it placed
// on; a create that loses places again on what the winners took, a bounded number of times, and a name
// taken meanwhile is still reported as existing.

import { after, before, beforeEach, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readClusterRecords } from "../../src/cluster/cluster-read.js";
import { EtcdClient, type Compare, type TxnOperation, type TxnResult } from "../../src/cluster/etcd-client.js";
import { keys, CLUSTER_PREFIX, type HostRecord, type VolumeSpec } from "../../src/cluster/schema.js";
import { createVolume } from "../../src/cluster/volume-admin.js";
import { GiB, hostRecord, TIME } from "../helpers/cluster-records.js";
import { haveEtcd, startTestEtcd, type TestEtcd } from "../helpers/etcd.js";
import { failsWith } from "../helpers/errors.js";

const options = { actor: "test@volume-admin" };

/** A client that runs `before` ahead of each transaction that writes a volume spec (a create's). */
class InterferingClient extends EtcdClient {
  creates = 0;

  constructor(
    endpoint: string,
    private readonly before: (attempt: number) => Promise<void>,
  ) {
    super([endpoint]);
  }

  override async txn(compare: Compare[], success: TxnOperation[], failure: TxnOperation[]): Promise<TxnResult> {
    const createsVolume = success.some((op) => op.type === "put" && op.key.startsWith(keys.volumes()));
    if (createsVolume) await this.before(++this.creates);
    return super.txn(compare, success, failure);
  }
}

const skip = !haveEtcd() && "etcd is not installed";

// The suite takes about 2 s; one still running after 60 s is hung.
describe("volume creation against a real etcd", { skip, timeout: 60_000 }, () => {
  let etcd: TestEtcd;
  let client: EtcdClient;

  async function addHosts(hosts: HostRecord[]): Promise<void> {
    for (const host of hosts) {
      await client.put(keys.host(host.name), JSON.stringify(host));
      await client.put(keys.hostInfo(host.name), JSON.stringify(host));
    }
  }

  /** Every disk's promised bytes must fit in what its host reports free. */
  async function assertNoDiskOverPromised(): Promise<void> {
    const records = await readClusterRecords(client);
    for (const host of records.knownHosts.values()) {
      for (const disk of host.disks) {
        const promised = [...records.volumes.values()]
          .filter((volume) => volume.replicas.some((r) => r.host === host.name && r.disk === disk.name))
          .reduce((sum, volume) => sum + volume.sizeBytes, 0);
        assert.ok(
          promised <= disk.capacityBytes - disk.usedBytes,
          `${host.name}/${disk.name}: ${promised} bytes promised, ${disk.capacityBytes - disk.usedBytes} free`,
        );
      }
    }
  }

  before(async () => {
    etcd = await startTestEtcd();
    client = etcd.client();
  });
  beforeEach(async () => {
    await client.deletePrefix(CLUSTER_PREFIX);
  });
  after(async () => {
    await etcd?.stop();
  });

  test("creates racing for the last room on the disks: exactly one wins, the rest get no space, no disk is over-promised", async () => {
    const disks = [{ name: "d0", capacityBytes: 10 * GiB, usedBytes: 0 }];
    await addHosts(["node1", "node2", "node3"].map((name) => hostRecord(name, { disks })));
    // 6 GiB of each 10 GiB disk promised: room for exactly one more volume of 3 GiB.
    await createVolume(client, { name: "base", sizeBytes: 6 * GiB, copies: 3 }, options);

    const names = Array.from({ length: 12 }, (_, index) => `race${index}`);
    const outcomes = await Promise.allSettled(
      names.map((name) => createVolume(etcd.client(), { name, sizeBytes: 3 * GiB, copies: 3 }, options)),
    );
    const won = outcomes.filter((outcome) => outcome.status === "fulfilled");
    assert.equal(won.length, 1, `exactly one create wins: ${outcomes.map((o) => o.status).join(", ")}`);
    for (const outcome of outcomes) {
      if (outcome.status === "rejected") {
        failsWith("HAVEN_ERR_NO_SPACE", /only 0 of 3 live hosts qualify/)(outcome.reason);
      }
    }
    const volumes = (await readClusterRecords(client)).volumes;
    assert.deepEqual([...volumes.keys()].sort(), ["base", won[0]!.value.spec.name].sort());
    await assertNoDiskOverPromised();
  });

  test("creates racing with room for all: each that loses places again on what the others took", async () => {
    await addHosts(["node1", "node2", "node3", "node4"].map((name) => hostRecord(name)));
    const names = ["a", "b", "c", "d"];
    const created = await Promise.all(
      names.map((name) => createVolume(etcd.client(), { name, sizeBytes: GiB, copies: 1 }, options)),
    );
    // All four read the same empty cluster, but each create's placement holds only on the state it saw,
    // so the hosts with fewer copies come first every time: one copy per host.
    assert.deepEqual(created.map((volume) => volume.spec.replicas[0]!.host).sort(), [
      "node1",
      "node2",
      "node3",
      "node4",
    ]);
    await assertNoDiskOverPromised();
  });

  test("a create that keeps losing to other creates gives up after 5 attempts, writes nothing, and says to run it again", async () => {
    await addHosts([hostRecord("node1")]);
    const other = (attempt: number): VolumeSpec => ({
      name: `other${attempt}`,
      sizeBytes: GiB,
      replicas: [{ host: "node1", disk: "ssd0" }],
      createdAt: TIME,
    });
    const interfering = new InterferingClient(etcd.endpoint, async (attempt) => {
      await client.put(keys.volume(other(attempt).name), JSON.stringify(other(attempt)));
    });
    await assert.rejects(
      createVolume(interfering, { name: "unlucky", sizeBytes: GiB, copies: 1 }, options),
      failsWith(
        "HAVEN_ERR_CONFLICT",
        /^the cluster changed while volume "unlucky" was being placed .*5 times in a row.*; run it again$/,
      ),
    );
    assert.equal(interfering.creates, 5);
    assert.equal(await client.get(keys.volume("unlucky")), undefined);
    assert.equal(await client.get(keys.primary("unlucky")), undefined);
    assert.deepEqual(await client.getPrefix(keys.replicasOf("unlucky")), []);
  });

  test("a name taken between the read and the write is reported as existing, not placed again", async () => {
    await addHosts([hostRecord("node1"), hostRecord("node2")]);
    const interfering = new InterferingClient(etcd.endpoint, async () => {
      await createVolume(client, { name: "web", sizeBytes: GiB, copies: 1 }, options);
    });
    await assert.rejects(
      createVolume(interfering, { name: "web", sizeBytes: 2 * GiB, copies: 2 }, options),
      failsWith("HAVEN_ERR_CONFLICT", /^volume "web" already exists \(created .*\); choose another name/),
    );
    assert.equal(interfering.creates, 1);
    assert.equal((await readClusterRecords(client)).volumes.get("web")?.sizeBytes, GiB);
  });

  test("a disk that failed its host's latest health check gets no copy", async () => {
    await addHosts([
      hostRecord("node1", {
        disks: [
          { name: "d0", capacityBytes: 500 * GiB, usedBytes: 0 },
          { name: "d1", capacityBytes: 100 * GiB, usedBytes: 0 },
        ],
      }),
    ]);
    const health = {
      checkedAt: TIME,
      eventLoopLagMs: 1,
      problems: ["disk d0: fsync failed"],
      copies: [],
      disks: [{ name: "d0", ok: false, detail: "fsync failed: EIO", probeMs: null }],
      links: [],
    };
    await client.put(keys.health("node1"), JSON.stringify(health));
    const created = await createVolume(client, { name: "v", sizeBytes: GiB, copies: 1 }, options);
    assert.deepEqual(created.spec.replicas, [{ host: "node1", disk: "d1" }]);
    await assert.rejects(
      createVolume(client, { name: "big", sizeBytes: 200 * GiB, copies: 1 }, options),
      failsWith("HAVEN_ERR_NO_SPACE", /and disk d0 failed its health check \(fsync failed: EIO\)/),
    );
  });
});
