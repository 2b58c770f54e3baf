/**
 * The metaserver's client, for publishers (register, confirm, heartbeat, deregister) and
 * subscribers (get, list, lookup by name, tree).
 *
 * Every answer is checked against protocol.ts's schemas. The server's errors come back as
 * `MetaApiError` (a StoaError with the server's `status`, `error` and message intact, e.g.
 * status 404 when a heartbeat finds its registration gone); a metaserver that cannot be reached
 * is `StoaError("io")`, one that does not answer in time `StoaError("timeout")`.
 *
 * With a `token` every request carries `Authorization: Bearer <token>` (never logged, never in
 * a URL). Lists follow `next_cursor` page by page; lookups by name ask for that name only.
 *
 * `watch` follows changes (GET /v1/watch) over one connection: it resolves when the server ends
 * the stream or the caller's signal aborts, and rejects like any request when it cannot be had,
 * when the stream is not one (watch-wire.ts's limits and schemas) or goes silent for
 * `WATCH_IDLE_MS`. Reconnecting is the caller's (stream/follow.ts).
 */
import { StoaError, describeError, errnoCode } from "../core/errors.ts";
import { readBodyLimited } from "../core/http-body.ts";
import { listenerUids } from "../core/listeners.ts";
import { readTokenFile } from "../core/token.ts";
import { existsSync, statSync } from "node:fs";
import { networkInterfaces } from "node:os";
import { join } from "node:path";
import { isValidPubId, nameProblem } from "../stream/names.ts";
import {
  ApiErrorBody,
  CONFIRM_TIMEOUT_MS,
  Health,
  MAX_PAGE_LIMIT,
  META_TOKEN_ENV as TOKEN_ENV,
  META_TOKEN_FILE,
  MetaApiError,
  PublisherInfo,
  PublisherList,
  type RegisterRequest,
  type TreeNode,
  TreeResponse,
} from "./protocol.ts";
import type { z } from "zod";
import { type ChangeEvent, SseDecoder, WATCH_IDLE_MS, watchEventOf } from "./watch-wire.ts";

/** Per-request deadline, by default; a confirmation gets the ping timeout on top. */
const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;
/** Largest answer read: a page of `MAX_PAGE_LIMIT` publishers is about 4 MB of JSON. */
const MAX_RESPONSE_BYTES = 32 * 1024 * 1024;

interface MetaClientOptions {
  /** Deadline of each request (default 10 s). */
  timeoutMs?: number;
  /**
   * Bearer token sent with every request (writes need one unless the server runs --no-auth); a
   * function is asked before each request and may decline (`clientToken`'s local token does).
   */
  token?: MetaToken;
}

/**
 * A client of one metaserver.
 *
 * @example
 * ```ts
 * const meta = new MetaClient("http://[fd00::2]:8090");
 * const me = await meta.register({ name: "lab/temp", host: "fd00::1" });
 * await meta.confirm(me.pub_id);                 // the metaserver pings us through our gateway
 * setInterval(() => meta.heartbeat(me.pub_id), 5_000);
 * const found = await meta.lookup("lab/temp");   // on the subscriber's side
 * ```
 */
export class MetaClient {
  /** The normalized base URL, without a trailing slash. */
  readonly baseUrl: string;
  readonly #timeoutMs: number;
  readonly #token: MetaToken | undefined;

  constructor(baseUrl: string, options: MetaClientOptions = {}) {
    this.baseUrl = normalizeBase(baseUrl);
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    this.#token = options.token;
  }

  /** Registers a publisher (state `pending`); the answer carries its pub_id and URLs. */
  register(request: RegisterRequest): Promise<PublisherInfo> {
    return this.#call("POST", "/v1/publishers", PublisherInfo, request);
  }

  /** Asks the metaserver to ping the publisher through its gateway; `live` on success. */
  confirm(pubId: string): Promise<PublisherInfo> {
    return this.#call("POST", `${publisherPath(pubId)}/confirm`, PublisherInfo, undefined, this.#timeoutMs + CONFIRM_TIMEOUT_MS);
  }

  /** Restarts the registration's TTL clock. A 404 means it is gone: register again. */
  heartbeat(pubId: string): Promise<PublisherInfo> {
    return this.#call("POST", `${publisherPath(pubId)}/heartbeat`, PublisherInfo);
  }

  /** One registration by pub_id (404 → MetaApiError with status 404). */
  get(pubId: string): Promise<PublisherInfo> {
    return this.#call("GET", publisherPath(pubId), PublisherInfo);
  }

  /** One page of publishers named `prefix` or below it, by name, and the cursor of the next (null: last). */
  page(prefix = "", options: { limit?: number; cursor?: string | null } = {}): Promise<PublisherList> {
    return this.#call("GET", `/v1/publishers${listQuery(prefix, options.limit, options.cursor)}`, PublisherList);
  }

