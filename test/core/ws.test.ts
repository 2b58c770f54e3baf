import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { StoaError } from "../../src/core/errors.ts";
import {
  backoffDelay,
  DEFAULT_BACKOFF,
  type DialOptions,
  describeRefusal,
  dialWebSocket,
  MAX_REFUSAL_BODY_BYTES,
  parseRefusal,
  ReconnectingWebSocket,
  type ReconnectOptions,
  type UpgradeRefusal,
  WS_PAYLOAD_TOO_LARGE,
  wsErrorCode,
} from "../../src/core/ws.ts";
import { eventually } from "../helpers/eventually.ts";

const dir = mkdtempSync(join(tmpdir(), "stoa-ws-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Seen {
  upgrades: { path: string; header: string | null; protocol: string | null }[];
  closes: { code: number; reason: string }[];
}

/** An echo server; `where` is a TCP port on 127.0.0.1 (0 = any) or a Unix socket path. */
function echoServer(where: number | string, seen: Seen = { upgrades: [], closes: [] }) {
  const handlers = {
    fetch(req: Request, server: Bun.Server<undefined>) {
      const url = new URL(req.url);
      seen.upgrades.push({
        path: url.pathname + url.search,
        header: req.headers.get("x-stoa-test"),
        protocol: req.headers.get("sec-websocket-protocol"),
      });
      const protocol = req.headers.get("sec-websocket-protocol")?.split(",")[0]?.trim();
      const headers = protocol === undefined ? undefined : { "Sec-WebSocket-Protocol": protocol };
      if (server.upgrade(req, { headers })) return undefined;
      return new Response("upgrade required", { status: 426 });
    },
    websocket: {
      message(ws: Bun.ServerWebSocket<undefined>, message: string | Buffer) {
        ws.send(message);
      },
      close(_ws: Bun.ServerWebSocket<undefined>, code: number, reason: string) {
        seen.closes.push({ code, reason });
      },
    },
  };
  const server =
    typeof where === "string"
      ? Bun.serve({ unix: where, ...handlers })
      : Bun.serve({ hostname: "127.0.0.1", port: where, ...handlers });
  return { server, seen };
}

/** A port on 127.0.0.1 that nothing listens on (it was free a moment ago). */
function freePort(): number {
  const probe = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response() });
  const port = probe.port ?? 0;
  probe.stop(true);
  return port;
}

/** A client that records what it sees. */
function client(url: string, options: ReconnectOptions = {}) {
  const log = {
    opens: [] as number[],
    messages: [] as (string | ArrayBuffer)[],
    closes: [] as { code: number; reason: string; willRetry: boolean; at: number }[],
    errors: [] as StoaError[],
  };
  const conn = new ReconnectingWebSocket(url, {
    minDelayMs: 10,
    maxDelayMs: 200,
    ...options,
    onOpen: (ws, attempt) => {
      log.opens.push(attempt);
      options.onOpen?.(ws, attempt);
    },
    onMessage: (data) => log.messages.push(data),
    onClose: (code, reason, willRetry) => log.closes.push({ code, reason, willRetry, at: performance.now() }),
    onError: (err) => log.errors.push(err),
  });
  return { conn, log };
}

