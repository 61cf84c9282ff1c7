// The NAME argument of the cluster's volume commands: exactly one, and a name a volume can have (it
// becomes an etcd key, a directory on every copy's disk and the NBD export name).

import { HavenError } from "../core/errors.js";
import { isValidVolumeName } from "../replica/port.js";

export function volumeNameArgument(positionals: readonly string[], usage: string): string {
  if (positionals.length !== 1) {
    throw new HavenError("HAVEN_ERR_USAGE", `expected exactly one volume NAME, got ${positionals.length}\n\n${usage}`);
  }
  const name = positionals[0]!;
  if (!isValidVolumeName(name)) {
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `volume name "${name}" is invalid: use 1 to 63 lowercase letters, digits, '.', '_' or '-', ` +
        `starting with a letter or digit`,
    );
  }
  return name;
}
