/**
 * io_uring through libc `syscall()` and `mmap()`: `probeIoUring()` (whether this kernel lets
 * this process create a ring at all; `stoa doctor` asks) and `IoUring`, a minimal ring for the
 * supervisor's data plane — RECV/SEND on sockets, a multishot POLL_ADD on a socket, READ on an
 * eventfd, ASYNC_CANCEL of one operation by its user_data, submit and wait with a bounded
 * timeout, reap completions by their user_data.
 *
 * Opcodes used (enum io_uring_op in linux/io_uring.h): POLL_ADD 6 (sqe.len IORING_POLL_ADD_MULTI:
 * one completion per readiness event, each flagged IORING_CQE_F_MORE while it stays armed;
 * Linux ≥ 5.13), ASYNC_CANCEL 14 (sqe.fd -1, sqe.addr = the user_data of the operation to
 * cancel), READ 22, SEND 26, RECV 27 (with MSG_DONTWAIT in its flags it never waits: no data is
 * -EAGAIN at once, instead of a poll armed inside the kernel for it).
 *
 * Layouts (linux/io_uring.h; all little-endian, the same on x86_64 and aarch64):
 *
 * struct io_uring_params (120 bytes): u32 sq_entries @0, cq_entries @4, flags @8,
 *   sq_thread_cpu @12, sq_thread_idle @16, features @20, wq_fd @24, resv[3] @28,
 *   struct io_sqring_offsets sq_off @40, struct io_cqring_offsets cq_off @80.
 * struct io_sqring_offsets (40 bytes): u32 head @0, tail @4, ring_mask @8, ring_entries @12,
 *   flags @16, dropped @20, array @24, resv1 @28, u64 user_addr @32.
 * struct io_cqring_offsets (40 bytes): u32 head @0, tail @4, ring_mask @8, ring_entries @12,
 *   overflow @16, cqes @20, flags @24, resv1 @28, u64 user_addr @32.
 * struct io_uring_sqe (64 bytes): u8 opcode @0, u8 flags @1, u16 ioprio @2, s32 fd @4,
 *   u64 off @8, u64 addr @16, u32 len @24, u32 op flags (msg_flags, rw_flags) @28,
 *   u64 user_data @32, u16 buf_index @40, u16 personality @42, s32 splice_fd_in @44,
 *   u64 addr3 @48, u64 pad @56.
 * struct io_uring_cqe (16 bytes): u64 user_data @0, s32 res @8, u32 flags @12.
 * struct io_uring_getevents_arg (24 bytes): u64 sigmask @0, u32 sigmask_sz @8,
 *   u32 min_wait_usec @12, u64 ts @16 (a pointer to struct __kernel_timespec {s64 sec, s64 nsec}).
 *
 * Memory ordering. The kernel publishes with smp_store_release and reads with smp_load_acquire
 * (the SQ tail it reads, the CQ tail it writes, the heads the other way round). Here the four
 * counters are read and written only through `Atomics.load`/`Atomics.store` on a Uint32Array over
 * the mapping. `toArrayBuffer` from bun:ffi wraps the mmap'd memory itself (no copy, the buffer
 * does not own it), so those operations touch the very words the kernel shares; the buffer is not
 * a SharedArrayBuffer, which only matters for `Atomics.wait`/`notify` (not used). Atomics on any
 * integer view are sequentially consistent in JavaScriptCore (ldar/stlr on aarch64, a fenced
 * store on x86_64) — at least acquire/release — and the compiler does not move plain accesses
 * across them. So: SQE bytes are written before the release-store of the SQ tail; the CQ tail is
 * acquire-loaded before any CQE is read; the CQ head is release-stored only after the CQEs were
 * read (the kernel may reuse those slots at once).
 *
 * Waiting. `submitAndWait` blocks the calling thread in io_uring_enter, and a blocked thread runs
 * none of its event loop (no timers, no sockets, no messages): a ring that waits belongs to a
 * thread or process of its own (a data-plane worker), never to one that also serves Bun I/O. The
 * wait is always bounded (`MAX_WAIT_MS`), through IORING_ENTER_EXT_ARG with a timespec rather than
 * a linked IORING_OP_TIMEOUT: it takes no SQE, leaves no extra CQE for `reap` to filter, and the
 * timeout cannot outlive the call. It needs IORING_FEAT_EXT_ARG (Linux ≥ 5.11); `create` refuses
 * a kernel without it.
 *
 * Buffers. A prepared RECV, SEND or READ holds a raw pointer until its completion is reaped: the
 * caller keeps the memory referenced (and does not reuse it) until then — also after cancelling
 * it: a cancelled operation still completes (-ECANCELED), and only then is its buffer free.
 */
