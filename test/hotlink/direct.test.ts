import { afterEach, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { createLogger } from "../../src/core/log.ts";
import { HotlinkDaemon } from "../../src/hotlink/daemon.ts";
import { TOKEN, app, sha256hex } from "../fixtures/hotlink-apps.ts";
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
    const a = alice.link.counters.direct;
    const b = bob.link.counters.direct;
    expect(b.offers).toBeGreaterThanOrEqual(1);
    expect(a.answers).toBeGreaterThanOrEqual(1);
    expect(a.failures).toBe(0);
    // Most of the stream went direct (the first frames may have gone on the relay before the upgrade).
    expect(b.rxBytes).toBeGreaterThan(payload.length / 2);
    expect(a.txBytes).toBe(b.rxBytes);
  }, 60_000);

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
    const deadline = Date.now() + 5_000;
    while (alice.link.counters.direct.failures === 0 && Date.now() < deadline) await Bun.sleep(10);
    expect(alice.link.counters.direct.failures).toBeGreaterThanOrEqual(1);
    expect(bob.link.counters.direct.rxBytes).toBe(0);
    expect(bob.link.counters.relay.rxBytes).toBe(payload.length);
  }, 60_000);

  test("the direct connection cut mid-stream: the session falls back to the relay and nothing is lost", async () => {
    const { alice, bob, alicePort, bobPort } = await pair({ listen: "127.0.0.1" });
    const bobApp = await app(bobPort, own);
    const aliceApp = await app(alicePort, own);
    const payload = randomBytes(32 * 1024 * 1024);
    let cut = false;
    for (let at = 0; at < payload.length; at += 256 * 1024) {
      await aliceApp.send(payload.subarray(at, at + 256 * 1024));
      if (!cut && at > 8 * 1024 * 1024 && bob.link.counters.direct.rxBytes > 0) {
        for (const out of alice.link.outgoing.values()) cut = out.cutDirect() || cut;
      }
    }
    expect(cut).toBe(true);
    aliceApp.sock.shutdown();
    bobApp.sock.shutdown();
    await bobApp.ended;
    expect(bobApp.bytes()).toBe(payload.length);
    expect(sha(bobApp.received())).toBe(sha(payload));
    expect(alice.link.counters.direct.fallbacks).toBe(1);
    // Both paths carried part of the stream.
    expect(bob.link.counters.direct.rxBytes).toBeGreaterThan(0);
    expect(bob.link.counters.relay.rxBytes).toBeGreaterThan(0);
  }, 60_000);
});
