// Who the CLI acts as, for the event log: the operator whose token the context names, on this machine
// ("alice@laptop"), or "cli@HOSTNAME" when the cluster runs without operators (a local insecure one).

import { hostname } from "node:os";

let operator: string | undefined;

/** Called once the context is read: the operator the CLI authenticates as. */
export function actAs(name: string | undefined): void {
  operator = name;
}

/** The actor to record in events for what this command does. */
export function cliActor(): string {
  return `${operator ?? "cli"}@${hostname()}`;
}
