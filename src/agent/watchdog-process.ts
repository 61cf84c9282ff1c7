// The agent's watchdog, a separate process so that it keeps running when the agent's event loop does
// not (a hung loop, a SIGSTOP, a stuck system call), and when the agent is gone (kill -9). It fences the
// host for an agent that cannot: a frozen primary must not wake up later and complete a write after its
// lease has expired elsewhere, and a VM must not run on here while its host's agent is dead or hung,
// because another host boots it once the lease has expired (a VM never runs twice: DESIGN.md).
// Run as:
//   node watchdog-process.js AGENT_PID TIMEOUT_MS [REPORT_FILE]
// The agent writes lines to its stdin (watchdog-protocol.ts): `kick` every watchdogIntervalMs,
// `vm +PID NAME` / `vm -PID` when it starts / stops a VM's QEMU (spawned detached, in a process group of
// its own, so killing the agent does not kill it), `bye` on a clean stop. The watchdog:
// - when no kick has come for TIMEOUT_MS: SIGKILLs the agent (and with it every engine and NBD front it
//   runs), then every tracked QEMU, and exits;
// - when its stdin ends or fails without a `bye` first (the agent died: nothing holds the pipe's other
//   end any more): SIGKILLs every tracked QEMU at once and exits;
// - on `bye`: exits and kills nothing.
// A tracked pid is killed only while /proc/PID/cmdline still names its VM (`-name guest=NAME`), so a pid
// reused by another process after its QEMU exited is never killed. Every kill, skip and ignored line is
// logged to stderr (the agent's log) with the reason. Every kill is also appended to REPORT_FILE (one
// JSON object a line: time and message): the watchdog has no way to etcd, so the host's next agent
// records them as cluster events (watchdog-reports.ts).

import { commandLineNamesVm } from "../vm/qemu-name.js";
import { WATCHDOG_MAX_LINE_BYTES, parseWatchdogLine } from "./watchdog-protocol.js";
import { commandLineOf } from "../util/processes.js";
import { appendWatchdogReport } from "./watchdog-reports.js";

/** More VMs than any host runs; a `vm +` beyond it is refused and logged rather than grown without bound. */
const MAX_TRACKED_VMS = 4096;

const [pidText, timeoutText, reportFile] = process.argv.slice(2);
const agentPid = Number(pidText);
const timeoutMs = Number(timeoutText);
if (!(Number.isInteger(agentPid) && agentPid > 1 && Number.isInteger(timeoutMs) && timeoutMs > 0)) {
  process.stderr.write("usage: watchdog-process AGENT_PID TIMEOUT_MS [REPORT_FILE]\n");
  process.exit(2);
}

/** Tracked QEMUs: pid → VM name. */
const vms = new Map<number, string>();
let lastKick = performance.now();
/** The end of the input after its last newline (a line not complete yet). */
let partial = "";
/** Set while the rest of an over-long line is being dropped. */
let dropping = false;

function log(message: string): void {
  process.stderr.write(`${new Date().toISOString()} watchdog: ${message}\n`);
}

/** A kill, for the cluster's events (written by the host's next agent). */
function report(message: string): void {
  if (reportFile === undefined) return;
  try {
    appendWatchdogReport(reportFile, { time: new Date().toISOString(), message });
  } catch (error) {
    log(`could not write the report to ${reportFile}: ${(error as Error).message}`);
  }
}

function killVms(reason: string): void {
  for (const [pid, name] of vms) {
    const argv = commandLineOf(pid);
    if (argv === undefined) {
      log(`VM ${name}'s QEMU (pid ${pid}) is gone already`);
      continue;
    }
    if (!commandLineNamesVm(argv, name)) {
      log(`not killing pid ${pid}: its command line no longer names VM ${name} (the pid was reused)`);
      continue;
    }
    try {
      process.kill(pid, "SIGKILL");
      log(`killed VM ${name}'s QEMU (pid ${pid}): ${reason}`);
      report(`the watchdog killed VM ${name}'s QEMU (pid ${pid}): ${reason}`);
    } catch (error) {
      log(`could not kill VM ${name}'s QEMU (pid ${pid}): ${(error as Error).message}`);
    }
  }
  vms.clear();
}

function onLine(line: string): void {
  const message = parseWatchdogLine(line);
  if (message === undefined) {
    log(`ignored a line that is not a watchdog message: ${JSON.stringify(line.slice(0, 80))}`);
    return;
  }
  switch (message.kind) {
    case "kick":
      lastKick = performance.now();
      return;
    case "track":
      if (!vms.has(message.pid) && vms.size >= MAX_TRACKED_VMS) {
        log(`cannot track VM ${message.name} (pid ${message.pid}): already ${MAX_TRACKED_VMS} tracked`);
        return;
      }
      vms.set(message.pid, message.name);
      return;
    case "untrack":
      vms.delete(message.pid);
      return;
    case "bye":
      if (vms.size > 0)
        log(`the agent stopped cleanly with VMs still tracked (${[...vms.keys()].join(", ")}); leaving them`);
      process.exit(0);
  }
}

function tooLong(): void {
  log(`ignored a line longer than ${WATCHDOG_MAX_LINE_BYTES} bytes`);
}

process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk: string) => {
  const lines = (partial + chunk).split("\n");
  partial = lines.pop() as string;
  for (const line of lines) {
    if (dropping) dropping = false;
    else if (line.length > WATCHDOG_MAX_LINE_BYTES) tooLong();
    else onLine(line);
  }
  if (partial.length > WATCHDOG_MAX_LINE_BYTES) {
    if (!dropping) tooLong();
    dropping = true;
    partial = "";
  }
});
const agentGone = (how: string): void => {
  killVms(`the agent ${how} without saying bye (it died)`);
  process.exit(0);
};
process.stdin.on("end", () => agentGone("closed the watchdog's stdin"));
process.stdin.on("error", (error) => agentGone(`broke the watchdog's stdin (${error.message})`));

setInterval(
  () => {
    const silentMs = performance.now() - lastKick;
    if (silentMs < timeoutMs) return;
    log(`agent ${agentPid} silent for ${Math.round(silentMs)} ms; killing it (fence)`);
    try {
      process.kill(agentPid, "SIGKILL");
      report(
        `the watchdog killed the agent (pid ${agentPid}): its event loop was silent for ${Math.round(silentMs)} ms ` +
          `(limit ${timeoutMs} ms), so it could no longer keep its writes within its lease`,
      );
    } catch {
      // already gone
    }
    killVms(`agent ${agentPid} hung (silent for ${Math.round(silentMs)} ms)`);
    process.exit(0);
  },
  Math.max(10, Math.floor(timeoutMs / 10)),
);
