// What this host does about one live migration (migration-schema.ts), decided from the record, the
// cluster as the round read it and what this host holds of the migration: pure, so each case is a
// unit test and the simulation drives the same function.
//
// The rules that keep a VM to one running guest:
// - The destination resumes its guest only once the disk's primary is there and served, and only
//   after a transaction that removes the record, conditioned on it and on that primary.
// - The source resumes its guest after a completed transfer only after a transaction that removes the
//   record, conditioned on it and on the primary still being the source. Only one of the two can win.
// - While the transfer has not completed, the source's guest runs and the destination's is paused;
//   cancelling the transfer leaves it so.

import type { MigrationRecord } from "../cluster/migration-schema.js";

/** How long the destination may take to have its incoming QEMU listening. */
export const INCOMING_PREPARE_TIMEOUT_MS = 60_000;

/** What the source holds of the migration. */
export type OutgoingState = "transferring" | "completed" | "failed";
/** What the destination holds of it. */
export type IncomingState = "starting" | "listening" | "completed" | "failed";

export interface MigrationHere {
  /** Source: the transfer's state, or undefined before it started. */
  readonly outgoing?: OutgoingState;
  /** Source: why the transfer failed. */
  readonly failure?: string;
  /** Source: the VM's QEMU runs here. */
  readonly runsHere: boolean;
  /** Destination: its incoming QEMU's state, or undefined when it has none. */
  readonly incoming?: IncomingState;
  /** When this host first saw the record (monotonic ms). */
  readonly seenAtMs: number;
}

export interface MigrationView {
  readonly me: string;
  readonly now: number;
  readonly alive: ReadonlySet<string>;
  /** The host the volume's primary record names. */
  readonly primary: string | undefined;
  /** This host's engine serves the volume. */
  readonly servedHere: boolean;
  /** A switchover of the volume is asked for and not yet carried out. */
  readonly handoverPending: boolean;
}

export type MigrationAction =
  | { readonly kind: "none" }
  /** Destination: start the incoming QEMU, its disk routed to the primary. */
  | { readonly kind: "prepare" }
  /** Destination: resume the guest here (the transfer is complete and the disk is served here). */
  | { readonly kind: "resume-here" }
  /** Destination: its incoming QEMU goes (the source gave up, or died before the transfer ended). */
  | { readonly kind: "abandon"; readonly reason: string }
  /** Source: migrate the QEMU to the destination's incoming one. */
  | { readonly kind: "transfer"; readonly uri: string }
  /** Source: the transfer is complete: the disk's primary moves to the destination. */
  | { readonly kind: "switch" }
  /** Source: the migration ends here, the guest keeps (or goes back to) running on the source. */
  | { readonly kind: "give-up"; readonly reason: string };

const none: MigrationAction = { kind: "none" };

export function decideMigration(record: MigrationRecord, here: MigrationHere, view: MigrationView): MigrationAction {
  if (record.to === view.me) return decideDestination(record, here, view);
  if (record.from === view.me) return decideSource(record, here, view);
  return none;
}

function decideDestination(record: MigrationRecord, here: MigrationHere, view: MigrationView): MigrationAction {
  const incoming = here.incoming;
  if (incoming === "completed") {
    if (view.primary === view.me && view.servedHere) return { kind: "resume-here" };
    // The state is all here and the source's guest is paused: wait for the switchover (or the
    // source's give-up, which removes the record and so ends this QEMU).
    return none;
  }
  if (incoming === "failed") return { kind: "abandon", reason: "the incoming transfer failed" };
  if (!view.alive.has(record.from))
    return incoming === undefined ? none : { kind: "abandon", reason: `the source ${record.from} is down` };
  if (incoming === undefined && record.phase === "requested" && view.primary === record.from)
    return { kind: "prepare" };
  return none;
}

function decideSource(record: MigrationRecord, here: MigrationHere, view: MigrationView): MigrationAction {
  const outgoing = here.outgoing;
  if (outgoing === "failed") return { kind: "give-up", reason: here.failure ?? "the transfer failed" };
  if (outgoing === "completed") {
    if (view.primary !== view.me) return none; // the switchover moved the disk: the destination resumes
    if (record.phase !== "switching") return { kind: "switch" };
    if (view.handoverPending) return none;
    // The switchover was carried out and refused (its event says why): the guest resumes here.
    return { kind: "give-up", reason: `the disk's switchover to ${record.to} was refused` };
  }
  if (outgoing === "transferring") {
    if (!view.alive.has(record.to)) return { kind: "give-up", reason: `the destination ${record.to} is down` };
    return none;
  }
  if (!here.runsHere) return { kind: "give-up", reason: `VM ${record.vm} does not run on ${view.me}` };
  if (view.primary !== view.me) return { kind: "give-up", reason: `its disk's primary is no longer ${view.me}` };
  if (!view.alive.has(record.to)) return { kind: "give-up", reason: `the destination ${record.to} is down` };
  if (record.phase === "incoming" && record.incoming !== undefined) return { kind: "transfer", uri: record.incoming };
  if (view.now - here.seenAtMs >= INCOMING_PREPARE_TIMEOUT_MS)
    return {
      kind: "give-up",
      reason: `the destination ${record.to} did not start its incoming QEMU within ${INCOMING_PREPARE_TIMEOUT_MS / 1000} s`,
    };
  return none;
}
