import { describe, expect, test } from "bun:test";
import { secp256k1 } from "@noble/curves/secp256k1.js";
import { readFileSync } from "node:fs";
import { generateKey } from "../../src/circles/auth.ts";
import * as protocol from "../../src/circles/protocol.ts";
import {
  ErrorResponseSchema,
  MAX_ERROR_TEXT_BYTES,
  MAX_ID_CHARS,
  MAX_MESSAGE_BYTES,
  MAX_OUTPUT_BYTES,
  MAX_RESPONSE_BYTES,
  MAX_SCRIPT_BYTES,
  RESULTS,
  RPC_ERROR,
  ResponseSchema,
  TASK_STATUSES,
  type TaskRecord,
  decodeRequest,
  decodeResponse,
  decodeTaskRecord,
  encodeRequest,
  encodeResponse,
  encodeTaskRecord,
  errorResponse,
  resultResponse,
  truncateUtf8,
} from "../../src/circles/protocol.ts";
import { StoaError } from "../../src/core/errors.ts";

const keys = generateKey();
const PK = keys.publicKey.hex;
const PK_UNCOMPRESSED = Buffer.from(secp256k1.getPublicKey(keys.privateKey, false)).toString("hex");
const SIG = `${"ab".repeat(64)}1b`;

/** The decoded request, failing the test if it did not decode. */
function ok(message: string | Uint8Array): protocol.Request {
  const decoded = decodeRequest(message);
  if (!decoded.ok) throw new Error(`expected a request, got ${JSON.stringify(decoded.response)}`);
  return decoded.request;
}

/** The error response, failing the test if the message decoded. */
function rejected(message: string | Uint8Array): protocol.ErrorResponse {
  const decoded = decodeRequest(message);
  if (decoded.ok) throw new Error(`expected an error, got ${JSON.stringify(decoded.request)}`);
  expect(ErrorResponseSchema.safeParse(decoded.response).success).toBe(true);
  return decoded.response;
}

const rpc = (fields: Record<string, unknown>): string => JSON.stringify({ jsonrpc: "2.0", id: 1, ...fields });

describe("requests that decode", () => {
  test("the seed's client shape, unchanged", () => {
    const request = ok(`{"jsonrpc":"2.0","id":1,"method":"fetch_nonce","params":{"pubkey":"${PK}"}}`);
    expect(request.id).toBe(1);
    expect(request.method).toBe("fetch_nonce");
    if (request.method !== "fetch_nonce") throw new Error("unreachable");
    expect(request.params.pubkey.hex).toBe(PK);
  });

  test("params by name and by position give the same request", () => {
    const pairs: Array<[string, unknown, unknown]> = [
      ["fetch_nonce", { pubkey: PK }, [PK]],
      ["authenticate", { pubkey: PK, signature: SIG }, [PK, SIG]],
      ["play", { script: "40 + 2" }, ["40 + 2"]],
    ];
    for (const [method, named, positional] of pairs) {
      const a = ok(rpc({ method, params: named }));
      const b = ok(rpc({ method, params: positional }));
      expect(a).toEqual(b);
      expect(a.method).toBe(method as protocol.Method);
    }
    const auth = ok(rpc({ method: "authenticate", params: [PK, SIG] }));
    expect(auth.params).toMatchObject({ signature: SIG });
    expect(ok(rpc({ method: "play", params: ["print(1)"] })).params).toEqual({ script: "print(1)" });
  });

  test("an uncompressed or 0x-prefixed pubkey comes out canonical", () => {
    for (const pubkey of [PK_UNCOMPRESSED, `0x${PK}`, PK.toUpperCase()]) {
      const request = ok(rpc({ method: "authenticate", params: { pubkey, signature: SIG } }));
      if (request.method !== "authenticate") throw new Error("unreachable");
      expect(request.params.pubkey.hex).toBe(PK);
    }
  });

  test("string ids, zero, negative and fractional ids are echoed as given", () => {
    for (const id of ["p-7", "", "x".repeat(MAX_ID_CHARS), 0, -5, 1.5, 2 ** 53 + 2]) {
      expect(ok(JSON.stringify({ jsonrpc: "2.0", id, method: "play", params: ["1"] })).id).toBe(id);
    }
  });

  test("unknown named params are ignored; a binary (UTF-8) message decodes like text", () => {
    expect(ok(rpc({ method: "play", params: { script: "1", extra: true } })).params).toEqual({ script: "1" });
    expect(ok(new TextEncoder().encode(rpc({ method: "play", params: ["'é'"] }))).params).toEqual({ script: "'é'" });
  });

  test("a script of exactly MAX_SCRIPT_BYTES (in UTF-8) is accepted, one byte more is not", () => {
    const script = `${"é".repeat(MAX_SCRIPT_BYTES / 2 - 1)}ab`;
    expect(Buffer.byteLength(script)).toBe(MAX_SCRIPT_BYTES);
    expect(ok(rpc({ method: "play", params: [script] })).params).toEqual({ script });
    const error = rejected(rpc({ method: "play", params: [`${script}c`] })).error;
    expect(error.code).toBe(RPC_ERROR.invalidParams);
    expect(error.message).toContain(`${MAX_SCRIPT_BYTES + 1} bytes, over the limit of ${MAX_SCRIPT_BYTES}`);
  });
});

