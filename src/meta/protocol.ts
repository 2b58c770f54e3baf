/**
 * The metaserver's HTTP+JSON API: who publishes what, and where to reach it.
 *
 * Every body is JSON (UTF-8), requests at most `MAX_BODY_BYTES`. All routes but `/metrics` live
 * under `/v1`; a route that is not listed answers 404 with an error body.
 *
 *   POST   /v1/publishers                  {name, pub_id?, host, ports?} → 201 PublisherInfo
 *   POST   /v1/publishers/{pub_id}/confirm  → 200 PublisherInfo (state live), or 502/504
 *   POST   /v1/publishers/{pub_id}/heartbeat → 200 PublisherInfo
 *   GET    /v1/publishers/{pub_id}          → 200 PublisherInfo
 *   GET    /v1/publishers?prefix=a/b&limit=n&cursor=c
 *                                           → 200 {"publishers": [PublisherInfo, …], "next_cursor": c|null}
 *   GET    /v1/publishers?name=a/b          → 200 the same shape, the one publisher so named or none
 *   GET    /v1/tree[?prefix=a/b&limit=n&cursor=c] → 200 {"tree": [TreeNode, …], "next_cursor": c|null}
 *   DELETE /v1/publishers/{pub_id}          → 200 PublisherInfo (as it was before removal)
 *   GET    /v1/health                       → 200 Health
 *   GET    /v1/watch?prefix=a/b             → 200 text/event-stream of changes (watch.ts)
 *   GET    /metrics                         → Prometheus text format
 *
 * Authentication: writes — register, confirm, heartbeat, delete — carry
 * `Authorization: Bearer <token>`. The server knows an admin token (its `--token-file`,
 * `STOA_META_TOKEN`, or `<state dir>/meta.token`, created 0600 when missing) and optionally
 * writer tokens (`--tokens-file`: one `sha256:<64 hex digits> [label]` per line, `#` comments).
 * A registration records the SHA-256 of the token that made it (its owner); only that token or
 * the admin token may register the same pub_id or name again, confirm, heartbeat or delete it.
 * The admin token may do anything. Registrations without an owner (made under `--no-auth`, or
 * written by schema 1) are taken over only by the admin token (any writer token would let the
 * first writer after authentication was turned on own another's publisher); writers get 403
 * until the record is removed for missing heartbeats. Reads (GET)
 * need no token unless the server has a `--read-token-file`: then they need that token, the
 * admin token or a writer token. `/v1/health` and `/metrics` are always open.
 *   no token, a garbled one or an unknown one → 401 `unauthorized` with
 *     `WWW-Authenticate: Bearer realm="stoa meta"`;
 *   a valid token that does not own the registration (or a read token writing) → 403 `forbidden`.
 * With `--no-auth` (a warning at start) nothing is checked, as before; quotas then count per
 * source address instead of per token.
 *
 * Quotas (each answers 429 `quota_exceeded` with what to do): every writer other than the admin —
 * each writer token, each source address under `--no-auth` — holds at most
 * `WRITER_MAX_PUBLISHERS` registrations and `WRITER_MAX_PENDING` of them pending; all of them
 * together at most `NON_ADMIN_MAX_PUBLISHERS` and `NON_ADMIN_MAX_PENDING`, which leaves the admin
 * token room under the global `MAX_PUBLISHERS` (503 `full`). A registration still `pending`
 * `PENDING_EXPIRY_MS` after it was registered is removed: heartbeats do not extend that. A
 * registration may start at most `CONFIRM_RATE_LIMIT` confirmation pings per
 * `CONFIRM_RATE_WINDOW_MS`, and one non-admin writer (a token; an address under --no-auth) at
 * most `WRITER_CONFIRM_RATE_LIMIT` in all (429 `rate_limited`): a failed confirmation removes its
 * registration, so without the second a writer could probe a new host and port per pub_id.
 *
 * Pagination: lists are ordered by name and cut into pages of `limit` (default
 * `DEFAULT_PAGE_LIMIT`, at most `MAX_PAGE_LIMIT`) publishers. `next_cursor` is null on the last
 * page; otherwise pass it as `cursor` (with the same prefix) for the next. A cursor is the
 * base64url of the last name returned: pages continue after it, so registrations added or removed
 * meanwhile never make an untouched one repeat or go missing. `/v1/tree` pages the same way by
 * publisher: each page is the tree of its publishers (a directory may show up on several pages;
 * merge them by `path`).
 *
 * PublisherInfo:
 *   {name, pub_id, host, ports: {service, string, ping}, urls: {service, string, ping},
 *    state, registered_at}
 * - `host` is the publisher's host as clients reach it: an IPv6 address (compressed, lower case,
 *   no brackets), an IPv4 address or a host name. `[fd00::1]` is accepted and stored unbracketed.
 * - `ports` are that host's gateway ports; omitted ones default to 8081/8082/8083.
 * - `urls` are where clients connect, through the host's gateway:
 *   `ws://[fd00::1]:8081/pub/<pub_id>`, `ws://10.0.0.7:8082/pub/<pub_id>` (IPv6 in brackets).
 * - `registered_at` is RFC 3339 (UTC).
 *
 * Life of a registration (state):
 *   register → `pending` → confirm ok → `live` → (no heartbeat for the TTL) → `stale`
 *   → (still nothing for deregister-after) → removed. A heartbeat brings a stale registration
 *   back (`live` if it was ever confirmed, else `pending`). A failed confirmation removes it.
 *   The TTL clock counts from the last register, confirm or heartbeat; time the metaserver
 *   itself was down does not count (every clock restarts when it starts).
 * - Confirmation: the metaserver opens `ws://[host]:<ports.ping>/pub/<pub_id>` — through the
 *   host's gateway, the path every remote client takes — sends the text `ping` and expects one
 *   text reply `{"value": string|null, "seq": n, "ts": RFC 3339}` within `CONFIRM_TIMEOUT_MS`
 *   (`PingReply` and its size limit are src/stream/protocol.ts's).
 * - Registering the same pub_id under the same name again replaces the registration (the
 *   publisher restarted, or retried after a lost answer): 200 instead of 201, state `pending`.
 *   A new registration may take over the name of a `stale` one.
 *
 * Names are leaves (src/stream/names.ts): a name cannot lie below a registered publisher
 * (`a/b/c` when `a/b` exists) nor be a directory node of others (`a` when `a/b` exists).
 * Prefix `a/b` matches `a/b` and `a/b/...`, not `a/bc`.
 *
 * Errors: `{"error": <code>, "message": <what happened and what to do>}`, with the status of
 * `ERROR_STATUS[code]` (confirm_failed: 502, or 504 when the publisher did not answer in time):
 *   400 bad_json, bad_request, bad_name, bad_pub_id, bad_host, bad_ports, bad_prefix,
 *       bad_limit, bad_cursor, parent_is_publisher, name_is_directory
 *   401 unauthorized   403 forbidden
 *   404 not_found      409 duplicate_name, duplicate_pub_id, changed
 *   413 too_large (any route whose body is over MAX_BODY_BYTES)
 *   429 quota_exceeded, rate_limited
 *   500 internal       502/504 confirm_failed      503 full, busy, shutting_down, out_of_fds
 *   (out_of_fds: the metaserver is near its file-descriptor limit, core/fdlimit.ts; new
 *   connections get it at once and are closed, and while it lasts the port answers nothing else)
 *
 * TreeNode: `{name: segment, path: full name, children: [TreeNode, …]}` for a directory node,
 * `{name, path, pub_id, state}` for a publisher (a leaf).
 */
