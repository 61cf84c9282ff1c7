// A replication-protocol connection over a socket (TCP or TLS), used by both sides: frames in through
// the decoder, frames out in batches, and the mutual challenge-response handshake (auth.ts) at the
// start. Until the handshake succeeds the connection holds almost nothing for its peer: a frame may
// carry at most MAX_HANDSHAKE_PAYLOAD_BYTES (a larger one is refused from its header, before its
// payload is read) and at most MAX_HANDSHAKE_QUEUED_FRAMES may wait to be read. Small
// frames sent in one turn of the event loop are copied into one batch buffer that leaves in one socket
// write once the loop has handled the I/O it was handling, or when it is full; a large frame's payload
// is never copied (it leaves at once, after the batch). Measured on 4 KiB writes at queue depth 32, a
// write syscall per frame cost the engine and the replica server most of their CPU (loopback TCP does
// the receiver's work too).

import type { Socket } from "node:net";
import { HavenError } from "../../core/errors.js";
import { CHALLENGE_BYTES, newChallenge, proof, verifyProof } from "./auth.js";
import { SlabReader } from "../../util/slab-reader.js";
import {
  FRAME_HEADER_BYTES,
  FrameType,
  MAX_HANDSHAKE_PAYLOAD_BYTES,
  MAX_PAYLOAD_BYTES,
  ReplyStatus,
} from "./constants.js";
import { encodeFrameHeader, FrameDecoder, writeFrameHeader, type Frame } from "./frame-codec.js";

export const AUTH_TIMEOUT_MS = 10_000;
/**
 * Frames that may wait unread before authentication: an engine sends one (AUTH) and waits; a few
 * more is an impatient peer, the old test client that pipelines requests behind its AUTH included.
 */
const MAX_HANDSHAKE_QUEUED_FRAMES = 4;
/** How long a refused peer has to read its refusal before the socket is destroyed. */
const REFUSAL_LINGER_MS = 1_000;
/**
 * The batch buffer's size: while a turn of the event loop keeps sending, a write goes out whenever the
 * next frame does not fit, so 4 KiB WRITEs leave in batches of about fifteen. Against a batch of four
 * frames, the same 4 KiB write rate through a remote copy left the two CPUs 50% idle instead of 30%.
 */
