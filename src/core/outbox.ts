/**
 * Writing to a Bun socket without losing bytes: `socket.write()` may take fewer bytes than
 * given and drops the rest, so what it does not take is queued here, in order, and written by
 * `flush()` from the socket's `drain` handler. Every writer of a Bun socket that can be short
 * queues here: core/pipe.ts, core/framed-socket.ts, the gateway's answers, hotlink's IPC, tunnel
 * and direct connections, the framed relay link (`CopyingOutbox`, below, for a writer whose
 * every write is a reused buffer). (core/fdsplice-engine.ts, on raw fds and send(2), keeps its own.)
 *
 * - Nothing is written past a queue: while bytes wait, later writes queue behind them.
 * - Only the unwritten tail of a write is queued: as a view of the caller's buffer by default
 *   (pass buffers nobody reuses or changes), or as a copy with `write(bytes, { copy: true })`
 *   for a caller that reuses its buffer once `write()` returned.
 * - `maxQueuedBytes` caps the queue. A write whose tail would take it past the cap queues none
 *   of that tail and returns false: the stream now has a hole, so the caller must close the
 *   connection — how, and with which error, is its call.
 * - `clear()` drops the queue once the socket is gone, also when the socket closed (and the
 *   caller cleared) from inside one of this outbox's own writes.
 * - `written` counts the bytes the socket took; `maxQueued` is the high-water mark of `queued`.
 *
 * @example
 * const out = new Outbox(socket, { maxQueuedBytes: QUEUE_CAP });
 * // data: forward, and stop reading while the destination is behind
 * if (!out.write(chunk, { copy: true })) return socket.terminate(); // over the cap
 * if (out.queued > 0) source.pause();
 * // the destination's drain:
 * if (out.flush()) source.resume();
 */
import { copyBytes, copyInto } from "./bytes.ts";

/** What an outbox needs of a socket; every Bun `Socket` has it. */
interface OutboxSocket {
  /** Bun's contract: returns how many bytes it took (a negative count is read as 0), drops the rest. */
  write(data: Uint8Array): number;
}

interface OutboxOptions {
  /** The most bytes the queue may hold; a write past it returns false. Default: no cap. */
  maxQueuedBytes?: number;
}

export class Outbox {
  readonly #sock: OutboxSocket;
  readonly #cap: number;
  #queue: Uint8Array[] = [];
  #queued = 0;
  #highWater = 0;
  #written = 0;
  /** Counts `clear()` calls, so that a write or flush the socket was closed under stops. */
  #clears = 0;

  constructor(sock: OutboxSocket, options: OutboxOptions = {}) {
    this.#sock = sock;
    this.#cap = options.maxQueuedBytes ?? Infinity;
  }

  /** Bytes waiting for the socket. */
  get queued(): number {
    return this.#queued;
  }

  /** The most bytes that ever waited at once. */
  get maxQueued(): number {
    return this.#highWater;
  }

  /** Bytes the socket took, in total. */
  get written(): number {
    return this.#written;
  }

