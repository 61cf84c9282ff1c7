// `haven replica serve`: serves the replicas in a directory (one sub-directory per volume name) to
// remote engines over the replication protocol, in the foreground until SIGINT/SIGTERM. Every
// connection must prove the shared secret; with --tls-dir the port speaks only mutual TLS, to clients
// holding a host certificate from the same cluster CA.

import { HavenError } from "../../core/errors.js";
import { ReplicaServer } from "../../replica/replica-server.js";
import { loadTlsIdentity } from "../../security/tls-identity.js";
import { parseHostPort } from "../../util/units.js";
import { parseCommand, refuseArguments } from "../args.js";
import { readSecretFile } from "../secret.js";
import { untilStopSignal } from "../signals.js";

export const REPLICA_SERVE_USAGE = `usage: haven replica serve --dir DIR --listen HOST:PORT --secret-file FILE [--tls-dir DIR]

Serves the replicas in DIR (DIR/NAME/ holds volume NAME's copy) to remote engines until SIGINT/SIGTERM.

options:
  --dir DIR            directory holding the replicas (created if missing)
  --listen HOST:PORT   address for engines to connect to
  --secret-file FILE   the cluster's shared secret (at least 16 bytes); engines must prove they know it
  --tls-dir DIR        this host's TLS identity ('haven cert issue'): serve mutual TLS only, to engines
                       with a host certificate from the same cluster CA`;

export async function replicaServe(argv: string[]): Promise<number> {
  const parsed = parseCommand(
    argv,
    {
      dir: { type: "string" },
      listen: { type: "string" },
      "secret-file": { type: "string" },
      "tls-dir": { type: "string" },
    },
    REPLICA_SERVE_USAGE,
  );
  if (parsed === undefined) return 0; // --help was printed
  const { values, positionals } = parsed;
  refuseArguments(positionals, REPLICA_SERVE_USAGE);
  for (const required of ["dir", "listen", "secret-file"]) {
    if (typeof values[required] !== "string")
      throw new HavenError("HAVEN_ERR_USAGE", `--${required} is required\n\n${REPLICA_SERVE_USAGE}`);
  }
  const { host, port } = parseHostPort(values.listen as string, "--listen");
  const secret = await readSecretFile(values["secret-file"] as string);
  const log = (line: string): void => {
    process.stderr.write(`${new Date().toISOString()} ${line}\n`);
  };
  const tlsDir = values["tls-dir"];
  const tls = typeof tlsDir === "string" ? await loadTlsIdentity(tlsDir) : undefined;
  const server = new ReplicaServer({ directory: values.dir as string, secret, log, ...(tls && { tls }) });
  const address = await server.listen(host, port);
  const over = tls ? `mutual TLS as host ${tls.info.name}` : "plain TCP";
  log(`serving replicas in ${values.dir as string} (${over}) on ${address}`);
  const signal = await untilStopSignal();
  log(`${signal}: closing connections and replicas`);
  await server.stop();
  log("stopped cleanly");
  return 0;
}
