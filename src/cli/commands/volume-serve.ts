// `haven volume serve NAME`: runs a volume's engine over its replicas (local directories and remote
// replica servers) and serves it over NBD in the foreground until SIGINT/SIGTERM, with the engine's
// HTTP API on --api-listen (guarded by the bearer token in --api-token-file) for `haven volume
// status`, verify and split-brain resolution.

import { HavenError } from "../../core/errors.js";
import { EngineApiServer } from "../../api/engine-api.js";
import { VolumeEngine, MAX_REPLICAS } from "../../engine/engine.js";
import { NbdServer, type Listen } from "../../nbd/server.js";
import { parseReplicaLocation, replicaOpener } from "../../replica/open-replica.js";
import { isValidVolumeName } from "../../replica/port.js";
import { formatBytes, parseHostPort, parseSize } from "../../util/units.js";
import { parseCommand } from "../args.js";
import { readApiTokenFile } from "../api-token.js";
import { readSecretFile } from "../secret.js";
import { untilStopSignal } from "../signals.js";

export const VOLUME_SERVE_USAGE = `usage: haven volume serve NAME --replica DIR|tcp://HOST:PORT ... (--listen HOST:PORT | --socket PATH) [options]

Runs volume NAME over 1 to ${MAX_REPLICAS} replicas and serves it over NBD until SIGINT or SIGTERM.
Writes complete only when every in-sync replica has them; a failing replica is dropped, tracked and
resynced when it returns. A replica DIR holds the copy in DIR/NAME/ (data.raw is a plain raw image).

options:
  --replica LOCATION      a local directory, or tcp://HOST:PORT of a 'haven replica serve' (repeat, 1-${MAX_REPLICAS})
  --size SIZE             create the volume (e.g. 10G) if no replica holds it yet; checked otherwise
  --secret-file FILE      the cluster's shared secret, needed for remote replicas
  --listen HOST:PORT      serve NBD on TCP
  --socket PATH           serve NBD on a unix socket
  --epoch N               writer epoch (default: one above the highest any replica has seen)
  --api-listen HOST:PORT  HTTP API for 'haven volume status|verify|resolve-split-brain'
  --api-token-file FILE   the bearer token every API request must carry (required with --api-listen;
                          at least 16 characters; clients give it with --token-file or $HAVEN_API_TOKEN)
  --survivor LOCATION     at start, after a split brain: the replica whose data survives (others are rebuilt)
  --resync-rate RATE      resync/rebuild ceiling per second when clients are idle (default 1G)
  --resync-busy-rate RATE ceiling while clients are doing I/O (default 64M)
  --writeback MS          flush every replica this long after writes even if the client does not, so a
                          replica that drops out resyncs only its last moments (default 5000; 0: never)
  --replica-timeout MS    a remote replica not answering within MS is faulted (default 10000)
  --startup-wait MS       how long start waits for every replica to be reachable (default 10000)
  --degraded-start        start even if some replicas stay unreachable (missing ones are created empty and
                          rebuilt), when the replicas' metadata shows the reachable ones hold every
                          acknowledged write; refused otherwise, since a missing replica may be newer
  --force                 start without the missing replicas even when the metadata cannot show the
                          reachable ones are the newest (their disk was replaced, or they were removed on
                          purpose): any write only a missing replica took is lost (logged as a warning)`;

