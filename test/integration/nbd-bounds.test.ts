// The NBD server's bounds against idle and slow clients (issue 16), on `haven nbd serve` as a process:
// a flood of idle sockets from one address leaves a real client served at once (per-address cap, the
// oldest idle handshake dropped first), and partial WRITE payloads on many connections keep the
// server's memory within its write budget (one budget for all connections, reading paused past it).

import { after, before, describe } from "node:test";
import assert from "node:assert/strict";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { join } from "node:path";
import { Command, Option, OptionReply } from "../../src/nbd/constants.js";
import { NbdServer } from "../../src/nbd/server.js";
import { FileDevice } from "../../src/block/file-device.js";
import { createCa, issueCertificate } from "../../src/security/pki.js";
import { clientTlsOptions, loadTlsIdentity } from "../../src/security/tls-identity.js";
import { infoPayload, RawNbdClient } from "../helpers/raw-nbd-client.js";
import {
  haveTool,
  killStartedProcesses,
  run,
  startServer,
  tempDir,
  type ServerHandle,
} from "../helpers/server-process.js";
import { boundedTest } from "../helpers/bounded-test.js";

const test = boundedTest(90_000);
const MIB = 1024 * 1024;

/** VmRSS and VmHWM (peak) of a process, in bytes. */
function memoryOf(pid: number): { rssBytes: number; peakBytes: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const field = (name: string): number => Number(new RegExp(`${name}:\\s+(\\d+) kB`).exec(status)![1]) * 1024;
  return { rssBytes: field("VmRSS"), peakBytes: field("VmHWM") };
}

