// `haven volume resolve-split-brain NAME --survivor LOCATION`: the explicit command that ends a split
// brain (DESIGN.md rule 5): the operator names the copy whose data survives, and the other side of
// the split is rebuilt from it. The volume's NAME is asked for, and checked against the engine's, so
// that a wrong --api cannot discard the data of another volume.

import { HavenError } from "../../core/errors.js";
import { renderVolumeStatus } from "../status-render.js";
import { parseCommand } from "../args.js";
import { ENGINE_API_OPTIONS, ENGINE_API_OPTIONS_USAGE, engineApiFromOptions } from "../engine-api-client.js";
import { terminalRenderOptions } from "../terminal.js";

export const VOLUME_RESOLVE_SPLIT_BRAIN_USAGE = `usage: haven volume resolve-split-brain NAME --survivor LOCATION --api HOST:PORT [--token-file FILE]

Ends a split brain of volume NAME: the copy at LOCATION (as 'haven volume status' shows it) keeps its
data, and the copies on the other side of the split are rebuilt from it. Their changes since the
split are lost: 'haven volume status' shows how much each side changed. While the engine serves the
volume, LOCATION must be one of its in-sync copies; to keep the other side's data instead, stop the
engine and restart 'haven volume serve' with --survivor.

options:
  --survivor LOCATION  the copy whose data survives
${ENGINE_API_OPTIONS_USAGE}
                       (the engine must serve volume NAME)`;

export async function volumeResolveSplitBrain(argv: string[]): Promise<number> {
  const usage = VOLUME_RESOLVE_SPLIT_BRAIN_USAGE;
  const parsed = parseCommand(argv, { survivor: { type: "string" }, ...ENGINE_API_OPTIONS }, usage);
  if (parsed === undefined) return 0; // --help was printed
  const { values, positionals } = parsed;
  if (positionals.length !== 1)
    throw new HavenError("HAVEN_ERR_USAGE", `expected exactly one volume NAME, got ${positionals.length}\n\n${usage}`);
  const name = positionals[0]!;
  if (typeof values.survivor !== "string" || values.survivor === "")
    throw new HavenError("HAVEN_ERR_USAGE", `--survivor LOCATION is required\n\n${usage}`);
  const survivor = values.survivor;
  const client = await engineApiFromOptions(values, usage);

  const before = await client.status();
  if (before.name !== name) {
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `the engine at ${client.address} serves volume "${before.name}", not "${name}"; check NAME and --api\n\n${usage}`,
    );
  }
  const after = await client.resolveSplitBrain(survivor);
  process.stdout.write(
    `split brain of volume ${name} resolved: ${survivor} survives, the other side is rebuilt from it\n\n` +
      renderVolumeStatus(after, { ...terminalRenderOptions(), api: client.address }),
  );
  return 0;
}