export async function volumeServe(argv: string[]): Promise<number> {
  const parsed = parseCommand(
    argv,
    {
      replica: { type: "string", multiple: true },
      size: { type: "string" },
      "secret-file": { type: "string" },
      listen: { type: "string" },
      socket: { type: "string" },
      epoch: { type: "string" },
      "api-listen": { type: "string" },
      "api-token-file": { type: "string" },
      survivor: { type: "string" },
      "resync-rate": { type: "string" },
      "resync-busy-rate": { type: "string" },
      "replica-timeout": { type: "string" },
      writeback: { type: "string" },
      "startup-wait": { type: "string" },
      "degraded-start": { type: "boolean" },
      force: { type: "boolean" },
    },
    VOLUME_SERVE_USAGE,
  );
  if (parsed === undefined) return 0; // --help was printed
  const { values, positionals } = parsed;
  const usage = (text: string): HavenError => new HavenError("HAVEN_ERR_USAGE", `${text}\n\n${VOLUME_SERVE_USAGE}`);
  if (positionals.length !== 1) throw usage(`expected exactly one volume NAME, got ${positionals.length}`);
  const name = positionals[0]!;
  if (!isValidVolumeName(name)) throw usage(`volume name "${name}" is not valid: use a-z, 0-9, '.', '_' and '-'`);
  const locations = (values.replica as unknown as string[] | undefined) ?? [];
  if (locations.length === 0) throw usage("at least one --replica is required");
  locations.forEach((location) => parseReplicaLocation(location));
  const listens: Listen[] = [];
  if (typeof values.listen === "string") listens.push({ kind: "tcp", ...parseHostPort(values.listen, "--listen") });
  if (typeof values.socket === "string") listens.push({ kind: "unix", path: values.socket });
  if (listens.length === 0) throw usage("give --listen HOST:PORT or --socket PATH for the NBD front");
  const epoch = values.epoch === undefined ? undefined : parseCount(values.epoch as string, "--epoch");
  const api =
    typeof values["api-listen"] === "string" ? parseHostPort(values["api-listen"], "--api-listen") : undefined;
  if (api !== undefined && typeof values["api-token-file"] !== "string")
    throw usage("--api-listen needs --api-token-file FILE: the engine API takes no request without its token");
  if (api === undefined && values["api-token-file"] !== undefined)
    throw usage("--api-token-file goes with --api-listen");
  const apiToken =
    typeof values["api-token-file"] === "string"
      ? await readApiTokenFile(values["api-token-file"], "--api-token-file")
      : undefined;
  const secret = typeof values["secret-file"] === "string" ? await readSecretFile(values["secret-file"]) : undefined;
  const timeout =
    values["replica-timeout"] === undefined
      ? 10_000
      : parseCount(values["replica-timeout"] as string, "--replica-timeout");

  const log = (line: string): void => {
    process.stderr.write(`${new Date().toISOString()} ${line}\n`);
  };
  const engine = new VolumeEngine({
    name,
    locations,
    opener: replicaOpener({
      ...(secret && { secret }),
      requestTimeoutMs: timeout,
      connectTimeoutMs: Math.min(timeout, 5000),
    }),
    ...(typeof values.size === "string" && { sizeBytes: parseSize(values.size, "--size") }),
    ...(epoch !== undefined && { epoch }),
    ...(typeof values.survivor === "string" && { survivor: values.survivor }),
    resync: {
      ...(typeof values["resync-rate"] === "string" && {
        maxBytesPerSecond: parseSize(values["resync-rate"], "--resync-rate"),
      }),
      ...(typeof values["resync-busy-rate"] === "string" && {
        busyBytesPerSecond: parseSize(values["resync-busy-rate"], "--resync-busy-rate"),
      }),
    },
    ...(values["startup-wait"] !== undefined && {
      startupWaitMs: parseCount(values["startup-wait"] as string, "--startup-wait"),
    }),
    // The operator's --degraded-start asks for the metadata's proof; only the control plane vouches
    // for a copy without it (allowDegradedStart), and only --force starts without either.
    degradedStart: values["degraded-start"] === true,
    force: values.force === true,
    ...(values.writeback !== undefined && { writebackMs: parseCount(values.writeback as string, "--writeback") }),
    log,
  });
  if (values.force === true)
    log("WARNING: --force: the volume may start from copies that lack writes a missing copy holds");
  await engine.start();
  const nbd = new NbdServer({ exports: [{ name, description: `Haven volume ${name}`, device: engine }], log });
  const apiServer = api && apiToken !== undefined ? new EngineApiServer(engine, apiToken, { log }) : undefined;
  try {
    for (const where of listens) {
      const address = await nbd.listen(where);
      engine.nbdUris.push(
        where.kind === "unix" ? `nbd+unix:///${name}?socket=${where.path}` : `nbd://${address}/${name}`,
      );
      log(`serving volume ${name} (${formatBytes(engine.size)}) on ${address}`);
    }
    if (apiServer && api) log(`engine API on http://${await apiServer.listen(api.host, api.port)}`);
  } catch (error) {
    await nbd.stop();
    await apiServer?.stop();
    await engine.stop();
    throw error;
  }
  const signal = await untilStopSignal();
  log(`${signal}: finishing in-flight requests, flushing every replica`);
  await nbd.stop();
  await apiServer?.stop();
  await engine.stop();
  log("stopped cleanly");
  return 0;
}

function parseCount(text: string, flag: string): number {
  if (!/^\d{1,15}$/.test(text))
    throw new HavenError("HAVEN_ERR_USAGE", `${flag} must be a whole number, not "${text}"`);
  return Number(text);
}
