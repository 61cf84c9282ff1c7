// `haven events --follow` against a real single-member etcd that is killed and started again: the
// follower says etcd is unreachable, keeps trying, says when it is back, and goes on from the last
// event it saw: an event written after the restart is printed, and none before it twice. And cut off
// (through a proxy) while etcd writes events and compacts its history past the follower's revision: it
// says so, reads the stored events again, and prints each one it missed, once.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { EtcdClient } from "../../src/cluster/etcd-client.js";
import { startEtcd, type EtcdProcess } from "../../src/cluster/etcd-process.js";
import { eventSequence, keys, type EventRecord } from "../../src/cluster/schema.js";
import { haveEtcd } from "../helpers/etcd.js";
import { killStartedProcesses, spawnHaven, tempDir } from "../helpers/server-process.js";
import { TcpProxy } from "../helpers/tcp-proxy.js";

describe("events --follow across an etcd outage", { skip: !haveEtcd() && "etcd is not installed" }, () => {
  const dir = tempDir("haven-events-follow-");
  let etcd: EtcdProcess | undefined;

  const start = async (ports?: { clientPort: number; peerPort: number }): Promise<EtcdProcess> =>
    startEtcd({ dataDir: join(dir.path, "data"), name: "follow", ...ports });

  const putEvent = async (endpoint: string, kind: string): Promise<number> => {
    const event: EventRecord = { time: new Date().toISOString(), host: "h1", kind, message: `${kind} happened` };
    return (await new EtcdClient([endpoint]).put(keys.event(eventSequence()), JSON.stringify(event))).revision;
  };

  before(async () => {
    etcd = await start();
  });

  after(async () => {
    await killStartedProcesses();
    await etcd?.stop();
    dir.remove();
  });

  test("a follower rides out etcd's kill and restart: it says so, then prints the next event, and no event twice", async () => {
    const first = etcd!;
    const { port } = new URL(first.endpoint);
    const clientPort = Number(port);
    // The peer port of the member as it was started, so the restart is the same member at the same place.
    const peerArg = first.process.spawnargs.find((arg) => arg.startsWith("--listen-peer-urls="))!;
    const peerPort = Number(new URL(peerArg.split("=")[1]!).port);
    await putEvent(first.endpoint, "before-outage");
    const follow = spawnHaven(["events", "--follow", "--utc", "--etcd", first.endpoint]);
    await follow.waitForLog(/before-outage +before-outage happened/);
    assert.match(follow.log(), /^TIME \(UTC\) +HOST +VOLUME +KIND +MESSAGE$/m, "a header line");

    first.kill("SIGKILL");
    await first.exited;
    await follow.waitForLog("etcd unreachable, retrying...");
    assert.equal(follow.process.exitCode, null, "the follower keeps running while etcd is down");

    const from = follow.log().length;
    etcd = await start({ clientPort, peerPort });
    await follow.waitForLog(/reconnected to etcd/, 30_000, from);
    await putEvent(etcd.endpoint, "after-outage");
    await follow.waitForLog(/after-outage +after-outage happened/, 20_000, from);
    assert.equal(
      follow.log().match(/before-outage happened/g)?.length,
      1,
      "the event before the outage is printed once",
    );
    assert.equal(await follow.stop("SIGINT"), 0);
  });

  test("a follower cut off while etcd compacts past its revision says so and prints each event it missed, once", async () => {
    const endpoint = etcd!.endpoint;
    const { hostname, port } = new URL(endpoint);
    const proxy = new TcpProxy(hostname, Number(port));
    await proxy.start();
    try {
      await putEvent(endpoint, "seen-first");
      const follow = spawnHaven(["events", "--follow", "--etcd", `http://127.0.0.1:${proxy.port}`]);
      await follow.waitForLog(/seen-first happened/);
      const from = follow.log().length;
      proxy.cut();
      await follow.waitForLog("etcd unreachable, retrying...", 20_000, from);
      await putEvent(endpoint, "while-cut-off");
      const revision = await putEvent(endpoint, "also-while-cut-off");
      const compacted = await fetch(`${endpoint}/v3/kv/compaction`, {
        method: "POST",
        body: JSON.stringify({ revision: String(revision), physical: true }),
      });
      assert.equal(compacted.status, 200, await compacted.text());
      proxy.restore();
      await follow.waitForLog(
        /etcd compacted its history past revision \d+: reading the stored events again/,
        30_000,
        from,
      );
      await follow.waitForLog(/also-while-cut-off happened/, 20_000, from);
      const log = follow.log();
      assert.equal(log.match(/ while-cut-off happened/g)?.length, 1, log);
      assert.equal(log.match(/also-while-cut-off happened/g)?.length, 1, log);
      assert.equal(log.match(/seen-first happened/g)?.length, 1, log);
      assert.equal(await follow.stop("SIGINT"), 0);
    } finally {
      await proxy.stop();
    }
  });
});
