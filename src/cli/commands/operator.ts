// `haven operator add|list|revoke`: the people (or programs) who may act on the cluster, each with a
// role and a token (src/cluster/operators.ts). The token is shown once, when the operator is added:
// Haven keeps only its digest, and etcd its own hash.

import { writeFile } from "node:fs/promises";
import { HavenError } from "../../core/errors.js";
import { addOperator, listOperators, parseRole, revokeOperator } from "../../cluster/operators.js";
import { cliActor } from "../actor.js";
import { parseCommand } from "../args.js";
import { CLUSTER_OPTIONS, CLUSTER_OPTIONS_USAGE, connectCluster } from "../context.js";

export const OPERATOR_USAGE = `usage: haven operator <verb> ...

  operator add NAME --role viewer|operator|admin [--token-file FILE]
                          add an operator; prints the token once (or writes it to FILE, mode 0600)
  operator list [--json]  every operator and role
  operator revoke NAME    the operator's token stops working at once, in etcd and on every agent

roles: viewer reads state, events and metrics; operator also switches over, drains, starts and stops
VMs and identifies disks; admin also creates and deletes, promotes by force, replaces disks, resolves
split brains and manages operators. Adding and revoking needs the admin role.

${CLUSTER_OPTIONS_USAGE}`;

/** Each verb's own usage, for `haven operator VERB --help`. */
export const OPERATOR_VERB_USAGE: Record<string, string> = {
  add: `usage: haven operator add NAME --role viewer|operator|admin [--token-file FILE] [cluster options]

Adds an operator with a token of their own, printed once (or written to FILE, mode 0600): Haven keeps
only its digest. Needs the admin role.

options:
  --role ROLE          viewer, operator or admin (see 'haven operator --help')
  --token-file FILE    write the token to FILE instead of printing it

${CLUSTER_OPTIONS_USAGE}`,
  list: `usage: haven operator list [--json] [cluster options]

Every operator and their role.

options:
  --json               print the list as JSON

${CLUSTER_OPTIONS_USAGE}`,
  revoke: `usage: haven operator revoke NAME [cluster options]

The operator's token stops working at once, in etcd and on every agent. Needs the admin role.

${CLUSTER_OPTIONS_USAGE}`,
};

function usage(message: string): HavenError {
  return new HavenError("HAVEN_ERR_USAGE", `${message}\n\n${OPERATOR_USAGE}`);
}

function oneName(positionals: readonly string[]): string {
  if (positionals.length !== 1)
    throw usage(
      positionals.length === 0 ? "the operator's NAME is missing" : `one NAME expected, got ${positionals.join(" ")}`,
    );
  return positionals[0]!;
}

export async function operatorCommand(argv: string[]): Promise<number> {
  const [verb, ...rest] = argv;
  const parsed = parseCommand(
    rest,
    { ...CLUSTER_OPTIONS, role: { type: "string" }, "token-file": { type: "string" }, json: { type: "boolean" } },
    OPERATOR_USAGE,
  );
  if (parsed === undefined) return 0;
  const { values, positionals } = parsed;
  const client = connectCluster(values);
  const call = client.auth.bind(client);
  switch (verb) {
    case "add": {
      const name = oneName(positionals);
      const role = parseRole(values.role as string | undefined);
      const { token } = await addOperator(client, call, { name, role }, cliActor());
      const file = values["token-file"] as string | undefined;
      if (file !== undefined) {
        await writeFile(file, `${token}\n`, { mode: 0o600, flag: "wx" }).catch((error: unknown) => {
          throw new HavenError(
            "HAVEN_ERR_CONFIG",
            `operator ${name} was added, but its token could not be written to ${file} (${(error as Error).message}); ` +
              `revoke it and add it again`,
          );
        });
        process.stdout.write(`operator ${name} added as ${role}; token written to ${file}\n`);
      } else {
        process.stdout.write(`operator ${name} added as ${role}; token (shown once, keep it secret):\n${token}\n`);
      }
      return 0;
    }
    case "list": {
      if (positionals.length > 0) throw usage(`operator list takes no NAME, got ${positionals.join(" ")}`);
      const operators = await listOperators(client);
      if (values.json === true) {
        process.stdout.write(
          `${JSON.stringify(
            operators.map(({ tokenSha256: _, ...rest }) => rest),
            null,
            2,
          )}\n`,
        );
        return 0;
      }
      process.stdout.write(`${"NAME".padEnd(20)} ${"ROLE".padEnd(9)} ADDED\n`);
      for (const operator of operators)
        process.stdout.write(
          `${operator.name.padEnd(20)} ${operator.role.padEnd(9)} ${operator.createdAt} by ${operator.createdBy}\n`,
        );
      return 0;
    }
    case "revoke": {
      const name = oneName(positionals);
      await revokeOperator(client, call, name, cliActor());
      process.stdout.write(`operator ${name} revoked: its token no longer works\n`);
      return 0;
    }
    default:
      throw usage(`unknown or missing verb for "operator" (known: add, list, revoke)`);
  }
}
