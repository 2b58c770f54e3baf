/**
 * The framed relay link (src/hotlink/framed-link.ts): its wire pieces, the relay's listener
 * spoken to over raw TCP (authorization, refusals, limits, close, idle, garbage), and daemons
 * that take it when offered. server.test.ts runs the whole relay suite over it as well.
 */
import type { Socket } from "bun";
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encodeFrame, FrameDecoder } from "../../src/core/frame.ts";
import { createLogger } from "../../src/core/log.ts";
import { Registry } from "../../src/core/metrics.ts";
import { HotlinkDaemon } from "../../src/hotlink/daemon.ts";
import { MAX_RECEIVER_ATTACHES } from "../../src/hotlink/relay-stream.ts";
import {
  attachFrame,
  closeFrame,
  FirstFrame,
  parseAttachFrame,
  LINK_OFFER_HEADER,
  MAX_AUTH_FRAME_BYTES,
  parseCloseFrame,
  parseOffer,
  parseStatusFrame,
  RelaySocket,
} from "../../src/hotlink/framed-link.ts";
import { MessageType, PROTOCOL_VERSION, encodeMessage, parseMessage } from "../../src/hotlink/protocol.ts";
import { HlnkDecoder, encodeHlnk } from "../../src/hotlink/hlnk.ts";
import { type HotlinkServer, type HotlinkServerOptions, startHotlinkServer } from "../../src/hotlink/server.ts";
import { addUser, formatAuthorization } from "../../src/hotlink/users.ts";
import { type App, app, sha256hex } from "../fixtures/hotlink-apps.ts";
import { HotlinkPeer } from "../fixtures/hotlink-peer.ts";
import { eventually } from "../helpers/eventually.ts";
import { fuzzSeed, mutate, prng } from "../helpers/prng.ts";

const dir = mkdtempSync(join(tmpdir(), "stoa-framed-link-"));
const usersFile = join(dir, "users.json");
const aclFile = join(dir, "acl.json");
const tokens = { alice: addUser(usersFile, "alice"), bob: addUser(usersFile, "bob"), mallory: addUser(usersFile, "mallory") };
writeFileSync(aclFile, JSON.stringify({ rules: [{ pattern: "alice/**", read: ["bob"], write: ["bob"] }] }));

