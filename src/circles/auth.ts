/**
 * secp256k1 identities for circles: public keys, eth-style signatures over nonces, key files and
 * the nonces themselves. The wire side (which message carries what) is in ./protocol.ts.
 *
 * Public keys are hex, `0x` optional, either case: 33 bytes compressed (`02`/`03` + x) or
 * 65 bytes uncompressed (`04` + x + y), and always a point on the curve. Their canonical form —
 * what a circle id is, what keys are compared by — is the compressed encoding in lowercase hex
 * without `0x` (66 digits). `parsePublicKey` says which rule a key breaks: not hex, wrong
 * length, or not a point.
 *
 * The signed message is EIP-191 "personal_sign" of the nonce, as every Ethereum wallet makes it:
 *
 *   keccak256("\x19Ethereum Signed Message:\n" + <UTF-8 byte length of nonce, decimal> + nonce)
 *
 * A signature is hex (`0x` optional): 65 bytes r‖s‖v with v ∈ {0, 1, 27, 28}, or 64 bytes r‖s
 * (then both recovery ids are tried). It is checked by recovering the public key and comparing
 * it with the claimed one in canonical form. High-s signatures (s > n/2) are refused: every
 * Ethereum signer normalises s since EIP-2, and refusing makes a signature unmalleable. Our
 * own `signNonce` makes r‖s‖v with v 27/28 (RFC 6979 deterministic k, low s).
 *
 * Key files hold the 32-byte private key as hex on one line (`0x` optional). They are written
 * 0600 through core/atomicfile.ts, and — like ssh with an identity file — reading refuses a file
 * that its group or others may access at all.
 *
 * Nonces (`NonceStore`): 32 random bytes as hex, single use, valid `NONCE_TTL_MS`, bound to the
 * connection, the circle and the public key they were issued for. Each connection holds at most
 * `MAX_NONCES_PER_CONNECTION`; a new one beyond that evicts its oldest, so the store is bounded
 * by the number of connections the server admits.
 */
import { secp256k1 } from "@noble/curves/secp256k1.js";
import { keccak_256 } from "@noble/hashes/sha3.js";
import { bytesToHex, hexToBytes, randomBytes } from "@noble/hashes/utils.js";
import { closeSync, constants, fstatSync, openSync, readSync } from "node:fs";
import { writeFileAtomic } from "../core/atomicfile.ts";
import { StoaError, describeError, errnoCode } from "../core/errors.ts";

/** EIP-191 version 0x45 ("E"): the prefix of a personal_sign message, before its length. */
export const ETH_MESSAGE_PREFIX = "\x19Ethereum Signed Message:\n";
/** How long an issued nonce may be used: the spec's 5 minutes. */
export const NONCE_TTL_MS = 5 * 60_000;
/** Nonces one connection holds at once; a client needs one per authenticate, 8 covers retries. */
export const MAX_NONCES_PER_CONNECTION = 8;
/** Random bytes in a nonce: 256 bits, never guessed, never repeated. */
const NONCE_BYTES = 32;
/** Largest key file read: a key is 64 hex digits; anything much bigger is not a key file. */
export const MAX_KEY_FILE_BYTES = 1024;

/** Bytes of a compressed and an uncompressed SEC 1 public key, and of a private key. */
const COMPRESSED_KEY_BYTES = 33;
const UNCOMPRESSED_KEY_BYTES = 65;
const PRIVATE_KEY_BYTES = 32;
/** r‖s‖v, and r‖s alone. */
const SIGNATURE_BYTES = 65;
const COMPACT_SIGNATURE_BYTES = 64;
/** Ethereum writes the recovery id plus 27 as v (a Bitcoin heritage); 0/1 are taken as well. */
const ETH_V_OFFSET = 27;
/** Input shown back in an error message, at most this many characters. */
const MAX_SHOWN_CHARS = 80;
const HEX = /^[0-9a-fA-F]*$/;

/** A public key known to be a curve point, in canonical form. */
export interface PublicKey {
  /** Compressed SEC 1 encoding, lowercase hex without 0x (66 digits): the circle id form. */
  readonly hex: string;
  /** The same 33 bytes. */
  readonly bytes: Uint8Array;
}

