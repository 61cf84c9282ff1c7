// Writes docs/cli.md from every command's usage text (src/cli/cli-reference.ts), after `npm run build`.
// test/unit/cli-reference.test.ts fails when the file in the repository differs from what this writes.

import { writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const { cliReference } = await import(join(root, "dist", "src", "cli", "cli-reference.js"));
const file = join(root, "docs", "cli.md");
writeFileSync(file, cliReference());
console.log(`wrote ${file}`);
