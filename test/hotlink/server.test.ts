import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encode } from "../../src/core/codec.ts";
import { createLogger } from "../../src/core/log.ts";
import { Registry } from "../../src/core/metrics.ts";
import { type HotlinkMessage, type HotlinkMessageInput, MessageType, PROTOCOL_VERSION, encodeMessage } from "../../src/hotlink/protocol.ts";
import { type HotlinkServer, type HotlinkServerOptions, MIN_MESSAGE_BYTES, startHotlinkServer } from "../../src/hotlink/server.ts";
import { addUser, formatAuthorization, removeUser } from "../../src/hotlink/users.ts";
import { HotlinkPeer } from "../fixtures/hotlink-peer.ts";
import { RelaySocket } from "../../src/hotlink/framed-link.ts";
import { type Prng, fuzzSeed, mutate, prng } from "../helpers/prng.ts";
import { eventually } from "../helpers/eventually.ts";

const dir = mkdtempSync(join(tmpdir(), "stoa-hotlink-server-"));
const usersFile = join(dir, "users.json");
const aclFile = join(dir, "acl.json");
const USERS = ["alice", "bob", "carol", "eve", "mallory"] as const;
type User = (typeof USERS)[number];
const tokens = Object.fromEntries(USERS.map((u) => [u, addUser(usersFile, u)])) as Record<User, string>;
/** bob and carol may read alice's paths; eve and mallory read nothing but their own. */
const RULES = { rules: [{ pattern: "alice/**", read: ["bob", "carol"], write: [] }] };
writeFileSync(aclFile, JSON.stringify(RULES));

const logged: string[] = [];
const log = createLogger({ level: "warn", stream: { write: (line: string) => void logged.push(line) } });
const servers: HotlinkServer[] = [];
const peers: Peer[] = [];