/** A private key and its public key. */
interface KeyPair {
  /** 32 bytes, a scalar in [1, n-1]. */
  readonly privateKey: Uint8Array;
  readonly publicKey: PublicKey;
}

/**
 * Parses a public key: hex (0x optional, either case), 33 bytes compressed or 65 uncompressed, on
 * the curve. Throws a StoaError "decode" naming the problem (not hex, wrong length, not a point).
 * @example
 * parsePublicKey("0x04" + x + y).hex // "02…" or "03…", 66 lowercase digits
 */
export function parsePublicKey(text: string): PublicKey {
  const what = `public key ${show(text)}`;
  const digits = stripHexPrefix(text);
  if (!HEX.test(digits) || digits.length % 2 !== 0) {
    throw new StoaError("decode", `${what} is not hex: give 66 hex digits (compressed, 02…/03…) or 130 (uncompressed, 04…)`);
  }
  const length = digits.length / 2;
  if (length !== COMPRESSED_KEY_BYTES && length !== UNCOMPRESSED_KEY_BYTES) {
    throw new StoaError(
      "decode",
      `${what} is ${plural(length, "byte")}: a secp256k1 public key is ` +
        `${COMPRESSED_KEY_BYTES} bytes compressed or ${UNCOMPRESSED_KEY_BYTES} uncompressed`,
    );
  }
  let compressed: Uint8Array;
  try {
    compressed = secp256k1.Point.fromBytes(hexToBytes(digits)).toBytes(true);
  } catch (err) {
    throw new StoaError("decode", `${what} is not a point on secp256k1: check it was copied whole`, { cause: err });
  }
  return { hex: bytesToHex(compressed), bytes: compressed };
}

/** keccak256 of the EIP-191 personal_sign message of `message` (its length counted in UTF-8 bytes). */
export function ethSignedMessageHash(message: string): Uint8Array {
  const body = new TextEncoder().encode(message);
  return keccak_256(new TextEncoder().encode(`${ETH_MESSAGE_PREFIX}${body.length}${message}`));
}

/** Whether a signature checks out, and if not, why (for the JSON-RPC error message). */
type VerifyResult = { readonly ok: true } | { readonly ok: false; readonly reason: string };

/**
 * Checks that `signature` (hex r‖s‖v or r‖s, 0x optional) signs `nonce` eth-style with the key
 * `publicKey`, by recovering the signer's key. Never throws: a malformed signature is a reason.
 * @example
 * const check = verifySignature(request.params.pubkey, nonce, request.params.signature);
 * if (!check.ok) return errorResponse(request.id, RPC_ERROR.invalidCredentials, check.reason);
 */
export function verifySignature(publicKey: PublicKey, nonce: string, signature: string): VerifyResult {
  const digits = stripHexPrefix(signature);
  if (!HEX.test(digits) || digits.length % 2 !== 0) return refuse("the signature is not hex");
  const length = digits.length / 2;
  if (length !== SIGNATURE_BYTES && length !== COMPACT_SIGNATURE_BYTES) {
    return refuse(
      `the signature is ${plural(length, "byte")}: send ${SIGNATURE_BYTES} bytes r‖s‖v as hex (or ${COMPACT_SIGNATURE_BYTES} bytes r‖s)`,
    );
  }
  const bytes = hexToBytes(digits);
  let recoveries = [0, 1];
  if (length === SIGNATURE_BYTES) {
    const v = bytes[COMPACT_SIGNATURE_BYTES] ?? 0;
    const recovery = v >= ETH_V_OFFSET ? v - ETH_V_OFFSET : v;
    if (recovery !== 0 && recovery !== 1) return refuse(`the signature's v is ${v}: it must be 27 or 28 (or 0 or 1)`);
    recoveries = [recovery];
  }
  let parsed: ReturnType<typeof secp256k1.Signature.fromBytes>;
  try {
    parsed = secp256k1.Signature.fromBytes(bytes.subarray(0, COMPACT_SIGNATURE_BYTES), "compact");
  } catch {
    return refuse("the signature's r or s is out of range");
  }
  if (parsed.hasHighS()) return refuse("the signature has a high s: normalise it to low s (EIP-2), as Ethereum signers do");
  const hash = ethSignedMessageHash(nonce);
  for (const recovery of recoveries) {
    try {
      if (bytesToHex(parsed.addRecoveryBit(recovery).recoverPublicKey(hash).toBytes(true)) === publicKey.hex) return { ok: true };
    } catch {
      // r is not the x of a point for this recovery id: not this key.
    }
  }
  return refuse(`the signature was not made by ${publicKey.hex} over this nonce`);
}