import { ptr, toArrayBuffer } from "bun:ffi";
import { StoaError } from "../core/errors.ts";
import { Errno, MSG_NOSIGNAL, errno, libc, strerror } from "./libc.ts";

/** io_uring_setup(2): the same number on x86_64 and aarch64 (unified syscall table, ≥ 425). */
const SYS_io_uring_setup = 425;
/** io_uring_enter(2), likewise. */
const SYS_io_uring_enter = 426;
/** sizeof(struct io_uring_params) in linux/io_uring.h: 10 u32 fields + two 40-byte offset structs. */
const IO_URING_PARAMS_SIZE = 120;

type IoUringProbe = { ok: true } | { ok: false; errno: number; reason: string };

/** Creates and closes a 1-entry ring. */
export function probeIoUring(): IoUringProbe {
  const params = new Uint8Array(IO_URING_PARAMS_SIZE);
  const fd = Number(libc().syscall(SYS_io_uring_setup, 1, ptr(params), 0, 0, 0, 0));
  if (fd >= 0) {
    libc().close(fd);
    return { ok: true };
  }
  const code = errno();
  const reason =
    code === Errno.ENOSYS
      ? "this kernel has no io_uring (needs Linux ≥ 5.1 built with CONFIG_IO_URING)"
      : code === Errno.EPERM || code === Errno.EACCES
        ? "io_uring is disabled for this process (kernel.io_uring_disabled, seccomp or a container policy)"
        : strerror(code);
  return { ok: false, errno: code, reason };
}

/** The most SQ entries `IoUring.create` asks for (the kernel's own ceiling is 32768). */
const MAX_RING_ENTRIES = 4096;
/** The longest `submitAndWait` may block its thread. */
export const MAX_WAIT_MS = 60_000;

// io_uring_params, in u32 words.
const P_SQ_ENTRIES = 0;
const P_CQ_ENTRIES = 1;
const P_FLAGS = 2;
const P_FEATURES = 5;
const P_SQ_OFF = 10;
const P_CQ_OFF = 20;
// Fields of io_sqring_offsets / io_cqring_offsets, in u32 words from their start.
const OFF_HEAD = 0;
const OFF_TAIL = 1;
const OFF_RING_MASK = 2;
const OFF_SQ_ARRAY = 6;
const OFF_CQ_CQES = 5;

/** Only the creating thread submits; completions' task work runs when it enters the kernel to wait (Linux ≥ 6.1). */
const IORING_SETUP_SINGLE_ISSUER = 1 << 12;
const IORING_SETUP_DEFER_TASKRUN = 1 << 13;
const IORING_FEAT_SINGLE_MMAP = 1 << 0;
const IORING_FEAT_EXT_ARG = 1 << 8;
const IORING_ENTER_GETEVENTS = 1 << 0;
const IORING_ENTER_EXT_ARG = 1 << 3;
/** mmap offsets that select which part of the ring a mapping of the ring fd shows. */
const IORING_OFF_SQ_RING = 0n;
const IORING_OFF_CQ_RING = 0x8000000n;
const IORING_OFF_SQES = 0x10000000n;

const IORING_OP_POLL_ADD = 6;
const IORING_OP_ASYNC_CANCEL = 14;
const IORING_POLL_ADD_MULTI = 1 << 0;
/** cqe.flags: the operation stays armed and will complete again (a multishot poll). */
export const IORING_CQE_F_MORE = 1 << 1;
/** poll.h */
export const POLLIN = 0x1;

const IORING_OP_READ = 22;
const IORING_OP_SEND = 26;
const IORING_OP_RECV = 27;

