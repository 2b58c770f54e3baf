import { describe, expect, test } from "bun:test";
import { encode } from "../../src/core/codec.ts";
import { StoaError } from "../../src/core/errors.ts";
import {
  type HotlinkMessage,
  type HotlinkMessageInput,
  MAX_CANDIDATES,
  MAX_DATA_PAYLOAD_BYTES,
  MAX_MESSAGE_BYTES,
  MAX_REASON_LENGTH,
  MessageType,
  PROTOCOL_VERSION,
  encodeMessage,
  parseMessage,
  safeParseMessage,
} from "../../src/hotlink/protocol.ts";

const FPR = "ab".repeat(32);
const TOKEN = "tok_0123456789abcdef";

/** At least one message of every type, with optional fields present and absent. */
const SAMPLES: HotlinkMessage[] = [
  { t: MessageType.Hello, v: PROTOCOL_VERSION },
  { t: MessageType.Hello, v: PROTOCOL_VERSION, agt: "stoa/0.1.0" },
  { t: MessageType.Welcome, v: PROTOCOL_VERSION, usr: "alice@example.org", mmb: MAX_MESSAGE_BYTES, mpb: MAX_DATA_PAYLOAD_BYTES },
  { t: MessageType.Ping, n: 0 },
  { t: MessageType.Pong, n: Number.MAX_SAFE_INTEGER },
  { t: MessageType.Error, code: "too_large", msg: "message of 9000000 bytes is over the limit" },
  { t: MessageType.Error, code: "unknown_session", msg: "no such session", sid: "s1" },
  { t: MessageType.Open, sid: "6f1c2e0a-9b7d-4e3f-8a21-0c5d4b3a2f10", pth: "alice@example.org/mpc/run1/0_to_1" },
  { t: MessageType.Open, sid: "s1", pth: "alice/x", to: "bob", frm: "alice" },
  { t: MessageType.Accept, sid: "s1" },
  { t: MessageType.Accept, sid: "s1", frm: "bob" },
  { t: MessageType.Reject, sid: "s1", rsn: "no receiver" },
  { t: MessageType.Data, sid: "s1", seq: 1, pay: new Uint8Array(0) },
  { t: MessageType.Data, sid: "s1", seq: 2 ** 40, pth: "alice/ü/🚀", etg: "v1", pay: Uint8Array.of(1, 2, 3) },
  { t: MessageType.Close, sid: "s1" },
  { t: MessageType.Close, sid: "s1", rsn: "peer gone" },
  {
    t: MessageType.Signal,
    sid: "s1",
    knd: "direct_offer",
    adr: ["192.0.2.1:40000", "[2001:db8::1]:40000", "host.example:1"],
    tok: TOKEN,
    fpr: FPR,
  },
  { t: MessageType.Signal, sid: "s1", knd: "direct_answer", to: "bob" },
  { t: MessageType.Signal, sid: "s1", knd: "direct_answer", err: "dial 192.0.2.1:40000: timeout", frm: "alice" },
  { t: MessageType.Signal, sid: "s1", knd: "sdp_offer", tok: '{"type":"offer","sdp":"v=0"}' },
  { t: MessageType.Signal, sid: "s1", knd: "sdp_answer", tok: '{"type":"answer","sdp":"v=0"}' },
  { t: MessageType.Signal, sid: "s1", knd: "ice_candidate", tok: "{}", err: "gathering failed" },
];

function errorOf(fn: () => unknown): StoaError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(StoaError);
    return err as StoaError;
  }
  throw new Error("expected a StoaError");
}

/** The code `parseMessage` gives for a raw value encoded as CBOR. */
function parseCode(value: unknown): string {
  const result = safeParseMessage(encode(value, { maxBytes: 64 * 1024 * 1024 }));
  return result.ok ? "ok" : result.error.code;
}

const data = (fields: Record<string, unknown>): Record<string, unknown> => ({
  t: MessageType.Data,
  sid: "s1",
  seq: 1,
  pay: new Uint8Array(1),
  ...fields,
});

