/**
 * Durations as people write them on a command line or in a config file: `250ms`, `15s`, `2m`,
 * `1h`, `1m30s`, or a bare number of milliseconds. Parsed to milliseconds, bounded so a typo
 * cannot turn into a timer that never fires.
 */
import { z } from "zod";
import { StoaError, describeError } from "./errors.ts";

/** Longest accepted duration: 7 days (setTimeout's own ceiling is ~24.8 days). */
const MAX_DURATION_MS = 7 * 24 * 3600 * 1000;

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const PART = /(\d+(?:\.\d+)?)(ms|s|m|h)/y;

/** Milliseconds in `text`, or a StoaError("usage") that shows the accepted forms. */
export function parseDuration(text: string): number {
  const s = text.trim();
  const bad = (why: string) =>
    new StoaError("usage", `invalid duration '${text.slice(0, 64)}': ${why} (examples: 250ms, 15s, 2m, 1m30s)`);
  if (s === "" || s.length > 64) throw bad("empty or too long");
  let ms: number;
  if (/^\d+$/.test(s)) {
    ms = Number(s);
  } else {
    ms = 0;
    PART.lastIndex = 0;
    while (PART.lastIndex < s.length) {
      const start = PART.lastIndex;
      const m = PART.exec(s);
      if (!m || m.index !== start) throw bad("expected a number followed by ms, s, m or h");
      ms += Number(m[1]) * (UNIT_MS[m[2] ?? ""] ?? Number.NaN);
    }
  }
  if (!Number.isFinite(ms)) throw bad("not a number");
  if (ms > MAX_DURATION_MS) throw bad("longer than 7 days");
  return Math.round(ms);
}

/** A zod schema for a duration string → milliseconds, for flags and config. */
export const Duration = z.string().transform((text, ctx) => {
  try {
    return parseDuration(text);
  } catch (err) {
    ctx.addIssue({ code: "custom", message: describeError(err) });
    return z.NEVER;
  }
});
