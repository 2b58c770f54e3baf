/**
 * The gateway's wire protocols, in one place: how a client's first line is routed, the error
 * responses, the control socket, and how workers and restarts fit together.
 *
 * ## Ports
 * One TCP port per endpoint kind (src/stream/names.ts `KINDS`): service 8081, string 8082,
 * ping 8083 by default, on every `--listen` address (default `::`, which is dual-stack). The
 * port a client connects to picks the kind; the first line picks the publisher.
 *
 * ## The first line (read by `FirstLineParser`, firstline.ts)
 *   GET /pub/<pub_id>[/<anything>|?<anything>] HTTP/1.1\r\n   forwarded unchanged
 *   STOA1 <pub_id>\n                                           stripped (raw TCP clients)
 * - The line, including its LF, is at most `MAX_FIRST_LINE_BYTES` (8 KiB) and must arrive within
 *   `FIRST_LINE_TIMEOUT_MS` (5 s) of the connection (of the TCP accept, with TLS: the handshake
 *   counts). CRLF or a bare LF ends it; a CR anywhere else, a control byte or a non-ASCII byte is
 *   a bad line. Bytes are checked as they arrive, so garbage (a TLS ClientHello on a plain port,
 *   an SSH banner) is refused at its first wrong byte, not after the timeout.
 * - HTTP form: exactly `GET`, one space, a request target starting with `/pub/`, one space,
 *   `HTTP/1.1`. The pub_id is the target's segment after `/pub/`, up to the next `/` or `?`; what
 *   follows is the publisher's business (publishers accept any path), except that the path (not
 *   the query) must not hold `.` or `..` segments, `\`, or `%2e`, `%2f`, `%5c` or `%25` in any
 *   case: a proxy in front could normalise or decode those differently (so `%252e%252e`, a
 *   double-encoded `..`, is 400 like `%2e%2e`).
 * - The pub_id must be a valid pub_id (`[A-Za-z0-9][A-Za-z0-9._-]{0,63}`), checked before the
 *   gateway touches the filesystem. Percent-encoding is refused outright rather than decoded
 *   (`%2e%2e`, `%2F`, `%00` are all 400), so there is exactly one spelling of each pub_id and
 *   `..`, `.`, `/` and NUL can never reach a path.
 * - Everything read so far (the HTTP form) or everything after the prelude's LF is sent to the
 *   target first, then the two sockets are spliced (src/core/pipe.ts), with TCP_NODELAY on each
 *   TCP socket (a Unix socket has no Nagle delay to turn off).
 *   The gateway never terminates WebSocket: it is a layer-4 proxy chosen by one line.
 *
 * ## Health checks, answered before routing
 *   GET /healthz HTTP/1.1\r\n   200 {"status":"alive"}: the router answering is alive
 *   GET /ready HTTP/1.1\r\n     200 {"status":"ready"} while the router serves,
 *                               503 {"status":"draining"} once it drains (stop or takeover)
 * On every one of the three ports (plain or TLS), for load balancers and `curl`: exactly these
 * request lines (no query), recognised by the first-line parser like a route; the rest of the
 * request is read and discarded and the connection closed as after an error response. They never
 * reach a publisher (`/ready` and `/healthz` are not `/pub/…`). Metrics listeners answer the
 * same paths (src/cli/common.ts).
 *
 * ## Socket activation (gateway/activation.ts)
 * Under systemd (`stoa service unit gateway.socket`), `$LISTEN_FDS` sockets are served instead
 * of binding `--listen` × `--ports`: sockets named `service`, `string`, `ping`
 * (`FileDescriptorName=`), or else exactly three in the order service, string, ping. Each router
 * listens on its own copy of each (F_DUPFD_CLOEXEC: Bun closes the fd it listens on at stop).
 *
 * ## Resolving a target, in order
 * 1. an explicit registration for (kind, pub_id) made over the control socket: `unix:/path` or
 *    `tcp:host:port` (src/core/endpoint.ts forms);
 * 2. the convention `<run_dir>/pub/<pub_id>/<kind>.sock` (the publishers' subtree of the run
 *    dir, core/paths.ts). Before connecting, the gateway lstat()s the pub_id's directory and the
 *    socket: each must be what it says (a directory, a socket; never a symlink) and owned by the
 *    gateway's effective uid (routes.ts). Anything else — missing, a file, a symlink, another
 *    user's socket — is no publisher: 404, and never marked down. ENOENT at the connect (removed
 *    meanwhile) is a 404 too.
 * A target that refuses (ECONNREFUSED: a stale socket file, a dead TCP port), or does not accept
 * within `CONNECT_TIMEOUT_MS`, is a 502 and is marked down (unless the gateway is out of
 * descriptors itself: 503 out_of_fds below); the next successful connect marks it
 * up. Health is informational: a target marked down is still tried for every new client.
 *
 * ## Error responses (before any upgrade; `ROUTE_ERRORS`)
 * A real HTTP/1.1 response, to prelude clients too, then the gateway half-closes and drops the
 * connection once the client closes or `ERROR_LINGER_MS` passes:
 *   HTTP/1.1 404 Not Found\r\n
 *   Content-Type: application/json\r\n  Content-Length: n\r\n  Connection: close\r\n\r\n
 *   {"error":"unknown_pub_id","message":"..."}
 *   400 bad_request_line     not one of the two forms (wrong method or version, not /pub/, bytes)
 *   400 invalid_pub_id       empty, too long, bad characters, any `%`, `..`, a `/` in a prelude;
 *                            in the path after it a `.`/`..` segment, `\`, `%2e` `%2f` `%5c` `%25`
 *   404 unknown_pub_id       no registration and no publisher socket `pub/<pub_id>/<kind>.sock`
 *   408 first_line_timeout   no complete first line within the timeout
 *   431 first_line_too_long  no LF within the first 8 KiB
 *   502 target_down          the target refused or did not accept in time
 *   503 out_of_fds           "server out of file descriptors": the gateway's own limit, not the
 *                            target's fault (never marked down); try again shortly
 *
 * ## Out of file descriptors (core/fdlimit.ts, fdguard.ts)
 * The gateway raises RLIMIT_NOFILE to the hard limit and keeps the top `fdReserve()` descriptors
 * (64, or 5 % of the limit up to 4,096) for connections it already admitted. A new client whose
 * descriptor falls in that reserve, or that arrives once the count in use has reached it, is
 * refused at once with 503 out_of_fds, before its first line: closed as soon as what it sent is
 * read, when it closes, or after `REFUSAL_LINGER_MS`; closed without an answer beyond
 * `MAX_LINGERING_REFUSALS` per router, with less than a quarter of the reserve left, or with
 * TLS. So each refusal frees its descriptor. A first line that arrives with less than half the
 * reserve left gets the same 503 instead of a connect, and a connect that fails for want of
 * descriptors (EMFILE/ENFILE, which Bun reports as ECONNREFUSED) is 503 out_of_fds too, never a
 * 502: the target keeps its health. If the limit is reached and stays (Bun would spin in
 * accept), a router closes its listeners for at least `FD_BACKOFF_MS` and listens again once
 * descriptors are free. Refusals are logged once per `FD_LOG_INTERVAL_MS` (10 s) per router.
 *
 * ## Control socket: `<run_dir>/gateway.sock` (mode 0600; control.ts)
 * Frames of src/core/frame.ts (4-byte big-endian length), each holding one CBOR message
 * (src/core/codec.ts). The client sends requests; the gateway answers each one, in order, with
 * one response whose `type` is the request's, or `{type: "error", error: {code, message}}`
 * (`code` is a StoaError code). Requests (`ControlRequest`) and their answers:
 *   register   {pub_id, kind, target}  → {entry}    explicit route; replaces one for the same key;
 *                                                  answered once every worker routes it
 *   deregister {pub_id, kind?}         → {removed}  all kinds when kind is absent
 *   list                               → {entries, truncated}  explicit and convention routes with
 *                                                  health {state: up|down|unknown, error, since}
 *   health                             → {status: serving|draining, pid, uptime_ms,
 *                                         connections_open, targets: {up, down}}
 *   info                               → {ports: {service, string, ping}, listen, pid, version,
 *                                         tls, workers}   how a publisher learns the ports
 *   handover   {pid, version}          → {registrations}   see the restart below
 * Limits (core/framed-socket.ts's, the same for every control socket): requests ≤
 * `MAX_CONTROL_REQUEST_BYTES`, responses ≤ `MAX_CONTROL_ANSWER_BYTES`, ≤ `MAX_CONTROL_PIPELINED`
 * unanswered requests per connection, ≤ `MAX_CONTROL_CONNECTIONS` connections, idle ones closed
 * after `CONTROL_IDLE_TIMEOUT_MS`. A message that does not decode gets an error response; a
 * broken frame header closes the connection.
 *
 * ## Workers (`--workers N`, default one per core; gateway.ts, workers.ts, worker.ts)
 * Every listener is bound with SO_REUSEPORT, so the kernel spreads new connections over all the
 * listeners on a port, in this process and in a successor. The main thread runs router 0 (the
 * hot path, router.ts) plus the control socket; N-1 Bun Workers (threads of this process, one
 * event loop each) run routers 1..N-1 on the same ports. The main thread owns the route table:
 * a registration is applied there, then posted to every worker, and `register` is answered when
 * all have acknowledged it. Workers report health changes, and their counters every second and
 * on `stats()`, to the main thread, which keeps the only health table and Prometheus registry.
 *
 * ## Zero-downtime restart (`handover`)
 * A new gateway started with the same run dir finds `gateway.sock` alive and:
 * 1. asks it `info` and `list`, and loads its explicit registrations;
 * 2. binds its own listeners (SO_REUSEPORT: both processes now accept);
 * 3. sends `handover`; the old gateway stops accepting, unlinks `gateway.sock` (only if the
 *    file is still its own), answers with its registrations, and drains: established
 *    connections go on until they end or `--drain-timeout` passes, then are cut and the old
 *    gateway's `closed` resolves (its CLI then exits);
 * 4. applies the registrations and binds `gateway.sock`.
 * A publisher's control request in the short gap of step 3-4 finds no socket and should retry.
 * Linux resets connections still waiting in a listener's accept queue when it closes (unless
 * `net.ipv4.tcp_migrate_req=1`); the old gateway stops accepting only after the new one listens,
 * so that queue is short, but not always empty under load.
 * Ports: a requested port other than the old gateway's must be free; the gateway checks that
 * with a bind without SO_REUSEPORT first, so two gateways with different run dirs never share
 * a port by accident.
 *
 * ## TLS
 * With `tls: {cert, key}` (PEM files) the three external ports terminate TLS; targets are
 * still plain Unix/TCP sockets. Clients use `wss://` (or TLS + the prelude).
 * SIGHUP (`reloadTls`, gateway.ts): the main thread reads the pair and checks that the key
 * belongs to the certificate (tls.ts); a bad pair changes nothing. Then each router replaces its
 * listeners by new ones on copies of the same kernel sockets (router.ts `reloadTls`): new
 * connections get the new certificate, established ones keep their session, and no port ever
 * closes (so no accept queue is reset, unlike a takeover).
 */
