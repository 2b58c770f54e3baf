import { describe, expect, test } from "bun:test";
import { StoaError } from "../../src/core/errors.ts";
import { CONTENT_TYPE, MAX_SERIES_PER_METRIC, metrics, Registry } from "../../src/core/metrics.ts";

function internalError(fn: () => unknown, message: RegExp): void {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(StoaError);
    expect((err as StoaError).code).toBe("internal");
    expect((err as StoaError).message).toMatch(message);
    return;
  }
  throw new Error("expected a StoaError");
}

describe("rendering", () => {
  test("renders a small registry exactly", () => {
    const r = new Registry();
    const requests = r.counter("stoa_requests_total", "Requests served.", ["method", "code"]);
    const open = r.gauge("stoa_open_connections", "Connections open now.");
    const latency = r.histogram("stoa_latency_seconds", "Request latency.", [0.01, 0.1, 1]);
    requests.inc({ method: "GET", code: 200 });
    requests.inc({ method: "GET", code: 200 }, 2);
    requests.inc({ method: "POST", code: 500 });
    open.set(3);
    open.dec();
    latency.observe(0.005);
    latency.observe(0.05);
    latency.observe(0.05);
    latency.observe(5);
    expect(r.render()).toBe(
      [
        "# HELP stoa_requests_total Requests served.",
        "# TYPE stoa_requests_total counter",
        'stoa_requests_total{method="GET",code="200"} 3',
        'stoa_requests_total{method="POST",code="500"} 1',
        "# HELP stoa_open_connections Connections open now.",
        "# TYPE stoa_open_connections gauge",
        "stoa_open_connections 2",
        "# HELP stoa_latency_seconds Request latency.",
        "# TYPE stoa_latency_seconds histogram",
        'stoa_latency_seconds_bucket{le="0.01"} 1',
        'stoa_latency_seconds_bucket{le="0.1"} 3',
        'stoa_latency_seconds_bucket{le="1"} 3',
        'stoa_latency_seconds_bucket{le="+Inf"} 4',
        "stoa_latency_seconds_sum 5.105",
        "stoa_latency_seconds_count 4",
        "",
      ].join("\n"),
    );
  });

  test("escapes backslash, double quote and newline in label values, backslash and newline in help", () => {
    const r = new Registry();
    r.counter("weird_total", "Help with \\ and\nnewline.", ["path"]).inc({ path: 'C:\\a "b"\nc' });
    expect(r.render()).toBe(
      [
        "# HELP weird_total Help with \\\\ and\\nnewline.",
        "# TYPE weird_total counter",
        'weird_total{path="C:\\\\a \\"b\\"\\nc"} 1',
        "",
      ].join("\n"),
    );
  });

  test("renders labelled histograms with le last and zero-filled label-less metrics", () => {
    const r = new Registry();
    r.counter("idle_total", "Never touched.");
    r.gauge("labelled", "Labelled, never touched.", ["x"]);
    r.histogram("size_bytes", "Sizes.", [10, 100, Number.POSITIVE_INFINITY], ["dir"]).observe({ dir: "in" }, 50);
    expect(r.render()).toBe(
      [
        "# HELP idle_total Never touched.",
        "# TYPE idle_total counter",
        "idle_total 0",
        "# HELP labelled Labelled, never touched.",
        "# TYPE labelled gauge",
        "# HELP size_bytes Sizes.",
        "# TYPE size_bytes histogram",
        'size_bytes_bucket{dir="in",le="10"} 0',
        'size_bytes_bucket{dir="in",le="100"} 1',
        'size_bytes_bucket{dir="in",le="+Inf"} 1',
        'size_bytes_sum{dir="in"} 50',
        'size_bytes_count{dir="in"} 1',
        "",
      ].join("\n"),
    );
  });

  test("spells special float values the way Prometheus parses them", () => {
    const r = new Registry();
    const g = r.gauge("g", "G.", ["k"]);
    g.set({ k: "a" }, Number.POSITIVE_INFINITY);
    g.set({ k: "b" }, Number.NEGATIVE_INFINITY);
    g.set({ k: "c" }, Number.NaN);
    g.set({ k: "d" }, -1.5);
    expect(r.render().split("\n").slice(2, 6)).toEqual([
      'g{k="a"} +Inf',
      'g{k="b"} -Inf',
      'g{k="c"} NaN',
      'g{k="d"} -1.5',
    ]);
  });

  test("renders an empty registry as an empty body and exports the exposition content type", () => {
    expect(new Registry().render()).toBe("");
    expect(CONTENT_TYPE).toBe("text/plain; version=0.0.4; charset=utf-8");
  });
});