describe("backoffDelay", () => {
  const plain = { ...DEFAULT_BACKOFF, jitter: "none" as const };

  test("grows by the factor from the minimum and stops at the maximum", () => {
    expect([1, 2, 3, 4, 5, 6, 7, 8].map((n) => backoffDelay(n, plain))).toEqual([
      100, 200, 400, 800, 1600, 3200, 6400, 10_000,
    ]);
  });

  test("treats attempts below 1 as the first and huge attempts as the maximum", () => {
    expect(backoffDelay(0, plain)).toBe(100);
    expect(backoffDelay(-3, plain)).toBe(100);
    expect(backoffDelay(100_000, plain)).toBe(10_000);
  });

  test("equal jitter stays within [d/2, d]", () => {
    expect(backoffDelay(3, DEFAULT_BACKOFF, () => 0)).toBe(200);
    expect(backoffDelay(3, DEFAULT_BACKOFF, () => 0.5)).toBe(300);
    expect(backoffDelay(3, DEFAULT_BACKOFF, () => 0.999999)).toBeCloseTo(400, 3);
  });

  test("full jitter spans [0, d]", () => {
    const full = { ...DEFAULT_BACKOFF, jitter: "full" as const };
    expect(backoffDelay(2, full, () => 0)).toBe(0);
    expect(backoffDelay(2, full, () => 0.25)).toBe(50);
  });

  test("uses Math.random by default and stays in range", () => {
    for (let i = 0; i < 100; i++) {
      const d = backoffDelay(4, DEFAULT_BACKOFF);
      expect(d).toBeGreaterThanOrEqual(400);
      expect(d).toBeLessThanOrEqual(800);
    }
  });
});

describe("connecting", () => {
  test("opens, echoes text and binary, and passes headers and protocols", async () => {
    const { server, seen } = echoServer(0);
    const { conn, log } = client(`ws://127.0.0.1:${server.port}/feed?x=1`, {
      headers: { "x-stoa-test": "yes" },
      protocols: ["stoa.v1", "stoa.v0"],
      onOpen: (ws) => expect(ws.protocol).toBe("stoa.v1"),
    });
    try {
      await eventually("open", () => conn.state === "open");
      expect(log.opens).toEqual([1]);
      expect(seen.upgrades).toEqual([{ path: "/feed?x=1", header: "yes", protocol: "stoa.v1, stoa.v0" }]);
      expect(conn.send("hello")).toBe(true);
      expect(conn.send(new Uint8Array([1, 2, 3]))).toBe(true);
      await eventually("echoes", () => log.messages.length === 2);
      expect(log.messages[0]).toBe("hello");
      expect(log.messages[1]).toBeInstanceOf(ArrayBuffer);
      expect([...new Uint8Array(log.messages[1] as ArrayBuffer)]).toEqual([1, 2, 3]);
    } finally {
      conn.close();
      await conn.closed;
      server.stop(true);
    }
  });

  test("dials a Unix socket with a ws+unix:// URL", async () => {
    const path = join(dir, "echo.sock");
    const { server, seen } = echoServer(path);
    const { conn, log } = client(`ws+unix://${path}:/stream/cam1`);
    try {
      await eventually("open", () => conn.state === "open");
      conn.send("over unix");
      await eventually("echo", () => log.messages.length === 1);
      expect(log.messages).toEqual(["over unix"]);
      expect(seen.upgrades[0]?.path).toBe("/stream/cam1");
    } finally {
      conn.close();
      await conn.closed;
      server.stop(true);
    }
  });

  test("rejects a URL it cannot dial", () => {
    for (const url of ["http://127.0.0.1/", "not a url", "unix:/tmp/x.sock", "tcp:127.0.0.1:1"]) {
      let caught: unknown;
      try {
        new ReconnectingWebSocket(url);
      } catch (err) {
        caught = err;
      }
      expect(caught).toBeInstanceOf(StoaError);
      expect((caught as StoaError).code).toBe("endpoint");
      expect((caught as StoaError).message).toContain("ws+unix:///path/to.sock:/path");
    }
  });
});

