/**
 * Attacks on the gateway's routing (issue 9, D2, D8, D10): a remote client names a pub_id, and
 * the gateway must reach nothing in the run dir but a publisher's own socket. A real gateway on
 * loopback, real Unix socket servers standing in for a hotlink daemon's control sockets (users
 * named after the three kinds, so `hotlink/<kind>.sock` is what the old layout's
 * `<run_dir>/<pub_id>/<kind>.sock` made of `STOA1 hotlink`), and each hostile entry planted both
 * where the old layout looked (`<run_dir>/<name>/`) and in the publishers' subtree
 * (`<run_dir>/pub/<name>/`). Every server counts the connections it got: none may arrive.
 */
import { describe, expect, test } from "bun:test";
import { chownSync, mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { hotlinkControlPath, publishersDir, publisherSocketPath } from "../../src/core/paths.ts";
import { controlRequest } from "../../src/gateway/control.ts";
import type { Gateway } from "../../src/gateway/gateway.ts";
import { KINDS, type Kind } from "../../src/gateway/protocol.ts";
import { gatewayTestScope, memoryLogger, openWs, rawEcho, rawExchange, staleSocket, wsAsk, wsPublisher } from "../fixtures/gateway-helpers.ts";
import { eventually } from "../helpers/eventually.ts";

const scope = gatewayTestScope();
const { gateway, own, defer } = scope;

/** nobody: a uid that is not the gateway's (the tests run as root). */
const OTHER_UID = 65534;
/** Attempts per case and port: with two routers SO_REUSEPORT spreads them over both. */
const ATTEMPTS = 4;

/** A live socket server at `path` that counts its connections. */
async function listener(path: string): Promise<{ connections(): number }> {
  const echo = own(await rawEcho(path));
  return { connections: () => echo.received().length };
}

/** Fake hotlink daemons for users `service`, `string` and `ping` in the run dir. */
async function hotlinkDaemons(runDir: string): Promise<{ connections(): number }> {
  const servers = await Promise.all(KINDS.map((user) => listener(hotlinkControlPath(runDir, user))));
  return { connections: () => servers.reduce((n, s) => n + s.connections(), 0) };
}

/** Sends `line` ATTEMPTS times on the port of `kind`; returns every reply's status and error. */
async function ask(gw: Gateway, kind: Kind, line: string): Promise<string[]> {
  const replies: string[] = [];
  for (let i = 0; i < ATTEMPTS; i++) {
    const r = await rawExchange(gw.ports[kind], line);
    replies.push(`${r.status} ${r.body?.error ?? r.text.slice(0, 40)}`);
  }
  return replies;
}

function all(reply: string): string[] {
  return Array.from({ length: ATTEMPTS }, () => reply);
}

describe("the gateway never reaches a hotlink daemon's control socket (D2)", () => {
  test("STOA1 hotlink and GET /pub/hotlink on every port are 404 and no control socket sees a connection", async () => {
    const gw = await gateway({ workers: 2 });
    const daemons = await hotlinkDaemons(scope.runDir);
    for (const kind of KINDS) {
      expect(await ask(gw, kind, "STOA1 hotlink\n")).toEqual(all("404 unknown_pub_id"));
      expect(await ask(gw, kind, "GET /pub/hotlink HTTP/1.1\r\nHost: x\r\n\r\n")).toEqual(all("404 unknown_pub_id"));
      expect(await ask(gw, kind, "GET /pub/hotlink/x?y=1 HTTP/1.1\r\n\r\n")).toEqual(all("404 unknown_pub_id"));
    }
    expect(daemons.connections()).toBe(0);
    // The count could have moved: a local client does reach the control socket.
    const local = await Bun.connect({ unix: hotlinkControlPath(scope.runDir, "ping"), socket: { data() {} } });
    local.write("x");
    await eventually("the local connection to be seen", () => daemons.connections() === 1);
    local.end();
  });

  test("a publisher socket symlinked, or a publisher directory symlinked, to the hotlink sockets is 404", async () => {
    const gw = await gateway({ workers: 2 });
    const daemons = await hotlinkDaemons(scope.runDir);
    const hotlinkDir = join(scope.runDir, "hotlink");
    for (const base of [scope.runDir, publishersDir(scope.runDir)]) {
      mkdirSync(join(base, "linkedsock"), { recursive: true });
      for (const kind of KINDS) symlinkSync(hotlinkControlPath(scope.runDir, kind), join(base, "linkedsock", `${kind}.sock`));
      symlinkSync(hotlinkDir, join(base, "linkeddir"));
    }
    for (const kind of KINDS) {
      expect(await ask(gw, kind, "STOA1 linkedsock\n")).toEqual(all("404 unknown_pub_id"));
      expect(await ask(gw, kind, "STOA1 linkeddir\n")).toEqual(all("404 unknown_pub_id"));
    }
    expect(daemons.connections()).toBe(0);
  });
});

describe("nothing but a publisher's own socket is a target (D8)", () => {
  test("STOA1 gateway.sock is 404 and the target is not marked down", async () => {
    const gw = await gateway();
    for (const kind of KINDS) {
      expect(await ask(gw, kind, "STOA1 gateway.sock\n")).toEqual(all("404 unknown_pub_id"));
      expect(await ask(gw, kind, "GET /pub/gateway.sock HTTP/1.1\r\n\r\n")).toEqual(all("404 unknown_pub_id"));
    }
    const health = await controlRequest(scope.runDir, { type: "health" });
    expect(health.targets).toEqual({ up: 0, down: 0 });
    const stats = await gw.stats();
    expect(stats.errors).toEqual({ unknown_pub_id: 2 * ATTEMPTS * KINDS.length });
    expect((await gw.list()).entries).toEqual([]);

    // The same check does see a target that is down: a stale socket of a killed publisher.
    own(await rawEcho(publisherSocketPath(scope.runDir, "killed", "string")));
    staleSocket(publisherSocketPath(scope.runDir, "killed", "service"));
    expect((await rawExchange(gw.ports.service, "STOA1 killed\n")).status).toBe(502);
    expect((await controlRequest(scope.runDir, { type: "health" })).targets).toEqual({ up: 0, down: 1 });
  });

  test("files, directories, symlinks and another uid's sockets in the run dir are all 404, reach nothing and are not listed", async () => {
    const gw = await gateway({ workers: 2 });
    const runDir = scope.runDir;
    const elsewhere = await listener(join(runDir, "elsewhere", "target.sock"));
    const planted: { connections(): number }[] = [elsewhere];
    const names: string[] = [];
    for (const base of [runDir, publishersDir(runDir)]) {
      const at = (name: string, kind?: Kind): string => join(base, name, ...(kind === undefined ? [] : [`${kind}.sock`]));
      // a regular file where a publisher's directory would be
      mkdirSync(base, { recursive: true });
      writeFileSync(at("afile"), "x");
      // an empty directory, and directories whose <kind>.sock is a file, a directory, or a
      // symlink to a live socket elsewhere
      mkdirSync(at("emptydir"), { recursive: true });
      for (const kind of KINDS) {
        mkdirSync(at("withfile"), { recursive: true });
        writeFileSync(at("withfile", kind), "not a socket");
        mkdirSync(at("withdir", kind), { recursive: true });
        mkdirSync(at("withlink"), { recursive: true });
        symlinkSync(join(runDir, "elsewhere", "target.sock"), at("withlink", kind));
        // a live socket that belongs to another uid
        const foreign = await listener(at("foreign", kind));
        chownSync(at("foreign", kind), OTHER_UID, OTHER_UID);
        planted.push(foreign);
        // our own live socket, in a directory that belongs to another uid
        const inForeignDir = await listener(at("foreigndir", kind));
        planted.push(inForeignDir);
      }
      chownSync(at("foreigndir"), OTHER_UID, OTHER_UID);
      names.push("afile", "emptydir", "withfile", "withdir", "withlink", "foreign", "foreigndir");
    }
    for (const name of new Set(names)) {
      for (const kind of KINDS) {
        expect([name, kind, await ask(gw, kind, `STOA1 ${name}\n`)]).toEqual([name, kind, all("404 unknown_pub_id")]);
      }
    }
    expect(planted.map((p) => p.connections())).toEqual(planted.map(() => 0));
    expect((await controlRequest(runDir, { type: "health" })).targets).toEqual({ up: 0, down: 0 });
    expect((await gw.list()).entries).toEqual([]);
  });

  test("a live publisher of the old layout, <run_dir>/<pub_id>/, is ignored, and a starting gateway says so", async () => {
    const old = await listener(join(scope.runDir, "oldpub", "ping.sock"));
    const { log, lines } = memoryLogger("warn");
    const gw = await gateway({ log });
    expect(lines.join("")).toContain("publisher directories of an older stoa");
    expect(lines.join("")).toContain("oldpub");
    expect(await ask(gw, "ping", "STOA1 oldpub\n")).toEqual(all("404 unknown_pub_id"));
    expect(old.connections()).toBe(0);
    expect((await gw.list()).entries).toEqual([]);
  });
});

describe("double-encoded paths (D10)", () => {
  test.each([
    ["%252e%252e", "GET /pub/p1/%252e%252e/%252e%252e/hotlink/ping.sock HTTP/1.1\r\n\r\n"],
    ["%252E%252E", "GET /pub/p1/%252E%252E HTTP/1.1\r\n\r\n"],
    ["%252f", "GET /pub/p1/..%252f..%252fhotlink HTTP/1.1\r\n\r\n"],
    ["%255c", "GET /pub/p1/..%255c..%255c HTTP/1.1\r\n\r\n"],
    ["%25252e (triple)", "GET /pub/p1/%25252e%25252e HTTP/1.1\r\n\r\n"],
  ])("%s after a real publisher's pub_id is 400 and never reaches it", async (_what, line) => {
    const gw = await gateway();
    const pub = await listener(publisherSocketPath(scope.runDir, "p1", "ping"));
    const reply = await rawExchange(gw.ports.ping, line);
    expect(reply.status).toBe(400);
    expect(reply.body?.error).toBe("invalid_pub_id");
    expect(pub.connections()).toBe(0);
  });
});

describe("a real publisher in <run_dir>/pub/<pub_id>/ is still routed", () => {
  test("by WebSocket and by prelude on every port, and listed", async () => {
    const gw = await gateway({ workers: 2 });
    const daemons = await hotlinkDaemons(scope.runDir);
    // The layout is the contract: spelled out here, not only through core/paths.ts.
    for (const kind of KINDS) expect(publisherSocketPath(scope.runDir, "real1", kind)).toBe(join(scope.runDir, "pub", "real1", `${kind}.sock`));
    for (const kind of KINDS) own(await wsPublisher(scope.runDir, "real1", kind));
    for (const kind of KINDS) {
      for (let i = 0; i < ATTEMPTS; i++) {
        const ws = await openWs(`ws://127.0.0.1:${gw.ports[kind]}/pub/real1/x?n=${i}`);
        defer(() => ws.close());
        expect(await wsAsk(ws, "hi")).toBe(`${kind}:real1:hi`);
      }
    }
    const echo = own(await rawEcho(join(scope.runDir, "pub", "raw1", "service.sock")));
    expect((await rawExchange(gw.ports.service, "STOA1 raw1\nthrough", { halfClose: true })).text).toBe("through");
    expect(echo.received().map(String)).toEqual(["through"]);
    const listed = (await gw.list()).entries.map((e) => `${e.pub_id}/${e.kind}`).sort();
    expect(listed).toEqual(["raw1/service", "real1/ping", "real1/service", "real1/string"]);
    expect(daemons.connections()).toBe(0);
  });
});