describe("registration", () => {
  test("returns the existing metric for the same name, type and labels", () => {
    const r = new Registry();
    const a = r.counter("hits_total", "Hits.", ["k"]);
    const b = r.counter("hits_total", "Hits again.", ["k"]);
    expect(b).toBe(a);
    const h1 = r.histogram("h", "H.", [1, 2]);
    expect(r.histogram("h", "H.", [1, 2])).toBe(h1);
  });

  test("rejects the same name with another type, other labels or other buckets", () => {
    const r = new Registry();
    r.counter("x_total", "X.", ["a"]);
    internalError(() => r.gauge("x_total", "X."), /already exists as a counter/);
    internalError(() => r.counter("x_total", "X.", ["b"]), /already exists/);
    r.histogram("h", "H.", [1, 2]);
    internalError(() => r.histogram("h", "H.", [1, 3]), /already exists with buckets \[1, 2\]/);
  });

  test("validates metric and label names against the Prometheus grammar", () => {
    const r = new Registry();
    internalError(() => r.counter("9lives", "Bad."), /metric name "9lives"/);
    internalError(() => r.counter("has-dash", "Bad."), /metric name "has-dash"/);
    internalError(() => r.counter("ok", "Bad label.", ["a:b"]), /label name "a:b"/);
    internalError(() => r.counter("ok", "Reserved label.", ["__x"]), /label name "__x"/);
    internalError(() => r.counter("ok", "Twice.", ["a", "a"]), /twice/);
    internalError(() => r.histogram("h", "le is taken.", [1], ["le"]), /"le" is reserved/);
    expect(r.counter("ns:sub_total", "Colons are fine in metric names.").name).toBe("ns:sub_total");
  });

  test("rejects unsorted, repeated or non-finite buckets", () => {
    const r = new Registry();
    internalError(() => r.histogram("h1", "H.", [2, 1]), /strictly increasing/);
    internalError(() => r.histogram("h2", "H.", [1, 1]), /strictly increasing/);
    internalError(() => r.histogram("h3", "H.", [Number.NaN]), /finite/);
  });
});

describe("updates", () => {
  test("rejects missing, extra or misnamed labels", () => {
    const c = new Registry().counter("c_total", "C.", ["a", "b"]);
    internalError(() => c.inc({ a: "1" }), /takes labels \{a, b\}, got \{a\}/);
    internalError(() => c.inc({ a: "1", b: "2", c: "3" }), /got \{a, b, c\}/);
    internalError(() => c.inc({ a: "1", c: "2" }), /got \{a, c\}/);
    internalError(() => c.inc(), /got \{\}/);
  });

  test("refuses to decrease a counter", () => {
    const c = new Registry().counter("c_total", "C.");
    internalError(() => c.inc(-1), /cannot go down/);
  });

  test("caps the number of label sets per metric without ever throwing on the data path", () => {
    const registry = new Registry();
    const c = registry.counter("peers_total", "Per peer.", ["peer"]);
    for (let i = 0; i < MAX_SERIES_PER_METRIC; i++) c.inc({ peer: i });
    c.inc({ peer: 0 });
    c.inc({ peer: "one too many" });
    expect(c.overflowed).toBe(1);
    expect(registry.render()).not.toContain("one too many");
    expect(registry.render()).toContain('peers_total{peer="0"} 2');
  });

  test("a removed label set is forgotten and frees its place", () => {
    const registry = new Registry();
    const g = registry.gauge("subs", "Subscribers.", ["pub_id"]);
    g.set({ pub_id: "a" }, 3);
    g.set({ pub_id: "b" }, 1);
    g.remove({ pub_id: "a" });
    expect(registry.render()).not.toContain('pub_id="a"');
    expect(registry.render()).toContain('subs{pub_id="b"} 1');
  });

  test("the shared registry is one instance for the whole process", async () => {
    const again = await import("../../src/core/metrics.ts");
    expect(again.metrics).toBe(metrics);
    expect(metrics).toBeInstanceOf(Registry);
  });
});