  /**
   * Writes `bytes` after whatever is queued, queueing what the socket does not take (a copy with
   * `copy`). False when that would take the queue past `maxQueuedBytes`: nothing of the tail was
   * queued (see the module header).
   */
  write(bytes: Uint8Array, options: { copy?: boolean } = {}): boolean {
    let rest = bytes;
    if (this.#queue.length === 0) {
      const clears = this.#clears;
      const n = this.#put(rest);
      if (n === rest.byteLength || clears !== this.#clears) return true;
      rest = rest.subarray(n);
    }
    if (rest.byteLength === 0) return true;
    if (this.#queued + rest.byteLength > this.#cap) return false;
    // A copy of our own (`slice()` would not copy a Buffer, Bun's data event chunks).
    this.#queue.push(options.copy === true ? copyBytes(rest) : rest);
    this.#queued += rest.byteLength;
    if (this.#queued > this.#highWater) this.#highWater = this.#queued;
    return true;
  }

  /** Writes what the socket takes of the queue (call it on `drain`); true once it is empty. */
  flush(): boolean {
    const clears = this.#clears;
    while (this.#queue.length > 0) {
      const head = this.#queue[0];
      if (head === undefined) break;
      const n = this.#put(head);
      if (clears !== this.#clears) break;
      this.#queued -= n;
      if (n < head.byteLength) {
        this.#queue[0] = head.subarray(n);
        return false;
      }
      this.#queue.shift();
    }
    return this.#queue.length === 0;
  }

  /** Drops everything queued (the socket is gone); the counts stay. */
  clear(): void {
    this.#queue = [];
    this.#queued = 0;
    this.#clears++;
  }

  #put(bytes: Uint8Array): number {
    const n = Math.max(0, this.#sock.write(bytes));
    this.#written += n;
    return n;
  }
}

/** The most a `CopyingOutbox` keeps while nothing is queued. */
const RETAINED_BYTES = 8 * 1024 * 1024;

/**
 * The same contract as `Outbox` for a writer that reuses its buffer (`copy: true` on every
 * write): what the socket does not take is copied into one buffer kept for the connection
 * (grown to the most ever queued, compacted as it drains) instead of a fresh allocation per
 * short write, and `flush()` writes all of it in one call. The framed relay link's client
 * queues here: its messages come from one reused encode buffer. A buffer over
 * `RETAINED_BYTES` is let go when the queue empties, so an idle connection keeps little.
 */
export class CopyingOutbox {
  readonly #sock: OutboxSocket;
  readonly #cap: number;
  #buf = new Uint8Array(0);
  #start = 0;
  #end = 0;
  #highWater = 0;
  #written = 0;
  #clears = 0;

  constructor(sock: OutboxSocket, options: OutboxOptions = {}) {
    this.#sock = sock;
    this.#cap = options.maxQueuedBytes ?? Infinity;
  }

  get queued(): number {
    return this.#end - this.#start;
  }

  get maxQueued(): number {
    return this.#highWater;
  }

  get written(): number {
    return this.#written;
  }

  /** Writes `bytes` after whatever is queued; copies what the socket does not take. False past the cap. */
  write(bytes: Uint8Array): boolean {
    let rest = bytes;
    if (this.queued === 0) {
      const clears = this.#clears;
      const n = this.#put(rest);
      if (n === rest.byteLength || clears !== this.#clears) return true;
      rest = rest.subarray(n);
    }
    const queued = this.queued;
    if (queued + rest.byteLength > this.#cap) return false;
    if (this.#end + rest.byteLength > this.#buf.byteLength) {
      if (queued + rest.byteLength <= this.#buf.byteLength) {
        this.#buf.copyWithin(0, this.#start, this.#end);
      } else {
        const grown = new Uint8Array(Math.max(queued + rest.byteLength, this.#buf.byteLength * 2));
        copyInto(grown, 0, this.#buf.subarray(this.#start, this.#end));
        this.#buf = grown;
      }
      this.#start = 0;
      this.#end = queued;
    }
    copyInto(this.#buf, this.#end, rest);
    this.#end += rest.byteLength;
    if (this.queued > this.#highWater) this.#highWater = this.queued;
    return true;
  }

  /** Writes what the socket takes of the queue, in one call; true once it is empty. */
  flush(): boolean {
    if (this.queued === 0) return true;
    const clears = this.#clears;
    const n = this.#put(this.#buf.subarray(this.#start, this.#end));
    if (clears !== this.#clears) return this.queued === 0;
    this.#start += n;
    if (this.#start === this.#end) this.#emptied();
    return this.queued === 0;
  }

  clear(): void {
    this.#emptied();
    this.#clears++;
  }

  #emptied(): void {
    this.#start = this.#end = 0;
    if (this.#buf.byteLength > RETAINED_BYTES) this.#buf = new Uint8Array(0);
  }

  #put(bytes: Uint8Array): number {
    const n = Math.max(0, this.#sock.write(bytes));
    this.#written += n;
    return n;
  }
}
