// How `haven` reads a command line and talks back, without a cluster: global options stand anywhere,
// every command has its own help, a usage error is one line and a hint (exit 2), a negative value
// reaches its option's parser, and tables fit the width they are given.

import assert from "node:assert/strict";
import fc from "fast-check";
import { clusterView } from "../../src/cluster/cluster-view.js";
import { parseCommandArgs, withNegativeValues } from "../../src/cli/args.js";
import { renderStatus } from "../../src/cli/cluster-render.js";
import { readCommandLine } from "../../src/cli/command-line.js";
import { usageTexts } from "../../src/cli/main.js";
import { cutToWidth, fitColumnWidths } from "../../src/cli/table-fit.js";
import { errorText, usageHint, withoutUsageText } from "../../src/cli/usage-error.js";
import { HavenError } from "../../src/core/errors.js";
import { parseSize } from "../../src/util/units.js";
import { clusterRecords, GiB, hostRecord } from "../helpers/cluster-records.js";
import { failsWith } from "../helpers/errors.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** Every test here takes well under a second; one still running after this bound is hung, not slow. */
const test = boundedTest(20_000);

const groups = new Set(["volume", "vm", "disk", "cert", "operator", "host", "cluster", "nbd", "replica"]);
const takesVerb = (noun: string): boolean => groups.has(noun);

test("global options before the command move after it, with their values, in either spelling", () => {
  assert.deepEqual(readCommandLine(["--context", "F", "status"], takesVerb), {
    words: ["status"],
    rest: ["--context", "F"],
    help: false,
    version: false,
  });
  const line = readCommandLine(["--etcd=http://e:1", "volume", "--tls-dir", "D", "show", "db", "--json"], takesVerb);
  assert.deepEqual(line.words, ["volume", "show"]);
  assert.deepEqual(line.rest, ["--etcd=http://e:1", "--tls-dir", "D", "db", "--json"]);
  // After the command words, nothing moves: the command's own parser reads the rest in order.
  assert.deepEqual(readCommandLine(["status", "--context", "F"], takesVerb).rest, ["--context", "F"]);
});

test("an option that is not global before the command is refused, naming it", () => {
  assert.throws(
    () => readCommandLine(["--size", "1G", "volume", "create"], takesVerb),
    failsWith("HAVEN_ERR_USAGE", /option --size before the command/),
  );
  assert.throws(
    () => readCommandLine(["volume", "--size", "1G", "create"], takesVerb),
    failsWith("HAVEN_ERR_USAGE", /before the verb of "volume"/),
  );
  assert.throws(
    () => readCommandLine(["--context"], takesVerb),
    failsWith("HAVEN_ERR_USAGE", /--context needs a value/),
  );
});

test("--help anywhere before a lone -- asks for help; --version, -V and version ask for the version", () => {
  assert.equal(readCommandLine(["vm", "start", "x", "--help"], takesVerb).help, true);
  assert.equal(readCommandLine(["-h", "disk", "add"], takesVerb).help, true);
  assert.equal(readCommandLine(["nbd", "serve", "--", "--help"], takesVerb).help, false);
  for (const argv of [
    ["--version"],
    ["-V"],
    ["version"],
    ["--context", "F", "--version"],
    ["--context", "F", "version"],
  ])
    assert.equal(readCommandLine(argv, takesVerb).version, true, argv.join(" "));
  assert.equal(readCommandLine(["status"], takesVerb).version, false);
});

test("every command and group has a usage of its own, naming itself", () => {
  const texts = usageTexts();
  const commands = texts.map((entry) => entry.command);
  for (const command of [
    "haven vm start",
    "haven disk add",
    "haven cert issue",
    "haven operator add",
    "haven host undrain",
  ])
    assert.ok(commands.includes(command), command);
  for (const { command, usage } of texts) {
    if (command === "haven") continue;
    assert.match(usage, /^usage: haven /, command);
    // The usage of `haven vm start` shows `haven vm start`, not the whole group.
    assert.ok(usage.split("\n")[0]!.startsWith(`usage: ${command}`), `${command}: ${usage.split("\n")[0]}`);
  }
  const verbs = texts.filter((entry) => entry.command.split(" ").length === 3);
  assert.equal(new Set(verbs.map((entry) => entry.usage)).size, verbs.length, "no two commands share a usage");
});

test("a usage error is one line with its code, then where its help is; no usage text follows", () => {
  const error = new HavenError("HAVEN_ERR_USAGE", "--size is required\n\nusage: haven volume create NAME ...");
  assert.equal(
    errorText(error, usageHint("haven volume create")),
    "haven: --size is required [HAVEN_ERR_USAGE]\nRun 'haven volume create --help' for its options.\n",
  );
  assert.equal(usageHint("haven volume", true), "Run 'haven volume --help' for its commands.");
  assert.equal(usageHint("haven"), "Run 'haven --help' for the commands.");
  // Other errors keep every line of their message and get no hint.
  const other = new HavenError("HAVEN_ERR_CONFLICT", "first\nsecond");
  assert.equal(errorText(other, usageHint("haven status")), "haven: first [HAVEN_ERR_CONFLICT]\nsecond\n");
  assert.equal(withoutUsageText("a\nb"), "a\nb");
});

