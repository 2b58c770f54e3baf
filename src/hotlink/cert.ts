/**
 * Per-session TLS certificates for hotlink's direct path, and pinning them on the client.
 *
 * The receiver of a session listens for the direct connection with a fresh self-signed
 * certificate (ECDSA P-256, ecdsa-with-SHA256, X.509 v3, built here in DER without openssl or a
 * package) and sends its SHA-256 fingerprint in Signal `direct_offer.fpr` over the relay, which
 * is already authenticated. The sender trusts exactly that certificate: no CA chain can vouch
 * for a self-signed certificate, so the chain check is switched off and replaced by the pin —
 * never by "accept any certificate".
 *
 * Pinning recipe (verified with Bun 1.4.5 in test/hotlink/cert.test.ts):
 *
 *   const socket = await Bun.connect({
 *     hostname, port,
 *     tls: { rejectUnauthorized: false, serverName: DIRECT_TLS_SERVER_NAME },
 *     socket: {
 *       // no write in `open`: it fires before the handshake, and a write there returns 0 (dropped).
 *       handshake(socket) {
 *         const pin = verifyPinnedPeer(socket, offer.fpr); // terminates the socket on mismatch
 *         if (!pin.ok) return fail(pin.error);             // nothing was sent: no token leaked
 *         socket.write(token);                            // the first application byte
 *       },
 *       data(socket, bytes) { ... },                      // only runs after the handshake
 *     },
 *   });
 *
 * In `handshake`, Bun passes `success` true (because of `rejectUnauthorized: false`) and the
 * chain's complaint as `authorizationError` ("unable to verify the first certificate"): both are
 * expected and ignored — the pin is the check. There `socket.getPeerCertificate()` has node:tls's
 * shape, `raw` (the certificate DER) and `fingerprint256` ("AB:CD:…"); the check hashes `raw`
 * and falls back to `fingerprint256`. A socket cut there reaches the server, if at all, as a
 * connection without application data (Bun's server may not even report `open` for it).
 * node:tls works the same way: `tls.connect({ host, port, rejectUnauthorized: false, servername })`,
 * check in the `secureConnect` callback; the socket is then cut with `destroy()`.
 *
 * The server side is plain: `Bun.listen({ hostname, port, tls: { cert: certPem, key: keyPem } })`.
 */
import { Buffer } from "node:buffer";
import { createHash, generateKeyPairSync, randomBytes, sign } from "node:crypto";
import { StoaError } from "../core/errors.ts";

/** The DNS name in every session certificate's subjectAltName; clients send it as SNI. */
export const DIRECT_TLS_SERVER_NAME = "stoa-hotlink";

/** Default validity: a session rarely outlives a day, and a new session gets a new certificate. */
const DEFAULT_VALID_SECONDS = 24 * 60 * 60;

/** Longest validity accepted: 397 days, the CA/Browser Forum ceiling for leaf certificates. */
const MAX_VALID_SECONDS = 397 * 24 * 60 * 60;

/** Backdating of notBefore, so a peer whose clock is slightly behind still accepts it. */
const CLOCK_SKEW_SECONDS = 60;

/** X.520 ub-common-name: a commonName is at most 64 characters. */
const MAX_COMMON_NAME_LENGTH = 64;

/** Serial number bytes: RFC 5280 §4.1.2.2 allows up to 20; 16 random bytes never collide. */
const SERIAL_BYTES = 16;

/** Largest certificate `fingerprintOf` accepts; session certificates are about 450 bytes. */
const MAX_CERTIFICATE_BYTES = 64 * 1024;

/** Largest content the DER encoder writes or the header reader accepts (three length bytes). */
export const MAX_DER_LENGTH = 0xff_ffff;

