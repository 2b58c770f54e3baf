import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Pipe, type PipeSocket } from "../../src/core/pipe.ts";
import { connectClient, startProxy, startUpstream, type TestProxy } from "../fixtures/pipe-helpers.ts";

let dir = "";
let upstreamPath = "";
const cleanups: (() => void)[] = [];

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "stoa-pipe-"));
  upstreamPath = join(dir, "upstream.sock");
});

afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c();
  rmSync(dir, { recursive: true, force: true });
});

function proxyTo(options?: Parameters<typeof startProxy>[1]): TestProxy {
  const proxy = startProxy(upstreamPath, options);
  cleanups.push(() => proxy.stop());
  return proxy;
}

function upstream(behaviour: Parameters<typeof startUpstream>[1]): void {
  const server = startUpstream(upstreamPath, behaviour);
  cleanups.push(() => server.stop());
}

describe("splicing", () => {
  test("echoes bytes both ways through the pipe", async () => {
    upstream({ data: (c, chunk) => c.out.write(new Uint8Array(chunk)) });
    const proxy = proxyTo();
    const client = await connectClient(proxy.port);
    let expected = "";
    for (const msg of ["hello", " through", " the pipe"]) {
      client.out.write(msg);
      expected += msg;
      await client.waitFor(expected.length);
    }
    expect(client.received().toString()).toBe(expected);
    client.sock.end();
    const stats = await (await proxy.nextPipe()).done;
    expect(stats.bytesAtoB).toBe(expected.length);
    expect(stats.bytesBtoA).toBe(expected.length);
  });

  test("writes the initial chunk before anything the client sends later", async () => {
    const { promise: gotAll, resolve } = Promise.withResolvers<Buffer>();
    upstream({ end: (c) => (resolve(c.received()), c.out.finish("end")) });
    const proxy = proxyTo({ sniffFirstChunk: true });
    const client = await connectClient(proxy.port);
    client.out.write("GET /pub/p1 HTTP/1.1\r\n");
    const pipe = await proxy.nextPipe();
    client.out.write("Host: x\r\n\r\n");
    client.out.finish("shutdown");
    expect((await gotAll).toString()).toBe("GET /pub/p1 HTTP/1.1\r\nHost: x\r\n\r\n");
    expect((await pipe.done).bytesAtoB).toBe(33);
  });

  test("keeps bytes that arrive before the pipe is attached", async () => {
    upstream({ open: (c) => c.out.write("greeting\n") });
    const proxy = proxyTo({ attachDelayMs: 50 });
    const client = await connectClient(proxy.port);
    await client.waitFor(9);
    expect(client.received().toString()).toBe("greeting\n");
    client.sock.end();
    await (await proxy.nextPipe()).done;
  });
});

describe("half-close", () => {
  test("forwards the client's FIN and delivers the whole reply sent after it", async () => {
    const reply = randomBytes(4 * 1024 * 1024);
    let question = "";
    upstream({
      end(c) {
        question = c.received().toString();
        c.out.write(reply);
        c.out.finish("shutdown");
      },
    });
    const proxy = proxyTo();
    const client = await connectClient(proxy.port);
    client.out.write("question?");
    client.out.finish("shutdown");
    await client.ended;
    expect(question).toBe("question?");
    expect(client.received().equals(reply)).toBe(true);
    const stats = await (await proxy.nextPipe()).done;
    expect(stats.error).toBeNull();
  });

  test("forwards the server's FIN while the client keeps sending", async () => {
    const { promise: serverGot, resolve } = Promise.withResolvers<string>();
    upstream({
      open: (c) => (c.out.write("bye"), c.out.finish("shutdown")),
      // Bun reports a FIN on a socket that already sent its own as `close`, not `end`.
      close: (c) => resolve(c.received().toString()),
    });
    const proxy = proxyTo();
    const client = await connectClient(proxy.port);
    await client.ended;
    expect(client.received().toString()).toBe("bye");
    client.out.write("still talking");
    client.out.finish("shutdown");
    expect(await serverGot).toBe("still talking");
    expect((await (await proxy.nextPipe()).done).error).toBeNull();
  });
});

describe("counters", () => {
  test("count every byte each way exactly, the initial chunk included", async () => {
    const up = randomBytes(3 * 1024 * 1024 + 17);
    const down = randomBytes(5 * 1024 * 1024 + 3);
    let serverGot = 0;
    upstream({
      end(c) {
        serverGot = c.received().byteLength;
        c.out.write(down);
        c.out.finish("shutdown");
      },
    });
    const proxy = proxyTo({ sniffFirstChunk: true });
    const client = await connectClient(proxy.port);
    client.out.write("PRELUDE\n");
    await proxy.nextPipe().then((pipe) => {
      client.out.write(up);
      client.out.finish("shutdown");
      return client.ended.then(() => pipe.done);
    }).then((stats) => {
      expect(stats.bytesAtoB).toBe(8 + up.byteLength);
      expect(stats.bytesBtoA).toBe(down.byteLength);
      expect(stats.error).toBeNull();
    });
    expect(serverGot).toBe(8 + up.byteLength);
    expect(client.received().equals(down)).toBe(true);
  });
});