  /** Publishers named `prefix` or below it (`a/b` matches `a/b` and `a/b/…`), by name: every page. */
  async list(prefix = ""): Promise<PublisherInfo[]> {
    const out: PublisherInfo[] = [];
    for (let cursor: string | null = null; ; ) {
      const page: PublisherList = await this.page(prefix, { limit: MAX_PAGE_LIMIT, cursor });
      out.push(...page.publishers);
      if (page.next_cursor === null) return out;
      if (page.next_cursor === cursor) throw new StoaError("schema", `the metaserver at ${this.baseUrl} answered the same cursor twice`);
      cursor = page.next_cursor;
    }
  }

  /** The names under `prefix` (all by default) as directory nodes with publishers as leaves: every page, merged. */
  async tree(prefix = ""): Promise<TreeNode[]> {
    const root: TreeNode[] = [];
    for (let cursor: string | null = null; ; ) {
      const page: TreeResponse = await this.#call("GET", `/v1/tree${listQuery(prefix, MAX_PAGE_LIMIT, cursor)}`, TreeResponse);
      mergeTree(root, page.tree);
      if (page.next_cursor === null) return root;
      if (page.next_cursor === cursor) throw new StoaError("schema", `the metaserver at ${this.baseUrl} answered the same cursor twice`);
      cursor = page.next_cursor;
    }
  }

  /** Removes a registration; answers it as it was. */
  deregister(pubId: string): Promise<PublisherInfo> {
    return this.#call("DELETE", publisherPath(pubId), PublisherInfo);
  }

  /** Registrations by state and the TTLs: a publisher heartbeats well within `ttl_ms`. */
  health(): Promise<Health> {
    return this.#call("GET", "/v1/health", Health);
  }

  /** The publisher with exactly this name, or null. */
  async findByName(name: string): Promise<PublisherInfo | null> {
    const problem = nameProblem(name);
    if (problem !== null) throw new StoaError("usage", `invalid publisher name ${JSON.stringify(name.slice(0, 80))}: ${problem}`);
    const { publishers } = await this.#call("GET", `/v1/publishers?name=${encodeURIComponent(name)}`, PublisherList);
    return publishers.find((p) => p.name === name) ?? null;
  }

  /**
   * The publisher with exactly this name, or a StoaError saying what is there instead: the
   * publishers below it when `name` is a directory, or nothing.
   */
  async lookup(name: string): Promise<PublisherInfo> {
    const problem = nameProblem(name);
    if (problem !== null) throw new StoaError("usage", `invalid publisher name ${JSON.stringify(name.slice(0, 80))}: ${problem}`);
    const exact = await this.findByName(name);
    if (exact !== null) return exact;
    const below = await this.page(name, { limit: 5 });
    // Registered between the two requests: the prefix page holds the name itself.
    const meanwhile = below.publishers.find((p) => p.name === name);
    if (meanwhile !== undefined) return meanwhile;
    if (below.publishers.length > 0) {
      const names = below.publishers.map((p) => p.name).join(", ");
      const held = below.next_cursor === null ? `${below.publishers.length}: ${names}` : `more than ${below.publishers.length}: ${names}, …`;
      throw new StoaError("usage", `${name} is a directory, not a publisher; it holds ${held}`);
    }
    throw new StoaError("closed", `no publisher named ${name} is registered at ${this.baseUrl}; is it running?`);
  }