// Object identifiers, from RFC 5758 (ECDSA), RFC 5480 (P-256), X.520 and RFC 5280 (extensions).
const OID_ECDSA_WITH_SHA256 = "1.2.840.10045.4.3.2";
const OID_COMMON_NAME = "2.5.4.3";
const OID_BASIC_CONSTRAINTS = "2.5.29.19";
const OID_KEY_USAGE = "2.5.29.15";
const OID_EXT_KEY_USAGE = "2.5.29.37";
const OID_SUBJECT_ALT_NAME = "2.5.29.17";
const OID_SERVER_AUTH = "1.3.6.1.5.5.7.3.1";

// Universal tags (X.690 §8.x) and the context tags a certificate uses.
const TAG_BOOLEAN = 0x01;
const TAG_INTEGER = 0x02;
const TAG_BIT_STRING = 0x03;
const TAG_OCTET_STRING = 0x04;
const TAG_OID = 0x06;
const TAG_UTF8_STRING = 0x0c;
const TAG_UTC_TIME = 0x17;
const TAG_GENERALIZED_TIME = 0x18;
const TAG_SEQUENCE = 0x30;
const TAG_SET = 0x31;
const TAG_EXPLICIT_VERSION = 0xa0; // [0] EXPLICIT, constructed
const TAG_EXPLICIT_EXTENSIONS = 0xa3; // [3] EXPLICIT, constructed
const TAG_SAN_DNS_NAME = 0x82; // GeneralName dNSName: [2] IMPLICIT IA5String

/** A session certificate and its private key, both PEM, and the pin to put in `direct_offer.fpr`. */
interface SessionCertificate {
  certPem: string;
  keyPem: string;
  /** SHA-256 of the certificate DER, 64 lowercase hex digits. */
  fingerprint: string;
}

/**
 * A fresh key pair and a self-signed certificate for one session's direct listener.
 * Throws `StoaError` "usage" for a commonName that is empty or over 64 characters, or a
 * validity that is not a whole number of seconds between 1 and 397 days.
 * @example
 * const { certPem, keyPem, fingerprint } = createSessionCertificate();
 * Bun.listen({ hostname: "::", port: 0, tls: { cert: certPem, key: keyPem }, socket });
 * // send { knd: "direct_offer", adr, tok, fpr: fingerprint } over the relay
 */
