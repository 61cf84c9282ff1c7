// Whether a process command line is the QEMU of a given VM: qemuCommand names every guest with
// `-name guest=NAME,...`, and that name is what tells a VM's QEMU apart from whatever process later
// reuses its pid. Pure and free of imports, so the agent's watchdog (a standalone process that must
// start fast and stay small) checks a pid with the same rule as the agent does.

/** A VM's name: what `-name guest=NAME` carries, a directory name, one word of the watchdog's protocol. */
export const VM_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

/**
 * Whether a process command line (argv) is a QEMU named `vmName`: it has `-name` followed by
 * `guest=NAME[,...]` or `NAME[,...]`.
 */
export function commandLineNamesVm(argv: readonly string[], vmName: string): boolean {
  for (let i = 0; i + 1 < argv.length; i++) {
    if (argv[i] !== "-name" && argv[i] !== "--name") continue;
    const first = (argv[i + 1] as string).split(",")[0] as string;
    const name = first.startsWith("guest=") ? first.slice("guest=".length) : first;
    if (name === vmName) return true;
  }
  return false;
}
