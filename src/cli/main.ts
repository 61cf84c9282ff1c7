// The `haven` command line: routes "noun verb" to a command, and turns every error into a message
// and the exit status that the error registry assigns.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { HavenError } from "../core/errors.js";
import { packageRoot } from "../util/repo-root.js";
import { NBD_SERVE_USAGE, nbdServe } from "./commands/nbd-serve.js";
import { REPLICA_SERVE_USAGE, replicaServe } from "./commands/replica-serve.js";
import { VOLUME_RESOLVE_SPLIT_BRAIN_USAGE, volumeResolveSplitBrain } from "./commands/volume-resolve-split-brain.js";
import { VOLUME_SERVE_USAGE, volumeServe } from "./commands/volume-serve.js";
import { VOLUME_STATUS_USAGE, volumeStatus } from "./commands/volume-status.js";
import { VOLUME_VERIFY_USAGE, volumeVerify } from "./commands/volume-verify.js";

const USAGE = `usage: haven <noun> <verb> [options]

commands:
  nbd serve FILE                    serve a file or block device over NBD
  replica serve                     serve a directory of replicas to remote engines (replication protocol)
  volume serve NAME                 run a volume over its replicas and serve it over NBD
  volume status                     show a running volume: its copies, resync and verify progress
  volume verify                     compare a volume's copies online (--repair resyncs what differs)
  volume resolve-split-brain NAME   end a split brain by naming the copy whose data survives
  version                           print Haven's version

Run 'haven <noun> <verb> --help' for a command's options.`;

type Command = (argv: string[]) => Promise<number>;

const COMMANDS: Record<string, Record<string, { run: Command; usage: string }>> = {
  nbd: { serve: { run: nbdServe, usage: NBD_SERVE_USAGE } },
  replica: { serve: { run: replicaServe, usage: REPLICA_SERVE_USAGE } },
  volume: {
    serve: { run: volumeServe, usage: VOLUME_SERVE_USAGE },
    status: { run: volumeStatus, usage: VOLUME_STATUS_USAGE },
    verify: { run: volumeVerify, usage: VOLUME_VERIFY_USAGE },
    "resolve-split-brain": { run: volumeResolveSplitBrain, usage: VOLUME_RESOLVE_SPLIT_BRAIN_USAGE },
  },
};

export async function main(argv: string[]): Promise<number> {
  try {
    const [noun, verb, ...rest] = argv;
    if (noun === "version" || noun === "--version") {
      const manifest = JSON.parse(readFileSync(join(packageRoot(), "package.json"), "utf8")) as { version: string };
      process.stdout.write(`haven ${manifest.version}\n`);
      return 0;
    }
    if (noun === undefined || noun === "help" || noun === "--help" || noun === "-h") {
      process.stdout.write(`${USAGE}\n`);
      return noun === undefined ? 2 : 0;
    }
    const verbs = COMMANDS[noun];
    if (verbs === undefined) throw new HavenError("HAVEN_ERR_USAGE", `unknown command "${noun}"\n\n${USAGE}`);
    const command = verb === undefined ? undefined : verbs[verb];
    if (command === undefined) {
      const known = Object.keys(verbs).join(", ");
      throw new HavenError("HAVEN_ERR_USAGE", `unknown or missing verb for "${noun}" (known: ${known})\n\n${USAGE}`);
    }
    return await command.run(rest);
  } catch (error) {
    if (error instanceof HavenError) {
      // The code goes on the first line, next to what went wrong; any usage text follows.
      const [first, ...rest] = error.message.split("\n");
      process.stderr.write(`haven: ${first} [${error.code}]\n${rest.length > 0 ? `${rest.join("\n")}\n` : ""}`);
      return error.exitCode;
    }
    throw error;
  }
}
