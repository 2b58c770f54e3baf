import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { encode } from "../../src/core/codec.ts";
import { type ErrorCode, StoaError } from "../../src/core/errors.ts";
import { encodeFrame, FrameDecoder } from "../../src/core/frame.ts";
import { createLogger } from "../../src/core/log.ts";
import { hotlinkControlPath, hotlinkControlRequest, startHotlinkControl, type HotlinkControl } from "../../src/hotlink/control.ts";
import { MAX_CONTROL_REQUEST_BYTES, controlAnswerCodec } from "../../src/hotlink/protocol.ts";
import { HotlinkDaemon } from "../../src/hotlink/daemon.ts";
import { startTestRelay } from "../fixtures/hotlink-relay.ts";
import { TOKEN, portFree, transfer } from "../fixtures/hotlink-apps.ts";
import { eventually } from "../helpers/eventually.ts";

const log = createLogger({ level: "error", stream: { write: () => {} } });
const cleanups: (() => Promise<void> | void)[] = [];
const own = (c: () => Promise<void> | void) => cleanups.push(c);
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const CHANNEL = "alice/mpc/run1/0_to_1";

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "hl-ctl-"));
  own(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A test relay and daemons with control sockets in a fresh run dir, no channels declared. */
async function setUp(users: string[] = ["alice", "bob"]) {
  const relay = startTestRelay();
  own(() => relay.close());
  const runDir = tempDir();
  const daemons: Record<string, { daemon: HotlinkDaemon; control: HotlinkControl; path: string }> = {};
  for (const user of users) {
    const daemon = await HotlinkDaemon.start({ server: relay.url, user, token: TOKEN, log, minDelayMs: 20 });
    own(() => daemon.close());
    const control = await startHotlinkControl(hotlinkControlPath(runDir, user), daemon, log);
    own(() => control.close());
    await daemon.connected();
    daemons[user] = { daemon, control, path: control.path };
  }
  const get = (user: string) => {
    const d = daemons[user];
    if (d === undefined) throw new Error(`no daemon for ${user}`);
    return d;
  };
  return { relay, runDir, get };
}

async function failure(p: Promise<unknown>): Promise<StoaError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(StoaError);
    return err as StoaError;
  }
  throw new Error("expected the request to fail");
}

/** A raw connection that writes bytes and collects answers, to speak to the server out of line. */
async function rawConn(path: string) {
  const decoder = new FrameDecoder({ maxBytes: 8 * 1024 * 1024 });
  const answers: unknown[] = [];
  let closed = false;
  const sock = await Bun.connect({
    unix: path,
    socket: {
      data: (_s, d) => {
        for (const f of decoder.push(d)) answers.push(controlAnswerCodec.decode(f));
      },
      close: () => {
        closed = true;
      },
    },
  });
  own(() => sock.terminate());
  return { sock, answers, closed: () => closed };
}

