/**
 * Connection hand-off (src/gateway/handoff.ts): a publisher listening on handoff.sock is given
 * each plain-TCP client's connection itself. Shown here on a real gateway and real sockets: the
 * bytes read with the first line arrive first and the rest come straight from the client; the
 * gateway holds nothing afterwards (no upstream connect, no descriptor, open count back to 0);
 * it proxies instead when the publisher does not take hand-offs (no handoff.sock, a stale one, a
 * symlink, --handoff off); and a publisher refuses what is not a gateway's hand-off and goes on.
 * The message codec has its round trip, its errors and a fuzz test.
 */
import { describe, expect, test } from "bun:test";
import type { Socket } from "bun";
import { mkdirSync, readdirSync, rmSync, symlinkSync } from "node:fs";
import { publisherDir, publisherHandoffPath, publisherSocketPath } from "../../src/core/paths.ts";
import { Outbox } from "../../src/core/outbox.ts";
import { MAX_HANDOFF_PREFIX_BYTES, connectHandoff, decodeHandoff, encodeHandoff, serveHandoffs } from "../../src/gateway/handoff.ts";
import { OwnedFd, sendFds } from "../../src/ffi/fdpass.ts";
import { libc } from "../../src/ffi/libc.ts";
import { gatewayTestScope, rawEcho, staleSocket } from "../fixtures/gateway-helpers.ts";
import { fuzzSeed, mutate, prng } from "../helpers/prng.ts";

const scope = gatewayTestScope();
const { gateway, own } = scope;

const fdCount = (): number => readdirSync("/proc/self/fd").length;

async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(5);
  }
}

type EchoConn = { out: Outbox; ended: boolean };

/** A publisher taking hand-offs at pubId: echoes every byte, half-closes when the client does. */
async function handoffEcho(pubId: string) {
  const refused: string[] = [];
  const opened: { kind: string; pubId: string; remote: string }[] = [];
  let open = 0;
  const flush = (s: Socket<EchoConn>): void => {
    if (!s.data.out.flush()) return;
    if (s.data.ended) s.end();
  };
  mkdirSync(publisherDir(scope.runDir, pubId), { recursive: true, mode: 0o700 });
  const binding = await serveHandoffs<EchoConn>(publisherHandoffPath(scope.runDir, pubId), {
    allowHalfOpen: true,
    data: (h) => {
      opened.push({ kind: h.kind, pubId: h.pubId, remote: "" });
      return { out: undefined as unknown as Outbox, ended: false };
    },
    socket: {
      open(s) {
        open++;
        s.data.out = new Outbox(s);
        const last = opened.at(-1);
        if (last) last.remote = s.remoteAddress;
      },
      data(s, chunk) {
        s.data.out.write(new Uint8Array(chunk));
        flush(s);
      },
      drain: flush,
      end(s) {
        s.data.ended = true;
        flush(s);
      },
      close() {
        open--;
      },
    },
    onRefused: (why) => refused.push(why),
  });
  own({ close: () => binding.close() });
  return { refused, opened, get open() { return open; }, path: binding.path };
}

/** A client: connects, writes each part (a pause between), collects until the far side ends. */
async function exchange(port: number, parts: string[], options: { halfClose?: boolean } = {}): Promise<string> {
  const chunks: Buffer[] = [];
  const done = Promise.withResolvers<void>();
  const sock = await Bun.connect({
    hostname: "127.0.0.1",
    port,
    allowHalfOpen: true,
    socket: {
      data: (_s, c) => void chunks.push(Buffer.from(c)),
      end: (s) => {
        s.end();
        done.resolve();
      },
      close: () => done.resolve(),
    },
  });
  for (const part of parts) {
    sock.write(part);
    await Bun.sleep(20);
  }
  if (options.halfClose ?? true) sock.shutdown();
  await done.promise;
  return Buffer.concat(chunks).toString("latin1");
}

