// The remote route of a disk endpoint over TLS: QEMU speaks plain NBD on the host's unix socket, the
// primary's NBD front beyond loopback insists on TLS. The relay takes the handshake's first steps on the
// client's behalf (NBD protocol, "newstyle negotiation" and the STARTTLS option):
//   1. the server's greeting (NBDMAGIC, IHAVEOPT, handshake flags) goes to the client as it is;
//   2. the client's flags (4 bytes) go to the server;
//   3. the relay asks the server for STARTTLS and expects its ACK, then upgrades the connection with the
//      host's certificate (the server's must name the primary's host);
// and from then on pipes bytes: the client's options (structured replies, GO...) reach the server
// inside TLS, as if the client had asked for TLS itself. Nothing of the client's is read past its flags
// before TLS is up, so no byte of it crosses in the clear.

import type { Socket } from "node:net";
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from "node:tls";
import { HavenError } from "../core/errors.js";
import { IHAVEOPT, NBD_MAGIC, OPTION_REPLY_MAGIC, Option, OptionReply } from "../nbd/constants.js";

const GREETING_BYTES = 18;
const CLIENT_FLAGS_BYTES = 4;
const OPTION_REPLY_HEADER_BYTES = 20;
/** An ACK to STARTTLS carries no data; a refusal's message is bounded by this. */
const MAX_REPLY_DATA = 4096;

/** Reads exactly `n` bytes from `socket` (leaving the rest buffered); rejects on close or error. */
function readExactly(socket: Socket, n: number, what: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const attempt = (): void => {
      const chunk = socket.read(n) as Buffer | null;
      if (chunk === null) return;
      cleanup();
      resolve(chunk);
    };
    const closed = (): void => {
      cleanup();
      reject(new HavenError("HAVEN_ERR_IO", `the connection closed before ${what}`));
    };
    const failed = (error: Error): void => {
      cleanup();
      reject(error);
    };
    const cleanup = (): void => {
      socket.off("readable", attempt);
      socket.off("end", closed);
      socket.off("close", closed);
      socket.off("error", failed);
    };
    socket.on("readable", attempt);
    socket.once("end", closed);
    socket.once("close", closed);
    socket.once("error", failed);
    attempt();
  });
}

/**
 * Runs the relay's part of the handshake on `client` (QEMU) and `upstream` (the primary's NBD port,
 * connected) and resolves with the TLS connection to pipe the client to.
 */
export async function upgradeRelay(client: Socket, upstream: Socket, tls: ConnectionOptions): Promise<TLSSocket> {
  const greeting = await readExactly(upstream, GREETING_BYTES, "the server's greeting");
  if (greeting.readBigUInt64BE(0) !== NBD_MAGIC || greeting.readBigUInt64BE(8) !== IHAVEOPT)
    throw new HavenError("HAVEN_ERR_IO", "the primary's NBD port did not greet with newstyle negotiation");
  client.write(greeting);
  const flags = await readExactly(client, CLIENT_FLAGS_BYTES, "the client's flags");
  upstream.write(flags);
  const request = Buffer.alloc(16);
  request.writeBigUInt64BE(IHAVEOPT, 0);
  request.writeUInt32BE(Option.STARTTLS, 8);
  request.writeUInt32BE(0, 12);
  upstream.write(request);
  const header = await readExactly(upstream, OPTION_REPLY_HEADER_BYTES, "the reply to STARTTLS");
  const length = header.readUInt32BE(16);
  if (header.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC || header.readUInt32BE(8) !== Option.STARTTLS)
    throw new HavenError("HAVEN_ERR_IO", "the primary answered STARTTLS with something else");
  if (length > MAX_REPLY_DATA) throw new HavenError("HAVEN_ERR_IO", "the reply to STARTTLS is too long");
  const data = length > 0 ? await readExactly(upstream, length, "the reply to STARTTLS") : Buffer.alloc(0);
  if (header.readUInt32BE(12) !== OptionReply.ACK)
    throw new HavenError("HAVEN_ERR_IO", `the primary refused STARTTLS: ${data.toString("utf8")}`);
  return new Promise((resolve, reject) => {
    const secure = tlsConnect({ ...tls, socket: upstream });
    secure.once("secureConnect", () => {
      secure.off("error", reject);
      resolve(secure);
    });
    secure.once("error", reject);
  });
}
