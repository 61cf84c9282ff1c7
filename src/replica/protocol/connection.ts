// A replication-protocol connection over a socket, used by both sides: frames in through the decoder,
// frames out as corked writes (payload pieces sent as they are, never concatenated), and the mutual
// challenge-response handshake (auth.ts) at the start. Frames sent in one turn of the event loop
// leave together: the socket is corked at the first and uncorked once the loop has handled the I/O it
// was handling, or whenever BYTES_PER_WRITE are queued. Measured on 4 KiB writes at queue depth 32, a
// write syscall per frame cost the engine and the replica server most of their CPU (loopback TCP does
// the receiver's work too).

import type { Socket } from "node:net";
import { HavenError } from "../../core/errors.js";
import { CHALLENGE_BYTES, newChallenge, proof, verifyProof } from "./auth.js";
import { SlabReader } from "../../util/slab-reader.js";
import { FRAME_HEADER_BYTES, FrameType, MAX_PAYLOAD_BYTES, ReplyStatus } from "./constants.js";
import { encodeFrame, encodeFrameHeader, FrameDecoder, type Frame } from "./frame-codec.js";

export const AUTH_TIMEOUT_MS = 10_000;
/**
 * While a turn of the event loop keeps sending, a writev goes out whenever this many bytes are queued:
 * a 1 MiB WRITE leaves at once, 4 KiB ones in batches of about fifteen. Against a batch of four
 * frames, the same 4 KiB write rate through a remote copy left the two CPUs 50% idle instead of 30%.
 */
const BYTES_PER_WRITE = 64 * 1024;
/** Payloads up to this size are copied behind their header and sent as one buffer. */
const SMALL_PAYLOAD_BYTES = 16 * 1024;

const NO_PAYLOAD = Buffer.alloc(0);

/**
 * A frame with `fields` set and every other field zero; `requestId`, when given, is the request's id.
 * Built field by field (no object spreads): every request and every reply is made here.
 */
export function frame(
  type: number,
  fields: Partial<Omit<Frame, "type">> = {},
  requestId: bigint = fields.requestId ?? 0n,
): Frame {
  return {
    type,
    flags: fields.flags ?? 0,
    status: fields.status ?? 0,
    requestId,
    epoch: fields.epoch ?? 0n,
    offset: fields.offset ?? 0n,
    length: fields.length ?? 0,
    payload: fields.payload ?? NO_PAYLOAD,
  };
}

export class FrameConnection {
  private readonly decoder: FrameDecoder;
  /** Reads into recycled memory (see SlabReader); undefined where Node.js cannot, and 'data' is used. */
  private readonly reader: SlabReader | undefined;
  private waiters: Array<(frame: Frame | Error) => void> = [];
  private queued: Frame[] = [];
  private failure: Error | undefined;
  private onFrame: ((frame: Frame) => void) | undefined;
  private corked = false;
  private corkedBytes = 0;

  constructor(readonly socket: Socket) {
    const onChunk = (chunk: Buffer): void => {
      if (socket.destroyed) return;
      let frames: Frame[];
      try {
        frames = this.decoder.push(chunk);
      } catch (error) {
        this.fail(error as Error);
        socket.destroy();
        return;
      }
      for (const f of frames) this.deliver(f);
    };
    // Chunks attach() delivers before it returns are not slab memory: releasing them is not needed.
    this.decoder = new FrameDecoder(MAX_PAYLOAD_BYTES, (pieces) => this.reader?.release(pieces));
    this.reader = SlabReader.attach(socket, onChunk);
    if (this.reader === undefined) socket.on("data", onChunk);
    socket.on("close", () => this.fail(new Error("connection closed")));
    socket.on("error", (error) => this.fail(error));
  }

  /** From now on every frame goes to `handler`, starting with any that arrived before this call. */
  listen(handler: (frame: Frame) => void): void {
    this.onFrame = handler;
    for (const f of this.queued.splice(0)) handler(f);
  }

  send(f: Frame): void {
    if (this.socket.destroyed || !this.socket.writable) return;
    this.corkUntilLater();
    let bytes = 0;
    for (const buffer of encodeFrame(f)) {
      this.socket.write(buffer);
      bytes += buffer.length;
    }
    this.sent(bytes);
  }