describe("the hand-off message", () => {
  test("round trip, with and without a prefix, for every kind", () => {
    for (const kind of ["service", "string", "ping"] as const) {
      for (const prefix of [new Uint8Array(0), new TextEncoder().encode("GET /pub/p HTTP/1.1\r\n\r\n"), new Uint8Array(MAX_HANDOFF_PREFIX_BYTES).fill(7)]) {
        const got = decodeHandoff(encodeHandoff({ kind, pubId: "p-1.x_y", prefix }));
        if ("error" in got) throw new Error(got.error);
        expect(got.kind).toBe(kind);
        expect(got.pubId).toBe("p-1.x_y");
        expect(Buffer.from(got.prefix).equals(Buffer.from(prefix))).toBe(true);
      }
    }
  });

  test("what cannot be one is refused with the reason", () => {
    const good = encodeHandoff({ kind: "service", pubId: "abc", prefix: new Uint8Array([1, 2, 3]) });
    const err = (b: Uint8Array) => {
      const r = decodeHandoff(b);
      return "error" in r ? r.error : "decoded";
    };
    expect(err(good.subarray(0, 9))).toContain("shorter than");
    expect(err(Uint8Array.from([...good].map((b, i) => (i === 0 ? 0x58 : b))))).toContain("bad magic");
    expect(err(Uint8Array.from([...good].map((b, i) => (i === 4 ? 3 : b))))).toContain("unknown kind 3");
    expect(err(Uint8Array.from([...good].map((b, i) => (i === 5 ? 0 : b))))).toContain("pub_id length 0");
    expect(err(Uint8Array.from([...good].map((b, i) => (i === 5 ? 65 : b))))).toContain("pub_id length 65");
    expect(err(good.subarray(0, good.length - 1))).toContain("the fields say");
    expect(err(new Uint8Array([...good, 0]))).toContain("the fields say");
    expect(err(Uint8Array.from([...good].map((b, i) => (i === 10 ? 0x2f : b))))).toContain("invalid pub_id");
    expect(() => encodeHandoff({ kind: "service", pubId: "../x", prefix: new Uint8Array(0) })).toThrow("invalid pub_id");
    expect(() => encodeHandoff({ kind: "service", pubId: "x", prefix: new Uint8Array(MAX_HANDOFF_PREFIX_BYTES + 1) })).toThrow("prefix bytes");
  });

  test("fuzz: 50,000 random and mutated messages never throw, and what decodes re-encodes to itself", () => {
    const rng = prng(fuzzSeed(17));
    const seed = encodeHandoff({ kind: "string", pubId: "pub.0", prefix: new TextEncoder().encode("hello") });
    let decoded = 0;
    for (let i = 0; i < 50_000; i++) {
      const bytes = i % 2 === 0 ? rng.bytes(rng.int(40)) : mutate(rng, seed);
      if (i % 4 === 0) bytes.set(seed.subarray(0, Math.min(6, bytes.length)));
      const r = decodeHandoff(bytes);
      if (!("error" in r)) {
        decoded++;
        if (!Buffer.from(encodeHandoff(r)).equals(Buffer.from(bytes))) throw new Error(`seed ${rng.seed}, iteration ${i}: decoded but did not re-encode to itself`);
      }
    }
    expect(decoded).toBeGreaterThan(0);
  });
});

