/**
 * One Prometheus registry, rendered in the text exposition format 0.0.4.
 *
 * Metrics are created on a `Registry` (usually the shared `metrics`) and updated in place;
 * `render()` walks them in creation order, series in first-use order. Names are checked against
 * the Prometheus grammar when a metric is created, label sets when a series is first used; both
 * are programming errors and throw `StoaError("internal")`. Creating a metric whose name exists
 * returns the existing one when type, label names (and buckets) match, and throws otherwise, so
 * two modules may share a metric by declaring it the same way.
 *
 * Label-less counters, gauges and histograms render zeros before their first update, as the
 * official client libraries do. Each metric holds at most `MAX_SERIES_PER_METRIC` label sets (a
 * label fed from peer input must not grow memory without bound); `remove(labels)` forgets one.
 * A gauge or counter may instead be read at each render (`setFunction`): the shared registry so
 * shows the official clients' `process_*` metrics (cpu, memory, start time, threads, descriptors:
 * procstat.ts, fdlimit.ts) and `stoa_build_info{version,commit,bun} 1` on every /metrics.
 */
import { StoaError } from "./errors.ts";
import { buildInfo } from "./buildinfo.ts";
import { fdLimit, fdsInUse } from "./fdlimit.ts";
import { cpuSeconds, residentBytes, startTimeSeconds, threads, virtualBytes } from "./procstat.ts";

/** The `Content-Type` of a `render()` body. */
export const CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/**
 * Distinct label sets per metric. Beyond this a new label set is not recorded (and counted in
 * `overflowed`): metrics must never take the data path down, whatever a caller labels by.
 */
export const MAX_SERIES_PER_METRIC = 10_000;

/** Label values of one observation, keyed by label name. */
type Labels = Readonly<Record<string, string | number>>;

// From the Prometheus data model: https://prometheus.io/docs/concepts/data_model/
const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

type MetricType = "counter" | "gauge" | "histogram";

abstract class Metric<S> {
  abstract readonly type: MetricType;
  /** Label-set key → [label values, state]; a Map keeps first-use order for rendering. */
  readonly #series = new Map<string, { values: string[]; state: S }>();
  /** Updates to label sets beyond `MAX_SERIES_PER_METRIC`, not recorded. */
  overflowed = 0;
  /** The label object last used (undefined for a label-less metric), its key and series: a hot path that passes the same constant object again skips building the key. */
  #lastLabels: Labels | undefined;
  #lastKey = "";
  #last: { values: string[]; state: S } | undefined;

  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly string[],
  ) {}

  protected abstract fresh(): S;
  abstract renderSeries(out: string[]): void;

  protected stateFor(labels: Labels | undefined): S {
    // The last label set used again: no key built (a relay server counts every message it forwards).
    const last = this.#last;
    if (last !== undefined && labels === this.#lastLabels && (labels === undefined || this.#unchanged(labels, last.values)) && this.#series.get(this.#lastKey) === last) {
      return last.state;
    }
    const values = this.#labelValues(labels);
    const key = values.join("\u0000");
    let entry = this.#series.get(key);
    if (entry === undefined) {
      if (this.#series.size >= MAX_SERIES_PER_METRIC) {
        this.overflowed++;
        return this.fresh(); // updated, then forgotten
      }
      entry = { values, state: this.fresh() };
      this.#series.set(key, entry);
    }
    this.#lastLabels = labels;
    this.#lastKey = key;
    this.#last = entry;
    return entry.state;
  }

  /** Whether `labels` (the object last used) still holds `values` (a caller may have changed it since). */
  #unchanged(labels: Labels, values: readonly string[]): boolean {
    const names = this.labelNames;
    for (let i = 0; i < names.length; i++) if (String(labels[names[i] as string]) !== values[i]) return false;
    return true;
  }

  /** Forgets one label set (e.g. a publisher that closed), so series do not pile up. */
  remove(labels: Labels): void {
    this.#series.delete(this.#labelValues(labels).join("\u0000"));
  }

  #labelValues(labels: Labels | undefined): string[] {
    const given = labels === undefined ? [] : Object.keys(labels);
    const ok =
      given.length === this.labelNames.length && this.labelNames.every((n) => labels?.[n] !== undefined);
    if (!ok) {
      throw new StoaError(
        "internal",
        `metric ${this.name} takes labels {${this.labelNames.join(", ")}}, got {${given.join(", ")}}`,
      );
    }
    return this.labelNames.map((n) => String(labels?.[n]));
  }

  /** Series to render: label-less metrics always have their one series. */
  protected entries(): Iterable<{ values: string[]; state: S }> {
    if (this.labelNames.length === 0 && this.#series.size === 0) this.stateFor(undefined);
    return this.#series.values();
  }

  protected labelText(values: readonly string[], extra?: [string, string]): string {
    const pairs = this.labelNames.map((n, i) => `${n}="${escapeLabelValue(values[i] ?? "")}"`);
    if (extra !== undefined) pairs.push(`${extra[0]}="${escapeLabelValue(extra[1])}"`);
    return pairs.length === 0 ? "" : `{${pairs.join(",")}}`;
  }
}

