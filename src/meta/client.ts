/**
 * The metaserver's client, for publishers (register, confirm, heartbeat, deregister) and
 * subscribers (get, list, lookup by name, tree).
 *
 * Every answer is checked against protocol.ts's schemas. The server's errors come back as
 * `MetaApiError` (a StoaError with the server's `status`, `error` and message intact, e.g.
 * status 404 when a heartbeat finds its registration gone); a metaserver that cannot be reached
 * is `StoaError("io")`, one that does not answer in time `StoaError("timeout")`.
 */
import { StoaError } from "../core/errors.ts";
import { isValidPubId, nameProblem } from "../stream/names.ts";
import {
  ApiErrorBody,
  CONFIRM_TIMEOUT_MS,
  Health,
  MetaApiError,
  PublisherInfo,
  PublisherList,
  type RegisterRequest,
  type TreeNode,
  TreeResponse,
} from "./protocol.ts";
import type { z } from "zod";

/** Per-request deadline, by default; a confirmation gets the ping timeout on top. */
export const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;
/** Largest answer read: a full list of `MAX_PUBLISHERS` is about 50 MB of JSON. */
const MAX_RESPONSE_BYTES = 128 * 1024 * 1024;

export interface MetaClientOptions {
  /** Deadline of each request (default 10 s). */
  timeoutMs?: number;
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
  private readonly timeoutMs: number;

  constructor(baseUrl: string, options: MetaClientOptions = {}) {
    this.baseUrl = normalizeBase(baseUrl);
    this.timeoutMs = options.timeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  }

  /** Registers a publisher (state `pending`); the answer carries its pub_id and URLs. */
  register(request: RegisterRequest): Promise<PublisherInfo> {
    return this.call("POST", "/v1/publishers", PublisherInfo, request);
  }

  /** Asks the metaserver to ping the publisher through its gateway; `live` on success. */
  confirm(pubId: string): Promise<PublisherInfo> {
    return this.call("POST", `${publisherPath(pubId)}/confirm`, PublisherInfo, undefined, this.timeoutMs + CONFIRM_TIMEOUT_MS);
  }

  /** Restarts the registration's TTL clock. A 404 means it is gone: register again. */
  heartbeat(pubId: string): Promise<PublisherInfo> {
    return this.call("POST", `${publisherPath(pubId)}/heartbeat`, PublisherInfo);
  }

  /** One registration by pub_id (404 → MetaApiError with status 404). */
  get(pubId: string): Promise<PublisherInfo> {
    return this.call("GET", publisherPath(pubId), PublisherInfo);
  }

  /** Publishers named `prefix` or below it (`a/b` matches `a/b` and `a/b/…`), by name. */
  async list(prefix = ""): Promise<PublisherInfo[]> {
    const query = prefix === "" ? "" : `?prefix=${encodeURIComponent(prefix)}`;
    return (await this.call("GET", `/v1/publishers${query}`, PublisherList)).publishers;
  }

  /** The names under `prefix` (all by default) as directory nodes with publishers as leaves. */
  async tree(prefix = ""): Promise<TreeNode[]> {
    const query = prefix === "" ? "" : `?prefix=${encodeURIComponent(prefix)}`;
    return (await this.call("GET", `/v1/tree${query}`, TreeResponse)).tree;
  }

  /** Removes a registration; answers it as it was. */
  deregister(pubId: string): Promise<PublisherInfo> {
    return this.call("DELETE", publisherPath(pubId), PublisherInfo);
  }

  /** Registrations by state and the TTLs: a publisher heartbeats well within `ttl_ms`. */
  health(): Promise<Health> {
    return this.call("GET", "/v1/health", Health);
  }

  /** The publisher with exactly this name, or null. */
  async findByName(name: string): Promise<PublisherInfo | null> {
    const problem = nameProblem(name);
    if (problem !== null) throw new StoaError("usage", `invalid publisher name ${JSON.stringify(name.slice(0, 80))}: ${problem}`);
    return (await this.list(name)).find((p) => p.name === name) ?? null;
  }

  /**
   * The publisher with exactly this name, or a StoaError saying what is there instead: the
   * publishers below it when `name` is a directory, or nothing.
   */
  async lookup(name: string): Promise<PublisherInfo> {
    const problem = nameProblem(name);
    if (problem !== null) throw new StoaError("usage", `invalid publisher name ${JSON.stringify(name.slice(0, 80))}: ${problem}`);
    const found = await this.list(name);
    const exact = found.find((p) => p.name === name);
    if (exact !== undefined) return exact;
    if (found.length > 0) {
      const shown = found.slice(0, 5).map((p) => p.name).join(", ") + (found.length > 5 ? ", …" : "");
      throw new StoaError("usage", `${name} is a directory, not a publisher; it holds ${found.length}: ${shown}`);
    }
    throw new StoaError("closed", `no publisher named ${name} is registered at ${this.baseUrl}; is it running?`);
  }

  private async call<S extends z.ZodType>(
    method: string,
    path: string,
    schema: S,
    body?: unknown,
    timeoutMs = this.timeoutMs,
  ): Promise<z.output<S>> {
    const url = this.baseUrl + path;
    let response: Response;
    try {
      response = await fetch(url, {
        method,
        headers: body === undefined ? {} : { "Content-Type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(timeoutMs),
        redirect: "error",
      });
    } catch (err) {
      throw this.transportError(err, method, path, timeoutMs);
    }
    let text: string;
    try {
      text = await readCapped(response);
    } catch (err) {
      throw err instanceof StoaError ? err : this.transportError(err, method, path, timeoutMs);
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    if (!response.ok) {
      const error = ApiErrorBody.safeParse(json);
      if (error.success) throw new MetaApiError(error.data.error, error.data.message, response.status);
      throw new MetaApiError(
        `http_${response.status}`,
        `the metaserver at ${this.baseUrl} answered ${method} ${path} with HTTP ${response.status}; is that URL a stoa metaserver?`,
        response.status,
      );
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

  private transportError(err: unknown, method: string, path: string, timeoutMs: number): StoaError {
    if (err instanceof Error && (err.name === "TimeoutError" || err.name === "AbortError")) {
      return new StoaError("timeout", `the metaserver at ${this.baseUrl} did not answer ${method} ${path} within ${timeoutMs / 1000}s`, {
        cause: err,
      });
    }
    const code = err instanceof Error && "code" in err ? String(err.code) : "";
    const reason = code === "ConnectionRefused" || code === "ECONNREFUSED" ? "connection refused" : err instanceof Error ? err.message : String(err);
    return new StoaError("io", `cannot reach the metaserver at ${this.baseUrl}: ${reason}; is stoa meta (or stoa up) running there?`, {
      cause: err,
    });
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
  const declared = Number(response.headers.get("content-length") ?? "0");
  const tooLarge = () => new StoaError("too_large", `the metaserver's answer is larger than ${MAX_RESPONSE_BYTES} bytes`);
  if (declared > MAX_RESPONSE_BYTES) {
    await response.body?.cancel().catch(() => {});
    throw tooLarge();
  }
  if (response.body === null) return "";
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = response.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.length;
    if (size > MAX_RESPONSE_BYTES) {
      await reader.cancel().catch(() => {});
      throw tooLarge();
    }
    chunks.push(value);
  }
  return new TextDecoder().decode(Buffer.concat(chunks));
}
