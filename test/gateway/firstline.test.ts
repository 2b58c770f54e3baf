import { describe, expect, test } from "bun:test";
import { FirstLineParser, type FirstLineResult } from "../../src/gateway/firstline.ts";
import { MAX_FIRST_LINE_BYTES } from "../../src/gateway/protocol.ts";

const bytes = (s: string) => Buffer.from(s, "latin1");

/** Feeds `input` in the given pieces and returns the first settled result (or `more`). */
function feed(...pieces: string[]): FirstLineResult {
  const parser = new FirstLineParser();
  for (const piece of pieces) {
    const result = parser.push(bytes(piece));
    if (result.state !== "more") return result;
  }
  return { state: "more" };
}

function expectError(result: FirstLineResult, error: string): void {
  expect(result.state).toBe("error");
  if (result.state === "error") expect(result.error as string).toBe(error);
}

describe("the HTTP form", () => {
  test("routes GET /pub/<pub_id> and forwards every byte read, headers included", () => {
    const input = "GET /pub/abc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n";
    const result = feed(input);
    expect(result).toMatchObject({ state: "done", mode: "http", pubId: "abc" });
    if (result.state === "done") expect(Buffer.from(result.forward).toString("latin1")).toBe(input);
  });

  test("takes the pub_id up to the next / or ?", () => {
    expect(feed("GET /pub/abc/more/path HTTP/1.1\r\n")).toMatchObject({ pubId: "abc" });
    expect(feed("GET /pub/abc?x=1 HTTP/1.1\r\n")).toMatchObject({ pubId: "abc" });
    expect(feed("GET /pub/a.b-c_d?x=/y HTTP/1.1\r\n")).toMatchObject({ pubId: "a.b-c_d" });
  });

  test("accepts a bare LF as the line end", () => {
    expect(feed("GET /pub/abc HTTP/1.1\n")).toMatchObject({ state: "done", pubId: "abc" });
  });

  test("reassembles a line split anywhere, even between CR and LF", () => {
    const line = "GET /pub/xyz HTTP/1.1\r\nHost: h\r\n\r\n";
    const lineEnd = line.indexOf("\n") + 1;
    for (let cut = 1; cut < line.length; cut++) {
      const result = feed(line.slice(0, cut), line.slice(cut));
      expect(result).toMatchObject({ state: "done", pubId: "xyz" });
      // Settled by the piece holding the LF: that piece is forwarded whole, later ones are not read.
      const forwarded = cut < lineEnd ? line : line.slice(0, cut);
      if (result.state === "done") expect(Buffer.from(result.forward).toString("latin1")).toBe(forwarded);
    }
  });

  test("refuses other methods, versions and paths as bad request lines", () => {
    for (const line of [
      "POST /pub/abc HTTP/1.1\r\n",
      "get /pub/abc HTTP/1.1\r\n",
      "GET /pubs/abc HTTP/1.1\r\n",
      "GET /x/../pub/abc HTTP/1.1\r\n",
      "GET http://h/pub/abc HTTP/1.1\r\n",
      "GET /pub/abc HTTP/1.0\r\n",
      "GET /pub/abc HTTP/2\r\n",
      "GET /pub/abc  HTTP/1.1\r\n",
      "GET /pub/abc HTTP/1.1 extra\r\n",
      "GET /pub/abc\r\n",
      "\r\n",
    ]) {
      expectError(feed(line), "bad_request_line");
    }
  });

  test("refuses a wrong byte as soon as it arrives, without waiting for the LF", () => {
    const parser = new FirstLineParser();
    expect(parser.push(bytes("GE")).state).toBe("more");
    expectError(parser.push(bytes("X")), "bad_request_line");
    expectError(feed("\x16\x03\x01\x02\x00"), "bad_request_line"); // a TLS ClientHello
    expectError(feed("GET /pub/a\x00"), "bad_request_line");
    expectError(feed("GET /pub/a\xe9"), "bad_request_line");
    expectError(feed("GET /pub/a\rb"), "bad_request_line");
  });
});

describe("pub_id validation", () => {
  test.each([
    ["..", "GET /pub/.. HTTP/1.1\r\n"],
    ["%2e%2e", "GET /pub/%2e%2e HTTP/1.1\r\n"],
    ["%2E%2E/x", "GET /pub/%2E%2E/x HTTP/1.1\r\n"],
    ["a%2Fb", "GET /pub/a%2Fb HTTP/1.1\r\n"],
    ["%00", "GET /pub/%00 HTTP/1.1\r\n"],
    ["empty", "GET /pub/ HTTP/1.1\r\n"],
    ["empty before ?", "GET /pub/?x HTTP/1.1\r\n"],
    ["empty before /", "GET /pub//abc HTTP/1.1\r\n"],
    ["leading dot", "GET /pub/.hidden HTTP/1.1\r\n"],
    ["65 characters", `GET /pub/${"a".repeat(65)} HTTP/1.1\r\n`],
    ["a fragment", "GET /pub/abc#x HTTP/1.1\r\n"],
    ["prelude a/b", "STOA1 a/b\n"],
    ["prelude ..", "STOA1 ..\n"],
    ["prelude %2e%2e", "STOA1 %2e%2e\n"],
    ["prelude empty", "STOA1 \n"],
    ["prelude with a trailing space", "STOA1 abc \n"],
  ])("refuses %s as an invalid pub_id", (_name, line) => {
    expectError(feed(line), "invalid_pub_id");
  });

  test("accepts the longest valid pub_id", () => {
    const id = `A${"b".repeat(63)}`;
    expect(feed(`GET /pub/${id} HTTP/1.1\r\n`)).toMatchObject({ state: "done", pubId: id });
  });
});

