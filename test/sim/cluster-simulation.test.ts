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

/** Seeds that found a bug, with the bug. */
const REGRESSIONS: readonly (readonly [number, string])[] = [
  [81, "the last in-sync copy came back unchanged but stayed recorded out of sync: no copy could be promoted"],
  [230, "a split brain found at start was retried at once, each time at a new epoch (thousands of epochs)"],
  [130, "a host killed by its watchdog after the heal stayed dead (the supervisor restarts it)"],
];

for (const [seed, bug] of REGRESSIONS) {
  test(`regression seed ${seed}: ${bug}`, { timeout: 60_000 }, async () => {
    const stats = await new ClusterSim({ seed }).run();
    assert.ok(stats.acked > 0, "the client's writes were acknowledged");
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