import { z } from "zod";
import { StoaError, errorCodeFromWire, describeError } from "../core/errors.ts";
import { createCodec } from "../core/codec.ts";
import { formatEndpoint, MAX_ENDPOINT_LENGTH, parseEndpoint } from "../core/endpoint.ts";
import { MAX_CONTROL_ANSWER_BYTES, MAX_CONTROL_REQUEST_BYTES } from "../core/framed-socket.ts";
import { KINDS, PubId, type Kind } from "../stream/names.ts";

// ---------------------------------------------------------------------------------------------
// Limits and defaults

/** Default external ports, one per kind (the seed's 8081/8082/8083). */
export const DEFAULT_PORTS: Readonly<Ports> = { service: 8081, string: 8082, ping: 8083 };
/** `::` accepts IPv6 and IPv4-mapped clients alike (dual-stack). */
export const DEFAULT_LISTEN: readonly string[] = ["::"];
/** Longest first line, LF included: nginx's default header buffer, far above any real path. */
export const MAX_FIRST_LINE_BYTES = 8 * 1024;
/** Time for a client to send its first line: bounds what an idle or slowloris client costs. */
export const FIRST_LINE_TIMEOUT_MS = 5_000;
/** Time for a TCP target to accept (Unix sockets answer at once or fail at once). */
export const CONNECT_TIMEOUT_MS = 5_000;
/** After an error response, how long the client has to read it and close. */
export const ERROR_LINGER_MS = 2_000;
/** Default bound on a drain (SIGTERM or handover) before remaining connections are cut. */
export const DEFAULT_DRAIN_TIMEOUT_MS = 30_000;

