/**
 * Fuzzing the metaserver's API, once per store (meta-stores.ts `forEachStore`): random and
 * mutated requests, then random Authorization headers and list queries. Every answer is a 2xx or
 * a 4xx with a JSON error, never a 5xx, and no write gets through without the token.
 */
import { expect, test } from "bun:test";
import { newToken, tokenDigest } from "../../src/core/token.ts";
import type { AuthConfig } from "../../src/meta/auth.ts";
import { MetaClient } from "../../src/meta/client.ts";
import type { PingOutcome } from "../../src/meta/confirm.ts";
import { fuzzSeed, mutate, type Prng, prng } from "../helpers/prng.ts";
import { startTestMeta } from "../fixtures/meta-helpers.ts";
import { forEachStore } from "../fixtures/meta-stores.ts";

const ITERATIONS = 2_400;
/** Each run takes about 0.5 s on an idle machine, several times that on a loaded 2-core one (Bun's default is 5 s). */
const FUZZ_TIMEOUT_MS = 20_000;
/** Requests in flight at once: enough to interleave handlers, few enough for one loopback server. */
const CONCURRENCY = 24;

const SEEDS = [
  { name: "lab/temp", host: "fd00::1" },
  { name: "lab/hum/in", pub_id: "hum-in.1", host: "10.0.0.7", ports: { service: 9081, string: 9082, ping: 9083 } },
  { name: "a", host: "[::1]", ports: { ping: 1 } },
  { name: "x_y-z/0", pub_id: "Z", host: "host.example" },
].map((s) => new TextEncoder().encode(JSON.stringify(s)));

const WEIRD: unknown[] = [
  null, true, 0, -1, 1e309, 2 ** 53 + 1, 65536, 8083.5, "", " ", "..", "../..", "a/../b", "%2e%2e", "\u0000",
  "é", "💥", "a".repeat(600), "::", "[::]", "fe80::1%lo", "0.0.0.0", "1.2.3.4.5", [], {}, { __proto__: { x: 1 } },
];

function randomJson(rng: Prng, depth = 0): unknown {
  switch (depth > 3 ? rng.int(3) : rng.int(6)) {
    case 0:
      return rng.pick(WEIRD);
    case 1:
      return String.fromCharCode(...rng.bytes(rng.int(12)));
    case 2:
      return rng.next() - 2 ** 31;
    case 3:
      return Array.from({ length: rng.int(4) }, () => randomJson(rng, depth + 1));
    default: {
      const keys = ["name", "pub_id", "host", "ports", "service", "string", "ping", "constructor", "__proto__", "x"];
      const out: Record<string, unknown> = {};
      for (let i = rng.int(5); i > 0; i--) out[rng.pick(keys)] = randomJson(rng, depth + 1);
      return out;
    }
  }
}

function randomSegment(rng: Prng): string {
  const text = String.fromCharCode(...rng.bytes(1 + rng.int(10)).map((b) => (rng.int(2) === 0 ? b : 0x61 + (b % 26))));
  return rng.int(3) === 0 ? encodeURIComponent(text) : encodeURIComponent(text).replace(/%2F/gi, "/");
}

/** One random request: a method, a path and maybe a body. */
function randomRequest(rng: Prng): { method: string; path: string; body?: Uint8Array | string } {
  switch (rng.int(7)) {
    case 0:
    case 1:
      return { method: "POST", path: "/v1/publishers", body: mutate(rng, rng.pick(SEEDS)) };
    case 2:
      return { method: "POST", path: "/v1/publishers", body: rng.bytes(rng.int(300)) };
    case 3:
      return { method: "POST", path: "/v1/publishers", body: JSON.stringify(randomJson(rng)) };
    case 4: {
      const seed = JSON.parse(new TextDecoder().decode(rng.pick(SEEDS))) as Record<string, unknown>;
      seed[rng.pick(["name", "pub_id", "host", "ports"])] = randomJson(rng);
      return { method: "POST", path: "/v1/publishers", body: JSON.stringify(seed) };
    }
    case 5: {
      const id = randomSegment(rng);
      const [method, suffix] = rng.pick([["GET", ""], ["DELETE", ""], ["POST", "/heartbeat"], ["POST", "/confirm"], ["PATCH", ""]] as const);
      return { method, path: `/v1/publishers/${id}${suffix}`, body: method === "POST" ? rng.bytes(rng.int(40)) : undefined };
    }
    default:
      return { method: "GET", path: `${rng.pick(["/v1/publishers", "/v1/tree"])}?prefix=${randomSegment(rng)}` };
  }
}

