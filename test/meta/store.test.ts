import { afterAll, describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { chmodSync, existsSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { StoaError } from "../../src/core/errors.ts";
import { DEFAULT_PORTS, MetaApiError, type Registration } from "../../src/meta/protocol.ts";
import { MetaStore, SCHEMA_VERSION, type StoreOptions } from "../../src/meta/store.ts";

const dir = mkdtempSync(join(tmpdir(), "stoa-meta-store-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function reg(name: string, pub_id: string, host = "fd00::1"): Registration & { pub_id: string } {
  return { name, pub_id, host, ports: { ...DEFAULT_PORTS } };
}

/** A store on a clock the test moves by hand. */
function clocked(path = ":memory:", options: StoreOptions = {}) {
  const clock = { now: 1_000_000 };
  const store = MetaStore.open(path, { clock: () => clock.now, ...options });
  return { store, clock };
}

function rejects(fn: () => unknown): MetaApiError {
  try {
    fn();
  } catch (err) {
    if (err instanceof MetaApiError) return err;
    throw err;
  }
  throw new Error("expected a MetaApiError");
}

describe("registering", () => {
  test("a new registration is pending, with gateway URLs for its host", () => {
    const { store } = clocked();
    const { info, created } = store.register(reg("lab/temp", "t1"));
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
    expect(store.register(reg("lab/v4", "t2", "10.0.0.7")).info.urls.ping).toBe("ws://10.0.0.7:8083/pub/t2");
    store.close();
  });

  test("a second pub_id for a live name is a 409 that names the holder", () => {
    const { store } = clocked();
    store.register(reg("a/b", "one"));
    const err = rejects(() => store.register(reg("a/b", "two")));
    expect([err.status, err.error]).toEqual([409, "duplicate_name"]);
    expect(err.message).toContain("pub_id one");
    store.close();
  });

  test("a pub_id registered under another name is a 409", () => {
    const { store } = clocked();
    store.register(reg("a/b", "one"));
    const err = rejects(() => store.register(reg("a/c", "one")));
    expect([err.status, err.error]).toEqual([409, "duplicate_pub_id"]);
    store.close();
  });

  test("the same pub_id and name again replaces the registration (a restarted publisher)", () => {
    const { store, clock } = clocked();
    store.register(reg("a/b", "one"));
    const before = store.get("one");
    clock.now += 5_000;
    const again = store.register(reg("a/b", "one", "fd00::9"));
    expect(again.created).toBe(false);
    expect(again.info.host).toBe("fd00::9");
    expect(store.get("one")?.generation).not.toBe(before?.generation);
    expect(store.list("")).toHaveLength(1);
    store.close();
  });

  test("a new pub_id takes over the name of a stale registration", () => {
    const { store, clock } = clocked();
    store.register(reg("a/b", "old"));
    clock.now += 20_000;
    store.sweep(15_000, 60_000);
    expect(store.get("old")?.info.state).toBe("stale");
    expect(store.register(reg("a/b", "new")).created).toBe(true);
    expect(store.get("old")).toBeNull();
    store.close();
  });

  test("refuses more than maxPublishers, but a re-registration still fits", () => {
    const { store } = clocked(":memory:", { maxPublishers: 2 });
    store.register(reg("a", "p1"));
    store.register(reg("b", "p2"));
    const err = rejects(() => store.register(reg("c", "p3")));
    expect([err.status, err.error]).toEqual([503, "full"]);
    expect(store.register(reg("b", "p2")).created).toBe(false);
    store.close();
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
    test(`rejects a name ${what} with 400 ${code}`, () => {
      const { store } = clocked();
      existing.forEach((n, i) => store.register(reg(n, `e${i}`)));
      const err = rejects(() => store.register(reg(name, "new")));
      expect([err.status, err.error]).toEqual([400, code]);
      expect(err.message).toContain(existing[0] ?? "");
      store.close();
    });
  }

  test("siblings that share a prefix of characters are not parents or children", () => {
    const { store } = clocked();
    store.register(reg("a/b", "p1"));
    store.register(reg("a/bc", "p2"));
    store.register(reg("a/b_c", "p3")); // '_' must not act as a LIKE wildcard
    store.register(reg("a/b-c/d", "p4"));
    expect(store.list("").map((p) => p.name)).toEqual(["a/b", "a/b-c/d", "a/b_c", "a/bc"]);
    store.close();
  });
});

describe("listing and the tree", () => {
  function sample() {
    const { store, clock } = clocked();
    for (const [i, name] of ["lab/temp", "lab/hum/in", "lab/hum/out", "labx", "lab-2/a", "z"].entries()) {
      store.register(reg(name, `p${i}`));
    }
    return { store, clock };
  }

  test("a prefix matches itself and what lies below it, not names that merely start alike", () => {
    const { store } = sample();
    expect(store.list("lab").map((p) => p.name)).toEqual(["lab/hum/in", "lab/hum/out", "lab/temp"]);
    expect(store.list("lab/hum").map((p) => p.name)).toEqual(["lab/hum/in", "lab/hum/out"]);
    expect(store.list("lab/temp").map((p) => p.name)).toEqual(["lab/temp"]);
    expect(store.list("la")).toEqual([]);
    expect(store.list("")).toHaveLength(6);
    store.close();
  });

  test("the tree nests directory nodes with publishers as leaves, in segment order", () => {
    const { store } = sample();
    expect(store.tree("lab").tree).toEqual([
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
    expect(store.tree("").tree.map((n) => n.name)).toEqual(["lab", "lab-2", "labx", "z"]);
    store.close();
  });
});

describe("liveness", () => {
  test("missing the TTL makes a registration stale; deregister-after later removes it", () => {
    const { store, clock } = clocked();
    store.register(reg("a", "p1"));
    store.markLive("p1", store.get("p1")?.generation ?? -1);
    clock.now += 14_999;
    expect(store.sweep(15_000, 60_000)).toEqual({ staled: [], removed: [], expired: [] });
    clock.now += 1;
    const first = store.sweep(15_000, 60_000);
    expect(first.staled.map((p) => [p.pub_id, p.state])).toEqual([["p1", "stale"]]);
    clock.now += 59_999;
    expect(store.sweep(15_000, 60_000).removed).toEqual([]);
    clock.now += 1;
    expect(store.sweep(15_000, 60_000).removed.map((p) => p.pub_id)).toEqual(["p1"]);
    expect(store.get("p1")).toBeNull();
    store.close();
  });

  test("heartbeats restart the clock and bring a stale registration back to what it was", () => {
    const { store, clock } = clocked(":memory:", { pendingExpiryMs: 3_600_000 }); // the pending timer is tested apart
    const { info } = store.register(reg("a", "p1"));
    store.register(reg("b", "p2"));
    const gen = store.get("p1")?.generation ?? -1;
    expect(store.markLive("p1", gen)?.state).toBe("live");
    for (let i = 0; i < 5; i++) {
      clock.now += 10_000;
      store.heartbeat("p1");
      store.sweep(15_000, 60_000);
      expect(store.get("p1")?.info.state).toBe("live");
    }
    expect(store.get("p2")?.info.state).toBe("stale");
    expect(store.heartbeat("p2")?.state).toBe("pending"); // never confirmed
    clock.now += 20_000;
    store.sweep(15_000, 60_000);
    expect(store.heartbeat("p1")?.state).toBe("live"); // was confirmed
    expect(store.heartbeat("nope")).toBeNull();
    expect(info.state).toBe("pending");
    store.close();
  });

  test("markLive and removeIf act only on the registration that was read", () => {
    const { store } = clocked();
    store.register(reg("a", "p1"));
    const old = store.get("p1")?.generation ?? -1;
    store.register(reg("a", "p1")); // re-registered meanwhile
    expect(store.markLive("p1", old)).toBeNull();
    expect(store.removeIf("p1", old)).toBe(false);
    expect(store.get("p1")?.info.state).toBe("pending");
    const now = store.get("p1")?.generation ?? -1;
    expect(store.removeIf("p1", now)).toBe(true);
    expect(store.markLive("p1", now)).toBeNull();
    store.close();
  });

  test("counts registrations by state", () => {
    const { store } = clocked();
    store.register(reg("a", "p1"));
    store.register(reg("b", "p2"));
    store.markLive("p2", store.get("p2")?.generation ?? -1);
    expect(store.counts()).toEqual({ pending: 1, live: 1, stale: 0 });
    store.close();
  });
});

describe("a database file", () => {
  test("keeps registrations across a restart, and the downtime does not count against them", () => {
    const path = join(dir, "restart", "meta.db");
    const first = clocked(path);
    first.store.register(reg("lab/temp", "t1"));
    first.store.markLive("t1", first.store.get("t1")?.generation ?? -1);
    first.store.register(reg("lab/hum", "t2"));
    first.store.close();

    const clock = { now: 1_000_000 + 3_600_000 }; // an hour later
    const second = MetaStore.open(path, { clock: () => clock.now, pendingExpiryMs: 7_200_000 });
    expect(second.list("lab").map((p) => [p.name, p.state])).toEqual([
      ["lab/hum", "pending"],
      ["lab/temp", "live"],
    ]);
    expect(second.sweep(15_000, 60_000)).toEqual({ staled: [], removed: [], expired: [] });
    second.close();
  });

  test("is locked to one metaserver at a time", () => {
    const path = join(dir, "locked.db");
    const first = MetaStore.open(path);
    let err: unknown;
    try {
      MetaStore.open(path).close();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(StoaError);
    expect((err as StoaError).code).toBe("in_use");
    expect((err as StoaError).message).toContain("in use by another process");
    first.close();
    MetaStore.open(path).close(); // free again
  });

  test("a version-1 file is migrated: its registrations kept, unowned until the admin claims them", () => {
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

    const { store } = clocked(path, { adminOwner: "t:admin" });
    expect(store.list("").map((p) => [p.pub_id, p.name, p.state])).toEqual([["old1", "lab/old", "live"]]);
    expect(store.get("old1")?.owner).toBe("");
    const alice = { owner: "t:alice", admin: false, enforce: true };
    const admin = { owner: "t:admin", admin: true, enforce: true };
    expect(rejects(() => store.heartbeat("old1", alice)).status).toBe(403); // a writer cannot take it
    expect(store.get("old1")?.owner).toBe("");
    expect(store.heartbeat("old1", admin)?.state).toBe("live"); // the admin can
    expect(store.get("old1")?.owner).toBe("t:admin");
    expect(rejects(() => store.heartbeat("old1", alice)).status).toBe(403);
    store.close();
    const check = new Database(path);
    expect(check.query<{ user_version: number }, []>("PRAGMA user_version").get()?.user_version).toBe(SCHEMA_VERSION);
    check.close();
    MetaStore.open(path).close(); // and it opens again as the current version
  });

  test("a file from a newer stoa is refused, not misread", () => {
    const path = join(dir, "v99.db");
    const future = new Database(path, { create: true });
    future.exec("PRAGMA user_version = 99");
    future.close();
    expect(() => MetaStore.open(path)).toThrow(/written by a newer stoa \(schema 99/);
  });

  test("a path that cannot be created is a clear error", () => {
    expect(() => MetaStore.open("/proc/stoa-no/meta.db")).toThrow(/cannot open the metaserver database/);
  });
});

describe("pages", () => {
  test("a prefix page holds the prefix itself, then what lies below it, and continues after the cursor", () => {
    const { store } = clocked();
    // "a-x" and "a.b" sort between "a" and "a/…" without being below "a": never on its pages.
    for (const [i, name] of ["a-x", "a.b", "a/1", "a/2", "a/3", "b"].entries()) store.register(reg(name, `p${i}`));
    const names = (page: { publishers: { name: string }[] }) => page.publishers.map((p) => p.name);
    const first = store.page("a", 2, null);
    expect([names(first), first.next]).toEqual([["a/1", "a/2"], "a/2"]);
    const second = store.page("a", 2, first.next);
    expect([names(second), second.next]).toEqual([["a/3"], null]);
    expect(names(store.page("", 3, "a.b"))).toEqual(["a/1", "a/2", "a/3"]);
    expect(store.page("", 10, "b")).toEqual({ publishers: [], next: null });
    store.close();
  });

  test("a page of exactly the rest says there is no next page", () => {
    const { store } = clocked();
    for (let i = 0; i < 4; i++) store.register(reg(`n/${i}`, `p${i}`));
    expect(store.page("n", 4, null).next).toBeNull();
    expect(store.page("n", 3, null).next).toBe("n/2");
    store.close();
  });
});

describe("the pending timer", () => {
  test("an unconfirmed registration is removed after the pending expiry although it heartbeats; a confirmed one is not", () => {
    const { store, clock } = clocked(":memory:", { pendingExpiryMs: 30_000 });
    store.register(reg("squat", "p1"));
    store.register(reg("real", "p2"));
    store.markLive("p2", store.get("p2")?.generation ?? -1);
    for (let t = 0; t < 29_000; t += 1_000) {
      clock.now += 1_000;
      store.heartbeat("p1");
      store.heartbeat("p2");
      expect(store.sweep(15_000, 60_000).expired).toEqual([]);
    }
    clock.now += 1_000;
    store.heartbeat("p1");
    expect(store.sweep(15_000, 60_000).expired.map((p) => p.pub_id)).toEqual(["p1"]);
    expect(store.get("p1")).toBeNull();
    expect(store.get("p2")?.info.state).toBe("live");
    store.close();
  });
});

describe("the database file's mode", () => {
  test("meta.db and its WAL files are readable by the metaserver's user only, whatever the directory allows (regression, found attacking the issue 9 fixes)", () => {
    const base = mkdtempSync(join(tmpdir(), "stoa-meta-mode-"));
    try {
      chmodSync(base, 0o755);
      const path = join(base, "meta.db");
      const store = MetaStore.open(path);
      store.register({ name: "m/x", pub_id: "mx", host: "fd00::1", ports: { service: 8081, string: 8082, ping: 8083 } });
      for (const file of [path, `${path}-wal`, `${path}-shm`]) {
        if (existsSync(file)) expect((statSync(file).mode & 0o777).toString(8)).toBe("600");
      }
      store.close();
    } finally {
      rmSync(base, { recursive: true, force: true });
    }
  });
});
