/**
 * D3, file-descriptor exhaustion, against the compiled binary under `prlimit --nofile=1024:1024`
 * (soft = hard, so raising the soft limit to the hard one cannot help). An idle flood of 1,500
 * connections (test/fixtures/fd-flood.ts, its own process, reopening what the server closes)
 * used to make Bun's accept loop spin on EMFILE (~195 % CPU for `stoa up`, 100 % for `hotlink
 * serve`), a legitimate client got `502 target_down … ECONNREFUSED` (the gateway's own EMFILE),
 * the publisher was marked down and nothing was logged. Now: the CPU stays low, new clients get
 * 503 "server out of file descriptors", the metaserver answers, the publisher keeps its health,
 * and once the flood is gone everything works again by itself. The gateway is flooded twice:
 * with silent connections (refused at accept), and with connections that name the live
 * publisher (each routed one costs two descriptors, so connects meet the limit too).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { controlRequest } from "../../src/gateway/control.ts";
import { formatAuthorization } from "../../src/hotlink/users.ts";
import { freePorts, type Proc, requireBinary, Scope } from "../fixtures/e2e-helpers.ts";
import { parseReply, pingViaPrelude as ping, rawExchange, type RawReply } from "../fixtures/gateway-helpers.ts";
import { STOA, stoa } from "../helpers/stoa.ts";
import { eventually } from "../helpers/eventually.ts";

const LIMIT = 1024;
const FLOOD = 1_500;
/** The bound for the CPU of a flooded daemon. */
const MAX_CPU = 0.2;
/** /proc/<pid>/stat counts in clock ticks (`getconf CLK_TCK`; 100 on every Linux we run). */
const CLK_TCK = 100;
const FLOOD_SCRIPT = join(import.meta.dir, "..", "fixtures", "fd-flood.ts");

const scope = new Scope();
afterAll(() => scope.cleanup());

function cpuTicks(pid: number): number {
  // Fields after the ")" of the command name: utime and stime are the 12th and 13th.
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(fields[11]) + Number(fields[12]);
}

/** Share of one core the process used over `ms`, measured from /proc/<pid>/stat. */
async function cpuOver(pid: number, ms: number): Promise<number> {
  const t0 = cpuTicks(pid);
  const w0 = performance.now();
  await Bun.sleep(ms);
  return (cpuTicks(pid) - t0) / CLK_TCK / ((performance.now() - w0) / 1000);
}

function openFds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** `stoa …` under a hard descriptor limit of `LIMIT`. */
function limited(name: string, args: string[], stdin = false): Proc {
  return scope.spawn(name, ["prlimit", `--nofile=${LIMIT}:${LIMIT}`, STOA, ...args], { stdin });
}

/** The idle flood against `port`; resolves once the server holds nearly all it can. */
async function flood(port: number, serverPid: number, first = ""): Promise<Proc> {
  const f = scope.spawn("flood", [process.execPath, FLOOD_SCRIPT, String(port), String(FLOOD), "1000", first], { stdin: true });
  await eventually(`the server to hold close to ${LIMIT} descriptors`, () => openFds(serverPid) >= LIMIT - 200, { timeoutMs: 20_000, everyMs: 50 });
  await Bun.sleep(500); // the accept queue drained into refusals
  return f;
}

async function stopFlood(f: Proc): Promise<void> {
  f.proc.kill("SIGTERM");
  await f.exitWithin(10_000);
}

