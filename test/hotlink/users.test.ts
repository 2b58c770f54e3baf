import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { StoaError } from "../../src/core/errors.ts";
import {
  MAX_USERS_FILE_BYTES,
  TOKEN_PREFIX,
  addUser,
  formatAuthorization,
  loadUsers,
  parseAuthorization,
  removeUser,
  userNameProblem,
} from "../../src/hotlink/users.ts";

const dir = mkdtempSync(join(tmpdir(), "stoa-users-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let fileCount = 0;
/** A fresh users file path that does not exist yet. */
function fresh(): string {
  return join(dir, `users-${++fileCount}.json`);
}
function file(content: unknown): string {
  const path = fresh();
  writeFileSync(path, typeof content === "string" ? content : JSON.stringify(content));
  return path;
}

function errorCode(fn: () => unknown): { code: string; message: string } {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(StoaError);
    return { code: (err as StoaError).code, message: (err as StoaError).message };
  }
  throw new Error("expected a StoaError");
}

describe("user names", () => {
  test("accepts lowercase names, e-mail style included", () => {
    for (const name of ["alice", "a", "0", "alice@example.org", "bob.smith+mpc@example.co.uk", "x_y-z", "a".repeat(64)]) {
      expect(userNameProblem(name)).toBeNull();
    }
  });

  test("refuses empty, long, uppercase, '/', ':', whitespace and dot-led names", () => {
    for (const name of ["", "a".repeat(65), "Alice", "a/b", "a:b", "a b", ".", "..", ".alice", "-x", "*", "é"]) {
      expect(userNameProblem(name)).not.toBeNull();
    }
    expect(userNameProblem("Alice")).toContain("lower case");
  });
});

describe("adding users and verifying tokens", () => {
  test("a new user's token verifies; the file is created with mode 0600", () => {
    const path = join(dir, "nested", "deeper", "users.json");
    const token = addUser(path, "alice@example.org");
    expect(token.startsWith(TOKEN_PREFIX)).toBe(true);
    expect(token).toMatch(/^hlk_[A-Za-z0-9_-]{43}$/);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const users = loadUsers(path);
    expect(users.verify("alice@example.org", token)).toBe(true);
    expect(users.names()).toEqual(["alice@example.org"]);
    expect(users.has("alice@example.org")).toBe(true);
  });

  test("stores a salted hash, never the token", () => {
    const path = fresh();
    const token = addUser(path, "alice");
    const text = readFileSync(path, "utf8");
    expect(text).not.toContain(token);
    expect(text).not.toContain(token.slice(TOKEN_PREFIX.length));
    const entry = JSON.parse(text).users.alice;
    expect(entry.hash).toMatch(/^sha256:[A-Za-z0-9_-]{22}:[A-Za-z0-9_-]{43}$/);
    expect(Number.isNaN(Date.parse(entry.created))).toBe(false);
  });

  test("wrong tokens, other users' tokens and unknown users do not verify", () => {
    const path = fresh();
    const alice = addUser(path, "alice");
    const bob = addUser(path, "bob");
    const users = loadUsers(path);
    expect(users.verify("alice", bob)).toBe(false);
    expect(users.verify("bob", alice)).toBe(false);
    expect(users.verify("carol", alice)).toBe(false);
    expect(users.verify("alice", "")).toBe(false);
    expect(users.verify("alice", alice.slice(0, -1))).toBe(false);
    expect(users.verify("alice", `${alice}x`)).toBe(false);
    const flipped = alice.slice(0, -1) + (alice.endsWith("A") ? "B" : "A");
    expect(users.verify("alice", flipped)).toBe(false);
    expect(users.verify("alice", alice)).toBe(true);
    expect(users.names()).toEqual(["alice", "bob"]);
  });

  test("every token is different", () => {
    const path = fresh();
    const tokens = new Set(Array.from({ length: 50 }, (_, i) => addUser(path, `u${i}`)));
    expect(tokens.size).toBe(50);
  });

  test("refuses an existing user unless replace, which invalidates the old token", () => {
    const path = fresh();
    const first = addUser(path, "alice");
    const exists = errorCode(() => addUser(path, "alice"));
    expect(exists.code).toBe("exists");
    expect(exists.message).toContain("--replace");
    expect(loadUsers(path).verify("alice", first)).toBe(true);

    const second = addUser(path, "alice", { replace: true });
    const users = loadUsers(path);
    expect(users.verify("alice", second)).toBe(true);
    expect(users.verify("alice", first)).toBe(false);
  });

  test("refuses an invalid name as a usage error", () => {
    expect(errorCode(() => addUser(fresh(), "Alice")).code).toBe("usage");
    expect(errorCode(() => addUser(fresh(), "a/b")).code).toBe("usage");
  });

  test("removes a user; removing an unknown one is not_found", () => {
    const path = fresh();
    const alice = addUser(path, "alice");
    const bob = addUser(path, "bob");
    removeUser(path, "alice");
    const users = loadUsers(path);
    expect(users.verify("alice", alice)).toBe(false);
    expect(users.verify("bob", bob)).toBe(true);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(errorCode(() => removeUser(path, "alice")).code).toBe("not_found");
    expect(errorCode(() => removeUser(fresh(), "alice")).code).toBe("not_found");
  });

  test("leaves no temporary files behind", () => {
    const sub = mkdtempSync(join(dir, "tmpfiles-"));
    const path = join(sub, "users.json");
    addUser(path, "alice");
    addUser(path, "bob");
    removeUser(path, "alice");
    const left = new Bun.Glob("*").scanSync(sub);
    expect([...left].sort()).toEqual(["users.json", "users.json.lock"]);
  });

  test("parallel writers in separate processes lose no update", async () => {
    const path = fresh();
    const module = join(import.meta.dir, "../../src/hotlink/users.ts");
    const script = (id: number) =>
      `import { addUser } from ${JSON.stringify(module)}; for (let i = 0; i < 10; i++) addUser(${JSON.stringify(path)}, "p${id}-" + i);`;
    const children = [0, 1, 2, 3].map((id) => Bun.spawn([process.execPath, "-e", script(id)], { stderr: "pipe" }));
    const codes = await Promise.all(children.map((child) => child.exited));
    expect(codes).toEqual([0, 0, 0, 0]);
    expect(loadUsers(path).names()).toHaveLength(40);
  });
});

describe("malformed users files", () => {
  test("a missing file is a config error that says what to do", () => {
    const err = errorCode(() => loadUsers(join(dir, "missing.json")));
    expect(err.code).toBe("config");
    expect(err.message).toContain("does not exist");
  });

  test("invalid JSON names the file; addUser refuses to overwrite it", () => {
    const path = file("{ users: ");
    const err = errorCode(() => loadUsers(path));
    expect(err.code).toBe("config");
    expect(err.message).toContain(path);
    expect(err.message).toContain("not valid JSON");
    expect(errorCode(() => addUser(path, "alice")).code).toBe("config");
    expect(readFileSync(path, "utf8")).toBe("{ users: ");
  });

  test("wrong shapes say where the problem is", () => {
    const valid = { hash: `sha256:${"A".repeat(22)}:${"B".repeat(43)}`, created: "2025-01-02T03:04:05Z" };
    const cases: [unknown, string][] = [
      [[], "expected"],
      [{ users: [] }, "users"],
      [{ users: {}, extra: true }, "extra"],
      [{ users: { alice: { ...valid, hash: "plaintoken" } } }, "users.alice.hash"],
      [{ users: { alice: { ...valid, created: "yesterday" } } }, "users.alice.created"],
      [{ users: { alice: { hash: valid.hash } } }, "users.alice.created"],
      [{ users: { Alice: valid } }, "lower case"],
      [{ users: { "a/b": valid } }, "a/b"],
    ];
    for (const [content, expected] of cases) {
      const err = errorCode(() => loadUsers(file(content)));
      expect(err.code).toBe("config");
      expect(err.message).toContain(expected);
    }
    expect(loadUsers(file({ users: { alice: valid } })).names()).toEqual(["alice"]);
  });

  test("an oversize file is refused before it is read", () => {
    const path = file("{}");
    truncateSync(path, MAX_USERS_FILE_BYTES + 1);
    const err = errorCode(() => loadUsers(path));
    expect(err.code).toBe("config");
    expect(err.message).toContain("limit");
  });
});

describe("Authorization header", () => {
  const token = `hlk_${"a".repeat(43)}`;

  test("parses Bearer <user>:<token> and round-trips with formatAuthorization", () => {
    expect(parseAuthorization(`Bearer alice@example.org:${token}`)).toEqual({ user: "alice@example.org", token });
    expect(parseAuthorization(formatAuthorization("bob", token))).toEqual({ user: "bob", token });
  });

  test("takes the scheme in any case and tolerates surrounding blanks", () => {
    expect(parseAuthorization(`bearer alice:${token}`)).toEqual({ user: "alice", token });
    expect(parseAuthorization(`BEARER\talice:${token}`)).toEqual({ user: "alice", token });
    expect(parseAuthorization(`  Bearer   alice:${token}  `)).toEqual({ user: "alice", token });
  });

  test("returns null for anything else", () => {
    const bad = [
      undefined,
      null,
      "",
      "Bearer",
      `Bearer ${token}`,
      `Basic ${btoa(`alice:${token}`)}`,
      `Bearer :${token}`,
      "Bearer alice:",
      `Bearer Alice:${token}`,
      `Bearer alice:${token}:extra`,
      `Bearer alice:${token.slice(0, -1)}`,
      `Bearer alice:${token}a`,
      `Bearer alice:xyz_${"a".repeat(43)}`,
      `Bearer alice :${token}`,
      `Bearer alice: ${token}`,
      `Bearer alice:${token} extra`,
      `Bearer a/b:${token}`,
      `Bearer ${"a".repeat(300)}:${token}`,
      `Bearer alice:${token}\n`,
    ];
    for (const value of bad) expect(parseAuthorization(value)).toBeNull();
  });
});