describe("requests that do not decode", () => {
  test("-32700 with id null for what is not JSON (or not UTF-8)", () => {
    for (const message of ["", "{", "nul", '{"jsonrpc":"2.0","id":1,', "{'a':1}", "\u0000", "[1,]"]) {
      const response = rejected(message);
      expect(response.error.code).toBe(RPC_ERROR.parse);
      expect(response.id).toBeNull();
    }
    expect(rejected(Uint8Array.of(0x7b, 0xff, 0x7d)).error.code).toBe(RPC_ERROR.parse);
  });

  test("-32600 with id null for JSON that is not a request object, or whose id is unusable", () => {
    const cases: Array<[string, string]> = [
      ["1", "JSON object"],
      ['"play"', "JSON object"],
      ["null", "JSON object"],
      ["[]", "batch"],
      [`[${rpc({ method: "play", params: ["1"] })}]`, "batch"],
      ['{"jsonrpc":"2.0","method":"play","params":["1"]}', "notifications are not supported"],
      ['{"jsonrpc":"2.0","id":null,"method":"play","params":["1"]}', "id is missing"],
      ['{"jsonrpc":"2.0","id":{},"method":"play","params":["1"]}', "number or a string"],
      ['{"jsonrpc":"2.0","id":[1],"method":"play","params":["1"]}', "number or a string"],
      ['{"jsonrpc":"2.0","id":true,"method":"play","params":["1"]}', "number or a string"],
      ['{"jsonrpc":"2.0","id":1e400,"method":"play","params":["1"]}', "finite"],
      [JSON.stringify({ jsonrpc: "2.0", id: "x".repeat(MAX_ID_CHARS + 1), method: "play", params: ["1"] }), `${MAX_ID_CHARS} characters`],
    ];
    for (const [message, says] of cases) {
      const response = rejected(message);
      expect(response.error.code).toBe(RPC_ERROR.invalidRequest);
      expect(response.id).toBeNull();
      expect(response.error.message).toContain(says);
    }
  });

  test("-32600 with the request's id for a bad jsonrpc or method", () => {
    const cases = [
      { id: 7, method: "play", params: ["1"] },
      { jsonrpc: "1.0", id: 7, method: "play", params: ["1"] },
      { jsonrpc: 2, id: 7, method: "play", params: ["1"] },
      { jsonrpc: "2.0", id: 7, params: ["1"] },
      { jsonrpc: "2.0", id: 7, method: 5 },
      { jsonrpc: "2.0", id: 7, method: null },
    ];
    for (const request of cases) {
      const response = rejected(JSON.stringify(request));
      expect(response.error.code).toBe(RPC_ERROR.invalidRequest);
      expect(response.id).toBe(7);
    }
  });

  test("a message over MAX_MESSAGE_BYTES is refused before it is parsed", () => {
    const big = rpc({ method: "play", params: [" ".repeat(MAX_MESSAGE_BYTES)] });
    const response = rejected(big);
    expect(response.error.code).toBe(RPC_ERROR.invalidRequest);
    expect(response.error.message).toContain(`over the limit of ${MAX_MESSAGE_BYTES}`);
    expect(rejected(new Uint8Array(MAX_MESSAGE_BYTES + 1)).error.code).toBe(RPC_ERROR.invalidRequest);
  });

  test("-32601 names the unknown method, cut short when long, and keeps the id", () => {
    for (const method of ["nope", "Play", "play ", "__proto__", "toString", ""]) {
      const response = rejected(JSON.stringify({ jsonrpc: "2.0", id: "m", method, params: [] }));
      expect(response.error.code).toBe(RPC_ERROR.methodNotFound);
      expect(response.id).toBe("m");
      expect(response.error.message).toContain(JSON.stringify(method));
      expect(response.error.message).toContain("fetch_nonce, authenticate, play");
    }
    const long = rejected(rpc({ method: "m".repeat(10_000) })).error.message;
    expect(long.length).toBeLessThan(200);
  });

  test("-32602 says what is wrong with the params, and keeps the id", () => {
    const cases: Array<[string, unknown, string]> = [
      ["fetch_nonce", undefined, "params must be {pubkey} or [pubkey]"],
      ["fetch_nonce", "02ab", "params must be {pubkey} or [pubkey]"],
      ["fetch_nonce", null, "params must be"],
      ["fetch_nonce", {}, "pubkey is missing"],
      ["fetch_nonce", { pub_key: PK }, "pubkey is missing"],
      ["fetch_nonce", [], "0 positional params, expected 1"],
      ["fetch_nonce", [PK, PK], "2 positional params, expected 1"],
      ["fetch_nonce", { pubkey: 5 }, "pubkey must be a string"],
      ["fetch_nonce", { pubkey: "zz" }, "is not hex"],
      ["fetch_nonce", { pubkey: "02ab" }, "is 2 bytes"],
      ["fetch_nonce", { pubkey: `02${"00".repeat(32)}` }, "not a point on secp256k1"],
      ["fetch_nonce", { pubkey: "0".repeat(200) }, "pubkey is too long"],
      ["authenticate", [PK], "1 positional params, expected 2: {pubkey, signature} or [pubkey, signature]"],
      ["authenticate", { pubkey: PK }, "signature is missing"],
      ["authenticate", { pubkey: PK, signature: 1 }, "signature must be a string"],
      ["authenticate", { pubkey: PK, signature: "a".repeat(200) }, "signature is too long"],
      ["play", {}, "script is missing"],
      ["play", [null], "script must be a string"],
      ["play", { script: 42 }, "script must be a string"],
      ["play", [["40 + 2"]], "script must be a string"],
    ];
    for (const [method, params, says] of cases) {
      const response = rejected(JSON.stringify({ jsonrpc: "2.0", id: 3, method, params }));
      expect(response.error.code).toBe(RPC_ERROR.invalidParams);
      expect(response.id).toBe(3);
      expect(response.error.message).toContain(`invalid params for ${method}`);
      expect(response.error.message).toContain(says);
    }
  });
});

