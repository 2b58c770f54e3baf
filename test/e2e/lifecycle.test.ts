/**
 * How the binaries start, stop and fail, seen from outside: exit codes, messages, and what they
 * leave in the run dir and the metaserver. Real `stoa gateway`, `stoa meta`, `stoa up`,
 * `stoa pub` and `stoa sub` processes on loopback and free ports.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { publisherDir, publisherSocketPath } from "../../src/core/paths.ts";
import { freePorts, type Proc, requireBinary, Scope, socketFiles } from "../fixtures/e2e-helpers.ts";
import { eventually } from "../helpers/eventually.ts";

const scope = new Scope();
let runDir = "";
let stateDir = "";
let meta = "";
let ports = { service: 0, string: 0, ping: 0 };

beforeAll(async () => {
  requireBinary();
  runDir = scope.tempDir();
  stateDir = scope.tempDir();
  const [s = 0, t = 0, p = 0, m = 0] = freePorts(4);
  ports = { service: s, string: t, ping: p };
  meta = `http://127.0.0.1:${m}`;
  const gw = scope.stoa("gateway", ["gateway", "--listen", "127.0.0.1", "--ports", `${s},${t},${p}`, "--run-dir", runDir, "--workers", "1"]);
  // The metaserver keeps its token in stateDir; every stoa pub here finds it there.
  const ms = scope.stoa("meta", ["meta", "--listen", `127.0.0.1:${m}`, "--db", ":memory:", "--state-dir", stateDir]);
  await Promise.all([gw.waitFor("out", /^gateway: /m, 15_000), ms.waitFor("out", /^metaserver: /m, 15_000)]);
});

afterAll(async () => {
  await scope.cleanup();
});

function pubArgs(name: string, metaUrl = meta, dir = runDir, state = stateDir): string[] {
  return ["pub", name, "--meta", metaUrl, "--run-dir", dir, "--state-dir", state];
}

async function pubIdOf(pub: Proc): Promise<string> {
  return (await pub.waitFor("out", /^publishing \S+ as (\S+): /m, 15_000))[1] ?? "";
}

async function registration(metaUrl: string, pubId: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`${metaUrl}/v1/publishers/${pubId}`);
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

/** Every line that is not a log line (the logger's lines start with an RFC 3339 time). */
function messageLines(stderr: string): string[] {
  return stderr.split("\n").filter((l) => l !== "" && !/^\d{4}-\d\d-\d\dT/.test(l));
}

describe("stoa pub leaves nothing behind", () => {
  test(
    "at the end of stdin it publishes, deregisters, removes its socket dir and exits 0",
    async () => {
      const pub = scope.stoa("pub", pubArgs("life/once"), { stdin: true });
      const pubId = await pubIdOf(pub);
      expect(existsSync(publisherSocketPath(runDir, pubId, "service"))).toBe(true);
      expect((await registration(meta, pubId)).status).toBe(200);
      pub.write("a\nb\nc\n");
      pub.endStdin();
      expect(await pub.exitWithin(10_000)).toBe(0);
      expect(existsSync(publisherDir(runDir, pubId))).toBe(false);
      expect((await registration(meta, pubId)).status).toBe(404);
      expect(socketFiles(runDir)).toEqual(["gateway.sock"]);
    },
    30_000,
  );

  test(
    "with --stay it serves until SIGTERM, then deregisters, removes its socket dir and exits 0",
    async () => {
      const pub = scope.stoa("pub --stay", [...pubArgs("life/stay"), "--stay"], { stdin: true });
      const pubId = await pubIdOf(pub);
      pub.write("kept\n");
      pub.endStdin();
      await eventually("the latest value", async () => {
        const r = await scope.stoa("sub --latest", ["sub", "life/stay", "--meta", meta, "--latest"]).output();
        return r.out === "kept\n" ? true : undefined;
      });
      expect(pub.running).toBe(true);
      pub.proc.kill("SIGTERM");
      expect(await pub.exitWithin(10_000)).toBe(0);
      expect(existsSync(publisherDir(runDir, pubId))).toBe(false);
      expect((await registration(meta, pubId)).status).toBe(404);
    },
    30_000,
  );
});

