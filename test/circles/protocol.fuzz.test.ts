import { describe, expect, test } from "bun:test";
import { secp256k1 } from "@noble/curves/secp256k1.js";
import { generateKey } from "../../src/circles/auth.ts";
import {
  ErrorResponseSchema,
  MAX_ID_CHARS,
  MAX_MESSAGE_BYTES,
  METHODS,
  RPC_ERROR,
  type Request,
  decodeRequest,
  encodeRequest,
  encodeResponse,
} from "../../src/circles/protocol.ts";
import { type Prng, fuzzSeed, mutate, prng } from "../helpers/prng.ts";

const STRUCTURED_ITERATIONS = 30_000;
const MUTATED_ITERATIONS = 30_000;
const RANDOM_ITERATIONS = 10_000;
const FUZZ_TIMEOUT_MS = 60_000;

const DECODE_CODES: readonly number[] = [RPC_ERROR.parse, RPC_ERROR.invalidRequest, RPC_ERROR.methodNotFound, RPC_ERROR.invalidParams];
const CANONICAL_KEY = /^0[23][0-9a-f]{64}$/;

const keys = Array.from({ length: 4 }, () => generateKey());
/** The same keys in their other valid spelling: 65 bytes uncompressed. */
const uncompressedKeys = keys.map((key) => Buffer.from(secp256k1.getPublicKey(key.privateKey, false)).toString("hex"));

const VALID = [
  `{"jsonrpc":"2.0","id":1,"method":"fetch_nonce","params":{"pubkey":"${keys[0]?.publicKey.hex}"}}`,
  `{"jsonrpc":"2.0","id":"a","method":"fetch_nonce","params":["0x${keys[1]?.publicKey.hex}"]}`,
  `{"jsonrpc":"2.0","id":2,"method":"authenticate","params":{"pubkey":"${keys[2]?.publicKey.hex}","signature":"${"ab".repeat(64)}1b"}}`,
  `{"jsonrpc":"2.0","id":3,"method":"authenticate","params":["${keys[3]?.publicKey.hex}","0x${"cd".repeat(64)}"]}`,
  `{"jsonrpc":"2.0","id":4,"method":"play","params":{"script":"40 + 2"}}`,
  `{"jsonrpc":"2.0","id":"p-5","method":"play","params":["print(\\"hi\\\\n\\"); db.set('k', 1)"]}`,
];

/** The id a response must carry, worked out here independently of protocol.ts: the request's when usable, else null. */
function expectedId(input: string | Uint8Array): number | string | null {
  let text: string;
  try {
    text = typeof input === "string" ? input : new TextDecoder("utf-8", { fatal: true }).decode(input);
  } catch {
    return null;
  }
  if (Buffer.byteLength(text) > MAX_MESSAGE_BYTES) return null;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof value !== "object" || value === null || Array.isArray(value) || !Object.hasOwn(value, "id")) return null;
  const id = (value as { id: unknown }).id;
  if (typeof id === "number" && Number.isFinite(id)) return id;
  if (typeof id === "string" && id.length <= MAX_ID_CHARS) return id;
  return null;
}

function randomValue(rng: Prng, depth = 0): unknown {
  switch (rng.int(depth > 2 ? 7 : 9)) {
    case 0:
      return null;
    case 1:
      return rng.int(2) === 0;
    case 2:
      return rng.pick([0, -1, 1.5, 2 ** 53, -(2 ** 60), 1e308, rng.next()]);
    case 3:
      return randomString(rng);
    case 4:
      return rng.pick(keys).publicKey.hex;
    case 5:
      return rng.pick(uncompressedKeys);
    case 6:
      return `${"0x".repeat(rng.int(2))}${Buffer.from(rng.bytes(rng.pick([0, 1, 32, 33, 64, 65, 66]))).toString("hex")}`;
    case 7:
      return Array.from({ length: rng.int(4) }, () => randomValue(rng, depth + 1));
    default: {
      const out: Record<string, unknown> = {};
      for (let n = rng.int(4); n > 0; n--) {
        out[rng.pick(["pubkey", "signature", "script", "id", "__proto__", randomString(rng)])] = randomValue(rng, depth + 1);
      }
      return out;
    }
  }
}

