/**
 * The ICE rungs on loopback (ice.ts, sessions.ts): two daemons on a test relay, no NAT (the NAT
 * lab tests are in test/e2e/hotlink-nat.test.ts). With TLS off (`direct` absent), a session moves
 * to a data channel over host candidates and a 32 MiB stream arrives intact, mostly on ICE; the
 * ICE path cut mid-stream falls back to the relay with nothing lost or duplicated; a receiving
 * application that stops reading pauses the sender through the ICE path; a sender with ICE off refuses the offer with webrtc_error and the session stays on the relay, saying why.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { createLogger } from "../../src/core/log.ts";
import { HotlinkDaemon } from "../../src/hotlink/daemon.ts";
import { CHANNEL_RETAIN_BYTES, MAX_ICE_PATHS } from "../../src/hotlink/ice.ts";
import { PathSender } from "../../src/hotlink/transport.ts";
import { TOKEN, app, sha256hex, writeUntilStalled } from "../fixtures/hotlink-apps.ts";
import { startTestRelay } from "../fixtures/hotlink-relay.ts";
import { eventually } from "../helpers/eventually.ts";

const log = createLogger({ level: "error", stream: { write: () => {} } });
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});
const own = (cleanup: () => void): void => void cleanups.push(cleanup);

const CHANNEL = "alice/mpc/ice";

/** Two daemons on a test relay with one tunnel; each side's rungs as given. */
async function pair(rungs: { alice: { ice?: object }; bob: { ice?: object } }) {
  const relay = startTestRelay();
  cleanups.push(() => relay.close());
  const start = async (user: string, peer: string, options: { ice?: object }) => {
    const d = await HotlinkDaemon.start({
      server: relay.url,
      user,
      token: TOKEN,
      tunnels: [{ channel: CHANNEL, host: "127.0.0.1", port: 0, peer }],
      log,
      minDelayMs: 20,
      ...options,
    });
    cleanups.push(() => d.close());
    await d.connected();
    return d;
  };
  const alice = await start("alice", "bob", rungs.alice);
  const bob = await start("bob", "alice", rungs.bob);
  return { alice, bob, alicePort: alice.tunnel(CHANNEL)?.port ?? 0, bobPort: bob.tunnel(CHANNEL)?.port ?? 0 };
}

async function transfer(alicePort: number, bobPort: number, bytes: number, during?: (sent: number) => void) {
  const bobApp = await app(bobPort, own);
  const aliceApp = await app(alicePort, own);
  const payload = randomBytes(bytes);
  for (let at = 0; at < payload.length; at += 256 * 1024) {
    await aliceApp.send(payload.subarray(at, at + 256 * 1024));
    during?.(at);
  }
  return { payload, bobApp, aliceApp };
}

