/**
 * Counting what the gateway does.
 *
 * Each router keeps a `Tally` of plain numbers (cheap on the hot path, and a worker's tally can
 * be posted to the main thread as a structured clone). `Tally.snapshot()` returns cumulative
 * counters plus the observations gathered since the previous snapshot. On the main thread,
 * `GatewayMetrics` turns the snapshots of all routers into the Prometheus series below and into
 * the `GatewayStats` a caller reads:
 *
 *   stoa_gateway_connections_total{kind}           accepted connections
 *   stoa_gateway_connections_open{kind}            connections open now
 *   stoa_gateway_bytes_total{kind,direction}       bytes spliced; in = client → publisher
 *   stoa_gateway_routing_errors_total{status,error} error responses sent (protocol.ts ROUTE_ERRORS)
 *   stoa_gateway_upstream_connect_seconds{kind}    time to connect to a target
 *   stoa_gateway_spliced_connections_total         routed connections handed to the epoll data
 *       path (router.ts); the others went through Bun's sockets (TLS, --data-path bun)
 *   stoa_gateway_handed_off_connections_total      routed connections given to the publisher
 *       itself (handoff.ts): no bytes of theirs are counted above
 *   stoa_gateway_handoff_failures_total            hand-offs that failed after connecting to the
 *       publisher's handoff.sock (it went away meanwhile): those clients' connections were lost
 *   stoa_gateway_pub_connections_total{kind,pub_id} routed connections per publisher, for the
 *       first `MAX_PUB_ID_LABELS` pub_ids seen; later ones are counted under pub_id="_other", so
 *       a long-lived gateway with publishers coming and going cannot grow without bound.
 */
import type { Counter, Gauge, Histogram, Registry } from "../core/metrics.ts";
import { KINDS, type Kind, ROUTE_ERRORS, type RouteError } from "./protocol.ts";

/** Distinct pub_id label values, across kinds, before `_other` takes over. */
const MAX_PUB_ID_LABELS = 1_000;
/** Connect latencies kept between two snapshots of one router; more are dropped, not stored. */
const MAX_LATENCY_SAMPLES = 10_000;
/** Routed (kind, pub_id) counts kept between two snapshots of one router; more go to `_other`. */
const MAX_PUB_COUNTS = 2_000;

const CONNECT_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
const OTHER = "_other";

type PerKind = Record<Kind, number>;
const perKind = (): PerKind => ({ service: 0, string: 0, ping: 0 });

/** A router's counters; cumulative unless marked otherwise. Plain data (structured-clonable). */
export interface RouterSnapshot {
  router: number;
  accepted: PerKind;
  open: PerKind;
  bytesIn: PerKind;
  bytesOut: PerKind;
  errors: Partial<Record<RouteError, number>>;
  /** Successful upstream connects. */
  connects: number;
  /** Connections handed to the epoll data path. */
  spliced: number;
  /** Connections given to their publisher (handoff.ts). */
  handedOff: number;
  /** Hand-offs that failed once connected (each lost its client connection). */
  handoffFailures: number;
  /** Since the previous snapshot: connect latencies in seconds, with their kinds. */
  latencies: { kind: Kind; seconds: number }[];
  /** Since the previous snapshot: routed connections per `kind\0pub_id`. */
  routed: [string, number][];
}

/** What the gateway has done, over all routers. */
export interface GatewayStats {
  connections: Record<Kind, { open: number; total: number }>;
  /** `in`: client → publisher; `out`: publisher → client. */
  bytes: Record<Kind, { in: number; out: number }>;
  errors: Partial<Record<RouteError, number>>;
  /** Successful upstream connects. */
  upstreamConnects: number;
  /** Routed connections whose bytes moved on the epoll data path. */
  splicedConnections: number;
  /** Routed connections given to their publisher (handoff.ts). */
  handedOffConnections: number;
  handoffFailures: number;
  routers: { router: number; accepted: number; open: number }[];
}

