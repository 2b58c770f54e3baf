/**
 * The metaserver's HTTP API against a real server on loopback, once per store (meta-stores.ts
 * `forEachStore`): every rule's status, code and message, the publisher lifecycle, TTLs in real
 * time, a restart on the same store. SQLite's file lock is tested on SQLite only.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { isValidPubId } from "../../src/stream/names.ts";
import { MAX_BODY_BYTES } from "../../src/meta/protocol.ts";
import type { PingOutcome } from "../../src/meta/confirm.ts";
import { startTestMeta, type TestMeta } from "../fixtures/meta-helpers.ts";
import { durableStore, forEachStore } from "../fixtures/meta-stores.ts";
import { eventually } from "../helpers/eventually.ts";

const dir = mkdtempSync(join(tmpdir(), "stoa-meta-api-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A ping that always succeeds, so these tests need no gateway (confirm.test.ts has real ones). */
const alwaysAnswers = async (): Promise<PingOutcome> => ({ ok: true, reply: { value: "1", seq: 1, ts: new Date().toISOString() } });

async function call(base: string, method: string, path: string, body?: string | ReadableStream | Uint8Array) {
  const res = await fetch(base + path, { method, body });
  const text = await res.text();
  let json: unknown = null;
  try {
    json = JSON.parse(text);
  } catch {}
  return { status: res.status, json: json as Record<string, unknown> | null, headers: res.headers, text };
}

