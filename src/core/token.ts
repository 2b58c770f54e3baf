/**
 * Bearer tokens, the one mechanism behind the metaserver's write token and hotlink's user
 * tokens: issuing, hashing, constant-time comparison, token files and the `Authorization`
 * header.
 *
 * - A token we issue is `<prefix>` + 32 random bytes from the CSPRNG in base64url (43
 *   characters). SHA-256, not scrypt/argon2: a 256-bit random token cannot be guessed however
 *   fast the hash is, and a slow hash would cost CPU on every request (a denial of service).
 * - Only digests are kept in memory and on disk for verification; comparisons go through
 *   `sameDigest` (`timingSafeEqual`), so the time taken says nothing about how much matched.
 * - A token file holds one token on one line and must not be readable by group or others
 *   (mode 0600): `readTokenFile` refuses it otherwise. `ensureTokenFile` creates one with a fresh
 *   token when missing — `writeFileAtomic` with `replace: false` (a temporary file hard-linked
 *   into place), so two processes starting at once end up with the same token and no reader
 *   ever sees half a file.
 * - Tokens never appear on a command line (files and environment only) and never in logs.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { mkdirSync, statSync } from "node:fs";
import { dirname } from "node:path";
import { writeFileAtomic } from "./atomicfile.ts";
import { StoaError, describeError, errnoCode } from "./errors.ts";
import { readSmallFile } from "./smallfile.ts";

/** Random bytes in a token we issue: 256 bits, beyond any guessing. */
const TOKEN_BYTES = 32;
/** Shortest token accepted from a file or the environment: 128 bits of base64url. */
const MIN_TOKEN_LENGTH = 22;
/** Longest token accepted (and longest line of a token file). */
const MAX_TOKEN_LENGTH = 256;
/** An `Authorization` header longer than this is refused before it is split. */
const MAX_AUTHORIZATION_LENGTH = 512;
/** A token file larger than this is not one: refused before it is read. */
const MAX_TOKEN_FILE_BYTES = 4096;

/** Printable ASCII without space: what a token may hold (base64url and friends). */
const TOKEN_CHARS = /^[\x21-\x7e]+$/;

/** A fresh token: `prefix` + base64url of `TOKEN_BYTES` random bytes. */
export function newToken(prefix: string): string {
  return prefix + randomBytes(TOKEN_BYTES).toString("base64url");
}

/** SHA-256 of `salt ‖ token` (no salt by default): what is stored and compared instead of the token. */
export function tokenDigest(token: string, salt: Uint8Array = new Uint8Array(0)): Buffer {
  return createHash("sha256").update(salt).update(token, "utf8").digest();
}

/** Whether two digests are equal, in time that does not depend on where they differ. */
export function sameDigest(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && timingSafeEqual(a, b);
}

/** Why `token` is not an acceptable token, or null. Never quotes the token. */
export function tokenProblem(token: string): string | null {
  if (token.length < MIN_TOKEN_LENGTH) return `a token is at least ${MIN_TOKEN_LENGTH} characters`;
  if (token.length > MAX_TOKEN_LENGTH) return `a token is at most ${MAX_TOKEN_LENGTH} characters`;
  if (!TOKEN_CHARS.test(token)) return "a token is printable ASCII without spaces";
  return null;
}

/**
 * The token of `Authorization: Bearer <token>`, or null when the header is missing, too long or
 * not of that form (answer 401 then).
 * @example
 * bearerToken("Bearer stm_abc…") // → "stm_abc…"
 */
export function bearerToken(header: string | null | undefined): string | null {
  if (header === null || header === undefined || header.length > MAX_AUTHORIZATION_LENGTH) return null;
  const match = /^[ \t]*bearer[ \t]+([\x21-\x7e]+)[ \t]*$/i.exec(header);
  return match?.[1] ?? null;
}

/**
 * Reads a token file: one token on one line. Refuses a file group or others may read, and says
 * how to fix it; `hint` says where such a file comes from.
 */
export function readTokenFile(file: string, hint = "one token on one line"): string {
  const text = readSmallFile(file, { maxBytes: MAX_TOKEN_FILE_BYTES, what: "token file", fix: `pass the file that holds ${hint}`, secret: true });
  const token = text.trim();
  if (token.length === 0 || token.length > MAX_TOKEN_LENGTH || /\s/.test(token)) {
    throw new StoaError("config", `token file ${file} must hold ${hint}`);
  }
  return token;
}

/**
 * The token in `file`, creating the file (mode 0600, its directory 0700) with a fresh
 * `newToken(prefix)` when it does not exist. `created` says which.
 */
export function ensureTokenFile(file: string, prefix: string): { token: string; created: boolean } {
  if (exists(file)) return { token: readTokenFile(file), created: false };
  const token = newToken(prefix);
  try {
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new StoaError("io", `cannot create the token file ${file}: ${describeError(err)}; check the directory is writable or pass --token-file`, { cause: err });
  }
  try {
    // replace: false links it into place: fails if another process created it first, then theirs wins.
    writeFileAtomic(file, `${token}\n`, { mode: 0o600, replace: false, what: "the token file" });
  } catch (err) {
    if (err instanceof StoaError && err.code === "exists") return { token: readTokenFile(file), created: false };
    const why = err instanceof StoaError && err.cause !== undefined ? err.cause : err;
    throw new StoaError("io", `cannot create the token file ${file}: ${describeError(why)}; check the directory is writable or pass --token-file`, { cause: err });
  }
  return { token, created: true };
}

function exists(file: string): boolean {
  try {
    statSync(file);
    return true;
  } catch (err) {
    if (errnoCode(err) === "ENOENT") return false;
    throw new StoaError("io", `cannot use the token file ${file}: ${(err as Error).message}`, { cause: err });
  }
}
