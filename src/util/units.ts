// Parsing of sizes and addresses typed by operators ("10G", "512MiB", "127.0.0.1:10809").

import { HavenError } from "../core/errors.js";

const SIZE_UNITS: Record<string, number> = {
  "": 1,
  b: 1,
  k: 1024,
  kb: 1024,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1024 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1024 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tb: 1024 ** 4,
  tib: 1024 ** 4,
};

/** Sizes are binary: "1G" and "1GiB" both mean 2^30 bytes, as qemu-img and nbdkit read them. */
export function parseSize(text: string, what = "size"): number {
  if (/^\s*-/.test(text))
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `${what} "${text}" is negative; give a size above zero, such as 512M or 10G`,
    );
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = match ? SIZE_UNITS[match[2]!.toLowerCase()] : undefined;
  if (!match || unit === undefined) {
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `${what} "${text}" is not a size; use bytes or a unit such as 512M, 10G, 1T`,
    );
  }
  const bytes = Number(match[1]) * unit;
  if (!Number.isSafeInteger(bytes) || bytes <= 0) {
    throw new HavenError("HAVEN_ERR_USAGE", `${what} "${text}" must be a whole number of bytes above zero`);
  }
  return bytes;
}

export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? value : value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

export function parseHostPort(text: string, what = "address"): { host: string; port: number } {
  const match = /^\[?([^\]]*?)\]?:(\d{1,5})$/.exec(text.trim());
  const port = match ? Number(match[2]) : NaN;
  if (!match || match[1] === "" || !(port >= 0 && port <= 65535)) {
    throw new HavenError("HAVEN_ERR_USAGE", `${what} "${text}" is not HOST:PORT (for example 127.0.0.1:10809)`);
  }
  return { host: match[1]!, port };
}