describe("round trips", () => {
  test("every message type comes back as it was sent", () => {
    const types = new Set<number>();
    for (const message of SAMPLES) {
      expect(parseMessage(encodeMessage(message))).toEqual(message);
      types.add(message.t);
    }
    expect([...types].sort((a, b) => a - b)).toEqual(Object.values(MessageType).sort((a, b) => a - b));
  });

  test("Data's hand-written CBOR decodes like the generic encoder's, at every length boundary", () => {
    const seqs = [1, 23, 24, 255, 256, 65_535, 65_536, 2 ** 32 - 1, 2 ** 32, Number.MAX_SAFE_INTEGER];
    const sizes = [0, 1, 23, 24, 255, 256, 65_535, 65_536];
    const paths = [undefined, "a/b", "p".repeat(300), "ü/".repeat(1000) + "x"];
    const etags = [undefined, "", "e".repeat(23), "é".repeat(64)];
    for (const seq of seqs) {
      for (const size of sizes) {
        const message: HotlinkMessageInput = {
          t: MessageType.Data,
          sid: "x".repeat((seq % 64) + 1),
          seq,
          pay: Uint8Array.from({ length: size }, (_, i) => i & 0xff),
        };
        const pth = paths[size % paths.length];
        const etg = etags[seq % etags.length];
        if (pth !== undefined) message.pth = pth;
        if (etg !== undefined) message.etg = etg;
        const fast = encodeMessage(message);
        expect(parseMessage(fast)).toEqual(parseMessage(encode(message, { maxBytes: MAX_MESSAGE_BYTES })));
        expect(parseMessage(fast)).toEqual(message as HotlinkMessage);
      }
    }
  });

  test("a bigint seq, as another CBOR encoder may send it, arrives as a number", () => {
    const message = { t: MessageType.Data, sid: "s1", seq: 5n, pay: new Uint8Array(0) };
    expect(parseMessage(encode(message))).toEqual({ ...message, seq: 5 });
    expect(parseMessage(encodeMessage(message))).toEqual({ ...message, seq: 5 });
  });

  test("a full 8 MiB payload fits the default message limit and is not aliased", () => {
    const pay = new Uint8Array(MAX_DATA_PAYLOAD_BYTES).fill(7);
    const message = { t: MessageType.Data, sid: "s".repeat(64), seq: 3, pth: "p".repeat(4096), etg: "e".repeat(128), pay };
    const bytes = encodeMessage(message);
    expect(bytes.byteLength).toBeLessThanOrEqual(MAX_MESSAGE_BYTES);
    const decoded = parseMessage(bytes);
    bytes.fill(0);
    expect(decoded).toEqual(message);
  });

  test("accepts an ArrayBuffer and ignores fields it does not know", () => {
    const bytes = encode({ t: MessageType.Close, sid: "s1", future: [1, 2] });
    const copy = new ArrayBuffer(bytes.byteLength);
    new Uint8Array(copy).set(bytes);
    expect(parseMessage(copy)).toEqual({ t: MessageType.Close, sid: "s1" });
  });
});

