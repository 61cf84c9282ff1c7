// Heartbeats over the replication links: a link is down after missLimit heartbeats missed in a row, up
// again after one answer; start-up is not news, a peer that never answers is; links follow the peer set.

import assert from "node:assert/strict";
import { LinkTracker, PeerLinks, type LinkChange, type Pinger } from "../../src/agent/peer-links.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** Every test here takes well under a second, and waits for a link at most 5 s; past this bound it is hung. */
const test = boundedTest(15_000);

test("a link is reported down only after missLimit heartbeats missed in a row, and up after one answer", () => {
  const link = new LinkTracker("h2", 3);
  assert.equal(link.answered(0.5), undefined, "the first answer after start-up is not news");
  assert.equal(link.up, true);
  assert.equal(link.tick(), undefined);
  link.failed("connection refused");
  assert.equal(link.tick(), undefined, "one miss");
  assert.equal(link.tick(), undefined, "two misses");
  assert.deepEqual(link.tick(), {
    peer: "h2",
    up: false,
    detail: "3 heartbeats missed in a row (connection refused)",
  });
  assert.equal(link.tick(), undefined, "down is reported once");
  assert.equal(link.health().up, false);
  const back = link.answered(1.25);
  assert.equal(back?.up, true);
  assert.match(back!.detail, /round trip 1\.3 ms|round trip 1\.2 ms/);
  assert.deepEqual(link.health(), { peer: "h2", up: true, rttMs: 1.25, detail: "ok" });
});

test("an answer between ticks resets the count: misses must be consecutive", () => {
  const link = new LinkTracker("h2", 2);
  link.answered(1);
  link.tick();
  assert.equal(link.tick(), undefined, "one miss");
  link.answered(1);
  assert.equal(link.tick(), undefined);
  assert.equal(link.tick(), undefined, "one miss again, not the second in a row");
  assert.equal(link.tick()?.up, false);
});

test("a peer that never answers is starting until missLimit periods have passed, then down", () => {
  const link = new LinkTracker("h3", 2);
  assert.equal(link.health().starting, true, "no verdict before the first heartbeat");
  link.failed("authentication failed");
  assert.equal(link.tick(), undefined);
  assert.equal(link.health().starting, true, "one miss of two: still no verdict");
  const change = link.tick();
  assert.equal(change?.up, false);
  assert.match(change!.detail, /authentication failed/);
  assert.deepEqual(link.health().rttMs, null);
  assert.equal(link.health().starting, undefined, "down is a verdict");
});

/** A peer the test answers for: connect and ping succeed while `reachable`. */
class FakePeers {
  reachable = new Set<string>();
  connects: string[] = [];
  readonly factory = async (peer: string): Promise<Pinger> => {
    this.connects.push(peer);
    if (!this.reachable.has(peer)) throw new Error(`${peer} refuses`);
    let ended = false;
    return {
      ping: async () => {
        if (!this.reachable.has(peer)) {
          ended = true;
          throw new Error(`${peer} lost`);
        }
      },
      close: () => (ended = true),
      get ended() {
        return ended;
      },
    };
  };
}

const waitFor = async (what: string, check: () => boolean): Promise<void> => {
  const deadline = Date.now() + 5_000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
};

test("PeerLinks heartbeats every peer, reports a lost one down and its return up, and drops removed peers", async () => {
  const peers = new FakePeers();
  peers.reachable = new Set(["h2", "h3"]);
  const changes: LinkChange[] = [];
  const links = new PeerLinks({
    intervalMs: 10,
    missLimit: 2,
    connect: peers.factory,
    onChange: (c) => changes.push(c),
  });
  try {
    links.setPeers(
      new Map([
        ["h2", { address: "10.0.0.2", port: 1 }],
        ["h3", { address: "10.0.0.3", port: 1 }],
      ]),
    );
    await waitFor("both links up", () => links.isUp("h2") === true && links.isUp("h3") === true);
    assert.equal(changes.length, 0, "start-up is not news");
    peers.reachable.delete("h3");
    await waitFor("h3 down", () => links.isUp("h3") === false);
    assert.deepEqual(
      changes.map((c) => [c.peer, c.up]),
      [["h3", false]],
    );
    assert.equal(links.isUp("h2"), true, "the other link is not affected");
    peers.reachable.add("h3");
    await waitFor("h3 up again", () => links.isUp("h3") === true);
    assert.deepEqual(changes.at(-1)?.up, true);
    links.setPeers(new Map([["h2", { address: "10.0.0.2", port: 1 }]]));
    assert.equal(links.isUp("h3"), undefined);
    assert.deepEqual(
      links.health().map((link) => link.peer),
      ["h2"],
    );
  } finally {
    links.stop();
  }
});
