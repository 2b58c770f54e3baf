/**
 * Confirmation: a real metaserver (once per store, meta-stores.ts `forEachStore`) pinging a fake
 * gateway — live, removed, timed out, raced by a deregistration or a re-registration, shared,
 * ended by close — and the ping client against servers that misbehave in every way it reads.
 */
import { describe, expect, test } from "bun:test";
import { readdirSync } from "node:fs";
import type { Socket } from "bun";
import { type PingOutcome, pingThroughGateway } from "../../src/meta/confirm.ts";
import { MetaApiError } from "../../src/meta/protocol.ts";
import { MAX_PING_REPLY_BYTES, PUB_ID_HEADER } from "../../src/stream/protocol.ts";
import { fakeGateway } from "../fixtures/meta-gateway.ts";
import { startTestMeta } from "../fixtures/meta-helpers.ts";
import { forEachStore } from "../fixtures/meta-stores.ts";
import { eventually } from "../helpers/eventually.ts";
import { rejection } from "../helpers/rejection.ts";

/** A port on 127.0.0.1 that nothing listens on (it was free a moment ago). */
function freePort(): number {
  const probe = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response() });
  const port = probe.port ?? 0;
  probe.stop(true);
  return port;
}


forEachStore((kind) => {
  describe("confirmation through the host's gateway", () => {
    test("a publisher that answers the ping on [::1] becomes live", async () => {
      const t = await startTestMeta({ kind });
      const gw = fakeGateway({ hostname: "::1", serves: ["abc"] });
      try {
        const reg = await t.client.register({ name: "lab/temp", pub_id: "abc", host: "::1", ports: { ping: gw.port, service: 1, string: 2 } });
        expect(reg.urls.ping).toBe(`ws://[::1]:${gw.port}/pub/abc`);
        expect((await t.client.confirm("abc")).state).toBe("live");
        expect(gw.pings).toEqual(["abc"]);
        expect((await t.client.get("abc")).state).toBe("live");
      } finally {
        await t.meta.close();
        await gw.stop();
      }
    });

    test("nothing listening on the host: 502, the registration is removed, the message suggests the gateway", async () => {
      const t = await startTestMeta({ kind });
      const port = freePort();
      try {
        await t.client.register({ name: "x", pub_id: "abc", host: "127.0.0.1", ports: { ping: port, service: 1, string: 2 } });
        const err = await rejection(t.client.confirm("abc"), MetaApiError);
        expect([err.status, err.error]).toEqual([502, "confirm_failed"]);
        expect(err.message).toBe(
          `could not confirm x (pub_id abc), so its registration was removed: no stoa gateway answered at 127.0.0.1:${port} ` +
            "(nothing listening, unreachable, silent, or another service); check the registered host and ping port, and that stoa gateway (or stoa up) runs there",
        );
        expect((await rejection(t.client.get("abc"), MetaApiError)).status).toBe(404);
      } finally {
        await t.meta.close();
      }
    });

    test("a gateway that does not serve the pub_id: 502 naming the gateway's 404 (its message is not quoted)", async () => {
      const t = await startTestMeta({ kind });
      const gw = fakeGateway({ serves: [] });
      try {
        await t.client.register({ name: "x", pub_id: "abc", host: "127.0.0.1", ports: { ping: gw.port, service: 1, string: 2 } });
        const err = await rejection(t.client.confirm("abc"), MetaApiError);
        expect(err.status).toBe(502);
        expect(err.message).toContain("the stoa gateway on host 127.0.0.1 does not serve publisher abc (404)");
        expect(err.message).not.toContain("no publisher abc on this host");
        expect(await t.client.list("")).toEqual([]);
      } finally {
        await t.meta.close();
        await gw.stop();
      }
    });

    test("a publisher that upgrades but never answers: 504 after the timeout, removed", async () => {
      const t = await startTestMeta({ kind, confirm: { timeoutMs: 300 } });
      const gw = fakeGateway({ serves: ["abc"], mode: "silent" });
      try {
        await t.client.register({ name: "x", pub_id: "abc", host: "127.0.0.1", ports: { ping: gw.port, service: 1, string: 2 } });
        const err = await rejection(t.client.confirm("abc"), MetaApiError);
        expect([err.status, err.error, err.code]).toEqual([504, "confirm_failed", "timeout"]);
        expect(err.message).toContain(`publisher abc accepted the WebSocket at ws://127.0.0.1:${gw.port}/pub/abc but did not answer the ping within 0.3s`);
        expect(await t.client.list("")).toEqual([]);
        expect(gw.pings).toEqual(["abc"]);
      } finally {
        await t.meta.close();
        await gw.stop();
      }
    });

    test("a slow confirmation does not hold up other requests", async () => {
      const t = await startTestMeta({ kind });
      const gw = fakeGateway({ serves: ["slow"], delayMs: 1_000 });
      try {
        await t.client.register({ name: "slow", pub_id: "slow", host: "127.0.0.1", ports: { ping: gw.port, service: 1, string: 2 } });
        let confirmed = false;
        const confirming = t.client.confirm("slow").then((info) => {
          confirmed = true;
          return info;
        });
        await eventually("the ping to be in flight", () => gw.pings.length > 0);
        const during: boolean[] = [];
        for (let i = 0; i < 10; i++) {
          const { pub_id } = await t.client.register({ name: `other/${i}`, host: "h" });
          await t.client.heartbeat(pub_id);
          await t.client.list("other");
          await t.client.get("slow");
          await t.client.deregister(pub_id);
          during.push(confirmed);
        }
        expect(during.every((done) => !done)).toBe(true);
        expect((await confirming).state).toBe("live");
      } finally {
        await t.meta.close();
        await gw.stop();
      }
    });

    test("a registration deregistered while its confirmation runs: 404 saying so", async () => {
      const t = await startTestMeta({ kind });
      const gw = fakeGateway({ serves: ["abc"], delayMs: 200 });
      try {
        await t.client.register({ name: "x", pub_id: "abc", host: "127.0.0.1", ports: { ping: gw.port, service: 1, string: 2 } });
        const confirming = rejection(t.client.confirm("abc"), MetaApiError);
        await eventually("the ping to be in flight", () => gw.pings.length > 0);
        await t.client.deregister("abc");
        const err = await confirming;
        expect(err.status).toBe(404);
        expect(err.message).toBe("publisher abc was deregistered while it was being confirmed");
      } finally {
        await t.meta.close();
        await gw.stop();
      }
    });

    test("a registration replaced while its confirmation runs is left alone: 409", async () => {
      const t = await startTestMeta({ kind });
      const gw = fakeGateway({ serves: ["abc"], delayMs: 200 });
      try {
        const ports = { ping: gw.port, service: 1, string: 2 };
        await t.client.register({ name: "x", pub_id: "abc", host: "127.0.0.1", ports });
        const confirming = rejection(t.client.confirm("abc"), MetaApiError);
        await eventually("the ping to be in flight", () => gw.pings.length > 0);
        await t.client.register({ name: "x", pub_id: "abc", host: "127.0.0.1", ports });
        const err = await confirming;
        expect([err.status, err.error]).toEqual([409, "changed"]);
        expect((await t.client.get("abc")).state).toBe("pending");
      } finally {
        await t.meta.close();
        await gw.stop();
      }
    });

    test("two confirmations of one registration share one ping", async () => {
      const t = await startTestMeta({ kind });
      const gw = fakeGateway({ serves: ["abc"], delayMs: 100 });
      try {
        await t.client.register({ name: "x", pub_id: "abc", host: "127.0.0.1", ports: { ping: gw.port, service: 1, string: 2 } });
        const both = await Promise.all([t.client.confirm("abc"), t.client.confirm("abc")]);
        expect(both.map((i) => i.state)).toEqual(["live", "live"]);
        expect(gw.pings).toEqual(["abc"]);
      } finally {
        await t.meta.close();
        await gw.stop();
      }
    });

    test("closing the metaserver ends a confirmation in flight", async () => {
      const t = await startTestMeta({ kind, confirm: { timeoutMs: 10_000 } });
      const gw = fakeGateway({ serves: ["abc"], mode: "silent" });
      try {
        await t.client.register({ name: "x", pub_id: "abc", host: "127.0.0.1", ports: { ping: gw.port, service: 1, string: 2 } });
        const confirming = t.client.confirm("abc").then(
          () => "confirmed",
          (err: Error) => err.message,
        );
        await eventually("the ping to be in flight", () => gw.pings.length > 0);
        await t.meta.close();
        expect(await confirming).toMatch(/shutting down|cannot reach/);
      } finally {
        await gw.stop();
      }
    });
  });
});

