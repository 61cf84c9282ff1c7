// NBD over TLS (NBD_OPT_STARTTLS, mutual X.509 under the cluster CA), against `haven nbd serve --tls-dir
// DIR --tls-required` as a process: nothing is served to a client that has not upgraded, real clients
// (nbdinfo, nbdsh, qemu-img, qemu-io) read over TLS what was written over TLS, and a client certificate
// the cluster CA did not sign is refused. One in-process server checks the TLS-less answer (POLICY).

import { after, before, describe } from "node:test";
import assert from "node:assert/strict";
import { readFile, copyFile, mkdir } from "node:fs/promises";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { createCa, issueCertificate } from "../../src/security/pki.js";
import { clientTlsOptions, loadTlsIdentity, type TlsIdentity } from "../../src/security/tls-identity.js";
import { Info, Option, OptionReply } from "../../src/nbd/constants.js";
import { NbdServer } from "../../src/nbd/server.js";
import { FileDevice } from "../../src/block/file-device.js";
import { infoPayload, RawNbdClient } from "../helpers/raw-nbd-client.js";
import {
  HAVEN_BIN,
  haveTool,
  killStartedProcesses,
  run,
  startServer,
  tempDir,
  type ServerHandle,
} from "../helpers/server-process.js";
import { boundedTest } from "../helpers/bounded-test.js";

// Each test takes a second or two (qemu-img and qemu-io start slowly); 60 s means hung.
const test = boundedTest(60_000);
const MIB = 1024 * 1024;