describe("the process metrics of the shared registry", () => {
  test("process_* are read at each scrape and stoa_build_info names this build", () => {
    const text = metrics.render();
    const value = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1]);
    expect(text).toContain("# TYPE process_cpu_seconds_total counter");
    expect(value("process_cpu_seconds_total")).toBeGreaterThan(0);
    expect(value("process_resident_memory_bytes")).toBe(value("process_resident_memory_bytes")); // not NaN
    expect(value("process_resident_memory_bytes")).toBeGreaterThan(0);
    expect(value("process_virtual_memory_bytes")).toBeGreaterThan(0);
    expect(value("process_threads")).toBeGreaterThanOrEqual(1);
    expect(Math.abs(value("process_start_time_seconds") - (Date.now() / 1000 - process.uptime()))).toBeLessThan(5);
    expect(text).toMatch(new RegExp(`^stoa_build_info\\{version="[^"]+",commit="[^"]+",bun="${Bun.version.replace(/\./g, "\\.")}"\\} 1$`, "m"));
    // Read again, not cached: CPU time only grows.
    let spin = 0;
    for (let i = 0; i < 2_000_000; i++) spin += i;
    expect(spin).toBeGreaterThan(0);
    const later = Number(/^process_cpu_seconds_total (\S+)$/m.exec(metrics.render())?.[1]);
    expect(later).toBeGreaterThan(value("process_cpu_seconds_total"));
  });
});

describe("repeated label objects (the relay counts every message with one constant object per type)", () => {
  test("the same object again counts into its series; another set into its own", () => {
    const r = new Registry();
    const c = r.counter("stoa_msgs_total", "Messages.", ["type"]);
    const data = { type: "data" };
    const open = { type: "open" };
    for (let i = 0; i < 5; i++) c.inc(data);
    c.inc(open);
    c.inc(data, 2);
    const text = r.render();
    expect(text).toContain('stoa_msgs_total{type="data"} 7');
    expect(text).toContain('stoa_msgs_total{type="open"} 1');
  });

  test("an object changed since its last use counts into the series of what it holds now", () => {
    const r = new Registry();
    const c = r.counter("stoa_msgs_total", "Messages.", ["type"]);
    const labels: { type: string } = { type: "data" };
    c.inc(labels);
    labels.type = "close";
    c.inc(labels);
    const text = r.render();
    expect(text).toContain('stoa_msgs_total{type="data"} 1');
    expect(text).toContain('stoa_msgs_total{type="close"} 1');
  });

  test("after remove(), the same object starts a new series at zero", () => {
    const r = new Registry();
    const c = r.counter("stoa_msgs_total", "Messages.", ["type"]);
    const data = { type: "data" };
    c.inc(data, 3);
    c.remove(data);
    c.inc(data);
    expect(r.render()).toContain('stoa_msgs_total{type="data"} 1');
  });

  test("a label-less counter keeps one series", () => {
    const r = new Registry();
    const c = r.counter("stoa_bytes_total", "Bytes.");
    for (let i = 0; i < 3; i++) c.inc(10);
    expect(r.render()).toContain("stoa_bytes_total 30");
  });
});

describe("a counter's series handle (the relay's per-message counts)", () => {
  test("counts into the same series as inc() with those labels, and renders with it", () => {
    const r = new Registry();
    const c = r.counter("stoa_msgs_total", "Messages.", ["type"]);
    const data = c.series({ type: "data" });
    for (let i = 0; i < 4; i++) data.inc();
    data.inc(10);
    c.inc({ type: "data" });
    c.inc({ type: "open" });
    const text = r.render();
    expect(text).toContain('stoa_msgs_total{type="data"} 15');
    expect(text).toContain('stoa_msgs_total{type="open"} 1');
    const bytes = r.counter("stoa_bytes_total", "Bytes.").series();
    bytes.inc(1234);
    expect(r.render()).toContain("stoa_bytes_total 1234");
  });

  test("wrong labels are refused when the handle is made, not when it counts", () => {
    const c = new Registry().counter("stoa_msgs_total", "Messages.", ["type"]);
    expect(() => c.series({ kind: "data" })).toThrow(StoaError);
    expect(() => c.series()).toThrow(StoaError);
  });
});
