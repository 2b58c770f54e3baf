import { describe, expect, test } from "bun:test";
import { readBodyLimited } from "../../src/core/http-body.ts";

const tooLarge = () => new Error("too large");

/** A body of `chunks` streamed without a Content-Length; `pulled` counts the chunks read. */
function streamed(chunks: Uint8Array[]): { response: Response; pulled: () => number } {
  let i = 0;
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      const chunk = chunks[i++];
      if (chunk === undefined) controller.close();
      else controller.enqueue(chunk);
    },
  });
  return { response: new Response(body), pulled: () => i };
}

describe("readBodyLimited", () => {
  test("null for a message without a body", async () => {
    expect(await readBodyLimited(new Response(null), 10, tooLarge)).toBeNull();
    expect(await readBodyLimited(new Request("http://x/"), 10, tooLarge)).toBeNull();
  });

  test("the whole body up to the limit, from a request or a response", async () => {
    const request = new Request("http://x/", { method: "POST", body: "0123456789" });
    expect(new TextDecoder().decode((await readBodyLimited(request, 10, tooLarge)) ?? undefined)).toBe("0123456789");
    const { response } = streamed([Uint8Array.of(1, 2), Uint8Array.of(3)]);
    expect(await readBodyLimited(response, 3, tooLarge)).toEqual(new Uint8Array([1, 2, 3]));
  });

  test("a declared Content-Length over the limit is refused before reading", async () => {
    const response = new Response("x".repeat(11), { headers: { "content-length": "11" } });
    await expect(readBodyLimited(response, 10, tooLarge)).rejects.toThrow("too large");
  });

  test("a streamed body is refused on the first chunk past the limit; the rest is not read", async () => {
    const { response, pulled } = streamed(Array.from({ length: 10 }, () => new Uint8Array(4)));
    await expect(readBodyLimited(response, 10, tooLarge)).rejects.toThrow("too large");
    expect(pulled()).toBeLessThan(10);
  });
});
