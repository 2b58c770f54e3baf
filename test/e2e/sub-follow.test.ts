/**
 * `stoa sub NAME` follows its publisher (issue: "a subscriber follows its publisher to a new
 * pub_id within one TTL"): the same sub process, subscribed to `stoa pub NAME` (pub_id A),
 * prints the values of a new `stoa pub NAME` (another pub_id) within one TTL of that one's
 * confirmation — after the old one stopped (it deregisters), and after it was SIGKILLed (its
 * registration stays live until the TTL, so the new one is started until the metaserver takes
 * it: once the old is stale).
 *
 * Twice: on one host (one gateway, loopback), and across hosts (network namespaces: the
 * publishers on hosts a and b, each with its own gateway; metaserver and subscriber on m), where
 * the publisher moves from a to b and back.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { freePorts, NetProcs, type Proc, requireBinary, Scope } from "../fixtures/e2e-helpers.ts";
import { eventually } from "../helpers/eventually.ts";
import { canUseNetns, createNet, type Net } from "../helpers/netns.ts";

/** The metaserver's TTL: short, so the SIGKILL case takes seconds. */
const TTL_MS = 3_000;
/** How long a `stoa pub` may take to be live (a loaded machine). */
const LIVE_WITHIN_MS = 15_000;

interface World {
  /** Starts `stoa pub NAME --stay` on host 0 or 1, stdin a pipe. */
  pub(host: 0 | 1, name: string): Proc;
  /** Starts `stoa sub NAME -v` where the subscriber lives. */
  sub(name: string): Proc;
  /** What that host's registrations say (for messages): its address. */
  address(host: 0 | 1): string;
}

/** The pub_id a `stoa pub` printed once live (confirmed), and when the test saw it. */
async function live(pub: Proc, name: string): Promise<{ pubId: string; at: number }> {
  const m = await pub.waitFor("out", new RegExp(`^publishing ${name} as ([A-Za-z0-9._-]+): `, "m"), LIVE_WITHIN_MS);
  return { pubId: m[1] ?? "", at: performance.now() };
}

/**
 * Starts `stoa pub` on `host` until the metaserver takes it: while the SIGKILLed one is still
 * live the name is taken (409 duplicate_name, exit 1), and it is retried.
 */
