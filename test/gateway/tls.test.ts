import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { StoaError } from "../../src/core/errors.ts";
import { publisherSocketPath } from "../../src/core/paths.ts";
import type { Gateway } from "../../src/gateway/gateway.ts";
import { type Closable, openWs, parseReply, rawEcho, rawExchange, tempRunDir, testGateway, wsAsk, wsPublisher } from "../fixtures/gateway-helpers.ts";

const openssl = Bun.which("openssl");
if (openssl === null) console.warn("tls.test.ts: skipped, openssl is not installed (apt-get install openssl)");

const run = tempRunDir();
const certs = tempRunDir();
const cert = join(certs.dir, "cert.pem");
const key = join(certs.dir, "key.pem");
let gw: Gateway;
const owned: Closable[] = [];

beforeAll(async () => {
  if (openssl === null) return;
  const made = Bun.spawnSync(
    [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
    { stderr: "pipe" },
  );
  if (made.exitCode !== 0) throw new Error(`openssl failed: ${made.stderr.toString()}`);
  gw = await testGateway(run.dir, { tls: { cert, key } });
  owned.push(await wsPublisher(run.dir, "t1", "service"), await wsPublisher(run.dir, "t1", "ping"));
  owned.push(await rawEcho(publisherSocketPath(run.dir, "t1", "string")));
});

afterAll(async () => {
  await gw?.close();
  for (const o of owned) await o.close();
  run.remove();
  certs.remove();
});

/** A TLS client that sends `text` once the handshake is done and reads until the gateway closes. */
async function tlsExchange(port: number, text: string): Promise<string> {
  const chunks: Buffer[] = [];
  const done = Promise.withResolvers<void>();
  await Bun.connect({
    hostname: "127.0.0.1",
    port,
    tls: { rejectUnauthorized: false },
    allowHalfOpen: true,
    socket: {
      handshake(s) {
        s.write(text);
        s.shutdown();
      },
      data: (_s, d) => void chunks.push(Buffer.from(d)),
      end: (s) => void s.end(),
      close: () => done.resolve(),
    },
  });
  await done.promise;
  return Buffer.concat(chunks).toString("latin1");
}

describe.skipIf(openssl === null)("TLS termination", () => {
  test("wss:// clients reach plain Unix-socket publishers", async () => {
    for (const kind of ["service", "ping"] as const) {
      const ws = await openWs(`wss://127.0.0.1:${gw.ports[kind]}/pub/t1`, { tls: { rejectUnauthorized: false } });
      expect(await wsAsk(ws, "secret")).toBe(`${kind}:t1:secret`);
      ws.close();
    }
  });

  test("the raw prelude works inside TLS and is stripped", async () => {
    expect(await tlsExchange(gw.ports.string, "STOA1 t1\nover tls")).toBe("over tls");
  });

  test("error responses are sent inside TLS", async () => {
    const reply = parseReply(await tlsExchange(gw.ports.service, "GET /pub/nobody HTTP/1.1\r\n\r\n"));
    expect(reply.status).toBe(404);
    expect(reply.body?.error).toBe("unknown_pub_id");
  });

  test("a plain-text client on a TLS port is dropped without harm to others", async () => {
    const plain = await rawExchange(gw.ports.service, "GET /pub/t1 HTTP/1.1\r\n\r\n");
    expect(plain.status).toBeNull();
    expect(await tlsExchange(gw.ports.string, "STOA1 t1\nstill fine")).toBe("still fine");
  });

  test("an unreadable certificate is a config error that names the flag", async () => {
    const err = await testGateway(run.dir, { tls: { cert: join(certs.dir, "missing.pem"), key } }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StoaError);
    expect((err as StoaError).code).toBe("config");
    expect((err as StoaError).message).toContain("--tls-cert");
  });
});
