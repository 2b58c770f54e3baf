import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { StoaError } from "../../src/core/errors.ts";
import { bearerToken, ensureTokenFile, newToken, readTokenFile, sameDigest, tokenDigest, tokenProblem } from "../../src/core/token.ts";

const dir = mkdtempSync(join(tmpdir(), "stoa-token-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("issuing and comparing", () => {
  test("a new token is the prefix and 43 base64url characters, different every time", () => {
    const a = newToken("stm_");
    expect(a).toMatch(/^stm_[A-Za-z0-9_-]{43}$/);
    expect(newToken("stm_")).not.toBe(a);
    expect(tokenProblem(a)).toBeNull();
  });

  test("digests compare equal only for the same token and salt", () => {
    const t = newToken("x_");
    expect(sameDigest(tokenDigest(t), tokenDigest(t))).toBe(true);
    expect(sameDigest(tokenDigest(t), tokenDigest(`${t}x`))).toBe(false);
    expect(sameDigest(tokenDigest(t, Buffer.from("salt")), tokenDigest(t))).toBe(false);
    expect(sameDigest(tokenDigest(t), new Uint8Array(5))).toBe(false); // another length: no throw
  });

  test("too short, too long or spaced tokens are refused, without quoting them", () => {
    for (const bad of ["short", "x".repeat(257), `${"a".repeat(30)} b`, `${"a".repeat(30)}é`]) {
      const problem = tokenProblem(bad);
      expect(problem).not.toBeNull();
      expect(problem).not.toContain("aaaa");
    }
  });
});

describe("the Authorization header", () => {
  test("takes Bearer <token> in any case with spaces around, and nothing else", () => {
    const t = newToken("stm_");
    expect(bearerToken(`Bearer ${t}`)).toBe(t);
    expect(bearerToken(`  bearer \t${t} `)).toBe(t);
    for (const bad of [undefined, null, "", "Bearer", `Basic ${t}`, `Bearer ${t} more`, `Bearer${t}`, `Bearer ${"x".repeat(600)}`]) {
      expect(bearerToken(bad)).toBeNull();
    }
  });
});

describe("token files", () => {
  test("ensureTokenFile creates a 0600 file once and then reads it back", () => {
    const file = join(dir, "sub", "meta.token");
    const first = ensureTokenFile(file, "stm_");
    expect(first.created).toBe(true);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(statSync(join(dir, "sub")).mode & 0o777).toBe(0o700);
    expect(readFileSync(file, "utf8")).toBe(`${first.token}\n`);
    expect(ensureTokenFile(file, "stm_")).toEqual({ token: first.token, created: false });
  });

  test("two processes creating the same file at once end with one token", async () => {
    const file = join(dir, "race", "meta.token");
    const script = `import { ensureTokenFile } from ${JSON.stringify(join(import.meta.dir, "../../src/core/token.ts"))}; console.log(ensureTokenFile(${JSON.stringify(file)}, "stm_").token);`;
    const runs = Array.from({ length: 6 }, () => Bun.spawn([process.execPath, "-e", script], { stdout: "pipe" }));
    const tokens = await Promise.all(runs.map(async (p) => (await new Response(p.stdout).text()).trim()));
    expect(new Set(tokens).size).toBe(1);
    expect(readTokenFile(file)).toBe(tokens[0] ?? "");
  });

  test("a token file others may read is refused with the chmod to run", () => {
    const file = join(dir, "open.token");
    writeFileSync(file, `${newToken("stm_")}\n`);
    chmodSync(file, 0o644);
    let err: unknown;
    try {
      readTokenFile(file);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(StoaError);
    expect((err as StoaError).code).toBe("permission");
    expect((err as StoaError).message).toContain(`chmod 600 ${file}`);
  });

  test("a missing file, two tokens or an empty file are config errors naming the file", () => {
    const two = join(dir, "two.token");
    writeFileSync(two, "aaaaaaaaaaaaaaaaaaaaaaaa bbbbbbbbbbbbbbbbbbbbbbbbbb\n", { mode: 0o600 });
    const empty = join(dir, "empty.token");
    writeFileSync(empty, "\n", { mode: 0o600 });
    for (const file of [join(dir, "nope.token"), two, empty]) {
      expect(() => readTokenFile(file)).toThrow(file);
    }
  });
});
