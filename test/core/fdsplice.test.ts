import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import type { Socket, SocketHandler } from "bun";
import { ptr } from "bun:ffi";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, readlinkSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { StoaError } from "../../src/core/errors.ts";
import { FdSplicer, SPLICE_TAGS, type Splice, type SpliceOptions, takeSocketFd } from "../../src/core/fdsplice.ts";
import { SPLICE_READ_BYTES } from "../../src/core/fdsplice-engine.ts";
import { libc } from "../../src/ffi/libc.ts";
import { FinishingOutbox } from "../fixtures/pipe-helpers.ts";
import { eventually } from "../helpers/eventually.ts";

/** Where a test server listens: TCP on 127.0.0.1 or a Unix socket. */
type Where = { port: number } | { unix: string };

/** Records what one Bun socket receives; the same class serves clients, servers and the proxy. */
class Peer {
  sock!: Socket<Peer>;
  out!: FinishingOutbox;
  readonly chunks: Buffer[] = [];
  total = 0;
  /** The peer's FIN arrived as an `end` event (not folded into `close`). */
  finSeen = false;
  isClosed = false;
  #waiting: { n: number; resolve: () => void }[] = [];
  readonly #ended = Promise.withResolvers<void>();
  readonly #closed = Promise.withResolvers<Error | undefined>();

  /** Resolves at the peer's FIN or at close, whichever comes first. */
  get ended(): Promise<void> {
    return this.#ended.promise;
  }
  /** Resolves at close, with its error if any. */
  get closed(): Promise<Error | undefined> {
    return this.#closed.promise;
  }
  received(): Buffer {
    return Buffer.concat(this.chunks);
  }
  waitFor(n: number): Promise<void> {
    if (this.total >= n) return Promise.resolve();
    return new Promise((resolve) => this.#waiting.push({ n, resolve }));
  }
  onData(chunk: Buffer): void {
    this.chunks.push(Buffer.from(chunk));
    this.total += chunk.byteLength;
    this.#waiting = this.#waiting.filter((w) => (this.total >= w.n ? (w.resolve(), false) : true));
  }
  onEnd(): void {
    this.finSeen = true;
    this.#ended.resolve();
  }
  onClose(err: Error | undefined): void {
    this.isClosed = true;
    this.#ended.resolve();
    this.#closed.resolve(err);
  }
}

interface Behaviour {
  open?(p: Peer): void;
  data?(p: Peer, chunk: Buffer): void;
  /** Default: nothing, the connection stays half-open. */
  end?(p: Peer): void;
}

/** Half-open-capable handlers that record into a `Peer` in `socket.data`. */
function peerHandlers(behaviour: Behaviour = {}): SocketHandler<Peer> {
  return {
    open(s) {
      if (!(s.data instanceof Peer)) s.data = new Peer();
      s.data.sock = s;
      s.data.out = new FinishingOutbox(s);
      behaviour.open?.(s.data);
    },
    data(s, chunk) {
      s.data.onData(chunk);
      behaviour.data?.(s.data, chunk);
    },
    drain(s) {
      s.data.out.flush();
    },
    end(s) {
      s.data.onEnd();
      behaviour.end?.(s.data);
    },
    close(s, err) {
      s.data.onClose(err);
    },
  };
}

let dir = "";
let splicer: FdSplicer;
const cleanups: (() => void)[] = [];
/** Every Peer a test made, terminated at the end if still open. */
const peers: Peer[] = [];

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "fs-"));
  splicer = new FdSplicer();
});

afterEach(async () => {
  for (const p of peers.splice(0)) if (!p.isClosed && p.sock !== undefined) p.sock.terminate();
  for (const c of cleanups.splice(0).reverse()) c();
  await splicer.close();
  rmSync(dir, { recursive: true, force: true });
});

let unixCount = 0;
function unixPath(): { unix: string } {
  return { unix: join(dir, `s${unixCount++}.sock`) };
}

interface Server {
  readonly where: Where;
  /** Each accepted connection, in order. */
  next(): Promise<Peer>;
}

/** A server on `on` ("tcp" = 127.0.0.1, port 0) whose connections behave as told. */
function serve(on: "tcp" | { unix: string }, behaviour: Behaviour = {}): Server {
  const accepted: Peer[] = [];
  const waiters: ((p: Peer) => void)[] = [];
  const handlers = peerHandlers({
    ...behaviour,
    open(p) {
      peers.push(p);
      const w = waiters.shift();
      if (w) w(p);
      else accepted.push(p);
      behaviour.open?.(p);
    },
  });
  let where: Where;
  if (on === "tcp") {
    const l = Bun.listen<Peer>({ hostname: "127.0.0.1", port: 0, allowHalfOpen: true, socket: handlers });
    cleanups.push(() => l.stop(true));
    where = { port: l.port };
  } else {
    const l = Bun.listen<Peer>({ unix: on.unix, allowHalfOpen: true, socket: handlers });
    cleanups.push(() => l.stop(true));
    where = on;
  }
  return {
    where,
    next() {
      const p = accepted.shift();
      if (p) return Promise.resolve(p);
      return new Promise((resolve) => waiters.push(resolve));
    },
  };
}

