/**
 * The hotlink users file and bearer-token authentication.
 *
 * File (JSON, mode 0600, replaced atomically by core/atomicfile.ts, so a server that re-reads it
 * never sees half a file):
 *
 *   {"users": {"alice@example.org": {"hash": "sha256:<salt>:<digest>", "created": "<RFC 3339>"}}}
 *
 * `salt` is 16 random bytes and `digest` is SHA-256(salt ‖ token), both base64url. `created` is
 * when the current token was issued (a `replace` renews it). The token itself is never stored.
 *
 * Tokens are `hlk_` + 32 random bytes from the CSPRNG in base64url (47 characters; issuing,
 * hashing and comparing are src/core/token.ts's, shared with the metaserver). Why SHA-256
 * and not scrypt/argon2: those exist to slow down guessing of low-entropy passwords. A 256-bit
 * random token cannot be guessed however fast the hash is, so a slow hash buys nothing and would
 * cost milliseconds of CPU on every WebSocket upgrade — an easy denial of service. The salt only
 * keeps equal hashes from saying anything across files. Comparison is constant-time.
 *
 * User names: 1–64 characters of lowercase ASCII letters, digits and `. _ @ + -`, starting with a
 * letter or digit (so `alice@example.org` works, and `.`/`..` or a `/` cannot occur: a name is
 * the first segment of the paths it owns). Upper case is refused, not folded, so that a name has
 * exactly one spelling in the users file, the ACL and every path.
 *
 * Authentication on the WebSocket upgrade uses one scheme: `Authorization: Bearer <user>:<token>`
 * (a header, never the query string, which ends up in access logs). A name cannot hold `:` and a
 * token is base64url, so the split is unambiguous.
 *
 * Writers (`addUser`, `removeUser`) hold an exclusive flock on `<file>.lock` for their
 * read-modify-write, so parallel invocations never lose an update.
 */
import { randomBytes } from "node:crypto";
import { closeSync, mkdirSync, openSync } from "node:fs";
import { dirname } from "node:path";
import { z } from "zod";
import { writeFileAtomic } from "../core/atomicfile.ts";
import { StoaError, describeError } from "../core/errors.ts";
import { readSmallFile } from "../core/smallfile.ts";
import { newToken, sameDigest, tokenDigest } from "../core/token.ts";
import { Errno, errno, libc, strerror } from "../ffi/libc.ts";

/** Longest user name: room for real e-mail style names, short enough for a path segment. */
const MAX_USER_NAME_LENGTH = 64;
/** Most users in one file: far beyond a relay's real use; bounds memory and parse time. */
const MAX_USERS = 100_000;
/** A users file larger than this is refused before it is read (MAX_USERS entries fit easily). */
export const MAX_USERS_FILE_BYTES = 32 * 1024 * 1024;

/** Every token starts with this, so a leaked one is recognisable (secret scanners, logs). */
export const TOKEN_PREFIX = "hlk_";
/** Length of a token we issue (core/token.ts's `newToken`): prefix + base64url of 32 bytes without padding. */
const TOKEN_LENGTH = TOKEN_PREFIX.length + 43;
const TOKEN_SHAPE = /^hlk_[A-Za-z0-9_-]{43}$/;
const SALT_BYTES = 16;
const DIGEST_BYTES = 32;
/** An Authorization header longer than this is not one of ours; refused before splitting. */
const MAX_AUTHORIZATION_LENGTH = 256;

/** flock(2) operations, sys/file.h. */
const LOCK_EX = 2;
const LOCK_NB = 4;
/** How long a writer waits for another writer of the same file (each holds it for milliseconds). */
const LOCK_TIMEOUT_MS = 10_000;
const LOCK_RETRY_MS = 2;

const USER_NAME = /^[a-z0-9][a-z0-9._@+-]*$/;

/** Why `name` is not a valid user name, or null when it is. */
export function userNameProblem(name: string): string | null {
  if (name.length === 0) return "a user name cannot be empty";
  if (name.length > MAX_USER_NAME_LENGTH) return `a user name is at most ${MAX_USER_NAME_LENGTH} characters`;
  if (USER_NAME.test(name)) return null;
  if (/[A-Z]/.test(name)) return `user name ${JSON.stringify(name)} has upper case; write it in lower case`;
  return `user name ${JSON.stringify(name)} must start with a lowercase letter or digit and hold only a-z, 0-9 and . _ @ + -`;
}