describe("failing clearly", () => {
  test(
    "stoa pub with no gateway on its run dir exits 1 and says to start one",
    async () => {
      const empty = scope.tempDir();
      const pub = scope.stoa("pub (no gateway)", [...pubArgs("life/orphan", meta, empty), "--wait", "1s"], { stdin: true });
      pub.write("x\n");
      pub.endStdin();
      const r = await pub.output();
      expect(r.code).toBe(1);
      const lines = messageLines(r.err);
      expect(lines).toHaveLength(1);
      expect(lines[0]).toContain(`no gateway serves ${empty}`);
      expect(lines[0]).toContain(`stoa gateway --run-dir ${empty}`);
      expect(readdirSync(empty)).toEqual([]);
      // Nothing unreachable was registered.
      const listed = (await (await fetch(`${meta}/v1/publishers?prefix=life/orphan`)).json()) as { publishers: unknown[] };
      expect(listed.publishers).toEqual([]);
    },
    30_000,
  );

  test(
    "stoa pub without the metaserver's token exits 1 saying where to get one, and leaves nothing behind",
    async () => {
      const pub = scope.stoa("pub (no token)", pubArgs("life/tokenless", meta, runDir, scope.tempDir()), { stdin: true });
      pub.write("x\n");
      pub.endStdin();
      const r = await pub.output();
      expect(r.code).toBe(1);
      const lines = messageLines(r.err);
      expect(lines).toHaveLength(1);
      expect(lines[0]).toContain("need a token");
      expect(lines[0]).toContain("--token-file");
      const listed = (await (await fetch(`${meta}/v1/publishers?prefix=life/tokenless`)).json()) as { publishers: unknown[] };
      expect(listed.publishers).toEqual([]);
    },
    30_000,
  );

  test(
    "stoa sub of a name nobody publishes exits non-zero with one line naming it",
    async () => {
      const r = await scope.stoa("sub (unknown)", ["sub", "life/nobody", "--meta", meta, "--wait", "1s"]).output();
      expect(r.code).not.toBe(0);
      expect(r.out).toBe("");
      const lines = messageLines(r.err);
      expect(lines).toHaveLength(1);
      expect(lines[0]).toContain("life/nobody");
      expect(lines[0]).toContain(meta);
    },
    30_000,
  );

  test(
    "stoa sub with no metaserver at the URL exits non-zero with one line naming the URL",
    async () => {
      const [dead = 0] = freePorts(1);
      const r = await scope.stoa("sub (no meta)", ["sub", "life/x", "--meta", `http://127.0.0.1:${dead}`, "--wait", "1s"]).output();
      expect(r.code).not.toBe(0);
      const lines = messageLines(r.err);
      expect(lines).toHaveLength(1);
      expect(lines[0]).toContain(`127.0.0.1:${dead}`);
    },
    30_000,
  );
});