async function connect(where: Where, behaviour: Behaviour = {}): Promise<Peer> {
  const data = new Peer();
  const socket = peerHandlers(behaviour);
  if ("port" in where) {
    await Bun.connect<Peer>({ hostname: "127.0.0.1", port: where.port, allowHalfOpen: true, data, socket });
  } else {
    await Bun.connect<Peer>({ unix: where.unix, allowHalfOpen: true, data, socket });
  }
  peers.push(data);
  return data;
}

interface ProxyOptions {
  /** Default "tcp". */
  listen?: "tcp" | { unix: string };
  /**
   * When to hand the sockets over: at once ("open", the client paused while dialling), after the
   * client's FIN ("client-end", its bytes go as `toB`), or after the upstream's FIN
   * ("upstream-end", its bytes go as `toA`).
   */
  after?: "open" | "client-end" | "upstream-end";
  splice?: SpliceOptions | ((client: Peer, upstream: Peer) => SpliceOptions);
}

interface Proxy {
  readonly where: Where;
  /** Each splice as it is made, in accept order. */
  next(): Promise<Splice>;
}

/** An L4 proxy to `target` built the way the gateway uses the splicer. */
function startProxy(target: Where, options: ProxyOptions = {}): Proxy {
  const made: Splice[] = [];
  const waiters: ((s: Splice) => void)[] = [];
  const after = options.after ?? "open";
  const hand = async (client: Peer): Promise<void> => {
    if (after === "client-end") {
      await client.ended;
      client.sock.pause();
    }
    const upstream = await connect(target);
    if (after === "upstream-end") await upstream.ended;
    upstream.sock.pause();
    const opts = typeof options.splice === "function" ? options.splice(client, upstream) : (options.splice ?? {});
    const s = splicer.splice(takeSocketFd(client.sock), takeSocketFd(upstream.sock), opts);
    const w = waiters.shift();
    if (w) w(s);
    else made.push(s);
  };
  const server = serve(options.listen ?? "tcp", {
    open(client) {
      if (after !== "client-end") client.sock.pause();
      void hand(client);
    },
  });
  return {
    where: server.where,
    next() {
      const s = made.shift();
      if (s) return Promise.resolve(s);
      return new Promise((resolve) => waiters.push(resolve));
    },
  };
}

const echo: Behaviour = {
  data: (p, chunk) => p.out.write(new Uint8Array(chunk)),
  end: (p) => p.out.finish("end"),
};

/** Raises SO_SNDBUF of a Bun socket (the kernel doubles it, up to net.core.wmem_max). */
function setSendBuffer(sock: Socket<Peer>, bytes: number): void {
  const fd: unknown = Reflect.get(sock, "fd");
  if (typeof fd !== "number") throw new Error("the socket has no fd");
  const SOL_SOCKET = 1;
  const SO_SNDBUF = 7;
  expect(libc().setsockopt(fd, SOL_SOCKET, SO_SNDBUF, ptr(new Int32Array([bytes])), 4)).toBe(0);
}

/** This process's descriptors, each as "fd -> what it refers to" (so a reused number differs). */
function openFds(): Set<string> {
  const fds = new Set<string>();
  for (const fd of readdirSync("/proc/self/fd")) {
    try {
      fds.add(`${fd} -> ${readlinkSync(`/proc/self/fd/${fd}`)}`);
    } catch {
      // closed while listing (readdir's own descriptor, for one)
    }
  }
  return fds;
}
const sha256 = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");
const text = (s: string): Uint8Array => new TextEncoder().encode(s);

describe("splicing", () => {
  test("moves bytes both ways in order, the initial bytes of each side first", async () => {
    const server = serve("tcp", echo);
    const proxy = startProxy(server.where, { splice: { toB: text("PRELUDE|"), toA: text("WELCOME|") } });
    const client = await connect(proxy.where);
    const splice = await proxy.next();
    await client.waitFor(8);
    expect(client.received().toString()).toBe("WELCOME|");
    let sent = "";
    for (const msg of ["one", "-two", "-three"]) {
      client.out.write(msg);
      sent += msg;
      await client.waitFor(8 + 8 + sent.length);
    }
    expect(client.received().toString()).toBe(`WELCOME|PRELUDE|${sent}`);
    client.out.finish("shutdown");
    const stats = await splice.done;
    expect(stats).toMatchObject({ bytesAtoB: 8 + sent.length, bytesBtoA: 8 + 8 + sent.length, error: null });
    await client.closed;
  });

  test("splices Unix sockets as well as TCP, a megabyte each way intact", async () => {
    const server = serve(unixPath(), echo);
    const proxy = startProxy(server.where, { listen: unixPath() });
    const client = await connect(proxy.where);
    const splice = await proxy.next();
    const payload = randomBytes(1024 * 1024);
    client.out.write(payload);
    client.out.finish("shutdown");
    await client.closed;
    expect(sha256(client.received())).toBe(sha256(payload));
    expect(await splice.done).toMatchObject({ bytesAtoB: payload.byteLength, bytesBtoA: payload.byteLength, error: null });
  });

  test("sends exactly the bytes of an initial chunk that is a view into a larger buffer", async () => {
    const server = serve("tcp", { end: (p) => p.out.finish("end") });
    const backing = Buffer.from("xxxxHELLOyyyy");
    const proxy = startProxy(server.where, { splice: { toB: backing.subarray(4, 9) } });
    const client = await connect(proxy.where);
    const upstream = await server.next();
    const splice = await proxy.next();
    client.out.finish("shutdown");
    await upstream.ended;
    expect(upstream.received().toString()).toBe("HELLO");
    expect((await splice.done).bytesAtoB).toBe(5);
  });
});