/** A WebSocket upgrade through the gateway's prelude: the reply's head (and JSON body), then closed. */
async function upgradeVia(port: number, pubId: string): Promise<RawReply> {
  const done = Promise.withResolvers<void>();
  let text = "";
  // A reset before Bun's open (closed unanswered: not even a 503 could be afforded) fails the connect.
  const sock = await Bun.connect({
    hostname: "127.0.0.1",
    port,
    socket: {
      data(_s, chunk) {
        text += Buffer.from(chunk).toString("latin1");
        const head = text.indexOf("\r\n\r\n");
        if (head < 0) return;
        const length = Number(/^Content-Length: (\d+)$/im.exec(text)?.[1] ?? 0);
        if (text.length >= head + 4 + length) done.resolve();
      },
      close: () => done.resolve(),
      error: () => done.resolve(),
    },
  }).catch(() => null);
  if (sock === null) return { text: "", status: null, body: null };
  sock.write(
    `STOA1 ${pubId}\nGET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
  );
  const timer = setTimeout(() => done.resolve(), 5_000);
  try {
    await done.promise;
    return { text, ...parseReply(text) };
  } finally {
    clearTimeout(timer);
    sock.terminate();
  }
}

describe("stoa up (gateway + metaserver) under an idle flood at a low descriptor limit", () => {
  const ports = { service: 0, string: 0, ping: 0 };
  let metaUrl = "";
  let metricsUrl = "";
  let runDir = "";
  let up: Proc;
  let pubId = "";

  beforeAll(async () => {
    requireBinary();
    runDir = scope.tempDir();
    const stateDir = scope.tempDir();
    const [s = 0, t = 0, p = 0, m = 0, x = 0] = freePorts(5);
    Object.assign(ports, { service: s, string: t, ping: p });
    metaUrl = `http://127.0.0.1:${m}`;
    metricsUrl = `http://127.0.0.1:${x}/metrics`;
    up = limited("up", [
      "up", "--listen", "127.0.0.1", "--ports", `${s},${t},${p}`, "--meta-listen", `127.0.0.1:${m}`,
      "--metrics-listen", `127.0.0.1:${x}`, "--state-dir", stateDir, "--run-dir", runDir,
    ]);
    await up.waitFor("out", /^try: .*\n\s+stoa sub .*\n/m, 30_000);
    const pub = scope.stoa("pub", ["pub", "fd/ping", "--meta", metaUrl, "--run-dir", runDir, "--state-dir", stateDir, "--stay"], { stdin: true });
    pubId = (await pub.waitFor("out", /^publishing \S+ as (\S+): /m, 20_000))[1] ?? "";
    pub.write("here\n");
    expect(await ping(ports.ping, pubId)).toContain(`"value":"here"`);
  }, 60_000);

  /** Runs a flood (`first`: what each of its connections sends) and checks everything the issue asks. */
  async function survives(first: () => string): Promise<void> {
    const health = async () => (await controlRequest(runDir, { type: "list" })).entries.find((e) => e.pub_id === pubId && e.kind === "ping")?.health;
    const before = await health();
    expect(before?.state).toBe("up");
    const f = await flood(ports.ping, up.pid, first());
    try {
      const cpu = await cpuOver(up.pid, 2_500);
      expect(cpu).toBeLessThan(MAX_CPU);

      // A legitimate client: the gateway's own shortage, said as such; never a 502. (One that
      // lands on a descriptor just freed is routed, 101: there was room for it; one that comes
      // when not even a 503 can be afforded is closed unanswered, null.)
      const replies: RawReply[] = [];
      while (replies.length < 50 && !replies.some((r) => r.status === 503)) {
        replies.push(await upgradeVia(ports.ping, pubId));
        await Bun.sleep(100);
      }
      for (const r of replies) expect([101, 503, null]).toContain(r.status);
      const refused = replies.find((r) => r.status === 503);
      expect(refused?.body).toEqual({ error: "out_of_fds", message: expect.stringContaining("server out of file descriptors") });
      expect(refused?.text).toContain("HTTP/1.1 503 Service Unavailable\r\n");

      // The metaserver in the same process still answers.
      const meta = await fetch(`${metaUrl}/v1/health`, { signal: AbortSignal.timeout(5_000) });
      expect(meta.status).toBe(200);

      // The publisher is not blamed: up all along (a down and up again would move `since`).
      expect(await health()).toEqual(before);

      const text = await (await fetch(metricsUrl, { signal: AbortSignal.timeout(5_000) })).text();
      expect(text).toContain(`process_max_fds ${LIMIT}\n`);
      const open = Number(/^process_open_fds (\d+)$/m.exec(text)?.[1]);
      expect(open).toBeGreaterThan(LIMIT - 200);
      expect(open).toBeLessThanOrEqual(LIMIT);
      const counted = Number(/^stoa_gateway_routing_errors_total\{[^}]*error="out_of_fds"[^}]*\} (\d+)$/m.exec(text)?.[1] ?? 0);
      expect(counted).toBeGreaterThan(0);
    } finally {
      await stopFlood(f);
    }

    // Recovers by itself: routed normally again, and the health entry never went down.
    const reply = await eventually("a routed ping after the flood", () => ping(ports.ping, pubId).catch(() => undefined), { timeoutMs: 20_000, everyMs: 200 });
    expect(reply).toContain(`"value":"here"`);
    expect(await health()).toEqual(before);

    // Logged, and only once per interval per router (not once per refusal: there were thousands).
    const warnings = up.err.split("\n").filter((l) => l.includes("refusing connections, out of file descriptors"));
    expect(warnings.length).toBeGreaterThan(0);
    expect(warnings.length).toBeLessThanOrEqual(8);
  }

  test(
    "idle connections: the gateway stays under 20 % CPU, answers 503 out_of_fds, keeps the publisher up and the metaserver answering, then recovers",
    () => survives(() => ""),
    90_000,
  );

  test(
    "connections routed to the live publisher (two descriptors each): the same, and the connects never blame it",
    () => survives(() => `STOA1 ${pubId}\n`),
    90_000,
  );
});

