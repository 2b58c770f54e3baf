/**
 * File descriptors as a budget. Every connection costs a descriptor, and a process that has none
 * left cannot even accept the connection it would refuse. Measured in Bun 1.4.5: when accept()
 * fails with EMFILE the listening socket stays readable (level-triggered), so the event loop
 * spins at 100 % of a core per thread with a listener, for `Bun.listen` and `Bun.serve` alike,
 * until some descriptor is closed; and `Bun.connect` reports its own EMFILE as ECONNREFUSED. So:
 *
 * 1. Every daemon raises RLIMIT_NOFILE's soft limit to the hard limit at start
 *    (`raiseFdLimit`, cli/common.ts), as nginx (`worker_rlimit_nofile`) and Go's runtime do:
 *    the soft default of 1024 dates from select(2), which stoa never uses.
 * 2. The top `fdReserve()` descriptors below the limit are kept for what must not fail: a
 *    connect for a client already admitted, a metaserver request, the refusal itself. A newly
 *    accepted socket is refused (`overFdBudget`: answered 503 "server out of file descriptors"
 *    and closed at once, which frees its descriptor again) when its own number is in the reserve
 *    (Linux hands out the lowest free number, so every lower one is taken: free to read) or when
 *    the count in use has reached it (holes left by closed connections hide from the number).
 * 3. The count (`fdsUsed`) is the kernel's: stat() of /proc/self/fd gives it in `size` since
 *    Linux 6.2, ~3 µs. Older kernels get the next descriptor's number (`nextFd`: a /dev/null
 *    descriptor duplicated and closed), a lower bound. `fdPressure()` compares it with the limit
 *    before a connect; fdguard.ts samples it and stops listening while the limit is reached.
 * `fdsInUse()` is the exact count for metrics and logs (a directory listing on old kernels).
 */
import { closeSync, openSync, readdirSync, statSync } from "node:fs";
import { dupCloexec } from "../ffi/epoll.ts";
import { getRlimit, libc, RLIMIT_NOFILE, setRlimit, strerror } from "../ffi/libc.ts";
import type { LogFields, Logger } from "./log.ts";

/** Fewest descriptors kept in reserve: a few connects, requests and refusals at once. */
export const FD_RESERVE_MIN = 64;
/** The reserve as a share of the limit, for larger limits: 5 % (3,277 of 65,536). */
const FD_RESERVE_FRACTION = 0.05;
/** Most descriptors kept in reserve: beyond this many a larger share buys nothing. */
export const FD_RESERVE_MAX = 4_096;
/** How often a refusal log line may repeat: at most one line per interval, with a count. */
const FD_LOG_INTERVAL_MS = 10_000;

/** The limit stoa ever uses, whatever the hard limit says (`RLIM_INFINITY` is not a number of fds). */
const FD_LIMIT_CEILING = 1 << 30;

let cachedLimit: number | undefined;

/**
 * Raises the soft RLIMIT_NOFILE to the hard limit (never lowers it). Returns what it was and is
 * now; a refusal of the kernel leaves the limit as it was (`error` says why).
 * @example
 * const { from, to } = raiseFdLimit();
 * log.debug("file descriptor limit", { from, to });
 */
export function raiseFdLimit(): { from: number; to: number; hard: number; error?: string } {
  const { cur, max } = getRlimit(RLIMIT_NOFILE);
  const from = Math.min(cur, FD_LIMIT_CEILING);
  const hard = Math.min(max, FD_LIMIT_CEILING);
  let error: string | undefined;
  if (hard > from) {
    const code = setRlimit(RLIMIT_NOFILE, { cur: hard, max });
    if (code !== 0) error = strerror(code);
  }
  cachedLimit = undefined;
  const to = fdLimit();
  return error === undefined ? { from, to, hard } : { from, to, hard, error };
}

/** The soft RLIMIT_NOFILE: one more than the highest fd number this process may open. */
export function fdLimit(): number {
  cachedLimit ??= Math.min(getRlimit(RLIMIT_NOFILE).cur, FD_LIMIT_CEILING);
  return cachedLimit;
}

/** Descriptors kept back for work already admitted (see the module header). */
export function fdReserve(limit = fdLimit()): number {
  const share = Math.ceil(limit * FD_RESERVE_FRACTION);
  return Math.min(Math.floor(limit / 2), Math.max(FD_RESERVE_MIN, Math.min(FD_RESERVE_MAX, share)));
}

/**
 * Whether a newly accepted socket with descriptor `fd` must be refused: its number is in the
 * reserve (so every lower one is taken), or the count in use has reached the reserve anyway.
 */
export function overFdBudget(fd: number): boolean {
  const limit = fdLimit();
  const edge = limit - fdReserve(limit);
  // The number is free to read; the count catches holes below it (see fdsUsed).
  return fd >= edge || fdsUsed() >= edge;
}

/** This thread's /dev/null, duplicated to see where the next descriptor goes. */
let probe = -1;