const logged: string[] = [];
const log = createLogger({ level: "warn", stream: { write: (line: string) => void logged.push(line) } });
const cleanups: (() => Promise<void> | void)[] = [];
const peers: HotlinkPeer[] = [];
afterEach(async () => {
  for (const p of peers.splice(0)) p.close();
  for (const c of cleanups.splice(0).reverse()) await c();
  expect(logged.filter((line) => line.includes("bug in"))).toEqual([]);
  logged.length = 0;
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function serve(options: Partial<HotlinkServerOptions> = {}): HotlinkServer & { linkPort: number } {
  const server = startHotlinkServer({
    hostname: "127.0.0.1",
    port: 0,
    usersFile,
    aclFile,
    log,
    registry: new Registry(),
    linkListen: { hostname: "127.0.0.1", port: 0 },
    ...options,
  });
  cleanups.push(() => server.close());
  if (server.linkPort === undefined && options.linkListen !== undefined) throw new Error("no link port");
  return server as HotlinkServer & { linkPort: number };
}

/** A relay with no framed link. */
function serveWithout(): HotlinkServer {
  const server = startHotlinkServer({ hostname: "127.0.0.1", port: 0, usersFile, aclFile, log, registry: new Registry() });
  cleanups.push(() => server.close());
  return server;
}

/** A raw TCP connection to the framed port: what it reads, decoded as frames. */
interface Raw {
  sock: Socket<undefined>;
  frames: Uint8Array[];
  closed: Promise<void>;
  isClosed(): boolean;
  write(bytes: Uint8Array): void;
}

async function raw(port: number): Promise<Raw> {
  const frames: Uint8Array[] = [];
  const decoder = new FrameDecoder({ maxBytes: 64 * 1024 * 1024 });
  const closed = Promise.withResolvers<void>();
  let isClosed = false;
  const sock = await Bun.connect({
    hostname: "127.0.0.1",
    port,
    socket: {
      data: (_s, d) => void frames.push(...decoder.push(d)),
      close: () => {
        isClosed = true;
        closed.resolve();
      },
      error: () => {},
    },
  });
  cleanups.push(() => sock.terminate());
  return { sock, frames, closed: closed.promise, isClosed: () => isClosed, write: (b) => void sock.write(b) };
}

const text = (s: string): Uint8Array => new TextEncoder().encode(s);
const authFrame = (user: keyof typeof tokens, token = tokens[user]): Uint8Array => encodeFrame(text(formatAuthorization(user, token)));
const messageFrame = (m: Parameters<typeof encodeMessage>[0]): Uint8Array => encodeFrame(encodeMessage(m));
const statusOf = (frame: Uint8Array | undefined) => (frame === undefined ? null : parseStatusFrame(frame));

describe("wire pieces", () => {
  test("a close frame carries its code and reason, and no CBOR map can be taken for one", () => {
    const frame = closeFrame(1008, "decode: bad\nthing");
    const parsed = parseCloseFrame(frame.subarray(4));
    expect(parsed).toEqual({ code: 1008, reason: "decode: bad thing" });
    expect(parseCloseFrame(encodeMessage({ t: MessageType.Ping, n: 1 }))).toBeNull();
    expect(parseCloseFrame(new Uint8Array([0xff, 3]))).toBeNull();
    // A long reason is cut to fit the status limit.
    expect(closeFrame(1000, "x".repeat(5000)).byteLength).toBeLessThanOrEqual(4 + 1024);
  });

  test("a status frame is three digits and a text; anything else is not one", () => {
    expect(parseStatusFrame(text("200 ok"))).toEqual({ status: 200, text: "ok" });
    expect(parseStatusFrame(text("429 too many\tconnections"))).toEqual({ status: 429, text: "too many connections" });
    for (const bad of ["", "20 ok", "ok 200", "600 no", "2000 x"]) expect(parseStatusFrame(text(bad))).toBeNull();
    expect(parseStatusFrame(new Uint8Array(2000).fill(0x32))).toBeNull();
  });

  test("an offer is {v:1, tcp:PORT} and nothing else", () => {
    expect(parseOffer('{"v":1,"tcp":8471}')).toBe(8471);
    for (const bad of ['{"v":2,"tcp":1}', '{"v":1,"tcp":0}', '{"v":1,"tcp":65536}', '{"v":1,"tcp":"1"}', '{"v":1}', "[]", "null", "nope", `{"v":1,"tcp":1,"x":"${"y".repeat(300)}"}`]) {
      expect(parseOffer(bad)).toBeNull();
    }
  });

  test("the first frame, however it is split, gives the frame and exactly the bytes after it; a longer one is refused on its header", () => {
    const rng = prng(fuzzSeed(0xf1257));
    for (let i = 0; i < 2000; i++) {
      const payload = rng.bytes(rng.int(MAX_AUTH_FRAME_BYTES + 1));
      const after = rng.bytes(rng.int(3000));
      const stream = new Uint8Array([...encodeFrame(payload), ...after]);
      const first = new FirstFrame(MAX_AUTH_FRAME_BYTES);
      let got: ReturnType<FirstFrame["push"]> = null;
      const rest: number[] = [];
      for (let at = 0; at < stream.length; ) {
        const n = 1 + rng.int(rng.pick([1, 8, 600, stream.length]));
        const chunk = stream.subarray(at, at + n);
        at += n;
        if (got === null) {
          got = first.push(chunk);
          if (got !== null && got !== "too_large") rest.push(...got.rest);
        } else rest.push(...chunk);
      }
      if (got === null || got === "too_large") throw new Error(`iteration ${i}: no frame`);
      expect(got.frame).toEqual(payload);
      expect(rest).toEqual([...after]);
    }
    const big = new FirstFrame(MAX_AUTH_FRAME_BYTES);
    expect(big.push(encodeFrame(new Uint8Array(MAX_AUTH_FRAME_BYTES + 1)).subarray(0, 4))).toBe("too_large");
  });
});

describe("the offer", () => {
  test("GET /v1/hotlink with Stoa-Link: tcp and a valid token gets the port; without the header 426; a wrong token 401; no link served: 426", async () => {
    const server = serve();
    const http = server.url.replace("ws://", "http://");
    const ask = (authorization: string, header = true) =>
      fetch(http, { headers: { Authorization: authorization, ...(header ? { [LINK_OFFER_HEADER]: "tcp" } : {}) } });
    const offered = await ask(formatAuthorization("alice", tokens.alice));
    expect(offered.status).toBe(200);
    expect(await offered.json()).toEqual({ v: 1, tcp: server.linkPort });
    const plain = await ask(formatAuthorization("alice", tokens.alice), false);
    expect(plain.status).toBe(426);
    await plain.text();
    const wrong = await ask(formatAuthorization("alice", tokens.bob));
    expect(wrong.status).toBe(401);
    await wrong.text();
    const none = serveWithout();
    const no = await fetch(none.url.replace("ws://", "http://"), { headers: { Authorization: formatAuthorization("alice", tokens.alice), [LINK_OFFER_HEADER]: "tcp" } });
    expect(no.status).toBe(426);
    await no.text();
    expect(server.stats().connections).toBe(0);
  });

  test("a daemon's socket takes the framed link when offered, the WebSocket when not, and never asks a wss:// relay", async () => {
    const withLink = serve();
    const without = serveWithout();
    const a = await HotlinkPeer.join(withLink.url, "alice", tokens.alice, peers, "tcp");
    expect((a.ws as unknown as RelaySocket).kind).toBe("tcp");
    const b = await HotlinkPeer.open(without.url, "alice", tokens.alice, peers, "tcp");
    expect((b.ws as unknown as RelaySocket).kind).toBe("ws");
    // A wss:// URL: no offer is asked (it would downgrade the link's TLS); the dial is a WebSocket.
    let asked = 0;
    const http = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => (asked++, new Response("no", { status: 500 })) });
    cleanups.push(() => void http.stop(true));
    const tls = new RelaySocket(`wss://127.0.0.1:${http.port}/v1/hotlink`, {}, "auto");
    await eventually("the wss dial to fail", () => tls.readyState === RelaySocket.CLOSED || undefined);
    expect(tls.kind).toBe("ws");
    expect(asked).toBe(0);
  });
});

