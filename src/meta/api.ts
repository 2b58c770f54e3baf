/**
 * The metaserver's routes (hono) over a `MetaStore`: the /v1 API of protocol.ts, plus /metrics.
 *
 * Contract:
 * - Every answer is JSON (but /metrics); every failure is `{error, message}` with the status
 *   protocol.ts maps its code to. Nothing a client sends can cause a 5xx: bodies are capped at
 *   `MAX_BODY_BYTES` while they stream in, parsed, then validated by the protocol's schemas.
 * - Confirmation reads the registration, lets go of the store, pings through the gateway, and
 *   only then writes the outcome — and only onto the same registration (its generation). Store
 *   calls are synchronous, so no request ever waits behind another one's ping. Two confirms of
 *   one registration share one ping; at most `MAX_CONCURRENT_CONFIRMS` run at once, and each
 *   registration may start at most `CONFIRM_RATE_LIMIT` per `CONFIRM_RATE_WINDOW_MS`.
 * - Writes need a writer (auth.ts): 401 without a known token, 403 for a registration another
 *   token owns (the store checks ownership in the same synchronous step as the write). Tokens
 *   are never logged: only their caller kind is known past the check.
 * - Lists are pages (at most `MAX_PAGE_LIMIT` publishers), written out as a stream of chunks of
 *   `LIST_CHUNK` entries rather than one string.
 */
import { Hono } from "hono";
import type { Context } from "hono";
import { routePath } from "hono/route";
import { readJsonBody } from "../core/http-body.ts";
import type { Logger } from "../core/log.ts";
import { CONTENT_TYPE, type Registry } from "../core/metrics.ts";
import { isValidPubId, nameProblem, newPubId } from "../stream/names.ts";
import type { Authority } from "./auth.ts";
import { fdPressure } from "../core/fdlimit.ts";
import type { Pinger } from "./confirm.ts";
import {
  type ApiErrorCode,
  AUTH_REALM,
  CONFIRM_RATE_LIMIT,
  CONFIRM_RATE_WINDOW_MS,
  WRITER_CONFIRM_RATE_LIMIT,
  encodeCursor,
  type Health,
  MAX_BODY_BYTES,
  MAX_CONCURRENT_CONFIRMS,
  MetaApiError,
  parseCursor,
  parseLimit,
  parsePrefix,
  type PublisherInfo,
  RegisterRequest,
} from "./protocol.ts";
import type { Writer } from "./owners.ts";
import { type Store, treeOf } from "./store.ts";
import { watchHandler } from "./watch.ts";

/** Entries per chunk of a streamed list page. */
const LIST_CHUNK = 256;
/** A confirmation lease outlives the ping timeout by this much (the write after the ping). */
const LEASE_MARGIN_MS = 1_000;
/** How often a confirmation waiting on another metaserver's ping looks at the outcome. */
const LEASE_POLL_MS = 50;

/** What the server adds to each request: the client's address (for --no-auth quotas). */
type ApiEnv = {
  /** The request's connection (server.ts): the client's address, asked only when needed; `keepOpen` lifts the idle timeout for a streaming response (watch.ts). */
  Bindings: { ip?: () => string | undefined; keepOpen?: () => void };
  Variables: { writer: Writer };
};

interface ApiOptions {
  store: Store;
  log: Logger;
  metrics: Registry;
  ttlMs: number;
  deregisterAfterMs: number;
  confirmTimeoutMs: number;
  ping: Pinger;
  /** Aborted when the server shuts down: pings in flight end, their requests answer 503. */
  shutdown: AbortSignal;
  /** Who may write and read. */
  auth: Authority;
  /** Milliseconds, for the confirm rate limit (tests move time by hand). */
  clock?: () => number;
}

type ConfirmResult = { ok: true; info: PublisherInfo } | { ok: false; error: MetaApiError };

const FIELD_CODES: Record<string, ApiErrorCode> = {
  name: "bad_name",
  pub_id: "bad_pub_id",
  host: "bad_host",
  ports: "bad_ports",
};