describe("reconnecting", () => {
  test("reconnects when the server restarts on the same port and works again", async () => {
    let { server } = echoServer(0);
    const port = server.port ?? 0;
    const { conn, log } = client(`ws://127.0.0.1:${port}/`);
    try {
      await eventually("first open", () => conn.state === "open");
      server.stop(true);
      await eventually("close noticed", () => log.closes.length >= 1);
      expect(log.closes[0]?.willRetry).toBe(true);
      ({ server } = echoServer(port));
      await eventually("second open", () => log.opens.length === 2 && conn.state === "open");
      conn.send("again");
      await eventually("echo after reconnect", () => log.messages.includes("again"));
    } finally {
      conn.close();
      await conn.closed;
      server.stop(true);
    }
  });

  test("keeps retrying a server that is down, with growing delays, and connects when it comes up", async () => {
    const port = freePort();
    const { conn, log } = client(`ws://127.0.0.1:${port}/`, { minDelayMs: 20, maxDelayMs: 2_000, jitter: "none" });
    let server: ReturnType<typeof echoServer>["server"] | undefined;
    try {
      await Bun.sleep(1_000);
      // Delays 20, 40, 80, 160, 320, 640 ms: about 6 dials in the first second; without backoff
      // it would be dozens.
      const failed = log.closes.length;
      expect(failed).toBeGreaterThanOrEqual(3);
      expect(failed).toBeLessThanOrEqual(9);
      expect(log.closes.every((c) => c.willRetry && c.code === 1006)).toBe(true);
      expect(log.errors.length).toBeGreaterThanOrEqual(3);
      expect(log.errors.every((e) => e.code === "io")).toBe(true);
      const gaps = log.closes.slice(1).map((c, i) => c.at - (log.closes[i]?.at ?? 0));
      expect(gaps.at(-1) ?? 0).toBeGreaterThan(gaps[0] ?? 0);
      expect(conn.attempts).toBe(failed + (conn.state === "connecting" ? 1 : 0));

      server = echoServer(port).server;
      await eventually("open once the server is up", () => conn.state === "open");
      expect(log.opens).toEqual([conn.attempts]);
    } finally {
      conn.close();
      await conn.closed;
      server?.stop(true);
    }
  });

  test("resets the backoff after a connection stayed open long enough", async () => {
    // A server that drops every connection after 100 ms.
    const server = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: (req, srv) => (srv.upgrade(req) ? undefined : new Response("no", { status: 400 })),
      websocket: {
        open(ws) {
          setTimeout(() => ws.close(4000, "bye"), 100);
        },
        message() {},
      },
    });
    const stable = client(`ws://127.0.0.1:${server.port}/`, { stableAfterMs: 30 });
    const unstable = client(`ws://127.0.0.1:${server.port}/`, { stableAfterMs: 60_000 });
    try {
      await eventually("three opens each", () => stable.log.opens.length >= 3 && unstable.log.opens.length >= 3);
      expect(stable.log.opens.slice(0, 3)).toEqual([1, 1, 1]);
      expect(unstable.log.opens.slice(0, 3)).toEqual([1, 2, 3]);
      expect(stable.log.closes[0]).toMatchObject({ code: 4000, reason: "bye", willRetry: true });
    } finally {
      stable.conn.close();
      unstable.conn.close();
      await Promise.all([stable.conn.closed, unstable.conn.closed]);
      server.stop(true);
    }
  });

  test("abandons a connect that does not open in time and tries again", async () => {
    // Accepts TCP but never answers the HTTP upgrade.
    const silent = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    const { conn, log } = client(`ws://127.0.0.1:${silent.port}/`, { connectTimeoutMs: 100 });
    try {
      await eventually("two timeouts", () => log.errors.length >= 2);
      expect(log.errors[0]?.code).toBe("timeout");
      expect(log.errors[0]?.message).toContain("did not open within 100 ms");
      expect(log.closes[0]).toMatchObject({ code: 1006, reason: "connect timeout", willRetry: true });
      expect(conn.attempts).toBeGreaterThanOrEqual(2);
    } finally {
      conn.close();
      await conn.closed;
      silent.stop(true);
    }
  });

  test("gives up after maxAttempts and then refuses to send", async () => {
    const port = freePort();
    const { conn, log } = client(`ws://127.0.0.1:${port}/`, { maxAttempts: 3 });
    await conn.closed;
    expect(conn.state).toBe("closed");
    expect(log.closes.map((c) => c.willRetry)).toEqual([true, true, false]);
    expect(conn.attempts).toBe(3);
    expect(() => conn.send("late")).toThrow(StoaError);
  });
});

