/**
 * Attacks on the hotlink relay and daemons (issue 9, D7 and D10), each against a real relay
 * (`startHotlinkServer` on loopback) with real WebSockets: an authenticated client that never
 * says Hello, one user holding many connections and sessions, and a peer that makes another
 * user's daemon dial addresses of its choosing.
 */
import type { Socket, TCPSocketListener } from "bun";
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createLogger } from "../../src/core/log.ts";
import { Registry } from "../../src/core/metrics.ts";
import { HotlinkDaemon } from "../../src/hotlink/daemon.ts";
import { MAX_CANDIDATES, MAX_DIALED_CANDIDATES, MessageType } from "../../src/hotlink/protocol.ts";
import { type HotlinkServer, type HotlinkServerOptions, startHotlinkServer } from "../../src/hotlink/server.ts";
import { addUser, formatAuthorization } from "../../src/hotlink/users.ts";
import { app } from "../fixtures/hotlink-apps.ts";
import { HotlinkPeer } from "../fixtures/hotlink-peer.ts";
import { eventually } from "../helpers/eventually.ts";

const dir = mkdtempSync(join(tmpdir(), "stoa-security-hotlink-"));
const usersFile = join(dir, "users.json");
const aclFile = join(dir, "acl.json");
const USERS = ["alice", "bob", "carol", "mallory"] as const;
type User = (typeof USERS)[number];
const tokens = Object.fromEntries(USERS.map((u) => [u, addUser(usersFile, u)])) as Record<User, string>;
/** bob reads alice's and carol's paths; mallory reads alice's and may write alice/t (the daemon test). */
writeFileSync(
  aclFile,
  JSON.stringify({
    rules: [
      { pattern: "alice/**", read: ["bob", "mallory"], write: [] },
      { pattern: "alice/t", read: [], write: ["mallory"] },
      { pattern: "carol/**", read: ["bob"], write: [] },
    ],
  }),
);

