/**
 * The splice engine: the loop that runs in fdsplice's Worker thread and moves bytes between the
 * two sockets of each splice with epoll + splice(2) through bun:ffi (the contract, and why, are
 * in fdsplice.ts). This module holds the loop and its state; fdsplice-worker.ts is the Worker
 * entry that feeds it messages.
 *
 * The loop blocks in epoll_wait, so the thread's event loop is frozen while it runs. New work
 * arrives as Worker messages, announced by a counter in shared memory and an eventfd in the epoll
 * set: when the eventfd fires and a message is outstanding, `run()` returns so Bun can deliver
 * it, and the message handler calls `run()` again once no message is outstanding.
 *
 * A direction that carries bulk bytes moves them in the kernel: splice(2) from the source socket
 * into a pipe, then from the pipe into the destination socket, so no byte is copied through this
 * thread. The pipe belongs to the destination end (made on the first bulk read, closed with the
 * end); what the destination did not take stays in the pipe and the source is paused (no
 * EPOLLIN) until the pipe is empty. Small messages (and a direction that can have no pipe, out of
 * descriptors, or whose destination is gone, its input read and dropped) take recv/send on one
 * shared read buffer: a read is written to the destination at once, and only the part the
 * destination did not take is copied into that destination's queue, again pausing the source.
 * Which of the two a direction uses follows the size of its reads (`SPLICE_FROM_BYTES`). The
 * bytes the host read before handing over (the first line's tail) start in the queue, so they are
 * written before any spliced byte. An end holds bytes in its queue or its pipe, never both (a
 * source is read only when its destination holds nothing, and while the pipe holds bytes into
 * the pipe): at most one read per direction.
 */
import { ptr } from "bun:ffi";
import { availableParallelism } from "node:os";
import { MSG_DONTWAIT, MSG_NOSIGNAL, errno, libc, strerror } from "../ffi/libc.ts";
import {
  EPOLL_CLOEXEC,
  EPOLL_CTL_ADD,
  EPOLL_CTL_DEL,
  EPOLL_CTL_MOD,
  EPOLL_DATA_WORD,
  EPOLL_EVENT_WORDS,
  EPOLLERR,
  EPOLLHUP,
  EPOLLIN,
  EPOLLOUT,
  SHUT_WR,
  epollCtl,
  openPipe,
  setLingerReset,
  spliceFds,
  wouldBlock,
} from "../ffi/epoll.ts";
import { describeError } from "./errors.ts";
import { fdLimit, fdReserve } from "./fdlimit.ts";

/**
 * How long the loop polls without sleeping after events (`#spin`). Unpinned on this 2-CPU VM, a
 * 1 KiB echo through the gateway took 86–91 µs (nginx 88–90) and 52 with a 50 µs spin. Not on one
 * CPU: there a spin only keeps the answering process from running.
 */
const SPIN_US = 50;
const SPIN = availableParallelism() > 1;
/** Fruitless spins in a row after which spinning stops for `SPIN_OFF_MS` (at most 0.4 % of a CPU lost so). */
const SPIN_FRUITLESS = 8;
const SPIN_OFF_MS = 100;
/** Bytes read per recv(); a full read is followed by another before going back to epoll. */
export const SPLICE_READ_BYTES = 256 * 1024;
/**
 * Capacity asked of each pipe (F_SETPIPE_SZ), and bytes per splice(2) into it. A one-way stream
 * through the gateway, pinned to one CPU, moved 1,411 MB/s with the default 64 KiB pipe, 1,607
 * with 256 KiB and 1,785 with 1 MiB (recv/send: 1,228; scripts/bench/gateway.ts, one run). 256 KiB
 * keeps what a slow reader costs at one read per direction, as with recv/send (here in the
 * kernel), and costs 64 pages of the user's pipe quota (fs.pipe-user-pages-soft, 16,384 by
 * default) per bulk direction; past that quota the kernel hands out smaller pipes, which work the
 * same, slower.
 */
