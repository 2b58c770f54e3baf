/**
 * D5, isolation: in `stoa up` (the compiled binary) the metaserver runs on its own thread, so
 * twenty clients listing 100,000 registrations as fast as they can do not slow down the
 * gateway. Measured: a full round trip through the gateway's ping port to a live `stoa pub` —
 * connect, `STOA1 <pub_id>`, WebSocket upgrade, `ping`, reply — on a fresh connection each time.
 * Before the fix the metaserver shared the gateway's main thread (router 0) and one unpaginated
 * list took seconds, which a ping routed by router 0 waited out (5.3 s in the issue).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { join } from "node:path";
import { SqliteStore } from "../../src/meta/sqlite-store.ts";
import { freePorts, type Proc, requireBinary, Scope } from "../fixtures/e2e-helpers.ts";
import { pingViaPrelude } from "../fixtures/gateway-helpers.ts";

/** With the live publisher, 100,000: the registry's maximum (MAX_PUBLISHERS). */
const REGISTRATIONS = 99_999;
const LISTERS = 20;
const PINGS = 40;
/** The bound for a gateway ping while the metaserver is busy. */
const MAX_PING_MS = 50;

const scope = new Scope();
let ports = { service: 0, string: 0, ping: 0 };
let metaUrl = "";
let pubId = "";
let load: Proc;
let up: Proc;
let stateDir = "";
let runDir = "";

afterAll(async () => {
  await scope.cleanup();
});

/** One ping round trip on a new connection through the gateway's ping port, in ms. */
async function ping(port: number, id: string): Promise<number> {
  const started = performance.now();
  await pingViaPrelude(port, id);
  return performance.now() - started;
}

async function populate(db: string): Promise<void> {
  await SqliteStore.open(db).close(); // the schema
  const sql = new Database(db);
  sql.transaction(() => {
    const insert = sql.query(
      "INSERT INTO publishers (pub_id, name, host, port_service, port_string, port_ping, state, confirmed, registered_at, last_seen, owner) VALUES (?, ?, 'fd00::1', 8081, 8082, 8083, 'live', 1, ?, ?, '')",
    );
    const now = Date.now();
    for (let i = 0; i < REGISTRATIONS; i++) insert.run(`b${i}`, `bulk/${String(i % 997).padStart(3, "0")}/sensor-${i}`, now, now);
  })();
  sql.close();
}

beforeAll(async () => {
  requireBinary();
  runDir = scope.tempDir();
  stateDir = scope.tempDir();
  await populate(join(stateDir, "meta.db"));
  const [s = 0, t = 0, p = 0, m = 0] = freePorts(4);
  ports = { service: s, string: t, ping: p };
  metaUrl = `http://127.0.0.1:${m}`;
  up = scope.stoa("up", [
    "up", "--listen", "127.0.0.1", "--ports", `${s},${t},${p}`, "--meta-listen", `127.0.0.1:${m}`,
    "--state-dir", stateDir, "--run-dir", runDir,
  ]);
  await up.waitFor("out", /^try: .*\n\s+stoa sub .*\n/m, 30_000);
  const pub = scope.stoa("pub", ["pub", "iso/ping", "--meta", metaUrl, "--run-dir", runDir, "--state-dir", stateDir, "--stay"], { stdin: true });
  pubId = (await pub.waitFor("out", /^publishing \S+ as (\S+): /m, 20_000))[1] ?? "";
  pub.write("here\n");
}, 60_000);

describe("the metaserver in stoa up is off the gateway's thread", () => {
  test(
    `a gateway ping stays under ${MAX_PING_MS} ms while ${LISTERS} clients list ${REGISTRATIONS + 1} registrations`,
    async () => {
      const idle: number[] = [];
      for (let i = 0; i < 10; i++) idle.push(await ping(ports.ping, pubId));
      load = scope.spawn("list load", [process.execPath, join(import.meta.dir, "..", "fixtures", "meta-list-load.ts"), metaUrl, String(LISTERS)]);
      // Wait until the load really runs: whole pages of 10,000 coming back.
      await load.waitFor("out", /^pages [1-9]\d*$/m, 20_000);
      const busy: number[] = [];
      for (let i = 0; i < PINGS; i++) {
        busy.push(await ping(ports.ping, pubId));
        await Bun.sleep(25);
      }
      const pages = Number(/pages (\d+)\n$/.exec(load.out)?.[1] ?? "0");
      const sorted = [...busy].sort((a, b) => a - b);
      const shown = (xs: number[]) => xs.map((x) => x.toFixed(1)).join(" ");
      console.error(`pings idle: ${shown(idle)}\npings under load (sorted): ${shown(sorted)}\npages listed meanwhile: ${pages}`);
      expect(pages).toBeGreaterThan(20); // the metaserver was busy the whole time
      expect(sorted.at(-1) ?? Infinity).toBeLessThan(MAX_PING_MS);
    },
    60_000,
  );

  test("a second stoa up on the same state dir fails with the metaserver thread's reason", async () => {
    const [s2 = 0, t2 = 0, p2 = 0, m2 = 0] = freePorts(4);
    const second = scope.stoa("up #2", [
      "up", "--listen", "127.0.0.1", "--ports", `${s2},${t2},${p2}`, "--meta-listen", `127.0.0.1:${m2}`,
      "--state-dir", stateDir, "--run-dir", scope.tempDir(),
    ]);
    const r = await second.output();
    expect(r.code).toBe(1);
    expect(r.err).toContain("is in use by another process");
  }, 30_000);

  test("SIGINT stops stoa up cleanly: the metaserver thread closes the database and nothing is lost", async () => {
    load.proc.kill("SIGKILL");
    await load.exited;
    up.proc.kill("SIGINT");
    expect(await up.exitWithin(15_000)).toBe(0);
    const store = SqliteStore.open(join(stateDir, "meta.db")); // the lock is free again
    try {
      const counts = await store.counts();
      expect(counts.live + counts.stale + counts.pending).toBe(REGISTRATIONS + 1);
      expect((await store.get(pubId))?.info.name).toBe("iso/ping");
    } finally {
      await store.close();
    }
  }, 30_000);
});