forEachStore((kind) => {
  describe("the rules, one request each", () => {
    let t: TestMeta;
    beforeAll(async () => {
      t = await startTestMeta({ kind, confirm: { ping: alwaysAnswers } });
      await t.client.register({ name: "lab/temp", pub_id: "t1", host: "fd00::1" });
    });
    afterAll(() => t.meta.close());

    const table: [string, string, string, string | undefined, number, string, RegExp][] = [
      ["malformed JSON", "POST", "/v1/publishers", "{", 400, "bad_json", /not valid JSON/],
      ["a body that is not UTF-8", "POST", "/v1/publishers", "\xff", 400, "bad_json", /not (UTF-8|valid JSON)/],
      ["an empty body", "POST", "/v1/publishers", "", 400, "bad_json", /no body/],
      ["a JSON array", "POST", "/v1/publishers", "[]", 400, "bad_request", /must be a JSON object/],
      ["a JSON string", "POST", "/v1/publishers", '"x"', 400, "bad_request", /must be a JSON object/],
      ["no name", "POST", "/v1/publishers", '{"host":"h"}', 400, "bad_name", /^name is required$/],
      ["an empty segment", "POST", "/v1/publishers", '{"name":"a//b","host":"h"}', 400, "bad_name", /"a\/\/b".*empty segment/],
      ["a leading slash", "POST", "/v1/publishers", '{"name":"/a","host":"h"}', 400, "bad_name", /empty segment/],
      ["a space in a name", "POST", "/v1/publishers", '{"name":"a b","host":"h"}', 400, "bad_name", /letters, digits/],
      ["a .. segment", "POST", "/v1/publishers", '{"name":"a/../b","host":"h"}', 400, "bad_name", /'\.\.'/],
      ["a name that is a number", "POST", "/v1/publishers", '{"name":5,"host":"h"}', 400, "bad_name", /^name: /],
      ["a traversal pub_id", "POST", "/v1/publishers", '{"name":"x","pub_id":"../x","host":"h"}', 400, "bad_pub_id", /1-64 characters/],
      ["an empty pub_id", "POST", "/v1/publishers", '{"name":"x","pub_id":"","host":"h"}', 400, "bad_pub_id", /pub_id/],
      ["no host", "POST", "/v1/publishers", '{"name":"x"}', 400, "bad_host", /^host is required$/],
      ["the unspecified address", "POST", "/v1/publishers", '{"name":"x","host":"::"}', 400, "bad_host", /unspecified address/],
      ["a zoned address", "POST", "/v1/publishers", '{"name":"x","host":"fe80::1%eth0"}', 400, "bad_host", /zone/],
      ["a host with a space", "POST", "/v1/publishers", '{"name":"x","host":"a b"}', 400, "bad_host", /not an IPv6 address/],
      ["port 0", "POST", "/v1/publishers", '{"name":"x","host":"h","ports":{"ping":0}}', 400, "bad_ports", /^ports\.ping/],
      ["port 65536", "POST", "/v1/publishers", '{"name":"x","host":"h","ports":{"service":65536}}', 400, "bad_ports", /ports\.service/],
      ["a port as a string", "POST", "/v1/publishers", '{"name":"x","host":"h","ports":{"ping":"1"}}', 400, "bad_ports", /ports\.ping/],
      ["two kinds on one port", "POST", "/v1/publishers", '{"name":"x","host":"h","ports":{"ping":8081}}', 400, "bad_ports", /three different ports/],
      ["an unknown port kind", "POST", "/v1/publishers", '{"name":"x","host":"h","ports":{"pong":1}}', 400, "bad_ports", /unknown field "pong"/],
      ["an unknown field", "POST", "/v1/publishers", '{"name":"x","host":"h","colour":1}', 400, "bad_request", /unknown field "colour"/],
      ["a name on a directory node", "POST", "/v1/publishers", '{"name":"lab","host":"h"}', 400, "name_is_directory", /lab\/temp/],
      ["a name below a publisher", "POST", "/v1/publishers", '{"name":"lab/temp/x","host":"h"}', 400, "parent_is_publisher", /below publisher lab\/temp \(pub_id t1\)/],
      ["a duplicate name", "POST", "/v1/publishers", '{"name":"lab/temp","host":"h"}', 409, "duplicate_name", /registered by pub_id t1 \(pending/],
      ["a duplicate pub_id", "POST", "/v1/publishers", '{"name":"other","pub_id":"t1","host":"h"}', 409, "duplicate_pub_id", /already registered as lab\/temp/],
      ["an unknown pub_id", "GET", "/v1/publishers/nope", undefined, 404, "not_found", /no publisher with pub_id nope/],
      ["a heartbeat for an unknown pub_id", "POST", "/v1/publishers/nope/heartbeat", undefined, 404, "not_found", /register again/],
      ["a confirm for an unknown pub_id", "POST", "/v1/publishers/nope/confirm", undefined, 404, "not_found", /nope/],
      ["a delete of an unknown pub_id", "DELETE", "/v1/publishers/nope", undefined, 404, "not_found", /nope/],
      ["an invalid pub_id in the path", "GET", "/v1/publishers/..%2Fetc", undefined, 400, "bad_pub_id", /"\.\.\/etc"/],
      ["a pub_id with a dot first", "DELETE", "/v1/publishers/.x", undefined, 400, "bad_pub_id", /starting with a letter/],
      ["a bad prefix", "GET", "/v1/publishers?prefix=a//b", undefined, 400, "bad_prefix", /empty segment/],
      ["a bad tree prefix", "GET", "/v1/tree?prefix=%20", undefined, 400, "bad_prefix", /prefix/],
      ["an unknown route", "GET", "/v2/publishers", undefined, 404, "not_found", /no route GET \/v2\/publishers/],
      ["an unknown method", "PUT", "/v1/publishers", "{}", 404, "not_found", /no route PUT/],
    ];
    for (const [what, method, path, body, status, error, message] of table) {
      test(`${what}: ${status} ${error}`, async () => {
        const res = await call(t.meta.url, method, path, body === "\xff" ? Uint8Array.of(0xff) : body);
        expect(res.status).toBe(status);
        expect(res.headers.get("content-type")).toContain("application/json");
        expect(res.json?.error).toBe(error);
        expect(String(res.json?.message)).toMatch(message);
      });
    }

    test("a body over the limit: 413 when declared", async () => {
      const res = await call(t.meta.url, "POST", "/v1/publishers", "x".repeat(MAX_BODY_BYTES + 1));
      expect([res.status, res.json?.error]).toEqual([413, "too_large"]);
    });

    test("a body over the limit: 413 when streamed without a length", async () => {
      let sent = 0;
      const stream = new ReadableStream<Uint8Array>({
        pull(ctrl) {
          if (sent > MAX_BODY_BYTES * 2) return ctrl.close();
          sent += 16_384;
          ctrl.enqueue(new Uint8Array(16_384).fill(0x20));
        },
      });
      const res = await call(t.meta.url, "POST", "/v1/publishers", stream);
      expect([res.status, res.json?.error]).toEqual([413, "too_large"]);
    });

    test("a rejected request changed nothing", async () => {
      expect((await t.client.list("")).map((p) => p.name)).toEqual(["lab/temp"]);
    });
  });

  describe("the publisher lifecycle over HTTP", () => {
    test("register without pub_id or ports, confirm, heartbeat, get, deregister", async () => {
      const t = await startTestMeta({ kind, confirm: { ping: alwaysAnswers } });
      try {
        const reg = await call(t.meta.url, "POST", "/v1/publishers", JSON.stringify({ name: "a/b", host: "[FD00::0001]" }));
        expect(reg.status).toBe(201);
        const pubId = String(reg.json?.pub_id);
        expect(isValidPubId(pubId)).toBe(true);
        expect(reg.headers.get("location")).toBe(`/v1/publishers/${pubId}`);
        expect(reg.json).toMatchObject({
          name: "a/b",
          host: "fd00::1",
          ports: { service: 8081, string: 8082, ping: 8083 },
          urls: { ping: `ws://[fd00::1]:8083/pub/${pubId}` },
          state: "pending",
        });
        expect((await t.client.confirm(pubId)).state).toBe("live");
        expect((await t.client.heartbeat(pubId)).state).toBe("live");
        expect((await t.client.get(pubId)).name).toBe("a/b");
        const again = await call(t.meta.url, "POST", "/v1/publishers", JSON.stringify({ name: "a/b", pub_id: pubId, host: "10.1.2.3" }));
        expect([again.status, again.json?.state, again.json?.host]).toEqual([200, "pending", "10.1.2.3"]);
        expect((await t.client.deregister(pubId)).pub_id).toBe(pubId);
        expect((await call(t.meta.url, "GET", `/v1/publishers/${pubId}`)).status).toBe(404);
      } finally {
        await t.meta.close();
      }
    });

    test("lists by prefix and answers the tree", async () => {
      const t = await startTestMeta({ kind });
      try {
        for (const name of ["lab/temp", "lab/hum/in", "labx", "lab-2/a"]) await t.client.register({ name, host: "fd00::1" });
        expect((await t.client.list("lab")).map((p) => p.name)).toEqual(["lab/hum/in", "lab/temp"]);
        expect((await t.client.list("lab/")).map((p) => p.name)).toEqual(["lab/hum/in", "lab/temp"]);
        const raw = await call(t.meta.url, "GET", "/v1/publishers?prefix=lab%2Fhum");
        expect(Object.keys(raw.json ?? {})).toEqual(["publishers", "next_cursor"]);
        expect((await t.client.list("")).length).toBe(4);
        const tree = await t.client.tree();
        expect(tree.map((n) => n.name)).toEqual(["lab", "lab-2", "labx"]);
        expect(tree[0]?.children?.map((n) => n.path)).toEqual(["lab/hum", "lab/temp"]);
        expect(tree[0]?.children?.[1]).toMatchObject({ name: "temp", state: "pending" });
        expect((await t.client.tree("lab/hum")).map((n) => n.name)).toEqual(["lab"]);
      } finally {
        await t.meta.close();
      }
    });

    test("health counts registrations by state and says the TTLs", async () => {
      const t = await startTestMeta({ kind, ttlMs: 7_000, deregisterAfterMs: 9_000 });
      try {
        await t.client.register({ name: "x", host: "h" });
        expect(await t.client.health()).toEqual({
          status: "ok",
          publishers: { pending: 1, live: 0, stale: 0 },
          ttl_ms: 7_000,
          deregister_after_ms: 9_000,
          store: t.meta.store,
        });
        expect(t.meta.store).toMatch(kind === "sqlite" ? /^sqlite::memory:$/ : /^redis:\/\/127\.0\.0\.1:\d+/);
      } finally {
        await t.meta.close();
      }
    });

    test("serves Prometheus metrics", async () => {
      const t = await startTestMeta({ kind });
      try {
        await t.client.register({ name: "x", host: "h" });
        const res = await fetch(`${t.meta.url}/metrics`);
        expect(res.headers.get("content-type")).toBe("text/plain; version=0.0.4; charset=utf-8");
        const text = await res.text();
        expect(text).toContain('stoa_meta_publishers{state="pending"} 1');
        expect(text).toContain('stoa_meta_requests_total{route="/v1/publishers",status="201"} 1');
      } finally {
        await t.meta.close();
      }
    });
  });

  describe("liveness over time", () => {
    test("a silent publisher turns stale after the TTL, then is removed", async () => {
      const t = await startTestMeta({ kind, ttlMs: 150, deregisterAfterMs: 150, sweepIntervalMs: 20 });
      try {
        const { pub_id } = await t.client.register({ name: "quiet", host: "h" });
        const states: string[] = [];
        await eventually("removal", async () => {
          const res = await call(t.meta.url, "GET", `/v1/publishers/${pub_id}`);
          const state = res.status === 404 ? "removed" : String(res.json?.state);
          if (states.at(-1) !== state) states.push(state);
          return state === "removed";
        });
        expect(states).toEqual(["pending", "stale", "removed"]);
        expect(t.logs.join("")).toContain("stale: no heartbeat within the TTL");
      } finally {
        await t.meta.close();
      }
    });

    test("heartbeats within the TTL keep a publisher live", async () => {
      const t = await startTestMeta({ kind, ttlMs: 400, deregisterAfterMs: 400, sweepIntervalMs: 20, confirm: { ping: alwaysAnswers } });
      try {
        const { pub_id } = await t.client.register({ name: "chatty", host: "h" });
        await t.client.confirm(pub_id);
        const seen = new Set<string>();
        for (let i = 0; i < 15; i++) {
          seen.add((await t.client.heartbeat(pub_id)).state);
          await Bun.sleep(50);
          seen.add((await t.client.get(pub_id)).state);
        }
        expect([...seen]).toEqual(["live"]);
      } finally {
        await t.meta.close();
      }
    });

    test("a restart on the same store keeps every registration", async () => {
      const where = durableStore(kind, dir, "restart");
      const first = await startTestMeta({ ...where, confirm: { ping: alwaysAnswers } });
      const a = await first.client.register({ name: "keep/a", host: "fd00::1" });
      await first.client.confirm(a.pub_id);
      const b = await first.client.register({ name: "keep/b", host: "10.0.0.2", ports: { ping: 9083 } });
      await first.meta.close();

      const second = await startTestMeta(where);
      try {
        expect(await second.client.list("keep")).toEqual([{ ...a, state: "live" }, b]);
      } finally {
        await second.meta.close();
      }
    });

    test("a port in use is a clear error", async () => {
      const first = await startTestMeta({ kind });
      try {
        await expect(startTestMeta({ kind, listen: { hostname: "127.0.0.1", port: first.meta.port } })).rejects.toThrow(/port is in use/);
      } finally {
        await first.meta.close();
      }
    });
  });
});

describe("sqlite only", () => {
  test("a second metaserver on the same file refuses to start", async () => {
    const db = join(dir, "twice.db");
    const first = await startTestMeta({ db });
    try {
      await expect(startTestMeta({ db })).rejects.toThrow(/in use by another process/);
    } finally {
      await first.meta.close();
    }
  });
});