const PIPE_BYTES = 256 * 1024;
/**
 * A recv() at least this large turns its direction to splice(2); a splice(2) smaller than
 * `RECV_BELOW_BYTES` turns it back. Small messages are cheaper on recv/send: a 1 KiB echo round
 * trip through the gateway took ~1 µs longer with every direction spliced (a small skb's bytes
 * are copied into a page for the pipe anyway, and the pipe adds its own bookkeeping), while bulk
 * reads are where splicing pays. Nor does a direction that only ever carries small messages
 * take a pipe (two descriptors) at all.
 */
const SPLICE_FROM_BYTES = 64 * 1024;
const RECV_BELOW_BYTES = 16 * 1024;
/** Reads in a row from one socket before others get a turn. */
const READS_PER_TURN = 4;
const MAX_EVENTS = 256;
/** Most counter slots (`tag`s) a caller may use for byte totals. */
export const SPLICE_TAGS = 8;

/** Engine ← host. `id`s are chosen by the host; fds become the engine's to close. */
export type ToEngine =
  | { type: "init"; efd: number; control: SharedArrayBuffer; totals: SharedArrayBuffer }
  | {
      type: "add";
      id: number;
      a: number;
      b: number;
      tag: number;
      lingerMs: number;
      maxQueueBytes: number;
      toA: Uint8Array | null;
      toB: Uint8Array | null;
      aEnded: boolean;
      bEnded: boolean;
      abortive: boolean;
    }
  | { type: "destroy"; id: number; reason: string }
  | { type: "destroyAll"; reason: string }
  | { type: "stop" };

/** Engine → host. */
export type FromEngine =
  | { type: "done"; id: number; aToB: number; bToA: number; maxQueuedAtoB: number; maxQueuedBtoA: number; error: string | null }
  | { type: "destroyed"; count: number }
  | { type: "stopped" }
  | { type: "fatal"; message: string };

interface End {
  readonly fd: number;
  readonly side: "a" | "b";
  peer: End;
  readonly splice: Splice;
  /** Bytes waiting to be written to this socket (copies of reads it could not take at once). */
  queue: Uint8Array[];
  queued: number;
  /** The pipe carrying bytes to this socket (-1 until its first splice, and once closed). */
  pipeR: number;
  pipeW: number;
  /** Bytes in that pipe, not yet written to this socket. */
  piped: number;
  /** No pipe could be made for this direction: it moves bytes with recv/send. */
  noPipe: boolean;
  /** Bytes come to this socket in bulk (large reads): they move by splice(2). */
  bulk: boolean;
  /** Most bytes held for this socket at once, in its queue or its pipe. */
  maxQueued: number;
  written: number;
  readEnded: boolean;
  writeShut: boolean;
  closed: boolean;
  /** Current epoll interest, while in the epoll set. */
  interest: number;
  /**
   * Out of the epoll set: a paused source that hung up. Epoll reports a hang-up whatever the
   * interest, and reading the source then would pull everything its kernel buffer holds into
   * the peer's queue; so it waits outside the set until its peer's queue is written, and the
   * splice lingers meanwhile (a peer that never reads again is not waited for forever).
   */
  parked: boolean;
}

interface Splice {
  readonly id: number;
  readonly tag: number;
  readonly lingerMs: number;
  readonly maxQueue: number;
  a: End;
  b: End;
  error: string | null;
  /** performance.now() deadline for the surviving side once the other closed; 0 = none. */
  lingerAt: number;
  finished: boolean;
  /**
   * A failure of either socket resets the other at once (no FIN), and both carry SO_LINGER 0
   * until they close in order, so that even this process dying resets them (fdsplice.ts).
   */
  readonly abortive: boolean;
}

/** The libc calls, looked up once: this module only ever runs in the engine's thread. */
const S = libc();

