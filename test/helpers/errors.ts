// One check for "this fails with that registry code and a message like this", for assert.rejects
// and assert.throws.

import assert from "node:assert/strict";
import { HavenError, type ErrorCode } from "../../src/core/errors.js";

export function failsWith(code: ErrorCode, message: RegExp): (error: unknown) => boolean {
  return (error: unknown): boolean => {
    assert.ok(error instanceof HavenError, `expected a HavenError, got ${String(error)}`);
    assert.equal(error.code, code, error.message);
    assert.match(error.message, message);
    return true;
  };
}