/**
 * Signs `nonce` eth-style: hex r‖s‖v (130 digits, no 0x) with v 27 or 28, as `authenticate` takes it.
 * @example
 * send({ method: "authenticate", params: { pubkey: keys.publicKey.hex, signature: signNonce(keys.privateKey, nonce) } });
 */
export function signNonce(privateKey: Uint8Array, nonce: string): string {
  // noble's "recovered" layout is recovery‖r‖s; Ethereum's is r‖s‖(27 + recovery).
  const signed = secp256k1.sign(ethSignedMessageHash(nonce), privateKey, { prehash: false, format: "recovered" });
  return bytesToHex(signed.subarray(1)) + (ETH_V_OFFSET + (signed[0] ?? 0)).toString(16);
}

/** A new random key pair (the OS CSPRNG). */
export function generateKey(): KeyPair {
  return keyPairOf(secp256k1.utils.randomSecretKey());
}

/** The key pair of a 32-byte private key; a StoaError "decode" when it is not a valid scalar. */
export function keyPairOf(privateKey: Uint8Array): KeyPair {
  if (privateKey.length !== PRIVATE_KEY_BYTES || !secp256k1.utils.isValidSecretKey(privateKey)) {
    throw new StoaError("decode", `a secp256k1 private key is ${PRIVATE_KEY_BYTES} bytes in [1, n-1]: make one with stoa circles keygen`);
  }
  const bytes = secp256k1.getPublicKey(privateKey, true);
  return { privateKey, publicKey: { hex: bytesToHex(bytes), bytes } };
}

/**
 * Reads a key file (the private key as hex on one line). Refuses, like ssh, a file its group or
 * others may access (StoaError "permission": run chmod 600), and a file that is not a regular
 * file, is empty or too big, or does not hold a valid key.
 */
export function readKeyFile(path: string): KeyPair {
  const what = `the key file ${path}`;
  let fd: number;
  try {
    // O_NONBLOCK: a FIFO planted at the path must not hang us in open(2).
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (err) {
    const missing = errnoCode(err) === "ENOENT";
    throw new StoaError(
      missing ? "not_found" : "io",
      `cannot read ${what}: ${describeError(err)}${missing ? `; make one with stoa circles keygen --out ${path}` : ""}`,
      { cause: err },
    );
  }
  let text: string;
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) throw new StoaError("io", `${what} is not a regular file: give the path of a file written by stoa circles keygen`);
    if ((stat.mode & 0o077) !== 0) {
      const mode = (stat.mode & 0o777).toString(8).padStart(4, "0");
      throw new StoaError(
        "permission",
        `${what} may be read by others (mode ${mode}): a private key must be its owner's alone — run chmod 600 ${path}`,
      );
    }
    const buffer = new Uint8Array(MAX_KEY_FILE_BYTES + 1);
    let length = 0;
    while (length < buffer.length) {
      const n = readSync(fd, buffer, length, buffer.length - length, null);
      if (n === 0) break;
      length += n;
    }
    if (length > MAX_KEY_FILE_BYTES) throw new StoaError("decode", `${what} is over ${MAX_KEY_FILE_BYTES} bytes: it is not a key file`);
    text = new TextDecoder().decode(buffer.subarray(0, length)).trim();
  } catch (err) {
    if (err instanceof StoaError) throw err;
    throw new StoaError("io", `cannot read ${what}: ${describeError(err)}`, { cause: err });
  } finally {
    closeSync(fd);
  }
  const digits = stripHexPrefix(text);
  if (!HEX.test(digits) || digits.length !== 2 * PRIVATE_KEY_BYTES) {
    throw new StoaError("decode", `${what} must hold the private key as ${2 * PRIVATE_KEY_BYTES} hex digits on one line`);
  }
  try {
    return keyPairOf(hexToBytes(digits));
  } catch (err) {
    throw new StoaError("decode", `${what}: ${describeError(err)}`, { cause: err });
  }
}