export class SpliceEngine {
  readonly #post: (msg: FromEngine) => void;
  readonly #ep: number;
  #efd = -1;
  /** [0]: messages the host has posted (Atomics). */
  #control: Int32Array | null = null;
  /** Bytes moved per tag: [tag * 2] a→b, [tag * 2 + 1] b→a. */
  #totals: Float64Array | null = null;
  #processed = 0;
  #running = false;
  #stopped = false;
  /** The last epoll_wait found events; spinning state (`#spin`). */
  #active = false;
  #fruitless = 0;
  #spinOffUntil = 0;
  readonly #ends: (End | undefined)[] = [];
  readonly #splices = new Map<number, Splice>();
  readonly #lingering = new Set<Splice>();
  readonly #buf = new Uint8Array(SPLICE_READ_BYTES);
  readonly #bufPtr = ptr(this.#buf);
  readonly #events = new Uint32Array(MAX_EVENTS * EPOLL_EVENT_WORDS);
  readonly #eventsPtr = ptr(this.#events);
  readonly #counter = new BigUint64Array(1);

  constructor(post: (msg: FromEngine) => void) {
    this.#post = post;
    this.#ep = S.epoll_create1(EPOLL_CLOEXEC);
    if (this.#ep < 0) throw new Error(`epoll_create1: ${strerror(errno())}`);
  }

  /** Handles one host message; runs the loop when no other message is outstanding. */
  onMessage(msg: ToEngine): void {
    this.#processed++;
    if (this.#stopped) return;
    switch (msg.type) {
      case "init":
        this.#efd = msg.efd;
        this.#control = new Int32Array(msg.control);
        this.#totals = new Float64Array(msg.totals);
        if (epollCtl(this.#ep, EPOLL_CTL_ADD, msg.efd, EPOLLIN) < 0) {
          throw new Error(`epoll_ctl(eventfd): ${strerror(errno())}`);
        }
        break;
      case "add":
        this.#add(msg);
        break;
      case "destroy": {
        const s = this.#splices.get(msg.id);
        if (s !== undefined) this.#destroy(s, msg.reason);
        break;
      }
      case "destroyAll": {
        const count = this.#splices.size;
        for (const s of [...this.#splices.values()]) this.#destroy(s, msg.reason);
        this.#post({ type: "destroyed", count });
        break;
      }
      case "stop":
        for (const s of [...this.#splices.values()]) this.#destroy(s, "the splice engine stopped");
        this.#stopped = true;
        S.close(this.#ep);
        this.#post({ type: "stopped" });
        return;
    }
    if (this.#control !== null && Atomics.load(this.#control, 0) === this.#processed) this.#run();
  }

  #add(msg: Extract<ToEngine, { type: "add" }>): void {
    const splice: Splice = {
      id: msg.id,
      tag: msg.tag,
      lingerMs: msg.lingerMs,
      maxQueue: msg.maxQueueBytes,
      a: undefined as unknown as End,
      b: undefined as unknown as End,
      error: null,
      lingerAt: 0,
      finished: false,
      abortive: msg.abortive,
    };
    if (msg.abortive) {
      setLingerReset(msg.a, true);
      setLingerReset(msg.b, true);
    }
    const a = newEnd(msg.a, "a", splice);
    const b = newEnd(msg.b, "b", splice);
    a.peer = b;
    b.peer = a;
    splice.a = a;
    splice.b = b;
    this.#splices.set(msg.id, splice);
    this.#ends[a.fd] = a;
    this.#ends[b.fd] = b;
    for (const end of [a, b]) {
      if (epollCtl(this.#ep, EPOLL_CTL_ADD, end.fd, 0) < 0) {
        this.#fail(end, `epoll_ctl: ${strerror(errno())}`);
        return;
      }
    }
    // Bytes the host read before handing over go first, in order.
    if (msg.toB !== null && msg.toB.byteLength > 0) this.#enqueue(b, msg.toB);
    if (msg.toA !== null && msg.toA.byteLength > 0) this.#enqueue(a, msg.toA);
    if (msg.aEnded) this.#eof(a);
    if (msg.bEnded) this.#eof(b);
    for (const end of [a, b]) {
      if (!end.closed) this.#flush(end);
    }
    for (const end of [a, b]) this.#updateInterest(end);
  }

  /**
   * Right after events, polls epoll without sleeping for up to `SPIN_US` (when the thread may run
   * on more than one CPU): the other side's answer usually comes within that, and then it does
   * not wait for this thread to be woken on another CPU (tens of µs in a VM). Spins that find
   * nothing `SPIN_FRUITLESS` times in a row turn it off for `SPIN_OFF_MS`, so a connection that
   * does not answer quickly costs at most that share of a CPU. Returns the events found (0: block).
   */
  #spin(): number {
    if (!SPIN || !this.#active) return 0;
    const now = performance.now();
    if (now < this.#spinOffUntil) return 0;
    const until = now + SPIN_US / 1000;
    do {
      const n = S.epoll_wait(this.#ep, this.#eventsPtr, MAX_EVENTS, 0);
      if (n !== 0) {
        this.#fruitless = 0;
        return n;
      }
    } while (performance.now() < until);
    if (++this.#fruitless >= SPIN_FRUITLESS) {
      this.#fruitless = 0;
      this.#spinOffUntil = performance.now() + SPIN_OFF_MS;
    }
    return 0;
  }

  /** The loop; returns when a host message is outstanding. */
  #run(): void {
    if (this.#running || this.#stopped) return;
    this.#running = true;
    try {
      for (;;) {
        let n = this.#spin();
        if (n === 0) n = S.epoll_wait(this.#ep, this.#eventsPtr, MAX_EVENTS, this.#lingerTimeout());
        this.#active = n > 0;
        if (n < 0) {
          if (wouldBlock()) continue;
          throw new Error(`epoll_wait: ${strerror(errno())}`);
        }
        let wake = false;
        for (let i = 0; i < n; i++) {
          const base = i * EPOLL_EVENT_WORDS;
          const events = this.#events[base] ?? 0;
          const fd = this.#events[base + EPOLL_DATA_WORD] ?? -1;
          if (fd === this.#efd) {
            wake = true;
            continue;
          }
          const end = this.#ends[fd];
          if (end === undefined || end.closed) continue;
          try {
            this.#onEvent(end, events);
          } catch (err) {
            // A bug: cost this splice, never the others.
            this.#destroy(end.splice, `internal error: ${describeError(err)}`);
          }
        }
        if (this.#lingering.size > 0) this.#expireLinger();
        if (wake) {
          S.read(this.#efd, ptr(this.#counter), 8);
          if (this.#control !== null && Atomics.load(this.#control, 0) !== this.#processed) return;
        }
      }
    } finally {
      this.#running = false;
    }
  }

  #onEvent(end: End, events: number): void {
    if ((events & EPOLLOUT) !== 0 && held(end) > 0) {
      this.#flush(end);
      if (end.closed) return;
    }
    if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) === 0) return;
    if (!end.readEnded) {
      const peer = end.peer;
      const paused = !peer.closed && held(peer) > 0;
      // A paused source read after an error would need room in a pipe that is full: it waits too.
      if (paused && ((events & (EPOLLIN | EPOLLERR)) === 0 || peer.piped > 0)) this.#park(end);
      else this.#read(end);
    } else if ((events & (EPOLLHUP | EPOLLERR)) !== 0) {
      // Nothing more to read, and the other end is gone entirely (a hang-up or an error):
      // writes to it can only fail, so it is closed like a failed socket.
      this.#fail(end, (events & EPOLLERR) !== 0 ? "connection failed" : null);
    }
  }

  /** Reads from `src` and writes to its peer (or discards, if the peer is closed). */
  #read(src: End): void {
    const dst = src.peer;
    for (let turn = 0; turn < READS_PER_TURN; turn++) {
      // Bytes in the pipe go first: while it holds any, a read goes there too (order kept).
      if (!dst.closed && (dst.piped > 0 || (dst.bulk && dst.queued === 0 && this.#hasPipe(dst)))) {
        // The pipe is empty here (a source is read only then; after a hang-up it is parked while
        // the pipe holds bytes), so EAGAIN means the socket is.
        const r = spliceFds(src.fd, dst.pipeW, PIPE_BYTES);
        if (r < 0) {
          if (!wouldBlock()) this.#fail(src, strerror(errno()));
          return;
        }
        if (r === 0) {
          this.#eof(src);
          return;
        }
        dst.piped += r;
        this.#drainPipe(dst);
        if (dst.closed) continue; // src is now the survivor: its data is discarded from here on
        if (dst.piped > 0) {
          if (dst.piped > dst.maxQueued) dst.maxQueued = dst.piped;
          this.#updateInterest(dst);
          this.#updateInterest(src);
          return;
        }
        if (r < RECV_BELOW_BYTES) dst.bulk = false;
        if (r < PIPE_BYTES) return;
        continue;
      }
      const r = S.recv(src.fd, this.#bufPtr, SPLICE_READ_BYTES, MSG_DONTWAIT);
      if (r < 0) {
        if (wouldBlock()) return;
        this.#fail(src, strerror(errno()));
        return;
      }
      if (r === 0) {
        this.#eof(src);
        return;
      }
      if (dst.closed) continue; // the survivor's input is read and dropped (fdsplice.ts)
      if (r >= SPLICE_FROM_BYTES) dst.bulk = true;
      if (dst.queued > 0) {
        // Only after a hang-up of a paused source: keep what it had sent, bounded.
        this.#enqueue(dst, this.#buf.slice(0, r));
        return;
      }
      let w = S.send(dst.fd, this.#bufPtr, r, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (w < 0) {
        if (!wouldBlock()) {
          this.#fail(dst, strerror(errno()));
          continue; // src is now the survivor: its data is discarded from here on
        }
        w = 0;
      }
      this.#count(dst, w);
      if (w < r) {
        this.#enqueue(dst, this.#buf.slice(w, r));
        return;
      }
      if (r < SPLICE_READ_BYTES) return;
    }
  }

  /** Queues `bytes` (owned by the engine from now on) for `dst` and pauses its source. */
  #enqueue(dst: End, bytes: Uint8Array): void {
    const splice = dst.splice;
    if (dst.queued + bytes.byteLength > splice.maxQueue) {
      this.#destroy(splice, `queue for side ${dst.side} would exceed ${splice.maxQueue} bytes`);
      return;
    }
    dst.queue.push(bytes);
    dst.queued += bytes.byteLength;
    if (dst.queued > dst.maxQueued) dst.maxQueued = dst.queued;
    this.#updateInterest(dst);
    this.#updateInterest(dst.peer);
  }

  /** A paused source hung up: out of the set until its peer drains (see `parked`). */
  #park(end: End): void {
    epollCtl(this.#ep, EPOLL_CTL_DEL, end.fd, 0);
    end.parked = true;
    end.interest = 0;
    const splice = end.splice;
    if (splice.lingerAt === 0) {
      splice.lingerAt = performance.now() + splice.lingerMs;
      this.#lingering.add(splice);
    }
  }

  /** True when `dst` has a pipe to splice into, made now if need be (false: use recv/send). */
  #hasPipe(dst: End): boolean {
    if (dst.pipeR >= 0) return true;
    if (dst.noPipe) return false;
    const fds = openPipe(PIPE_BYTES);
    if (fds === null) {
      dst.noPipe = true;
      return false;
    }
    // A pipe only saves copies: it never takes descriptors from the reserve (core/fdlimit.ts).
    if (Math.max(...fds) >= fdLimit() - fdReserve()) {
      S.close(fds[0]);
      S.close(fds[1]);
      dst.noPipe = true;
      return false;
    }
    [dst.pipeR, dst.pipeW] = fds;
    return true;
  }

  /** Splices what `dst`'s pipe holds into `dst`; what it does not take stays there. */
  #drainPipe(dst: End): void {
    const w = spliceFds(dst.pipeR, dst.fd, dst.piped);
    if (w < 0) {
      if (!wouldBlock()) this.#fail(dst, strerror(errno()));
      return;
    }
    this.#count(dst, w);
    dst.piped -= w;
  }

  /** Writes what is queued for `dst`. */
  #flush(dst: End): void {
    while (dst.queue.length > 0) {
      const head = dst.queue[0];
      if (head === undefined) break;
      const w = S.send(dst.fd, ptr(head), head.byteLength, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (w < 0) {
        if (wouldBlock()) break;
        this.#fail(dst, strerror(errno()));
        return;
      }
      this.#count(dst, w);
      dst.queued -= w;
      if (w < head.byteLength) {
        dst.queue[0] = head.subarray(w);
        break;
      }
      dst.queue.shift();
    }
    if (dst.piped > 0) {
      this.#drainPipe(dst);
      if (dst.closed) return;
    }
    if (held(dst) === 0) {
      const src = dst.peer;
      if (src.readEnded || src.closed) this.#shutWrite(dst);
    }
    if (!dst.closed) this.#updateInterest(dst);
    if (!dst.peer.closed) this.#updateInterest(dst.peer);
  }

  #count(dst: End, n: number): void {
    if (n <= 0) return;
    dst.written += n;
    const totals = this.#totals;
    if (totals === null) return;
    const slot = dst.splice.tag * 2 + (dst.side === "b" ? 0 : 1);
    totals[slot] = (totals[slot] ?? 0) + n;
  }

  /** `src` sent its FIN: forward it once the bytes queued for the peer are written. */
  #eof(src: End): void {
    if (src.readEnded) return;
    src.readEnded = true;
    const dst = src.peer;
    if (held(dst) === 0) this.#shutWrite(dst);
    this.#settle(src);
    if (!src.closed) this.#updateInterest(src);
  }

  #shutWrite(end: End): void {
    if (end.closed || end.writeShut) return;
    end.writeShut = true;
    S.shutdown(end.fd, SHUT_WR);
    this.#settle(end);
  }

  /** Both halves of `end` are finished: close it. */
  #settle(end: End): void {
    if (!end.closed && end.readEnded && end.writeShut) this.#closeEnd(end, false);
  }

  /**
   * `end` failed (or hung up): close it, drop what was queued for it; the survivor gets every
   * byte already read from it, then a FIN, and lingers (fdsplice.ts).
   */
  #fail(end: End, error: string | null): void {
    if (end.closed) return;
    const splice = end.splice;
    if (error !== null && splice.abortive) {
      this.#destroy(splice, error);
      return;
    }
    if (error !== null && splice.error === null) splice.error = error;
    end.queue = [];
    end.queued = 0;
    end.piped = 0;
    this.#closeEnd(end, true);
  }

  #closeEnd(end: End, reset: boolean): void {
    if (end.closed) return;
    end.closed = true;
    end.readEnded = true;
    if (!end.parked) epollCtl(this.#ep, EPOLL_CTL_DEL, end.fd, 0);
    end.parked = false;
    // An abortive splice's sockets carry SO_LINGER 0 from the start: only a reset keeps it.
    if (reset) setLingerReset(end.fd, true);
    else if (end.splice.abortive) setLingerReset(end.fd, false);
    S.close(end.fd);
    if (this.#ends[end.fd] === end) this.#ends[end.fd] = undefined;
    // Its pipe goes with it: what it held was for this socket only.
    if (end.pipeR >= 0) {
      S.close(end.pipeR);
      S.close(end.pipeW);
      end.pipeR = -1;
      end.pipeW = -1;
    }
    end.piped = 0;
    const other = end.peer;
    const splice = end.splice;
    if (other.closed) {
      this.#finish(splice);
      return;
    }
    // The survivor: forward the FIN once its queue is written, read and drop its input.
    if (held(other) === 0) this.#shutWrite(other);
    if (other.closed) return;
    this.#updateInterest(other);
    if (splice.lingerAt === 0) {
      splice.lingerAt = performance.now() + splice.lingerMs;
      this.#lingering.add(splice);
    }
  }

  /** Resets both sockets now, dropping queued bytes. */
  #destroy(splice: Splice, reason: string): void {
    if (splice.finished) return;
    if (splice.error === null) splice.error = reason;
    for (const end of [splice.a, splice.b]) {
      end.queue = [];
      end.queued = 0;
      end.piped = 0;
      end.writeShut = true; // no FIN to the second end: before its reset it would make a cut stream look complete
    }
    this.#closeEnd(splice.a, true);
    this.#closeEnd(splice.b, true);
  }

  #finish(splice: Splice): void {
    if (splice.finished) return;
    splice.finished = true;
    this.#splices.delete(splice.id);
    this.#lingering.delete(splice);
    this.#post({
      type: "done",
      id: splice.id,
      aToB: splice.b.written,
      bToA: splice.a.written,
      maxQueuedAtoB: splice.b.maxQueued,
      maxQueuedBtoA: splice.a.maxQueued,
      error: splice.error,
    });
  }

  /**
   * What the socket should be polled for: input while its peer can take more (or is closed, so
   * input is dropped), output while bytes are queued for it.
   */
  #updateInterest(end: End): void {
    if (end.closed) return;
    let want = 0;
    if (!end.readEnded && (end.peer.closed || held(end.peer) === 0)) want |= EPOLLIN;
    if (held(end) > 0) want |= EPOLLOUT;
    if (end.parked) {
      if (want === 0) return;
      // Its peer caught up: back into the set, and no longer idle.
      end.parked = false;
      end.interest = want;
      epollCtl(this.#ep, EPOLL_CTL_ADD, end.fd, want);
      const splice = end.splice;
      if (!end.peer.closed && splice.lingerAt !== 0) {
        splice.lingerAt = 0;
        this.#lingering.delete(splice);
      }
      return;
    }
    if (want === end.interest) return;
    end.interest = want;
    epollCtl(this.#ep, EPOLL_CTL_MOD, end.fd, want);
  }

  #lingerTimeout(): number {
    if (this.#lingering.size === 0) return -1;
    let soonest = Number.POSITIVE_INFINITY;
    for (const s of this.#lingering) if (s.lingerAt < soonest) soonest = s.lingerAt;
    return Math.max(0, Math.ceil(soonest - performance.now()));
  }

  #expireLinger(): void {
    const now = performance.now();
    for (const s of [...this.#lingering]) {
      if (s.lingerAt > now) continue;
      this.#lingering.delete(s);
      for (const end of [s.a, s.b]) {
        // Graceful if nothing is left to write, else a reset (its bytes cannot be delivered).
        if (!end.closed) this.#closeEnd(end, held(end) > 0);
      }
    }
  }
}

/** Bytes held for `end`: in its queue or in its pipe (never both at once). */
function held(end: End): number {
  return end.queued + end.piped;
}

function newEnd(fd: number, side: "a" | "b", splice: Splice): End {
  return {
    fd,
    side,
    peer: undefined as unknown as End,
    splice,
    queue: [],
    queued: 0,
    pipeR: -1,
    pipeW: -1,
    piped: 0,
    noPipe: false,
    bulk: false,
    maxQueued: 0,
    written: 0,
    readEnded: false,
    writeShut: false,
    closed: false,
    interest: 0,
    parked: false,
  };
}
