/**
 * Turns a byte stream (stdin for `stoa pub`) into stream values:
 * - `lines`: one string per line (`\n` or `\r\n`); an unterminated last line counts too;
 * - `json`:  one JSON value per non-empty line; a line that is not JSON is reported through
 *            `onBadLine` with its number and skipped — one typo does not end a stream;
 * - `raw`:   each chunk as it arrives, as bytes (at most `MAX_VALUE_BYTES` per value).
 * A line longer than `MAX_VALUE_BYTES` is reported and skipped without being held whole.
 *
 * A producer that never pauses (`yes | stoa pub …`) keeps stdin readable forever, and reading
 * it is all promise jobs: without a turn of the event loop, no timer (heartbeats), no socket and
 * no signal handler ever runs. So every `YIELD_EVERY_MS` of reading the generator gives the
 * event loop one full turn (a timer) before it goes on.
 */
import { MAX_VALUE_BYTES } from "./protocol.ts";
import type { Value } from "./value.ts";
import { describeError } from "../core/errors.ts";

/** Longest stretch of reading stdin before the event loop gets a turn (see the header). */
const YIELD_EVERY_MS = 20;

export const InputFormats = ["lines", "json", "raw"] as const;
type InputFormat = (typeof InputFormats)[number];

export interface BadLine {
  line: number;
  reason: string;
}

export async function* readValues(
  source: ReadableStream<Uint8Array>,
  format: InputFormat,
  onBadLine: (bad: BadLine) => void,
): AsyncGenerator<Value> {
  let turnAt = performance.now() + YIELD_EVERY_MS;
  const turn = async (): Promise<void> => {
    if (performance.now() < turnAt) return;
    await new Promise<void>((resolve) => setTimeout(resolve, 0));
    turnAt = performance.now() + YIELD_EVERY_MS;
  };
  if (format === "raw") {
    for await (const chunk of source) {
      await turn();
      for (let at = 0; at < chunk.byteLength; at += MAX_VALUE_BYTES) {
        yield chunk.slice(at, at + MAX_VALUE_BYTES);
      }
    }
    return;
  }
  const decoder = new TextDecoder();
  let pending = "";
  let skipping = false; // inside a line already found too long
  let line = 0;
  const take = function* (text: string): Generator<Value> {
    line++;
    const clean = text.endsWith("\r") ? text.slice(0, -1) : text;
    if (format === "lines") {
      yield clean;
      return;
    }
    if (clean.trim() === "") return;
    try {
      yield JSON.parse(clean) as Value;
    } catch (err) {
      onBadLine({ line, reason: `not JSON: ${describeError(err)}` });
    }
  };
  for await (const chunk of source) {
    await turn();
    pending += decoder.decode(chunk, { stream: true });
    for (let nl = pending.indexOf("\n"); nl >= 0; nl = pending.indexOf("\n")) {
      const text = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      if (skipping) {
        skipping = false;
        continue;
      }
      yield* take(text);
    }
    if (pending.length > MAX_VALUE_BYTES) {
      if (!skipping) onBadLine({ line: ++line, reason: `longer than ${MAX_VALUE_BYTES} bytes; skipped` });
      skipping = true;
      pending = "";
    }
  }
  pending += decoder.decode();
  if (pending !== "" && !skipping) yield* take(pending);
}
