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
 *   one registration share one ping; at most `MAX_CONCURRENT_CONFIRMS` run at once.
 */
import { Hono } from "hono";
import type { Context } from "hono";
import { routePath } from "hono/route";
import type { Logger } from "../core/log.ts";
import { CONTENT_TYPE, type Registry } from "../core/metrics.ts";
import { isValidPubId, newPubId } from "../stream/names.ts";
import type { Pinger } from "./confirm.ts";
import {
  type ApiErrorCode,
  type Health,
  MAX_BODY_BYTES,
  MAX_CONCURRENT_CONFIRMS,
  MetaApiError,
  parsePrefix,
  type PublisherInfo,
  RegisterRequest,
} from "./protocol.ts";
import type { MetaStore } from "./store.ts";

export interface ApiOptions {
  store: MetaStore;
  log: Logger;
  metrics: Registry;
  ttlMs: number;
  deregisterAfterMs: number;
  confirmTimeoutMs: number;
  ping: Pinger;
  /** Aborted when the server shuts down: pings in flight end, their requests answer 503. */
  shutdown: AbortSignal;
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
export function createApi(options: ApiOptions): Hono {
  const { store, log, metrics } = options;
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
  const inFlight = new Map<string, Promise<ConfirmResult>>();

  const app = new Hono();

  app.use("*", async (c, next) => {
    await next();
    const route = routePath(c, -1);
    // Unmatched requests end on the catch-all middleware: one label, whatever the path.
    requests.inc({ route: route.startsWith("/v1/") || route === "/metrics" ? route : "unmatched", status: c.res.status });
  });

  // Only registration reads a body, but an oversize one is refused on every route alike.
  app.use("*", async (c, next) => {
    if (Number(c.req.header("content-length") ?? "0") > MAX_BODY_BYTES) throw tooLarge();
    await next();
  });

  app.post("/v1/publishers", async (c) => {
    const body = await readJson(c);
    const parsed = RegisterRequest.safeParse(body);
    if (!parsed.success) throw validationError(parsed.error.issues, body);
    const pubId = parsed.data.pub_id ?? newPubId();
    const { info, created } = store.register({ ...parsed.data, pub_id: pubId });
    log.info(created ? "registered" : "registered again", { publisher: info.name, pub_id: pubId, host: info.host });
    return json(info, created ? 201 : 200, { Location: `/v1/publishers/${pubId}` });
  });

  app.post("/v1/publishers/:pub_id/confirm", async (c) => {
    const pubId = pubIdParam(c.req.param("pub_id"));
    const current = store.get(pubId);
    if (current === null) throw notFound(pubId);
    const key = `${pubId}#${current.generation}`;
    let pending = inFlight.get(key);
    if (pending === undefined) {
      if (inFlight.size >= MAX_CONCURRENT_CONFIRMS) {
        throw new MetaApiError("busy", `${MAX_CONCURRENT_CONFIRMS} confirmations are already running; try again in a few seconds`);
      }
      pending = confirm(current.info, current.generation).finally(() => inFlight.delete(key));
      inFlight.set(key, pending);
    }
    const result = await pending;
    if (!result.ok) throw result.error;
    return json(result.info, 200);
  });

  // The network call happens here, between a read and a conditional write: no store state is
  // held across it, so other requests (and the sweeper) run on while it waits.
  async function confirm(info: PublisherInfo, generation: number): Promise<ConfirmResult> {
    const started = performance.now();
    const outcome = await options.ping(
      { host: info.host, port: info.ports.ping, pubId: info.pub_id },
      { timeoutMs: options.confirmTimeoutMs, signal: options.shutdown },
    );
    confirmSeconds.observe((performance.now() - started) / 1000);
    if (options.shutdown.aborted) {
      return { ok: false, error: new MetaApiError("shutting_down", "the metaserver is shutting down; confirm again once it is back") };
    }
    if (outcome.ok) {
      confirmations.inc({ result: "ok" });
      const live = store.markLive(info.pub_id, generation);
      if (live !== null) {
        log.info("confirmed", { publisher: info.name, pub_id: info.pub_id, host: info.host });
        return { ok: true, info: live };
      }
      return { ok: false, error: changedMeanwhile(info.pub_id) };
    }
    confirmations.inc({ result: outcome.timedOut ? "timeout" : "failed" });
    const removed = store.removeIf(info.pub_id, generation);
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

  function changedMeanwhile(pubId: string): MetaApiError {
    return store.get(pubId) === null
      ? new MetaApiError("not_found", `publisher ${pubId} was deregistered while it was being confirmed`)
      : new MetaApiError("changed", `publisher ${pubId} registered again while it was being confirmed; confirm again`);
  }

  app.post("/v1/publishers/:pub_id/heartbeat", (c) => {
    const pubId = pubIdParam(c.req.param("pub_id"));
    const info = store.heartbeat(pubId);
    if (info === null) throw notFound(pubId);
    return json(info, 200);
  });

  app.get("/v1/publishers/:pub_id", (c) => {
    const pubId = pubIdParam(c.req.param("pub_id"));
    const found = store.get(pubId);
    if (found === null) throw notFound(pubId);
    return json(found.info, 200);
  });

  app.get("/v1/publishers", (c) => json({ publishers: store.list(parsePrefix(c.req.query("prefix"))) }, 200));

  app.get("/v1/tree", (c) => json({ tree: store.tree(parsePrefix(c.req.query("prefix"))) }, 200));

  app.delete("/v1/publishers/:pub_id", (c) => {
    const pubId = pubIdParam(c.req.param("pub_id"));
    const removed = store.remove(pubId);
    if (removed === null) throw notFound(pubId);
    log.info("deregistered", { publisher: removed.name, pub_id: pubId });
    return json(removed, 200);
  });

  app.get("/v1/health", () => {
    const health: Health = {
      status: "ok",
      publishers: store.counts(),
      ttl_ms: options.ttlMs,
      deregister_after_ms: options.deregisterAfterMs,
    };
    return json(health, 200);
  });

  app.get("/metrics", () => {
    for (const [state, n] of Object.entries(store.counts())) publishers.set({ state }, n);
    return new Response(metrics.render(), { headers: { "Content-Type": CONTENT_TYPE } });
  });

  app.notFound((c) => {
    const route = `${c.req.method} ${new URL(c.req.url).pathname}`.slice(0, 200);
    return json({ error: "not_found", message: `no route ${route}; the API is under /v1 (try GET /v1/health)` }, 404);
  });

  app.onError((err, c) => {
    if (err instanceof MetaApiError) return json(err.body(), err.status);
    log.error("request failed", { method: c.req.method, path: new URL(c.req.url).pathname.slice(0, 200), error: err });
    return json({ error: "internal", message: `internal error: ${err.message}` }, 500);
  });

  return app;
}

function json(data: unknown, status: number, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(data), {
    status,
    headers: { "Content-Type": "application/json; charset=utf-8", ...headers },
  });
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

/** The request body as JSON, read under `MAX_BODY_BYTES` as it streams in. */
function tooLarge(): MetaApiError {
  return new MetaApiError("too_large", `the request body is larger than ${MAX_BODY_BYTES} bytes`);
}

async function readJson(c: Context): Promise<unknown> {
  const stream = c.req.raw.body;
  if (stream === null) throw new MetaApiError("bad_json", "the request has no body; send a JSON object");
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = stream.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.length;
    if (size > MAX_BODY_BYTES) {
      void reader.cancel().catch(() => {});
      throw tooLarge();
    }
    chunks.push(value);
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(Buffer.concat(chunks));
  } catch {
    throw new MetaApiError("bad_json", "the request body is not UTF-8 text; send a JSON object");
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    const why = err instanceof Error ? err.message.slice(0, 200) : "";
    throw new MetaApiError("bad_json", `the request body is not valid JSON (${why}); send a JSON object`);
  }
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
