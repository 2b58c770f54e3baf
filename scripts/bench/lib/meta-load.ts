#!/usr/bin/env bun
/**
 * The metaserver benchmark's load generator (scripts/bench/meta.ts): a process of its own that
 * runs closed loops of HTTP/1.1 requests over keep-alive connections, one request in flight per
 * connection, written against the wire (src/meta/protocol.ts) rather than with `fetch`: each
 * request is a prebuilt buffer, each answer is read as far as its status line and Content-Length
 * (or chunked end), so that the generator spends as little of the machine's CPU as it can.
 *
 * Control, one JSON line each way: stdin takes a `Job`, stdout answers its `JobResult` (or
 * `{"error": "…"}`) when it is done; "ready" is printed once at start; stdin's end exits.
 * Workloads, each on `clients` connections spread round-robin over `targets`:
 *   lookups       GET /v1/publishers?name=N, N drawn at random from `names`; a 200 whose body
 *                 holds no publisher is counted as a miss;
 *   heartbeats    each connection first registers a publisher of its own (`<tag>` in its name and
 *                 pub_id; untimed), then heartbeats it (POST /v1/publishers/<id>/heartbeat) until
 *                 the time is up, then deletes it (untimed);
 *   registrations each connection registers a fresh name with its own pub_id and deletes it again,
 *                 over and over (so that it never holds more than one pending registration: the
 *                 per-writer pending quota); the POST is the timed operation, the DELETE is
 *                 counted in `extra`.
 * Any answer but 2xx is an error, counted by status ("closed" for a connection that went away,
 * which is then opened again); the loop goes on. Latencies go into a histogram of 1 % buckets
 * (`LatencyHistogram`) that several processes' results can be merged from.
 */
import type { Socket } from "bun";
import http from "node:http";

/** A request's buckets grow by this factor: a percentile read from them is within 1 %. */
const BUCKET_GROWTH = 1.01;
const LOG_GROWTH = Math.log(BUCKET_GROWTH);
/** No answer on any connection for this long fails the job (a server that hangs ends the run). */
const STALL_MS = 10_000;
/** The body of a lookup that found nothing: `{"publishers":[],"next_cursor":null}`. */
const EMPTY_LOOKUP_BYTES = 36;

export interface Target {
  host: string;
  port: number;
}

export type Job =
  | { workload: "lookups"; targets: Target[]; clients: number; seconds: number; names: string[] }
  | { workload: "heartbeats" | "registrations"; targets: Target[]; clients: number; seconds: number; tag: string };

/** Sparse histogram: bucket index (log base 1.01 of the latency in ns) → count. */
export type LatencyHistogram = Record<string, number>;

export interface JobResult {
  /** Timed operations answered 2xx. */
  ok: number;
  /** Answers other than 2xx, by status; "closed" for a connection lost mid-request. */
  errors: Record<string, number>;
  /** Lookups answered 200 with no publisher. */
  misses: number;
  /** Untimed companion requests answered 2xx (the DELETE of each registration). */
  extra: number;
  /** From the start of the loops to the last answer. */
  seconds: number;
  latency: LatencyHistogram;
}

/** An answer as far as the benchmark reads it. */
interface Answer {
  status: number;
  bodyBytes: number;
}

/** One keep-alive HTTP/1.1 connection; `send` writes a whole request and resolves with its answer. */
class Conn {
  #socket: Socket<undefined> | null = null;
  #target: Target;
  #pending: Buffer | null = null;
  #waiter: { resolve: (a: Answer) => void; reject: (e: Error) => void } | null = null;

  constructor(target: Target) {
    this.#target = target;
  }

