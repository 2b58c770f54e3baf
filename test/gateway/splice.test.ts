/**
 * The epoll data path's kernel splice (core/fdsplice-engine.ts): a direction that moves bulk
 * bytes goes socket → pipe → socket with splice(2). These tests move enough bytes for that to
 * happen, check that it did (the pipes show in /proc/self/fd while a transfer runs: the gateway
 * runs in this process), and that the contract holds on it: bytes intact and in order (the first
 * line's tail first), half-close both ways, resets, and no descriptor left behind.
 */
import { describe, expect, test } from "bun:test";
import type { Socket } from "bun";
import { randomBytes } from "node:crypto";
import { readdirSync, readlinkSync } from "node:fs";
import { FdSplicer, takeSocketFd } from "../../src/core/fdsplice.ts";
import { publisherSocketPath } from "../../src/core/paths.ts";
import { bindUnix } from "../../src/core/unixsock.ts";
import type { Gateway } from "../../src/gateway/gateway.ts";
import { gatewayTestScope } from "../fixtures/gateway-helpers.ts";
import { FinishingOutbox } from "../fixtures/pipe-helpers.ts";

const scope = gatewayTestScope();
const { gateway, defer } = scope;

const MiB = 1024 * 1024;

/** This process's descriptors: all of them, and how many are pipes. */
function fds(): { all: number; pipes: number } {
  let all = 0;
  let pipes = 0;
  for (const fd of readdirSync("/proc/self/fd")) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`).startsWith("pipe:")) pipes++;
      all++;
    } catch {
      // the directory's own descriptor, gone once listed
    }
  }
  return { all, pipes };
}

const sha256 = (bytes: Uint8Array): string => new Bun.CryptoHasher("sha256").update(bytes).digest("hex");

async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(10);
  }
}

async function openConnections(gw: Gateway): Promise<number> {
  const stats = await gw.stats();
  return stats.connections.service.open;
}

interface Peer {
  /** Hash and count of what it received, once its peer's FIN came. */
  got: Promise<{ bytes: number; sha: string }>;
  closed: Promise<void>;
  sock: Socket<unknown>;
  out: FinishingOutbox;
}

/** Handlers that hash what a socket receives; `onEnd` runs at the peer's FIN. */
function hashing(onEnd: (got: { bytes: number; sha: string }) => void) {
  const hasher = new Bun.CryptoHasher("sha256");
  let bytes = 0;
  let finished = false;
  const closed = Promise.withResolvers<void>();
  const got = Promise.withResolvers<{ bytes: number; sha: string }>();
  const end = () => {
    if (finished) return;
    finished = true;
    const result = { bytes, sha: hasher.digest("hex") };
    got.resolve(result);
    onEnd(result);
  };
  return {
    got: got.promise,
    closed: closed.promise,
    data(chunk: Uint8Array) {
      hasher.update(chunk);
      bytes += chunk.byteLength;
    },
    end,
    close() {
      end();
      closed.resolve();
    },
  };
}

/** A client of the gateway's service port that hashes what it receives. */
async function client(gw: Gateway, onEnd: (got: { bytes: number; sha: string }) => void = () => {}): Promise<Peer> {
  const h = hashing(onEnd);
  let out: FinishingOutbox | undefined;
  const sock = await Bun.connect({
    hostname: "127.0.0.1",
    port: gw.ports.service,
    allowHalfOpen: true,
    socket: {
      data: (_s, d) => h.data(d),
      drain: () => out?.flush(),
      end: () => h.end(),
      close: () => h.close(),
    },
  });
  defer(() => void sock.end());
  out = new FinishingOutbox(sock);
  return { got: h.got, closed: h.closed, sock, out };
}

/**
 * A publisher whose every connection hashes what it receives and sends `reply(conn)` back:
 * `before` is written at open, `after` once the client's FIN came (then a FIN of its own).
 * `readAfterMs` holds back reading for a while at open.
 */
async function publisher(
  pubId: string,
  options: { before?: Uint8Array; after?: (got: { bytes: number; sha: string }) => Uint8Array | string; readAfterMs?: number } = {},
): Promise<{ next(): Promise<Peer> }> {
  /** Connections not yet handed out by `next()`, and callers of `next()` waiting for one. */
  const unclaimed: Peer[] = [];
  const waiting: ((p: Peer) => void)[] = [];
  type Conn = { h: ReturnType<typeof hashing>; out: FinishingOutbox };
  const binding = await bindUnix(publisherSocketPath(scope.runDir, pubId, "service"), (unix) =>
    Bun.listen<Conn>({
      unix,
      allowHalfOpen: true,
      socket: {
        open(s) {
          const out = new FinishingOutbox(s);
          const h = hashing((got) => {
            if (options.after === undefined) return;
            out.write(options.after(got));
            out.finish("shutdown");
          });
          s.data = { h, out };
          const peer: Peer = { got: h.got, closed: h.closed, sock: s, out };
          const waiter = waiting.shift();
          if (waiter === undefined) unclaimed.push(peer);
          else waiter(peer);
          if (options.before !== undefined) out.write(options.before);
          if (options.readAfterMs !== undefined) {
            s.pause();
            setTimeout(() => s.resume(), options.readAfterMs);
          }
        },
        data: (s, d) => s.data.h.data(d),
        drain: (s) => s.data.out.flush(),
        end: (s) => s.data.h.end(),
        close: (s) => s.data.h.close(),
      },
    }),
  );
  defer(() => binding.close(true));
  return {
    next: () => {
      const ready = unclaimed.shift();
      return ready !== undefined ? Promise.resolve(ready) : new Promise<Peer>((resolve) => waiting.push(resolve));
    },
  };
}

describe("splice(2) on the epoll data path", () => {
  test("32 MiB each way arrive intact (SHA-256), through pipes that close with the connection", async () => {
    const gw = await gateway({ dataPath: "epoll" });
    const down = randomBytes(32 * MiB);
    const up = randomBytes(32 * MiB);
    await publisher("big", { before: down, after: (got) => `${got.bytes} ${got.sha}` });
    const before = fds();
    let pipesSeen = 0;
    const sampler = setInterval(() => {
      pipesSeen = Math.max(pipesSeen, fds().pipes - before.pipes);
    }, 5);
    defer(() => clearInterval(sampler));
    const c = await client(gw);
    c.out.write("STOA1 big\n");
    for (let at = 0; at < up.length; at += MiB) c.out.write(up.subarray(at, at + MiB));
    c.out.finish("shutdown");
    const got = await c.got;
    clearInterval(sampler);
    // What came down: the publisher's 32 MiB, then its answer to the upload after our FIN.
    const answer = `${up.length} ${sha256(up)}`;
    expect(got.bytes).toBe(down.length + answer.length);
    expect(got.sha).toBe(sha256(Buffer.concat([down, Buffer.from(answer)])));
    // A pipe per direction (two descriptors each) was open while the bytes moved.
    expect(pipesSeen).toBeGreaterThanOrEqual(2);
    await c.closed;
    await until("the connection to close", async () => (await openConnections(gw)) === 0);
    await until("the pipes to close", () => fds().pipes === before.pipes);
    const stats = await gw.stats();
    expect(stats.splicedConnections).toBe(1);
    expect(stats.bytes.service.in).toBe(up.length);
    expect(stats.bytes.service.out).toBe(down.length + answer.length);
  }, 60_000);

  test("the first line's tail reaches the publisher before every spliced byte", async () => {
    const gw = await gateway({ dataPath: "epoll" });
    // The publisher reads nothing for a while, so the tail (in the engine's queue) cannot be
    // written at once and the client's further bytes pile up behind it.
    const pub = await publisher("order", { after: (got) => `${got.bytes} ${got.sha}`, readAfterMs: 200 });
    const payload = randomBytes(16 * MiB);
    const c = await client(gw);
    // One write: the first line and 1 MiB after it arrive together, mostly read while routing
    // (more than the publisher's socket takes before it reads).
    c.out.write(Buffer.concat([Buffer.from("STOA1 order\n"), payload.subarray(0, MiB)]));
    for (let at = MiB; at < payload.length; at += MiB) c.out.write(payload.subarray(at, Math.min(at + MiB, payload.length)));
    c.out.finish("shutdown");
    const upstream = await pub.next();
    expect(await upstream.got).toEqual({ bytes: payload.length, sha: sha256(payload) });
    const answer = `${payload.length} ${sha256(payload)}`;
    expect(await c.got).toEqual({ bytes: answer.length, sha: sha256(Buffer.from(answer)) });
  }, 60_000);

  test("a tail larger than the publisher's socket takes is written whole before any spliced byte", async () => {
    // The router hands over at most a read or two (it pauses the client), which a new Unix
    // socket always takes at once; the splicer itself is asked here to start with 4 MiB queued.
    const splicer = new FdSplicer();
    defer(() => splicer.close());
    const pub = await publisher("tail", { after: (got) => `${got.bytes} ${got.sha}`, readAfterMs: 200 });
    const tail = randomBytes(4 * MiB);
    const body = randomBytes(16 * MiB);
    const handed = Promise.withResolvers<void>();
    const listener = Bun.listen({
      hostname: "127.0.0.1",
      port: 0,
      allowHalfOpen: true,
      socket: {
        async open(sock) {
          sock.pause();
          const upstream = await Bun.connect({ unix: publisherSocketPath(scope.runDir, "tail", "service"), allowHalfOpen: true, socket: { data() {} } });
          upstream.pause();
          splicer.splice(takeSocketFd(sock), takeSocketFd(upstream), { toB: tail });
          handed.resolve();
        },
        data() {},
      },
    });
    defer(() => listener.stop(true));
    const h = hashing(() => {});
    let out: FinishingOutbox | undefined;
    const sock = await Bun.connect({
      hostname: "127.0.0.1",
      port: listener.port,
      allowHalfOpen: true,
      socket: { data: (_s, d) => h.data(d), drain: () => out?.flush(), end: () => h.end(), close: () => h.close() },
    });
    defer(() => void sock.end());
    out = new FinishingOutbox(sock);
    await handed.promise;
    for (let at = 0; at < body.length; at += MiB) out.write(body.subarray(at, at + MiB));
    out.finish("shutdown");
    const upstream = await pub.next();
    const whole = Buffer.concat([tail, body]);
    expect(await upstream.got).toEqual({ bytes: whole.length, sha: sha256(whole) });
    const answer = `${whole.length} ${sha256(whole)}`;
    expect(await h.got).toEqual({ bytes: answer.length, sha: sha256(Buffer.from(answer)) });
  }, 60_000);

  test("half-close: the client's FIN follows its spliced bytes, and the publisher's reply still comes back", async () => {
    const gw = await gateway({ dataPath: "epoll" });
    const reply = randomBytes(8 * MiB);
    const pub = await publisher("hc1", { after: () => reply });
    const up = randomBytes(8 * MiB);
    const c = await client(gw);
    c.out.write("STOA1 hc1\n");
    c.out.write(up);
    c.out.finish("shutdown");
    const upstream = await pub.next();
    // The publisher saw every byte, then the FIN (its `got` resolves at the FIN) ...
    expect(await upstream.got).toEqual({ bytes: up.length, sha: sha256(up) });
    // ... and its 8 MiB answer, sent after that FIN, reached the client in full, then its FIN.
    expect(await c.got).toEqual({ bytes: reply.length, sha: sha256(reply) });
  }, 60_000);

  test("half-close: the publisher's FIN follows its spliced bytes, and the client can still send", async () => {
    const gw = await gateway({ dataPath: "epoll" });
    const down = randomBytes(8 * MiB);
    const pub = await publisher("hc2", { before: down });
    const c = await client(gw);
    c.out.write("STOA1 hc2\n");
    const upstream = await pub.next();
    upstream.out.finish("shutdown"); // FIN right after the 8 MiB
    expect(await c.got).toEqual({ bytes: down.length, sha: sha256(down) });
    // Half-open the other way: 8 MiB from the client after the publisher's FIN still arrive.
    const up = randomBytes(8 * MiB);
    c.out.write(up);
    c.out.finish("shutdown");
    expect(await upstream.got).toEqual({ bytes: up.length, sha: sha256(up) });
    await c.closed;
    await until("the connection to close", async () => (await openConnections(gw)) === 0);
  }, 60_000);

  for (const direction of ["uploading", "downloading"] as const) {
    test(`a client that resets while ${direction}: the publisher's end closes, nothing is left open`, async () => {
      const gw = await gateway({ dataPath: "epoll" });
      const before = fds();
      const chunk = randomBytes(MiB);
      let streaming = true;
      // The publisher answers the gateway's FIN (the client's reset, passed on) with its own.
      const pub = await publisher(`rst-${direction}`, { after: () => "" });
      const c = await client(gw);
      c.out.write(`STOA1 rst-${direction}\n`);
      const upstream = await pub.next();
      // Keep the chosen direction full, so the reset comes in the middle of a splice.
      const sender = direction === "uploading" ? c : upstream;
      const feed = () => {
        while (streaming && sender.sock.write(chunk) === chunk.byteLength) {}
      };
      const timer = setInterval(feed, 1);
      defer(() => {
        streaming = false;
        clearInterval(timer);
      });
      await until("bytes to flow", async () => {
        const stats = await gw.stats();
        return (direction === "uploading" ? stats.bytes.service.in : stats.bytes.service.out) > 16 * MiB;
      });
      expect(fds().pipes).toBeGreaterThan(before.pipes);
      c.sock.terminate(); // SO_LINGER 0: a reset
      await upstream.closed;
      streaming = false;
      clearInterval(timer);
      await until("the connection to close", async () => (await openConnections(gw)) === 0);
      await until("the pipes to close", () => fds().pipes === before.pipes);
    }, 60_000);
  }

  test("no descriptor is left after 300 connections that each spliced a few MiB", async () => {
    const gw = await gateway({ dataPath: "epoll" });
    const payload = randomBytes(2 * MiB);
    await publisher("many", { before: payload, after: (got) => `${got.bytes}` });
    // One connection first, so that whatever the gateway keeps for good (its splicer thread,
    // its eventfd, the engine's epoll) is already there when counting starts.
    const warm = await client(gw);
    warm.out.write("STOA1 many\nx");
    warm.out.finish("shutdown");
    await warm.closed;
    await until("the first connection to close", async () => (await openConnections(gw)) === 0);
    const before = fds();
    for (let batch = 0; batch < 10; batch++) {
      const clients = await Promise.all(Array.from({ length: 30 }, () => client(gw)));
      for (const c of clients) {
        c.out.write("STOA1 many\n");
        c.out.write(payload);
        c.out.finish("shutdown");
      }
      const got = await Promise.all(clients.map((c) => c.got));
      for (const g of got) expect(g.bytes).toBe(payload.length + String(payload.length).length);
      await Promise.all(clients.map((c) => c.closed));
    }
    await until("every connection to close", async () => (await openConnections(gw)) === 0);
    await until("the descriptors to be back", () => {
      const now = fds();
      return now.pipes === before.pipes && now.all <= before.all;
    });
    expect((await gw.stats()).splicedConnections).toBe(301);
  }, 120_000);
});