describe("responses", () => {
  test("builders make valid JSON-RPC responses that decode again", () => {
    const responses = [
      resultResponse(1, { nonce: "ab", expires_at: 1_764_585_366 }),
      resultResponse("p", { authenticated: true }),
      resultResponse(2, { output: "42" }),
      errorResponse(null, RPC_ERROR.parse, "parse error"),
      errorResponse("x", RPC_ERROR.timeout, "the script ran over its time limit"),
    ];
    for (const response of responses) {
      expect(ResponseSchema.safeParse(response).success).toBe(true);
      expect(decodeResponse(encodeResponse(response))).toEqual(response);
    }
    expect(RESULTS.play.parse(resultResponse(2, { output: "42" }).result)).toEqual({ output: "42" });
  });

  test("error messages are cut to MAX_ERROR_TEXT_BYTES", () => {
    const message = errorResponse(1, RPC_ERROR.execution, "é".repeat(MAX_ERROR_TEXT_BYTES)).error.message;
    expect(Buffer.byteLength(message)).toBeLessThanOrEqual(MAX_ERROR_TEXT_BYTES);
    expect(message.endsWith("…")).toBe(true);
  });

  test("a response of the largest output at its worst escaping fits MAX_RESPONSE_BYTES", () => {
    const output = "\u0001".repeat(MAX_OUTPUT_BYTES);
    const text = encodeResponse(resultResponse("x".repeat(MAX_ID_CHARS), { output }));
    expect(Buffer.byteLength(text)).toBeLessThanOrEqual(MAX_RESPONSE_BYTES);
    expect(decodeResponse(text)).toMatchObject({ result: { output } });
  });

  test("decodeResponse refuses what is not a response with a StoaError", () => {
    const cases: Array<[string, string]> = [
      ["{", "decode"],
      ['{"jsonrpc":"2.0","id":1}', "schema"],
      ['{"jsonrpc":"1.0","id":1,"result":{}}', "schema"],
      ['{"jsonrpc":"2.0","id":1,"error":{"code":"x","message":"m"}}', "schema"],
      [" ".repeat(MAX_RESPONSE_BYTES + 1), "too_large"],
    ];
    for (const [text, code] of cases) {
      let err: unknown;
      try {
        decodeResponse(text);
      } catch (caught) {
        err = caught;
      }
      expect(err).toBeInstanceOf(StoaError);
      expect((err as StoaError).code).toBe(code as StoaError["code"]);
    }
  });

  test("encodeRequest makes what decodeRequest reads", () => {
    const request = ok(encodeRequest(9, "authenticate", { pubkey: PK_UNCOMPRESSED, signature: SIG }));
    expect(request).toMatchObject({ id: 9, method: "authenticate", params: { signature: SIG } });
    expect(ok(encodeRequest("a", "play", { script: "40 + 2" }))).toMatchObject({ params: { script: "40 + 2" } });
  });
});

