import { describe, expect, test } from "bun:test";
import { type EncodeScratch, MessageType, encodeDataHead, encodeDataMessage, encodeMessage, parseDataFast, safeParseMessage } from "../../src/hotlink/protocol.ts";
import { prng } from "../helpers/prng.ts";

const seed = Number(process.env.STOA_FUZZ_SEED ?? 20261122);

describe("parseDataFast: Data without copying the payload", () => {
  test("reads every Data message the encoder writes exactly as the full parser does, the payload as a view", () => {
    const r = prng(seed);
    for (let i = 0; i < 5_000; i++) {
      const pay = r.bytes(r.int(3) === 0 ? r.int(70_000) : r.int(300));
      const msg = {
        t: MessageType.Data,
        sid: `s${r.int(1e9)}`,
        seq: 1 + (r.int(4) === 0 ? r.int(2 ** 31) : r.int(300)),
        pay,
        ...(r.int(2) === 0 ? { pth: `alice/x/${r.int(1000)}` } : {}),
        ...(r.int(2) === 0 ? { etg: `e${r.int(1000)}é` } : {}),
      } as const;
      const bytes = encodeMessage(msg);
      const fast = parseDataFast(bytes);
      const full = safeParseMessage(bytes);
      expect(full.ok).toBe(true);
      expect(fast).not.toBeNull();
      if (full.ok) expect(fast).toEqual(full.value as typeof fast);
      expect(fast?.pay.buffer).toBe(bytes.buffer);
    }
  });

  test("never accepts what the full parser refuses, and never throws (random and mutated input)", () => {
    const r = prng(seed + 1);
    const base = encodeMessage({ t: MessageType.Data, sid: "abc", seq: 7, pth: "alice/p", etg: "x", pay: new Uint8Array(40) });
    let accepted = 0;
    for (let i = 0; i < 100_000; i++) {
      let bytes: Uint8Array;
      if (r.int(2) === 0) {
        bytes = r.bytes(r.int(80));
        if (bytes.length > 0 && r.int(2) === 0) bytes[0] = 0xa0 | (4 + r.int(3)); // look like a map
      } else {
        bytes = base.slice();
        for (let k = 0, m = 1 + r.int(4); k < m; k++) bytes[r.int(bytes.length)] = r.int(256);
        if (r.int(8) === 0) bytes = bytes.subarray(0, r.int(bytes.length));
      }
      const fast = parseDataFast(bytes);
      if (fast === null) continue;
      accepted++;
      const full = safeParseMessage(bytes);
      if (!full.ok) throw new Error(`fast path accepted bytes the full parser refuses: ${Buffer.from(bytes).toString("hex")} (${full.error.message})`);
      expect(fast).toEqual(full.value as typeof fast);
    }
    expect(accepted).toBeGreaterThan(0);
  });

  test("other message types, traversal paths and oversize messages go to the full parser", () => {
    expect(parseDataFast(encodeMessage({ t: MessageType.Close, sid: "a", lst: 3 }))).toBeNull();
    expect(parseDataFast(encodeMessage({ t: MessageType.Data, sid: "a", seq: 1, pay: new Uint8Array(10) }), 10)).toBeNull();
    // A path the schema refuses, written by hand (the encoder would refuse it).
    const bad = encodeMessage({ t: MessageType.Data, sid: "a", seq: 1, pth: "alice/xx", pay: new Uint8Array(1) });
    const at = Buffer.from(bad).indexOf("alice/xx");
    bad.set(new TextEncoder().encode("alice/.."), at);
    expect(parseDataFast(bad)).toBeNull();
    expect(safeParseMessage(bad).ok).toBe(false);
  });
});

describe("encodeDataMessage into a reused buffer", () => {
  test("writes the same bytes as encodeMessage, reusing the scratch and growing it only for a larger message", () => {
    const scratch: EncodeScratch = { buffer: new Uint8Array(0) };
    const r = prng(seed + 2);
    let grown = 0;
    let last = scratch.buffer;
    for (let i = 0; i < 300; i++) {
      const msg = {
        t: MessageType.Data,
        sid: `s${r.int(1000)}`,
        seq: r.int(2 ** 32),
        pay: r.bytes(r.int(3000)),
        pth: r.int(2) === 0 ? undefined : "alice/p/q",
        etg: r.int(2) === 0 ? undefined : "e1",
      } as const;
      const got = encodeDataMessage(msg, undefined, scratch);
      const want = encodeMessage(Object.fromEntries(Object.entries(msg).filter(([, v]) => v !== undefined)) as typeof msg);
      expect(Buffer.from(got).equals(Buffer.from(want))).toBe(true);
      expect(got.buffer).toBe(scratch.buffer.buffer);
      if (scratch.buffer !== last) {
        grown++;
        expect(scratch.buffer.byteLength).toBe(got.byteLength); // grew to exactly what was needed
        last = scratch.buffer;
      }
    }
    expect(grown).toBeLessThan(30); // grows with the largest message so far, not per message
  });
});

