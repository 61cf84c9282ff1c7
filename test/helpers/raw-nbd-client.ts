// A deliberately dumb NBD client for tests: it sends exactly the bytes it is told to, well-formed or not,
// and parses what comes back, so tests can check the server's answer to every kind of bad input.

import { connect, type Socket } from "node:net";
import { connect as tlsConnect, type ConnectionOptions } from "node:tls";
import {
  CommandFlag,
  IHAVEOPT,
  Info,
  NBD_MAGIC,
  Option,
  OPTION_REPLY_MAGIC,
  REQUEST_MAGIC,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC,
  HandshakeFlag,
  BASE_ALLOCATION,
} from "../../src/nbd/constants.js";

export interface OptionReplyMessage {
  option: number;
  type: number;
  data: Buffer;
}

export interface Chunk {
  flags: number;
  type: number;
  cookie: bigint;
  payload: Buffer;
}

export interface SimpleReplyMessage {
  error: number;
  cookie: bigint;
}

export class RawNbdClient {
  private buffered: Buffer[] = [];
  private bufferedBytes = 0;
  private waiter: (() => void) | undefined;
  private ended = false;
  readonly closed: Promise<void>;

  private readonly onData = (chunk: Buffer): void => {
    this.buffered.push(chunk);
    this.bufferedBytes += chunk.length;
    this.waiter?.();
  };

  private constructor(readonly socket: Socket) {
    socket.on("data", this.onData);
    this.closed = new Promise((resolve) =>
      socket.on("close", () => {
        this.ended = true;
        this.waiter?.();
        resolve();
      }),
    );
    socket.on("error", () => undefined);
  }

  static connect(target: { port: number } | { path: string }): Promise<RawNbdClient> {
    return new Promise((resolve, reject) => {
      const socket = "port" in target ? connect(target.port, "127.0.0.1") : connect(target.path);
      socket.once("connect", () => resolve(new RawNbdClient(socket)));
      socket.once("error", reject);
    });
  }

  /**
   * After the server ACKed STARTTLS: runs a TLS client handshake over this connection and returns a
   * client that speaks over it (this one must not be used any more). Rejects if TLS fails.
   */
  async upgradeToTls(options: ConnectionOptions): Promise<RawNbdClient> {
    if (this.bufferedBytes > 0) throw new Error(`${this.bufferedBytes} unread bytes before TLS`);
    this.socket.off("data", this.onData);
    const secure = tlsConnect({ ...options, socket: this.socket });
    await new Promise<void>((resolve, reject) => {
      secure.once("secureConnect", resolve);
      secure.once("error", reject);
      secure.once("close", () => reject(new Error("connection closed during the TLS handshake")));
    });
    return new RawNbdClient(secure);
  }