export function createSessionCertificate(
  options: { commonName?: string; validSeconds?: number } = {},
): SessionCertificate {
  const commonName = options.commonName ?? DIRECT_TLS_SERVER_NAME;
  if (commonName.length === 0 || commonName.length > MAX_COMMON_NAME_LENGTH) {
    throw new StoaError(
      "usage",
      `a certificate commonName must be 1–${MAX_COMMON_NAME_LENGTH} characters, got ${commonName.length}`,
    );
  }
  const validSeconds = options.validSeconds ?? DEFAULT_VALID_SECONDS;
  if (!Number.isSafeInteger(validSeconds) || validSeconds < 1 || validSeconds > MAX_VALID_SECONDS) {
    throw new StoaError(
      "usage",
      `certificate validity must be 1–${MAX_VALID_SECONDS} whole seconds, got ${validSeconds}`,
    );
  }

  const { publicKey, privateKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
  const now = Math.floor(Date.now() / 1000);
  const serial = randomBytes(SERIAL_BYTES);
  // Clearing the top bit keeps the INTEGER positive; setting the next keeps all 16 bytes
  // significant, so the encoding never needs a leading zero or drops one.
  serial[0] = ((serial[0] ?? 0) & 0x7f) | 0x40;
  const name = derSequence(derSet(derSequence(derOid(OID_COMMON_NAME), derTlv(TAG_UTF8_STRING, utf8(commonName)))));
  const signatureAlgorithm = derSequence(derOid(OID_ECDSA_WITH_SHA256)); // parameters absent (RFC 5758 §3.2)

  const tbs = derSequence(
    derTlv(TAG_EXPLICIT_VERSION, derInteger(Uint8Array.of(2))), // v3
    derInteger(serial),
    signatureAlgorithm,
    name, // issuer
    derSequence(derTime(now - CLOCK_SKEW_SECONDS), derTime(now + validSeconds)),
    name, // subject
    publicKey.export({ type: "spki", format: "der" }),
    derTlv(
      TAG_EXPLICIT_EXTENSIONS,
      derSequence(
        // cA defaults to FALSE, and DER omits a default: an empty SEQUENCE says "not a CA".
        extension(OID_BASIC_CONSTRAINTS, true, derSequence()),
        // digitalSignature is bit 0: one content byte 0x80 with 7 unused bits.
        extension(OID_KEY_USAGE, true, derTlv(TAG_BIT_STRING, Uint8Array.of(7, 0x80))),
        extension(OID_EXT_KEY_USAGE, false, derSequence(derOid(OID_SERVER_AUTH))),
        extension(OID_SUBJECT_ALT_NAME, false, derSequence(derTlv(TAG_SAN_DNS_NAME, utf8(DIRECT_TLS_SERVER_NAME)))),
      ),
    ),
  );
  // node:crypto signs ECDSA as a DER ECDSA-Sig-Value, the form X.509 wants in the BIT STRING.
  const signature = sign("sha256", tbs, privateKey);
  const der = derSequence(tbs, signatureAlgorithm, derBitString(signature));

  return {
    certPem: toPem("CERTIFICATE", der),
    keyPem: privateKey.export({ type: "pkcs8", format: "pem" }).toString(),
    fingerprint: sha256Hex(der),
  };
}

/**
 * The pin of a certificate: SHA-256 of its DER, 64 lowercase hex digits, the same value as
 * Node's `X509Certificate.fingerprint256` without ":" and lower-cased. Takes PEM (string or
 * bytes; the first CERTIFICATE block) or DER bytes. Throws `StoaError` "decode" for anything
 * that is not one whole DER SEQUENCE, "too_large" over 64 KiB.
 */
export function fingerprintOf(certPemOrDer: string | Uint8Array): string {
  const der =
    typeof certPemOrDer === "string" || certPemOrDer[0] !== TAG_SEQUENCE ? pemToDer(certPemOrDer) : certPemOrDer;
  if (der.byteLength > MAX_CERTIFICATE_BYTES) {
    throw new StoaError(
      "too_large",
      `a certificate of ${der.byteLength} bytes is over the ${MAX_CERTIFICATE_BYTES}-byte limit`,
    );
  }
  const head = readDerHeader(der, 0);
  if (head.tag !== TAG_SEQUENCE || head.headerBytes + head.length !== der.byteLength) {
    throw new StoaError(
      "decode",
      "not a DER certificate: expected exactly one SEQUENCE; pass the PEM or DER of a certificate",
    );
  }
  return sha256Hex(der);
}

/** What `getPeerCertificate()` returns in Bun and in node:tls, as far as pinning needs it. */
interface PeerCertificateLike {
  raw?: Uint8Array;
  fingerprint256?: string;
}

/** A Bun TLS socket (`terminate`) or a node:tls TLSSocket (`destroy`). */
interface PinnableSocket {
  getPeerCertificate(): PeerCertificateLike | object | null;
  terminate?(): void;
  destroy?(): void;
}

/** Outcome of `verifyPinnedPeer`: the peer's fingerprint, or why the socket was cut. */
export type PinResult = { ok: true; fingerprint: string } | { ok: false; error: StoaError };

/**
 * Checks a client TLS socket's peer certificate against the pinned fingerprint (64 hex digits,
 * or Node's "AB:CD:…" form). Call it in Bun's `handshake` handler (node:tls: `secureConnect`)
 * before writing anything. On a mismatch or a missing certificate it cuts the connection at
 * once (`terminate()`, else `destroy()`) and returns an error "auth" to report in
 * `direct_answer.err`; the caller then stays on the relay.
 * @example
 * handshake(socket) {
 *   const pin = verifyPinnedPeer(socket, offer.fpr);
 *   if (pin.ok) socket.write(token); else fallBackToRelay(pin.error.message);
 * }
 */
export function verifyPinnedPeer(socket: PinnableSocket, expectedFingerprint: string): PinResult {
  const expected = normaliseFingerprint(expectedFingerprint);
  const seen = peerFingerprint(socket.getPeerCertificate());
  if (expected !== undefined && seen !== undefined && seen === expected) return { ok: true, fingerprint: seen };

  if (socket.terminate) socket.terminate();
  else socket.destroy?.();
  const message =
    expected === undefined
      ? `the pinned fingerprint "${expectedFingerprint.slice(0, 100)}" is not 64 hex digits; ` +
        "the direct_offer is invalid"
      : seen === undefined
        ? "the direct peer presented no certificate; staying on the relay"
        : `the direct peer's certificate ${seen} is not the pinned ${expected}; staying on the relay`;
  return { ok: false, error: new StoaError("auth", message) };
}

function peerFingerprint(cert: PeerCertificateLike | object | null): string | undefined {
  if (cert === null) return undefined;
  if ("raw" in cert && cert.raw instanceof Uint8Array && cert.raw.byteLength > 0) {
    try {
      return fingerprintOf(cert.raw);
    } catch {
      return undefined;
    }
  }
  if ("fingerprint256" in cert && typeof cert.fingerprint256 === "string") {
    return normaliseFingerprint(cert.fingerprint256);
  }
  return undefined;
}

/** 64 lowercase hex digits from either our form or Node's "AB:CD:…"; undefined if neither. */
function normaliseFingerprint(fingerprint: string): string | undefined {
  const hex = fingerprint.replaceAll(":", "").toLowerCase();
  return /^[0-9a-f]{64}$/.test(hex) ? hex : undefined;
}

function pemToDer(pem: string | Uint8Array): Uint8Array {
  // Base64 is 4/3 of the DER plus line breaks and armour: twice the DER limit is generous.
  if (pem.length > 2 * MAX_CERTIFICATE_BYTES) {
    throw new StoaError("too_large", `PEM input of ${pem.length} characters is too long for one certificate`);
  }
  const text =
    typeof pem === "string" ? pem : Buffer.from(pem.buffer, pem.byteOffset, pem.byteLength).toString("latin1");
  const match = /-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+)-----END CERTIFICATE-----/.exec(text);
  if (!match?.[1]) {
    throw new StoaError("decode", "no PEM CERTIFICATE block found; pass a certificate's PEM or DER");
  }
  return Buffer.from(match[1].replace(/\s+/g, ""), "base64");
}

