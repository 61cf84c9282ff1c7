// Haven's version, as its package.json says (what `haven version` prints), for haven_host_info.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { packageRoot } from "../../util/repo-root.js";

let cached: string | undefined;

/** The version in package.json; "unknown" when it cannot be read (metrics never fail for it). */
export function havenVersion(): string {
  if (cached !== undefined) return cached;
  try {
    const manifest = JSON.parse(readFileSync(join(packageRoot(), "package.json"), "utf8")) as { version?: unknown };
    cached = typeof manifest.version === "string" ? manifest.version : "unknown";
  } catch {
    cached = "unknown";
  }
  return cached;
}
