// One etcd watch over the gateway's streaming /v3/watch: a single HTTP response that carries one JSON
// watch response per line, for as long as the connection lives. The first says the watch was created;
// later ones carry events in revision order; a "canceled" one means etcd gave up on the watch (most
// often because the start revision was compacted). The watch does not reconnect: it reports why it
// ended, once, and the caller decides (re-read and watch again from the last revision it saw).

import { HavenError } from "../core/errors.js";
import {
  asArray,
  asObject,
  booleanField,
  headerRevision,
  int64Field,
  JsonLineSplitter,
  parseGatewayError,
  parseWatchEvent,
  prefixRange,
  type WatchEvent,
} from "./etcd-codec.js";
import { etcdRefused, type EtcdStream, type EtcdTransport } from "./etcd-transport.js";

export interface WatchOptions {
  /** Replay events from this revision on (inclusive); without it, only changes after creation. */
  readonly startRevision?: number;
  /**
   * Called once when an established watch ends: with undefined after cancel(), otherwise with the reason
   * (HAVEN_ERR_UNAVAILABLE when the stream broke or ended, HAVEN_ERR_IO when etcd canceled the watch).
   */
  readonly onClose?: (reason: HavenError | undefined) => void;
}

export interface Watch {
  /** Resolves once etcd confirmed the watch (every later change will be seen); rejects if it never did. */
  readonly ready: Promise<void>;
  /** The highest revision the watch has been told about; watch again from revision + 1 to resume. */
  readonly revision: number;
  cancel(): void;
}

/** Starts watching every key under `prefix`; `onEvent` gets each change in revision order. */
export function watchPrefix(
  transport: EtcdTransport,
  prefix: string,
  options: WatchOptions,
  onEvent: (event: WatchEvent) => void,
  limits: { readonly maxMessageBytes: number; readonly createTimeoutMs: number },
): Watch {
  const what = `watch on prefix "${prefix}"`;
  const startRevision = options.startRevision;
  if (startRevision !== undefined && !(Number.isSafeInteger(startRevision) && startRevision > 0)) {
    throw new HavenError("HAVEN_ERR_INVALID_REQUEST", `${what}: start revision ${startRevision} is not above 0`);
  }
  const request = {
    create_request: {
      ...prefixRange(prefix),
      ...(startRevision === undefined ? {} : { start_revision: String(startRevision) }),
    },
  };

  let stream: EtcdStream | undefined;
  let state: "creating" | "watching" | "ended" = "creating";
  let revision = 0;
  let settleReady!: (error?: HavenError) => void;
  const ready = new Promise<void>((resolve, reject) => {
    settleReady = (error) => (error === undefined ? resolve() : reject(error));
  });
  // Before etcd confirms, a failure rejects `ready`; after, it goes to onClose. Each happens once.
  const end = (reason: HavenError | undefined): void => {
    if (state === "ended") return;
    const wasWatching = state === "watching";
    state = "ended";
    clearTimeout(createTimer);
    stream?.close();
    if (!wasWatching) settleReady(reason);
    else options.onClose?.(reason);
  };
  const createTimer = setTimeout(
    () =>
      end(
        new HavenError(
          "HAVEN_ERR_UNAVAILABLE",
          `etcd at ${stream?.endpoint.name ?? transport.endpointNames.join(", ")} did not confirm the ${what} ` +
            `within ${limits.createTimeoutMs} ms`,
        ),
      ),
    limits.createTimeoutMs,
  );

  const handle = (message: unknown, opened: EtcdStream): void => {
    const error = parseGatewayError(message);
    if (error !== undefined) return end(etcdRefused(opened.endpoint, what, error));
    const result = asObject(asObject(message, what).result, what, '"result"');
    revision = Math.max(revision, headerRevision(result, what));
    if (booleanField(result, "canceled", what)) {
      const compacted = int64Field(result, "compact_revision", what);
      const because =
        compacted > 0
          ? `revision ${startRevision} is compacted (the oldest kept is ${compacted}): re-read the keys and watch ` +
            `from the revision of that read`
          : String(result.cancel_reason ?? "no reason given");
      return end(new HavenError("HAVEN_ERR_IO", `etcd at ${opened.endpoint.name} canceled the ${what}: ${because}`));
    }
    if (booleanField(result, "created", what) && state === "creating") {
      state = "watching";
      clearTimeout(createTimer);
      settleReady();
    }
    for (const raw of asArray(result.events, what, "events")) {
      const event = parseWatchEvent(raw, what);
      revision = Math.max(revision, event.modRevision);
      if (state !== "watching") return;
      onEvent(event);
    }
  };

  transport.stream("/v3/watch", request, what).then(
    (opened) => {
      stream = opened;
      if (state === "ended") return opened.close();
      const splitter = new JsonLineSplitter(limits.maxMessageBytes, what);
      opened.response.on("data", (chunk: Buffer) => {
        try {
          for (const message of splitter.push(chunk)) {
            if (state === "ended") return;
            handle(message, opened);
          }
        } catch (error) {
          if (!(error instanceof HavenError)) throw error;
          end(error);
        }
      });
      opened.response.once("close", () => {
        const how = opened.response.complete ? "ended" : "broke off";
        end(new HavenError("HAVEN_ERR_UNAVAILABLE", `the ${what} from etcd at ${opened.endpoint.name} ${how}`));
      });
    },
    (error: unknown) =>
      end(error instanceof HavenError ? error : new HavenError("HAVEN_ERR_IO", `${what}: ${String(error)}`)),
  );

  return {
    ready,
    get revision() {
      return revision;
    },
    cancel: () => end(undefined),
  };
}