/**
 * The metaserver's hono app; serve it with `Bun.serve({ fetch: app.fetch })` (see server.ts).
 */
export function createApi(options: ApiOptions): Hono<ApiEnv> {
  const { store, log, metrics, auth } = options;
  const now = options.clock ?? Date.now;
  const requests = metrics.counter("stoa_meta_requests_total", "HTTP requests answered, by route and status.", [
    "route",
    "status",
  ]);
  const confirmations = metrics.counter("stoa_meta_confirmations_total", "Confirmation pings, by result.", ["result"]);
  const confirmSeconds = metrics.histogram(
    "stoa_meta_confirm_seconds",
    "Duration of confirmation pings through gateways.",
    [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 3, 10],
  );
  const publishers = metrics.gauge("stoa_meta_publishers", "Registrations held, by state.", ["state"]);
  const refused = metrics.counter("stoa_meta_auth_refused_total", "Requests refused by authentication, by status.", ["status"]);
  const inFlight = new Map<string, Promise<ConfirmResult>>();
  /** Confirmation pings started per pub_id in the current window. */
  const confirmWindows = new Map<string, { start: number; n: number }>();

  const app = new Hono<ApiEnv>();

  // One middleware for every request (each one more is a closure and an await per request):
  // counted by route and status once answered; an oversize body refused on every route alike
  // (only registration reads one); then authentication before anything is read or looked up —
  // writes need a writer, reads a reader when the server has a read token. Health and metrics
  // stay open for probes.
  app.use("*", async (c, next) => {
    try {
      const read = c.req.method === "GET" || c.req.method === "HEAD";
      // (A GET's headers are not even looked at for it: materializing them costs a lookup 4 µs.)
      if (!read && Number(c.req.header("content-length") ?? "0") > MAX_BODY_BYTES) throw tooLarge();
      authenticate(c, !read);
    } catch (err) {
      // Answered as onError answers, counted here like any other answer.
      c.res = answerError(err as Error, c);
      count(c);
      return c.res;
    }
    await next();
    count(c);
  });

  function answerError(err: Error, c: Context<ApiEnv>): Response {
    if (err instanceof MetaApiError) {
      const headers: Record<string, string> | undefined = err.status === 401 ? { "WWW-Authenticate": `Bearer realm="${AUTH_REALM}"` } : undefined;
      return json(err.body(), err.status, headers);
    }
    log.error("request failed", { method: c.req.method, path: c.req.path.slice(0, 200), error: err });
    return json({ error: "internal", message: `internal error: ${err.message}` }, 500);
  }

  function count(c: Context<ApiEnv>): void {
    const route = routePath(c, -1);
    // Unmatched requests end on the catch-all middleware: one label, whatever the path.
    requests.inc({ route: route.startsWith("/v1/") || route === "/metrics" ? route : "unmatched", status: c.res.status });
  }

  function authenticate(c: Context<ApiEnv>, write: boolean): void {
    if (!write && !auth.readRequired) return;
    const path = c.req.path;
    if (!path.startsWith("/v1/") || path === "/v1/health") return;
    const caller = auth.caller(c.req.header("authorization"), c.env?.ip?.() ?? "unknown");
    if (caller.kind === "none") {
      refused.inc({ status: 401 });
      throw unauthorized(caller.why, write);
    }
    if (caller.kind === "reader" && write) {
      refused.inc({ status: 403 });
      throw new MetaApiError("forbidden", "this token may only read; writes need the metaserver's admin token or a writer token from its --tokens-file");
    }
    if (caller.kind === "writer") c.set("writer", caller.writer);
  }

  app.post("/v1/publishers", async (c) => {
    const body = await readJson(c);
    const parsed = RegisterRequest.safeParse(body);
    if (!parsed.success) throw validationError(parsed.error.issues, body);
    const pubId = parsed.data.pub_id ?? newPubId();
    const { info, created } = await store.register({ ...parsed.data, pub_id: pubId }, c.get("writer"));
    log.info(created ? "registered" : "registered again", { publisher: info.name, pub_id: pubId, host: info.host });
    return json(info, created ? 201 : 200, { Location: `/v1/publishers/${pubId}` });
  });

  app.post("/v1/publishers/:pub_id/confirm", async (c) => {
    const pubId = pubIdParam(c.req.param("pub_id"));
    if (!(await store.authorize(pubId, c.get("writer")))) throw notFound(pubId);
    const current = await store.get(pubId);
    if (current === null) throw notFound(pubId);
    const key = `${pubId}#${current.generation}`;
    let pending = inFlight.get(key);
    if (pending === undefined) {
      if (inFlight.size >= MAX_CONCURRENT_CONFIRMS) {
        throw new MetaApiError("busy", `${MAX_CONCURRENT_CONFIRMS} confirmations are already running; try again in a few seconds`);
      }
      // A ping needs a descriptor; one that fails for want of ours must not remove the publisher.
      if (fdPressure()) throw outOfFds();
      const writer = c.get("writer");
      if (!writer.admin) {
        takeConfirmSlot(`w:${writer.owner}`, WRITER_CONFIRM_RATE_LIMIT, `this writer started ${WRITER_CONFIRM_RATE_LIMIT} confirmations`);
      }
      takeConfirmSlot(`p:${pubId}`, CONFIRM_RATE_LIMIT, `publisher ${pubId} was confirmed ${CONFIRM_RATE_LIMIT} times`);
      pending = confirm(current.info, current.generation).finally(() => inFlight.delete(key));
      inFlight.set(key, pending);
    }
    const result = await pending;
    if (!result.ok) throw result.error;
    return json(result.info, 200);
  });

  // The network call happens here, between a read and a conditional write: no store state is
  // held across it, so other requests (and the sweeper) run on while it waits. The lease only
  // says who pings (another metaserver over the same Redis waits for that ping's outcome); it
  // ends by itself after the ping timeout.
  async function confirm(info: PublisherInfo, generation: number): Promise<ConfirmResult> {
    const leaseMs = options.confirmTimeoutMs + LEASE_MARGIN_MS;
    if (!(await store.lease(info.pub_id, generation, leaseMs))) return await confirmedElsewhere(info, generation, leaseMs);
    try {
      return await ping(info, generation);
    } finally {
      await store.release(info.pub_id, generation).catch(() => {});
    }
  }

  async function ping(info: PublisherInfo, generation: number): Promise<ConfirmResult> {
    const started = performance.now();
    const outcome = await options.ping(
      { host: info.host, port: info.ports.ping, pubId: info.pub_id },
      { timeoutMs: options.confirmTimeoutMs, signal: options.shutdown },
    );
    confirmSeconds.observe((performance.now() - started) / 1000);
    if (options.shutdown.aborted) return { ok: false, error: shuttingDown() };
    if (outcome.ok) {
      confirmations.inc({ result: "ok" });
      const live = await store.markLive(info.pub_id, generation);
      if (live !== null) {
        log.info("confirmed", { publisher: info.name, pub_id: info.pub_id, host: info.host });
        return { ok: true, info: live };
      }
      return { ok: false, error: await changedMeanwhile(info.pub_id) };
    }
    if (fdPressure()) {
      // Bun reports its own EMFILE as a refused connection (core/fdlimit.ts): not the publisher's fault.
      confirmations.inc({ result: "out_of_fds" });
      return { ok: false, error: outOfFds() };
    }
    confirmations.inc({ result: outcome.timedOut ? "timeout" : "failed" });
    const removed = await store.removeIf(info.pub_id, generation);
    log.warn("confirmation failed", { publisher: info.name, pub_id: info.pub_id, host: info.host, reason: outcome.reason });
    const what = removed ? "so its registration was removed" : "and its registration had changed meanwhile";
    return {
      ok: false,
      error: new MetaApiError(
        "confirm_failed",
        `could not confirm ${info.name} (pub_id ${info.pub_id}), ${what}: ${outcome.reason}`,
        outcome.timedOut ? 504 : 502,
      ),
    };
  }

  /**
   * Another metaserver holds the lease: wait for its ping's outcome (the registration turns
   * live, or goes away). Its lease given back or ended (it died mid-ping) with the registration
   * still unconfirmed, this metaserver takes the lease and pings itself.
   */
  async function confirmedElsewhere(info: PublisherInfo, generation: number, leaseMs: number): Promise<ConfirmResult> {
    confirmations.inc({ result: "elsewhere" });
    const deadline = now() + leaseMs;
    for (;;) {
      await Bun.sleep(LEASE_POLL_MS);
      const outcome = await outcomeElsewhere(info, generation);
      if (outcome !== null) return outcome;
      if (options.shutdown.aborted) return { ok: false, error: shuttingDown() };
      if (await store.lease(info.pub_id, generation, leaseMs)) {
        try {
          // The other metaserver may have written and given the lease back just now.
          return (await outcomeElsewhere(info, generation)) ?? (await ping(info, generation));
        } finally {
          await store.release(info.pub_id, generation).catch(() => {});
        }
      }
      if (now() >= deadline) {
        return { ok: false, error: new MetaApiError("busy", `publisher ${info.pub_id} is being confirmed by another metaserver; confirm again in a few seconds`) };
      }
    }
  }

  /** What another metaserver's ping made of the registration: live, gone, or null (still pending). */
  async function outcomeElsewhere(info: PublisherInfo, generation: number): Promise<ConfirmResult | null> {
    const found = await store.get(info.pub_id);
    if (found === null || found.generation !== generation) {
      return {
        ok: false,
        error: new MetaApiError(
          "confirm_failed",
          `could not confirm ${info.name} (pub_id ${info.pub_id}): another metaserver pinged it, and its registration was removed or replaced`,
          502,
        ),
      };
    }
    return found.info.state === "live" ? { ok: true, info: found.info } : null;
  }

  function shuttingDown(): MetaApiError {
    return new MetaApiError("shutting_down", "the metaserver is shutting down; confirm again once it is back");
  }

  /** Counts one confirmation ping of `pubId` against its rate limit, or throws 429. */
  function takeConfirmSlot(key: string, limit: number, what: string): void {
    const t = now();
    if (confirmWindows.size > 10_000) {
      for (const [id, w] of confirmWindows) if (t - w.start >= CONFIRM_RATE_WINDOW_MS) confirmWindows.delete(id);
    }
    let window = confirmWindows.get(key);
    if (window === undefined || t - window.start >= CONFIRM_RATE_WINDOW_MS) {
      window = { start: t, n: 0 };
      confirmWindows.set(key, window);
    }
    if (window.n >= limit) {
      const wait = Math.ceil((window.start + CONFIRM_RATE_WINDOW_MS - t) / 1000);
      throw new MetaApiError("rate_limited", `${what} in the last ${CONFIRM_RATE_WINDOW_MS / 1000}s, the limit; try again in ${wait}s`);
    }
    window.n++;
  }

  function outOfFds(): MetaApiError {
    return new MetaApiError("out_of_fds", "server out of file descriptors; the registration is kept, confirm again shortly");
  }

  async function changedMeanwhile(pubId: string): Promise<MetaApiError> {
    return (await store.get(pubId)) === null
      ? new MetaApiError("not_found", `publisher ${pubId} was deregistered while it was being confirmed`)
      : new MetaApiError("changed", `publisher ${pubId} registered again while it was being confirmed; confirm again`);
  }

  app.post("/v1/publishers/:pub_id/heartbeat", async (c) => {
    const pubId = pubIdParam(c.req.param("pub_id"));
    const info = await store.heartbeat(pubId, c.get("writer"));
    if (info === null) throw notFound(pubId);
    return json(info, 200);
  });

  app.get("/v1/publishers/:pub_id", async (c) => {
    const pubId = pubIdParam(c.req.param("pub_id"));
    const found = await store.get(pubId);
    if (found === null) throw notFound(pubId);
    return json(found.info, 200);
  });

  app.get("/v1/publishers", async (c) => {
    // One parse of the query for all its parameters (each c.req.query(k) parses it again).
    const query = c.req.query();
    const name = query.name;
    if (name !== undefined) {
      if (query.prefix !== undefined || query.cursor !== undefined) {
        throw new MetaApiError("bad_request", "name= looks up one publisher; it goes without prefix= and cursor=");
      }
      const found = await store.byName(parseName(name));
      return json({ publishers: found === null ? [] : [found], next_cursor: null }, 200);
    }
    const prefix = parsePrefix(query.prefix);
    const page = await store.page(prefix, parseLimit(query.limit), parseCursor(query.cursor));
    return streamedList(page.publishers, page.next === null ? null : encodeCursor(page.next));
  });

  app.get("/v1/tree", async (c) => {
    const prefix = parsePrefix(c.req.query("prefix"));
    const page = await store.page(prefix, parseLimit(c.req.query("limit")), parseCursor(c.req.query("cursor")));
    return json({ tree: treeOf(page.publishers), next_cursor: page.next === null ? null : encodeCursor(page.next) }, 200);
  });

  app.delete("/v1/publishers/:pub_id", async (c) => {
    const pubId = pubIdParam(c.req.param("pub_id"));
    const removed = await store.remove(pubId, c.get("writer"));
    if (removed === null) throw notFound(pubId);
    log.info("deregistered", { publisher: removed.name, pub_id: pubId });
    return json(removed, 200);
  });

  app.get("/v1/health", async () => {
    const health: Health = {
      status: "ok",
      publishers: await store.counts(),
      ttl_ms: options.ttlMs,
      deregister_after_ms: options.deregisterAfterMs,
      store: store.description,
    };
    return json(health, 200);
  });

  app.get("/metrics", async () => {
    for (const [state, n] of Object.entries(await store.counts())) publishers.set({ state }, n);
    return new Response(metrics.render(), { headers: { "Content-Type": CONTENT_TYPE } });
  });

  app.get("/v1/watch", watchHandler({ store, log, metrics, shutdown: options.shutdown }));

  app.notFound((c) => {
    const route = `${c.req.method} ${new URL(c.req.url).pathname}`.slice(0, 200);
    return json({ error: "not_found", message: `no route ${route}; the API is under /v1 (try GET /v1/health)` }, 404);
  });

  app.onError(answerError);

  return app;
}

