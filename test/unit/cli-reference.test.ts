// docs/cli.md is what scripts/cli-reference.mjs makes from the commands' usage texts: a usage changed
// without `npm run docs:cli` fails here, so the reference never drifts from --help.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { cliReference } from "../../src/cli/cli-reference.js";
import { usageTexts } from "../../src/cli/main.js";
import { packageRoot } from "../../src/util/repo-root.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** Reading one file and rendering text takes well under a second. */
const test = boundedTest(10_000);

test("docs/cli.md is exactly what scripts/cli-reference.mjs writes from the usage texts (npm run docs:cli)", () => {
  const written = readFileSync(join(packageRoot(), "docs", "cli.md"), "utf8");
  assert.equal(written, cliReference(), "docs/cli.md is stale: run `npm run docs:cli`");
});

test("the reference has a section with the usage of every command", () => {
  const reference = cliReference();
  for (const { command, usage } of usageTexts()) {
    assert.ok(reference.includes(`## ${command}\n`), command);
    assert.ok(reference.includes(usage), `${command}'s usage`);
  }
});
