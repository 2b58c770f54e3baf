/**
 * Attacks on the metaserver (issue 9, D1/D4/D5), each against a real server on loopback: what an
 * attacker who can reach the port — with no token, or with a token of their own — can no longer
 * do. Confirmation pings are a stand-in (`pings`) that answers for the pub_ids a test declares
 * live, so these tests do not depend on a gateway. Each runs against both stores
 * (meta-stores.ts `forEachStore`), but the paging of 100,000 registrations, which fills a SQLite
 * file directly.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { RedisClient } from "bun";
import { Database } from "bun:sqlite";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { newToken, tokenDigest } from "../../src/core/token.ts";
import type { AuthConfig } from "../../src/meta/auth.ts";
import { MetaClient } from "../../src/meta/client.ts";
import type { Pinger } from "../../src/meta/confirm.ts";
import { MetaApiError, type PublisherInfo, WRITER_CONFIRM_RATE_LIMIT, WRITER_MAX_PENDING } from "../../src/meta/protocol.ts";
import { SqliteStore } from "../../src/meta/sqlite-store.ts";
import { startTestMeta, type TestMeta, type TestMetaOptions } from "../fixtures/meta-helpers.ts";
import { durableStore, forEachStore, redisUrl, type TestStoreOptions } from "../fixtures/meta-stores.ts";
import { eventually } from "../helpers/eventually.ts";
import { rejection } from "../helpers/rejection.ts";

const dir = mkdtempSync(join(tmpdir(), "stoa-meta-sec-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const hex = (token: string) => tokenDigest(token).toString("hex");
const ADMIN = newToken("stm_");
const ALICE = newToken("stm_"); // the victim's writer token
const MALLORY = newToken("stm_"); // the attacker's: valid, but not the victim's
const READER = newToken("stm_");
const AUTH: AuthConfig = { required: true, admin: hex(ADMIN), writers: [hex(ALICE), hex(MALLORY)], read: null };

/** Answers every confirmation ping (the publisher is up). */
const alwaysUp: Pinger = async () => ({ ok: true, reply: { value: null, seq: 0, ts: new Date().toISOString() } });

function start(options: TestMetaOptions = {}): Promise<TestMeta> {
  return startTestMeta({ auth: AUTH, confirm: { ping: alwaysUp }, ...options });
}

/** What an operator does to change a Redis store's admin token: delete the key that records it. */
async function forgetAdmin(where: TestStoreOptions): Promise<void> {
  const client = new RedisClient(redisUrl());
  try {
    await client.connect();
    expect(await client.del(`${where.storeOptions?.keyPrefix ?? ""}admin`)).toBe(1);
  } finally {
    client.close();
  }
}

function as(t: TestMeta, token: string | undefined): MetaClient {
  return new MetaClient(t.meta.url, { token });
}

const failure = (p: Promise<unknown>): Promise<MetaApiError> => rejection(p, MetaApiError);