describe("half-close", () => {
  test("forwards the client's FIN and delivers the whole reply sent after it", async () => {
    const reply = randomBytes(4 * 1024 * 1024);
    let question = "";
    const server = serve("tcp", {
      end(p) {
        question = p.received().toString();
        p.out.write(reply);
        p.out.finish("end");
      },
    });
    const proxy = startProxy(server.where);
    const client = await connect(proxy.where);
    const splice = await proxy.next();
    client.out.write("question?");
    client.out.finish("shutdown");
    await client.ended;
    expect(question).toBe("question?");
    expect(client.received().equals(reply)).toBe(true);
    expect(await splice.done).toMatchObject({ bytesAtoB: 9, bytesBtoA: reply.byteLength, error: null });
  });

  test("forwards the server's FIN while the client keeps sending", async () => {
    const upload = randomBytes(2 * 1024 * 1024);
    const server = serve(unixPath(), { open: (p) => (p.out.write("bye"), p.out.finish("shutdown")) });
    const proxy = startProxy(server.where);
    const client = await connect(proxy.where);
    const splice = await proxy.next();
    const upstream = await server.next();
    await client.ended;
    expect(client.finSeen).toBe(true);
    expect(client.received().toString()).toBe("bye");
    client.out.write(upload);
    client.out.finish("shutdown");
    // Bun reports a FIN on a socket that already sent its own as `close`.
    await upstream.closed;
    expect(upstream.received().equals(upload)).toBe(true);
    expect(await splice.done).toMatchObject({ bytesAtoB: upload.byteLength, bytesBtoA: 3, error: null });
  });

  test("aEnded forwards the client's FIN after the initial bytes", async () => {
    let question = "";
    const server = serve("tcp", {
      end(p) {
        question = p.received().toString();
        p.out.write(`answer to ${question}`);
        p.out.finish("shutdown");
      },
    });
    const proxy = startProxy(server.where, {
      after: "client-end",
      splice: (client) => ({ toB: client.received(), aEnded: true }),
    });
    const client = await connect(proxy.where);
    client.out.write("the question");
    client.out.finish("shutdown");
    const splice = await proxy.next();
    await client.closed;
    expect(question).toBe("the question");
    expect(client.received().toString()).toBe("answer to the question");
    expect(await splice.done).toMatchObject({ bytesAtoB: 12, bytesBtoA: 22, error: null });
  });

  test("bEnded forwards the server's FIN after its initial bytes, and the client can still send", async () => {
    const server = serve(unixPath(), { open: (p) => (p.out.write("greeting"), p.out.finish("shutdown")) });
    const proxy = startProxy(server.where, {
      after: "upstream-end",
      splice: (_client, upstream) => ({ toA: upstream.received(), bEnded: true }),
    });
    const client = await connect(proxy.where);
    const upstream = await server.next();
    const splice = await proxy.next();
    await client.ended;
    expect(client.finSeen).toBe(true);
    expect(client.received().toString()).toBe("greeting");
    client.out.write("thanks");
    client.out.finish("shutdown");
    await upstream.closed;
    expect(upstream.received().toString()).toBe("thanks");
    expect(await splice.done).toMatchObject({ bytesAtoB: 6, bytesBtoA: 8, error: null });
  });
});

/** Reads a child's stdout line by line. */
function lineReader(stream: ReadableStream<Uint8Array>): () => Promise<string> {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  return async () => {
    for (;;) {
      const nl = buffered.indexOf("\n");
      if (nl >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        return line;
      }
      const { value, done } = await reader.read();
      if (done) throw new Error(`child exited before a full line (got ${JSON.stringify(buffered)})`);
      buffered += decoder.decode(value, { stream: true });
    }
  };
}

const fixture = (name: string): string => join(import.meta.dir, "..", "fixtures", name);

