// The engine's side of a connection to a replica server: connect, authenticate, then pipelined
// requests matched to replies by request id. Errors come back as ReplicaRequestError with the status.

import { connect } from "node:net";
import { FrameFlag, FrameType, ReplyStatus } from "./protocol/constants.js";
import { authenticateServer, frame, FrameConnection } from "./protocol/connection.js";
import type { Frame } from "./protocol/frame-codec.js";

export class ReplicaRequestError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = "ReplicaRequestError";
  }
}

export class ReplicaClient {
  private nextRequestId = 1n;
  private readonly pending = new Map<bigint, { resolve: (f: Frame) => void; reject: (e: Error) => void }>();

  private constructor(private readonly connection: FrameConnection) {
    connection.onFrame = (reply) => {
      const waiter = this.pending.get(reply.requestId);
      if (!waiter) return;
      this.pending.delete(reply.requestId);
      if (reply.status === ReplyStatus.OK) waiter.resolve(reply);
      else waiter.reject(new ReplicaRequestError(reply.status, reply.payload.toString("utf8")));
    };
    connection.socket.on("close", () => {
      for (const waiter of this.pending.values()) waiter.reject(new Error("replica connection closed"));
      this.pending.clear();
    });
  }

  static async connect(host: string, port: number, secret: Buffer): Promise<ReplicaClient> {
    const socket = connect({ host, port, noDelay: true });
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("error", reject);
    });
    const connection = new FrameConnection(socket);
    try {
      await authenticateServer(connection, secret);
    } catch (error) {
      socket.destroy();
      throw error;
    }
    return new ReplicaClient(connection);
  }

  request(type: number, fields: Partial<Omit<Frame, "type" | "requestId">> = {}): Promise<Frame> {
    const requestId = this.nextRequestId++;
    return new Promise((resolve, reject) => {
      this.pending.set(requestId, { resolve, reject });
      this.connection.send(frame(type, { ...fields, requestId }));
    });
  }

  openReplica(volumeId: string, create?: { sizeBytes: number }): Promise<Frame> {
    return this.request(FrameType.OPEN_REPLICA, {
      payload: Buffer.from(volumeId),
      ...(create && { flags: FrameFlag.CREATE, offset: BigInt(create.sizeBytes) }),
    });
  }

  close(): void {
    this.connection.socket.destroy();
  }
}