describe("sending while disconnected", () => {
  test("drops a message when there is no outbox", async () => {
    const port = freePort();
    const { conn } = client(`ws://127.0.0.1:${port}/`);
    expect(conn.send("nowhere to go")).toBe(false);
    conn.close();
    await conn.closed;
  });

  test("queues into a bounded outbox and flushes it after the onOpen handshake", async () => {
    const port = freePort();
    const { conn, log } = client(`ws://127.0.0.1:${port}/`, {
      outboxBytes: 10,
      onOpen: (ws) => ws.send("hello"),
    });
    let server: ReturnType<typeof echoServer>["server"] | undefined;
    try {
      const buffer = new Uint8Array([7, 7, 7]);
      expect(conn.send("12345")).toBe(true);
      expect(conn.send(buffer)).toBe(true);
      buffer.fill(0); // the client copied it when queueing
      expect(conn.send("xyz")).toBe(false); // 5 + 3 + 3 > 10
      expect(conn.send("ab")).toBe(true);
      server = echoServer(port).server;
      await eventually("all echoes", () => log.messages.length === 4);
      expect(log.messages.slice(0, 2)).toEqual(["hello", "12345"]);
      expect([...new Uint8Array(log.messages[2] as ArrayBuffer)]).toEqual([7, 7, 7]);
      expect(log.messages[3]).toBe("ab");
    } finally {
      conn.close();
      await conn.closed;
      server?.stop(true);
    }
  });
});

describe("closing", () => {
  test("close() ends an open connection with the code and reason and reports it once", async () => {
    const { server, seen } = echoServer(0);
    const { conn, log } = client(`ws://127.0.0.1:${server.port}/`);
    try {
      await eventually("open", () => conn.state === "open");
      conn.close(4001, "done here");
      expect(conn.state).toBe("closing");
      await conn.closed;
      expect(conn.state).toBe("closed");
      await eventually("server saw the close", () => seen.closes.length === 1);
      expect(seen.closes[0]).toEqual({ code: 4001, reason: "done here" });
      expect(log.closes).toHaveLength(1);
      expect(log.closes[0]).toMatchObject({ willRetry: false });
      expect(() => conn.send("x")).toThrow(/closed/);
      conn.close(); // idempotent
      expect(() => conn.close(1006)).not.toThrow();
    } finally {
      server.stop(true);
    }
  });

  test("rejects a close code the protocol does not allow an application to send", async () => {
    const port = freePort();
    const { conn } = client(`ws://127.0.0.1:${port}/`);
    expect(() => conn.close(1006)).toThrow(/1000 or 3000-4999/);
    conn.close();
    await conn.closed;
  });

  test("close() during backoff stops retries and leaves nothing that keeps the process alive", async () => {
    const port = freePort();
    const script = join(dir, "close-during-backoff.ts");
    const wsModule = join(import.meta.dir, "..", "..", "src", "core", "ws.ts");
    writeFileSync(
      script,
      `import { ReconnectingWebSocket } from ${JSON.stringify(wsModule)};
let closes = 0;
const conn = new ReconnectingWebSocket("ws://127.0.0.1:${port}/", {
  minDelayMs: 10, maxDelayMs: 50, connectTimeoutMs: 60_000,
  onClose: () => { closes++; },
});
await Bun.sleep(300);
conn.close();
await conn.closed;
const after = closes;
await Bun.sleep(200);
console.log(JSON.stringify({ before: after, after: closes, state: conn.state }));
`,
    );
    const proc = Bun.spawn([process.execPath, script], { stdout: "pipe", stderr: "pipe" });
    const killer = setTimeout(() => proc.kill("SIGKILL"), 10_000);
    try {
      // Exiting on its own proves no retry or connect-timeout timer was left running.
      expect(await proc.exited).toBe(0);
      const result = JSON.parse(await new Response(proc.stdout).text()) as Record<string, unknown>;
      expect(result.before).toBeGreaterThanOrEqual(2);
      expect(result.after).toBe(result.before);
      expect(result.state).toBe("closed");
    } finally {
      clearTimeout(killer);
    }
  });

  test("close() while connecting abandons the attempt", async () => {
    const silent = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    const { conn, log } = client(`ws://127.0.0.1:${silent.port}/`);
    try {
      expect(conn.state).toBe("connecting");
      conn.close();
      await conn.closed;
      await Bun.sleep(50); // a dial still under way must not open after close()
      expect(log.opens).toEqual([]);
      expect(log.closes).toEqual([]);
      expect(conn.attempts).toBe(1);
    } finally {
      silent.stop(true);
    }
  });
});

