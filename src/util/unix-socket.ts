// Unix socket files a server is about to bind: a file left behind by a dead server is replaced, a live
// server's socket and anything that is not a socket (a regular file, a directory, a symlink someone
// planted) are refused, so binding never deletes what it does not own.

import { connect } from "node:net";
import { lstatSync, unlinkSync } from "node:fs";
import { HavenError } from "../core/errors.js";

/** How long the probe waits for a listener to accept before the socket counts as stale. */
const PROBE_TIMEOUT_MS = 2_000;

/**
 * Removes the socket file at `path` when no server answers on it; does nothing when there is no file.
 * Throws HAVEN_ERR_CONFIG for a path that is not a socket or has a live server behind it.
 */
export async function removeStaleSocket(path: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
    throw new HavenError("HAVEN_ERR_CONFIG", `cannot inspect ${path}: ${(error as Error).message}`, { cause: error });
  }
  if (!isSocket) throw new HavenError("HAVEN_ERR_CONFIG", `${path} exists and is not a socket; refusing to replace it`);
  const live = await new Promise<boolean>((resolve) => {
    const probe = connect(path);
    const timer = setTimeout(() => {
      probe.destroy();
      resolve(true); // a listener that does not accept in time is still someone's socket
    }, PROBE_TIMEOUT_MS);
    probe.once("connect", () => {
      clearTimeout(timer);
      probe.destroy();
      resolve(true);
    });
    probe.once("error", () => {
      clearTimeout(timer);
      resolve(false);
    });
  });
  if (live) throw new HavenError("HAVEN_ERR_CONFIG", `${path} is in use by another running server`);
  unlinkSync(path);
}
