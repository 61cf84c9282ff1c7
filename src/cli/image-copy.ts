// Disk images in and out of volumes, for `volume import`, `volume export`, `vm create --image`,
// `vm import` and `vm export`. qemu-img does the format work (qcow2, vmdk, vdi, vhdx, raw), the way
// every platform that moves disks does; Haven's part is what it checks first and how it reaches the
// volume:
//
//   - What a file is comes from `qemu-img info` with the format probed, and is refused when it is not a
//     disk image: qemu-img calls any file "raw", so a raw image must also be whole 512-byte sectors and
//     must not read as text. A --format that names another format than the file's is refused too (a
//     qcow2 copied as raw would hand the guest qcow2's metadata as its disk).
//   - The volume is reached over NBD at its primary's front, as `--image-opts` so that the operator's
//     TLS identity (the CLI context's, the one that shows etcd who acts) goes along when there is one:
//     beyond loopback the front insists on TLS.
//   - Onto a new volume, `convert -n --target-is-zero` writes only the image's data (a new volume reads
//     as zeros; writing its zeros too would cost the whole size on every copy), out of order (-W): the
//     target is nobody's disk yet.
//   - Every copy shows qemu-img's -p progress as a bar (convert-progress.ts) and is bounded: a copy that
//     makes no progress for COPY_STALL_MS is stopped and fails.

import { execFile, spawn } from "node:child_process";
import { closeSync, existsSync, openSync, readSync, statSync } from "node:fs";
import { join } from "node:path";
import { HavenError } from "../core/errors.js";
import { formatBytes } from "../util/units.js";
import { packageRoot } from "../util/repo-root.js";
import { ConvertProgress } from "./convert-progress.js";

export const IMAGE_FORMATS = ["raw", "qcow2", "vmdk", "vdi", "vhdx"] as const;
export type ImageFormat = (typeof IMAGE_FORMATS)[number];

/** A disk image file as qemu-img reads it. */
export interface ImageFile {
  readonly file: string;
  readonly format: ImageFormat;
  readonly virtualSizeBytes: number;
}

/** Where a volume is served: its primary's NBD front, and the identity to show it over TLS. */
export interface VolumeEndpoint {
  readonly address: string;
  readonly nbdPort: number;
  readonly volume: string;
  /** An operator identity directory (pki.ts's layout, which QEMU's tls-creds-x509 reads as it is). */
  readonly tlsDir?: string;
}

const SECTOR_BYTES = 512;
/** How much of a raw file is looked at to tell text from a disk. */
const TEXT_PROBE_BYTES = 64 * 1024;
/** qemu-img reports at least every percent; a copy silent this long is stuck, not slow. */
const COPY_STALL_MS = 120_000;
const INFO_TIMEOUT_MS = 30_000;
const TLS_OBJECT_ID = "haven-tls";

/** The built-in images' directory: where scripts/build-test-image.sh leaves haven-test. */
export function imageDir(): string {
  return process.env.HAVEN_IMAGE_DIR ?? join(packageRoot(), ".cache", "images");
}

/** --format NAME: one of the formats Haven imports and exports. */
export function parseImageFormat(text: string | undefined, option = "--format"): ImageFormat | undefined {
  if (text === undefined) return undefined;
  if (!(IMAGE_FORMATS as readonly string[]).includes(text))
    throw new HavenError("HAVEN_ERR_USAGE", `${option} must be one of ${IMAGE_FORMATS.join(", ")}, got "${text}"`);
  return text as ImageFormat;
}

/** The format a file name's extension names (disk.qcow2, disk.img), or undefined. */
export function formatOfFileName(file: string): ImageFormat | undefined {
  const extension = /\.([a-z0-9]+)$/i.exec(file)?.[1]?.toLowerCase();
  if (extension === "img") return "raw";
  return (IMAGE_FORMATS as readonly string[]).includes(extension ?? "") ? (extension as ImageFormat) : undefined;
}