/**
 * A metric of one number per label set (counters and gauges). `setFunction(read)` collects on
 * scrape: `read()` gives the value each time the registry renders (label-less metrics only),
 * like the Python client's `set_function`; a throwing `read` renders NaN.
 * @example
 * metrics.gauge("process_open_fds", "Number of open file descriptors.").setFunction(fdsInUse);
 */
abstract class ValueMetric extends Metric<{ value: number }> {
  #read: (() => number) | undefined;

  protected fresh() {
    return { value: 0 };
  }

  setFunction(read: () => number): this {
    if (this.labelNames.length > 0) throw new StoaError("internal", `${this.type} ${this.name} has labels; setFunction is for label-less ones`);
    this.#read = read;
    return this;
  }

  renderSeries(out: string[]): void {
    if (this.#read !== undefined) {
      let v: number;
      try {
        v = this.#read();
      } catch {
        v = Number.NaN;
      }
      this.stateFor(undefined).value = v;
    }
    for (const { values, state } of this.entries()) {
      out.push(`${this.name}${this.labelText(values)} ${formatNumber(state.value)}`);
    }
  }
}

/** A value that only goes up (requests served, bytes relayed); `setFunction` for a total another counts (the kernel's CPU time). */
export class Counter extends ValueMetric {
  readonly type = "counter";

  /**
   * Add `n` (default 1). A negative `n` throws: counters never go down.
   * @example
   * ```ts
   * requests.inc();                        // no labels
   * bytes.inc({ dir: "in" }, chunk.length);
   * ```
   */
  inc(labelsOrN?: Labels | number, n?: number): void {
    const [labels, by] = splitArgs(labelsOrN, n, 1);
    if (!(by >= 0)) throw new StoaError("internal", `counter ${this.name} cannot go down (inc by ${by})`);
    this.stateFor(labels).value += by;
  }

  /**
   * The series of `labels` (none for a label-less counter) as a handle whose `inc` is one
   * addition: for a hot path that counts every message into a label set it never removes (a
   * removed series' handle counts into nothing). `n` must not be negative.
   * @example
   * ```ts
   * const data = messages.series({ type: "data" }); // once
   * data.inc();                                    // per message
   * ```
   */
  series(labels?: Labels): CounterSeries {
    return new CounterSeries(this.stateFor(labels));
  }
}

/** One series of a `Counter` (`Counter.series`). */
export class CounterSeries {
  readonly #state: { value: number };

  constructor(state: { value: number }) {
    this.#state = state;
  }

  inc(n = 1): void {
    this.#state.value += n;
  }
}

/** A value that goes up and down (open connections, queue depth). */
export class Gauge extends ValueMetric {
  readonly type = "gauge";

  /** Set the value: `set(3)` or `set({ circle: "a" }, 3)`. */
  set(labelsOrValue: Labels | number, value?: number): void {
    const [labels, v] = splitArgs(labelsOrValue, value, Number.NaN);
    this.stateFor(labels).value = v;
  }