  /**
   * Sends a frame whose payload is `pieces` back to back. A small payload goes out with its header
   * as one buffer (one socket write instead of two); a large one is not copied.
   */
  sendPieces(f: Omit<Frame, "payload">, pieces: readonly Buffer[]): void {
    if (this.socket.destroyed || !this.socket.writable) return;
    let payloadLength = 0;
    for (const piece of pieces) payloadLength += piece.length;
    this.corkUntilLater();
    const header = encodeFrameHeader(f, payloadLength);
    if (payloadLength <= SMALL_PAYLOAD_BYTES) {
      this.socket.write(Buffer.concat([header, ...pieces], FRAME_HEADER_BYTES + payloadLength));
    } else {
      this.socket.write(header);
      for (const piece of pieces) if (piece.length > 0) this.socket.write(piece);
    }
    this.sent(FRAME_HEADER_BYTES + payloadLength);
  }

  private corkUntilLater(): void {
    if (this.corked) return;
    this.corked = true;
    this.corkedBytes = 0;
    this.socket.cork();
    setImmediate(this.uncork);
  }

  /** A long batch goes out in parts, so the peer starts on the first frames while we make the rest. */
  private sent(bytes: number): void {
    this.corkedBytes += bytes;
    if (this.corkedBytes < BYTES_PER_WRITE) return;
    this.corkedBytes = 0;
    this.socket.uncork();
    this.socket.cork();
  }

  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
  };

  /** The next frame (only while no listen() handler is set), or the reason the connection failed. */
  next(timeoutMs = AUTH_TIMEOUT_MS): Promise<Frame> {
    const ready = this.queued.shift();
    if (ready) return Promise.resolve(ready);
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const waiter = (result: Frame | Error): void => {
        clearTimeout(timer);
        if (result instanceof Error) reject(result);
        else resolve(result);
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`no frame within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }

  get failed(): Error | undefined {
    return this.failure;
  }

  /** Bytes received that do not yet make a whole frame (non-zero at close: the peer cut a frame short). */
  get partialFrameBytes(): number {
    return this.decoder.buffered;
  }

  private deliver(f: Frame): void {
    if (this.onFrame) return this.onFrame(f);
    const waiter = this.waiters.shift();
    if (waiter) waiter(f);
    else this.queued.push(f);
  }

  private fail(error: Error): void {
    this.failure ??= error;
    for (const waiter of this.waiters.splice(0)) waiter(this.failure);
  }
}

/** Server side: challenge the engine, check its proof, prove ourselves. Throws with a reason on failure. */
export async function authenticateEngine(connection: FrameConnection, secret: Buffer): Promise<void> {
  const challenge = newChallenge();
  connection.send(frame(FrameType.HELLO, { payload: challenge }));
  const answer = await connection.next();
  if (answer.type !== FrameType.AUTH || answer.payload.length !== 64) {
    connection.send(
      frame(FrameType.REPLY, { status: ReplyStatus.NOT_AUTHENTICATED, payload: Buffer.from("authenticate first") }),
    );
    throw new Error(`expected AUTH with 64 bytes, got frame type ${answer.type} with ${answer.payload.length}`);
  }
  if (!verifyProof(secret, "engine", challenge, answer.payload.subarray(0, 32))) {
    connection.send(
      frame(FrameType.REPLY, { status: ReplyStatus.NOT_AUTHENTICATED, payload: Buffer.from("wrong secret") }),
    );
    throw new Error("engine's proof does not match the shared secret");
  }
  connection.send(
    frame(FrameType.AUTH_OK, { payload: proof(secret, "replica-server", answer.payload.subarray(32, 64)) }),
  );
}

/**
 * Engine side: answer the server's challenge and check the server's proof in turn. A refusal or a
 * proof that does not match is HAVEN_ERR_CONFIG (the secrets differ); anything else HAVEN_ERR_IO.
 */
export async function authenticateServer(connection: FrameConnection, secret: Buffer): Promise<void> {
  const hello = await connection.next();
  if (hello.type !== FrameType.HELLO || hello.payload.length !== CHALLENGE_BYTES) {
    throw new HavenError(
      "HAVEN_ERR_IO",
      `expected HELLO with a ${CHALLENGE_BYTES}-byte challenge, got frame type ${hello.type}`,
    );
  }
  const ours = newChallenge();
  connection.send(frame(FrameType.AUTH, { payload: Buffer.concat([proof(secret, "engine", hello.payload), ours]) }));
  const reply = await connection.next();
  if (reply.type !== FrameType.AUTH_OK) {
    throw new HavenError(
      "HAVEN_ERR_CONFIG",
      `replica server refused us: ${reply.payload.toString("utf8").slice(0, 200)} (check the secret file: --secret-file, or replication.secretFile in an agent config)`,
    );
  }
  if (!verifyProof(secret, "replica-server", ours, reply.payload))
    throw new HavenError(
      "HAVEN_ERR_CONFIG",
      "replica server's proof does not match the shared secret (check the secret file: --secret-file, or replication.secretFile in an agent config)",
    );
}