const JSON_TYPE = { "Content-Type": "application/json; charset=utf-8" };
/** One Headers for every plain JSON answer: a Response copies it, which costs less than building one from an object. */
const JSON_HEADERS = new Headers(JSON_TYPE);

function json(data: unknown, status: number, headers?: Record<string, string>): Response {
  return new Response(JSON.stringify(data), { status, headers: headers === undefined ? JSON_HEADERS : { ...JSON_TYPE, ...headers } });
}

/** One page of publishers as a JSON stream, chunk by chunk: never one string of the whole page. */
function streamedList(publishers: PublisherInfo[], nextCursor: string | null): Response {
  const encoder = new TextEncoder();
  let at = 0;
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      const batch = publishers.slice(at, at + LIST_CHUNK).map((p) => JSON.stringify(p));
      let text = (at === 0 ? '{"publishers":[' : ",") + batch.join(",");
      at += LIST_CHUNK;
      if (at >= publishers.length) text += `],"next_cursor":${JSON.stringify(nextCursor)}}`;
      controller.enqueue(encoder.encode(text));
      if (at >= publishers.length) controller.close();
    },
  });
  return new Response(body, { status: 200, headers: { "Content-Type": "application/json; charset=utf-8" } });
}

function unauthorized(why: "missing" | "garbled" | "unknown", write: boolean): MetaApiError {
  const what = write ? "writes to this metaserver" : "this metaserver's reads";
  const fix =
    "stoa pub on the metaserver's host, run as the same user, finds its token in the state dir (meta.token; " +
    "--state-dir DIR if not the default); otherwise give --token-file with a copy of that file (mode 0600) or a " +
    "writer token, or set STOA_META_TOKEN";
  const said =
    why === "missing"
      ? `${what} need a token: send Authorization: Bearer <token>`
      : why === "garbled"
        ? "the Authorization header is not 'Bearer <token>' with a token of 22-256 printable characters"
        : "the token is not one this metaserver knows";
  return new MetaApiError("unauthorized", `${said}; ${fix}`);
}