  async open(): Promise<void> {
    this.#socket = await Bun.connect({
      hostname: this.#target.host,
      port: this.#target.port,
      socket: {
        data: (_s, chunk) => this.#onData(chunk),
        close: () => this.#lost(),
        error: () => this.#lost(),
      },
    });
    this.#socket.setNoDelay(true);
  }

  get connected(): boolean {
    return this.#socket !== null;
  }

  send(request: Uint8Array): Promise<Answer> {
    const socket = this.#socket;
    if (socket === null) return Promise.reject(new Error("closed"));
    return new Promise<Answer>((resolve, reject) => {
      this.#waiter = { resolve, reject };
      const n = socket.write(request);
      if (n !== request.byteLength) {
        this.#waiter = null;
        reject(new Error(`short write (${n} of ${request.byteLength} bytes)`));
      }
    });
  }

  close(): void {
    const socket = this.#socket;
    this.#socket = null;
    socket?.end();
  }

  #lost(): void {
    this.#socket = null;
    this.#pending = null;
    const w = this.#waiter;
    this.#waiter = null;
    w?.reject(new Error("closed"));
  }

  #onData(chunk: Buffer): void {
    const buf = this.#pending === null ? chunk : Buffer.concat([this.#pending, chunk]);
    const answer = parseAnswer(buf);
    if (answer === null) {
      this.#pending = Buffer.from(buf); // Bun reuses the chunk's memory after the callback
      return;
    }
    this.#pending = null;
    const w = this.#waiter;
    this.#waiter = null;
    w?.resolve(answer);
  }
}

const HEADER_END = Buffer.from("\r\n\r\n");
const CHUNKED_END = Buffer.from("\r\n0\r\n\r\n");
const CONTENT_LENGTH = Buffer.from("\r\nContent-Length: ");

/** A whole answer in `buf` → its status and body size; null while it is incomplete. */
function parseAnswer(buf: Buffer): Answer | null {
  const end = buf.indexOf(HEADER_END);
  if (end < 0) return null;
  const status = (buf[9] ?? 0) * 100 + (buf[10] ?? 0) * 10 + (buf[11] ?? 0) - 111 * 48;
  // Bun.serve writes "Content-Length: N" in this case: found without a string or a regex.
  const at = buf.indexOf(CONTENT_LENGTH);
  if (at >= 0 && at < end) {
    let bodyBytes = 0;
    for (let i = at + CONTENT_LENGTH.byteLength; (buf[i] ?? 0) >= 48 && (buf[i] ?? 0) <= 57; i++) bodyBytes = bodyBytes * 10 + (buf[i] ?? 0) - 48;
    return buf.byteLength >= end + 4 + bodyBytes ? { status, bodyBytes } : null;
  }
  const head = buf.toString("latin1", 0, end);
  const length = /\r\ncontent-length: *(\d+)/i.exec(head);
  if (length !== null) {
    const bodyBytes = Number(length[1]);
    return buf.byteLength >= end + 4 + bodyBytes ? { status, bodyBytes } : null;
  }
  if (/\r\ntransfer-encoding: *chunked/i.test(head)) {
    return buf.byteLength >= end + 4 + CHUNKED_END.byteLength - 2 && buf.subarray(buf.byteLength - CHUNKED_END.byteLength).equals(CHUNKED_END)
      ? { status, bodyBytes: buf.byteLength - end - 4 }
      : null;
  }
  return { status, bodyBytes: 0 };
}

