import { describe, expect, test } from "bun:test";
import type { Subprocess } from "bun";
import { existsSync, lstatSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { Registry } from "../../src/core/metrics.ts";
import { publisherDir, publishersDir, publisherSocketPath } from "../../src/core/paths.ts";
import { decodeServiceFrame, MAX_PENDING_PINGS, MAX_VALUE_BYTES } from "../../src/stream/protocol.ts";
import {
  createPublisher,
  type InternalEndpoint,
  type Publisher,
  type PublisherOptions,
} from "../../src/stream/publisher.ts";
import { latest, subscribe, type Gap, type Received } from "../../src/stream/subscriber.ts";
import type { Value } from "../../src/stream/value.ts";
import { closeCode, RawWsClient } from "./rawws.ts";
import { plainClient, rejection, thrown, perTestCleanups } from "./util.ts";
import { eventually } from "../helpers/eventually.ts";

const { cleanups, tempDir } = perTestCleanups();

async function start(options: Partial<PublisherOptions> & { runDir: string }): Promise<Publisher> {
  const pub = await createPublisher({ pubId: "p1", metrics: new Registry(), ...options });
  cleanups.push(() => pub.close(100));
  return pub;
}

function unixPath(ep: InternalEndpoint): string {
  if (ep.kind !== "unix") throw new Error("unix endpoint expected");
  return ep.path;
}

/** Publishes `count` values in batches, letting the event loop run (a normal rate). */
async function publishMany(pub: Publisher, count: number, make: (i: number) => Value): Promise<void> {
  for (let i = 0; i < count; i++) {
    pub.publish(make(i));
    if (i % 200 === 199) await Bun.sleep(1);
  }
}

const makeValue = (i: number): Value =>
  [`line ${i}`, i, { i, tags: ["a", "b"], ok: i % 2 === 0 }, new Uint8Array([i & 0xff, 0xfe]), null][i % 5] ?? null;

describe("delivery on all three endpoints", () => {
  test("delivers 10,000 values in order, none lost, to a service subscriber", async () => {
    const pub = await start({ runDir: tempDir() });
    const got: Received[] = [];
    const gaps: Gap[] = [];
    const opened = Promise.withResolvers<void>();
    const sub = subscribe(pub.urls.service, {
      onValue: (v) => got.push(v),
      onGap: (g) => gaps.push(g),
      onOpen: () => opened.resolve(),
    });
    cleanups.push(() => sub.close());
    await opened.promise;
    await publishMany(pub, 10_000, makeValue);
    await eventually("all values", () => got.length === 10_000);
    expect(gaps).toEqual([]);
    expect(got.map((v) => v.seq)).toEqual(Array.from({ length: 10_000 }, (_, i) => i + 1));
    expect(got[2]?.value).toEqual({ i: 2, tags: ["a", "b"], ok: true });
    expect(got[3]?.value).toEqual(new Uint8Array([3, 0xfe]));
    expect(got[9_999]?.value).toBeNull();
    expect(Number.isNaN(Date.parse(got[0]?.ts ?? ""))).toBe(false);
    expect(sub.lastSeq).toBe(10_000);
  });

  test("sends each value as a text frame on string.sock to a plain WebSocket client", async () => {
    const pub = await start({ runDir: tempDir() });
    const client = await plainClient(pub.urls.string);
    cleanups.push(() => client.ws.close());
    await eventually("the subscriber to be counted", () => pub.stats.subscribers.string === 1);
    await publishMany(pub, 10_000, makeValue);
    await eventually("all values", () => client.messages.length === 10_000);
    expect(client.messages.every((m) => typeof m === "string")).toBe(true);
    expect(client.messages.slice(0, 5)).toEqual(["line 0", "1", '{"i":2,"tags":["a","b"],"ok":true}', "A/4=", "null"]);
    expect(client.messages[9_995]).toBe("line 9995");
  });

  test("answers ping with the latest value as text, its seq and time", async () => {
    const pub = await start({ runDir: tempDir() });
    const before = await latest(pub.urls.ping);
    expect(before.value).toBeNull();
    expect(before.seq).toBe(0);
    expect(Number.isNaN(Date.parse(before.ts))).toBe(false);

    pub.publish({ temp: 21.5 });
    pub.publish("second");
    const after = await latest(pub.urls.ping);
    expect(after).toEqual({ value: "second", seq: 2, ts: pub.latest?.ts ?? "", json: "second" });

    pub.publish(42);
    expect((await latest(pub.urls.ping)).value).toBe("42");
  });

  test("answers many pings on one connection, in order", async () => {
    const pub = await start({ runDir: tempDir() });
    pub.publish("x");
    const client = await plainClient(pub.urls.ping);
    cleanups.push(() => client.ws.close());
    for (let i = 0; i < 50; i++) client.ws.send("ping");
    await eventually("50 replies", () => client.messages.length === 50);
    for (const m of client.messages) expect(JSON.parse(String(m))).toMatchObject({ value: "x", seq: 1 });
  });

  test("answers pipelined pings in order once a client that stopped reading reads again", async () => {
    const pub = await start({ runDir: tempDir() });
    pub.publish("z".repeat(10_000)); // 10 KB replies: 100 of them overflow the socket buffers
    const client = await RawWsClient.connect(unixPath(pub.endpoints.ping));
    cleanups.push(() => client.end());
    client.pause();
    client.send(1, "ping", MAX_PENDING_PINGS - 28);
    await Bun.sleep(50); // the pings reach the publisher while this client reads nothing
    client.resume();
    await client.waitFor("every reply", () => client.dataFrames().length === MAX_PENDING_PINGS - 28);
    expect(client.dataFrames().every((f) => f.opcode === 1 && f.payload.length > 10_000)).toBe(true);
    expect(client.closed).toBe(false);
  });

  test("closes a client that keeps pinging without reading the replies", async () => {
    const pub = await start({ runDir: tempDir() });
    pub.publish("z".repeat(10_000));
    const client = await RawWsClient.connect(unixPath(pub.endpoints.ping));
    cleanups.push(() => client.end());
    client.pause();
    client.send(1, "ping", 1_000);
    await eventually("the server to give up", () => pub.stats.subscribers.ping === 0);
    client.resume();
    await client.waitFor("the close frame", () => client.dataFrames().at(-1)?.opcode === 8);
    expect(closeCode(client.dataFrames().at(-1) ?? { opcode: 0, payload: new Uint8Array() })).toBe(1008);
  });

  test("closes a ping connection that sends anything but ping", async () => {
    const pub = await start({ runDir: tempDir() });
    const text = await plainClient(pub.urls.ping);
    text.ws.send("PING please");
    expect((await text.closed).code).toBe(1008);
    const binary = await plainClient(pub.urls.ping);
    binary.ws.send(new Uint8Array([1, 2, 3]));
    expect((await binary.closed).code).toBe(1003);
  });

  test("accepts the upgrade on any request path, as the gateway forwards it", async () => {
    const pub = await start({ runDir: tempDir() });
    pub.publish("via gateway path");
    const reply = await latest(`ws+unix://${unixPath(pub.endpoints.ping)}:/pub/p1`);
    expect(reply.value).toBe("via gateway path");
  });

  test("answers a plain HTTP request with 426 and a JSON error", async () => {
    const pub = await start({ runDir: tempDir() });
    const res = await fetch("http://localhost/pub/p1", { unix: unixPath(pub.endpoints.service) });
    expect(res.status).toBe(426);
    expect(await res.json()).toMatchObject({ error: "upgrade_required" });
  });

  test("starts every service connection with a hello naming the next seq: the latest value's by default, the next one's with from=now", async () => {
    const pub = await start({ runDir: tempDir() });
    pub.publish(1);
    pub.publish(2);
    const client = await plainClient(pub.urls.service);
    cleanups.push(() => client.ws.close());
    await eventually("the hello and the latest value", () => client.messages.length === 2);
    const [first, second] = client.messages;
    if (!(first instanceof ArrayBuffer) || !(second instanceof ArrayBuffer)) throw new Error("expected binary frames");
    expect(decodeServiceFrame(first)).toEqual({ t: "hello", v: 1, epoch: pub.epoch, next: 2 });
    expect(decodeServiceFrame(second)).toMatchObject({ t: "v", seq: 2, value: 2 });

    const now = await plainClient(`${pub.urls.service}?from=now`);
    cleanups.push(() => now.ws.close());
    await eventually("the hello", () => now.messages.length === 1);
    const hello = now.messages[0];
    if (!(hello instanceof ArrayBuffer)) throw new Error("expected a binary frame");
    expect(decodeServiceFrame(hello)).toEqual({ t: "hello", v: 1, epoch: pub.epoch, next: 3 });
    await Bun.sleep(50); // nothing follows the hello until a value is published
    expect(now.messages).toHaveLength(1);
  });

  test("serves on loopback TCP with internal tcp", async () => {
    const pub = await start({ runDir: tempDir(), internal: "tcp" });
    expect(pub.dir).toBeUndefined();
    for (const kind of ["service", "string", "ping"] as const) {
      const ep = pub.endpoints[kind];
      expect(ep.kind).toBe("tcp");
      if (ep.kind === "tcp") {
        expect(ep.host).toBe("::1");
        expect(ep.port).toBeGreaterThan(0);
        expect(pub.urls[kind]).toBe(`ws://[::1]:${ep.port}/`);
      }
    }
    const got: number[] = [];
    const opened = Promise.withResolvers<void>();
    const sub = subscribe(pub.urls.service.replace(/\/$/, "/pub/p1"), {
      onValue: (v) => got.push(v.seq),
      onOpen: () => opened.resolve(),
    });
    cleanups.push(() => sub.close());
    await opened.promise;
    await publishMany(pub, 1_000, (i) => i);
    await eventually("all values", () => got.length === 1_000);
    expect((await latest(pub.urls.ping)).seq).toBe(1_000);
  });
});

describe("publish", () => {
  test("returns seq 1, 2, 3 … and keeps the latest value", async () => {
    const pub = await start({ runDir: tempDir() });
    expect(pub.latest).toBeUndefined();
    expect(pub.publish("a")).toBe(1);
    expect(pub.publish(["b"])).toBe(2);
    expect(pub.latest).toMatchObject({ seq: 2, value: ["b"] });
    expect(pub.stats.published).toBe(2);
  });

  test("refuses what is not a stream value, naming where", async () => {
    const pub = await start({ runDir: tempDir() });
    for (const bad of [Number.NaN, Infinity, { a: [1, undefined] }, { d: new Date() }, new Map()]) {
      const err = thrown(() => pub.publish(bad as unknown as Value));
      expect(err.code).toBe("schema");
    }
    expect(thrown(() => pub.publish({ a: [1, Number.NaN] })).message).toContain("$.a[1]");
    expect(pub.stats.published).toBe(0);
  });

  test("refuses a value over the size limit and publishes one just under it", async () => {
    const pub = await start({ runDir: tempDir() });
    const err = thrown(() => pub.publish(new Uint8Array(MAX_VALUE_BYTES + 1)));
    expect(err.code).toBe("too_large");
    // A byte string's CBOR header takes 5 bytes at this size.
    expect(pub.publish(new Uint8Array(MAX_VALUE_BYTES - 5))).toBe(1);
  });

  test("refuses a value whose text form is too large", async () => {
    const pub = await start({ runDir: tempDir() });
    // 300,000 NULs: 300 KB of CBOR, but 1.8 MB of JSON escapes, times 2 in an array.
    const err = thrown(() => pub.publish(["\u0000".repeat(300_000), "\u0000".repeat(300_000)]));
    expect(err.code).toBe("too_large");
  });

  test("throws closed after close()", async () => {
    const pub = await start({ runDir: tempDir() });
    await pub.close();
    expect(thrown(() => pub.publish(1)).code).toBe("closed");
  });
});

describe("lifecycle of the socket directory", () => {
  test("creates <run_dir>/pub/<pub_id>/ with mode 0700 and sockets with mode 0600", async () => {
    const runDir = tempDir();
    const pub = await start({ runDir });
    const dir = publisherDir(runDir, "p1");
    expect(dir).toBe(join(runDir, "pub", "p1"));
    expect(pub.dir).toBe(dir);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(readdirSync(dir).sort()).toEqual(["ping.sock", "service.sock", "string.sock"]);
    for (const name of readdirSync(dir)) {
      const st = lstatSync(join(dir, name));
      expect(st.isSocket()).toBe(true);
      expect(st.mode & 0o777).toBe(0o600);
    }
  });

  test("close() closes subscribers with 1001 and removes the sockets and the directory", async () => {
    const runDir = tempDir();
    const pub = await start({ runDir });
    const service = await plainClient(pub.urls.service);
    const text = await plainClient(pub.urls.string);
    await eventually("subscribers", () => pub.stats.subscribers.service === 1 && pub.stats.subscribers.string === 1);
    pub.publish("last words");
    await pub.close();
    expect((await service.closed).code).toBe(1001);
    expect((await text.closed).code).toBe(1001);
    expect(text.messages).toEqual(["last words"]);
    expect(existsSync(publisherDir(runDir, "p1"))).toBe(false);
    // The publishers' subtree stays (another publisher may be creating its directory in it).
    expect(readdirSync(publishersDir(runDir))).toEqual([]);
    await pub.close(); // idempotent
  });

  test("a second publisher with the same pub_id fails with in_use and leaves the live one alone", async () => {
    const runDir = tempDir();
    const first = await start({ runDir });
    first.publish("still mine");
    const dir = publisherDir(runDir, "p1");
    const inodes = readdirSync(dir).map((n) => lstatSync(join(dir, n)).ino);

    const err = await rejection(createPublisher({ pubId: "p1", runDir, metrics: new Registry() }));
    expect(err.code).toBe("in_use");
    expect(err.message).toContain("p1");

    expect(readdirSync(dir).map((n) => lstatSync(join(dir, n)).ino)).toEqual(inodes);
    expect((await latest(first.urls.ping)).value).toBe("still mine");
  });

  test("reclaims the stale directory of a SIGKILLed publisher", async () => {
    const runDir = tempDir();
    const script = join(import.meta.dir, "..", "fixtures", "stream-publisher.ts");
    const proc: Subprocess<"ignore", "pipe", "inherit"> = Bun.spawn([process.execPath, script, runDir, "p1"], {
      stdin: "ignore",
      stdout: "pipe",
      stderr: "inherit",
    });
    cleanups.push(() => proc.kill("SIGKILL"));
    const reader = proc.stdout.getReader();
    let seen = "";
    while (!seen.includes("ready\n")) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`fixture exited early: ${seen}`);
      seen += new TextDecoder().decode(value);
    }
    reader.releaseLock();
    const servicePath = publisherSocketPath(runDir, "p1", "service");
    expect((await latest(`ws+unix://${publisherSocketPath(runDir, "p1", "ping")}:/`)).value).toBe("from the fixture");

    proc.kill("SIGKILL");
    await proc.exited;
    expect(lstatSync(servicePath).isSocket()).toBe(true); // left behind

    const pub = await start({ runDir });
    expect((await latest(pub.urls.ping)).seq).toBe(0);
    pub.publish("new owner");
    expect((await latest(pub.urls.ping)).value).toBe("new owner");
  });

  test("refuses an invalid pub_id before touching the run dir", async () => {
    const runDir = tempDir();
    for (const pubId of ["..", "a/b", "", "-x", "x".repeat(65)]) {
      const err = await rejection(createPublisher({ pubId, runDir, metrics: new Registry() }));
      expect(err.code).toBe("usage");
    }
    expect(readdirSync(runDir)).toEqual([]);
  });
});

describe("metrics", () => {
  test("counts published values and subscribers per endpoint", async () => {
    const metrics = new Registry();
    const pub = await start({ runDir: tempDir(), metrics });
    const client = await plainClient(pub.urls.string);
    cleanups.push(() => client.ws.close());
    await eventually("the subscriber", () => pub.stats.subscribers.string === 1);
    pub.publish(1);
    pub.publish(2);
    const text = metrics.render();
    expect(text).toContain('stoa_pub_published_total{pub_id="p1"} 2');
    expect(text).toContain('stoa_pub_subscribers{pub_id="p1",kind="string"} 1');
    expect(text).toContain('stoa_pub_dropped_total{pub_id="p1",kind="service"} 0');
    await pub.close();
    // A closed publisher's series are forgotten, so a long-lived process does not pile them up.
    expect(metrics.render()).not.toContain('pub_id="p1"');
  });
});
