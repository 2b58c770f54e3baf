import { afterEach, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { StoaError } from "../../src/core/errors.ts";
import { createLogger } from "../../src/core/log.ts";
import { HotlinkDaemon } from "../../src/hotlink/daemon.ts";
import { MAX_MARKER_BYTES, type MarkerWatcher, watchMarkers } from "../../src/hotlink/watch.ts";
import { freePorts } from "../fixtures/e2e-helpers.ts";
import { startTestRelay } from "../fixtures/hotlink-relay.ts";
import { TOKEN, portFree, transfer } from "../fixtures/hotlink-apps.ts";
import { eventually } from "../helpers/eventually.ts";

const cleanups: (() => Promise<void> | void)[] = [];
const own = (c: () => Promise<void> | void) => cleanups.push(c);
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const CHANNEL = "alice/mpc/run1/0_to_1";

/** A logger whose warnings the test can read. */
function capture() {
  const lines: string[] = [];
  const log = createLogger({ level: "warn", format: "json", stream: { write: (line: string) => void lines.push(line) } });
  return { log, warnings: () => lines.join("") };
}

/**
 * alice's and bob's daemons watching the same directory (as two synced copies of a datasite
 * would be), each with its own logger.
 */
async function setUp(users: string[] = ["alice", "bob"]) {
  const relay = startTestRelay();
  own(() => relay.close());
  const dir = mkdtempSync(join(tmpdir(), "hl-watch-"));
  own(() => rmSync(dir, { recursive: true, force: true }));
  const peers: Record<string, { daemon: HotlinkDaemon; watcher: MarkerWatcher; warnings: () => string }> = {};
  for (const user of users) {
    const { log, warnings } = capture();
    const daemon = await HotlinkDaemon.start({ server: relay.url, user, token: TOKEN, log, minDelayMs: 20 });
    own(() => daemon.close());
    await daemon.connected();
    const watcher = await watchMarkers({ dir, user, target: daemon, log, pollMs: 200 });
    own(() => watcher.close());
    peers[user] = { daemon, watcher, warnings };
  }
  const get = (user: string) => {
    const p = peers[user];
    if (p === undefined) throw new Error(`no daemon for ${user}`);
    return p;
  };
  /** Writes a marker the way sync tools do: a temp file renamed into place. */
  const mark = (channel: string, marker: unknown) => {
    const d = join(dir, ...channel.split("/"));
    mkdirSync(d, { recursive: true });
    const tmp = join(d, `.stream.tcp.${Math.random()}`);
    writeFileSync(tmp, typeof marker === "string" ? marker : JSON.stringify(marker));
    renameSync(tmp, join(d, "stream.tcp"));
  };
  const unmark = (channel: string) => rmSync(join(dir, ...channel.split("/"), "stream.tcp"));
  const tunnelPort = (user: string, channel = CHANNEL) => get(user).daemon.tunnel(channel)?.port;
  return { dir, get, mark, unmark, tunnelPort };
}

describe("marker files start and stop tunnels", () => {
  test("a marker starts a tunnel on both peers that carries data; removing it stops both", async () => {
    const { get, mark, unmark, tunnelPort } = await setUp();
    const [pa, pb] = freePorts(2) as [number, number];
    mark(CHANNEL, { from: "alice", to: "bob", port: pa, ports: { alice: pa, bob: pb } });
    await eventually("both tunnels to start", () => tunnelPort("alice") === pa && tunnelPort("bob") === pb);
    const status = get("alice").daemon.status().tunnels[0];
    expect(status).toMatchObject({ channel: CHANNEL, listen: `127.0.0.1:${pa}`, peer: "bob", origin: "watch" });
    expect(get("bob").daemon.status().tunnels[0]).toMatchObject({ peer: "alice", port: pb });
    expect(get("alice").watcher.channels()).toEqual([CHANNEL]);

    await transfer(pa, pb, own);
    await transfer(pb, pa, own);

    unmark(CHANNEL);
    await eventually("both tunnels to stop", () => tunnelPort("alice") === undefined && tunnelPort("bob") === undefined);
    expect(portFree(pa)).toBe(true);
    expect(portFree(pb)).toBe(true);
    expect(get("alice").watcher.channels()).toEqual([]);
  });

  test("changing the port moves the tunnel; rewriting the same content leaves it alone", async () => {
    const { get, mark, tunnelPort } = await setUp();
    const [pa, pb, pa2] = freePorts(3) as [number, number, number];
    mark(CHANNEL, { from: "alice", to: "bob", ports: { alice: pa, bob: pb } });
    await eventually("both tunnels to start", () => tunnelPort("alice") === pa && tunnelPort("bob") === pb);
    const before = get("bob").daemon.tunnel(CHANNEL);
    mark(CHANNEL, { from: "alice", to: "bob", ports: { alice: pa2, bob: pb } });
    await eventually("alice's tunnel to move", () => tunnelPort("alice") === pa2);
    expect(portFree(pa)).toBe(true);
    await get("bob").watcher.scan();
    expect(get("bob").daemon.tunnel(CHANNEL)).toBe(before); // bob's side did not change
    await transfer(pa2, pb, own);
  });

  test("markers present at start are tunnels once the watcher is up", async () => {
    const { log } = capture();
    const relay = startTestRelay();
    own(() => relay.close());
    const dir = mkdtempSync(join(tmpdir(), "hl-watch-"));
    own(() => rmSync(dir, { recursive: true, force: true }));
    const [pa] = freePorts(1) as [number];
    mkdirSync(join(dir, "alice", "a"), { recursive: true });
    writeFileSync(join(dir, "alice", "a", "stream.tcp"), JSON.stringify({ from: "bob", to: "alice", ports: { alice: pa, bob: 1 } }));
    const daemon = await HotlinkDaemon.start({ server: relay.url, user: "alice", token: TOKEN, log, minDelayMs: 20 });
    own(() => daemon.close());
    const watcher = await watchMarkers({ dir, user: "alice", target: daemon, log });
    own(() => watcher.close());
    expect(daemon.tunnel("alice/a")?.spec).toEqual({ channel: "alice/a", host: "127.0.0.1", port: pa, peer: "bob" });
  });
});

describe("markers that declare nothing for this daemon", () => {
  test("a marker between two other users is ignored with a warning", async () => {
    const { get, mark } = await setUp(["alice"]);
    mark("carol/x", { from: "carol", to: "dave", ports: { carol: 1, dave: 2 } });
    await eventually("the warning", () => get("alice").warnings().includes("between carol and dave, not alice"));
    expect(get("alice").daemon.status().tunnels).toEqual([]);
    // Said once per version of the file, not at every poll.
    await Bun.sleep(500);
    expect(get("alice").warnings().split("between carol and dave").length - 1).toBe(1);
  });

  test("unreadable markers are reported and change nothing; a running tunnel survives a bad rewrite", async () => {
    const { dir, get, mark, tunnelPort } = await setUp(["alice"]);
    const warned = (text: string) => eventually(`a warning with ${JSON.stringify(text)}`, () => get("alice").warnings().includes(text));
    mark("alice/bad1", "{not json");
    await warned("not JSON");
    mark("alice/bad2", { from: "alice", to: "bob", ports: { bob: 1 } });
    await warned('\\"ports\\" has no port for alice');
    mark("alice/bad3", { from: "alice", to: "bob", ports: { alice: 70000 } });
    await warned("ports.alice");
    mark("alice/bad4", "x".repeat(MAX_MARKER_BYTES + 1));
    await warned(`a marker is at most ${MAX_MARKER_BYTES}`);
    mark("alice/bad5", { from: "alice", to: "Bob", ports: { alice: 1 } });
    await warned("lower case");
    writeFileSync(join(dir, "stream.tcp"), JSON.stringify({ from: "alice", to: "bob", ports: { alice: 1 } }));
    await warned("not a valid channel");
    expect(get("alice").daemon.status().tunnels).toEqual([]);

    const [pa] = freePorts(1) as [number];
    mark("alice/good", { from: "alice", to: "bob", ports: { alice: pa } });
    await eventually("the tunnel", () => tunnelPort("alice", "alice/good") === pa);
    mark("alice/good", "{half-writ");
    await warned("the tunnel it declared before keeps running");
    expect(tunnelPort("alice", "alice/good")).toBe(pa);
    // Valid, but no longer for alice: that stops it.
    mark("alice/good", { from: "carol", to: "bob", ports: { carol: 1 } });
    await eventually("the tunnel to stop", () => tunnelPort("alice", "alice/good") === undefined);
  });

  test("a channel declared by a flag is left alone by a marker for it", async () => {
    const { log, warnings } = capture();
    const relay = startTestRelay();
    own(() => relay.close());
    const dir = mkdtempSync(join(tmpdir(), "hl-watch-"));
    own(() => rmSync(dir, { recursive: true, force: true }));
    const daemon = await HotlinkDaemon.start({
      server: relay.url,
      user: "alice",
      token: TOKEN,
      tunnels: [{ channel: CHANNEL, host: "127.0.0.1", port: 0, peer: "bob" }],
      log,
      minDelayMs: 20,
    });
    own(() => daemon.close());
    const flagged = daemon.tunnel(CHANNEL);
    const watcher = await watchMarkers({ dir, user: "alice", target: daemon, log, pollMs: 200 });
    own(() => watcher.close());
    mkdirSync(join(dir, ...CHANNEL.split("/")), { recursive: true });
    const file = join(dir, ...CHANNEL.split("/"), "stream.tcp");
    writeFileSync(file, JSON.stringify({ from: "alice", to: "bob", ports: { alice: 1 } }));
    await eventually("the warning", () => warnings().includes("already declared"));
    rmSync(file);
    await watcher.scan();
    expect(daemon.tunnel(CHANNEL)).toBe(flagged);
    expect(watcher.channels()).toEqual([]);
  });

  test("a --watch path that is not a directory is a usage error", async () => {
    const { log } = capture();
    const dir = mkdtempSync(join(tmpdir(), "hl-watch-"));
    own(() => rmSync(dir, { recursive: true, force: true }));
    const target = { addTunnel: () => undefined, remove: async () => false };
    const err = await watchMarkers({ dir: join(dir, "missing"), user: "alice", target, log }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StoaError);
    expect((err as StoaError).code).toBe("usage");
  });
});