const BATCH_BYTES = 64 * 1024;
/** Frames up to this size (header and payload) are copied into the batch; larger ones are not copied. */
const SMALL_FRAME_BYTES = FRAME_HEADER_BYTES + 16 * 1024;
/** Batch buffers kept for reuse once the socket is done with them. */
const SPARE_BATCHES = 4;

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
  /** Small frames waiting for the end of the turn, in `batch[0, batchUsed)`. */
  private batch: Buffer | undefined;
  private batchUsed = 0;
  private flushScheduled = false;
  private readonly spareBatches: Buffer[] = [];
  private handshakeDone = false;

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
    this.decoder.limitPayload(MAX_HANDSHAKE_PAYLOAD_BYTES, " before authentication");
    this.reader = SlabReader.attach(socket, onChunk);
    if (this.reader === undefined) socket.on("data", onChunk);
    socket.on("close", () => this.fail(new Error("connection closed")));
    socket.on("error", (error) => this.fail(error));
  }

  /** The handshake succeeded: frames of any size the protocol allows are read from now on. */
  authenticated(): void {
    this.handshakeDone = true;
    this.decoder.limitPayload(MAX_PAYLOAD_BYTES);
  }

  /**
   * Refuses the peer: one REPLY NOT_AUTHENTICATED with `reason` goes out, nothing more is read, and
   * the socket is destroyed soon after (at once if the peer does not read).
   */
  refuse(reason: string): void {
    const text = Buffer.from(reason, "utf8").subarray(0, MAX_HANDSHAKE_PAYLOAD_BYTES);
    this.send(frame(FrameType.REPLY, { status: ReplyStatus.NOT_AUTHENTICATED, payload: text }));
    this.linger();
  }

  /** After a refusal: nothing more is read, what was sent goes out, and the socket is destroyed soon. */
  linger(): void {
    this.socket.pause();
    this.end();
    setTimeout(() => this.socket.destroy(), REFUSAL_LINGER_MS).unref();
  }

  /** From now on every frame goes to `handler`, starting with any that arrived before this call. */
  listen(handler: (frame: Frame) => void): void {
    this.onFrame = handler;
    for (const f of this.queued.splice(0)) handler(f);
  }

  send(f: Frame): void {
    this.sendPieces(f, f.payload.length > 0 ? [f.payload] : []);
  }

  /**
   * Sends a frame whose payload is `pieces` back to back: a small frame is copied into the batch, a
   * large one goes out at once (after the batch) with its payload uncopied.
   */
  sendPieces(f: Omit<Frame, "payload">, pieces: readonly Buffer[]): void {
    if (this.socket.destroyed || !this.socket.writable) return;
    let payloadLength = 0;
    for (const piece of pieces) payloadLength += piece.length;
    const bytes = FRAME_HEADER_BYTES + payloadLength;
    if (bytes > SMALL_FRAME_BYTES) {
      this.flush();
      this.socket.cork();
      this.socket.write(encodeFrameHeader(f, payloadLength));
      for (const piece of pieces) if (piece.length > 0) this.socket.write(piece);
      this.socket.uncork();
      return;
    }
    if (this.batch !== undefined && this.batchUsed + bytes > this.batch.length) this.flush();
    if (this.batch === undefined) {
      this.batch = this.spareBatches.pop() ?? Buffer.allocUnsafe(BATCH_BYTES);
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(this.flushLater);
      }
    }
    writeFrameHeader(this.batch, this.batchUsed, f, payloadLength);
    let at = this.batchUsed + FRAME_HEADER_BYTES;
    for (const piece of pieces) at += piece.copy(this.batch, at);
    this.batchUsed = at;
  }

  /** Sends what is batched, then half-closes the socket (a refusal goes out before the end). */
  end(): void {
    this.flush();
    this.socket.end();
  }

  /** Hands the batch to the socket; the buffer is reused once the socket has written it. */
  private flush(): void {
    const batch = this.batch;
    if (batch === undefined) return;
    const used = this.batchUsed;
    this.batch = undefined;
    this.batchUsed = 0;
    if (this.socket.destroyed || !this.socket.writable) return;
    this.socket.write(batch.subarray(0, used), () => {
      if (this.spareBatches.length < SPARE_BATCHES) this.spareBatches.push(batch);
    });
  }

  private readonly flushLater = (): void => {
    this.flushScheduled = false;
    this.flush();
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
    if (waiter) return waiter(f);
    if (!this.handshakeDone && this.queued.length >= MAX_HANDSHAKE_QUEUED_FRAMES) {
      this.fail(new Error(`more than ${MAX_HANDSHAKE_QUEUED_FRAMES} frames sent ahead of authentication`));
      this.socket.destroy();
      return;
    }
    this.queued.push(f);
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
  connection.authenticated();
}

/**
 * Engine side: answer the server's challenge and check the server's proof in turn. A refusal or a
 * proof that does not match is HAVEN_ERR_CONFIG (the secrets differ); anything else HAVEN_ERR_IO.
 */
export async function authenticateServer(connection: FrameConnection, secret: Buffer): Promise<void> {
  const hello = await connection.next();
  if (hello.type === FrameType.REPLY && hello.status === ReplyStatus.NOT_AUTHENTICATED) {
    // Refused before the challenge: the server did not accept our certificate (replica-listener.ts).
    throw new HavenError(
      "HAVEN_ERR_CONFIG",
      `replica server refused us: ${hello.payload.toString("utf8").slice(0, 200)}`,
    );
  }
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
  connection.authenticated();
}
