import { afterAll, describe, expect, test } from "bun:test";
import { secp256k1 } from "@noble/curves/secp256k1.js";
import { keccak_256 } from "@noble/hashes/sha3.js";
import { execFileSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  ETH_MESSAGE_PREFIX,
  MAX_KEY_FILE_BYTES,
  MAX_NONCES_PER_CONNECTION,
  NONCE_TTL_MS,
  NonceStore,
  ethSignedMessageHash,
  generateKey,
  keyPairOf,
  parsePublicKey,
  readKeyFile,
  signNonce,
  verifySignature,
  writeKeyFile,
} from "../../src/circles/auth.ts";
import { StoaError } from "../../src/core/errors.ts";

// The published example of web3.js `web3.eth.accounts.sign('Some data', privateKey)`
// (https://docs.web3js.org/api/web3-eth-accounts/function/sign); the key's address is the one
// web3.js documents for `privateKeyToAccount` of the same key.
const WEB3 = {
  privateKey: "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318",
  address: "2c7536e3605d9c16a7a3d7b1898e529396a65c23",
  message: "Some data",
  messageHash: "1da44b586eb0729ff70a73c326926f6ed5a25f5b056e7f47fbc6e58d86871655",
  signature:
    "0xb91467e570a6466aa9e9876cbcd013baba02900b8979d43fe208a4a4f339f5fd6007e74cd82e037b800186422fc2da167c747ef045e5d18a5f5d4300f8e1a0291c",
};

const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString("hex");
const unhex = (text: string): Uint8Array => new Uint8Array(Buffer.from(text, "hex"));

/** EIP-191 signing written out here, independent of auth.ts: noble directly, bytes laid out by hand. */
function independentSign(privateKey: Uint8Array, message: string, v: "eth" | "raw" | "none" = "eth"): string {
  const body = Buffer.from(message, "utf8");
  const hash = keccak_256(Buffer.concat([Buffer.from("\x19Ethereum Signed Message:\n", "latin1"), Buffer.from(String(body.length)), body]));
  const sig = secp256k1.Signature.fromBytes(secp256k1.sign(hash, privateKey, { prehash: false, format: "recovered" }), "recovered");
  const rs = hex(sig.toBytes("compact"));
  const recovery = sig.recovery ?? 0;
  if (v === "none") return rs;
  return rs + (v === "eth" ? 27 + recovery : recovery).toString(16).padStart(2, "0");
}

/** The Ethereum address of a key: the last 20 bytes of keccak256(x‖y). */
function addressOf(privateKey: Uint8Array): string {
  return hex(keccak_256(secp256k1.getPublicKey(privateKey, false).subarray(1)).subarray(12));
}

function thrown(fn: () => unknown): StoaError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(StoaError);
    return err as StoaError;
  }
  throw new Error("expected a StoaError");
}

const alice = generateKey();
const bob = generateKey();

describe("public keys", () => {
  const point = secp256k1.getPublicKey(alice.privateKey, false);
  const compressed = hex(secp256k1.getPublicKey(alice.privateKey, true));
  const uncompressed = hex(point);

  test("compressed and uncompressed, with or without 0x, in either case, come out as one canonical compressed lowercase form", () => {
    for (const text of [compressed, uncompressed, `0x${compressed}`, `0X${uncompressed.toUpperCase()}`, compressed.toUpperCase()]) {
      const key = parsePublicKey(text);
      expect(key.hex).toBe(compressed);
      expect(key.hex).toMatch(/^0[23][0-9a-f]{64}$/);
      expect(hex(key.bytes)).toBe(compressed);
    }
    expect(generateKey().publicKey.hex).toMatch(/^0[23][0-9a-f]{64}$/);
  });

  test("not hex says so", () => {
    for (const text of ["zz", `${compressed.slice(0, 65)}g`, `${compressed}0`, " 02ab", "0x", "", "０２"]) {
      const err = thrown(() => parsePublicKey(text));
      expect(err.code).toBe("decode");
      if (text === "0x" || text === "") expect(err.message).toContain("is 0 bytes");
      else expect(err.message).toContain("is not hex");
    }
  });

  test("a wrong length says how long it is and what is expected", () => {
    for (const bytes of [1, 20, 32, 34, 64, 66]) {
      const err = thrown(() => parsePublicKey("02".repeat(bytes)));
      expect(err.message).toContain(`is ${bytes} byte`);
      expect(err.message).toContain("33 bytes compressed or 65 uncompressed");
    }
  });

  test("bytes of the right length that are not a curve point say so", () => {
    const notOnCurve = `02${"00".repeat(32)}`; // x = 0: 7 has no square root mod p
    const wrongY = `04${uncompressed.slice(2, 66)}${"11".repeat(32)}`;
    const badPrefix = `05${compressed.slice(2)}`;
    const hybrid = `06${uncompressed.slice(2)}`;
    const xTooBig = `02${"ff".repeat(32)}`; // x ≥ p
    for (const text of [notOnCurve, wrongY, badPrefix, hybrid, xTooBig]) {
      const err = thrown(() => parsePublicKey(text));
      expect(err.code).toBe("decode");
      expect(err.message).toContain("is not a point on secp256k1");
    }
  });

  test("long input is shown cut short in the message", () => {
    const err = thrown(() => parsePublicKey("q".repeat(10_000)));
    expect(err.message.length).toBeLessThan(300);
  });
});