describe("the relay's reading of a framed Data", () => {
  test("at an offset and without its payload: the same routing fields, every check kept", () => {
    const r = prng(seed + 3);
    for (let i = 0; i < 200; i++) {
      const msg = { t: MessageType.Data, sid: "0123456789abcdef0123456789abcdef", seq: 1 + r.int(2 ** 31), pay: r.bytes(r.int(2000)), pth: r.int(2) === 0 ? undefined : "alice/p/q", etg: undefined } as const;
      const frame = encodeDataMessage(msg, undefined, undefined, true);
      // The framed form: its 4-byte big-endian length, then the message as encodeDataMessage writes it.
      const length = ((frame[0] ?? 0) << 24) | ((frame[1] ?? 0) << 16) | ((frame[2] ?? 0) << 8) | (frame[3] ?? 0);
      expect(length).toBe(frame.byteLength - 4);
      expect(Buffer.from(frame.subarray(4)).equals(Buffer.from(encodeDataMessage(msg)))).toBe(true);
      const full = parseDataFast(frame, undefined, 4);
      const routing = parseDataFast(frame, undefined, 4, false);
      expect(full?.pay).toEqual(msg.pay);
      expect(routing?.pay.byteLength).toBe(0);
      expect({ ...routing, pay: null }).toEqual({ ...full, pay: null });
      // The limit is the message's, not the frame's.
      expect(parseDataFast(frame, frame.byteLength - 4, 4, false)).not.toBeNull();
      expect(parseDataFast(frame, frame.byteLength - 5, 4, false)).toBeNull();
    }
    // A bad sid is refused without the payload as with it.
    const frame = encodeDataMessage({ t: MessageType.Data, sid: "0123456789abcdef0123456789abcdef", seq: 1, pay: new Uint8Array(3) }, undefined, undefined, true);
    const at = Buffer.from(frame).indexOf("0123456789abcdef");
    frame[at] = 0x2f; // "/"
    expect(parseDataFast(frame, undefined, 4, false)).toBeNull();
    expect(parseDataFast(frame, undefined, 4)).toBeNull();
  });
});

describe("a Data that spanned reads: parseDataFast on its first bytes, with the whole length", () => {
  test("every cut after the fields gives the same fields and the payload's first piece; a cut inside them gives null, never a wrong read", () => {
    const r = prng(seed + 4);
    let cutInFields = 0;
    for (let i = 0; i < 2_000; i++) {
      const msg = {
        t: MessageType.Data,
        sid: `s${r.int(1e9)}`,
        seq: 1 + r.int(2 ** 31),
        pay: r.bytes(r.int(3) === 0 ? 0 : 1 + r.int(5000)),
        ...(r.int(2) === 0 ? { pth: `alice/x/${r.int(1000)}` } : {}),
        ...(r.int(2) === 0 ? { etg: `e${r.int(1000)}é` } : {}),
      } as const;
      const bytes = encodeMessage(msg);
      const whole = parseDataFast(bytes);
      expect(whole).not.toBeNull();
      const payAt = bytes.byteLength - msg.pay.byteLength;
      const cut = r.int(bytes.byteLength + 1);
      const head = parseDataFast(bytes.subarray(0, cut), undefined, 0, true, bytes.byteLength);
      if (cut < payAt) {
        cutInFields++;
        expect(head).toBeNull();
        continue;
      }
      expect(head).not.toBeNull();
      expect({ ...head, pay: null }).toEqual({ ...whole, pay: null });
      expect(head?.pay).toEqual(msg.pay.subarray(0, cut - payAt));
      // The limit is the whole message's.
      expect(parseDataFast(bytes.subarray(0, cut), bytes.byteLength - 1, 0, true, bytes.byteLength)).toBeNull();
      // A whole length that does not end where the payload does is refused.
      expect(parseDataFast(bytes.subarray(0, cut), undefined, 0, true, bytes.byteLength + 1)).toBeNull();
    }
    expect(cutInFields).toBeGreaterThan(10);
  });

  test("a payload that is not the last field is refused in pieces (the full parser reads it joined)", () => {
    // The encoder writes pay last; a peer's own encoder may not: key order by hand.
    const msg = encodeMessage({ t: MessageType.Data, sid: "abc", seq: 3, pay: new Uint8Array([1, 2, 3]) });
    const at = Buffer.from(msg).indexOf("pay") - 1; // the key's head
    const payField = msg.slice(at);
    const reordered = new Uint8Array(msg.byteLength);
    reordered[0] = msg[0] ?? 0;
    reordered.set(payField, 1);
    reordered.set(msg.subarray(1, at), 1 + payField.byteLength);
    expect(safeParseMessage(reordered).ok).toBe(true);
    expect(parseDataFast(reordered)).not.toBeNull();
    expect(parseDataFast(reordered.subarray(0, reordered.byteLength - 1), undefined, 0, true, reordered.byteLength)).toBeNull();
  });
});