/**
 * The number the next descriptor would get, or -1 when none can be had. "dup" (default, < 1 µs)
 * duplicates a /dev/null descriptor the thread keeps open: EMFILE only. "open" (~4 µs) opens a
 * new file, so it also sees ENFILE, the system-wide table.
 */
export function nextFd(how: "dup" | "open" = "dup"): number {
  if (how === "dup") {
    if (probe < 0) probe = openOrMinusOne();
    if (probe >= 0) {
      const fd = dupCloexec(probe);
      if (fd >= 0) libc().close(fd);
      return fd;
    }
  }
  const fd = openOrMinusOne();
  if (fd >= 0) closeSync(fd);
  return fd;
}

function openOrMinusOne(): number {
  try {
    return openSync("/dev/null", "r");
  } catch {
    return -1;
  }
}

/** stat() of /proc/self/fd counts the open descriptors in `size` (Linux ≥ 6.2); unknown until tried. */
let statCounts: boolean | undefined;

/** The kernel's count of this process's open descriptors (one stat, ~3 µs), or -1 where unsupported. */
function kernelCount(): number {
  if (statCounts === false) return -1;
  try {
    const n = statSync("/proc/self/fd").size;
    // A process always has some descriptor open (Bun's own epoll at least): 0 means "unsupported".
    statCounts = n > 0;
    return statCounts ? n : -1;
  } catch {
    return -1;
  }
}

/**
 * Descriptors in use, cheaply, for decisions: the kernel's count; on kernels before 6.2 the
 * next descriptor's number (a lower bound: holes below it are not seen); the limit when no
 * descriptor is left.
 */
export function fdsUsed(): number {
  const n = kernelCount();
  if (n >= 0) return n;
  const next = nextFd();
  return next < 0 ? fdLimit() : next;
}

/**
 * True when the descriptors in use reach the top `margin` below the limit (default the whole
 * reserve), or none is left: the moment to answer 503 instead of opening anything.
 */
export function fdPressure(margin = fdReserve()): boolean {
  return fdsUsed() >= fdLimit() - margin;
}

/**
 * Whether a refusal may still hold its descriptor for a moment to say why (a 503 that the
 * client can read before the close), or must close at once: a quarter of the reserve is left.
 */
export function canAffordAnswer(): boolean {
  return !fdPressure(Math.ceil(fdReserve() / 4));
}

/**
 * Whether a failed connect ran out of descriptors rather than reaching a target that refused:
 * EMFILE/ENFILE, or Bun's ECONNREFUSED while the process is at the edge of its limit (Bun
 * 1.4.5 reports its own EMFILE as ECONNREFUSED; see the module header). ENFILE shows only when
 * a new file is opened, hence the "open" probe.
 */
export function isFdExhaustion(code: string | undefined): boolean {
  if (code === "EMFILE" || code === "ENFILE") return true;
  return code === "ECONNREFUSED" && (fdPressure(Math.ceil(fdReserve() / 2)) || nextFd("open") < 0);
}

/** Open descriptors of this process, exactly (without the kernel's count, a directory listing). */
export function fdsInUse(): number {
  const n = kernelCount();
  if (n >= 0) return n;
  try {
    // The listing's own descriptor is in it.
    return Math.max(0, readdirSync("/proc/self/fd").length - 1);
  } catch {
    return Number.NaN; // not even the directory could be opened: at the limit
  }
}

/**
 * One warning at the first refusal, then at most one line per `intervalMs` with how many were
 * refused meanwhile, and an info line once an interval passes without any.
 * @example
 * const refusals = new RefusalLog(log, "refusing connections: out of file descriptors");
 * refusals.count({ port: 8081 });
 */
export class RefusalLog {
  readonly #log: Logger;
  readonly #msg: string;
  readonly #intervalMs: number;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #pending = 0;
  #total = 0;

  constructor(log: Logger, msg: string, intervalMs = FD_LOG_INTERVAL_MS) {
    this.#log = log;
    this.#msg = msg;
    this.#intervalMs = intervalMs;
  }

  /** Refusals since the log was made. */
  get total(): number {
    return this.#total;
  }

  count(fields?: LogFields): void {
    this.#total++;
    if (this.#timer !== undefined) {
      this.#pending++;
      return;
    }
    this.#log.warn(this.#msg, { ...fields, ...limitFields(), every: `${this.#intervalMs / 1000}s at most` });
    this.#arm();
  }

  /** Stops the timer (the counts are kept). */
  stop(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #arm(): void {
    this.#timer = setTimeout(() => {
      const n = this.#pending;
      this.#pending = 0;
      if (n === 0) {
        this.#timer = undefined;
        this.#log.info(`${this.#msg}: none in the last ${this.#intervalMs / 1000}s`, { refused_total: this.#total });
        return;
      }
      this.#log.warn(this.#msg, { refused: n, in_last: `${this.#intervalMs / 1000}s`, ...limitFields() });
      this.#arm();
    }, this.#intervalMs);
    this.#timer.unref?.();
  }
}

function limitFields(): LogFields {
  const limit = fdLimit();
  return { fds_open: fdsInUse(), fd_limit: limit, fd_reserve: fdReserve(limit) };
}
