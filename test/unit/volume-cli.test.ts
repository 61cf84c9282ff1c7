// `haven volume status|verify|resolve-split-brain` against the real engine API server over a fake
// engine, in-process: what the operator sees, the exit statuses that scripts rely on, and the guard
// rails (an unreachable engine is named, a wrong volume NAME changes nothing).

import { after, before, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { HavenError } from "../../src/core/errors.js";
import { EngineApiServer } from "../../src/api/engine-api.js";
import type { VerifyStatus } from "../../src/engine/status.js";
import { createServer as createHttpServer } from "node:http";
import { createServer as createTcpServer, type Server } from "node:net";
import { main } from "../../src/cli/main.js";
import { EngineApiClient } from "../../src/cli/engine-api-client.js";
import { volumeStatus } from "../../src/cli/commands/volume-status.js";
import { volumeVerify } from "../../src/cli/commands/volume-verify.js";
import { volumeResolveSplitBrain } from "../../src/cli/commands/volume-resolve-split-brain.js";
import { volumeServe } from "../../src/cli/commands/volume-serve.js";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { tempDir } from "../helpers/server-process.js";
import {
  FakeEngineControl,
  healthyStatus,
  mismatches,
  resyncingStatus,
  splitBrainStatus,
  verifyStatus,
} from "../helpers/fake-engine.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** Every test here takes well under a second; one still running after this bound is hung, not slow. */
const test = boundedTest(10_000);

/** The engine API's token; the commands read it from $HAVEN_API_TOKEN unless a test says otherwise. */
const TOKEN = "volume-cli-test-token-0123456789";

let control: FakeEngineControl;
let server: EngineApiServer;
let api: string;

before(async () => {
  process.env.HAVEN_API_TOKEN = TOKEN;
  server = new EngineApiServer(
    {
      status: () => control.status(),
      startVerify: (options) => control.startVerify(options),
      resolveSplitBrain: (survivor) => control.resolveSplitBrain(survivor),
    },
    TOKEN,
    { log: () => {} },
  );
  api = await server.listen("127.0.0.1", 0);
});

after(() => server.stop());

beforeEach(() => {
  control = new FakeEngineControl();
});

interface Captured {
  readonly result: number | HavenError;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs a command with stdout and stderr captured. A HavenError it throws is returned (main() turns it
 * into a message and an exit status); `onWrite` sees each stdout write as it happens.
 */
async function capture(run: () => Promise<number>, onWrite?: (text: string) => void): Promise<Captured> {
  const out: string[] = [];
  const err: string[] = [];
  const realOut = process.stdout.write;
  const realErr = process.stderr.write;
  // The commands write strings; the test runner reports through stdout too, in binary: let that by.
  process.stdout.write = ((chunk: string | Uint8Array, ...rest: never[]) => {
    if (typeof chunk !== "string") return realOut.call(process.stdout, chunk, ...rest);
    out.push(chunk);
    onWrite?.(chunk);
    return true;
  }) as typeof process.stdout.write;
  process.stderr.write = ((chunk: string | Uint8Array) => {
    err.push(String(chunk));
    return true;
  }) as typeof process.stderr.write;
  try {
    let result: number | HavenError;
    try {
      result = await run();
    } catch (error) {
      if (!(error instanceof HavenError)) throw error;
      result = error;
    }
    return { result, stdout: out.join(""), stderr: err.join("") };
  } finally {
    process.stdout.write = realOut;
    process.stderr.write = realErr;
  }
}

function assertHavenError(result: number | HavenError, code: string, message: RegExp): void {
  assert.ok(result instanceof HavenError, `expected ${code}, got exit ${String(result)}`);
  assert.equal(result.code, code);
  assert.match(result.message, message);
}

/** An address where nothing listens: a server's port, just after the server stopped. */
async function deadAddress(): Promise<string> {
  const gone = new EngineApiServer(control, TOKEN, { log: () => {} });
  const address = await gone.listen("127.0.0.1", 0);
  await gone.stop();
  return address;
}

/** The fake's verify advances by a quarter of the volume on every status read, then ends. */
function verifyProgressing(final: Partial<VerifyStatus>): void {
  control.onStatus = (fake) => {
    const verify = fake.current.verify;
    if (verify === null || verify.state !== "running") return;
    const doneBytes = Math.min(verify.totalBytes, verify.doneBytes + verify.totalBytes / 4);
    const finished = doneBytes === verify.totalBytes;
    fake.current = {
      ...fake.current,
      verify: finished
        ? { ...verify, doneBytes, state: "done", finishedAt: "2024-05-01T10:05:00.000Z", ...final }
        : { ...verify, doneBytes },
    };
  };
}

test("status prints the operator's table: header, one row per copy, resync progress", async () => {
  control.current = resyncingStatus();
  const { result, stdout } = await capture(() => volumeStatus(["--api", api]));
  assert.equal(result, 0);
  assert.match(stdout, /^volume +web1-disk0$/m);
  assert.match(stdout, /^state +resyncing$/m);
  assert.match(stdout, /^LOCATION +LOCAL\/REMOTE +STATE +OUT-OF-SYNC +GENERATION +DETAIL$/m);
  assert.match(stdout, /^\/var\/lib\/haven\/web1-disk0 +local +in-sync /m);
  assert.match(stdout, /^node2:7400 +remote +resyncing /m);
  assert.match(stdout, /41\.2% .* ETA 0:42/);
  assert.doesNotMatch(stdout, /\x1b\[/, "no color when stdout is not a terminal"); // eslint-disable-line no-control-regex
});

test("status --json prints the engine's status exactly, as JSON", async () => {
  control.current = splitBrainStatus();
  const { result, stdout } = await capture(() => volumeStatus(["--api", api, "--json"]));
  assert.equal(result, 0);
  assert.deepEqual(JSON.parse(stdout), splitBrainStatus());
});

test("status against an engine that is not there names the address and the reason", async () => {
  const dead = await deadAddress();
  const { result, stdout } = await capture(() => volumeStatus(["--api", dead]));
  assertHavenError(result, "HAVEN_ERR_CONFIG", new RegExp(`^cannot reach the engine API at ${dead}: .*ECONNREFUSED`));
  assert.equal(stdout, "");
});

test("through main(), an unreachable engine is one line on stderr and exit status 2", async () => {
  const dead = await deadAddress();
  const { result, stderr } = await capture(() => main(["volume", "status", "--api", dead]));
  assert.equal(result, 2);
  assert.match(stderr, new RegExp(`^haven: cannot reach the engine API at ${dead}: .* \\[HAVEN_ERR_CONFIG\\]\\n$`));
});

/** Runs `check` against a throwaway server on 127.0.0.1, then closes it. */
async function withServer(server: Server, check: (address: string) => Promise<void>): Promise<void> {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  try {
    await check(`127.0.0.1:${(server.address() as { port: number }).port}`);
  } finally {
    server.close();
  }
}

test("an engine that accepts but never answers is given up on after the timeout", async () => {
  const silent = createTcpServer((socket) => socket.on("error", () => {}));
  await withServer(silent, async (address) => {
    const client = new EngineApiClient(address, { token: TOKEN, timeoutMs: 100 });
    await assert.rejects(client.status(), (error: unknown) => {
      assertHavenError(
        error as HavenError,
        "HAVEN_ERR_CONFIG",
        /cannot reach the engine API at .*: no answer within 100 ms/,
      );
      return true;
    });
  });
});

test("an address that is some other HTTP server is reported as not the engine API", async () => {
  const other = createHttpServer((_request, response) => response.end("<html>hello</html>"));
  await withServer(other, async (address) => {
    const { result } = await capture(() => volumeStatus(["--api", address]));
    assertHavenError(
      result,
      "HAVEN_ERR_CONFIG",
      /answered HTTP 200 with a body that is not JSON; is that the engine's --api/,
    );
  });
  const json = createHttpServer((_request, response) => response.end(`{"hello": "world"}`));
  await withServer(json, async (address) => {
    const { result } = await capture(() => volumeStatus(["--api", address]));
    assertHavenError(result, "HAVEN_ERR_CONFIG", /malformed volume status/);
  });
});

test("main() routes the volume verbs and lists them when the verb is unknown", async () => {
  assert.equal((await capture(() => main(["volume", "status", "--api", api]))).result, 0);
  const unknown = await capture(() => main(["volume", "frobnicate"]));
  assert.equal(unknown.result, 2);
  assert.match(unknown.stderr, /known: serve, status, verify, resolve-split-brain/);
});

test("status usage errors: no --api, a bad address, a stray argument, a bad --watch interval", async () => {
  const cases: [string[], RegExp][] = [
    [[], /--api HOST:PORT is required/],
    [["--api", "localhost"], /--api "localhost" is not HOST:PORT/],
    [["--api", api, "extra"], /unexpected argument "extra"/],
    [["--api", api, "--watch", "0"], /--watch SECONDS must be a number from 0.1/],
    [["--api", api, "--watch=soon"], /got "soon"/],
    [["--api", api, "--colour"], /unknown option --colour/],
  ];
  for (const [argv, message] of cases) {
    assertHavenError((await capture(() => volumeStatus(argv))).result, "HAVEN_ERR_USAGE", message);
  }
});

test("status --watch refreshes until SIGINT, then exits 0", async () => {
  let refreshes = 0;
  const { result, stdout } = await capture(
    () => volumeStatus(["--api", api, "--watch", "0.1"]),
    (text) => {
      if (text.startsWith("--- ") && ++refreshes === 3) setImmediate(() => process.emit("SIGINT", "SIGINT"));
    },
  );
  assert.equal(result, 0);
  assert.equal(stdout.match(/^--- \d{4}-\d\d-\d\dT/gm)?.length, 3);
  assert.equal(stdout.match(/^volume +web1-disk0$/gm)?.length, 3);
  assert.equal(process.listenerCount("SIGINT"), 0, "the handler is removed afterwards");
});

test("status --json --watch prints one JSON document per line", async () => {
  let lines = 0;
  const { result, stdout } = await capture(
    () => volumeStatus(["--api", api, "--json", "--watch=0.1"]),
    () => {
      if (++lines === 2) setImmediate(() => process.emit("SIGINT", "SIGINT"));
    },
  );
  assert.equal(result, 0);
  const documents = stdout.trimEnd().split("\n");
  assert.equal(documents.length, 2);
  for (const document of documents) assert.deepEqual(JSON.parse(document), healthyStatus());
});

test("verify without --wait starts the verify and says how to follow it", async () => {
  const { result, stdout } = await capture(() => volumeVerify(["--api", api, "--repair"]));
  assert.equal(result, 0);
  assert.deepEqual(control.verifyRequests, [{ repair: true }]);
  assert.match(stdout, new RegExp(`verify started with repair; follow it with: haven volume status --api ${api}`));
});

test("verify --wait exits 0 when the copies agree", async () => {
  verifyProgressing({});
  const { result, stdout } = await capture(() => volumeVerify(["--api", api, "--wait"], { pollIntervalMs: 5 }));
  assert.equal(result, 0);
  assert.match(stdout, /^verify +done +\[#{22}\] +100\.0%/m);
  assert.match(stdout, /mismatches 0$/m);
});

test("verify --wait exits 1 and lists the ranges when copies differ and --repair was not given", async () => {
  verifyProgressing({ mismatches: mismatches(2) });
  const { result, stdout } = await capture(() => volumeVerify(["--api", api, "--wait"], { pollIntervalMs: 5 }));
  assert.equal(result, 1);
  assert.match(stdout, /mismatches 2$/m);
  assert.match(stdout, /offset 67108864 length 65536/);
  assert.match(stdout, /offset 68157440 length 65536/);
  assert.ok(
    stdout.includes(
      `copies differ in 2 region(s); to resync them from the volume's data: haven volume verify --api ${api} --repair`,
    ),
  );
});

test("verify --repair --wait exits 0 even when copies differed: they were resynced", async () => {
  verifyProgressing({ mismatches: mismatches(2) });
  const { result, stdout } = await capture(() =>
    volumeVerify(["--api", api, "--repair", "--wait"], { pollIntervalMs: 5 }),
  );
  assert.equal(result, 0);
  assert.deepEqual(control.verifyRequests, [{ repair: true }]);
  assert.match(stdout, /mismatches 2 \(repair: /);
});

test("verify --wait: a failed verify is HAVEN_ERR_IO (exit 1) with the engine's reason", async () => {
  verifyProgressing({ state: "failed", error: "read error on node2:7400" });
  const { result, stdout } = await capture(() => volumeVerify(["--api", api, "--wait"], { pollIntervalMs: 5 }));
  assertHavenError(result, "HAVEN_ERR_IO", /the verify failed: read error on node2:7400/);
  assert.equal((result as HavenError).exitCode, 1);
  assert.match(stdout, /error: read error on node2:7400/);
});

test("verify while one runs is HAVEN_ERR_CONFLICT from the engine, exit 1", async () => {
  control.current = { ...control.current, verify: verifyStatus() };
  const { result } = await capture(() => volumeVerify(["--api", api]));
  assertHavenError(result, "HAVEN_ERR_CONFLICT", /a verify is running already/);
  assert.equal((result as HavenError).exitCode, 1);
});

test("verify --wait notices when the verify it follows disappears (engine restarted)", async () => {
  control.onStatus = (fake) => {
    fake.current = { ...fake.current, verify: null };
  };
  const { result } = await capture(() => volumeVerify(["--api", api, "--wait"], { pollIntervalMs: 5 }));
  assertHavenError(result, "HAVEN_ERR_CONFLICT", /is no longer the engine's/);
});

test("resolve-split-brain checks NAME against the engine's volume before changing anything", async () => {
  control.current = splitBrainStatus();
  const { result } = await capture(() =>
    volumeResolveSplitBrain(["db-disk0", "--survivor", "/var/lib/haven/web1-disk0", "--api", api]),
  );
  assertHavenError(result, "HAVEN_ERR_USAGE", /serves volume "web1-disk0", not "db-disk0"/);
  assert.deepEqual(control.resolveRequests, []);
  assert.deepEqual(control.current, splitBrainStatus());
});

test("resolve-split-brain names the survivor to the engine and shows the volume after", async () => {
  control.current = splitBrainStatus();
  const { result, stdout } = await capture(() =>
    volumeResolveSplitBrain(["web1-disk0", "--survivor", "/var/lib/haven/web1-disk0", "--api", api]),
  );
  assert.equal(result, 0);
  assert.deepEqual(control.resolveRequests, ["/var/lib/haven/web1-disk0"]);
  assert.match(stdout, /^split brain of volume web1-disk0 resolved: \/var\/lib\/haven\/web1-disk0 survives/);
  assert.match(stdout, /^node2:7400 +remote +resyncing/m);
});

test("resolve-split-brain: the engine's refusal comes back with its code and reason", async () => {
  control.current = splitBrainStatus();
  const { result } = await capture(() =>
    volumeResolveSplitBrain(["web1-disk0", "--survivor", "node9:1", "--api", api]),
  );
  assertHavenError(result, "HAVEN_ERR_INVALID_REQUEST", /no copy at "node9:1"/);
});

test("resolve-split-brain naming the split-off copy is refused by the engine while it serves", async () => {
  control.current = splitBrainStatus();
  const { result } = await capture(() =>
    volumeResolveSplitBrain(["web1-disk0", "--survivor", "node2:7400", "--api", api]),
  );
  assertHavenError(result, "HAVEN_ERR_INVALID_REQUEST", /node2:7400 is split-brain: only an in-sync copy/);
  assert.deepEqual(control.current, splitBrainStatus());
});

test("resolve-split-brain usage errors: NAME, --survivor and --api are all required", async () => {
  const cases: [string[], RegExp][] = [
    [["--survivor", "node2:7400", "--api", api], /expected exactly one volume NAME, got 0/],
    [["a", "b", "--survivor", "node2:7400", "--api", api], /got 2/],
    [["web1-disk0", "--api", api], /--survivor LOCATION is required/],
    [["web1-disk0", "--survivor", "node2:7400"], /--api HOST:PORT is required/],
  ];
  for (const [argv, message] of cases) {
    assertHavenError((await capture(() => volumeResolveSplitBrain(argv))).result, "HAVEN_ERR_USAGE", message);
  }
  assert.deepEqual(control.resolveRequests, []);
});

test("the engine API commands need its token: --token-file, $HAVEN_API_TOKEN or the context's cluster; a wrong one is 401 naming it", async () => {
  const dir = tempDir("haven-volume-cli-token-");
  const configHome = process.env.XDG_CONFIG_HOME;
  try {
    delete process.env.HAVEN_API_TOKEN;
    // No context file either: the default one is looked for under this test's own config directory.
    process.env.XDG_CONFIG_HOME = dir.path;
    const none = await capture(() => volumeStatus(["--api", api]));
    assertHavenError(none.result, "HAVEN_ERR_USAGE", /needs its token: give --token-file FILE, set HAVEN_API_TOKEN/);

    // A context file naming a cluster directory: the token kept there is used.
    const clusterDir = join(dir.path, "cluster");
    mkdirSync(clusterDir);
    writeFileSync(join(clusterDir, "token"), `${TOKEN}\n`, { mode: 0o600 });
    const context = join(dir.path, "context.json");
    writeFileSync(context, JSON.stringify({ etcd: ["http://127.0.0.1:1"], clusterDir }));
    assert.equal((await capture(() => volumeStatus(["--api", `http://${api}`, "--context", context]))).result, 0);

    const good = join(dir.path, "good");
    writeFileSync(good, `${TOKEN}\n`, { mode: 0o600 });
    assert.equal((await capture(() => volumeStatus(["--api", api, "--token-file", good]))).result, 0);

    const wrong = join(dir.path, "wrong");
    writeFileSync(wrong, "not-the-engine-token-0123456789\n", { mode: 0o600 });
    for (const run of [
      () => volumeStatus(["--api", api, "--token-file", wrong]),
      () => volumeVerify(["--api", api, "--repair", "--token-file", wrong]),
      () => volumeResolveSplitBrain([healthyStatus().name, "--survivor", "x", "--api", api, "--token-file", wrong]),
    ]) {
      assertHavenError(
        (await capture(run)).result,
        "HAVEN_ERR_UNAUTHORIZED",
        /refused --token-file .*wrong: a valid bearer token is required.*--token-file FILE or HAVEN_API_TOKEN/,
      );
    }
    assert.deepEqual(control.verifyRequests, [], "nothing reached the engine without its token");
    assert.deepEqual(control.resolveRequests, []);

    const short = join(dir.path, "short");
    writeFileSync(short, "short\n", { mode: 0o600 });
    assertHavenError(
      (await capture(() => volumeStatus(["--api", api, "--token-file", short]))).result,
      "HAVEN_ERR_CONFIG",
      /must be at least 16 characters/,
    );
  } finally {
    process.env.HAVEN_API_TOKEN = TOKEN;
    if (configHome === undefined) delete process.env.XDG_CONFIG_HOME;
    else process.env.XDG_CONFIG_HOME = configHome;
    dir.remove();
  }
});

test("volume serve refuses --api-listen without --api-token-file, before it opens anything", async () => {
  const { result } = await capture(() =>
    volumeServe(["vol", "--replica", "/nonexistent/haven", "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"]),
  );
  assertHavenError(result, "HAVEN_ERR_USAGE", /--api-listen needs --api-token-file FILE/);
});