describe("ICE on loopback", () => {
  test("TLS off: the session moves to a data channel over host candidates; 32 MiB arrive intact, mostly on ICE", async () => {
    const { alice, bob, alicePort, bobPort } = await pair({ alice: { ice: {} }, bob: { ice: {} } });
    const { payload, bobApp, aliceApp } = await transfer(alicePort, bobPort, 1024);
    await eventually("the session to be on ICE", () => [...alice.sessions.outgoing.values()].some((s) => s.rung === "ice"), { timeoutMs: 15_000 });
    const more = randomBytes(32 * 1024 * 1024);
    for (let at = 0; at < more.length; at += 256 * 1024) await aliceApp.send(more.subarray(at, at + 256 * 1024));
    aliceApp.sock.shutdown();
    bobApp.sock.shutdown();
    await bobApp.ended;
    const all = Buffer.concat([payload, more]);
    expect(bobApp.bytes()).toBe(all.length);
    expect(sha256hex(bobApp.received())).toBe(sha256hex(all));
    const a = alice.sessions.counters;
    const b = bob.sessions.counters;
    expect(b.ice.offers).toBeGreaterThanOrEqual(1);
    expect(a.ice.answers).toBeGreaterThanOrEqual(1);
    expect(b.ice.rxBytes).toBeGreaterThan(more.length / 2);
    expect(a.ice.txBytes).toBe(b.ice.rxBytes);
    expect(a.direct.txBytes + b.direct.rxBytes).toBe(0);
    // Every peer connection is let go once its session ended.
    await eventually("no peer connection left open", () => alice.sessions.ice?.open.count === 0 && bob.sessions.ice?.open.count === 0, { timeoutMs: 5_000 });
  }, 60_000);

  test("the ICE path cut mid-stream: back to the relay, nothing lost, nothing duplicated", async () => {
    const { alice, bob, alicePort, bobPort } = await pair({ alice: { ice: {} }, bob: { ice: {} } });
    const first = await transfer(alicePort, bobPort, 1024);
    await eventually("the session to be on ICE", () => [...alice.sessions.outgoing.values()].some((s) => s.rung === "ice"), { timeoutMs: 15_000 });
    const more = randomBytes(32 * 1024 * 1024);
    let cut = false;
    for (let at = 0; at < more.length; at += 256 * 1024) {
      await first.aliceApp.send(more.subarray(at, at + 256 * 1024));
      if (!cut && at > 8 * 1024 * 1024 && bob.sessions.counters.ice.rxBytes > 0) {
        for (const out of alice.sessions.outgoing.values()) cut = out.cutDirect() || cut;
      }
    }
    first.aliceApp.sock.shutdown();
    first.bobApp.sock.shutdown();
    await first.bobApp.ended;
    const all = Buffer.concat([first.payload, more]);
    expect(cut).toBe(true);
    expect(first.bobApp.bytes()).toBe(all.length);
    expect(sha256hex(first.bobApp.received())).toBe(sha256hex(all));
    expect(alice.sessions.counters.ice.fallbacks).toBe(1);
    expect(bob.sessions.counters.ice.rxBytes).toBeGreaterThan(0);
    expect(bob.sessions.counters.relay.rxBytes).toBeGreaterThan(0);
  }, 60_000);

  test("a receiving application that stops reading pauses the sending one through the ICE path (the receiver stops acknowledging); nothing is lost", async () => {
    const { alice, bob, alicePort, bobPort } = await pair({ alice: { ice: {} }, bob: { ice: {} } });
    const bobApp = await app(bobPort, own);
    const aliceApp = await app(alicePort, own);
    await eventually("the session to be on ICE", () => [...alice.sessions.outgoing.values()].some((s) => s.rung === "ice"), { timeoutMs: 15_000 });
    const first = randomBytes(4 * 1024 * 1024);
    await aliceApp.send(first);
    await eventually("the first 4 MiB at bob's application", () => bobApp.bytes() === first.length, { timeoutMs: 10_000 });
    bobApp.sock.pause();
    const payload = randomBytes(160 * 1024 * 1024);
    // Accepted bytes stop growing: kernel buffers, the daemons' bounded queues and the sender's
    // unacknowledged frames (CHANNEL_RETAIN_BYTES: the data channel's queue is never read) fill,
    // then alice's app is not read.
    const { accepted, pump } = await writeUntilStalled(aliceApp, payload);
    expect(accepted).toBeLessThan(100 * 1024 * 1024);
    const path = [...alice.sessions.outgoing.values()].find((s) => s.rung === "ice")?.transport;
    if (!(path instanceof PathSender)) throw new Error("the session left its ICE path");
    // The window holds (libwebrtc closes a channel whose queue passes 16 MiB): at most one read
    // of the application past it.
    expect(path.unacknowledgedBytes).toBeGreaterThan(CHANNEL_RETAIN_BYTES / 2);
    expect(path.unacknowledgedBytes).toBeLessThanOrEqual(CHANNEL_RETAIN_BYTES + 1024 * 1024);
    bobApp.sock.resume();
    await pump;
    aliceApp.sock.shutdown();
    bobApp.sock.shutdown();
    await bobApp.ended;
    expect(bobApp.bytes()).toBe(first.length + payload.length);
    expect(sha256hex(bobApp.received())).toBe(sha256hex(Buffer.concat([first, payload])));
    expect(alice.sessions.counters.ice.fallbacks).toBe(0);
    expect(bob.sessions.counters.ice.rxBytes).toBeGreaterThan(payload.length);
  }, 90_000);

  test(`a sending daemon with MAX_ICE_PATHS (${MAX_ICE_PATHS}) peer connections open refuses another; the session stays on the relay and says why`, async () => {
    const { alice, alicePort, bobPort } = await pair({ alice: { ice: {} }, bob: { ice: {} } });
    const ice = alice.sessions.ice;
    if (ice === null) throw new Error("alice has ICE on");
    ice.open.count = MAX_ICE_PATHS;
    const { payload, bobApp, aliceApp } = await transfer(alicePort, bobPort, 1024 * 1024);
    await eventually("alice to note why ICE was not used", () => [...alice.sessions.outgoing.values()].some((s) => s.failed.some((f) => f.rung === "ice")), { timeoutMs: 15_000 });
    expect([...alice.sessions.outgoing.values()][0]?.status()).toMatchObject({ rung: "relay", failed: [{ rung: "tls" }, { rung: "ice", error: `this daemon already has ${MAX_ICE_PATHS} ICE paths open` }] });
    aliceApp.sock.shutdown();
    bobApp.sock.shutdown();
    await bobApp.ended;
    expect(sha256hex(bobApp.received())).toBe(sha256hex(payload));
    ice.open.count = 0;
  }, 60_000);

  test("a sender with ICE off answers webrtc_error: the session stays on the relay and says why", async () => {
    const { alice, bob, alicePort, bobPort } = await pair({ alice: {}, bob: { ice: {} } });
    const { payload, bobApp, aliceApp } = await transfer(alicePort, bobPort, 4 * 1024 * 1024);
    await eventually("alice to note why ICE was not used", () => [...alice.sessions.outgoing.values()].some((s) => s.failed.some((f) => f.rung === "ice")), { timeoutMs: 15_000 });
    const out = [...alice.sessions.outgoing.values()][0];
    expect(out?.status()).toMatchObject({ rung: "relay", failed: [{ rung: "tls", error: "the receiver offered no direct TLS connection" }, { rung: "ice", error: "ICE is off on this daemon" }] });
    aliceApp.sock.shutdown();
    bobApp.sock.shutdown();
    await bobApp.ended;
    expect(sha256hex(bobApp.received())).toBe(sha256hex(payload));
    await eventually("bob's ICE attempt to be counted as failed", () => bob.sessions.counters.ice.failures === 1, { timeoutMs: 5_000 });
    expect(bob.sessions.counters.ice.rxBytes).toBe(0);
  }, 60_000);
});