import { z } from "zod";
import { StoaError } from "../core/errors.ts";
import { parseEndpoint, urlHost } from "../core/endpoint.ts";
import { KINDS, type Kind, nameProblem, PublisherName, PubId } from "../stream/names.ts";

/** Largest request body. A registration is under 1 KiB; 64 KiB leaves room and bounds reads. */
export const MAX_BODY_BYTES = 64 * 1024;
/** Most registrations held at once; beyond this, registering answers 503 `full`. */
export const MAX_PUBLISHERS = 100_000;
/**
 * Most registrations of one writer other than the admin (a writer token, or a source address
 * under --no-auth): a tenth of the registry, so no single one fills it.
 */
export const WRITER_MAX_PUBLISHERS = 10_000;
/** Most registrations of all non-admin writers together: the last tenth stays the admin's. */
export const NON_ADMIN_MAX_PUBLISHERS = 90_000;
/**
 * Most `pending` registrations of one non-admin writer. A real publisher is pending for one
 * confirmation round trip (milliseconds); 64 covers a host starting many at once.
 */
export const WRITER_MAX_PENDING = 64;
/** Most `pending` registrations of all non-admin writers together. */
export const NON_ADMIN_MAX_PENDING = 4_096;
/**
 * A registration still `pending` this long after it was registered is removed; heartbeats do
 * not extend it. A confirmation takes at most `CONFIRM_TIMEOUT_MS`; 30 s covers retries.
 */
