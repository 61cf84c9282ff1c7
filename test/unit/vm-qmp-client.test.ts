// QmpClient against a fake QMP server on a unix socket: the greeting and capabilities negotiation,
// replies matched by id whatever their order, events interleaved with replies and split across
// chunks, and every way the peer can fail (malformed JSON, an oversized line, no greeting, a reply
// for an unknown id, a command that is never answered, a dropped connection).

import assert from "node:assert/strict";
import { after, before } from "node:test";
import { createServer, type Server, type Socket } from "node:net";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { QmpClient, QmpCommandError, type QmpEvent } from "../../src/vm/qmp-client.js";
import { hasCode } from "../../src/core/errors.js";
import { boundedTest } from "../helpers/bounded-test.js";

const test = boundedTest(10_000);

const GREETING = '{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}\n';

let dir: string;
let serial = 0;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), "haven-qmp-"));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

interface Fake {
  path: string;
  server: Server;
  /** Commands received, in order. */
  received: Array<{ execute: string; id?: string; arguments?: unknown }>;
  /** The connected peer, once one connects. */
  peer: Promise<Socket>;
  close(): Promise<void>;
}

/**
 * A fake QEMU: sends `greeting` on connect (unless null), answers qmp_capabilities, and hands every
 * other command to `onCommand`.
 */