const SQE_BYTES = 64;
const CQE_BYTES = 16;
const GETEVENTS_ARG_BYTES = 24;
const SQE_OFF = 8;
const SQE_ADDR = 16;
const SQE_LEN = 24;
const SQE_OP_FLAGS = 28;
const SQE_USER_DATA = 32;
const CQE_RES = 8;
const CQE_FLAGS = 12;

const PROT_READ_WRITE = 0x1 | 0x2;
const MAP_SHARED_POPULATE = 0x01 | 0x8000;
const U32_MAX = 0xffff_ffff;
/** io_uring_enter's "the timeout expired" (errno.h). */
const ETIME = 62;

/**
 * What one `submitAndWait` did: the SQEs the kernel took, and the completions ready for `reap`
 * when it returned (fewer than asked for: the wait timed out or was interrupted).
 */
interface SubmitResult {
  submitted: number;
  ready: number;
}

/** One region mapped from the ring fd. */
interface Mapping {
  addr: number;
  len: number;
}

/**
 * An io_uring instance: its fd and the three (or two, with IORING_FEAT_SINGLE_MMAP) mappings.
 * Prepare SQEs with `prepRecv`/`prepSend`/`prepRead`/`prepCancel`, hand them to the kernel with
 * `submitAndWait`, then `reap` the completions. One thread uses a ring; nothing here locks.
 * @example
 * const ring = IoUring.create(64);
 * ring.prepRecv(fd, ptr(buffers[3]), buffers[3].length, 3n);
 * ring.submitAndWait(1, 100);
 * ring.reap((userData, res) => handle(buffers[Number(userData)], res));
 * ring.close();
 */
export class IoUring {
  readonly #fd: number;
  readonly #mappings: Mapping[];
  /** The SQ ring and the CQ ring as u32 words (the same words when the kernel maps them once). */
  readonly #sq: Uint32Array;
  readonly #cq: Uint32Array;
  readonly #cqBytes: DataView;
  readonly #sqes: DataView;
  readonly #sqeBytes: Uint8Array;
  readonly #sqHead: number;
  readonly #sqTail: number;
  readonly #sqMask: number;
  readonly #sqEntries: number;
  readonly #cqHead: number;
  readonly #cqTail: number;
  readonly #cqMask: number;
  readonly #cqes: number;
  /** The tail this side has prepared up to (published to the kernel by `submitAndWait`). */
  #tail: number;
  /** io_uring_getevents_arg and its timespec, reused by every wait. */
  readonly #waitArg = new BigUint64Array(GETEVENTS_ARG_BYTES / 8);
  readonly #timespec = new BigInt64Array(2);
  #closed = false;

