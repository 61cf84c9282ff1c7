// What the dashboard's tests share: calls to an agent API over HTTPS (the cluster CA trusted, a bearer
// token or none), reading its live stream of server-sent events, and a Chromium driven by
// playwright-core (Debian's /usr/bin/chromium; a browser is never downloaded).

import { readFileSync } from "node:fs";
import { request, type RequestOptions } from "node:https";
import type { IncomingMessage } from "node:http";

export interface ApiAnswer {
  readonly status: number;
  readonly headers: IncomingMessage["headers"];
  readonly body: string;
  /** The body as JSON (undefined when it is not). */
  readonly json: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

function options(port: number, method: string, path: string, caFile: string, token?: string): RequestOptions {
  return {
    host: "127.0.0.1",
    port,
    method,
    path,
    agent: false,
    ca: readFileSync(caFile),
    headers: {
      "content-type": "application/json",
      ...(token !== undefined && { authorization: `Bearer ${token}` }),
    },
  };
}

/** One call to the agent API on `port`. */
export function agentCall(
  port: number,
  caFile: string,
  method: string,
  path: string,
  token?: string,
  body?: unknown,
): Promise<ApiAnswer> {
  return new Promise((resolve, reject) => {
    const req = request(options(port, method, path, caFile, token), (response) => {
      let text = "";
      response.setEncoding("utf8");
      response.on("data", (chunk: string) => (text += chunk));
      response.on("end", () => {
        let json: unknown;
        try {
          json = JSON.parse(text);
        } catch {
          json = undefined;
        }
        resolve({ status: response.statusCode ?? 0, headers: response.headers, body: text, json });
      });
    });
    req.once("error", reject);
    req.setTimeout(30_000, () => req.destroy(new Error(`${method} ${path} timed out`)));
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

/** A live stream being read: the events so far, and a way to wait for one. */
export interface StreamReader {
  readonly status: number;
  readonly events: { readonly event: string; readonly data: any }[]; // eslint-disable-line @typescript-eslint/no-explicit-any
  /** Resolves with the first event (already read or to come) that `accept` takes; rejects after timeoutMs. */
  waitFor(what: string, accept: (event: string, data: any) => boolean, timeoutMs?: number): Promise<any>; // eslint-disable-line @typescript-eslint/no-explicit-any
  close(): void;
}

export function openStream(port: number, caFile: string, path: string, token?: string): Promise<StreamReader> {
  return new Promise((resolve, reject) => {
    const req = request(options(port, "GET", path, caFile, token), (response) => {
      const events: StreamReader["events"][number][] = [];
      const waiters = new Set<() => void>();
      let buffer = "";
      response.setEncoding("utf8");
      response.on("data", (chunk: string) => {
        buffer += chunk;
        let end: number;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const event = /^event: (.*)$/m.exec(block)?.[1];
          const data = /^data: (.*)$/m.exec(block)?.[1];
          if (event !== undefined && data !== undefined) events.push({ event, data: JSON.parse(data) });
          else if (data !== undefined) events.push({ event: "message", data: JSON.parse(data) });
        }
        for (const wake of waiters) wake();
      });
      resolve({
        status: response.statusCode ?? 0,
        events,
        waitFor: (what, accept, timeoutMs = 60_000) =>
          new Promise((found, failed) => {
            let seen = 0;
            const check = (): void => {
              for (; seen < events.length; seen++) {
                const { event, data } = events[seen]!;
                if (accept(event, data)) {
                  waiters.delete(check);
                  clearTimeout(timer);
                  return found(data);
                }
              }
            };
            const timer = setTimeout(() => {
              waiters.delete(check);
              failed(new Error(`no ${what} on the stream within ${timeoutMs} ms`));
            }, timeoutMs);
            waiters.add(check);
            check();
          }),
        close: () => req.destroy(),
      });
    });
    req.once("error", (error) => {
      if ((error as NodeJS.ErrnoException).code !== "ECONNRESET") reject(error);
    });
    req.end();
  });
}

/** How the tests launch Chromium: Debian's, never a downloaded one. */
export const CHROMIUM = {
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
} as const;
