// The real MetadataFile: two slots at the start of a small file beside the replica's data, written
// with pwrite and made durable with fdatasync (the only I/O the metadata store does).

import { open, type FileHandle } from "node:fs/promises";
import { nativeIo } from "../block/native.js";
import { SLOT_BYTES, type MetadataFile } from "./metadata-store.js";

export class FileMetadataFile implements MetadataFile {
  private constructor(private readonly handle: FileHandle) {}

  /** Opens (creating if needed) the metadata file, sized for both slots. */
  static async open(path: string): Promise<FileMetadataFile> {
    const handle = await open(path, "a+").then(async (probe) => {
      await probe.close();
      return open(path, "r+");
    });
    const { size } = await handle.stat();
    if (size < 2 * SLOT_BYTES) await handle.truncate(2 * SLOT_BYTES);
    return new FileMetadataFile(handle);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const buffer = Buffer.alloc(length);
    const { bytesRead } = await this.handle.read(buffer, 0, length, offset);
    return buffer.subarray(0, bytesRead);
  }

  async write(offset: number, data: Buffer): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.handle.write(data, done, data.length - done, offset + done);
      done += bytesWritten;
    }
  }

  sync(): Promise<void> {
    return this.handle.datasync();
  }

  /**
   * Takes the copy for this process alone (an exclusive flock, released on close), so two engines or
   * servers on one host can never write the same copy; false when another process holds it.
   */
  lockExclusive(): boolean {
    return nativeIo().lockExclusive(this.handle.fd);
  }

  close(): Promise<void> {
    return this.handle.close();
  }
}
