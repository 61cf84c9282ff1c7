// A block device wrapper for tests that injects faults: operations can be held at a gate (to create
// in-flight work at a chosen moment), delayed, or failed with a chosen error, per operation kind.

import type { BlockDevice, Extent, WriteData, WriteOptions, ZeroOptions } from "./device.js";

export type OperationKind = "read" | "write" | "flush" | "trim" | "writeZeroes" | "blockStatus" | "cache";

export interface FaultRule {
  readonly kinds: readonly OperationKind[];
  /** Fail matching operations with this error (after any hold). */
  readonly error?: () => Error;
  /** Hold matching operations until `release()` is called on the returned handle. */
  readonly hold?: boolean;
}

export class FaultDevice implements BlockDevice {
  private rules: FaultRule[] = [];
  private held: Array<() => void> = [];
  /** How many operations of each kind have started. */
  readonly started = new Map<OperationKind, number>();

  constructor(private readonly inner: BlockDevice) {}

  get size(): number {
    return this.inner.size;
  }

  get capabilities() {
    return this.inner.capabilities;
  }

  inject(rule: FaultRule): void {
    this.rules.push(rule);
  }

  /** Removes every rule and lets held operations continue. */
  heal(): void {
    this.rules = [];
    const held = this.held;
    this.held = [];
    for (const release of held) release();
  }

  get heldCount(): number {
    return this.held.length;
  }

  read(offset: number, target: Buffer): Promise<void> {
    return this.apply("read", () => this.inner.read(offset, target));
  }
  write(offset: number, data: WriteData, options?: WriteOptions): Promise<void> {
    return this.apply("write", () => this.inner.write(offset, data, options));
  }
  flush(): Promise<void> {
    return this.apply("flush", () => this.inner.flush());
  }
  trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    return this.apply("trim", () => this.inner.trim(offset, length, options));
  }
  writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    return this.apply("writeZeroes", () => this.inner.writeZeroes(offset, length, options));
  }
  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.apply("blockStatus", () => this.inner.blockStatus(offset, length));
  }
  cache(offset: number, length: number): Promise<void> {
    return this.apply("cache", () => this.inner.cache(offset, length));
  }
  close(): Promise<void> {
    return this.inner.close();
  }

  private async apply<T>(kind: OperationKind, operation: () => Promise<T>): Promise<T> {
    this.started.set(kind, (this.started.get(kind) ?? 0) + 1);
    const rules = this.rules.filter((rule) => rule.kinds.includes(kind));
    if (rules.some((rule) => rule.hold)) await new Promise<void>((resolve) => this.held.push(resolve));
    const failing = rules.find((rule) => rule.error !== undefined);
    if (failing) throw failing.error!();
    return operation();
  }
}
