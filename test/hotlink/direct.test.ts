import type { Socket } from "bun";
import { afterEach, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { createLogger } from "../../src/core/log.ts";
import { HotlinkDaemon } from "../../src/hotlink/daemon.ts";
import { DIRECT_HELLO_TIMEOUT_MS, DirectReceiver, TlsPipe } from "../../src/hotlink/direct.ts";
import { PathSender, RELEASE_MIN_BYTES } from "../../src/hotlink/transport.ts";
import { encodeDirectAck, encodeDirectHello } from "../../src/hotlink/direct-wire.ts";
import { type HlnkFrame, HlnkDecoder, encodeHlnk } from "../../src/hotlink/hlnk.ts";
import { type DataMessage, MessageType } from "../../src/hotlink/protocol.ts";
import { DaemonCounters } from "../../src/hotlink/telemetry.ts";
import { TOKEN, app, checkSeedChunks, seedChunks, sha256hex, writeUntilStalled } from "../fixtures/hotlink-apps.ts";
import { eventually } from "../helpers/eventually.ts";
import { startTestRelay } from "../fixtures/hotlink-relay.ts";

const log = createLogger({ level: "error", stream: { write: () => {} } });
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const CHANNEL = "alice/mpc/direct";

/** Two daemons on a test relay with one tunnel; `advertise` overrides bob's offered addresses. */
async function pair(direct: { listen: string; advertise?: string[] }) {
  const relay = startTestRelay();
  cleanups.push(() => relay.close());
  const start = async (user: string, peer: string) => {
    const d = await HotlinkDaemon.start({
      server: relay.url,
      user,
      token: TOKEN,
      tunnels: [{ channel: CHANNEL, host: "127.0.0.1", port: 0, peer }],
      log,
      minDelayMs: 20,
      direct,
    });
    cleanups.push(() => d.close());
    await d.connected();
    return d;
  };
  const alice = await start("alice", "bob");
  const bob = await start("bob", "alice");
  return { alice, bob, alicePort: alice.tunnel(CHANNEL)?.port ?? 0, bobPort: bob.tunnel(CHANNEL)?.port ?? 0 };
}

const sha = sha256hex;
const own = (cleanup: () => void): void => void cleanups.push(cleanup);

describe("direct upgrade", () => {
  test("a reachable receiver: the session moves to a pinned TLS connection and the stream arrives intact", async () => {
    const { alice, bob, alicePort, bobPort } = await pair({ listen: "127.0.0.1" });
    const bobApp = await app(bobPort, own);
    const aliceApp = await app(alicePort, own);
    const payload = randomBytes(32 * 1024 * 1024);
    for (let at = 0; at < payload.length; at += 256 * 1024) await aliceApp.send(payload.subarray(at, at + 256 * 1024));
    aliceApp.sock.shutdown();
    bobApp.sock.shutdown();
    await bobApp.ended;
    expect(bobApp.bytes()).toBe(payload.length);
    expect(sha(bobApp.received())).toBe(sha(payload));
    const a = alice.sessions.counters.direct;
    const b = bob.sessions.counters.direct;
    expect(b.offers).toBeGreaterThanOrEqual(1);
    expect(a.answers).toBeGreaterThanOrEqual(1);
    expect(a.failures).toBe(0);
    // Most of the stream went direct (the first frames may have gone on the relay before the upgrade).
    expect(b.rxBytes).toBeGreaterThan(payload.length / 2);
    expect(a.txBytes).toBe(b.rxBytes);
  }, 60_000);

  test("the seed's 20 × 4096 tunnel test on the TLS rung: every chunk in order and intact, all on the direct connection", async () => {
    const { alice, bob, alicePort, bobPort } = await pair({ listen: "127.0.0.1" });
    const bobApp = await app(bobPort, own);
    const aliceApp = await app(alicePort, own);
    await eventually("the session to be on TLS", () => [...alice.sessions.outgoing.values()].some((s) => s.rung === "tls"), { timeoutMs: 10_000 });
    for (const c of seedChunks(20)) await aliceApp.send(c);
    await eventually("81,920 bytes at bob's application", () => bobApp.bytes() >= 20 * 4096, { timeoutMs: 10_000 });
    checkSeedChunks(bobApp.received(), 20);
    expect(bob.sessions.counters.direct.rxBytes).toBe(20 * 4096);
    expect(bob.sessions.counters.relay.rxBytes).toBe(0);
  }, 30_000);

  test("an unreachable direct address: the transfer completes over the relay with nothing lost", async () => {
    // bob listens on 127.0.0.1 but offers 127.0.0.3, where nothing listens: every dial fails.
    const { alice, bob, alicePort, bobPort } = await pair({ listen: "127.0.0.1", advertise: ["127.0.0.3"] });
    const bobApp = await app(bobPort, own);
    const aliceApp = await app(alicePort, own);
    const payload = randomBytes(8 * 1024 * 1024);
    for (let at = 0; at < payload.length; at += 64 * 1024) await aliceApp.send(payload.subarray(at, at + 64 * 1024));
    aliceApp.sock.shutdown();
    bobApp.sock.shutdown();
    await bobApp.ended;
    expect(sha(bobApp.received())).toBe(sha(payload));
    await eventually("the failed direct dial to be counted", () => alice.sessions.counters.direct.failures >= 1);
    expect(bob.sessions.counters.direct.rxBytes).toBe(0);
    expect(bob.sessions.counters.relay.rxBytes).toBe(payload.length);
  }, 60_000);

  test("the direct connection cut mid-stream: the session falls back to the relay and nothing is lost", async () => {
    const { alice, bob, alicePort, bobPort } = await pair({ listen: "127.0.0.1" });
    const bobApp = await app(bobPort, own);
    const aliceApp = await app(alicePort, own);
    const payload = randomBytes(32 * 1024 * 1024);
    let cut = false;
    for (let at = 0; at < payload.length; at += 256 * 1024) {
      await aliceApp.send(payload.subarray(at, at + 256 * 1024));
      if (!cut && at > 8 * 1024 * 1024 && bob.sessions.counters.direct.rxBytes > 0) {
        for (const out of alice.sessions.outgoing.values()) cut = out.cutDirect() || cut;
      }
    }
    expect(cut).toBe(true);
    aliceApp.sock.shutdown();
    bobApp.sock.shutdown();
    await bobApp.ended;
    expect(bobApp.bytes()).toBe(payload.length);
    expect(sha(bobApp.received())).toBe(sha(payload));
    expect(alice.sessions.counters.direct.fallbacks).toBe(1);
    // Both paths carried part of the stream.
    expect(bob.sessions.counters.direct.rxBytes).toBeGreaterThan(0);
    expect(bob.sessions.counters.relay.rxBytes).toBeGreaterThan(0);
  }, 60_000);

  test("a receiving application that stops reading pauses the sending one through the direct connection; nothing is lost", async () => {
    const { alice, bob, alicePort, bobPort } = await pair({ listen: "127.0.0.1" });
    const bobApp = await app(bobPort, own);
    const aliceApp = await app(alicePort, own);
    // Upgrade first, with bob's application reading.
    const first = randomBytes(4 * 1024 * 1024);
    await aliceApp.send(first);
    await eventually("the session on its direct connection", () => bobApp.bytes() === first.length && bob.sessions.counters.direct.rxBytes > 0, { timeoutMs: 10_000 });
    bobApp.sock.pause();
    const payload = randomBytes(160 * 1024 * 1024);
    // Accepted bytes stop growing: kernel buffers, the daemons' bounded queues and the sender's
    // unacknowledged frames (PATH_RETAIN_BYTES) fill, then alice's app is not read.
    const { accepted, pump } = await writeUntilStalled(aliceApp, payload);
    expect(accepted).toBeLessThan(100 * 1024 * 1024);
    bobApp.sock.resume();
    await pump;
    aliceApp.sock.shutdown();
    bobApp.sock.shutdown();
    await bobApp.ended;
    expect(bobApp.bytes()).toBe(first.length + payload.length);
    expect(sha(bobApp.received())).toBe(sha(Buffer.concat([first, payload])));
    expect(alice.sessions.counters.direct.fallbacks).toBe(0);
    expect(bob.sessions.counters.direct.rxBytes).toBeGreaterThan(payload.length);
  }, 90_000);
});

/** One Data of a session, as Outgoing builds it. */
const data = (seq: number, pay: Uint8Array): DataMessage => ({ t: MessageType.Data, sid: "s", seq, pay, pth: undefined, etg: undefined });

describe("the sender's retention", () => {
  test("regression (628ab60: alice at 3.7 GB RSS on a 4 GiB transfer): acknowledged payloads are let go at once, not when the retention array is compacted", async () => {
    const socket = { write: (b: Uint8Array) => b.byteLength, end() {}, terminate() {} } as unknown as Socket<undefined>;
    const sender = new PathSender("tls", new TlsPipe(socket), CHANNEL, new DaemonCounters().direct, log);
    const refs: WeakRef<Uint8Array>[] = [];
    // Fewer frames than the compaction threshold, so only the per-frame release can free them.
    for (let seq = 1; seq <= 100; seq++) {
      const pay = new Uint8Array(64 * 1024);
      refs.push(new WeakRef(pay));
      sender.sendData(data(seq, pay));
    }
    const ack = new Uint8Array(8);
    new DataView(ack.buffer).setBigUint64(0, 90n);
    sender.onAck(ack);
    expect(sender.unacknowledged().map((f) => f.seq)).toEqual([91, 92, 93, 94, 95, 96, 97, 98, 99, 100]);
    Bun.gc(true);
    await Bun.sleep(0);
    Bun.gc(true);
    const alive = refs.map((r) => r.deref() !== undefined);
    // The unacknowledged ten are kept (a fallback resends them); most acknowledged ones are gone
    // (a conservative GC may still see a stray pointer to one or two).
    expect(alive.slice(90).every((a) => a)).toBe(true);
    expect(alive.slice(0, 90).filter((a) => a).length).toBeLessThan(10);
    expect(sender.unacknowledged()).toHaveLength(10); // the sender itself stays reachable until here
  });

  test("an acknowledged payload its owner gave away whole (a tunnel's read) is freed at once; any other is left to the collector", () => {
    const socket = { write: (b: Uint8Array) => b.byteLength, end() {}, terminate() {} } as unknown as Socket<undefined>;
    const sender = new PathSender("tls", new TlsPipe(socket), CHANNEL, new DaemonCounters().direct, log);
    const big = () => new Uint8Array(RELEASE_MIN_BYTES);
    const owned = big();
    const notOwned = big();
    const small = new Uint8Array(RELEASE_MIN_BYTES - 1);
    const shared = new Uint8Array(2 * RELEASE_MIN_BYTES);
    const view = shared.subarray(0, RELEASE_MIN_BYTES); // a view into a buffer that holds more
    const unacked = big();
    sender.sendData(data(1, owned), true);
    sender.sendData(data(2, notOwned));
    sender.sendData(data(3, small), true);
    sender.sendData(data(4, view), true);
    sender.sendData(data(5, unacked), true);
    const ack = (seq: number) => {
      const bytes = new Uint8Array(8);
      new DataView(bytes.buffer).setBigUint64(0, BigInt(seq));
      return bytes;
    };
    sender.onAck(ack(4));
    expect(owned.buffer.detached).toBe(true);
    expect([notOwned, small, view].map((b) => b.buffer.detached)).toEqual([false, false, false]);
    expect(shared.byteLength).toBe(2 * RELEASE_MIN_BYTES);
    // Not acknowledged: kept whole, for a fallback to resend.
    expect(unacked.buffer.detached).toBe(false);
    expect(sender.unacknowledged().map((f) => f.pay.byteLength)).toEqual([RELEASE_MIN_BYTES]);
  });

  test("a path that was left (the session moved on or fell back) frees nothing: its frames may be in the next path's queue", () => {
    const socket = { write: (b: Uint8Array) => b.byteLength, end() {}, terminate() {} } as unknown as Socket<undefined>;
    const first = new PathSender("ice", new TlsPipe(socket), CHANNEL, new DaemonCounters().direct, log);
    const next = new PathSender("tls", new TlsPipe(socket), CHANNEL, new DaemonCounters().direct, log);
    const pay = new Uint8Array(RELEASE_MIN_BYTES);
    first.sendData(data(1, pay), true);
    // As Outgoing.#adopt does: the first path is failed, its unacknowledged frames go again on the next.
    first.failed = true;
    for (const f of first.unacknowledged()) next.sendData(f);
    const ack = new Uint8Array(8);
    new DataView(ack.buffer).setBigUint64(0, 1n);
    first.onAck(ack); // a late acknowledgement on the path left
    expect(pay.buffer.detached).toBe(false);
    next.onAck(ack); // resent without ownership: the next path does not free it either
    expect(pay.buffer.detached).toBe(false);
  });
});

/** A logger whose lines the test can read. */
function capturedLog() {
  const lines: string[] = [];
  return { lines, log: createLogger({ level: "warn", stream: { write: (line: string) => void lines.push(line) } }) };
}

describe("the receiver's hello", () => {
  const SID = "0b5e3c9a-6a55-4f4e-9b8f-1d2c3b4a5f60";

  function listen() {
    const { lines, log: warnings } = capturedLog();
    const frames: DataMessage[] = [];
    const receiver = DirectReceiver.start(
      SID,
      CHANNEL,
      { listen: "127.0.0.1", advertise: ["127.0.0.1"], log: warnings, counters: new DaemonCounters() },
      { data: (m) => void frames.push(m), delivered: () => frames.length },
    );
    if (receiver === null) throw new Error("no direct listener");
    own(() => receiver.close());
    return { receiver, frames, lines, port: Number(receiver.offer.adr[0]?.split(":")[1]) };
  }

  /** Dials the receiver and writes `chunks` one by one, a moment apart; resolves with what came back. */
  async function dial(port: number, chunks: Uint8Array[]) {
    const received: Uint8Array[] = [];
    const closed = Promise.withResolvers<void>();
    const ready = Promise.withResolvers<Socket<undefined>>();
    await Bun.connect({
      hostname: "127.0.0.1",
      port,
      tls: { rejectUnauthorized: false, serverName: "stoa-hotlink" },
      socket: {
        handshake: (s) => ready.resolve(s),
        data: (_s, d) => void received.push(new Uint8Array(d)),
        close: () => closed.resolve(),
        error: (s) => s.terminate(),
      },
    });
    const socket = await ready.promise;
    own(() => socket.terminate());
    socket.setNoDelay(true);
    for (const chunk of chunks) {
      socket.write(chunk);
      await Bun.sleep(5);
    }
    return { socket, received, closed: closed.promise };
  }

  test("a hello split over many writes, then HLNK frames: accepted, delivered and acknowledged", async () => {
    const { receiver, frames, port } = listen();
    const hello = encodeDirectHello(SID, receiver.offer.tok);
    const frame = encodeHlnk({ path: CHANNEL, seq: 1n, payload: new Uint8Array([1, 2, 3]) });
    const chunks = [...Array.from(hello.subarray(0, 12), (b) => Uint8Array.of(b)), Buffer.concat([hello.subarray(12), frame.subarray(0, 5)]), frame.subarray(5)];
    const conn = await dial(port, chunks);
    await eventually("the frame and its acknowledgement", () => frames.length === 1 && conn.received.length > 0, { timeoutMs: 10_000 });
    expect(receiver.connected).toBe(true);
    expect(frames[0]).toMatchObject({ sid: SID, seq: 1, pay: new Uint8Array([1, 2, 3]) });
    expect(Buffer.concat(conn.received).equals(Buffer.from(encodeDirectAck(1)))).toBe(true);
  });

  test("a malformed hello is refused at its first wrong byte, with the reason in the log", async () => {
    const { receiver, lines, port } = listen();
    const conn = await dial(port, [Buffer.from(`HLD1 ${SID} ${receiver.offer.tok}\r\n`, "latin1")]);
    await conn.closed;
    expect(receiver.connected).toBe(false);
    expect(lines.join("")).toContain("its hello is malformed");
    expect(lines.join("")).toContain("byte 0x0d is not allowed");
  });

  test("a connection that never completes its hello is closed after DIRECT_HELLO_TIMEOUT_MS", async () => {
    const { receiver, lines, port } = listen();
    const conn = await dial(port, [Buffer.from(`HLD1 ${SID}`, "latin1")]);
    const outcome = await Promise.race([conn.closed.then(() => "closed"), Bun.sleep(DIRECT_HELLO_TIMEOUT_MS + 3_000).then(() => "still open")]);
    expect(outcome).toBe("closed");
    expect(receiver.connected).toBe(false);
    expect(lines.join("")).toContain("sent no complete hello in time");
  }, DIRECT_HELLO_TIMEOUT_MS + 10_000);

  test("a well-formed hello with another token is refused, and the token stays usable", async () => {
    const { receiver, lines, port } = listen();
    const wrong = await dial(port, [encodeDirectHello(SID, "x".repeat(receiver.offer.tok.length))]);
    await wrong.closed;
    expect(lines.join("")).toContain("wrong session or token");
    expect(receiver.connected).toBe(false);
    await dial(port, [encodeDirectHello(SID, receiver.offer.tok)]);
    await eventually("the right token to be accepted", () => receiver.connected, { timeoutMs: 10_000 });
  });
});

describe("the sender's acknowledgements", () => {
  test("a malformed acknowledgement cuts the connection (the session falls back) and says why", () => {
    let cut = 0;
    const socket = { write: (b: Uint8Array) => b.byteLength, end() {}, terminate: () => void cut++ } as unknown as Socket<undefined>;
    const { lines, log: warnings } = capturedLog();
    const sender = new PathSender("tls", new TlsPipe(socket), CHANNEL, new DaemonCounters().direct, warnings);
    for (let seq = 1; seq <= 3; seq++) sender.sendData(data(seq, new Uint8Array(10)));
    sender.onAck(Buffer.concat([encodeDirectAck(2), encodeDirectAck(2).subarray(0, 3)]));
    expect(sender.unacknowledged().map((f) => f.seq)).toEqual([3]);
    expect(cut).toBe(0);
    sender.onAck(encodeDirectAck(2).subarray(3)); // completes a second "2": no progress
    expect(cut).toBe(1);
    expect(lines.join("")).toContain("malformed acknowledgement");
    expect(lines.join("")).toContain("does not advance past 2");
    expect(sender.unacknowledged().map((f) => f.seq)).toEqual([3]); // kept for the relay
  });
});

describe("HLNK IPC channels on the TLS rung", () => {
  const channel = "alice/bench/ipc";

  async function ipcPair() {
    const relay = startTestRelay();
    cleanups.push(() => relay.close());
    const dir = mkdtempSync("/tmp/hl-ipc-");
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const start = async (user: string) => {
      const d = await HotlinkDaemon.start({
        server: relay.url, user, token: TOKEN, ipc: [{ channel, path: join(dir, `${user}.sock`) }], log, minDelayMs: 20, direct: { listen: "127.0.0.1" },
      });
      cleanups.push(() => d.close());
      await d.connected();
      return d;
    };
    const alice = await start("alice");
    const bob = await start("bob");
    return { alice, bob, dir };
  }

  async function reader(path: string) {
    const dec = new HlnkDecoder();
    const frames: HlnkFrame[] = [];
    const s = await Bun.connect({ unix: path, socket: { data: (_s, d) => void frames.push(...dec.push(d)) } });
    cleanups.push(() => s.terminate());
    return frames;
  }

  /** Frames of 1 MiB and more (each spans the TLS connection's reads at bob), with small ones between. */
  function frames(count: number, from = 0) {
    return Array.from({ length: count }, (_, i) => ({
      path: i % 3 === 0 ? `${channel}/sub` : channel,
      etag: `e${from + i}`,
      seq: BigInt(from + i),
      payload: i % 4 === 3 ? randomBytes(100) : randomBytes(1024 * 1024 + i * 4099),
    }));
  }

  test("large frames spanning the connection's reads reach the application whole, in order and intact (head, then the payload's pieces)", async () => {
    const { alice, bob, dir } = await ipcPair();
    const got = await reader(join(dir, "bob.sock"));
    const w = await Bun.connect({ unix: join(dir, "alice.sock"), socket: { data: () => {} } });
    cleanups.push(() => w.terminate());
    // Until the session is on TLS, then the frames that are checked.
    w.write(encodeHlnk({ path: channel, seq: 0n, payload: new Uint8Array(10) }));
    await eventually("the session on TLS", () => [...alice.sessions.outgoing.values()].some((s) => s.rung === "tls"), { timeoutMs: 10_000 });
    await eventually("the first frame", () => got.length === 1);
    const sent = frames(24, 1);
    const sink = writeAll(w, sent.map((f) => encodeHlnk(f)));
    await eventually("24 more frames at bob's application", () => got.length === 25, { timeoutMs: 30_000 });
    await sink;
    sent.forEach((f, i) => {
      const g = got[i + 1] as HlnkFrame;
      expect([g.path, g.etag]).toEqual([f.path, f.etag]);
      expect(g.payload.byteLength).toBe(f.payload.byteLength);
      expect(sha(g.payload)).toBe(sha(f.payload));
    });
    expect(bob.sessions.counters.direct.rxBytes).toBeGreaterThan(18 * 1024 * 1024);
  }, 60_000);

  test("large frames that arrive before any application connects are held as they came, and delivered whole when one does", async () => {
    const { alice, dir } = await ipcPair();
    const w = await Bun.connect({ unix: join(dir, "alice.sock"), socket: { data: () => {} } });
    cleanups.push(() => w.terminate());
    w.write(encodeHlnk({ path: channel, seq: 0n, payload: new Uint8Array(10) }));
    await eventually("the session on TLS", () => [...alice.sessions.outgoing.values()].some((s) => s.rung === "tls"), { timeoutMs: 10_000 });
    const sent = frames(8, 1);
    await writeAll(w, sent.map((f) => encodeHlnk(f)));
    await Bun.sleep(300);
    const got = await reader(join(dir, "bob.sock"));
    await eventually("the held frames at the application", () => got.length === 9, { timeoutMs: 10_000 });
    sent.forEach((f, i) => {
      const g = got[i + 1] as HlnkFrame;
      expect([g.path, g.etag, g.payload.byteLength]).toEqual([f.path, f.etag, f.payload.byteLength]);
      expect(sha(g.payload)).toBe(sha(f.payload));
    });
  }, 60_000);
});

/** Writes `chunks` in order through short writes, waiting for drain. */
async function writeAll(s: Socket<undefined>, chunks: Uint8Array[]): Promise<void> {
  for (const chunk of chunks) {
    let rest = chunk;
    while (rest.byteLength > 0) {
      const n = s.write(rest);
      rest = rest.subarray(Math.max(0, n));
      if (rest.byteLength > 0) await Bun.sleep(1);
    }
  }
}