  /** Add `n` (default 1). */
  inc(labelsOrN?: Labels | number, n?: number): void {
    const [labels, by] = splitArgs(labelsOrN, n, 1);
    this.stateFor(labels).value += by;
  }

  /** Subtract `n` (default 1). */
  dec(labelsOrN?: Labels | number, n?: number): void {
    const [labels, by] = splitArgs(labelsOrN, n, 1);
    this.stateFor(labels).value -= by;
  }
}

/** Observations counted into fixed buckets (latencies, message sizes). */
export class Histogram extends Metric<{ counts: number[]; sum: number; count: number }> {
  readonly type = "histogram";

  constructor(
    name: string,
    help: string,
    /** Upper bounds, strictly increasing, without `+Inf` (always implied). */
    readonly buckets: readonly number[],
    labelNames: readonly string[],
  ) {
    super(name, help, labelNames);
  }

  protected fresh() {
    return { counts: new Array<number>(this.buckets.length).fill(0), sum: 0, count: 0 };
  }

  /** Record one observation: `observe(0.004)` or `observe({ op: "get" }, 0.004)`. */
  observe(labelsOrValue: Labels | number, value?: number): void {
    const [labels, v] = splitArgs(labelsOrValue, value, Number.NaN);
    const state = this.stateFor(labels);
    // Buckets are few (tens); a linear scan beats a binary search at this size.
    for (let i = 0; i < this.buckets.length; i++) {
      if (v <= (this.buckets[i] ?? Number.POSITIVE_INFINITY)) {
        state.counts[i] = (state.counts[i] ?? 0) + 1;
        break;
      }
    }
    state.sum += v;
    state.count += 1;
  }

  renderSeries(out: string[]): void {
    for (const { values, state } of this.entries()) {
      let cumulative = 0;
      this.buckets.forEach((bound, i) => {
        cumulative += state.counts[i] ?? 0;
        const labels = this.labelText(values, ["le", formatNumber(bound)]);
        out.push(`${this.name}_bucket${labels} ${formatNumber(cumulative)}`);
      });
      out.push(`${this.name}_bucket${this.labelText(values, ["le", "+Inf"])} ${formatNumber(state.count)}`);
      out.push(`${this.name}_sum${this.labelText(values)} ${formatNumber(state.sum)}`);
      out.push(`${this.name}_count${this.labelText(values)} ${formatNumber(state.count)}`);
    }
  }
}

type AnyMetric = Counter | Gauge | Histogram;

/**
 * A set of metrics rendered together. Most code uses the shared `metrics`; tests make their own.
 *
 * @example
 * ```ts
 * const relayed = metrics.counter("stoa_gateway_bytes_total", "Bytes relayed.", ["dir"]);
 * relayed.inc({ dir: "in" }, 512);
 * app.get("/metrics", (c) => c.text(metrics.render(), 200, { "Content-Type": CONTENT_TYPE }));
 * ```
 */
export class Registry {
  readonly #byName = new Map<string, AnyMetric>();

  counter(name: string, help: string, labelNames: readonly string[] = []): Counter {
    return this.#register(name, labelNames, Counter, () => new Counter(name, help, labelNames));
  }

  gauge(name: string, help: string, labelNames: readonly string[] = []): Gauge {
    return this.#register(name, labelNames, Gauge, () => new Gauge(name, help, labelNames));
  }

  /** `buckets`: upper bounds, strictly increasing and finite; `+Inf` is added for you. */
  histogram(name: string, help: string, buckets: readonly number[], labelNames: readonly string[] = []): Histogram {
    const bounds = buckets.at(-1) === Number.POSITIVE_INFINITY ? buckets.slice(0, -1) : [...buckets];
    bounds.forEach((b, i) => {
      if (!Number.isFinite(b) || (i > 0 && b <= (bounds[i - 1] ?? b))) {
        throw new StoaError(
          "internal",
          `histogram ${name}: buckets must be finite and strictly increasing, got [${buckets.join(", ")}]`,
        );
      }
    });
    if (labelNames.includes("le")) {
      throw new StoaError("internal", `histogram ${name}: the label name "le" is reserved for buckets`);
    }
    const metric = this.#register(name, labelNames, Histogram, () => new Histogram(name, help, bounds, labelNames));
    if (metric.buckets.join(",") !== bounds.join(",")) {
      throw new StoaError("internal", `histogram ${name} already exists with buckets [${metric.buckets.join(", ")}]`);
    }
    return metric;
  }

