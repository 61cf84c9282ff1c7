// The dashboard's actions, on the agent API, with the CLI's guards: each calls the cluster function the
// CLI command calls (volume-admin.ts requestSwitchover, vm-admin.ts startVm/stopVm, host-drain.ts,
// disk-requests.ts askHost), so a refusal is the same message in both. Roles as etcd's (etcd-auth.ts):
// the operator role for all of them but disk replace, which needs the admin role. A caller who came with an operator's token acts in etcd as that
// operator (their own etcd login), so etcd's RBAC applies exactly as for their CLI; the events name
// them NAME@dashboard.
//
// Dangerous actions take {"preview": true} first: the same guards run against a store that never
// writes (preview-store.ts), and the answer says what would happen; nothing changes. Long ones (a
// drain, a switchover) answer 202 with a task (dashboard-tasks.ts) and go on in the background.
//
//   POST /v1/dashboard/volumes/:name/switchover   {"to": HOST, "preview"?: boolean}
//   POST /v1/dashboard/hosts/:name/drain          {"allowRestart"?: boolean, "preview"?: boolean}
//   POST /v1/dashboard/hosts/:name/undrain        {}
//   POST /v1/dashboard/vms/:name/start            {"preview"?: boolean}
//   POST /v1/dashboard/vms/:name/stop             {"force"?: boolean, "preview"?: boolean}
//   POST /v1/dashboard/vms/:name/restart          {"preview"?: boolean}
//   POST /v1/dashboard/disks/:host/:disk/identify {"off"?: boolean}
//   POST /v1/dashboard/disks/:host/:disk/replace  {"with": DISK, "preview"?: boolean}   (admin)

import type { FastifyReply } from "fastify";
import { HavenError } from "../core/errors.js";
import { readClusterRecords } from "../cluster/cluster-read.js";
import { askHost } from "../cluster/disk-requests.js";
import { waitUntilInSync } from "../cluster/copy-wait.js";
import { checkReplacement, diskOf, identityText, moveDiskCopies, planMoves } from "../cluster/disk-moves.js";
import { formatBytes } from "../util/units.js";
import { drainHost, drainPreview, undrainHost } from "../cluster/host-drain.js";
import { isDiskName, isHostName, isVmName, isVolumeName, quoteName } from "../cluster/names.js";
import type { ClusterStore } from "../cluster/store.js";
import { waitForSwitchover } from "../cluster/switchover-wait.js";
import { startVm, stopVm } from "../cluster/vm-admin.js";
import { requestSwitchover } from "../cluster/volume-admin.js";
import { bearerToken } from "./auth.js";
import { requireRole, type Caller } from "./callers.js";
import type { DashboardTasks, DashboardTask } from "./dashboard-tasks.js";
import { invalidRequest } from "./errors.js";
import { runGuards } from "./preview-store.js";
import { expectObject } from "./requests.js";
import type { ApiRequest, ApiServer } from "./server.js";

/** How long a switchover the dashboard asked for is followed before its task gives up watching. */
const SWITCHOVER_WAIT_MS = 60_000;
/** How long a disk's host has to answer an identify. */
const DISK_ANSWER_MS = 30_000;
/** Bound on building each new copy of a disk replace (and each switchover it needs). */
const DISK_MOVE_TIMEOUT_MS = 3_600_000;

export interface ActionSources {
  /** The agent's own etcd client. */
  readonly store: ClusterStore;
  /** An etcd client logged in as operator `name` with their token. */
  readonly storeAs: (name: string, token: string) => ClusterStore;
  /** Who called (set when the request was authenticated). */
  readonly callerOf: (reply: FastifyReply) => Caller;
  readonly tasks: DashboardTasks;
}

/** What a preview answers: the guards passed, and what the action would do. */
export interface Preview {
  readonly preview: true;
  readonly summary: string;
  readonly steps: readonly string[];
}

function flag(fields: Record<string, unknown>, name: string): boolean {
  const value = fields[name] ?? false;
  if (typeof value !== "boolean") throw invalidRequest(`field "${name}" must be a boolean`);
  return value;
}

function named(name: string, valid: (name: string) => boolean, what: string): string {
  if (!valid(name)) throw invalidRequest(`${quoteName(name)} is not ${what}`);
  return name;
}

export class DashboardActions {
  constructor(private readonly sources: ActionSources) {}

  register(server: ApiServer): void {
    server.route("/v1/dashboard/volumes/:name/switchover", {
      POST: (request, reply) => this.switchover(request, reply),
    });
    server.route("/v1/dashboard/hosts/:name/drain", { POST: (request, reply) => this.drain(request, reply) });
    server.route("/v1/dashboard/hosts/:name/undrain", { POST: (request, reply) => this.undrain(request, reply) });
    server.route("/v1/dashboard/vms/:name/:action", { POST: (request, reply) => this.vm(request, reply) });
    server.route("/v1/dashboard/disks/:host/:disk/identify", {
      POST: (request, reply) => this.identify(request, reply),
    });
    server.route("/v1/dashboard/disks/:host/:disk/replace", {
      POST: (request, reply) => this.replace(request, reply),
    });
  }

