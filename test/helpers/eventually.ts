/**
 * Waiting in tests for a state, not for a time: the one polling helper.
 *
 * `eventually(what, check)` calls `check` until it returns something other than `undefined`,
 * `null` or `false`, and resolves with that value — a condition resolves with `true`, a lookup
 * with what it found. A check that throws has not passed yet either (a server not listening, a
 * file half there, an `expect` not met): it is called again, and the timeout's error names
 * `what` and carries the last value or error seen, so a failure says what never happened and
 * what was there instead.
 */
import { describeError } from "../../src/core/errors.ts";

/** Long enough for a process or a loaded 2-core machine; under Bun's default 5 s test timeout would hide `what`, so a test that waits longer sets its own. */
export const EVENTUALLY_TIMEOUT_MS = 5_000;
/** Often enough that a test does not idle, rarely enough that a check spawning a process or fetching does not load the machine. */
export const EVENTUALLY_EVERY_MS = 10;

export interface EventuallyOptions {
  /** Give up after this long (default EVENTUALLY_TIMEOUT_MS). */
  timeoutMs?: number;
  /** Pause between checks (default EVENTUALLY_EVERY_MS). */
  everyMs?: number;
}

/** What a check returns until it passes. */
type NotYet = undefined | null | false;

/**
 * The first value of `check()` that is not `undefined`, `null` or `false`.
 *
 * @example
 * await eventually("the gateway's control socket", () => existsSync(sock));
 * const body = await eventually("ten counted", async () => {
 *   const text = await (await fetch(url)).text();
 *   return text.includes("total 10") ? text : undefined;
 * }, { timeoutMs: 10_000 });
 */
export async function eventually<T>(what: string, check: () => T | Promise<T>, options: EventuallyOptions = {}): Promise<Exclude<T, NotYet>> {
  const timeoutMs = options.timeoutMs ?? EVENTUALLY_TIMEOUT_MS;
  const everyMs = options.everyMs ?? EVENTUALLY_EVERY_MS;
  const deadline = performance.now() + timeoutMs;
  let last: { value: unknown } | { error: unknown } = { value: undefined };
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined && value !== null && value !== false) return value as Exclude<T, NotYet>;
      last = { value };
    } catch (error) {
      last = { error };
    }
    if (performance.now() >= deadline) {
      const seen = "error" in last ? `the last check threw: ${describeError(last.error)}` : `the last check returned ${String(last.value)}`;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (${seen})`, "error" in last ? { cause: last.error } : undefined);
    }
    await Bun.sleep(everyMs);
  }
}