describe("encodeDataHead: a framed Data up to its payload", () => {
  test("followed by the payload it is byte for byte the framed message; the limit is the whole message's", () => {
    const r = prng(seed + 5);
    const scratch: EncodeScratch = { buffer: new Uint8Array(0) };
    for (let i = 0; i < 300; i++) {
      const msg = {
        t: MessageType.Data,
        sid: `s${r.int(1e9)}`,
        seq: 1 + r.int(2 ** 32),
        pay: r.bytes(r.int(2) === 0 ? r.int(300) : r.int(200_000)),
        pth: r.int(2) === 0 ? undefined : "alice/p/q",
        etg: r.int(2) === 0 ? undefined : "e1é",
      } as const;
      const whole = encodeDataMessage(msg, undefined, undefined, true);
      const head = encodeDataHead(msg, 8 * 1024 * 1024, scratch);
      expect(head.byteLength).toBe(whole.byteLength - msg.pay.byteLength);
      expect(Buffer.concat([head, msg.pay]).equals(Buffer.from(whole))).toBe(true);
      expect(() => encodeDataHead(msg, whole.byteLength - 5, scratch)).toThrow(/over the/);
    }
  });
});

describe("parseDataFast: where the payload lies (lastPayload), read in place", () => {
  test("after a parse, lastPayload is the payload's offset and length in the bytes given, header or not; InPlaceData's pay is that range", async () => {
    const { lastPayload } = await import("../../src/hotlink/protocol.ts");
    const { InPlaceData } = await import("../../src/hotlink/protocol.ts");
    const r = prng(seed + 7);
    for (let i = 0; i < 2_000; i++) {
      const pay = r.bytes(r.int(3000));
      const msg = { t: MessageType.Data, sid: "0123456789abcdef0123456789abcdef", seq: 1 + r.int(1_000_000), pay, ...(r.int(2) === 0 ? { pth: "alice/x/y" } : {}) } as const;
      const framed = i % 2 === 0;
      const bytes = encodeDataMessage(msg, undefined, undefined, framed);
      const at = framed ? 4 : 0;
      const parsed = parseDataFast(bytes, undefined, at, false);
      expect(parsed).not.toBeNull();
      expect(parsed?.pay.byteLength).toBe(0);
      expect(lastPayload.length).toBe(pay.byteLength);
      const d = new InPlaceData(parsed?.sid ?? "", parsed?.seq ?? 0, parsed?.pth, parsed?.etg, bytes, lastPayload.at, lastPayload.length);
      expect(d.byteLength).toBe(pay.byteLength);
      expect(Buffer.from(d.pay).equals(Buffer.from(pay))).toBe(true);
      expect(d.pay).toBe(d.pay); // one view, made once
    }
  });
});

describe("encodeDataMessage of a payload in place", () => {
  test("an InPlaceData encodes to the same bytes as the Data with its payload, framed or not, short and long payloads", async () => {
    const { InPlaceData } = await import("../../src/hotlink/protocol.ts");
    const r = prng(seed + 11);
    for (let i = 0; i < 500; i++) {
      const pay = r.bytes(r.int(4) === 0 ? r.int(100_000) : r.int(2000));
      const read = Buffer.from(new Uint8Array([...r.bytes(r.int(40)), ...pay, ...r.bytes(r.int(40))]));
      const at = read.indexOf(Buffer.from(pay)) >= 0 ? read.indexOf(Buffer.from(pay)) : 0;
      const pth = r.int(2) === 0 ? "alice/x" : undefined;
      const msg = { t: MessageType.Data, sid: "0123456789abcdef0123456789abcdef", seq: 1 + r.int(1_000_000), pay, pth, etg: undefined } as const;
      const inPlace = new InPlaceData(msg.sid, msg.seq, pth, undefined, read, at, pay.byteLength);
      for (const framed of [false, true]) {
        const want = Buffer.from(encodeDataMessage(msg, undefined, undefined, framed));
        expect(Buffer.from(encodeDataMessage(inPlace, undefined, undefined, framed)).equals(want)).toBe(true);
      }
    }
  });
});
