/**
 * Splice bytes between two Bun sockets (TCP or Unix), both directions, with real backpressure.
 *
 * Contract:
 * - Bun delivers socket events only to the handlers given at listen/connect time, so a Pipe
 *   installs none: whoever owns the handlers routes `data`, `drain`, `end` and `close` into
 *   `onData`/`onDrain`/`onEnd`/`onClose`, or uses `pipeHandlers()` with a `PipeEnd` in
 *   `socket.data` (the Pipe attaches itself there when it is created).
 * - `socket.write()` may take fewer bytes than given and silently drops the rest. The unwritten
 *   tail is queued for that destination in a core/outbox.ts `Outbox` (copied, unless
 *   `freshChunks` says the caller never reuses a chunk), the source is paused, and the
 *   destination's `drain` flushes the queue and resumes the source. A healthy pipe therefore
 *   holds about one read (Bun reads at most 512 KiB at a time) per direction; `maxQueueBytes`
 *   is the hard cap for a source that ignores `pause()`.
 * - A FIN from one side becomes a write half-close (`shutdown()`) of the other, once the bytes
 *   queued for it are written. Both sockets need `allowHalfOpen: true` and an `end` handler, or
 *   Bun closes them at the peer's FIN and the reply is lost.
 * - When a side closes (or fails) the pipe ends. Bytes queued for the closed side are dropped.
 *   The surviving side still gets every byte already read from the closed one, then a FIN (not a
 *   reset: a reset cannot be forwarded faithfully, and delivering what was read is what a caller
 *   that counted the bytes expects). Its further input is read and discarded, so that closing it
 *   does not turn into a reset that destroys the bytes still in flight; it is closed when its peer
 *   closes, or after `lingerMs` (terminated if its queue could not be flushed by then).
 * - `done` resolves, never rejects, once both sockets are closed; errors are in its `error`.
 * - Setting TCP_NODELAY, timeouts and TLS is the caller's business.
 */

import type { Socket, SocketHandler } from "bun";
import { StoaError } from "./errors.ts";
import { Outbox } from "./outbox.ts";

/** Which socket an event belongs to: `a` is the one given first (usually the accepted client). */
type Side = "a" | "b";

/** The socket methods a pipe uses; every Bun `Socket` has them. */
export type PipeSocket = Pick<
  Socket<unknown>,
  "write" | "pause" | "resume" | "shutdown" | "end" | "terminate"
> & { data?: unknown };

/**
 * Put this shape (or an object extending it) in `socket.data` of sockets served by
 * `pipeHandlers()`. A Pipe created with such sockets fills in both fields.
 */
export interface PipeEnd {
  pipe: Pipe | null;
  side: Side;
}

/** Counts for one pipe. "Bytes" are bytes the destination socket accepted. */
export interface PipeStats {
  bytesAtoB: number;
  bytesBtoA: number;
  /** High-water mark of bytes held in user space for that direction. */
  maxQueuedAtoB: number;
  maxQueuedBtoA: number;
  /** The first error seen on either side, or why the pipe was destroyed; null for a clean end. */
  error: Error | null;
}

export interface PipeOptions {
  /** Bytes already read from `a` (e.g. a request line a gateway parsed); sent to `b` first. */
  initial?: Uint8Array;
  /** How long the surviving side may take to flush and close after the other closed. */
  lingerMs?: number;
  /** Per-direction cap on queued bytes; exceeding it destroys the pipe with `too_large`. */
  maxQueueBytes?: number;
  /**
   * The caller never reuses or changes a buffer it passed to `onData`, so an unwritten tail may
   * be queued as a view instead of a copy. True of chunks straight from Bun's `data` event:
   * Bun 1.4 copies every read into a new buffer. Saves copying most of a read (up to 512 KiB)
   * on every short write, which is the common case when streaming. Default false: copy.
   */
  freshChunks?: boolean;
}

/** Default grace for the surviving side to flush and close once its partner closed. */
export const PIPE_LINGER_MS = 5_000;