describe("NBD over TLS", { timeout: 180_000 }, () => {
  const dir = tempDir("haven-nbd-tls-");
  const pki = (name: string): string => join(dir.path, "pki", name);
  let server: ServerHandle;
  let alice: TlsIdentity;
  let mallory: TlsIdentity;

  before(async () => {
    await createCa(pki("ca"), "nbd-tls-test");
    await issueCertificate(pki("ca"), pki("h1"), { kind: "host", name: "h1", addresses: ["127.0.0.1", "localhost"] });
    await issueCertificate(pki("ca"), pki("alice"), { kind: "operator", name: "alice", role: "admin" });
    // Mallory's certificate comes from another CA; her directory trusts ours, so only our check stops her.
    await createCa(pki("other-ca"), "other-cluster");
    await issueCertificate(pki("other-ca"), pki("mallory-own"), { kind: "operator", name: "mallory", role: "admin" });
    await mkdir(pki("mallory"), { recursive: true });
    await copyFile(join(pki("ca"), "ca-cert.pem"), join(pki("mallory"), "ca-cert.pem"));
    for (const name of ["cert.pem", "key.pem", "client-cert.pem", "client-key.pem"])
      await copyFile(join(pki("mallory-own"), name), join(pki("mallory"), name));
    alice = await loadTlsIdentity(pki("alice"));
    mallory = {
      ...(await loadTlsIdentity(pki("mallory-own"))),
      ca: await readFile(join(pki("ca"), "ca-cert.pem")),
    };
    server = await startServer({
      dir: dir.path,
      size: "64M",
      extraArgs: ["--tls-dir", pki("h1"), "--tls-required"],
    });
  });
  after(async () => {
    await server?.stop();
    await killStartedProcesses();
    dir.remove();
  });

  const tlsUri = (certificates: string): string =>
    `nbds://127.0.0.1:${server.port}/disk?tls-certificates=${certificates}`;
  const qemuTls = (certificates: string): string[] => [
    "--object",
    `tls-creds-x509,id=tls0,endpoint=client,dir=${certificates}`,
    "--image-opts",
    `driver=nbd,host=127.0.0.1,port=${server.port},export=disk,tls-creds=tls0`,
  ];

  async function greeted(): Promise<RawNbdClient> {
    const client = await RawNbdClient.connect({ port: server.port });
    await client.readGreeting();
    client.sendClientFlags();
    return client;
  }

  test("TLS required: every option before STARTTLS gets TLS_REQD, and nothing is served", async () => {
    const client = await greeted();
    for (const [option, payload] of [
      [Option.LIST, Buffer.alloc(0)],
      [Option.STRUCTURED_REPLY, Buffer.alloc(0)],
      [Option.INFO, infoPayload("disk", [Info.NAME])],
      [Option.GO, infoPayload("disk", [])],
    ] as const) {
      client.sendOption(option, payload);
      const replies = await client.readOptionReplies();
      assert.equal(replies.length, 1, `option ${option}: one reply, no export listed or described`);
      assert.equal(replies[0]!.type, OptionReply.ERR_TLS_REQD, `option ${option}`);
    }
    client.sendOption(Option.ABORT);
    assert.equal((await client.readOptionReply()).type, OptionReply.ACK, "ABORT is still answered");
    client.close();
  });

  test("TLS required: EXPORT_NAME before STARTTLS closes the connection without a byte of export data", async () => {
    const client = await greeted();
    client.sendOption(Option.EXPORT_NAME, Buffer.from("disk"));
    assert.equal(await client.read(1), undefined, "the server closed without answering");
    await server.waitForLog("EXPORT_NAME before STARTTLS");
  });

  test("STARTTLS upgrades to mutual TLS; a second STARTTLS is INVALID; GO then works over TLS", async () => {
    const client = await greeted();
    client.sendOption(Option.STARTTLS);
    assert.equal((await client.readOptionReply()).type, OptionReply.ACK);
    const secure = await client.upgradeToTls(clientTlsOptions(alice, "h1"));
    secure.sendOption(Option.STARTTLS);
    assert.equal((await secure.readOptionReply()).type, OptionReply.ERR_INVALID);
    secure.sendOption(Option.GO, infoPayload("disk", []));
    const replies = await secure.readOptionReplies();
    assert.equal(replies[replies.length - 1]!.type, OptionReply.ACK);
    assert.equal(replies[0]!.data.readBigUInt64BE(2), BigInt(64 * MIB));
    secure.close();
    await server.waitForLog("TLS established with operator alice (admin)");
  });

  test("data sent after STARTTLS before the server's ACK ends the connection (no plaintext smuggled in)", async () => {
    const client = await greeted();
    client.sendOption(Option.STARTTLS);
    client.sendOption(Option.GO, infoPayload("disk", []));
    // The server may answer STARTTLS before it sees the GO, but it never proceeds to TLS with it buffered.
    const first = await client.read(20);
    if (first !== undefined) assert.equal(await client.read(1), undefined);
    assert.ok(await client.waitForClose());
  });

  test("a client certificate from another CA is refused", async () => {
    const client = await greeted();
    client.sendOption(Option.STARTTLS);
    assert.equal((await client.readOptionReply()).type, OptionReply.ACK);
    // With TLS 1.3 the client learns of the refusal after its side of the handshake: either way no GO succeeds.
    const refused = await client.upgradeToTls(clientTlsOptions(mallory, "h1")).then(
      async (secure) => {
        secure.sendOption(Option.GO, infoPayload("disk", []));
        return (await secure.read(20)) === undefined;
      },
      () => true,
    );
    assert.ok(refused, "the connection must not survive a foreign certificate");
    await server.waitForLog(/TLS client certificate refused|TLS handshake failed/);
    if (haveTool("nbdinfo")) {
      const result = await run("nbdinfo", [tlsUri(pki("mallory"))], { timeoutMs: 30_000 });
      assert.notEqual(result.code, 0, "nbdinfo with a foreign client certificate must fail");
    }
  });

  test(
    "a plaintext nbdinfo is refused; nbdinfo over TLS describes the export",
    { skip: !haveTool("nbdinfo") },
    async () => {
      const plain = await run("nbdinfo", [`nbd://127.0.0.1:${server.port}/disk`], { timeoutMs: 30_000 });
      assert.notEqual(plain.code, 0);
      const secure = await run("nbdinfo", [tlsUri(pki("alice"))], { timeoutMs: 30_000 });
      assert.equal(secure.code, 0, secure.stderr);
      assert.match(secure.stdout, /with TLS/);
      assert.match(secure.stdout, /export-size: 67108864/);
    },
  );

  test(
    "qemu-io writes over TLS; qemu-io, nbdsh and qemu-img read it back over TLS",
    { skip: !haveTool("qemu-io") },
    async () => {
      const write = await run("qemu-io", [...qemuTls(pki("alice")), "-c", "write -P 0x5a 1M 2M", "-c", "flush"], {
        timeoutMs: 30_000,
      });
      assert.equal(write.code, 0, write.stderr + write.stdout);
      assert.doesNotMatch(write.stdout, /error|failed/i);
      const read = await run("qemu-io", [...qemuTls(pki("alice")), "-c", "read -P 0x5a 1M 2M"], { timeoutMs: 30_000 });
      assert.equal(read.code, 0, read.stderr);
      assert.match(read.stdout, /read 2097152\/2097152 bytes/);
      assert.doesNotMatch(read.stdout, /Pattern verification failed/);

      // nbdsh is python's `nbd` module: Debian's python3 has it, a python3 earlier on PATH may not.
      if (existsSync("/usr/bin/nbdsh") && existsSync("/usr/bin/python3")) {
        const check =
          "import sys, nbd\n" +
          "h = nbd.NBD()\n" +
          "h.set_uri_allow_local_file(True)\n" +
          `h.connect_uri(${JSON.stringify(tlsUri(pki("alice")))})\n` +
          "d = h.pread(2 * 1024 * 1024, 1024 * 1024)\n" +
          "sys.exit(0 if d == b'\\x5a' * len(d) and h.pread(4096, 0) == bytes(4096) else 3)\n";
        const nbdsh = await run("/usr/bin/python3", ["-m", "nbd", "-n", "-c", check], {
          timeoutMs: 30_000,
        });
        assert.equal(nbdsh.code, 0, `nbdsh over TLS read other bytes: ${nbdsh.stderr}`);
      }

      const copy = join(dir.path, "copy.raw");
      const convert = await run(
        "qemu-img",
        [
          "convert",
          "-O",
          "raw",
          "--object",
          `tls-creds-x509,id=tls0,endpoint=client,dir=${pki("alice")}`,
          "--image-opts",
          `driver=nbd,host=127.0.0.1,port=${server.port},export=disk,tls-creds=tls0`,
          copy,
        ],
        { timeoutMs: 30_000 },
      );
      assert.equal(convert.code, 0, convert.stderr);
      const copied = await readFile(copy);
      assert.equal(copied.length, 64 * MIB);
      assert.ok(
        copied.subarray(MIB, 3 * MIB).every((byte) => byte === 0x5a),
        "qemu-img read the written pattern",
      );
      assert.ok(
        copied.subarray(0, MIB).every((byte) => byte === 0),
        "and zeroes around it",
      );
      const info = await run("qemu-img", ["info", ...qemuTls(pki("alice"))], { timeoutMs: 30_000 });
      assert.equal(info.code, 0, info.stderr);
      assert.match(info.stdout, /virtual size: 64 MiB/);
    },
  );

  test(
    "QEMU (qemu-system-x86_64) attaches the export over TLS as a blockdev and reads what qemu-io wrote",
    { skip: !haveTool("qemu-system-x86_64") || !haveTool("qemu-io") },
    async () => {
      const write = await run("qemu-io", [...qemuTls(pki("alice")), "-c", "write -P 0xc3 8M 64k"], {
        timeoutMs: 30_000,
      });
      assert.equal(write.code, 0, write.stderr);
      const monitor = await run(
        "qemu-system-x86_64",
        [
          "-machine",
          "none",
          "-nodefaults",
          "-display",
          "none",
          "-object",
          `tls-creds-x509,id=tls0,endpoint=client,dir=${pki("alice")}`,
          "-blockdev",
          `driver=nbd,node-name=d0,server.type=inet,server.host=127.0.0.1,server.port=${server.port},export=disk,tls-creds=tls0`,
          "-monitor",
          "stdio",
        ],
        { input: 'qemu-io d0 "read -P 0xc3 8M 64k"\nquit\n', timeoutMs: 30_000 },
      );
      assert.equal(monitor.code, 0, monitor.stderr);
      assert.match(monitor.stdout, /read 65536\/65536 bytes at offset 8388608/);
      assert.doesNotMatch(monitor.stdout, /Pattern verification failed/);
    },
  );
});

