// `haven events --follow` against a real single-member etcd that is killed and started again: the
// follower says etcd is unreachable, keeps trying, says when it is back, and goes on from the last
// event it saw: an event written after the restart is printed, and none before it twice.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { EtcdClient } from "../../src/cluster/etcd-client.js";
import { startEtcd, type EtcdProcess } from "../../src/cluster/etcd-process.js";
import { eventSequence, keys, type EventRecord } from "../../src/cluster/schema.js";
import { haveEtcd } from "../helpers/etcd.js";
import { killStartedProcesses, spawnHaven, tempDir } from "../helpers/server-process.js";

describe("events --follow across an etcd outage", { skip: !haveEtcd() && "etcd is not installed" }, () => {
  const dir = tempDir("haven-events-follow-");
  let etcd: EtcdProcess | undefined;

  const start = async (ports?: { clientPort: number; peerPort: number }): Promise<EtcdProcess> =>
    startEtcd({ dataDir: join(dir.path, "data"), name: "follow", ...ports });

  const putEvent = async (endpoint: string, kind: string): Promise<void> => {
    const event: EventRecord = { time: new Date().toISOString(), host: "h1", kind, message: `${kind} happened` };
    await new EtcdClient([endpoint]).put(keys.event(eventSequence()), JSON.stringify(event));
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
});