  /**
   * Follows the registrations named `prefix` or below it ("" for all): `onOpen` once the watch
   * is in place (look up from then on and nothing is missed), `onEvent` for each change after.
   * Resolves when the server ends the stream (watch again) or `signal` aborts.
   *
   * @example
   * ```ts
   * const stop = new AbortController();
   * await meta.watch("lab", { onEvent: (e) => console.log(e.type, e.publisher.name), signal: stop.signal });
   * ```
   */
  async watch(
    prefix: string,
    handlers: { onEvent: (event: ChangeEvent) => void; onOpen?: (prefix: string) => void; signal?: AbortSignal },
  ): Promise<void> {
    const path = `/v1/watch${listQuery(prefix)}`;
    const { signal } = handlers;
    if (signal?.aborted) return;
    const stop = new AbortController();
    const onAbort = () => stop.abort();
    signal?.addEventListener("abort", onAbort, { once: true });
    // Until the answer's head: the request deadline; then a silence of WATCH_IDLE_MS.
    let timedOut = false;
    let timer = setTimeout(() => {
      timedOut = true;
      stop.abort();
    }, this.#timeoutMs);
    const quiet = (ms: number) => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        timedOut = true;
        stop.abort();
      }, ms);
    };
    try {
      let response: Response;
      try {
        response = await fetch(this.baseUrl + path, { headers: this.#headers(false, "text/event-stream"), signal: stop.signal, redirect: "error" });
      } catch (err) {
        if (signal?.aborted) return;
        throw this.#transportError(timedOut ? timeoutError() : err, "GET", path, this.#timeoutMs);
      }
      if (!response.ok) throw this.#httpError(response.status, await readCapped(response).catch(() => ""), "GET", path);
      if (!(response.headers.get("content-type") ?? "").startsWith("text/event-stream") || response.body === null) {
        await response.body?.cancel().catch(() => {});
        throw new StoaError("schema", `the metaserver at ${this.baseUrl} answered GET ${path} with something other than an event stream; is it a stoa metaserver of this version?`);
      }
      quiet(WATCH_IDLE_MS);
      const decoder = new SseDecoder();
      const reader = response.body.getReader();
      try {
        for (;;) {
          let chunk: Awaited<ReturnType<typeof reader.read>>;
          try {
            chunk = await reader.read();
          } catch (err) {
            if (signal?.aborted) return;
            if (timedOut) {
              throw new StoaError("timeout", `the watch at ${this.baseUrl} sent nothing for ${WATCH_IDLE_MS / 1000}s, not even a keepalive; watch again`);
            }
            throw this.#transportError(err, "GET", path, this.#timeoutMs);
          }
          if (chunk.done) return;
          quiet(WATCH_IDLE_MS);
          for (const sse of decoder.push(chunk.value)) {
            const event = watchEventOf(sse);
            if (event === null) continue;
            if (event.type === "watching") handlers.onOpen?.(event.prefix);
            else handlers.onEvent(event);
            if (signal?.aborted) return;
          }
        }
      } finally {
        reader.cancel().catch(() => {});
      }
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      stop.abort();
    }
  }

  #headers(json: boolean, accept?: string): Record<string, string> {
    const headers: Record<string, string> = json ? { "Content-Type": "application/json" } : {};
    if (accept !== undefined) headers.Accept = accept;
    const token = typeof this.#token === "function" ? this.#token() : this.#token;
    if (token !== undefined) headers.Authorization = `Bearer ${token}`;
    return headers;
  }

  /** A non-2xx answer: the server's own error when it sent one, else what the status suggests. */
  #httpError(status: number, text: string, method: string, path: string): MetaApiError {
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    const error = ApiErrorBody.safeParse(json);
    if (error.success) return new MetaApiError(error.data.error, error.data.message, status);
    return new MetaApiError(
      `http_${status}`,
      `the metaserver at ${this.baseUrl} answered ${method} ${path} with HTTP ${status}; is that URL a stoa metaserver?`,
      status,
    );
  }

  async #call<S extends z.ZodType>(
    method: string,
    path: string,
    schema: S,
    body?: unknown,
    timeoutMs = this.#timeoutMs,
  ): Promise<z.output<S>> {
    const url = this.baseUrl + path;
    let response: Response;
    try {
      response = await fetch(url, {
        method,
        headers: this.#headers(body !== undefined),
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(timeoutMs),
        redirect: "error",
      });
    } catch (err) {
      throw this.#transportError(err, method, path, timeoutMs);
    }
    let text: string;
    try {
      text = await readCapped(response);
    } catch (err) {
      throw err instanceof StoaError ? err : this.#transportError(err, method, path, timeoutMs);
    }
    if (!response.ok) throw this.#httpError(response.status, text, method, path);
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    const parsed = schema.safeParse(json);
    if (!parsed.success) {
      throw new StoaError(
        "schema",
        `the metaserver at ${this.baseUrl} sent an unexpected answer to ${method} ${path}; is that URL a stoa metaserver of this version?`,
      );
    }
    return parsed.data;
  }

  #transportError(err: unknown, method: string, path: string, timeoutMs: number): StoaError {
    if (err instanceof Error && (err.name === "TimeoutError" || err.name === "AbortError")) {
      return new StoaError("timeout", `the metaserver at ${this.baseUrl} did not answer ${method} ${path} within ${timeoutMs / 1000}s`, {
        cause: err,
      });
    }
    const code = errnoCode(err);
    const reason = code === "ConnectionRefused" || code === "ECONNREFUSED" ? "connection refused" : describeError(err);
    return new StoaError("io", `cannot reach the metaserver at ${this.baseUrl}: ${reason}; is stoa meta (or stoa up) running there?`, {
      cause: err,
    });
  }
}

function timeoutError(): Error {
  const err = new Error("timed out");
  err.name = "TimeoutError";
  return err;
}