describe("backpressure", () => {
  test(
    "streams 128 MiB to a slow reader in another process intact, never holding more than one read",
    async () => {
      const TOTAL = 128 * 1024 * 1024;
      const sinkPath = unixPath().unix;
      // The sink stops reading for 5 ms after every MiB: far slower than loopback, so the
      // kernel buffers fill and the splicer must stop reading the source.
      const sink = Bun.spawn([process.execPath, fixture("pipe-sink.ts"), sinkPath, String(1024 * 1024), "5"], {
        stdout: "pipe",
        stderr: "inherit",
      });
      cleanups.push(() => sink.kill("SIGKILL"));
      const sinkLine = lineReader(sink.stdout);
      expect(await sinkLine()).toBe("ready");

      // A queue cap of exactly one read: exceeding it would destroy the splice with an error.
      const proxy = startProxy({ unix: sinkPath }, { splice: { maxQueueBytes: SPLICE_READ_BYTES } });
      Bun.gc(true);
      const baseline = process.memoryUsage().rss;
      let peak = baseline;
      const sampler = setInterval(() => {
        peak = Math.max(peak, process.memoryUsage().rss);
      }, 20);
      cleanups.push(() => clearInterval(sampler));

      const port = "port" in proxy.where ? proxy.where.port : 0;
      const source = Bun.spawn([process.execPath, fixture("pipe-source.ts"), String(port), String(TOTAL)], {
        stdout: "pipe",
        stderr: "inherit",
      });
      cleanups.push(() => source.kill("SIGKILL"));
      const sourceLine = lineReader(source.stdout);
      const splice = await proxy.next();
      const [sentLine, receivedLine, stats] = await Promise.all([sourceLine(), sinkLine(), splice.done]);
      clearInterval(sampler);

      const sent = JSON.parse(sentLine) as { sent: number; sha256: string };
      const received = JSON.parse(receivedLine) as { received: number; sha256: string; pauses: number };
      expect(sent.sent).toBe(TOTAL);
      expect(received.received).toBe(TOTAL);
      expect(received.sha256).toBe(sent.sha256);
      expect(stats.error).toBeNull();
      expect(stats.bytesAtoB).toBe(TOTAL);
      // The reader really pushed back, and the splicer queued at most one read for it.
      expect(received.pauses).toBeGreaterThan(0);
      expect(stats.maxQueuedAtoB).toBeGreaterThan(0);
      expect(stats.maxQueuedAtoB).toBeLessThanOrEqual(SPLICE_READ_BYTES);
      expect(peak - baseline).toBeLessThan(TOTAL / 4);
      expect(await source.exited).toBe(0);
      expect(await sink.exited).toBe(0);
    },
    30_000,
  );

  test("holds at most one read for a client that reads a large reply slowly", async () => {
    const reply = randomBytes(24 * 1024 * 1024);
    // TCP: its FIN is read like data. (A Unix server's close while the client lags hits the bug
    // in the next test.)
    const server = serve("tcp", { open: (p) => (p.out.write(reply), p.out.finish("end")) });
    const proxy = startProxy(server.where);
    let sinceRest = 0;
    let pauses = 0;
    const client = await connect(proxy.where, {
      data(p, chunk) {
        sinceRest += chunk.byteLength;
        if (sinceRest < 1024 * 1024) return;
        sinceRest = 0;
        pauses++;
        p.sock.pause();
        setTimeout(() => p.sock.resume(), 5);
      },
    });
    const splice = await proxy.next();
    await client.ended;
    expect(sha256(client.received())).toBe(sha256(reply));
    client.sock.end();
    const stats = await splice.done;
    expect(stats.error).toBeNull();
    expect(stats.bytesBtoA).toBe(reply.byteLength);
    expect(pauses).toBeGreaterThan(0);
    expect(stats.maxQueuedBtoA).toBeGreaterThan(0);
    expect(stats.maxQueuedBtoA).toBeLessThanOrEqual(SPLICE_READ_BYTES);
  });

  // A paused source that hangs up must not be drained into memory on its hang-up events: a
  // backlog sent before the hang-up would be held in full, and one over maxQueueBytes would
  // destroy a transfer that did nothing wrong (the engine parks such a source instead).
  test("holds at most one read, and loses nothing, when a server with a backlog hangs up on a slow client", async () => {
    const reply = randomBytes(32 * 1024 * 1024);
    let accepted = 0;
    const server = serve(unixPath());
    const proxy = startProxy(server.where, { splice: { maxQueueBytes: 1024 * 1024 } });
    const client = await connect(proxy.where, { open: (p) => p.sock.pause() });
    const splice = await proxy.next();
    const upstream = await server.next();
    // A server with a large send buffer: several MiB can wait in the splicer's receive queue.
    setSendBuffer(upstream.sock, 4 * 1024 * 1024);
    const pump = (): void => {
      if (upstream.isClosed) return;
      accepted += Math.max(0, upstream.sock.write(reply.subarray(accepted)));
    };
    // Write until every buffer on the way is full (the client does not read), then hang up.
    let last = -1;
    await eventually("the buffers to fill", () => {
      pump();
      const same = accepted === last;
      last = accepted;
      return same && splicer.totals(0).bToA > 0;
    });
    upstream.sock.end();
    // The FIN reaches the splicer before the client reads (no state of the splicer shows it).
    await Bun.sleep(100);
    client.sock.resume();
    await client.ended;
    client.sock.end();
    const stats = await splice.done;
    expect(stats.error).toBeNull();
    expect(client.total).toBe(accepted);
    expect(client.received().equals(reply.subarray(0, accepted))).toBe(true);
    expect(stats.maxQueuedBtoA).toBeLessThanOrEqual(SPLICE_READ_BYTES);
  });

  test("destroys a splice whose initial bytes exceed maxQueueBytes", async () => {
    const server = serve("tcp");
    const proxy = startProxy(server.where, { splice: { toB: new Uint8Array(2048), maxQueueBytes: 1024 } });
    const client = await connect(proxy.where);
    const upstream = await server.next();
    const stats = await (await proxy.next()).done;
    expect(stats.error).toBeInstanceOf(StoaError);
    expect(stats.error?.message).toContain("1024");
    expect(stats.bytesAtoB).toBe(0);
    await Promise.all([client.closed, upstream.closed]);
  });
});

