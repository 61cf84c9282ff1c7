// A client for QEMU's machine protocol (QMP) over a unix socket, written on node:net.
//
// The model: QMP is line-delimited JSON. On connect QEMU sends a greeting ({"QMP": {...}}); the client
// answers with `qmp_capabilities` and may then send commands. Each command carries a unique `id`
// that QEMU echoes in its reply ({"return": ...} or {"error": {"class", "desc"}}), so replies are
// matched by id, never by order. Events ({"event": ...}) may arrive between replies at any time and
// go to listeners. Everything is bounded: the greeting and each command have a timeout, and one line
// may hold at most `maxLineBytes` (a longer one is a broken peer: the connection ends).
//
// Error contract: connection problems, a missing greeting, timeouts and connection loss reject with
// HAVEN_ERR_UNAVAILABLE; an error reply rejects with HAVEN_ERR_IO carrying QEMU's class and desc.
// When the connection ends, every pending command is rejected and later calls fail at once.

import { connect, type Socket } from "node:net";
import { HavenError, errorMessage } from "../core/errors.js";

/** One asynchronous event from QEMU. */
export interface QmpEvent {
  readonly event: string;
  readonly data?: Record<string, unknown>;
  readonly timestamp?: { seconds: number; microseconds: number };
}

export type QmpEventListener = (event: QmpEvent) => void;

export interface QmpConnectOptions {
  /** How long to wait for the socket to connect, the greeting and the capabilities negotiation. */
  readonly connectTimeoutMs?: number;
  /** The longest line accepted from QEMU, in bytes. */
  readonly maxLineBytes?: number;
}

export interface QmpExecuteOptions {
  /** How long to wait for the reply. */
  readonly timeoutMs?: number;
}

export const QMP_DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
export const QMP_DEFAULT_COMMAND_TIMEOUT_MS = 10_000;
/** QEMU's largest replies (query-qmp-schema) are a few hundred KiB on one line. */
export const QMP_DEFAULT_MAX_LINE_BYTES = 1024 * 1024;

interface Pending {
  readonly command: string;
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: HavenError) => void;
  readonly timer: NodeJS.Timeout;
}

/** QEMU's greeting: its version and the capabilities it offers. */
export interface QmpGreeting {
  readonly version?: unknown;
  readonly capabilities?: unknown;
}

export class QmpClient {
  private readonly socket: Socket;
  private readonly socketPath: string;
  private readonly maxLineBytes: number;
  private readonly pending = new Map<string, Pending>();
  private readonly listeners = new Set<QmpEventListener>();
  private readonly closeListeners = new Set<(reason: HavenError) => void>();
  private chunks: Buffer[] = [];
  private bufferedBytes = 0;
  private nextId = 1;
  private closedReason: HavenError | undefined;
  private greetingWaiter: { resolve: (g: QmpGreeting) => void; reject: (e: HavenError) => void } | undefined;
  private greeting: QmpGreeting | undefined;

  private constructor(socket: Socket, socketPath: string, maxLineBytes: number) {
    this.socket = socket;
    this.socketPath = socketPath;
    this.maxLineBytes = maxLineBytes;
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    socket.on("error", (error) =>
      this.end(new HavenError("HAVEN_ERR_UNAVAILABLE", `QMP ${socketPath}: ${error.message}`, { cause: error })),
    );
    socket.on("close", () =>
      this.end(new HavenError("HAVEN_ERR_UNAVAILABLE", `QMP ${socketPath}: connection closed by QEMU`)),
    );
  }

  /** Connects to `socketPath`, reads the greeting and negotiates capabilities. */
  static async connect(socketPath: string, options: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = options.connectTimeoutMs ?? QMP_DEFAULT_CONNECT_TIMEOUT_MS;
    const maxLineBytes = options.maxLineBytes ?? QMP_DEFAULT_MAX_LINE_BYTES;
    const deadline = Date.now() + timeoutMs;
    const socket = connect(socketPath);
    const client = new QmpClient(socket, socketPath, maxLineBytes);
    try {
      await client.waitConnected(timeoutMs);
      await client.waitGreeting(Math.max(1, deadline - Date.now()));
      await client.execute("qmp_capabilities", undefined, { timeoutMs: Math.max(1, deadline - Date.now()) });
      return client;
    } catch (error) {
      client.close();
      throw error;
    }
  }

