import { describe, expect, test } from "bun:test";
import { encode } from "../../src/core/codec.ts";
import { StoaError } from "../../src/core/errors.ts";
import {
  DaemonStatus,
  type HotlinkMessage,
  type HotlinkMessageInput,
  MAX_AGENT_LENGTH,
  MAX_CANDIDATE_LENGTH,
  MAX_CANDIDATES,
  MAX_CHANNELS,
  MAX_DIRECT_TOKEN_LENGTH,
  MAX_ERROR_CODE_LENGTH,
  MAX_SID_LENGTH,
  MIN_DIRECT_TOKEN_LENGTH,
  controlAnswerCodec,
  controlRequestCodec,
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

describe("named limits", () => {
  const offer = (tok: string, adr = ["h:1"]) => ({ t: MessageType.Signal, sid: "s1", knd: "direct_offer", adr, tok, fpr: FPR });

  test("each limit is where the schema draws its line: the largest value passes, one more is a schema error", () => {
    const cases: [unknown, unknown][] = [
      [data({ sid: "s".repeat(MAX_SID_LENGTH) }), data({ sid: "s".repeat(MAX_SID_LENGTH + 1) })],
      [offer("t".repeat(MIN_DIRECT_TOKEN_LENGTH)), offer("t".repeat(MIN_DIRECT_TOKEN_LENGTH - 1))],
      [offer("t".repeat(MAX_DIRECT_TOKEN_LENGTH)), offer("t".repeat(MAX_DIRECT_TOKEN_LENGTH + 1))],
      // The longest DNS name (253) with the longest port is within MAX_CANDIDATE_LENGTH.
      [offer(TOKEN, [`${`${"h".repeat(63)}.`.repeat(3)}${"h".repeat(61)}:65535`]), offer(TOKEN, [`${"h".repeat(MAX_CANDIDATE_LENGTH - 1)}:1`])],
      [offer(TOKEN, Array.from({ length: MAX_CANDIDATES }, (_, i) => `10.0.0.${i}:1`)), offer(TOKEN, Array.from({ length: MAX_CANDIDATES + 1 }, (_, i) => `10.0.0.${i}:1`))],
      [{ t: MessageType.Hello, v: 1, agt: "a".repeat(MAX_AGENT_LENGTH) }, { t: MessageType.Hello, v: 1, agt: "a".repeat(MAX_AGENT_LENGTH + 1) }],
      [
        { t: MessageType.Error, code: "e".repeat(MAX_ERROR_CODE_LENGTH), msg: "x" },
        { t: MessageType.Error, code: "e".repeat(MAX_ERROR_CODE_LENGTH + 1), msg: "x" },
      ],
    ];
    for (const [largest, over] of cases) {
      expect({ largest, code: parseCode(largest) }).toEqual({ largest, code: "ok" });
      expect({ over, code: parseCode(over) }).toEqual({ over, code: "schema" });
    }
  });
});

describe("the control socket's messages", () => {
  const tunnel = {
    channel: "alice/x",
    listen: "127.0.0.1:4000",
    port: 4000,
    peer: "bob",
    app: true,
    out: { sid: "s1", state: "open", seq: 7, bytes: 4096, rung: "turn", via: "203.0.113.9:50000 (srflx) -> 198.51.100.1:49200 (relay)", failed: [{ rung: "tls", error: "10.0.0.2:4000: closed" }, { rung: "ice", error: "no candidate pair" }] },
    in: { sid: "s2", delivered: 3, bytes: 99, duplicates: 1, rung: "tls" },
    held: 0,
    origin: "control",
  };
  const status = {
    user: "alice",
    server: "ws://127.0.0.1:8090/v1/hotlink",
    connected: true,
    tunnels: [tunnel],
    ipc: [{ channel: "alice/i", path: "/tmp/i.sock", apps: 1, out: null, in: [{ sid: "s3", delivered: 1, bytes: 2, duplicates: 0, rung: "relay" }], held: 5, origin: "flag" }],
    sessions: { outgoing: 1, incoming: 2 },
    counters: {
      relay: { txPackets: 1, txBytes: 2, rxPackets: 3, rxBytes: 4 },
      direct: { txPackets: 5, txBytes: 6, rxPackets: 7, rxBytes: 8, offers: 1, answers: 1, failures: 0, fallbacks: 0 },
      ice: { txPackets: 9, txBytes: 10, rxPackets: 11, rxBytes: 12, offers: 2, answers: 1, failures: 1, fallbacks: 1 },
      turn: { txPackets: 13, txBytes: 14, rxPackets: 15, rxBytes: 16 },
      latency_us: { send_avg: 12.5, send_max: 40, write_avg: 3.25, write_max: 9 },
    },
    rungs: ["tls", "ice"],
    ice_servers: ["stun:203.0.113.1:3478", "turn:peer:***@203.0.113.1:3479"],
    link: { tx: 10, txBytes: 20, rx: 30, rxBytes: 40 },
  };

  test("a daemon's status comes back whole: every counter is part of the schema", () => {
    const bytes = encode({ ok: true, type: "ls", status });
    expect(controlAnswerCodec.decode(bytes)).toEqual({ ok: true, type: "ls", status } as never);
    expect(DaemonStatus.parse(status)).toEqual(status as never);
  });

  test("a status missing a counter, or with one that is not a count, is a schema error", () => {
    const without = structuredClone(status) as { counters: { direct: Record<string, unknown> } };
    delete without.counters.direct.fallbacks;
    const negative = structuredClone(status);
    negative.counters.relay.rxBytes = -1;
    const text = structuredClone(status) as unknown as { link: Record<string, unknown> };
    text.link.tx = "10";
    const fraction = structuredClone(status);
    fraction.sessions.outgoing = 1.5;
    for (const bad of [without, negative, text, fraction]) {
      const result = controlAnswerCodec.safeDecode(encode({ ok: true, type: "ls", status: bad }));
      expect(result.ok).toBe(false);
      if (!result.ok) expect(result.error.code).toBe("schema");
    }
  });

  test("fields a client does not know are dropped, not an error; an error code it does not know is kept", () => {
    const newer = { ...status, uptime: 5, counters: { ...status.counters, quic: { txPackets: 1 } } };
    const decoded = controlAnswerCodec.decode(encode({ ok: true, type: "ls", status: newer }));
    expect(decoded).toEqual({ ok: true, type: "ls", status } as never);
    expect(controlAnswerCodec.decode(encode({ ok: false, code: "a_newer_code", message: "m" }))).toEqual({ ok: false, code: "a_newer_code", message: "m" });
  });

  test(`a status lists at most MAX_CHANNELS (${MAX_CHANNELS}) tunnels`, () => {
    const many = { ...status, tunnels: Array.from({ length: MAX_CHANNELS + 1 }, () => ({ ...tunnel, out: null, in: null })) };
    const result = controlAnswerCodec.safeDecode(encode({ ok: true, type: "ls", status: many }));
    expect(result.ok).toBe(false);
  });

  test("requests: the four types, nothing else", () => {
    for (const request of [{ type: "ls" }, { type: "close", channel: "alice/x" }, { type: "tunnel", spec: "alice/x=127.0.0.1:0" }, { type: "ipc", spec: "alice/i=unix:/tmp/i" }]) {
      expect(controlRequestCodec.decode(encode(request))).toEqual(request as never);
    }
    for (const request of [{ type: "LS" }, { type: "close" }, { type: "tunnel", spec: "" }, { type: "close", channel: "" }]) {
      expect(controlRequestCodec.safeDecode(encode(request)).ok).toBe(false);
    }
  });
});
