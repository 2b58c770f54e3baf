import { describe, expect, test } from "bun:test";
import { StoaError } from "../../src/core/errors.ts";
import {
  AckReader,
  DIRECT_ACK_BYTES,
  HelloReader,
  MAX_DIRECT_HELLO_BYTES,
  encodeDirectAck,
  encodeDirectHello,
} from "../../src/hotlink/direct-wire.ts";
import { MAX_DIRECT_TOKEN_LENGTH, MAX_SID_LENGTH, MIN_DIRECT_TOKEN_LENGTH } from "../../src/hotlink/protocol.ts";

const SID = "0b5e3c9a-6a55-4f4e-9b8f-1d2c3b4a5f60";
const TOK = "Zm9vYmFyYmF6cXV4LWhvdGxpbmstdG9r";
const latin1 = (text: string): Uint8Array => Buffer.from(text, "latin1");

function readHello(...chunks: Uint8Array[]) {
  const reader = new HelloReader();
  let result = reader.push(new Uint8Array(0));
  for (const chunk of chunks) {
    result = reader.push(chunk);
    if (result.state !== "more") break;
  }
  return { result, reader };
}

function errorOf(result: ReturnType<HelloReader["push"]>): StoaError {
  if (result.state !== "error") throw new Error(`expected an error, got ${result.state}`);
  expect(result.error).toBeInstanceOf(StoaError);
  return result.error;
}

describe("the direct hello", () => {
  test("is byte-identical to what senders have always written: HLD1, sid, token, LF", () => {
    expect(Buffer.from(encodeDirectHello(SID, TOK)).toString("latin1")).toBe(`HLD1 ${SID} ${TOK}\n`);
  });

  test("reads a hello and hands back the HLNK bytes that followed it in the same chunk", () => {
    const { result, reader } = readHello(latin1(`HLD1 ${SID} ${TOK}\nHLNK\x01rest`));
    expect(result).toMatchObject({ state: "done", sid: SID, tok: TOK });
    if (result.state === "done") expect(Buffer.from(result.rest).toString("latin1")).toBe("HLNK\x01rest");
    expect(reader.buffered).toBe(0);
  });

  test("reads a hello split one byte per read, holding only its bytes meanwhile", () => {
    const reader = new HelloReader();
    const hello = encodeDirectHello(SID, TOK);
    for (let i = 0; i < hello.length - 1; i++) {
      expect(reader.push(hello.subarray(i, i + 1))).toEqual({ state: "more" });
      expect(reader.buffered).toBe(i + 1);
    }
    expect(reader.push(hello.subarray(hello.length - 1))).toMatchObject({ state: "done", sid: SID, tok: TOK });
  });

  test("accepts the longest sid and token, and fits in MAX_DIRECT_HELLO_BYTES", () => {
    const hello = encodeDirectHello("s".repeat(MAX_SID_LENGTH), "t".repeat(MAX_DIRECT_TOKEN_LENGTH));
    expect(hello.length).toBe(MAX_DIRECT_HELLO_BYTES);
    expect(readHello(hello).result).toMatchObject({ state: "done" });
  });

  test("refuses what is not a hello at its first wrong byte, before any LF", () => {
    expect(errorOf(readHello(latin1("GET / HTTP/1.1")).result).code).toBe("decode");
    expect(errorOf(readHello(latin1("HLD2 ")).result).message).toContain('starts with "HLD1 <sid> <tok>\\n"');
    expect(errorOf(readHello(latin1("hld1 ")).result).code).toBe("decode");
  });

  test("refuses an empty sid, a byte outside [A-Za-z0-9_-], a CR, or a short token, each with its reason", () => {
    expect(errorOf(readHello(latin1(`HLD1  ${TOK}\n`)).result).message).toContain("empty sid");
    expect(errorOf(readHello(latin1(`HLD1 a/b ${TOK}\n`)).result).message).toContain("not allowed in the direct hello's sid");
    expect(errorOf(readHello(latin1(`HLD1 ${SID} ${TOK}\r\n`)).result).message).toContain("byte 0x0d is not allowed in the direct hello's token");
    expect(errorOf(readHello(latin1(`HLD1 ${SID}\n`)).result).message).toContain("sid");
    const short = errorOf(readHello(latin1(`HLD1 ${SID} ${"t".repeat(MIN_DIRECT_TOKEN_LENGTH - 1)}\n`)).result);
    expect(short.code).toBe("decode");
    expect(short.message).toContain(`has ${MIN_DIRECT_TOKEN_LENGTH - 1} characters`);
  });

  test("refuses an oversize sid or token as too_large on the first byte over the limit", () => {
    const sid = errorOf(readHello(latin1(`HLD1 ${"s".repeat(MAX_SID_LENGTH + 1)}`)).result);
    expect(sid.code).toBe("too_large");
    expect(sid.message).toContain(`longer than ${MAX_SID_LENGTH}`);
    const { result, reader } = readHello(latin1(`HLD1 ${SID} ${"t".repeat(MAX_DIRECT_TOKEN_LENGTH + 1)}`));
    expect(errorOf(result).code).toBe("too_large");
    expect(reader.buffered).toBe(0);
  });

  test("stays failed: later bytes get the same error, never a hello", () => {
    const reader = new HelloReader();
    const first = reader.push(latin1("XLD1 "));
    expect(reader.push(encodeDirectHello(SID, TOK))).toBe(first);
  });

  test("after a hello, more bytes are a caller bug and say so", () => {
    const reader = new HelloReader();
    reader.push(encodeDirectHello(SID, TOK));
    expect(errorOf(reader.push(latin1("HLNK"))).code).toBe("internal");
  });
});

