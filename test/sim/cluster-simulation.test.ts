// The control-plane simulation (cluster-scenario.ts) over many seeds, and the seeds that found bugs,
// kept by name so those bugs stay found. HAVEN_SIM_SEEDS sets how many random seeds run (default
// 2000, from HAVEN_SIM_FROM or 1); `npm run sim -- --seeds N --from S` runs more outside the tests, and
// a failing seed's message ends with the command that replays it.

import assert from "node:assert/strict";
import { test } from "node:test";
import { ClusterSim } from "./cluster-scenario.js";

const SEEDS = Number(process.env.HAVEN_SIM_SEEDS ?? 2000);
const FROM = Number(process.env.HAVEN_SIM_FROM ?? 1);
/** Seeds per test, so a failure names a small range and progress shows. */
const CHUNK = 250;

/**
 * Seeds that exercise a path where the simulation found a bug, with the bug and a line the run's trace
 * must contain: a seed's schedule changes whenever the scenario gains a fault, so each test checks that
 * its seed still takes the path it guards (the seeds that first found the first three bugs were 81, 230 and 130; the VM seeds 212 and 815 found theirs).
 */
const REGRESSIONS: readonly (readonly [number, string, RegExp])[] = [
  [
    2,
    "the last in-sync copy came back unchanged but stayed recorded out of sync: no copy could be promoted",
    /back in the in-sync set: the last in-sync copy came back unchanged/,
  ],
  [
    504,
    "a split brain found at start was retried at once, each time at a new epoch (thousands of epochs)",
    /split-brain-resolved .*so it survives and the others are rebuilt from it/,
  ],
  [2, "a host killed by its watchdog stayed dead (its supervisor starts it again)", /FAULT kill h\d \(its watchdog\)/],
  [
    815,
    "the last in-sync copy came back, faulted again at once (its metadata save landed, the answer failed) and " +
      "was then taken for a diverged copy: every copy resynced from none, forever",
    /faulted: metadata save failed: .*SET_METADATA/,
  ],
  [
    212,
    "a VM started on the old primary while a switchover moved its disk away: the VM ran on two hosts",
    /its disk vol\d moves to h\d \(switchover\)/,
  ],
  [6, "a VM past its restarts is relocated to a host with an in-sync copy", /event vm-relocate .*relocation 1 of 1/],
  [14, "a VM past its restarts with nowhere to go is marked error, saying why", /event vm-error .*restarts used up/],
];

for (const [seed, bug, path] of REGRESSIONS) {
  test(`regression seed ${seed}: ${bug}`, { timeout: 60_000 }, async () => {
    const trace: string[] = [];
    const stats = await new ClusterSim({ seed, trace: (line) => trace.push(line) }).run();
    assert.ok(stats.acked > 0, "the client's writes were acknowledged");
    assert.ok(
      trace.some((line) => path.test(line)),
      `seed ${seed} no longer takes the path it guards (${path}): pick another seed`,
    );
  });
}

for (let from = FROM; from < FROM + SEEDS; from += CHUNK) {
  const to = Math.min(FROM + SEEDS, from + CHUNK) - 1;
  test(
    `seeds ${from}-${to}: one writer, no promotion out of sync, no acknowledged write lost, every volume serves again after healing`,
    { timeout: 600_000 },
    async () => {
      let failovers = 0;
      let acked = 0;
      for (let seed = from; seed <= to; seed++) {
        const stats = await new ClusterSim({ seed }).run();
        failovers += stats.failovers;
        acked += stats.acked;
      }
      // The faults must actually exercise failover, and the client must have written: otherwise the
      // promises above held vacuously.
      assert.ok(failovers > 0, `no failover in seeds ${from}-${to}`);
      assert.ok(acked > 0, `no acknowledged write in seeds ${from}-${to}`);
    },
  );
}