/** The control socket's frame limits are core/framed-socket.ts's: a full `list` (`MAX_LIST_ENTRIES`
 * entries of ≤ ~500 bytes) fits in `MAX_CONTROL_ANSWER_BYTES` with room to spare. */
export { MAX_CONTROL_REQUEST_BYTES };
/** Default time a control client waits for its answer. */
export const CONTROL_REQUEST_TIMEOUT_MS = 5_000;
/** Time for the old gateway to answer `handover` (it only stops listeners and unlinks a file). */
export const HANDOVER_TIMEOUT_MS = 10_000;

/** Explicit registrations held at once (a host with this many publishers × kinds is huge). */
export const MAX_REGISTRATIONS = 10_000;
/** Entries in one `list` answer; `truncated` says when more exist. */
export const MAX_LIST_ENTRIES = 10_000;
/** Targets whose health is remembered; the oldest entry is forgotten first. */
export const MAX_HEALTH_ENTRIES = 10_000;
/** Longest error text kept for a target's health. */
export const MAX_HEALTH_ERROR_CHARS = 200;
/** Upper bound for `--workers`. */
export const MAX_WORKERS = 256;

// ---------------------------------------------------------------------------------------------
// First line and error responses

/** The HTTP form's fixed start; the pub_id follows. */
export const HTTP_PREFIX = "GET /pub/";
/** The raw prelude's fixed start; the pub_id and LF follow. */
export const PRELUDE_PREFIX = "STOA1 ";
/** The only HTTP version the gateway routes (WebSocket needs 1.1). */
export const HTTP_VERSION = "HTTP/1.1";
/** The health checks' request lines (without the line end), answered by the router itself. */
export const HEALTH_LINES = { ready: "GET /ready HTTP/1.1", healthz: "GET /healthz HTTP/1.1" } as const;
export type HealthCheck = keyof typeof HEALTH_LINES;

