/**
 * The per-session reorder buffer: Data frames in, payloads out in `seq` order, exactly once.
 *
 * Why: frames of one session can arrive out of order (a relay's concurrent workers, or the
 * relay and a direct path both carrying frames during an upgrade), and a TCP tunnel is a byte
 * stream — writing chunks out of order corrupts it (seed 003, lesson 2). One buffer per session,
 * keyed by seq only, created when the session starts.
 *
 * Contract of `push(seq, payload)`:
 * - `seq === nextSeq`: returns that payload followed by every buffered one that is now
 *   consecutive; `nextSeq` moves past them.
 * - `nextSeq < seq <= nextSeq + maxFrames`: held; returns `[]` while the gap stays open.
 * - `seq < nextSeq`, or a seq already held: a duplicate — dropped, counted, returns `[]`.
 * - a seq further ahead than `maxFrames`, or holding it would put the held bytes over
 *   `maxBytes`: overflow — throws `StoaError("too_large")`. Nothing is ever dropped silently: the
 *   caller closes the session with the error's message as the reason. The buffer is then
 *   failed, and every later push throws the same error.
 * - `seq` must be a non-negative safe integer (number or bigint); anything else throws
 *   `StoaError("schema")` and does not fail the buffer.
 *
 * Payloads are kept by reference, not copied: pass buffers nobody reuses (seed 003, lesson 10;
 * CBOR-decoded byte strings are fresh copies already).
 *
 * Cost: an in-order frame with nothing held allocates only the one-element result array. Held
 * frames live in a ring of `maxFrames` slots indexed by `seq % maxFrames` (every seq inside the
 * window has its own slot), allocated on the first out-of-order frame.
 */
import { StoaError } from "../core/errors.ts";

/** Largest `maxFrames`: the ring has this many slots, 8 bytes each. */
const MAX_REORDER_FRAMES = 1 << 20;

interface ReorderOptions {
  /** Most frames held while waiting for a gap; also how far ahead of `nextSeq` a seq may be. */
  maxFrames: number;
  /** Most payload bytes held while waiting for a gap. */
  maxBytes: number;
  /** The seq of the session's first frame (1 in the hotlink protocol). */
  firstSeq?: number;
}

/** What the buffer holds: payload bytes, or any item that knows its size (e.g. a frame with its path). */
interface Sized {
  readonly byteLength: number;
}

/**
 * Restores seq order for one session.
 * @example
 * const reorder = new ReorderBuffer({ maxFrames: 4096, maxBytes: 64 << 20 });
 * // for each Data message of the session, from any transport:
 * try {
 *   for (const payload of reorder.push(msg.seq, msg.pay)) writer.write(payload);
 * } catch (err) {
 *   closeSession(msg.sid, describeError(err)); // overflow: the reason reaches the sender
 * }
 */
export class ReorderBuffer<T extends Sized = Uint8Array> {
  readonly #maxFrames: number;
  readonly #maxBytes: number;
  #ring: (T | undefined)[] | undefined;
  #next: number;
  #failed: StoaError | undefined;
  #frames = 0;
  #bytes = 0;
  #delivered = 0;
  #deliveredBytes = 0;
  #duplicates = 0;
  #reordered = 0;
  #maxBuffered = 0;