describe("failures", () => {
  test("a server that resets mid-upload: the client gets every byte read from it, then a FIN", async () => {
    const reply = randomBytes(256 * 1024);
    const server = serve("tcp", {
      open: (p) => p.out.write(reply),
      data: (p) => {
        if (p.total >= 1024 * 1024 && !p.isClosed) p.sock.terminate();
      },
    });
    const proxy = startProxy(server.where);
    const client = await connect(proxy.where);
    const splice = await proxy.next();
    client.out.write(randomBytes(16 * 1024 * 1024));
    await client.ended;
    expect(client.finSeen).toBe(true);
    expect(client.isClosed).toBe(false);
    client.sock.end();
    const stats = await splice.done;
    const got = client.received();
    expect(got.byteLength).toBe(stats.bytesBtoA);
    expect(got.equals(reply.subarray(0, got.byteLength))).toBe(true);
    expect(stats.error).toBeInstanceOf(StoaError);
    expect(stats.error).toMatchObject({ code: "io" });
    expect(await client.closed).toBeUndefined();
  });

  test("a server that resets while the client is not reading: the bytes already read still arrive", async () => {
    // More than every buffer on the way can hold (the server's and client's sockets, which
    // loopback autotuning grows to several MiB, and a splice pipe): the reset must cut it short.
    const reply = randomBytes(64 * 1024 * 1024);
    const server = serve("tcp", { open: (p) => p.out.write(reply) });
    const proxy = startProxy(server.where);
    const client = await connect(proxy.where, { open: (p) => p.sock.pause() });
    const splice = await proxy.next();
    const upstream = await server.next();
    // Let the kernel buffers and the splicer's queue fill, then reset the server's end.
    await eventually("bytes to flow", () => splicer.totals(0).bToA > 0);
    await Bun.sleep(100);
    upstream.sock.terminate();
    await Bun.sleep(50); // the reset reaches the splicer before the client reads (no state of the splicer shows it)
    client.sock.resume();
    await client.ended;
    expect(client.finSeen).toBe(true);
    client.sock.end();
    const stats = await splice.done;
    const got = client.received();
    expect(got.byteLength).toBeGreaterThan(0);
    expect(got.byteLength).toBeLessThan(reply.byteLength);
    expect(got.byteLength).toBe(stats.bytesBtoA);
    expect(got.equals(reply.subarray(0, got.byteLength))).toBe(true);
    expect(stats.maxQueuedBtoA).toBeGreaterThan(0);
    expect(stats.error).toMatchObject({ code: "io" });
  });

  test("a client that resets: the server gets the bytes read from it, then a FIN", async () => {
    const server = serve("tcp", { end: (p) => p.out.finish("end") });
    const proxy = startProxy(server.where);
    const client = await connect(proxy.where);
    const splice = await proxy.next();
    const upstream = await server.next();
    client.out.write("hello");
    await upstream.waitFor(5);
    client.sock.terminate();
    await upstream.closed;
    expect(upstream.finSeen).toBe(true);
    expect(upstream.received().toString()).toBe("hello");
    const stats = await splice.done;
    expect(stats.bytesAtoB).toBe(5);
    expect(stats.error).toMatchObject({ code: "io" });
  });

  test(
    "closes every descriptor it was given: 200 splices ending every which way leave no fd behind",
    async () => {
      // What the client asks for decides how its connection ends.
      const behaviour: Behaviour = {
        data(p) {
          const said = p.received().toString();
          if (said === "reset") p.sock.terminate();
          else if (said === "hangup") p.sock.end();
          else p.out.write("ok");
        },
        end: (p) => p.out.finish("end"),
      };
      const servers = [serve("tcp", behaviour), serve(unixPath(), behaviour)];
      const proxies = servers.map((s) => startProxy(s.where, { splice: { lingerMs: 200 } }));
      const scenarios = ["fin", "client-reset", "reset", "hangup", "destroy"] as const;

      const run = async (i: number, overUnix: boolean, client: Peer, splice: Splice): Promise<void> => {
        const scenario = scenarios[i % scenarios.length];
        switch (scenario) {
          case "fin":
            client.out.write("hi");
            await client.waitFor(2);
            client.out.finish("shutdown");
            break;
          case "client-reset":
            client.out.write("hi");
            await client.waitFor(2);
            client.sock.terminate();
            break;
          case "reset":
            client.out.write("reset");
            await client.ended;
            client.sock.end();
            break;
          case "hangup":
            client.out.write("hangup");
            await client.ended;
            // Over a Unix socket the splicer sees the hang-up and the linger time ends the
            // client; over TCP a close looks like a half-close, so the client must close too.
            if (!overUnix) client.sock.end();
            break;
          case "destroy":
            client.out.write("hi");
            await client.waitFor(2);
            splicer.destroy(splice.id);
            break;
        }
        await splice.done;
        await client.ended;
        if (!client.isClosed) client.sock.terminate();
        await client.closed;
      };

      // Warm up first: the engine's thread opens its own descriptors on first use.
      const warm = await connect(proxies[0]!.where);
      warm.out.finish("shutdown");
      await (await proxies[0]!.next()).done;
      await warm.closed;
      const before = openFds();

      const batches = 4;
      const perBatch = 50;
      for (let batch = 0; batch < batches; batch++) {
        const running: Promise<void>[] = [];
        for (let j = 0; j < perBatch; j++) {
          const i = batch * perBatch + j;
          const proxy = proxies[i % 2]!;
          const client = await connect(proxy.where);
          running.push(run(Math.floor(i / 2), i % 2 === 1, client, await proxy.next()));
        }
        await Promise.all(running);
      }
      expect(splicer.active).toBe(0);
      // Bun closes the test's own sockets asynchronously; wait for them, then compare.
      const leaked = (): string[] => [...openFds()].filter((fd) => !before.has(fd));
      await eventually("every descriptor opened since the warm-up to close", () => leaked().length === 0).catch(() => {});
      expect(leaked()).toEqual([]);
    },
    30_000,
  );
});

