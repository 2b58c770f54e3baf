import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createLogger } from "../../src/core/log.ts";
import { ShutdownManager, shutdownManager, onShutdown, shutdown } from "../../src/core/shutdown.ts";
import { eventually } from "../helpers/eventually.ts";

function harness(timeoutMs = 1_000) {
  const lines: string[] = [];
  const exits: number[] = [];
  const log = createLogger({ level: "debug", format: "json", stream: { write: (s: string) => lines.push(s) } });
  const manager = new ShutdownManager({ exit: (code) => exits.push(code), timeoutMs, log });
  const entries = () => lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  return { manager, exits, entries };
}

describe("order and once-only", () => {
  test("runs cleanups in reverse order of registration, one at a time, then exits 0", async () => {
    const { manager, exits } = harness();
    const events: string[] = [];
    manager.onShutdown("store", () => {
      events.push("store");
    });
    manager.onShutdown("server", async () => {
      events.push("server start");
      await Bun.sleep(20);
      events.push("server end");
    });
    manager.onShutdown("socket", () => {
      events.push("socket");
    });
    expect(await manager.shutdown("test")).toBe(0);
    expect(events).toEqual(["socket", "server start", "server end", "store"]);
    expect(exits).toEqual([0]);
  });

  test("runs each cleanup once however often shutdown is asked for", async () => {
    const { manager, exits } = harness();
    let runs = 0;
    manager.onShutdown("counted", () => {
      runs++;
    });
    const first = manager.shutdown("one");
    const second = manager.shutdown("two");
    expect(second).toBe(first);
    expect(manager.stopping).toBe(true);
    await first;
    await manager.shutdown("three");
    expect(runs).toBe(1);
    expect(exits).toEqual([0]);
  });

  test("skips an unregistered cleanup", async () => {
    const { manager } = harness();
    const events: string[] = [];
    manager.onShutdown("kept", () => {
      events.push("kept");
    });
    const off = manager.onShutdown("dropped", () => {
      events.push("dropped");
    });
    off();
    off();
    await manager.shutdown("test");
    expect(events).toEqual(["kept"]);
  });

  test("runs a cleanup registered during shutdown next, and honours one unregistered during it", async () => {
    const { manager } = harness();
    const events: string[] = [];
    manager.onShutdown("first registered", () => {
      events.push("first registered");
    });
    const offMiddle = manager.onShutdown("middle", () => {
      events.push("middle");
    });
    manager.onShutdown("last registered", () => {
      events.push("last registered");
      offMiddle();
      manager.onShutdown("late", () => {
        events.push("late");
      });
    });
    await manager.shutdown("test");
    expect(events).toEqual(["last registered", "late", "first registered"]);
  });

  test("passes a requested exit code through when all cleanups succeed", async () => {
    const { manager, exits } = harness();
    expect(await manager.shutdown("fatal error", 1)).toBe(1);
    expect(exits).toEqual([1]);
  });
});

describe("failures", () => {
  test("a throwing or rejecting cleanup does not stop the others and makes the exit code 1", async () => {
    const { manager, exits, entries } = harness();
    const events: string[] = [];
    manager.onShutdown("a", () => {
      events.push("a");
    });
    manager.onShutdown("rejects", async () => {
      throw new Error("disk gone");
    });
    manager.onShutdown("throws", () => {
      throw new Error("socket busy");
    });
    manager.onShutdown("b", () => {
      events.push("b");
    });
    expect(await manager.shutdown("test")).toBe(1);
    expect(events).toEqual(["b", "a"]);
    expect(exits).toEqual([1]);
    const failures = entries().filter((e) => e.msg === "cleanup failed");
    expect(failures.map((e) => [e.cleanup, e.err])).toEqual([
      ["throws", "socket busy"],
      ["rejects", "disk gone"],
    ]);
  });

  test("abandons a hanging cleanup at the deadline and still calls the rest", async () => {
    const { manager, exits, entries } = harness(100);
    const events: string[] = [];
    manager.onShutdown("sync after", () => {
      events.push("sync after");
    });
    manager.onShutdown("async after", async () => {
      events.push("async after started");
      await new Promise<void>(() => {});
    });
    manager.onShutdown("hangs", () => new Promise<void>(() => {}));
    expect(await manager.shutdown("test")).toBe(1);
    expect(events).toEqual(["async after started", "sync after"]);
    expect(exits).toEqual([1]);
    expect(entries().find((e) => e.msg === "cleanup did not finish in time")).toMatchObject({
      cleanup: "hangs",
      timeoutMs: 100,
    });
  });

  test("bounds the whole run, not each cleanup, by the timeout", async () => {
    const { manager } = harness(150);
    const finished: string[] = [];
    for (const name of ["c", "b", "a"]) {
      manager.onShutdown(name, async () => {
        await Bun.sleep(100);
        finished.push(name);
      });
    }
    expect(await manager.shutdown("test")).toBe(1);
    expect(finished).toEqual(["a"]);
  });
});