export const PENDING_EXPIRY_MS = 30_000;
/** Confirmation pings one registration may start per `CONFIRM_RATE_WINDOW_MS`. */
export const CONFIRM_RATE_LIMIT = 5;
export const CONFIRM_RATE_WINDOW_MS = 60_000;
/** Confirmation pings one non-admin writer may start per `CONFIRM_RATE_WINDOW_MS`: a host's restart of all its publishers fits. */
export const WRITER_CONFIRM_RATE_LIMIT = 120;
/** Publishers per page of `GET /v1/publishers` and `/v1/tree` when `limit` is not given. */
const DEFAULT_PAGE_LIMIT = 1_000;
/** Largest `limit`: a page of 10,000 is about 3.7 MB of JSON. */
export const MAX_PAGE_LIMIT = 10_000;
/** The realm of `WWW-Authenticate` on a 401. */
export const AUTH_REALM = "stoa meta";
/** Prefix of the tokens the metaserver issues, so a leaked one is recognisable. */
export const META_TOKEN_PREFIX = "stm_";
/** File name of the admin token in the state dir. */
export const META_TOKEN_FILE = "meta.token";
/** The environment variable that may hold a token (never a flag: a command line is public). */
export const META_TOKEN_ENV = "STOA_META_TOKEN";
/**
 * Confirmations in flight at once; each holds a socket and may buffer a ping reply of up to
 * src/stream's `MAX_PING_REPLY_BYTES` (about 12 MiB). Beyond this: 503 `busy`.
 */
export const MAX_CONCURRENT_CONFIRMS = 64;
/** The metaserver's own port when none is given: next to the gateway's 8081-8083, clear of 8080. */
export const DEFAULT_META_PORT = 8090;
/** The gateway's ports when a registration omits them (the spec's fixed defaults). */
export const DEFAULT_PORTS: Readonly<Record<Kind, number>> = { service: 8081, string: 8082, ping: 8083 };
/** Heartbeat TTL when none is configured (the spec's default). */
export const DEFAULT_TTL_MS = 15_000;
/** How long a registration stays `stale` before it is removed, when none is configured. */
export const DEFAULT_DEREGISTER_AFTER_MS = 60_000;
/** How long a confirmation waits for the whole ping round trip through the gateway. */
export const CONFIRM_TIMEOUT_MS = 3_000;
/** Longest `host`: a DNS name is at most 253 characters; IPv6 text is shorter. */
const MAX_HOST_LENGTH = 253;

export const PublisherState = z.enum(["pending", "live", "stale"]);
export type PublisherState = z.infer<typeof PublisherState>;

const Port = z.number().int().min(1).max(65535);

const Ports = z.object({ service: Port, string: Port, ping: Port });
type Ports = z.infer<typeof Ports>;

/**
 * `host` as registered → its canonical form, or a reason it is not one a client can dial.
 *
 * @example
 * ```ts
 * canonicalHost("[FD00::0001]"); // { host: "fd00::1" }
 * canonicalHost("::");           // { problem: "… the unspecified address …" }
 * ```
 */