function randomString(rng: Prng): string {
  const pieces = ["", "a", "é", "🚀", "\u0000", "\ud800", "\n", '"', "\\", "play", "fetch_nonce", "0x", "02", "ff", " "];
  let out = "";
  for (let n = rng.int(8); n > 0; n--) out += rng.pick(pieces);
  return out;
}

const PARAM_NAMES: Record<string, string[]> = { fetch_nonce: ["pubkey"], authenticate: ["pubkey", "signature"], play: ["script"] };

/** Params of the method's shape (by name or by position), each value usually plausible for its name. */
function plausibleParams(rng: Prng, method: unknown): unknown {
  const names = PARAM_NAMES[typeof method === "string" && Object.hasOwn(PARAM_NAMES, method) ? method : rng.pick(METHODS)] ?? [];
  const valueFor = (name: string): unknown => {
    if (rng.int(6) === 0) return randomValue(rng);
    if (name === "pubkey") return rng.int(2) === 0 ? rng.pick(keys).publicKey.hex : rng.pick(uncompressedKeys);
    if (name === "signature") return Buffer.from(rng.bytes(rng.pick([64, 65]))).toString("hex");
    return randomString(rng);
  };
  if (rng.int(2) === 0) return names.map(valueFor);
  return Object.fromEntries(names.map((name) => [name, valueFor(name)]));
}

/** A request-shaped object with each field sometimes right, sometimes wrong, sometimes absent. */
function randomRequest(rng: Prng): string {
  const request: Record<string, unknown> = {};
  if (rng.int(8) !== 0) request.jsonrpc = rng.int(6) === 0 ? randomValue(rng) : "2.0";
  if (rng.int(8) !== 0) {
    request.id = rng.pick<unknown>([rng.int(1000), randomString(rng), "x".repeat(MAX_ID_CHARS + rng.int(2)), null, randomValue(rng)]);
  }
  if (rng.int(10) !== 0) request.method = rng.int(5) === 0 ? randomValue(rng) : rng.pick([...METHODS, "nope", "Play"]);
  if (rng.int(10) !== 0) request.params = rng.int(2) === 0 ? randomValue(rng) : plausibleParams(rng, request.method);
  let text = JSON.stringify(request);
  // JSON.stringify cannot write these: splice them in as text.
  if (rng.int(20) === 0) text = text.replace(/"id":[^,}]*/, `"id":${rng.pick(["1e400", "-1e999", "1E2", "-0"])}`);
  return text;
}

const codesSeen = new Set<number>();

/** Decodes `input`, checks what came out, and says whether it was a request. */
function check(input: string | Uint8Array): boolean {
  const decoded = decodeRequest(input);
  if (decoded.ok) {
    checkRequest(decoded.request);
    return true;
  }
  const { response } = decoded;
  codesSeen.add(response.error.code);
  expect(ErrorResponseSchema.safeParse(response).success).toBe(true);
  expect(DECODE_CODES).toContain(response.error.code);
  expect(response.id).toBe(expectedId(input));
  // What goes on the wire reads back as the same response (an id of -0 goes out as 0: equal for the client).
  const wire = ErrorResponseSchema.parse(JSON.parse(encodeResponse(response)));
  expect(wire.id === response.id).toBe(true);
  expect({ ...wire, id: null }).toEqual({ ...response, id: null });
  if (response.error.code === RPC_ERROR.parse) expect(response.id).toBeNull();
  return false;
}