describe("stoa hotlink serve under an idle flood at a low descriptor limit", () => {
  let port = 0;
  let metricsUrl = "";
  let relay: Proc;
  let auth = "";

  beforeAll(async () => {
    requireBinary();
    const users = join(scope.tempDir(), "users.json");
    const add = stoa(["hotlink", "user", "add", "alice", "--users", users]);
    expect(add.code).toBe(0);
    auth = formatAuthorization("alice", add.stdout.trimEnd().split("\n").at(-1) ?? "");
    const [p = 0, m = 0] = freePorts(2);
    port = p;
    metricsUrl = `http://127.0.0.1:${m}/metrics`;
    relay = limited("hotlink serve", ["hotlink", "serve", "--listen", `127.0.0.1:${port}`, "--users", users, "--metrics-listen", `127.0.0.1:${m}`]);
    await relay.waitFor("out", /^hotlink: /m, 15_000);
    expect(await opens()).toBe(true);
  }, 30_000);

  /** What a new, authenticated client gets for its upgrade request (status and body). */
  async function upgrade(): Promise<{ status: number | null; text: string }> {
    const r = await rawExchange(
      port,
      `GET /v1/hotlink HTTP/1.1\r\nHost: x\r\nAuthorization: ${auth}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
      { halfClose: false },
    ).catch((err: unknown) => ({ status: null, text: String(err) }));
    return { status: r.status, text: r.text };
  }

  /** True once an authenticated WebSocket opens; undefined when it does not (within 2 s). */
  async function opens(): Promise<true | undefined> {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/hotlink`, { headers: { Authorization: auth } });
    try {
      return await new Promise<true | undefined>((resolve) => {
        ws.onopen = () => resolve(true);
        ws.onclose = () => resolve(undefined);
        ws.onerror = () => resolve(undefined);
        setTimeout(() => resolve(undefined), 2_000);
      });
    } finally {
      ws.close();
    }
  }

  test(
    "stays under 20 % CPU, answers new clients 503 before the upgrade, and recovers",
    async () => {
      const f = await flood(port, relay.pid);
      try {
        const cpu = await cpuOver(relay.pid, 2_500);
        expect(cpu).toBeLessThan(MAX_CPU);
        const r = await eventually("a 503 for a new client", async () => {
          const got = await upgrade();
          return got.status === 503 ? got : undefined;
        }, { everyMs: 100 });
        expect(r.text).toContain("server out of file descriptors");
        expect(r.text).not.toContain(" 101 ");
        const text = await (await fetch(metricsUrl, { signal: AbortSignal.timeout(5_000) })).text();
        expect(text).toContain(`process_max_fds ${LIMIT}\n`);
        expect(Number(/^process_open_fds (\d+)$/m.exec(text)?.[1])).toBeGreaterThan(LIMIT - 200);
        expect(Number(/^stoa_hotlink_refused_total\{reason="out_of_fds"\} (\d+)$/m.exec(text)?.[1] ?? 0)).toBeGreaterThan(0);
      } finally {
        await stopFlood(f);
      }
      // Listening again, by itself: a WebSocket upgrade succeeds.
      await eventually("the relay to upgrade again", () => opens(), { timeoutMs: 30_000, everyMs: 200 });
      expect(relay.err).toContain("hotlink relay: refusing requests, out of file descriptors");
    },
    90_000,
  );
});

describe("stoa meta under an idle flood of its own port at a low descriptor limit", () => {
  let url = "";
  let meta: Proc;

  beforeAll(async () => {
    requireBinary();
    const [m = 0] = freePorts(1);
    url = `http://127.0.0.1:${m}`;
    meta = limited("meta", ["meta", "--listen", `127.0.0.1:${m}`, "--state-dir", scope.tempDir()]);
    await meta.waitFor("out", /^metaserver: /m, 15_000);
    expect((await fetch(`${url}/v1/health`)).status).toBe(200);
  }, 30_000);

  /** A new client's request on a fresh connection: its status and body (null when cut unanswered). */
  async function health(): Promise<{ status: number | null; text: string }> {
    const r = await rawExchange(Number(new URL(url).port), "GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", {
      halfClose: false,
    }).catch((err: unknown) => ({ status: null, text: String(err) }));
    return { status: r.status, text: r.text };
  }

  test(
    "stays under 20 % CPU, answers new clients 503 out_of_fds in JSON, and recovers",
    async () => {
      const f = await flood(Number(new URL(url).port), meta.pid);
      try {
        const cpu = await cpuOver(meta.pid, 2_500);
        expect(cpu).toBeLessThan(MAX_CPU);
        const r = await eventually("a 503 for a new client", async () => {
          const got = await health();
          return got.status === 503 ? got : undefined;
        }, { everyMs: 100 });
        expect(r.text).toContain('{"error":"out_of_fds","message":"server out of file descriptors; try again shortly"}');
      } finally {
        await stopFlood(f);
      }
      const ok = await eventually("the metaserver answering again", async () => (await health()).status === 200, { timeoutMs: 20_000, everyMs: 200 });
      expect(ok).toBe(true);
      expect(meta.err).toContain("out of file descriptors");
    },
    90_000,
  );
});
