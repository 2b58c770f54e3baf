import { describe, expect, test } from "bun:test";
import { isIPv6 } from "node:net";
import { StoaError } from "../../src/core/errors.ts";
import { contains, formatIPv6, parseHostAddress, parseIPv6, parsePrefix, randomAddressIn } from "../../src/addr/ipv6.ts";
import { fuzzSeed, prng } from "../helpers/prng.ts";

/** The random-input tests: about 0.2 s each on an idle machine, several times that on a loaded 2-core one (Bun's default is 5 s). */
const RANDOM_ROUNDS_TIMEOUT_MS = 20_000;

const hex = (b: Uint8Array | undefined) => (b === undefined ? undefined : Buffer.from(b).toString("hex"));

function usage(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(StoaError);
    expect((err as StoaError).code).toBe("usage");
    return (err as StoaError).message;
  }
  throw new Error("expected a usage error");
}

describe("parsing IPv6 text", () => {
  test("reads full, compressed and IPv4-embedded forms", () => {
    expect(hex(parseIPv6("fd00:0001:0002:0003:0000:0000:0000:0010"))).toBe("fd000001000200030000000000000010");
    expect(hex(parseIPv6("fd00:1:2:3::10"))).toBe("fd000001000200030000000000000010");
    expect(hex(parseIPv6("::"))).toBe("0".repeat(32));
    expect(hex(parseIPv6("::1"))).toBe(`${"0".repeat(31)}1`);
    expect(hex(parseIPv6("fe80::"))).toBe(`fe80${"0".repeat(28)}`);
    expect(hex(parseIPv6("::ffff:192.0.2.1"))).toBe("00000000000000000000ffffc0000201");
    expect(hex(parseIPv6("FD00::ABCD"))).toBe("fd00000000000000000000000000abcd");
    expect(hex(parseIPv6("1:2:3:4:5:6:7::"))).toBe("00010002000300040005000600070000");
  });

  test("refuses what is not one address", () => {
    for (const bad of [
      "",
      ":",
      ":::",
      "1::2::3",
      "1:2:3:4:5:6:7:8:9",
      "1:2:3:4:5:6:7",
      "1:2:3:4:5:6:7:8::",
      "12345::",
      "g::1",
      "fe80::1%eth0",
      "::ffff:1.2.3",
      "::ffff:256.1.1.1",
      "::ffff:01.1.1.1",
      "1.2.3.4::",
      "10.0.0.1",
      " ::1",
      "fd00::1/128",
      "a".repeat(46),
    ]) {
      expect({ bad, parsed: parseIPv6(bad) }).toEqual({ bad, parsed: undefined });
    }
  });

  test("accepts exactly what node:net accepts (random text near the grammar)", () => {
    const rng = prng(fuzzSeed(0x1b6));
    const alphabet = ["0", "1", "f", "a", "ff", "ffff", "12345", ":", "::", ".", "1.2.3.4", "255", "g"];
    for (let i = 0; i < 20_000; i++) {
      const text = Array.from({ length: 1 + rng.int(12) }, () => rng.pick(alphabet)).join(rng.int(2) ? ":" : "");
      const ours = parseIPv6(text) !== undefined;
      // node accepts leading-zero IPv4 octets in some versions; ours refuses them on purpose.
      if (/(^|[:.])0\d/.test(text.split(":").pop() ?? "") && text.includes(".")) continue;
      expect({ text, ok: ours }).toEqual({ text, ok: isIPv6(text) });
    }
  }, RANDOM_ROUNDS_TIMEOUT_MS);
});

describe("formatting IPv6 (RFC 5952)", () => {
  const canonical = (text: string) => formatIPv6(parseIPv6(text) ?? new Uint8Array(16));

  test("lower case, no leading zeros, the longest zero run compressed, the first of equals", () => {
    expect(canonical("FD00:0001:0002:0003:0000:0000:0000:0010")).toBe("fd00:1:2:3::10");
    expect(canonical("2001:db8:0:0:1:0:0:1")).toBe("2001:db8::1:0:0:1");
    expect(canonical("2001:0:0:1:0:0:0:1")).toBe("2001:0:0:1::1");
    expect(canonical("2001:db8:0:1:1:1:1:1")).toBe("2001:db8:0:1:1:1:1:1");
    expect(canonical("0:0:0:0:0:0:0:0")).toBe("::");
    expect(canonical("0:0:0:0:0:0:0:1")).toBe("::1");
    expect(canonical("1:0:0:0:0:0:0:0")).toBe("1::");
  });

  test("ipv4Mapped writes an IPv4-mapped address with its IPv4 tail, and nothing else", () => {
    const mapped = (text: string) => formatIPv6(parseIPv6(text) ?? new Uint8Array(16), { ipv4Mapped: true });
    expect(canonical("::ffff:192.0.2.1")).toBe("::ffff:c000:201");
    expect(mapped("::ffff:192.0.2.1")).toBe("::ffff:192.0.2.1");
    expect(mapped("0:0:0:0:0:FFFF:0:0")).toBe("::ffff:0.0.0.0");
    expect(mapped("::ffff:255.255.255.255")).toBe("::ffff:255.255.255.255");
    expect(mapped("::1.2.3.4")).toBe("::102:304");
    expect(mapped("::1:ffff:1.2.3.4")).toBe("::1:ffff:102:304");
    expect(mapped("ffff::1")).toBe("ffff::1");
  });

  test("round-trips random addresses, agreeing with the URL parser's canonical form", () => {
    const rng = prng(fuzzSeed(0x5952));
    for (let i = 0; i < 5_000; i++) {
      const bytes = rng.bytes(16);
      // Zero runs are where formatting is interesting.
      for (let g = 0; g < 8; g++) if (rng.int(3) === 0) bytes.fill(0, 2 * g, 2 * g + 2);
      const text = formatIPv6(bytes);
      expect(hex(parseIPv6(text))).toBe(hex(bytes));
      expect(`[${text}]`).toBe(new URL(`http://[${text}]/`).hostname);
    }
  }, RANDOM_ROUNDS_TIMEOUT_MS);
});

