/**
 * One subscriber's bounded outgoing queue: the fan-out policy, apart from any socket.
 *
 * Contract:
 * - `offer(frame)` writes at once while the sink takes data; once a write reports backpressure
 *   (Bun's `send` returned -1: the frame is buffered in the socket, which is full), frames queue
 *   here until the sink's `drain`. So at most one frame ever waits inside the socket, and this
 *   queue is the only place a slow subscriber can pile data up.
 * - The queue is bounded by `maxMessages` and `maxBytes` (a frame larger than `maxBytes` still
 *   goes through alone). When a frame would overflow it:
 *   - "drop-oldest": the oldest queued frames are dropped until it fits; `onDrop(n)` counts
 *     them and a gap notice (`gapFrame(next, dropped)`, null for none) goes out just before the
 *     next frame that is sent, with that frame's seq;
 *   - "disconnect": the queue is cleared and the sink closed with `CLOSE_TOO_SLOW`.
 * - `offer` never blocks and never throws: a slow subscriber costs the publisher a queue push.
 * - `replay(frames)` puts history frames ahead of everything offered later: they go out in order
 *   at the sink's pace and are outside the bounds (the history holds them anyway; this only
 *   keeps references), so a subscriber starting at the oldest value is never dropped or
 *   disconnected for the history itself. Values offered meanwhile queue behind them, bounded.
 * - `drain()` is the sink's drain event. `flushAll()` pushes everything queued into the sink,
 *   ignoring backpressure, for a publisher that is stopping.
 */
import { CLOSE_TOO_SLOW, type QueueLimits, type SlowPolicy } from "./protocol.ts";

/** An encoded frame, shared by every subscriber of one kind. */
export interface Frame {
  readonly seq: number;
  readonly data: string | Uint8Array;
  /** Bytes on the wire (UTF-8 length for text). */
  readonly size: number;
}

/** Bun's send status: -1 buffered under backpressure, 0 dropped (connection gone), else bytes sent. */
type SendStatus = number;

/** The socket side, as a subscriber queue needs it. */
export interface Sink {
  send(data: string | Uint8Array): SendStatus;
  close(code: number, reason: string): void;
}

interface SubscriberQueueOptions {
  limits: QueueLimits;
  policy: SlowPolicy;
  /** The gap notice to send before frame `next` after `dropped` frames were dropped; null for none. */
  gapFrame: (next: number, dropped: number) => string | Uint8Array | null;
  /** `n` queued frames were just dropped (drop-oldest). */
  onDrop?: (n: number) => void;
  /** The sink was closed for overflowing (disconnect). */
  onOverflow?: () => void;
}

/** One subscriber's queue; see the module header. */
export class SubscriberQueue {
  // Slots before `#head` are already sent or dropped; cleared so they can be collected.
  #queue: (Frame | undefined)[] = [];
  #head = 0;
  #bytes = 0;
  #blocked = false;
  /** Frames dropped since the last gap notice went out. */
  #pendingGap = 0;
  #done = false;
  /** History frames to send before the queue (`replay`), from `#backlogHead` on. */
  #backlog: readonly Frame[] = [];
  #backlogHead = 0;
  readonly #sink: Sink;
  readonly #options: SubscriberQueueOptions;

  constructor(sink: Sink, options: SubscriberQueueOptions) {
    this.#sink = sink;
    this.#options = options;
  }

  /** Frames waiting in the queue. */
  get length(): number {
    return this.#queue.length - this.#head;
  }

  /** Bytes waiting in the queue. */
  get queuedBytes(): number {
    return this.#bytes;
  }

  /** Nothing queued and the socket took the last write: everything is on its way. */
  get idle(): boolean {
    return !this.#blocked && this.length === 0 && this.backlogLeft === 0 && !this.#done;
  }

  /** History frames not sent yet. */
  get backlogLeft(): number {
    return this.#backlog.length - this.#backlogHead;
  }