describe("closing", () => {
  test("a client that resets its connection closes the upstream one", async () => {
    const { promise: upstreamClosed, resolve } = Promise.withResolvers<void>();
    upstream({ close: () => resolve() });
    const proxy = proxyTo();
    const client = await connectClient(proxy.port);
    client.out.write("hi");
    const pipe = await proxy.nextPipe();
    client.sock.terminate();
    await upstreamClosed;
    const stats = await pipe.done;
    expect(stats.bytesAtoB).toBe(2);
  });

  test("an upstream that closes ends the client's stream after what was already read", async () => {
    upstream({ open: (c) => (c.out.write("last words"), c.out.finish("end")) });
    const proxy = proxyTo();
    const client = await connectClient(proxy.port);
    await client.ended;
    expect(client.received().toString()).toBe("last words");
    client.sock.end();
    expect((await (await proxy.nextPipe()).done).bytesBtoA).toBe(10);
  });

  test("a client that never closes after the upstream did is closed after the linger time", async () => {
    upstream({ open: (c) => c.out.finish("end") });
    const proxy = proxyTo({ pipe: { lingerMs: 100 } });
    const client = await connectClient(proxy.port);
    await client.ended;
    await (await proxy.nextPipe()).done;
    // the proxy's end of the connection is gone: the client's next write is reset
    client.out.write("anyone there?");
    expect(await client.closed).toBeInstanceOf(Error);
  });
});

/** A socket whose kernel buffer holds `room` bytes; tests drive the pipe's events by hand. */
class FakeSocket implements PipeSocket {
  room = Number.POSITIVE_INFINITY;
  readonly got: Buffer[] = [];
  paused = false;
  shut = false;
  ended = false;
  terminated = false;
  write(data: string | Uint8Array): number {
    if (this.shut || this.ended || this.terminated) return -1;
    const bytes = Buffer.from(data);
    const n = Math.min(this.room, bytes.byteLength);
    this.room -= n;
    this.got.push(Buffer.from(bytes.subarray(0, n)));
    return n;
  }
  pause(): void {
    this.paused = true;
  }
  resume(): void {
    this.paused = false;
  }
  shutdown(): void {
    this.shut = true;
  }
  end(): number {
    this.ended = true;
    return 0;
  }
  terminate(): void {
    this.terminated = true;
  }
  text(): string {
    return Buffer.concat(this.got).toString();
  }
}

describe("backpressure state machine (scripted sockets)", () => {
  test("queues the unwritten tail, pauses the source, and resumes it once the queue drains", () => {
    const a = new FakeSocket();
    const b = new FakeSocket();
    const pipe = new Pipe(a, b);
    b.room = 4;
    pipe.onData("a", Buffer.from("abcdefgh"));
    pipe.onData("a", Buffer.from("ij"));
    expect(a.paused).toBe(true);
    expect(pipe.stats.maxQueuedAtoB).toBe(6);
    b.room = 3;
    pipe.onDrain("b");
    expect(a.paused).toBe(true);
    b.room = Number.POSITIVE_INFINITY;
    pipe.onDrain("b");
    expect(a.paused).toBe(false);
    expect(b.text()).toBe("abcdefghij");
    expect(pipe.stats.bytesAtoB).toBe(10);
  });

  test("copies the unwritten tail, so a reused read buffer cannot corrupt it", () => {
    const a = new FakeSocket();
    const b = new FakeSocket();
    const pipe = new Pipe(a, b);
    b.room = 2;
    const readBuffer = Buffer.from("abcdef");
    pipe.onData("a", readBuffer);
    readBuffer.fill("x");
    b.room = Number.POSITIVE_INFINITY;
    pipe.onDrain("b");
    expect(b.text()).toBe("abcdef");
  });

  test("forwards a FIN only after the bytes queued before it", () => {
    const a = new FakeSocket();
    const b = new FakeSocket();
    const pipe = new Pipe(a, b);
    b.room = 1;
    pipe.onData("a", Buffer.from("xyz"));
    pipe.onEnd("a");
    expect(b.shut).toBe(false);
    b.room = Number.POSITIVE_INFINITY;
    pipe.onDrain("b");
    expect(b.text()).toBe("xyz");
    expect(b.shut).toBe(true);
  });

  test("after one side closes, still delivers what was read from it, then a FIN", async () => {
    const a = new FakeSocket();
    const b = new FakeSocket();
    const pipe = new Pipe(a, b);
    a.room = 0;
    pipe.onData("b", Buffer.from("pending"));
    pipe.onData("a", Buffer.from("for b"));
    pipe.onClose("b");
    expect(a.shut).toBe(false);
    a.room = Number.POSITIVE_INFINITY;
    pipe.onDrain("a");
    expect(a.text()).toBe("pending");
    expect(a.shut).toBe(true);
    // the survivor's peer closes in turn
    pipe.onEnd("a");
    expect(a.ended).toBe(true);
    const stats = await pipe.done;
    expect(stats.bytesBtoA).toBe(7);
  });

  test("terminates a survivor that never drains once the linger time is over", async () => {
    const a = new FakeSocket();
    const b = new FakeSocket();
    const pipe = new Pipe(a, b, { lingerMs: 20 });
    a.room = 0;
    pipe.onData("b", Buffer.from("stuck"));
    pipe.onClose("b", new Error("ECONNRESET"));
    const stats = await pipe.done;
    expect(a.terminated).toBe(true);
    expect(stats.error?.message).toBe("ECONNRESET");
  });

  test("destroys the pipe when a source ignores pause() past maxQueueBytes", async () => {
    const a = new FakeSocket();
    const b = new FakeSocket();
    const pipe = new Pipe(a, b, { maxQueueBytes: 10 });
    b.room = 0;
    pipe.onData("a", Buffer.alloc(8));
    pipe.onData("a", Buffer.alloc(8));
    const stats = await pipe.done;
    expect(a.terminated && b.terminated).toBe(true);
    expect(stats.error).toMatchObject({ code: "too_large" });
  });
});