describe("the framed listener over raw TCP", () => {
  test("a wrong token gets 401 and the close; the relay holds no connection", async () => {
    const server = serve();
    const c = await raw(server.linkPort);
    c.write(authFrame("alice", tokens.bob));
    await c.closed;
    const status = statusOf(c.frames[0]);
    expect(status?.status).toBe(401);
    expect(status?.text).toContain("Bearer");
    expect(c.frames.length).toBe(1);
    expect(server.stats().connections).toBe(0);
  });

  test("no authorization within the Hello deadline: 408 and the close", async () => {
    const server = serve({ helloTimeoutMs: 150 });
    const c = await raw(server.linkPort);
    c.write(new Uint8Array([0, 0])); // half a header, then nothing
    await c.closed;
    expect(statusOf(c.frames[0])?.status).toBe(408);
  });

  test("an authorization frame over the limit is refused on its header, before its bytes are read", async () => {
    const server = serve();
    const c = await raw(server.linkPort);
    c.write(encodeFrame(new Uint8Array(MAX_AUTH_FRAME_BYTES + 1)).subarray(0, 4));
    await c.closed;
    expect(statusOf(c.frames[0])?.status).toBe(401);
  });

  test("the per-user connection cap counts framed links and WebSockets together: 429", async () => {
    const server = serve({ maxConnectionsPerUser: 2 });
    await HotlinkPeer.join(server.url, "alice", tokens.alice, peers, "ws");
    const c1 = await raw(server.linkPort);
    c1.write(authFrame("alice"));
    await eventually("the first framed link to be let in", () => statusOf(c1.frames[0])?.status === 200 || undefined);
    const c2 = await raw(server.linkPort);
    c2.write(authFrame("alice"));
    await c2.closed;
    expect(statusOf(c2.frames[0])?.status).toBe(429);
    expect(c1.isClosed()).toBe(false);
    // And the offer itself says 429 (as an upgrade would).
    const res = await fetch(server.url.replace("ws://", "http://"), { headers: { Authorization: formatAuthorization("alice", tokens.alice), [LINK_OFFER_HEADER]: "tcp" } });
    expect(res.status).toBe(429);
    await res.text();
  });

  test("authorization and Hello in one write: 200, then the Welcome", async () => {
    const server = serve();
    const c = await raw(server.linkPort);
    c.write(new Uint8Array([...authFrame("bob"), ...messageFrame({ t: MessageType.Hello, v: PROTOCOL_VERSION, agt: "raw" })]));
    await eventually("the Welcome", () => c.frames.length >= 2 || undefined);
    expect(statusOf(c.frames[0])).toEqual({ status: 200, text: "ok" });
    const welcome = parseMessage(c.frames[1] ?? new Uint8Array(0));
    expect(welcome).toMatchObject({ t: MessageType.Welcome, usr: "bob" });
  });

  test("a message frame over the limit: a close frame 1009, and only that connection goes", async () => {
    const server = serve();
    const bob = await HotlinkPeer.join(server.url, "bob", tokens.bob, peers, "tcp");
    const c = await raw(server.linkPort);
    c.write(authFrame("mallory"));
    c.write(messageFrame({ t: MessageType.Hello, v: PROTOCOL_VERSION, agt: "raw" }));
    await eventually("mallory's Welcome", () => c.frames.length >= 2 || undefined);
    const huge = new Uint8Array(4);
    new DataView(huge.buffer).setUint32(0, 0x7fff_ffff);
    c.write(huge);
    await c.closed;
    const last = c.frames[c.frames.length - 1];
    expect(parseCloseFrame(last ?? new Uint8Array(0))?.code).toBe(1009);
    await bob.sync();
    await eventually("mallory's connection to be gone", () => server.stats().connections === 1 || undefined);
  });

  test("a client's close frame: the relay answers with its own, ends, and lets the connection go", async () => {
    const server = serve();
    const c = await raw(server.linkPort);
    c.write(authFrame("alice"));
    c.write(messageFrame({ t: MessageType.Hello, v: PROTOCOL_VERSION, agt: "raw" }));
    await eventually("the Welcome", () => c.frames.length >= 2 || undefined);
    expect(server.stats().connections).toBe(1);
    c.write(closeFrame(1000, "bye"));
    await c.closed;
    expect(parseCloseFrame(c.frames[c.frames.length - 1] ?? new Uint8Array(0))?.code).toBe(1000);
    await eventually("no connection", () => server.stats().connections === 0 || undefined);
  });

  test("a silent connection is pinged at half the idle timeout and closed at all of it; one that answers stays", async () => {
    const server = serve({ linkIdleTimeoutMs: 400 });
    const silent = await raw(server.linkPort);
    silent.write(authFrame("mallory"));
    silent.write(messageFrame({ t: MessageType.Hello, v: PROTOCOL_VERSION, agt: "raw" }));
    const live = await HotlinkPeer.join(server.url, "alice", tokens.alice, peers, "tcp");
    // The fixture's peer does not answer the relay's Pings (a daemon does, link.ts): its own
    // Ping every 50 ms keeps it talking.
    let talking = true;
    const talk = (async () => {
      while (talking) {
        await live.sync();
        await Bun.sleep(50);
      }
    })();
    await silent.closed;
    const seen = silent.frames.slice(1).map((f) => parseCloseFrame(f) ?? parseMessage(f));
    expect(seen.some((m) => "t" in m && m.t === MessageType.Ping)).toBe(true);
    expect(seen[seen.length - 1]).toEqual({ code: 1001, reason: "idle timeout" });
    await Bun.sleep(500); // proves nothing happens: a whole idle timeout more, still talking
    talking = false;
    await talk;
    expect(live.closed).toBeUndefined();
  });

  test("thousands of random and mutated streams on the framed port never disturb a live session, and nothing throws", async () => {
    const server = serve();
    const alice = await HotlinkPeer.join(server.url, "alice", tokens.alice, peers, "tcp");
    const bob = await HotlinkPeer.join(server.url, "bob", tokens.bob, peers, "tcp");
    alice.send({ t: MessageType.Open, sid: "live", pth: "alice/x" });
    await bob.take(MessageType.Open);
    bob.send({ t: MessageType.Accept, sid: "live" });
    await alice.take(MessageType.Accept);
    const rng = prng(fuzzSeed(0xf4a3e11));
    const good = new Uint8Array([...authFrame("mallory"), ...messageFrame({ t: MessageType.Hello, v: PROTOCOL_VERSION, agt: "fuzz" }), ...messageFrame({ t: MessageType.Ping, n: 7 })]);
    let seq = 0;
    for (let round = 0; round < 150; round++) {
      await Promise.all(
        [0, 1, 2, 3].map(async () => {
          const c = await raw(server.linkPort);
          const roll = rng.int(4);
          const stream = roll === 0 ? rng.bytes(rng.int(200)) : roll === 1 ? mutate(rng, good) : new Uint8Array([...good, ...mutate(rng, good.subarray(authFrame("mallory").byteLength))]);
          for (let at = 0; at < stream.length; ) {
            const n = 1 + rng.int(64);
            c.write(stream.subarray(at, at + n));
            at += n;
          }
          // Either the relay closes it, or it is still taking bytes; then we go.
          await Bun.sleep(5); // proves nothing: lets the relay read before the reset
          c.sock.terminate();
        }),
      );
      seq++;
      alice.send({ t: MessageType.Data, sid: "live", seq, pay: randomBytes(64) });
    }
    for (let i = 1; i <= seq; i++) expect((await bob.take(MessageType.Data)).seq).toBe(i);
    expect(alice.closed).toBeUndefined();
    expect(bob.closed).toBeUndefined();
    await eventually("the fuzzing connections to be gone", () => server.stats().connections === 2 || undefined);
  }, 60_000);
});

