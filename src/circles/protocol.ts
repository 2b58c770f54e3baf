/**
 * The circles wire protocol: JSON-RPC 2.0 over a WebSocket, one request or response per text
 * message (UTF-8 JSON; binary messages are read as UTF-8 too). Batches and notifications are not
 * supported: every request has an `id` (number or string) and gets exactly one response with
 * that id. Requests on one socket may overlap; responses come as they finish, matched by id.
 *
 * Session flow:
 *
 *   1. connect   ws://host:8080/<circle_pk>  — the circle's public key (hex, compressed or
 *                not; the server compares canonical forms, auth.ts). Unknown circle: HTTP 404
 *                before any upgrade; malformed path: 400.
 *   2. fetch_nonce {pubkey}            → {nonce, expires_at}
 *   3. authenticate {pubkey, signature} → {authenticated: true}
 *   4. play {script}                   → {output}   (any number of times)
 *
 * With auth enabled (`--enable-auth`) `play` before a successful `authenticate` answers -32001.
 * Without it, `play` works at once and the script's CALLER_ID is "" unless the connection
 * authenticated. Authentication is per connection and per circle.
 *
 * Messages (params by name or by position — `[pubkey]`, `[pubkey, signature]`, `[script]`;
 * unknown named params are ignored):
 *
 *   → {"jsonrpc":"2.0","id":1,"method":"fetch_nonce","params":{"pubkey":"02a1…"}}
 *   ← {"jsonrpc":"2.0","id":1,"result":{"nonce":"9f2c…(64 hex)","expires_at":1764585366}}
 *     `pubkey` is the caller's key (not the circle's). The nonce is single use, expires
 *     `NONCE_TTL_MS` (5 min) after issue (`expires_at`: Unix seconds), and is good only on
 *     this connection, for this circle and this pubkey.
 *
 *   → {"jsonrpc":"2.0","id":2,"method":"authenticate","params":{"pubkey":"02a1…","signature":"b914…1c"}}
 *   ← {"jsonrpc":"2.0","id":2,"result":{"authenticated":true}}
 *     `signature` signs the nonce eth-style (EIP-191 personal_sign, what every Ethereum wallet
 *     makes): secp256k1 over keccak256("\x19Ethereum Signed Message:\n" + <byte length of
 *     nonce> + nonce), hex r‖s‖v (0x optional, v ∈ 0/1/27/28; also 64-byte r‖s), low s.
 *     The request names no nonce: the server tries the nonces it issued on this connection
 *     for this circle and pubkey, checking the signature by key recovery, and uses them up
 *     (auth.ts, NonceStore.redeem). Another key's nonce, another connection's, another
 *     circle's, an expired or a used one: -32002.
 *
 *   → {"jsonrpc":"2.0","id":"p-7","method":"play","params":{"script":"40 + 2"}}
 *   ← {"jsonrpc":"2.0","id":"p-7","result":{"output":"42"}}
 *     `output` is the script's output as the sandbox captures it (sandbox.ts), at most
 *     MAX_OUTPUT_BYTES.
 *
 *   ← {"jsonrpc":"2.0","id":"p-7","error":{"code":-32003,"message":"the script ran over its 5s time limit"}}
 *
 * Errors (`error.code`; `id` is null when the request's id could not be read):
 *
 *   -32700  RPC_ERROR.parse               not JSON (or not UTF-8)
 *   -32600  RPC_ERROR.invalidRequest      JSON but not a request: not an object, a batch, no
 *                                         or bad id, jsonrpc not "2.0", method not a string,
 *                                         message over MAX_MESSAGE_BYTES
 *   -32601  RPC_ERROR.methodNotFound      the method is not fetch_nonce, authenticate or play
 *   -32602  RPC_ERROR.invalidParams       params missing or of the wrong shape, a pubkey that
 *                                         is not a key (not hex / wrong length / not a point),
 *                                         a script over MAX_SCRIPT_BYTES
 *   -32000  RPC_ERROR.execution           the script failed (its error, truncated), its output
 *                                         went over MAX_OUTPUT_BYTES, the queue is down, or
 *                                         more than MAX_INFLIGHT_PER_CONNECTION requests wait
 *   -32001  RPC_ERROR.authRequired        play before authenticate, with auth enabled
 *   -32002  RPC_ERROR.invalidCredentials  bad, used, expired or foreign nonce; a signature
 *                                         that is malformed or not by that pubkey
 *   -32003  RPC_ERROR.timeout             the script ran over the task timeout
 *
 * Limits (enforced where the data comes in, before anything is allocated for it):
 *
 *   MAX_MESSAGE_BYTES           1 MiB   one request message (the server's maxPayloadLength too)
 *   MAX_SCRIPT_BYTES          256 KiB   a play script, UTF-8
 *   MAX_OUTPUT_BYTES            1 MiB   a play's output, UTF-8
 *   MAX_ERROR_TEXT_BYTES        4 KiB   an error message, UTF-8 (longer ones are truncated)
 *   MAX_RESPONSE_BYTES        ~6 MiB   one response message (what a client must accept)
 *   MAX_INFLIGHT_PER_CONNECTION    32   requests of one connection being worked on at once
 *   MAX_NONCES_PER_CONNECTION       8   nonces held per connection (the oldest is dropped)
 *   MAX_ID_CHARS                  128   a string id
 *
 * The task record (`TaskRecord`) is what a play becomes on the queue (queue.ts): a Redis hash
 * `rhai_task:<id>` of string fields, `encodeTaskRecord` / `decodeTaskRecord`.
 */
