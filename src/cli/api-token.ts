// The bearer token of an HTTP API as the CLI gets it: from a file (`--token-file`, `--api-token-file`)
// or, for the client, from the environment (HAVEN_API_TOKEN) or the local cluster's directory. The engine API takes one always (issue
// 16): whoever reaches its port could otherwise start a repair or pick a split-brain survivor.

import { existsSync } from "node:fs";
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { HavenError } from "../core/errors.js";

/** Shorter tokens can be guessed; the agent API asks the same of its token. */
export const MIN_API_TOKEN_CHARS = 16;
/** The variable the CLI reads a client's token from when no --token-file is given. */
export const API_TOKEN_ENV = "HAVEN_API_TOKEN";

/** A token as an Authorization header carries it: at least 16 printable characters, no spaces. */
export function checkApiToken(token: string, where: string): string {
  if (token.length < MIN_API_TOKEN_CHARS)
    throw new HavenError(
      "HAVEN_ERR_CONFIG",
      `the API token in ${where} must be at least ${MIN_API_TOKEN_CHARS} characters`,
    );
  if (!/^[\x21-\x7e]+$/.test(token))
    throw new HavenError("HAVEN_ERR_CONFIG", `the API token in ${where} must be printable ASCII without spaces`);
  return token;
}

/** The token in `file` (its first line, trimmed); warns when other users can read the file. */
export async function readApiTokenFile(file: string, flag: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (error) {
    throw new HavenError("HAVEN_ERR_CONFIG", `cannot read ${flag} ${file}: ${(error as Error).message}`);
  }
  if ((await stat(file)).mode & 0o077)
    process.stderr.write(`haven: warning: ${file} is readable by other users; chmod 600 it\n`);
  return checkApiToken(text.trim(), file);
}

/** A client's token and where it came from, for messages. */
export interface ClientApiToken {
  readonly token: string;
  /** "--token-file FILE", "$HAVEN_API_TOKEN" or "the cluster's token FILE". */
  readonly source: string;
}

/**
 * A client's token: --token-file FILE, else $HAVEN_API_TOKEN, else the token a local cluster keeps in
 * its directory (`clusterDir`/token, named by the context file, as `haven cluster up` writes it).
 * None of them is a usage error.
 */
export async function clientApiToken(
  tokenFile: string | boolean | undefined,
  _usage: string,
  clusterDir?: string,
): Promise<ClientApiToken> {
  if (typeof tokenFile === "string")
    return { token: await readApiTokenFile(tokenFile, "--token-file"), source: `--token-file ${tokenFile}` };
  const fromEnvironment = process.env[API_TOKEN_ENV];
  if (fromEnvironment !== undefined && fromEnvironment.trim() !== "")
    return { token: checkApiToken(fromEnvironment.trim(), `$${API_TOKEN_ENV}`), source: `$${API_TOKEN_ENV}` };
  if (clusterDir !== undefined) {
    const file = join(clusterDir, "token");
    if (existsSync(file))
      return { token: await readApiTokenFile(file, "the cluster's token"), source: `the cluster's token ${file}` };
  }
  throw new HavenError(
    "HAVEN_ERR_USAGE",
    `the API needs its token: give --token-file FILE, set ${API_TOKEN_ENV}, or use a context file whose ` +
      `cluster directory holds it ('haven cluster up' writes one)`,
  );
}