function canonicalHost(text: string): { host: string } | { problem: string } {
  const shown = JSON.stringify(text.slice(0, 64));
  if (text.length === 0) return { problem: "host is empty; give the address clients reach the publisher's host at" };
  if (text.length > MAX_HOST_LENGTH + 2) return { problem: `host is longer than ${MAX_HOST_LENGTH} characters` };
  const bare = text.startsWith("[") && text.endsWith("]") ? text.slice(1, -1) : text;
  if (bare.includes("%")) {
    return { problem: `host ${shown} has a zone (%…), which only means something on one host; register a global or ULA address` };
  }
  let host: string;
  try {
    const ep = parseEndpoint(bare.includes(":") ? `tcp:[${bare}]:1` : `tcp:${bare}:1`);
    if (ep.kind !== "tcp") throw new StoaError("endpoint", "not a host");
    host = ep.host;
  } catch {
    return { problem: `host ${shown} is not an IPv6 address, an IPv4 address or a host name` };
  }
  if (host === "::" || host === "0.0.0.0") {
    return { problem: `host ${shown} is the unspecified address, which no client can dial; register the host's reachable address` };
  }
  return { host };
}

const Host = z.string().transform((text, ctx) => {
  const result = canonicalHost(text);
  if ("problem" in result) {
    ctx.addIssue({ code: "custom", message: result.problem });
    return z.NEVER;
  }
  return result.host;
});

/** `ports` in a registration: a subset, defaults for the rest, three distinct numbers. */
const PortsRequest = z
  .strictObject({ service: Port.optional(), string: Port.optional(), ping: Port.optional() })
  .optional()
  .transform((given, ctx) => {
    const ports: Ports = {
      service: given?.service ?? DEFAULT_PORTS.service,
      string: given?.string ?? DEFAULT_PORTS.string,
      ping: given?.ping ?? DEFAULT_PORTS.ping,
    };
    if (new Set(Object.values(ports)).size !== KINDS.length) {
      ctx.addIssue({
        code: "custom",
        message: `the gateway listens on three different ports; got service ${ports.service}, string ${ports.string}, ping ${ports.ping}`,
      });
      return z.NEVER;
    }
    return ports;
  });

/** Body of `POST /v1/publishers`. Unknown fields are rejected, so a typo is not silently lost. */
export const RegisterRequest = z.strictObject({
  name: PublisherName,
  pub_id: PubId.optional(),
  host: Host,
  ports: PortsRequest,
});
/** What a client sends (ports partial, host as typed). */
export type RegisterRequest = z.input<typeof RegisterRequest>;
/** What the server works with (ports complete, host canonical). */
export type Registration = z.output<typeof RegisterRequest>;

const Urls = z.object({ service: z.string(), string: z.string(), ping: z.string() });

/** A registration as the API answers it (see the header for each field). */
export const PublisherInfo = z.object({
  name: z.string(),
  pub_id: z.string(),
  host: z.string(),
  ports: Ports,
  urls: Urls,
  state: PublisherState,
  registered_at: z.string(),
});
export type PublisherInfo = z.infer<typeof PublisherInfo>;

/** `GET /v1/publishers?prefix=&limit=&cursor=`: one page. */
export const PublisherList = z.object({ publishers: z.array(PublisherInfo), next_cursor: z.string().nullable() });
export type PublisherList = z.infer<typeof PublisherList>;

export interface TreeNode {
  name: string;
  path: string;
  children?: TreeNode[];
  pub_id?: string;
  state?: PublisherState;
}
export const TreeNode: z.ZodType<TreeNode> = z.object({
  name: z.string(),
  path: z.string(),
  get children() {
    return z.array(TreeNode).optional();
  },
  pub_id: z.string().optional(),
  state: PublisherState.optional(),
});
/** `GET /v1/tree`: the top-level nodes of one page. */
export const TreeResponse = z.object({ tree: z.array(TreeNode), next_cursor: z.string().nullable() });
export type TreeResponse = z.infer<typeof TreeResponse>;

/** `GET /v1/health`: registrations by state, and the TTLs publishers should heartbeat within. */
export const Health = z.object({
  status: z.literal("ok"),
  publishers: z.object({ pending: z.number(), live: z.number(), stale: z.number() }),
  ttl_ms: z.number(),
  deregister_after_ms: z.number(),
  /** Where the registrations are: `sqlite:PATH` or the Redis URL (password hidden). */
  store: z.string().optional(),
});
export type Health = z.infer<typeof Health>;