describe("rejection", () => {
  test("wrong types, unknown message types and missing fields are schema errors", () => {
    for (const value of [
      { t: 99 },
      { t: "12" },
      { sid: "s1" },
      [MessageType.Close, "s1"],
      "hello",
      { t: MessageType.Hello },
      { t: MessageType.Hello, v: 0 },
      { t: MessageType.Welcome, v: 1, usr: "Alice", mmb: 1 << 20, mpb: 0 },
      { t: MessageType.Ping },
      { t: MessageType.Ping, n: -1 },
      { t: MessageType.Error, code: "Bad Code", msg: "x" },
      { t: MessageType.Error, code: "x" },
      { t: MessageType.Open, sid: "s1" },
      { t: MessageType.Open, sid: "s1", pth: "a/b", to: "no/slash" },
      { t: MessageType.Accept },
      { t: MessageType.Reject, sid: "s1" },
      { t: MessageType.Reject, sid: "s1", rsn: "" },
      { t: MessageType.Reject, sid: "s1", rsn: "r".repeat(MAX_REASON_LENGTH + 1) },
      { t: MessageType.Close, sid: 1 },
      data({ sid: undefined }),
      data({ sid: "" }),
      data({ sid: "s".repeat(65) }),
      data({ sid: "a/b" }),
      data({ sid: "a b" }),
      data({ pay: undefined }),
      data({ pay: "bytes" }),
      data({ pay: [1, 2] }),
      data({ seq: 0 }),
      data({ seq: -1 }),
      data({ seq: 1.5 }),
      data({ seq: "1" }),
      data({ seq: 2 ** 53 }),
      data({ seq: 2n ** 60n }),
      data({ seq: undefined }),
      data({ etg: "e".repeat(129) }),
      data({ etg: "é".repeat(65) }),
      { t: MessageType.Signal, sid: "s1", knd: "quic_offer" },
      { t: MessageType.Signal, sid: "s1", knd: "direct_offer", adr: [], tok: TOKEN, fpr: FPR },
      { t: MessageType.Signal, sid: "s1", knd: "direct_offer", adr: ["h:1"], tok: TOKEN },
      { t: MessageType.Signal, sid: "s1", knd: "direct_offer", adr: ["h:1"], tok: "short", fpr: FPR },
      { t: MessageType.Signal, sid: "s1", knd: "direct_offer", adr: ["h:1"], tok: TOKEN, fpr: FPR.toUpperCase() },
      { t: MessageType.Signal, sid: "s1", knd: "direct_offer", adr: ["h:1"], tok: TOKEN, fpr: FPR.slice(2) },
      {
        t: MessageType.Signal,
        sid: "s1",
        knd: "direct_offer",
        adr: Array.from({ length: MAX_CANDIDATES + 1 }, (_, i) => `10.0.0.${i}:1`),
        tok: TOKEN,
        fpr: FPR,
      },
      { t: MessageType.Signal, sid: "s1", knd: "sdp_offer", tok: "x".repeat(16 * 1024 + 1) },
    ]) {
      expect({ value, code: parseCode(value) }).toEqual({ value, code: "schema" });
    }
  });

  test("direct-path candidates must be host:port with a port to dial", () => {
    for (const candidate of ["nohost", "host:0", "host:70000", "host:", ":80", "::1:80", "[::1", "[::1]", "a b:1", "h:01", ""]) {
      const value = { t: MessageType.Signal, sid: "s1", knd: "direct_offer", adr: [candidate], tok: TOKEN, fpr: FPR };
      expect({ candidate, code: parseCode(value) }).toEqual({ candidate, code: "schema" });
    }
  });

  test("paths that escape, hide or confuse are schema errors, in Open and in Data", () => {
    for (const pth of ["", "../etc/passwd", "alice/../bob", "alice/./x", "/alice/x", "alice/x/", "alice//x", "alice/x\u0000y", "..", ".", "p".repeat(4097), "é".repeat(2049)]) {
      expect({ pth, code: parseCode({ t: MessageType.Open, sid: "s1", pth }) }).toEqual({ pth, code: "schema" });
      expect({ pth, code: parseCode(data({ pth })) }).toEqual({ pth, code: "schema" });
    }
    expect(parseCode({ t: MessageType.Open, sid: "s1", pth: "p".repeat(4096) })).toBe("ok");
  });

  test("encodeMessage refuses what the peer would refuse", () => {
    expect(errorOf(() => encodeMessage({ t: MessageType.Open, sid: "s1", pth: "alice/../bob" })).code).toBe("schema");
    expect(errorOf(() => encodeMessage({ t: MessageType.Data, sid: "s1", seq: 0, pay: new Uint8Array(0) })).code).toBe("schema");
    expect(errorOf(() => encodeMessage({ t: MessageType.Data, sid: "s1", seq: 1, etg: "\uD800", pay: new Uint8Array(0) })).code).toBe(
      "schema",
    );
    const hugePay = new Uint8Array(MAX_MESSAGE_BYTES);
    expect(errorOf(() => encodeMessage({ t: MessageType.Data, sid: "s1", seq: 1, pay: hugePay })).code).toBe("too_large");
    expect(errorOf(() => encodeMessage({ t: MessageType.Data, sid: "s1", seq: 1, pay: new Uint8Array(2000) }, { maxBytes: 1024 })).code).toBe(
      "too_large",
    );
    expect(errorOf(() => encodeMessage({ t: MessageType.Error, code: "x", msg: "m".repeat(1000) }, { maxBytes: 100 })).code).toBe(
      "too_large",
    );
  });

  test("oversize messages are refused before decoding, at the default or a custom limit", () => {
    const over = encode(data({ pay: new Uint8Array(MAX_MESSAGE_BYTES) }), { maxBytes: 2 * MAX_MESSAGE_BYTES });
    expect(errorOf(() => parseMessage(over)).code).toBe("too_large");
    expect(parseMessage(over, { maxBytes: 2 * MAX_MESSAGE_BYTES }).t).toBe(MessageType.Data);
    const small = encodeMessage({ t: MessageType.Data, sid: "s1", seq: 1, pay: new Uint8Array(200) });
    expect(errorOf(() => parseMessage(small, { maxBytes: 100 })).code).toBe("too_large");
  });

  test("bytes that are not one CBOR message are decode errors", () => {
    const good = encodeMessage({ t: MessageType.Close, sid: "s1" });
    for (const bytes of [
      new Uint8Array(0),
      Uint8Array.of(0xff),
      new TextEncoder().encode('{"t":13,"sid":"s1"}'),
      good.subarray(0, good.length - 1),
      Uint8Array.of(...good, 0),
    ]) {
      expect(errorOf(() => parseMessage(bytes)).code).toBe("decode");
      const result = safeParseMessage(bytes);
      expect(result.ok).toBe(false);
    }
  });
});
