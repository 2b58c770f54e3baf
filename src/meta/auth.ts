/**
 * Who may write to the metaserver (protocol.ts, "Authentication"): the admin token, writer
 * tokens, an optional read token — held as SHA-256 digests only — and how a request's
 * `Authorization` header maps to a caller.
 *
 * Where the admin token comes from, first match wins: `--token-file F`, the environment
 * variable `STOA_META_TOKEN`, else `<state dir>/meta.token`, created (0600, a fresh
 * `stm_` + 32 random bytes) when missing. Writer tokens: `--tokens-file F`, one
 * `sha256:<64 hex digits> [label]` per line (blank lines and `#` comments allowed), e.g.
 *
 *   t=stm_$(head -c 32 /dev/urandom | base64 -w0 | tr '+/' '-_' | tr -d =)
 *   (umask 077; echo "$t" > host-a.token)
 *   echo "sha256:$(printf %s "$t" | sha256sum | cut -d' ' -f1) host-a" >> writers.txt
 *
 * The read token (`--read-token-file F`) is one token file like the admin's.
 */
import { join } from "node:path";
import { StoaError } from "../core/errors.ts";
import { readSmallFile } from "../core/smallfile.ts";
import { bearerToken, ensureTokenFile, readTokenFile, sameDigest, tokenDigest, tokenProblem } from "../core/token.ts";
import { META_TOKEN_ENV as TOKEN_ENV, META_TOKEN_FILE, META_TOKEN_PREFIX } from "./protocol.ts";
import type { Writer } from "./owners.ts";

/** Most writer tokens in a `--tokens-file`: every write compares against all of them. */
export const MAX_WRITER_TOKENS = 1_024;
/** A tokens file larger than this is refused before it is read (1,024 lines fit easily). */
const MAX_TOKENS_FILE_BYTES = 256 * 1024;

/** The digests a metaserver checks, as hex: plain data, so it can be handed to a Worker. */
export interface AuthConfig {
  /** False under --no-auth: nothing is checked. */
  required: boolean;
  admin: string;
  writers: string[];
  /** When set, reads need this token (or the admin's or a writer's). */
  read: string | null;
}

export const NO_AUTH: AuthConfig = { required: false, admin: "", writers: [], read: null };

/** A request's caller; `writer` is what the store records and counts. */
type Caller =
  | { kind: "writer"; writer: Writer }
  | { kind: "reader" }
  | { kind: "none"; why: "missing" | "garbled" | "unknown" };

/**
 * Checks `Authorization` headers against an `AuthConfig`. Every known digest is compared on each
 * request, in constant time per comparison, so timing says neither which one matched nor how much.
 */
export class Authority {
  readonly required: boolean;
  readonly readRequired: boolean;
  /** The owner key of the admin's registrations (`t:<hex>`), "" under --no-auth. */
  readonly adminOwner: string;
  readonly #admin: Buffer;
  #writers: Buffer[];
  readonly #read: Buffer | null;

  constructor(config: AuthConfig) {
    this.required = config.required;
    this.readRequired = config.required && config.read !== null;
    this.adminOwner = config.required ? `t:${config.admin}` : "";
    this.#admin = Buffer.from(config.admin, "hex");
    this.#writers = config.writers.map((hex) => Buffer.from(hex, "hex"));
    this.#read = config.read === null ? null : Buffer.from(config.read, "hex");
  }

  /** Replaces the writer tokens (SIGHUP re-read `--tokens-file`); the admin and read tokens stay. */
  setWriters(writers: readonly string[]): void {
    this.#writers = writers.map((hex) => Buffer.from(hex, "hex"));
  }

  /** The caller of a request with this `Authorization` header (`address`: its source, for --no-auth quotas). */
  caller(header: string | null | undefined, address: string): Caller {
    if (!this.required) return { kind: "writer", writer: { owner: `a:${address}`, admin: false, enforce: false } };
    if (header === null || header === undefined || header === "") return { kind: "none", why: "missing" };
    const token = bearerToken(header);
    if (token === null || tokenProblem(token) !== null) return { kind: "none", why: "garbled" };
    const digest = tokenDigest(token);
    const hex = digest.toString("hex");
    const admin = sameDigest(digest, this.#admin);
    let writer = false;
    for (const known of this.#writers) writer = sameDigest(digest, known) || writer;
    const reader = this.#read !== null && sameDigest(digest, this.#read);
    if (admin) return { kind: "writer", writer: { owner: `t:${hex}`, admin: true, enforce: true } };
    if (writer) return { kind: "writer", writer: { owner: `t:${hex}`, admin: false, enforce: true } };
    if (reader) return { kind: "reader" };
    return { kind: "none", why: "unknown" };
  }
}

interface AuthSources {
  /** --no-auth. */
  noAuth?: boolean;
  tokenFile?: string;
  tokensFile?: string;
  readTokenFile?: string;
  stateDir: string;
  env?: NodeJS.ProcessEnv;
}

/**
 * The `AuthConfig` of a metaserver from its flags, and where its admin token is (for the banner;
 * "the environment" when it came from `STOA_META_TOKEN`). Creates `<state dir>/meta.token` when
 * no token is given. Throws `StoaError("config")` for unusable files.
 */
export function loadAuth(sources: AuthSources): { config: AuthConfig; where: string | null; created: boolean } {
  if (sources.noAuth) {
    if (sources.tokenFile || sources.tokensFile || sources.readTokenFile) {
      throw new StoaError("usage", "--no-auth turns authentication off; it cannot go with --token-file, --tokens-file or --read-token-file");
    }
    return { config: NO_AUTH, where: null, created: false };
  }
  const env = sources.env ?? process.env;
  let token: string;
  let where: string;
  let created = false;
  if (sources.tokenFile !== undefined) {
    token = readTokenFile(sources.tokenFile, "one token on one line");
    where = sources.tokenFile;
  } else if (env[TOKEN_ENV]) {
    token = env[TOKEN_ENV].trim();
    where = `$${TOKEN_ENV}`;
  } else {
    where = join(sources.stateDir, META_TOKEN_FILE);
    ({ token, created } = ensureTokenFile(where, META_TOKEN_PREFIX));
  }
  const problem = tokenProblem(token);
  if (problem !== null) throw new StoaError("config", `the admin token from ${where} is not usable: ${problem}`);
  const writers = sources.tokensFile === undefined ? [] : readWriters(sources.tokensFile);
  const read = sources.readTokenFile === undefined ? null : tokenDigest(readTokenFile(sources.readTokenFile)).toString("hex");
  return { config: { required: true, admin: tokenDigest(token).toString("hex"), writers, read }, where, created };
}

/** The digests of a `--tokens-file` (format above); throws `StoaError("config")` on a bad file. */
export function readWriters(file: string): string[] {
  const text = readSmallFile(file, { maxBytes: MAX_TOKENS_FILE_BYTES, what: "tokens file", fix: "check the --tokens-file path" });
  const out: string[] = [];
  for (const [i, raw] of text.split("\n").entries()) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const m = /^sha256:([0-9a-f]{64})(?:\s+.*)?$/.exec(line);
    if (m?.[1] === undefined) {
      throw new StoaError("config", `tokens file ${file} line ${i + 1}: expected "sha256:<64 lower-case hex digits> [label]" (the SHA-256 of a writer's token)`);
    }
    out.push(m[1]);
  }
  if (out.length > MAX_WRITER_TOKENS) throw new StoaError("config", `tokens file ${file} holds ${out.length} tokens, over the limit of ${MAX_WRITER_TOKENS}`);
  return out;
}