import { z } from "zod";
import { StoaError, describeError } from "../core/errors.ts";
import { type PublicKey, parsePublicKey } from "./auth.ts";

export { MAX_NONCES_PER_CONNECTION, NONCE_TTL_MS } from "./auth.ts";

/**
 * Largest request message. A script of MAX_SCRIPT_BYTES fits with JSON escaping of up to 4 bytes
 * per byte (quotes, backslashes, newlines take 2), plus the envelope.
 */
export const MAX_MESSAGE_BYTES = 1024 * 1024;
/** Largest play script, in UTF-8 bytes: ample for a script, small enough to queue many. */
export const MAX_SCRIPT_BYTES = 256 * 1024;
/** Largest play output, in UTF-8 bytes; a script printing more fails with -32000. */
export const MAX_OUTPUT_BYTES = 1024 * 1024;
/** Largest error message, in UTF-8 bytes; longer texts (a script's stack, say) are truncated. */
export const MAX_ERROR_TEXT_BYTES = 4 * 1024;
/**
 * Largest response message: the output at its worst JSON escaping (`\u001f`, 6 bytes per code
 * unit, and a code unit is at least one UTF-8 byte) plus room for the envelope.
 */
export const MAX_RESPONSE_BYTES = 6 * MAX_OUTPUT_BYTES + 64 * 1024;
/** Requests one connection may have in progress; past it the request answers -32000 at once. */
export const MAX_INFLIGHT_PER_CONNECTION = 32;
/** Longest string id; a longer one is an invalid request (ids are echoed in every response). */
export const MAX_ID_CHARS = 128;
/** Longest signature param: "0x" + 65 bytes in hex. */
const MAX_SIGNATURE_CHARS = 2 + 130;
/** Longest pubkey param: "0x" + 65 bytes in hex. Longer is refused before any hex is decoded. */
const MAX_PUBKEY_CHARS = 2 + 130;
/** Longest method name echoed in a -32601 message. */
const MAX_SHOWN_METHOD_CHARS = 64;

