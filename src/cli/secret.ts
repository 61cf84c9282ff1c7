// The cluster's shared secret, read from --secret-file: at least 16 bytes, and a warning when other
// users can read the file.

import { readFile, stat } from "node:fs/promises";
import { HavenError } from "../core/errors.js";

export async function readSecretFile(file: string): Promise<Buffer> {
  let secret: Buffer;
  try {
    secret = Buffer.from((await readFile(file, "utf8")).trim(), "utf8");
  } catch (error) {
    throw new HavenError("HAVEN_ERR_CONFIG", `cannot read --secret-file ${file}: ${(error as Error).message}`);
  }
  if ((await stat(file)).mode & 0o077) {
    process.stderr.write(`haven: warning: ${file} is readable by other users; chmod 600 it\n`);
  }
  if (secret.length < 16) throw new HavenError("HAVEN_ERR_CONFIG", `the secret in ${file} must be at least 16 bytes`);
  return secret;
}
