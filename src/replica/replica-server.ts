// The replica server: serves the replicas in one directory (DIR/<volume id>/) to remote engines over
// the replication protocol. Every connection must first prove it knows the shared secret (mutual
// challenge-response); an unauthenticated peer gets a refusal and nothing else. Writes carry the
// engine's epoch and go through the replica store's epoch fence, so a deposed primary's writes are
// refused. Malformed traffic ends only its own connection, with a logged reason.

import { createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { HavenError, type ErrorCode } from "../core/errors.js";
import { FrameFlag, FrameType, FRAME_TYPE_NAMES, MAX_PAYLOAD_BYTES, ReplyStatus } from "./protocol/constants.js";
import { authenticateEngine, frame, FrameConnection } from "./protocol/connection.js";
import type { Frame } from "./protocol/frame-codec.js";
import { isValidGenerationId } from "./generations.js";
import { ReplicaStore } from "./replica-store.js";

export interface ReplicaServerOptions {
  readonly directory: string;
  readonly secret: Buffer;
  readonly log?: (line: string) => void;
}

export class ReplicaServer {
  private readonly replicas = new Map<string, Promise<ReplicaStore>>();
  private readonly sockets = new Set<Socket>();
  private server: Server | undefined;
  private nextConnectionId = 1;
  private readonly log: (line: string) => void;

  constructor(private readonly options: ReplicaServerOptions) {
    if (options.secret.length < 16)
      throw new HavenError("HAVEN_ERR_CONFIG", "the shared secret must be at least 16 bytes");
    this.log = options.log ?? ((line) => process.stderr.write(`${line}\n`));
  }

  async listen(host: string, port: number): Promise<string> {
    const server = createServer({ noDelay: true }, (socket) => this.accept(socket));
    await new Promise<void>((resolve, reject) => {
      server.once("error", (error) =>
        reject(new HavenError("HAVEN_ERR_CONFIG", `cannot listen on ${host}:${port}: ${error.message}`)),
      );
      server.listen(port, host, resolve);
    });
    this.server = server;
    const address = server.address() as { address: string; port: number };
    return `${address.address}:${address.port}`;
  }

  async stop(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    for (const replica of this.replicas.values()) await (await replica.catch(() => undefined))?.close();
    this.replicas.clear();
  }

  private accept(socket: Socket): void {
    const id = this.nextConnectionId++;
    const log = (line: string): void =>
      this.log(`replica conn ${id} (${socket.remoteAddress}:${socket.remotePort}): ${line}`);
    this.sockets.add(socket);
    socket.on("close", () => this.sockets.delete(socket));
    const connection = new FrameConnection(socket);
    authenticateEngine(connection, this.options.secret).then(
      () => {
        log("engine authenticated");
        let replica: ReplicaStore | undefined;
        connection.onFrame = (request) => {
          this.handle(request, replica).then(
            ({ reply, opened }) => {
              if (opened) replica = opened;
              connection.send(reply);
            },
            (error: unknown) => {
              log(`${FRAME_TYPE_NAMES[request.type]} failed: ${(error as Error).message}`);
              connection.send(errorReply(request, error));
            },
          );
        };
        socket.on("close", () =>
          log(
            `closed${connection.failed && !/closed/.test(connection.failed.message) ? `: ${connection.failed.message}` : ""}`,
          ),
        );
      },
      (error: unknown) => {
        log(`refused: ${(error as Error).message}`);
        socket.end();
        setTimeout(() => socket.destroy(), 1000).unref();
      },
    );
  }

  private async handle(
    request: Frame,
    replica: ReplicaStore | undefined,
  ): Promise<{ reply: Frame; opened?: ReplicaStore }> {
    const ok = (payload = Buffer.alloc(0)): Frame => frame(FrameType.REPLY, { requestId: request.requestId, payload });
    if (request.type === FrameType.PING) return { reply: ok() };
    if (request.type === FrameType.OPEN_REPLICA) {
      const opened = await this.openReplica(request);
      return { reply: ok(Buffer.from(JSON.stringify(opened.metadata))), opened };
    }
    if (replica === undefined) throw new HavenError("HAVEN_ERR_INVALID_REQUEST", "OPEN_REPLICA first");
    const offset = toSafeNumber(request.offset);
    const fua = (request.flags & FrameFlag.FUA) !== 0;
    switch (request.type) {
      case FrameType.READ: {
        if (request.length > MAX_PAYLOAD_BYTES || offset + request.length > replica.data.size) {
          throw new HavenError(
            "HAVEN_ERR_OUT_OF_RANGE",
            `READ of ${request.length} bytes at ${offset} is out of range`,
          );
        }
        const data = Buffer.allocUnsafe(request.length);
        await replica.data.read(offset, data);
        return { reply: ok(data) };
      }
      case FrameType.WRITE:
        await replica.admitEpoch(toSafeNumber(request.epoch));
        await replica.data.write(offset, request.payload, { fua });
        return { reply: ok() };
      case FrameType.TRIM:
        await replica.admitEpoch(toSafeNumber(request.epoch));
        await replica.data.trim(offset, request.length, { fua });
        return { reply: ok() };
      case FrameType.WRITE_ZEROES:
        await replica.admitEpoch(toSafeNumber(request.epoch));
        await replica.data.writeZeroes(offset, request.length, { fua });
        return { reply: ok() };
      case FrameType.FLUSH:
        await replica.data.flush();
        return { reply: ok() };
      case FrameType.GET_METADATA:
        return { reply: ok(Buffer.from(JSON.stringify(replica.metadata))) };
      default:
        throw new HavenError(
          "HAVEN_ERR_INVALID_REQUEST",
          `frame type ${FRAME_TYPE_NAMES[request.type]} is not a request`,
        );
    }
  }

  private openReplica(request: Frame): Promise<ReplicaStore> {
    const volumeId = request.payload.toString("utf8");
    if (!isValidGenerationId(volumeId)) {
      return Promise.reject(
        new HavenError("HAVEN_ERR_INVALID_REQUEST", `volume id "${volumeId.slice(0, 40)}" must be 16 hex digits`),
      );
    }
    let replica = this.replicas.get(volumeId);
    if (replica === undefined) {
      const directory = join(this.options.directory, volumeId);
      replica = ReplicaStore.open(directory).catch((error: unknown) => {
        if (!(
          error instanceof HavenError &&
          error.code === "HAVEN_ERR_NOT_FOUND" &&
          (request.flags & FrameFlag.CREATE) !== 0
        ))
          throw error;
        return ReplicaStore.create(directory, { volumeId, sizeBytes: toSafeNumber(request.offset) });
      });
      replica.catch(() => this.replicas.delete(volumeId));
      this.replicas.set(volumeId, replica);
    }
    return replica;
  }
}

function toSafeNumber(value: bigint): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER))
    throw new HavenError("HAVEN_ERR_OUT_OF_RANGE", `${value} is out of range`);
  return Number(value);
}

/** The reply status for each error code a request can fail with; anything else is a bad request. */
const STATUS_FOR_ERROR: Partial<Record<ErrorCode, number>> = {
  HAVEN_ERR_READ_ONLY: ReplyStatus.STALE_EPOCH,
  HAVEN_ERR_OUT_OF_RANGE: ReplyStatus.OUT_OF_RANGE,
  HAVEN_ERR_NOT_FOUND: ReplyStatus.NO_SUCH_REPLICA,
  HAVEN_ERR_IO: ReplyStatus.IO_ERROR,
};

function errorReply(request: Frame, error: unknown): Frame {
  const code: ErrorCode = error instanceof HavenError ? error.code : "HAVEN_ERR_IO";
  const status = STATUS_FOR_ERROR[code] ?? ReplyStatus.BAD_REQUEST;
  return frame(FrameType.REPLY, {
    requestId: request.requestId,
    status,
    payload: Buffer.from((error as Error).message ?? String(error)),
  });
}