describe("abortive", () => {
  test("a client that resets: the server is reset too, never sent a FIN", async () => {
    const server = serve("tcp");
    const proxy = startProxy(server.where, { splice: { abortive: true } });
    const client = await connect(proxy.where);
    const splice = await proxy.next();
    const upstream = await server.next();
    client.out.write("hello");
    await upstream.waitFor(5);
    client.sock.terminate();
    const err = await upstream.closed;
    expect(upstream.finSeen).toBe(false);
    expect(err).toBeDefined();
    const stats = await splice.done;
    expect(stats.error).toMatchObject({ code: "io" });
  });

  test("a server that resets: the client is reset too, never sent a FIN", async () => {
    const server = serve("tcp");
    const proxy = startProxy(server.where, { splice: { abortive: true } });
    const client = await connect(proxy.where);
    const splice = await proxy.next();
    const upstream = await server.next();
    upstream.out.write("partial");
    await client.waitFor(7);
    upstream.sock.terminate();
    const err = await client.closed;
    expect(client.finSeen).toBe(false);
    expect(err).toBeDefined();
    expect((await splice.done).error).not.toBeNull();
  });

  test("FINs still travel both ways, and the close after them is orderly: a client reading late gets every byte", async () => {
    const server = serve("tcp", echo);
    const proxy = startProxy(server.where, { splice: { abortive: true } });
    const client = await connect(proxy.where);
    const splice = await proxy.next();
    const body = randomBytes(64 * 1024);
    client.sock.pause();
    client.out.write(body);
    client.out.finish("shutdown");
    // The echo and its FIN wait in the client's kernel buffer while the splicer closes its sockets.
    const stats = await splice.done;
    expect(stats).toMatchObject({ bytesAtoB: body.byteLength, bytesBtoA: body.byteLength, error: null });
    await Bun.sleep(50);
    client.sock.resume();
    await client.ended;
    expect(sha256(client.received())).toBe(sha256(body));
    client.sock.end();
    expect(await client.closed).toBeUndefined();
  });

  test("the process holding the splice dying resets both sockets (SO_LINGER 0 until an orderly close)", async () => {
    // A child process splices two connections it accepted; SIGKILL closes its descriptors.
    const script = join(dir, "child.ts");
    await Bun.write(
      script,
      `import { FdSplicer, takeSocketFd } from ${JSON.stringify(join(import.meta.dir, "../../src/core/fdsplice.ts"))};
const splicer = new FdSplicer();
const held: any[] = [];
const l = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { open(s) { s.pause(); held.push(s); if (held.length === 2) { splicer.splice(takeSocketFd(held[0]), takeSocketFd(held[1]), { abortive: true }); console.log("spliced"); } }, data() {} } });
console.log(l.port);
setInterval(() => {}, 1000);
`,
    );
    const child = Bun.spawn([process.execPath, script], { stdout: "pipe", stderr: "inherit" });
    cleanups.push(() => child.kill("SIGKILL"));
    const reader = child.stdout.getReader();
    let out = "";
    while (!out.includes("\n")) out += new TextDecoder().decode((await reader.read()).value);
    const port = Number(out.split("\n")[0]);
    const a = await connect({ port });
    const b = await connect({ port });
    while (!out.includes("spliced")) out += new TextDecoder().decode((await reader.read()).value);
    a.out.write("ping");
    await b.waitFor(4);
    child.kill("SIGKILL");
    const [ea, eb] = await Promise.all([a.closed, b.closed]);
    expect(a.finSeen).toBe(false);
    expect(b.finSeen).toBe(false);
    expect(ea).toBeDefined();
    expect(eb).toBeDefined();
  });
});