  /** Sends `frames` (in order) before anything offered from now on; see the module header. */
  replay(frames: readonly Frame[]): void {
    if (this.#done || frames.length === 0) return;
    this.#backlog = this.backlogLeft === 0 ? frames : [...this.#backlog.slice(this.#backlogHead), ...frames];
    this.#backlogHead = 0;
    if (!this.#blocked) this.#pump(false);
  }

  /** Whether the queue is finished (closed for overflow, or `stop()`ped). */
  get closed(): boolean {
    return this.#done;
  }

  offer(frame: Frame): void {
    if (this.#done) return;
    if (!this.#blocked && this.length === 0 && this.backlogLeft === 0) {
      this.#write(frame);
      return;
    }
    const { maxMessages, maxBytes } = this.#options.limits;
    let dropped = 0;
    while (this.length > 0 && (this.length >= maxMessages || this.#bytes + frame.size > maxBytes)) {
      if (this.#options.policy === "disconnect") {
        this.#overflow();
        return;
      }
      this.#shift();
      dropped++;
    }
    if (dropped > 0) {
      this.#pendingGap += dropped;
      this.#options.onDrop?.(dropped);
    }
    this.#queue.push(frame);
    this.#bytes += frame.size;
  }

  /** The socket has room again: send queued frames until it is full or the queue is empty. */
  drain(): void {
    if (this.#done) return;
    this.#blocked = false;
    this.#pump(false);
  }

  /** Hand every queued frame to the socket now, backpressure or not (the publisher is stopping). */
  flushAll(): void {
    if (this.#done) return;
    this.#pump(true);
  }

  /** Forget the queue; later offers are ignored (the connection is closing or closed). */
  stop(): void {
    this.#done = true;
    this.#queue = [];
    this.#head = 0;
    this.#bytes = 0;
    this.#backlog = [];
    this.#backlogHead = 0;
  }

  #pump(force: boolean): void {
    while ((force || !this.#blocked) && this.backlogLeft > 0 && !this.#done) {
      const frame = this.#backlog[this.#backlogHead++];
      if (frame !== undefined) this.#write(frame);
    }
    if (this.backlogLeft === 0 && this.#backlog.length > 0) {
      this.#backlog = [];
      this.#backlogHead = 0;
    }
    if (this.backlogLeft > 0) return;
    while ((force || !this.#blocked) && this.length > 0 && !this.#done) {
      const frame = this.#queue[this.#head];
      if (frame === undefined) break;
      if (this.#pendingGap > 0) {
        const gap = this.#options.gapFrame(frame.seq, this.#pendingGap);
        this.#pendingGap = 0;
        if (gap !== null && !this.#put(gap)) continue;
      }
      this.#shift();
      this.#write(frame);
    }
  }

  #write(frame: Frame): void {
    this.#put(frame.data);
  }

  /** Sends; false when the socket is now backed up (or gone). */
  #put(data: string | Uint8Array): boolean {
    const status = this.#sink.send(data);
    if (status === -1) {
      this.#blocked = true;
      return false;
    }
    if (status === 0) {
      // Bun dropped it: the connection is closing; its close event will clean up.
      this.stop();
      return false;
    }
    return true;
  }

  #shift(): void {
    const frame = this.#queue[this.#head];
    this.#queue[this.#head] = undefined;
    this.#head++;
    if (frame !== undefined) this.#bytes -= frame.size;
    // Compact now and then, so the array does not grow with everything ever queued.
    if (this.#head >= 1024 && this.#head * 2 >= this.#queue.length) {
      this.#queue = this.#queue.slice(this.#head);
      this.#head = 0;
    }
  }

  #overflow(): void {
    const { maxMessages, maxBytes } = this.#options.limits;
    this.stop();
    this.#options.onOverflow?.();
    this.#sink.close(CLOSE_TOO_SLOW, `too slow: more than ${maxMessages} messages or ${maxBytes} bytes queued`);
  }
}
