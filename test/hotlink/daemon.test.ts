import { afterEach, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { createLogger } from "../../src/core/log.ts";
import { HotlinkDaemon } from "../../src/hotlink/daemon.ts";
import { HlnkDecoder, encodeHlnk } from "../../src/hotlink/hlnk.ts";
import { type App, TOKEN, app, checkSeedChunks, seedChunks, sha256hex } from "../fixtures/hotlink-apps.ts";
import { type Misbehaviour, startTestRelay } from "../fixtures/hotlink-relay.ts";
import { eventually } from "../helpers/eventually.ts";

const log = createLogger({ level: "error", stream: { write: () => {} } });
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const CHANNEL = "alice/mpc/run1/0_to_1";

async function pair(misbehave?: Misbehaviour, logger = log) {
  const relay = startTestRelay(misbehave);
  cleanups.push(() => relay.close());
  const start = async (user: string, peer: string) => {
    const d = await HotlinkDaemon.start({
      server: relay.url,
      user,
      token: TOKEN,
      tunnels: [{ channel: CHANNEL, host: "127.0.0.1", port: 0, peer }],
      log: logger,
      minDelayMs: 20,
    });
    cleanups.push(() => d.close());
    await d.connected();
    return d;
  };
  const alice = await start("alice", "bob");
  const bob = await start("bob", "alice");
  const port = (d: HotlinkDaemon) => d.tunnel(CHANNEL)?.port ?? 0;
  return { relay, alice, bob, alicePort: port(alice), bobPort: port(bob) };
}

const sha = sha256hex;
const own = (cleanup: () => void): void => void cleanups.push(cleanup);

describe("tunnels over the relay", () => {
  test("the seed's acceptance test: 20 × 4096-byte chunks, bob's app connected first, all in order", async () => {
    const { alicePort, bobPort, bob } = await pair();
    const bobApp = await app(bobPort, own);
    await eventually("bob's session to be open", () => bob.tunnel(CHANNEL)?.status().out?.state === "open");
    const aliceApp = await app(alicePort, own);
    for (const c of seedChunks(20)) await aliceApp.send(c);
    await eventually("bob's app to read 81,920 bytes", () => bobApp.bytes() >= 81_920);
    await Bun.sleep(50); // nothing more may arrive: checkSeedChunks checks the length too
    checkSeedChunks(bobApp.received(), 20);
  });

  test("data sent before the receiving application connects is held and delivered when it connects", async () => {
    const { alicePort, bobPort, bob } = await pair();
    const aliceApp = await app(alicePort, own);
    for (const c of seedChunks(50)) await aliceApp.send(c);
    await eventually("bob's daemon to hold everything", () => (bob.tunnel(CHANNEL)?.status().held ?? 0) === 50 * 4096);
    const bobApp = await app(bobPort, own);
    await eventually("bob's app to get the held bytes", () => bobApp.bytes() >= 50 * 4096);
    checkSeedChunks(bobApp.received(), 50);
  });

  test("a relay that permutes and duplicates Data messages: the stream still arrives intact", async () => {
    const { relay, alicePort, bobPort } = await pair({ window: 8, duplicate: 0.2, seed: 7 });
    const bobApp = await app(bobPort, own);
    const aliceApp = await app(alicePort, own);
    const payload = randomBytes(4 * 1024 * 1024);
    // Small writes, so that there are many Data messages to shuffle.
    for (let at = 0; at < payload.length; at += 16 * 1024) await aliceApp.send(payload.subarray(at, at + 16 * 1024));
    aliceApp.sock.shutdown();
    await bobApp.ended;
    expect(bobApp.bytes()).toBe(payload.length);
    expect(sha(bobApp.received())).toBe(sha(payload));
    // How many Data messages there are depends on how TCP coalesced the writes; some always are.
    expect(relay.mischief.reordered).toBeGreaterThan(0);
    expect(relay.mischief.duplicated).toBeGreaterThan(0);
  });

  test("64 MiB of random bytes both ways at once arrive intact (SHA-256), and FINs end both sides", async () => {
    const { relay, alicePort, bobPort } = await pair();
    const bobApp = await app(bobPort, own);
    const aliceApp = await app(alicePort, own);
    const size = 64 * 1024 * 1024;
    const a2b = randomBytes(size);
    const b2a = randomBytes(size);
    const send = async (a: App, data: Uint8Array) => {
      for (let at = 0; at < data.length; at += 256 * 1024) await a.send(data.subarray(at, at + 256 * 1024));
      a.sock.shutdown();
    };
    await Promise.all([send(aliceApp, a2b), send(bobApp, b2a), aliceApp.ended, bobApp.ended]);
    const got = bobApp.received();
    expect(got.byteLength).toBe(size);
    let first = -1;
    for (let i = 0; i < size; i++) if (got[i] !== a2b[i]) { first = i; break; }
    expect(first).toBe(-1);
    expect(sha(bobApp.received())).toBe(sha(a2b));
    expect(sha(aliceApp.received())).toBe(sha(b2a));
    await Promise.all([aliceApp.closed, bobApp.closed]);
    await eventually("the relay to hold no session", () => relay.sessions() === 0, { timeoutMs: 10_000 });
  }, 120_000);

  test("a reset application connection resets the peer's application connection", async () => {
    const { alicePort, bobPort } = await pair();
    const bobApp = await app(bobPort, own);
    const aliceApp = await app(alicePort, own);
    await aliceApp.send(new Uint8Array(1000));
    await eventually("the first bytes", () => bobApp.bytes() === 1000);
    aliceApp.sock.terminate();
    // A FIN would tell bob's application that alice's stream ended complete.
    await bobApp.ended;
    expect(bobApp.finSeen()).toBe(false);
    expect(await bobApp.closed).toBeInstanceOf(Error);
  });

  test("a server application that answers and ends: the client gets the whole answer and a FIN, no reset, no warning (regression: the tunnel's own close of the incoming session was logged as the peer's abnormal end)", async () => {
    const lines: string[] = [];
    const { alice, bob, alicePort, bobPort } = await pair(undefined, createLogger({ level: "warn", stream: { write: (l: string) => void lines.push(l) } }));
    const server = await app(bobPort, own);
    const client = await app(alicePort, own);
    const answer = randomBytes(8 * 1024 * 1024);
    await client.send(new TextEncoder().encode("GET /\n"));
    await eventually("the request at the server", () => server.bytes() === 6);
    await server.send(answer);
    server.sock.end();
    await client.ended;
    expect(client.bytes()).toBe(answer.length);
    expect(sha(client.received())).toBe(sha(answer));
    // The client ends its side too; then both connections close in order.
    client.sock.end();
    await Promise.all([client.closed, server.closed]);
    for (const d of [alice, bob]) expect(d.tunnel(CHANNEL)?.counters.resets).toBe(0);
    await Promise.all([alice.close(), bob.close()]);
    expect(lines).toEqual([]);
  });

  test("a second application connection on a busy tunnel is refused, the first goes on", async () => {
    const { alicePort, bobPort } = await pair();
    const bobApp = await app(bobPort, own);
    const first = await app(alicePort, own);
    const second = await app(alicePort, own);
    await second.ended;
    await first.send(new Uint8Array(10).fill(1));
    await eventually("bytes from the first connection", () => bobApp.bytes() === 10);
  });
});

describe("HLNK IPC channels over the relay", () => {
  test("frames written to alice's socket reach every application on bob's socket, in order", async () => {
    const relay = startTestRelay();
    cleanups.push(() => relay.close());
    const dir = mkdtempSync("/tmp/hl-");
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const channel = "alice/bench/ipc";
    const start = async (user: string) => {
      const d = await HotlinkDaemon.start({ server: relay.url, user, token: TOKEN, ipc: [{ channel, path: join(dir, `${user}.sock`) }], log, minDelayMs: 20 });
      cleanups.push(() => d.close());
      await d.connected();
      return d;
    };
    await start("alice");
    await start("bob");
    const reader = async () => {
      const dec = new HlnkDecoder();
      const frames: { path: string; payload: Uint8Array }[] = [];
      const s = await Bun.connect({ unix: join(dir, "bob.sock"), socket: { data: (_s, d) => void frames.push(...dec.push(d)) } });
      cleanups.push(() => s.terminate());
      return frames;
    };
    const r1 = await reader();
    const r2 = await reader();
    const w = await Bun.connect({ unix: join(dir, "alice.sock"), socket: { data: () => {} } });
    cleanups.push(() => w.terminate());
    for (let i = 0; i < 100; i++) {
      w.write(encodeHlnk({ path: i % 2 === 0 ? channel : `${channel}/sub`, etag: `e${i}`, seq: BigInt(i), payload: new Uint8Array(100).fill(i) }));
    }
    await eventually("both readers to get 100 frames", () => r1.length === 100 && r2.length === 100);
    for (const frames of [r1, r2]) {
      frames.forEach((f, i) => {
        expect(f.path).toBe(i % 2 === 0 ? channel : `${channel}/sub`);
        expect(f.payload[0]).toBe(i);
      });
    }
  });
});