describe("the signed message", () => {
  test("is keccak256 of the EIP-191 prefix, the UTF-8 byte length in decimal, and the message", () => {
    expect(ETH_MESSAGE_PREFIX).toBe("\x19Ethereum Signed Message:\n");
    expect(hex(ethSignedMessageHash(WEB3.message))).toBe(WEB3.messageHash);
    // "é" is one character but two bytes: the length is 2.
    const expected = keccak_256(Buffer.concat([Buffer.from("\x19Ethereum Signed Message:\n2", "latin1"), Buffer.from("é")]));
    expect(hex(ethSignedMessageHash("é"))).toBe(hex(expected));
  });
});

describe("signatures", () => {
  const nonce = "9f".repeat(32);

  test("the web3.js published example verifies, and signNonce reproduces it byte for byte", () => {
    const privateKey = unhex(WEB3.privateKey);
    expect(addressOf(privateKey)).toBe(WEB3.address);
    const key = keyPairOf(privateKey).publicKey;
    expect(verifySignature(key, WEB3.message, WEB3.signature)).toEqual({ ok: true });
    expect(signNonce(privateKey, WEB3.message)).toBe(WEB3.signature.slice(2));
  });

  test("a signature made independently (noble directly, prefix and hash composed in the test) verifies, v as 27/28 or 0/1 or absent", () => {
    for (let i = 0; i < 16; i++) {
      const keys = generateKey();
      const message = `nonce-${i}-${hex(crypto.getRandomValues(new Uint8Array(16)))}`;
      for (const v of ["eth", "raw", "none"] as const) {
        const signature = independentSign(keys.privateKey, message, v);
        expect(verifySignature(keys.publicKey, message, signature)).toEqual({ ok: true });
        expect(verifySignature(keys.publicKey, message, `0x${signature.toUpperCase()}`)).toEqual({ ok: true });
      }
    }
  });

  test("the claimed key may be given compressed or uncompressed: both are the same key", () => {
    const signature = independentSign(alice.privateKey, nonce);
    const uncompressed = parsePublicKey(hex(secp256k1.getPublicKey(alice.privateKey, false)));
    expect(verifySignature(uncompressed, nonce, signature)).toEqual({ ok: true });
    expect(verifySignature(alice.publicKey, nonce, signature)).toEqual({ ok: true });
  });

  test("signNonce's signatures verify with an independent check (noble's verify over the hash composed here)", () => {
    const signature = signNonce(alice.privateKey, nonce);
    expect(signature).toMatch(/^[0-9a-f]{128}(1b|1c)$/);
    const hash = keccak_256(Buffer.from(`\x19Ethereum Signed Message:\n${nonce.length}${nonce}`, "latin1"));
    expect(secp256k1.verify(unhex(signature.slice(0, 128)), hash, alice.publicKey.bytes, { prehash: false })).toBe(true);
    expect(verifySignature(alice.publicKey, nonce, signature)).toEqual({ ok: true });
  });

  test("another key's signature is rejected", () => {
    const check = verifySignature(alice.publicKey, nonce, independentSign(bob.privateKey, nonce));
    expect(check.ok).toBe(false);
    if (!check.ok) expect(check.reason).toContain(`not made by ${alice.publicKey.hex}`);
  });

  test("a signature over another nonce is rejected", () => {
    expect(verifySignature(alice.publicKey, nonce, independentSign(alice.privateKey, `${nonce}0`)).ok).toBe(false);
    expect(verifySignature(alice.publicKey, "", independentSign(alice.privateKey, nonce)).ok).toBe(false);
  });

  test("flipping a bit anywhere in r‖s‖v is rejected, and so is the other recovery id", () => {
    const signature = unhex(independentSign(alice.privateKey, nonce));
    for (let byte = 0; byte < 65; byte++) {
      for (const bit of [0, 3, 7]) {
        const flipped = signature.slice();
        flipped[byte] = (flipped[byte] ?? 0) ^ (1 << bit);
        expect(verifySignature(alice.publicKey, nonce, hex(flipped)).ok).toBe(false);
      }
    }
    const otherId = signature.slice();
    otherId[64] = otherId[64] === 27 ? 28 : 27;
    expect(verifySignature(alice.publicKey, nonce, hex(otherId)).ok).toBe(false);
  });

  test("v out of 0/1/27/28 is rejected, naming v", () => {
    const rs = independentSign(alice.privateKey, nonce, "none");
    for (const v of [2, 3, 26, 29, 30, 35, 36, 0x7f, 0xff]) {
      const check = verifySignature(alice.publicKey, nonce, rs + v.toString(16).padStart(2, "0"));
      expect(check.ok).toBe(false);
      if (!check.ok) expect(check.reason).toContain(`v is ${v}`);
    }
  });

  test("a high-s twin of a valid signature (the malleable form) is rejected", () => {
    const sig = secp256k1.Signature.fromBytes(unhex(independentSign(alice.privateKey, nonce, "none")), "compact");
    const n = secp256k1.Point.Fn.ORDER;
    const twin = new secp256k1.Signature(sig.r, n - sig.s);
    expect(twin.hasHighS()).toBe(true);
    // The twin does recover alice's key with the other recovery id: it is valid ECDSA, refused on purpose.
    const hash = ethSignedMessageHash(nonce);
    const recovers = [0, 1].some((id) => hex(twin.addRecoveryBit(id).recoverPublicKey(hash).toBytes(true)) === alice.publicKey.hex);
    expect(recovers).toBe(true);
    for (const v of ["1b", "1c", ""]) {
      const check = verifySignature(alice.publicKey, nonce, hex(twin.toBytes("compact")) + v);
      expect(check.ok).toBe(false);
      if (!check.ok) expect(check.reason).toContain("high s");
    }
  });

  test("malformed signatures are reasons, never exceptions", () => {
    const good = independentSign(alice.privateKey, nonce);
    const cases: Array<[string, string]> = [
      ["", "0 bytes"],
      ["0x", "0 bytes"],
      ["zz", "not hex"],
      [good.slice(1), "not hex"],
      [`${good}00`, "66 bytes"],
      [good.slice(0, 126), "63 bytes"],
      [`${"00".repeat(64)}1b`, "out of range"],
      [`${"ff".repeat(64)}1b`, "out of range"],
      [`${"00".repeat(32)}${good.slice(64)}`, "out of range"],
    ];
    for (const [signature, reason] of cases) {
      const check = verifySignature(alice.publicKey, nonce, signature);
      expect(check.ok).toBe(false);
      if (!check.ok) expect(check.reason).toContain(reason);
    }
  });
});

