/**
 * A data-plane worker's own buffer pool: fixed size classes carved from one allocation made at
 * start, each buffer named by one small integer (the io_uring user_data of the operation that
 * holds it), owned by exactly one holder at a time. The seed's pool was shared between threads
 * without ownership and every completion read buffer 0; here a buffer is taken (`take`), named
 * in its SQE, found again by that name when its completion arrives in any order (`view`), and
 * given back exactly once (`give` of a free buffer throws: an ownership bug shows at once, not as
 * corrupted packets). An empty class is no error: `take` answers -1 and the caller drops the
 * packet and counts it (`buffer_exhausted`).
 *
 * Memory: one ArrayBuffer per pool, never moved by the collector (its bytes are allocated
 * outside the heap), so a buffer's address can be handed to the kernel for as long as the pool
 * lives; buffers of one class sit side by side, classes one after the other, each buffer
 * 64-byte aligned (a cache line: two buffers never share one).
 */

/** A size class: `count` buffers of `size` bytes. */
export interface SizeClass {
  size: number;
  count: number;
}

const ALIGN = 64;
/** The most buffers one pool names: user_data keeps them in the low 32 bits with room to spare. */
export const MAX_POOL_BUFFERS = 1 << 20;

export class BufferPool {
  readonly memory: ArrayBuffer;
  #sizes: number[] = [];
  #offsets: number[] = [];
  /** Per class: the free buffers' indexes (a stack). */
  #free: number[][] = [];
  /** Per class: its first index. */
  #first: number[] = [];
  #classOf: Uint8Array;
  #taken: Uint8Array;
  #exhausted = 0;

  constructor(classes: readonly SizeClass[]) {
    if (classes.length === 0 || classes.length > 255) throw new RangeError("a pool has 1 to 255 size classes");
    const sorted = [...classes].sort((a, b) => a.size - b.size);
    const total = sorted.reduce((n, c) => n + c.count, 0);
    if (total > MAX_POOL_BUFFERS) throw new RangeError(`a pool holds at most ${MAX_POOL_BUFFERS} buffers`);
    this.#classOf = new Uint8Array(total);
    this.#taken = new Uint8Array(total);
    let bytes = 0;
    let index = 0;
    sorted.forEach((c, k) => {
      if (!Number.isSafeInteger(c.size) || c.size <= 0 || !Number.isSafeInteger(c.count) || c.count <= 0) throw new RangeError("a size class needs a positive size and count");
      const stride = Math.ceil(c.size / ALIGN) * ALIGN;
      this.#first.push(index);
      const free: number[] = [];
      for (let i = c.count - 1; i >= 0; i--) free.push(index + i);
      this.#free.push(free);
      for (let i = 0; i < c.count; i++) {
        this.#sizes.push(c.size);
        this.#offsets.push(bytes + i * stride);
        this.#classOf[index + i] = k;
      }
      bytes += stride * c.count;
      index += c.count;
    });
    this.memory = new ArrayBuffer(bytes);
  }

  /** Buffers in the pool. */
  get size(): number {
    return this.#sizes.length;
  }

  /** Times `take` found its class (and every larger one) empty. */
  get exhausted(): number {
    return this.#exhausted;
  }

  /** A free buffer of at least `bytes` (the smallest class that fits, else a larger one), or -1. */
  take(bytes: number): number {
    for (let k = 0; k < this.#free.length; k++) {
      const first = this.#first[k]!;
      if (this.#sizes[first]! < bytes) continue;
      const index = this.#free[k]!.pop();
      if (index === undefined) continue;
      this.#taken[index] = 1;
      return index;
    }
    this.#exhausted++;
    return -1;
  }

  /** Gives buffer `index` back. A buffer that is not taken (given twice, never taken, no such index) throws. */
  give(index: number): void {
    if (!Number.isInteger(index) || index < 0 || index >= this.#sizes.length) throw new RangeError(`no buffer ${index} in this pool`);
    if (this.#taken[index] !== 1) throw new Error(`buffer ${index} is given back but was not taken: an ownership bug`);
    this.#taken[index] = 0;
    this.#free[this.#classOf[index]!]!.push(index);
  }

  /** The bytes of buffer `index` (its whole capacity). */
  view(index: number): Uint8Array {
    if (!Number.isInteger(index) || index < 0 || index >= this.#sizes.length) throw new RangeError(`no buffer ${index} in this pool`);
    return new Uint8Array(this.memory, this.#offsets[index]!, this.#sizes[index]!);
  }

  /** Whether buffer `index` is taken now. */
  isTaken(index: number): boolean {
    return this.#taken[index] === 1;
  }

  /** Free buffers per class, smallest class first. */
  freeCounts(): number[] {
    return this.#free.map((f) => f.length);
  }
}
