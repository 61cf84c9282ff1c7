// What the simulated client was promised, block by block (DESIGN.md rule 1 from the client's side).
// The client writes whole 4 KiB blocks, each filled with a unique stamp (and the block's number, so a
// block landing in the wrong place is caught), and never has two operations on one block in flight.
// For every block the oracle keeps:
// - current: the values the block may hold now. After an acknowledged write, exactly its stamp. A
//   write that failed, or was in flight when the engine crashed, leaves both old and new possible
//   (NBD leaves such a block undefined); a read collapses the set to what it returned, since a block
//   read once must read the same until written again.
// - the durable floor and the writes since: what the block may hold after a power loss that takes
//   the volume's data with it. A completed FLUSH promises every write acknowledged before it started,
//   and an acknowledged FUA write promises itself; anything written after that may or may not survive.
// Stamp 0 stands for zeroes (never written, trimmed or zeroed).

import { BLOCK_BYTES, ZERO_BLOCK } from "./sim-copy.js";

/** A block whose bytes are not a whole stamp pattern (torn, misplaced or foreign data). */
export const GARBAGE = -1;

interface BlockState {
  current: Set<number>;
  inflight: number | undefined;
  /** Writes started since the floor (their sequence numbers and stamps). */
  log: { seq: number; stamp: number }[];
  floor: { seq: number; values: Set<number> };
}

export interface WriteToken {
  readonly blocks: readonly number[];
  readonly stamp: number;
  readonly fua: boolean;
  readonly seq: number;
}

export interface FlushToken {
  readonly seq: number;
  readonly snapshot: ReadonlyMap<number, ReadonlySet<number>>;
}

export class Oracle {
  private readonly blocks = new Map<number, BlockState>();
  private seq = 0;
  private stamps = 0;

  newStamp(): number {
    return ++this.stamps;
  }

  /** Blocks the client ever touched, in order. */
  touched(): number[] {
    return [...this.blocks.keys()].sort((a, b) => a - b);
  }

  /** Values block `block` may hold now on an in-sync copy or in a read. */
  allowed(block: number): ReadonlySet<number> {
    const state = this.blocks.get(block);
    if (state === undefined) return ZERO_ONLY;
    if (state.inflight === undefined) return state.current;
    return new Set([...state.current, state.inflight]);
  }

  isCertain(block: number): boolean {
    const state = this.blocks.get(block);
    return state === undefined || (state.inflight === undefined && state.current.size === 1);
  }

  /** Values the block may hold after the data's cache is lost (durable floor and writes since). */
  durableSet(block: number): ReadonlySet<number> {
    const state = this.blocks.get(block);
    if (state === undefined) return ZERO_ONLY;
    return new Set([...state.floor.values, ...state.log.map((entry) => entry.stamp)]);
  }

  beginWrite(blocks: readonly number[], stamp: number, fua: boolean): WriteToken {
    const seq = ++this.seq;
    for (const block of blocks) {
      const state = this.state(block);
      if (state.inflight !== undefined) throw new Error(`oracle: block ${block} already has a write in flight`);
      state.inflight = stamp;
      state.log.push({ seq, stamp });
    }
    return { blocks, stamp, fua, seq };
  }

  ack(token: WriteToken): void {
    for (const block of token.blocks) {
      const state = this.state(block);
      state.inflight = undefined;
      state.current = new Set([token.stamp]);
      if (token.fua && token.seq >= state.floor.seq) this.setFloor(state, token.seq, new Set([token.stamp]));
    }
  }

  /** The write failed, or the engine died with it in flight: old and new are both possible. */
  fail(token: WriteToken): void {
    for (const block of token.blocks) {
      const state = this.state(block);
      state.inflight = undefined;
      state.current.add(token.stamp);
    }
  }

  beginFlush(): FlushToken {
    const seq = ++this.seq;
    const snapshot = new Map<number, Set<number>>();
    for (const [block, state] of this.blocks) {
      const values = new Set(state.current);
      if (state.inflight !== undefined) values.add(state.inflight);
      snapshot.set(block, values);
    }
    return { seq, snapshot };
  }

