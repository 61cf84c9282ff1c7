// The agent's watchdog, a separate process so that it keeps running when the agent's event loop does
// not (a hung loop, a SIGSTOP, a stuck system call). The agent writes a byte to the watchdog's stdin
// every watchdogIntervalMs; when none has come for watchdogTimeoutMs, the watchdog SIGKILLs the agent,
// and with it every engine and NBD front it runs, so a frozen primary cannot wake up later and
// complete a write after its lease has expired elsewhere. Run as:
//   node watchdog-process.js AGENT_PID TIMEOUT_MS
// It exits when the agent closes its stdin (a clean stop, or the agent's death).

const [pidText, timeoutText] = process.argv.slice(2);
const pid = Number(pidText);
const timeoutMs = Number(timeoutText);
if (!(Number.isInteger(pid) && pid > 1 && Number.isInteger(timeoutMs) && timeoutMs > 0)) {
  process.stderr.write("usage: watchdog-process AGENT_PID TIMEOUT_MS\n");
  process.exit(2);
}

let last = performance.now();
process.stdin.on("data", () => (last = performance.now()));
process.stdin.on("end", () => process.exit(0));
process.stdin.on("error", () => process.exit(0));
setInterval(
  () => {
    const silentMs = performance.now() - last;
    if (silentMs < timeoutMs) return;
    process.stderr.write(
      `${new Date().toISOString()} watchdog: agent ${pid} silent for ${Math.round(silentMs)} ms; killing it (fence)\n`,
    );
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
    process.exit(0);
  },
  Math.max(10, Math.floor(timeoutMs / 10)),
);