/** A user name (see the module header), for zod schemas of files and messages. */
export const UserName = z.string().superRefine((name, ctx) => {
  const problem = userNameProblem(name);
  if (problem !== null) ctx.addIssue({ code: "custom", message: problem });
});

const HASH = /^sha256:([A-Za-z0-9_-]{22}):([A-Za-z0-9_-]{43})$/;

const UsersFile = z.strictObject({
  users: z
    .record(
      UserName,
      z.strictObject({
        hash: z.string().regex(HASH, 'hash must look like "sha256:<salt>:<digest>" as written by stoa'),
        created: z.iso.datetime({ offset: true }),
      }),
    )
    .refine((users) => Object.keys(users).length <= MAX_USERS, `at most ${MAX_USERS} users`),
});
type UsersFile = z.output<typeof UsersFile>;

interface Credential {
  salt: Buffer;
  digest: Buffer;
}

/** A check against this keeps an unknown user as slow as a wrong token (names need not leak). */
const NOBODY: Credential = { salt: Buffer.alloc(SALT_BYTES), digest: Buffer.alloc(DIGEST_BYTES) };

/** The users of one file, loaded for verification. Immutable: reload by calling `loadUsers` again. */
class Users {
  readonly #credentials: Map<string, Credential>;

  constructor(file: UsersFile) {
    this.#credentials = new Map();
    for (const [name, entry] of Object.entries(file.users)) {
      const match = HASH.exec(entry.hash);
      if (match === null || match[1] === undefined || match[2] === undefined) continue; // the schema checked it
      this.#credentials.set(name, {
        salt: Buffer.from(match[1], "base64url"),
        digest: Buffer.from(match[2], "base64url"),
      });
    }
  }

  /**
   * Whether `token` is the current token of `name`. Constant-time in the token; one SHA-256 of
   * 63 bytes (~1 µs), so it is fine on every upgrade.
   */
  verify(name: string, token: string): boolean {
    const known = this.#credentials.get(name);
    const credential = known ?? NOBODY;
    // Tokens have one fixed length; anything else is refused before hashing attacker input.
    const shaped = token.length === TOKEN_LENGTH && TOKEN_SHAPE.test(token);
    const digest = tokenDigest(shaped ? token : "", credential.salt);
    const equal = sameDigest(digest, credential.digest);
    return equal && shaped && known !== undefined;
  }

  /** Whether `name` is in the file. */
  has(name: string): boolean {
    return this.#credentials.has(name);
  }

  /** The user names, sorted. */
  names(): string[] {
    return [...this.#credentials.keys()].sort();
  }
}

/**
 * Reads and validates a users file. Every problem — missing, unreadable, oversize, not JSON,
 * wrong shape — is a `StoaError("config")` naming the file and what is wrong.
 * @example
 * let users = loadUsers(flags.users);
 * process.on("SIGHUP", () => { users = loadUsers(flags.users); }); // keep the old one on error
 * if (!users.verify(auth.user, auth.token)) return new Response("unauthorized", { status: 401 });
 */
export function loadUsers(file: string): Users {
  const parsed = readUsersFile(file);
  if (parsed === undefined) {
    throw new StoaError("config", `users file ${file} does not exist; add a user first (that creates it) or fix the path`);
  }
  return new Users(parsed);
}

/**
 * Adds `name` with a fresh token and returns the token — the only time it exists in clear: hand
 * it to the user now. Creates the file (and its directory, 0700) when missing. An existing user
 * is a `StoaError("exists")` unless `replace` is set, which issues a new token and invalidates
 * the old one.
 * @example
 * const token = addUser("/etc/stoa/hotlink-users.json", "alice@example.org");
 * // alice: stoa hotlink connect --user alice@example.org --token-file ./alice.token
 */
export function addUser(file: string, name: string, options: { replace?: boolean } = {}): string {
  const problem = userNameProblem(name);
  if (problem !== null) throw new StoaError("usage", problem);
  return withLock(file, () => {
    const current = readUsersFile(file) ?? { users: {} };
    if (Object.hasOwn(current.users, name) && options.replace !== true) {
      throw new StoaError("exists", `user ${name} already exists in ${file}; pass --replace to issue a new token`);
    }
    if (!Object.hasOwn(current.users, name) && Object.keys(current.users).length >= MAX_USERS) {
      throw new StoaError("too_large", `${file} already holds ${MAX_USERS} users, the limit; remove unused users first`);
    }
    const token = newToken(TOKEN_PREFIX);
    const salt = randomBytes(SALT_BYTES);
    const hash = `sha256:${salt.toString("base64url")}:${tokenDigest(token, salt).toString("base64url")}`;
    const users = { ...current.users, [name]: { hash, created: new Date().toISOString() } };
    writeUsersFile(file, { users });
    return token;
  });
}