describe("keys", () => {
  test("generateKey gives distinct valid keys; keyPairOf derives the same public key", () => {
    const a = generateKey();
    const b = generateKey();
    expect(hex(a.privateKey)).not.toBe(hex(b.privateKey));
    expect(keyPairOf(a.privateKey).publicKey.hex).toBe(a.publicKey.hex);
    expect(a.publicKey.hex).toBe(hex(secp256k1.getPublicKey(a.privateKey, true)));
  });

  test("keyPairOf refuses what is not a private key", () => {
    const n = secp256k1.Point.Fn.ORDER.toString(16).padStart(64, "0");
    for (const bytes of [new Uint8Array(32), unhex(n), new Uint8Array(31).fill(1), new Uint8Array(33).fill(1)]) {
      expect(thrown(() => keyPairOf(bytes)).code).toBe("decode");
    }
  });
});

describe("key files", () => {
  const root = mkdtempSync(join(tmpdir(), "stoa-circles-keys-"));
  afterAll(() => rmSync(root, { recursive: true, force: true }));
  let n = 0;
  const fresh = (): string => join(root, `key${n++}`);

  test("a written key file is one line of hex, mode 0600, and reads back as the same key pair", () => {
    const path = fresh();
    writeKeyFile(path, alice.privateKey);
    expect(readFileSync(path, "utf8")).toBe(`${hex(alice.privateKey)}\n`);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const read = readKeyFile(path);
    expect(hex(read.privateKey)).toBe(hex(alice.privateKey));
    expect(read.publicKey.hex).toBe(alice.publicKey.hex);
  });

  test("a hand-written file with 0x, upper case and surrounding whitespace reads", () => {
    const path = fresh();
    writeFileSync(path, `  0x${hex(bob.privateKey).toUpperCase()}\r\n\n`, { mode: 0o600 });
    expect(readKeyFile(path).publicKey.hex).toBe(bob.publicKey.hex);
  });

  test("an existing file is not replaced unless asked", () => {
    const path = fresh();
    writeKeyFile(path, alice.privateKey);
    const err = thrown(() => writeKeyFile(path, bob.privateKey));
    expect(err.code).toBe("exists");
    expect(err.message).toContain(path);
    expect(readKeyFile(path).publicKey.hex).toBe(alice.publicKey.hex);
    writeKeyFile(path, bob.privateKey, { overwrite: true });
    expect(readKeyFile(path).publicKey.hex).toBe(bob.publicKey.hex);
  });

  test("writing refuses an invalid private key before touching the disk", () => {
    const path = fresh();
    expect(thrown(() => writeKeyFile(path, new Uint8Array(32))).code).toBe("decode");
    expect(() => statSync(path)).toThrow();
  });

  test("like ssh, a file its group or others may access is refused with the chmod to run", () => {
    for (const mode of [0o644, 0o640, 0o604, 0o660, 0o601, 0o610, 0o777]) {
      const path = fresh();
      writeKeyFile(path, alice.privateKey);
      chmodSync(path, mode);
      const err = thrown(() => readKeyFile(path));
      expect(err.code).toBe("permission");
      expect(err.message).toContain(`mode ${mode.toString(8).padStart(4, "0")}`);
      expect(err.message).toContain(`chmod 600 ${path}`);
    }
    const ownerOnly = fresh();
    writeKeyFile(ownerOnly, alice.privateKey);
    chmodSync(ownerOnly, 0o400);
    expect(readKeyFile(ownerOnly).publicKey.hex).toBe(alice.publicKey.hex);
  });

  test("a missing file says how to make one", () => {
    const path = fresh();
    const err = thrown(() => readKeyFile(path));
    expect(err.code).toBe("not_found");
    expect(err.message).toContain(`stoa circles keygen --out ${path}`);
  });

  test("a directory, an oversized file and content that is not a key are refused", () => {
    const dir = fresh();
    mkdirSync(dir, { mode: 0o700 });
    expect(thrown(() => readKeyFile(dir)).message).toContain("not a regular file");

    const big = fresh();
    writeFileSync(big, "a".repeat(MAX_KEY_FILE_BYTES + 1), { mode: 0o600 });
    expect(thrown(() => readKeyFile(big)).message).toContain(`over ${MAX_KEY_FILE_BYTES} bytes`);

    for (const content of ["", "\n", "zz", hex(alice.privateKey).slice(2), `${hex(alice.privateKey)}\n${hex(bob.privateKey)}\n`, "00".repeat(32)]) {
      const path = fresh();
      writeFileSync(path, content, { mode: 0o600 });
      const err = thrown(() => readKeyFile(path));
      expect(err.code).toBe("decode");
      expect(err.message).toContain(path);
    }
  });

  test("a FIFO at the path is refused at once, not waited on", () => {
    const path = fresh();
    execFileSync("mkfifo", ["-m", "600", path]);
    expect(thrown(() => readKeyFile(path)).message).toContain("not a regular file");
  });
});

