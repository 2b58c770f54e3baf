/**
 * Graceful shutdown: one list of cleanup hooks, run once on SIGINT/SIGTERM or on request.
 *
 * Contract:
 * - Cleanups run one at a time in reverse order of registration (the last thing opened is
 *   closed first: a listener stops before the store it writes to). A cleanup registered while
 *   shutdown runs is run too, next; an unregistered one is skipped. Each runs at most once.
 * - The whole run is bounded by `timeoutMs`. A cleanup still pending at the deadline is
 *   abandoned; cleanups after it are still called, so their synchronous part (unlinking a socket
 *   file) happens, but they are not awaited.
 * - A cleanup that throws, rejects or times out is logged and does not stop the others; it makes
 *   the exit code 1. Otherwise a graceful stop exits 0 — also on a signal (not 130/143): stopping
 *   a long-running command on request is success.
 * - A second SIGINT/SIGTERM exits 1 at once. Only signals count: a shutdown that began for
 *   another reason (end of stdin) is joined by the first signal, not cut short by it — a
 *   `producer | stoa pub` stopped by Ctrl-C gets SIGINT and EOF together, in either order, and
 *   must still deregister.
 *
 * The state lives in `ShutdownManager` so tests can inject `exit`; the process uses the
 * singleton behind `onShutdown`, `installSignalHandlers` and `shutdown`.
 */
import { createLogger, type Logger } from "./log.ts";

/** Overall budget for all cleanups, unless the caller says otherwise. */
const DEFAULT_SHUTDOWN_TIMEOUT_MS = 5_000;

const SIGNALS = ["SIGINT", "SIGTERM"] as const;

type Cleanup = () => void | Promise<void>;

interface Entry {
  name: string;
  fn: Cleanup;
}

interface ShutdownOptions {
  /** Budget for the whole run of cleanups. */
  timeoutMs?: number;
  log?: Logger;
}

interface ShutdownManagerOptions extends ShutdownOptions {
  /** Called with the exit code when shutdown ends; `process.exit` by default. */
  exit?: (code: number) => void;
}

export class ShutdownManager {
  readonly #stack: Entry[] = [];
  readonly #exit: (code: number) => void;
  #timeoutMs: number;
  #log: Logger;
  #running: Promise<number> | undefined;
  /** SIGINT/SIGTERMs received; the second one ends the process at once. */
  #signals = 0;
  #uninstall: (() => void) | undefined;
  readonly #starting: (() => void)[] = [];

  constructor(options: ShutdownManagerOptions = {}) {
    this.#exit = options.exit ?? ((code) => process.exit(code));
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_SHUTDOWN_TIMEOUT_MS;
    // Without a configured logger, failures must still reach the operator.
    this.#log = options.log ?? createLogger({ level: "warn", name: "shutdown" });
  }

  /** True once shutdown has started. */
  get stopping(): boolean {
    return this.#running !== undefined;
  }

  /**
   * Register a cleanup to run on shutdown. Returns a function that unregisters it.
   *
   * @example
   * ```ts
   * const server = Bun.listen({ unix: path, socket });
   * onShutdown("gateway socket", () => { server.stop(true); unlinkSync(path); });
   * ```
   */
  onShutdown(name: string, fn: Cleanup): () => void {
    const entry: Entry = { name, fn };
    this.#stack.push(entry);
    return () => {
      const i = this.#stack.indexOf(entry);
      if (i !== -1) this.#stack.splice(i, 1);
    };
  }

  /** Call `fn` the moment shutdown begins, before any cleanup (core/daemon.ts: STOPPING=1, /ready 503). */
  onStart(fn: () => void): void {
    if (!this.#starting.includes(fn)) this.#starting.push(fn);
  }

  /**
   * Run `shutdown` on the first SIGINT or SIGTERM (or let a shutdown already running go on);
   * exit 1 at once on a second signal.
   * Returns a function that removes the handlers.
   */
  installSignalHandlers(options: ShutdownOptions = {}): () => void {
    if (options.timeoutMs !== undefined) this.#timeoutMs = options.timeoutMs;
    if (options.log !== undefined) this.#log = options.log;
    this.#uninstall?.();
    const handler = (signal: NodeJS.Signals): void => {
      this.#signals++;
      if (this.#signals > 1 && this.#running !== undefined) {
        this.#log.error("second signal during shutdown; exiting now", { signal });
        this.#exit(1);
        return;
      }
      if (this.#running !== undefined) {
        this.#log.info("signal during shutdown; still cleaning up (a second one exits at once)", { signal });
        return;
      }
      void this.shutdown(signal);
    };
    for (const signal of SIGNALS) process.on(signal, handler);
    const uninstall = () => {
      for (const signal of SIGNALS) process.off(signal, handler);
      if (this.#uninstall === uninstall) this.#uninstall = undefined;
    };
    this.#uninstall = uninstall;
    return uninstall;
  }

  /**
   * Run every cleanup, then exit with `exitCode` (1 if a cleanup failed or timed out).
   * Idempotent: later calls return the first call's promise, which resolves to the exit code.
   */
  shutdown(reason: string, exitCode = 0): Promise<number> {
    this.#running ??= this.#run(reason, exitCode);
    return this.#running;
  }

  async #run(reason: string, exitCode: number): Promise<number> {
    const log = this.#log;
    const timeoutMs = this.#timeoutMs;
    log.info("shutting down", { reason });
    for (const fn of this.#starting) {
      try {
        fn();
      } catch (err) {
        log.error("shutdown start hook failed", { err });
      }
    }
    let failed = false;
    let timedOut = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => {
        timedOut = true;
        resolve("timeout");
      }, timeoutMs);
    });
    const fail = (name: string) => (err: unknown) => {
      failed = true;
      log.error("cleanup failed", { cleanup: name, err });
    };
    try {
      for (let entry = this.#stack.pop(); entry !== undefined; entry = this.#stack.pop()) {
        const { name, fn } = entry;
        log.debug("cleanup", { cleanup: name });
        let result: void | Promise<void>;
        try {
          result = fn();
        } catch (err) {
          fail(name)(err);
          continue;
        }
        if (!(result instanceof Promise)) continue;
        if (timedOut) {
          failed = true;
          result.catch(fail(name));
          log.error("cleanup not awaited: shutdown timeout already passed", { cleanup: name, timeoutMs });
          continue;
        }
        const outcome = await Promise.race([result.then(() => "done" as const, fail(name)), deadline]);
        if (outcome === "timeout") {
          failed = true;
          log.error("cleanup did not finish in time", { cleanup: name, timeoutMs });
        }
      }
    } finally {
      clearTimeout(timer);
    }
    const code = failed ? 1 : exitCode;
    log.info("shutdown complete", { code });
    this.#exit(code);
    return code;
  }
}

/** The process-wide manager. */
export const shutdownManager = new ShutdownManager();

/** Register a cleanup on the process-wide manager; returns its unregister function. */
export const onShutdown = (name: string, fn: Cleanup): (() => void) => shutdownManager.onShutdown(name, fn);

/** Call `fn` when the process-wide shutdown begins, before the cleanups. */
export const onShutdownStart = (fn: () => void): void => shutdownManager.onStart(fn);

/** Make SIGINT/SIGTERM run the process-wide cleanups, then exit. */
export const installSignalHandlers = (options?: ShutdownOptions): (() => void) =>
  shutdownManager.installSignalHandlers(options);

/** Run the process-wide cleanups and exit; idempotent. */
export const shutdown = (reason: string, exitCode?: number): Promise<number> =>
  shutdownManager.shutdown(reason, exitCode);
