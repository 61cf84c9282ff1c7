// A host with the wrong cluster secret is refused: its agent joins etcd (the API token and etcd are
// separate credentials), but the replication connections between it and the other host fail the
// challenge-response in both directions. Its copy is never readmitted to the in-sync set, the heartbeat
// links on both sides say why they are down, and nothing it could send reaches the volume. With the
// right secret back, the same host rejoins and resyncs.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { clusterUp, localClusterClient, type LocalClusterState } from "../../src/cluster/local-cluster.js";
import type { EtcdClient } from "../../src/cluster/etcd-client.js";
import { keys, parseHostHealthRecord } from "../../src/cluster/schema.js";
import { haveEtcd } from "../helpers/etcd.js";
import { haveTool, tempDir } from "../helpers/server-process.js";
import {
  ClusterAgents,
  createTestVolume,
  freeBasePort,
  stopLocalCluster,
  until,
  TEST_TIMINGS,
  VolumeProbe,
} from "../helpers/cluster.js";

const VOLUME = "secret";
const skip = !haveEtcd() || !haveTool("qemu-io") ? "needs etcd and qemu-io" : false;

// The suite takes about 17 s; one still running after 2 minutes is hung.
describe("a host with the wrong cluster secret", { skip, timeout: 120_000 }, () => {
  const dir = tempDir("haven-secret-");
  let cluster: LocalClusterState;
  let etcd: EtcdClient;
  let probe: VolumeProbe;
  const agents = new ClusterAgents(() => cluster);
  const link = async (from: string, to: string) => {
    const kv = await etcd.get(keys.health(from));
    return kv && parseHostHealthRecord(kv.value, kv.key).links.find((l) => l.peer === to);
  };

  before(async () => {
    const basePort = await freeBasePort();
    cluster = await clusterUp({ dir: join(dir.path, "cluster"), hosts: 2, basePort, timings: { ...TEST_TIMINGS } });
    etcd = await localClusterClient(cluster);
    probe = new VolumeProbe(etcd, VOLUME, basePort);
    await createTestVolume(cluster, VOLUME, "16M");
  });

  after(async () => {
    agents.killRestarted();
    await stopLocalCluster(join(dir.path, "cluster"));
    dir.remove();
  });

  test("is refused on every replication link, its copy never rejoins, and the links say why", async () => {
    const primary = (await probe.primary())!.host;
    const other = primary === "h1" ? "h2" : "h1";
    await until("the link between the hosts to be up", async () =>
      (await link(primary, other))?.up ? true : undefined,
    );

    const configFile = agents.agent(other).config;
    const original = readFileSync(configFile, "utf8");
    const config = JSON.parse(original) as { replication: { secretFile: string } };
    const wrongSecret = join(dir.path, "wrong.secret");
    writeFileSync(wrongSecret, randomBytes(32).toString("hex"), { mode: 0o600 });
    writeFileSync(
      configFile,
      JSON.stringify({ ...config, replication: { ...config.replication, secretFile: wrongSecret } }),
    );
    process.kill(agents.pid(other), "SIGKILL");
    assert.ok(await probe.qemuIo(primary, "write -P 0x5a 0 1M"), "the primary writes on without the other copy");
    agents.restart(other);

    const refused = /refused us|does not match the shared secret/;
    const outgoing = await until("the primary's link to the host to be down", async () => {
      const found = await link(primary, other);
      return found && !found.up && refused.test(found.detail) ? found : undefined;
    });
    assert.match(outgoing.detail, refused);
    const incoming = await until("the host's link to the primary to be down", async () => {
      const found = await link(other, primary);
      return found && !found.up && refused.test(found.detail) ? found : undefined;
    });
    assert.match(incoming.detail, refused);
    // The host holds a lease (etcd is a separate credential) yet its copy stays out of the in-sync set.
    const watchUntil = Date.now() + 2 * TEST_TIMINGS.leaseTtlMs;
    while (Date.now() < watchUntil) {
      assert.equal((await probe.replica(other))?.state, "out-of-sync", "a copy behind the wrong secret rejoined");
      assert.equal((await probe.primary())?.host, primary);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    assert.ok(await etcd.get(keys.host(other)), "the host holds its lease");

    // The right secret back: the same host rejoins and its copy resyncs.
    writeFileSync(configFile, original);
    process.kill(agents.pid(other), "SIGKILL");
    agents.restart(other);
    await until(
      "the copy to resync into the in-sync set",
      async () => ((await probe.replica(other))?.state === "in-sync" ? true : undefined),
      60_000,
    );
    await until("the link to be up again", async () => ((await link(primary, other))?.up ? true : undefined));
    assert.ok(await probe.qemuIo(primary, "read -P 0x5a 0 1M"));
  });
});
