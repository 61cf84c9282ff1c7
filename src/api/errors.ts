// The one error body of Haven's HTTP APIs, {"error": {"code": "HAVEN_ERR_...", "message": "..."}}, and
// how anything a request can fail with becomes one: a HavenError answers with the HTTP status the
// registry (src/core/errors.ts) gives its code; a refusal by the HTTP layer itself (a wrong method, a
// body over the limit) carries its own status; fastify's own errors are mapped onto the registry; and
// anything else, a bug underneath, is still answered, as the registry's 500.

import { escapeControls } from "../cluster/names.js";
import { ERRORS, HavenError, fromSystemError, type ErrorCode } from "../core/errors.js";

export interface ApiErrorBody {
  readonly error: { readonly code: ErrorCode; readonly message: string };
}

/** An error as the API answers it. */
export interface ErrorReply {
  readonly status: number;
  readonly body: ApiErrorBody;
  readonly headers: Readonly<Record<string, string>>;
}

/** A request refused by the HTTP layer, with an HTTP status the registry's code may not carry (405). */
export class Refusal extends Error {
  constructor(
    readonly status: number,
    readonly code: ErrorCode,
    message: string,
    readonly headers: Readonly<Record<string, string>> = {},
  ) {
    super(message);
  }
}

export const invalidRequest = (message: string): HavenError => new HavenError("HAVEN_ERR_INVALID_REQUEST", message);

/** The refusal of a body over `maxBytes`; the connection is closed after it (the rest is not read). */
function bodyTooLarge(maxBytes: number): Refusal {
  return new Refusal(413, "HAVEN_ERR_TOO_LARGE", `the request body exceeds ${maxBytes} bytes`, {
    connection: "close",
  });
}

/** Most characters of a framework's message echoed (it may quote what the request sent). */
const MAX_FRAMEWORK_MESSAGE_CHARS = 200;

/** A message that may quote the request, cut short with control characters and markup escaped. */
function echoSafe(message: string): string {
  const cut =
    message.length > MAX_FRAMEWORK_MESSAGE_CHARS ? `${message.slice(0, MAX_FRAMEWORK_MESSAGE_CHARS)}...` : message;
  return escapeControls(cut).replace(/[<>&]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/** What fastify itself throws before a handler runs (body parsing, malformed requests). */
interface FrameworkError extends Error {
  readonly code?: string;
  readonly statusCode?: number;
  readonly validation?: unknown;
}

/**
 * The reply for anything a request failed with. `failure` names what failed underneath, for errors
 * that are not Haven's own ("the engine failed").
 */
export function errorReply(error: unknown, context: { maxBodyBytes: number; failure: string }): ErrorReply {
  const reply = (status: number, code: ErrorCode, message: string, headers = {}): ErrorReply => ({
    status,
    body: { error: { code, message } },
    headers,
  });
  if (error instanceof Refusal) return reply(error.status, error.code, error.message, error.headers);
  if (error instanceof HavenError) return reply(ERRORS[error.code].httpStatus, error.code, error.message);
  const framework = error as FrameworkError;
  if (framework?.code === "FST_ERR_CTP_BODY_TOO_LARGE") {
    const tooLarge = bodyTooLarge(context.maxBodyBytes);
    return reply(tooLarge.status, tooLarge.code, tooLarge.message, tooLarge.headers);
  }
  if (framework?.code === "FST_ERR_CTP_INVALID_MEDIA_TYPE")
    return reply(415, "HAVEN_ERR_INVALID_REQUEST", "the Content-Type header is malformed; send application/json");
  const status = framework?.statusCode;
  if (framework?.validation !== undefined || (status !== undefined && status >= 400 && status < 500)) {
    return reply(status ?? 400, "HAVEN_ERR_INVALID_REQUEST", echoSafe(framework.message));
  }
  const coded = fromSystemError(error, context.failure);
  return reply(ERRORS[coded.code].httpStatus, coded.code, coded.message);
}