const log = createLogger({ level: "error", stream: { write: () => {} } });
const cleanups: (() => Promise<void> | void)[] = [];
const peers: HotlinkPeer[] = [];
afterEach(async () => {
  for (const p of peers.splice(0)) p.close();
  for (const c of cleanups.splice(0).reverse()) await c();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function serve(options: Partial<HotlinkServerOptions> = {}): { server: HotlinkServer; registry: Registry } {
  const registry = new Registry();
  const server = startHotlinkServer({ hostname: "127.0.0.1", port: 0, usersFile, aclFile, log, registry, ...options });
  cleanups.push(() => server.close());
  return { server, registry };
}

const open = (server: HotlinkServer, user: User): Promise<HotlinkPeer> => HotlinkPeer.open(server.url, user, tokens[user], peers);
const join_ = (server: HotlinkServer, user: User): Promise<HotlinkPeer> => HotlinkPeer.join(server.url, user, tokens[user], peers);

/** The value of one series in a rendered registry (NaN when absent). */
function metric(registry: Registry, series: string): number {
  for (const line of registry.render().split("\n")) {
    if (line.startsWith(`${series} `)) return Number(line.slice(series.length + 1));
  }
  return Number.NaN;
}

/** Whether a WebSocket of `user` opens on `server` (Bun's client hides a refused upgrade's status). */
async function wsOpens(server: HotlinkServer, user: User): Promise<boolean> {
  const ws = new WebSocket(server.url, { headers: { Authorization: formatAuthorization(user, tokens[user]) } });
  const opened = await new Promise<boolean>((resolve) => {
    ws.onopen = () => resolve(true);
    ws.onerror = () => resolve(false);
    ws.onclose = () => resolve(false);
  });
  ws.close();
  return opened;
}

describe("D7: a connection that never says Hello", () => {
  test("is counted from the upgrade, then closed with Error timeout and 1008 after the Hello deadline", async () => {
    const { server, registry } = serve({ helloTimeoutMs: 400 });
    const silent = await open(server, "mallory");
    const polite = await join_(server, "alice");
    // Counted while open, in the gauge and in stats, before any Hello.
    expect(server.stats()).toMatchObject({ connections: 2, awaitingHello: 1 });
    expect(metric(registry, 'stoa_hotlink_connections{state="awaiting_hello"}')).toBe(1);
    expect(metric(registry, 'stoa_hotlink_connections{state="ready"}')).toBe(1);

    const closed = await silent.waitClosed(10_000);
    expect(closed.code).toBe(1008);
    expect(closed.reason).toContain("Hello");
    expect(silent.inbox).toContainEqual(expect.objectContaining({ t: MessageType.Error, code: "timeout" }));
    await eventually("the server to drop the silent connection", () => server.stats().connections === 1);
    expect(metric(registry, 'stoa_hotlink_connections{state="awaiting_hello"}')).toBe(0);
    expect(metric(registry, 'stoa_hotlink_refused_total{reason="hello_timeout"}')).toBe(1);

    // A connection that said Hello in time outlives the deadline several times over.
    await Bun.sleep(1_200);
    expect(polite.closed).toBeUndefined();
    await polite.sync();
    expect(metric(registry, 'stoa_hotlink_connections{state="ready"}')).toBe(1);
  });

  test("many silent connections all go after the deadline, leaving nothing counted", async () => {
    const { server, registry } = serve({ helloTimeoutMs: 300 });
    const silent = await Promise.all(Array.from({ length: 40 }, () => open(server, "mallory")));
    expect(server.stats().awaitingHello).toBe(40);
    for (const s of silent) expect((await s.waitClosed(10_000)).code).toBe(1008);
    await eventually("every silent connection to be gone", () => server.stats().connections === 0);
    expect(metric(registry, 'stoa_hotlink_connections{state="awaiting_hello"}')).toBe(0);
    expect(metric(registry, 'stoa_hotlink_refused_total{reason="hello_timeout"}')).toBe(40);
  });
});

describe("D7: connections per user", () => {
  test("past the cap a user's upgrade gets 429 with a clear body, counted; other users still connect; a closed one frees its slot", async () => {
    const { server, registry } = serve({ maxConnectionsPerUser: 3 });
    const http = server.url.replace("ws://", "http://");
    // Two that never say Hello and one that does: all three count.
    const held = [await open(server, "mallory"), await open(server, "mallory"), await join_(server, "mallory")];
    expect(server.stats().connections).toBe(3);

    const res = await fetch(http, { headers: { Authorization: formatAuthorization("mallory", tokens.mallory) } });
    expect(res.status).toBe(429);
    expect(await res.text()).toContain("too many connections: mallory already holds 3");
    expect(await wsOpens(server, "mallory")).toBe(false);
    expect(server.stats().connections).toBe(3);
    expect(metric(registry, 'stoa_hotlink_refused_total{reason="user_connections"}')).toBe(2);
    expect(server.stats().refused.user_connections).toBe(2);

    // The cap is per user: alice is not affected.
    await join_(server, "alice");
    expect(server.stats().connections).toBe(4);

    held[0]?.close();
    await eventually("the closed connection to be gone", () => server.stats().connections === 3);
    const again = await join_(server, "mallory");
    await again.sync();
  });

  test("a burst of upgrades of one user at once never ends with more than the cap", async () => {
    const { server, registry } = serve({ maxConnectionsPerUser: 5 });
    const results = await Promise.all(Array.from({ length: 30 }, () => open(server, "mallory").then(() => true, () => false)));
    // Refused before the upgrade, or (should upgrades cross in flight) closed on open: 5 stay.
    expect(results.filter(Boolean).length).toBeGreaterThanOrEqual(5);
    await eventually("at most the cap to remain", () => server.stats().connections <= 5);
    expect(server.stats().connections).toBe(5);
    expect(metric(registry, 'stoa_hotlink_refused_total{reason="user_connections"}')).toBe(25);
  });
});

describe("D7: sessions per user, across connections", () => {
  test("one user's sessions over the per-user cap are refused on every connection, while another user still opens sessions", async () => {
    const { server, registry } = serve({ maxSessionsPerUser: 6, maxSessionsPerConnection: 4 });
    const conns = [await join_(server, "alice"), await join_(server, "alice"), await join_(server, "alice")];
    const bob = await join_(server, "bob");
    const carol = await join_(server, "carol");
    let n = 0;
    /** Opens one session on `conn`; the answer is bob's Open (then he accepts) or alice's Reject. */
    const openOn = async (conn: HotlinkPeer, owner: HotlinkPeer = conn, path = "alice/s"): Promise<string> => {
      const sid = `s${++n}`;
      owner.send({ t: MessageType.Open, sid, pth: path, to: "bob" });
      await eventually(`an answer to ${sid}`, () =>
        bob.inbox.some((m) => m.t === MessageType.Open && m.sid === sid) || owner.inbox.some((m) => m.t === MessageType.Reject && m.sid === sid),
      );
      const reject = owner.inbox.find((m) => m.t === MessageType.Reject && m.sid === sid);
      if (reject !== undefined && reject.t === MessageType.Reject) return reject.rsn;
      bob.send({ t: MessageType.Accept, sid });
      await owner.take(MessageType.Accept, (m) => m.sid === sid);
      return "open";
    };
    const [a1, a2, a3] = conns as [HotlinkPeer, HotlinkPeer, HotlinkPeer];
    for (let i = 0; i < 4; i++) expect(await openOn(a1)).toBe("open");
    expect(await openOn(a1)).toContain("a connection may open at most 4");
    expect(await openOn(a2)).toBe("open");
    expect(await openOn(a2)).toBe("open");
    // 6 in all: a2 (2 of its 4) and a3 (none yet) are refused for the user's total.
    expect(await openOn(a2)).toContain("alice has 6 open on this relay");
    expect(await openOn(a3)).toContain("alice has 6 open on this relay");
    expect(server.sessionCount).toBe(6);
    expect(metric(registry, 'stoa_hotlink_refused_total{reason="user_sessions"}')).toBe(2);
    expect(metric(registry, 'stoa_hotlink_refused_total{reason="connection_sessions"}')).toBe(1);

    // Another user is not affected.
    expect(await openOn(carol, carol, "carol/x")).toBe("open");
    expect(server.sessionCount).toBe(7);

    // Closing one of alice's frees one for any of her connections.
    a1.send({ t: MessageType.Close, sid: "s1", rsn: "done" });
    await bob.take(MessageType.Close, (m) => m.sid === "s1");
    expect(await openOn(a3)).toBe("open");
    expect(await openOn(a3)).toContain("alice has 6 open");

    // A connection that goes takes its sessions off its user's count.
    a1.close();
    await eventually("a1's sessions to end", () => server.sessionCount === 4);
    expect(await openOn(a3)).toBe("open");
  });
});

// --- D10: what a peer can make another user's daemon dial ----------------------------------

/** Plain TCP listeners on loopback that count the connections made to them. */
function listeners(count: number, behaviour: "close" | "hang"): { adr: string[]; attempts(): number; closed(): number } {
  let attempts = 0;
  let closed = 0;
  const held: Socket<undefined>[] = [];
  const all: TCPSocketListener<undefined>[] = [];
  for (let i = 0; i < count; i++) {
    all.push(
      Bun.listen({
        hostname: "127.0.0.1",
        port: 0,
        socket: {
          open: (s) => {
            attempts++;
            if (behaviour === "close") s.terminate();
            else held.push(s); // accepts and says nothing: the TLS handshake times out
          },
          data: () => {},
          close: () => void closed++,
        },
      }),
    );
  }
  cleanups.push(() => {
    for (const s of held) s.terminate();
    for (const l of all) l.stop(true);
  });
  return { adr: all.map((l) => `127.0.0.1:${l.port}`), attempts: () => attempts, closed: () => closed };
}

/** alice's daemon (direct paths on) with tunnel alice/t to mallory, and mallory as a raw client on the same relay. */
async function aliceAndMallory() {
  const { server } = serve();
  const mallory = await join_(server, "mallory");
  const daemon = await HotlinkDaemon.start({
    server: server.url,
    user: "alice",
    token: tokens.alice,
    tunnels: [{ channel: "alice/t", host: "127.0.0.1", port: 0, peer: "mallory" }],
    log,
    minDelayMs: 20,
    direct: { listen: "127.0.0.1", advertise: ["127.0.0.1"] },
  });
  cleanups.push(() => daemon.close());
  await daemon.connected();
  return { server, mallory, daemon, tunnelPort: daemon.tunnel("alice/t")?.port ?? 0 };
}

const FPR = "00".repeat(32);
const TOK = "t".repeat(24);

describe("D10: a peer's direct offers", () => {
  test("an offer of 16 addresses is dialled at most 4 times, a second offer not at all, and the session goes on over the relay", async () => {
    const { mallory, tunnelPort } = await aliceAndMallory();
    const aliceApp = await app(tunnelPort, (c) => void cleanups.push(c));
    const open = await mallory.take(MessageType.Open, (m) => m.pth === "alice/t");
    mallory.send({ t: MessageType.Accept, sid: open.sid });

    const first = listeners(MAX_CANDIDATES, "close");
    mallory.send({ t: MessageType.Signal, sid: open.sid, knd: "direct_offer", adr: first.adr, tok: TOK, fpr: FPR });
    const answer = await mallory.take(MessageType.Signal, (m) => m.sid === open.sid && m.knd === "direct_answer", 30_000);
    expect(answer).toMatchObject({ knd: "direct_answer", err: expect.stringContaining(`first ${MAX_DIALED_CANDIDATES} of ${MAX_CANDIDATES}`) });
    expect(first.attempts()).toBe(MAX_DIALED_CANDIDATES);

    // Once the first offer failed, another one (new addresses) dials nothing.
    const second = listeners(MAX_DIALED_CANDIDATES, "close");
    mallory.send({ t: MessageType.Signal, sid: open.sid, knd: "direct_offer", adr: second.adr, tok: TOK, fpr: FPR });
    const again = await mallory.take(MessageType.Signal, (m) => m.sid === open.sid && m.knd === "direct_answer", 30_000);
    expect(again.knd === "direct_answer" ? again.err : "").toContain("one direct offer");
    await Bun.sleep(300);
    expect(second.attempts()).toBe(0);
    expect(first.attempts()).toBe(MAX_DIALED_CANDIDATES);

    // The session itself is fine, on the relay.
    await aliceApp.send(new TextEncoder().encode("still here"));
    const data = await mallory.take(MessageType.Data, (m) => m.sid === open.sid);
    expect(new TextDecoder().decode(data.pay)).toBe("still here");
  }, 40_000);

  test("a session that ends while its offer is being dialled stops dialling, and the timed-out attempt's socket is closed", async () => {
    const { mallory, tunnelPort } = await aliceAndMallory();
    await app(tunnelPort, (c) => void cleanups.push(c));
    const open = await mallory.take(MessageType.Open, (m) => m.pth === "alice/t");
    mallory.send({ t: MessageType.Accept, sid: open.sid });
    // Each of these takes the TCP connection and never answers TLS: a dial waits out its timeout.
    const slow = listeners(MAX_DIALED_CANDIDATES, "hang");
    mallory.send({ t: MessageType.Signal, sid: open.sid, knd: "direct_offer", adr: slow.adr, tok: TOK, fpr: FPR });
    await eventually("the first dial", () => slow.attempts() >= 1, { timeoutMs: 10_000 });
    mallory.send({ t: MessageType.Close, sid: open.sid, rsn: "bye" });
    // Long enough for two more dial timeouts (1.5 s each) of the old, unbounded loop.
    await Bun.sleep(4_000);
    expect(slow.attempts()).toBe(1);
    expect(slow.closed()).toBe(1);
  }, 30_000);

  test("an offer for a session the daemon did not open as sender dials nothing", async () => {
    const { mallory, daemon } = await aliceAndMallory();
    // mallory opens a session to alice's tunnel: alice's daemon is its receiver, not its sender.
    mallory.send({ t: MessageType.Open, sid: "mallorys", pth: "alice/t", to: "alice" });
    await mallory.take(MessageType.Accept, (m) => m.sid === "mallorys");
    const trap = listeners(MAX_DIALED_CANDIDATES, "close");
    mallory.send({ t: MessageType.Signal, sid: "mallorys", knd: "direct_offer", adr: trap.adr, tok: TOK, fpr: FPR });
    const answer = await mallory.take(MessageType.Signal, (m) => m.sid === "mallorys" && m.knd === "direct_answer", 10_000);
    expect(answer.knd === "direct_answer" ? answer.err : "").toContain("no such session");
    await Bun.sleep(300);
    expect(trap.attempts()).toBe(0);
    expect(daemon.sessions.counters.direct.failures).toBe(0);
  }, 30_000);
});