/**
 * The answer to a health check: `/healthz` is 200 whenever a router answers; `/ready` is 200
 * while `serving`, else 503.
 */
export function healthResponse(check: HealthCheck, serving: boolean): Uint8Array {
  const ok = check === "healthz" || serving;
  const body = `${JSON.stringify({ status: check === "healthz" ? "alive" : serving ? "ready" : "draining" })}\n`;
  const head =
    `HTTP/1.1 ${ok ? "200 OK" : "503 Service Unavailable"}\r\n` +
    "Content-Type: application/json\r\n" +
    `Content-Length: ${Buffer.byteLength(body)}\r\n` +
    "Cache-Control: no-store\r\n" +
    "Connection: close\r\n\r\n";
  return Buffer.from(head + body, "utf8");
}

/** Routing failures, each with its HTTP status. */
export const ROUTE_ERRORS = {
  bad_request_line: 400,
  invalid_pub_id: 400,
  unknown_pub_id: 404,
  first_line_timeout: 408,
  first_line_too_long: 431,
  target_down: 502,
  out_of_fds: 503,
} as const;
export type RouteError = keyof typeof ROUTE_ERRORS;

const REASONS: Record<number, string> = {
  400: "Bad Request",
  404: "Not Found",
  408: "Request Timeout",
  431: "Request Header Fields Too Large",
  502: "Bad Gateway",
  503: "Service Unavailable",
};

/**
 * The complete HTTP/1.1 response for a routing failure, ready to write.
 * @example
 * sock.write(routeErrorResponse("unknown_pub_id", "no publisher abc on this host"));
 */
export function routeErrorResponse(error: RouteError, message: string): Uint8Array {
  const status = ROUTE_ERRORS[error];
  const body = JSON.stringify({ error, message });
  const head =
    `HTTP/1.1 ${status} ${REASONS[status] ?? "Error"}\r\n` +
    "Content-Type: application/json\r\n" +
    `Content-Length: ${Buffer.byteLength(body)}\r\n` +
    "Connection: close\r\n\r\n";
  return Buffer.from(head + body, "utf8");
}

// ---------------------------------------------------------------------------------------------
// Shared shapes

/** One port number per kind. */
export interface Ports {
  service: number;
  string: number;
  ping: number;
}

/**
 * Parses the `--ports S,T,P` form (service, string, ping; 0 picks a free port).
 * Throws `StoaError` "usage".
 * @example
 * parsePorts("9081,9082,9083"); // { service: 9081, string: 9082, ping: 9083 }
 */
export function parsePorts(text: string): Ports {
  const parts = text.split(",").map((p) => p.trim());
  const numbers = parts.map((p) => (/^\d{1,5}$/.test(p) ? Number(p) : Number.NaN));
  const [service, string, ping] = numbers;
  if (numbers.length !== 3 || service === undefined || string === undefined || ping === undefined || numbers.some((n) => !(n >= 0 && n <= 65535))) {
    throw new StoaError("usage", `invalid ports '${text.slice(0, 64)}': expected three port numbers service,string,ping like 8081,8082,8083`);
  }
  const nonZero = numbers.filter((n) => n !== 0);
  if (new Set(nonZero).size !== nonZero.length) {
    throw new StoaError("usage", `invalid ports '${text.slice(0, 64)}': each kind needs its own port`);
  }
  return { service, string, ping };
}

const Port = z.number().int().min(0).max(65535);
export const PortsSchema = z.object({ service: Port, string: Port, ping: Port });
const KindSchema = z.enum(KINDS);

/** A target is `unix:/abs/path` or `tcp:host:port` (port ≥ 1), kept in canonical form. */
export type Target = { kind: "unix"; path: string } | { kind: "tcp"; host: string; port: number };