async function raw(url: string, method: string, path: string, headers: Record<string, string> = {}, body?: unknown) {
  const res = await fetch(url + path, {
    method,
    headers: { ...(body === undefined ? {} : { "Content-Type": "application/json" }), ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, json: JSON.parse(text) as Record<string, unknown> };
}

const victim = { name: "lab/temp", pub_id: "victim-1", host: "fd00::a" };

forEachStore((kind) => {
  describe("writes need a token (D1)", () => {
    test("anonymous register, delete, heartbeat and confirm get 401 with a Bearer challenge, and change nothing", async () => {
      const t = await start({ kind });
      try {
        await as(t, ALICE).register(victim);
        const attempts: [string, string, unknown?][] = [
          ["POST", "/v1/publishers", { ...victim, host: "fd00::bad" }],
          ["DELETE", `/v1/publishers/${victim.pub_id}`],
          ["POST", `/v1/publishers/${victim.pub_id}/heartbeat`],
          ["POST", `/v1/publishers/${victim.pub_id}/confirm`],
        ];
        const garbled = ["", "Bearer", "Basic dXNlcjpwYXNz", "Bearer short", `Bearer ${ADMIN} extra`, `Bearer ${newToken("stm_")}`];
        for (const [method, path, body] of attempts) {
          for (const authorization of [undefined, ...garbled]) {
            const r = await raw(t.meta.url, method, path, authorization === undefined ? {} : { Authorization: authorization }, body);
            expect([method, path, authorization, r.status, r.json.error]).toEqual([method, path, authorization, 401, "unauthorized"]);
            expect(r.headers.get("www-authenticate")).toBe('Bearer realm="stoa meta"');
            expect(String(r.json.message)).toContain("--token-file");
          }
        }
        const kept = await as(t, undefined).get(victim.pub_id);
        expect([kept.host, kept.state]).toEqual(["fd00::a", "pending"]);
        // Reads stay open without --read-token-file, and a 401 never echoes a token.
        expect((await as(t, undefined).list("lab")).map((p) => p.pub_id)).toEqual([victim.pub_id]);
        expect(t.logs.join("\n")).not.toContain(ADMIN.slice(4, 20));
      } finally {
        await t.meta.close();
      }
    });

    test("another valid token gets 403 for someone else's registration; the owner and the admin token may act", async () => {
      const t = await start({ kind });
      try {
        await as(t, ALICE).register(victim);
        const mallory = as(t, MALLORY);
        for (const attempt of [
          () => mallory.deregister(victim.pub_id),
          () => mallory.heartbeat(victim.pub_id),
          () => mallory.confirm(victim.pub_id),
          () => mallory.register({ ...victim, host: "fd00::bad" }),
        ]) {
          const err = await failure(attempt());
          expect([err.status, err.error]).toEqual([403, "forbidden"]);
          expect(err.message).toContain("registered with another token");
        }
        expect((await as(t, ALICE).heartbeat(victim.pub_id)).host).toBe("fd00::a");
        expect((await as(t, ALICE).confirm(victim.pub_id)).state).toBe("live");
        expect((await as(t, ADMIN).deregister(victim.pub_id)).pub_id).toBe(victim.pub_id);
      } finally {
        await t.meta.close();
      }
    });

    test("the hijack — the victim's name and pub_id under another token — is refused, before and after a restart", async () => {
      const where = durableStore(kind, dir, "hijack");
      let t = await start(where);
      try {
        const alice = () => as(t, ALICE);
        const mallory = () => as(t, MALLORY);
        await alice().register(victim);
        expect((await alice().confirm(victim.pub_id)).state).toBe("live");
        const hijacks = async () => {
          const same = await failure(mallory().register({ ...victim, host: "fd00::bad" }));
          expect([same.status, same.error]).toEqual([403, "forbidden"]);
          const name = await failure(mallory().register({ ...victim, pub_id: "thief-1", host: "fd00::bad" }));
          expect([name.status, name.error]).toEqual([409, "duplicate_name"]);
          const looked = await as(t, undefined).lookup(victim.name);
          expect([looked.pub_id, looked.host, looked.state]).toEqual([victim.pub_id, "fd00::a", "live"]);
        };
        await hijacks();
        await t.meta.close();
        t = await start(where);
        await hijacks();
        // The real publisher's heartbeats keep working, for its own record.
        for (let i = 0; i < 3; i++) expect((await alice().heartbeat(victim.pub_id)).host).toBe("fd00::a");
        expect((await as(t, undefined).get(victim.pub_id)).host).toBe("fd00::a");
      } finally {
        await t.meta.close();
      }
    });

    test("a stale registration's name is not for another token to take", async () => {
      const t = await start({ kind, ttlMs: 100, deregisterAfterMs: 60_000, sweepIntervalMs: 20 });
      try {
        await as(t, ALICE).register(victim);
        await as(t, ALICE).confirm(victim.pub_id);
        await eventually("stale", async () => (await as(t, undefined).get(victim.pub_id)).state === "stale");
        const err = await failure(as(t, MALLORY).register({ ...victim, pub_id: "thief-1", host: "fd00::bad" }));
        expect([err.status, err.error]).toEqual([409, "duplicate_name"]);
        // Its owner may come back under a new pub_id (a restarted publisher without --pub-id).
        expect((await as(t, ALICE).register({ ...victim, pub_id: "victim-2" })).pub_id).toBe("victim-2");
      } finally {
        await t.meta.close();
      }
    });

    test("with --read-token-file, reads need a token; a read token cannot write; health stays open", async () => {
      const t = await start({ kind, auth: { ...AUTH, read: hex(READER) } });
      try {
        await as(t, ALICE).register(victim);
        const anon = await failure(as(t, undefined).list());
        expect([anon.status, anon.error]).toEqual([401, "unauthorized"]);
        expect((await failure(as(t, undefined).get(victim.pub_id))).status).toBe(401);
        for (const token of [READER, ALICE, ADMIN]) expect((await as(t, token).lookup(victim.name)).pub_id).toBe(victim.pub_id);
        const write = await failure(as(t, READER).register({ name: "x", host: "fd00::1" }));
        expect([write.status, write.error]).toEqual([403, "forbidden"]);
        expect((await as(t, undefined).health()).status).toBe("ok");
      } finally {
        await t.meta.close();
      }
    });

    test("a registration made under --no-auth is taken over only by the admin token once auth is on, not by whichever writer comes first (regression, found attacking the D1 fix)", async () => {
      const where = durableStore(kind, dir, "noauth");
      let t = await start({ ...where, auth: undefined });
      try {
        const open = as(t, undefined);
        await open.register(victim);
        expect((await open.heartbeat(victim.pub_id)).pub_id).toBe(victim.pub_id);
        await t.meta.close();
        // Authentication turned on: an owner-less record is nobody's to claim but the admin's.
        if (kind === "redis") {
          // Every metaserver on one Redis has the same admin token: turning auth on is stopping
          // them all and deleting the key that records it (the refusal says so).
          await expect(start(where)).rejects.toThrow(/every metaserver on one store must have the same --token-file/);
          await forgetAdmin(where);
        }
        t = await start(where);
        expect((await failure(as(t, undefined).heartbeat(victim.pub_id))).status).toBe(401);
        for (const writer of [MALLORY, ALICE]) {
          expect((await failure(as(t, writer).heartbeat(victim.pub_id))).status).toBe(403);
          expect((await failure(as(t, writer).register(victim))).status).toBe(403);
          expect((await failure(as(t, writer).deregister(victim.pub_id))).status).toBe(403);
        }
        expect((await as(t, ADMIN).heartbeat(victim.pub_id)).pub_id).toBe(victim.pub_id);
        expect((await failure(as(t, MALLORY).heartbeat(victim.pub_id))).status).toBe(403);
      } finally {
        await t.meta.close();
      }
    });
  });

  describe("quotas (D4)", () => {
    test("a flood of registrations from one token hits its pending quota and leaves room for other writers and the admin", async () => {
      const t = await start({ kind });
      try {
        const mallory = as(t, MALLORY);
        const results = await Promise.all(
          Array.from({ length: 300 }, (_, i) => mallory.register({ name: `flood/${i}`, host: "fd00::bad" }).then(() => 0, (e: unknown) => e)),
        );
        const refused = results.filter((r): r is MetaApiError => r instanceof MetaApiError);
        expect(results.length - refused.length).toBe(WRITER_MAX_PENDING);
        expect(new Set(refused.map((e) => `${e.status} ${e.error}`))).toEqual(new Set(["429 quota_exceeded"]));
        expect(refused[0]?.message).toContain("waiting for confirmation");
        // An authenticated publisher is not crowded out: it registers and goes live.
        const alice = as(t, ALICE);
        await alice.register(victim);
        expect((await alice.confirm(victim.pub_id)).state).toBe("live");
        expect((await as(t, ADMIN).register({ name: "admin/one", host: "fd00::1" })).state).toBe("pending");
      } finally {
        await t.meta.close();
      }
    });

    test("registrations per token and for all non-admin tokens are capped below the global cap, which the admin can still use", async () => {
      const t = await start({ kind, quotas: { writerPublishers: 20, nonAdminPublishers: 30 }, maxPublishers: 35 });
      try {
        const fill = async (token: string, prefix: string, n: number) => {
          const client = as(t, token);
          const out: (PublisherInfo | MetaApiError)[] = [];
          for (let i = 0; i < n; i++) {
            const r = await client.register({ name: `${prefix}/${i}`, host: "fd00::1" }).then(
              (info) => client.confirm(info.pub_id),
              (e: unknown) => e as MetaApiError,
            );
            out.push(r);
          }
          return out;
        };
        const mallory = await fill(MALLORY, "m", 25);
        expect(mallory.slice(0, 20).every((r) => !(r instanceof MetaApiError))).toBe(true);
        expect(mallory.slice(20).map((r) => (r instanceof MetaApiError ? `${r.status} ${r.error}` : "ok"))).toEqual(Array(5).fill("429 quota_exceeded"));
        const alice = await fill(ALICE, "a", 12);
        expect(alice.filter((r) => !(r instanceof MetaApiError)).length).toBe(10); // 30 for non-admins in all
        expect((alice[10] as MetaApiError).message).toContain("writers other than the admin");
        const admin = await fill(ADMIN, "adm", 6);
        expect(admin.filter((r) => !(r instanceof MetaApiError)).length).toBe(5); // up to the global 35
        expect((admin[5] as MetaApiError).status).toBe(503);
      } finally {
        await t.meta.close();
      }
    });

    test("under --no-auth the quota counts per source address", async () => {
      const t = await startTestMeta({ kind, listen: { hostname: "::", port: 0 }, confirm: { ping: alwaysUp } });
      try {
        const v4 = new MetaClient(`http://127.0.0.1:${t.meta.port}`);
        const v6 = new MetaClient(`http://[::1]:${t.meta.port}`);
        const results = await Promise.all(
          Array.from({ length: 150 }, (_, i) => v4.register({ name: `flood/${i}`, host: "fd00::bad" }).then(() => 0, (e: unknown) => e)),
        );
        expect(results.filter((r) => r === 0).length).toBe(WRITER_MAX_PENDING);
        expect((await v6.register(victim)).pub_id).toBe(victim.pub_id);
      } finally {
        await t.meta.close();
      }
    });

    test("pending registrations expire on their own timer, whatever heartbeats say; confirmed ones stay", async () => {
      const t = await start({ kind, pendingExpiryMs: 600, sweepIntervalMs: 20 });
      try {
        const mallory = as(t, MALLORY);
        await mallory.register({ name: "squat/forever", pub_id: "squat-1", host: "fd00::bad" });
        await as(t, ALICE).register(victim);
        await as(t, ALICE).confirm(victim.pub_id);
        const started = Date.now();
        let gone = 0;
        while (Date.now() - started < 5_000) {
          const beat = await mallory.heartbeat("squat-1").then(
            () => null,
            (e: unknown) => e,
          );
          await as(t, ALICE).heartbeat(victim.pub_id);
          if (beat instanceof MetaApiError && beat.status === 404) {
            gone = Date.now() - started;
            break;
          }
          await Bun.sleep(50);
        }
        expect(gone).toBeGreaterThan(0); // removed although it heartbeat every 50 ms
        expect(t.logs.join("\n")).toContain("removed: never confirmed");
        expect((await as(t, undefined).get(victim.pub_id)).state).toBe("live");
      } finally {
        await t.meta.close();
      }
    });

    test("registering the same pending pub_id again does not restart its pending clock (regression, found attacking the D4 fix)", async () => {
      const t = await start({ kind, pendingExpiryMs: 600, sweepIntervalMs: 20 });
      try {
        const mallory = as(t, MALLORY);
        const squat = { name: "squat/again", pub_id: "squat-2", host: "fd00::bad" };
        await mallory.register(squat);
        const started = Date.now();
        let gone = 0;
        while (Date.now() - started < 5_000) {
          const again = await mallory.register(squat).then(
            () => null,
            (e: unknown) => e,
          );
          // Removed by the sweeper between two of our calls: the next register is a fresh one,
          // so look at whether it was ever gone, via the log.
          if (t.logs.join("\n").includes("removed: never confirmed")) {
            gone = Date.now() - started;
            break;
          }
          if (again !== null) throw again;
          await Bun.sleep(50);
        }
        expect(gone).toBeGreaterThan(0); // re-registered every 50 ms, yet expired
        expect(gone).toBeLessThan(3_000);
      } finally {
        await t.meta.close();
      }
    });

    test("an unconfirmed registration that went stale still counts as pending against the quota (regression, found attacking the D4 fix)", async () => {
      const t = await start({ kind, ttlMs: 100, deregisterAfterMs: 60_000, pendingExpiryMs: 60_000, sweepIntervalMs: 20 });
      try {
        const mallory = as(t, MALLORY);
        for (let i = 0; i < WRITER_MAX_PENDING; i++) await mallory.register({ name: `stale/a${i}`, pub_id: `sa-${i}`, host: "fd00::bad" });
        await eventually("the squats to turn stale", async () => ((await as(t, undefined).health()).publishers.stale === WRITER_MAX_PENDING));
        const err = await failure(mallory.register({ name: "stale/more", pub_id: "sa-more", host: "fd00::bad" }));
        expect([err.status, err.error]).toEqual([429, "quota_exceeded"]);
        // Someone else is not held up by them.
        expect((await as(t, ALICE).register(victim)).pub_id).toBe(victim.pub_id);
      } finally {
        await t.meta.close();
      }
    });

    test("one writer may start only so many confirmation pings in all, one fresh pub_id each (no port scanning by re-registering; regression, found attacking the D6 fix)", async () => {
      let pings = 0;
      const down: Pinger = async () => (pings++, { ok: false, timedOut: false, reason: "no stoa gateway answered" });
      const t = await start({ kind, confirm: { ping: down } });
      try {
        const mallory = as(t, MALLORY);
        let limited: MetaApiError | null = null;
        for (let i = 0; i < WRITER_CONFIRM_RATE_LIMIT + 5 && limited === null; i++) {
          await mallory.register({ name: `scan/p${i}`, pub_id: `scan-${i}`, host: "fd00::bad" });
          const err = await failure(mallory.confirm(`scan-${i}`));
          if (err.status === 429) limited = err;
          else expect([err.status, err.error]).toEqual([502, "confirm_failed"]);
        }
        expect(limited?.error).toBe("rate_limited");
        expect(pings).toBe(WRITER_CONFIRM_RATE_LIMIT);
        // Another writer, and the admin, still confirm.
        await as(t, ALICE).register(victim);
        expect((await failure(as(t, ALICE).confirm(victim.pub_id))).status).toBe(502);
        expect(pings).toBe(WRITER_CONFIRM_RATE_LIMIT + 1);
      } finally {
        await t.meta.close();
      }
    });

    test("a registration may start only a few confirmation pings per window", async () => {
      let pings = 0;
      const t = await start({ kind, confirm: { ping: async (...a) => (pings++, alwaysUp(...a)) } });
      try {
        const alice = as(t, ALICE);
        await alice.register(victim);
        for (let i = 0; i < 5; i++) expect((await alice.confirm(victim.pub_id)).state).toBe("live");
        const err = await failure(alice.confirm(victim.pub_id));
        expect([err.status, err.error]).toEqual([429, "rate_limited"]);
        expect(pings).toBe(5);
      } finally {
        await t.meta.close();
      }
    });
  });

  describe("pagination (D5)", () => {
    test("limits and cursors are checked; the tree is paged the same way", async () => {
      const t = await start({ kind });
      try {
        const admin = as(t, ADMIN);
        for (const name of ["a/x", "a/y", "b/z"]) await admin.register({ name, host: "fd00::1" });
        for (const bad of ["limit=0", "limit=10001", "limit=x", "cursor=%21%21", "cursor=Zm9v%2F"]) {
          const r = await raw(t.meta.url, "GET", `/v1/publishers?${bad}`);
          expect([bad, r.status]).toEqual([bad, 400]);
        }
        const first = await raw(t.meta.url, "GET", "/v1/tree?limit=2");
        expect(first.json.next_cursor).toBeString();
        const second = await raw(t.meta.url, "GET", `/v1/tree?limit=2&cursor=${first.json.next_cursor}`);
        expect(second.json).toEqual({ tree: [{ name: "b", path: "b", children: [{ name: "z", path: "b/z", pub_id: expect.any(String), state: "pending" }] }], next_cursor: null });
        expect((await admin.tree()).map((n) => n.path)).toEqual(["a", "b"]);
        expect((await admin.findByName("a/y"))?.name).toBe("a/y");
      } finally {
        await t.meta.close();
      }
    });
  });
});

describe("sqlite only: pagination (D5)", () => {
  test("100,000 registrations page completely, each untouched one exactly once, while others are added and removed", async () => {
    const db = join(dir, "many.db");
    await SqliteStore.open(db).close(); // the schema
    const sql = new Database(db);
    const names: string[] = [];
    sql.transaction(() => {
      const insert = sql.query(
        "INSERT INTO publishers (pub_id, name, host, port_service, port_string, port_ping, state, confirmed, registered_at, last_seen, owner) VALUES (?, ?, 'fd00::1', 8081, 8082, 8083, 'live', 1, ?, ?, ?)",
      );
      const now = Date.now();
      for (let i = 0; i < 100_000; i++) {
        const name = `bulk/${String(i % 317).padStart(3, "0")}/${i}`;
        names.push(name);
        insert.run(`b${i}`, name, now, now, `t:${hex(ADMIN)}`);
      }
    })();
    sql.close();
    const t = await start({ db, ttlMs: 3_600_000, maxPublishers: 200_000 }); // room for the churn above the 100,000
    try {
      const admin = as(t, ADMIN);
      const removed = new Set<string>();
      let adding = true;
      let added = 0;
      const churn = (async () => {
        while (adding) {
          const n = added++;
          // Names all over the key space: before, between and after the pages being read.
          await admin.register({ name: `bulk/${String((n * 7) % 317).padStart(3, "0")}/new-${n}`, host: "fd00::2" });
          const gone = `b${(n * 7919) % 100_000}`;
          const info = await admin.deregister(gone).catch(() => null);
          if (info !== null) removed.add(info.name);
        }
      })();
      const seen: string[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const page = await admin.page("bulk", { cursor, limit: 1_000 });
        seen.push(...page.publishers.map((p) => p.name));
        cursor = page.next_cursor;
        pages++;
      } while (cursor !== null);
      adding = false;
      await churn;
      expect(added).toBeGreaterThan(20); // the churn really overlapped the listing
      expect(new Set(seen).size).toBe(seen.length); // no duplicates
      expect(seen).toEqual([...seen].sort()); // in name order: the cursor only moves forward
      const got = new Set(seen);
      const missing = names.filter((n) => !removed.has(n) && !got.has(n));
      expect(missing).toEqual([]);
      expect(pages).toBeGreaterThanOrEqual(100);
    } finally {
      await t.meta.close();
    }
  }, 60_000);
});