/** JSON-RPC error codes: the standard ones (-32700…-32602) and the circles server's (-32000…-32003). */
export const RPC_ERROR = {
  parse: -32700,
  invalidRequest: -32600,
  methodNotFound: -32601,
  invalidParams: -32602,
  execution: -32000,
  authRequired: -32001,
  invalidCredentials: -32002,
  timeout: -32003,
} as const;
type RpcErrorCode = (typeof RPC_ERROR)[keyof typeof RPC_ERROR];

export const METHODS = ["fetch_nonce", "authenticate", "play"] as const;
export type Method = (typeof METHODS)[number];

/** A request id. JSON-RPC also allows null and no id (a notification); this protocol does not: every request is answered by id. */
const IdSchema = z.union([z.number(), z.string().max(MAX_ID_CHARS)]);
export type Id = z.infer<typeof IdSchema>;

const PubkeyParam = z
  .string({ error: "pubkey must be a string: the caller's public key in hex" })
  .max(MAX_PUBKEY_CHARS, { error: "pubkey is too long: a public key is 66 or 130 hex digits" })
  .transform((text, ctx): PublicKey => {
    try {
      return parsePublicKey(text);
    } catch (err) {
      ctx.issues.push({ code: "custom", message: describeError(err), input: text });
      return z.NEVER;
    }
  });
const SignatureParam = z
  .string({ error: "signature must be a string: hex r‖s‖v" })
  .max(MAX_SIGNATURE_CHARS, { error: "signature is too long: it is 130 hex digits (r‖s‖v)" });
const ScriptParam = z
  .string({ error: "script must be a string" })
  .refine((script) => utf8Length(script) <= MAX_SCRIPT_BYTES, {
    error: (issue) => `script is ${utf8Length(String(issue.input))} bytes, over the limit of ${MAX_SCRIPT_BYTES}`,
  });

/** Each method's params: by name (an object) and by position (an array, in the order listed). */
const PARAMS = {
  fetch_nonce: { names: ["pubkey"], schema: z.object({ pubkey: PubkeyParam }) },
  authenticate: { names: ["pubkey", "signature"], schema: z.object({ pubkey: PubkeyParam, signature: SignatureParam }) },
  play: { names: ["script"], schema: z.object({ script: ScriptParam }) },
} as const satisfies Record<Method, { names: readonly string[]; schema: z.ZodType }>;

type FetchNonceParams = z.output<typeof PARAMS.fetch_nonce.schema>;
export type AuthenticateParams = z.output<typeof PARAMS.authenticate.schema>;
type PlayParams = z.output<typeof PARAMS.play.schema>;

/** A decoded request: params always by name, pubkeys parsed to canonical form. */
export type Request =
  | { jsonrpc: "2.0"; id: Id; method: "fetch_nonce"; params: FetchNonceParams }
  | { jsonrpc: "2.0"; id: Id; method: "authenticate"; params: AuthenticateParams }
  | { jsonrpc: "2.0"; id: Id; method: "play"; params: PlayParams };

export const FetchNonceResultSchema = z.object({ nonce: z.string(), expires_at: z.number().int() });
export const AuthenticateResultSchema = z.object({ authenticated: z.literal(true) });
export const PlayResultSchema = z.object({ output: z.string() });
/** Each method's result. */
export const RESULTS = {
  fetch_nonce: FetchNonceResultSchema,
  authenticate: AuthenticateResultSchema,
  play: PlayResultSchema,
} as const satisfies Record<Method, z.ZodType>;
type Result = z.infer<(typeof RESULTS)[Method]>;

const ErrorObjectSchema = z.object({ code: z.number().int(), message: z.string(), data: z.unknown().optional() });
const SuccessResponseSchema = z.object({ jsonrpc: z.literal("2.0"), id: IdSchema, result: z.unknown() });
export const ErrorResponseSchema = z.object({ jsonrpc: z.literal("2.0"), id: IdSchema.nullable(), error: ErrorObjectSchema });
export const ResponseSchema = z.union([SuccessResponseSchema, ErrorResponseSchema]);
type SuccessResponse = z.infer<typeof SuccessResponseSchema>;
export type ErrorResponse = z.infer<typeof ErrorResponseSchema>;
export type Response = z.infer<typeof ResponseSchema>;