describe("the raw prelude", () => {
  test("strips the prelude and forwards only what follows it", () => {
    const result = feed("STOA1 abc\nhello");
    expect(result).toMatchObject({ state: "done", mode: "prelude", pubId: "abc" });
    if (result.state === "done") expect(Buffer.from(result.forward).toString()).toBe("hello");
  });

  test("accepts CRLF and forwards nothing when nothing followed", () => {
    const result = feed("STO", "A1 abc\r", "\n");
    expect(result).toMatchObject({ state: "done", pubId: "abc" });
    if (result.state === "done") expect(result.forward.length).toBe(0);
  });

  test("refuses a wrong magic", () => {
    expectError(feed("STOA2 abc\n"), "bad_request_line");
    expectError(feed("STOA1abc\n"), "bad_request_line");
  });
});

describe("limits", () => {
  test(`accepts a line of exactly ${MAX_FIRST_LINE_BYTES} bytes with its CRLF`, () => {
    const head = "GET /pub/abc/";
    const tail = " HTTP/1.1\r\n";
    const line = head + "x".repeat(MAX_FIRST_LINE_BYTES - head.length - tail.length) + tail;
    expect(line.length).toBe(MAX_FIRST_LINE_BYTES);
    expect(feed(line)).toMatchObject({ state: "done", pubId: "abc" });
  });

  test("refuses a line without LF in the first 8 KiB, holding no more than that", () => {
    const parser = new FirstLineParser();
    const piece = bytes(`GET /pub/abc/${"x".repeat(1000)}`);
    let result: FirstLineResult = { state: "more" };
    while (result.state === "more") {
      result = parser.push(piece);
      expect(parser.buffered).toBeLessThanOrEqual(MAX_FIRST_LINE_BYTES);
    }
    expectError(result, "first_line_too_long");
  });

  test("a smaller limit is honoured", () => {
    const parser = new FirstLineParser(16);
    expectError(parser.push(bytes("GET /pub/abcdefghijk HTTP/1.1\r\n")), "first_line_too_long");
  });

  test("a settled parser refuses more input with a StoaError", () => {
    const parser = new FirstLineParser();
    parser.push(bytes("STOA1 a\n"));
    expect(() => parser.push(bytes("x"))).toThrow("after the first line was settled");
  });
});

describe("paths a proxy in front could read differently", () => {
  test.each([
    "/pub/a/../b",
    "/pub/a/./b",
    "/pub/a/..",
    "/pub/a/%2e%2e/b",
    "/pub/a/%2F",
    "/pub/a/x%5cy",
    "/pub/a/x\\y",
    // Double (and deeper) encodings: a proxy that decodes once more would see `..`, `/`, `\\`.
    "/pub/a/%252e%252e/b",
    "/pub/a/%252E%252e",
    "/pub/a/x%252fy",
    "/pub/a/x%255cy",
    "/pub/a/%25252e%25252e",
    "/pub/a/100%25",
  ])(
    "refuses GET %s with invalid_pub_id",
    (path) => {
      const parser = new FirstLineParser();
      const result = parser.push(new TextEncoder().encode(`GET ${path} HTTP/1.1\r\n`));
      expect(result.state).toBe("error");
      if (result.state === "error") expect(result.error).toBe("invalid_pub_id");
    },
  );

  test("a query may hold anything", () => {
    const result = new FirstLineParser().push(new TextEncoder().encode("GET /pub/a/x?p=../%2e%252e HTTP/1.1\r\n"));
    expect(result.state).toBe("done");
  });
});

describe("health checks, answered before routing", () => {
  test("GET /ready and GET /healthz are recognised, split anywhere", () => {
    expect(feed("GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")).toEqual({ state: "health", check: "ready" });
    expect(feed("GET /heal", "thz HTTP/1.1\r", "\n")).toEqual({ state: "health", check: "healthz" });
    expect(feed("GET /healthz HTTP/1.1\n")).toEqual({ state: "health", check: "healthz" });
  });

  test("only the exact lines: a query, another version or a longer path is a bad line", () => {
    expectError(feed("GET /ready?full=1 HTTP/1.1\r\n"), "bad_request_line");
    expectError(feed("GET /healthz HTTP/1.0\r\n"), "bad_request_line");
    expectError(feed("GET /readyz HTTP/1.1\r\n"), "bad_request_line");
    expectError(feed("GET /health HTTP/1.1\r\n"), "bad_request_line");
  });

  test("a publisher's path that merely looks like one is still routed", () => {
    expect(feed("GET /pub/ready HTTP/1.1\r\n")).toMatchObject({ state: "done", pubId: "ready" });
  });
});