describe("a gateway hands connections to a publisher that takes them", () => {
  test("the bytes of the first read come first, the rest straight from the client; the gateway keeps nothing", async () => {
    const gw = await gateway();
    const proxied = own(await rawEcho(publisherSocketPath(scope.runDir, "echo", "service")));
    const pub = await handoffEcho("echo");
    const before = fdCount();
    const got = await exchange(gw.ports.service, ["STOA1 echo\nhello ", "world", "!"]);
    expect(got).toBe("hello world!");
    expect(pub.opened).toEqual([{ kind: "service", pubId: "echo", remote: "127.0.0.1" }]);
    expect(proxied.received()).toEqual([]);
    const stats = await gw.stats();
    expect(stats.handedOffConnections).toBe(1);
    expect(stats.upstreamConnects).toBe(0);
    expect(stats.splicedConnections).toBe(0);
    expect(stats.connections.service).toEqual({ open: 0, total: 1 });
    await until("the publisher's socket to close", () => pub.open === 0);
    expect(fdCount()).toBe(before);
    expect(pub.refused).toEqual([]);
  });

  test("a GET /pub/ first line is handed on with the connection, as the proxy forwards it", async () => {
    const gw = await gateway();
    own(await rawEcho(publisherSocketPath(scope.runDir, "ws1", "string")));
    const pub = await handoffEcho("ws1");
    const request = "GET /pub/ws1?from=now HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n";
    expect(await exchange(gw.ports.string, [request])).toBe(request);
    expect(pub.opened.map((o) => o.kind)).toEqual(["string"]);
  });

  test("100 connections in turn: each handed off once, no descriptor left in the gateway's process", async () => {
    const gw = await gateway();
    own(await rawEcho(publisherSocketPath(scope.runDir, "many", "service")));
    const pub = await handoffEcho("many");
    const before = fdCount();
    for (let i = 0; i < 100; i++) expect(await exchange(gw.ports.service, [`STOA1 many\n${i}`])).toBe(String(i));
    await until("every handed-off socket to close", () => pub.open === 0);
    expect(fdCount()).toBe(before);
    expect((await gw.stats()).handedOffConnections).toBe(100);
  });

  test("it proxies when the publisher does not take hand-offs: none, a stale handoff.sock, a symlink, --handoff off", async () => {
    const gw = await gateway();
    const echo = own(await rawEcho(publisherSocketPath(scope.runDir, "plain", "service")));
    expect(await exchange(gw.ports.service, ["STOA1 plain\nnone"])).toBe("none");
    staleSocket(publisherHandoffPath(scope.runDir, "plain"));
    expect(await exchange(gw.ports.service, ["STOA1 plain\nstale"])).toBe("stale");
    const live = await handoffEcho("other");
    rmSync(publisherHandoffPath(scope.runDir, "plain"));
    symlinkSync(live.path, publisherHandoffPath(scope.runDir, "plain"));
    expect(await exchange(gw.ports.service, ["STOA1 plain\nlink"])).toBe("link");
    expect(live.opened).toEqual([]);
    expect(echo.received()).toEqual([Buffer.from("none"), Buffer.from("stale"), Buffer.from("link")]);
    expect((await gw.stats()).handedOffConnections).toBe(0);

    const off = await gateway({ handoff: false });
    const pub = await handoffEcho("both");
    const both = own(await rawEcho(publisherSocketPath(scope.runDir, "both", "service")));
    expect(await exchange(off.ports.service, ["STOA1 both\noff"])).toBe("off");
    expect(both.received()).toEqual([Buffer.from("off")]);
    expect(pub.opened).toEqual([]);
  });

  test("a kind without its endpoint socket is 404, not handed off", async () => {
    const gw = await gateway();
    const pub = await handoffEcho("nokind");
    const reply = await exchange(gw.ports.service, ["STOA1 nokind\n"]);
    expect(reply).toStartWith("HTTP/1.1 404 ");
    expect(pub.opened).toEqual([]);
  });
});

describe("a publisher refuses what is not a gateway's hand-off, and goes on", () => {
  test("no descriptor, a bad message, a descriptor that is not TCP, nothing at all: each refused, then a real one served", async () => {
    const gw = await gateway();
    own(await rawEcho(publisherSocketPath(scope.runDir, "tough", "service")));
    const pub = await handoffEcho("tough");
    const send = (data: Uint8Array, fds: OwnedFd[]) => {
      const link = connectHandoff(pub.path);
      if (typeof link === "string") throw new Error(link);
      expect(sendFds(link, data, fds)).toBe("sent");
      link.close();
    };
    const good = encodeHandoff({ kind: "service", pubId: "tough", prefix: new Uint8Array(0) });
    send(good, []);
    const pipe = new Int32Array(2);
    expect(libc().pipe2(pipe, 0o2000000)).toBe(0);
    const [r, w] = [new OwnedFd(pipe[0] ?? -1), new OwnedFd(pipe[1] ?? -1)];
    send(new TextEncoder().encode("not a hand-off"), [r]);
    send(good, [w]);
    r.close();
    w.close();
    const silent = connectHandoff(pub.path);
    if (typeof silent === "string") throw new Error(silent);
    silent.close();
    await until("four refusals", () => pub.refused.length === 4);
    expect(pub.refused[0]).toContain("without a descriptor");
    expect(pub.refused[1]).toContain("bad magic");
    expect(pub.refused[2]).toContain("not a TCP connection");
    expect(pub.refused[3]).toContain("closed without a message");
    expect(await exchange(gw.ports.service, ["STOA1 tough\nstill here"])).toBe("still here");
    expect(pub.opened.map((o) => o.pubId)).toEqual(["tough"]);
  });

  test("connecting to no handoff.sock says why, so the gateway can proxy instead", () => {
    const link = connectHandoff("/nonexistent/handoff.sock");
    expect(typeof link).toBe("string");
    expect(link as string).toContain("connect /nonexistent/handoff.sock: No such file");
  });
});