  private constructor(fd: number, params: Uint32Array, mappings: Mapping[], sqRing: Mapping, cqRing: Mapping, sqes: Mapping) {
    this.#fd = fd;
    this.#mappings = mappings;
    this.#sq = new Uint32Array(toArrayBuffer(sqRing.addr, 0, sqRing.len));
    const cqBuffer = toArrayBuffer(cqRing.addr, 0, cqRing.len);
    this.#cq = new Uint32Array(cqBuffer);
    this.#cqBytes = new DataView(cqBuffer);
    const sqeBuffer = toArrayBuffer(sqes.addr, 0, sqes.len);
    this.#sqes = new DataView(sqeBuffer);
    this.#sqeBytes = new Uint8Array(sqeBuffer);
    const sqOff = (field: number): number => (params[P_SQ_OFF + field] ?? 0) / 4;
    const cqOff = (field: number): number => (params[P_CQ_OFF + field] ?? 0) / 4;
    this.#sqHead = sqOff(OFF_HEAD);
    this.#sqTail = sqOff(OFF_TAIL);
    this.#sqMask = this.#sq[sqOff(OFF_RING_MASK)] ?? 0;
    this.#sqEntries = params[P_SQ_ENTRIES] ?? 0;
    this.#cqHead = cqOff(OFF_HEAD);
    this.#cqTail = cqOff(OFF_TAIL);
    this.#cqMask = this.#cq[cqOff(OFF_RING_MASK)] ?? 0;
    this.#cqes = params[P_CQ_OFF + OFF_CQ_CQES] ?? 0;
    this.#tail = Atomics.load(this.#sq, this.#sqTail);
    // The indirection array maps ring slot i to SQE i once and for all (as liburing does), so
    // the SQE to fill for tail t is always t & mask.
    const array = sqOff(OFF_SQ_ARRAY);
    for (let i = 0; i < this.#sqEntries; i++) this.#sq[array + i] = i;
  }

  /**
   * A ring with room for at least `entries` SQEs (the kernel rounds up to a power of two; the CQ
   * gets twice as many). Throws `StoaError("io")` when the kernel refuses (see `probeIoUring`).
   * `singleIssuer`: the calling thread alone will ever submit and wait on it — then IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN, so the kernel runs completions' task
   * work when that thread waits instead of interrupting it for each (measured: ~10 % less CPU per
   * relayed packet); a kernel without them (EINVAL, before 6.1) gets a ring without.
   */
  static create(entries: number, o: { singleIssuer?: boolean } = {}): IoUring {
    if (!Number.isInteger(entries) || entries < 1 || entries > MAX_RING_ENTRIES) {
      throw new StoaError("internal", `io_uring: ${entries} entries; ask for 1 to ${MAX_RING_ENTRIES}`);
    }
    let params = new Uint32Array(IO_URING_PARAMS_SIZE / 4);
    let fd = -1;
    if (o.singleIssuer === true) {
      params[P_FLAGS] = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
      fd = Number(libc().syscall(SYS_io_uring_setup, entries, ptr(params), 0, 0, 0, 0));
      if (fd < 0 && errno() === Errno.EINVAL) params = new Uint32Array(IO_URING_PARAMS_SIZE / 4); // an older kernel: without them
    }
    if (fd < 0) fd = Number(libc().syscall(SYS_io_uring_setup, entries, ptr(params), 0, 0, 0, 0));
    if (fd < 0) {
      const code = errno();
      throw new StoaError("io", `io_uring_setup(${entries}): ${strerror(code)} (run \`stoa doctor\` to see whether io_uring is usable here)`);
    }
    const mappings: Mapping[] = [];
    try {
      const features = params[P_FEATURES] ?? 0;
      if ((features & IORING_FEAT_EXT_ARG) === 0) {
        throw new StoaError("io", "io_uring: this kernel has no IORING_FEAT_EXT_ARG (bounded waits); stoa needs Linux ≥ 5.11");
      }
      const sqEntries = params[P_SQ_ENTRIES] ?? 0;
      const cqEntries = params[P_CQ_ENTRIES] ?? 0;
      const sqLen = (params[P_SQ_OFF + OFF_SQ_ARRAY] ?? 0) + sqEntries * 4;
      const cqLen = (params[P_CQ_OFF + OFF_CQ_CQES] ?? 0) + cqEntries * CQE_BYTES;
      let sqRing: Mapping;
      let cqRing: Mapping;
      if ((features & IORING_FEAT_SINGLE_MMAP) !== 0) {
        sqRing = mapRing(fd, Math.max(sqLen, cqLen), IORING_OFF_SQ_RING, mappings);
        cqRing = sqRing;
      } else {
        sqRing = mapRing(fd, sqLen, IORING_OFF_SQ_RING, mappings);
        cqRing = mapRing(fd, cqLen, IORING_OFF_CQ_RING, mappings);
      }
      const sqes = mapRing(fd, sqEntries * SQE_BYTES, IORING_OFF_SQES, mappings);
      return new IoUring(fd, params, mappings, sqRing, cqRing, sqes);
    } catch (err) {
      for (const m of mappings) libc().munmap(m.addr, m.len);
      libc().close(fd);
      throw err;
    }
  }

  /** The ring fd (for diagnostics; the ring owns it). */
  get fd(): number {
    return this.#fd;
  }

  /** SQEs that can still be prepared before `submitAndWait` must hand some to the kernel. */
  get sqSpace(): number {
    this.#open();
    return this.#sqEntries - ((this.#tail - Atomics.load(this.#sq, this.#sqHead)) >>> 0);
  }

  /** Queues a RECV of up to `len` bytes into `buf` on socket `fd` (`msgFlags`: MSG_DONTWAIT to never wait); its completion carries `userData`. */
  prepRecv(fd: number, buf: number, len: number, userData: bigint, msgFlags = 0): void {
    this.#prep(IORING_OP_RECV, fd, buf, len, false, msgFlags, userData);
  }

  /**
   * Queues a multishot POLL_ADD for `events` (POLLIN) on `fd`: a completion (res = the events)
   * each time the file becomes ready, with IORING_CQE_F_MORE while the poll stays armed; one
   * without it is the last (cancelled, or ended by the kernel: arm it again).
   */
  prepPollMultishot(fd: number, events: number, userData: bigint): void {
    this.#prep(IORING_OP_POLL_ADD, fd, 0, IORING_POLL_ADD_MULTI, false, events, userData);
  }

  /** Queues a SEND of `len` bytes from `buf` on socket `fd` (MSG_NOSIGNAL). */
  prepSend(fd: number, buf: number, len: number, userData: bigint): void {
    this.#prep(IORING_OP_SEND, fd, buf, len, false, MSG_NOSIGNAL, userData);
  }

  /** Queues a READ of up to `len` bytes into `buf` from `fd` at its own position (an eventfd: 8 bytes). */
  prepRead(fd: number, buf: number, len: number, userData: bigint): void {
    // Offset -1 (all ones): at the file's own position, as read(2) does (an eventfd has none).
    this.#prep(IORING_OP_READ, fd, buf, len, true, 0, userData);
  }

  /**
   * Queues an ASYNC_CANCEL of the operation whose user_data is `targetUserData` (the first one
   * found, so give every operation its own). The target, when found, completes with -ECANCELED
   * (or with its result, had it just finished); the cancel itself completes with `userData` and
   * 0 (found and cancelled), -ENOENT (not in flight: already completed) or -EALREADY (running;
   * it completes by itself). Submitted in order after the SQEs prepared before it, so it finds
   * those.
   */
  prepCancel(targetUserData: bigint, userData: bigint): void {
    const at = this.#prep(IORING_OP_ASYNC_CANCEL, -1, 0, 0, false, 0, userData);
    this.#sqes.setBigUint64(at + SQE_ADDR, targetUserData, true);
  }

  /**
   * Hands every prepared SQE to the kernel and waits until at least `minComplete` completions are
   * ready or `timeoutMs` passed (0: do not wait). Blocks the calling thread — see the header.
   * A timed-out or interrupted (EINTR) wait is not an error: `ready` says what there is.
   */
  submitAndWait(minComplete: number, timeoutMs: number): SubmitResult {
    this.#open();
    if (!(timeoutMs >= 0 && timeoutMs <= MAX_WAIT_MS)) {
      throw new StoaError("internal", `io_uring: wait of ${timeoutMs} ms; wait 0 to ${MAX_WAIT_MS} ms and loop`);
    }
    // Release: the SQE bytes written by #prep are visible before the kernel sees the new tail.
    Atomics.store(this.#sq, this.#sqTail, this.#tail);
    const toSubmit = (this.#tail - Atomics.load(this.#sq, this.#sqHead)) >>> 0;
    const ms = Math.floor(timeoutMs);
    this.#timespec[0] = BigInt(Math.floor(ms / 1000));
    this.#timespec[1] = BigInt((ms % 1000) * 1_000_000);
    this.#waitArg[0] = 0n; // no signal mask
    this.#waitArg[1] = 0n; // sigmask_sz 0, min_wait_usec 0
    this.#waitArg[2] = BigInt(ptr(this.#timespec));
    const wait = Math.max(0, Math.floor(minComplete));
    const ret = Number(
      libc().syscall(SYS_io_uring_enter, this.#fd, toSubmit, wait, IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, ptr(this.#waitArg), GETEVENTS_ARG_BYTES),
    );
    // The kernel reports a failed or expired wait only when it took no SQE (else the count).
    if (ret >= 0) return { submitted: ret, ready: this.#ready() };
    const code = errno();
    if (code === ETIME || code === Errno.EINTR) return { submitted: 0, ready: this.#ready() };
    throw new StoaError("io", `io_uring_enter: ${strerror(code)} (submitting ${toSubmit}, waiting for ${wait})`);
  }

  /**
   * Calls `onCompletion` for each ready completion, oldest first, and frees its CQ slot.
   * `res` is the operation's result: bytes moved, or a negative errno (-ECANCELED, -ENOBUFS…).
   * Returns how many were reaped.
   */
  reap(onCompletion: (userData: bigint, res: number, flags: number) => void): number {
    this.#open();
    let head = Atomics.load(this.#cq, this.#cqHead);
    // Acquire: the CQEs up to this tail are fully written.
    const tail = Atomics.load(this.#cq, this.#cqTail);
    let count = 0;
    try {
      while (head !== tail) {
        const at = this.#cqes + (head & this.#cqMask) * CQE_BYTES;
        const userData = this.#cqBytes.getBigUint64(at, true);
        const res = this.#cqBytes.getInt32(at + CQE_RES, true);
        const flags = this.#cqBytes.getUint32(at + CQE_FLAGS, true);
        head = (head + 1) >>> 0;
        count++;
        onCompletion(userData, res, flags);
      }
    } finally {
      // Release: the slots read above go back to the kernel (even when the callback threw, the
      // completions it was handed count as consumed).
      Atomics.store(this.#cq, this.#cqHead, head);
    }
    return count;
  }

  /** Unmaps the rings and closes the ring fd (the kernel cancels what is still in flight). Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const m of this.#mappings) libc().munmap(m.addr, m.len);
    libc().close(this.#fd);
  }

  /** Fills the next SQE; answers its byte offset (for a field the arguments do not cover). */
  #prep(opcode: number, fd: number, addr: number, len: number, atOwnPosition: boolean, opFlags: number, userData: bigint): number {
    if (this.sqSpace === 0) {
      throw new StoaError("internal", `io_uring: all ${this.#sqEntries} SQEs are prepared; call submitAndWait before preparing more`);
    }
    const at = (this.#tail & this.#sqMask) * SQE_BYTES;
    this.#sqeBytes.fill(0, at, at + SQE_BYTES);
    const sqe = this.#sqes;
    sqe.setUint8(at, opcode);
    sqe.setInt32(at + 4, fd, true);
    // u64 fields as two u32 halves: no BigInt per SQE (a pointer is below 2^53).
    if (atOwnPosition) {
      sqe.setUint32(at + SQE_OFF, U32_MAX, true);
      sqe.setUint32(at + SQE_OFF + 4, U32_MAX, true);
    }
    sqe.setUint32(at + SQE_ADDR, addr % 2 ** 32, true);
    sqe.setUint32(at + SQE_ADDR + 4, Math.floor(addr / 2 ** 32), true);
    sqe.setUint32(at + SQE_LEN, len, true);
    sqe.setUint32(at + SQE_OP_FLAGS, opFlags, true);
    sqe.setBigUint64(at + SQE_USER_DATA, userData, true);
    this.#tail = (this.#tail + 1) >>> 0;
    return at;
  }

  /** Completions waiting in the CQ. */
  #ready(): number {
    return (Atomics.load(this.#cq, this.#cqTail) - Atomics.load(this.#cq, this.#cqHead)) >>> 0;
  }

  #open(): void {
    if (this.#closed) throw new StoaError("closed", "io_uring: the ring is closed; create a new one");
  }
}

/** mmap(2) of one part of the ring fd, recorded in `mappings` (so a failure can undo the rest). */
function mapRing(fd: number, len: number, offset: bigint, mappings: Mapping[]): Mapping {
  const addr = Number(libc().mmap(0, len, PROT_READ_WRITE, MAP_SHARED_POPULATE, fd, offset));
  if (addr === -1) {
    throw new StoaError("io", `io_uring: mmap of ${len} bytes at ${offset}: ${strerror(errno())} (raise RLIMIT_MEMLOCK or ask for fewer entries)`);
  }
  const mapping = { addr, len };
  mappings.push(mapping);
  return mapping;
}
