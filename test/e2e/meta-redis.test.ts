/**
 * Several metaservers over one Redis (`stoa meta --store redis://…`) serve one registry, across
 * hosts: real processes (dist/stoa, /usr/bin/redis-server), one network namespace per host.
 *
 *   store ── ma ── pub        store: redis-server, bound to its address on the store–ma link
 *     └───── mb ──┘           ma, mb: `stoa meta` over that Redis, the same --token-file (and
 *                                     --tokens-file); mb routes to that address through store
 *                             pub:    `stoa gateway` + `stoa pub` (registered through ma), and the
 *                                     HTTP clients (test/fixtures/meta-redis-client.ts, since the
 *                                     test process cannot reach namespace addresses); mb pings
 *                                     the gateway's address on the pub–ma link through pub.
 *
 * Every test builds its own hosts and ends by checking that nothing it started is left: every
 * process ended, no process in any namespace, redis-server stopped. TTLs are short (2 s) where
 * a test waits for expiry; every wait polls with a deadline.
 */
import { describe, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { NetProcs, type Proc, requireBinary } from "../fixtures/e2e-helpers.ts";
import type { Answer, ClientRequest } from "../fixtures/meta-redis-client.ts";
import { REDIS_SERVER } from "../fixtures/redis.ts";
import { eventually } from "../helpers/eventually.ts";
import { type Net, canUseNetns, createNet, ipSync } from "../helpers/netns.ts";
import { STOA } from "../helpers/stoa.ts";

const CLIENT = join(import.meta.dir, "..", "fixtures", "meta-redis-client.ts");
const REDIS_PORT = 6390;
const META_PORT = 8090;
/** Longer than --ttl 2s + --deregister-after 2s: without restarting the TTL clocks, the first sweep after it would remove everything. */
const OUTAGE_MS = 4_500;

const can = canUseNetns();
const skip = !can.ok ? can.reason : !existsSync(REDIS_SERVER) ? `${REDIS_SERVER} is missing (apt-get install redis-server)` : null;
if (skip !== null) console.warn(`skipping the multi-host Redis metaserver tests: ${skip}`);

type Meta = "ma" | "mb";

interface Info {
  name: string;
  pub_id: string;
  host: string;
  ports: { service: number; string: number; ping: number };
  state: string;
  registered_at: string;
}

interface WorldOptions {
  /** Both metaservers' --ttl and --deregister-after (default: the flags' defaults, 15s and 60s). */
  ttl?: string;
  deregisterAfter?: string;
  /** Writer tokens in a --tokens-file both metaservers read. */
  writers?: number;
  /** A gateway on host pub, for `stoa pub`. */
  gateway?: boolean;
}

/** What was still there when a world was taken down: all empty when it cleaned up after itself. */
interface Leftovers {
  running: string[];
  inNamespaces: string[];
  redisRunning: boolean;
}

function newToken(): string {
  return `stm_${randomBytes(32).toString("base64url")}`;
}

/** The hosts, the processes on them, and requests from host pub. */
class World {
  readonly dir: string;
  readonly runDir: string;
  readonly adminFile: string;
  readonly admin = newToken();
  readonly writers: string[];
  readonly #tokensFile: string | null;
  readonly #procs: NetProcs;
  readonly #all: Proc[] = [];
  readonly #redisDir: string;
  redis: Proc | null = null;
  ma: Proc | null = null;
  mb: Proc | null = null;

  private constructor(
    readonly net: Net,
    readonly options: WorldOptions,
  ) {
    this.#procs = new NetProcs(net);
    this.dir = mkdtempSync("/tmp/e2r-");
    this.runDir = join(this.dir, "run");
    this.#redisDir = join(this.dir, "redis");
    for (const d of [this.runDir, this.#redisDir]) mkdirSync(d);
    this.adminFile = join(this.dir, "meta.token");
    writeFileSync(this.adminFile, `${this.admin}\n`, { mode: 0o600 });
    this.writers = Array.from({ length: options.writers ?? 0 }, newToken);
    this.#tokensFile = this.writers.length === 0 ? null : join(this.dir, "writers.txt");
    if (this.#tokensFile !== null) {
      const lines = this.writers.map((t, i) => `sha256:${createHash("sha256").update(t).digest("hex")} writer-${i + 1}\n`);
      writeFileSync(this.#tokensFile, lines.join(""), { mode: 0o600 });
    }
  }

  static async create(options: WorldOptions): Promise<World> {
    const net = await createNet({
      hosts: ["store", "ma", "mb", "pub"],
      links: [
        ["store", "ma"],
        ["store", "mb"],
        ["ma", "pub"],
        ["mb", "pub"],
      ],
    });
    try {
      return new World(net, options);
    } catch (err) {
      await net.destroy();
      throw err;
    }
  }

  /** Redis, both metaservers, and the gateway when asked. */
  async boot(): Promise<void> {
    requireBinary();
    await this.net.route("mb", this.net.prefix("store", "ma"), "store");
    await this.net.route("mb", this.net.prefix("pub", "ma"), "pub");
    this.redis = await this.startRedis();
    [this.ma, this.mb] = await Promise.all([this.startMeta("ma"), this.startMeta("mb")]);
    if (this.options.gateway) {
      const gateway = this.spawn("pub", "gateway", [STOA, "gateway", "--listen", this.gatewayHost, "--run-dir", this.runDir, "--workers", "1"]);
      await gateway.waitFor("out", /^gateway: service 8081/m);
    }
  }

  /** The one Redis URL every metaserver is given. */
  get storeUrl(): string {
    return `redis://[${this.net.addr("store", "ma")}]:${REDIS_PORT}/0`;
  }

  /** Where the gateway on pub listens, and what its publishers register. */
  get gatewayHost(): string {
    return this.net.addr("pub", "ma");
  }

  url(meta: Meta, port = META_PORT): string {
    return `http://[${this.net.addr(meta, "pub")}]:${port}`;
  }

  spawn(host: string, name: string, argv: string[], stdin = false): Proc {
    const p = this.#procs.spawn(host, name, argv, stdin);
    this.#all.push(p);
    return p;
  }

  /** redis-server with the append-only file in this world's dir: a restart finds what was written. */
  async startRedis(): Promise<Proc> {
    const redis = this.spawn("store", "redis-server", [
      REDIS_SERVER,
      "--port", String(REDIS_PORT),
      "--bind", this.net.addr("store", "ma"),
      "--protected-mode", "no",
      "--save", "",
      "--appendonly", "yes",
      "--dir", this.#redisDir,
      "--daemonize", "no",
      "--logfile", "",
    ]);
    await redis.waitFor("out", /Ready to accept connections/);
    return redis;
  }

  metaArgs(meta: Meta, port = META_PORT, tokenFile = this.adminFile): string[] {
    return [
      STOA, "meta",
      "--listen", `[${this.net.addr(meta, "pub")}]:${port}`,
      "--store", this.storeUrl,
      "--token-file", tokenFile,
      ...(this.#tokensFile === null ? [] : ["--tokens-file", this.#tokensFile]),
      "--state-dir", join(this.dir, `state-${meta}-${port}`),
      "--ttl", this.options.ttl ?? "15s",
      "--deregister-after", this.options.deregisterAfter ?? "60s",
    ];
  }

  async startMeta(meta: Meta): Promise<Proc> {
    const p = this.spawn(meta, "meta", this.metaArgs(meta));
    await p.waitFor("out", /^metaserver: /m);
    return p;
  }

  /** Sends every request at once from host pub; the answers in order. */
  async http(requests: ClientRequest[]): Promise<Answer[]> {
    const r = await this.net.exec("pub", [process.execPath, CLIENT], { stdin: JSON.stringify(requests), timeoutMs: 30_000 });
    if (r.code !== 0) throw new Error(`meta-redis-client exited ${r.code}: ${r.stderr.trim()}`);
    return JSON.parse(r.stdout) as Answer[];
  }

  /** SIGTERM to everything, then what is left; then the namespaces and the dir go. */
  async close(): Promise<Leftovers> {
    await this.#procs.stop();
    const running = this.#all.filter((p) => p.running).map((p) => p.name);
    const redisRunning = this.#all.some((p) => p.name.startsWith("redis-server@") && p.running);
    const inNamespaces = this.net.hosts.flatMap((h) =>
      ipSync(["netns", "pids", this.net.ns(h)]).stdout.split("\n").filter((pid) => pid.trim() !== "").map((pid) => `${pid.trim()} in ${h}`),
    );
    await this.net.destroy();
    rmSync(this.dir, { recursive: true, force: true });
    return { running, inNamespaces, redisRunning };
  }

  logs(): string {
    return this.#all.map((p) => p.describe()).join("\n");
  }
}

/** Builds a world, runs `body` in it, takes it down, and checks that nothing was left behind. */
async function inWorld(options: WorldOptions, body: (w: World) => Promise<void>): Promise<void> {
  const w = await World.create(options);
  let left: Leftovers;
  try {
    await w.boot();
    await body(w);
  } catch (err) {
    console.error(w.logs());
    throw err;
  } finally {
    left = await w.close();
  }
  expect(left).toEqual({ running: [], inNamespaces: [], redisRunning: false });
}

function get(w: World, meta: Meta, path: string, timeoutMs?: number): ClientRequest {
  return { url: `${w.url(meta)}${path}`, timeoutMs };
}

function post(w: World, meta: Meta, path: string, body?: unknown, token = w.admin): ClientRequest {
  return { method: "POST", url: `${w.url(meta)}${path}`, token, body };
}

function del(w: World, meta: Meta, path: string, token = w.admin): ClientRequest {
  return { method: "DELETE", url: `${w.url(meta)}${path}`, token };
}

function register(w: World, meta: Meta, name: string, pubId: string, token = w.admin): ClientRequest {
  return post(w, meta, "/v1/publishers", { name, pub_id: pubId, host: w.gatewayHost }, token);
}

function byName(w: World, meta: Meta, name: string): ClientRequest {
  return get(w, meta, `/v1/publishers?name=${encodeURIComponent(name)}`);
}

function list(w: World, meta: Meta, prefix: string): ClientRequest {
  return get(w, meta, `/v1/publishers?prefix=${encodeURIComponent(prefix)}&limit=1000`);
}

const info = (a: Answer | undefined): Info => a?.body as Info;
const listed = (a: Answer | undefined): Info[] => (a?.body as { publishers: Info[] }).publishers;
const pairs = (infos: Info[]): [string, string][] => infos.map((p) => [p.name, p.pub_id]);

/** `stoa pub NAME` on host pub through ma's metaserver, with the admin token; resolves once live. */
async function startPublisher(w: World, name: string, pubId: string): Promise<Proc> {
  const pub = w.spawn("pub", "pub", [STOA, "pub", name, "--meta", w.url("ma"), "--run-dir", w.runDir, "--token-file", w.adminFile, "--pub-id", pubId, "--stay"], true);
  await pub.waitFor("out", new RegExp(`^publishing ${name} as ${pubId}`, "m"), 15_000);
  return pub;
}

/** The count of heartbeats a metaserver answered 200, from its /metrics. */
function heartbeatsAnswered(metrics: Answer | undefined): number {
  const text = String(metrics?.body ?? "");
  const line = text.split("\n").find((l) => l.startsWith("stoa_meta_requests_total{") && l.includes('route="/v1/publishers/:pub_id/heartbeat"') && l.includes('status="200"'));
  return line === undefined ? 0 : Number(line.split(" ").at(-1));
}

describe.if(skip === null)("metaservers ma and mb over one Redis on host store", () => {
  test("a publisher registered through ma is found and confirmed through mb, and expires through either", async () => {
    await inWorld({ ttl: "2s", deregisterAfter: "2s", gateway: true }, async (w) => {
      const pubId = "temp-1";
      const pub = await startPublisher(w, "lab/temp", pubId);

      const [nameA, nameB, prefixB, idB] = await w.http([byName(w, "ma", "lab/temp"), byName(w, "mb", "lab/temp"), list(w, "mb", "lab"), get(w, "mb", `/v1/publishers/${pubId}`)]);
      for (const a of [nameA, nameB, prefixB, idB]) expect(a?.status).toBe(200);
      expect(listed(nameA)).toEqual(listed(nameB));
      expect(listed(nameB)[0]).toMatchObject({ name: "lab/temp", pub_id: pubId, host: w.gatewayHost, state: "live" });
      expect(pairs(listed(prefixB))).toEqual([["lab/temp", pubId]]);
      expect(info(idB)).toMatchObject({ name: "lab/temp", state: "live" });

      // Registered again through ma (pending), then confirmed through mb: mb pings the publisher
      // through pub's gateway, and ma sees it live.
      const { host, ports } = listed(nameA)[0] as Info;
      const [again] = await w.http([post(w, "ma", "/v1/publishers", { name: "lab/temp", pub_id: pubId, host, ports })]);
      expect(again?.status).toBe(200);
      expect(info(again).state).toBe("pending");
      const [pendingB] = await w.http([get(w, "mb", `/v1/publishers/${pubId}`)]);
      expect(info(pendingB).state).toBe("pending");
      const [confirmed] = await w.http([post(w, "mb", `/v1/publishers/${pubId}/confirm`)]);
      expect(confirmed?.status).toBe(200);
      expect(info(confirmed).state).toBe("live");
      expect(w.mb?.err).toMatch(new RegExp(`confirmed.*${pubId}`));
      const [liveA] = await w.http([get(w, "ma", `/v1/publishers/${pubId}`)]);
      expect(info(liveA).state).toBe("live");

      // No more heartbeats: a sweeper turns it stale, then removes it; both metaservers agree.
      pub.proc.kill("SIGKILL");
      await pub.exited;
      const path = `/v1/publishers/${pubId}`;
      await eventually("stale on ma and mb", async () => {
        const [a, b] = await w.http([get(w, "ma", path), get(w, "mb", path)]);
        return info(a)?.state === "stale" && info(b)?.state === "stale";
      }, { timeoutMs: 8_000, everyMs: 50 });
      await eventually("removed on ma and mb", async () => {
        const [a, b] = await w.http([get(w, "ma", path), get(w, "mb", path)]);
        return a?.status === 404 && b?.status === 404;
      }, { timeoutMs: 8_000, everyMs: 50 });
      const [goneA, goneB] = await w.http([byName(w, "ma", "lab/temp"), list(w, "mb", "lab")]);
      expect(listed(goneA)).toEqual([]);
      expect(listed(goneB)).toEqual([]);
      const logs = `${w.ma?.err}${w.mb?.err}`;
      expect(logs).toMatch(new RegExp(`stale: no heartbeat within the TTL.*${pubId}`));
      expect(logs).toMatch(new RegExp(`removed: stale for too long.*${pubId}`));
    });
  }, 45_000);

  test("100 registrations of 50 names at once, half through each: 50 × 201, 50 × 409, one pub_id per name", async () => {
    await inWorld({}, async (w) => {
      const names = Array.from({ length: 50 }, (_, i) => `race/n${String(i).padStart(2, "0")}`);
      // Per name one attempt through each metaserver, sent first through ma or mb in turn.
      const requests = names.flatMap((name, i) => {
        const a = register(w, "ma", name, `ra-${i}`);
        const b = register(w, "mb", name, `rb-${i}`);
        return i % 2 === 0 ? [a, b] : [b, a];
      });
      const answers = await w.http(requests);
      expect(answers.filter((a) => a.status === 201)).toHaveLength(50);
      expect(answers.filter((a) => a.status === 409)).toHaveLength(50);
      const winners: [string, string][] = names.map((name, i) => {
        const pair = [answers[2 * i], answers[2 * i + 1]];
        const won = pair.find((a) => a?.status === 201);
        const lost = pair.find((a) => a?.status === 409);
        expect(won).toBeDefined();
        expect(lost?.body).toMatchObject({ error: "duplicate_name" });
        const winner = info(won).pub_id;
        expect([`ra-${i}`, `rb-${i}`]).toContain(winner);
        expect((lost?.body as { message: string }).message).toContain(`registered by pub_id ${winner}`);
        return [name, winner];
      });
      const [listA, listB, healthA, healthB] = await w.http([list(w, "ma", "race"), list(w, "mb", "race"), get(w, "ma", "/v1/health"), get(w, "mb", "/v1/health")]);
      expect(pairs(listed(listA))).toEqual(winners);
      expect(pairs(listed(listB))).toEqual(winners);
      expect(healthA?.body).toMatchObject({ publishers: { pending: 50, live: 0, stale: 0 } });
      expect(healthB?.body).toMatchObject({ publishers: { pending: 50, live: 0, stale: 0 } });
    });
  }, 30_000);

  test("kill -9 of ma loses nothing: mb serves ma's registrations and keeps serving; ma restarted serves the same", async () => {
    await inWorld({}, async (w) => {
      const names = Array.from({ length: 20 }, (_, i) => `fleet/h${String(i).padStart(2, "0")}`);
      const made = await w.http(names.map((name, i) => register(w, "ma", name, `f-${i}`)));
      expect(made.map((a) => a.status)).toEqual(names.map(() => 201));
      const expected: [string, string][] = names.map((name, i) => [name, `f-${i}`]);

      const ma = w.ma as Proc;
      ma.proc.kill("SIGKILL");
      await ma.exited;
      expect(ma.proc.signalCode).toBe("SIGKILL");
      const [deadA, listB, ...namesB] = await w.http([get(w, "ma", "/v1/health", 2_000), list(w, "mb", "fleet"), ...names.map((n) => byName(w, "mb", n))]);
      expect(deadA?.status).toBe(0); // refused: ma is gone
      expect(pairs(listed(listB))).toEqual(expected);
      expect(namesB.map((a) => pairs(listed(a))[0])).toEqual(expected);

      // mb registers, heartbeats (one of ma's registrations) and looks up while ma is dead.
      const [madeB, beatB] = await w.http([register(w, "mb", "fleet/new", "f-new"), post(w, "mb", "/v1/publishers/f-0/heartbeat")]);
      expect(madeB?.status).toBe(201);
      expect(beatB?.status).toBe(200);
      expect(info(beatB).pub_id).toBe("f-0");
      const [foundB] = await w.http([byName(w, "mb", "fleet/new")]);
      expect(pairs(listed(foundB))).toEqual([["fleet/new", "f-new"]]);

      w.ma = await w.startMeta("ma");
      const [listA, beatA, newA] = await w.http([list(w, "ma", "fleet"), post(w, "ma", "/v1/publishers/f-new/heartbeat"), byName(w, "ma", "fleet/new")]);
      expect(pairs(listed(listA))).toEqual([...expected, ["fleet/new", "f-new"]]);
      expect(beatA?.status).toBe(200);
      expect(pairs(listed(newA))).toEqual([["fleet/new", "f-new"]]);
    });
  }, 30_000);

  test("Redis restarted: 503 store_unavailable meanwhile, both metaservers live on, registrations and a heartbeating publisher survive", async () => {
    await inWorld({ ttl: "2s", deregisterAfter: "2s", gateway: true }, async (w) => {
      const pubId = "beat-1";
      const pub = await startPublisher(w, "lab/beat", pubId);
      const [before, keepA, keepB] = await w.http([get(w, "mb", `/v1/publishers/${pubId}`), register(w, "ma", "keep/a", "k-a"), register(w, "mb", "keep/b", "k-b")]);
      expect(info(before).state).toBe("live");
      expect([keepA?.status, keepB?.status]).toEqual([201, 201]);

      const redis = w.redis as Proc;
      redis.proc.kill("SIGTERM");
      expect(await redis.exited).toBe(0);
      const downAt = performance.now();
      // Every request during the outage, through either metaserver, answers 503 at once — kept
      // up for longer than TTL + deregister delay.
      const duringOutage = (["ma", "mb"] as const).flatMap((m) => [
        register(w, m, `outage/${m}`, `o-${m}`),
        byName(w, m, "keep/a"),
        list(w, m, "keep"),
        get(w, m, `/v1/publishers/${pubId}`),
        post(w, m, `/v1/publishers/${pubId}/heartbeat`),
        get(w, m, "/v1/health"),
      ]);
      let rounds = 0;
      while (performance.now() - downAt < OUTAGE_MS) {
        for (const a of await w.http(duringOutage)) {
          expect(a.status).toBe(503);
          expect(a.body).toEqual({ error: "store_unavailable", message: expect.stringContaining("cannot be used right now") });
          expect(a.ms).toBeLessThan(2_000);
        }
        rounds++;
      }
      expect(rounds).toBeGreaterThan(1);
      for (const m of [w.ma, w.mb, pub]) {
        expect(m?.running).toBe(true);
        expect(() => process.kill(m?.pid ?? 0, 0)).not.toThrow();
      }

      w.redis = await w.startRedis();
      const [backA, backB] = await eventually("ma and mb serve again", async () => {
        const answers = await w.http([list(w, "ma", "keep"), list(w, "mb", "keep")]);
        return answers.every((a) => a.status === 200) ? answers : undefined;
      }, { timeoutMs: 10_000, everyMs: 50 });
      // What was written before is back; the TTL clocks restarted (the outage was longer than
      // TTL + deregister delay, yet nothing was removed, nothing turned stale).
      const kept: [string, string][] = [["keep/a", "k-a"], ["keep/b", "k-b"]];
      expect(pairs(listed(backA))).toEqual(kept);
      expect(pairs(listed(backB))).toEqual(kept);
      expect(listed(backA).map((p) => p.state)).toEqual(["pending", "pending"]);
      const [outageA, beatingB] = await w.http([list(w, "ma", "outage"), get(w, "mb", `/v1/publishers/${pubId}`)]);
      expect(listed(outageA)).toEqual([]); // the registrations answered 503 did not happen
      expect(info(beatingB)).toMatchObject({ pub_id: pubId, state: "live", registered_at: info(before).registered_at });

      // The publisher's heartbeats go through again: four more (longer than the TTL; it beats
      // every third of it) and it is the same registration, still live — never removed and
      // registered again.
      const [metrics0] = await w.http([get(w, "ma", "/metrics")]);
      const beats0 = heartbeatsAnswered(metrics0);
      await eventually("four heartbeats answered after the outage", async () => heartbeatsAnswered((await w.http([get(w, "ma", "/metrics")]))[0]) >= beats0 + 4, {
        timeoutMs: 8_000,
        everyMs: 100,
      });
      const [after] = await w.http([get(w, "ma", `/v1/publishers/${pubId}`)]);
      expect(info(after)).toMatchObject({ pub_id: pubId, state: "live", registered_at: info(before).registered_at });
      expect(pub.err).not.toContain("forgot this publisher");
      expect(pub.err).toContain("heartbeat failed"); // it did try during the outage

      const [newA, newB] = await w.http([register(w, "ma", "after/a", "n-a"), register(w, "mb", "after/b", "n-b")]);
      expect([newA?.status, newB?.status]).toEqual([201, 201]);
    });
  }, 45_000);

  test("tokens: a writer accepted by ma is by mb; another writer may not touch its registration, it and the admin may; another admin token cannot join", async () => {
    await inWorld({ writers: 2 }, async (w) => {
      const [w1, w2] = w.writers as [string, string];
      const [madeA, madeB, stranger] = await w.http([
        register(w, "ma", "auth/one", "w1-a", w1),
        register(w, "mb", "auth/two", "w1-b", w1),
        register(w, "mb", "auth/three", "x-1", newToken()),
      ]);
      expect([madeA?.status, madeB?.status]).toEqual([201, 201]);
      expect(stranger?.status).toBe(401);

      // W1's registration made through ma: W2 through mb may neither heartbeat nor delete it.
      const [beat2, del2] = await w.http([post(w, "mb", "/v1/publishers/w1-a/heartbeat", undefined, w2), del(w, "mb", "/v1/publishers/w1-a", w2)]);
      expect(beat2?.status).toBe(403);
      expect(beat2?.body).toMatchObject({ error: "forbidden" });
      expect(del2?.status).toBe(403);
      expect(del2?.body).toMatchObject({ error: "forbidden" });
      const [still] = await w.http([get(w, "ma", "/v1/publishers/w1-a")]);
      expect(still?.status).toBe(200);

      // W1 through mb may.
      const [beat1] = await w.http([post(w, "mb", "/v1/publishers/w1-a/heartbeat", undefined, w1)]);
      expect(beat1?.status).toBe(200);
      const [del1] = await w.http([del(w, "mb", "/v1/publishers/w1-a", w1)]);
      expect(del1?.status).toBe(200);
      const [goneA] = await w.http([get(w, "ma", "/v1/publishers/w1-a")]);
      expect(goneA?.status).toBe(404);

      // So may the admin token, through mb, on W1's registration made through ma.
      const [madeA2] = await w.http([register(w, "ma", "auth/four", "w1-c", w1)]);
      expect(madeA2?.status).toBe(201);
      const [beatAdmin] = await w.http([post(w, "mb", "/v1/publishers/w1-c/heartbeat")]);
      expect(beatAdmin?.status).toBe(200);
      const [delAdmin] = await w.http([del(w, "mb", "/v1/publishers/w1-c")]);
      expect(delAdmin?.status).toBe(200);
      const [goneA2] = await w.http([get(w, "ma", "/v1/publishers/w1-c")]);
      expect(goneA2?.status).toBe(404);

      // A metaserver over the same Redis with another admin token refuses to start.
      const otherFile = join(w.dir, "other.token");
      writeFileSync(otherFile, `${newToken()}\n`, { mode: 0o600 });
      const other = w.spawn("ma", "meta-other", w.metaArgs("ma", META_PORT + 1, otherFile));
      expect(await other.exitWithin(15_000)).toBe(2);
      expect(other.err).toContain("another admin token");
      expect(other.err).toContain("--token-file");
      expect(other.out).not.toMatch(/^metaserver: /m);
      // ...and leaves ma's and mb's token as it was.
      const [adminA, adminB] = await w.http([register(w, "ma", "auth/five", "a-5"), register(w, "mb", "auth/six", "a-6")]);
      expect([adminA?.status, adminB?.status]).toEqual([201, 201]);
    });
  }, 30_000);
});