/**
 * Writes `privateKey` as hex on one line to `path`, mode 0600, atomically. Refuses to replace an
 * existing file (StoaError "exists": a lost key cannot be recovered) unless `overwrite` is set.
 */
export function writeKeyFile(path: string, privateKey: Uint8Array, options: { overwrite?: boolean } = {}): void {
  keyPairOf(privateKey);
  try {
    writeFileAtomic(path, `${bytesToHex(privateKey)}\n`, { mode: 0o600, replace: options.overwrite ?? false, what: "the key file" });
  } catch (err) {
    if (err instanceof StoaError && err.code === "exists") {
      throw new StoaError("exists", `the key file ${path} exists already: choose another path, or remove it to replace that key`, {
        cause: err,
      });
    }
    throw err;
  }
}

/**
 * Why a nonce was not accepted. `consume`: unknown (never issued, used, evicted or dropped),
 * expired, other_connection / other_circle / other_pubkey (issued, but not for this). `redeem`:
 * none (no nonce outstanding for this connection, circle and pubkey), expired, bad_signature.
 */
type NonceRejection =
  | "unknown"
  | "expired"
  | "other_connection"
  | "other_circle"
  | "other_pubkey"
  | "none"
  | "bad_signature";

type ConsumeResult =
  | { readonly ok: true }
  | { readonly ok: false; readonly reason: NonceRejection; readonly message: string };

interface NonceStoreOptions {
  /** Lifetime of a nonce; default `NONCE_TTL_MS`. */
  ttlMs?: number;
  /** Nonces one connection holds; default `MAX_NONCES_PER_CONNECTION`. */
  maxPerConnection?: number;
  /** The clock, in milliseconds since the epoch; default `Date.now`. For tests. */
  now?: () => number;
}

interface IssuedNonce {
  readonly connId: string;
  readonly circle: string;
  readonly pubkey: string;
  readonly expiresAtMs: number;
}

/**
 * Nonces for `fetch_nonce` / `authenticate`. Circles and pubkeys are compared as given: pass
 * canonical hex (`PublicKey.hex`). Any presentation of a nonce uses it up, accepted or not.
 *
 * `authenticate` carries no nonce (the seed's protocol: {pubkey, signature}), so the server
 * `redeem`s: the nonces outstanding for that connection, circle and pubkey are tried against the
 * signature. `consume` takes a nonce the caller names.
 * @example
 * const nonces = new NonceStore();
 * // fetch_nonce:
 * const { nonce, expires_at } = nonces.issue(connId, circle.hex, pubkey.hex);
 * // authenticate:
 * const redeemed = nonces.redeem(connId, circle.hex, pubkey.hex, (nonce) => verifySignature(pubkey, nonce, signature));
 * if (!redeemed.ok) return errorResponse(id, RPC_ERROR.invalidCredentials, redeemed.message);
 * // on close:
 * nonces.dropConnection(connId);
 */
export class NonceStore {
  readonly #ttlMs: number;
  readonly #maxPerConnection: number;
  readonly #now: () => number;
  readonly #byNonce = new Map<string, IssuedNonce>();
  /** Each connection's nonces, oldest first (a Set keeps insertion order). */
  readonly #byConnection = new Map<string, Set<string>>();

  constructor(options: NonceStoreOptions = {}) {
    this.#ttlMs = options.ttlMs ?? NONCE_TTL_MS;
    this.#maxPerConnection = options.maxPerConnection ?? MAX_NONCES_PER_CONNECTION;
    this.#now = options.now ?? Date.now;
  }

  /** Nonces held, over all connections. */
  get size(): number {
    return this.#byNonce.size;
  }

