#!/usr/bin/env node
// `npm run sim -- [--seeds N] [--from S] [--seed S] [--trace] [--steps N]`: runs the control-plane
// simulation (test/sim/cluster-scenario.ts, as built into dist/) over seeds S, S+1, ... S+N-1 (default:
// 200 seeds from 1), or replays one seed with --seed (with --trace, every event of the run is printed). Prints one line per failing
// seed with the command that replays it, and a summary; exits 1 if any seed failed.

import { performance } from "node:perf_hooks";
import { URL } from "node:url";
import { parseArgs } from "node:util";
const { ClusterSim } = await import(new URL("../dist/test/sim/cluster-scenario.js", import.meta.url).href);

const { values } = parseArgs({
  options: {
    seeds: { type: "string" },
    from: { type: "string" },
    seed: { type: "string" },
    steps: { type: "string" },
    trace: { type: "boolean" },
  },
});
const whole = (text, fallback, what) => {
  const value = text === undefined ? fallback : Number(text);
  if (!Number.isSafeInteger(value) || value < 0) {
    process.stderr.write(`sim: --${what} must be a whole number, not ${text}\n`);
    process.exit(2);
  }
  return value;
};
const from = whole(values.seed ?? values.from, 1, values.seed !== undefined ? "seed" : "from");
const count = values.seed !== undefined ? 1 : whole(values.seeds, 200, "seeds");
const faultSteps = whole(values.steps, 30, "steps");
const started = performance.now();
let failed = 0;
let failovers = 0;
let acked = 0;
for (let seed = from; seed < from + count; seed++) {
  const sim = new ClusterSim({
    seed,
    faultSteps,
    ...(values.trace && { trace: (line) => process.stdout.write(`${line}\n`) }),
  });
  try {
    const stats = await sim.run();
    failovers += stats.failovers;
    acked += stats.acked;
    if (count === 1) process.stdout.write(`${JSON.stringify(stats)}\n`);
  } catch (error) {
    failed++;
    const message = error instanceof Error ? error.message : String(error);
    process.stdout.write(
      `FAIL seed ${seed}: ${message.split("\n")[0]}\n  replay: npm run sim -- --seed ${seed} --trace\n`,
    );
    if (count === 1) process.stdout.write(`${message}\n`);
  }
}
const seconds = (performance.now() - started) / 1000;
process.stdout.write(
  `${count - failed}/${count} seeds passed (from ${from}) in ${seconds.toFixed(1)} s; ${failovers} failovers, ${acked} acknowledged writes checked\n`,
);
process.exit(failed > 0 ? 1 : 0);