/**
 * Per-direction queue cap. A paused source stops after the read in progress (at most 512 KiB
 * in Bun 1.4), so a well-behaved pipe stays far below this; reaching it means a bug, not load.
 */
export const PIPE_MAX_QUEUE_BYTES = 16 * 1024 * 1024;

/** One socket of the pipe and the bytes waiting to be written to it. */
interface End {
  readonly side: Side;
  readonly sock: PipeSocket;
  /** FIN seen or socket closed: no more input. */
  readEnded: boolean;
  /** We sent a FIN with shutdown(). */
  writeShut: boolean;
  closed: boolean;
  /** Paused by this pipe (and only then resumed by it). */
  paused: boolean;
  readonly out: Outbox;
}

interface EarlyEvents {
  chunks: Uint8Array[];
  ended: boolean;
  closed: boolean;
  error: Error | undefined;
}

/**
 * Events `pipeHandlers()` saw before a pipe was attached to the socket. Bun runs the code
 * awaiting `Bun.connect` before the first `data` event (measured), so this is a safety net for
 * callers that do more work before creating the pipe.
 */
const early = new WeakMap<object, EarlyEvents>();

function newEnd(side: Side, sock: PipeSocket, out: Outbox): End {
  return { side, sock, readEnded: false, writeShut: false, closed: false, paused: false, out };
}

function isPipeEnd(value: unknown): value is PipeEnd {
  return typeof value === "object" && value !== null && "pipe" in value && "side" in value;
}

/**
 * A bidirectional splice between sockets `a` and `b`.
 *
 * @example
 * ```ts
 * // An L4 proxy: clients on TCP, the target on a Unix socket.
 * Bun.listen<PipeEnd>({
 *   hostname: "::", port: 8081, allowHalfOpen: true,
 *   socket: {
 *     ...pipeHandlers(),
 *     async open(client) {
 *       client.data = { pipe: null, side: "a" };
 *       client.pause(); // the pipe resumes it
 *       try {
 *         const target = await Bun.connect<PipeEnd>({
 *           unix: "/run/stoa/pub/p1/service.sock", allowHalfOpen: true,
 *           data: { pipe: null, side: "b" }, socket: pipeHandlers(),
 *         });
 *         const pipe = new Pipe(client, target);
 *         void pipe.done.then((s) => bytesIn.add(s.bytesAtoB));
 *       } catch {
 *         client.end();
 *       }
 *     },
 *   },
 * });
 * ```
 */
export class Pipe {
  /** Resolves with the final counts once both sockets are closed. Never rejects. */
  readonly done: Promise<PipeStats>;
  readonly #a: End;
  readonly #b: End;
  readonly #lingerMs: number;
  readonly #maxQueue: number;
  readonly #freshChunks: boolean;
  #error: Error | null = null;
  #finished = false;
  #linger: ReturnType<typeof setTimeout> | undefined;
  #resolve: (stats: PipeStats) => void = () => {};