  completeFlush(token: FlushToken): void {
    for (const [block, values] of token.snapshot) {
      const state = this.state(block);
      if (token.seq >= state.floor.seq) this.setFloor(state, token.seq, new Set(values));
    }
  }

  /** The volume's data lost its cache (see the scenario for when that is legitimate). */
  loseCache(): void {
    for (const state of this.blocks.values()) {
      for (const value of state.floor.values) state.current.add(value);
      for (const entry of state.log) state.current.add(entry.stamp);
    }
  }

  /** A read (or the healed copies) showed `value`: from now on the block holds exactly that. */
  collapse(block: number, value: number): void {
    const state = this.state(block);
    if (state.inflight !== undefined) return;
    if (!state.current.has(value)) throw new Error(`oracle: collapsing block ${block} to a value it cannot hold`);
    state.current = new Set([value]);
  }

  describe(block: number): string {
    const state = this.blocks.get(block);
    if (state === undefined) return "never written (zeroes)";
    const list = (values: Iterable<number>): string => `{${[...values].map(stampName).join(", ")}}`;
    return (
      `may hold ${list(state.current)}` +
      (state.inflight === undefined ? "" : `, write ${stampName(state.inflight)} in flight`) +
      `; durable floor ${list(state.floor.values)}`
    );
  }

  private state(block: number): BlockState {
    let state = this.blocks.get(block);
    if (state === undefined) {
      state = { current: new Set([0]), inflight: undefined, log: [], floor: { seq: 0, values: new Set([0]) } };
      this.blocks.set(block, state);
    }
    return state;
  }

  private setFloor(state: BlockState, seq: number, values: Set<number>): void {
    state.floor = { seq, values };
    state.log = state.log.filter((entry) => entry.seq > seq);
  }
}

const ZERO_ONLY: ReadonlySet<number> = new Set([0]);

export function stampName(stamp: number): string {
  return stamp === 0 ? "zeroes" : stamp === GARBAGE ? "garbage" : `#${stamp}`;
}

/** The bytes the client writes to `block` for `stamp`: [stamp, block] as two little-endian u32, repeated. */
export function blockPattern(stamp: number, block: number): Buffer {
  const data = Buffer.alloc(BLOCK_BYTES);
  if (stamp === 0) return data;
  const unit = Buffer.alloc(8);
  unit.writeUInt32LE(stamp, 0);
  unit.writeUInt32LE(block, 4);
  return data.fill(unit);
}

/**
 * The stamp a block's bytes carry, or GARBAGE. `full` compares every byte; otherwise only the first
 * and last 8 (every write in the simulation is of whole blocks, so that is enough between steps).
 */
export function decodeBlock(data: Buffer | null, block: number, full = false): number {
  if (data === null) return 0;
  const stamp = data.readUInt32LE(0);
  const where = data.readUInt32LE(4);
  const tailStamp = data.readUInt32LE(BLOCK_BYTES - 8);
  const tailWhere = data.readUInt32LE(BLOCK_BYTES - 4);
  if (stamp !== tailStamp || where !== tailWhere) return GARBAGE;
  if (stamp === 0) {
    if (where !== 0) return GARBAGE;
    return !full || data.equals(ZERO_BLOCK) ? 0 : GARBAGE;
  }
  if (where !== block) return GARBAGE;
  return !full || data.equals(blockPattern(stamp, block)) ? stamp : GARBAGE;
}

export function describeBytes(data: Buffer | null, block: number): string {
  const stamp = decodeBlock(data, block, true);
  if (stamp !== GARBAGE) return stampName(stamp);
  const where = data!.readUInt32LE(4);
  if (where !== block && data!.readUInt32LE(0) !== 0) return `#${data!.readUInt32LE(0)} of block ${where} (misplaced)`;
  return `garbage (${data!.subarray(0, 16).toString("hex")}...)`;
}