function checkRequest(request: Request): void {
  expect(METHODS).toContain(request.method);
  expect(typeof request.id === "string" ? request.id.length <= MAX_ID_CHARS : Number.isFinite(request.id)).toBe(true);
  let again: string;
  switch (request.method) {
    case "fetch_nonce":
      expect(request.params.pubkey.hex).toMatch(CANONICAL_KEY);
      again = encodeRequest(request.id, request.method, { pubkey: request.params.pubkey.hex });
      break;
    case "authenticate":
      expect(request.params.pubkey.hex).toMatch(CANONICAL_KEY);
      expect(typeof request.params.signature).toBe("string");
      again = encodeRequest(request.id, request.method, { pubkey: request.params.pubkey.hex, signature: request.params.signature });
      break;
    case "play":
      expect(typeof request.params.script).toBe("string");
      again = encodeRequest(request.id, request.method, { script: request.params.script });
  }
  // A decoded request, encoded again, decodes to itself.
  const redecoded = decodeRequest(again);
  expect(redecoded.ok).toBe(true);
  if (redecoded.ok) {
    expect(redecoded.request.id === request.id).toBe(true);
    expect({ ...redecoded.request, id: 0 }).toEqual({ ...request, id: 0 });
  }
}

/** Runs `iterations` inputs from `next`, reporting the seed and input of a failure. */
function run(name: string, seed: number, iterations: number, next: (rng: Prng) => string | Uint8Array): number {
  const rng = prng(seed);
  let accepted = 0;
  let input: string | Uint8Array = "";
  let i = 0;
  try {
    for (; i < iterations; i++) {
      input = next(rng);
      if (check(input)) accepted++;
    }
  } catch (err) {
    const shown = typeof input === "string" ? JSON.stringify(input) : Buffer.from(input).toString("hex");
    console.error(`${name} failed: STOA_FUZZ_SEED=${seed}, iteration ${i}, input ${shown.slice(0, 2000)}`);
    throw err;
  }
  return accepted;
}

describe("decodeRequest fuzzing: never throws, always a valid JSON-RPC error with the right id", () => {
  test(
    `${STRUCTURED_ITERATIONS} request-shaped objects with random fields`,
    () => {
      codesSeen.clear();
      const accepted = run("structured fuzz", fuzzSeed(0xc12c1e5), STRUCTURED_ITERATIONS, randomRequest);
      expect([...codesSeen].sort()).toEqual([...DECODE_CODES].sort());
      expect(accepted).toBeGreaterThan(1000);
      expect(accepted).toBeLessThan(STRUCTURED_ITERATIONS / 2);
    },
    FUZZ_TIMEOUT_MS,
  );

  test(
    `${MUTATED_ITERATIONS} byte-mutated valid requests, as text and as binary messages`,
    () => {
      const accepted = run("mutation fuzz", fuzzSeed(0x1d5), MUTATED_ITERATIONS, (rng) => {
        const bytes = mutate(rng, new TextEncoder().encode(rng.pick(VALID)));
        return rng.int(2) === 0 ? bytes : new TextDecoder().decode(bytes);
      });
      expect(accepted).toBeGreaterThan(100);
    },
    FUZZ_TIMEOUT_MS,
  );

  test(
    `${RANDOM_ITERATIONS} random byte strings and JSON scalars`,
    () => {
      const accepted = run("random fuzz", fuzzSeed(0xbad), RANDOM_ITERATIONS, (rng) =>
        rng.int(2) === 0 ? rng.bytes(rng.int(64)) : JSON.stringify(randomValue(rng)),
      );
      expect(accepted).toBe(0);
    },
    FUZZ_TIMEOUT_MS,
  );

  test(
    "deeply nested and oversized input is an error, not a crash",
    () => {
      for (const depth of [1_000, 100_000, 400_000]) {
        const nested = `${"[".repeat(depth)}${"]".repeat(depth)}`;
        for (const message of ["[".repeat(depth), nested, `{"jsonrpc":"2.0","id":1,"method":"play","params":${nested}}`]) check(message);
      }
      check(`{"jsonrpc":"2.0","id":1,"method":"play","params":["${"a".repeat(MAX_MESSAGE_BYTES)}"]}`);
    },
    FUZZ_TIMEOUT_MS,
  );
});