describe("linger", () => {
  test("closes a client that neither reads nor closes lingerMs after the server hung up", async () => {
    const lingerMs = 300;
    const server = serve(unixPath(), { open: (p) => (p.out.write("bye"), p.out.finish("end")) });
    const proxy = startProxy(server.where, { splice: { lingerMs } });
    const client = await connect(proxy.where);
    const splice = await proxy.next();
    await client.ended;
    const finAt = performance.now();
    expect(client.received().toString()).toBe("bye");
    const stats = await splice.done;
    expect(performance.now() - finAt).toBeGreaterThanOrEqual(lingerMs / 2);
    expect(stats).toMatchObject({ bytesBtoA: 3, error: null });
    // The proxy's end of the connection is gone: the client's next write is reset.
    client.out.write("anyone there?");
    expect(await client.closed).toBeInstanceOf(Error);
  });

  test("resets a client that cannot take its bytes by the end of lingerMs", async () => {
    const reply = randomBytes(32 * 1024 * 1024);
    const server = serve(unixPath(), { open: (p) => p.out.write(reply) });
    const proxy = startProxy(server.where, { splice: { lingerMs: 200 } });
    const client = await connect(proxy.where, { open: (p) => p.sock.pause() });
    const splice = await proxy.next();
    const upstream = await server.next();
    // Let the buffers and the splicer's queue fill, then hang up the server's end.
    await eventually("bytes to flow", () => splicer.totals(0).bToA > 0);
    await Bun.sleep(100);
    upstream.sock.end();
    const stats = await splice.done;
    expect(stats.maxQueuedBtoA).toBeGreaterThan(0);
    client.sock.resume();
    expect(await client.closed).toBeInstanceOf(Error);
    expect(client.finSeen).toBe(false);
    // A reset also drops what the kernel still held for the client: it gets a prefix at most.
    const got = client.received();
    expect(got.byteLength).toBeLessThanOrEqual(stats.bytesBtoA);
    expect(got.equals(reply.subarray(0, got.byteLength))).toBe(true);
  });
});

describe("destroy", () => {
  test("destroy(id) resets both sockets at once and resolves done with the reason", async () => {
    const server = serve("tcp", echo);
    const proxy = startProxy(server.where);
    const client = await connect(proxy.where);
    const splice = await proxy.next();
    const upstream = await server.next();
    client.out.write("ping");
    await client.waitFor(4);
    splicer.destroy(splice.id, "kicked by the test");
    const stats = await splice.done;
    expect(stats.error).toBeInstanceOf(StoaError);
    expect(stats.error?.message).toBe("kicked by the test");
    expect(stats).toMatchObject({ bytesAtoB: 4, bytesBtoA: 4 });
    // Neither side may mistake this for an orderly end: a FIN before the reset would make a
    // cut-off stream look complete to the server.
    await Promise.all([client.closed, upstream.closed]);
    expect(client.finSeen).toBe(false);
    expect(upstream.finSeen).toBe(false);
    // Destroying a finished (or unknown) splice does nothing.
    splicer.destroy(splice.id);
    splicer.destroy(12345);
    expect(splicer.active).toBe(0);
  });

  test("destroyAll() resets every splice and resolves with how many there were", async () => {
    const server = serve(unixPath(), echo);
    const proxy = startProxy(server.where);
    const clients: Peer[] = [];
    const splices: Splice[] = [];
    for (let i = 0; i < 5; i++) {
      const client = await connect(proxy.where);
      clients.push(client);
      splices.push(await proxy.next());
      client.out.write("hi");
      await client.waitFor(2);
    }
    expect(splicer.active).toBe(5);
    expect(await splicer.destroyAll("going away")).toBe(5);
    for (const s of splices) expect((await s.done).error?.message).toBe("going away");
    for (const c of clients) expect(await c.closed).toBeInstanceOf(Error);
    expect(splicer.active).toBe(0);
    expect(await splicer.destroyAll()).toBe(0);
  });
});

describe("totals", () => {
  test("counts bytes per tag, splices still open included", async () => {
    const server = serve("tcp", echo);
    const proxyA = startProxy(server.where, { splice: { tag: 1, toB: text("12345") } });
    const proxyB = startProxy(server.where, { splice: { tag: SPLICE_TAGS - 1 } });
    const a = await connect(proxyA.where);
    const spliceA = await proxyA.next();
    const b = await connect(proxyB.where);
    const spliceB = await proxyB.next();
    a.out.write("abc");
    await a.waitFor(8);
    b.out.write("x".repeat(1000));
    await b.waitFor(1000);
    await eventually("the totals", () => splicer.totals(1).bToA === 8 && splicer.totals(SPLICE_TAGS - 1).bToA === 1000);
    expect(splicer.totals(1)).toEqual({ aToB: 8, bToA: 8 });
    expect(splicer.totals(SPLICE_TAGS - 1)).toEqual({ aToB: 1000, bToA: 1000 });
    expect(splicer.totals(0)).toEqual({ aToB: 0, bToA: 0 });
    expect(splicer.active).toBe(2);
    // Totals outlive the splices they counted.
    a.out.finish("shutdown");
    b.out.finish("shutdown");
    await Promise.all([spliceA.done, spliceB.done]);
    expect(splicer.totals(1)).toEqual({ aToB: 8, bToA: 8 });
  });

  test("rejects a tag outside [0, SPLICE_TAGS) with a usage error", () => {
    const thrown = (f: () => unknown): unknown => {
      try {
        f();
      } catch (err) {
        return err;
      }
      return undefined;
    };
    for (const tag of [-1, SPLICE_TAGS, 1.5, Number.NaN]) {
      // splice() throws before taking ownership, so no descriptor is needed.
      for (const err of [thrown(() => splicer.splice(-1, -1, { tag })), thrown(() => splicer.totals(tag))]) {
        expect(err).toBeInstanceOf(StoaError);
        expect(err).toMatchObject({ code: "usage" });
      }
    }
    expect(splicer.active).toBe(0);
  });
});