describe("daemons on the framed link", () => {
  const CHANNEL = "alice/mpc/run1/0_to_1";

  async function pair(server: HotlinkServer, mode?: "auto" | "ws", relayStreams = true) {
    const start = async (user: "alice" | "bob", peer: string) => {
      const d = await HotlinkDaemon.start({
        server: server.url,
        user,
        token: tokens[user],
        tunnels: [{ channel: CHANNEL, host: "127.0.0.1", port: 0, peer }],
        log,
        minDelayMs: 20,
        relayStreams,
        ...(mode === undefined ? {} : { linkMode: mode }),
      });
      cleanups.push(() => d.close());
      await d.connected();
      return d;
    };
    const alice = await start("alice", "bob");
    const bob = await start("bob", "alice");
    const port = (d: HotlinkDaemon) => d.tunnel(CHANNEL)?.port ?? 0;
    return { alice, bob, alicePort: port(alice), bobPort: port(bob) };
  }

  const own = (cleanup: () => void): void => void cleanups.push(cleanup);

  test("64 MiB both ways at once through a tunnel in Data messages (--relay-streams off, no direct path) arrive intact, and ls says framed TCP link", async () => {
    const server = serve();
    const { alice, bob, alicePort, bobPort } = await pair(server, undefined, false);
    expect(alice.link.transport).toBe("tcp");
    expect(bob.status().relay_link).toBe("tcp");
    const size = 64 * 1024 * 1024;
    const a2b = randomBytes(size);
    const b2a = randomBytes(size);
    const bobApp = await app(bobPort, own);
    const aliceApp = await app(alicePort, own);
    const pump = async (a: App, data: Uint8Array) => {
      for (let at = 0; at < data.length; at += 1024 * 1024) await a.send(data.subarray(at, at + 1024 * 1024));
      a.sock.shutdown();
    };
    await Promise.all([pump(aliceApp, a2b), pump(bobApp, b2a), aliceApp.ended, bobApp.ended]);
    expect(bobApp.bytes()).toBe(size);
    expect(aliceApp.bytes()).toBe(size);
    expect(sha256hex(bobApp.received())).toBe(sha256hex(a2b));
    expect(sha256hex(aliceApp.received())).toBe(sha256hex(b2a));
    expect(alice.status().counters.relay.txBytes).toBeGreaterThanOrEqual(size);
  }, 60_000);

  test.each(["tcp", "ws"] as const)("HLNK frames from 1 byte to 3 MiB through an IPC channel reach bob's application exact and in order, bob on the %s link (a frame spanning reads goes on as their views; a WebSocket gets it joined)", async (bobLink) => {
    const server = serve();
    const sockDir = mkdtempSync(join(tmpdir(), "hl-framed-ipc-"));
    own(() => rmSync(sockDir, { recursive: true, force: true }));
    const channel = "alice/ipc/big";
    const start = async (user: "alice" | "bob") => {
      const linkMode = user === "bob" && bobLink === "ws" ? { linkMode: "ws" as const } : {};
      const d = await HotlinkDaemon.start({ server: server.url, user, token: tokens[user], ipc: [{ channel, path: join(sockDir, `${user}.sock`) }], log, minDelayMs: 20, ...linkMode });
      cleanups.push(() => d.close());
      await d.connected();
      expect(d.link.transport).toBe(user === "bob" ? bobLink : "tcp");
      return d;
    };
    await start("alice");
    const bob = await start("bob");
    const decoder = new HlnkDecoder();
    const got: { seq: bigint; etag: string; payload: Uint8Array }[] = [];
    const reader = await Bun.connect({ unix: join(sockDir, "bob.sock"), socket: { data: (_s, d) => void got.push(...decoder.push(d)) } });
    own(() => reader.terminate());
    const writer = await Bun.connect({ unix: join(sockDir, "alice.sock"), socket: { data() {} } });
    own(() => writer.terminate());
    const rng = prng(fuzzSeed(0x1f2a));
    const sizes = [1, 0, 700, 64 * 1024, 3 * 1024 * 1024, 5, 300 * 1024, 1024 * 1024 + 3, ...Array.from({ length: 40 }, () => rng.pick([1 + rng.int(100), rng.int(70_000), rng.int(2 * 1024 * 1024)]))];
    const sent = sizes.map((n, i) => ({ seq: BigInt(i + 1), etag: `e${i}`, payload: randomBytes(n) }));
    for (const f of sent) {
      const bytes = encodeHlnk({ path: channel, etag: f.etag, seq: f.seq, payload: f.payload });
      for (let at = 0; at < bytes.byteLength; ) {
        const n = writer.write(bytes.subarray(at));
        at += Math.max(0, n);
        if (at < bytes.byteLength) await Bun.sleep(1);
      }
    }
    const total = sizes.reduce((a, b) => a + b, 0);
    await eventually("bob's application to get every frame", () => got.length === sent.length || undefined, { timeoutMs: 30_000 });
    got.forEach((f, i) => {
      expect(f.etag).toBe(sent[i]?.etag ?? "");
      expect(f.payload.byteLength).toBe(sent[i]?.payload.byteLength ?? -1);
      expect(sha256hex(f.payload)).toBe(sha256hex(sent[i]?.payload ?? new Uint8Array(0)));
    });
    expect(bob.status().counters.relay.rxBytes).toBeGreaterThanOrEqual(total);
  }, 60_000);

  test("the relay restarts on the same ports: the daemons come back on the framed link; linkMode ws keeps the WebSocket", async () => {
    const first = serve();
    const { alice, bob } = await pair(first);
    expect(alice.link.transport).toBe("tcp");
    const { port, linkPort } = first;
    await first.close();
    await eventually("alice to see the relay gone", () => !alice.link.up || undefined);
    const again = serve({ port, linkListen: { hostname: "127.0.0.1", port: linkPort } });
    await eventually("both daemons back", () => (alice.link.up && bob.link.up) || undefined, { timeoutMs: 10_000 });
    expect(alice.link.transport).toBe("tcp");
    expect(again.stats().connections).toBe(2);
    const ws = await HotlinkDaemon.start({ server: again.url, user: "mallory", token: tokens.mallory, log, minDelayMs: 20, linkMode: "ws" });
    cleanups.push(() => ws.close());
    await ws.connected();
    expect(ws.link.transport).toBe("ws");
    expect(ws.status().relay_link).toBe("ws");
  }, 30_000);
});

