/**
 * Splice bytes between pairs of sockets on a dedicated thread with epoll and splice(2) (bulk) or
 * recv/send (small messages) through bun:ffi, bypassing Bun's socket layer: the fast data path of
 * an L4 proxy once it has decided where a connection goes (fdsplice-engine.ts says which when).
 *
 * Why: Bun's sockets cost several microseconds of user time per event, copy every read into a
 * new buffer (and the garbage that makes), and in 1.4.5 pause()/resume() each add a spurious
 * drain, TCP_CORK and epoll_ctl. A proxy built on them trails nginx by ~15 % on latency and
 * throughput; the same splice on raw fds matches or beats it (scripts/bench/gateway.ts).
 *
 * Contract — the same as `Pipe` (pipe.ts), on file descriptors the splicer owns:
 * - `splice(a, b)` takes ownership of both fds (nonblocking sockets; the caller must not use or
 *   close them again). `takeSocketFd()` turns a Bun socket into such an fd.
 * - Backpressure: a read goes straight to the other socket; what it does not take is queued and
 *   the source is not read again until the queue is written. At most one read (256 KiB) per
 *   direction is held (in a queue, or in the kernel in the direction's pipe); `maxQueueBytes` caps a source that goes on sending after a hang-up.
 * - A FIN becomes a write half-close of the other side once its queued bytes are written; a
 *   socket that has both read a FIN and sent one is closed.
 * - When one side fails or hangs up, bytes queued for it are dropped; the survivor still gets
 *   every byte already read, then a FIN; its further input is read and dropped; it is closed when
 *   its own peer closes, or after `lingerMs` (reset if its bytes could not be written by then).
 * - `done` resolves (never rejects) when both sockets are closed, with the counts and the first
 *   error. `destroy()` resets both sockets at once.
 * - Byte totals per `tag` (a small integer the caller picks, e.g. one per port) are readable at
 *   any time without a round trip (`totals`), for metrics of connections still open.
 * The engine's thread is unref'd: it does not keep the process alive; `close()` stops it.
 */
import type { Socket } from "bun";
import { EFD_CLOEXEC, EFD_NONBLOCK, dupCloexec, setLingerReset, signalEventfd } from "../ffi/epoll.ts";
import { errno, libc, strerror } from "../ffi/libc.ts";
import { StoaError } from "./errors.ts";
import { type FromEngine, SPLICE_TAGS, type ToEngine } from "./fdsplice-engine.ts";
import { PIPE_LINGER_MS, PIPE_MAX_QUEUE_BYTES, type PipeStats } from "./pipe.ts";
import { workerEntry } from "./worker-entry.ts";

export interface SpliceOptions {
  /** Counter slot for `totals()`, 0 ≤ tag < SPLICE_TAGS. Default 0. */
  tag?: number;
  /** Bytes already read from `a`, written to `b` first. */
  toB?: Uint8Array;
  /** Bytes already read from `b`, written to `a` first. */
  toA?: Uint8Array;
  /** `a` already sent its FIN (forwarded after `toB`). */
  aEnded?: boolean;
  bEnded?: boolean;
  lingerMs?: number;
  maxQueueBytes?: number;
  /**
   * A stream that must never look complete when it was cut (a tunnel): a reset or error of
   * either socket resets the other at once, instead of the survivor's FIN; and both sockets
   * carry SO_LINGER 0 until they close in order, so that this process dying (its descriptors
   * closed by the kernel) resets them too. A FIN is forwarded as ever. Default false.
   */
  abortive?: boolean;
}

export interface Splice {
  readonly id: number;
  readonly done: Promise<PipeStats>;
}

/** Bytes moved so far for one tag: `aToB` and `bToA`. */
interface SpliceTotals {
  aToB: number;
  bToA: number;
}

export { SPLICE_TAGS };

/** How long `close()` waits for the engine to close its sockets before terminating the thread. */
const STOP_TIMEOUT_MS = 2_000;

