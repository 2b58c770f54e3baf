/**
 * core/fdlimit.ts and core/fdguard.ts: the descriptor budget, its probes, the refusal log, the
 * watch that pauses a listener and the refuser that stands in for it. Whatever exhausts
 * descriptors runs in test/fixtures/fd-pressure.ts under `prlimit`, never in the test runner.
 */
import { describe, expect, test } from "bun:test";
import { closeSync, openSync } from "node:fs";
import { join } from "node:path";
import { FD_BACKOFF_MS, FD_WATCH_INTERVAL_MS, REFUSAL_LINGER_MS } from "../../src/core/fdguard.ts";
import { FD_RESERVE_MAX, FD_RESERVE_MIN, fdLimit, fdReserve, fdsInUse, nextFd, overFdBudget, RefusalLog } from "../../src/core/fdlimit.ts";
import { metrics, Registry } from "../../src/core/metrics.ts";
import { memoryLogger } from "../fixtures/gateway-helpers.ts";
import { eventually } from "../helpers/eventually.ts";

const FIXTURE = join(import.meta.dir, "..", "fixtures", "fd-pressure.ts");

/** Runs a scenario of the fixture under `prlimit --nofile=soft:hard`; returns its JSON. */
async function underLimit<T>(soft: number, hard: number, scenario: string): Promise<T> {
  const proc = Bun.spawn(["prlimit", `--nofile=${soft}:${hard}`, process.execPath, FIXTURE, ...scenario.split(" ")], { stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  if (code !== 0) throw new Error(`fd-pressure ${scenario} exited ${code}: ${err}`);
  return JSON.parse(out.trim().split("\n").at(-1) ?? "null") as T;
}

describe("the descriptor budget", () => {
  test("keeps at least 64, 5 % of larger limits, at most 4,096, never more than half", () => {
    expect(fdReserve(1024)).toBe(FD_RESERVE_MIN);
    expect(fdReserve(65_536)).toBe(3_277);
    expect(fdReserve(1_048_576)).toBe(FD_RESERVE_MAX);
    expect(fdReserve(100)).toBe(50);
  });

  test("an accepted descriptor at or above limit − reserve is over budget, below it is not", () => {
    const edge = fdLimit() - fdReserve();
    expect(overFdBudget(edge - 1)).toBe(false);
    expect(overFdBudget(edge)).toBe(true);
    expect(overFdBudget(fdLimit() - 1)).toBe(true);
  });

  test("nextFd names the descriptor the next open gets, by dup and by open alike", () => {
    const predicted = nextFd();
    expect(nextFd("open")).toBe(predicted);
    const fd = openSync("/dev/null", "r");
    try {
      expect(fd).toBe(predicted);
    } finally {
      closeSync(fd);
    }
  });

  test("fdsInUse counts this process's open descriptors", () => {
    const before = fdsInUse();
    const fds = [openSync("/dev/null", "r"), openSync("/dev/null", "r"), openSync("/dev/null", "r")];
    try {
      expect(fdsInUse()).toBe(before + 3);
    } finally {
      for (const fd of fds) closeSync(fd);
    }
  });

  test("raiseFdLimit lifts the soft limit to the hard one", async () => {
    const r = await underLimit<Record<string, unknown>>(1024, 4096, "raise");
    expect(r).toEqual({ atStart: { cur: 4096, max: 4096 }, before: 256, from: 256, to: 4096, hard: 4096, after: 4096 });
  });

  test("at the limit every probe says so, and a refused connect is ours; with room again it is the target's", async () => {
    type Look = Record<string, number | boolean>;
    const r = await underLimit<{ limit: number; reserve: number; full: Look; holed: Look; freed: Look }>(256, 256, "exhaust");
    expect(r.limit).toBe(256);
    expect(r.full).toEqual({ next: -1, nextOpen: -1, pressure: true, refusedIsOurs: true, emfile: true });
    // One free descriptor low in the table: admitting a client there would leave none (the
    // kernel's count sees it; Linux ≥ 6.2, as on every host the suite runs on).
    expect(r.holed).toEqual({ holeIsLow: true, over: true, pressure: true, used: 255 });
    expect(r.freed.next).toBeLessThan(r.limit - r.reserve);
    expect(r.freed).toMatchObject({ pressure: false, refusedIsOurs: false, enfile: true, timeout: false });
  });
});

describe("FdWatch and the refuser", () => {
  type Watched = { events: { what: string; at: number }[]; filledAt: number; freedAt: number; paused: boolean; inReserve: boolean };

  test("at the limit, a watch for the limit pauses, and listens again after the backoff once descriptors are free", async () => {
    const r = await underLimit<Watched>(512, 512, "watch limit");
    expect(r.events.map((e) => e.what)).toEqual(["pause", "resume"]);
    expect(r.events[0]?.at ?? 0).toBeLessThan(r.freedAt);
    expect(r.events[1]?.at ?? 0).toBeGreaterThan(r.freedAt);
    expect(r.paused).toBe(false);
  });

  test("in the reserve but not at the limit, only a watch for the reserve pauses", async () => {
    // The "limit" watch (the gateway's routers refuse at accept themselves) must stay put.
    const limitWatch = await underLimit<Watched>(512, 512, "watch limit-in-reserve");
    expect(limitWatch.inReserve).toBe(true);
    expect(limitWatch.events).toEqual([]);
  });

  test("pauses within a sample or two of the reserve being reached, and resumes after the backoff once it is free", async () => {
    const r = await underLimit<Watched>(512, 512, "watch reserve");
    expect(r.inReserve).toBe(true);
    expect(r.events.map((e) => e.what)).toEqual(["pause", "resume"]);
    const pause = r.events[0] ?? { at: Number.NaN };
    const resume = r.events[1] ?? { at: Number.NaN };
    expect(pause.at).toBeGreaterThanOrEqual(r.filledAt - FD_WATCH_INTERVAL_MS);
    expect(pause.at).toBeLessThan(r.freedAt);
    expect(resume.at).toBeGreaterThanOrEqual(pause.at + FD_BACKOFF_MS);
    expect(resume.at).toBeGreaterThan(r.freedAt);
    expect(r.paused).toBe(false);
  });

  test("the refuser answers its fixed response, counts it, and cuts a silent client after the linger", async () => {
    const r = await underLimit<{ status: number; body: string; refused: number; bytes: number; closedAfterMs: number }>(1024, 1024, "refuser");
    expect(r.status).toBe(503);
    expect(r.body).toBe("nofds");
    expect(r.refused).toBe(2);
    expect(r.bytes).toBeGreaterThan(0); // the silent client got the answer too
    expect(r.closedAfterMs).toBeGreaterThanOrEqual(REFUSAL_LINGER_MS * 0.8);
    expect(r.closedAfterMs).toBeLessThan(REFUSAL_LINGER_MS + 2_000);
  });
});

describe("RefusalLog", () => {
  test("warns at the first refusal, then once per interval with the count, then says when they stopped", async () => {
    const { log, lines } = memoryLogger("info");
    const refusals = new RefusalLog(log, "refusing for a test", 100);
    for (let i = 0; i < 50; i++) refusals.count({ port: 1 });
    expect(lines.length).toBe(1);
    expect(lines[0]).toContain("WARN");
    expect(lines[0]).toContain("refusing for a test");
    expect(lines[0]).toContain("fd_limit=");
    await eventually("the interval's summary", () => lines.length >= 2);
    expect(lines[1]).toContain("refused=49");
    await eventually("the all-clear", () => lines.length >= 3);
    expect(lines[2]).toContain("INFO");
    expect(lines[2]).toContain("none in the last");
    expect(refusals.total).toBe(50);
    refusals.stop();
    await Bun.sleep(250);
    expect(lines.length).toBe(3); // quiet once quiet
  });
});

describe("process descriptor metrics", () => {
  test("a gauge with setFunction is read at each render", () => {
    const registry = new Registry();
    let v = 1;
    registry.gauge("t_read", "Read at render.").setFunction(() => v);
    expect(registry.render()).toContain("t_read 1\n");
    v = 7;
    expect(registry.render()).toContain("t_read 7\n");
    registry.gauge("t_broken", "Throws.").setFunction(() => {
      throw new Error("no");
    });
    expect(registry.render()).toContain("t_broken NaN\n");
    expect(() => registry.gauge("t_labelled", "Has labels.", ["a"]).setFunction(() => 1)).toThrow(/label-less/);
  });

  test("the shared registry shows process_open_fds and process_max_fds", () => {
    const text = metrics.render();
    expect(text).toContain("# TYPE process_open_fds gauge\n");
    expect(text).toContain(`process_max_fds ${fdLimit()}\n`);
    const open = Number(/^process_open_fds (\d+)$/m.exec(text)?.[1]);
    expect(open).toBeGreaterThan(2);
    expect(Math.abs(open - fdsInUse())).toBeLessThanOrEqual(2);
  });
});