/**
 * A TCP server that completes the WebSocket handshake by hand and then runs `script` on the
 * socket, for replies a well-behaved server would never send.
 */
function rawServer(script: (socket: Socket<{ head: string }>) => void, handshake = true) {
  return Bun.listen<{ head: string }>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(s) {
        s.data = { head: "" };
        if (!handshake) script(s);
      },
      data(s, chunk) {
        if (!handshake) return;
        s.data.head += chunk.toString("latin1");
        if (!s.data.head.includes("\r\n\r\n")) return;
        const key = /sec-websocket-key: *(\S+)/i.exec(s.data.head)?.[1] ?? "";
        const accept = new Bun.CryptoHasher("sha1").update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest("base64");
        s.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\nX-Stoa-Pub-Id: abc\r\n\r\n`);
        s.data.head = "";
        script(s);
      },
    },
  });
}

function frame(opcode: number, payload: Uint8Array | string, fin = true): Uint8Array {
  const body = typeof payload === "string" ? new TextEncoder().encode(payload) : payload;
  if (body.length >= 126) throw new Error("test frames are short");
  return Uint8Array.of((fin ? 0x80 : 0) | opcode, body.length, ...body);
}

async function pingRaw(script: (socket: Socket<{ head: string }>) => void, handshake = true, timeoutMs = 1_000): Promise<PingOutcome> {
  const server = rawServer(script, handshake);
  try {
    return await pingThroughGateway({ host: "127.0.0.1", port: server.port, pubId: "abc" }, { timeoutMs });
  } finally {
    server.stop(true);
  }
}

/** A frame header announcing `length` payload bytes (64-bit length form). */
function bigFrameHeader(length: number, opcode = 0x1, fin = true): Uint8Array {
  const out = new Uint8Array(10);
  out[0] = (fin ? 0x80 : 0) | opcode;
  out[1] = 127;
  new DataView(out.buffer).setBigUint64(2, BigInt(length));
  return out;
}

const REPLY = JSON.stringify({ value: null, seq: 0, ts: "2025-01-01T00:00:00Z" });

describe("the ping client reads only what it should", () => {
  test("accepts a reply in fragments, after a ping from the server", async () => {
    const out = await pingRaw((s) => {
      s.write(frame(0x9, "hi"));
      s.write(frame(0x1, REPLY.slice(0, 10), false));
      s.write(frame(0x0, REPLY.slice(10)));
    });
    expect(out).toEqual({ ok: true, reply: { value: null, seq: 0, ts: "2025-01-01T00:00:00Z" } });
  });

  test("accepts a large reply arriving in many reads", async () => {
    const value = "v".repeat(3 * 1024 * 1024);
    const server = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: (req, srv) => (srv.upgrade(req, { headers: { [PUB_ID_HEADER]: "abc" } }) ? undefined : new Response("no", { status: 426 })),
      websocket: { message: (ws) => void ws.send(JSON.stringify({ value, seq: 3, ts: new Date().toISOString() })) },
    });
    try {
      const out = await pingThroughGateway({ host: "127.0.0.1", port: server.port ?? 0, pubId: "abc" }, { timeoutMs: 5_000 });
      expect(out.ok && out.reply.value?.length).toBe(value.length);
    } finally {
      await server.stop(true);
    }
  });

  const failures: [string, (s: Socket<{ head: string }>) => void, boolean, RegExp][] = [
    ["a reply that is not JSON", (s) => void s.write(frame(0x1, "pong")), true, /not JSON/],
    ["a reply without the fields", (s) => void s.write(frame(0x1, '{"value":1}')), true, /without the fields \{value, seq, ts\}/],
    ["a binary reply", (s) => void s.write(frame(0x2, REPLY.slice(0, 100))), true, /binary frame/],
    ["a close frame", (s) => void s.write(frame(0x8, Uint8Array.of(0x03, 0xf3, 0x62, 0x79, 0x65))), true, /closed the WebSocket \(code 1011\) instead/],
    // Frames a server must not send fail the confirmation with a fixed reason, nothing quoted.
    ["a masked frame", (s) => void s.write(Uint8Array.of(0x81, 0x84, 0x73, 0x65, 0x63, 0x72, 0, 0, 0, 0)), true, /^publisher abc broke the WebSocket protocol at ws:\/\/127\.0\.0\.1:\d+\/pub\/abc \(an invalid frame\) instead of answering the ping$/],
    ["a text frame that is not UTF-8", (s) => void s.write(frame(0x1, Uint8Array.of(0x73, 0x65, 0xff, 0xfe))), true, /^publisher abc broke the WebSocket protocol at .* \(an invalid frame\)/],
    // Checked on the frame's header: the payload never comes, and the answer is not a timeout.
    ["a frame announced beyond the limit", (s) => void s.write(Uint8Array.of(0x81, 127, 0, 0, 0, 1, 0, 0, 0, 0)), true, new RegExp(`^publisher abc's ping reply is larger than ${MAX_PING_REPLY_BYTES} bytes$`)],
    ["a frame announced one byte beyond the limit", (s) => void s.write(bigFrameHeader(MAX_PING_REPLY_BYTES + 1)), true, /ping reply is larger than/],
    // A message's fragments add up: 4 bytes, then a continuation announcing the rest plus one.
    ["fragments adding up beyond the limit", (s) => {
      s.write(frame(0x1, "yyyy", false));
      s.write(bigFrameHeader(MAX_PING_REPLY_BYTES - 3, 0x0));
    }, true, /ping reply is larger than/],
    ["a hang-up before the reply", (s) => void s.end(), true, /closed the connection .* without answering the ping/],
    // A stoa gateway's routing errors are named by their code, never quoted.
    [
      "a stoa gateway's 502",
      (s) => void s.write('HTTP/1.1 502 Bad Gateway\r\nContent-Length: 52\r\n\r\n{"error":"target_down","message":"secret-internals"}'),
      false,
      /^the stoa gateway on host 127\.0\.0\.1 knows publisher abc but its ping socket does not answer \(502\)$/,
    ],
    [
      "a stoa gateway's 404",
      (s) => void s.write('HTTP/1.1 404 Not Found\r\nContent-Length: 55\r\n\r\n{"error":"unknown_pub_id","message":"secret-internals"}'),
      false,
      /^the stoa gateway on host 127\.0\.0\.1 does not serve publisher abc \(404\)/,
    ],
  ];
  for (const [what, script, handshake, reason] of failures) {
    test(`fails on ${what}`, async () => {
      const out = await pingRaw(script, handshake);
      expect(out.ok).toBe(false);
      if (!out.ok) {
        expect(out.reason).toMatch(reason);
        expect(out.reason).not.toContain("secret");
        expect(out.timedOut).toBe(false);
      }
    });
  }

  // D6: the metaserver must not be a port scanner. Whatever answers on a registered host and
  // port that is not a stoa gateway (or the publisher itself), the outcome reads the same.
  const foreign: [string, (s: Socket<{ head: string }>) => void, boolean][] = [
    ["a server that is not HTTP (an SSH banner)", (s) => void s.write("SSH-2.0-OpenSSH_9.2 secret-banner\r\n\r\n"), false],
    ["a hang-up before any answer", (s) => void s.end(), false],
    ["an HTTP server that does not upgrade", (s) => void s.write("HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nsecret-banner"), false],
    ["an HTTP error that is not a stoa gateway's", (s) => void s.write('HTTP/1.1 502 Bad Gateway\r\nContent-Length: 38\r\n\r\n{"error":"down","message":"secret-x"}'), false],
    ["a 404 with a stoa code but the wrong status", (s) => void s.write('HTTP/1.1 403 Forbidden\r\nContent-Length: 50\r\n\r\n{"error":"unknown_pub_id","message":"secret-x"}'), false],
    ["a 101 with a wrong accept key", (s) => void s.write("HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x\r\n\r\n"), false],
    ["an endless response head", (s) => {
      s.write("HTTP/1.1 101 Switching Protocols\r\n");
      for (let i = 0; i < 400; i++) s.write(`X-Secret-${i}: ${"y".repeat(60)}\r\n`);
    }, false],
    ["a server that accepts and stays silent", () => {}, false],
  ];
  for (const [what, script, handshake] of foreign) {
    test(`${what}: the one generic reason, nothing quoted, not a timeout`, async () => {
      const out = await pingRaw(script, handshake, 300);
      expect(out).toEqual({ ok: false, timedOut: false, reason: expect.stringMatching(/^no stoa gateway answered at 127\.0\.0\.1:\d+ \(nothing listening, unreachable, silent, or another service\)/) });
      expect(out.ok ? "" : out.reason).not.toContain("secret");
    });
  }

  test("how soon a foreign service answered tells nothing: refused, a banner and silence all end at the deadline (regression, found attacking the issue 9 D6 fix)", async () => {
    const timeoutMs = 400;
    const timed = async (run: () => Promise<PingOutcome>) => {
      const started = performance.now();
      const out = await run();
      return { out, ms: performance.now() - started };
    };
    const refused = await timed(() => pingThroughGateway({ host: "127.0.0.1", port: freePort(), pubId: "abc" }, { timeoutMs }));
    const banner = await timed(() => pingRaw((s) => void s.write("SSH-2.0-x\r\n\r\n"), false, timeoutMs));
    const silent = await timed(() => pingRaw(() => {}, false, timeoutMs));
    for (const { out, ms } of [refused, banner, silent]) {
      expect(out).toEqual({ ok: false, timedOut: false, reason: expect.stringMatching(/^no stoa gateway answered/) });
      expect(ms).toBeGreaterThanOrEqual(timeoutMs - 5);
    }
  });

  test("a foreign WebSocket server (valid upgrade, but not naming the pub_id) is not confirmed", async () => {
    const server = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: (req, srv) => (srv.upgrade(req) ? undefined : new Response("no", { status: 426 })),
      websocket: { message: (ws) => void ws.send(REPLY) },
    });
    try {
      const out = await pingThroughGateway({ host: "127.0.0.1", port: server.port ?? 0, pubId: "abc" }, { timeoutMs: 2_000 });
      expect(out).toEqual({ ok: false, timedOut: false, reason: expect.stringMatching(/^no stoa gateway answered/) });
    } finally {
      await server.stop(true);
    }
  });

  test("a redirect is not followed: the service it points to is not pinged, and the reason is the generic one", async () => {
    const target = fakeGateway({ serves: ["abc"] });
    const redirect = rawServer((s) => void s.write(`HTTP/1.1 307 Temporary Redirect\r\nLocation: ws://127.0.0.1:${target.port}/pub/abc\r\nContent-Length: 0\r\n\r\n`), false);
    try {
      const out = await pingThroughGateway({ host: "127.0.0.1", port: redirect.port, pubId: "abc" }, { timeoutMs: 300 });
      expect(out).toEqual({ ok: false, timedOut: false, reason: expect.stringMatching(/^no stoa gateway answered/) });
      expect(target.pings).toEqual([]);
    } finally {
      redirect.stop(true);
      await target.stop();
    }
  });

  test("refused, and a host name that does not resolve, read the same as a foreign service", async () => {
    const refused = await pingThroughGateway({ host: "127.0.0.1", port: freePort(), pubId: "abc" }, { timeoutMs: 2_000 });
    const unresolved = await pingThroughGateway({ host: "no-such-host.invalid", port: 8083, pubId: "abc" }, { timeoutMs: 2_000 });
    for (const out of [refused, unresolved]) {
      expect(out).toEqual({ ok: false, timedOut: false, reason: expect.stringMatching(/^no stoa gateway answered at /) });
    }
  });

  test("an aborted ping ends at once", async () => {
    const server = rawServer(() => {}, false);
    try {
      const abort = new AbortController();
      const pending = pingThroughGateway({ host: "127.0.0.1", port: server.port, pubId: "abc" }, { timeoutMs: 10_000, signal: abort.signal });
      abort.abort();
      expect(await pending).toEqual({ ok: false, timedOut: false, reason: "the metaserver is shutting down" });
    } finally {
      server.stop(true);
    }
  });
});