/**
 * One engine thread and the splices it runs.
 *
 * @example
 * ```ts
 * const splicer = new FdSplicer();
 * // client: an accepted Bun socket; upstream: a connected one (both paused, nothing pending)
 * const s = splicer.splice(takeSocketFd(client), takeSocketFd(upstream), { toB: firstLine });
 * const stats = await s.done;
 * ```
 */
export class FdSplicer {
  readonly #worker: Worker;
  readonly #efd: number;
  readonly #control = new Int32Array(new SharedArrayBuffer(4));
  readonly #totals = new Float64Array(new SharedArrayBuffer(8 * SPLICE_TAGS * 2));
  readonly #pending = new Map<number, (stats: PipeStats) => void>();
  readonly #destroyAllWaiters: ((count: number) => void)[] = [];
  #nextId = 1;
  #alive = true;
  #fatal: string | null = null;
  #stopped: PromiseWithResolvers<void> | null = null;

  constructor() {
    this.#efd = libc().eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (this.#efd < 0) throw new StoaError("io", `eventfd: ${strerror(errno())}`);
    this.#worker = new Worker(
      workerEntry(new URL("./fdsplice-worker.ts", import.meta.url), "core/fdsplice-worker.js", "the fast data path is unavailable"),
    );
    this.#worker.unref();
    this.#worker.addEventListener("message", (event: MessageEvent<FromEngine>) => this.#onMessage(event.data));
    this.#worker.addEventListener("error", (event) => {
      this.#die(event instanceof ErrorEvent ? event.message : "the splice engine failed");
    });
    this.#send({
      type: "init",
      efd: this.#efd,
      control: this.#control.buffer as SharedArrayBuffer,
      totals: this.#totals.buffer as SharedArrayBuffer,
    });
  }

  /** False once the engine stopped or failed: every splice() ends at once then (make a new one). */
  get alive(): boolean {
    return this.#alive && this.#stopped === null;
  }

  /** Splices running now. */
  get active(): number {
    return this.#pending.size;
  }

  /** Takes ownership of fds `a` and `b` and splices them until both are closed. */
  splice(a: number, b: number, options: SpliceOptions = {}): Splice {
    const id = this.#nextId++;
    const tag = options.tag ?? 0;
    if (!Number.isInteger(tag) || tag < 0 || tag >= SPLICE_TAGS) {
      throw new StoaError("usage", `splice tag must be an integer in [0, ${SPLICE_TAGS}), got ${tag}`);
    }
    if (!this.#alive || this.#stopped !== null) {
      // Closed the way the splice would have ended them: an abortive one resets.
      if (options.abortive === true) {
        closeReset(a);
        closeReset(b);
      } else {
        libc().close(a);
        libc().close(b);
      }
      const error = new StoaError("closed", `the splice engine is gone${this.#fatal === null ? "" : `: ${this.#fatal}`}`);
      return { id, done: Promise.resolve(emptyStats(error)) };
    }
    const done = new Promise<PipeStats>((resolve) => this.#pending.set(id, resolve));
    this.#send({
      type: "add",
      id,
      a,
      b,
      tag,
      lingerMs: options.lingerMs ?? PIPE_LINGER_MS,
      maxQueueBytes: options.maxQueueBytes ?? PIPE_MAX_QUEUE_BYTES,
      toA: options.toA ?? null,
      toB: options.toB ?? null,
      aEnded: options.aEnded ?? false,
      bEnded: options.bEnded ?? false,
      abortive: options.abortive ?? false,
    });
    return { id, done };
  }

  /** Resets both sockets of splice `id` (no-op once it is done). */
  destroy(id: number, reason = "destroyed"): void {
    if (this.#alive && this.#pending.has(id)) this.#send({ type: "destroy", id, reason });
  }

  /** Resets every splice; resolves with how many there were. */
  destroyAll(reason = "destroyed"): Promise<number> {
    if (!this.#alive) return Promise.resolve(0);
    const counted = new Promise<number>((resolve) => this.#destroyAllWaiters.push(resolve));
    this.#send({ type: "destroyAll", reason });
    return counted;
  }

  /** Bytes moved so far under `tag`, including splices still running. */
  totals(tag: number): SpliceTotals {
    if (!Number.isInteger(tag) || tag < 0 || tag >= SPLICE_TAGS) {
      throw new StoaError("usage", `splice tag must be an integer in [0, ${SPLICE_TAGS}), got ${tag}`);
    }
    return { aToB: this.#totals[tag * 2] ?? 0, bToA: this.#totals[tag * 2 + 1] ?? 0 };
  }

  /** Resets every splice and stops the thread. */
  async close(): Promise<void> {
    if (!this.#alive) return;
    if (this.#stopped !== null) return this.#stopped.promise;
    this.#stopped = Promise.withResolvers<void>();
    this.#send({ type: "stop" });
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      this.#stopped.promise,
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, STOP_TIMEOUT_MS);
      }),
    ]);
    clearTimeout(timer);
    this.#die("closed");
  }

  #send(msg: ToEngine): void {
    // Count first: the engine leaves its loop to read messages only while one is outstanding.
    Atomics.add(this.#control, 0, 1);
    this.#worker.postMessage(msg);
    signalEventfd(this.#efd);
  }

  #onMessage(msg: FromEngine): void {
    switch (msg.type) {
      case "done": {
        const resolve = this.#pending.get(msg.id);
        this.#pending.delete(msg.id);
        resolve?.({
          bytesAtoB: msg.aToB,
          bytesBtoA: msg.bToA,
          maxQueuedAtoB: msg.maxQueuedAtoB,
          maxQueuedBtoA: msg.maxQueuedBtoA,
          error: msg.error === null ? null : new StoaError("io", msg.error),
        });
        return;
      }
      case "destroyed":
        this.#destroyAllWaiters.shift()?.(msg.count);
        return;
      case "stopped":
        this.#stopped?.resolve();
        return;
      case "fatal":
        this.#die(msg.message);
        return;
    }
  }

  /** The engine is gone: its splices end with an error (the process owns their fds still). */
  #die(why: string): void {
    if (!this.#alive) return;
    this.#alive = false;
    if (why !== "closed") this.#fatal = why;
    this.#worker.terminate();
    libc().close(this.#efd);
    const error = new StoaError("closed", `the splice engine stopped: ${why}`);
    for (const resolve of this.#pending.values()) resolve(emptyStats(error));
    this.#pending.clear();
    for (const w of this.#destroyAllWaiters.splice(0)) w(0);
    this.#stopped?.resolve();
  }
}

function emptyStats(error: Error): PipeStats {
  return { bytesAtoB: 0, bytesBtoA: 0, maxQueuedAtoB: 0, maxQueuedBtoA: 0, error };
}

/** Closes a descriptor of ours (never handed to a splicer) with a reset: a stream that cannot go on must not look complete. */
export function closeReset(fd: number): void {
  setLingerReset(fd, true);
  libc().close(fd);
}

/** A Bun socket's descriptor (Bun's own; not to be closed or kept), or -1 once it is closed. */
export function socketFd(sock: Socket<unknown>): number {
  // Missing from Bun's types, present on every TCP and Unix socket (measured in 1.4.5).
  const fd: unknown = Reflect.get(sock, "fd");
  return typeof fd === "number" && fd >= 0 ? fd : -1;
}

/**
 * Takes a Bun TCP or Unix socket's connection away from Bun: returns a new descriptor of the
 * same socket for `FdSplicer.splice`, and closes Bun's. Call it only while the socket is paused
 * and every byte Bun delivered has been dealt with; not for TLS sockets (their bytes are
 * encrypted). Bun's terminate() sets SO_LINGER for a reset and removes the fd from its loop;
 * closing one of two descriptors sends nothing, and the linger setting is put back.
 * Returns -1 when the socket has no descriptor (already closed).
 */
export function takeSocketFd(sock: Socket<unknown>): number {
  const fd = socketFd(sock);
  if (fd < 0) return -1;
  const dup = dupCloexec(fd);
  if (dup < 0) return -1;
  sock.terminate();
  setLingerReset(dup, false);
  return dup;
}
