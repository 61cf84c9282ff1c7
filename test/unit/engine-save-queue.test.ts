// The metadata save queue (src/engine/metadata-saves.ts): one save at a time, requests coalesced, and
// a request answered only by a save that started after it, so the caller knows its change is on disk.

import { test } from "node:test";
import assert from "node:assert/strict";
import { SaveQueue } from "../../src/engine/metadata-saves.js";

/** A save body the test completes by hand: each call is one pending save. */
function manualSaves(): { queue: SaveQueue; pending: { resolve(): void; reject(error: Error): void }[] } {
  const pending: { resolve(): void; reject(error: Error): void }[] = [];
  const queue = new SaveQueue(() => new Promise<void>((resolve, reject) => pending.push({ resolve, reject })));
  return { queue, pending };
}

/** Lets every promise callback that is ready run. */
const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

test("a request resolves only after a save that started after it has completed", async () => {
  const { queue, pending } = manualSaves();
  const first = queue.request();
  await settle();
  assert.equal(pending.length, 1, "the first save started");
  let secondDone = false;
  const second = queue.request().then(() => (secondDone = true));
  pending[0]!.resolve(); // the save that was running when the second request came
  await first;
  await settle();
  assert.equal(secondDone, false, "a save that started before the request does not answer it");
  assert.equal(pending.length, 2, "a second save started for it");
  pending[1]!.resolve();
  await second;
  assert.equal(queue.savesStarted, 2);
});

test("requests made while a save waits to start share it: many requests during one save cost one more save", async () => {
  const { queue, pending } = manualSaves();
  void queue.request();
  await settle();
  const waiting = Array.from({ length: 10 }, () => queue.request());
  assert.ok(
    waiting.every((request) => request === waiting[0]),
    "they share one promise",
  );
  pending[0]!.resolve();
  await settle();
  assert.equal(pending.length, 2, "one save for all ten");
  pending[1]!.resolve();
  await Promise.all(waiting);
  assert.equal(queue.savesStarted, 2);
});

test("a failed save rejects the requests it served, and the next save still runs", async () => {
  const { queue, pending } = manualSaves();
  const failing = queue.request();
  await settle();
  const next = queue.request();
  pending[0]!.reject(new Error("disk gone"));
  await assert.rejects(failing, /disk gone/);
  await settle();
  assert.equal(pending.length, 2, "the queue goes on after a failure");
  pending[1]!.resolve();
  await next;
});

test("settled() never rejects and settles only once every save requested so far has", async () => {
  const { queue, pending } = manualSaves();
  void queue.request().catch(() => undefined);
  await settle();
  let settled = false;
  const all = queue.settled().then(() => (settled = true));
  await settle();
  assert.equal(settled, false, "a save is still running");
  pending[0]!.reject(new Error("failed"));
  await all;
  assert.equal(settled, true);
});