async function fakeQmp(
  onCommand: (socket: Socket, message: { execute: string; id?: string }) => void,
  greeting: string | null = GREETING,
): Promise<Fake> {
  const path = join(dir, `qmp-${serial++}.sock`);
  const received: Fake["received"] = [];
  const sockets: Socket[] = [];
  let resolvePeer!: (s: Socket) => void;
  const peer = new Promise<Socket>((r) => (resolvePeer = r));
  const server = createServer((socket) => {
    sockets.push(socket);
    socket.on("error", () => undefined);
    resolvePeer(socket);
    if (greeting !== null) socket.write(greeting);
    let buffered = "";
    socket.on("data", (chunk) => {
      buffered += chunk.toString();
      let newline: number;
      while ((newline = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        const message = JSON.parse(line) as { execute: string; id?: string };
        received.push(message);
        if (message.execute === "qmp_capabilities") {
          socket.write(`${JSON.stringify({ return: {}, id: message.id })}\n`);
        } else {
          onCommand(socket, message);
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return {
    path,
    server,
    received,
    peer,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

test("connect reads the greeting, negotiates capabilities, and a command's return value comes back", async () => {
  const fake = await fakeQmp((socket, m) => {
    socket.write(`${JSON.stringify({ return: { status: "prelaunch", running: false }, id: m.id })}\n`);
  });
  const client = await QmpClient.connect(fake.path);
  try {
    assert.deepEqual(fake.received[0]?.execute, "qmp_capabilities");
    assert.ok(client.qemuGreeting?.version);
    const status = await client.execute("query-status");
    assert.deepEqual(status, { status: "prelaunch", running: false });
    assert.equal(fake.received[1]?.execute, "query-status");
    assert.notEqual(fake.received[0]?.id, fake.received[1]?.id);
  } finally {
    client.close();
    await fake.close();
  }
});

test("replies are matched by id, not by order, and each command has a unique id", async () => {
  const held: Array<{ socket: Socket; id: string | undefined; execute: string }> = [];
  const fake = await fakeQmp((socket, m) => {
    held.push({ socket, id: m.id, execute: m.execute });
    if (held.length === 3) {
      // Answer in reverse order, all in one chunk.
      const lines = held
        .slice()
        .reverse()
        .map((h) => JSON.stringify({ return: h.execute, id: h.id }))
        .join("\n");
      socket.write(`${lines}\n`);
    }
  });
  const client = await QmpClient.connect(fake.path);
  try {
    const results = await Promise.all([client.execute("a"), client.execute("b"), client.execute("c")]);
    assert.deepEqual(results, ["a", "b", "c"]);
    assert.equal(new Set(fake.received.map((m) => m.id)).size, fake.received.length);
  } finally {
    client.close();
    await fake.close();
  }
});

test("events interleaved with replies, split across chunks, reach every listener", async () => {
  const fake = await fakeQmp((socket, m) => {
    const event1 = JSON.stringify({ event: "STOP", timestamp: { seconds: 1, microseconds: 2 } });
    const reply = JSON.stringify({ return: {}, id: m.id });
    const event2 = JSON.stringify({ event: "RESUME", data: { x: 1 } });
    const all = `${event1}\n${reply}\n${event2}\n`;
    // Byte by byte for the first part, then the rest at once.
    let at = 0;
    const step = (): void => {
      if (at < 30) {
        socket.write(all.slice(at, at + 1));
        at++;
        setImmediate(step);
      } else {
        socket.write(all.slice(at));
      }
    };
    step();
  });
  const client = await QmpClient.connect(fake.path);
  try {
    const seen: QmpEvent[] = [];
    const seenToo: string[] = [];
    client.onEvent((e) => seen.push(e));
    client.onEvent((e) => seenToo.push(e.event));
    const gotResume = new Promise<void>((resolve) =>
      client.onEvent((e) => {
        if (e.event === "RESUME") resolve();
      }),
    );
    assert.deepEqual(await client.execute("cont"), {});
    await gotResume;
    assert.deepEqual(
      seen.map((e) => e.event),
      ["STOP", "RESUME"],
    );
    assert.deepEqual(seen[1]?.data, { x: 1 });
    assert.deepEqual(seenToo, ["STOP", "RESUME"]);
  } finally {
    client.close();
    await fake.close();
  }
});

test("an error reply rejects with HAVEN_ERR_IO carrying QEMU's class and desc", async () => {
  const fake = await fakeQmp((socket, m) => {
    socket.write(
      `${JSON.stringify({ error: { class: "CommandNotFound", desc: "The command x has not been found" }, id: m.id })}\n`,
    );
  });
  const client = await QmpClient.connect(fake.path);
  try {
    await assert.rejects(client.execute("x"), (error: unknown) => {
      assert.ok(error instanceof QmpCommandError);
      assert.ok(hasCode(error, "HAVEN_ERR_IO"));
      assert.equal(error.errorClass, "CommandNotFound");
      assert.equal(error.desc, "The command x has not been found");
      assert.match(error.message, /CommandNotFound/);
      return true;
    });
    assert.equal(client.closed, false);
  } finally {
    client.close();
    await fake.close();
  }
});

test("malformed JSON ends the connection and rejects pending commands with HAVEN_ERR_UNAVAILABLE", async () => {
  const fake = await fakeQmp((socket) => socket.write("{not json\n"));
  const client = await QmpClient.connect(fake.path);
  try {
    await assert.rejects(client.execute("x"), (error: unknown) => {
      assert.ok(hasCode(error, "HAVEN_ERR_UNAVAILABLE"));
      assert.match((error as Error).message, /malformed JSON/);
      return true;
    });
    assert.equal(client.closed, true);
    await assert.rejects(client.execute("y"), (error: unknown) => hasCode(error, "HAVEN_ERR_UNAVAILABLE"));
  } finally {
    client.close();
    await fake.close();
  }
});

test("a line longer than the bound ends the connection with a clear error", async () => {
  const fake = await fakeQmp((socket) => {
    // 64 KiB with no newline, in several chunks, against a 16 KiB bound.
    const block = "x".repeat(8192);
    for (let i = 0; i < 8; i++) socket.write(block);
  });
  const client = await QmpClient.connect(fake.path, { maxLineBytes: 16 * 1024 });
  try {
    await assert.rejects(client.execute("x"), (error: unknown) => {
      assert.ok(hasCode(error, "HAVEN_ERR_UNAVAILABLE"));
      assert.match((error as Error).message, /line longer than 16384 bytes/);
      return true;
    });
    assert.equal(client.closed, true);
  } finally {
    client.close();
    await fake.close();
  }
});

test("a peer that never greets fails connect within its timeout", async () => {
  const fake = await fakeQmp(() => undefined, null);
  try {
    const started = Date.now();
    await assert.rejects(QmpClient.connect(fake.path, { connectTimeoutMs: 300 }), (error: unknown) => {
      assert.ok(hasCode(error, "HAVEN_ERR_UNAVAILABLE"));
      assert.match((error as Error).message, /no greeting within/);
      return true;
    });
    assert.ok(Date.now() - started < 3000);
  } finally {
    await fake.close();
  }
});

test("connect to a socket nobody listens on fails with HAVEN_ERR_UNAVAILABLE", async () => {
  await assert.rejects(QmpClient.connect(join(dir, "absent.sock"), { connectTimeoutMs: 1000 }), (error: unknown) =>
    hasCode(error, "HAVEN_ERR_UNAVAILABLE"),
  );
});

test("a reply for an unknown id is dropped and the connection carries on", async () => {
  const fake = await fakeQmp((socket, m) => {
    socket.write(`${JSON.stringify({ return: "stray", id: "nobody-asked" })}\n`);
    socket.write(`${JSON.stringify({ return: "stray-without-id" })}\n`);
    socket.write(`${JSON.stringify({ return: "mine", id: m.id })}\n`);
  });
  const client = await QmpClient.connect(fake.path);
  try {
    assert.equal(await client.execute("x"), "mine");
    assert.equal(client.closed, false);
  } finally {
    client.close();
    await fake.close();
  }
});

test("a command that gets no reply times out with HAVEN_ERR_UNAVAILABLE, and its late reply is dropped", async () => {
  let late: { socket: Socket; id: string | undefined } | undefined;
  const fake = await fakeQmp((socket, m) => {
    if (m.execute === "slow") late = { socket, id: m.id };
    else socket.write(`${JSON.stringify({ return: "fast", id: m.id })}\n`);
  });
  const client = await QmpClient.connect(fake.path);
  try {
    await assert.rejects(client.execute("slow", { a: 1 }, { timeoutMs: 100 }), (error: unknown) => {
      assert.ok(hasCode(error, "HAVEN_ERR_UNAVAILABLE"));
      assert.match((error as Error).message, /slow got no reply within 100 ms/);
      return true;
    });
    assert.deepEqual(fake.received.at(-1)?.arguments, { a: 1 });
    late?.socket.write(`${JSON.stringify({ return: "late", id: late.id })}\n`);
    assert.equal(await client.execute("fast"), "fast");
  } finally {
    client.close();
    await fake.close();
  }
});

test("connection loss rejects every pending command and tells close listeners", async () => {
  let count = 0;
  const fake = await fakeQmp((socket) => {
    if (++count === 2) socket.destroy();
  });
  const client = await QmpClient.connect(fake.path);
  try {
    const closed = new Promise<Error>((resolve) => client.onClose(resolve));
    const results = await Promise.allSettled([client.execute("a"), client.execute("b")]);
    for (const result of results) {
      assert.equal(result.status, "rejected");
      assert.ok(hasCode(result.reason, "HAVEN_ERR_UNAVAILABLE"));
    }
    assert.match((await closed).message, /closed by QEMU/);
  } finally {
    client.close();
    await fake.close();
  }
});

test("close() rejects pending commands and later ones", async () => {
  const fake = await fakeQmp(() => undefined);
  const client = await QmpClient.connect(fake.path);
  try {
    const pending = client.execute("never");
    client.close();
    await assert.rejects(pending, (error: unknown) => hasCode(error, "HAVEN_ERR_UNAVAILABLE"));
    await assert.rejects(client.execute("after"), /closed by Haven/);
  } finally {
    await fake.close();
  }
});