describe("stopping and restarting services", () => {
  test(
    "SIGTERM to stoa up exits 0, removes its control socket and frees its ports",
    async () => {
      const dir = scope.tempDir();
      const state = scope.tempDir();
      const [s = 0, t = 0, p = 0, m = 0] = freePorts(4);
      const up = scope.stoa("up", ["up", "--listen", "127.0.0.1", "--ports", `${s},${t},${p}`, "--meta-listen", `127.0.0.1:${m}`, "--state-dir", state, "--run-dir", dir]);
      await up.waitFor("out", /^try: /m, 15_000);
      expect(socketFiles(dir)).toEqual(["gateway.sock"]);
      // A publisher came and went through it.
      const pub = scope.stoa("pub", pubArgs("life/up", `http://127.0.0.1:${m}`, dir, state), { stdin: true });
      await pubIdOf(pub);
      pub.write("1\n2\n");
      pub.endStdin();
      expect(await pub.exitWithin(10_000)).toBe(0);

      up.proc.kill("SIGTERM");
      expect(await up.exitWithin(15_000)).toBe(0);
      expect(up.err).toContain("shutdown complete");
      expect(socketFiles(dir)).toEqual([]);
      expect(existsSync(join(dir, "gateway.sock"))).toBe(false);
      expect(existsSync(join(state, "meta.db"))).toBe(true);
      for (const port of [s, t, p, m]) {
        const l = Bun.listen({ hostname: "127.0.0.1", port, socket: { data() {} } });
        l.stop(true);
      }
    },
    30_000,
  );

  test(
    "stoa meta stopped with SIGTERM and started again on the same --db keeps a live registration as it was",
    async () => {
      const state = scope.tempDir();
      const db = join(state, "meta.db");
      const [m = 0] = freePorts(1);
      const url = `http://127.0.0.1:${m}`;
      // A 1 s TTL: the publisher heartbeats every ~333 ms, so the registration has to survive
      // heartbeats failing during the restart; a re-registration would show as a new registered_at.
      const args = ["meta", "--listen", `127.0.0.1:${m}`, "--db", db, "--state-dir", stateDir, "--ttl", "1s", "--deregister-after", "30s"];
      const first = scope.stoa("meta #1", args);
      await first.waitFor("out", /^metaserver: /m, 15_000);
      const pub = scope.stoa("pub", [...pubArgs("life/kept", url), "--stay"], { stdin: true });
      const pubId = await pubIdOf(pub);
      pub.write("before the restart\n");
      const before = await registration(url, pubId);
      expect(before.status).toBe(200);
      expect(before.body.state).toBe("live");

      first.proc.kill("SIGTERM");
      expect(await first.exitWithin(10_000)).toBe(0);
      const second = scope.stoa("meta #2", args);
      await second.waitFor("out", /^metaserver: /m, 15_000);

      const after = await registration(url, pubId);
      expect(after.status).toBe(200);
      expect(after.body).toEqual(before.body);
      // Past the TTL the publisher's heartbeats keep it live, and it was never registered anew.
      await Bun.sleep(1_500);
      const later = await registration(url, pubId);
      expect(later.body).toEqual(before.body);
      expect(pub.err).not.toContain("registering again");
      const r = await scope.stoa("sub --latest", ["sub", "life/kept", "--meta", url, "--latest"]).output();
      expect(r.out).toBe("before the restart\n");
    },
    30_000,
  );

  test(
    "stoa sub keeps its subscription across a publisher restart with the same pub_id",
    async () => {
      const first = scope.stoa("pub #1", [...pubArgs("life/restart"), "--stay"], { stdin: true });
      const pubId = await pubIdOf(first);
      const sub = scope.stoa("sub", ["sub", "life/restart", "--meta", meta, "--json", "--count", "4", "-v"]);
      await sub.waitFor("err", /INFO +sub: subscribed/, 15_000);
      first.write("one\ntwo\n");
      await eventually("two values", () => sub.out.split("\n").length >= 3, { timeoutMs: 10_000 });
      first.proc.kill("SIGTERM");
      expect(await first.exitWithin(10_000)).toBe(0);

      const second = scope.stoa("pub #2", [...pubArgs("life/restart"), "--stay", "--pub-id", pubId], { stdin: true });
      await pubIdOf(second);
      // The subscriber reconnects with backoff; values published before it is back are
      // reported as a gap, so wait for the reconnection before publishing.
      await sub.waitFor("err", /(INFO +sub: subscribed[^]*){2}/, 15_000);
      second.write("three\nfour\n");
      expect(await sub.exitWithin(15_000)).toBe(0);
      const values = sub.out
        .split("\n")
        .filter(Boolean)
        .map((l) => (JSON.parse(l) as { seq: number; value: string }));
      expect(values).toEqual([
        expect.objectContaining({ seq: 1, value: "one" }),
        expect.objectContaining({ seq: 2, value: "two" }),
        expect.objectContaining({ seq: 1, value: "three" }),
        expect.objectContaining({ seq: 2, value: "four" }),
      ]);
    },
    30_000,
  );
});