  /** Resolves with `bytes` bytes, or undefined if the server closed the connection first. */
  async read(bytes: number, timeoutMs = 10_000): Promise<Buffer | undefined> {
    const deadline = Date.now() + timeoutMs;
    while (this.bufferedBytes < bytes) {
      if (this.ended) return undefined;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${bytes} bytes (have ${this.bufferedBytes})`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(1, deadline - Date.now()));
        this.waiter = () => {
          clearTimeout(timer);
          this.waiter = undefined;
          resolve();
        };
      });
    }
    const all = Buffer.concat(this.buffered);
    this.buffered = [all.subarray(bytes)];
    this.bufferedBytes = all.length - bytes;
    return all.subarray(0, bytes);
  }

  async mustRead(bytes: number): Promise<Buffer> {
    const data = await this.read(bytes);
    if (data === undefined) throw new Error(`server closed the connection while ${bytes} bytes were expected`);
    return data;
  }

  send(data: Buffer): void {
    this.socket.write(data);
  }

  /** Waits until the server closes the connection; true if it did within the timeout. */
  async waitForClose(timeoutMs = 10_000): Promise<boolean> {
    const timeout = new Promise<false>((resolve) => setTimeout(() => resolve(false), timeoutMs).unref());
    return Promise.race([this.closed.then(() => true as const), timeout]);
  }

  close(): void {
    this.socket.destroy();
  }

  // ---- handshake ----

  async readGreeting(): Promise<{ magic: bigint; optMagic: bigint; flags: number }> {
    const data = await this.mustRead(18);
    return { magic: data.readBigUInt64BE(0), optMagic: data.readBigUInt64BE(8), flags: data.readUInt16BE(16) };
  }

  sendClientFlags(flags: number = HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES): void {
    const data = Buffer.alloc(4);
    data.writeUInt32BE(flags >>> 0, 0);
    this.send(data);
  }

  sendOption(
    option: number,
    payload: Buffer = Buffer.alloc(0),
    magic: bigint = IHAVEOPT,
    lengthOverride?: number,
  ): void {
    const header = Buffer.alloc(16);
    header.writeBigUInt64BE(magic, 0);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(lengthOverride ?? payload.length, 12);
    this.send(Buffer.concat([header, payload]));
  }

  async readOptionReply(): Promise<OptionReplyMessage> {
    const header = await this.mustRead(20);
    if (header.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw new Error("bad option reply magic");
    const length = header.readUInt32BE(16);
    return { option: header.readUInt32BE(8), type: header.readUInt32BE(12), data: await this.mustRead(length) };
  }

  /** Reads option replies up to and including the final one (ACK or an error). */
  async readOptionReplies(): Promise<OptionReplyMessage[]> {
    const replies: OptionReplyMessage[] = [];
    for (;;) {
      const reply = await this.readOptionReply();
      replies.push(reply);
      if (reply.type === 1 || reply.type >= 0x80000000) return replies;
    }
  }

  /** Greeting, flags, optional STRUCTURED_REPLY and SET_META_CONTEXT, then GO. Returns size and flags. */
  async handshake(
    options: { name?: string; structured?: boolean; metaContext?: boolean; blockSize?: boolean } = {},
  ): Promise<{ size: bigint; flags: number }> {
    await this.readGreeting();
    this.sendClientFlags();
    const name = options.name ?? "";
    if (options.structured) {
      this.sendOption(Option.STRUCTURED_REPLY);
      const [reply] = await this.readOptionReplies();
      if (reply!.type !== 1) throw new Error(`STRUCTURED_REPLY refused: ${reply!.type}`);
    }
    if (options.metaContext) {
      this.sendOption(Option.SET_META_CONTEXT, metaContextPayload(name, [BASE_ALLOCATION]));
      await this.readOptionReplies();
    }
    this.sendOption(Option.GO, infoPayload(name, options.blockSize ? [Info.BLOCK_SIZE] : []));
    const replies = await this.readOptionReplies();
    const last = replies[replies.length - 1]!;
    if (last.type !== 1) throw new Error(`GO refused: 0x${last.type.toString(16)} ${last.data.toString()}`);
    const exportInfo = replies.find((reply) => reply.data.readUInt16BE(0) === Info.EXPORT)!;
    return { size: exportInfo.data.readBigUInt64BE(2), flags: exportInfo.data.readUInt16BE(10) };
  }

  // ---- transmission ----

  request(
    type: number,
    options: {
      flags?: number;
      cookie?: bigint;
      offset?: bigint | number;
      length?: number;
      payload?: Buffer;
      magic?: number;
    } = {},
  ): void {
    const header = Buffer.alloc(28);
    header.writeUInt32BE(options.magic ?? REQUEST_MAGIC, 0);
    header.writeUInt16BE(options.flags ?? 0, 4);
    header.writeUInt16BE(type, 6);
    header.writeBigUInt64BE(options.cookie ?? 1n, 8);
    header.writeBigUInt64BE(BigInt(options.offset ?? 0), 16);
    header.writeUInt32BE(options.length ?? options.payload?.length ?? 0, 24);
    this.send(options.payload ? Buffer.concat([header, options.payload]) : header);
  }

  /** Reads one reply: a simple reply (with `dataBytes` of payload if it succeeded) or one chunk. */
  async readReply(
    dataBytes: number | ((cookie: bigint) => number) = 0,
  ): Promise<{ simple?: SimpleReplyMessage & { data: Buffer }; chunk?: Chunk } | undefined> {
    const magicBytes = await this.read(4);
    if (magicBytes === undefined) return undefined;
    const magic = magicBytes.readUInt32BE(0);
    if (magic === SIMPLE_REPLY_MAGIC) {
      const rest = await this.mustRead(12);
      const error = rest.readUInt32BE(0);
      const cookie = rest.readBigUInt64BE(4);
      const expected = typeof dataBytes === "function" ? dataBytes(cookie) : dataBytes;
      const data = error === 0 && expected > 0 ? await this.mustRead(expected) : Buffer.alloc(0);
      return { simple: { error, cookie, data } };
    }
    if (magic === STRUCTURED_REPLY_MAGIC) {
      const rest = await this.mustRead(16);
      const length = rest.readUInt32BE(12);
      return {
        chunk: {
          flags: rest.readUInt16BE(0),
          type: rest.readUInt16BE(2),
          cookie: rest.readBigUInt64BE(4),
          payload: await this.mustRead(length),
        },
      };
    }
    throw new Error(`bad reply magic 0x${magic.toString(16)}`);
  }

  /** Reads chunks until one carries DONE. */
  async readChunks(): Promise<Chunk[]> {
    const chunks: Chunk[] = [];
    for (;;) {
      const reply = await this.readReply();
      if (reply?.chunk === undefined) throw new Error("expected a structured reply chunk");
      chunks.push(reply.chunk);
      if ((reply.chunk.flags & 1) !== 0) return chunks;
    }
  }
}

export function infoPayload(name: string, infos: number[]): Buffer {
  const nameBytes = Buffer.from(name, "utf8");
  const data = Buffer.alloc(4 + nameBytes.length + 2 + 2 * infos.length);
  data.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(data, 4);
  data.writeUInt16BE(infos.length, 4 + nameBytes.length);
  infos.forEach((info, i) => data.writeUInt16BE(info, 6 + nameBytes.length + 2 * i));
  return data;
}

export function metaContextPayload(name: string, queries: string[]): Buffer {
  const parts: Buffer[] = [];
  const nameBytes = Buffer.from(name, "utf8");
  const head = Buffer.alloc(4);
  head.writeUInt32BE(nameBytes.length, 0);
  parts.push(head, nameBytes);
  const count = Buffer.alloc(4);
  count.writeUInt32BE(queries.length, 0);
  parts.push(count);
  for (const query of queries) {
    const bytes = Buffer.from(query, "utf8");
    const length = Buffer.alloc(4);
    length.writeUInt32BE(bytes.length, 0);
    parts.push(length, bytes);
  }
  return Buffer.concat(parts);
}

export { NBD_MAGIC, IHAVEOPT, CommandFlag };