describe("changing a running daemon over its control socket", () => {
  test("a tunnel added at run time carries bytes between two daemons; ls lists it; close removes it and frees its port", async () => {
    const { get } = await setUp();
    const alice = get("alice");
    const bob = get("bob");
    const a = await hotlinkControlRequest(alice.path, { type: "tunnel", spec: `${CHANNEL}=127.0.0.1:0@bob` });
    const b = await hotlinkControlRequest(bob.path, { type: "tunnel", spec: `${CHANNEL}=127.0.0.1:0@alice` });
    expect(a.tunnel).toMatchObject({ channel: CHANNEL, peer: "bob", origin: "control", app: false });
    expect(a.tunnel.port).toBeGreaterThan(0);
    expect(a.tunnel.listen).toBe(`127.0.0.1:${a.tunnel.port}`);

    await transfer(a.tunnel.port, b.tunnel.port, own);
    await transfer(b.tunnel.port, a.tunnel.port, own);

    const { status } = await hotlinkControlRequest(alice.path, { type: "ls" });
    expect(status).toMatchObject({ user: "alice", connected: true, ipc: [] });
    expect(status.tunnels).toHaveLength(1);
    expect(status.tunnels[0]).toMatchObject({ channel: CHANNEL, port: a.tunnel.port, peer: "bob", origin: "control" });
    expect(status.sessions).toEqual({ outgoing: expect.any(Number), incoming: expect.any(Number) });
    expect(status.counters.relay.txBytes).toBeGreaterThanOrEqual(20 * 4096); // one transfer each way
    expect(status.counters.relay.rxBytes).toBeGreaterThanOrEqual(20 * 4096);
    expect(Object.keys(status.counters.direct).sort()).toEqual(["answers", "failures", "fallbacks", "offers", "rxBytes", "rxPackets", "txBytes", "txPackets"]);
    expect(Object.keys(status.counters.latency_us).sort()).toEqual(["send_avg", "send_max", "write_avg", "write_max"]);
    expect(status.link.tx).toBeGreaterThan(0);

    expect(portFree(a.tunnel.port)).toBe(false);
    const closed = await hotlinkControlRequest(alice.path, { type: "close", channel: CHANNEL });
    expect(closed).toEqual({ ok: true, type: "close", channel: CHANNEL, kind: "tunnel" });
    expect(portFree(a.tunnel.port)).toBe(true);
    expect((await hotlinkControlRequest(alice.path, { type: "ls" })).status.tunnels).toEqual([]);
  });

  test("an IPC channel is added, listed and closed", async () => {
    const { get, runDir } = await setUp(["alice"]);
    const alice = get("alice");
    const sock = join(runDir, "apps", "alice.sock");
    const { ipc } = await hotlinkControlRequest(alice.path, { type: "ipc", spec: `alice/bench/ipc=unix:${sock}` });
    expect(ipc).toMatchObject({ channel: "alice/bench/ipc", path: sock, apps: 0, origin: "control" });
    expect(statSync(sock).isSocket()).toBe(true);
    expect((await hotlinkControlRequest(alice.path, { type: "ls" })).status.ipc.map((c) => c.channel)).toEqual(["alice/bench/ipc"]);
    expect(await hotlinkControlRequest(alice.path, { type: "close", channel: "alice/bench/ipc" })).toMatchObject({ kind: "ipc" });
    expect(() => statSync(sock)).toThrow();
  });

  test("channels from flags are listed with their origin", async () => {
    const relay = startTestRelay();
    own(() => relay.close());
    const daemon = await HotlinkDaemon.start({
      server: relay.url,
      user: "alice",
      token: TOKEN,
      tunnels: [{ channel: CHANNEL, host: "127.0.0.1", port: 0, peer: "bob" }],
      log,
      minDelayMs: 20,
    });
    own(() => daemon.close());
    const control = await startHotlinkControl(hotlinkControlPath(tempDir(), "alice"), daemon, log);
    own(() => control.close());
    const { status } = await hotlinkControlRequest(control.path, { type: "ls" });
    expect(status.tunnels[0]).toMatchObject({ channel: CHANNEL, origin: "flag", port: daemon.tunnel(CHANNEL)?.port });
  });
});