async function pubOnceAccepted(world: World, host: 0 | 1, name: string): Promise<{ pub: Proc; pubId: string; at: number; tries: number }> {
  const until = performance.now() + TTL_MS * 3 + LIVE_WITHIN_MS;
  for (let tries = 1; ; tries++) {
    const pub = world.pub(host, name);
    const outcome = await Promise.race([
      pub.waitFor("out", new RegExp(`^publishing ${name} as `, "m"), LIVE_WITHIN_MS).then(() => "live" as const),
      pub.exited.then(() => "exited" as const),
    ]);
    if (outcome === "live") return { pub, ...(await live(pub, name)), tries };
    await pub.output();
    expect(pub.err).toMatch(/is registered by pub_id .* \(live/);
    if (performance.now() > until) throw new Error(`stoa pub ${name} was never accepted\n${pub.describe()}`);
    // Pacing the retries of a refused start, not ordering anything.
    await Bun.sleep(200);
  }
}

/** Waits until `sub` printed `line`; how long after `since` that was. */
async function printed(sub: Proc, line: string, since: number, timeoutMs = TTL_MS * 3): Promise<number> {
  await sub.waitFor("out", new RegExp(`^${line}$`, "m"), timeoutMs);
  return performance.now() - since;
}

function followSuite(world: () => World): void {
  test("the publisher stops and another pub_id takes the name (on the other host, when there are two): the same sub prints its values within one TTL", async () => {
    const w = world();
    const name = "lab/follow";
    const a = w.pub(0, name);
    const first = await live(a, name);
    const sub = w.sub(name);
    await sub.waitFor("err", /INFO +sub: subscribed/, LIVE_WITHIN_MS);
    a.write("a-1\n");
    await printed(sub, "a-1", performance.now());

    // The publisher stops: it deregisters (SIGTERM, as a service manager stops it).
    a.proc.kill("SIGTERM");
    expect(await a.exitWithin(10_000)).toBe(0);

    const b = w.pub(1, name);
    const second = await live(b, name);
    expect(second.pubId).not.toBe(first.pubId);
    b.write("b-1\n");
    const took = await printed(sub, "b-1", second.at);
    expect(took).toBeLessThan(TTL_MS);
    expect(sub.running).toBe(true);
    expect(sub.err).toMatch(new RegExp(`publisher moved.*from_pub_id=${first.pubId}.*to_pub_id=${second.pubId}.*from_host=${w.address(0)}.*to_host=${w.address(1)}`));
    // And it goes on with the new one's live values.
    b.write("b-2\n");
    await printed(sub, "b-2", performance.now());
    expect(sub.out.split("\n").filter((l) => l !== "")).toEqual(["a-1", "b-1", "b-2"]);
    sub.proc.kill("SIGTERM");
    b.proc.kill("SIGTERM");
    await b.exitWithin(10_000);
  }, 90_000);

  test("the publisher is SIGKILLed: a new one is accepted once the old is stale, and the sub follows it within one TTL of its confirmation", async () => {
    const w = world();
    const name = "lab/killed";
    const a = w.pub(1, name);
    const first = await live(a, name);
    const sub = w.sub(name);
    await sub.waitFor("err", /INFO +sub: subscribed/, LIVE_WITHIN_MS);
    a.write("a-1\n");
    await printed(sub, "a-1", performance.now());

    a.proc.kill("SIGKILL");
    await a.exited;
    const killedAt = performance.now();
    const next = await pubOnceAccepted(w, 0, name);
    expect(next.pubId).not.toBe(first.pubId);
    // The name was taken over from a stale registration: not before the TTL had passed.
    expect(next.at - killedAt).toBeGreaterThan(TTL_MS * 0.9);
    next.pub.write("b-1\n");
    const took = await printed(sub, "b-1", next.at);
    expect(took).toBeLessThan(TTL_MS);
    expect(sub.running).toBe(true);
    expect(sub.err).toMatch(new RegExp(`publisher moved.*from_pub_id=${first.pubId}.*to_pub_id=${next.pubId}`));
    sub.proc.kill("SIGTERM");
    next.pub.proc.kill("SIGTERM");
    await next.pub.exitWithin(10_000);
  }, 90_000);
}

describe("on one host", () => {
  const scope = new Scope();
  let world: World;
  let metaUrl = "";

  beforeAll(async () => {
    requireBinary();
    const runDir = scope.tempDir();
    const dir = scope.tempDir();
    const token = join(dir, "meta.token");
    writeFileSync(token, `stm_${randomBytes(32).toString("base64url")}\n`, { mode: 0o600 });
    const [s = 0, t = 0, p = 0, m = 0] = freePorts(4);
    const meta = `http://127.0.0.1:${m}`;
    metaUrl = meta;
    const gateway = scope.stoa("gateway", ["gateway", "--listen", "127.0.0.1", "--ports", `${s},${t},${p}`, "--run-dir", runDir, "--workers", "1"]);
    await gateway.waitFor("out", /^gateway: service /m);
    const metaProc = scope.stoa("meta", ["meta", "--listen", `127.0.0.1:${m}`, "--db", ":memory:", "--token-file", token, "--ttl", `${TTL_MS / 1000}s`]);
    await metaProc.waitFor("out", /^metaserver: /m);
    world = {
      pub: (_host, name) => scope.stoa(`pub ${name}`, ["pub", name, "--meta", meta, "--run-dir", runDir, "--token-file", token, "--stay"], { stdin: true }),
      sub: (name) => scope.stoa(`sub ${name}`, ["sub", name, "--meta", meta, "-v"]),
      address: () => "127.0.0.1",
    };
  }, 60_000);

  afterAll(async () => {
    proxy?.stop(true);
    await scope.cleanup();
  });

  followSuite(() => world);

  /**
   * The subscriber's way to the metaserver goes through this proxy, which can play an older
   * metaserver (no /v1/watch: 404) or one that is down (every request 503, watches cut).
   */
  let proxy: ReturnType<typeof Bun.serve> | undefined;
  let proxyMode: "pass" | "no-watch" | "down" = "pass";
  const watches = new Set<AbortController>();
  function startProxy(): string {
    const upstream = metaUrl;
    proxy = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      idleTimeout: 0,
      async fetch(req) {
        const url = new URL(req.url);
        const error = (status: number, code: string) => Response.json({ error: code, message: `the proxy plays ${proxyMode}` }, { status });
        if (proxyMode === "down") return error(503, "store_unavailable");
        if (url.pathname === "/v1/watch" && proxyMode === "no-watch") return error(404, "not_found");
        const stop = new AbortController();
        if (url.pathname === "/v1/watch") watches.add(stop);
        let res: Response;
        try {
          res = await fetch(upstream + url.pathname + url.search, { method: req.method, headers: req.headers, body: req.body, signal: stop.signal });
        } catch {
          // Cut (the proxy went down) before the metaserver answered: as a down metaserver would.
          return error(503, "store_unavailable");
        }
        return new Response(cuttable(res.body), { status: res.status, headers: res.headers });
      },
    });
    return `http://127.0.0.1:${proxy.port}`;
  }

  /** An upstream body that, when its fetch is aborted, cuts the connection without an error printed. */
  function cuttable(body: ReadableStream<Uint8Array> | null): ReadableStream<Uint8Array> | null {
    if (body === null) return null;
    const reader = body.getReader();
    return new ReadableStream<Uint8Array>({
      async pull(controller) {
        try {
          const { done, value } = await reader.read();
          if (done) controller.close();
          else controller.enqueue(value);
        } catch {
          controller.error(undefined);
        }
      },
      cancel: () => reader.cancel().catch(() => {}),
    });
  }

  test("a metaserver without /v1/watch: while the subscription is refused, the name is looked up every few seconds and followed", async () => {
    proxyMode = "no-watch";
    const through = proxy === undefined ? startProxy() : `http://127.0.0.1:${proxy.port}`;
    const name = "lab/oldmeta";
    const a = world.pub(0, name);
    const first = await live(a, name);
    const sub = scope.stoa(`sub ${name}`, ["sub", name, "--meta", through, "-v"]);
    await sub.waitFor("err", /INFO +sub: subscribed/, LIVE_WITHIN_MS);
    await sub.waitFor("err", /cannot watch the publisher's name \(an older metaserver without \/v1\/watch\?\): .*404/, LIVE_WITHIN_MS);
    a.proc.kill("SIGTERM");
    await a.exitWithin(10_000);
    // Refused long enough for the subscription's retries to back off to seconds apart: the
    // lookups keep their own pace (LOOKUP_EVERY_MS, 3 s), not the retries'.
    await eventually("five refusals in a row", () => (sub.err.match(/still refused: /g) ?? []).length >= 5, { timeoutMs: 20_000 });
    const b = world.pub(1, name);
    const second = await live(b, name);
    b.write("b-1\n");
    const took = await printed(sub, "b-1", second.at, 15_000);
    expect(took).toBeLessThan(3_000 + 1_000);
    expect(sub.err).toMatch(new RegExp(`publisher moved.*from_pub_id=${first.pubId}.*to_pub_id=${second.pubId}`));
    sub.proc.kill("SIGTERM");
    b.proc.kill("SIGTERM");
    await b.exitWithin(10_000);
  }, 60_000);

  test("the metaserver is unreachable while the publisher moves: once the watch is back, one lookup finds the move", async () => {
    proxyMode = "pass";
    const through = proxy === undefined ? startProxy() : `http://127.0.0.1:${proxy.port}`;
    const name = "lab/metadown";
    const a = world.pub(0, name);
    const first = await live(a, name);
    const sub = scope.stoa(`sub ${name}`, ["sub", name, "--meta", through, "-v"]);
    await sub.waitFor("err", /INFO +sub: subscribed/, LIVE_WITHIN_MS);
    // Down: every request refused, the open watch cut.
    proxyMode = "down";
    for (const w of watches) w.abort();
    watches.clear();
    a.proc.kill("SIGTERM");
    await a.exitWithin(10_000);
    const b = world.pub(1, name);
    const second = await live(b, name);
    b.write("b-1\n");
    await sub.waitFor("err", /cannot watch the publisher's name: .*503/, LIVE_WITHIN_MS);
    expect(sub.out).not.toContain("b-1");
    // Back: the watch reconnects (backoff of a few hundred ms so far), then looks the name up.
    proxyMode = "pass";
    const back = performance.now();
    const took = await printed(sub, "b-1", back, 15_000);
    expect(took).toBeLessThan(TTL_MS);
    expect(sub.err).toContain("watching the publisher's name again");
    expect(sub.err).toMatch(new RegExp(`publisher moved.*from_pub_id=${first.pubId}.*to_pub_id=${second.pubId}`));
    sub.proc.kill("SIGTERM");
    b.proc.kill("SIGTERM");
    await b.exitWithin(10_000);
  }, 60_000);
});

const can = canUseNetns();
if (!can.ok) console.warn(`skipping the cross-host follow tests: ${can.reason}`);

describe.if(can.ok)("across hosts: publishers on a and b, metaserver and subscriber on m", () => {
  let net: Net;
  let procs: NetProcs;
  const scope = new Scope();
  let world: World;

  beforeAll(async () => {
    requireBinary();
    net = await createNet({ hosts: ["a", "b", "m"], links: [["a", "m"], ["b", "m"]] });
    procs = new NetProcs(net);
    const dir = scope.tempDir();
    const token = join(dir, "meta.token");
    writeFileSync(token, `stm_${randomBytes(32).toString("base64url")}\n`, { mode: 0o600 });
    const hosts = ["a", "b"] as const;
    const runDirs = [scope.tempDir(), scope.tempDir()] as const;
    // Each publisher host reaches the metaserver over its own link to m.
    const metaAt = (host: "a" | "b" | "m") => `http://[${net.addr("m", host === "m" ? "a" : host)}]:8090`;
    for (const [i, host] of hosts.entries()) {
      const gateway = procs.stoa(host, "gateway", ["gateway", "--listen", net.addr(host, "m"), "--run-dir", runDirs[i] ?? "", "--workers", "1"]);
      await gateway.waitFor("out", /^gateway: service 8081/m);
    }
    const meta = procs.stoa("m", "meta", ["meta", "--listen", "[::]:8090", "--db", ":memory:", "--token-file", token, "--ttl", `${TTL_MS / 1000}s`]);
    await meta.waitFor("out", /^metaserver: /m);
    world = {
      pub: (i, name) =>
        procs.stoa(hosts[i], `pub ${name}`, ["pub", name, "--meta", metaAt(hosts[i]), "--run-dir", runDirs[i], "--token-file", token, "--stay"], true),
      sub: (name) => procs.stoa("m", `sub ${name}`, ["sub", name, "--meta", metaAt("m"), "-v"]),
      address: (i) => net.addr(hosts[i], "m"),
    };
  }, 60_000);

  afterAll(async () => {
    await procs?.stop();
    await net?.destroy();
    await scope.cleanup();
  });

  followSuite(() => world);
});
