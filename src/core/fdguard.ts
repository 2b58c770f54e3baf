/**
 * Keeping listeners out of the EMFILE accept spin (why it happens: fdlimit.ts).
 *
 * - `FdWatch` looks at the descriptors in use (`fdsUsed`) and whether a file can be opened at
 *   all (`nextFd("open")`, which sees ENFILE too) every `FD_WATCH_INTERVAL_MS` on its thread.
 *   When the process stays at its limit (`FD_EXHAUSTED_SAMPLES` samples in a row; `pauseAt:
 *   "limit"`, for a listener that refuses at accept itself, like the gateway's routers) or is
 *   in its reserve (`pauseAt: "reserve"`, for `Bun.serve`, which accepts everything and shows us
 *   nothing before a request), it calls `pause()`: the owner closes its listening sockets, so
 *   there is nothing left to spin on. At least `FD_BACKOFF_MS` later, once the count is well
 *   below the reserve again, it calls `resume()` and the owner listens again (SO_REUSEPORT, or
 *   the port it just let go of).
 * - `listenRefuser()` is what a paused `Bun.serve` leaves on its port: a `Bun.listen` that writes
 *   a fixed 503 to each connection, half-closes, and closes it once the client's first bytes are
 *   read, when the client closes, or after `REFUSAL_LINGER_MS`; beyond `MAX_LINGERING_REFUSALS` at once, or with less than a quarter
 *   of the reserve left (`canAffordAnswer`), it closes without answering.
 *   Each accepted descriptor is so freed at once (the answer fits any socket buffer).
 */
import type { Socket, TCPSocketListener } from "bun";
import { canAffordAnswer, fdLimit, fdReserve, fdsUsed, nextFd, RefusalLog } from "./fdlimit.ts";
import type { Logger } from "./log.ts";

/** How often the watch samples: bounds how long a spin can last before the listener is closed. */
export const FD_WATCH_INTERVAL_MS = 100;
/**
 * Samples in a row at the limit before a "limit" watch pauses. A burst of connections reaches
 * the limit for a moment (Bun accepts its whole queue in one loop iteration and frees what it
 * closed only after it), which costs no spin; the spin is the limit that stays.
 */
const FD_EXHAUSTED_SAMPLES = 3;
/** Shortest pause of a listener: descriptors are freed by timeouts of seconds, not at once. */
export const FD_BACKOFF_MS = 1_000;
/** How long a refused client has to read its 503 and close before it is cut (not a reset that eats the answer). */
export const REFUSAL_LINGER_MS = 200;
/** Refused sockets held at once (per listener owner); more are closed without an answer. */
export const MAX_LINGERING_REFUSALS = 16;

interface FdWatchOptions {
  /** "limit": pause only when no descriptor is left; "reserve": as soon as the reserve is reached. */
  pauseAt: "limit" | "reserve";
  /** Close the listening sockets. */
  pause(): void;
  /** Listen again; false when that failed (tried again on the next sample). */
  resume(): boolean;
  log: Logger;
  /** What is paused, for the log. */
  what: string;
  /**
   * With "reserve": how far below the limit the pause begins (default the whole reserve). A
   * server that shares its process with one refusing at the reserve (the metaserver beside the
   * gateway in `stoa up`) takes half of it, so it goes on answering while the other refuses.
   */
  margin?: number;
}

/**
 * Pauses a listener while the process is out of descriptors (see the module header).
 * @example
 * const watch = new FdWatch({ pauseAt: "limit", pause: () => stopListeners(), resume: () => listen(), log, what: "gateway router 0" });
 * onShutdown("fd watch", () => watch.stop());
 */
export class FdWatch {
  readonly #options: FdWatchOptions;
  readonly #timer: ReturnType<typeof setInterval>;
  readonly #pauses: RefusalLog;
  #paused = false;
  #pausedAt = 0;
  #stopped = false;
  /** Samples in a row that found no descriptor left. */
  #exhaustedRun = 0;

  constructor(options: FdWatchOptions) {
    this.#options = options;
    this.#pauses = new RefusalLog(options.log, `${options.what}: out of file descriptors; stopped listening for a while`);
    this.#timer = setInterval(() => this.#sample(), FD_WATCH_INTERVAL_MS);
    this.#timer.unref?.();
  }

  /** Whether the listener is paused now. */
  get paused(): boolean {
    return this.#paused;
  }