describe("the acknowledgement stream", () => {
  const acks = (...seqs: number[]): Uint8Array => Buffer.concat(seqs.map((s) => encodeDirectAck(s)));

  test("is 8-byte big-endian seqs", () => {
    expect([...encodeDirectAck(0x0102_0304_0506)]).toEqual([0, 0, 1, 2, 3, 4, 5, 6]);
    expect(encodeDirectAck(1).length).toBe(DIRECT_ACK_BYTES);
  });

  test("reports the highest seq acknowledged so far, 0 before the first", () => {
    const reader = new AckReader();
    expect(reader.push(new Uint8Array(0))).toEqual({ ok: true, acked: 0 });
    expect(reader.push(acks(1, 5, 9))).toEqual({ ok: true, acked: 9 });
    expect(reader.push(acks(Number.MAX_SAFE_INTEGER))).toEqual({ ok: true, acked: Number.MAX_SAFE_INTEGER });
  });

  test("gathers a split acknowledgement, holding at most 7 bytes", () => {
    const reader = new AckReader();
    const bytes = acks(3, 4);
    expect(reader.push(bytes.subarray(0, 5))).toEqual({ ok: true, acked: 0 });
    expect(reader.buffered).toBe(5);
    expect(reader.push(bytes.subarray(5, 15))).toEqual({ ok: true, acked: 3 });
    expect(reader.buffered).toBe(7);
    expect(reader.push(bytes.subarray(15))).toEqual({ ok: true, acked: 4 });
    expect(reader.buffered).toBe(0);
  });

  test("refuses an acknowledgement that does not advance (0 first, a repeat, a step back)", () => {
    for (const bytes of [acks(0), acks(4, 4), acks(4, 3)]) {
      const read = new AckReader().push(bytes);
      expect(read.ok).toBe(false);
      if (!read.ok) {
        expect(read.error.code).toBe("decode");
        expect(read.error.message).toContain("does not advance");
      }
    }
  });

  test("refuses a seq over 2^53-1 and stays failed", () => {
    const reader = new AckReader();
    const big = new Uint8Array(8);
    new DataView(big.buffer).setBigUint64(0, 2n ** 53n);
    const read = reader.push(big);
    expect(read.ok).toBe(false);
    if (!read.ok) expect(read.error.message).toContain("over 2^53-1");
    expect(reader.push(acks(1))).toEqual(read);
  });
});