/** Error codes of the API and the HTTP status of each: the one place they are mapped. */
const ERROR_STATUS = {
  bad_json: 400,
  bad_request: 400,
  bad_name: 400,
  bad_pub_id: 400,
  bad_host: 400,
  bad_ports: 400,
  bad_prefix: 400,
  bad_limit: 400,
  bad_cursor: 400,
  parent_is_publisher: 400,
  name_is_directory: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  duplicate_name: 409,
  duplicate_pub_id: 409,
  changed: 409,
  too_large: 413,
  quota_exceeded: 429,
  rate_limited: 429,
  internal: 500,
  confirm_failed: 502,
  full: 503,
  busy: 503,
  shutting_down: 503,
  out_of_fds: 503,
  store_unavailable: 503,
} as const;
export type ApiErrorCode = keyof typeof ERROR_STATUS;

export const ApiErrorBody = z.object({ error: z.string(), message: z.string() });
export type ApiErrorBody = z.infer<typeof ApiErrorBody>;

/**
 * An API error: thrown by the store and the handlers, answered as `{error, message}`. It is a
 * StoaError so the client can rethrow the server's own error with its message intact.
 */
export class MetaApiError extends StoaError {
  readonly status: number;
  constructor(
    readonly error: ApiErrorCode | (string & {}),
    message: string,
    status?: number,
  ) {
    const known = (ERROR_STATUS as Record<string, number>)[error];
    const code = status ?? known ?? 500;
    super(stoaCodeFor(code), message);
    this.status = code;
  }

  body(): ApiErrorBody {
    return { error: this.error, message: this.message };
  }
}

// Bad input is the caller's mistake (exit 2 from a CLI); the rest are runtime failures.
function stoaCodeFor(status: number) {
  if (status === 400) return "usage" as const;
  if (status === 401 || status === 403) return "auth" as const;
  if (status === 404) return "closed" as const;
  if (status === 409) return "in_use" as const;
  if (status === 413) return "too_large" as const;
  if (status === 504) return "timeout" as const;
  return "io" as const;
}


/** The three gateway URLs of a publisher. */
export function publisherUrls(host: string, ports: Ports, pubId: string): Record<Kind, string> {
  const url = (kind: Kind) => `ws://${urlHost(host)}:${ports[kind]}/pub/${pubId}`;
  return { service: url("service"), string: url("string"), ping: url("ping") };
}

/** A prefix query → the name it denotes ("" for everything), or a MetaApiError `bad_prefix`. */
export function parsePrefix(raw: string | undefined): string {
  if (raw === undefined || raw === "") return "";
  // "a/b/" reads naturally as "everything under a/b": accept one trailing slash.
  const prefix = raw.endsWith("/") ? raw.slice(0, -1) : raw;
  const problem = nameProblem(prefix);
  if (problem !== null) throw new MetaApiError("bad_prefix", `prefix ${JSON.stringify(raw.slice(0, 64))}: ${problem}`);
  return prefix;
}

/** The cursor that continues a list after `name`. */
export function encodeCursor(name: string): string {
  return Buffer.from(name, "utf8").toString("base64url");
}

/** A `cursor` query → the name it continues after (null for none), or a MetaApiError `bad_cursor`. */
export function parseCursor(raw: string | undefined): string | null {
  if (raw === undefined || raw === "") return null;
  const name = /^[A-Za-z0-9_-]{1,1400}$/.test(raw) ? Buffer.from(raw, "base64url").toString("utf8") : "";
  if (name === "" || nameProblem(name) !== null || encodeCursor(name) !== raw) {
    throw new MetaApiError("bad_cursor", "cursor is not one this server handed out; start again without cursor");
  }
  return name;
}

/** A `limit` query → a page size, or a MetaApiError `bad_limit`. */
export function parseLimit(raw: string | undefined): number {
  if (raw === undefined || raw === "") return DEFAULT_PAGE_LIMIT;
  const n = /^[0-9]{1,6}$/.test(raw) ? Number(raw) : Number.NaN;
  if (!(n >= 1 && n <= MAX_PAGE_LIMIT)) {
    throw new MetaApiError("bad_limit", `limit ${JSON.stringify(raw.slice(0, 20))} must be a whole number from 1 to ${MAX_PAGE_LIMIT}`);
  }
  return n;
}