/**
 * Parses a target endpoint string. Throws `StoaError` "endpoint" for anything but a Unix path
 * or a TCP address with a port (the gateway splices bytes; it does not speak WebSocket upstream).
 */
export function parseTarget(text: string): Target {
  const endpoint = parseEndpoint(text);
  if (endpoint.kind === "unix") return { kind: "unix", path: endpoint.path };
  if (endpoint.kind === "tcp" && endpoint.port !== 0) return endpoint;
  throw new StoaError(
    "endpoint",
    `target ${JSON.stringify(text.slice(0, 80))} must be unix:/path or tcp:host:port with a port above 0`,
  );
}

/** The canonical string of a target. */
export function formatTarget(target: Target): string {
  return formatEndpoint(target);
}

const TargetString = z
  .string()
  .max(MAX_ENDPOINT_LENGTH)
  .transform((text, ctx) => {
    try {
      return formatTarget(parseTarget(text));
    } catch (err) {
      ctx.addIssue({ code: "custom", message: describeError(err) });
      return z.NEVER;
    }
  });

const HealthState = z.enum(["up", "down", "unknown"]);
type HealthState = z.infer<typeof HealthState>;

/** A target's health as `list` shows it. `since`: RFC 3339 time of the last change. */
export const HealthView = z.object({
  state: HealthState,
  error: z.string().max(MAX_HEALTH_ERROR_CHARS).nullable(),
  since: z.string().max(64).nullable(),
});
export type HealthView = z.infer<typeof HealthView>;

export const Registration = z.object({ pub_id: PubId, kind: KindSchema, target: TargetString });
export type Registration = z.output<typeof Registration>;

export const RouteEntry = z.object({
  pub_id: PubId,
  kind: KindSchema,
  target: z.string().max(MAX_ENDPOINT_LENGTH),
  source: z.enum(["explicit", "convention"]),
  health: HealthView,
});
export type RouteEntry = z.infer<typeof RouteEntry>;

// ---------------------------------------------------------------------------------------------
// Control messages

export const ControlRequest = z.discriminatedUnion("type", [
  z.object({ type: z.literal("register"), pub_id: PubId, kind: KindSchema, target: TargetString }),
  z.object({ type: z.literal("deregister"), pub_id: PubId, kind: KindSchema.optional() }),
  z.object({ type: z.literal("list") }),
  z.object({ type: z.literal("health") }),
  z.object({ type: z.literal("info") }),
  z.object({ type: z.literal("handover"), pid: z.number().int().min(0), version: z.string().max(64) }),
]);
export type ControlRequest = z.output<typeof ControlRequest>;
/** What a client writes (targets in any accepted spelling). */
export type ControlRequestInput = z.input<typeof ControlRequest>;

const Count = z.number().int().min(0);

export const ControlResponse = z.discriminatedUnion("type", [
  z.object({ type: z.literal("register"), entry: Registration }),
  z.object({ type: z.literal("deregister"), removed: Count }),
  z.object({ type: z.literal("list"), entries: z.array(RouteEntry).max(MAX_LIST_ENTRIES), truncated: z.boolean() }),
  z.object({
    type: z.literal("health"),
    status: z.enum(["serving", "draining"]),
    pid: Count,
    uptime_ms: Count,
    connections_open: Count,
    targets: z.object({ up: Count, down: Count }),
  }),
  z.object({
    type: z.literal("info"),
    ports: PortsSchema,
    listen: z.array(z.string().max(256)).max(64),
    pid: Count,
    version: z.string().max(64),
    tls: z.boolean(),
    workers: Count,
  }),
  z.object({ type: z.literal("handover"), registrations: z.array(RouteEntry).max(MAX_REGISTRATIONS) }),
  z.object({
    type: z.literal("error"),
    // A string, not an enum: a newer gateway may send a code this client does not know.
    error: z.object({ code: z.string().max(64), message: z.string().max(4096) }),
  }),
]);
export type ControlResponse = z.output<typeof ControlResponse>;
/** The answer to a request of type `T`. */
export type ResponseFor<T extends ControlRequest["type"]> = Extract<ControlResponse, { type: T }>;

export const controlRequestCodec = createCodec(ControlRequest, { maxBytes: MAX_CONTROL_REQUEST_BYTES });
export const controlResponseCodec = createCodec(ControlResponse, { maxBytes: MAX_CONTROL_ANSWER_BYTES });

/** The StoaError code for a code received on the wire (core/errors.ts). */
export { errorCodeFromWire };

/** Kinds in port order, re-exported for the gateway's users. */
export { KINDS, type Kind };