  constructor(options: ReorderOptions) {
    const { maxFrames, maxBytes, firstSeq = 1 } = options;
    if (!Number.isSafeInteger(maxFrames) || maxFrames < 1 || maxFrames > MAX_REORDER_FRAMES) {
      throw new StoaError("usage", `reorder maxFrames must be an integer from 1 to ${MAX_REORDER_FRAMES}, got ${maxFrames}`);
    }
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) {
      throw new StoaError("usage", `reorder maxBytes must be a non-negative integer, got ${maxBytes}`);
    }
    if (!Number.isSafeInteger(firstSeq) || firstSeq < 0) {
      throw new StoaError("usage", `reorder firstSeq must be a non-negative integer, got ${firstSeq}`);
    }
    this.#maxFrames = maxFrames;
    this.#maxBytes = maxBytes;
    this.#next = firstSeq;
  }

  /**
   * The common case without an array: true when `seq` is the one expected next and nothing is
   * held — the frame is counted as delivered and the caller delivers it now; false otherwise
   * (nothing changed: give it to `push`). Throws after a failure, as `push` does.
   */
  takeNext(seq: number, byteLength: number): boolean {
    if (this.#failed !== undefined) throw this.#failed;
    if (seq !== this.#next || this.#frames !== 0) return false;
    this.#next = seq + 1;
    this.#delivered++;
    this.#deliveredBytes += byteLength;
    return true;
  }

  /**
   * Takes one frame; returns the payloads now deliverable, in order (often just this one,
   * `[]` while waiting for a gap or for a duplicate). Throws on overflow — see the module header.
   */
  push(seq: number | bigint, payload: T): T[] {
    if (this.#failed !== undefined) throw this.#failed;
    const s = toSeq(seq);
    const next = this.#next;
    if (s === next) {
      this.#next = next + 1;
      this.#delivered++;
      this.#deliveredBytes += payload.byteLength;
      // The common case: in order with nothing held.
      if (this.#frames === 0) return [payload];
      const out = [payload];
      this.#drain(out);
      return out;
    }
    if (s < next) {
      this.#duplicates++;
      return [];
    }
    if (s - next > this.#maxFrames) {
      throw this.#fail(
        `reorder buffer overflow: seq ${s} is more than ${this.#maxFrames} frames ahead of the missing seq ${next}; ` +
          "a frame was lost or the peer is too far ahead",
      );
    }
    this.#ring ??= new Array<T | undefined>(this.#maxFrames);
    const slot = s % this.#maxFrames;
    if (this.#ring[slot] !== undefined) {
      this.#duplicates++;
      return [];
    }
    if (this.#bytes + payload.byteLength > this.#maxBytes) {
      throw this.#fail(
        `reorder buffer overflow: holding seq ${s} while waiting for seq ${next} would exceed ${this.#maxBytes} bytes ` +
          `(${this.#frames} frames, ${this.#bytes} bytes held)`,
      );
    }
    this.#ring[slot] = payload;
    this.#frames++;
    this.#bytes += payload.byteLength;
    this.#reordered++;
    if (this.#frames > this.#maxBuffered) this.#maxBuffered = this.#frames;
    return [];
  }

  /** The seq the buffer waits for: every lower seq has been delivered. */
  get nextSeq(): number {
    return this.#next;
  }

  /** Frames delivered (returned by `push`), and their payload bytes. */
  get delivered(): number {
    return this.#delivered;
  }
  get deliveredBytes(): number {
    return this.#deliveredBytes;
  }

  /** Frames dropped because their seq was already delivered or held. */
  get duplicates(): number {
    return this.#duplicates;
  }

  /** Frames that arrived early and had to be held. */
  get reordered(): number {
    return this.#reordered;
  }

  /** Frames and bytes held now, waiting for a gap to close. */
  get bufferedFrames(): number {
    return this.#frames;
  }
  get bufferedBytes(): number {
    return this.#bytes;
  }

  /** The most frames ever held at once: how much reordering this session saw. */
  get maxBuffered(): number {
    return this.#maxBuffered;
  }

  /** The overflow that failed this buffer, if any. */
  get error(): StoaError | undefined {
    return this.#failed;
  }

  #drain(out: T[]): void {
    const ring = this.#ring;
    if (ring === undefined) return;
    while (this.#frames > 0) {
      const slot = this.#next % this.#maxFrames;
      const payload = ring[slot];
      if (payload === undefined) return;
      ring[slot] = undefined;
      out.push(payload);
      this.#frames--;
      this.#bytes -= payload.byteLength;
      this.#next++;
      this.#delivered++;
      this.#deliveredBytes += payload.byteLength;
    }
  }

  #fail(message: string): StoaError {
    this.#failed = new StoaError("too_large", message);
    // Held payloads can never be delivered now; let them go.
    this.#ring = undefined;
    this.#frames = 0;
    this.#bytes = 0;
    return this.#failed;
  }
}

function toSeq(seq: number | bigint): number {
  if (typeof seq === "number") {
    if (Number.isSafeInteger(seq) && seq >= 0) return seq;
  } else if (seq >= 0n && seq <= BigInt(Number.MAX_SAFE_INTEGER)) {
    return Number(seq);
  }
  throw new StoaError("schema", `a Data frame's seq must be a non-negative integer below 2^53, got ${String(seq)}`);
}
