/**
 * Waiting for what a client needs (a gateway, a metaserver, a relay, a publisher) the way a
 * script needs it: `stoa up & stoa pub …` must not fail because `up` is 100 ms from answering.
 *
 * `waitFor` tries at once; while the attempt fails with an error `retryable` accepts and the
 * deadline (`--wait D`) has not passed, it tries again with backoff (`WAIT_FIRST_RETRY_MS`
 * doubling up to `WAIT_MAX_RETRY_MS`). It says once what it waits for — only when the wait
 * outlasts `WAIT_QUIET_MS`, so a normal start stays silent — and when the deadline passes it
 * throws the last error unchanged: the message a user gets is the one they would get without
 * waiting. `waitMs` 0 is one attempt.
 */
import type { Logger } from "./log.ts";
import { describeError } from "./errors.ts";

/** First pause between attempts; doubled after each, up to `WAIT_MAX_RETRY_MS`. */
export const WAIT_FIRST_RETRY_MS = 50;
export const WAIT_MAX_RETRY_MS = 1_000;
/** A wait shorter than this is not worth a line on stderr (a daemon starting takes ~100 ms). */
export const WAIT_QUIET_MS = 1_000;
/** `--wait`'s default for the clients. */
export const DEFAULT_WAIT_MS = 10_000;

interface WaitOptions {
  /** What is waited for, as the line says it: "the gateway of /run/stoa". */
  what: string;
  /** How long to go on trying, from the first attempt. */
  waitMs: number;
  /** Errors worth another attempt (the thing is not there yet); anything else is thrown at once. */
  retryable: (err: unknown) => boolean;
  log: Logger;
}

/**
 * `attempt()`'s result, trying again while it fails retryably and `waitMs` has not passed.
 * @example
 * const info = await waitFor(() => controlRequest(runDir, { type: "info" }), {
 *   what: `the gateway of ${runDir}`, waitMs: 10_000, log,
 *   retryable: (err) => err instanceof StoaError && err.code === "closed",
 * });
 */
export async function waitFor<T>(attempt: () => Promise<T>, options: WaitOptions): Promise<T> {
  const start = performance.now();
  const deadline = start + Math.max(0, options.waitMs);
  let pause = WAIT_FIRST_RETRY_MS;
  let said = false;
  for (;;) {
    try {
      return await attempt();
    } catch (err) {
      const now = performance.now();
      if (!options.retryable(err) || now >= deadline) throw err;
      if (!said && now - start >= WAIT_QUIET_MS) {
        said = true;
        options.log.warn(`waiting for ${options.what}`, { up_to: `${Math.round(options.waitMs / 1000)}s`, reason: describeError(err) });
      } else {
        options.log.debug(`waiting for ${options.what}`, { reason: describeError(err) });
      }
      // Wake at the quiet mark too, so a wait past it is said even when the next pause is long.
      const untilSaid = said ? Number.POSITIVE_INFINITY : start + WAIT_QUIET_MS - now;
      await Bun.sleep(Math.max(1, Math.min(pause, deadline - now, untilSaid > 0 ? untilSaid : Number.POSITIVE_INFINITY)));
      pause = Math.min(WAIT_MAX_RETRY_MS, pause * 2);
    }
  }
}