describe("nonces", () => {
  const CIRCLE = generateKey().publicKey.hex;
  const OTHER_CIRCLE = generateKey().publicKey.hex;
  const PK = alice.publicKey.hex;

  function clock(start = 1_764_000_000_123): { now: () => number; advance: (ms: number) => void } {
    let t = start;
    return { now: () => t, advance: (ms) => void (t += ms) };
  }

  test("a nonce is 64 hex digits, expires_at is Unix seconds five minutes on, and nonces never repeat", () => {
    const time = clock();
    const store = new NonceStore({ now: time.now });
    const seen = new Set<string>();
    for (let i = 0; i < 100; i++) {
      const { nonce, expires_at } = store.issue(`c${i}`, CIRCLE, PK);
      expect(nonce).toMatch(/^[0-9a-f]{64}$/);
      expect(expires_at).toBe(Math.floor((time.now() + NONCE_TTL_MS) / 1000));
      seen.add(nonce);
    }
    expect(seen.size).toBe(100);
    expect(NONCE_TTL_MS).toBe(5 * 60 * 1000);
  });

  test("a nonce is accepted once on its connection, circle and pubkey; used again it is unknown", () => {
    const store = new NonceStore();
    const { nonce } = store.issue("c1", CIRCLE, PK);
    expect(store.consume("c1", CIRCLE, PK, nonce)).toEqual({ ok: true });
    const again = store.consume("c1", CIRCLE, PK, nonce);
    expect(again).toMatchObject({ ok: false, reason: "unknown" });
    expect(store.size).toBe(0);
  });

  test("a nonce never issued is unknown", () => {
    expect(new NonceStore().consume("c1", CIRCLE, PK, "00".repeat(32))).toMatchObject({ ok: false, reason: "unknown" });
  });

  test("expiry: good until five minutes have passed, not at or after", () => {
    const time = clock();
    const store = new NonceStore({ now: time.now });
    const early = store.issue("c1", CIRCLE, PK).nonce;
    const late = store.issue("c1", CIRCLE, PK).nonce;
    time.advance(NONCE_TTL_MS - 1);
    expect(store.consume("c1", CIRCLE, PK, early)).toEqual({ ok: true });
    time.advance(1);
    const expired = store.consume("c1", CIRCLE, PK, late);
    expect(expired).toMatchObject({ ok: false, reason: "expired" });
    if (!expired.ok) expect(expired.message).toContain("fetch_nonce");
  });

  test("the TTL and the clock are injectable", () => {
    const time = clock();
    const store = new NonceStore({ now: time.now, ttlMs: 1000 });
    const { nonce, expires_at } = store.issue("c1", CIRCLE, PK);
    expect(expires_at).toBe(Math.floor((time.now() + 1000) / 1000));
    time.advance(1000);
    expect(store.consume("c1", CIRCLE, PK, nonce)).toMatchObject({ ok: false, reason: "expired" });
  });

  test("a nonce presented on another connection, for another circle or for another pubkey is rejected — and used up", () => {
    const store = new NonceStore();
    const cases: Array<{ conn: string; circle: string; pubkey: string; reason: string }> = [
      { conn: "c2", circle: CIRCLE, pubkey: PK, reason: "other_connection" },
      { conn: "c1", circle: OTHER_CIRCLE, pubkey: PK, reason: "other_circle" },
      { conn: "c1", circle: CIRCLE, pubkey: bob.publicKey.hex, reason: "other_pubkey" },
    ];
    for (const { conn, circle, pubkey, reason } of cases) {
      const { nonce } = store.issue("c1", CIRCLE, PK);
      expect(store.consume(conn, circle, pubkey, nonce)).toMatchObject({ ok: false, reason });
      // Burnt: not even the rightful connection can use it now.
      expect(store.consume("c1", CIRCLE, PK, nonce)).toMatchObject({ ok: false, reason: "unknown" });
    }
  });

  test("one connection holds at most MAX_NONCES_PER_CONNECTION: the oldest is dropped, other connections are untouched", () => {
    const store = new NonceStore();
    const other = store.issue("c2", CIRCLE, PK).nonce;
    const issued = Array.from({ length: MAX_NONCES_PER_CONNECTION + 3 }, () => store.issue("c1", CIRCLE, PK).nonce);
    expect(store.size).toBe(MAX_NONCES_PER_CONNECTION + 1);
    for (const nonce of issued.slice(0, 3)) expect(store.consume("c1", CIRCLE, PK, nonce)).toMatchObject({ reason: "unknown" });
    for (const nonce of issued.slice(3)) expect(store.consume("c1", CIRCLE, PK, nonce)).toEqual({ ok: true });
    expect(store.consume("c2", CIRCLE, PK, other)).toEqual({ ok: true });
    expect(store.size).toBe(0);
  });

  test("expired nonces of a connection are swept when it asks for another", () => {
    const time = clock();
    const store = new NonceStore({ now: time.now, maxPerConnection: 100 });
    for (let i = 0; i < 5; i++) store.issue("c1", CIRCLE, PK);
    time.advance(NONCE_TTL_MS);
    store.issue("c1", CIRCLE, PK);
    expect(store.size).toBe(1);
  });

  test("dropConnection forgets that connection's nonces only", () => {
    const store = new NonceStore();
    const mine = store.issue("c1", CIRCLE, PK).nonce;
    const theirs = store.issue("c2", CIRCLE, PK).nonce;
    store.dropConnection("c1");
    store.dropConnection("never-seen");
    expect(store.size).toBe(1);
    expect(store.consume("c1", CIRCLE, PK, mine)).toMatchObject({ reason: "unknown" });
    expect(store.consume("c2", CIRCLE, PK, theirs)).toEqual({ ok: true });
  });

  describe("redeem (authenticate names no nonce: the outstanding ones are tried)", () => {
    const signsFor = (publicKey = alice.publicKey, signature?: string) => (nonce: string) =>
      verifySignature(publicKey, nonce, signature ?? independentSign(alice.privateKey, nonce));

    test("a signature over the nonce fetched on this connection is accepted, once", () => {
      const store = new NonceStore();
      const { nonce } = store.issue("c1", CIRCLE, PK);
      const signature = independentSign(alice.privateKey, nonce);
      expect(store.redeem("c1", CIRCLE, PK, (n) => verifySignature(alice.publicKey, n, signature))).toEqual({ ok: true });
      const again = store.redeem("c1", CIRCLE, PK, (n) => verifySignature(alice.publicKey, n, signature));
      expect(again).toMatchObject({ ok: false, reason: "none" });
      if (!again.ok) expect(again.message).toContain("call fetch_nonce first");
    });

    test("with several nonces outstanding, the one that was signed is found", () => {
      const store = new NonceStore();
      const first = store.issue("c1", CIRCLE, PK).nonce;
      store.issue("c1", CIRCLE, PK);
      store.issue("c1", CIRCLE, PK);
      const signature = independentSign(alice.privateKey, first);
      expect(store.redeem("c1", CIRCLE, PK, (n) => verifySignature(alice.publicKey, n, signature))).toEqual({ ok: true });
      expect(store.size).toBe(0);
    });

    test("nothing fetched, or fetched on another connection, for another circle or another key: none", () => {
      const store = new NonceStore();
      expect(store.redeem("c1", CIRCLE, PK, signsFor())).toMatchObject({ reason: "none" });
      const other = store.issue("c2", CIRCLE, PK).nonce;
      store.issue("c1", OTHER_CIRCLE, PK);
      store.issue("c1", CIRCLE, bob.publicKey.hex);
      const signature = independentSign(alice.privateKey, other);
      expect(store.redeem("c1", CIRCLE, PK, (n) => verifySignature(alice.publicKey, n, signature))).toMatchObject({ reason: "none" });
      expect(store.size).toBe(3);
    });

    test("an expired nonce is refused as expired, and used up", () => {
      const time = clock();
      const store = new NonceStore({ now: time.now });
      store.issue("c1", CIRCLE, PK);
      time.advance(NONCE_TTL_MS);
      expect(store.redeem("c1", CIRCLE, PK, signsFor())).toMatchObject({ reason: "expired" });
      expect(store.size).toBe(0);
    });

    test("a bad signature gives the verifier's reason, and uses the nonce up", () => {
      const store = new NonceStore();
      const { nonce } = store.issue("c1", CIRCLE, PK);
      const wrong = store.redeem("c1", CIRCLE, PK, signsFor(alice.publicKey, independentSign(bob.privateKey, nonce)));
      expect(wrong).toMatchObject({ ok: false, reason: "bad_signature" });
      if (!wrong.ok) expect(wrong.message).toContain("not made by");
      expect(store.redeem("c1", CIRCLE, PK, signsFor())).toMatchObject({ reason: "none" });
    });
  });

  test("the whole flow: issue, sign independently, consume, verify", () => {
    const store = new NonceStore();
    const { nonce } = store.issue("c1", CIRCLE, PK);
    const signature = independentSign(alice.privateKey, nonce);
    expect(store.consume("c1", CIRCLE, PK, nonce)).toEqual({ ok: true });
    expect(verifySignature(alice.publicKey, nonce, signature)).toEqual({ ok: true });
  });
});
