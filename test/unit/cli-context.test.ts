// How the CLI finds the cluster: --etcd beats HAVEN_ETCD beats a context file; --context beats
// HAVEN_CONTEXT beats the XDG default; a missing default file means "no cluster configured" (naming
// every way to configure one), while a named file that is missing or malformed is an error naming it.

import assert from "node:assert/strict";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { connectCluster, defaultContextPath, resolveCluster, writeContext } from "../../src/cli/context.js";
import { tempDir } from "../helpers/server-process.js";
import { failsWith } from "../helpers/errors.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** Every test here takes well under a second; one still running after this bound is hung, not slow. */
const test = boundedTest(10_000);

/** Runs `body` with a temporary XDG_CONFIG_HOME and no other configuration in its environment. */
function withConfigHome(body: (dir: string, env: NodeJS.ProcessEnv) => void): void {
  const dir = tempDir("haven-context-");
  try {
    body(dir.path, { XDG_CONFIG_HOME: dir.path, HOME: join(dir.path, "home") });
  } finally {
    dir.remove();
  }
}

function writeJson(file: string, value: unknown): string {
  writeFileSync(file, typeof value === "string" ? value : JSON.stringify(value));
  return file;
}

test("the default context file is $XDG_CONFIG_HOME/haven/context.json, else ~/.config/haven/context.json", () => {
  assert.equal(defaultContextPath({ XDG_CONFIG_HOME: "/x/config", HOME: "/home/u" }), "/x/config/haven/context.json");
  assert.equal(defaultContextPath({ HOME: "/home/u" }), "/home/u/.config/haven/context.json");
  // A relative XDG_CONFIG_HOME is invalid by the XDG spec and ignored.
  assert.equal(defaultContextPath({ XDG_CONFIG_HOME: "rel", HOME: "/home/u" }), "/home/u/.config/haven/context.json");
});

test("--etcd wins over HAVEN_ETCD, which wins over every context file; endpoints are normalised", () => {
  withConfigHome((dir, env) => {
    writeContext(defaultContextPath(env), { etcd: ["http://10.0.0.9:2379"] });
    const context = writeJson(join(dir, "c.json"), { etcd: ["10.0.0.8:2379"] });
    const all = { ...env, HAVEN_ETCD: "10.0.0.2:2379", HAVEN_CONTEXT: context };
    assert.deepEqual(resolveCluster({ etcd: "10.0.0.1:2379, http://10.0.0.3:2379/", context }, all), {
      endpoints: ["http://10.0.0.1:2379", "http://10.0.0.3:2379"],
      source: "--etcd",
    });
    assert.deepEqual(resolveCluster({ context }, all), { endpoints: ["http://10.0.0.2:2379"], source: "HAVEN_ETCD" });
  });
});

test("--context wins over HAVEN_CONTEXT, which wins over the default file", () => {
  withConfigHome((dir, env) => {
    writeContext(defaultContextPath(env), { etcd: ["http://10.0.0.9:2379"], clusterDir: "/srv/cluster" });
    const flag = writeJson(join(dir, "flag.json"), { etcd: ["10.0.0.1:2379"] });
    const fromEnv = writeJson(join(dir, "env.json"), { etcd: ["10.0.0.2:2379"] });
    assert.deepEqual(resolveCluster({ context: flag }, { ...env, HAVEN_CONTEXT: fromEnv }), {
      endpoints: ["http://10.0.0.1:2379"],
      source: `context file ${flag}`,
    });
    assert.deepEqual(resolveCluster({}, { ...env, HAVEN_CONTEXT: fromEnv }).endpoints, ["http://10.0.0.2:2379"]);
    assert.deepEqual(resolveCluster({}, env), {
      endpoints: ["http://10.0.0.9:2379"],
      source: `context file ${defaultContextPath(env)}`,
      clusterDir: "/srv/cluster",
    });
    // An empty variable counts as unset.
    assert.deepEqual(resolveCluster({}, { ...env, HAVEN_ETCD: "", HAVEN_CONTEXT: "" }).endpoints, [
      "http://10.0.0.9:2379",
    ]);
  });
});

test("no cluster configured: a usage error naming --etcd, HAVEN_ETCD and the context file", () => {
  withConfigHome((_dir, env) => {
    assert.throws(
      () => resolveCluster({}, env),
      failsWith(
        "HAVEN_ERR_USAGE",
        new RegExp(
          `^no cluster configured: pass --etcd URL\\[,URL...\\], set HAVEN_ETCD, or write a context file ` +
            `\\(--context FILE, \\$HAVEN_CONTEXT, or ${defaultContextPath(env).replace(/\./g, "\\.")}`,
        ),
      ),
    );
  });
});

test("a context file named by --context or HAVEN_CONTEXT must exist", () => {
  withConfigHome((dir, env) => {
    const missing = join(dir, "missing.json");
    assert.throws(
      () => resolveCluster({ context: missing }, env),
      failsWith("HAVEN_ERR_CONFIG", /cannot read context file .*missing\.json/),
    );
    assert.throws(
      () => resolveCluster({}, { ...env, HAVEN_CONTEXT: missing }),
      failsWith("HAVEN_ERR_CONFIG", /cannot read context file .*missing\.json: ENOENT/),
    );
  });
});

