// An operator's token kept beside their certificate: IDENTITY/token (0600). The certificate admits the
// connection to etcd, and the token (the operator's etcd password, see cluster/operators.ts) says who
// is on it, since etcd's JSON gateway does not take a certificate's name as its user.

import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { HavenError } from "../core/errors.js";

export const TOKEN_FILE = "token";

/** The token in identity directory `dir`, or undefined when it holds none. */
export function readIdentityToken(dir: string): string | undefined {
  const file = join(dir, TOKEN_FILE);
  if (!existsSync(file)) return undefined;
  try {
    return readFileSync(file, "utf8").trim();
  } catch (error) {
    throw new HavenError("HAVEN_ERR_CONFIG", `cannot read the operator token ${file}: ${(error as Error).message}`);
  }
}
