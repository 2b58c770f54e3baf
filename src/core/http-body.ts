/**
 * An HTTP body read whole but bounded: a request a server answers, a response a client reads.
 * A declared `Content-Length` over the limit is refused before reading; a body without one (or
 * lying about it) is counted as it streams in and refused on the first chunk past the limit, so
 * at most `maxBytes` plus one chunk is ever held.
 */
import { Buffer } from "node:buffer";
import { describeError } from "./errors.ts";

/**
 * The bytes of `message`'s body, or null when it has none. Throws `tooLarge()` — the caller's
 * error, in its own words — when the body is longer than `maxBytes`; the rest is not read.
 * @example
 * const bytes = await readBodyLimited(c.req.raw, MAX_BODY_BYTES, () => new StoaError("too_large", "…"));
 */
export async function readBodyLimited(message: Request | Response, maxBytes: number, tooLarge: () => Error): Promise<Uint8Array | null> {
  const body = message.body;
  if (body === null) return null;
  // The cancels are not awaited: the caller's error need not wait for the peer to notice.
  if (Number(message.headers.get("content-length") ?? "0") > maxBytes) {
    void body.cancel().catch(() => {});
    throw tooLarge();
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.length;
    if (size > maxBytes) {
      void reader.cancel().catch(() => {});
      throw tooLarge();
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks);
}

/**
 * The JSON value of `message`'s body (read as `readBodyLimited`), or the caller's error from
 * `bad(reason)` when there is no body, it is not UTF-8, or not JSON — the reason says which,
 * ending with what to send instead.
 * @example
 * const json = await readJsonBody(c.req.raw, MAX_BODY_BYTES, { tooLarge, bad: (why) => new ApiError("bad_json", why) });
 */
export async function readJsonBody(message: Request | Response, maxBytes: number, errors: { tooLarge: () => Error; bad: (reason: string) => Error }): Promise<unknown> {
  const bytes = await readBodyLimited(message, maxBytes, errors.tooLarge);
  if (bytes === null) throw errors.bad("the request has no body; send a JSON object");
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw errors.bad("the request body is not UTF-8 text; send a JSON object");
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    const why = describeError(err).slice(0, 200);
    throw errors.bad(`the request body is not valid JSON (${why}); send a JSON object`);
  }
}