  /** The whole registry in the Prometheus text format, ending with a newline (empty if none). */
  render(): string {
    const out: string[] = [];
    for (const metric of this.#byName.values()) {
      out.push(`# HELP ${metric.name} ${escapeHelp(metric.help)}`);
      out.push(`# TYPE ${metric.name} ${metric.type}`);
      metric.renderSeries(out);
    }
    return out.length === 0 ? "" : `${out.join("\n")}\n`;
  }

  #register<M extends AnyMetric>(
    name: string,
    labelNames: readonly string[],
    kind: abstract new (...args: never[]) => M,
    create: () => M,
  ): M {
    if (!METRIC_NAME.test(name)) {
      throw new StoaError("internal", `metric name ${JSON.stringify(name)} must match ${METRIC_NAME.source}`);
    }
    for (const label of labelNames) {
      if (!LABEL_NAME.test(label) || label.startsWith("__")) {
        throw new StoaError(
          "internal",
          `label name ${JSON.stringify(label)} of ${name} must match ${LABEL_NAME.source} and not start with "__"`,
        );
      }
    }
    if (new Set(labelNames).size !== labelNames.length) {
      throw new StoaError("internal", `metric ${name} lists a label name twice: ${labelNames.join(", ")}`);
    }
    const existing = this.#byName.get(name);
    if (existing !== undefined) {
      if (!(existing instanceof kind) || existing.labelNames.join(",") !== labelNames.join(",")) {
        throw new StoaError(
          "internal",
          `metric ${name} already exists as a ${existing.type} with labels {${existing.labelNames.join(", ")}}; ` +
            "declare it the same way everywhere or pick another name",
        );
      }
      return existing;
    }
    const metric = create();
    this.#byName.set(name, metric);
    return metric;
  }
}

/** The process-wide registry that `/metrics` endpoints render. */
export const metrics = new Registry();

// Every /metrics shows the process's descriptors, under the names of the official clients'
// process collector (so dashboards for other exporters work); read at each scrape.
metrics.gauge("process_open_fds", "Number of open file descriptors.").setFunction(fdsInUse);
metrics.gauge("process_max_fds", "Maximum number of open file descriptors.").setFunction(fdLimit);
metrics.counter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.").setFunction(cpuSeconds);
metrics.gauge("process_resident_memory_bytes", "Resident memory size in bytes.").setFunction(residentBytes);
metrics.gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.").setFunction(virtualBytes);
metrics.gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds.").setFunction(startTimeSeconds);
metrics.gauge("process_threads", "Number of OS threads in the process.").setFunction(threads);
{
  const { version, commit, bun } = buildInfo();
  metrics.gauge("stoa_build_info", "A metric with a constant '1' labelled with stoa's version, git commit and Bun version.", ["version", "commit", "bun"]).set({ version, commit, bun }, 1);
}

function splitArgs(first: Labels | number | undefined, second: number | undefined, fallback: number) {
  return typeof first === "number" || first === undefined
    ? ([undefined, first ?? fallback] as const)
    : ([first, second ?? fallback] as const);
}

// Go's strconv.FormatFloat(v, 'g', -1, 64) spellings for the special values, as Prometheus parses them.
function formatNumber(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Number.POSITIVE_INFINITY) return "+Inf";
  if (v === Number.NEGATIVE_INFINITY) return "-Inf";
  return String(v);
}

function escapeHelp(text: string): string {
  return text.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

function escapeLabelValue(text: string): string {
  return text.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}
