// Local copies with a switch: a ReplicaOpener whose ports can be made to fail (as a dying disk or
// a dropped link would), so in-process engine tests can fault and heal copies on cue.

import type { WriteData } from "../../src/block/device.js";
import { HavenError } from "../../src/core/errors.js";
import { LocalReplicaPort } from "../../src/replica/local-port.js";
import type { CreateOptions, ReplicaOpener, ReplicaPort } from "../../src/replica/port.js";
import type { MetadataPatch } from "../../src/replica/replica-store.js";

export class Switchboard {
  /** Locations whose copies fail every operation (and cannot be opened) while listed. */
  readonly broken = new Set<string>();
  readonly ports = new Map<string, ReplicaPort>();

  readonly opener: ReplicaOpener = async (location, name, create) => {
    this.check(location);
    const port = new SwitchedPort(
      await LocalReplicaPort.open(location, name, create as CreateOptions | undefined),
      this,
    );
    this.ports.set(location, port);
    return port;
  };

  check(location: string): void {
    if (this.broken.has(location)) throw new HavenError("HAVEN_ERR_IO", `${location}: injected I/O error`);
  }
}

class SwitchedPort implements ReplicaPort {
  onLost: ((error: Error) => void) | undefined;
  readonly local = true;

  constructor(
    private readonly inner: LocalReplicaPort,
    private readonly board: Switchboard,
  ) {}

  get location(): string {
    return this.inner.location;
  }
  get metadata() {
    return this.inner.metadata;
  }
  private async guard<T>(run: () => Promise<T>): Promise<T> {
    this.board.check(this.location);
    return run();
  }
  read(offset: number, length: number) {
    return this.guard(() => this.inner.read(offset, length));
  }
  write(epoch: number, offset: number, data: WriteData, fua: boolean) {
    return this.guard(() => this.inner.write(epoch, offset, data, fua));
  }
  trim(epoch: number, offset: number, length: number, fua: boolean) {
    return this.guard(() => this.inner.trim(epoch, offset, length, fua));
  }
  writeZeroes(epoch: number, offset: number, length: number, fua: boolean) {
    return this.guard(() => this.inner.writeZeroes(epoch, offset, length, fua));
  }
  flush() {
    return this.guard(() => this.inner.flush());
  }
  updateMetadata(epoch: number, patch: MetadataPatch) {
    return this.guard(() => this.inner.updateMetadata(epoch, patch));
  }
  checksum(offset: number, length: number, regionBytes: number) {
    return this.guard(() => this.inner.checksum(offset, length, regionBytes));
  }
  blockStatus(offset: number, length: number) {
    return this.guard(() => this.inner.blockStatus(offset, length));
  }
  close() {
    return this.inner.close();
  }
}