function listQuery(prefix: string, limit?: number, cursor?: string | null): string {
  const params = new URLSearchParams();
  if (prefix !== "") params.set("prefix", prefix);
  if (limit !== undefined) params.set("limit", String(limit));
  if (cursor !== undefined && cursor !== null) params.set("cursor", cursor);
  const text = params.toString();
  return text === "" ? "" : `?${text}`;
}

/** Adds one page's tree to `into`: a directory met again on a later page gets the new children. */
function mergeTree(into: TreeNode[], page: readonly TreeNode[]): void {
  const byPath = new Map(into.map((n) => [n.path, n]));
  for (const node of page) {
    const same = byPath.get(node.path);
    if (same?.children !== undefined && node.children !== undefined) mergeTree(same.children, node.children);
    else into.push(node);
  }
}

function publisherPath(pubId: string): string {
  // Checked here too: "..", say, would be resolved away by URL parsing into another route.
  if (!isValidPubId(pubId)) {
    throw new StoaError("usage", `pub_id ${JSON.stringify(pubId.slice(0, 80))} is not valid: 1-64 characters of [A-Za-z0-9._-] starting with a letter or digit`);
  }
  return `/v1/publishers/${pubId}`;
}

function normalizeBase(raw: string): string {
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? raw : `http://${raw}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new StoaError("usage", `invalid metaserver URL ${JSON.stringify(raw.slice(0, 200))}; expected e.g. http://[fd00::2]:8090`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new StoaError("usage", `the metaserver URL must be http:// or https://, got ${JSON.stringify(raw.slice(0, 200))}`);
  }
  if (url.search !== "" || url.hash !== "") {
    throw new StoaError("usage", `the metaserver URL takes no ?query or #fragment: ${JSON.stringify(raw.slice(0, 200))}`);
  }
  return `${url.origin}${url.pathname.replace(/\/+$/, "")}`;
}

async function readCapped(response: Response): Promise<string> {
  const tooLarge = () => new StoaError("too_large", `the metaserver's answer is larger than ${MAX_RESPONSE_BYTES} bytes`);
  const bytes = await readBodyLimited(response, MAX_RESPONSE_BYTES, tooLarge);
  return bytes === null ? "" : new TextDecoder().decode(bytes);
}

/** A token, or a function asked before each request that may decline (undefined: no token). */
export type MetaToken = string | (() => string | undefined);

/**
 * The token a client sends, first match wins: `tokenFile` (--token-file), `STOA_META_TOKEN`,
 * else `<stateDir>/meta.token` — the token `stoa meta`/`stoa up` keep there — but only when the
 * metaserver is on this host (a loopback address or one of this host's own), so a local admin
 * token is never sent to another machine by accident, and only while every TCP listener a
 * connection to it could reach belongs to the token file's owner (core/listeners.ts): on a shared
 * host another user may hold the port while the metaserver is down. That last check runs before
 * each request (the metaserver may start after the client). Undefined when there is none.
 */
export function clientToken(options: {
  metaUrl: string;
  tokenFile?: string;
  stateDir: string;
  env?: NodeJS.ProcessEnv;
  /** Where the check looks (tests); core/listeners.ts by default. */
  listeners?: (host: string, port: number) => number[] | null;
}): MetaToken | undefined {
  if (options.tokenFile !== undefined) return readTokenFile(options.tokenFile);
  const env = options.env ?? process.env;
  const fromEnv = env[TOKEN_ENV]?.trim();
  if (fromEnv) return fromEnv;
  const file = join(options.stateDir, META_TOKEN_FILE);
  const url = new URL(normalizeBase(options.metaUrl));
  if (!existsSync(file) || !isThisHost(url.hostname)) return undefined;
  const owner = statSync(file).uid;
  const token = readTokenFile(file);
  const port = Number(url.port || (url.protocol === "https:" ? 443 : 80));
  const hosts = url.hostname === "localhost" ? ["::1", "127.0.0.1"] : [url.hostname];
  const uidsOf = options.listeners ?? listenerUids;
  return () => {
    for (const host of hosts) {
      const uids = uidsOf(host, port);
      // None listening: nothing to send it to (the request fails); any other owner: not ours.
      if (uids === null || uids.length === 0 || uids.some((uid) => uid !== owner)) return undefined;
    }
    return token;
  };
}

function isThisHost(hostname: string): boolean {
  const bare = hostname.startsWith("[") ? hostname.slice(1, -1) : hostname;
  if (bare === "localhost" || bare === "::1" || /^127\./.test(bare)) return true;
  const own = Object.values(networkInterfaces()).flatMap((list) => (list ?? []).map((a) => a.address.toLowerCase()));
  return own.includes(bare.toLowerCase());
}