  /**
   * Starts splicing at once: writes `options.initial` to `b`, replays anything `pipeHandlers()`
   * saw before, and resumes both sockets (pause `a` while dialling `b`; the pipe resumes it).
   * Create it synchronously after `await Bun.connect(...)`, or route through `pipeHandlers()`.
   */
  constructor(a: PipeSocket, b: PipeSocket, options: PipeOptions = {}) {
    this.#maxQueue = options.maxQueueBytes ?? PIPE_MAX_QUEUE_BYTES;
    this.#a = newEnd("a", a, new Outbox(a, { maxQueuedBytes: this.#maxQueue }));
    this.#b = newEnd("b", b, new Outbox(b, { maxQueuedBytes: this.#maxQueue }));
    this.#lingerMs = options.lingerMs ?? PIPE_LINGER_MS;
    this.#freshChunks = options.freshChunks ?? false;
    this.done = new Promise((resolve) => {
      this.#resolve = resolve;
    });
    // Attach before any I/O, so events fired from inside write()/end() reach this pipe.
    for (const end of [this.#a, this.#b]) {
      if (isPipeEnd(end.sock.data)) {
        end.sock.data.pipe = this;
        end.sock.data.side = end.side;
      }
    }
    if (options.initial !== undefined && options.initial.byteLength > 0) {
      this.#send(this.#a, this.#b, options.initial, false);
    }
    for (const end of [this.#a, this.#b]) {
      const seen = early.get(end.sock);
      if (seen === undefined) continue;
      early.delete(end.sock);
      for (const chunk of seen.chunks) this.onData(end.side, chunk);
      if (seen.ended) this.onEnd(end.side);
      if (seen.closed) this.onClose(end.side, seen.error);
    }
    for (const end of [this.#a, this.#b]) {
      if (!end.closed && !end.paused && !end.readEnded) end.sock.resume();
    }
  }

  /** Counts so far (final once `done` resolved). */
  get stats(): PipeStats {
    return {
      bytesAtoB: this.#b.out.written,
      bytesBtoA: this.#a.out.written,
      maxQueuedAtoB: this.#b.out.maxQueued,
      maxQueuedBtoA: this.#a.out.maxQueued,
      error: this.#error,
    };
  }

  /** Route the socket's `data` event here. */
  onData(side: Side, chunk: Uint8Array): void {
    if (side === "a") this.#send(this.#a, this.#b, chunk, this.#freshChunks);
    else this.#send(this.#b, this.#a, chunk, this.#freshChunks);
  }

  /** Route the socket's `drain` event here. */
  onDrain(side: Side): void {
    const dst = this.#end(side);
    if (dst.closed) return;
    if (this.#flush(dst)) this.#afterFlush(dst);
  }

  /** Route the socket's `end` event (the peer's FIN) here. */
  onEnd(side: Side): void {
    const src = this.#end(side);
    if (src.readEnded) return;
    src.readEnded = true;
    const dst = this.#peer(src);
    if (dst.out.queued === 0) this.#shutdownWrite(dst);
    this.#settle(src);
  }

  /**
   * Route the socket's `close` event here. Bun reports a FIN on a socket whose write side is
   * already shut as `close` without `end` (measured), which is why a close ends the pipe
   * gracefully rather than aborting it.
   */
  onClose(side: Side, error?: Error): void {
    const gone = this.#end(side);
    if (gone.closed) return;
    gone.closed = true;
    gone.readEnded = true;
    gone.paused = false;
    if (error !== undefined && this.#error === null) this.#error = error;
    gone.out.clear();
    const other = this.#peer(gone);
    if (!other.closed && this.#flush(other)) this.#afterFlush(other);
    if (other.closed) {
      this.#finish();
      return;
    }
    // Its input has nowhere to go now: read and drop it (see the header).
    if (other.paused) {
      other.paused = false;
      other.sock.resume();
    }
    this.#startLinger();
  }

  /** Abort: reset both connections now, dropping queued bytes. `error` lands in the stats. */
  destroy(error?: Error): void {
    if (error !== undefined && this.#error === null) this.#error = error;
    this.#closeSocket(this.#a, "terminate");
    this.#closeSocket(this.#b, "terminate");
  }

  #end(side: Side): End {
    return side === "a" ? this.#a : this.#b;
  }

  #peer(end: End): End {
    return end === this.#a ? this.#b : this.#a;
  }

  /** `fresh`: `chunk` is never reused by whoever passed it, so it may be queued without a copy. */
  #send(src: End, dst: End, chunk: Uint8Array, fresh: boolean): void {
    if (dst.closed) return; // input for a closed side is discarded
    // Copy unless told otherwise: a caller may reuse its read buffer, and only the tail is copied.
    if (!dst.out.write(chunk, { copy: !fresh })) {
      this.destroy(
        new StoaError(
          "too_large",
          `pipe queue for side ${dst.side} would exceed ${this.#maxQueue} bytes: the source ignored pause(); report this as a bug`,
        ),
      );
      return;
    }
    // Queued (nothing is when `dst` closed from inside the write): stop reading until its drain.
    if (dst.out.queued > 0 && !src.paused && !src.closed) {
      src.paused = true;
      src.sock.pause();
    }
  }

  /** Writes what is queued for `dst`; true when the queue is empty and `dst` still open. */
  #flush(dst: End): boolean {
    return dst.out.flush() && !dst.closed;
  }

  /** The queue for `dst` is empty: forward a pending FIN, or let the source read again. */
  #afterFlush(dst: End): void {
    const src = this.#peer(dst);
    if (src.readEnded) {
      this.#shutdownWrite(dst);
    } else if (src.paused) {
      src.paused = false;
      src.sock.resume();
    }
  }

  #shutdownWrite(end: End): void {
    if (!end.closed && !end.writeShut) {
      end.writeShut = true;
      end.sock.shutdown();
    }
    this.#settle(end);
  }

  /** Both halves of `end` are finished: release it now rather than wait for Bun to. */
  #settle(end: End): void {
    if (!end.closed && end.readEnded && end.writeShut) this.#closeSocket(end, "end");
  }