describe("ADDR/128 and prefixes", () => {
  test("an address for add/del must be written /128", () => {
    expect(hex(parseHostAddress("fd00::5/128").bytes)).toBe("fd000000000000000000000000000005");
    expect(usage(() => parseHostAddress("fd00::5"))).toBe("address 'fd00::5' needs a prefix length, e.g. fd00:1:2:3::10/128");
    expect(usage(() => parseHostAddress("fd00::5/64"))).toBe("address 'fd00::5/64': stoa adds single addresses, write it as fd00::5/128");
    expect(usage(() => parseHostAddress("fd00::5/129"))).toContain("prefix length must be 0 to 128");
    expect(usage(() => parseHostAddress("fd00::5/0128"))).toContain("prefix length must be 0 to 128");
    expect(usage(() => parseHostAddress("nope/128"))).toContain("'nope' is not an IPv6 address");
  });

  test("a prefix has no bits past its length and is not /0", () => {
    expect(parsePrefix("fd00:1:2:3::/64").length).toBe(64);
    expect(parsePrefix("fd00:1:2:3::7/128").length).toBe(128);
    expect(usage(() => parsePrefix("fd00:1:2:3::1/64"))).toBe("prefix 'fd00:1:2:3::1/64' has bits set past /64; did you mean fd00:1:2:3::/64?");
    expect(parsePrefix("fd00:1:2:3:8000::/65").length).toBe(65);
    expect(usage(() => parsePrefix("fd00:1:2:3:c000::/65"))).toContain("did you mean fd00:1:2:3:8000::/65?");
    expect(usage(() => parsePrefix("::/0"))).toContain("a /0 would take every IPv6 address");
  });

  test("contains() tells whether an address is inside a prefix", () => {
    const p = parsePrefix("fd00:1:2:3::/64");
    expect(contains(p, parseIPv6("fd00:1:2:3:ffff::1") ?? new Uint8Array(16))).toBe(true);
    expect(contains(p, parseIPv6("fd00:1:2:4::1") ?? new Uint8Array(16))).toBe(false);
  });
});

describe("random addresses in a prefix", () => {
  test("are inside the prefix, canonical, and differ", () => {
    const prefix = parsePrefix("fd00:1:2:3::/64");
    const seen = new Set<string>();
    for (let i = 0; i < 2_000; i++) {
      const text = randomAddressIn("fd00:1:2:3::/64");
      const bytes = parseIPv6(text);
      expect(bytes).toBeDefined();
      expect(contains(prefix, bytes ?? new Uint8Array(16))).toBe(true);
      expect(formatIPv6(bytes ?? new Uint8Array(16))).toBe(text);
      seen.add(text);
    }
    expect(seen.size).toBe(2_000);
  });

  test("keep every prefix bit, at any prefix length", () => {
    const rng = prng(fuzzSeed(0x65));
    for (let i = 0; i < 2_000; i++) {
      const length = 1 + rng.int(127);
      const base = rng.bytes(16);
      for (let bit = length; bit < 128; bit++) base[bit >> 3] = (base[bit >> 3] ?? 0) & ~(1 << (7 - (bit & 7)));
      const prefix = `${formatIPv6(base)}/${length}`;
      const addr = parseIPv6(randomAddressIn(prefix)) ?? new Uint8Array(16);
      expect({ prefix, inside: contains({ bytes: base, length }, addr) }).toEqual({ prefix, inside: true });
    }
  }, RANDOM_ROUNDS_TIMEOUT_MS);

  test("never the Subnet-Router anycast (all-zero host) nor a /64's reserved anycast ids", () => {
    const zeros = () => new Uint8Array(16);
    expect(() => randomAddressIn("fd00::/64", zeros)).toThrow(StoaError);
    const reserved = () => Uint8Array.from([...new Array(8).fill(0), 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x80]);
    expect(() => randomAddressIn("fd00::/64", reserved)).toThrow(StoaError);
    const justBelow = () => Uint8Array.from([...new Array(8).fill(0), 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    expect(randomAddressIn("fd00::/64", justBelow)).toBe("fd00::fdff:ffff:ffff:ff7f");
  });

  test("a /128 is its one address; a /127 has one usable; a malformed prefix is a usage error", () => {
    expect(randomAddressIn("fd00::7/128")).toBe("fd00::7");
    for (let i = 0; i < 50; i++) expect(randomAddressIn("fd00::6/127")).toBe("fd00::7");
    expect(usage(() => randomAddressIn("fd00::1/64"))).toContain("did you mean fd00::/64?");
    expect(usage(() => randomAddressIn("fd00::"))).toContain("needs a prefix length");
  });
});