  /** Stops watching; a paused listener stays paused (its owner is shutting down). */
  stop(): void {
    this.#stopped = true;
    clearInterval(this.#timer);
    this.#pauses.stop();
  }

  #sample(): void {
    if (this.#stopped) return;
    const exhausted = nextFd("open") < 0;
    this.#exhaustedRun = exhausted ? this.#exhaustedRun + 1 : 0;
    const used = fdsUsed();
    const limit = fdLimit();
    const reserve = fdReserve(limit);
    const margin = Math.min(this.#options.margin ?? reserve, reserve);
    const now = performance.now();
    if (!this.#paused) {
      const over = this.#options.pauseAt === "limit" ? this.#exhaustedRun >= FD_EXHAUSTED_SAMPLES : exhausted || used >= limit - margin;
      if (!over) return;
      this.#paused = true;
      this.#pausedAt = now;
      this.#pauses.count({ exhausted });
      this.#options.pause();
      return;
    }
    // Hysteresis: listen again only with half a reserve to spare below where the pause began.
    if (now - this.#pausedAt < FD_BACKOFF_MS || exhausted || used >= limit - margin - Math.floor(reserve / 2)) return;
    if (!this.#options.resume()) return;
    this.#paused = false;
    this.#options.log.info(`${this.#options.what}: listening again`, { fds_used: used, fd_limit: limit });
  }
}

interface Refused {
  timer: ReturnType<typeof setTimeout> | undefined;
  counted: boolean;
}

/**
 * Listens on `hostname:port` and answers every connection with `response`, then closes it (see
 * the module header). Throws like `Bun.listen` when it cannot bind.
 */
export function listenRefuser(options: { hostname: string; port: number; response: Uint8Array; onRefused?: () => void }): TCPSocketListener<Refused> {
  let lingering = 0;
  const release = (sock: Socket<Refused>): void => {
    clearTimeout(sock.data.timer);
    if (sock.data.counted) lingering--;
    sock.data.counted = false;
  };
  return Bun.listen<Refused>({
    hostname: options.hostname,
    port: options.port,
    socket: {
      open(sock) {
        sock.data = { timer: undefined, counted: false };
        options.onRefused?.();
        if (lingering >= MAX_LINGERING_REFUSALS || !canAffordAnswer()) {
          sock.terminate();
          return;
        }
        lingering++;
        sock.data.counted = true;
        sock.write(options.response);
        sock.shutdown();
        sock.data.timer = setTimeout(() => sock.terminate(), REFUSAL_LINGER_MS);
      },
      // Read and dropped, then closed: nothing unread, so the close is a FIN, not a reset that
      // eats the answer, and the descriptor is free before the linger ends.
      data: (sock) => void sock.end(),
      close: release,
      error: (sock) => sock.terminate(),
    },
  });
}

/**
 * Guards a `Bun.serve` (which accepts every connection and shows nothing before a request): from
 * the moment the reserve is in use, `pause()` stops the server's listener and a refuser takes
 * the port; once descriptors are free again the refuser goes and `resume()` serves anew (it
 * throws when it cannot bind: the refuser comes back and it is tried again). WebSockets and
 * requests already open on the paused server go on. Returns `stop()`, for shutdown.
 * @example
 * const guard = guardServer({ what: "relay", log, hostname, port, response, pause: () => void server.stop(false), resume: () => { server = serve(port); } });
 */
/**
 * The complete HTTP/1.1 503 a refused connection gets from `listenRefuser`, with `body` (of
 * `contentType`) saying the server is out of file descriptors.
 * @example
 * const response = outOfFdsResponse("text/plain; charset=utf-8", "server out of file descriptors; try again shortly\n");
 */
export function outOfFdsResponse(contentType: string, body: string): Uint8Array {
  return Buffer.from(
    `HTTP/1.1 503 Service Unavailable\r\nContent-Type: ${contentType}\r\nRetry-After: 1\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}

export function guardServer(options: {
  what: string;
  log: Logger;
  hostname: string;
  port: number;
  /** The whole HTTP response each refused connection gets. */
  response: Uint8Array;
  onRefused?: () => void;
  /** Where the pause begins below the limit (FdWatchOptions.margin; default the reserve). */
  margin?: number;
  pause(): void;
  resume(): void;
}): { stop(): void } {
  let refuser: TCPSocketListener<Refused> | null = null;
  const refuse = (): void => {
    try {
      refuser = listenRefuser(options);
    } catch (err) {
      // The port is unbound for now; clients see a refused connection instead of a 503.
      options.log.debug("could not bind the refuser", { err });
    }
  };
  const watch = new FdWatch({
    pauseAt: "reserve",
    margin: options.margin,
    what: options.what,
    log: options.log,
    pause: () => {
      options.pause();
      refuse();
    },
    resume: () => {
      refuser?.stop(true);
      refuser = null;
      try {
        options.resume();
        return true;
      } catch (err) {
        options.log.debug("could not listen again yet", { err });
        refuse();
        return false;
      }
    },
  });
  return {
    stop() {
      watch.stop();
      refuser?.stop(true);
      refuser = null;
    },
  };
}