async function until(condition: () => boolean, what: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe("NBD server bounds", { timeout: 240_000 }, () => {
  const dir = tempDir("haven-nbd-bounds-");
  after(async () => {
    await killStartedProcesses();
    dir.remove();
  });

  describe("a flood of idle sockets", () => {
    let server: ServerHandle;
    const flood: Socket[] = [];
    before(async () => {
      server = await startServer({ dir: dir.path, file: `${dir.path}/flood.img`, size: "16M" });
    });
    after(async () => {
      for (const socket of flood) socket.destroy();
      await server?.stop("SIGKILL");
    });

    test(
      "4,200 idle sockets from one address leave nbdinfo from that address served at once",
      { skip: !haveTool("nbdinfo") },
      async () => {
        // More than the server's 4,096-connection cap, all from 127.0.0.1, none sending a byte.
        let connected = 0;
        for (let batch = 0; batch < 4200 / 200; batch++) {
          await Promise.all(
            Array.from({ length: 200 }, async () => {
              const socket = connect(server.port, "127.0.0.1");
              socket.on("error", () => undefined);
              socket.resume(); // reads nothing but the server's FIN, so a socket the server dropped closes
              flood.push(socket);
              await Promise.race([once(socket, "connect"), once(socket, "close")]);
              connected++;
            }),
          );
        }
        assert.equal(connected, 4200);
        await server.waitForLog("dropped the oldest handshake from 127.0.0.1");
        const started = Date.now();
        const info = await run("nbdinfo", [`nbd://127.0.0.1:${server.port}/disk`], { timeoutMs: 30_000 });
        const elapsedMs = Date.now() - started;
        assert.equal(info.code, 0, `nbdinfo failed during the flood: ${info.stderr}`);
        assert.match(info.stdout, /export-size: 16777216/);
        // Before the bounds it failed for 20-25 s; served at once means well under the 10 s handshake deadline.
        assert.ok(elapsedMs < 3000, `nbdinfo took ${elapsedMs} ms during the flood`);
        const stillOpen = (): number => flood.filter((socket) => !socket.destroyed).length;
        await until(() => stillOpen() <= 64, "the server to drop all but 64 of the flood sockets", 20_000);
      },
    );
  });

  for (const overTls of [false, true]) {
    describe(`partial WRITE payloads${overTls ? " over TLS" : ""}`, () => {
      const WRITE_BUDGET_BYTES = 64 * MIB;
      const CONNECTIONS = 24;
      const WRITE_BYTES = 32 * MIB;
      // Node's own growth (heap, code, slabs of the paused connections) stays well within this.
      const MARGIN_BYTES = 48 * MIB;
      let server: ServerHandle;
      const clients: RawNbdClient[] = [];
      const pki = join(dir.path, overTls ? "budget-pki-tls" : "budget-pki");
      before(async () => {
        const tlsArgs: string[] = [];
        if (overTls) {
          await createCa(join(pki, "ca"), "budget");
          await issueCertificate(join(pki, "ca"), join(pki, "h1"), {
            kind: "host",
            name: "h1",
            addresses: ["127.0.0.1"],
          });
          await issueCertificate(join(pki, "ca"), join(pki, "client"), {
            kind: "operator",
            name: "client",
            role: "admin",
          });
          tlsArgs.push("--tls-dir", join(pki, "h1"));
        }
        server = await startServer({
          dir: dir.path,
          file: `${dir.path}/budget${overTls ? "-tls" : ""}.img`,
          size: "1G",
          extraArgs: ["--write-budget", "64M", ...tlsArgs],
        });
      });
      after(async () => {
        for (const client of clients) client.close();
        await server?.stop("SIGKILL");
      });

      test(`24 connections holding partial 32 MiB WRITEs keep the server's peak RSS within the 64 MiB write budget + ${MARGIN_BYTES / MIB} MiB`, async (t) => {
        const pid = server.process.pid!;
        const clientTls = overTls ? clientTlsOptions(await loadTlsIdentity(join(pki, "client")), "h1") : undefined;
        for (let i = 0; i < CONNECTIONS; i++) {
          const client = await RawNbdClient.connect({ port: server.port });
          if (clientTls === undefined) {
            await client.handshake({ name: "disk" });
            clients.push(client);
            continue;
          }
          await client.readGreeting();
          client.sendClientFlags();
          client.sendOption(Option.STARTTLS);
          assert.equal((await client.readOptionReply()).type, OptionReply.ACK);
          const secure = await client.upgradeToTls(clientTls);
          secure.sendOption(Option.GO, infoPayload("disk", []));
          assert.equal((await secure.readOptionReplies()).at(-1)!.type, OptionReply.ACK);
          clients.push(secure);
        }
        const before = memoryOf(pid);
        // Each sends all of its WRITE but the last MiB, so no write ever completes and frees its memory.
        // Without one budget for all connections the server would hold 24 x 31 MiB = 744 MiB.
        const piece = Buffer.alloc(MIB, 0x77);
        clients.forEach((client, i) => {
          client.request(Command.WRITE, { cookie: BigInt(i + 1), offset: i * WRITE_BYTES, length: WRITE_BYTES });
          void (async () => {
            for (let sent = 0; sent < WRITE_BYTES - MIB; sent += MIB) {
              if (!client.socket.write(piece)) await Promise.race([once(client.socket, "drain"), client.closed]);
              if (client.socket.destroyed) return;
            }
          })();
        });
        const waiting = (): number => (server.log().match(/waits for the server's write budget/g) ?? []).length;
        const admitted = WRITE_BUDGET_BYTES / WRITE_BYTES;
        // The budget admits two WRITEs; their payloads (62 MiB) arrive, every other connection waits unread.
        await until(
          () =>
            (waiting() >= CONNECTIONS - admitted && memoryOf(pid).rssBytes - before.rssBytes >= 48 * MIB) ||
            memoryOf(pid).peakBytes - before.rssBytes > WRITE_BUDGET_BYTES + MARGIN_BYTES, // already over: fail below
          `${CONNECTIONS - admitted} connections waiting for the budget and the admitted payloads in memory`,
        );
        const afterFlood = memoryOf(pid);
        const grownBytes = afterFlood.peakBytes - before.rssBytes;
        t.diagnostic(
          `server RSS ${Math.round(before.rssBytes / MIB)} MiB before, peak ${Math.round(afterFlood.peakBytes / MIB)} MiB after`,
        );
        assert.ok(
          grownBytes <= WRITE_BUDGET_BYTES + MARGIN_BYTES,
          `peak RSS grew by ${Math.round(grownBytes / MIB)} MiB (from ${Math.round(before.rssBytes / MIB)} MiB)`,
        );
        assert.equal(waiting(), CONNECTIONS - admitted, "exactly the connections past the budget wait");

        // The budget comes back when those clients go: a full 32 MiB write from a new client completes.
        for (const client of clients) client.close();
        await Promise.all(clients.map((client) => client.closed));
        const writer = await RawNbdClient.connect({ port: server.port });
        await writer.handshake({ name: "disk" });
        writer.request(Command.WRITE, { cookie: 99n, offset: 0, payload: Buffer.alloc(WRITE_BYTES, 0x11) });
        const reply = await writer.readReply();
        assert.equal(reply?.simple?.error, 0);
        writer.close();
      });
    });
  }

  describe("handshake bounds (in-process server, small limits)", () => {
    let server: NbdServer;
    let device: FileDevice;
    let port: number;
    const logs: string[] = [];
    before(async () => {
      await createCa(join(dir.path, "ca"), "bounds");
      await issueCertificate(join(dir.path, "ca"), join(dir.path, "h1"), {
        kind: "host",
        name: "h1",
        addresses: ["127.0.0.1"],
      });
      device = await FileDevice.open(join(dir.path, "small.img"), { createSizeBytes: MIB });
      server = new NbdServer({
        exports: [{ name: "disk", description: "", device }],
        log: (line) => logs.push(line),
        limits: { maxHandshakes: 4, handshakeTimeoutMs: 1000 },
        tls: { identity: await loadTlsIdentity(join(dir.path, "h1")), required: false },
      });
      port = Number((await server.listen({ kind: "tcp", host: "127.0.0.1", port: 0 })).split(":")[1]);
    });
    after(async () => {
      await server.stop();
      await device.close();
    });

    test("idle handshakes from many addresses beyond the total bound: the oldest are dropped, a new client is served", async () => {
      const idle: Socket[] = [];
      for (let i = 2; i < 12; i++) {
        const socket = connect({ port, host: "127.0.0.1", localAddress: `127.0.0.${i}` });
        socket.on("error", () => undefined);
        socket.resume();
        idle.push(socket);
        await once(socket, "connect");
      }
      await until(() => idle.filter((socket) => !socket.destroyed).length <= 4, "all but 4 idle handshakes dropped");
      const client = await RawNbdClient.connect({ port });
      await client.handshake({ name: "disk" });
      client.close();
      for (const socket of idle) socket.destroy();
      assert.ok(logs.some((line) => line.includes("dropped the oldest handshake (4 in progress)")));
    });

    test("a client that sends STARTTLS and then nothing is cut off at the handshake deadline", async () => {
      const client = await RawNbdClient.connect({ port });
      await client.readGreeting();
      client.sendClientFlags();
      client.sendOption(Option.STARTTLS);
      assert.equal((await client.readOptionReply()).type, OptionReply.ACK);
      const started = Date.now();
      assert.ok(await client.waitForClose(5000), "the server must close a stalled TLS handshake");
      assert.ok(Date.now() - started < 3000, `closed after ${Date.now() - started} ms; the deadline is 1 s`);
    });
  });
});
