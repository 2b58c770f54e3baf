/**
 * Who may read and write which hotlink path.
 *
 * Paths: segments joined by `/`, e.g. `alice@example.org/mpc/run1/0_to_1`; at most
 * `MAX_PATH_BYTES` of UTF-8; no empty segment (so no leading, trailing or doubled `/`), no `.`
 * or `..` segment, no control characters or lone surrogates. The first segment is the owning
 * user.
 *
 * Access: a user may read (write) a path when
 *   1. the owner rule: the path's first segment is the user — the owner has read and write; or
 *   2. any rule whose `pattern` matches the path lists the user, or `*` (every authenticated
 *      user), in its `read` (`write`) list.
 * Read and write are independent: write does not imply read. Everything else is denied, and so
 * is any invalid path.
 *
 * ACL file (JSON, at most `MAX_ACL_FILE_BYTES`):
 *
 *   {"rules": [{"pattern": "alice@example.org/mpc/**", "read": ["bob@example.org"], "write": []},
 *              {"pattern": "shared/inbox-*", "read": ["*"], "write": ["*"]}]}
 *
 * Patterns follow the path rules, plus globs: `*` matches any characters within one segment,
 * `?` exactly one character within a segment, and `**` — which must be a whole segment — any
 * number of segments, including none (`a/**` matches `a`, `a/b` and `a/b/c`). There is no
 * escape: `*` and `?` in a pattern are always wildcards.
 *
 * Matching never backtracks exponentially: patterns are compiled once into segments and matched
 * with the greedy two-pointer wildcard algorithm, at the segment level for `**` and at the
 * character level within a segment, so one match costs at most O(pattern × path) steps however
 * many wildcards a pattern holds. Results are cached per (user, path), since a session checks
 * the same path on every frame; the cache is bounded and dropped on reload.
 */
import { z } from "zod";
import { StoaError, describeError } from "../core/errors.ts";
import { readSmallFile } from "../core/smallfile.ts";
import { UserName } from "./users.ts";

/** Longest path in UTF-8 bytes: the HLNK frame's path limit, so every path fits a frame. */
export const MAX_PATH_BYTES = 4096;
/** Longest pattern, in characters: a pattern never needs to be longer than the paths it matches. */
const MAX_PATTERN_LENGTH = 4096;
/** Most rules in one ACL file: far beyond hand-written use; bounds load time and check time. */
export const MAX_ACL_RULES = 10_000;
/** Most users in one rule's `read` or `write` list. */
const MAX_RULE_USERS = 1_000;
/** An ACL file larger than this is refused before it is read. */
export const MAX_ACL_FILE_BYTES = 16 * 1024 * 1024;
/** Cached (user, path) decisions; the cache is dropped whole when full (sessions re-fill it). */
const MAX_CACHE_ENTRIES = 4096;

// Control characters have no business in a path and would garble logs and error messages.
const CONTROL = /[\u0000-\u001f\u007f]/;

/** Why `path` is not a valid hotlink path, or null when it is. */
export function pathProblem(path: string): string | null {
  if (path.length === 0) return "a path cannot be empty";
  if (path.length > MAX_PATH_BYTES || (path.length * 3 > MAX_PATH_BYTES && Buffer.byteLength(path, "utf8") > MAX_PATH_BYTES)) {
    return `a path is at most ${MAX_PATH_BYTES} bytes`;
  }
  return segmentsProblem(path, "path");
}

/**
 * Returns `path` if it is a valid hotlink path, else throws `StoaError("usage")` saying why
 * (for paths a user typed; a peer's bad path is refused with `pathProblem`'s reason instead).
 */
export function validatePath(path: string): string {
  const problem = pathProblem(path);
  if (problem !== null) throw new StoaError("usage", `bad hotlink path ${JSON.stringify(path.slice(0, 200))}: ${problem}`);
  return path;
}

function segmentsProblem(text: string, what: "path" | "pattern"): string | null {
  if (CONTROL.test(text)) return `a ${what} cannot hold control characters`;
  // A lone surrogate has no UTF-8 form: it would change on the wire (and HLNK refuses it).
  if (!text.isWellFormed()) return `a ${what} must be well-formed Unicode`;
  for (const segment of text.split("/")) {
    if (segment === "") return `a ${what} has no empty segment (no leading, trailing or double '/')`;
    if (segment === "." || segment === "..") return `a ${what} has no '.' or '..' segment`;
  }
  return null;
}

