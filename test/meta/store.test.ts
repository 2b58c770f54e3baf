/**
 * The store contract (src/meta/store.ts), once per store (meta-stores.ts `forEachStore`):
 * registering, the name rules, TTLs and the pending timer on a clock the test moves by hand,
 * paging and the tree. Then what only the SQLite store does: its file — restart, lock,
 * migrations, mode 0600.
 */
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { chmodSync, existsSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { StoaError } from "../../src/core/errors.ts";
import { DEFAULT_PORTS, MetaApiError, type Registration } from "../../src/meta/protocol.ts";
import { SCHEMA_VERSION, SqliteStore } from "../../src/meta/sqlite-store.ts";
import { listAll, type Store, type StoreOptions, treeOf } from "../../src/meta/store.ts";
import { forEachStore, openTestStore, type StoreKind } from "../fixtures/meta-stores.ts";
import { eventually } from "../helpers/eventually.ts";

const dir = mkdtempSync(join(tmpdir(), "stoa-meta-store-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function reg(name: string, pub_id: string, host = "fd00::1"): Registration & { pub_id: string } {
  return { name, pub_id, host, ports: { ...DEFAULT_PORTS } };
}

/** Stores a test opened with `clocked`, closed after it whatever happened. */
const opened: Store[] = [];
afterEach(async () => {
  await Promise.all(opened.splice(0).map((store) => store.close()));
});

/** A store of `kind` on a clock the test moves by hand. */
async function clocked(kind: StoreKind, options: StoreOptions = {}) {
  const clock = { now: 1_000_000 };
  const store = await openTestStore(kind, { clock: () => clock.now, ...options });
  opened.push(store);
  return { store, clock };
}

/** A SQLite file store on a clock the test moves by hand (closed by the test). */
function clockedFile(path: string, options: StoreOptions = {}) {
  const clock = { now: 1_000_000 };
  const store = SqliteStore.open(path, { clock: () => clock.now, ...options });
  return { store, clock };
}

async function rejects(fn: () => Promise<unknown>): Promise<MetaApiError> {
  try {
    await fn();
  } catch (err) {
    if (err instanceof MetaApiError) return err;
    throw err;
  }
  throw new Error("expected a MetaApiError");
}

const names = async (store: Store, prefix: string) => (await listAll(store, prefix)).map((p) => p.name);

forEachStore((kind) => {
  describe("registering", () => {
    test("a new registration is pending, with gateway URLs for its host", async () => {
      const { store } = await clocked(kind);
      const { info, created } = await store.register(reg("lab/temp", "t1"));
      expect(created).toBe(true);
      expect(info).toEqual({
        name: "lab/temp",
        pub_id: "t1",
        host: "fd00::1",
        ports: { service: 8081, string: 8082, ping: 8083 },
        urls: {
          service: "ws://[fd00::1]:8081/pub/t1",
          string: "ws://[fd00::1]:8082/pub/t1",
          ping: "ws://[fd00::1]:8083/pub/t1",
        },
        state: "pending",
        registered_at: new Date(1_000_000).toISOString(),
      });
      expect((await store.register(reg("lab/v4", "t2", "10.0.0.7"))).info.urls.ping).toBe("ws://10.0.0.7:8083/pub/t2");
    });

    test("a second pub_id for a live name is a 409 that names the holder", async () => {
      const { store } = await clocked(kind);
      await store.register(reg("a/b", "one"));
      const err = await rejects(() => store.register(reg("a/b", "two")));
      expect([err.status, err.error]).toEqual([409, "duplicate_name"]);
      expect(err.message).toContain("pub_id one");
    });

    test("a pub_id registered under another name is a 409", async () => {
      const { store } = await clocked(kind);
      await store.register(reg("a/b", "one"));
      const err = await rejects(() => store.register(reg("a/c", "one")));
      expect([err.status, err.error]).toEqual([409, "duplicate_pub_id"]);
    });

    test("the same pub_id and name again replaces the registration (a restarted publisher)", async () => {
      const { store, clock } = await clocked(kind);
      await store.register(reg("a/b", "one"));
      const before = await store.get("one");
      clock.now += 5_000;
      const again = await store.register(reg("a/b", "one", "fd00::9"));
      expect(again.created).toBe(false);
      expect(again.info.host).toBe("fd00::9");
      expect((await store.get("one"))?.generation).not.toBe(before?.generation);
      expect(await listAll(store, "")).toHaveLength(1);
    });

    test("a new pub_id takes over the name of a stale registration", async () => {
      const { store, clock } = await clocked(kind);
      await store.register(reg("a/b", "old"));
      clock.now += 20_000;
      await store.sweep(15_000, 60_000);
      expect((await store.get("old"))?.info.state).toBe("stale");
      expect((await store.register(reg("a/b", "new"))).created).toBe(true);
      expect(await store.get("old")).toBeNull();
    });

    test("refuses more than maxPublishers, but a re-registration still fits", async () => {
      const { store } = await clocked(kind, { maxPublishers: 2 });
      await store.register(reg("a", "p1"));
      await store.register(reg("b", "p2"));
      const err = await rejects(() => store.register(reg("c", "p3")));
      expect([err.status, err.error]).toEqual([503, "full"]);
      expect((await store.register(reg("b", "p2"))).created).toBe(false);
    });
  });

  describe("names are leaves", () => {
    const cases: [string, string[], string, string][] = [
      ["below a publisher", ["a/b"], "a/b/c", "parent_is_publisher"],
      ["deep below a publisher", ["a"], "a/b/c/d", "parent_is_publisher"],
      ["on a directory node", ["a/b/c"], "a/b", "name_is_directory"],
      ["on the root of a tree", ["a/b/c"], "a", "name_is_directory"],
    ];
    for (const [what, existing, name, code] of cases) {
      test(`rejects a name ${what} with 400 ${code}`, async () => {
        const { store } = await clocked(kind);
        for (const [i, n] of existing.entries()) await store.register(reg(n, `e${i}`));
        const err = await rejects(() => store.register(reg(name, "new")));
        expect([err.status, err.error]).toEqual([400, code]);
        expect(err.message).toContain(existing[0] ?? "");
      });
    }

    test("siblings that share a prefix of characters are not parents or children", async () => {
      const { store } = await clocked(kind);
      await store.register(reg("a/b", "p1"));
      await store.register(reg("a/bc", "p2"));
      await store.register(reg("a/b_c", "p3")); // '_' must not act as a LIKE wildcard
      await store.register(reg("a/b-c/d", "p4"));
      expect(await names(store, "")).toEqual(["a/b", "a/b-c/d", "a/b_c", "a/bc"]);
    });
  });

  describe("listing and the tree", () => {
    async function sample() {
      const { store, clock } = await clocked(kind);
      for (const [i, name] of ["lab/temp", "lab/hum/in", "lab/hum/out", "labx", "lab-2/a", "z"].entries()) {
        await store.register(reg(name, `p${i}`));
      }
      return { store, clock };
    }

    test("a prefix matches itself and what lies below it, not names that merely start alike", async () => {
      const { store } = await sample();
      expect(await names(store, "lab")).toEqual(["lab/hum/in", "lab/hum/out", "lab/temp"]);
      expect(await names(store, "lab/hum")).toEqual(["lab/hum/in", "lab/hum/out"]);
      expect(await names(store, "lab/temp")).toEqual(["lab/temp"]);
      expect(await listAll(store, "la")).toEqual([]);
      expect(await listAll(store, "")).toHaveLength(6);
    });

    test("the tree nests directory nodes with publishers as leaves, in segment order", async () => {
      const { store } = await sample();
      const tree = async (prefix: string) => treeOf((await store.page(prefix, 10_000, null)).publishers);
      expect(await tree("lab")).toEqual([
        {
          name: "lab",
          path: "lab",
          children: [
            {
              name: "hum",
              path: "lab/hum",
              children: [
                { name: "in", path: "lab/hum/in", pub_id: "p1", state: "pending" },
                { name: "out", path: "lab/hum/out", pub_id: "p2", state: "pending" },
              ],
            },
            { name: "temp", path: "lab/temp", pub_id: "p0", state: "pending" },
          ],
        },
      ]);
      expect((await tree("")).map((n) => n.name)).toEqual(["lab", "lab-2", "labx", "z"]);
    });

    test("byName finds exactly that name, not a directory or a name that merely starts alike", async () => {
      const { store } = await sample();
      expect((await store.byName("lab/temp"))?.pub_id).toBe("p0");
      expect(await store.byName("lab/hum")).toBeNull();
      expect(await store.byName("lab/tem")).toBeNull();
    });
  });

  describe("liveness", () => {
    test("missing the TTL makes a registration stale; deregister-after later removes it", async () => {
      const { store, clock } = await clocked(kind);
      await store.register(reg("a", "p1"));
      await store.markLive("p1", (await store.get("p1"))?.generation ?? -1);
      clock.now += 14_999;
      expect(await store.sweep(15_000, 60_000)).toEqual({ staled: [], removed: [], expired: [] });
      clock.now += 1;
      const first = await store.sweep(15_000, 60_000);
      expect(first.staled.map((p) => [p.pub_id, p.state])).toEqual([["p1", "stale"]]);
      clock.now += 59_999;
      expect((await store.sweep(15_000, 60_000)).removed).toEqual([]);
      clock.now += 1;
      expect((await store.sweep(15_000, 60_000)).removed.map((p) => p.pub_id)).toEqual(["p1"]);
      expect(await store.get("p1")).toBeNull();
    });

    test("heartbeats restart the clock and bring a stale registration back to what it was", async () => {
      const { store, clock } = await clocked(kind, { pendingExpiryMs: 3_600_000 }); // the pending timer is tested apart
      const { info } = await store.register(reg("a", "p1"));
      await store.register(reg("b", "p2"));
      const gen = (await store.get("p1"))?.generation ?? -1;
      expect((await store.markLive("p1", gen))?.state).toBe("live");
      for (let i = 0; i < 5; i++) {
        clock.now += 10_000;
        await store.heartbeat("p1");
        await store.sweep(15_000, 60_000);
        expect((await store.get("p1"))?.info.state).toBe("live");
      }
      expect((await store.get("p2"))?.info.state).toBe("stale");
      expect((await store.heartbeat("p2"))?.state).toBe("pending"); // never confirmed
      clock.now += 20_000;
      await store.sweep(15_000, 60_000);
      expect((await store.heartbeat("p1"))?.state).toBe("live"); // was confirmed
      expect(await store.heartbeat("nope")).toBeNull();
      expect(info.state).toBe("pending");
    });

    test("markLive and removeIf act only on the registration that was read", async () => {
      const { store } = await clocked(kind);
      await store.register(reg("a", "p1"));
      const old = (await store.get("p1"))?.generation ?? -1;
      await store.register(reg("a", "p1")); // re-registered meanwhile
      expect(await store.markLive("p1", old)).toBeNull();
      expect(await store.removeIf("p1", old)).toBe(false);
      expect((await store.get("p1"))?.info.state).toBe("pending");
      const now = (await store.get("p1"))?.generation ?? -1;
      expect(await store.removeIf("p1", now)).toBe(true);
      expect(await store.markLive("p1", now)).toBeNull();
    });

    test("one confirmation lease per registration at a time; it ends when released or when its time is up", async () => {
      const { store, clock } = await clocked(kind);
      await store.register(reg("a", "p1"));
      const gen = (await store.get("p1"))?.generation ?? -1;
      expect(await store.lease("p1", gen, 5_000)).toBe(true);
      expect(await store.lease("p1", gen, 5_000)).toBe(false);
      await store.release("p1", gen);
      expect(await store.lease("p1", gen, 200)).toBe(true);
      expect(await store.lease("p1", gen, 5_000)).toBe(false);
      // Ends by itself: on the store's clock (SQLite) or Redis's own (the key's PX).
      clock.now += 200;
      await eventually("the lease to end", () => store.lease("p1", gen, 5_000), { timeoutMs: 2_000 });
      expect(await store.lease("p1", gen, 5_000)).toBe(false); // and the new one holds
    });

    test("counts registrations by state", async () => {
      const { store } = await clocked(kind);
      await store.register(reg("a", "p1"));
      await store.register(reg("b", "p2"));
      await store.markLive("p2", (await store.get("p2"))?.generation ?? -1);
      expect(await store.counts()).toEqual({ pending: 1, live: 1, stale: 0 });
    });
  });

  describe("owners", () => {
    const alice = { owner: "t:alice", admin: false, enforce: true };
    const mallory = { owner: "t:mallory", admin: false, enforce: true };
    const admin = { owner: "t:admin", admin: true, enforce: true };

    test("only the owner or the admin may heartbeat, replace, authorize or remove a registration: 403 for another token", async () => {
      const { store } = await clocked(kind, { adminOwner: admin.owner });
      await store.register(reg("a/b", "p1"), alice);
      expect((await store.get("p1"))?.owner).toBe("t:alice");
      expect((await rejects(() => store.heartbeat("p1", mallory))).status).toBe(403);
      expect((await rejects(() => store.register(reg("a/b", "p1", "fd00::bad"), mallory))).status).toBe(403);
      expect((await rejects(() => store.authorize("p1", mallory))).status).toBe(403);
      expect((await rejects(() => store.remove("p1", mallory))).status).toBe(403);
      expect((await store.get("p1"))?.info.host).toBe("fd00::1");
      expect((await store.heartbeat("p1", alice))?.pub_id).toBe("p1");
      expect(await store.authorize("p1", alice)).toBe(true);
      expect(await store.authorize("nope", alice)).toBe(false);
      expect((await store.remove("p1", admin))?.pub_id).toBe("p1");
      expect(await store.remove("p1", admin)).toBeNull();
    });

    test("a stale registration's name goes to its owner under a new pub_id, not to another token", async () => {
      const { store, clock } = await clocked(kind);
      await store.register(reg("a/b", "p1"), alice);
      clock.now += 20_000;
      await store.sweep(15_000, 60_000);
      const err = await rejects(() => store.register(reg("a/b", "thief"), mallory));
      expect([err.status, err.error]).toEqual([409, "duplicate_name"]);
      expect((await store.register(reg("a/b", "p2"), alice)).created).toBe(true);
      expect(await store.get("p1")).toBeNull();
    });
  });

  describe("quotas", () => {
    const writer = (name: string) => ({ owner: `t:${name}`, admin: false, enforce: true });
    const admin = { owner: "t:admin", admin: true, enforce: true };

    test("pending registrations per writer are capped; confirming one makes room", async () => {
      const { store } = await clocked(kind, { quotas: { writerPending: 3 } });
      const w = writer("w");
      for (let i = 0; i < 3; i++) await store.register(reg(`p/${i}`, `p${i}`), w);
      const err = await rejects(() => store.register(reg("p/3", "p3"), w));
      expect([err.status, err.error]).toEqual([429, "quota_exceeded"]);
      expect(err.message).toContain("waiting for confirmation");
      expect((await store.register(reg("q/0", "q0"), writer("other"))).created).toBe(true);
      await store.markLive("p0", (await store.get("p0"))?.generation ?? -1);
      expect((await store.register(reg("p/3", "p3"), w)).created).toBe(true);
    });

    test("registrations per writer and for all non-admin writers are capped; the admin's do not count", async () => {
      const { store } = await clocked(kind, { quotas: { writerPublishers: 2, nonAdminPublishers: 3 }, adminOwner: admin.owner });
      const a = writer("a");
      const b = writer("b");
      await store.register(reg("a/0", "a0"), a);
      await store.register(reg("a/1", "a1"), a);
      const mine = await rejects(() => store.register(reg("a/2", "a2"), a));
      expect([mine.status, mine.error]).toEqual([429, "quota_exceeded"]);
      expect(mine.message).toContain("its limit of 2");
      expect((await store.register(reg("a/1", "a1"), a)).created).toBe(false); // a replacement is not one more
      for (let i = 0; i < 4; i++) await store.register(reg(`adm/${i}`, `adm${i}`), admin);
      await store.register(reg("b/0", "b0"), b);
      const others = await rejects(() => store.register(reg("b/1", "b1"), b));
      expect([others.status, others.error]).toEqual([429, "quota_exceeded"]);
      expect(others.message).toContain("writers other than the admin");
    });

    test("an unconfirmed registration that went stale still counts as pending", async () => {
      const { store, clock } = await clocked(kind, { quotas: { writerPending: 2 }, pendingExpiryMs: 3_600_000 });
      const w = writer("w");
      await store.register(reg("s/0", "s0"), w);
      await store.register(reg("s/1", "s1"), w);
      clock.now += 20_000;
      await store.sweep(15_000, 60_000);
      expect(await store.counts()).toEqual({ pending: 0, live: 0, stale: 2 });
      expect((await rejects(() => store.register(reg("s/2", "s2"), w))).status).toBe(429);
    });
  });

  describe("pages", () => {
    test("a prefix page holds the prefix itself, then what lies below it, and continues after the cursor", async () => {
      const { store } = await clocked(kind);
      // "a-x" and "a.b" sort between "a" and "a/…" without being below "a": never on its pages.
      for (const [i, name] of ["a-x", "a.b", "a/1", "a/2", "a/3", "b"].entries()) await store.register(reg(name, `p${i}`));
      const shown = (page: { publishers: { name: string }[] }) => page.publishers.map((p) => p.name);
      const first = await store.page("a", 2, null);
      expect([shown(first), first.next]).toEqual([["a/1", "a/2"], "a/2"]);
      const second = await store.page("a", 2, first.next);
      expect([shown(second), second.next]).toEqual([["a/3"], null]);
      expect(shown(await store.page("", 3, "a.b"))).toEqual(["a/1", "a/2", "a/3"]);
      expect(await store.page("", 10, "b")).toEqual({ publishers: [], next: null });
    });

    test("a page of exactly the rest says there is no next page", async () => {
      const { store } = await clocked(kind);
      for (let i = 0; i < 4; i++) await store.register(reg(`n/${i}`, `p${i}`));
      expect((await store.page("n", 4, null)).next).toBeNull();
      expect((await store.page("n", 3, null)).next).toBe("n/2");
    });
  });

  describe("the pending timer", () => {
    test("an unconfirmed registration is removed after the pending expiry although it heartbeats; a confirmed one is not", async () => {
      const { store, clock } = await clocked(kind, { pendingExpiryMs: 30_000 });
      await store.register(reg("squat", "p1"));
      await store.register(reg("real", "p2"));
      await store.markLive("p2", (await store.get("p2"))?.generation ?? -1);
      for (let t = 0; t < 29_000; t += 1_000) {
        clock.now += 1_000;
        await store.heartbeat("p1");
        await store.heartbeat("p2");
        expect((await store.sweep(15_000, 60_000)).expired).toEqual([]);
      }
      clock.now += 1_000;
      await store.heartbeat("p1");
      expect((await store.sweep(15_000, 60_000)).expired.map((p) => p.pub_id)).toEqual(["p1"]);
      expect(await store.get("p1")).toBeNull();
      expect((await store.get("p2"))?.info.state).toBe("live");
    });

    test("registering the same pending pub_id again does not restart its pending clock", async () => {
      const { store, clock } = await clocked(kind, { pendingExpiryMs: 30_000 });
      await store.register(reg("squat", "p1"));
      clock.now += 20_000;
      expect((await store.register(reg("squat", "p1"))).created).toBe(false);
      clock.now += 10_000;
      expect((await store.sweep(15_000, 60_000)).expired.map((p) => p.pub_id)).toEqual(["p1"]);
    });
  });
});

describe("sqlite only: a database file", () => {
  test("keeps registrations across a restart, and the downtime does not count against them", async () => {
    const path = join(dir, "restart", "meta.db");
    const first = clockedFile(path);
    await first.store.register(reg("lab/temp", "t1"));
    await first.store.markLive("t1", (await first.store.get("t1"))?.generation ?? -1);
    await first.store.register(reg("lab/hum", "t2"));
    await first.store.close();

    const clock = { now: 1_000_000 + 3_600_000 }; // an hour later
    const second = SqliteStore.open(path, { clock: () => clock.now, pendingExpiryMs: 7_200_000 });
    expect((await listAll(second, "lab")).map((p) => [p.name, p.state])).toEqual([
      ["lab/hum", "pending"],
      ["lab/temp", "live"],
    ]);
    expect(await second.sweep(15_000, 60_000)).toEqual({ staled: [], removed: [], expired: [] });
    await second.close();
  });

  test("is locked to one metaserver at a time", async () => {
    const path = join(dir, "locked.db");
    const first = SqliteStore.open(path);
    let err: unknown;
    try {
      await SqliteStore.open(path).close();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(StoaError);
    expect((err as StoaError).code).toBe("in_use");
    expect((err as StoaError).message).toContain("in use by another process");
    await first.close();
    await SqliteStore.open(path).close(); // free again
  });

  test("a version-1 file is migrated: its registrations kept, unowned until the admin claims them", async () => {
    const path = join(dir, "v1.db");
    // The table exactly as schema 1 wrote it.
    const v1 = new Database(path, { create: true });
    v1.exec(`CREATE TABLE publishers (
      generation INTEGER PRIMARY KEY AUTOINCREMENT, pub_id TEXT NOT NULL UNIQUE, name TEXT NOT NULL UNIQUE,
      host TEXT NOT NULL, port_service INTEGER NOT NULL, port_string INTEGER NOT NULL, port_ping INTEGER NOT NULL,
      state TEXT NOT NULL CHECK (state IN ('pending', 'live', 'stale')), confirmed INTEGER NOT NULL DEFAULT 0,
      registered_at INTEGER NOT NULL, last_seen INTEGER NOT NULL) STRICT;
      CREATE INDEX publishers_last_seen ON publishers (last_seen);
      INSERT INTO publishers (pub_id, name, host, port_service, port_string, port_ping, state, confirmed, registered_at, last_seen)
        VALUES ('old1', 'lab/old', 'fd00::1', 8081, 8082, 8083, 'live', 1, 1000, 1000);
      PRAGMA user_version = 1;`);
    v1.close();

    const { store } = clockedFile(path, { adminOwner: "t:admin" });
    expect((await listAll(store, "")).map((p) => [p.pub_id, p.name, p.state])).toEqual([["old1", "lab/old", "live"]]);
    expect((await store.get("old1"))?.owner).toBe("");
    const alice = { owner: "t:alice", admin: false, enforce: true };
    const admin = { owner: "t:admin", admin: true, enforce: true };
    expect((await rejects(() => store.heartbeat("old1", alice))).status).toBe(403); // a writer cannot take it
    expect((await store.get("old1"))?.owner).toBe("");
    expect((await store.heartbeat("old1", admin))?.state).toBe("live"); // the admin can
    expect((await store.get("old1"))?.owner).toBe("t:admin");
    expect((await rejects(() => store.heartbeat("old1", alice))).status).toBe(403);
    await store.close();
    const check = new Database(path);
    expect(check.query<{ user_version: number }, []>("PRAGMA user_version").get()?.user_version).toBe(SCHEMA_VERSION);
    check.close();
    await SqliteStore.open(path).close(); // and it opens again as the current version
  });

  test("a file from a newer stoa is refused, not misread", () => {
    const path = join(dir, "v99.db");
    const future = new Database(path, { create: true });
    future.exec("PRAGMA user_version = 99");
    future.close();
    expect(() => SqliteStore.open(path)).toThrow(/written by a newer stoa \(schema 99/);
  });

  test("a path that cannot be created is a clear error", () => {
    expect(() => SqliteStore.open("/proc/stoa-no/meta.db")).toThrow(/cannot open the metaserver database/);
  });
});

describe("sqlite only: the database file's mode", () => {
  test("meta.db and its WAL files are readable by the metaserver's user only, whatever the directory allows (regression, found attacking the issue 9 fixes)", async () => {
    const base = mkdtempSync(join(tmpdir(), "stoa-meta-mode-"));
    try {
      chmodSync(base, 0o755);
      const path = join(base, "meta.db");
      const store = SqliteStore.open(path);
      await store.register({ name: "m/x", pub_id: "mx", host: "fd00::1", ports: { service: 8081, string: 8082, ping: 8083 } });
      for (const file of [path, `${path}-wal`, `${path}-shm`]) {
        if (existsSync(file)) expect((statSync(file).mode & 0o777).toString(8)).toBe("600");
      }
      await store.close();
    } finally {
      rmSync(base, { recursive: true, force: true });
    }
  });
});

describe("sqlite only: the write-ahead log", () => {
  test("stays bounded under writes with RETURNING: 20,000 heartbeats leave it at its checkpoint size, not one page set per write (420 MB before the fix)", async () => {
    const file = join(mkdtempSync(join(tmpdir(), "stoa-meta-wal-")), "meta.db");
    const store = SqliteStore.open(file);
    try {
      for (let i = 0; i < 100; i++) await store.register({ name: `wal/p${i}`, pub_id: `p${i}`, host: "fd00::1", ports: { ...DEFAULT_PORTS } });
      for (let i = 0; i < 20_000; i++) await store.heartbeat(`p${i % 100}`);
      // The default autocheckpoint restarts the WAL at 1,000 pages (4 MiB): it never grows past a few times that.
      expect(statSync(`${file}-wal`).size).toBeLessThan(16 * 1024 * 1024);
    } finally {
      await store.close();
      rmSync(dirname(file), { recursive: true, force: true });
    }
  }, 60_000);
});

describe("sqlite only: the row cache", () => {
  test("a read after every kind of write sees that write: each write forgets the rows it touches", async () => {
    const clock = { now: 1_000_000 };
    const store = SqliteStore.open(":memory:", { clock: () => clock.now });
    try {
      await store.register(reg("cache/a", "a"));
      expect((await store.byName("cache/a"))?.state).toBe("pending");
      const first = (await store.get("a"))?.generation ?? -1;
      await store.markLive("a", first);
      expect([(await store.byName("cache/a"))?.state, (await store.get("a"))?.info.state]).toEqual(["live", "live"]);
      clock.now += 20_000;
      await store.sweep(15_000, 60_000);
      expect([(await store.byName("cache/a"))?.state, (await store.get("a"))?.info.state]).toEqual(["stale", "stale"]);
      await store.heartbeat("a");
      expect((await store.byName("cache/a"))?.state).toBe("live");
      await store.register(reg("cache/a", "a", "fd00::9"));
      expect((await store.get("a"))?.generation).not.toBe(first);
      expect((await store.byName("cache/a"))?.host).toBe("fd00::9");
      // A claim (the admin takes over a registration without a token owner) changes its owner.
      expect((await store.get("a"))?.owner).toBe("");
      expect(await store.authorize("a", { owner: "t:admin", admin: true, enforce: true })).toBe(true);
      expect((await store.get("a"))?.owner).toBe("t:admin");
      await store.remove("a");
      expect([await store.byName("cache/a"), await store.get("a")]).toEqual([null, null]);
      // A stale name taken over by another pub_id: the old one is gone from both lookups.
      await store.register(reg("cache/b", "b1"));
      clock.now += 20_000;
      await store.sweep(15_000, 600_000);
      await store.register(reg("cache/b", "b2"));
      expect([(await store.byName("cache/b"))?.pub_id, await store.get("b1")]).toEqual(["b2", null]);
    } finally {
      await store.close();
    }
  });
});

describe("sqlite only: heartbeats committed together", () => {
  test("heartbeats of one turn share a commit, each answered on its own: one refused (403) or missing fails alone", async () => {
    const clock = { now: 1_000_000 };
    const store = SqliteStore.open(":memory:", { clock: () => clock.now });
    const mine = { owner: "t:mine", admin: false, enforce: true };
    const theirs = { owner: "t:theirs", admin: false, enforce: true };
    try {
      await store.register(reg("beat/a", "a"), mine);
      await store.register(reg("beat/b", "b"), mine);
      clock.now += 5_000;
      const outcomes = await Promise.allSettled([store.heartbeat("a", mine), store.heartbeat("b", theirs), store.heartbeat("nobody", mine), store.heartbeat("b", mine)]);
      expect(outcomes.map((o) => o.status)).toEqual(["fulfilled", "rejected", "fulfilled", "fulfilled"]);
      expect(outcomes[1]?.status === "rejected" && (outcomes[1].reason as MetaApiError).status).toBe(403);
      expect(outcomes[2]?.status === "fulfilled" && outcomes[2].value).toBeNull();
      expect([(await store.get("a"))?.lastSeen, (await store.get("b"))?.lastSeen]).toEqual([1_005_000, 1_005_000]);
    } finally {
      await store.close();
    }
  });

  test("close() commits the heartbeats already asked for", async () => {
    const dir = mkdtempSync(join(tmpdir(), "stoa-meta-beats-"));
    const file = join(dir, "meta.db");
    const clock = { now: 1_000_000 };
    try {
      const store = SqliteStore.open(file, { clock: () => clock.now });
      await store.register(reg("beat/c", "c"));
      clock.now += 7_000;
      const beat = store.heartbeat("c");
      await store.close();
      expect((await beat)?.pub_id).toBe("c");
      const again = SqliteStore.open(file, { clock: () => 0 });
      expect((await again.get("c"))?.lastSeen).toBe(1_007_000);
      await again.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
