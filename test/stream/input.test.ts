import { describe, expect, test } from "bun:test";
import { type BadLine, readValues } from "../../src/stream/input.ts";
import { MAX_VALUE_BYTES } from "../../src/stream/protocol.ts";

function streamOf(chunks: (string | Uint8Array)[]): ReadableStream<Uint8Array> {
  const bytes = chunks.map((c) => (typeof c === "string" ? new TextEncoder().encode(c) : c));
  return new ReadableStream({
    start(controller) {
      for (const b of bytes) controller.enqueue(b);
      controller.close();
    },
  });
}

async function collect(chunks: (string | Uint8Array)[], format: "lines" | "json" | "raw") {
  const bad: BadLine[] = [];
  const values: unknown[] = [];
  for await (const v of readValues(streamOf(chunks), format, (b) => bad.push(b))) values.push(v);
  return { values, bad };
}

describe("reading values from stdin", () => {
  test("lines: split anywhere, CRLF trimmed, an unterminated last line kept", async () => {
    const { values } = await collect(["a\r\nb", "b\n", "", "c\n\nd"], "lines");
    expect(values).toEqual(["a", "bb", "c", "", "d"]);
  });

  test("lines: multi-byte characters split across chunks stay whole", async () => {
    const euro = new TextEncoder().encode("€\n");
    const { values } = await collect([euro.slice(0, 1), euro.slice(1)], "lines");
    expect(values).toEqual(["€"]);
  });

  test("json: one value per line; bad lines reported by number and skipped; blank lines ignored", async () => {
    const { values, bad } = await collect(['{"a":1}\n', "\n", "nope\n", "[1,2]\n", "3"], "json");
    expect(values).toEqual([{ a: 1 }, [1, 2], 3]);
    expect(bad).toHaveLength(1);
    expect(bad[0]?.line).toBe(3);
  });

  test("a line over the value limit is reported and skipped, the next one still read", async () => {
    const huge = "x".repeat(MAX_VALUE_BYTES + 10);
    const { values, bad } = await collect([huge.slice(0, 600_000), huge.slice(600_000), "\nnext\n"], "lines");
    expect(values).toEqual(["next"]);
    expect(bad[0]?.reason).toContain("longer than");
  });

  test("raw: chunks as bytes", async () => {
    const { values } = await collect([new Uint8Array([1, 2]), new Uint8Array([3])], "raw");
    expect(values).toEqual([new Uint8Array([1, 2]), new Uint8Array([3])]);
  });
});
