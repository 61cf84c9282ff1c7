// The `haven` command line as an operator meets it, against a real local cluster (etcd and three host
// agents, no VMs): global options anywhere, --version, each command's own --help, one usage-error
// style, clear refusals (negative sizes, more copies than hosts, an unknown host, a promote that should
// be a switchover), a read etcd does not answer, the API token of `volume status`, tables that fit 80
// columns, and --watch.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { clusterUp, localHostPorts, type LocalClusterState } from "../../src/cluster/local-cluster.js";
import { writeContext } from "../../src/cli/context.js";
import { packageRoot } from "../../src/util/repo-root.js";
import { haveEtcd } from "../helpers/etcd.js";
import { HAVEN_BIN, run, tempDir } from "../helpers/server-process.js";
import { freeBasePort, stopLocalCluster, until, TEST_TIMINGS } from "../helpers/cluster.js";

const skip = !haveEtcd() ? "needs etcd" : false;

// The suite takes about a minute on a busy machine; one still running after 5 minutes is hung.
describe("the haven command line against a local cluster", { skip, timeout: 300_000 }, () => {
  const dir = tempDir("haven-cli-surface-");
  const clusterDir = join(dir.path, "cluster");
  const context = join(dir.path, "context.json");
  let cluster: LocalClusterState;
  let basePort: number;
  const version = (JSON.parse(readFileSync(join(packageRoot(), "package.json"), "utf8")) as { version: string })
    .version;

  /** No configuration but what a test gives: no HAVEN_* variables, no COLUMNS, no colors. */
  function cleanEnv(): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = { ...process.env, XDG_CONFIG_HOME: join(dir.path, "config"), NO_COLOR: "1" };
    for (const name of ["HAVEN_ETCD", "HAVEN_CONTEXT", "HAVEN_TLS_DIR", "HAVEN_API_TOKEN", "COLUMNS"]) delete env[name];
    return env;
  }
  const haven = (...args: string[]) =>
    run(process.execPath, [HAVEN_BIN, ...args], { timeoutMs: 60_000, env: cleanEnv() });

  /** `haven ARGS...` left running, its output collected; stopped by pid in the test's finally. */
  function watch(...args: string[]): { child: ChildProcess; output: () => string; exited: Promise<number | null> } {
    const child = spawn(process.execPath, [HAVEN_BIN, ...args], { stdio: ["ignore", "pipe", "pipe"], env: cleanEnv() });
    let output = "";
    child.stdout!.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")));
    child.stderr!.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")));
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    return { child, output: () => output, exited };
  }
  function stopWatch(child: ChildProcess): void {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  }

  before(async () => {
    basePort = await freeBasePort();
    cluster = await clusterUp({ dir: clusterDir, hosts: 3, basePort, timings: { ...TEST_TIMINGS } });
    writeContext(context, {
      etcd: [...cluster.endpoints],
      clusterDir,
      ...(cluster.tlsDir !== undefined && { tls: cluster.tlsDir }),
    });
    await until("three live hosts", async () => {
      const status = await haven("status", "--context", context, "--json");
      return status.code === 0 &&
        (JSON.parse(status.stdout) as { summary: { aliveHosts: number } }).summary.aliveHosts === 3
        ? true
        : undefined;
    });
    const created = await haven("volume", "create", "db", "--size", "64M", "--replicas", "2", "--context", context);
    assert.equal(created.code, 0, created.stderr);
  });

  after(async () => {
    await stopLocalCluster(clusterDir);
    dir.remove();
  });

  test("global options work before the command, between its words and after it", async () => {
    const before = await haven("--context", context, "status");
    assert.equal(before.code, 0, before.stderr);
    assert.match(before.stdout, /^3 hosts \(3 alive\), 1 volume/);
    const afterIt = await haven("status", "--context", context);
    assert.equal(afterIt.stdout.split("\n")[0], before.stdout.split("\n")[0]);
    const between = await haven(`--context=${context}`, "volume", "--json", "list");
    assert.equal(between.code, 0, between.stderr);
    assert.deepEqual(
      (JSON.parse(between.stdout) as { name: string }[]).map((volume) => volume.name),
      ["db"],
    );
    const refused = await haven("--size", "1G", "status", "--context", context);
    assert.equal(refused.code, 2);
    assert.match(refused.stderr, /^haven: option --size before the command: only --etcd, --context, --tls-dir/);
  });

  test("haven --version, -V and version print the version, with global options beside them", async () => {
    for (const args of [
      ["--version"],
      ["-V"],
      ["version"],
      ["--context", context, "--version"],
      ["--context", context, "version"],
    ]) {
      const result = await haven(...args);
      assert.equal(result.code, 0, `${args.join(" ")}: ${result.stderr}`);
      assert.equal(result.stdout, `haven ${version}\n`, args.join(" "));
    }
    assert.deepEqual(JSON.parse((await haven("version", "--json")).stdout), { version });
  });

  test("--help on every group and command prints its own usage and exits 0", async () => {
    const seen = new Set<string>();
    for (const command of [
      ["vm"],
      ["vm", "start"],
      ["vm", "show"],
      ["disk", "add"],
      ["disk", "list"],
      ["cert", "issue"],
      ["cert", "revoke"],
      ["operator", "add"],
      ["operator", "revoke"],
      ["volume", "create"],
      ["host", "undrain"],
      ["status"],
    ]) {
      const result = await haven(...command, "--help");
      assert.equal(result.code, 0, `${command.join(" ")}: ${result.stderr}`);
      assert.ok(
        result.stdout.startsWith(`usage: haven ${command.join(" ")}`),
        `${command.join(" ")}: ${result.stdout.slice(0, 80)}`,
      );
      assert.ok(!seen.has(result.stdout), `${command.join(" ")} shares its usage with another command`);
      seen.add(result.stdout);
    }
    // --help anywhere on the line, after other options, even before the command.
    const late = await haven("--help", "volume", "create", "x", "--size", "1G");
    assert.ok(late.stdout.startsWith("usage: haven volume create"), late.stdout.slice(0, 80));
  });

  test("every usage error is one line with its code, then the command's --help; exit 2", async () => {
    const cases: [string[], string, string][] = [
      [["volume", "create", "x"], "--size is required", "Run 'haven volume create --help' for its options."],
      [
        ["volume", "create", "x", "--size", "1G", "--bogus"],
        "unknown option --bogus",
        "Run 'haven volume create --help' for its options.",
      ],
      [["disk", "add", "h1"], "give HOST and PATH: disk add HOST PATH", "Run 'haven disk add --help' for its options."],
      [["vm", "start"], "the VM's NAME is missing", "Run 'haven vm start --help' for its options."],
      [
        ["volume", "frob"],
        'unknown or missing verb for "volume" (known: serve, status, verify, resolve-split-brain, create, delete, list, promote, switchover, resize, show, add-copy, remove-copy, import, export)',
        "Run 'haven volume --help' for its commands.",
      ],
      [["frob"], 'unknown command "frob"', "Run 'haven --help' for the commands."],
      [[], "no command given", "Run 'haven --help' for the commands."],
    ];
    for (const [args, message, hint] of cases) {
      const result = await haven(...args, ...(args.length > 1 ? ["--context", context] : []));
      assert.equal(result.code, 2, `${args.join(" ")}: ${result.stderr}`);
      assert.equal(result.stderr, `haven: ${message} [HAVEN_ERR_USAGE]\n${hint}\n`, args.join(" "));
      assert.equal(result.stdout, "");
    }
  });

  test("negative or odd sizes and counts get their own message, and nothing is created", async () => {
    const cases: [string[], RegExp][] = [
      [
        ["--size", "-1G"],
        /^haven: --size "-1G" is negative; give a size above zero, such as 512M or 10G \[HAVEN_ERR_USAGE\]$/m,
      ],
      [
        ["--size", "1G", "--replicas", "-2"],
        /^haven: --replicas must be a whole number from 1 to 4, got "-2" \[HAVEN_ERR_USAGE\]$/m,
      ],
      [["--size", "1G", "--replicas", "two"], /--replicas must be a whole number from 1 to 4, got "two"/],
      [["--size"], /^haven: option --size needs a value \[HAVEN_ERR_USAGE\]$/m],
      [["--size", "1G", "--wait-timeout", "-5"], /--wait-timeout must be a number of seconds above 0.*got "-5"/],
    ];
    for (const [options, message] of cases) {
      const result = await haven("volume", "create", "neg", ...options, "--context", context);
      assert.equal(result.code, 2, `${options.join(" ")}: ${result.stderr}`);
      assert.match(result.stderr, message, options.join(" "));
    }
    const list = await haven("volume", "list", "--json", "--context", context);
    assert.deepEqual(
      (JSON.parse(list.stdout) as { name: string }[]).map((volume) => volume.name),
      ["db"],
    );
  });

  test("more copies than live hosts names the hosts, not a lack of space", async () => {
    const result = await haven("volume", "create", "four", "--size", "64M", "--replicas", "4", "--context", context);
    assert.equal(result.code, 1, result.stderr);
    assert.match(
      result.stderr,
      /^haven: 4 copies need 4 live hosts \(each copy goes on a host of its own\), but only 3 can take one \(h1, h2, h3\): ask for 3 copies or fewer, or bring more hosts up \[HAVEN_ERR_INVALID_REQUEST\]$/m,
    );
    assert.doesNotMatch(result.stderr, /NO_SPACE/);
  });

  test("a switchover or promote to a host that does not exist says so and lists the hosts", async () => {
    for (const args of [
      ["volume", "switchover", "db", "--to", "h9"],
      ["volume", "promote", "db", "--host", "h9"],
      ["volume", "promote", "db", "--host", "h9", "--force"],
    ]) {
      const result = await haven(...args, "--context", context);
      assert.equal(result.code, 3, `${args.join(" ")}: ${result.stderr}`);
      assert.match(
        result.stderr,
        /^haven: there is no host "h9" in the cluster \(hosts: h1, h2, h3\) \[HAVEN_ERR_NOT_FOUND\]$/m,
      );
    }
  });

  test("promote while the primary lives suggests the switchover that works, with or without --force", async () => {
    const volume = JSON.parse((await haven("volume", "show", "db", "--json", "--context", context)).stdout) as {
      primary: { host: string };
      copies: { host: string }[];
    };
    const other = volume.copies.map((copy) => copy.host).find((host) => host !== volume.primary.host)!;
    for (const force of [[], ["--force"]]) {
      const result = await haven("volume", "promote", "db", "--host", other, ...force, "--context", context);
      assert.equal(result.code, 1, result.stderr);
      assert.match(result.stderr, new RegExp(`primary ${volume.primary.host} is alive`));
      assert.match(result.stderr, new RegExp(`haven volume switchover db --to ${other} \\[HAVEN_ERR_CONFLICT\\]`));
      assert.doesNotMatch(result.stderr, /--force \[/, "it does not suggest a --force that would be refused");
    }
  });

  test("volume status --api takes the token from the context's cluster, or names the token refused", async () => {
    const volume = JSON.parse((await haven("volume", "show", "db", "--json", "--context", context)).stdout) as {
      primary: { host: string };
    };
    const api = `127.0.0.1:${localHostPorts(basePort, volume.primary.host).api}`;
    const status = await haven(
      "volume",
      "status",
      "--api",
      `https://${api}`,
      "--volume",
      "db",
      "--json",
      "--context",
      context,
    );
    assert.equal(status.code, 0, status.stderr);
    assert.equal((JSON.parse(status.stdout) as { name: string }).name, "db");

    const wrong = join(dir.path, "wrong-token");
    writeFileSync(wrong, "not-the-cluster-token-0123456789\n", { mode: 0o600 });
    const refused = await haven(
      "volume",
      "status",
      "--api",
      `https://${api}`,
      "--volume",
      "db",
      "--token-file",
      wrong,
      "--context",
      context,
    );
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(
      refused.stderr,
      new RegExp(
        `^haven: the API at ${api} refused --token-file ${wrong}: .*--token-file FILE or HAVEN_API_TOKEN.* \\[HAVEN_ERR_UNAUTHORIZED\\]$`,
        "m",
      ),
    );
    const none = await haven("volume", "status", "--api", api, "--volume", "db");
    assert.equal(none.code, 2);
    assert.match(
      none.stderr,
      /^haven: the API needs its token: give --token-file FILE, set HAVEN_API_TOKEN, or use a context file/m,
    );
  });

  test("status fits 80 columns in a pipe; --json keeps every detail", async () => {
    const text = await haven("status", "--context", context);
    assert.equal(text.code, 0, text.stderr);
    for (const line of text.stdout.split("\n")) assert.ok(line.length <= 80, `${line.length} columns: ${line}`);
    const view = JSON.parse((await haven("status", "--json", "--context", context)).stdout) as {
      volumes: { name: string; nbd: string }[];
    };
    const db = view.volumes.find((volume) => volume.name === "db")!;
    assert.ok(text.stdout.includes(db.nbd), "the NBD URI is shown whole");
  });

  test("--watch appends frames in a pipe, shows a missing VM in its frame, and exits 0 on Ctrl-C", async () => {
    for (const args of [["status"], ["volume", "show", "db"], ["disk", "list"], ["vm", "show", "nothing-here"]]) {
      const watching = watch(...args, "--watch", "--interval", "0.2", "--context", context);
      try {
        await until(`two frames of ${args.join(" ")}`, async () =>
          (watching.output().match(/^--- \d{4}-\d\d-\d\dT/gm) ?? []).length >= 2 ? true : undefined,
        );
        watching.child.kill("SIGINT");
        assert.equal(await watching.exited, 0, watching.output());
        if (args[0] === "vm")
          assert.match(watching.output(), /haven: no VM named "nothing-here" .*\[HAVEN_ERR_NOT_FOUND\]/);
      } finally {
        stopWatch(watching.child);
      }
    }
    const bad = await haven("status", "--interval", "1", "--context", context);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /^haven: --interval goes with --watch \[HAVEN_ERR_USAGE\]$/m);
  });

  test("with etcd frozen, a read says etcd did not answer (naming it) and a watch shows it, then goes on", async () => {
    const member = cluster.etcd[0]!;
    const watching = watch("volume", "list", "--watch", "--interval", "0.5", "--context", context);
    try {
      await until("a first frame", async () => (/^db /m.test(watching.output()) ? true : undefined));
      process.kill(member.pid, "SIGSTOP");
      const read = await haven("status", "--context", context);
      assert.equal(read.code, 1, read.stderr);
      assert.match(
        read.stderr,
        new RegExp(`etcd did not answer within \\d+\\.\\d s at ${member.endpoint.replace(/[.:/]/g, "\\$&")}`),
      );
      assert.match(read.stderr, /\[HAVEN_ERR_UNAVAILABLE\]$/m);
      assert.doesNotMatch(read.stderr, /may or may not/);
      await until(
        "a frame showing etcd's silence",
        async () => (/did not answer within/.test(watching.output()) ? true : undefined),
        60_000,
      );
      process.kill(member.pid, "SIGCONT");
      const mark = watching.output().length;
      await until(
        "a frame with the volumes again",
        async () => (/^db /m.test(watching.output().slice(mark)) ? true : undefined),
        60_000,
      );
      watching.child.kill("SIGINT");
      assert.equal(await watching.exited, 0);
    } finally {
      process.kill(member.pid, "SIGCONT");
      stopWatch(watching.child);
    }
  });
});