describe("relay streams (relay-stream.ts)", () => {
  const CHANNEL = "alice/mpc/run1/0_to_1";
  const own = (cleanup: () => void): void => void cleanups.push(cleanup);

  async function daemons(server: HotlinkServer, options: { bob?: Partial<Parameters<typeof HotlinkDaemon.start>[0]> } = {}) {
    const start = async (user: "alice" | "bob", peer: string, extra = {}) => {
      const d = await HotlinkDaemon.start({
        server: server.url,
        user,
        token: tokens[user],
        tunnels: [{ channel: CHANNEL, host: "127.0.0.1", port: 0, peer }],
        log,
        minDelayMs: 20,
        ...extra,
      });
      cleanups.push(() => d.close());
      await d.connected();
      return d;
    };
    const alice = await start("alice", "bob");
    const bob = await start("bob", "alice", options.bob ?? {});
    const port = (d: HotlinkDaemon) => d.tunnel(CHANNEL)?.port ?? 0;
    return { alice, bob, alicePort: port(alice), bobPort: port(bob) };
  }

  const streamOf = (d: HotlinkDaemon) => d.status().tunnels.find((t) => t.channel === CHANNEL)?.stream;

  test("64 MiB both ways at once ride one spliced stream: intact, no Data message on the links, every byte counted", async () => {
    const server = serve();
    const { alice, bob, alicePort, bobPort } = await daemons(server);
    const size = 64 * 1024 * 1024;
    const a2b = randomBytes(size);
    const b2a = randomBytes(size);
    const bobApp = await app(bobPort, own);
    const aliceApp = await app(alicePort, own);
    await eventually("both sides spliced", () => (streamOf(alice) === "spliced" && streamOf(bob) === "spliced") || undefined);
    const pump = async (a: App, data: Uint8Array) => {
      for (let at = 0; at < data.length; at += 1024 * 1024) await a.send(data.subarray(at, at + 1024 * 1024));
      a.sock.shutdown();
    };
    await Promise.all([pump(aliceApp, a2b), pump(bobApp, b2a), aliceApp.ended, bobApp.ended]);
    // Orderly at both ends (Bun folds a FIN after our own into close, so no reset is the check).
    expect(await aliceApp.closed).toBeUndefined();
    expect(await bobApp.closed).toBeUndefined();
    expect(sha256hex(bobApp.received())).toBe(sha256hex(a2b));
    expect(sha256hex(aliceApp.received())).toBe(sha256hex(b2a));
    // Not one byte as Data on either daemon's link; the relay moved them all on its splice.
    expect(alice.status().counters.relay.txBytes).toBe(0);
    expect(bob.status().counters.relay.rxBytes).toBe(0);
    await eventually("the relay's stream to finish", () => (server.stats().streams.active === 0 && server.stats().streams.bytes > 0) || undefined);
    expect(server.stats().streams).toMatchObject({ paired: 1, active: 0, waiting: 0, bytes: 2 * size, resets: 0 });
    await eventually("the tunnels to be free again, their bytes counted", () => {
      const t = alice.status().tunnels[0];
      return (t !== undefined && t.stream === undefined && t.out === null && t.in === null && streamOf(bob) === undefined) || undefined;
    });
    expect(alice.status().counters.stream).toEqual({ connections: 1, txBytes: size, rxBytes: size });
    expect(bob.status().counters.stream).toEqual({ connections: 1, txBytes: size, rxBytes: size });
    expect(alice.tunnel(CHANNEL)?.counters).toMatchObject({ connections: 1, txBytes: size, rxBytes: size, resets: 0 });
    await eventually("the sender's Close at the relay", () => server.sessionCount === 0 || undefined);
    // The tunnel takes the next connection the same way.
    const again = randomBytes(100_000);
    const bob2 = await app(bobPort, own);
    const alice2 = await app(alicePort, own);
    await alice2.send(again);
    alice2.sock.shutdown();
    await bob2.ended;
    expect(sha256hex(bob2.received())).toBe(sha256hex(again));
    bob2.sock.shutdown();
    await alice2.ended;
    expect(server.stats().streams.paired).toBe(2);
  }, 60_000);

  test("what the sender writes before the receiver's application connects waits in the kernel and all arrives", async () => {
    const server = serve();
    const { alice, alicePort, bobPort } = await daemons(server);
    const early = randomBytes(3 * 1024 * 1024);
    const aliceApp = await app(alicePort, own);
    const sending = aliceApp.send(early).then(() => aliceApp.sock.shutdown());
    await eventually("alice attaching", () => streamOf(alice) === "attaching" || undefined);
    await Bun.sleep(300);
    const bobApp = await app(bobPort, own);
    await sending;
    await eventually("every early byte at bob's application", () => bobApp.bytes() >= early.byteLength || undefined);
    await bobApp.ended;
    expect(bobApp.finSeen()).toBe(true);
    expect(sha256hex(bobApp.received())).toBe(sha256hex(early));
    bobApp.sock.shutdown();
    await aliceApp.closed;
  }, 30_000);

  test("an application's reset becomes a reset at the other end, never a FIN", async () => {
    const server = serve();
    const { alice, alicePort, bobPort } = await daemons(server);
    const bobApp = await app(bobPort, own);
    const aliceApp = await app(alicePort, own);
    await aliceApp.send(text("partial"));
    await eventually("bob to get the first bytes", () => bobApp.bytes() >= 7 || undefined);
    aliceApp.sock.terminate();
    const err = await bobApp.closed;
    expect(bobApp.finSeen()).toBe(false);
    expect(err).toBeDefined();
    await eventually("alice to count the reset", () => ((alice.tunnel(CHANNEL)?.counters.resets ?? 0) > 0 && server.stats().streams.resets === 1) || undefined);
    await eventually("the session to be gone on the relay", () => server.sessionCount === 0 || undefined);
  }, 30_000);

  test("a relay that stops mid-stream resets both applications", async () => {
    const server = serve();
    const { alice, bob, alicePort, bobPort } = await daemons(server);
    const bobApp = await app(bobPort, own);
    const aliceApp = await app(alicePort, own);
    await eventually("both sides spliced", () => (streamOf(alice) === "spliced" && streamOf(bob) === "spliced") || undefined);
    await aliceApp.send(randomBytes(1024 * 1024));
    await server.close();
    const [ea, eb] = await Promise.all([aliceApp.closed, bobApp.closed]);
    expect(aliceApp.finSeen()).toBe(false);
    expect(bobApp.finSeen()).toBe(false);
    expect(ea).toBeDefined();
    expect(eb).toBeDefined();
  }, 30_000);

  test("both applications connecting at once (crossed Opens): one stream, both ways intact, every time", async () => {
    const server = serve();
    const { alicePort, bobPort } = await daemons(server);
    for (let round = 0; round < 5; round++) {
      const [aliceApp, bobApp] = await Promise.all([app(alicePort, own), app(bobPort, own)]);
      const a2b = randomBytes(200_000 + round);
      const b2a = randomBytes(300_000 + round);
      await Promise.all([aliceApp.send(a2b), bobApp.send(b2a)]);
      aliceApp.sock.shutdown();
      bobApp.sock.shutdown();
      await Promise.all([aliceApp.ended, bobApp.ended]);
      expect(sha256hex(bobApp.received())).toBe(sha256hex(a2b));
      expect(sha256hex(aliceApp.received())).toBe(sha256hex(b2a));
      expect(await aliceApp.closed).toBeUndefined();
      expect(await bobApp.closed).toBeUndefined();
      await eventually("the sessions to end", () => server.sessionCount === 0 || undefined);
    }
    expect(server.stats().streams.paired).toBe(5);
  }, 60_000);

  test("a receiver on the WebSocket takes Data: the session is a message session, intact", async () => {
    const server = serve();
    const { alice, alicePort, bobPort } = await daemons(server, { bob: { linkMode: "ws" } });
    const bobApp = await app(bobPort, own);
    const aliceApp = await app(alicePort, own);
    const body = randomBytes(2 * 1024 * 1024);
    await aliceApp.send(body);
    aliceApp.sock.shutdown();
    await eventually("bob's bytes", () => bobApp.bytes() >= body.byteLength || undefined);
    expect(sha256hex(bobApp.received())).toBe(sha256hex(body));
    expect(alice.status().counters.relay.txBytes).toBeGreaterThanOrEqual(body.byteLength);
    expect(server.stats().streams.paired).toBe(0);
  }, 30_000);

  test("attaches the relay refuses: no such stream session, not a party, a bad frame, bytes before the answer", async () => {
    const server = serve();
    const refusal = async (user: keyof typeof tokens, frame: Uint8Array): Promise<string> => {
      const c = await raw(server.linkPort);
      c.write(authFrame(user));
      await eventually("200 ok", () => c.frames.length >= 1 || undefined);
      c.write(frame);
      await eventually("an answer", () => c.frames.length >= 2 || undefined);
      const status = statusOf(c.frames[1]);
      await c.closed;
      return `${status?.status} ${status?.text}`;
    };
    expect(await refusal("alice", attachFrame("nosuchsession"))).toMatch(/^404 /);
    expect(await refusal("alice", attachFrame("nosuchsession", "k".repeat(24)))).toMatch(/^404 /);
    expect(await refusal("alice", encodeFrame(new Uint8Array([0xfe, 0x20, 0x21])))).toMatch(/^400 an attach frame/);
    const attachThenBytes = new Uint8Array([...attachFrame("abc"), 1, 2, 3]);
    expect(await refusal("alice", attachThenBytes)).toMatch(/^400 nothing may follow/);
    // A live stream session between alice and bob: mallory is no party, and a second sender attach is refused.
    const { alice, alicePort, bobPort } = await daemons(server);
    const aliceApp = await app(alicePort, own);
    await eventually("alice attaching", () => streamOf(alice) === "attaching" || undefined);
    const sid = alice.status().tunnels[0]?.out?.sid ?? "";
    expect(sid).not.toBe("");
    expect(await refusal("mallory", attachFrame(sid))).toMatch(/^403 /);
    expect(await refusal("alice", attachFrame(sid))).toMatch(/^409 /);
    expect(server.stats().connections).toBe(2);
    // Still pairs: the refusals changed nothing for the real parties.
    const bobApp = await app(bobPort, own);
    await aliceApp.send(text("still fine"));
    aliceApp.sock.shutdown();
    await bobApp.ended;
    expect(bobApp.received().toString()).toBe("still fine");
  }, 30_000);

  test("a second application connection while one is spliced is refused, and the spliced one goes on intact", async () => {
    const server = serve();
    const { alice, bob, alicePort, bobPort } = await daemons(server);
    const bobApp = await app(bobPort, own);
    const aliceApp = await app(alicePort, own);
    await eventually("both sides spliced", () => (streamOf(alice) === "spliced" && streamOf(bob) === "spliced") || undefined);
    const intruder = await app(alicePort, own);
    await intruder.ended;
    expect(intruder.finSeen()).toBe(true);
    expect(intruder.bytes()).toBe(0);
    intruder.sock.end();
    const body = randomBytes(1024 * 1024);
    await aliceApp.send(body);
    aliceApp.sock.shutdown();
    await eventually("bob's bytes", () => bobApp.bytes() >= body.byteLength || undefined);
    expect(sha256hex(bobApp.received())).toBe(sha256hex(body));
    bobApp.sock.shutdown();
    expect(await aliceApp.closed).toBeUndefined();
    expect(alice.tunnel(CHANNEL)?.counters.resets).toBe(0);
  }, 30_000);

  test("a session holds at most MAX_RECEIVER_ATTACHES receivers' attaches; one that goes frees its place", async () => {
    const server = serve();
    const { alice, alicePort, bobPort } = await daemons(server);
    const aliceApp = await app(alicePort, own);
    await eventually("alice attaching", () => streamOf(alice) === "attaching" || undefined);
    const sid = alice.status().tunnels[0]?.out?.sid ?? "";
    // Bob accepted the stream; attaches as bob with keys of their own wait (they could be bob's Accept's)…
    const held: Raw[] = [];
    for (let i = 0; i < MAX_RECEIVER_ATTACHES; i++) {
      const c = await raw(server.linkPort);
      c.write(authFrame("bob"));
      await eventually("200 ok", () => c.frames.length >= 1 || undefined);
      c.write(attachFrame(sid, `bogus${i}`.padEnd(16, "x")));
      held.push(c);
    }
    await eventually("the attaches held", () => server.stats().streams.waiting === 1 + MAX_RECEIVER_ATTACHES || undefined);
    const extra = await raw(server.linkPort);
    extra.write(authFrame("bob"));
    await eventually("200 ok", () => extra.frames.length >= 1 || undefined);
    extra.write(attachFrame(sid, "one-too-many-key"));
    await eventually("the refusal", () => extra.frames.length >= 2 || undefined);
    expect(statusOf(extra.frames[1])?.status).toBe(429);
    // They go; bob's daemon's own attach then pairs.
    for (const c of held) c.sock.terminate();
    await eventually("their places freed", () => server.stats().streams.waiting === 1 || undefined);
    const bobApp = await app(bobPort, own);
    await aliceApp.send(text("through"));
    aliceApp.sock.shutdown();
    await bobApp.ended;
    expect(bobApp.received().toString()).toBe("through");
  }, 30_000);

  test("switchboard rules: the first Accept decides; a stream has one receiver, and its leaving ends the session", async () => {
    const server = serve();
    const join = async (user: "alice" | "bob") => {
      const p = await HotlinkPeer.open(server.url, user, tokens[user], peers, "tcp");
      p.send({ t: MessageType.Hello, v: PROTOCOL_VERSION });
      expect((await p.take(MessageType.Welcome)).stm).toBe(true);
      return p;
    };
    const alice = await join("alice");
    const bob1 = await join("bob");
    const bob2 = await join("bob");
    // A stream session: both of bob's connections get the Open with stm.
    alice.send({ t: MessageType.Open, sid: "s1", pth: CHANNEL, to: "bob", stm: true });
    expect((await bob1.take(MessageType.Open)).stm).toBe(true);
    expect((await bob2.take(MessageType.Open)).stm).toBe(true);
    bob1.send({ t: MessageType.Accept, sid: "s1", stm: true, stk: "key-of-bob1-0000" });
    expect(await alice.take(MessageType.Accept)).toMatchObject({ sid: "s1", frm: "bob", stm: true });
    // The stream receiver leaves while bob2 is still offered the session: it ends, the sender is told, bob2 too.
    bob1.send({ t: MessageType.Close, sid: "s1", rsn: "gone" });
    expect(await alice.take(MessageType.Close, (m) => m.sid === "s1")).toMatchObject({ rsn: "gone" });
    expect(await bob2.take(MessageType.Close, (m) => m.sid === "s1")).toMatchObject({ rsn: "the session's stream receiver left" });
    await eventually("no session", () => server.sessionCount === 0 || undefined);
    // A second receiver of a stream is refused (and the key is not forwarded).
    alice.send({ t: MessageType.Open, sid: "s3", pth: CHANNEL, to: "bob", stm: true });
    await bob1.take(MessageType.Open, (m) => m.sid === "s3");
    await bob2.take(MessageType.Open, (m) => m.sid === "s3");
    bob1.send({ t: MessageType.Accept, sid: "s3", stm: true, stk: "key-of-bob1-0001" });
    const accept = await alice.take(MessageType.Accept, (m) => m.sid === "s3");
    expect(accept.stk).toBeUndefined();
    bob2.send({ t: MessageType.Accept, sid: "s3", stm: true, stk: "key-of-bob2-0000" });
    expect(await bob2.take(MessageType.Error, (m) => m.sid === "s3")).toMatchObject({ code: "protocol" });
    alice.send({ t: MessageType.Close, sid: "s3" });
    // A session whose first Accept took Data has no stream: an stm Accept after it is refused.
    alice.send({ t: MessageType.Open, sid: "s2", pth: CHANNEL, to: "bob", stm: true });
    await bob1.take(MessageType.Open, (m) => m.sid === "s2");
    await bob2.take(MessageType.Open, (m) => m.sid === "s2");
    bob1.send({ t: MessageType.Accept, sid: "s2" });
    const plain = await alice.take(MessageType.Accept, (m) => m.sid === "s2");
    expect(plain.stm).toBeUndefined();
    bob2.send({ t: MessageType.Accept, sid: "s2", stm: true, stk: "key-of-bob2-0001" });
    expect(await bob2.take(MessageType.Error, (m) => m.sid === "s2")).toMatchObject({ code: "protocol" });
    // bob1 still receives Data on it.
    alice.send({ t: MessageType.Data, sid: "s2", seq: 1, pay: text("data") });
    expect((await bob1.take(MessageType.Data)).seq).toBe(1);
  }, 30_000);

  test("parseAttachFrame: a sid, a key for a receiver; anything else (random bytes included) is null, never a throw", () => {
    expect(parseAttachFrame(attachFrame("abc_DEF-1"))).toEqual({ sid: "abc_DEF-1", key: null });
    expect(parseAttachFrame(attachFrame("s", "K".repeat(16)))).toEqual({ sid: "s", key: "K".repeat(16) });
    expect(parseAttachFrame(attachFrame("s", "K".repeat(15)))).toBeNull();
    expect(parseAttachFrame(attachFrame("s".repeat(65)))).toBeNull();
    expect(parseAttachFrame(attachFrame("a b"))).toBeNull();
    expect(parseAttachFrame(encodeFrame(new Uint8Array([0xff, 0x61])))).toBeNull();
    const rng = prng(fuzzSeed(0xa77a));
    for (let i = 0; i < 20_000; i++) {
      const body = rng.bytes(rng.int(140));
      if (rng.int(2) === 0 && body.byteLength > 0) body[0] = 0xfe;
      const got = parseAttachFrame(encodeFrame(body));
      if (got !== null) {
        expect(got.sid).toMatch(/^[A-Za-z0-9_-]{1,64}$/);
        if (got.key !== null) expect(got.key).toMatch(/^[A-Za-z0-9_-]{16,64}$/);
      }
    }
  });
});