describe("the process-wide manager", () => {
  test("is what onShutdown and shutdown use", () => {
    expect(shutdownManager).toBeInstanceOf(ShutdownManager);
    expect(shutdownManager.stopping).toBe(false);
    const off = onShutdown("never run here", () => {});
    off();
    expect(typeof shutdown).toBe("function");
  });
});

describe("signals, in a real process", () => {
  const dir = mkdtempSync(join(tmpdir(), "stoa-shutdown-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const fixture = join(import.meta.dir, "..", "fixtures", "shutdown-cleanups.ts");
  let n = 0;

  async function start(mode?: "hang") {
    const out = join(dir, `out-${++n}.txt`);
    const proc = Bun.spawn([process.execPath, fixture, out, ...(mode ? [mode] : [])], {
      stdout: "pipe",
      stderr: "pipe",
    });
    const reader = proc.stdout.getReader();
    const first = await reader.read();
    reader.releaseLock();
    expect(new TextDecoder().decode(first.value)).toBe("ready\n");
    return { proc, out, read: () => (existsSync(out) ? readFileSync(out, "utf8") : "") };
  }

  test("SIGTERM runs every cleanup once, last registered first, and exits 0", async () => {
    const { proc, read } = await start();
    proc.kill("SIGTERM");
    expect(await proc.exited).toBe(0);
    expect(read()).toBe("listener\nasync store\nidle timer\n");
    const stderr = await new Response(proc.stderr).text();
    expect(stderr).toContain('"msg":"shutting down","reason":"SIGTERM"');
  });

  test("SIGINT stops gracefully with exit code 0 too", async () => {
    const { proc, read } = await start();
    proc.kill("SIGINT");
    expect(await proc.exited).toBe(0);
    expect(read()).toBe("listener\nasync store\nidle timer\n");
  });

  test("a hanging cleanup makes the process exit 1 after the timeout, other cleanups run", async () => {
    const { proc, read } = await start("hang");
    proc.kill("SIGTERM");
    expect(await proc.exited).toBe(1);
    // "async store" was called past the deadline but not awaited: its write never happened.
    expect(read()).toBe("hanging\nlistener\nidle timer\n");
  });

  test("a second signal during shutdown exits 1 at once", async () => {
    const { proc, read } = await start("hang");
    proc.kill("SIGTERM");
    await eventually("the shutdown to begin", () => read().includes("hanging"));
    proc.kill("SIGINT");
    expect(await proc.exited).toBe(1);
    expect(read()).toBe("hanging\n");
    const stderr = await new Response(proc.stderr).text();
    expect(stderr).toContain("second signal during shutdown");
  });
});

describe("end of stdin and a signal together — regression, issue 9 D9: `producer | stoa pub` stopped by Ctrl-C left its registration and sockets", () => {
  const dir = mkdtempSync(join(tmpdir(), "stoa-shutdown-eof-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const fixture = join(import.meta.dir, "..", "fixtures", "shutdown-cleanups.ts");
  let n = 0;

  test("a signal during a shutdown begun by end of stdin lets every cleanup run and exits 0", async () => {
    const out = join(dir, `self-${++n}.txt`);
    const proc = Bun.spawn([process.execPath, fixture, out, "stdin-self-signal"], { stdin: "pipe", stdout: "pipe", stderr: "pipe" });
    proc.stdin.end();
    expect(await proc.exited).toBe(0);
    expect(readFileSync(out, "utf8")).toBe("listener\nasync store\nidle timer\n");
    const stderr = await new Response(proc.stderr).text();
    expect(stderr).not.toContain("second signal");
    expect(stderr).toContain('"reason":"end of stdin"');
  });

  test("SIGINT to the whole pipeline's process group, 20 times: every run cleans up and exits 0", async () => {
    const runs = 20;
    const outcomes: { code: number | null; out: string; stderr: string }[] = [];
    for (let i = 0; i < runs; i++) {
      const out = join(dir, `group-${++n}.txt`);
      // setsid: the shell leads a new process group, like a terminal's foreground job; the
      // producer (sleep) dies of the SIGINT, so EOF reaches the fixture with the same signal.
      // The shell traps SIGINT (children get the default back) to report the fixture's code.
      const script = `trap : INT; sleep 30 | "$0" "$1" "$2" stdin; exit $?`;
      const proc = Bun.spawn(["setsid", "sh", "-c", script, process.execPath, fixture, out], {
        stdout: "pipe",
        stderr: "pipe",
      });
      const reader = proc.stdout.getReader();
      const first = await reader.read();
      reader.releaseLock();
      expect(new TextDecoder().decode(first.value)).toBe("ready\n");
      process.kill(-proc.pid, "SIGINT");
      const code = await proc.exited;
      outcomes.push({ code, out: existsSync(out) ? readFileSync(out, "utf8") : "", stderr: await new Response(proc.stderr).text() });
    }
    const bad = outcomes.filter((o) => o.code !== 0 || o.out !== "listener\nasync store\nidle timer\n");
    expect(bad.map((o) => ({ code: o.code, out: o.out, stderr: o.stderr.slice(-300) }))).toEqual([]);
  });
});