/** `--image haven-test|FILE`: the built-in test image or an operator's file (its format from inspectImage). */
export function resolveImage(image: string): { file: string; builtIn: boolean } {
  if (image === "haven-test") {
    const file = join(imageDir(), "haven-test.raw");
    if (!existsSync(file))
      throw new HavenError(
        "HAVEN_ERR_NOT_FOUND",
        `the haven-test image is not built: run scripts/build-test-image.sh (it writes ${file})`,
      );
    return { file, builtIn: true };
  }
  if (!existsSync(image))
    throw new HavenError(
      "HAVEN_ERR_NOT_FOUND",
      `no image "${image}": give haven-test or the path of a ${IMAGE_FORMATS.join(", ")} file`,
    );
  return { file: image, builtIn: false };
}

/**
 * Whether the start of a file reads as text rather than a disk: no NUL byte and almost only printable
 * ASCII or UTF-8. A disk's first sectors (a boot sector, a partition table, a filesystem's superblock, or
 * zeros) always hold NUL bytes.
 */
export function looksLikeText(start: Uint8Array): boolean {
  if (start.length === 0) return false;
  let printable = 0;
  for (const byte of start) {
    if (byte === 0) return false;
    if (byte === 0x09 || byte === 0x0a || byte === 0x0d || (byte >= 0x20 && byte < 0x7f) || byte >= 0x80) printable++;
  }
  return printable / start.length >= 0.95;
}

function fileStart(file: string): Buffer {
  const fd = openSync(file, "r");
  try {
    const buffer = Buffer.alloc(TEXT_PROBE_BYTES);
    return buffer.subarray(0, readSync(fd, buffer, 0, buffer.length, 0));
  } finally {
    closeSync(fd);
  }
}

function qemuImgInfo(file: string): Promise<{ format: string; virtualSizeBytes: number }> {
  return new Promise((resolve, reject) => {
    execFile("qemu-img", ["info", "--output=json", file], { timeout: INFO_TIMEOUT_MS }, (error, stdout, stderr) => {
      if (error) {
        reject(
          new HavenError(
            "HAVEN_ERR_USAGE",
            `${file} is not a disk image qemu-img can read (${stderr.trim() || error.message}); ` +
              `give a ${IMAGE_FORMATS.join(", ")} image`,
          ),
        );
        return;
      }
      const info = JSON.parse(stdout) as { format?: unknown; "virtual-size"?: unknown };
      if (typeof info.format !== "string" || !Number.isSafeInteger(info["virtual-size"]))
        reject(new HavenError("HAVEN_ERR_IO", `qemu-img info gave no format and size for ${file}: ${stdout}`));
      else resolve({ format: info.format, virtualSizeBytes: info["virtual-size"] as number });
    });
  });
}

/**
 * The image's format and virtual size, refused (HAVEN_ERR_USAGE, with the fix) when it is not a disk
 * image, is of a format Haven does not take, or is not of the `expected` format the operator named.
 */
export async function inspectImage(file: string, expected?: ImageFormat): Promise<ImageFile> {
  const info = await qemuImgInfo(file);
  if (!(IMAGE_FORMATS as readonly string[]).includes(info.format))
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `${file} is a ${info.format} image; Haven imports ${IMAGE_FORMATS.join(", ")}: convert it first ` +
        `(qemu-img convert -O qcow2 ${file} ${file}.qcow2)`,
    );
  const format = info.format as ImageFormat;
  if (expected !== undefined && expected !== format)
    throw new HavenError(
      "HAVEN_ERR_USAGE",
      `${file} is a ${format} image, not ${expected}: give --format ${format}, or leave --format out`,
    );
  if (format === "raw") {
    const sizeBytes = statSync(file).size;
    if (sizeBytes === 0 || sizeBytes % SECTOR_BYTES !== 0 || looksLikeText(fileStart(file)))
      throw new HavenError(
        "HAVEN_ERR_USAGE",
        `${file} is not a disk image: ` +
          (sizeBytes % SECTOR_BYTES !== 0 || sizeBytes === 0
            ? `its ${sizeBytes} bytes are not whole ${SECTOR_BYTES}-byte sectors`
            : "it reads as text") +
          `; give a ${IMAGE_FORMATS.join(", ")} image of a disk`,
      );
  }
  return { file, format, virtualSizeBytes: info.virtualSizeBytes };
}

