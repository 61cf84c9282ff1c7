// The engine's completion gate (the lease keeper's verdict before each acknowledgement), over real local
// copies in a temporary directory, with a gate the test drives: while the lease is unproven nothing is
// acknowledged (writes, zeroing, trims, flushes wait, their data already on the copies); once it is held
// again they complete without error; once it is lost they fail and the engine is fenced for good. A
// held lease costs one synchronous gate call per completion.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { VolumeEngine } from "../../src/engine/engine.js";
import { HavenError } from "../../src/core/errors.js";
import { Switchboard } from "../helpers/fault-port.js";
import { tempDir } from "../helpers/server-process.js";

const MiB = 1024 * 1024;
const NAME = "gated";

/** A lease the test sets: held (true), lost (false), or unproven (a promise settled when that changes). */
class TestGate {
  calls = 0;
  private state: "held" | "unproven" | "lost" = "held";
  private waiting: ((mayComplete: boolean) => void)[] = [];

  readonly gate = (): boolean | Promise<boolean> => {
    this.calls++;
    if (this.state === "held") return true;
    if (this.state === "lost") return false;
    return new Promise((resolve) => this.waiting.push(resolve));
  };

  get waiters(): number {
    return this.waiting.length;
  }

  set(state: "held" | "unproven" | "lost"): void {
    this.state = state;
    if (state === "unproven") return;
    const waiting = this.waiting;
    this.waiting = [];
    for (const resolve of waiting) resolve(state === "held");
  }
}

async function withEngine(run: (engine: VolumeEngine, gate: TestGate, dataOf: (i: number) => Buffer) => Promise<void>) {
  const root = tempDir("haven-gate-");
  const dirs = [join(root.path, "copy0"), join(root.path, "copy1")];
  const gate = new TestGate();
  const engine = new VolumeEngine({
    name: NAME,
    locations: dirs,
    opener: new Switchboard().opener,
    sizeBytes: 16 * MiB,
    startupWaitMs: 200,
    writebackMs: 0,
    log: () => undefined,
    completionGate: gate.gate,
  });
  try {
    await engine.start();
    await run(engine, gate, (i) => readFileSync(join(dirs[i]!, NAME, "data.raw")));
  } finally {
    gate.set("lost");
    await engine.stop().catch(() => undefined);
    root.remove();
  }
}

/** A promise's outcome so far, without waiting for it. */
function watch<T>(promise: Promise<T>): { state: "pending" | "fulfilled" | "rejected"; error?: unknown } {
  const box: { state: "pending" | "fulfilled" | "rejected"; error?: unknown } = { state: "pending" };
  promise.then(
    () => (box.state = "fulfilled"),
    (error: unknown) => {
      box.state = "rejected";
      box.error = error;
    },
  );
  return box;
}

/** Waits (condition, not time) until `count` completions are held at the gate. */
async function untilWaiting(gate: TestGate, count: number): Promise<void> {
  for (let i = 0; gate.waiters < count; i++) {
    assert.ok(i < 2000, `only ${gate.waiters} of ${count} completions reached the gate`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

test("a held lease costs one synchronous gate call per completion", async () => {
  await withEngine(async (engine, gate) => {
    const before = gate.calls;
    for (let i = 0; i < 20; i++) await engine.write(i * 4096, Buffer.alloc(4096, i));
    await engine.flush();
    assert.equal(gate.calls - before, 21);
  });
});

test("nothing is acknowledged while the lease is unproven; once it is held again every waiting write completes without error", async () => {
  await withEngine(async (engine, gate, dataOf) => {
    gate.set("unproven");
    const data = Buffer.alloc(64 * 1024, 0x5a);
    const ops = [
      watch(engine.write(1 * MiB, data)),
      watch(engine.write(2 * MiB, data, { fua: true })),
      watch(engine.writeZeroes(3 * MiB, 8192)),
      watch(engine.trim(4 * MiB, 8192)),
      watch(engine.flush()),
    ];
    await untilWaiting(gate, ops.length);
    // Let anything that could still complete do so: nothing may.
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(
      ops.map((op) => op.state),
      ops.map(() => "pending"),
      "acknowledged while the lease was unproven",
    );
    // The data is on both copies already; only the acknowledgement waits.
    for (const copy of [0, 1])
      assert.ok(
        dataOf(copy)
          .subarray(1 * MiB, 1 * MiB + data.length)
          .equals(data),
      );
    assert.equal(engine.status().state, "healthy");

    gate.set("held");
    await until(() => ops.every((op) => op.state !== "pending"));
    assert.deepEqual(
      ops.map((op) => op.state),
      ops.map(() => "fulfilled"),
      `failed: ${ops.map((op) => String(op.error)).join(", ")}`,
    );
    assert.equal(engine.fenced, null);
    assert.equal(engine.io.errors, 0);
    const back = Buffer.alloc(data.length);
    await engine.read(2 * MiB, back);
    assert.ok(back.equals(data));
    await engine.write(5 * MiB, data); // and the volume carries on at once
  });
});

test("a write waiting on an unproven lease fails once the lease is lost, and the engine is fenced for good", async () => {
  await withEngine(async (engine, gate) => {
    gate.set("unproven");
    const write = watch(engine.write(0, Buffer.alloc(4096, 1)));
    const flush = watch(engine.flush());
    await untilWaiting(gate, 2);
    gate.set("lost");
    await until(() => write.state !== "pending" && flush.state !== "pending");
    for (const op of [write, flush]) {
      assert.equal(op.state, "rejected");
      assert.ok(op.error instanceof HavenError && op.error.code === "HAVEN_ERR_FENCED", String(op.error));
    }
    assert.match(engine.fenced ?? "", /lost its cluster lease/);
    assert.equal(engine.status().state, "failed");
    // Fenced for good: a lease held again does not bring this engine back (a new one starts at a new epoch).
    gate.set("held");
    await assert.rejects(engine.write(8192, Buffer.alloc(4096, 2)), (error: unknown) => {
      return error instanceof HavenError && error.code === "HAVEN_ERR_FENCED";
    });
  });
});

async function until(done: () => boolean): Promise<void> {
  for (let i = 0; !done(); i++) {
    assert.ok(i < 2000, "timed out");
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
