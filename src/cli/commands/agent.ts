// `haven agent --config FILE`: the host agent in the foreground until SIGINT/SIGTERM, with its HTTP API
// (src/api/agent-api.ts, over the agent's AgentView) on the config's api.listen. The config is
// validated before anything starts (config.ts, timings.ts), and the API listens before the agent takes
// its lease, so a port in use fails the start before this host joins the cluster. A clean stop
// flushes every volume served here and gives the lease back, so a standby takes over at once instead
// of after the lease's TTL; the API answers until the agent has stopped.

import { readFile } from "node:fs/promises";
import { HavenError } from "../../core/errors.js";
import { Agent } from "../../agent/agent.js";
import { AgentApiServer } from "../../api/agent-api.js";
import { realWorld } from "../../agent/real-world.js";
import { loadAgentConfig } from "../../agent/config.js";
import { parseCommand, refuseArguments } from "../args.js";
import { readSecretFile } from "../secret.js";
import { untilStopSignal } from "../signals.js";
import { loadTlsIdentitySync, serverTlsOptions } from "../../security/tls-identity.js";
import { EtcdClient } from "../../cluster/etcd-client.js";
import type { ClusterStore } from "../../cluster/store.js";
import type { AgentConfig } from "../../agent/config.js";
import { digest } from "../../api/auth.js";

export const AGENT_USAGE = `usage: haven agent --config FILE

Runs this host's agent: keeps its cluster lease in etcd, serves its copies to the other hosts, serves
the volumes it is primary for over NBD, and fails volumes over to this host when their primary's host
is gone and this host's copy is recorded in sync. Stops cleanly on SIGINT/SIGTERM.

options:
  --config FILE   the agent's JSON config (host, etcd, api, replication, nbd, disks, timings)`;

export async function agentCommand(argv: string[]): Promise<number> {
  const parsed = parseCommand(argv, { config: { type: "string" } }, AGENT_USAGE);
  if (parsed === undefined) return 0; // --help was printed
  const { values, positionals } = parsed;
  refuseArguments(positionals, AGENT_USAGE);
  if (typeof values.config !== "string")
    throw new HavenError("HAVEN_ERR_USAGE", `give --config FILE\n\n${AGENT_USAGE}`);
  const config = await loadAgentConfig(values.config);
  const secret = await readSecretFile(config.replication.secretFile);
  const token = (await readFile(config.api.tokenFile, "utf8")).trim();
  if (token.length < 16)
    throw new HavenError(
      "HAVEN_ERR_CONFIG",
      `${values.config}: the API token in ${config.api.tokenFile} must be at least 16 characters`,
    );
  const log = (line: string): void => {
    process.stderr.write(`${new Date().toISOString()} ${config.host.name}: ${line}\n`);
  };
  // The replica server asks the agent where a volume's copy lives; the agent exists once the world does.
  const world = realWorld(config, secret, log, (volume, disk) => agent.copyDirectory(volume, disk));
  const agent = new Agent(config, world, log);
  const api = new AgentApiServer(agent, token, {
    log,
    callers: { operatorByDigest: world.operators.operatorByDigest, revoked: world.operators.revoked },
    // With the host's certificate the API is HTTPS; a client certificate is asked for, not required
    // (a token names the caller too), and only one the cluster CA signed counts.
    ...(config.tls !== undefined && {
      https: { ...serverTlsOptions(loadTlsIdentitySync(config.tls.dir)), rejectUnauthorized: false },
    }),
    // ---- the web dashboard: the cluster's state from the agent's etcd client, and operators' own logins
    dashboard: { store: world.store, storeAs: operatorStores(config), host: config.host.name },
  });
  const scheme = config.tls !== undefined ? "https" : "http";
  log(`agent API on ${scheme}://${await api.listen(config.api.listen.host, config.api.listen.port)}`);
  try {
    await agent.start();
  } catch (error) {
    await api.stop();
    world.stopCaches();
    throw error;
  }
  const signal = await untilStopSignal();
  log(`${signal}: stopping every volume served here, then giving the lease back`);
  await agent.stop();
  await api.stop();
  world.stopCaches();
  log("stopped cleanly");
  return 0;
}

/** Operators' etcd logins the dashboard keeps, the most recently used; an older one logs in again. */
const MAX_OPERATOR_STORES = 16;

/**
 * An etcd client per operator and token, logged in as that operator (as the CLI's connectCluster
 * does), over this host's TLS identity: etcd then checks the operator's own role on every write the
 * dashboard makes for them.
 */
function operatorStores(config: AgentConfig): (name: string, token: string) => ClusterStore {
  const identity = config.tls !== undefined ? loadTlsIdentitySync(config.tls.dir) : undefined;
  const stores = new Map<string, ClusterStore>();
  return (name, token) => {
    const key = `${name} ${digest(token).toString("hex")}`;
    let store = stores.get(key);
    if (store === undefined) {
      store = new EtcdClient([...config.etcd.endpoints], {
        tls: identity,
        credentials: { user: name, password: token },
      });
      if (stores.size >= MAX_OPERATOR_STORES) stores.delete(stores.keys().next().value!);
    }
    stores.delete(key);
    stores.set(key, store);
    return store;
  };
}
