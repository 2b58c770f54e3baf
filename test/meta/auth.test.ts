import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { StoaError } from "../../src/core/errors.ts";
import { newToken, tokenDigest } from "../../src/core/token.ts";
import { Authority, loadAuth, MAX_WRITER_TOKENS } from "../../src/meta/auth.ts";
import { clientToken } from "../../src/meta/client.ts";

const dir = mkdtempSync(join(tmpdir(), "stoa-meta-auth-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const hex = (t: string) => tokenDigest(t).toString("hex");
let n = 0;
const fresh = () => join(dir, `case-${n++}`);

function tokenFile(token = newToken("stm_")): { file: string; token: string } {
  const file = join(dir, `t-${n++}.token`);
  writeFileSync(file, `${token}\n`, { mode: 0o600 });
  return { file, token };
}

describe("where the admin token comes from", () => {
  test("with nothing given it is created in the state dir, 0600, and reused on the next start", () => {
    const stateDir = fresh();
    const first = loadAuth({ stateDir, env: {} });
    expect([first.where, first.created]).toEqual([join(stateDir, "meta.token"), true]);
    expect(statSync(join(stateDir, "meta.token")).mode & 0o777).toBe(0o600);
    const token = readFileSync(join(stateDir, "meta.token"), "utf8").trim();
    expect(first.config.admin).toBe(hex(token));
    expect(JSON.stringify(first.config)).not.toContain(token); // only digests travel
    const second = loadAuth({ stateDir, env: {} });
    expect([second.config.admin, second.created]).toEqual([first.config.admin, false]);
  });

  test("--token-file wins over STOA_META_TOKEN, which wins over the state dir", () => {
    const stateDir = fresh();
    const { file, token } = tokenFile();
    const env = { STOA_META_TOKEN: newToken("stm_") };
    expect(loadAuth({ stateDir, tokenFile: file, env }).config.admin).toBe(hex(token));
    const fromEnv = loadAuth({ stateDir, env });
    expect([fromEnv.config.admin, fromEnv.where]).toEqual([hex(env.STOA_META_TOKEN), "$STOA_META_TOKEN"]);
    expect(() => statSync(join(stateDir, "meta.token"))).toThrow(); // nothing created
  });

  test("a weak token is refused; --no-auth cannot go with token files", () => {
    expect(() => loadAuth({ stateDir: fresh(), env: { STOA_META_TOKEN: "secret" } })).toThrow(/not usable: a token is at least 22/);
    const err = (() => {
      try {
        loadAuth({ stateDir: fresh(), noAuth: true, tokenFile: "x" });
      } catch (e) {
        return e as StoaError;
      }
    })();
    expect(err?.code).toBe("usage");
    expect(loadAuth({ stateDir: fresh(), noAuth: true }).config.required).toBe(false);
  });

  test("a tokens file holds SHA-256 lines with labels and comments; anything else is named by line", () => {
    const writer = newToken("stm_");
    const file = join(dir, "writers.txt");
    writeFileSync(file, `# writers\n\nsha256:${hex(writer)} host-a\nsha256:${hex(newToken("stm_"))}\n`);
    const { config } = loadAuth({ stateDir: fresh(), tokensFile: file, env: {} });
    expect(config.writers).toEqual([hex(writer), expect.any(String)]);
    writeFileSync(file, `sha256:${hex(writer)}\nplain-token-here\n`);
    expect(() => loadAuth({ stateDir: fresh(), tokensFile: file, env: {} })).toThrow(/line 2: expected "sha256:/);
    writeFileSync(file, Array.from({ length: MAX_WRITER_TOKENS + 1 }, () => `sha256:${hex(newToken("w"))}`).join("\n"));
    expect(() => loadAuth({ stateDir: fresh(), tokensFile: file, env: {} })).toThrow(/over the limit/);
  });
});

describe("callers", () => {
  const admin = newToken("stm_");
  const writer = newToken("stm_");
  const reader = newToken("stm_");
  const auth = new Authority({ required: true, admin: hex(admin), writers: [hex(writer)], read: hex(reader) });

  test("the admin, a writer and a reader are told apart; owners are token digests", () => {
    expect(auth.caller(`Bearer ${admin}`, "::1")).toEqual({ kind: "writer", writer: { owner: `t:${hex(admin)}`, admin: true, enforce: true } });
    expect(auth.caller(`Bearer ${writer}`, "::1")).toEqual({ kind: "writer", writer: { owner: `t:${hex(writer)}`, admin: false, enforce: true } });
    expect(auth.caller(`Bearer ${reader}`, "::1")).toEqual({ kind: "reader" });
    expect(auth.adminOwner).toBe(`t:${hex(admin)}`);
  });

  test("no header, a garbled one and an unknown token are each a refusal", () => {
    expect(auth.caller(undefined, "::1")).toEqual({ kind: "none", why: "missing" });
    expect(auth.caller("Bearer short", "::1")).toEqual({ kind: "none", why: "garbled" });
    expect(auth.caller(`Bearer ${newToken("stm_")}`, "::1")).toEqual({ kind: "none", why: "unknown" });
  });

  test("without auth every caller writes, counted by address", () => {
    const open = new Authority({ required: false, admin: "", writers: [], read: null });
    expect(open.caller(undefined, "10.0.0.1")).toEqual({ kind: "writer", writer: { owner: "a:10.0.0.1", admin: false, enforce: false } });
  });
});

describe("the client's token", () => {
  test("--token-file, then STOA_META_TOKEN, then the state dir's meta.token — the last only for a metaserver on this host", () => {
    const stateDir = fresh();
    const local = loadAuth({ stateDir, env: {} }); // creates meta.token
    const token = readFileSync(join(stateDir, "meta.token"), "utf8").trim();
    expect(local.created).toBe(true);
    const { file, token: fromFile } = tokenFile();
    expect(clientToken({ metaUrl: "http://[fd00::99]:8090", tokenFile: file, stateDir, env: {} })).toBe(fromFile);
    expect(clientToken({ metaUrl: "http://[fd00::99]:8090", stateDir, env: { STOA_META_TOKEN: "from-env-aaaaaaaaaaaaaaaaa" } })).toBe("from-env-aaaaaaaaaaaaaaaaa");
    const mine = () => [process.getuid?.() ?? 0];
    for (const url of ["http://[::1]:8090", "http://127.0.0.1:8090", "localhost:8090"]) {
      const found = clientToken({ metaUrl: url, stateDir, env: {}, listeners: mine });
      expect(typeof found === "function" ? found() : found).toBe(token);
    }
    // Never sent to another machine by accident.
    expect(clientToken({ metaUrl: "http://[fd00::99]:8090", stateDir, env: {} })).toBeUndefined();
    expect(clientToken({ metaUrl: "http://meta.example.org:8090", stateDir, env: {} })).toBeUndefined();
    expect(clientToken({ metaUrl: "http://[::1]:8090", stateDir: fresh(), env: {} })).toBeUndefined();
  });
});

describe("the local token goes only to a listener of its owner (a shared host; regression, found attacking the issue 9 D1 fix: another user could hold [::1]:8090)", () => {
  test("another user's listener on the metaserver's port, or none, gets no token; the owner's gets it", () => {
    const stateDir = fresh();
    loadAuth({ stateDir, env: {} });
    const token = readFileSync(join(stateDir, "meta.token"), "utf8").trim();
    const me = process.getuid?.() ?? 0;
    const ask = (uids: number[] | null) => {
      const found = clientToken({ metaUrl: "http://[::1]:8090", stateDir, env: {}, listeners: () => uids });
      return typeof found === "function" ? found() : found;
    };
    expect(ask([me])).toBe(token);
    expect(ask([me, me])).toBe(token);
    expect(ask([me + 1000])).toBeUndefined(); // someone else holds [::1]:8090
    expect(ask([me, me + 1000])).toBeUndefined(); // ours on [::], theirs on [::1]
    expect(ask(null)).toBeUndefined(); // cannot tell
  });

  test("decided before each request from the real listener table: nothing listening, then ours", async () => {
    const stateDir = fresh();
    loadAuth({ stateDir, env: {} });
    const token = readFileSync(join(stateDir, "meta.token"), "utf8").trim();
    const probe = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response() });
    const port = probe.port ?? 0;
    await probe.stop(true);
    const found = clientToken({ metaUrl: `http://127.0.0.1:${port}`, stateDir, env: {} });
    expect(typeof found).toBe("function");
    const ask = () => (typeof found === "function" ? found() : found);
    expect(ask()).toBeUndefined();
    const server = Bun.serve({ hostname: "127.0.0.1", port, fetch: () => new Response() });
    try {
      expect(ask()).toBe(token);
    } finally {
      await server.stop(true);
    }
  });

  test("a listener owned by another uid (a child that dropped to nobody) gets no token", async () => {
    if (process.getuid?.() !== 0) {
      console.log("skipped: needs root to start a listener as another user");
      return;
    }
    const stateDir = fresh();
    loadAuth({ stateDir, env: {} });
    const probe = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response() });
    const port = probe.port ?? 0;
    await probe.stop(true);
    // perl is in every Debian (perl-base); the listener belongs to nobody (65534).
    const listen = `use IO::Socket::INET; my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => ${port}, Listen => 5, ReuseAddr => 1) or die $!; $| = 1; print "up\\n"; sleep 30;`;
    const child = Bun.spawn(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "perl", "-e", listen], { stdout: "pipe" });
    try {
      const reader = child.stdout.getReader();
      expect(new TextDecoder().decode((await reader.read()).value)).toContain("up");
      const found = clientToken({ metaUrl: `http://127.0.0.1:${port}`, stateDir, env: {} });
      expect(typeof found === "function" ? found() : found).toBeUndefined();
    } finally {
      child.kill();
      await child.exited;
    }
  });
});
