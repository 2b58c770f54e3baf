import { describe, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { X509Certificate, createPrivateKey } from "node:crypto";
import * as tls from "node:tls";
import { StoaError } from "../../src/core/errors.ts";
import {
  DIRECT_TLS_SERVER_NAME,
  MAX_DER_LENGTH,
  type PinResult,
  createSessionCertificate,
  derLength,
  derTlv,
  fingerprintOf,
  readDerHeader,
  verifyPinnedPeer,
} from "../../src/hotlink/cert.ts";
import { fuzzSeed, mutate, prng } from "../helpers/prng.ts";

/** The random-input tests: about 0.35 s each on an idle machine, several times that on a loaded 2-core one (Bun's default is 5 s). */
const RANDOM_ROUNDS_TIMEOUT_MS = 20_000;

const HEX64 = /^[0-9a-f]{64}$/;

/** Node's "AB:CD:…" fingerprint in the form of `direct_offer.fpr`. */
function normalise(nodeFingerprint: string): string {
  return nodeFingerprint.replaceAll(":", "").toLowerCase();
}

function derOf(certPem: string): Uint8Array {
  return new X509Certificate(certPem).raw;
}

function errorOf(fn: () => unknown): StoaError {
  try {
    fn();
  } catch (err) {
    if (err instanceof StoaError) return err;
    throw err;
  }
  throw new Error("expected a StoaError, nothing was thrown");
}

describe("createSessionCertificate", () => {
  test("makes a self-signed v3 certificate that node:crypto parses and verifies", () => {
    const started = performance.now();
    const cert = createSessionCertificate();
    const ms = performance.now() - started;
    const warm = performance.now();
    createSessionCertificate();
    console.log(`session certificate: first ${ms.toFixed(2)} ms, warm ${(performance.now() - warm).toFixed(2)} ms`);

    const x509 = new X509Certificate(cert.certPem);
    expect(x509.subject).toBe("CN=stoa-hotlink");
    expect(x509.issuer).toBe("CN=stoa-hotlink");
    expect(x509.subjectAltName).toBe(`DNS:${DIRECT_TLS_SERVER_NAME}`);
    expect(x509.keyUsage).toEqual(["1.3.6.1.5.5.7.3.1"]); // node reports extendedKeyUsage here
    expect(x509.ca).toBe(false);
    expect(x509.publicKey.asymmetricKeyDetails?.namedCurve).toBe("prime256v1");
    expect(x509.verify(x509.publicKey)).toBe(true);
    expect(x509.checkPrivateKey(createPrivateKey(cert.keyPem))).toBe(true);
    expect(cert.fingerprint).toMatch(HEX64);
    expect(normalise(x509.fingerprint256)).toBe(cert.fingerprint);
    expect(x509.serialNumber).toMatch(/^[4-7][0-9A-F]{31}$/); // 16 bytes, positive, top byte kept

    const now = Date.now();
    const from = Date.parse(x509.validFrom);
    const to = Date.parse(x509.validTo);
    // Whole seconds on the wire: allow for the rounding and for the time the test takes.
    expect(Math.abs(from - (now - 60_000))).toBeLessThanOrEqual(5_000);
    expect(Math.abs(to - (now + 86_400_000))).toBeLessThanOrEqual(5_000);
  });

  test("takes a commonName and a validity", () => {
    const cert = createSessionCertificate({ commonName: "bob on host-2 ✓", validSeconds: 3600 });
    const x509 = new X509Certificate(cert.certPem);
    expect(x509.subject).toBe("CN=bob on host-2 ✓");
    expect(x509.issuer).toBe(x509.subject);
    expect(Date.parse(x509.validTo) - Date.parse(x509.validFrom)).toBe(3_660_000);
    expect(x509.verify(x509.publicKey)).toBe(true);
  });

  test("refuses an empty or long commonName and a validity out of range", () => {
    for (const options of [
      { commonName: "" },
      { commonName: "x".repeat(65) },
      { validSeconds: 0 },
      { validSeconds: 1.5 },
      { validSeconds: 398 * 86_400 },
      { validSeconds: Number.NaN },
    ]) {
      expect(errorOf(() => createSessionCertificate(options)).code).toBe("usage");
    }
  });

  test("gives every certificate its own key, serial and fingerprint", () => {
    const a = new X509Certificate(createSessionCertificate().certPem);
    const b = new X509Certificate(createSessionCertificate().certPem);
    expect(a.fingerprint256).not.toBe(b.fingerprint256);
    expect(a.serialNumber).not.toBe(b.serialNumber);
    expect(a.publicKey.equals(b.publicKey)).toBe(false);
  });
});

describe("fingerprintOf", () => {
  test("gives the same pin for PEM text, PEM bytes and DER", () => {
    const cert = createSessionCertificate();
    const der = derOf(cert.certPem);
    expect(fingerprintOf(cert.certPem)).toBe(cert.fingerprint);
    expect(fingerprintOf(Buffer.from(cert.certPem))).toBe(cert.fingerprint);
    expect(fingerprintOf(der)).toBe(cert.fingerprint);
    expect(fingerprintOf(`subject=CN=x\r\n${cert.certPem.replaceAll("\n", "\r\n")}`)).toBe(cert.fingerprint);
  });

  test("refuses what is not one whole certificate", () => {
    const der = derOf(createSessionCertificate().certPem);
    expect(errorOf(() => fingerprintOf("hello")).code).toBe("decode");
    expect(errorOf(() => fingerprintOf(new Uint8Array(0))).code).toBe("decode");
    expect(errorOf(() => fingerprintOf(der.subarray(0, der.length - 1))).code).toBe("decode");
    expect(errorOf(() => fingerprintOf(Buffer.concat([der, Uint8Array.of(0)]))).code).toBe("decode");
    expect(errorOf(() => fingerprintOf("-".repeat(200_000))).code).toBe("too_large");
  });

  test("throws only StoaError on mutated certificates", () => {
    const seed = fuzzSeed(0xce27);
    const rng = prng(seed);
    const der = derOf(createSessionCertificate().certPem);
    for (let i = 0; i < 20_000; i++) {
      const input = mutate(rng, der);
      try {
        expect(fingerprintOf(input)).toMatch(HEX64);
      } catch (err) {
        if (!(err instanceof StoaError)) throw new Error(`seed ${seed} iteration ${i}: ${String(err)}`);
      }
    }
  }, RANDOM_ROUNDS_TIMEOUT_MS);
});

describe("DER lengths", () => {
  const cases: [length: number, lengthOctets: number[]][] = [
    [0, [0x00]],
    [127, [0x7f]],
    [128, [0x81, 0x80]],
    [255, [0x81, 0xff]],
    [256, [0x82, 0x01, 0x00]],
    [65_535, [0x82, 0xff, 0xff]],
    [65_536, [0x83, 0x01, 0x00, 0x00]],
    [MAX_DER_LENGTH, [0x83, 0xff, 0xff, 0xff]],
  ];

  test("encodes the shortest form at each boundary and reads it back", () => {
    for (const [length, octets] of cases) {
      expect([...derLength(length)]).toEqual(octets);
      const element = derTlv(0x04, new Uint8Array(length).fill(0xab));
      expect(element.byteLength).toBe(1 + octets.length + length);
      expect(readDerHeader(element, 0)).toEqual({ tag: 0x04, headerBytes: 1 + octets.length, length });
      // Also when the element does not start the buffer.
      const shifted = Buffer.concat([Uint8Array.of(0xee, 0xee), element]);
      expect(readDerHeader(shifted, 2)).toEqual({ tag: 0x04, headerBytes: 1 + octets.length, length });
    }
  });

  test("refuses lengths it cannot express", () => {
    for (const length of [MAX_DER_LENGTH + 1, -1, 1.5]) {
      expect(errorOf(() => derLength(length)).code).toBe("too_large");
    }
  });

  test("rejects BER-only, non-minimal, truncated and oversize headers", () => {
    const decodeErrors: number[][] = [
      [], // nothing
      [0x04], // no length
      [0x04, 0x80], // indefinite length
      [0x04, 0x81, 0x05, 0, 0, 0, 0, 0], // long form below 128
      [0x04, 0x82, 0x00, 0xff, ...new Array<number>(255).fill(0)], // leading zero length byte
      [0x04, 0x82, 0x01], // length cut short
      [0x04, 0x05, 0, 0, 0, 0], // content cut short
      [0x1f, 0x01, 0x00], // high tag number
    ];
    for (const bytes of decodeErrors) {
      expect(errorOf(() => readDerHeader(Uint8Array.from(bytes), 0)).code).toBe("decode");
    }
    // Checked before anything is read or allocated for the content.
    expect(errorOf(() => readDerHeader(Uint8Array.of(0x04, 0x84, 0x01, 0, 0, 0), 0)).code).toBe("too_large");
  });
});

type Server = {
  port: number;
  /** Application bytes the server received, per connection, in order of connection. */
  received: string[];
  /** Resolves when `n` connections have closed on the server side. */
  closed(n: number): Promise<void>;
  stop(): void;
};

/** A TLS echo-ish server as the direct listener runs it: it answers "pong:" + what it got. */
function listen(certPem: string, keyPem: string): Server {
  const received: string[] = [];
  let closes = 0;
  let waiters: { n: number; resolve: () => void }[] = [];
  const onClose = () => {
    closes++;
    waiters = waiters.filter((w) => (closes >= w.n ? (w.resolve(), false) : true));
  };
  const server = Bun.listen<{ index: number }>({
    hostname: "127.0.0.1",
    port: 0,
    tls: { cert: certPem, key: keyPem },
    socket: {
      open(socket) {
        socket.data = { index: received.length };
        received.push("");
      },
      data(socket, bytes) {
        received[socket.data.index] += bytes.toString();
        socket.write(`pong:${bytes.toString()}`);
      },
      close: onClose,
      error: onClose,
    },
  });
  return {
    port: server.port,
    received,
    closed: (n) => (closes >= n ? Promise.resolve() : new Promise((resolve) => waiters.push({ n, resolve }))),
    stop: () => server.stop(true),
  };
}

type Dial = { pin: PinResult | undefined; reply: string };

/** The daemon's recipe: Bun.connect without CA checks, pin in `handshake`, write only after. */
function dialBun(port: number, fingerprint: string, message: string): Promise<Dial> {
  const result: Dial = { pin: undefined, reply: "" };
  return new Promise<Dial>((resolve, reject) => {
    Bun.connect({
      hostname: "127.0.0.1",
      port,
      tls: { rejectUnauthorized: false, serverName: DIRECT_TLS_SERVER_NAME },
      socket: {
        handshake(socket) {
          result.pin = verifyPinnedPeer(socket, fingerprint);
          if (result.pin.ok) socket.write(message);
        },
        data(socket, bytes) {
          result.reply += bytes.toString();
          if (result.reply.length >= `pong:${message}`.length) socket.end();
        },
        close: () => resolve(result),
        error: (_socket, err) => reject(err),
      },
    }).catch(reject);
  });
}

function dialNode(port: number, fingerprint: string, message: string): Promise<Dial> {
  const result: Dial = { pin: undefined, reply: "" };
  return new Promise<Dial>((resolve, reject) => {
    const socket = tls.connect(
      { host: "127.0.0.1", port, rejectUnauthorized: false, servername: DIRECT_TLS_SERVER_NAME },
      () => {
        result.pin = verifyPinnedPeer(socket, fingerprint);
        if (result.pin.ok) socket.write(message);
      },
    );
    socket.on("data", (bytes: Buffer) => {
      result.reply += bytes.toString();
      if (result.reply.length >= `pong:${message}`.length) socket.end();
    });
    socket.on("close", () => resolve(result));
    socket.on("error", (err) => (result.pin?.ok === false ? undefined : reject(err)));
  });
}

describe("pinning the direct peer", () => {
  for (const [client, dial] of [
    ["Bun.connect", dialBun],
    ["node:tls", dialNode],
  ] as const) {
    test(`a ${client} client pinning the listener's certificate exchanges bytes`, async () => {
      const cert = createSessionCertificate();
      const server = listen(cert.certPem, cert.keyPem);
      try {
        const dialled = await dial(server.port, cert.fingerprint, "token-1");
        expect(dialled.pin).toEqual({ ok: true, fingerprint: cert.fingerprint });
        expect(dialled.reply).toBe("pong:token-1");
        await server.closed(1);
        expect(server.received).toEqual(["token-1"]);
      } finally {
        server.stop();
      }
    });

    test(`a ${client} client pinning another certificate hangs up before sending a byte`, async () => {
      const cert = createSessionCertificate();
      const other = createSessionCertificate();
      const server = listen(cert.certPem, cert.keyPem);
      try {
        const dialled = await dial(server.port, other.fingerprint, "token-2");
        expect(dialled.pin?.ok).toBe(false);
        if (dialled.pin?.ok === false) {
          expect(dialled.pin.error.code).toBe("auth");
          expect(dialled.pin.error.message).toContain(cert.fingerprint);
          expect(dialled.pin.error.message).toContain(other.fingerprint);
        }
        expect(dialled.reply).toBe("");
        await server.closed(1);
        // Bun's server may not even report `open` for a connection cut inside the handshake.
        expect(server.received.join("")).toBe("");
      } finally {
        server.stop();
      }
    });
  }

  test("Bun drops a write made before the handshake, so the pin check comes first", async () => {
    const cert = createSessionCertificate();
    const server = listen(cert.certPem, cert.keyPem);
    try {
      let early = -1;
      await new Promise<void>((resolve, reject) => {
        Bun.connect({
          hostname: "127.0.0.1",
          port: server.port,
          tls: { rejectUnauthorized: false, serverName: DIRECT_TLS_SERVER_NAME },
          socket: {
            open(socket) {
              early = socket.write("too-early");
            },
            handshake(socket) {
              // Right pin, but close without writing: anything the server got came from `open`.
              if (verifyPinnedPeer(socket, cert.fingerprint).ok) socket.end();
            },
            data() {},
            close: () => resolve(),
            error: (_socket, err) => reject(err),
          },
        }).catch(reject);
      });
      await server.closed(1);
      expect(early).toBe(0);
      expect(server.received.join("")).toBe("");
    } finally {
      server.stop();
    }
  });

  test("accepts the pin in Node's colon form too", async () => {
    const cert = createSessionCertificate();
    const server = listen(cert.certPem, cert.keyPem);
    try {
      const colons = cert.fingerprint.toUpperCase().replace(/(..)(?!$)/g, "$1:");
      const dialled = await dialBun(server.port, colons, "t");
      expect(dialled.pin?.ok).toBe(true);
      expect(dialled.reply).toBe("pong:t");
    } finally {
      server.stop();
    }
  });

  test("cuts a socket with no certificate, a bad one, or an invalid pin", () => {
    const cert = createSessionCertificate();
    const cases: [peer: object | null, pin: string, expected: RegExp][] = [
      [{}, cert.fingerprint, /no certificate/],
      [null, cert.fingerprint, /no certificate/],
      [{ raw: Uint8Array.of(1, 2, 3) }, cert.fingerprint, /no certificate/],
      [{ raw: derOf(cert.certPem) }, "not-a-fingerprint", /not 64 hex digits/],
    ];
    for (const [peer, pin, expected] of cases) {
      let cut = 0;
      const result = verifyPinnedPeer({ getPeerCertificate: () => peer, destroy: () => cut++ }, pin);
      expect(result.ok).toBe(false);
      if (!result.ok) expect(result.error.message).toMatch(expected);
      expect(cut).toBe(1);
    }
  });

  test("falls back to fingerprint256 when the socket gives no raw certificate", () => {
    const cert = createSessionCertificate();
    const fingerprint256 = new X509Certificate(cert.certPem).fingerprint256;
    let cut = 0;
    const socket = { getPeerCertificate: () => ({ fingerprint256 }), terminate: () => cut++ };
    expect(verifyPinnedPeer(socket, cert.fingerprint)).toEqual({ ok: true, fingerprint: cert.fingerprint });
    expect(verifyPinnedPeer(socket, createSessionCertificate().fingerprint).ok).toBe(false);
    expect(cut).toBe(1);
  });
});