  #closeSocket(end: End, how: "end" | "terminate"): void {
    if (end.closed) return;
    if (how === "end") end.sock.end();
    else end.sock.terminate();
    // Bun fires `close` synchronously from end()/terminate() (measured), making this a no-op;
    // it keeps the pipe correct when the close event is not routed here.
    this.onClose(end.side);
  }

  #startLinger(): void {
    if (this.#linger !== undefined || this.#finished) return;
    this.#linger = setTimeout(() => {
      for (const end of [this.#a, this.#b]) {
        this.#closeSocket(end, end.out.queued > 0 ? "terminate" : "end");
      }
    }, this.#lingerMs);
  }

  #finish(): void {
    if (this.#finished) return;
    this.#finished = true;
    if (this.#linger !== undefined) clearTimeout(this.#linger);
    this.#resolve(this.stats);
  }
}

/**
 * Whether `pipeHandlers()` kept events for `sock` that no pipe has taken yet (see `early`): a
 * caller about to take the socket away from Bun must not lose them.
 */
export function hasEarlyEvents(sock: object): boolean {
  return early.has(sock);
}

/**
 * Socket handlers that route every event to the pipe in `socket.data` (a `PipeEnd`). Spread
 * them into your own handler object to add `open`, or call them from handlers that do more.
 * Events that arrive before a pipe is attached are kept (and the socket paused) until it is.
 *
 * @example
 * ```ts
 * const upstream = await Bun.connect<PipeEnd>({
 *   unix: path, allowHalfOpen: true,
 *   data: { pipe: null, side: "b" }, socket: pipeHandlers(),
 * });
 * new Pipe(client, upstream, { initial: alreadyRead });
 * ```
 */
export function pipeHandlers<D extends PipeEnd = PipeEnd>(): SocketHandler<D> {
  const pending = (s: Socket<D>): EarlyEvents => {
    let seen = early.get(s);
    if (seen === undefined) {
      seen = { chunks: [], ended: false, closed: false, error: undefined };
      early.set(s, seen);
    }
    return seen;
  };
  return {
    data(s, chunk) {
      const pipe = s.data.pipe;
      if (pipe !== null) return pipe.onData(s.data.side, chunk);
      s.pause();
      pending(s).chunks.push(new Uint8Array(chunk));
    },
    drain(s) {
      s.data.pipe?.onDrain(s.data.side);
    },
    end(s) {
      const pipe = s.data.pipe;
      if (pipe !== null) return pipe.onEnd(s.data.side);
      pending(s).ended = true;
    },
    close(s, error) {
      const pipe = s.data.pipe;
      if (pipe !== null) return pipe.onClose(s.data.side, error);
      const seen = pending(s);
      seen.closed = true;
      seen.error = error;
    },
    error(s, error) {
      // Bun calls this when a handler threw: the pipe's state can no longer be trusted.
      const pipe = s.data.pipe;
      if (pipe !== null) pipe.destroy(error);
      else s.terminate();
    },
  };
}