function patternProblem(pattern: string): string | null {
  if (pattern.length === 0) return "a pattern cannot be empty";
  if (pattern.length > MAX_PATTERN_LENGTH) return `a pattern is at most ${MAX_PATTERN_LENGTH} characters`;
  const problem = segmentsProblem(pattern, "pattern");
  if (problem !== null) return problem;
  for (const segment of pattern.split("/")) {
    if (segment !== "**" && segment.includes("**")) return `'**' must be a whole segment (in ${JSON.stringify(segment)}); use '*' within a segment`;
  }
  return null;
}

const Grantee = z.union([z.literal("*"), UserName]);

const AclFile = z.strictObject({
  rules: z
    .array(
      z.strictObject({
        pattern: z.string().superRefine((pattern, ctx) => {
          const problem = patternProblem(pattern);
          if (problem !== null) ctx.addIssue({ code: "custom", message: problem });
        }),
        read: z.array(Grantee).max(MAX_RULE_USERS).default([]),
        write: z.array(Grantee).max(MAX_RULE_USERS).default([]),
      }),
    )
    .max(MAX_ACL_RULES),
});

const LITERAL = 0;
const GLOB = 1;
const GLOBSTAR = 2;
type Segment = { kind: typeof LITERAL | typeof GLOB; text: string } | { kind: typeof GLOBSTAR; text: "**" };

interface Rule {
  segments: Segment[];
  readAll: boolean;
  writeAll: boolean;
  read: Set<string>;
  write: Set<string>;
}

const READ = 1;
const WRITE = 2;

/**
 * Compiled path rules. `reload()` swaps the rules in place, so every holder of this object sees
 * the new ones at once; on a bad file it throws and keeps the old rules.
 */
class Acl {
  #rules: Rule[];
  #cache = new Map<string, number>();
  #source: string | undefined;

  constructor(rules: Rule[], source: string | undefined) {
    this.#rules = rules;
    this.#source = source;
  }

  /** The file the rules came from (undefined for `parseAcl`). */
  get source(): string | undefined {
    return this.#source;
  }

