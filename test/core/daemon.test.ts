import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { announceReady, announceStopping, listenFds, notify, onReload, readiness, reload } from "../../src/core/daemon.ts";
import { UnixDatagramReceiver } from "../../src/ffi/unixdgram.ts";

const dir = mkdtempSync("/tmp/daemon-");
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Runs `fn` with NOTIFY_SOCKET pointing at a fresh receiver; returns what arrived. */
function withNotifySocket(address: string, fn: () => void): string[] {
  const rx = new UnixDatagramReceiver(address);
  const saved = process.env.NOTIFY_SOCKET;
  process.env.NOTIFY_SOCKET = address;
  try {
    fn();
    const got: string[] = [];
    for (let m = rx.receive(); m !== null; m = rx.receive()) got.push(m);
    return got;
  } finally {
    if (saved === undefined) delete process.env.NOTIFY_SOCKET;
    else process.env.NOTIFY_SOCKET = saved;
    rx.close();
  }
}

describe("sd_notify", () => {
  test("sends one datagram to a path NOTIFY_SOCKET", () => {
    expect(withNotifySocket(join(dir, "n1.sock"), () => expect(notify("STATUS=x\nEXTEND_TIMEOUT_USEC=1")).toBe(true))).toEqual([
      "STATUS=x\nEXTEND_TIMEOUT_USEC=1",
    ]);
  });

  test("sends to an abstract socket written @name", () => {
    const name = `@stoa-test-${process.pid}-${Math.random().toString(36).slice(2)}`;
    expect(withNotifySocket(name, () => notify("WATCHDOG=1"))).toEqual(["WATCHDOG=1"]);
  });

  test("is a no-op without NOTIFY_SOCKET, and a dead socket is not an error that stops anything", () => {
    const saved = process.env.NOTIFY_SOCKET;
    delete process.env.NOTIFY_SOCKET;
    expect(notify("READY=1")).toBe(false);
    process.env.NOTIFY_SOCKET = join(dir, "nobody.sock");
    expect(notify("READY=1")).toBe(false);
    if (saved === undefined) delete process.env.NOTIFY_SOCKET;
    else process.env.NOTIFY_SOCKET = saved;
  });
});

describe("readiness", () => {
  test("starting → serving at announceReady (READY=1 with STATUS, the ready file) → draining at announceStopping (STOPPING=1)", () => {
    expect(readiness()).toBe("starting");
    const readyFile = join(dir, "ready.json");
    const sent = withNotifySocket(join(dir, "n2.sock"), () => {
      announceReady({ status: "serving on\n8081", readyFile, fields: { port: 8081 } });
      announceReady({ status: "twice" }); // idempotent: nothing more
      expect(readiness()).toBe("serving");
      expect(existsSync(readyFile)).toBe(true);
      announceStopping();
      announceStopping();
    });
    expect(sent).toEqual(["READY=1\nSTATUS=serving on 8081", "STOPPING=1"]);
    expect(JSON.parse(readFileSync(readyFile, "utf8"))).toEqual({ pid: process.pid, port: 8081 });
    expect(readiness()).toBe("draining");
  });
});

describe("reload hooks (SIGHUP)", () => {
  test("run in order; a failing one is reported and does not stop the others", async () => {
    const order: string[] = [];
    const off = [
      onReload("tls", () => {
        order.push("tls");
        return "unchanged";
      }),
      onReload("users", () => {
        order.push("users");
        throw new Error("bad file");
      }),
      onReload("acl", async () => {
        order.push("acl");
      }),
    ];
    expect(await reload("test")).toEqual({ ok: false, reloaded: ["tls (unchanged)", "acl"], failed: ["users"] });
    expect(order).toEqual(["tls", "users", "acl"]);
    for (const f of off) f();
    expect(await reload("test")).toEqual({ ok: true, reloaded: [], failed: [] });
  });
});

describe("socket activation (sd_listen_fds)", () => {
  test("fds from 3 with their names, only for our pid, and the variables are consumed", () => {
    const env: NodeJS.ProcessEnv = { LISTEN_FDS: "3", LISTEN_PID: "42", LISTEN_FDNAMES: "service:string:ping" };
    expect(listenFds(env, 42)).toEqual([
      { fd: 3, name: "service" },
      { fd: 4, name: "string" },
      { fd: 5, name: "ping" },
    ]);
    expect(env).toEqual({});
  });

  test("another process's fds, none, or nonsense give nothing", () => {
    expect(listenFds({ LISTEN_FDS: "2", LISTEN_PID: "7" }, 42)).toEqual([]);
    expect(listenFds({}, 42)).toEqual([]);
    expect(listenFds({ LISTEN_FDS: "-1", LISTEN_PID: "42" }, 42)).toEqual([]);
    expect(listenFds({ LISTEN_FDS: "1e9", LISTEN_PID: "42" }, 42)).toEqual([]);
    expect(listenFds({ LISTEN_FDS: "2", LISTEN_PID: "42" }, 42)).toEqual([
      { fd: 3, name: "unknown" },
      { fd: 4, name: "unknown" },
    ]);
  });
});
