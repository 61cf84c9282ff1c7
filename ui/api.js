// Talking to the agent API: the token kept for this tab (sessionStorage), JSON requests with it as a
// bearer token, and the live stream read through fetch() (EventSource cannot send the header).

const TOKEN_KEY = "haven-token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value === null) sessionStorage.removeItem(TOKEN_KEY);
  else sessionStorage.setItem(TOKEN_KEY, value);
}

/** A refusal from the API: its HTTP status and Haven's error code and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function refusal(response) {
  try {
    const body = await response.json();
    return new ApiError(response.status, body.error.code, body.error.message);
  } catch {
    return new ApiError(response.status, "HAVEN_ERR_UNAVAILABLE", `the agent answered ${response.status}`);
  }
}

/** GET or POST `path`; resolves with the JSON answer or rejects with an ApiError. */
export async function call(path, body, given = token()) {
  const init = { headers: { authorization: `Bearer ${given}` }, cache: "no-store" };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await refusal(response);
  return response.json();
}

/**
 * Reads the server-sent events of `path` until `signal` aborts; `onEvent(name, data)` gets each one.
 * Resolves when the stream ends, rejects with an ApiError when it is refused.
 */
export async function stream(path, onEvent, signal) {
  const response = await fetch(path, { headers: { authorization: `Bearer ${token()}` }, signal, cache: "no-store" });
  if (!response.ok) throw await refusal(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data !== "") onEvent(name, JSON.parse(data));
    }
  }
}