test("a malformed context file is a config error that names the file and the problem", () => {
  withConfigHome((dir, env) => {
    const cases: [unknown, RegExp][] = [
      ["{not json", /not valid JSON/],
      [[], /must be a JSON object/],
      [{}, /"etcd" must be a non-empty list of endpoints/],
      [{ etcd: [] }, /"etcd" must be a non-empty list/],
      [{ etcd: [2379] }, /"etcd" must be a non-empty list/],
      [{ etcd: ["ftp://x:2379"] }, /etcd\[0\]: etcd endpoint "ftp:\/\/x:2379" is not https:\/\/HOST:PORT/],
      [{ etcd: ["https://x:2379"], tls: "relative" }, /"tls" must be the absolute path of an operator identity/],
      [{ etcd: ["x:2379"], clusterDir: "relative" }, /"clusterDir" must be an absolute path/],
      [{ etcd: ["x:2379"], endpoints: [] }, /unknown key "endpoints"/],
    ];
    for (const [content, message] of cases) {
      const file = writeJson(join(dir, "bad.json"), content);
      assert.throws(
        () => resolveCluster({ context: file }, env),
        failsWith("HAVEN_ERR_CONFIG", new RegExp(`^context file ${file.replace(/\./g, "\\.")}: ${message.source}`)),
        JSON.stringify(content),
      );
    }
  });
});

test("bad endpoints: a usage error for --etcd, a config error for HAVEN_ETCD, each naming its source", () => {
  assert.throws(
    () => resolveCluster({ etcd: "nowhere" }, {}),
    failsWith("HAVEN_ERR_USAGE", /^--etcd: etcd endpoint "nowhere"/),
  );
  assert.throws(
    () => resolveCluster({ etcd: "a:1,,b:2" }, {}),
    failsWith("HAVEN_ERR_USAGE", /--etcd "a:1,,b:2" has an empty endpoint/),
  );
  assert.throws(
    () => resolveCluster({}, { HAVEN_ETCD: "a:1,ftp://b:2" }),
    failsWith("HAVEN_ERR_CONFIG", /^HAVEN_ETCD: etcd endpoint "ftp:\/\/b:2" is not https:\/\/HOST:PORT/),
  );
});

test("the operator identity: --tls-dir, then HAVEN_TLS_DIR, then the context file's tls (only with its endpoints)", () => {
  withConfigHome((dir, env) => {
    const file = join(dir, "context.json");
    writeContext(file, {
      etcd: ["https://127.0.0.1:2379"],
      clusterDir: "/srv/haven",
      tls: "/srv/haven/pki/operators/admin",
    });
    const fromContext = resolveCluster({ context: file }, env);
    assert.equal(fromContext.tlsDir, "/srv/haven/pki/operators/admin");
    assert.equal(fromContext.clusterDir, "/srv/haven");
    assert.equal(resolveCluster({ context: file }, { ...env, HAVEN_TLS_DIR: "/env" }).tlsDir, "/env");
    assert.equal(
      resolveCluster({ context: file, "tls-dir": "/flag" }, { ...env, HAVEN_TLS_DIR: "/env" }).tlsDir,
      "/flag",
    );
    // Endpoints from --etcd never borrow a context file's identity.
    assert.equal(resolveCluster({ context: file, etcd: "https://127.0.0.1:2379" }, env).tlsDir, undefined);
    assert.throws(
      () => connectCluster({ etcd: "https://127.0.0.1:2379" }, {}),
      failsWith("HAVEN_ERR_USAGE", /speaks TLS: pass --tls-dir DIR/),
    );
    assert.throws(
      () => connectCluster({ etcd: "https://127.0.0.1:2379", "tls-dir": join(dir, "none") }, {}),
      failsWith("HAVEN_ERR_CONFIG", /cannot read .*none\/ca-cert\.pem/),
    );
  });
});

test("writeContext creates the directory and writes a file that resolves back to the same cluster", () => {
  withConfigHome((dir, env) => {
    const file = join(dir, "deep", "er", "context.json");
    writeContext(file, { etcd: ["http://127.0.0.1:2379", "http://127.0.0.2:2379"], clusterDir: "/srv/haven" });
    assert.deepEqual(JSON.parse(readFileSync(file, "utf8")), {
      etcd: ["http://127.0.0.1:2379", "http://127.0.0.2:2379"],
      clusterDir: "/srv/haven",
    });
    assert.deepEqual(resolveCluster({ context: file }, env).endpoints, [
      "http://127.0.0.1:2379",
      "http://127.0.0.2:2379",
    ]);
    // Nothing unreadable is ever written.
    mkdirSync(join(dir, "x"));
    assert.throws(() => writeContext(join(dir, "x", "c.json"), { etcd: [] }), failsWith("HAVEN_ERR_CONFIG", /"etcd"/));
  });
});