describe("close", () => {
  test("close() resets the splices still open and resolves their done", async () => {
    const server = serve("tcp", echo);
    const proxy = startProxy(server.where);
    const client = await connect(proxy.where);
    const splice = await proxy.next();
    client.out.write("hi");
    await client.waitFor(2);
    await splicer.close();
    const stats = await splice.done;
    expect(stats.error).toBeInstanceOf(StoaError);
    expect(stats.bytesAtoB).toBe(2);
    expect(await client.closed).toBeInstanceOf(Error);
    expect(splicer.active).toBe(0);
  });

  test("after close(), splice() ends at once with an error and closes the descriptors it was given", async () => {
    const server = serve("tcp");
    const proxy = startProxy(server.where);
    await splicer.close();
    const client = await connect(proxy.where);
    const upstream = await server.next();
    const stats = await (await proxy.next()).done;
    expect(stats.error).toMatchObject({ code: "closed" });
    // Both peers see the connection end: the splicer closed the last descriptor of each.
    await Promise.all([client.ended, upstream.ended]);
    expect(await splicer.destroyAll()).toBe(0);
  });

  test("a splice() made while close() is under way is refused and its descriptors are closed", async () => {
    const server = serve("tcp");
    const a = await connect(server.where);
    const b = await connect(server.where);
    const peerA = await server.next();
    const peerB = await server.next();
    const fdA = takeSocketFd(a.sock);
    const fdB = takeSocketFd(b.sock);
    const closing = splicer.close();
    const splice = splicer.splice(fdA, fdB);
    await closing;
    expect((await splice.done).error).toBeInstanceOf(StoaError);
    const outcome = await Promise.race([
      Promise.all([peerA.ended, peerB.ended]).then(() => "closed"),
      Bun.sleep(3_000).then(() => "still open"),
    ]);
    expect(outcome).toBe("closed");
  });

  test("a second close() while the first is under way does not wait for the stop timeout", async () => {
    const first = splicer.close();
    const second = splicer.close();
    const outcome = await Promise.race([
      Promise.all([first, second]).then(() => "closed"),
      Bun.sleep(1_000).then(() => "waiting"),
    ]);
    expect(outcome).toBe("closed");
  });
});

describe("scale", () => {
  test("500 splices at once, each echoing a few messages, all complete intact", async () => {
    const N = 500;
    const server = serve(unixPath(), echo);
    const proxy = startProxy(server.where);
    const conns: { client: Peer; splice: Splice }[] = [];
    for (let i = 0; i < N; i++) {
      const client = await connect(proxy.where);
      conns.push({ client, splice: await proxy.next() });
    }
    expect(splicer.active).toBe(N);
    const results = await Promise.all(
      conns.map(async ({ client, splice }, i) => {
        let expected = "";
        for (const part of ["first", "second", "third"]) {
          const msg = `${part} message from client ${i};`;
          client.out.write(msg);
          expected += msg;
          await client.waitFor(expected.length);
        }
        client.out.finish("shutdown");
        const stats = await splice.done;
        await client.closed;
        return { ok: client.received().toString() === expected, stats, expected };
      }),
    );
    for (const r of results) {
      expect(r.ok).toBe(true);
      expect(r.stats).toMatchObject({ bytesAtoB: r.expected.length, bytesBtoA: r.expected.length, error: null });
    }
    expect(splicer.active).toBe(0);
  }, 20_000);
});

describe("takeSocketFd", () => {
  test("returns -1 for a closed socket and for one already taken", async () => {
    const server = serve("tcp");
    const closed = await connect(server.where);
    await server.next();
    closed.sock.end();
    await closed.closed;
    expect(takeSocketFd(closed.sock)).toBe(-1);

    const open = await connect(server.where);
    const peer = await server.next();
    const fd = takeSocketFd(open.sock);
    expect(fd).toBeGreaterThanOrEqual(0);
    expect(takeSocketFd(open.sock)).toBe(-1);
    // Bun's terminate() armed a reset; closing the taken descriptor must be a plain FIN again.
    libc().close(fd);
    await peer.ended;
    expect(peer.finSeen).toBe(true);
  });
});