function parseName(raw: string): string {
  const problem = nameProblem(raw);
  if (problem !== null) throw new MetaApiError("bad_name", `name ${JSON.stringify(raw.slice(0, 64))}: ${problem}`);
  return raw;
}

function pubIdParam(raw: string): string {
  if (!isValidPubId(raw)) {
    throw new MetaApiError(
      "bad_pub_id",
      `pub_id ${JSON.stringify(raw.slice(0, 80))} is not valid: 1-64 characters of [A-Za-z0-9._-] starting with a letter or digit`,
    );
  }
  return raw;
}

function notFound(pubId: string): MetaApiError {
  return new MetaApiError(
    "not_found",
    `no publisher with pub_id ${pubId} is registered (it may have been removed after missing its heartbeats); register again`,
  );
}

function tooLarge(): MetaApiError {
  return new MetaApiError("too_large", `the request body is larger than ${MAX_BODY_BYTES} bytes`);
}

/** The request body as JSON, read under `MAX_BODY_BYTES` as it streams in. */
function readJson(c: Context): Promise<unknown> {
  return readJsonBody(c.req.raw, MAX_BODY_BYTES, { tooLarge, bad: (why) => new MetaApiError("bad_json", why) });
}

interface Issue {
  code: string;
  path: PropertyKey[];
  message: string;
}