function toPem(label: string, der: Uint8Array): string {
  const lines = Buffer.from(der).toString("base64").match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}

function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

function utf8(text: string): Uint8Array {
  return Buffer.from(text, "utf8");
}

// --- A small DER encoder: only the definite-length, low-tag-number forms a certificate needs. ---

/**
 * The DER length octets for `length`: short form below 128, else 0x80|n and n big-endian bytes.
 * Throws `StoaError` "too_large" above `MAX_DER_LENGTH`. Exported for tests.
 */
export function derLength(length: number): Uint8Array {
  if (!Number.isSafeInteger(length) || length < 0 || length > MAX_DER_LENGTH) {
    throw new StoaError("too_large", `DER content of ${length} bytes is over the ${MAX_DER_LENGTH}-byte limit`);
  }
  if (length < 0x80) return Uint8Array.of(length);
  if (length <= 0xff) return Uint8Array.of(0x81, length);
  if (length <= 0xffff) return Uint8Array.of(0x82, length >>> 8, length & 0xff);
  return Uint8Array.of(0x83, length >>> 16, (length >>> 8) & 0xff, length & 0xff);
}

/**
 * Reads the tag and length of the DER element at `offset`, checking that its content fits in
 * `bytes`. Throws `StoaError` "decode" for a truncated header or content, an indefinite or
 * non-minimal length, or a high tag number; "too_large" above `MAX_DER_LENGTH`. Exported for tests.
 */