function request(method: string, target: Target, path: string, body?: string): Uint8Array {
  const head = `${method} ${path} HTTP/1.1\r\nHost: ${target.host}:${target.port}\r\n`;
  if (body === undefined) return Buffer.from(`${head}${method === "GET" ? "" : "Content-Length: 0\r\n"}\r\n`);
  return Buffer.from(`${head}Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
}

/** What the loops share: counts, the histogram, the last answer's time. */
class Tally {
  ok = 0;
  misses = 0;
  extra = 0;
  errors: Record<string, number> = {};
  latency: LatencyHistogram = {};
  last = Bun.nanoseconds();

  record(ns: number): void {
    const bucket = String(Math.round(Math.log(Math.max(1, ns)) / LOG_GROWTH));
    this.latency[bucket] = (this.latency[bucket] ?? 0) + 1;
  }

  error(what: string): void {
    this.errors[what] = (this.errors[what] ?? 0) + 1;
  }
}

/**
 * Sends `req` on `conn`, reopening it first when it was lost: the answer when it is 2xx, else
 * null, the failure counted in `tally` by status (`suffix` after it) or as "closed".
 */
async function exchange(conn: Conn, req: Uint8Array, tally: Tally, suffix = ""): Promise<Answer | null> {
  let answer: Answer;
  try {
    if (!conn.connected) await conn.open();
    answer = await conn.send(req);
  } catch (err) {
    tally.error(err instanceof Error && err.message === "closed" ? "closed" : `failed: ${err instanceof Error ? err.message : String(err)}`);
    return null;
  }
  if (answer.status >= 200 && answer.status < 300) return answer;
  tally.error(`${answer.status}${suffix}`);
  return null;
}

/** Runs one job: opens its connections, runs its loops for `seconds`, closes them. */
export async function runJob(job: Job): Promise<JobResult> {
  const conns = Array.from({ length: job.clients }, (_, i) => new Conn(job.targets[i % job.targets.length] as Target));
  await Promise.all(conns.map((c) => c.open()));
  const tally = new Tally();
  try {
    // Per connection: its timed operation (which may send more than one request).
    let op: (conn: Conn, i: number) => Promise<void>;
    let after: () => Promise<void> = async () => {};
    if (job.workload === "lookups") {
      const reqs = conns.map((c, i) => job.names.map((name) => request("GET", job.targets[i % job.targets.length] as Target, `/v1/publishers?name=${name}`)));
      op = async (conn, i) => {
        const mine = reqs[i] as Uint8Array[];
        const t0 = Bun.nanoseconds();
        const a = await exchange(conn, mine[Math.floor(Math.random() * mine.length)] as Uint8Array, tally);
        if (a === null) return;
        tally.ok++;
        tally.record(Bun.nanoseconds() - t0);
        if (a.bodyBytes <= EMPTY_LOOKUP_BYTES) tally.misses++;
      };
    } else if (job.workload === "heartbeats") {
      const ids = conns.map((_, i) => `hb-${job.tag}-c${i}`);
      const targetOf = (i: number) => job.targets[i % job.targets.length] as Target;
      await Promise.all(
        conns.map(async (conn, i) => {
          const body = JSON.stringify({ name: `bench/hb/${job.tag}/c${i}`, pub_id: ids[i], host: "127.0.0.1" });
          const failed = new Tally();
          if ((await exchange(conn, request("POST", targetOf(i), "/v1/publishers", body), failed)) === null) {
            throw new Error(`registering heartbeat publisher ${ids[i]} failed: ${Object.keys(failed.errors).join(", ")}`);
          }
        }),
      );
      const beats = conns.map((_, i) => request("POST", targetOf(i), `/v1/publishers/${ids[i]}/heartbeat`));
      op = async (conn, i) => {
        const t0 = Bun.nanoseconds();
        if ((await exchange(conn, beats[i] as Uint8Array, tally)) === null) return;
        tally.ok++;
        tally.record(Bun.nanoseconds() - t0);
      };
      after = async () => {
        await Promise.all(conns.map((conn, i) => exchange(conn, request("DELETE", targetOf(i), `/v1/publishers/${ids[i]}`), new Tally())));
      };
    } else {
      const seq = conns.map(() => 0);
      op = async (conn, i) => {
        const target = job.targets[i % job.targets.length] as Target;
        const n = (seq[i] ?? 0) + 1;
        seq[i] = n;
        const id = `rg-${job.tag}-c${i}-${n}`;
        const body = `{"name":"bench/rg/${job.tag}/c${i}/n${n}","pub_id":"${id}","host":"127.0.0.1"}`;
        const t0 = Bun.nanoseconds();
        if ((await exchange(conn, request("POST", target, "/v1/publishers", body), tally)) === null) return;
        tally.ok++;
        tally.record(Bun.nanoseconds() - t0);
        if ((await exchange(conn, request("DELETE", target, `/v1/publishers/${id}`), tally, " (delete)")) !== null) tally.extra++;
      };
    }
    const started = Bun.nanoseconds();
    tally.last = started;
    const deadline = started + job.seconds * 1e9;
    let watchdog: Timer | undefined;
    const stalled = new Promise<never>((_, reject) => {
      watchdog = setInterval(() => {
        if (Bun.nanoseconds() - tally.last > STALL_MS * 1e6) reject(new Error(`no answer on any connection for ${STALL_MS} ms`));
      }, 250);
    });
    const loops = Promise.all(
      conns.map(async (conn, i) => {
        while (Bun.nanoseconds() < deadline) {
          await op(conn, i);
          tally.last = Bun.nanoseconds();
        }
      }),
    );
    try {
      await Promise.race([loops, stalled]);
    } finally {
      clearInterval(watchdog);
    }
    const seconds = (tally.last - started) / 1e9;
    await after();
    return { ok: tally.ok, errors: tally.errors, misses: tally.misses, extra: tally.extra, seconds, latency: tally.latency };
  } finally {
    for (const c of conns) c.close();
  }
}

/** Adds histogram `b` into `a`. */
export function mergeLatency(a: LatencyHistogram, b: LatencyHistogram): LatencyHistogram {
  for (const [bucket, n] of Object.entries(b)) a[bucket] = (a[bucket] ?? 0) + n;
  return a;
}

/** The latency in ms at quantile `p` (nearest rank, low) of a histogram; NaN when it is empty. */
export function latencyAt(h: LatencyHistogram, p: number): number {
  const buckets = Object.entries(h)
    .map(([b, n]) => [Number(b), n] as const)
    .sort((x, y) => x[0] - y[0]);
  const total = buckets.reduce((s, [, n]) => s + n, 0);
  if (total === 0) return Number.NaN;
  const rank = Math.floor((total - 1) * p);
  let seen = 0;
  for (const [b, n] of buckets) {
    seen += n;
    if (seen > rank) return BUCKET_GROWTH ** b / 1e6;
  }
  return Number.NaN;
}

/**
 * Registers the publishers named `names` anew through `target`, untimed: each is deleted first
 * (200, or 404 when it is not there) and then registered (201) — a registration of the same
 * pub_id and name again would keep its pending expiry, which counts from the first. From the
 * loopback source addresses `addresses` in turn, `perAddress` names each: under --no-auth the
 * metaserver counts quotas per source address, and one address may hold only so many pending
 * registrations. Sequential per address; rejects on the first other answer.
 */
export async function registerAnew(target: Target, names: string[], pubIdOf: (name: string) => string, addresses: string[], perAddress: number): Promise<void> {
  if (names.length > addresses.length * perAddress) {
    throw new Error(`${names.length} publishers need ${Math.ceil(names.length / perAddress)} source addresses at ${perAddress} each; only ${addresses.length} given`);
  }
  await Promise.all(
    addresses.map(async (localAddress, a) => {
      const mine = names.slice(a * perAddress, (a + 1) * perAddress);
      if (mine.length === 0) return;
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
      const send = (method: string, path: string, body?: string) =>
        new Promise<number>((resolve, reject) => {
          const headers = body === undefined ? {} : { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body) };
          const req = http.request({ host: target.host, port: target.port, path, method, localAddress, agent, headers }, (res) => {
            res.resume();
            res.on("end", () => resolve(res.statusCode ?? 0));
          });
          req.on("error", reject);
          req.end(body);
        });
      try {
        for (const name of mine) {
          const pubId = pubIdOf(name);
          const removed = await send("DELETE", `/v1/publishers/${pubId}`);
          if (removed !== 200 && removed !== 404) throw new Error(`deleting ${pubId} from ${localAddress} answered ${removed}`);
          const status = await send("POST", "/v1/publishers", JSON.stringify({ name, pub_id: pubId, host: "127.0.0.1" }));
          if (status !== 201) throw new Error(`registering ${name} from ${localAddress} answered ${status}`);
        }
      } finally {
        agent.destroy();
      }
    }),
  );
}

if (import.meta.main) {
  console.log("ready");
  let buffered = "";
  const decoder = new TextDecoder();
  for await (const chunk of Bun.stdin.stream()) {
    buffered += decoder.decode(chunk, { stream: true });
    for (let nl = buffered.indexOf("\n"); nl >= 0; nl = buffered.indexOf("\n")) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      if (line.trim() === "") continue;
      try {
        console.log(JSON.stringify(await runJob(JSON.parse(line) as Job)));
      } catch (err) {
        console.log(JSON.stringify({ error: err instanceof Error ? err.message : String(err) }));
      }
    }
  }
}