type DecodedRequest = { ok: true; request: Request } | { ok: false; response: ErrorResponse };

/**
 * Decodes one request message. Never throws: anything that is not a valid request comes back as
 * the error response to send (-32700, -32600, -32601 or -32602), with the request's id when it
 * could be read and null otherwise.
 * @example
 * const decoded = decodeRequest(message);
 * if (!decoded.ok) return ws.send(encodeResponse(decoded.response));
 * switch (decoded.request.method) { … }
 */
export function decodeRequest(message: string | Uint8Array): DecodedRequest {
  const size = typeof message === "string" ? utf8Length(message) : message.byteLength;
  if (size > MAX_MESSAGE_BYTES) {
    return fail(null, RPC_ERROR.invalidRequest, `the message is ${size} bytes, over the limit of ${MAX_MESSAGE_BYTES}`);
  }
  let value: unknown;
  try {
    const text = typeof message === "string" ? message : new TextDecoder("utf-8", { fatal: true }).decode(message);
    value = JSON.parse(text);
  } catch (err) {
    return fail(null, RPC_ERROR.parse, `parse error: not JSON (${describeError(err)})`);
  }
  if (Array.isArray(value)) return fail(null, RPC_ERROR.invalidRequest, "batch requests are not supported: send one request per message");
  if (typeof value !== "object" || value === null) {
    return fail(null, RPC_ERROR.invalidRequest, "invalid request: a request is a JSON object {jsonrpc, id, method, params}");
  }
  const fields = value as Record<string, unknown>;
  if (!Object.hasOwn(fields, "id") || fields.id === null) {
    return fail(null, RPC_ERROR.invalidRequest, "invalid request: id is missing (notifications are not supported): give a number or a string");
  }
  const id = fields.id;
  if (typeof id !== "number" && typeof id !== "string") {
    return fail(null, RPC_ERROR.invalidRequest, "invalid request: id must be a number or a string");
  }
  // JSON.parse reads 1e400 as Infinity, which JSON.stringify would echo as null.
  if (typeof id === "number" && !Number.isFinite(id)) return fail(null, RPC_ERROR.invalidRequest, "invalid request: id is not a finite number");
  if (typeof id === "string" && id.length > MAX_ID_CHARS) {
    return fail(null, RPC_ERROR.invalidRequest, `invalid request: a string id must be at most ${MAX_ID_CHARS} characters`);
  }
  if (fields.jsonrpc !== "2.0") return fail(id, RPC_ERROR.invalidRequest, 'invalid request: jsonrpc must be "2.0"');
  const method = fields.method;
  if (typeof method !== "string") return fail(id, RPC_ERROR.invalidRequest, "invalid request: method must be a string");
  if (!isMethod(method)) {
    const shown = method.length > MAX_SHOWN_METHOD_CHARS ? `${method.slice(0, MAX_SHOWN_METHOD_CHARS)}…` : method;
    return fail(id, RPC_ERROR.methodNotFound, `unknown method ${JSON.stringify(shown)}: use ${METHODS.join(", ")}`);
  }
  const params = decodeParams(method, fields.params);
  if (!params.ok) return fail(id, RPC_ERROR.invalidParams, `invalid params for ${method}: ${params.problem}`);
  return { ok: true, request: { jsonrpc: "2.0", id, method, params: params.value } as Request };
}