/** The first schema issue as the rule it broke, named after the field. */
function validationError(issues: readonly Issue[], body: unknown): MetaApiError {
  const issue = issues[0];
  if (issue === undefined) return new MetaApiError("bad_request", "the request body does not match the schema");
  const field = issue.path.map(String).join(".");
  const top = String(issue.path[0] ?? "");
  if (field === "" && (typeof body !== "object" || body === null || Array.isArray(body))) {
    return new MetaApiError("bad_request", "the request body must be a JSON object {name, host, pub_id?, ports?}");
  }
  const code = FIELD_CODES[top] ?? "bad_request";
  if (issue.code === "unrecognized_keys") {
    const where = field === "" ? "a registration" : field;
    return new MetaApiError(code, `${issue.message.replace(/^Unrecognized keys?:/, "unknown field")} in ${where}; a registration has name, host, pub_id?, ports?: {service?, string?, ping?}`);
  }
  const value = valueAt(body, issue.path);
  const missing = issue.code === "invalid_type" && value === undefined;
  // Quote what was sent, unless the rule's own message already does.
  const shown = typeof value === "string" ? JSON.stringify(value.slice(0, 80)) : "";
  const subject = shown !== "" && !issue.message.includes(shown) ? `${field} ${shown}` : field;
  const saysField = issue.message.startsWith(`${field} `);
  const message = missing ? `${field} is required` : field === "" || saysField ? issue.message : `${subject}: ${issue.message}`;
  return new MetaApiError(code, message);
}

function valueAt(value: unknown, path: readonly PropertyKey[]): unknown {
  let at = value;
  for (const key of path) {
    if (typeof at !== "object" || at === null) return undefined;
    at = (at as Record<PropertyKey, unknown>)[key];
  }
  return at;
}