describe("refused upgrades", () => {
  test("a stoa JSON error body gives its error and message; anything else its text", () => {
    const json = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));
    expect(parseRefusal(502, json({ error: "target_down", message: "cam1 does not answer" }))).toEqual({ status: 502, error: "target_down", message: "cam1 does not answer" });
    expect(parseRefusal(401, json({ message: "bad token" }))).toEqual({ status: 401, error: undefined, message: "bad token" });
    expect(parseRefusal(500, new TextEncoder().encode("oops\r\n\u0007here"))).toEqual({ status: 500, error: undefined, message: "oops here" });
    expect(parseRefusal(503, json([1, 2]))).toEqual({ status: 503, error: undefined, message: "[1,2]" });
    expect(parseRefusal(404, new Uint8Array(0))).toEqual({ status: 404, error: undefined, message: "" });
    expect(describeRefusal({ status: 404, error: "unknown_pub_id", message: "no such publisher" })).toBe("404 unknown_pub_id: no such publisher");
    expect(describeRefusal({ status: 500, error: undefined, message: "" })).toBe("500");
  });

  test("onRefused gets the status and message before the attempt's onClose, whose reason says the same; retries go on", async () => {
    const server = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: () => Response.json({ error: "target_down", message: "x".repeat(3 * MAX_REFUSAL_BODY_BYTES) }, { status: 502 }),
    });
    const events: string[] = [];
    const refusals: UpgradeRefusal[] = [];
    const conn = new ReconnectingWebSocket(`ws://127.0.0.1:${server.port}/pub/a`, {
      minDelayMs: 10,
      maxDelayMs: 10,
      jitter: "none",
      onRefused: (r) => {
        refusals.push(r);
        events.push("refused");
      },
      onClose: (code, reason) => events.push(`close ${code} ${reason.slice(0, 20)}`),
      onError: (err) => events.push(`error ${err.message}`),
    });
    try {
      await eventually("two refusals", () => refusals.length >= 2);
      expect(events[0]).toBe("refused");
      expect(events[1]).toStartWith("close 1006 502: {");
      // The body was cut at the bound, so the JSON did not parse: its text, bounded.
      expect(refusals[0]?.status).toBe(502);
      expect(refusals[0]?.message.length).toBeLessThanOrEqual(MAX_REFUSAL_BODY_BYTES);
      expect(events.some((e) => e.startsWith("error"))).toBe(false);
    } finally {
      conn.close();
      server.stop(true);
    }
  });

  test("urlFor picks the URL of each dial", async () => {
    const paths: string[] = [];
    const server = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: (req) => {
        paths.push(new URL(req.url).pathname + new URL(req.url).search);
        return new Response("no", { status: 404 });
      },
    });
    let n = 0;
    const conn = new ReconnectingWebSocket(`ws://127.0.0.1:${server.port}/`, {
      minDelayMs: 5,
      maxDelayMs: 5,
      jitter: "none",
      onRefused: () => {},
      urlFor: () => `ws://127.0.0.1:${server.port}/try?n=${++n}`,
    });
    try {
      await eventually("three attempts", () => paths.length >= 3);
      expect(paths.slice(0, 3)).toEqual(["/try?n=1", "/try?n=2", "/try?n=3"]);
    } finally {
      conn.close();
      server.stop(true);
    }
  });
});

