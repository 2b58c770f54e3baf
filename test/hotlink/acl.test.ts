import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { StoaError } from "../../src/core/errors.ts";
import { MAX_ACL_FILE_BYTES, MAX_ACL_RULES, loadAcl, parseAcl, pathProblem, validatePath } from "../../src/hotlink/acl.ts";
import { fuzzSeed, prng } from "../helpers/prng.ts";

/** The random-input tests: about 0.25 s each on an idle machine, several times that on a loaded 2-core one (Bun's default is 5 s). */
const RANDOM_ROUNDS_TIMEOUT_MS = 20_000;

const dir = mkdtempSync(join(tmpdir(), "stoa-acl-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let fileCount = 0;
function file(content: unknown): string {
  const path = join(dir, `acl-${++fileCount}.json`);
  writeFileSync(path, typeof content === "string" ? content : JSON.stringify(content));
  return path;
}

function configError(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(StoaError);
    expect((err as StoaError).code).toBe("config");
    return (err as StoaError).message;
  }
  throw new Error("expected a config error");
}

/** An ACL with one rule granting bob read on `pattern`. */
const readable = (pattern: string) => parseAcl({ rules: [{ pattern, read: ["bob"] }] });

describe("paths", () => {
  test("accepts segments joined by '/', including e-mail style owners", () => {
    for (const path of ["alice", "alice/mpc/run1/0_to_1", "alice@example.org/x", "a/b c/ü/*?"]) {
      expect(pathProblem(path)).toBeNull();
      expect(validatePath(path)).toBe(path);
    }
  });

  test("rejects empty, '.', '..' segments and control characters", () => {
    for (const path of ["", "/alice", "alice/", "alice//x", "alice/./x", "alice/..", "../etc", "alice/x\ny", "a\u0000", "alice/\ud800"]) {
      expect(pathProblem(path)).not.toBeNull();
      expect(() => validatePath(path)).toThrow(StoaError);
    }
  });

  test("rejects a path over 4096 bytes of UTF-8, counting multi-byte characters", () => {
    expect(pathProblem(`a/${"x".repeat(4094)}`)).toBeNull();
    expect(pathProblem(`a/${"x".repeat(4095)}`)).toContain("4096 bytes");
    expect(pathProblem(`a/${"é".repeat(2047)}`)).toBeNull();
    expect(pathProblem(`a/${"é".repeat(2048)}`)).toContain("4096 bytes");
  });

  test("validatePath throws a usage error that says why", () => {
    try {
      validatePath("alice//x");
      throw new Error("accepted");
    } catch (err) {
      expect((err as StoaError).code).toBe("usage");
      expect((err as StoaError).message).toContain("empty segment");
    }
  });
});

describe("owner rule", () => {
  const acl = parseAcl({ rules: [] });

  test("the first segment's user has read and write on everything below", () => {
    for (const path of ["alice", "alice/mpc", "alice/mpc/run1/0_to_1"]) {
      expect(acl.canRead("alice", path)).toBe(true);
      expect(acl.canWrite("alice", path)).toBe(true);
    }
  });

  test("nobody else has access without a rule", () => {
    expect(acl.canRead("bob", "alice/mpc")).toBe(false);
    expect(acl.canWrite("bob", "alice/mpc")).toBe(false);
    // a prefix of the owner's name is not the owner
    expect(acl.canRead("alic", "alice/mpc")).toBe(false);
    expect(acl.canRead("alice", "alice2/mpc")).toBe(false);
  });

  test("an invalid path is denied even to its owner", () => {
    expect(acl.canRead("alice", "alice//x")).toBe(false);
    expect(acl.canWrite("alice", "alice/../bob")).toBe(false);
  });
});

describe("globs", () => {
  test("a literal pattern matches only that path", () => {
    const acl = readable("alice/mpc/run1");
    expect(acl.canRead("bob", "alice/mpc/run1")).toBe(true);
    expect(acl.canRead("bob", "alice/mpc/run10")).toBe(false);
    expect(acl.canRead("bob", "alice/mpc/run1/x")).toBe(false);
    expect(acl.canRead("bob", "alice/mpc")).toBe(false);
  });

  test("'*' matches within one segment only", () => {
    const acl = readable("alice/*/in-*");
    expect(acl.canRead("bob", "alice/mpc/in-0")).toBe(true);
    expect(acl.canRead("bob", "alice/mpc/in-")).toBe(true);
    expect(acl.canRead("bob", "alice/x/y/in-0")).toBe(false);
    expect(acl.canRead("bob", "alice/mpc/out-0")).toBe(false);
    expect(readable("alice/*").canRead("bob", "alice")).toBe(false);
  });

  test("'?' matches exactly one character within a segment", () => {
    const acl = readable("alice/run?");
    expect(acl.canRead("bob", "alice/run1")).toBe(true);
    expect(acl.canRead("bob", "alice/run")).toBe(false);
    expect(acl.canRead("bob", "alice/run12")).toBe(false);
    expect(readable("alice/a?b").canRead("bob", "alice/a/b")).toBe(false);
    // one character, even outside the Basic Multilingual Plane
    expect(acl.canRead("bob", "alice/run😀")).toBe(true);
  });

  test("'**' matches any number of segments, including none", () => {
    const acl = readable("alice/**");
    for (const path of ["alice", "alice/a", "alice/a/b/c/d"]) expect(acl.canRead("bob", path)).toBe(true);
    expect(acl.canRead("bob", "alicex/a")).toBe(false);

    const middle = readable("alice/**/out");
    for (const path of ["alice/out", "alice/a/out", "alice/a/b/out", "alice/out/out"]) expect(middle.canRead("bob", path)).toBe(true);
    for (const path of ["alice/out/x", "alice/a/outx", "carol/out"]) expect(middle.canRead("bob", path)).toBe(false);

    const leading = readable("**/inbox");
    expect(leading.canRead("bob", "inbox")).toBe(true);
    expect(leading.canRead("bob", "carol/x/inbox")).toBe(true);
    expect(readable("**").canRead("bob", "any/path/at/all")).toBe(true);
  });

  test("matches like a straightforward recursive matcher on random patterns and paths", () => {
    const seed = fuzzSeed(0xac1);
    const rng = prng(seed);
    const segment = (): string => Array.from({ length: 1 + rng.int(3) }, () => rng.pick(["a", "b"])).join("");
    const patternSegment = (): string =>
      rng.int(4) === 0 ? "**" : Array.from({ length: 1 + rng.int(3) }, () => rng.pick(["a", "b", "*", "?"])).join("").replace(/\*\*+/g, "*");
    const reference = (pattern: string[], path: string[]): boolean => {
      const memo = new Map<string, boolean>();
      const glob = (p: string, s: string) => new RegExp(`^${p.replace(/\*/g, ".*").replace(/\?/g, ".")}$`).test(s);
      const go = (i: number, j: number): boolean => {
        const key = `${i},${j}`;
        const known = memo.get(key);
        if (known !== undefined) return known;
        let result: boolean;
        if (i === pattern.length) result = j === path.length;
        else if (pattern[i] === "**") result = go(i + 1, j) || (j < path.length && go(i, j + 1));
        else result = j < path.length && glob(pattern[i] as string, path[j] as string) && go(i + 1, j + 1);
        memo.set(key, result);
        return result;
      };
      return go(0, 0);
    };
    let matched = 0;
    for (let iteration = 0; iteration < 5000; iteration++) {
      const pattern = Array.from({ length: 1 + rng.int(5) }, patternSegment);
      const path = Array.from({ length: 1 + rng.int(6) }, segment);
      const want = reference(pattern, path);
      const got = readable(pattern.join("/")).canRead("bob", path.join("/"));
      if (got !== want) throw new Error(`seed ${seed} iteration ${iteration}: ${pattern.join("/")} vs ${path.join("/")}: got ${got}`);
      if (want) matched++;
    }
    expect(matched).toBeGreaterThan(500);
  }, RANDOM_ROUNDS_TIMEOUT_MS);

  test("pathological patterns finish: many '**' and '*' against a long path that does not match", () => {
    const longPath = `carol/${Array.from({ length: 1000 }, () => "a").join("/")}`;
    const manyGlobstars = readable(`${Array.from({ length: 600 }, () => "**").join("/a/")}/x`);
    expect(manyGlobstars.canRead("bob", longPath)).toBe(false);
    const alternating = readable(`${Array.from({ length: 500 }, () => "**/a").join("/")}/**/x`);
    expect(alternating.canRead("bob", longPath)).toBe(false);
    const manyStars = readable(`carol/${"*a".repeat(1000)}*x`);
    expect(manyStars.canRead("bob", `carol/${"a".repeat(4000)}`)).toBe(false);
  });
});

describe("read, write and users", () => {
  const acl = parseAcl({
    rules: [
      { pattern: "alice/shared/**", read: ["bob", "carol@example.org"], write: ["carol@example.org"] },
      { pattern: "alice/public/*", read: ["*"] },
      { pattern: "alice/drop/*", write: ["*"] },
    ],
  });

  test("read and write are granted separately: write does not imply read", () => {
    expect(acl.canRead("bob", "alice/shared/x")).toBe(true);
    expect(acl.canWrite("bob", "alice/shared/x")).toBe(false);
    expect(acl.canRead("carol@example.org", "alice/shared/x")).toBe(true);
    expect(acl.canWrite("carol@example.org", "alice/shared/x")).toBe(true);
    expect(acl.canWrite("dave", "alice/drop/x")).toBe(true);
    expect(acl.canRead("dave", "alice/drop/x")).toBe(false);
  });

  test("'*' grants every user; a user not listed gets nothing", () => {
    expect(acl.canRead("dave", "alice/public/x")).toBe(true);
    expect(acl.canWrite("dave", "alice/public/x")).toBe(false);
    expect(acl.canRead("dave", "alice/shared/x")).toBe(false);
  });

  test("any matching rule grants: access is the union of rules", () => {
    const two = parseAcl({
      rules: [
        { pattern: "alice/**", read: ["bob"] },
        { pattern: "alice/x", write: ["bob"] },
      ],
    });
    expect(two.canRead("bob", "alice/x")).toBe(true);
    expect(two.canWrite("bob", "alice/x")).toBe(true);
    expect(two.canWrite("bob", "alice/y")).toBe(false);
  });

  test("answers stay right when the same question is asked many times (cached)", () => {
    for (let i = 0; i < 10_000; i++) {
      expect(acl.canRead("bob", `alice/shared/${i % 5000}`)).toBe(true);
      expect(acl.canWrite("bob", `alice/shared/${i % 5000}`)).toBe(false);
    }
  });
});

describe("ACL files", () => {
  test("loads a file and reloads it in place", () => {
    const path = file({ rules: [{ pattern: "alice/x", read: ["bob"] }] });
    const acl = loadAcl(path);
    expect(acl.source).toBe(path);
    expect(acl.size).toBe(1);
    expect(acl.canRead("bob", "alice/x")).toBe(true);
    writeFileSync(path, JSON.stringify({ rules: [{ pattern: "alice/y", read: ["bob"] }] }));
    acl.reload();
    expect(acl.canRead("bob", "alice/x")).toBe(false);
    expect(acl.canRead("bob", "alice/y")).toBe(true);
  });

  test("a failed reload throws and keeps the old rules", () => {
    const path = file({ rules: [{ pattern: "alice/x", read: ["bob"] }] });
    const acl = loadAcl(path);
    writeFileSync(path, "{ not json");
    expect(configError(() => acl.reload())).toContain(path);
    expect(acl.canRead("bob", "alice/x")).toBe(true);
  });

  test("a parsed ACL accepts JSON text, and cannot be reloaded", () => {
    const acl = parseAcl('{"rules":[{"pattern":"alice/x","read":["*"]}]}');
    expect(acl.canRead("zed", "alice/x")).toBe(true);
    expect(() => acl.reload()).toThrow(StoaError);
  });

  test("a missing file names the path", () => {
    expect(configError(() => loadAcl(join(dir, "nope.json")))).toContain("does not exist");
  });

  test("invalid JSON names the file", () => {
    const path = file("{ rules: [ }");
    const message = configError(() => loadAcl(path));
    expect(message).toContain(path);
    expect(message).toContain("not valid JSON");
  });

  test("a wrong shape says where and what", () => {
    expect(configError(() => loadAcl(file([])))).toContain("expected");
    expect(configError(() => loadAcl(file({ rules: {} })))).toContain("rules");
    expect(configError(() => loadAcl(file({ rules: [], extra: 1 })))).toContain("extra");
    expect(configError(() => loadAcl(file({ rules: [{ pattern: "a", read: "bob" }] })))).toContain("rules.0.read");
    expect(configError(() => loadAcl(file({ rules: [{ pattern: "a", reed: ["bob"] }] })))).toContain("reed");
    expect(configError(() => loadAcl(file({ rules: [{ read: ["bob"] }] })))).toContain("rules.0.pattern");
  });

  test("bad patterns and user names are refused with the reason", () => {
    expect(configError(() => parseAcl({ rules: [{ pattern: "/alice" }] }))).toContain("empty segment");
    expect(configError(() => parseAcl({ rules: [{ pattern: "alice/../bob" }] }))).toContain("'..'");
    expect(configError(() => parseAcl({ rules: [{ pattern: "alice/a**" }] }))).toContain("whole segment");
    expect(configError(() => parseAcl({ rules: [{ pattern: "" }] }))).toContain("empty");
    expect(configError(() => parseAcl({ rules: [{ pattern: `a/${"x".repeat(4095)}` }] }))).toContain("4096");
    expect(configError(() => parseAcl({ rules: [{ pattern: "a", read: ["Bob"] }] }))).toContain("lower case");
    expect(configError(() => parseAcl({ rules: [{ pattern: "a", write: ["bob/x"] }] }))).toContain("rules.0.write.0");
  });

  test("too many rules, too many users in a rule, an oversize file", () => {
    const rules = Array.from({ length: MAX_ACL_RULES + 1 }, (_, i) => ({ pattern: `a/${i}` }));
    expect(configError(() => parseAcl({ rules }))).toContain(`${MAX_ACL_RULES}`);
    expect(parseAcl({ rules: rules.slice(0, MAX_ACL_RULES) }).size).toBe(MAX_ACL_RULES);
    const users = Array.from({ length: 1001 }, (_, i) => `u${i}`);
    expect(configError(() => parseAcl({ rules: [{ pattern: "a", read: users }] }))).toContain("rules.0.read");
    const big = file("{}");
    truncateSync(big, MAX_ACL_FILE_BYTES + 1);
    expect(configError(() => loadAcl(big))).toContain("limit");
  });
});