  /** Whether `user` may read `path` (receive its sessions' Open and Data). */
  canRead(user: string, path: string): boolean {
    return (this.#access(user, path) & READ) !== 0;
  }

  /** Whether `user` may write `path` (open sessions on it and send Data). */
  canWrite(user: string, path: string): boolean {
    return (this.#access(user, path) & WRITE) !== 0;
  }

  /** Number of rules (besides the owner rule). */
  get size(): number {
    return this.#rules.length;
  }

  /**
   * Re-reads `source` (or reads `file`, which becomes the source: a config reload that names
   * another ACL file) and replaces the rules; on any error throws the `StoaError("config")` of
   * `loadAcl` and keeps the current rules and source.
   * @example
   * process.on("SIGHUP", () => {
   *   try { acl.reload(); log.info("acl reloaded", { rules: acl.size }); }
   *   catch (err) { log.error("acl reload failed; keeping the old rules", { err: describeError(err) }); }
   * });
   */
  reload(file: string | undefined = this.#source): void {
    if (file === undefined) throw new StoaError("internal", "this ACL was not loaded from a file, so it cannot be reloaded");
    this.#rules = compile(readAclFile(file), file);
    this.#source = file;
    this.#cache = new Map();
  }

  #access(user: string, path: string): number {
    const key = `${user}\n${path}`;
    const cached = this.#cache.get(key);
    if (cached !== undefined) return cached;
    const access = this.#compute(user, path);
    if (this.#cache.size >= MAX_CACHE_ENTRIES) this.#cache.clear();
    this.#cache.set(key, access);
    return access;
  }

  #compute(user: string, path: string): number {
    if (pathProblem(path) !== null) return 0;
    const segments = path.split("/");
    if (segments[0] === user) return READ | WRITE;
    let access = 0;
    for (const rule of this.#rules) {
      let wanted = 0;
      if ((access & READ) === 0 && (rule.readAll || rule.read.has(user))) wanted |= READ;
      if ((access & WRITE) === 0 && (rule.writeAll || rule.write.has(user))) wanted |= WRITE;
      if (wanted === 0 || !matchSegments(rule.segments, segments)) continue;
      access |= wanted;
      if (access === (READ | WRITE)) break;
    }
    return access;
  }
}

export type { Acl };

/**
 * Reads and compiles an ACL file. Every problem — missing, unreadable, oversize, not JSON, a bad
 * rule — is a `StoaError("config")` naming the file, the rule and what is wrong.
 * @example
 * const acl = loadAcl("/etc/stoa/hotlink-acl.json");
 * if (!acl.canWrite(user, open.pth)) reject(open.sid, "no write access");
 */
export function loadAcl(file: string): Acl {
  return new Acl(compile(readAclFile(file), file), file);
}

/**
 * Compiles ACL rules from JSON text or an already parsed value; `StoaError("config")` when they
 * are not valid. `where` names the source in error messages.
 * @example
 * const ownerOnly = parseAcl({ rules: [] }); // when the server runs without --acl
 */
export function parseAcl(json: unknown, where = "ACL"): Acl {
  let value = json;
  if (typeof json === "string") {
    try {
      value = JSON.parse(json);
    } catch (err) {
      const detail = describeError(err);
      throw new StoaError("config", `${where} is not valid JSON (${detail}); fix its syntax`);
    }
  }
  return new Acl(compile(value, where), undefined);
}

function readAclFile(file: string): unknown {
  const text = readSmallFile(file, { maxBytes: MAX_ACL_FILE_BYTES, what: "ACL file", fix: "check the --acl path" });
  try {
    return JSON.parse(text);
  } catch (err) {
    const detail = describeError(err);
    throw new StoaError("config", `ACL file ${file} is not valid JSON (${detail}); fix its syntax`);
  }
}

function compile(json: unknown, where: string): Rule[] {
  const result = AclFile.safeParse(json);
  if (!result.success) {
    const issues = result.error.issues.slice(0, 3).map((issue) => {
      const at = issue.path.length > 0 ? `at ${issue.path.map(String).join(".")}: ` : "";
      return at + issue.message;
    });
    const name = where === "ACL" ? "the ACL" : `ACL file ${where}`;
    throw new StoaError(
      "config",
      `${name} is not valid (${issues.join("; ")}); expected {"rules": [{"pattern": "...", "read": [users or "*"], "write": [...]}]}`,
    );
  }
  return result.data.rules.map((rule) => ({
    segments: compilePattern(rule.pattern),
    readAll: rule.read.includes("*"),
    writeAll: rule.write.includes("*"),
    read: new Set(rule.read),
    write: new Set(rule.write),
  }));
}

function compilePattern(pattern: string): Segment[] {
  const segments: Segment[] = [];
  for (const text of pattern.split("/")) {
    if (text === "**") {
      // `**/**` matches exactly what `**` does; collapsing keeps the matcher's work down.
      if (segments.at(-1)?.kind !== GLOBSTAR) segments.push({ kind: GLOBSTAR, text: "**" });
    } else {
      segments.push({ kind: text.includes("*") || text.includes("?") ? GLOB : LITERAL, text });
    }
  }
  return segments;
}

/**
 * Greedy wildcard matching over segments with `**` as the star. Only the latest `**` is ever
 * backtracked to: an earlier one can absorb whatever a later retry would give it, so each
 * pattern position is retried at most once per path position — O(pattern × path).
 */
function matchSegments(pattern: Segment[], path: string[]): boolean {
  let t = 0;
  let p = 0;
  let starT = -1;
  let starP = 0;
  while (p < path.length) {
    const token = pattern[t];
    if (token !== undefined && token.kind === GLOBSTAR) {
      starT = t++;
      starP = p;
    } else if (token !== undefined && matchSegment(token, path[p] as string)) {
      t++;
      p++;
    } else if (starT >= 0) {
      t = starT + 1;
      p = ++starP;
    } else {
      return false;
    }
  }
  while (t < pattern.length && pattern[t]?.kind === GLOBSTAR) t++;
  return t === pattern.length;
}

function matchSegment(token: Segment, text: string): boolean {
  if (token.kind === LITERAL) return token.text === text;
  return matchGlob(token.text, text);
}

// A text with surrogate pairs is matched by code points, so that `?` is one character.
const SURROGATE = /[\ud800-\udfff]/;

/** The same greedy algorithm within one segment: `*` any run of characters, `?` one character. */
function matchGlob(pattern: string, text: string): boolean {
  if (SURROGATE.test(text)) return matchChars(Array.from(pattern), Array.from(text));
  return matchChars(pattern, text);
}

function matchChars(pattern: ArrayLike<string>, text: ArrayLike<string>): boolean {
  let t = 0;
  let p = 0;
  let starT = -1;
  let starP = 0;
  while (p < text.length) {
    const c = pattern[t];
    if (c === "*") {
      starT = t++;
      starP = p;
    } else if (c !== undefined && (c === "?" || c === text[p])) {
      t++;
      p++;
    } else if (starT >= 0) {
      t = starT + 1;
      p = ++starP;
    } else {
      return false;
    }
  }
  while (pattern[t] === "*") t++;
  return t === pattern.length;
}
