/**
 * STUN (RFC 5389) as stun-wire.ts reads and writes it — checked against RFC 5769's test vectors
 * where they apply (XOR-MAPPED-ADDRESS, IPv4 and IPv6) and by round trips — and the binding
 * server (stun.ts) on loopback: the address it answers is the sender's, garbage gets nothing.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { createLogger } from "../../src/core/log.ts";
import { answerStun, startStunServer, stunBinding, type StunServer } from "../../src/hotlink/stun.ts";
import {
  decodeStun,
  encodeStun,
  looksLikeStun,
  MAX_STUN_ATTRIBUTES,
  readXorAddress,
  STUN_ATTRIBUTE,
  STUN_METHOD_BINDING,
  StunDecodeError,
  xorAddress,
} from "../../src/hotlink/stun-wire.ts";

const log = createLogger({ level: "error", stream: { write: () => {} } });
// RFC 5769's transaction id.
const ID = Uint8Array.from([0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae]);

function rejectsDecode(data: Uint8Array): StunDecodeError {
  try {
    decodeStun(data);
  } catch (err) {
    if (err instanceof StunDecodeError) return err;
    throw err;
  }
  throw new Error("expected a StunDecodeError");
}

function bindingRequest(attributes: { type: number; value: Uint8Array }[] = [], fingerprint = true): Uint8Array {
  return encodeStun({ method: STUN_METHOD_BINDING, class: "request", transactionId: ID, attributes }, { fingerprint });
}

describe("XOR-MAPPED-ADDRESS (RFC 5769 §2.2, §2.3)", () => {
  test("IPv4 192.0.2.1:32853 is 0001 a147 e112a643 and back", () => {
    const value = Uint8Array.from([0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43]);
    expect(xorAddress("192.0.2.1", 32853, ID)).toEqual(value);
    expect(readXorAddress(value, ID)).toEqual({ family: "IPv4", address: "192.0.2.1", port: 32853 });
  });

  test("IPv6 2001:db8:1234:5678:11:2233:4455:6677 port 32853 XORs with the cookie and the transaction id", () => {
    const value = Uint8Array.from([
      0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
    ]);
    expect(xorAddress("2001:db8:1234:5678:11:2233:4455:6677", 32853, ID)).toEqual(value);
    expect(readXorAddress(value, ID)).toEqual({ family: "IPv6", address: "2001:db8:1234:5678:11:2233:4455:6677", port: 32853 });
  });

  test("IPv6 zero runs are written the short way; an IPv4-mapped sender is IPv4; MAPPED-ADDRESS is the plain form", () => {
    expect(readXorAddress(xorAddress("fd00::1", 1, ID), ID)?.address).toBe("fd00::1");
    expect(readXorAddress(xorAddress("::1", 443, ID), ID)).toEqual({ family: "IPv6", address: "::1", port: 443 });
    expect(readXorAddress(xorAddress("::ffff:10.0.0.7", 9, ID), ID)).toEqual({ family: "IPv4", address: "10.0.0.7", port: 9 });
    expect(xorAddress("10.1.2.3", 0x1234, null)).toEqual(Uint8Array.from([0, 1, 0x12, 0x34, 10, 1, 2, 3]));
    expect(readXorAddress(xorAddress("10.1.2.3", 0x1234, null), ID, false)).toEqual({ family: "IPv4", address: "10.1.2.3", port: 0x1234 });
    expect(readXorAddress(Uint8Array.from([0, 3, 0, 0, 1, 2, 3, 4]), ID)).toBeNull();
  });
});

describe("messages", () => {
  test("a binding request is type 0x0001 with the cookie, and decodes to what was encoded, FINGERPRINT checked", () => {
    const bytes = bindingRequest([{ type: STUN_ATTRIBUTE.SOFTWARE, value: new TextEncoder().encode("test vector") }]);
    expect([...bytes.subarray(0, 8)]).toEqual([0x00, 0x01, 0x00, 0x18, 0x21, 0x12, 0xa4, 0x42]);
    expect(looksLikeStun(bytes)).toBe(true);
    const message = decodeStun(bytes);
    expect(message.class).toBe("request");
    expect(message.method).toBe(STUN_METHOD_BINDING);
    expect(message.transactionId).toEqual(ID);
    expect(message.attributes.map((a) => a.type)).toEqual([STUN_ATTRIBUTE.SOFTWARE, STUN_ATTRIBUTE.FINGERPRINT]);
    expect(new TextDecoder().decode(message.attributes[0]?.value)).toBe("test vector");
  });

  test("every class and a method with high bits survive the bit shuffle of the type field", () => {
    for (const klass of ["request", "indication", "success", "error"] as const) {
      for (const method of [0x001, 0x003, 0x0ff, 0xfff]) {
        const out = decodeStun(encodeStun({ method, class: klass, transactionId: ID, attributes: [] }));
        expect([out.method, out.class]).toEqual([method, klass]);
      }
    }
    expect([...encodeStun({ method: 1, class: "success", transactionId: ID, attributes: [] }).subarray(0, 2)]).toEqual([0x01, 0x01]);
    expect([...encodeStun({ method: 1, class: "error", transactionId: ID, attributes: [] }).subarray(0, 2)]).toEqual([0x01, 0x11]);
  });

  test("each rule has its error: size, first bits, length, cookie, attribute bounds, count, fingerprint", () => {
    const ok = bindingRequest([], false);
    expect(rejectsDecode(ok.subarray(0, 19)).rule).toContain("less than the 20-byte header");
    expect(rejectsDecode(new Uint8Array(1_300)).rule).toContain("more than 1280");
    const bits = ok.slice();
    bits[0] = 0x80;
    expect(rejectsDecode(bits).rule).toContain("first two bits");
    const cookie = ok.slice();
    cookie[4] = 0;
    expect(rejectsDecode(cookie).rule).toBe("no magic cookie");
    const longer = new Uint8Array([...ok, 0, 0, 0, 0]);
    expect(rejectsDecode(longer).rule).toContain("but 4 bytes follow");
    const cut = bindingRequest([{ type: 0x8022, value: new Uint8Array(8) }], false);
    new DataView(cut.buffer).setUint16(22, 200);
    expect(rejectsDecode(cut)).toMatchObject({ state: "ATTRIBUTE_VALUE" });
    const many = bindingRequest(Array.from({ length: MAX_STUN_ATTRIBUTES + 1 }, () => ({ type: 0x8022, value: new Uint8Array(0) })), false);
    expect(rejectsDecode(many).rule).toContain(`more than ${MAX_STUN_ATTRIBUTES} attributes`);
    const print = bindingRequest();
    print[print.length - 1] = (print[print.length - 1] ?? 0) ^ 1;
    expect(rejectsDecode(print).rule).toBe("FINGERPRINT does not match");
  });
});

describe("the binding server's answers", () => {
  test("a binding request gets its sender's address as XOR-MAPPED-ADDRESS, with FINGERPRINT", () => {
    const answer = decodeStun(answerStun(bindingRequest(), "203.0.113.9", 40_000) ?? new Uint8Array());
    expect([answer.class, answer.method]).toEqual(["success", STUN_METHOD_BINDING]);
    expect(answer.transactionId).toEqual(ID);
    const attr = (t: number) => answer.attributes.find((a) => a.type === t)?.value ?? new Uint8Array();
    expect(readXorAddress(attr(STUN_ATTRIBUTE.XOR_MAPPED_ADDRESS), ID)).toEqual({ family: "IPv4", address: "203.0.113.9", port: 40_000 });
    expect(answer.attributes.at(-1)?.type).toBe(STUN_ATTRIBUTE.FINGERPRINT);
    expect(answer.attributes.map((a) => a.type)).toEqual([STUN_ATTRIBUTE.XOR_MAPPED_ADDRESS, STUN_ATTRIBUTE.FINGERPRINT]);
    expect(decodeStun(answerStun(bindingRequest(), "::ffff:198.51.100.2", 7) ?? new Uint8Array()).attributes[0]?.value[1]).toBe(0x01);
  });

  test("an unknown comprehension-required attribute gets 420 listing it; responses, indications, other methods and garbage get nothing", () => {
    const answer = decodeStun(answerStun(bindingRequest([{ type: 0x0006, value: new TextEncoder().encode("user") }]), "10.0.0.1", 1) ?? new Uint8Array());
    expect(answer.class).toBe("error");
    const code = answer.attributes.find((a) => a.type === STUN_ATTRIBUTE.ERROR_CODE)?.value ?? new Uint8Array();
    expect((code[2] ?? 0) * 100 + (code[3] ?? 0)).toBe(420);
    expect([...(answer.attributes.find((a) => a.type === STUN_ATTRIBUTE.UNKNOWN_ATTRIBUTES)?.value ?? [])]).toEqual([0x00, 0x06]);
    // Comprehension-optional attributes (0x8000 and up) are fine.
    expect(decodeStun(answerStun(bindingRequest([{ type: 0x8022, value: new Uint8Array(3) }]), "10.0.0.1", 1) ?? new Uint8Array()).class).toBe("success");
    const other = (klass: "success" | "indication", method = STUN_METHOD_BINDING) => encodeStun({ method, class: klass, transactionId: ID, attributes: [] });
    expect(answerStun(other("success"), "10.0.0.1", 1)).toBeNull();
    expect(answerStun(other("indication"), "10.0.0.1", 1)).toBeNull();
    expect(answerStun(encodeStun({ method: 0x003, class: "request", transactionId: ID, attributes: [] }), "10.0.0.1", 1)).toBeNull();
    expect(answerStun(new TextEncoder().encode("GET / HTTP/1.1\r\n\r\n"), "10.0.0.1", 1)).toBeNull();
  });

  test("an answer is at most 2.6 times the smallest request (a forged source gains little): 52 bytes for IPv6, 40 for IPv4", () => {
    const request = bindingRequest([], false);
    expect(request.length).toBe(20);
    expect(answerStun(request, "2001:db8::1", 65_535)?.length).toBe(52);
    expect(answerStun(request, "192.0.2.1", 65_535)?.length).toBe(40);
  });
});

describe("on loopback", () => {
  const servers: StunServer[] = [];
  afterEach(() => {
    for (const s of servers.splice(0)) s.close();
  });

  test("stunBinding learns the address and port it sends from, over IPv4 and IPv6; the port survives garbage", async () => {
    const v4 = await startStunServer({ hostname: "127.0.0.1", port: 0, log });
    const v6 = await startStunServer({ hostname: "::1", port: 0, log });
    servers.push(v4, v6);
    const probe = await Bun.udpSocket({ hostname: "127.0.0.1", port: 0 });
    const localPort = probe.port;
    probe.close();
    expect(await stunBinding({ host: "127.0.0.1", port: v4.port }, { localPort })).toEqual({ family: "IPv4", address: "127.0.0.1", port: localPort });
    const six = await stunBinding({ host: "[::1]", port: v6.port });
    expect([six.family, six.address]).toEqual(["IPv6", "::1"]);
    const junk = await Bun.udpSocket({ hostname: "127.0.0.1", port: 0 });
    for (let i = 0; i < 2_000; i++) junk.send(crypto.getRandomValues(new Uint8Array(1 + (i % 600))), v4.port, "127.0.0.1");
    junk.close();
    expect((await stunBinding({ host: "127.0.0.1", port: v4.port })).address).toBe("127.0.0.1");
  });

  test("nothing listening: a timeout that says so", async () => {
    const probe = await Bun.udpSocket({ hostname: "127.0.0.1", port: 0 });
    const port = probe.port;
    probe.close();
    await expect(stunBinding({ host: "127.0.0.1", port }, { timeoutMs: 400 })).rejects.toThrow(/no STUN answer from 127\.0\.0\.1:\d+ within 400 ms \(the host says nothing listens on that port\)/);
  });
});