  /**
   * The caller, checked for `needs`, with the store to act through and the actor events name: an
   * operator's own etcd login when they came with their token, else the agent's.
   */
  private actingAs(
    reply: FastifyReply,
    what: string,
    needs: "operator" | "admin" = "operator",
  ): { store: ClusterStore; actor: string; caller: Caller } {
    const caller = this.sources.callerOf(reply);
    requireRole(caller, needs, what);
    const token = bearerToken(reply.request.headers.authorization);
    const operator = token !== undefined && caller.name !== "cluster-token";
    return {
      store: operator ? this.sources.storeAs(caller.name, token) : this.sources.store,
      actor: `${caller.name}@dashboard`,
      caller,
    };
  }

  private async switchover(request: ApiRequest, reply: FastifyReply): Promise<Preview | { task: DashboardTask }> {
    const name = named(request.params.name!, isVolumeName, "a volume name");
    const fields = expectObject(request.body, ["to", "preview"], `{"to": "node2", "preview": true}`);
    if (typeof fields.to !== "string") throw invalidRequest(`field "to" is required: the host to switch over to`);
    const to = named(fields.to, isHostName, "a host name");
    const preview = flag(fields, "preview");
    const { store, actor } = this.actingAs(reply, `a switchover of volume ${name}`);
    if (preview) {
      await runGuards(store, (dry) => requestSwitchover(dry, name, to, { actor }));
      const from = (await readClusterRecords(store)).primaries.get(name)?.host ?? "?";
      return {
        preview: true,
        summary: `volume ${name}: the primary moves from ${from} to ${to}`,
        steps: [
          `${from} stops the engine cleanly (every copy flushed)`,
          `${to} takes the primary at a higher epoch and serves the volume; clients pause briefly, no write is lost`,
        ],
      };
    }
    const asked = new Date();
    const requested = await requestSwitchover(store, name, to, { actor });
    reply.code(202);
    return {
      task: this.sources.tasks.start("switchover", `volume ${name}`, actor, async (line) => {
        line(`switchover of ${name} from ${requested.from} to ${to} asked`);
        const done = await waitForSwitchover(store, name, to, asked, SWITCHOVER_WAIT_MS);
        return { ok: true, summary: `switched over to ${to} (epoch ${done.epoch}, paused ${done.pauseMs} ms)` };
      }),
    };
  }

  private async drain(request: ApiRequest, reply: FastifyReply): Promise<Preview | { task: DashboardTask }> {
    const host = named(request.params.name!, isHostName, "a host name");
    const fields = expectObject(request.body, ["allowRestart", "preview"], `{"allowRestart": false, "preview": true}`);
    const allowRestart = flag(fields, "allowRestart");
    const { store, actor } = this.actingAs(reply, `a drain of host ${host}`);
    if (flag(fields, "preview")) {
      const outcomes = drainPreview(await readClusterRecords(store), host, allowRestart);
      const staying = outcomes.filter((outcome) => !outcome.ok).length;
      return {
        preview: true,
        summary:
          `host ${host} goes in maintenance (nothing is placed, promoted or migrated there)` +
          (outcomes.length === 0 ? "; nothing runs or is served there" : "") +
          (staying > 0 ? `; ${staying} would stay on it` : ""),
        steps: outcomes.map((outcome) => `${outcome.what}: ${outcome.result}`),
      };
    }
    reply.code(202);
    return {
      task: this.sources.tasks.start("drain", `host ${host}`, actor, async (line) => {
        const outcomes = await drainHost(store, host, {
          actor,
          allowRestart,
          signal: new AbortController().signal,
          write: line,
        });
        for (const outcome of outcomes) line(`${outcome.ok ? "ok" : "LEFT"} ${outcome.what}: ${outcome.result}`);
        const left = outcomes.filter((outcome) => !outcome.ok);
        return left.length === 0
          ? { ok: true, summary: `host ${host} drained (${outcomes.length} moved)` }
          : {
              ok: false,
              summary: `host ${host} still runs or serves ${left.map((outcome) => outcome.what).join(", ")}; it stays in maintenance`,
            };
      }),
    };
  }

  private async undrain(request: ApiRequest, reply: FastifyReply): Promise<{ done: string }> {
    const host = named(request.params.name!, isHostName, "a host name");
    expectObject(request.body, [], "{}");
    const { store, actor } = this.actingAs(reply, `an undrain of host ${host}`);
    await undrainHost(store, host, actor);
    return { done: `host ${host}: maintenance ended; VMs and copies may be placed there again` };
  }