/** One router's counters (see the module header). */
export class Tally {
  readonly router: number;
  readonly accepted = perKind();
  readonly open = perKind();
  readonly bytesIn = perKind();
  readonly bytesOut = perKind();
  readonly errors: Partial<Record<RouteError, number>> = {};
  connects = 0;
  spliced = 0;
  handedOff = 0;
  handoffFailures = 0;
  #latencies: { kind: Kind; seconds: number }[] = [];
  #routed = new Map<string, number>();

  constructor(router: number) {
    this.router = router;
  }

  error(error: RouteError): void {
    this.errors[error] = (this.errors[error] ?? 0) + 1;
  }

  connected(kind: Kind, pubId: string, seconds: number): void {
    this.connects++;
    if (this.#latencies.length < MAX_LATENCY_SAMPLES) this.#latencies.push({ kind, seconds });
    this.routedTo(kind, pubId);
  }

  /** One more connection routed to `pubId`'s `kind`. */
  routedTo(kind: Kind, pubId: string): void {
    let k = `${kind}\u0000${pubId}`;
    if (!this.#routed.has(k) && this.#routed.size >= MAX_PUB_COUNTS) k = `${kind}\u0000${OTHER}`;
    this.#routed.set(k, (this.#routed.get(k) ?? 0) + 1);
  }

  /** Cumulative counters plus what was observed since the last call. */
  snapshot(): RouterSnapshot {
    const snap: RouterSnapshot = {
      router: this.router,
      accepted: { ...this.accepted },
      open: { ...this.open },
      bytesIn: { ...this.bytesIn },
      bytesOut: { ...this.bytesOut },
      errors: { ...this.errors },
      connects: this.connects,
      spliced: this.spliced,
      handedOff: this.handedOff,
      handoffFailures: this.handoffFailures,
      latencies: this.#latencies,
      routed: [...this.#routed],
    };
    this.#latencies = [];
    this.#routed = new Map();
    return snap;
  }
}

interface Series {
  accepted: Counter;
  open: Gauge;
  bytes: Counter;
  errors: Counter;
  connect: Histogram;
  pub: Counter;
  spliced: Counter;
  handedOff: Counter;
  handoffFailures: Counter;
}

/** Main-thread aggregation of router snapshots into Prometheus metrics and `GatewayStats`. */
export class GatewayMetrics {
  readonly #series: Series;
  readonly #last = new Map<number, RouterSnapshot>();
  readonly #pubLabels = new Set<string>();

  constructor(registry: Registry) {
    this.#series = {
      accepted: registry.counter("stoa_gateway_connections_total", "Client connections accepted, by port kind.", ["kind"]),
      open: registry.gauge("stoa_gateway_connections_open", "Client connections open now, by port kind.", ["kind"]),
      bytes: registry.counter(
        "stoa_gateway_bytes_total",
        "Bytes spliced through the gateway; direction in is client to publisher.",
        ["kind", "direction"],
      ),
      errors: registry.counter(
        "stoa_gateway_routing_errors_total",
        "Error responses sent instead of routing, by HTTP status and error code.",
        ["status", "error"],
      ),
      connect: registry.histogram(
        "stoa_gateway_upstream_connect_seconds",
        "Time to connect to a publisher's socket.",
        CONNECT_BUCKETS,
        ["kind"],
      ),
      pub: registry.counter(
        "stoa_gateway_pub_connections_total",
        `Connections routed per publisher (the first ${MAX_PUB_ID_LABELS} pub_ids; the rest as _other).`,
        ["kind", "pub_id"],
      ),
      spliced: registry.counter(
        "stoa_gateway_spliced_connections_total",
        "Routed connections whose bytes moved on the epoll data path (the rest used Bun's sockets).",
      ),
      handedOff: registry.counter(
        "stoa_gateway_handed_off_connections_total",
        "Routed connections given to the publisher itself (its handoff.sock); their bytes are not counted here.",
      ),
      handoffFailures: registry.counter(
        "stoa_gateway_handoff_failures_total",
        "Hand-offs that failed after connecting to the publisher's handoff.sock; each lost its client connection.",
      ),
    };
  }

  /** Folds a router's snapshot in: counters move by the difference from its previous one. */
  apply(snap: RouterSnapshot): void {
    const prev = this.#last.get(snap.router);
    const s = this.#series;
    for (const kind of KINDS) {
      const was = (field: "accepted" | "open" | "bytesIn" | "bytesOut"): number => prev?.[field][kind] ?? 0;
      s.accepted.inc({ kind }, Math.max(0, snap.accepted[kind] - was("accepted")));
      s.open.inc({ kind }, snap.open[kind] - was("open"));
      s.bytes.inc({ kind, direction: "in" }, Math.max(0, snap.bytesIn[kind] - was("bytesIn")));
      s.bytes.inc({ kind, direction: "out" }, Math.max(0, snap.bytesOut[kind] - was("bytesOut")));
    }
    for (const [error, n] of Object.entries(snap.errors) as [RouteError, number][]) {
      const delta = n - (prev?.errors[error] ?? 0);
      if (delta > 0) s.errors.inc({ status: ROUTE_ERRORS[error], error }, delta);
    }
    const splicedDelta = snap.spliced - (prev?.spliced ?? 0);
    if (splicedDelta > 0) s.spliced.inc({}, splicedDelta);
    const handedDelta = snap.handedOff - (prev?.handedOff ?? 0);
    if (handedDelta > 0) s.handedOff.inc({}, handedDelta);
    const failedDelta = snap.handoffFailures - (prev?.handoffFailures ?? 0);
    if (failedDelta > 0) s.handoffFailures.inc({}, failedDelta);
    for (const { kind, seconds } of snap.latencies) s.connect.observe({ kind }, seconds);
    for (const [k, n] of snap.routed) {
      const [kind = "service", pubId = OTHER] = k.split("\u0000");
      let label = pubId;
      if (!this.#pubLabels.has(label)) {
        if (this.#pubLabels.size < MAX_PUB_ID_LABELS && label !== OTHER) this.#pubLabels.add(label);
        else label = OTHER;
      }
      s.pub.inc({ kind, pub_id: label }, n);
    }
    this.#last.set(snap.router, { ...snap, latencies: [], routed: [] });
  }

  /** A router is gone: its open connections are no longer open. */
  forget(router: number): void {
    const prev = this.#last.get(router);
    if (prev === undefined) return;
    for (const kind of KINDS) this.#series.open.dec({ kind }, prev.open[kind]);
    this.#last.set(router, { ...prev, open: perKind() });
  }

  /** Totals over every router seen so far. */
  stats(): GatewayStats {
    const out: GatewayStats = {
      connections: { service: { open: 0, total: 0 }, string: { open: 0, total: 0 }, ping: { open: 0, total: 0 } },
      bytes: { service: { in: 0, out: 0 }, string: { in: 0, out: 0 }, ping: { in: 0, out: 0 } },
      errors: {},
      upstreamConnects: 0,
      splicedConnections: 0,
      handedOffConnections: 0,
      handoffFailures: 0,
      routers: [],
    };
    for (const snap of this.#last.values()) {
      let accepted = 0;
      let open = 0;
      for (const kind of KINDS) {
        out.connections[kind].open += snap.open[kind];
        out.connections[kind].total += snap.accepted[kind];
        out.bytes[kind].in += snap.bytesIn[kind];
        out.bytes[kind].out += snap.bytesOut[kind];
        accepted += snap.accepted[kind];
        open += snap.open[kind];
      }
      out.upstreamConnects += snap.connects;
      out.splicedConnections += snap.spliced;
      out.handedOffConnections += snap.handedOff;
      out.handoffFailures += snap.handoffFailures;
      for (const [error, n] of Object.entries(snap.errors) as [RouteError, number][]) {
        out.errors[error] = (out.errors[error] ?? 0) + n;
      }
      out.routers.push({ router: snap.router, accepted, open });
    }
    out.routers.sort((a, b) => a.router - b.router);
    return out;
  }
}
