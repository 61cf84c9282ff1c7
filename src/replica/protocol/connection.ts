// A replication-protocol connection over a socket, used by both sides: frames in through the decoder,
// frames out as single writes, and the mutual challenge-response handshake (auth.ts) at the start.

import type { Socket } from "node:net";
import { CHALLENGE_BYTES, newChallenge, proof, verifyProof } from "./auth.js";
import { FrameType, ReplyStatus } from "./constants.js";
import { encodeFrame, FrameDecoder, type Frame } from "./frame-codec.js";

export const AUTH_TIMEOUT_MS = 10_000;

export function frame(type: number, fields: Partial<Omit<Frame, "type">> = {}): Frame {
  return {
    type,
    flags: 0,
    status: 0,
    requestId: 0n,
    epoch: 0n,
    offset: 0n,
    length: 0,
    payload: Buffer.alloc(0),
    ...fields,
  };
}

export class FrameConnection {
  private readonly decoder = new FrameDecoder();
  private waiters: Array<(frame: Frame | Error) => void> = [];
  private queued: Frame[] = [];
  private failure: Error | undefined;
  onFrame: ((frame: Frame) => void) | undefined;

  constructor(readonly socket: Socket) {
    socket.on("data", (chunk: Buffer) => {
      let frames: Frame[];
      try {
        frames = this.decoder.push(chunk);
      } catch (error) {
        this.fail(error as Error);
        socket.destroy();
        return;
      }
      for (const f of frames) this.deliver(f);
    });
    socket.on("close", () => this.fail(new Error("connection closed")));
    socket.on("error", (error) => this.fail(error));
  }

  send(f: Frame): void {
    if (this.socket.destroyed) return;
    for (const buffer of encodeFrame(f)) this.socket.write(buffer);
  }

  /** The next frame (only while no onFrame handler is set), or the reason the connection failed. */
  next(timeoutMs = AUTH_TIMEOUT_MS): Promise<Frame> {
    const ready = this.queued.shift();
    if (ready) return Promise.resolve(ready);
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no frame within ${timeoutMs} ms`)), timeoutMs);
      this.waiters.push((result) => {
        clearTimeout(timer);
        if (result instanceof Error) reject(result);
        else resolve(result);
      });
    });
  }

  get failed(): Error | undefined {
    return this.failure;
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

/** Engine side: answer the server's challenge and check the server's proof in turn. */
export async function authenticateServer(connection: FrameConnection, secret: Buffer): Promise<void> {
  const hello = await connection.next();
  if (hello.type !== FrameType.HELLO || hello.payload.length !== CHALLENGE_BYTES) {
    throw new Error(`expected HELLO with a ${CHALLENGE_BYTES}-byte challenge, got frame type ${hello.type}`);
  }
  const ours = newChallenge();
  connection.send(frame(FrameType.AUTH, { payload: Buffer.concat([proof(secret, "engine", hello.payload), ours]) }));
  const reply = await connection.next();
  if (reply.type !== FrameType.AUTH_OK) throw new Error(`replica server refused us: ${reply.payload.toString("utf8")}`);
  if (!verifyProof(secret, "replica-server", ours, reply.payload))
    throw new Error("replica server's proof does not match the shared secret");
}