/** Removes `name`; its token stops working when the server reloads the file. `StoaError("not_found")` if absent. */
export function removeUser(file: string, name: string): void {
  withLock(file, () => {
    const current = readUsersFile(file);
    if (current === undefined || !Object.hasOwn(current.users, name)) {
      throw new StoaError("not_found", `user ${JSON.stringify(name)} is not in ${file}; list the users to check the name`);
    }
    const users = Object.fromEntries(Object.entries(current.users).filter(([user]) => user !== name));
    writeUsersFile(file, { users });
  });
}

/**
 * The user and token of an `Authorization: Bearer <user>:<token>` header, or null when the value
 * is missing or not of that form (answer 401 then). The user name and token shape are checked
 * here; whether they are right is `Users.verify`'s job.
 * @example
 * parseAuthorization("Bearer alice@example.org:hlk_...") // → { user: "alice@example.org", token: "hlk_..." }
 */
export function parseAuthorization(header: string | null | undefined): { user: string; token: string } | null {
  if (header === null || header === undefined || header.length > MAX_AUTHORIZATION_LENGTH) return null;
  const match = /^[ \t]*bearer[ \t]+([^ \t:]+):([^ \t]+)[ \t]*$/i.exec(header);
  if (match === null || match[1] === undefined || match[2] === undefined) return null;
  const user = match[1];
  const token = match[2];
  if (userNameProblem(user) !== null || !TOKEN_SHAPE.test(token)) return null;
  return { user, token };
}

/** The `Authorization` header value a client sends: `Bearer <user>:<token>`. */
export function formatAuthorization(user: string, token: string): string {
  return `Bearer ${user}:${token}`;
}

/** The parsed file, or undefined when it does not exist. */
function readUsersFile(file: string): UsersFile | undefined {
  const text = readSmallFile(file, { maxBytes: MAX_USERS_FILE_BYTES, what: "users file", fix: "check its permissions", optional: true });
  if (text === undefined) return undefined;
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    const detail = describeError(err);
    throw new StoaError("config", `users file ${file} is not valid JSON (${detail}); fix it or recreate it by adding the users again`);
  }
  const result = UsersFile.safeParse(json);
  if (!result.success) {
    const issues = result.error.issues.slice(0, 3).map((issue) => {
      const at = issue.path.length > 0 ? `at ${issue.path.map(String).join(".")}: ` : "";
      // A bad user name is reported by zod as "Invalid key in record"; say what is wrong with it.
      const message = issue.code === "invalid_key" ? (issue.issues[0]?.message ?? issue.message) : issue.message;
      return at + message;
    });
    throw new StoaError(
      "config",
      `users file ${file} is not a hotlink users file (${issues.join("; ")}); expected {"users": {"<name>": {"hash": ..., "created": ...}}}`,
    );
  }
  return result.data;
}

function writeUsersFile(file: string, content: UsersFile): void {
  writeFileAtomic(file, `${JSON.stringify(content, null, 2)}\n`, { mode: 0o600, what: "users file" });
}

/** Runs `fn` holding an exclusive flock on `<file>.lock` (the file itself is replaced by rename). */
function withLock<T>(file: string, fn: () => T): T {
  const lockPath = `${file}.lock`;
  let fd: number;
  try {
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    fd = openSync(lockPath, "a", 0o600);
  } catch (err) {
    throw new StoaError("io", `cannot open ${lockPath}: ${(err as Error).message}; check the directory exists and is writable`, { cause: err });
  }
  try {
    const deadline = performance.now() + LOCK_TIMEOUT_MS;
    for (;;) {
      if (libc().flock(fd, LOCK_EX | LOCK_NB) === 0) break;
      const code = errno();
      if (code !== Errno.EAGAIN && code !== Errno.EINTR) throw new StoaError("io", `cannot lock ${lockPath}: ${strerror(code)}`);
      if (performance.now() > deadline) {
        throw new StoaError("timeout", `${lockPath} stayed locked by another stoa process for ${LOCK_TIMEOUT_MS} ms; try again`);
      }
      Bun.sleepSync(LOCK_RETRY_MS);
    }
    return fn();
  } finally {
    // Closing the fd releases the lock; so does the process dying, so no stale lock is possible.
    closeSync(fd);
  }
}