describe("the ping client's limits and what it leaves behind", () => {
  test("accepts a reply of exactly MAX_PING_REPLY_BYTES", async () => {
    const empty = JSON.stringify({ value: "", seq: 1, ts: "2025-01-01T00:00:00Z" });
    const value = "v".repeat(MAX_PING_REPLY_BYTES - empty.length);
    const server = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: (req, srv) => (srv.upgrade(req, { headers: { [PUB_ID_HEADER]: "abc" } }) ? undefined : new Response("no", { status: 426 })),
      websocket: { message: (ws) => void ws.send(JSON.stringify({ value, seq: 1, ts: "2025-01-01T00:00:00Z" })) },
    });
    try {
      const out = await pingThroughGateway({ host: "127.0.0.1", port: server.port ?? 0, pubId: "abc" }, { timeoutMs: 10_000 });
      expect(out.ok && out.reply.value?.length).toBe(value.length);
    } finally {
      await server.stop(true);
    }
  });

  test("many pings of every outcome leave no socket open", async () => {
    const fds = () => readdirSync("/proc/self/fd").length;
    const good = fakeGateway({ serves: ["abc"] });
    const unknown = fakeGateway({ serves: [] });
    const silent = fakeGateway({ serves: ["abc"], mode: "silent" });
    const banner = rawServer((s) => void s.write("SSH-2.0-x\r\n\r\n"), false);
    const mute = rawServer(() => {}, false);
    const closing = rawServer((s) => void s.write(frame(0x8, Uint8Array.of(0x03, 0xe8))));
    const refused = freePort();
    try {
      const ping = (port: number, timeoutMs = 200, signal?: AbortSignal) =>
        pingThroughGateway({ host: "127.0.0.1", port, pubId: "abc" }, { timeoutMs, ...(signal ? { signal } : {}) });
      await ping(good.port); // warm up whatever the first dial loads
      const before = fds();
      for (let round = 0; round < 4; round++) {
        const aborts = Array.from({ length: 10 }, () => new AbortController());
        const all = [
          ...Array.from({ length: 10 }, () => ping(good.port)),
          ...Array.from({ length: 10 }, () => ping(unknown.port)),
          ...Array.from({ length: 10 }, () => ping(silent.port)),
          ...Array.from({ length: 10 }, () => ping(banner.port)),
          ...Array.from({ length: 10 }, () => ping(mute.port)),
          ...Array.from({ length: 10 }, () => ping(closing.port)),
          ...Array.from({ length: 10 }, () => ping(refused)),
          ...aborts.map((a) => ping(mute.port, 10_000, a.signal)),
        ];
        await Bun.sleep(20); // the aborted pings get under way before they are aborted
        for (const a of aborts) a.abort();
        const outcomes = await Promise.all(all);
        const kinds = outcomes.map((o) => (o.ok ? "ok" : o.timedOut ? "timeout" : o.reason.split(" ").slice(0, 3).join(" ")));
        expect(kinds.filter((k) => k === "ok").length).toBe(10);
        expect(kinds.filter((k) => k === "timeout").length).toBe(10);
        expect(kinds.filter((k) => k === "no stoa gateway").length).toBe(30);
        expect(kinds.filter((k) => k === "the metaserver is").length).toBe(10);
      }
      // Closing sockets go asynchronously: wait for the count to come back, then compare.
      await eventually("the descriptors to close", () => fds() <= before, { timeoutMs: 2_000, everyMs: 20 });
      expect(fds()).toBeLessThanOrEqual(before);
    } finally {
      for (const s of [banner, mute, closing]) s.stop(true);
      await Promise.all([good.stop(), unknown.stop(), silent.stop()]);
    }
  });

  test("a process that pinged every kind of server exits on its own: no timer or socket keeps it alive", async () => {
    const confirm = new URL("../../src/meta/confirm.ts", import.meta.url).pathname;
    const gateway = new URL("../fixtures/meta-gateway.ts", import.meta.url).pathname;
    const script = `
      import { pingThroughGateway } from ${JSON.stringify(confirm)};
      import { fakeGateway } from ${JSON.stringify(gateway)};
      const good = fakeGateway({ serves: ["abc"] });
      const unknown = fakeGateway({ serves: [] });
      const silent = fakeGateway({ serves: ["abc"], mode: "silent" });
      const body = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data(s) {
        s.write('HTTP/1.1 502 Bad Gateway\\r\\nContent-Length: 900\\r\\n\\r\\n{"error":');
      } } });
      const mute = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
      // Long deadlines where the outcome comes early: a deadline timer left running shows.
      const ping = (port, timeoutMs, signal) => pingThroughGateway({ host: "127.0.0.1", port, pubId: "abc" }, { timeoutMs, signal });
      const outcomes = [];
      for (let i = 0; i < 20; i++) {
        const abort = new AbortController();
        const round = [ping(good.port, 60_000), ping(unknown.port, 60_000), ping(silent.port, 200), ping(body.port, 200), ping(mute.port, 60_000, abort.signal)];
        setTimeout(() => abort.abort(), 20);
        outcomes.push(...(await Promise.all(round)));
      }
      await Promise.all([good.stop(), unknown.stop(), silent.stop()]);
      body.stop(true);
      mute.stop(true);
      const done = performance.now();
      process.on("beforeExit", () => console.log(JSON.stringify({ ok: outcomes.map((o) => o.ok), lingerMs: performance.now() - done })));
    `;
    const child = Bun.spawn([process.execPath, "-e", script], { stdout: "pipe", stderr: "pipe" });
    // A timer or socket left behind (the ws close timer, a refusal body's timer) keeps it running.
    const killer = setTimeout(() => child.kill(), 20_000);
    const [out, err, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
    clearTimeout(killer);
    expect(err).toBe("");
    expect(code).toBe(0);
    const report = JSON.parse(out) as { ok: boolean[]; lingerMs: number };
    expect(report.ok.filter(Boolean).length).toBe(20);
    expect(report.ok.length).toBe(100);
    // Normally a few ms; a 2 s refusal-body timer or a 30 s close timer would show here.
    expect(report.lingerMs).toBeLessThan(1_500);
  }, 30_000);
});
