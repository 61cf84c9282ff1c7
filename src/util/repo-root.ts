// Finds the installed package's root directory (where package.json and the native build live),
// whether the code runs from dist/ or from a globally linked bin.

import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

let cached: string | undefined;

export function packageRoot(): string {
  if (cached !== undefined) return cached;
  let directory = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(directory, "package.json")) && existsSync(join(directory, "binding.gyp"))) {
      cached = directory;
      return directory;
    }
    const parent = dirname(directory);
    if (parent === directory)
      throw new Error("cannot find Haven's package root above " + fileURLToPath(import.meta.url));
    directory = parent;
  }
}