describe("errors are answers, never crashes", () => {
  test("a bad spec, a duplicate, a taken port and an unknown channel each get a typed error", async () => {
    const { get } = await setUp(["alice"]);
    const path = get("alice").path;
    const cases: [() => Promise<unknown>, ErrorCode, RegExp][] = [
      [() => hotlinkControlRequest(path, { type: "tunnel", spec: "no-equals-sign" }), "usage", /expected CHANNEL=/],
      [() => hotlinkControlRequest(path, { type: "tunnel", spec: `${CHANNEL}=127.0.0.1:99999@bob` }), "usage", /bad port/],
      [() => hotlinkControlRequest(path, { type: "tunnel", spec: "../etc=127.0.0.1:0" }), "usage", /'\.' or '\.\.'/],
      [() => hotlinkControlRequest(path, { type: "tunnel", spec: `${CHANNEL}=127.0.0.1:0@Bob` }), "usage", /lower case/],
      [() => hotlinkControlRequest(path, { type: "ipc", spec: `${CHANNEL}=tcp:1` }), "usage", /unix:PATH/],
      [() => hotlinkControlRequest(path, { type: "close", channel: "alice/none" }), "not_found", /no tunnel or channel alice\/none/],
    ];
    for (const [ask, code, message] of cases) {
      const err = await failure(ask());
      expect(err.code).toBe(code);
      expect(err.message).toStartWith("hotlink daemon: ");
      expect(err.message).toMatch(message);
    }
    const { tunnel } = await hotlinkControlRequest(path, { type: "tunnel", spec: `${CHANNEL}=127.0.0.1:0@bob` });
    const dup = await failure(hotlinkControlRequest(path, { type: "tunnel", spec: `${CHANNEL}=127.0.0.1:0@bob` }));
    expect(dup.code).toBe("exists");
    expect((await failure(hotlinkControlRequest(path, { type: "ipc", spec: `${CHANNEL}=unix:/tmp/x.sock` }))).code).toBe("exists");
    const taken = await failure(hotlinkControlRequest(path, { type: "tunnel", spec: `alice/other=127.0.0.1:${tunnel.port}` }));
    expect(taken.code).toBe("in_use");
    // The failed adds left nothing behind.
    expect((await hotlinkControlRequest(path, { type: "ls" })).status.tunnels.map((t) => t.channel)).toEqual([CHANNEL]);
  });

  test("a message that is not a request is answered with an error and the connection stays usable", async () => {
    const { get } = await setUp(["alice"]);
    const conn = await rawConn(get("alice").path);
    conn.sock.write(encodeFrame(new Uint8Array([0xff, 0x00, 0x13])));
    conn.sock.write(encodeFrame(encode({ type: "tunnel" })));
    conn.sock.write(encodeFrame(encode({ type: "reboot" })));
    conn.sock.write(encodeFrame(encode({ type: "ls" })));
    await eventually("four answers", () => conn.answers.length === 4, { timeoutMs: 10_000 });
    expect(conn.answers.slice(0, 3).map((a) => (a as { code: string }).code)).toEqual(["decode", "schema", "schema"]);
    expect(conn.answers[3]).toMatchObject({ ok: true, type: "ls" });
    expect(conn.closed()).toBe(false);
  });

  test("a frame header over the limit is answered, then the connection is closed; the server goes on", async () => {
    const { get } = await setUp(["alice"]);
    const path = get("alice").path;
    const conn = await rawConn(path);
    const header = new Uint8Array(4);
    new DataView(header.buffer).setUint32(0, MAX_CONTROL_REQUEST_BYTES + 1);
    conn.sock.write(header);
    await eventually("the server to close the connection", () => conn.closed(), { timeoutMs: 10_000 });
    expect(conn.answers).toEqual([{ ok: false, code: "too_large", message: expect.stringContaining("over the") }]);
    expect((await hotlinkControlRequest(path, { type: "ls" })).ok).toBe(true);
  });

  test("pipelined requests are answered in order", async () => {
    const { get } = await setUp(["alice"]);
    const conn = await rawConn(get("alice").path);
    const frames = [
      encodeFrame(encode({ type: "tunnel", spec: "alice/p1=127.0.0.1:0" })),
      encodeFrame(encode({ type: "tunnel", spec: "alice/p1=127.0.0.1:0" })),
      encodeFrame(encode({ type: "close", channel: "alice/p1" })),
      encodeFrame(encode({ type: "close", channel: "alice/p1" })),
      encodeFrame(encode({ type: "ls" })),
    ];
    conn.sock.write(Buffer.concat(frames));
    await eventually("five answers", () => conn.answers.length === 5, { timeoutMs: 10_000 });
    expect(conn.answers.map((a) => {
      const x = a as { ok: boolean; type?: string; code?: string };
      return x.ok ? x.type : x.code;
    })).toEqual(["tunnel", "exists", "close", "not_found", "ls"]);
  });
});

describe("the socket", () => {
  test("lives at <run_dir>/hotlink/<user>.sock, mode 0600 in a 0700 directory", async () => {
    const { get, runDir } = await setUp(["alice"]);
    const path = get("alice").path;
    expect(path).toBe(join(runDir, "hotlink", "alice.sock"));
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(statSync(dirname(path)).mode & 0o777).toBe(0o700);
  });

  test("a second daemon for the same user and run dir fails with in_use; the first keeps its socket", async () => {
    const { get } = await setUp(["alice"]);
    const first = get("alice");
    const err = await failure(startHotlinkControl(first.path, first.daemon, log));
    expect(err.code).toBe("in_use");
    expect((await hotlinkControlRequest(first.path, { type: "ls" })).status.user).toBe("alice");
  });

  test("close removes the socket file; a client then learns that no daemon runs there", async () => {
    const { get } = await setUp(["alice"]);
    const alice = get("alice");
    await alice.control.close();
    expect(() => statSync(alice.path)).toThrow();
    const err = await failure(hotlinkControlRequest(alice.path, { type: "ls" }, { hint: "; is `stoa hotlink connect` running for user alice?" }));
    expect(err.code).toBe("closed");
    expect(err.message).toBe(`no hotlink daemon is running with control socket ${alice.path}; is \`stoa hotlink connect\` running for user alice?`);
  });
});
