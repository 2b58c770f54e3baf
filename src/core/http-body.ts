/**
 * An HTTP body read whole but bounded: a request a server answers, a response a client reads.
 * A declared `Content-Length` over the limit is refused before reading; a body without one (or
 * lying about it) is counted as it streams in and refused on the first chunk past the limit, so
 * at most `maxBytes` plus one chunk is ever held.
 */
import { Buffer } from "node:buffer";

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
