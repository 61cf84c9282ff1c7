// The agent's config file: a good file parses to typed values with the defaults filled in and writes
// back to a file that parses to the same config; every kind of bad input is refused with a message that
// names the file, the JSON path and what to do; loading checks that the named files and disks exist.

import assert from "node:assert/strict";
import { mkdtemp, mkdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { HavenError } from "../../src/core/errors.js";
import {
  formatAgentConfig,
  loadAgentConfig,
  parseAgentConfig,
  suggestKey,
  type AgentConfig,
} from "../../src/agent/config.js";
import { DEFAULT_TIMINGS, FAST_TIMINGS, TIMING_NAMES } from "../../src/agent/timings.js";
import { DEFAULT_EVENT_RETENTION } from "../../src/cluster/event-retention.js";
import { boundedTest } from "../helpers/bounded-test.js";

/** Every test here takes well under a second; one still running after this bound is hung, not slow. */
const test = boundedTest(10_000);

type Json = Record<string, unknown>;

function goodFile(): Json {
  return {
    host: { name: "node1", address: "10.0.0.1" },
    tls: { dir: "/etc/haven/tls/node1" },
    etcd: { endpoints: ["https://10.0.0.1:2379", "10.0.0.2:2379"] },
    api: { listen: "0.0.0.0:7480", tokenFile: "/etc/haven/api.token" },
    replication: { listen: "0.0.0.0:7481", secretFile: "/etc/haven/cluster.secret" },
    nbd: { listen: "0.0.0.0:10809" },
    disks: [
      { name: "ssd0", path: "/srv/haven/ssd0/", capacity: "500G" },
      { name: "hdd1", path: "/srv/haven/hdd1" },
    ],
  };
}

/** goodFile() with `edit` applied to it. */
function variant(edit: (file: Json) => void): string {
  const file = goodFile();
  edit(file);
  return JSON.stringify(file);
}

function refusal(text: string): string {
  try {
    parseAgentConfig(text, "agent.json");
  } catch (error) {
    assert.ok(error instanceof HavenError, `expected a HavenError, got ${String(error)}`);
    assert.equal(error.code, "HAVEN_ERR_CONFIG");
    return error.message;
  }
  assert.fail(`accepted: ${text}`);
}

const at = (file: Json, key: string) => file[key] as Json;
const disk = (file: Json, index: number) => (file.disks as Json[])[index]!;

test("a good config parses to typed, normalised values with the default timings", () => {
  const config = parseAgentConfig(JSON.stringify(goodFile()), "agent.json");
  const expected: AgentConfig = {
    host: { name: "node1", address: "10.0.0.1" },
    tls: { dir: "/etc/haven/tls/node1" },
    etcd: { endpoints: ["https://10.0.0.1:2379", "http://10.0.0.2:2379"] },
    api: { listen: { host: "0.0.0.0", port: 7480 }, tokenFile: "/etc/haven/api.token" },
    replication: { listen: { host: "0.0.0.0", port: 7481 }, secretFile: "/etc/haven/cluster.secret" },
    nbd: { listen: { host: "0.0.0.0", port: 10809 } },
    disks: [
      { name: "ssd0", path: "/srv/haven/ssd0", capacityBytes: 500 * 1024 ** 3 },
      { name: "hdd1", path: "/srv/haven/hdd1" },
    ],
    timings: DEFAULT_TIMINGS,
    events: DEFAULT_EVENT_RETENTION,
  };
  assert.deepEqual(config, expected);
});

test("event retention is optional, bounded, and round-trips", () => {
  const config = parseAgentConfig(
    variant((file) => (file.events = { maxAgeDays: 3, maxCount: 5_000 })),
    "agent.json",
  );
  assert.deepEqual(config.events, { maxAgeMs: 3 * 24 * 60 * 60 * 1000, maxCount: 5_000 });
  assert.deepEqual(parseAgentConfig(formatAgentConfig(config), "written.json"), config);
  assert.deepEqual(
    parseAgentConfig(
      variant((file) => (file.events = {})),
      "a",
    ).events,
    DEFAULT_EVENT_RETENTION,
  );
  assert.match(
    refusal(variant((file) => (file.events = { maxAgeDays: 0 }))),
    /agent\.json: events\.maxAgeDays must be a whole number from 1 to 3650, not the number 0/,
  );
  assert.match(
    refusal(variant((file) => (file.events = { maxCount: 10 }))),
    /events\.maxCount must be a whole number from 1000/,
  );
  assert.match(refusal(variant((file) => (file.events = { maxAge: 3 }))), /events/);
});

test("timings in the file override the defaults one by one", () => {
  const config = parseAgentConfig(
    variant((file) => (file.timings = { leaseTtlMs: 8_000, fenceAfterMs: 5_000 })),
    "agent.json",
  );
  assert.deepEqual(config.timings, { ...DEFAULT_TIMINGS, leaseTtlMs: 8_000, fenceAfterMs: 5_000 });
  assert.deepEqual(
    parseAgentConfig(
      variant((file) => (file.timings = {})),
      "agent.json",
    ).timings,
    DEFAULT_TIMINGS,
  );
  assert.deepEqual(
    parseAgentConfig(
      variant((file) => (file.timings = { ...FAST_TIMINGS })),
      "agent.json",
    ).timings,
    FAST_TIMINGS,
  );
});

test("a config written by formatAgentConfig reads back the same", () => {
  const config = parseAgentConfig(
    variant((file) => {
      file.timings = { ...FAST_TIMINGS };
      at(file, "nbd").listen = "[::1]:10809";
      disk(file, 1).capacity = "1536K";
    }),
    "agent.json",
  );
  const text = formatAgentConfig(config);
  assert.deepEqual(parseAgentConfig(text, "written.json"), config);
  assert.match(text, /"listen": "\[::1\]:10809"/);
  assert.match(text, /"capacity": "500G"/);
  assert.ok(!formatAgentConfig(parseAgentConfig(JSON.stringify(goodFile()), "a")).includes("timings"));
});

test("any valid config round-trips through its file text", () => {
  const label = fc.stringMatching(/^[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?$/);
  const absolute = fc
    .array(fc.stringMatching(/^[A-Za-z0-9._-]{1,8}$/), { minLength: 1, maxLength: 3 })
    .map((parts) => `/${parts.join("/")}`.replace(/\/\.{1,2}(?=\/|$)/g, "/x"));
  const configs = fc.record({
    name: label,
    address: fc.oneof(fc.ipV4(), fc.ipV6(), fc.domain()).filter((address) => !["0.0.0.0", "::"].includes(address)),
    endpoints: fc.uniqueArray(fc.integer({ min: 1, max: 65535 }), { minLength: 1, maxLength: 5 }),
    ports: fc.uniqueArray(fc.integer({ min: 1, max: 65535 }), { minLength: 3, maxLength: 3 }),
    disks: fc.uniqueArray(
      fc.record({ name: label, capacity: fc.option(fc.integer({ min: 1, max: 2 ** 40 }), { nil: undefined }) }),
      { minLength: 1, maxLength: 5, selector: (d) => d.name },
    ),
    tokenFile: absolute,
    grace: fc.integer({ min: 0, max: 600_000 }),
    tls: fc.boolean(),
  });
  fc.assert(
    fc.property(configs, (c) => {
      const file = {
        host: { name: c.name, address: c.address },
        ...(c.tls ? { tls: { dir: `/etc/haven/tls/${c.name}` } } : { insecure: true }),
        etcd: { endpoints: c.endpoints.map((port) => `${c.tls ? "https" : "http"}://127.0.0.1:${port}`) },
        api: { listen: `127.0.0.1:${c.ports[0]}`, tokenFile: c.tokenFile },
        replication: { listen: `0.0.0.0:${c.ports[1]}`, secretFile: "/etc/haven/secret" },
        nbd: { listen: `[::]:${c.ports[2]}` },
        disks: c.disks.map((d) => ({
          name: d.name,
          path: `/srv/${d.name}`,
          ...(d.capacity === undefined ? {} : { capacity: String(d.capacity) }),
        })),
        timings: { failoverGraceMs: c.grace },
      };
      const config = parseAgentConfig(JSON.stringify(file), "generated.json");
      assert.deepEqual(parseAgentConfig(formatAgentConfig(config), "written.json"), config);
    }),
  );
});

test("text that is not JSON is refused with the line and column", () => {
  assert.equal(
    refusal('{\n  "host": { "name": "node1", },\n}'),
    "agent.json: not valid JSON: Expected double-quoted property name in JSON at position 31 (line 2, column 30)",
  );
  assert.equal(refusal(""), "agent.json: not valid JSON: Unexpected end of JSON input");
  assert.equal(refusal("[]"), "agent.json: the top level must be a JSON object, not an array");
});

test("unknown keys are refused by name, with a suggestion for near misses", () => {
  assert.equal(
    refusal(
      variant((file) => {
        file.disk = file.disks;
        delete file.disks;
      }),
    ),
    'agent.json: the top level has unknown key "disk" (did you mean "disks"?); ' +
      "known keys: host, etcd, api, replication, nbd, disks, tls, insecure, timings, events, vms, stateDir, diskPaths",
  );
  assert.equal(
    refusal(variant((file) => (at(file, "host").adress = "x"))),
    'agent.json: host has unknown key "adress" (did you mean "address"?); known keys: name, address',
  );
  assert.match(
    refusal(variant((file) => (file.timings = { leaseTTLMs: 6000, watchdog: 1, colour: "blue" }))),
    /^agent\.json: timings has unknown keys "leaseTTLMs" \(did you mean "leaseTtlMs"\?\), "watchdog" \(did you mean "watchdogIntervalMs"\?\), "colour"; known keys: leaseTtlMs, /,
  );
  assert.match(
    refusal(variant((file) => (disk(file, 1).size = "1G"))),
    /^agent\.json: disks\[1\] has unknown key "size"; known keys: name, path, capacity$/,
  );
});

test("each bad value is refused with its JSON path and what is expected", () => {
  const cases: [string, (file: Json) => void, string | RegExp][] = [
    ["missing section", (file) => delete file.nbd, 'agent.json: nbd is missing, e.g. { "listen": "0.0.0.0:10809" }'],
    ["missing key", (file) => delete at(file, "host").address, 'agent.json: host.address is missing, e.g. "10.0.0.1"'],
    [
      "section of the wrong type",
      (file) => (file.api = "x"),
      'agent.json: api must be a JSON object, not the string "x"',
    ],
    [
      "name of the wrong type",
      (file) => (at(file, "host").name = 5),
      "agent.json: host.name must be a string, not the number 5",
    ],
    ["empty name", (file) => (at(file, "host").name = ""), "agent.json: host.name must not be empty"],
    [
      "host name with capitals and an underscore",
      (file) => (at(file, "host").name = "Node_1"),
      "agent.json: host.name \"Node_1\" is not a valid name: use 1 to 63 lower-case letters, digits and '-', " +
        "starting and ending with a letter or digit",
    ],
    [
      "host name ending in a hyphen",
      (file) => (at(file, "host").name = "node-"),
      /host\.name "node-" is not a valid name/,
    ],
    ["host name of 64 characters", (file) => (at(file, "host").name = "a".repeat(64)), /host\.name "a{64}" is not/],
    [
      "address with a port",
      (file) => (at(file, "host").address = "10.0.0.1:7000"),
      'agent.json: host.address "10.0.0.1:7000" is not an IP address or a DNS name (give the address alone, without a port)',
    ],
    ["address 256", (file) => (at(file, "host").address = "10.0.0.256"), /host\.address "10\.0\.0\.256" is not an IP/],
    [
      "wildcard address",
      (file) => (at(file, "host").address = "0.0.0.0"),
      'agent.json: host.address "0.0.0.0" is not an address other hosts can reach',
    ],
    [
      "no etcd endpoints",
      (file) => (at(file, "etcd").endpoints = []),
      'agent.json: etcd.endpoints must not be empty, e.g. ["https://10.0.0.1:2379"]',
    ],
    [
      "etcd endpoints not a list",
      (file) => (at(file, "etcd").endpoints = "http://10.0.0.1:2379"),
      /^agent\.json: etcd\.endpoints must be a JSON array, not the string/,
    ],
    [
      "etcd over TLS without this host's identity",
      (file) => {
        delete file.tls;
        file.insecure = true;
        at(file, "etcd").endpoints = ["http://10.0.0.1:2379", "https://10.0.0.2:2379"];
      },
      'agent.json: etcd.endpoints[1] uses TLS, which needs this host\'s identity: add "tls": { "dir": ... }',
    ],
    [
      "etcd over another scheme",
      (file) => (at(file, "etcd").endpoints = ["grpc://10.0.0.2:2379"]),
      'agent.json: etcd.endpoints[0] "grpc://10.0.0.2:2379" uses grpc: etcd is reached over https://HOST:PORT ' +
        "(or http:// without TLS)",
    ],
    [
      "etcd endpoint without a port",
      (file) => (at(file, "etcd").endpoints = ["10.0.0.1"]),
      'agent.json: etcd.endpoints[0] "10.0.0.1" is not an etcd endpoint: use https://HOST:PORT with a port from 1 to 65535',
    ],
    [
      "etcd endpoint repeated",
      (file) => (at(file, "etcd").endpoints = ["10.0.0.1:2379", "http://10.0.0.1:2379/"]),
      'agent.json: etcd.endpoints[1] "http://10.0.0.1:2379/" repeats etcd.endpoints[0]',
    ],
    [
      "listen without a port",
      (file) => (at(file, "api").listen = "7480"),
      'agent.json: api.listen "7480" is not HOST:PORT (for example 0.0.0.0:7480)',
    ],
    [
      "listen on port 0",
      (file) => (at(file, "nbd").listen = "0.0.0.0:0"),
      'agent.json: nbd.listen "0.0.0.0:0" must name a fixed port from 1 to 65535',
    ],
    [
      "listen on a bad host",
      (file) => (at(file, "nbd").listen = "no host!:80"),
      /nbd\.listen "no host!:80": "no host!" is not/,
    ],
    [
      "two services on one port",
      (file) => (at(file, "replication").listen = "10.0.0.1:7480"),
      'agent.json: replication.listen "10.0.0.1:7480" uses the same port as api.listen "0.0.0.0:7480"',
    ],
    [
      "replication on loopback only",
      (file) => (at(file, "replication").listen = "127.0.0.1:7481"),
      'agent.json: replication.listen "127.0.0.1:7481" is a loopback address, so other hosts could not reach ' +
        'host.address "10.0.0.1"; listen on 0.0.0.0 or on that address',
    ],
    [
      "relative token file",
      (file) => (at(file, "api").tokenFile = "api.token"),
      'agent.json: api.tokenFile must be an absolute path, not "api.token"',
    ],
    ["no disks", (file) => (file.disks = []), /^agent\.json: disks must not be empty, e.g. \[/],
    [
      "relative disk path",
      (file) => (disk(file, 1).path = "srv/hdd1"),
      'agent.json: disks[1].path must be an absolute path, not "srv/hdd1"',
    ],
    [
      "disk without a path",
      (file) => delete disk(file, 1).path,
      'agent.json: disks[1].path is missing, e.g. "/srv/haven/ssd0"',
    ],
    [
      "duplicate disk name",
      (file) => (disk(file, 1).name = "ssd0"),
      'agent.json: disks[1].name "ssd0" is already the name of disks[0]',
    ],
    [
      "duplicate disk path",
      (file) => (disk(file, 1).path = "/srv/haven/./ssd0"),
      'agent.json: disks[1].path "/srv/haven/ssd0" is already the path of disks[0]',
    ],
    [
      "nested disk paths",
      (file) => (disk(file, 1).path = "/srv/haven/ssd0/inner"),
      'agent.json: disks[1].path "/srv/haven/ssd0/inner" and disks[0].path "/srv/haven/ssd0" must not be nested',
    ],
    [
      "bad capacity",
      (file) => (disk(file, 0).capacity = "lots"),
      'agent.json: disks[0].capacity "lots" is not a size: use bytes or a unit such as 512M, 500G, 2T',
    ],
    [
      "capacity as a number",
      (file) => (disk(file, 0).capacity = 5),
      "agent.json: disks[0].capacity must be a string, not the number 5",
    ],
    [
      "timings not an object",
      (file) => (file.timings = 5),
      "agent.json: timings must be a JSON object, not the number 5",
    ],
    [
      "a timing out of bounds",
      (file) => (file.timings = { peerHeartbeatMissLimit: 1 }),
      "agent.json: timings.peerHeartbeatMissLimit must be a whole number from 2 to 100, not 1",
    ],
    [
      "a timing of the wrong type",
      (file) => (file.timings = { leaseTtlMs: "6s" }),
      'agent.json: timings.leaseTtlMs must be a whole number of milliseconds from 2000 to 300000, not "6s"',
    ],
    [
      "timings that do not fit together",
      (file) => (file.timings = { leaseTtlMs: 4_000 }),
      "agent.json: timings: the fence must fire before the lease can expire elsewhere: fenceAfterMs + " +
        "watchdogTimeoutMs + clock-drift margin (3500 + 2000 + 290 = 5790) must be < leaseTtlMs (4000)",
    ],
  ];
  for (const [what, edit, expected] of cases) {
    const message = refusal(variant(edit));
    if (typeof expected === "string") assert.equal(message, expected, what);
    else assert.match(message, expected, what);
  }
});

test("suggestions catch case slips, prefixes and small typos, and nothing far off", () => {
  const known = ["address", "name", ...TIMING_NAMES];
  assert.equal(suggestKey("Address", known), "address");
  assert.equal(suggestKey("adress", known), "address");
  assert.equal(suggestKey("nmae", known), "name");
  assert.equal(suggestKey("leaseTtl", known), "leaseTtlMs");
  assert.equal(suggestKey("fenceAfterMS", known), "fenceAfterMs");
  assert.equal(suggestKey("renewIntervallMs", known), "renewIntervalMs");
  assert.equal(suggestKey("zone", known), undefined);
  assert.equal(suggestKey("ab", known), undefined);
});

test("loading reads the file and checks that the files and disks it names exist", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "haven-agent-config-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, "agent.json");
  const write = (edit: (json: Json) => void = () => {}) =>
    writeFile(
      file,
      variant((json) => {
        at(json, "api").tokenFile = join(dir, "api.token");
        at(json, "replication").secretFile = join(dir, "cluster.secret");
        json.disks = [{ name: "ssd0", path: join(dir, "ssd0") }];
        json.tls = { dir: join(dir, "tls") };
        edit(json);
      }),
    );
  const refused = async (pattern: RegExp) =>
    assert.rejects(loadAgentConfig(file), (error: unknown) => {
      assert.ok(error instanceof HavenError && error.code === "HAVEN_ERR_CONFIG", String(error));
      assert.match(error.message, pattern);
      return true;
    });

  await refused(/^cannot read the agent config .*agent\.json: ENOENT: no such file or directory$/);
  await write();
  await refused(/agent\.json: tls\.dir .*tls: ENOENT: no such file or directory$/);
  await mkdir(join(dir, "tls"));
  await refused(/agent\.json: api\.tokenFile .*api\.token: ENOENT: no such file or directory$/);
  await writeFile(join(dir, "api.token"), "token\n");
  await mkdir(join(dir, "cluster.secret"));
  await refused(/agent\.json: replication\.secretFile .*cluster\.secret is not a file$/);
  await rm(join(dir, "cluster.secret"), { recursive: true });
  await writeFile(join(dir, "cluster.secret"), "a secret of at least sixteen bytes\n");
  await refused(/agent\.json: disks\[0\]\.path .*ssd0: ENOENT: no such file or directory/);
  await mkdir(join(dir, "ssd0"));
  const config = await loadAgentConfig(file);
  assert.equal(config.disks[0]!.path, join(dir, "ssd0"));
  assert.deepEqual(config.timings, DEFAULT_TIMINGS);

  await write((json) => (json.timings = { leaseTtlMs: 2_500 }));
  await refused(/agent\.json: timings\.leaseTtlMs must be whole seconds/);

  await writeFile(file, " ".repeat(1024 * 1024 + 1));
  await refused(/^the agent config .*agent\.json is larger than 1048576 bytes$/);
});

test("replication.advertisePort is optional, a port, and round-trips", () => {
  assert.equal(parseAgentConfig(JSON.stringify(goodFile()), "agent.json").replication.advertisePort, undefined);
  const text = variant((file) => (at(file, "replication").advertisePort = 17481));
  const config = parseAgentConfig(text, "agent.json");
  assert.equal(config.replication.advertisePort, 17481);
  assert.equal(parseAgentConfig(formatAgentConfig(config), "agent.json").replication.advertisePort, 17481);
  for (const bad of [0, 65536, 1.5, "7481"]) {
    assert.match(
      refusal(variant((file) => (at(file, "replication").advertisePort = bad))),
      /agent\.json: replication\.advertisePort must be a port number from 1 to 65535/,
    );
  }
});

test("an agent listening beyond loopback without tls is refused, naming the address and the fix", () => {
  const message = refusal(variant((file) => delete file.tls));
  assert.equal(
    message,
    'agent.json: api.listen "0.0.0.0:7480" is reachable beyond this machine, and without "tls" anyone who ' +
      'reaches it could talk to this host: add "tls": { "dir": "/etc/haven/tls/node1" } (\'haven cert issue host ' +
      'node1 --address 10.0.0.1\' makes it), or say "insecure": true to run without TLS',
  );
  // Only the NBD port exposed: still refused, naming that one.
  assert.match(
    refusal(
      variant((file) => {
        delete file.tls;
        at(file, "api").listen = "127.0.0.1:7480";
        at(file, "replication").listen = "127.0.0.1:7481";
        at(file, "host").address = "127.0.0.1";
        at(file, "etcd").endpoints = ["http://127.0.0.1:2379"];
      }),
    ),
    /^agent\.json: nbd\.listen "0\.0\.0\.0:10809" is reachable beyond this machine/,
  );
});

test('"insecure": true must be said in so many words, and then is exposed', () => {
  const insecure = (value: unknown) =>
    variant((file) => {
      delete file.tls;
      file.insecure = value;
      at(file, "etcd").endpoints = ["http://10.0.0.1:2379"];
    });
  const config = parseAgentConfig(insecure(true), "agent.json");
  assert.equal(config.insecure, true);
  assert.equal(config.tls, undefined);
  assert.match(formatAgentConfig(config), /"insecure": true/);
  assert.match(refusal(insecure("yes")), /^agent\.json: insecure must be true or false, not "yes"$/);
  assert.match(refusal(insecure(false)), /is reachable beyond this machine/);
  assert.match(
    refusal(variant((file) => (file.insecure = true))),
    /^agent\.json: insecure is true but "tls" is given too/,
  );
});

test("on loopback alone an agent may run without tls, and tls.dir is exposed when given", () => {
  const loopback = (file: Json): void => {
    delete file.tls;
    at(file, "host").address = "127.0.0.1";
    at(file, "etcd").endpoints = ["http://127.0.0.1:2379"];
    at(file, "api").listen = "127.0.0.1:7480";
    at(file, "replication").listen = "127.0.0.1:7481";
    at(file, "nbd").listen = "[::1]:10809";
  };
  const plain = parseAgentConfig(variant(loopback), "agent.json");
  assert.equal(plain.tls, undefined);
  assert.equal(plain.insecure, undefined);
  assert.equal(parseAgentConfig(JSON.stringify(goodFile()), "agent.json").tls?.dir, "/etc/haven/tls/node1");
  assert.match(refusal(variant((file) => (file.tls = { dir: "relative/dir" }))), /^agent\.json: tls\.dir /);
  assert.match(
    refusal(variant((file) => (file.tls = {}))),
    /^agent\.json: tls\.dir is missing, e\.g\. "\/etc\/haven\/tls\/node1"$/,
  );
});