describe("truncateUtf8", () => {
  test("cuts on a character boundary, counts the ellipsis, leaves short text alone", () => {
    expect(truncateUtf8("abc", 3)).toBe("abc");
    expect(truncateUtf8("abcd", 3)).toBe("…");
    expect(truncateUtf8("abcdef", 5)).toBe("ab…");
    expect(truncateUtf8("ééé", 5)).toBe("é…");
    expect(truncateUtf8("🚀🚀", 7)).toBe("🚀…");
    expect(truncateUtf8("🚀🚀", 6)).toBe("…");
    expect(truncateUtf8("abcd", 2)).toBe("ab");
    for (let max = 0; max < 40; max++) {
      expect(Buffer.byteLength(truncateUtf8("a€🚀b".repeat(5), max))).toBeLessThanOrEqual(max);
    }
  });
});

describe("the task record", () => {
  const record: TaskRecord = {
    id: "6f1c2d9e-1b2a-4c1e-9a7f-2b8d1c0e4f5a",
    circle: PK,
    caller: generateKey().publicKey.hex,
    script: "db.set('a', 1); 40 + 2",
    status: "completed",
    output: "42",
    error: "",
    created_at: 1_764_585_000_000,
    updated_at: 1_764_585_000_012,
    timeout_ms: 5000,
    attempts: 1,
  };

  test("encodes to a flat map of strings and decodes back, for every status", () => {
    for (const status of TASK_STATUSES) {
      const map = encodeTaskRecord({ ...record, status });
      for (const value of Object.values(map)) expect(typeof value).toBe("string");
      expect(map.created_at).toBe("1764585000000");
      expect(decodeTaskRecord(map)).toEqual({ ...record, status });
    }
    expect(TASK_STATUSES).toEqual(["pending", "processing", "completed", "error", "timeout"]);
  });

  test("a fresh pending record needs no output, error or attempts", () => {
    const { output: _o, error: _e, attempts: _a, ...fields } = encodeTaskRecord({ ...record, status: "pending", caller: "" });
    expect(decodeTaskRecord(fields)).toMatchObject({ status: "pending", caller: "", output: "", error: "", attempts: 0 });
  });

  test("a bad field is a StoaError naming it", () => {
    const map = encodeTaskRecord(record);
    const cases: Array<[Record<string, string>, string]> = [
      [{ ...map, status: "done" }, "status"],
      [{ ...map, created_at: "1.5" }, "created_at"],
      [{ ...map, timeout_ms: "-1" }, "timeout_ms"],
      [{ ...map, attempts: "01" }, "attempts"],
      [{ ...map, updated_at: "" }, "updated_at"],
      [{ ...map, circle: PK_UNCOMPRESSED }, "circle"],
      [{ ...map, circle: PK.toUpperCase() }, "circle"],
      [{ ...map, caller: "someone" }, "caller"],
      [{ ...map, id: "a b" }, "id"],
      [{ ...map, id: "" }, "id"],
      [{ ...map, output: "x".repeat(MAX_OUTPUT_BYTES + 1) }, "output"],
      [{ ...map, script: "x".repeat(MAX_SCRIPT_BYTES + 1) }, "script"],
      [{ ...map, error: "x".repeat(MAX_ERROR_TEXT_BYTES + 1) }, "error"],
    ];
    for (const [fields, name] of cases) {
      let err: unknown;
      try {
        decodeTaskRecord(fields);
      } catch (caught) {
        err = caught;
      }
      expect(err).toBeInstanceOf(StoaError);
      expect((err as StoaError).code).toBe("schema");
      expect((err as StoaError).message).toContain(name);
    }
    const { script: _s, ...noScript } = map;
    expect(() => decodeTaskRecord(noScript)).toThrow("script is missing");
  });
});

describe("the contract", () => {
  test("the error codes are the spec's", () => {
    expect(RPC_ERROR).toEqual({
      parse: -32700,
      invalidRequest: -32600,
      methodNotFound: -32601,
      invalidParams: -32602,
      execution: -32000,
      authRequired: -32001,
      invalidCredentials: -32002,
      timeout: -32003,
    });
  });

  test("the header comment lists every error code, every limit and every method", () => {
    const source = readFileSync(new URL("../../src/circles/protocol.ts", import.meta.url), "utf8");
    const header = source.slice(0, source.indexOf("*/"));
    for (const [name, code] of Object.entries(RPC_ERROR)) expect(header).toContain(`${code}  RPC_ERROR.${name}`);
    const limits = Object.keys(protocol).filter((name) => name.startsWith("MAX_"));
    expect(limits.length).toBeGreaterThanOrEqual(8);
    for (const name of limits) expect(header).toContain(name);
    for (const method of protocol.METHODS) expect(header).toContain(`"method":"${method}"`);
  });
});