  private async vm(request: ApiRequest, reply: FastifyReply): Promise<Preview | { done: string }> {
    const name = named(request.params.name!, isVmName, "a VM name");
    const action = request.params.action!;
    if (action !== "start" && action !== "stop" && action !== "restart")
      throw new HavenError("HAVEN_ERR_NOT_FOUND", `no VM action ${quoteName(action)} (start, stop, restart)`);
    const known = action === "stop" ? ["force", "preview"] : ["preview"];
    const fields = expectObject(request.body, known, `{"preview": true}`);
    const force = action === "stop" && flag(fields, "force");
    const { store, actor } = this.actingAs(reply, `a VM ${action}`);
    const run = (target: ClusterStore): Promise<unknown> =>
      action === "stop"
        ? stopVm(target, name, force, { actor })
        : startVm(target, name, { restart: action === "restart" }, { actor });
    if (flag(fields, "preview")) {
      await runGuards(store, run);
      const vm = (await readClusterRecords(store)).vmStatus.get(name)?.record;
      const where = vm?.host !== undefined ? ` on ${vm.host}` : "";
      const summary =
        action === "stop"
          ? `VM ${name}${where} is stopped${force ? " at once (hard stop)" : " (ACPI power-down)"}; it stays stopped`
          : action === "restart"
            ? `VM ${name}${where} restarts: the guest reboots`
            : `VM ${name} starts`;
      return { preview: true, summary, steps: [] };
    }
    await run(store);
    return { done: `${action} of VM ${name} asked` };
  }

  private async identify(request: ApiRequest, reply: FastifyReply): Promise<{ done: string }> {
    const host = named(request.params.host!, isHostName, "a host name");
    const disk = named(request.params.disk!, isDiskName, "a disk name");
    const off = flag(expectObject(request.body, ["off"], `{"off": false}`), "off");
    const { store, actor } = this.actingAs(reply, `a disk identify`);
    const records = await readClusterRecords(store);
    if (!records.disks.has(`${host}/${disk}`))
      throw new HavenError("HAVEN_ERR_NOT_FOUND", `no disk ${host}/${disk} on record ('haven disk list' shows them)`);
    const answer = await askHost(store, host, { kind: "identify", disk, off }, DISK_ANSWER_MS, actor);
    if (answer.state === "refused") throw new HavenError("HAVEN_ERR_CONFLICT", `${host}: ${answer.result}`);
    return { done: `${host}: ${answer.result}` };
  }

  private async replace(request: ApiRequest, reply: FastifyReply): Promise<Preview | { task: DashboardTask }> {
    const host = named(request.params.host!, isHostName, "a host name");
    const name = named(request.params.disk!, isDiskName, "a disk name");
    const fields = expectObject(request.body, ["with", "preview"], `{"with": "disk1", "preview": true}`);
    if (typeof fields.with !== "string") throw invalidRequest(`field "with" is required: the disk that takes over`);
    const onto = named(fields.with, isDiskName, "a disk name");
    const preview = flag(fields, "preview");
    const { store, actor } = this.actingAs(reply, `a disk replace`, "admin");
    const records = await readClusterRecords(store);
    const disk = diskOf(records, host, name);
    checkReplacement(records, disk, diskOf(records, host, onto));
    const moves = disk.copies.length === 0 ? [] : planMoves(records, host, name, onto);
    if (preview) {
      const total = moves.reduce((sum, move) => sum + move.spec.sizeBytes, 0);
      return {
        preview: true,
        summary:
          `disk ${host}/${name} (${identityText(disk)}): ${moves.length} cop${moves.length === 1 ? "y" : "ies"} ` +
          `(${formatBytes(total)}) move onto ${host}/${onto}; each new copy is in sync before the old one is released`,
        steps: moves.map(
          (move) => `${move.spec.name}: a new copy on ${host}/${onto}, then ${host}/${name}'s is released`,
        ),
      };
    }
    reply.code(202);
    return {
      task: this.sources.tasks.start("disk replace", `disk ${host}/${name}`, actor, async (line) => {
        const outcome = await moveDiskCopies(store, moves, "replace", {
          actor,
          timeoutMs: DISK_MOVE_TIMEOUT_MS,
          signal: new AbortController().signal,
          write: line,
          waitForCopies: (client, copies, timeoutMs, signal) =>
            waitUntilInSync(client, copies, timeoutMs, signal, line),
        });
        return outcome.done
          ? {
              ok: true,
              summary: `disk ${host}/${name}: ${moves.length} cop${moves.length === 1 ? "y" : "ies"} moved onto ${onto}; it holds no copy now and may be removed`,
            }
          : { ok: false, summary: `stopped; ${host}/${name} still holds ${outcome.stoppedAt.spec.name}` };
      }),
    };
  }
}
