// `haven nbd serve FILE`: serves one file or block device over NBD in the foreground until
// SIGINT/SIGTERM, then finishes in-flight requests, flushes and exits.

import { basename } from "node:path";
import { FileDevice } from "../../block/file-device.js";
import { HavenError } from "../../core/errors.js";
import { NbdServer, type Listen } from "../../nbd/server.js";
import { loadTlsIdentity } from "../../security/tls-identity.js";
import { formatBytes, parseHostPort, parseSize } from "../../util/units.js";
import { parseCommand } from "../args.js";
import { untilStopSignal } from "../signals.js";

export const NBD_SERVE_USAGE = `usage: haven nbd serve FILE [options]

Serves FILE (a regular file or block device) over NBD until SIGINT or SIGTERM.

options:
  --size SIZE          create FILE as a sparse file of SIZE (e.g. 10G) if it does not exist
  --listen HOST:PORT   listen on TCP (default 127.0.0.1:10809 unless --socket is given)
  --socket PATH        listen on a unix socket (what a local QEMU should use)
  --name NAME          export name (default: FILE's base name)
  --description TEXT   export description shown by nbdinfo
  --read-only          refuse writes (EPERM)
  --tls-dir DIR        offer TLS (NBD STARTTLS) with the identity in DIR ('haven cert issue' makes one);
                       clients must present a certificate signed by the same cluster CA
  --tls-required       serve nothing in clear: every option before STARTTLS is refused (needs --tls-dir)
  --write-budget SIZE  WRITE payload bytes held for all connections together (default 256M)`;

export async function nbdServe(argv: string[]): Promise<number> {
  const parsed = parseCommand(
    argv,
    {
      size: { type: "string" },
      listen: { type: "string", multiple: false },
      socket: { type: "string" },
      name: { type: "string" },
      description: { type: "string" },
      "read-only": { type: "boolean" },
      "tls-dir": { type: "string" },
      "tls-required": { type: "boolean" },
      "write-budget": { type: "string" },
    },
    NBD_SERVE_USAGE,
  );
  if (parsed === undefined) return 0; // --help was printed
  const { values, positionals } = parsed;
  if (positionals.length !== 1) {
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `expected exactly one FILE, got ${positionals.length}\n\n${NBD_SERVE_USAGE}`,
    );
  }
  const file = positionals[0]!;
  const readOnly = values["read-only"] === true;
  const createSizeBytes = typeof values.size === "string" ? parseSize(values.size, "--size") : undefined;
  const listens: Listen[] = [];
  if (typeof values.listen === "string") listens.push({ kind: "tcp", ...parseHostPort(values.listen, "--listen") });
  if (typeof values.socket === "string") listens.push({ kind: "unix", path: values.socket });
  if (listens.length === 0) listens.push({ kind: "tcp", host: "127.0.0.1", port: 10809 });
  const name = typeof values.name === "string" ? values.name : basename(file);
  if (Buffer.byteLength(name) > 4096) throw new HavenError("HAVEN_ERR_USAGE", "--name must be at most 4096 bytes");

  const tlsRequired = values["tls-required"] === true;
  if (tlsRequired && typeof values["tls-dir"] !== "string")
    throw new HavenError("HAVEN_ERR_USAGE", "--tls-required needs --tls-dir");
  const tls =
    typeof values["tls-dir"] === "string"
      ? { identity: await loadTlsIdentity(values["tls-dir"]), required: tlsRequired }
      : undefined;
  const writeBudgetBytes =
    typeof values["write-budget"] === "string" ? parseSize(values["write-budget"], "--write-budget") : undefined;

  const device = await FileDevice.open(file, { readOnly, ...(createSizeBytes !== undefined && { createSizeBytes }) });
  const log = (line: string): void => {
    process.stderr.write(`${new Date().toISOString()} ${line}\n`);
  };
  const server = new NbdServer({
    exports: [{ name, description: typeof values.description === "string" ? values.description : "", device }],
    log,
    ...(tls !== undefined && { tls }),
    ...(writeBudgetBytes !== undefined && { limits: { writeBudgetBytes } }),
  });
  try {
    for (const where of listens) {
      const address = await server.listen(where);
      log(
        `serving ${file} (${formatBytes(device.size)}${readOnly ? ", read-only" : ""}) as export "${name}" on ${address}` +
          (tls === undefined ? "" : tls.required ? " (TLS required)" : " (TLS offered)"),
      );
    }
  } catch (error) {
    await server.stop();
    await device.close();
    throw error;
  }

  const signal = await untilStopSignal();
  log(`${signal}: finishing in-flight requests and shutting down`);
  await server.stop();
  await device.close();
  log("stopped cleanly");
  return 0;
}
