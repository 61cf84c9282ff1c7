// node:test's `test` with a default timeout for one file, so a hung test fails (and its file's after
// hooks run) instead of stalling the whole run. A file declares its bound once, next to what its
// tests need:
//   const test = boundedTest(10_000);
// A test's own options still apply, its own timeout included. The package's test script passes
// --test-timeout as a backstop for files without one.

import { test as nodeTest, type TestContext, type TestOptions } from "node:test";

type TestFn = (t: TestContext) => void | Promise<void>;

export interface BoundedTest {
  (name: string, fn: TestFn): Promise<void>;
  (name: string, options: TestOptions, fn: TestFn): Promise<void>;
}

/** `test` with `timeout: timeoutMs` unless the test's options say otherwise. */
export function boundedTest(timeoutMs: number): BoundedTest {
  if (!(Number.isSafeInteger(timeoutMs) && timeoutMs > 0))
    throw new Error(`test timeout ${timeoutMs} ms is not above 0`);
  return (name: string, optionsOrFn: TestOptions | TestFn, fn?: TestFn): Promise<void> =>
    typeof optionsOrFn === "function"
      ? nodeTest(name, { timeout: timeoutMs }, optionsOrFn)
      : nodeTest(name, { timeout: timeoutMs, ...optionsOrFn }, fn);
}