forEachStore((kind) => {
  test(`${ITERATIONS} random and mutated requests get 2xx or 4xx answers, and the server stays healthy`, async () => {
    const seed = fuzzSeed(0x5e7a);
    const rng = prng(seed);
    // Confirmations succeed or fail by a coin flip: both paths write to the store.
    const ping = async (): Promise<PingOutcome> =>
      rng.int(2) === 0 ? { ok: true, reply: { value: null, seq: 0, ts: "t" } } : { ok: false, timedOut: false, reason: "fuzz" };
    const t = await startTestMeta({ kind, confirm: { ping }, maxPublishers: 500 });
    const bad: string[] = [];
    try {
      // Hand-made extremes first: deep nesting, a body exactly at the limit, a lone surrogate.
      const fixed = [
        { method: "POST", path: "/v1/publishers", body: "[".repeat(30_000) + "]".repeat(30_000) },
        { method: "POST", path: "/v1/publishers", body: `{"name":"${"a".repeat(65_536 - 40)}","host":"h"}` },
        { method: "POST", path: "/v1/publishers", body: '{"name":"\\ud800","host":"h"}' },
        { method: "POST", path: "/v1/publishers", body: '{"name":"a","host":"h","ports":{"ping":1e400}}' },
      ];
      for (let i = -CONCURRENCY; i < ITERATIONS; i += CONCURRENCY) {
        const batch = i < 0 ? fixed : Array.from({ length: Math.min(CONCURRENCY, ITERATIONS - i) }, () => randomRequest(rng));
        await Promise.all(
          batch.map(async (req, j) => {
            const res = await fetch(t.meta.url + req.path, { method: req.method, body: req.body });
            const text = await res.text();
            const where = `seed ${seed}, iteration ${i + j}: ${req.method} ${req.path.slice(0, 80)}`;
            if (res.status >= 500) bad.push(`${where} → ${res.status} ${text.slice(0, 200)}`);
            else if (res.status >= 400) {
              const body = JSON.parse(text) as { error?: unknown; message?: unknown };
              if (typeof body.error !== "string" || typeof body.message !== "string") bad.push(`${where} → ${text.slice(0, 200)}`);
            }
          }),
        );
      }
      expect(bad).toEqual([]);
      expect(t.logs.join("")).not.toContain("request failed");
      expect((await t.client.health()).status).toBe("ok");
      const after = await t.client.register({ name: "after/fuzz", host: "fd00::1" });
      expect((await t.client.get(after.pub_id)).name).toBe("after/fuzz");
    } finally {
      await t.meta.close();
    }
  }, FUZZ_TIMEOUT_MS);

  test(`${ITERATIONS} requests with random Authorization headers and list queries: 401/403 or an answer, never a 5xx, never a write without the token`, async () => {
    const seed = fuzzSeed(0xa07);
    const rng = prng(seed);
    const admin = newToken("stm_");
    const auth: AuthConfig = { required: true, admin: tokenDigest(admin).toString("hex"), writers: [], read: null };
    const t = await startTestMeta({ kind, auth, confirm: { ping: async () => ({ ok: true, reply: { value: null, seq: 0, ts: "t" } }) } });
    const client = new MetaClient(t.meta.url, { token: admin });
    const bad: string[] = [];
    try {
      for (let i = 0; i < 50; i++) await client.register({ name: `f/${i}`, pub_id: `f${i}`, host: "fd00::1" });
      const before = JSON.stringify(await client.list());
      let validWrites = 0;
      const header = (): string | undefined => {
        switch (rng.int(6)) {
          case 0:
            return undefined;
          case 1:
            return `Bearer ${new TextDecoder().decode(mutate(rng, new TextEncoder().encode(admin)))}`;
          case 2:
            return new TextDecoder().decode(mutate(rng, new TextEncoder().encode(`Bearer ${admin}`)));
          case 3:
            return String.fromCharCode(...rng.bytes(rng.int(80)).map((b) => 0x20 + (b % 95)));
          case 4:
            return `${rng.pick(["Bearer", "bearer", "BEARER", "Basic", "Token"])}${rng.pick(["", " ", "\t", "  "])}${newToken(rng.pick(["stm_", "", "hlk_"]))}`;
          default:
            return `Bearer ${"A".repeat(rng.int(700))}`;
        }
      };
      const query = (): string => {
        const parts = [
          `limit=${rng.pick(["", "0", "1", "10000", "10001", "-1", "1e3", "abc", String(rng.int(20_000))])}`,
          `cursor=${rng.pick(["", "!!", "Zg", encodeURIComponent(String.fromCharCode(...rng.bytes(rng.int(30)))), Buffer.from(`f/${rng.int(60)}`).toString("base64url")])}`,
          `prefix=${rng.pick(["", "f", "f/", "..", "%00", "a".repeat(600)])}`,
          `name=${rng.pick(["f/1", "f", "", "a//b"])}`,
        ];
        return parts.filter(() => rng.int(2) === 0).join("&");
      };
      for (let i = 0; i < ITERATIONS; i += CONCURRENCY) {
        await Promise.all(
          Array.from({ length: CONCURRENCY }, async (_, j) => {
            const [method, path] = rng.pick([
              ["DELETE", `/v1/publishers/f${rng.int(50)}`],
              ["POST", `/v1/publishers/f${rng.int(50)}/heartbeat`],
              ["POST", `/v1/publishers/f${rng.int(50)}/confirm`],
              ["POST", "/v1/publishers"],
              ["GET", `/v1/publishers?${query()}`],
              ["GET", `/v1/tree?${query()}`],
            ] as const);
            const authorization = header();
            let res: Response;
            try {
              res = await fetch(t.meta.url + path, {
                method,
                headers: authorization === undefined ? {} : { Authorization: authorization },
                body: method === "POST" ? JSON.stringify({ name: `f/${rng.int(50)}`, pub_id: `f${rng.int(50)}`, host: "fd00::bad" }) : undefined,
              });
            } catch {
              return; // a header fetch itself refuses to send (control characters): nothing reached the server
            }
            const text = await res.text();
            const where = `seed ${seed}, iteration ${i + j}: ${method} ${path.slice(0, 80)}`;
            if (res.status >= 500) bad.push(`${where} → ${res.status} ${text.slice(0, 200)}`);
            if (res.status === 401 && res.headers.get("www-authenticate") !== 'Bearer realm="stoa meta"') bad.push(`${where} → 401 without the challenge`);
            const valid = authorization?.trim().replace(/^bearer\s+/i, "") === admin;
            if (method !== "GET" && valid) validWrites++;
            if (method !== "GET" && res.status < 400 && !valid) bad.push(`${where} → ${res.status} with a wrong token`);
          }),
        );
      }
      expect(bad).toEqual([]);
      // Unless a mutation happened to leave the admin token intact, no write got through.
      if (validWrites === 0) expect(JSON.stringify(await client.list())).toBe(before);
    } finally {
      await t.meta.close();
    }
  }, FUZZ_TIMEOUT_MS);
});
