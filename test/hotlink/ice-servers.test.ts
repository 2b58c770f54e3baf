/**
 * `--ice-servers` lists (ice-servers.ts): what each accepted form reads as, what each refused one
 * says (never the password), the round trip through formatIceServers, the RTCIceServer shape,
 * and 50,000 fuzzed lists: a list or a usage error, nothing else.
 */
import { describe, expect, test } from "bun:test";
import { StoaError } from "../../src/core/errors.ts";
import { MAX_ICE_SERVERS, formatIceServers, parseIceServers, rtcIceServers, shownIceServer } from "../../src/hotlink/ice-servers.ts";
import { fuzzSeed, mutate, prng } from "../helpers/prng.ts";

function refusal(text: string): string {
  try {
    parseIceServers(text);
  } catch (err) {
    expect(err).toBeInstanceOf(StoaError);
    return (err as StoaError).message;
  }
  throw new Error(`${text} was accepted`);
}

describe("parseIceServers", () => {
  test("stun and turn, names, IPv4 and bracketed IPv6, default port, spaces and empty entries", () => {
    expect(parseIceServers(" stun:Stun.Example.org , turn:alice:s3cret@10.0.0.1:3479,, stun:[2001:db8::1]:19302")).toEqual([
      { kind: "stun", host: "stun.example.org", port: 3478 },
      { kind: "turn", host: "10.0.0.1", port: 3479, username: "alice", credential: "s3cret" },
      { kind: "stun", host: "2001:db8::1", port: 19302 },
    ]);
    expect(parseIceServers("")).toEqual([]);
  });

  test("percent-encoded credentials hold ':', '@' and ','; the round trip gives the same list", () => {
    const list = parseIceServers("turn:a%3Ab:p%40ss%2Cword%25@turn.example:3478");
    expect(list[0]).toMatchObject({ username: "a:b", credential: "p@ss,word%" });
    expect(parseIceServers(formatIceServers(list))).toEqual(list);
  });

  test("each bad entry says what is wrong, and never shows the password", () => {
    expect(refusal("stun.example.org:3478")).toContain("the scheme must be stun: or turn:");
    expect(refusal("turn:turn.example.org")).toContain("needs USER:PASS@");
    expect(refusal("turn:alice@host")).toContain("needs USER:PASS@");
    expect(refusal("stun:host:0")).toContain("the port must be 1-65535");
    expect(refusal("stun:host:65536")).toContain("the port must be 1-65535");
    expect(refusal("stun:host:34x")).toContain(`unexpected "x" after the port`);
    expect(refusal("stun:[::1")).toContain("[ADDRESS]");
    expect(refusal("stun:ho_st")).toContain(`unexpected "_" after the host`);
    expect(refusal("turn:a:%zz@host")).toContain("malformed percent escape");
    const secret = refusal("turn:alice:topsecret@host:1:2");
    expect(secret).not.toContain("topsecret");
    expect(secret).toContain("turn:alice:***@");
    expect(refusal(Array.from({ length: MAX_ICE_SERVERS + 1 }, () => "stun:h").join(","))).toContain(`at most ${MAX_ICE_SERVERS}`);
    expect(refusal(`stun:${"a".repeat(600)}`)).toContain("longer than");
  });

  test("as RTCIceServer entries: TURN over UDP with its credentials; shown without the password", () => {
    const list = parseIceServers("stun:[::1]:3478,turn:u:p@127.0.0.1");
    expect(rtcIceServers(list)).toEqual([
      { urls: "stun:[::1]:3478" },
      { urls: "turn:127.0.0.1:3478?transport=udp", username: "u", credential: "p" },
    ]);
    expect(list.map(shownIceServer)).toEqual(["stun:[::1]:3478", "turn:u:***@127.0.0.1:3478"]);
  });
});

test("50,000 fuzzed lists: a list that formats and parses back the same, or a usage error", () => {
  const rand = prng(fuzzSeed(0x1ce5));
  const seeds = ["stun:stun.example.org:19302", "turn:user:pass@[2001:db8::7]:3478,stun:10.1.2.3", "turn:a%40b:c%3Ad@h"].map((s) => new TextEncoder().encode(s));
  let parsed = 0;
  for (let i = 0; i < 50_000; i++) {
    const text = new TextDecoder().decode(i % 4 === 0 ? rand.bytes(rand.int(60)) : mutate(rand, rand.pick(seeds)));
    let list: ReturnType<typeof parseIceServers> | null = null;
    try {
      list = parseIceServers(text);
    } catch (err) {
      if (!(err instanceof StoaError) || err.code !== "usage") throw new Error(`seed ${rand.seed} iteration ${i}: ${String(err)}`);
    }
    if (list !== null) {
      parsed++;
      expect(parseIceServers(formatIceServers(list))).toEqual(list);
    }
  }
  expect(parsed).toBeGreaterThan(1_000);
});