function decodeParams(method: Method, params: unknown): { ok: true; value: unknown } | { ok: false; problem: string } {
  const { names, schema } = PARAMS[method];
  const shape = `{${names.join(", ")}} or [${names.join(", ")}]`;
  let named: Record<string, unknown>;
  if (Array.isArray(params)) {
    if (params.length !== names.length) {
      return { ok: false, problem: `${params.length} positional params, expected ${names.length}: ${shape}` };
    }
    named = Object.fromEntries(names.map((name, i) => [name, params[i]]));
  } else if (typeof params === "object" && params !== null) {
    named = params as Record<string, unknown>;
  } else {
    return { ok: false, problem: `params must be ${shape}` };
  }
  const absent = names.find((name) => !Object.hasOwn(named, name) || named[name] === undefined);
  if (absent !== undefined) return { ok: false, problem: `${absent} is missing: params are ${shape}` };
  const parsed = schema.safeParse(named);
  return parsed.success ? { ok: true, value: parsed.data } : { ok: false, problem: parsed.error.issues[0]?.message ?? "bad params" };
}

function isMethod(name: string): name is Method {
  return (METHODS as readonly string[]).includes(name);
}

function fail(id: Id | null, code: RpcErrorCode, message: string): { ok: false; response: ErrorResponse } {
  return { ok: false, response: errorResponse(id, code, message) };
}

/** A success response. */
export function resultResponse(id: Id, result: Result): SuccessResponse {
  return { jsonrpc: "2.0", id, result };
}

/** An error response; the message is cut to MAX_ERROR_TEXT_BYTES. */
export function errorResponse(id: Id | null, code: RpcErrorCode, message: string): ErrorResponse {
  return { jsonrpc: "2.0", id, error: { code, message: truncateUtf8(message, MAX_ERROR_TEXT_BYTES) } };
}

/** The text message of a response. */
export function encodeResponse(response: Response): string {
  return JSON.stringify(response);
}

/** The text message of a request (params by name), for clients. */
export function encodeRequest<M extends Method>(id: Id, method: M, params: RequestParams[M]): string {
  return JSON.stringify({ jsonrpc: "2.0", id, method, params });
}
/** Params as a client sends them: pubkeys as hex strings. */
export type RequestParams = {
  [M in Method]: z.input<(typeof PARAMS)[M]["schema"]>;
};

/**
 * Decodes one response message (for clients): a StoaError "too_large", "decode" or "schema" when
 * it is not a JSON-RPC 2.0 response. Check `result` against `RESULTS[method]`.
 */
