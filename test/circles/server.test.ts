/**
 * The circles server (src/circles/server.ts) over a FakeQueue that evaluates nothing
 * (test/fixtures/circles-queue.ts): routing and refusals before the upgrade, JSON-RPC errors,
 * authentication (with a signer independent of auth.ts), concurrency, disconnects, the in-flight
 * cap, the HTTP endpoints, close(), and the cost of idle connections.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type PublicKey, NONCE_TTL_MS, parsePublicKey } from "../../src/circles/auth.ts";
import { MAX_INFLIGHT_PER_CONNECTION, RPC_ERROR } from "../../src/circles/protocol.ts";
import { type CirclesServer, startCirclesServer } from "../../src/circles/server.ts";
import { createLogger } from "../../src/core/log.ts";
import { Registry } from "../../src/core/metrics.ts";
import { eventually } from "../helpers/eventually.ts";
import { FakeQueue } from "../fixtures/circles-queue.ts";
import { RpcClient, ethSign, newPrivateKey, publicKeyHex, rawHttp, upgradeRequest } from "../fixtures/circles-client.ts";
import { rssKiB } from "../fixtures/e2e-helpers.ts";

const log = createLogger({ level: "error", name: "circles-test" });
const circleKeys = [newPrivateKey(), newPrivateKey(), newPrivateKey()];
const CIRCLES: PublicKey[] = circleKeys.map((key) => parsePublicKey(publicKeyHex(key)));
const [A, B, C] = CIRCLES.map((key) => key.hex) as [string, string, string];

interface Harness {
  server: CirclesServer;
  queue: FakeQueue;
  registry: Registry;
  clock: { now: number };
  ws(circle: string): string;
  open(circle: string): Promise<RpcClient>;
}

const running: Harness[] = [];
const clients: RpcClient[] = [];

afterEach(async () => {
  for (const client of clients.splice(0)) client.close();
  for (const harness of running.splice(0)) await harness.server.close(0);
});

function start(
  options: { enableAuth?: boolean; queue?: FakeQueue; circles?: PublicKey[]; tls?: { cert: string; key: string }; authDeadlineMs?: number } = {},
): Harness {
  const circles = options.circles ?? CIRCLES;
  const queue = options.queue ?? new FakeQueue(circles.map((key) => key.hex));
  const registry = new Registry();
  const clock = { now: Date.now() };
  const server = startCirclesServer({
    host: "127.0.0.1",
    port: 0,
    circles,
    enableAuth: options.enableAuth ?? false,
    queue,
    taskTimeoutMs: 5_000,
    log,
    metrics: registry,
    now: () => clock.now,
    ...(options.tls === undefined ? {} : { tls: options.tls }),
    ...(options.authDeadlineMs === undefined ? {} : { authDeadlineMs: options.authDeadlineMs }),
  });
  const harness: Harness = {
    server,
    queue,
    registry,
    clock,
    ws: (circle) => `${server.wsUrl}/${circle}`,
    async open(circle) {
      const client = await RpcClient.open(harness.ws(circle));
      clients.push(client);
      return client;
    },
  };
  running.push(harness);
  return harness;
}

describe("routing", () => {
  test("a known circle upgrades, by its key in any form parsePublicKey takes", async () => {
    const h = start();
    const key = circleKeys[0] as Uint8Array;
    const forms = [A, `0x${A}`, A.toUpperCase(), publicKeyHex(key, false), `0X${publicKeyHex(key, false).toUpperCase()}`];
    for (const form of forms) {
      const client = await h.open(form);
      const answer = await client.call("play", { script: "hello" });
      expect(answer.result).toEqual({ output: "hello" });
    }
    expect(h.queue.submissions.map((play) => play.circle)).toEqual(forms.map(() => A));
  });

  test("an unknown circle gets 404 and the exact JSON, before any upgrade", async () => {
    const h = start();
    const unknown = publicKeyHex(newPrivateKey());
    const answer = await rawHttp(h.server.port, upgradeRequest(`/${unknown}`));
    expect(answer.status).toBe(404);
    expect(answer.headers).not.toMatch(/sec-websocket-accept/i);
    expect(JSON.parse(answer.body)).toEqual({ error: "Circle not found", message: `Circle '${unknown}' is not available on this server` });
    const viaFetch = await fetch(`${h.server.url}/${unknown}`);
    expect(viaFetch.status).toBe(404);
  });

  test("a path that is not a key gets 400 JSON before any upgrade", async () => {
    const h = start();
    for (const path of ["/nothex", "/02abcd", `/${A}/more`, `/${"04" + "00".repeat(64)}`, "/favicon.ico"]) {
      const answer = await rawHttp(h.server.port, upgradeRequest(path));
      expect(answer.status).toBe(400);
      const body = JSON.parse(answer.body) as { error: string; message: string };
      expect(body.error).toBe("Bad request");
      expect(body.message).toContain("does not name a circle");
    }
  });

  test("a known circle without an upgrade gets 426 saying to use a WebSocket", async () => {
    const h = start();
    const answer = await fetch(`${h.server.url}/${A}`);
    expect(answer.status).toBe(426);
    const body = (await answer.json()) as { error: string; message: string };
    expect(body.message).toContain("WebSocket");
  });

  test("GET / is the console page; GET /circles lists the circles", async () => {
    const h = start({ enableAuth: true });
    const page = await fetch(`${h.server.url}/`);
    expect(page.status).toBe(200);
    expect(page.headers.get("content-type")).toContain("text/html");
    const html = await page.text();
    expect(html).toContain("stoa circles console");
    const script = /<script[^>]+src="([^"]+)"/.exec(html)?.[1];
    expect(script).toBeDefined();
    const js = await fetch(`${h.server.url}${script}`);
    expect(js.status).toBe(200);
    expect(await js.text()).toContain("fetch_nonce");
    expect(await (await fetch(`${h.server.url}/circles`)).json()).toEqual({ circles: [A, B, C], auth: true });
  });

  test("two circles are isolated: each play reaches the queue with its own circle", async () => {
    const h = start();
    const [a, b] = [await h.open(A), await h.open(B)];
    await Promise.all([a.call("play", { script: "on a" }), b.call("play", { script: "on b" })]);
    const byScript = Object.fromEntries(h.queue.submissions.map((play) => [play.script, play.circle]));
    expect(byScript).toEqual({ "on a": A, "on b": B });
  });
});

describe("JSON-RPC errors", () => {
  test("malformed input answers -32700, -32600, -32601, -32602", async () => {
    const h = start();
    const client = await h.open(A);
    const cases: Array<[string, number | string | null, number]> = [
      ["not json", null, RPC_ERROR.parse],
      ["[]", null, RPC_ERROR.invalidRequest],
      ['{"jsonrpc":"2.0","method":"play","params":{"script":"x"}}', null, RPC_ERROR.invalidRequest],
      ['{"jsonrpc":"1.0","id":7,"method":"play","params":{"script":"x"}}', 7, RPC_ERROR.invalidRequest],
      ['{"jsonrpc":"2.0","id":8,"method":"nope","params":{}}', 8, RPC_ERROR.methodNotFound],
      ['{"jsonrpc":"2.0","id":9,"method":"play"}', 9, RPC_ERROR.invalidParams],
      ['{"jsonrpc":"2.0","id":"x","method":"play","params":{"script":5}}', "x", RPC_ERROR.invalidParams],
      ['{"jsonrpc":"2.0","id":10,"method":"fetch_nonce","params":{"pubkey":"zz"}}', 10, RPC_ERROR.invalidParams],
    ];
    for (const [text, id, code] of cases) {
      const answer = await client.raw(text, id);
      expect({ text, code: answer.error?.code }).toEqual({ text, code });
    }
    // Still serving after all that.
    expect((await client.call("play", ["positional"])).result).toEqual({ output: "positional" });
  });

  test("a queue's error and timeout answer -32000 and -32003", async () => {
    const h = start();
    const client = await h.open(A);
    expect((await client.call("play", { script: "fail:boom" })).error).toEqual({ code: RPC_ERROR.execution, message: "boom" });
    expect((await client.call("play", { script: "timeout" })).error?.code).toBe(RPC_ERROR.timeout);
  });
});

describe("authentication", () => {
  test("play before authenticate answers -32001; a good signature authenticates and sets the caller", async () => {
    const h = start({ enableAuth: true });
    const client = await h.open(A);
    expect((await client.call("play", { script: "x" })).error?.code).toBe(RPC_ERROR.authRequired);
    const key = newPrivateKey();
    expect((await client.authenticate(key)).result).toEqual({ authenticated: true });
    expect((await client.call("play", { script: "x" })).result).toEqual({ output: "x" });
    expect(h.queue.submissions.map((play) => play.caller)).toEqual([publicKeyHex(key)]);
  });

  test("with auth on, a connection that does not authenticate in time is closed 1008; one that did stays", async () => {
    const h = start({ enableAuth: true, authDeadlineMs: 300 });
    const idle = await h.open(A);
    const authed = await h.open(A);
    expect((await authed.authenticate(newPrivateKey())).result).toEqual({ authenticated: true });
    const closed = await idle.closed;
    expect(closed.code).toBe(1008);
    expect(closed.reason).toContain("authenticate within");
    await Bun.sleep(400); // past the deadline: the authenticated connection must still be served
    expect((await authed.call("play", { script: "still here" })).result).toEqual({ output: "still here" });
    expect(h.registry.render()).toMatch(/stoa_circles_auth_failures_total\{reason="deadline"\} 1/);
  });

  test("the seed's client shape works unchanged: raw JSON text, an uncompressed key, v 27/28", async () => {
    const h = start({ enableAuth: true });
    const key = newPrivateKey();
    const pubkey = publicKeyHex(key, false);
    const ws = new WebSocket(h.ws(A));
    const inbox: string[] = [];
    ws.onmessage = (event) => inbox.push(String(event.data));
    await new Promise((resolve) => (ws.onopen = resolve));
    const next = async (): Promise<{ id: number; result?: Record<string, unknown>; error?: unknown }> => {
      await eventually("an answer", () => inbox.length > 0);
      return JSON.parse(inbox.shift() ?? "");
    };
    ws.send(`{"jsonrpc":"2.0","id":1,"method":"fetch_nonce","params":{"pubkey":"${pubkey}"}}`);
    const fetched = await next();
    expect(fetched.id).toBe(1);
    const nonce = String(fetched.result?.nonce);
    expect(nonce).toMatch(/^[0-9a-f]{64}$/);
    ws.send(JSON.stringify({ jsonrpc: "2.0", id: 2, method: "authenticate", params: { pubkey, signature: ethSign(key, nonce) } }));
    expect(await next()).toEqual({ jsonrpc: "2.0", id: 2, result: { authenticated: true } } as never);
    ws.send('{"jsonrpc":"2.0","id":3,"method":"play","params":{"script":"40 + 2"}}');
    expect(await next()).toEqual({ jsonrpc: "2.0", id: 3, result: { output: "42" } } as never);
    ws.close();
  });

  test("wrong key, flipped byte, other nonce, reused nonce, expired nonce, another connection's nonce: -32002", async () => {
    const h = start({ enableAuth: true });
    const key = newPrivateKey();
    const pubkey = publicKeyHex(key);
    const client = await h.open(A);
    const nonceOf = async (on: RpcClient, who = pubkey): Promise<string> =>
      ((await on.call("fetch_nonce", { pubkey: who })).result as { nonce: string }).nonce;
    const refused = async (on: RpcClient, signature: string, who = pubkey): Promise<string> => {
      const answer = await on.call("authenticate", { pubkey: who, signature });
      expect(answer.error?.code).toBe(RPC_ERROR.invalidCredentials);
      return answer.error?.message ?? "";
    };

    // Signed by another key than the one claimed.
    expect(await refused(client, ethSign(newPrivateKey(), await nonceOf(client)))).toContain("not made by");
    // One byte of the signature flipped.
    const good = ethSign(key, await nonceOf(client));
    const flipped = `${good.slice(0, 10)}${(Number.parseInt(good.slice(10, 12), 16) ^ 0x01).toString(16).padStart(2, "0")}${good.slice(12)}`;
    await refused(client, flipped);
    // A signature of another nonce.
    await nonceOf(client);
    await refused(client, ethSign(key, "0".repeat(64)));
    // A reused nonce: accepted once, refused the second time.
    const nonce = await nonceOf(client);
    expect((await client.call("authenticate", { pubkey, signature: ethSign(key, nonce) })).result).toEqual({ authenticated: true });
    expect(await refused(client, ethSign(key, nonce))).toContain("call fetch_nonce first");
    // An expired nonce (the clock moves on past the TTL).
    const old = await nonceOf(client);
    h.clock.now += NONCE_TTL_MS + 1;
    expect(await refused(client, ethSign(key, old))).toContain("expired");
    // Another connection's nonce: without one of its own, and with one.
    const other = await h.open(A);
    const theirs = await nonceOf(other);
    const third = await h.open(A);
    await refused(third, ethSign(key, theirs));
    await nonceOf(third);
    await refused(third, ethSign(key, theirs));
    // The other connection's nonce is still good there (nothing else used it up).
    expect((await other.call("authenticate", { pubkey, signature: ethSign(key, theirs) })).result).toEqual({ authenticated: true });
    // And the failures were counted by reason.
    const text = h.registry.render();
    expect(text).toMatch(/stoa_circles_auth_failures_total\{reason="bad_signature"\} [1-9]/);
    expect(text).toMatch(/stoa_circles_auth_failures_total\{reason="expired"\} 1/);
    expect(text).toMatch(/stoa_circles_auth_failures_total\{reason="none"\} [1-9]/);
  });

  test("a nonce of another circle does not authenticate on this one", async () => {
    const h = start({ enableAuth: true });
    const key = newPrivateKey();
    const pubkey = publicKeyHex(key);
    const onA = await h.open(A);
    const onB = await h.open(B);
    const nonce = ((await onA.call("fetch_nonce", { pubkey })).result as { nonce: string }).nonce;
    expect((await onB.call("authenticate", { pubkey, signature: ethSign(key, nonce) })).error?.code).toBe(RPC_ERROR.invalidCredentials);
  });

  test("GET /auth/nonce: a nonce for one authenticate on any connection, single use", async () => {
    const h = start({ enableAuth: true });
    const key = newPrivateKey();
    const pubkey = publicKeyHex(key);
    const answer = await fetch(`${h.server.url}/auth/nonce?public_key=${publicKeyHex(key, false)}`);
    expect(answer.status).toBe(200);
    const { nonce, expires_at } = (await answer.json()) as { nonce: string; expires_at: number };
    expect(nonce).toMatch(/^[0-9a-f]{64}$/);
    expect(expires_at).toBe(Math.floor((h.clock.now + NONCE_TTL_MS) / 1000));
    const client = await h.open(C);
    const signature = ethSign(key, nonce);
    expect((await client.call("authenticate", { pubkey, signature })).result).toEqual({ authenticated: true });
    expect((await client.call("play", { script: "ok" })).result).toEqual({ output: "ok" });
    const again = await h.open(A);
    expect((await again.call("authenticate", { pubkey, signature })).error?.code).toBe(RPC_ERROR.invalidCredentials);
    // Bad or missing key: 400 JSON.
    for (const query of ["", "?public_key=", "?public_key=xyz"]) {
      const bad = await fetch(`${h.server.url}/auth/nonce${query}`);
      expect(bad.status).toBe(400);
      expect(((await bad.json()) as { error: string }).error).toBe("Bad request");
    }
  });
});

describe("plays", () => {
  test("100 concurrent connections on 3 circles, interleaved requests, each answered by its id", async () => {
    const h = start();
    const circles = [A, B, C];
    const conns = await Promise.all(Array.from({ length: 100 }, (_, i) => h.open(circles[i % 3] as string)));
    const PER_CONNECTION = 5;
    await Promise.all(
      conns.map(async (client, c) => {
        // Later requests finish first: the answers come back out of order.
        const calls = Array.from({ length: PER_CONNECTION }, (_, i) =>
          client.call("play", { script: `sleep:${(PER_CONNECTION - i) * 7}:${c}/${i}` }, `r-${c}-${i}`),
        );
        const answers = await Promise.all(calls);
        answers.forEach((answer, i) => {
          expect(answer.id).toBe(`r-${c}-${i}`);
          expect(answer.result).toEqual({ output: `${c}/${i}` });
        });
        expect(client.received.map((m) => m.id)).toEqual(Array.from({ length: PER_CONNECTION }, (_, i) => `r-${c}-${PER_CONNECTION - 1 - i}`));
      }),
    );
    const byCircle = new Map<string, number>();
    for (const play of h.queue.submissions) byCircle.set(play.circle, (byCircle.get(play.circle) ?? 0) + 1);
    expect([...byCircle.entries()].sort()).toEqual([[A, 34 * 5], [B, 33 * 5], [C, 33 * 5]].sort() as never);
  });

  test("a client that disconnects while its play runs breaks nothing; its answer is dropped", async () => {
    const h = start();
    const leaving = await h.open(A);
    leaving.ws.send(JSON.stringify({ jsonrpc: "2.0", id: 1, method: "play", params: { script: "sleep:150:late" } }));
    await eventually("the play submitted", () => h.queue.pending === 1);
    leaving.close();
    await leaving.closed;
    await eventually("the play settled", () => h.queue.pending === 0);
    await eventually("the answer counted as dropped", () => /stoa_circles_answers_dropped_total 1/.test(h.registry.render()));
    const staying = await h.open(A);
    expect((await staying.call("play", { script: "still fine" })).result).toEqual({ output: "still fine" });
    expect(h.server.connections).toBe(1);
  });

  test(`at most ${MAX_INFLIGHT_PER_CONNECTION} plays in flight per connection; more answer -32000 at once`, async () => {
    const h = start();
    const client = await h.open(A);
    const calls = Array.from({ length: MAX_INFLIGHT_PER_CONNECTION + 2 }, (_, i) => client.call("play", { script: `sleep:200:${i}` }, i));
    const answers = await Promise.all(calls);
    const refused = answers.filter((answer) => answer.error !== undefined);
    expect(refused.map((answer) => answer.id)).toEqual([MAX_INFLIGHT_PER_CONNECTION, MAX_INFLIGHT_PER_CONNECTION + 1]);
    expect(refused[0]?.error?.code).toBe(RPC_ERROR.execution);
    expect(refused[0]?.error?.message).toContain("too many plays in flight");
    // Refused at once: they arrived before every admitted answer.
    expect(client.received.slice(0, 2).map((m) => m.id)).toEqual([MAX_INFLIGHT_PER_CONNECTION, MAX_INFLIGHT_PER_CONNECTION + 1]);
    // Another connection has its own allowance.
    const other = await h.open(A);
    expect((await other.call("play", { script: "x" })).result).toEqual({ output: "x" });
  });
});

describe("HTTP endpoints", () => {
  test("/health follows the queue; /metrics shows connections, plays, latency and auth failures", async () => {
    const h = start({ enableAuth: true });
    const healthy = await fetch(`${h.server.url}/health`);
    expect(healthy.status).toBe(200);
    expect(await healthy.json()).toMatchObject({ ok: true, detail: "fake queue", circles: 3 });
    h.queue.health = { ok: false, detail: "redis down" };
    const sick = await fetch(`${h.server.url}/health`);
    expect(sick.status).toBe(503);
    expect(await sick.json()).toMatchObject({ ok: false, detail: "redis down" });

    const client = await h.open(A);
    await client.authenticate(newPrivateKey());
    await client.call("play", { script: "x" });
    await client.call("play", { script: "fail:no" });
    await client.call("authenticate", { pubkey: publicKeyHex(newPrivateKey()), signature: "00" });
    const text = await (await fetch(`${h.server.url}/metrics`)).text();
    expect(text).toContain("stoa_circles_connections 1");
    expect(text).toContain('stoa_circles_plays_total{outcome="ok"} 1');
    expect(text).toContain('stoa_circles_plays_total{outcome="error"} 1');
    expect(text).toContain("stoa_circles_play_seconds_count 2");
    expect(text).toContain('stoa_circles_auth_failures_total{reason="none"} 1');
  });
});

describe("TLS", () => {
  test("with a certificate: https for the endpoints, wss for the circles", async () => {
    const dir = mkdtempSync(join(tmpdir(), "circles-tls-"));
    try {
      const made = Bun.spawnSync(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=localhost",
          "-keyout", join(dir, "key.pem"), "-out", join(dir, "cert.pem")],
        { stderr: "pipe" },
      );
      expect(made.exitCode).toBe(0);
      const h = start({ tls: { cert: readFileSync(join(dir, "cert.pem"), "utf8"), key: readFileSync(join(dir, "key.pem"), "utf8") } });
      expect(h.server.url).toStartWith("https://");
      expect(h.server.wsUrl).toStartWith("wss://");
      const health = await fetch(`${h.server.url}/health`, { tls: { rejectUnauthorized: false } });
      expect(health.status).toBe(200);
      const ws = new WebSocket(h.ws(A), { tls: { rejectUnauthorized: false } } as never);
      const answer = new Promise<string>((resolve) => (ws.onmessage = (event) => resolve(String(event.data))));
      await new Promise((resolve) => (ws.onopen = resolve));
      ws.send('{"jsonrpc":"2.0","id":1,"method":"play","params":["over tls"]}');
      expect(JSON.parse(await answer)).toEqual({ jsonrpc: "2.0", id: 1, result: { output: "over tls" } });
      ws.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("close", () => {
  test("plays in flight are answered within the grace, or failed with 'server stopping'; sockets close 1001", async () => {
    const h = start();
    const client = await h.open(A);
    const quick = client.call("play", { script: "sleep:50:quick" });
    const slow = client.call("play", { script: "sleep:3000:slow" });
    await eventually("both submitted", () => h.queue.pending === 2);
    const closing = h.server.close(400);
    expect((await quick).result).toEqual({ output: "quick" });
    const failed = await slow;
    expect(failed.error?.code).toBe(RPC_ERROR.execution);
    expect(failed.error?.message).toContain("server stopping");
    expect((await client.closed).code).toBe(1001);
    await closing;
    // Nothing listens any more.
    expect(fetch(`${h.server.url}/health`)).rejects.toThrow();
  });
});

describe("cost", () => {
  test("1,000 idle authenticated connections keep the server under 150 MB RSS", async () => {
    const server = Bun.spawn([process.execPath, join(import.meta.dir, "..", "fixtures", "circles-server.ts"), A], { stdout: "pipe", stderr: "inherit" });
    try {
      const reader = server.stdout.getReader();
      const first = new TextDecoder().decode((await reader.read()).value);
      const url = /^(ws:\S+)/.exec(first)?.[1];
      expect(url).toBeDefined();
      const conns: RpcClient[] = [];
      const key = newPrivateKey();
      for (let batch = 0; batch < 10; batch++) {
        const opened = await Promise.all(Array.from({ length: 100 }, () => RpcClient.open(`${url}/${A}`)));
        await Promise.all(opened.map((client) => client.authenticate(key).then((answer) => expect(answer.result).toEqual({ authenticated: true }))));
        conns.push(...opened);
      }
      clients.push(...conns);
      Bun.gc(true);
      await Bun.sleep(200);
      const rssMiB = rssKiB(server.pid) / 1024;
      console.log(`circles server RSS with 1,000 idle authenticated connections: ${rssMiB.toFixed(1)} MiB`);
      expect(rssMiB).toBeLessThan(150);
      expect((await conns[999]?.call("play", { script: "alive" }))?.result).toEqual({ output: "alive" });
    } finally {
      server.kill();
      await server.exited;
    }
  }, 30_000);
});