export function readDerHeader(
  bytes: Uint8Array,
  offset: number,
): { tag: number; headerBytes: number; length: number } {
  const tag = bytes[offset];
  const first = bytes[offset + 1];
  if (tag === undefined || first === undefined) throw new StoaError("decode", "DER element truncated in its header");
  if ((tag & 0x1f) === 0x1f) throw new StoaError("decode", "DER high tag numbers are not used in certificates");
  let length = first;
  let headerBytes = 2;
  if (first >= 0x80) {
    const count = first & 0x7f;
    if (count === 0) throw new StoaError("decode", "indefinite DER length (BER only)");
    if (count > 3) {
      throw new StoaError("too_large", `a DER length of ${count} bytes is over the ${MAX_DER_LENGTH}-byte limit`);
    }
    length = 0;
    for (let i = 0; i < count; i++) {
      const b = bytes[offset + 2 + i];
      if (b === undefined) throw new StoaError("decode", "DER element truncated in its length");
      length = length * 256 + b;
    }
    // DER: the shortest form only — no long form below 128, no leading zero length byte.
    if (length < 0x80 || length < 2 ** (8 * (count - 1))) throw new StoaError("decode", "non-minimal DER length");
    headerBytes += count;
  }
  if (offset + headerBytes + length > bytes.byteLength) {
    throw new StoaError(
      "decode",
      `DER element of ${length} bytes runs past the end of its ${bytes.byteLength}-byte input`,
    );
  }
  return { tag, headerBytes, length };
}

/** One element: tag, length, content. Exported for tests. */
export function derTlv(tag: number, ...content: Uint8Array[]): Uint8Array {
  const body = Buffer.concat(content);
  return Buffer.concat([Uint8Array.of(tag), derLength(body.byteLength), body]);
}

function derSequence(...items: Uint8Array[]): Uint8Array {
  return derTlv(TAG_SEQUENCE, ...items);
}

function derSet(...items: Uint8Array[]): Uint8Array {
  return derTlv(TAG_SET, ...items);
}

/** A non-negative INTEGER from big-endian magnitude bytes, in its minimal two's-complement form. */
function derInteger(magnitude: Uint8Array): Uint8Array {
  let start = 0;
  while (start < magnitude.length - 1 && magnitude[start] === 0) start++;
  const trimmed = magnitude.subarray(start);
  const needsZero = ((trimmed[0] ?? 0) & 0x80) !== 0;
  const body = trimmed.length > 0 ? trimmed : Uint8Array.of(0);
  return derTlv(TAG_INTEGER, needsZero ? Uint8Array.of(0) : new Uint8Array(0), body);
}

function derBitString(bytes: Uint8Array): Uint8Array {
  return derTlv(TAG_BIT_STRING, Uint8Array.of(0), bytes); // 0 unused bits
}

function derOid(dotted: string): Uint8Array {
  const arcs = dotted.split(".").map(Number);
  const [a = 0, b = 0, ...rest] = arcs;
  const out: number[] = [a * 40 + b];
  for (const arc of rest) {
    // Base-128, most significant group first, high bit set on all but the last.
    const groups = [arc & 0x7f];
    for (let v = Math.floor(arc / 128); v > 0; v = Math.floor(v / 128)) groups.unshift((v & 0x7f) | 0x80);
    out.push(...groups);
  }
  return derTlv(TAG_OID, Uint8Array.from(out));
}

/** RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050, always UTC to the second. */
function derTime(unixSeconds: number): Uint8Array {
  const iso = new Date(unixSeconds * 1000).toISOString(); // YYYY-MM-DDTHH:MM:SS.sssZ
  const digits = `${iso.slice(0, 19).replace(/[-T:]/g, "")}Z`; // YYYYMMDDHHMMSSZ
  const year = Number(iso.slice(0, 4));
  return year < 2050 ? derTlv(TAG_UTC_TIME, utf8(digits.slice(2))) : derTlv(TAG_GENERALIZED_TIME, utf8(digits));
}

function extension(oid: string, critical: boolean, value: Uint8Array): Uint8Array {
  return derSequence(
    derOid(oid),
    critical ? derTlv(TAG_BOOLEAN, Uint8Array.of(0xff)) : new Uint8Array(0), // FALSE is the default: omitted
    derTlv(TAG_OCTET_STRING, value),
  );
}