test("a negative value goes to its option (whose parser refuses it clearly), not to parseArgs as an option", () => {
  const options = {
    size: { type: "string" },
    replicas: { type: "string", short: "r" },
    yes: { type: "boolean" },
  } as const;
  assert.deepEqual(withNegativeValues(["--size", "-1G", "-r", "-2", "--yes"], options), [
    "--size=-1G",
    "--replicas=-2",
    "--yes",
  ]);
  // A boolean option takes no value, and after "--" everything is an argument.
  assert.deepEqual(withNegativeValues(["--yes", "-1", "--", "--size", "-1"], options), [
    "--yes",
    "-1",
    "--",
    "--size",
    "-1",
  ]);
  const { values } = parseCommandArgs(["--size", "-1G"], options, "");
  assert.equal(values.size, "-1G");
  assert.throws(
    () => parseSize("-1G", "--size"),
    failsWith("HAVEN_ERR_USAGE", /--size "-1G" is negative; give a size above zero/),
  );
});

test("parseArgs' refusals read as the CLI's: unknown option, missing value, value not taken", () => {
  const options = { size: { type: "string" }, yes: { type: "boolean" } } as const;
  assert.throws(
    () => parseCommandArgs(["--bogus"], options, ""),
    failsWith("HAVEN_ERR_USAGE", /^unknown option --bogus$/),
  );
  assert.throws(
    () => parseCommandArgs(["--size"], options, ""),
    failsWith("HAVEN_ERR_USAGE", /^option --size needs a value$/),
  );
  assert.throws(
    () => parseCommandArgs(["--yes=1"], options, ""),
    failsWith("HAVEN_ERR_USAGE", /^option --yes takes no value$/),
  );
});

test("fitted columns never exceed the width while the first column can shrink, and the least needed give way first", () => {
  fc.assert(
    fc.property(
      fc.array(fc.record({ width: fc.integer({ min: 1, max: 60 }), rank: fc.integer({ min: 0, max: 9 }) }), {
        minLength: 1,
        maxLength: 8,
      }),
      fc.integer({ min: 20, max: 200 }),
      (columns, total) => {
        const needs = columns.map((column) => ({ ...column, min: 8 }));
        const widths = fitColumnWidths(needs, total, 2);
        const shown = widths.filter((width) => width > 0);
        const used = shown.reduce((sum, width) => sum + width, 0) + 2 * (shown.length - 1);
        assert.ok(used <= total, `${used} > ${total}`);
        widths.forEach((width, index) => assert.ok(width <= needs[index]!.width));
        assert.ok(widths[0]! > 0, "the first column stays");
        if (needs[0]!.width <= total) assert.equal(widths[0], needs[0]!.width, "the first column stays whole");
        const natural = needs.reduce((sum, need) => sum + need.width, 0) + 2 * (needs.length - 1);
        if (natural <= total)
          assert.deepEqual(
            widths,
            needs.map((need) => need.width),
          );
      },
    ),
  );
  // The lowest rank shrinks first; a more needed column keeps its width.
  assert.deepEqual(
    fitColumnWidths(
      [
        { width: 10, rank: 9, min: 8 },
        { width: 30, rank: 1, min: 8 },
        { width: 20, rank: 5, min: 8 },
      ],
      50,
      2,
    ),
    [10, 16, 20],
  );
  assert.equal(cutToWidth("node2 in-sync, node1 in-sync", 10), "node2 in-…");
  assert.equal(cutToWidth("short", 10), "short");
});

test("haven status fits 80 columns and keeps each volume's NBD URI whole; without a width nothing is cut", () => {
  const hosts = ["node-with-a-long-name-1", "node-with-a-long-name-2", "node-with-a-long-name-3"].map((name, i) =>
    hostRecord(name, {
      address: `10.0.0.${i + 1}`,
      disks: [
        { name: "ssd0", capacityBytes: 100 * GiB, usedBytes: 1 * GiB },
        { name: "hdd0", capacityBytes: 1024 * GiB, usedBytes: 512 * GiB },
      ],
    }),
  );
  const copies = Object.fromEntries(hosts.map((host) => [host.name, "in-sync" as const]));
  const view = clusterView(clusterRecords({ alive: hosts, dead: [], volumes: [{ name: "database-volume", copies }] }));
  const wide = renderStatus(view);
  assert.ok(
    wide.split("\n").some((line) => line.length > 80),
    "the unfitted status is wider than 80 columns",
  );
  const fitted = renderStatus(view, { width: 80 });
  for (const line of fitted.split("\n")) assert.ok(line.length <= 80, `${line.length}: ${line}`);
  const nbd = view.volumes[0]!.nbd!;
  assert.ok(fitted.includes(nbd), "the NBD URI is whole");
  assert.match(fitted, /^database-volume +healthy +node-with-a-lon… +nbd:/m);
  assert.match(fitted, /^node-with-a-long-name-1 +alive/m);
  assert.match(fitted, /…/);
});