afterEach(async () => {
  for (const p of peers.splice(0)) p.close();
  for (const s of servers.splice(0)) await s.close();
  // A handler that threw would have been logged as a bug; none may.
  expect(logged.filter((line) => line.includes("bug in"))).toEqual([]);
  logged.length = 0;
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/**
 * Every test runs over both transports (framed-link.ts): the WebSocket, and the framed TCP
 * link, which the relay offers when it has `linkListen` and the peers then take.
 */
const TRANSPORTS = ["ws", "tcp"] as const;
let transport: (typeof TRANSPORTS)[number] = "ws";

function serve(options: Partial<HotlinkServerOptions> = {}): HotlinkServer {
  const link = transport === "tcp" ? { linkListen: { hostname: "127.0.0.1", port: 0 } } : {};
  const server = startHotlinkServer({ hostname: "127.0.0.1", port: 0, usersFile, aclFile, log, registry: new Registry(), ...link, ...options });
  servers.push(server);
  return server;
}

type Of<T extends HotlinkMessage["t"]> = Extract<HotlinkMessage, { t: T }>;

/** The shared raw client (fixtures/hotlink-peer.ts), bound to this file's users and cleanup. */
type Peer = HotlinkPeer;
const Peer = {
  open: (server: HotlinkServer, user: string, token: string): Promise<Peer> => HotlinkPeer.open(server.url, user, token, peers, transport),
  join: (server: HotlinkServer, user: User): Promise<Peer> => HotlinkPeer.join(server.url, user, tokens[user], peers, transport),
};

/** alice opens `sid` on `pth` (for `to`), each of `receivers` accepts; returns when alice has every Accept. */
async function session(alice: Peer, receivers: Peer[], sid: string, pth = "alice/mpc/run1/0_to_1", to?: string): Promise<void> {
  alice.send({ t: MessageType.Open, sid, pth, ...(to === undefined ? {} : { to }) });
  for (const r of receivers) {
    await r.take(MessageType.Open, (m) => m.sid === sid);
    r.send({ t: MessageType.Accept, sid });
  }
  for (const r of receivers) await alice.take(MessageType.Accept, (m) => m.sid === sid && m.frm === r.user);
}

function payload(seq: number, size: number): Uint8Array {
  const bytes = new Uint8Array(size).fill(seq & 0xff);
  if (size >= 4) new DataView(bytes.buffer).setUint32(0, seq);
  return bytes;
}

for (const over of TRANSPORTS) {
  describe(`over ${over === "ws" ? "the WebSocket" : "the framed TCP link"}`, () => {
    beforeAll(() => {
      transport = over;
    });

    describe("authentication happens before the upgrade", () => {
      test("a missing, malformed or wrong token gets 401 with WWW-Authenticate; a right one without upgrade gets 426", async () => {
        const server = serve();
        const http = server.url.replace("ws://", "http://");
        const cases: [string | undefined, number][] = [
          [undefined, 401],
          ["Bearer nonsense", 401],
          [formatAuthorization("alice", tokens.bob), 401],
          [formatAuthorization("nobody", tokens.alice), 401],
          [`Basic ${btoa(`alice:${tokens.alice}`)}`, 401],
          [formatAuthorization("alice", tokens.alice), 426],
        ];
        for (const [authorization, status] of cases) {
          const res = await fetch(http, { headers: authorization === undefined ? {} : { Authorization: authorization } });
          expect(res.status, String(authorization)).toBe(status);
          if (status === 401) {
            expect(res.headers.get("www-authenticate")).toContain("Bearer");
            expect(await res.text()).toContain("Authorization: Bearer");
          } else {
            await res.text();
          }
        }
        expect(server.stats().connections).toBe(0);
      });

      test("a connection with a wrong token never opens, and the server holds no connection for it", async () => {
        const server = serve();
        await expect(Peer.open(server, "alice", tokens.eve)).rejects.toThrow("did not open");
        const anonymous = over === "ws" ? new WebSocket(server.url) : (new RelaySocket(server.url, {}, "auto") as unknown as WebSocket);
        expect(await new Promise<string>((resolve) => {
          anonymous.onopen = () => resolve("open");
          anonymous.onerror = () => resolve("error");
        })).toBe("error");
        expect(server.stats()).toMatchObject({ connections: 0, sessions: 0 });
      });

      test("/v1/health answers 200 JSON without a token; other paths are 404", async () => {
        const server = serve();
        const http = server.url.replace("ws://", "http://").replace("/v1/hotlink", "");
        const health = await fetch(`${http}/v1/health`);
        expect(health.status).toBe(200);
        expect(await health.json()).toEqual({ ok: true, v: PROTOCOL_VERSION });
        const other = await fetch(`${http}/v1/other`, { headers: { Authorization: formatAuthorization("alice", tokens.alice) } });
        expect(other.status).toBe(404);
        await other.text();
      });
    });

    describe("hello", () => {
      test("Hello gets a Welcome naming the authenticated user and the limits", async () => {
        const server = serve();
        const peer = await Peer.open(server, "alice", tokens.alice);
        peer.send({ t: MessageType.Hello, v: PROTOCOL_VERSION });
        const welcome = await peer.take(MessageType.Welcome);
        // `stm`: only on a framed link, whose port also pairs relay streams (relay-stream.ts).
        const stm = transport === "tcp" ? { stm: true } : {};
        expect(welcome).toEqual({ t: MessageType.Welcome, v: PROTOCOL_VERSION, usr: "alice", mmb: 8 * 1024 * 1024 + 64 * 1024, mpb: 8 * 1024 * 1024, ...stm });
        expect(server.stats().connections).toBe(1);
      });

      test("anything before Hello, or a second Hello, is Error protocol and the connection stays usable", async () => {
        const server = serve();
        const peer = await Peer.open(server, "bob", tokens.bob);
        peer.send({ t: MessageType.Ping, n: 1 });
        expect((await peer.take(MessageType.Error)).code).toBe("protocol");
        peer.send({ t: MessageType.Hello, v: PROTOCOL_VERSION });
        await peer.take(MessageType.Welcome);
        peer.send({ t: MessageType.Hello, v: PROTOCOL_VERSION });
        expect((await peer.take(MessageType.Error)).code).toBe("protocol");
        await peer.sync();
        expect(peer.closed).toBeUndefined();
      });

      test("an unsupported version gets Error version and the connection is closed", async () => {
        const server = serve();
        const peer = await Peer.open(server, "bob", tokens.bob);
        peer.send({ t: MessageType.Hello, v: PROTOCOL_VERSION + 1 });
        expect((await peer.take(MessageType.Error)).code).toBe("version");
        expect((await peer.waitClosed()).code).toBe(1008);
        expect(server.stats().connections).toBe(0);
      });
    });

    describe("sessions", () => {
      test("a whole exchange: Open to every reader with frm, Accept back, Data in order, Close; a user without read sees nothing", async () => {
        const server = serve();
        const alice = await Peer.join(server, "alice");
        const alice2 = await Peer.join(server, "alice"); // the sender's own user never gets its Open
        const bob = await Peer.join(server, "bob");
        const carol = await Peer.join(server, "carol");
        const eve = await Peer.join(server, "eve");
        alice.send({ t: MessageType.Open, sid: "s1", pth: "alice/mpc/run1/0_to_1", frm: "mallory" });
        for (const r of [bob, carol]) {
          expect(await r.take(MessageType.Open)).toEqual({ t: MessageType.Open, sid: "s1", pth: "alice/mpc/run1/0_to_1", frm: "alice" });
        }
        bob.send({ t: MessageType.Accept, sid: "s1", frm: "mallory" });
        expect(await alice.take(MessageType.Accept)).toEqual({ t: MessageType.Accept, sid: "s1", frm: "bob" });
        carol.send({ t: MessageType.Accept, sid: "s1" });
        expect((await alice.take(MessageType.Accept)).frm).toBe("carol");
        for (let seq = 1; seq <= 100; seq++) alice.send({ t: MessageType.Data, sid: "s1", seq, pay: payload(seq, 100 + seq) });
        for (const r of [bob, carol]) {
          for (let seq = 1; seq <= 100; seq++) {
            const data = await r.take(MessageType.Data);
            expect(data.seq).toBe(seq);
            expect(data.pay).toEqual(payload(seq, 100 + seq));
          }
        }
        alice.send({ t: MessageType.Close, sid: "s1" });
        for (const r of [bob, carol]) expect(await r.take(MessageType.Close)).toEqual({ t: MessageType.Close, sid: "s1" });
        expect(server.sessionCount).toBe(0);
        for (const p of [eve, alice2, alice]) await p.sync();
        expect(eve.inbox).toEqual([]);
        expect(alice2.inbox).toEqual([]);
        expect(alice.inbox).toEqual([]);
        expect(server.stats()).toMatchObject({ relayedMessages: 200, errors: 0, sessions: 0, connections: 5 });
      });

      test("Open without write access is rejected with 'forbidden'; with no reader connected, 'no receiver'", async () => {
        const server = serve();
        const alice = await Peer.join(server, "alice");
        const bob = await Peer.join(server, "bob");
        bob.send({ t: MessageType.Open, sid: "b1", pth: "alice/mpc/x" }); // bob may read alice's paths, not write them
        expect(await bob.take(MessageType.Reject)).toEqual({ t: MessageType.Reject, sid: "b1", rsn: "forbidden" });
        alice.send({ t: MessageType.Open, sid: "a1", pth: "alice/mpc/x", to: "carol" }); // carol is not connected
        expect(await alice.take(MessageType.Reject)).toEqual({ t: MessageType.Reject, sid: "a1", rsn: "no receiver" });
        alice.send({ t: MessageType.Open, sid: "a2", pth: "alice/mpc/x", to: "eve" }); // connected, but no read access
        expect(await alice.take(MessageType.Reject)).toEqual({ t: MessageType.Reject, sid: "a2", rsn: "no receiver" });
        alice.send({ t: MessageType.Open, sid: "a3", pth: "alice/mpc/x", to: "alice" }); // never back to the sender's user
        expect((await alice.take(MessageType.Reject)).rsn).toBe("no receiver");
        await bob.sync();
        expect(bob.inbox).toEqual([]);
        expect(server.sessionCount).toBe(0);
      });

      test("an Open whose sid is in use is refused and the session holding it goes on", async () => {
        const server = serve();
        const alice = await Peer.join(server, "alice");
        const bob = await Peer.join(server, "bob");
        const eve = await Peer.join(server, "eve");
        await session(alice, [bob], "taken");
        eve.send({ t: MessageType.Open, sid: "taken", pth: "eve/x" });
        expect(await eve.take(MessageType.Reject)).toEqual({ t: MessageType.Reject, sid: "taken", rsn: "sid in use" });
        alice.send({ t: MessageType.Open, sid: "taken", pth: "alice/other" });
        expect((await alice.take(MessageType.Reject)).rsn).toBe("sid in use");
        alice.send({ t: MessageType.Data, sid: "taken", seq: 1, pay: payload(1, 8) });
        expect((await bob.take(MessageType.Data)).seq).toBe(1);
        expect(server.sessionCount).toBe(1);
      });

      test("`to` offers the session to that user only", async () => {
        const server = serve();
        const alice = await Peer.join(server, "alice");
        const bob = await Peer.join(server, "bob");
        const carol = await Peer.join(server, "carol");
        await session(alice, [carol], "t1", "alice/mpc/1_to_2", "carol");
        alice.send({ t: MessageType.Data, sid: "t1", seq: 1, pay: payload(1, 16) });
        expect((await carol.take(MessageType.Data)).seq).toBe(1);
        await bob.sync();
        expect(bob.inbox).toEqual([]);
      });

      test("Data from anyone but the sender is refused with not_sender and relayed to no one", async () => {
        const server = serve();
        const alice = await Peer.join(server, "alice");
        const bob = await Peer.join(server, "bob");
        const carol = await Peer.join(server, "carol");
        const eve = await Peer.join(server, "eve");
        await session(alice, [bob, carol], "d1");
        bob.send({ t: MessageType.Data, sid: "d1", seq: 1, pay: payload(1, 8) });
        expect(await bob.take(MessageType.Error)).toMatchObject({ code: "not_sender", sid: "d1" });
        eve.send({ t: MessageType.Data, sid: "d1", seq: 1, pay: payload(1, 8) });
        expect((await eve.take(MessageType.Error)).code).toBe("not_sender");
        eve.send({ t: MessageType.Close, sid: "d1" });
        expect((await eve.take(MessageType.Error)).code).toBe("not_sender");
        eve.send({ t: MessageType.Data, sid: "nosuch", seq: 1, pay: payload(1, 8) });
        expect(await eve.take(MessageType.Error)).toMatchObject({ code: "unknown_session", sid: "nosuch" });
        for (const p of [alice, bob, carol]) await p.sync();
        expect([...alice.inbox, ...bob.inbox, ...carol.inbox]).toEqual([]);
        expect(server.sessionCount).toBe(1);
        expect(bob.closed).toBeUndefined();
      });

      test("Data labelled with a pth outside the session's path is refused", async () => {
        const server = serve();
        const alice = await Peer.join(server, "alice");
        const bob = await Peer.join(server, "bob");
        await session(alice, [bob], "p1");
        for (const pth of ["bob/inbox", "alice/mpc/run1/0_to_10", "alice/mpc"]) {
          alice.send({ t: MessageType.Data, sid: "p1", seq: 1, pth, pay: payload(1, 8) });
          expect(await alice.take(MessageType.Error)).toMatchObject({ code: "forbidden", sid: "p1" });
        }
        alice.send({ t: MessageType.Data, sid: "p1", seq: 1, pth: "alice/mpc/run1/0_to_1/part", pay: payload(1, 8) });
        expect((await bob.take(MessageType.Data)).pth).toBe("alice/mpc/run1/0_to_1/part");
        await bob.sync();
        expect(bob.inbox).toEqual([]);
      });

      test("Signal goes from a receiver to the sender and back, with frm set by the server", async () => {
        const server = serve();
        const alice = await Peer.join(server, "alice");
        const bob = await Peer.join(server, "bob");
        await session(alice, [bob], "g1");
        const offer: Of<typeof MessageType.Signal> = {
          t: MessageType.Signal,
          sid: "g1",
          knd: "direct_offer",
          adr: ["127.0.0.1:4000", "[::1]:4000"],
          tok: "t".repeat(22),
          fpr: "ab".repeat(32),
          frm: "eve",
        };
        bob.send(offer);
        expect(await alice.take(MessageType.Signal)).toEqual({ ...offer, frm: "bob" });
        alice.send({ t: MessageType.Signal, sid: "g1", knd: "direct_answer" });
        expect(await bob.take(MessageType.Signal)).toEqual({ t: MessageType.Signal, sid: "g1", knd: "direct_answer", frm: "alice" });
      });

      test("a receiver's Close removes it; the sender gets Close when none is left, and the session is gone", async () => {
        const server = serve();
        const alice = await Peer.join(server, "alice");
        const bob = await Peer.join(server, "bob");
        const carol = await Peer.join(server, "carol");
        await session(alice, [bob, carol], "c1");
        bob.send({ t: MessageType.Close, sid: "c1", rsn: "done" });
        await alice.sync();
        expect(alice.inbox).toEqual([]);
        alice.send({ t: MessageType.Data, sid: "c1", seq: 1, pay: payload(1, 8) });
        expect((await carol.take(MessageType.Data)).seq).toBe(1);
        carol.send({ t: MessageType.Close, sid: "c1", rsn: "done too" });
        expect(await alice.take(MessageType.Close)).toEqual({ t: MessageType.Close, sid: "c1", rsn: "done too" });
        expect(server.sessionCount).toBe(0);
        await bob.sync();
        expect(bob.inbox).toEqual([]);
      });

      test("when the only receiver rejects, the sender gets its Reject and the session ends", async () => {
        const server = serve();
        const alice = await Peer.join(server, "alice");
        const bob = await Peer.join(server, "bob");
        alice.send({ t: MessageType.Open, sid: "r1", pth: "alice/x", to: "bob" });
        await bob.take(MessageType.Open);
        bob.send({ t: MessageType.Reject, sid: "r1", rsn: "no tunnel for this channel" });
        expect(await alice.take(MessageType.Reject)).toEqual({ t: MessageType.Reject, sid: "r1", rsn: "no tunnel for this channel" });
        expect(server.sessionCount).toBe(0);
      });

      test("a sender's Close reaches receivers as it was sent, fields it added included", async () => {
        const server = serve();
        const alice = await Peer.join(server, "alice");
        const bob = await Peer.join(server, "bob");
        await session(alice, [bob], "l1");
        bob.keepRaw = true;
        const close = encode({ t: MessageType.Close, sid: "l1", lst: 7, extra: "kept" });
        alice.ws.send(close);
        expect((await bob.take(MessageType.Close)).sid).toBe("l1");
        expect(bob.raw).toEqual([close]);
        expect(server.sessionCount).toBe(0);
      });
    });

    describe("lifecycle: the server holds no session whose connections are gone", () => {
      test("a sender that disconnects closes its sessions with 'peer gone' to every receiver", async () => {
        const server = serve();
        const alice = await Peer.join(server, "alice");
        const bob = await Peer.join(server, "bob");
        const carol = await Peer.join(server, "carol");
        await session(alice, [bob, carol], "x1");
        await session(alice, [bob], "x2", "alice/y", "bob");
        alice.send({ t: MessageType.Open, sid: "x3", pth: "alice/z", to: "carol" }); // offered, not accepted
        await carol.take(MessageType.Open);
        expect(server.sessionCount).toBe(3);
        alice.close();
        expect(await carol.take(MessageType.Close, (m) => m.sid === "x1")).toEqual({ t: MessageType.Close, sid: "x1", rsn: "peer gone" });
        expect((await carol.take(MessageType.Close, (m) => m.sid === "x3")).rsn).toBe("peer gone");
        for (const sid of ["x1", "x2"]) expect((await bob.take(MessageType.Close, (m) => m.sid === sid)).rsn).toBe("peer gone");
        expect(server.sessionCount).toBe(0);
        await eventually("the connection count to drop", () => server.stats().connections === 2);
      });

      test("receivers that disconnect leave; the sender gets Close 'peer gone' when the last one goes", async () => {
        const server = serve();
        const alice = await Peer.join(server, "alice");
        const bob = await Peer.join(server, "bob");
        const carol = await Peer.join(server, "carol");
        await session(alice, [bob, carol], "y1");
        bob.close();
        await bob.waitClosed();
        await alice.sync();
        expect(alice.inbox).toEqual([]);
        carol.ws.terminate();
        expect(await alice.take(MessageType.Close)).toEqual({ t: MessageType.Close, sid: "y1", rsn: "peer gone" });
        expect(server.sessionCount).toBe(0);
        alice.close();
        await eventually("no connection left", () => server.stats().connections === 0);
      });
    });

    describe("malformed input closes only the connection that sent it", () => {
      async function expectFatal(server: HotlinkServer, send: (p: Peer) => void, code: string, closeCode: number): Promise<void> {
        const alice = await Peer.join(server, "alice");
        const bob = await Peer.join(server, "bob");
        await session(alice, [bob], `live-${code}`);
        const mallory = await Peer.join(server, "mallory");
        send(mallory);
        expect((await mallory.take(MessageType.Error)).code).toBe(code);
        expect((await mallory.waitClosed()).code).toBe(closeCode);
        alice.send({ t: MessageType.Data, sid: `live-${code}`, seq: 1, pay: payload(1, 32) });
        expect((await bob.take(MessageType.Data)).seq).toBe(1);
        expect(alice.closed).toBeUndefined();
        expect(bob.closed).toBeUndefined();
      }

      test("garbage bytes: Error decode, close 1008", async () => {
        // Not 0xff first: on the framed link that byte begins a close frame (framed-link.ts).
        await expectFatal(serve(), (p) => p.ws.send(new Uint8Array([0x13, 0x37, 0xff, 0x00])), "decode", 1008);
      });

      test("a text frame: Error decode, close 1008", async () => {
        await expectFatal(serve(), (p) => p.ws.send('{"t":1}'), "decode", 1008);
      });

      test("CBOR that is no hotlink message: Error schema, close 1008", async () => {
        await expectFatal(serve(), (p) => p.ws.send(encode({ t: 12, sid: "x", seq: -1, pay: "no" })), "schema", 1008);
      });

      test("a message over the limit: Error too_large, close 1009", async () => {
        await expectFatal(serve({ maxMessageBytes: MIN_MESSAGE_BYTES }), (p) => p.send({ t: MessageType.Data, sid: "big", seq: 1, pay: new Uint8Array(MIN_MESSAGE_BYTES) }), "too_large", 1009);
      });

      test("thousands of random messages over many connections never disturb a live session, and the server keeps serving", async () => {
        const server = serve();
        const alice = await Peer.join(server, "alice");
        const bob = await Peer.join(server, "bob");
        await session(alice, [bob], "live");
        const rng = prng(fuzzSeed(0x5e55_1011));
        const samples = sampleMessages();
        let sent = 0;
        let seq = 0;
        let fatal = 0;
        while (sent < 4_000) {
          await Promise.all(
            [0, 1, 2, 3].map(async () => {
              const peer = await Peer.join(server, rng.pick(["mallory", "eve"] as const));
              for (let i = 0; i < 25; i++, sent++) peer.ws.send(randomFrame(rng, samples));
              // Either the server closed it for a bad message, or it answers a Ping after all 25.
              peer.send({ t: MessageType.Ping, n: 0xfeed });
              await eventually("an answer or a close", () => peer.closed !== undefined || peer.inbox.some((m) => m.t === MessageType.Pong && m.n === 0xfeed));
              if (peer.closed !== undefined) fatal++;
              peer.close();
            }),
          );
          seq++;
          alice.send({ t: MessageType.Data, sid: "live", seq, pay: payload(seq, 64) });
        }
        for (let i = 1; i <= seq; i++) expect((await bob.take(MessageType.Data)).seq).toBe(i);
        expect(fatal).toBeGreaterThan(0);
        expect(alice.closed).toBeUndefined();
        expect(bob.closed).toBeUndefined();
        expect(server.sessionCount).toBe(1);
        expect(server.stats().errors).toBeGreaterThan(fatal);
        const carol = await Peer.join(server, "carol");
        await carol.sync();
        await eventually("the fuzzing connections to be gone", () => server.stats().connections === 3);
      }, 30_000);
    });

    describe("backpressure: a slow receiver pauses its sender, nothing is dropped", () => {
      test("64 MiB to a receiver that stops reading: the sender is paused, the server buffers little, and every seq arrives once, in order", async () => {
        const highWaterBytes = 1024 * 1024;
        const server = serve({ highWaterBytes });
        const alice = await Peer.join(server, "alice");
        const bob = await Peer.join(server, "bob");
        await session(alice, [bob], "bulk", "alice/bulk", "bob");
        const seen: number[] = [];
        let intact = true;
        bob.onData = (m) => {
          seen.push(m.seq);
          if (m.pay.byteLength !== CHUNK || new DataView(m.pay.buffer, m.pay.byteOffset).getUint32(0) !== m.seq || m.pay[CHUNK - 1] !== (m.seq & 0xff)) intact = false;
        };
        const CHUNK = 64 * 1024;
        const COUNT = 1024; // 64 MiB
        expect(bob.ws.pause()).toBe(true);
        for (let seq = 1; seq <= COUNT; seq++) alice.send({ t: MessageType.Data, sid: "bulk", seq, pay: payload(seq, CHUNK) });

        await eventually("the server to pause alice", () => server.stats().pausedSenders === 1, { timeoutMs: 10_000 });
        let maxBuffered = 0;
        for (let i = 0; i < 50; i++) {
          maxBuffered = Math.max(maxBuffered, server.stats().bufferedBytes);
          await Bun.sleep(5);
        }
        const stalled = server.stats();
        expect(stalled.pausedSenders).toBe(1);
        expect(stalled.relayedMessages).toBeLessThan(COUNT / 2);
        // High-water mark plus what a paused sender still delivers (one socket read); far from 64 MiB.
        expect(maxBuffered).toBeGreaterThan(highWaterBytes);
        expect(maxBuffered).toBeLessThan(highWaterBytes + 4 * 1024 * 1024);

        bob.ws.resume();
        await eventually("every seq at bob", () => seen.length >= COUNT, { timeoutMs: 30_000 });
        await bob.sync();
        expect(seen.length).toBe(COUNT);
        expect(seen.every((seq, i) => seq === i + 1)).toBe(true);
        expect(intact).toBe(true);
        expect(server.stats()).toMatchObject({ pausedSenders: 0, relayedMessages: COUNT, errors: 0 });
        alice.send({ t: MessageType.Close, sid: "bulk" });
        await bob.take(MessageType.Close);
        expect(server.sessionCount).toBe(0);
      }, 60_000);

      test("a receiver stuck past the deadline gets Close 'receiver too slow', and so does its sender", async () => {
        const server = serve({ highWaterBytes: 256 * 1024, stuckTimeoutMs: 300 });
        const alice = await Peer.join(server, "alice");
        const bob = await Peer.join(server, "bob");
        await session(alice, [bob], "stuck", "alice/stuck", "bob");
        const seen: number[] = [];
        bob.onData = (m) => void seen.push(m.seq);
        bob.ws.pause();
        for (let seq = 1; seq <= 256; seq++) alice.send({ t: MessageType.Data, sid: "stuck", seq, pay: payload(seq, 64 * 1024) });
        expect(await alice.take(MessageType.Close, () => true, 10_000)).toEqual({ t: MessageType.Close, sid: "stuck", rsn: "receiver too slow" });
        expect(server.sessionCount).toBe(0);
        await eventually("alice to be resumed", () => server.stats().pausedSenders === 0);
        bob.ws.resume();
        expect(await bob.take(MessageType.Close, () => true, 10_000)).toEqual({ t: MessageType.Close, sid: "stuck", rsn: "receiver too slow" });
        // What bob got before the Close is a gapless prefix: nothing vanished in the middle.
        expect(seen.length).toBeLessThan(256);
        expect(seen.every((seq, i) => seq === i + 1)).toBe(true);
        // The Data alice had already sent for the ended session is refused, not lost silently.
        await eventually("alice's late Data to be answered", () => alice.inbox.some((m) => m.t === MessageType.Error && m.code === "unknown_session"), { timeoutMs: 10_000 });
        expect(alice.closed).toBeUndefined();
        expect(bob.closed).toBeUndefined();
      }, 30_000);
    });

    describe("reload", () => {
      test("a removed user's connection is closed and its token refused; a bad users file keeps the old users", async () => {
        const file = join(dir, "reload-users.json");
        copyFileSync(usersFile, file);
        const server = serve({ usersFile: file });
        const alice = await Peer.join(server, "alice");
        const eve = await Peer.join(server, "eve");
        removeUser(file, "eve");
        expect(server.reload()).toEqual({ ok: true, errors: [] });
        expect((await eve.take(MessageType.Error)).code).toBe("forbidden");
        expect((await eve.waitClosed()).code).toBe(1008);
        await expect(Peer.open(server, "eve", tokens.eve)).rejects.toThrow("did not open");
        await alice.sync();
        writeFileSync(file, "{ not json");
        const result = server.reload();
        expect(result.ok).toBe(false);
        expect(result.errors[0]).toContain("not valid JSON");
        await Peer.join(server, "bob");
        expect(alice.closed).toBeUndefined();
      });

      test("a receiver that loses read access leaves its sessions with Close 'forbidden'", async () => {
        const acl = join(dir, "reload-acl.json");
        writeFileSync(acl, JSON.stringify(RULES));
        const server = serve({ aclFile: acl });
        const alice = await Peer.join(server, "alice");
        const bob = await Peer.join(server, "bob");
        await session(alice, [bob], "z1", "alice/z", "bob");
        writeFileSync(acl, JSON.stringify({ rules: [] }));
        expect(server.reload().ok).toBe(true);
        expect(await bob.take(MessageType.Error)).toMatchObject({ code: "forbidden", sid: "z1" });
        expect(await bob.take(MessageType.Close)).toEqual({ t: MessageType.Close, sid: "z1", rsn: "forbidden" });
        expect(await alice.take(MessageType.Close)).toEqual({ t: MessageType.Close, sid: "z1", rsn: "forbidden" });
        expect(server.sessionCount).toBe(0);
      });
    });

    test("metrics count connections, sessions, messages by type, relayed bytes and errors by code", async () => {
      const registry = new Registry();
      const server = serve({ registry });
      const alice = await Peer.join(server, "alice");
      const bob = await Peer.join(server, "bob");
      await session(alice, [bob], "m1");
      for (let seq = 1; seq <= 3; seq++) alice.send({ t: MessageType.Data, sid: "m1", seq, pay: payload(seq, 100) });
      for (let seq = 1; seq <= 3; seq++) await bob.take(MessageType.Data);
      bob.send({ t: MessageType.Data, sid: "m1", seq: 1, pay: payload(1, 1) });
      await bob.take(MessageType.Error);
      const text = registry.render();
      expect(text).toContain('stoa_hotlink_connections{state="ready"} 2\n');
      expect(text).toContain('stoa_hotlink_connections{state="awaiting_hello"} 0\n');
      expect(text).toContain("stoa_hotlink_sessions 1\n");
      expect(text).toContain('stoa_hotlink_messages_total{type="data"} 4\n');
      expect(text).toContain('stoa_hotlink_messages_total{type="open"} 1\n');
      expect(text).toContain('stoa_hotlink_errors_total{code="not_sender"} 1\n');
      expect(text).toContain("stoa_hotlink_paused_senders 0\n");
      expect(text).toMatch(/stoa_hotlink_bytes_total (\d+)\n/);
      expect(Number(/stoa_hotlink_bytes_total (\d+)/.exec(text)?.[1])).toBe(server.stats().relayedBytes);
    });

    // --- fuzz material ---------------------------------------------------------------------
  });
}

function sampleMessages(): Uint8Array[] {
  const messages: HotlinkMessageInput[] = [
    { t: MessageType.Hello, v: PROTOCOL_VERSION },
    { t: MessageType.Welcome, v: 1, usr: "mallory", mmb: 4096, mpb: 0 },
    { t: MessageType.Ping, n: 3 },
    { t: MessageType.Pong, n: 3 },
    { t: MessageType.Error, code: "internal", msg: "hm", sid: "live" },
    { t: MessageType.Open, sid: "m1", pth: "mallory/x" },
    { t: MessageType.Open, sid: "live", pth: "alice/x", to: "bob" },
    { t: MessageType.Accept, sid: "live" },
    { t: MessageType.Reject, sid: "live", rsn: "no" },
    { t: MessageType.Data, sid: "live", seq: 1, pay: new Uint8Array([1, 2, 3]) },
    { t: MessageType.Data, sid: "m1", seq: 2, pth: "alice/x", etg: "e", pay: new Uint8Array(40) },
    { t: MessageType.Close, sid: "live", rsn: "bye" },
    { t: MessageType.Signal, sid: "live", knd: "direct_offer", adr: ["127.0.0.1:1"], tok: "k".repeat(16), fpr: "00".repeat(32) },
    { t: MessageType.Signal, sid: "live", knd: "sdp_offer", tok: "{}" },
  ];
  return messages.map((m) => encodeMessage(m));
}

function randomValue(rng: Prng, depth: number): unknown {
  switch (rng.int(depth > 0 ? 8 : 5)) {
    case 0:
      return rng.int(2) === 0 ? rng.int(20) : rng.next() - 0x8000_0000;
    case 1:
      return rng.pick(["", "t", "sid", "live", "alice/x", "ü".repeat(rng.int(5))]);
    case 2:
      return rng.bytes(rng.int(32));
    case 3:
      return rng.pick([true, false, null, 1.5]);
    case 4:
      return BigInt(rng.next()) << 32n;
    case 5:
      return Array.from({ length: rng.int(4) }, () => randomValue(rng, depth - 1));
    default: {
      const value: Record<string, unknown> = { t: rng.int(16) };
      for (const key of ["sid", "seq", "pth", "pay", "to", "rsn", "knd", "v", "n"]) if (rng.int(2) === 0) value[key] = randomValue(rng, depth - 1);
      return value;
    }
  }
}

function randomFrame(rng: Prng, samples: Uint8Array[]): Uint8Array | string {
  switch (rng.int(6)) {
    case 0:
      return rng.bytes(rng.int(64));
    case 1:
    case 2:
      return mutate(rng, rng.pick(samples));
    case 3:
      return `text ${rng.next()}`;
    case 4:
      return encode(randomValue(rng, 3));
    default:
      return rng.pick(samples);
  }
}