describe("haven nbd serve TLS flags", { timeout: 30_000 }, () => {
  test("--tls-required without --tls-dir, or a --tls-dir without an identity, is refused with a message", async () => {
    const dir = tempDir("haven-nbd-tls-flags-");
    try {
      const image = join(dir.path, "disk.img");
      const alone = await run("node", [HAVEN_BIN, "nbd", "serve", image, "--size", "1M", "--tls-required"]);
      assert.notEqual(alone.code, 0);
      assert.match(alone.stderr, /--tls-required needs --tls-dir/);
      const empty = await run("node", [HAVEN_BIN, "nbd", "serve", image, "--size", "1M", "--tls-dir", dir.path]);
      assert.notEqual(empty.code, 0);
      assert.match(empty.stderr, /cannot read .*ca-cert\.pem/);
    } finally {
      dir.remove();
    }
  });
});

describe("NBD without TLS configured", { timeout: 30_000 }, () => {
  const dir = tempDir("haven-nbd-notls-");
  let server: NbdServer;
  let device: FileDevice;
  let port: number;
  before(async () => {
    device = await FileDevice.open(join(dir.path, "disk.img"), { createSizeBytes: 4 * MIB });
    server = new NbdServer({ exports: [{ name: "disk", description: "", device }], log: () => undefined });
    port = Number((await server.listen({ kind: "tcp", host: "127.0.0.1", port: 0 })).split(":")[1]);
  });
  after(async () => {
    await server.stop();
    await device.close();
    dir.remove();
  });

  test("STARTTLS gets POLICY and the session carries on in clear", async () => {
    const client = await RawNbdClient.connect({ port });
    await client.readGreeting();
    client.sendClientFlags();
    client.sendOption(Option.STARTTLS);
    assert.equal((await client.readOptionReply()).type, OptionReply.ERR_POLICY);
    client.sendOption(Option.GO, infoPayload("disk", []));
    const replies = await client.readOptionReplies();
    assert.equal(replies[replies.length - 1]!.type, OptionReply.ACK);
    client.close();
  });
});