describe("dialWebSocket's bounds and the 101's headers", () => {
  /** Opens one dialWebSocket and records its events until it closes. */
  async function dialOnce(url: string, init: DialOptions, onOpen: (ws: WebSocket) => void = () => {}) {
    const events: string[] = [];
    const ws = dialWebSocket(url, init, (r) => events.push(`refused ${r.status}`));
    ws.binaryType = "arraybuffer";
    await new Promise<void>((resolve) => {
      ws.onopen = () => {
        events.push("open");
        onOpen(ws);
      };
      ws.onmessage = (e) => {
        events.push(`message ${typeof e.data === "string" ? e.data.length : "binary"}`);
        ws.close(1000);
      };
      ws.onerror = (e) => events.push(`error ${wsErrorCode(e) ?? "-"}`);
      ws.onclose = (e) => {
        events.push(`close ${e.code}`);
        resolve();
      };
    });
    return events;
  }

  test("onUpgrade sees the 101's headers before open; a refused upgrade never calls it", async () => {
    const server = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: (req, srv) =>
        new URL(req.url).pathname === "/up" && srv.upgrade(req, { headers: { "X-Stoa-Pub-Id": "cam1" } })
          ? undefined
          : Response.json({ error: "unknown_pub_id", message: "no" }, { status: 404 }),
      websocket: { message: () => {} },
    });
    try {
      const seen: string[] = [];
      const onUpgrade = (h: Readonly<Record<string, string | string[] | undefined>>) => void seen.push(`upgrade ${String(h["x-stoa-pub-id"])}`);
      const up = await dialOnce(`ws://127.0.0.1:${server.port}/up`, { onUpgrade }, (ws) => {
        seen.push("open");
        ws.close(1000);
      });
      expect(seen).toEqual(["upgrade cam1", "open"]);
      expect(up).toEqual(["open", "close 1000"]);
      seen.length = 0;
      const refused = await dialOnce(`ws://127.0.0.1:${server.port}/other`, { onUpgrade });
      expect(seen).toEqual([]);
      expect(refused[0]).toBe("refused 404");
      expect(refused).not.toContain("open");
    } finally {
      await server.stop(true);
    }
  });

  test("maxPayload: a message at the bound arrives, one byte more fails the connection with WS_PAYLOAD_TOO_LARGE", async () => {
    const limit = 64 * 1024;
    const server = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: (req, srv) => (srv.upgrade(req) ? undefined : new Response("no", { status: 426 })),
      websocket: { message: (ws, m) => void ws.send("x".repeat(Number(m))) },
    });
    try {
      const url = `ws://127.0.0.1:${server.port}/`;
      expect(await dialOnce(url, { maxPayload: limit }, (ws) => ws.send(String(limit)))).toEqual(["open", `message ${limit}`, "close 1000"]);
      const over = await dialOnce(url, { maxPayload: limit }, (ws) => ws.send(String(limit + 1)));
      expect(over).toEqual(["open", `error ${WS_PAYLOAD_TOO_LARGE}`, "close 1006"]);
      // Without it, the `ws` package's default (100 MiB) lets the same message through.
      expect(await dialOnce(url, {}, (ws) => ws.send(String(limit + 1)))).toEqual(["open", `message ${limit + 1}`, "close 1000"]);
    } finally {
      await server.stop(true);
    }
  });

  test("a response head that never ends fails the dial: it is not read without bound", async () => {
    let written = 0;
    const server = Bun.listen<undefined>({
      hostname: "127.0.0.1",
      port: 0,
      socket: {
        data(s) {
          s.write("HTTP/1.1 101 Switching Protocols\r\n");
          // 1 MiB of headers, in writes the client must read (or refuse) one by one.
          const line = `X-Pad: ${"p".repeat(1000)}\r\n`;
          for (let i = 0; i < 1024; i++) written += s.write(line);
        },
      },
    });
    try {
      const events = await dialOnce(`ws://127.0.0.1:${server.port}/`, {});
      expect(events).not.toContain("open");
      expect(events.at(-1)).toBe("close 1006");
      expect(written).toBeGreaterThan(16 * 1024);
    } finally {
      server.stop(true);
    }
  });
});