  /** The greeting QEMU sent (version, capabilities). */
  get qemuGreeting(): QmpGreeting | undefined {
    return this.greeting;
  }

  /** Whether the connection has ended (closed, lost or broken). */
  get closed(): boolean {
    return this.closedReason !== undefined;
  }

  /** Runs `command` and resolves with its `return` value. */
  execute(command: string, args?: Record<string, unknown>, options: QmpExecuteOptions = {}): Promise<unknown> {
    if (this.closedReason) return Promise.reject(this.closedReason);
    const timeoutMs = options.timeoutMs ?? QMP_DEFAULT_COMMAND_TIMEOUT_MS;
    const id = `haven-${this.nextId++}`;
    const message = args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(
          new HavenError(
            "HAVEN_ERR_UNAVAILABLE",
            `QMP ${this.socketPath}: ${command} got no reply within ${timeoutMs} ms`,
          ),
        );
      }, timeoutMs);
      this.pending.set(id, { command, resolve, reject, timer });
      this.socket.write(`${JSON.stringify(message)}\n`);
    });
  }

  /** Delivers every event to `listener` until the returned function is called. */
  onEvent(listener: QmpEventListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Calls `listener` once when the connection ends, with the reason. */
  onClose(listener: (reason: HavenError) => void): () => void {
    if (this.closedReason) {
      const reason = this.closedReason;
      queueMicrotask(() => listener(reason));
      return () => undefined;
    }
    this.closeListeners.add(listener);
    return () => this.closeListeners.delete(listener);
  }

  /** Ends the connection; pending commands are rejected. */
  close(): void {
    this.end(new HavenError("HAVEN_ERR_UNAVAILABLE", `QMP ${this.socketPath}: connection closed by Haven`));
  }

  private waitConnected(timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.closedReason) return reject(this.closedReason);
      const timer = setTimeout(() => {
        const error = new HavenError(
          "HAVEN_ERR_UNAVAILABLE",
          `QMP ${this.socketPath}: not connected within ${timeoutMs} ms`,
        );
        this.end(error);
        reject(error);
      }, timeoutMs);
      const off = this.onClose((reason) => {
        clearTimeout(timer);
        reject(reason);
      });
      this.socket.once("connect", () => {
        clearTimeout(timer);
        off();
        resolve();
      });
    });
  }

  private waitGreeting(timeoutMs: number): Promise<QmpGreeting> {
    if (this.greeting) return Promise.resolve(this.greeting);
    return new Promise((resolve, reject) => {
      if (this.closedReason) return reject(this.closedReason);
      const timer = setTimeout(() => {
        const error = new HavenError(
          "HAVEN_ERR_UNAVAILABLE",
          `QMP ${this.socketPath}: no greeting within ${timeoutMs} ms (is this a QMP socket?)`,
        );
        this.end(error);
      }, timeoutMs);
      this.greetingWaiter = {
        resolve: (greeting) => {
          clearTimeout(timer);
          resolve(greeting);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      };
    });
  }

  private onData(chunk: Buffer): void {
    let start = 0;
    for (;;) {
      const newline = chunk.indexOf(0x0a, start);
      if (newline < 0) break;
      const piece = chunk.subarray(start, newline);
      start = newline + 1;
      if (this.bufferedBytes + piece.length > this.maxLineBytes) return this.lineTooLong();
      const line = this.bufferedBytes === 0 ? piece : Buffer.concat([...this.chunks, piece]);
      this.chunks = [];
      this.bufferedBytes = 0;
      this.onLine(line.toString("utf8"));
      if (this.closedReason) return;
    }
    const rest = chunk.subarray(start);
    if (rest.length === 0) return;
    if (this.bufferedBytes + rest.length > this.maxLineBytes) return this.lineTooLong();
    this.chunks.push(rest);
    this.bufferedBytes += rest.length;
  }

  private lineTooLong(): void {
    this.end(
      new HavenError(
        "HAVEN_ERR_UNAVAILABLE",
        `QMP ${this.socketPath}: QEMU sent a line longer than ${this.maxLineBytes} bytes; connection closed`,
      ),
    );
  }

  private onLine(line: string): void {
    if (line.trim() === "") return;
    let message: unknown;
    try {
      message = JSON.parse(line);
    } catch (error) {
      return this.end(
        new HavenError(
          "HAVEN_ERR_UNAVAILABLE",
          `QMP ${this.socketPath}: malformed JSON from QEMU (${errorMessage(error)}); connection closed`,
        ),
      );
    }
    if (typeof message !== "object" || message === null || Array.isArray(message)) {
      return this.end(
        new HavenError("HAVEN_ERR_UNAVAILABLE", `QMP ${this.socketPath}: QEMU sent a non-object; connection closed`),
      );
    }
    const record = message as Record<string, unknown>;
    if ("QMP" in record) return this.onGreeting(record.QMP);
    if (typeof record.event === "string") return this.onEventMessage(record);
    if ("return" in record || "error" in record) return this.onReply(record);
    // Anything else is unknown to this QMP version: ignored, as the protocol asks of clients.
  }

  private onGreeting(body: unknown): void {
    const greeting = (typeof body === "object" && body !== null ? body : {}) as QmpGreeting;
    this.greeting = greeting;
    const waiter = this.greetingWaiter;
    this.greetingWaiter = undefined;
    waiter?.resolve(greeting);
  }

  private onEventMessage(record: Record<string, unknown>): void {
    const event = record as unknown as QmpEvent;
    for (const listener of [...this.listeners]) {
      try {
        listener(event);
      } catch {
        // A listener's failure is its own; the connection and other listeners carry on.
      }
    }
  }

  private onReply(record: Record<string, unknown>): void {
    const id = typeof record.id === "string" ? record.id : undefined;
    const pending = id === undefined ? undefined : this.pending.get(id);
    // A reply for no pending command: one that timed out already, or a broken peer. Dropped.
    if (!pending || id === undefined) return;
    this.pending.delete(id);
    clearTimeout(pending.timer);
    if ("error" in record) {
      const error = (record.error ?? {}) as { class?: unknown; desc?: unknown };
      const errorClass = typeof error.class === "string" ? error.class : "GenericError";
      const desc = typeof error.desc === "string" ? error.desc : "no description";
      pending.reject(
        new QmpCommandError(
          `QMP ${this.socketPath}: ${pending.command} failed: ${errorClass}: ${desc}`,
          errorClass,
          desc,
        ),
      );
    } else {
      pending.resolve(record.return);
    }
  }

  private end(reason: HavenError): void {
    if (this.closedReason) return;
    this.closedReason = reason;
    this.socket.destroy();
    this.chunks = [];
    this.bufferedBytes = 0;
    const waiter = this.greetingWaiter;
    this.greetingWaiter = undefined;
    waiter?.reject(reason);
    for (const [id, pending] of this.pending) {
      this.pending.delete(id);
      clearTimeout(pending.timer);
      pending.reject(
        new HavenError("HAVEN_ERR_UNAVAILABLE", `${pending.command} not answered: ${reason.message}`, {
          cause: reason,
        }),
      );
    }
    for (const listener of [...this.closeListeners]) listener(reason);
    this.closeListeners.clear();
  }
}

/** QEMU answered a command with an error: its class (e.g. "GenericError", "DeviceNotFound") and text. */
export class QmpCommandError extends HavenError {
  readonly errorClass: string;
  readonly desc: string;
  constructor(message: string, errorClass: string, desc: string) {
    super("HAVEN_ERR_IO", message);
    this.errorClass = errorClass;
    this.desc = desc;
  }
}
