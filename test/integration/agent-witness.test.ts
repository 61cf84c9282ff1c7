// Two hosts and a witness, as docs/witness.md sets them up: three etcd members (one per host, one on
// the witness), and agents that know all three endpoints. Losing the primary host entirely (its agent
// and its etcd member) leaves two of three members, a quorum: the standby promotes and every
// acknowledged write verifies. Then losing the witness too leaves one member, no quorum: nothing can
// renew a lease, so the last host fences itself and acknowledges no write (it cannot know it is alone).

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { EtcdClient } from "../../src/cluster/etcd-client.js";
import { startEtcd, type EtcdProcess } from "../../src/cluster/etcd-process.js";
import { clusterUp, type LocalClusterState } from "../../src/cluster/local-cluster.js";
import { freeBasePort, stopLocalCluster, until, TEST_TIMINGS, VolumeProbe } from "../helpers/cluster.js";
import { haveEtcd } from "../helpers/etcd.js";
import { haveTool, run, tempDir } from "../helpers/server-process.js";

const VOLUME = "witnessed";
const skip = !haveEtcd() || !haveTool("qemu-io") ? "needs etcd and qemu-io" : false;

// The suite takes about 16 s; one still running after 2 minutes is hung.
describe("two hosts and a witness", { skip, timeout: 120_000 }, () => {
  const dir = tempDir("haven-witness-");
  const members = new Map<string, EtcdProcess>();
  let cluster: LocalClusterState;
  let etcd: EtcdClient;
  let basePort = 0;

  let probe: VolumeProbe;
  const primary = () => probe.primary();
  const qemuIo = (host: string, command: string) => probe.qemuIo(host, command);

  before(async () => {
    basePort = await freeBasePort();
    // Members h1, h2 and w: client ports base+50.., peer ports base+60.. (clear of the agents' ports).
    const names = ["h1", "h2", "w"];
    const initialCluster = names.map((name, i) => `${name}=http://127.0.0.1:${basePort + 60 + i}`).join(",");
    const starts = await Promise.allSettled(
      names.map((name, i) =>
        startEtcd({
          dataDir: join(dir.path, `etcd-${name}`),
          name,
          clientPort: basePort + 50 + i,
          peerPort: basePort + 60 + i,
          initialCluster,
        }),
      ),
    );
    // The members that did start are stopped by the after hook, also when another one failed.
    starts.forEach((start, i) => start.status === "fulfilled" && members.set(names[i]!, start.value));
    const failed = starts.find((start) => start.status === "rejected");
    if (failed !== undefined) throw failed.reason;
    const endpoints = [...members.values()].map((member) => member.endpoint);
    etcd = new EtcdClient(endpoints);
    probe = new VolumeProbe(etcd, VOLUME, basePort);
    cluster = await clusterUp({
      dir: join(dir.path, "cluster"),
      hosts: 2,
      basePort,
      timings: { ...TEST_TIMINGS },
      etcdEndpoints: endpoints,
    });
    const created = await run(
      process.execPath,
      ["bin/haven.js", "volume", "create", VOLUME, "--size", "64M", "--etcd", endpoints.join(",")],
      { timeoutMs: 60_000 },
    );
    assert.equal(created.code, 0, created.stderr);
  });

  after(async () => {
    await stopLocalCluster(join(dir.path, "cluster"));
    for (const member of members.values()) await member.stop();
    dir.remove();
  });

  test("losing the primary host with its etcd member: the witness keeps a quorum and the standby takes over", async () => {
    const first = (await primary())!;
    const standby = first.host === "h1" ? "h2" : "h1";
    assert.ok(await qemuIo(first.host, "write -P 0x5a 0 4M"));
    process.kill(cluster.agents.find((agent) => agent.name === first.host)!.pid, "SIGKILL");
    members.get(first.host)!.kill("SIGKILL");
    const promoted = await until(
      "the standby to promote",
      async () => {
        const now = await primary();
        return now?.host === standby ? now : undefined;
      },
      60_000,
    );
    assert.equal(promoted.epoch, first.epoch + 1);
    await until("the new primary to serve", async () => ((await qemuIo(standby, "read 0 4k")) ? true : undefined));
    assert.ok(await qemuIo(standby, "read -P 0x5a 0 4M"), "the write acknowledged before the loss reads back");
  });

  test("losing the witness as well: no quorum, so the last host fences itself and acknowledges nothing", async () => {
    const last = (await primary())!.host;
    assert.ok(await qemuIo(last, "write -P 0x6b 4M 4k"), "writes go on while two members remain");
    members.get("w")!.kill("SIGKILL");
    await until(
      "the last host to stop acknowledging writes",
      async () => ((await qemuIo(last, "write -P 0x7c 8M 4k")) ? undefined : true),
      30_000,
    );
  });
});