export function decodeResponse(message: string): Response {
  if (utf8Length(message) > MAX_RESPONSE_BYTES) {
    throw new StoaError("too_large", `a response of ${utf8Length(message)} bytes is over the limit of ${MAX_RESPONSE_BYTES}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(message);
  } catch (err) {
    throw new StoaError("decode", `the server sent a message that is not JSON: ${describeError(err)}`, { cause: err });
  }
  const parsed = ResponseSchema.safeParse(value);
  if (!parsed.success) throw new StoaError("schema", "the server sent JSON that is not a JSON-RPC 2.0 response");
  return parsed.data;
}

const ELLIPSIS = "…";

/**
 * `text` cut to at most `maxBytes` UTF-8 bytes on a character boundary, with "…" (3 bytes, counted)
 * at the end when cut.
 * @example
 * truncateUtf8(err.stack, MAX_ERROR_TEXT_BYTES)
 */
export function truncateUtf8(text: string, maxBytes: number): string {
  // A code unit is at most 3 UTF-8 bytes: short strings need no counting.
  if (text.length * 3 <= maxBytes || utf8Length(text) <= maxBytes) return text;
  const mark = maxBytes >= utf8Length(ELLIPSIS) ? ELLIPSIS : "";
  const room = maxBytes - utf8Length(mark);
  let bytes = 0;
  let end = 0;
  for (const char of text) {
    const size = utf8Length(char);
    if (bytes + size > room) break;
    bytes += size;
    end += char.length;
  }
  return text.slice(0, end) + mark;
}

/** UTF-8 length of a string (a lone surrogate counts as U+FFFD: 3 bytes, as it is sent). */
function utf8Length(text: string): number {
  return Buffer.byteLength(text, "utf8");
}

// ---- the task record ----

/** A task's life: pending → processing → completed | error | timeout. */
export const TASK_STATUSES = ["pending", "processing", "completed", "error", "timeout"] as const;
export type TaskStatus = (typeof TASK_STATUSES)[number];

/** Task ids go into Redis key names (`rhai_task:<id>`): no spaces, no separators beyond these. */
const TASK_ID = /^[A-Za-z0-9._:-]{1,128}$/;
/** A canonical public key: compressed, lowercase hex (auth.ts). */
const CANONICAL_KEY = /^0[23][0-9a-f]{64}$/;

const boundedText = (what: string, maxBytes: number) =>
  z.string().refine((text) => utf8Length(text) <= maxBytes, { error: `${what} is over ${maxBytes} bytes` });
/** A count of milliseconds (or ms since the epoch), as a number in memory. */
const Millis = z.number().int().nonnegative();

const TaskRecordSchema = z.object({
  id: z.string().regex(TASK_ID, { error: "id must be 1–128 of A-Z a-z 0-9 . _ : -" }),
  /** The circle's canonical public key. */
  circle: z.string().regex(CANONICAL_KEY, { error: "circle must be a canonical public key (66 lowercase hex digits)" }),
  /** The authenticated caller's canonical key, or "" when unauthenticated. */
  caller: z.union([z.literal(""), z.string().regex(CANONICAL_KEY)], { error: 'caller must be "" or a canonical public key' }),
  script: boundedText("script", MAX_SCRIPT_BYTES),
  status: z.enum(TASK_STATUSES),
  /** What the script printed (completed), "" before. */
  output: boundedText("output", MAX_OUTPUT_BYTES).default(""),
  /** Why it failed (error, timeout), "" otherwise. */
  error: boundedText("error", MAX_ERROR_TEXT_BYTES).default(""),
  created_at: Millis,
  updated_at: Millis,
  timeout_ms: Millis,
  /** How many times a worker has claimed it (a requeued task is claimed twice). */
  attempts: z.number().int().nonnegative().default(0),
});
export type TaskRecord = z.output<typeof TaskRecordSchema>;

/** The number fields, stored as decimal strings. */
const NUMBER_FIELDS = ["created_at", "updated_at", "timeout_ms", "attempts"] as const;
const DECIMAL = /^(0|[1-9][0-9]{0,15})$/;

/** The record as a flat map of strings (a Redis hash): numbers in decimal. */
export function encodeTaskRecord(record: TaskRecord): Record<string, string> {
  return {
    id: record.id,
    circle: record.circle,
    caller: record.caller,
    script: record.script,
    status: record.status,
    output: record.output,
    error: record.error,
    created_at: String(record.created_at),
    updated_at: String(record.updated_at),
    timeout_ms: String(record.timeout_ms),
    attempts: String(record.attempts),
  };
}

/**
 * A record from a flat map of strings (HGETALL). Missing output, error and attempts take their
 * defaults; anything else wrong is a StoaError "schema" naming the field.
 */
export function decodeTaskRecord(fields: Record<string, string>): TaskRecord {
  const value: Record<string, unknown> = { ...fields };
  for (const name of NUMBER_FIELDS) {
    const text = fields[name];
    if (text === undefined) continue;
    if (!DECIMAL.test(text)) {
      throw new StoaError("schema", `task record: ${name} is ${JSON.stringify(text.slice(0, 32))}, not a decimal number`);
    }
    value[name] = Number(text);
  }
  const parsed = TaskRecordSchema.safeParse(value);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0];
  const where = issue?.path.join(".") ?? "";
  const missing = issue?.path.length === 1 && value[where] === undefined;
  const which = fields.id === undefined ? "task record" : `task record ${fields.id.slice(0, MAX_ID_CHARS)}`;
  const problem = missing ? `${where} is missing` : `${where}: ${issue?.message ?? "bad field"}`;
  throw new StoaError("schema", `${which}: ${problem}`);
}