  /**
   * A new nonce for `pubkey` to sign on connection `connId` to `circle`. `expires_at` is Unix
   * time in seconds (rounded down: the nonce is good until then at least).
   */
  issue(connId: string, circle: string, pubkey: string): { nonce: string; expires_at: number } {
    const now = this.#now();
    const earlier = this.#byConnection.get(connId);
    // Oldest first: drop the expired, and the oldest until there is room for one more.
    for (const old of earlier ?? []) {
      const expired = (this.#byNonce.get(old)?.expiresAtMs ?? 0) <= now;
      if (expired || (earlier?.size ?? 0) >= this.#maxPerConnection) this.#forget(old);
    }
    let held = this.#byConnection.get(connId);
    if (held === undefined) {
      held = new Set();
      this.#byConnection.set(connId, held);
    }
    const nonce = bytesToHex(randomBytes(NONCE_BYTES));
    const expiresAtMs = now + this.#ttlMs;
    this.#byNonce.set(nonce, { connId, circle, pubkey, expiresAtMs });
    held.add(nonce);
    return { nonce, expires_at: Math.floor(expiresAtMs / 1000) };
  }

  /** Uses up `nonce`; ok only if it was issued on this connection, for this circle and pubkey, and is unexpired. */
  consume(connId: string, circle: string, pubkey: string, nonce: string): ConsumeResult {
    const entry = this.#byNonce.get(nonce);
    if (entry === undefined) return reject("unknown", "the nonce is unknown or used already: fetch a new one with fetch_nonce");
    this.#forget(nonce);
    if (entry.connId !== connId) return reject("other_connection", "the nonce was issued on another connection: fetch one on this connection");
    if (entry.circle !== circle) return reject("other_circle", "the nonce was issued for another circle: fetch one from this circle");
    if (entry.pubkey !== pubkey) return reject("other_pubkey", "the nonce was issued for another public key: fetch one for this key");
    if (entry.expiresAtMs <= this.#now()) return reject("expired", "the nonce has expired: fetch a new one with fetch_nonce");
    return { ok: true };
  }

  /**
   * Finds the nonce `signs` accepts among those outstanding for this connection, circle and
   * pubkey (newest first). All of them are used up, whatever the outcome: a failed authenticate
   * needs a new fetch_nonce. A failure's message is `signs`' reason, or says there was no nonce
   * or that it expired.
   */
  redeem(connId: string, circle: string, pubkey: string, signs: (nonce: string) => VerifyResult): ConsumeResult {
    const now = this.#now();
    const candidates: Array<{ nonce: string; expiresAtMs: number }> = [];
    for (const nonce of this.#byConnection.get(connId) ?? []) {
      const entry = this.#byNonce.get(nonce);
      if (entry?.circle === circle && entry.pubkey === pubkey) candidates.push({ nonce, expiresAtMs: entry.expiresAtMs });
    }
    if (candidates.length === 0) {
      return reject("none", "no nonce was fetched for this key on this connection, or it was used: call fetch_nonce first");
    }
    for (const { nonce } of candidates) this.#forget(nonce);
    const live = candidates.filter((candidate) => candidate.expiresAtMs > now).reverse();
    if (live.length === 0) return reject("expired", "the nonce has expired: fetch a new one with fetch_nonce");
    let reason = "";
    for (const { nonce } of live) {
      const check = signs(nonce);
      if (check.ok) return { ok: true };
      reason ||= check.reason;
    }
    return reject("bad_signature", reason);
  }

  /** Forgets every nonce of a connection (call when it closes). */
  dropConnection(connId: string): void {
    const held = this.#byConnection.get(connId);
    if (held === undefined) return;
    for (const nonce of held) this.#byNonce.delete(nonce);
    this.#byConnection.delete(connId);
  }

  #forget(nonce: string): void {
    const entry = this.#byNonce.get(nonce);
    if (entry === undefined) return;
    this.#byNonce.delete(nonce);
    const held = this.#byConnection.get(entry.connId);
    held?.delete(nonce);
    if (held?.size === 0) this.#byConnection.delete(entry.connId);
  }
}

function reject(reason: NonceRejection, message: string): ConsumeResult {
  return { ok: false, reason, message };
}

function refuse(reason: string): VerifyResult {
  return { ok: false, reason };
}

function stripHexPrefix(text: string): string {
  return text.startsWith("0x") || text.startsWith("0X") ? text.slice(2) : text;
}

function plural(n: number, unit: string): string {
  return `${n} ${unit}${n === 1 ? "" : "s"}`;
}

function show(text: string): string {
  return JSON.stringify(text.length > MAX_SHOWN_CHARS ? `${text.slice(0, MAX_SHOWN_CHARS)}…` : text);
}
