import { describe, expect, test } from "bun:test";
import { type Endpoint, MAX_UNIX_PATH_BYTES, formatEndpoint, parseEndpoint } from "../../src/core/endpoint.ts";
import { StoaError } from "../../src/core/errors.ts";
import { type Prng, fuzzSeed, mutate, prng } from "../helpers/prng.ts";

const ITERATIONS = 100_000;
/** The longest test here takes about 1.3 s on an idle machine, several times that on a loaded 2-core one (Bun's default is 5 s). */
const FUZZ_TIMEOUT_MS = 30_000;

const VALID = [
  "unix:/run/stoa/gw.sock",
  "unix:/tmp/a b/ü.sock",
  "tcp:localhost:8081",
  "tcp:10.0.0.1:0",
  "tcp:[::1]:8082",
  "tcp:[fe80::1%eth0]:65535",
  "tcp:[2001:db8::1]:443",
  "ws://meta.example/v1?x=1",
  "wss://[::1]:8443/circles/a",
  "WSS://Host.Example:443/",
];

// Pieces that sit on the parser's decision points.
const TOKENS = [
  "unix:", "tcp:", "ws://", "wss://", "WS:", "unix:/", "/", "//", ":", "::", "[", "]", "%", "%25", "@", "?", "#",
  ".", "..", "-", "_", "\\", " ", "\u0000", "\n", "\u0085", "\ud800", "é", "🚀", "localhost", "a", "Z", "0", "1",
  "80", "080", "65535", "65536", "255", "256", "127.0.0.1", "::1", "fe80::1", "eth0", "xn--tda", "0x7f",
];

function randomEndpointish(rng: Prng): string {
  let out = "";
  for (let n = rng.int(12); n > 0; n--) out += rng.pick(TOKENS);
  return out;
}

/** String-level mutation: reuse the byte mutator on UTF-8, then decode leniently. */
function mutateString(rng: Prng, input: string): string {
  const bytes = mutate(rng, new TextEncoder().encode(input));
  let out = new TextDecoder().decode(bytes);
  if (rng.int(4) === 0) out = out.slice(0, rng.int(out.length + 1)) + rng.pick(TOKENS) + out.slice(rng.int(out.length + 1));
  return out;
}

/** Parses `input`, checks what comes out, and says whether it was accepted. */
function checkInvariants(input: string): boolean {
  let endpoint: Endpoint;
  try {
    endpoint = parseEndpoint(input);
  } catch (err) {
    expect(err).toBeInstanceOf(StoaError);
    expect((err as StoaError).code).toBe("endpoint");
    return false;
  }
  const canonical = formatEndpoint(endpoint);
  expect(parseEndpoint(canonical)).toEqual(endpoint);
  expect(formatEndpoint(parseEndpoint(canonical))).toBe(canonical);
  switch (endpoint.kind) {
    case "unix":
      expect(endpoint.path.startsWith("/")).toBe(true);
      expect(Buffer.byteLength(endpoint.path)).toBeLessThanOrEqual(MAX_UNIX_PATH_BYTES);
      break;
    case "tcp":
    case "ws":
      expect(Number.isInteger(endpoint.port) && endpoint.port >= 0 && endpoint.port <= 65535).toBe(true);
      expect(endpoint.host).not.toBe("");
      if (endpoint.kind === "ws") {
        expect(endpoint.url).toBe(canonical);
        expect(endpoint.path.startsWith("/")).toBe(true);
      }
  }
  return true;
}

describe("endpoint parser fuzzing", () => {
  test(`${ITERATIONS} random and mutated strings raise only StoaError, and what parses round-trips`, () => {
    const seed = fuzzSeed(0xe4d);
    const rng = prng(seed);
    let accepted = 0;
    let i = 0;
    let input = "";
    try {
      for (; i < ITERATIONS; i++) {
        const roll = rng.int(10);
        input = roll < 6 ? mutateString(rng, rng.pick(VALID)) : roll < 9 ? randomEndpointish(rng) : rng.pick(VALID);
        if (checkInvariants(input)) accepted++;
      }
    } catch (err) {
      console.error(`endpoint fuzz failed: STOA_FUZZ_SEED=${seed}, iteration ${i}, input ${JSON.stringify(input)}`);
      throw err;
    }
    expect(accepted).toBeGreaterThan(5000);
    expect(accepted).toBeLessThan(ITERATIONS - 5000);
  }, FUZZ_TIMEOUT_MS);
});