/** qemu-img's arguments that reach the volume: the TLS object (when there is an identity) and the opts. */
function nbdImageArguments(endpoint: VolumeEndpoint): { objects: string[]; opts: string } {
  // In QEMU's option syntax a comma inside a value is written twice.
  const value = (text: string): string => text.replaceAll(",", ",,");
  const tls = endpoint.tlsDir !== undefined;
  return {
    objects: tls
      ? ["--object", `tls-creds-x509,id=${TLS_OBJECT_ID},endpoint=client,dir=${value(endpoint.tlsDir!)}`]
      : [],
    opts:
      `driver=nbd,server.type=inet,server.host=${value(endpoint.address)},server.port=${endpoint.nbdPort},` +
      `export=${value(endpoint.volume)}${tls ? `,tls-creds=${TLS_OBJECT_ID}` : ""}`,
  };
}

/** Runs `qemu-img convert -p ...`, drawing its progress; rejects with HAVEN_ERR_IO saying what failed. */
function convert(args: string[], what: string, progress: ConvertProgress, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn("qemu-img", ["convert", "-p", ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let stderr = "";
    let stalled = false;
    const stop = (): void => void child.kill("SIGTERM");
    signal?.addEventListener("abort", stop, { once: true });
    let watchdog: NodeJS.Timeout | undefined;
    const watch = (): void => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => {
        stalled = true;
        child.kill("SIGKILL");
      }, COPY_STALL_MS);
    };
    watch();
    child.stdout.on("data", (chunk: Buffer) => {
      progress.feed(chunk.toString());
      watch();
    });
    child.stderr.on("data", (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-4096)));
    child.on("error", (error) => {
      clearTimeout(watchdog);
      reject(new HavenError("HAVEN_ERR_IO", `qemu-img did not run: ${error.message} (is qemu-utils installed?)`));
    });
    child.on("close", (code, ended) => {
      clearTimeout(watchdog);
      signal?.removeEventListener("abort", stop);
      if (code === 0) {
        progress.done();
        resolve();
        return;
      }
      progress.abandon();
      const why = stalled
        ? `no progress for ${COPY_STALL_MS / 1000} s at ${progress.reported.toFixed(0)}%`
        : signal?.aborted === true
          ? `stopped at ${progress.reported.toFixed(0)}%`
          : stderr.trim() || `qemu-img ended with ${ended ?? `exit ${code}`}`;
      reject(new HavenError("HAVEN_ERR_IO", `${what} failed: ${why}`));
    });
  });
}

/** Copies an image onto a new volume (it reads as zeros, and nothing else uses it yet). */
export function copyImageToVolume(image: ImageFile, target: VolumeEndpoint, signal?: AbortSignal): Promise<void> {
  const nbd = nbdImageArguments(target);
  process.stderr.write(
    `copying ${image.file} (${image.format}, ${formatBytes(image.virtualSizeBytes)}) onto ${target.volume}\n`,
  );
  return convert(
    [
      ...nbd.objects,
      ...["-n", "--target-is-zero", "-W", "-f", image.format, "--target-image-opts"],
      image.file,
      nbd.opts,
    ],
    `copying ${image.file} onto volume ${target.volume}`,
    new ConvertProgress("importing", image.virtualSizeBytes),
    signal,
  );
}

/** Writes a volume's data into an image file of `format` (qemu-img creates the file; zeros stay holes). */
export function copyVolumeToFile(
  source: VolumeEndpoint,
  sizeBytes: number,
  file: string,
  format: ImageFormat,
  signal?: AbortSignal,
): Promise<void> {
  const nbd = nbdImageArguments(source);
  return convert(
    [...nbd.objects, "--image-opts", nbd.opts, "-O", format, file],
    `writing volume ${source.volume} into ${file}`,
    new ConvertProgress("exporting", sizeBytes),
    signal,
  );
}
