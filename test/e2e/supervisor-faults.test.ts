/**
 * `stoa supervisor` under faults, end to end (test/fixtures/supervisor-lab.ts: the compiled
 * binary in namespaces gen → relay → sinks): hostile input — 100,000 random and mutated control
 * frames, 20,000 random Ethernet frames (test/fixtures/supervisor-fault-frames.ts) — leaves every
 * process as it was; kill -9 of a data-plane worker or of the control-plane worker is repaired
 * (restarted with the rules, the control socket answering throughout); SIGTERM leaves nothing
 * behind; the CLI's error paths say what is wrong. The hostile-input tests run first, on workers
 * that never restarted, so "same pids, restarts 0" means what it says.
 */
import { beforeEach, describe, expect, test } from "bun:test";
import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import type { Socket } from "bun";
import { StoaError } from "../../src/core/errors.ts";
import { encodeFrame, FrameDecoder } from "../../src/core/frame.ts";
import { supervisorRequest } from "../../src/supervisor/control-client.ts";
import { type ControlAnswer, type ControlRequest, MAX_CONTROL_FRAME_BYTES, codecs } from "../../src/supervisor/protocol.ts";
import { GROUP, type Stats, SupervisorLab, type WorkerRow, labProblem, useLab } from "../fixtures/supervisor-lab.ts";
import { eventually } from "../helpers/eventually.ts";
import { fuzzSeed, mutate, prng, type Prng } from "../helpers/prng.ts";
import { STOA } from "../helpers/stoa.ts";

const FRAMES = join(import.meta.dir, "..", "fixtures", "supervisor-fault-frames.ts");
/** The control server's pipelining limit (core/framed-socket.ts MAX_CONTROL_PIPELINED): never more unanswered on one connection. */
const WINDOW = 16;
/** Concurrent fuzzing connections (the server allows 64). */
const CONNECTIONS = 16;
/** How long a restarted worker may take to run again: backoff 250 ms, a process start, its hello. */
const RESTART_WITHIN_MS = 5_000;

const problem = labProblem("stoa supervisor's fault tests");

const byRole = (list: WorkerRow[], role: WorkerRow["role"], index: number): WorkerRow | undefined => list.find((w) => w.role === role && w.index === index);
const sum = (s: Stats, k: "received" | "filtered" | "matched" | "errors") => s.workers.reduce((a, w) => a + w[k], 0);
const alive = (pid: number) => existsSync(`/proc/${pid}`);

/** One fuzzing connection: frames go out at most WINDOW ahead of their answers; every answer is decoded. */
class FuzzConnection {
  readonly answers: ControlAnswer[] = [];
  readonly undecodable: string[] = [];
  #sock: Socket<undefined> | undefined;
  #pending: Uint8Array[] = [];
  #sent = 0;
  #decoder = new FrameDecoder({ maxBytes: MAX_CONTROL_FRAME_BYTES });
  #progress: (() => void) | undefined;
  #closed = false;

  static async open(path: string): Promise<FuzzConnection> {
    const c = new FuzzConnection();
    c.#sock = await Bun.connect({
      unix: path,
      socket: {
        data: (_s, chunk) => {
          for (const payload of c.#decoder.push(chunk)) {
            const got = codecs.answer.safeDecode(payload);
            if (got.ok) c.answers.push(got.value);
            else c.undecodable.push(got.error.message);
          }
          c.#wake();
        },
        drain: () => c.#flush(),
        close: () => {
          c.#closed = true;
          c.#wake();
        },
      },
    });
    return c;
  }

  #wake(): void {
    const wake = this.#progress;
    this.#progress = undefined;
    wake?.();
  }

  #flush(): void {
    while (this.#pending.length > 0 && this.#sock !== undefined) {
      const head = this.#pending[0]!;
      const n = this.#sock.write(head);
      if (n < head.length) {
        this.#pending[0] = head.subarray(Math.max(0, n));
        return;
      }
      this.#pending.shift();
    }
  }

  /** Writes raw bytes (a frame, or a lying header). */
  write(bytes: Uint8Array): void {
    this.#pending.push(bytes);
    this.#sent++;
    if (this.#pending.length === 1) this.#flush();
  }

  /** The server closed the connection. */
  get closed(): boolean {
    return this.#closed;
  }

  get unanswered(): number {
    return this.#sent - this.answers.length - this.undecodable.length;
  }

  /** Resolves on the next answer or close. */
  progress(): Promise<void> {
    return new Promise((resolve) => {
      this.#progress = resolve;
    });
  }

  /** Sends every payload as one frame, keeping at most WINDOW unanswered; resolves once all are answered. */
  async run(payloads: Iterable<Uint8Array>): Promise<void> {
    for (const p of payloads) {
      while (this.unanswered >= WINDOW && !this.closed) await this.progress();
      if (this.closed) return;
      this.write(encodeFrame(p, { maxBytes: MAX_CONTROL_FRAME_BYTES }));
    }
    while (this.unanswered > 0 && !this.closed) await this.progress();
  }

  end(): void {
    this.#sock?.end();
  }
}

/**
 * COUNT control frames' payloads: 2 % verbatim templates (each must get the answer type of `expected`
 * at the same index), 48 % mutated templates, 50 % random bytes; and per frame the answer type it
 * must get ("": any valid answer).
 */
function fuzzFrames(rng: Prng, count: number, templates: Uint8Array[], expected: string[]): { payloads: Uint8Array[]; answers: string[] } {
  const payloads: Uint8Array[] = [];
  const answers: string[] = [];
  for (let i = 0; i < count; i++) {
    const pick = rng.int(100);
    if (pick < 2) {
      const at = rng.int(templates.length);
      payloads.push(templates[at]!);
      answers.push(expected[at]!);
      continue;
    }
    payloads.push(pick < 50 ? mutate(rng, rng.pick(templates)) : rng.bytes(rng.int(4) === 0 ? rng.int(2048) : rng.int(48)));
    answers.push("");
  }
  return { payloads, answers };
}

describe.skipIf(problem !== null)("stoa supervisor under faults: gen → relay → sinks", () => {
  const use = useLab({ workers: 2 });
  let lab: SupervisorLab;
  beforeEach(() => {
    lab = use();
  });

  describe("hostile input never crashes a process", () => {
    test("100,000 random and mutated control frames, and lying frame headers: one valid answer each, same pids, restarts 0", async () => {
      const seed = fuzzSeed(0x5c0f_f4a1);
      const rng = prng(seed);
      const before = await lab.workers();
      const rulesBefore = await lab.json<unknown[]>(["list-rules"]);
      expect(before.every((w) => w.state === "running" && w.restarts === 0)).toBe(true);
      // Requests that change nothing when they get through: made-up interfaces, a made-up rule id, no shutdown.
      const requests: [ControlRequest, string][] = [
        [{ type: "ping" }, "ping"],
        [{ type: "list_workers" }, "list_workers"],
        [{ type: "list_rules" }, "list_rules"],
        [{ type: "get_stats" }, "get_stats"],
        [{ type: "remove_rule", rule_id: "fuzz-nosuch" }, "error"],
        [{ type: "add_rule", rule: { rule_id: "fuzz", input_interface: "fz-in0", input_group: GROUP, input_port: 5999, outputs: [{ group: "239.9.9.9", port: 6999, interface: "fz-out0" }] } }, "error"],
      ];
      const templates = requests.map(([r]) => codecs.request.encode(r));
      const expected = requests.map(([, t]) => t);
      const N = 100_000;
      const per = N / CONNECTIONS;
      const conns = await Promise.all(Array.from({ length: CONNECTIONS }, () => FuzzConnection.open(lab.daemon.control)));
      const plans = conns.map(() => fuzzFrames(rng, per, templates, expected));
      const started = performance.now();
      await Promise.all(conns.map((c, i) => c.run(plans[i]!.payloads)));
      const elapsed = performance.now() - started;
      for (const [i, c] of conns.entries()) {
        const what = `connection ${i} (seed ${seed})`;
        expect({ what, closed: c.closed, undecodable: c.undecodable.slice(0, 3), answers: c.answers.length }).toEqual({ what, closed: false, undecodable: [], answers: per });
        const must = plans[i]!.answers;
        const wrong = c.answers.flatMap((a, at) => (must[at] !== "" && a.type !== must[at] ? [`frame ${at}: ${must[at]} expected, got ${JSON.stringify(a).slice(0, 200)}`] : []));
        expect({ what, wrong: wrong.slice(0, 3) }).toEqual({ what, wrong: [] });
        c.end();
      }
      const kinds = new Map<string, number>();
      for (const c of conns) for (const a of c.answers) kinds.set(a.type, (kinds.get(a.type) ?? 0) + 1);
      console.log(`control fuzz: ${N} frames in ${elapsed.toFixed(0)} ms, answers ${JSON.stringify(Object.fromEntries(kinds))}`);
      expect(kinds.get("error")).toBeGreaterThan(N / 2);

      // A length over the 1 MiB limit: the refusal, then the connection is closed.
      for (const length of [MAX_CONTROL_FRAME_BYTES + 1, 0x7fff_ffff, 0xffff_ffff]) {
        const c = await FuzzConnection.open(lab.daemon.control);
        const header = new Uint8Array(4 + 16);
        new DataView(header.buffer).setUint32(0, length);
        header.set(rng.bytes(16), 4);
        c.write(header);
        await eventually(`the refusal of a ${length}-byte frame header and the close`, () => c.closed);
        expect(c.answers.map((a) => a.type)).toEqual(["error"]);
      }

      const after = await lab.workers();
      expect(after.map((w) => [w.role, w.index, w.pid, w.state, w.restarts])).toEqual(before.map((w) => [w.role, w.index, w.pid, "running", 0]));
      expect(alive(lab.daemon.proc.pid)).toBe(true);
      expect((await lab.json<{ pid: number }>(["ping"])).pid).toBe(lab.daemon.proc.pid);
      expect(await lab.json<unknown[]>(["list-rules"])).toEqual(rulesBefore);
    }, 40_000);

    test("20,000 random Ethernet frames from gen: data workers keep their pids, restarts 0, filtered counted, a flow still relayed ≥ 99 %", async () => {
      const PORT = 5005;
      const id = await lab.addRule(PORT, [lab.output("sink2", 6005)], "fuzz-live");
      const before = await lab.workers();
      const statsBefore = await lab.stats();
      const N = 20_000;
      const seed = fuzzSeed(0xf4a3_e0e1);
      const r = await lab.net.exec("gen", [process.execPath, FRAMES, lab.net.iface("gen", "relay"), GROUP, String(PORT), String(N), String(seed)], { timeoutMs: 30_000 });
      expect(r.stderr).toBe("");
      const [, sentText] = /^sent (\d+) refused (\d+)$/.exec(r.stdout.trim()) ?? [];
      const sent = Number(sentText);
      expect(sent).toBeGreaterThan(0.9 * N);
      // Every random frame has a bad version nibble 15 times in 16: at least a third of all is filtered.
      const statsAfter = await eventually("the random frames counted as filtered", async () => {
        const s = await lab.stats();
        return sum(s, "filtered") - sum(statsBefore, "filtered") >= sent / 3 ? s : undefined;
      });
      console.log(`packet fuzz (seed ${seed}): sent ${sent}, received ${sum(statsAfter, "received") - sum(statsBefore, "received")}, filtered ${sum(statsAfter, "filtered") - sum(statsBefore, "filtered")}, matched ${sum(statsAfter, "matched") - sum(statsBefore, "matched")}`);
      const after = await lab.workers();
      expect(after.map((w) => [w.role, w.index, w.pid, w.state, w.restarts])).toEqual(before.map((w) => [w.role, w.index, w.pid, "running", 0]));

      const FLOW = 1000;
      const seen = await lab.sink("sink2", 6005, FLOW, 200);
      expect(await lab.send(PORT, FLOW, 200, ["--flows", "8"])).toEqual([`sent ${FLOW}`]);
      const got = await seen.done;
      expect(got.corrupt).toBe(0);
      expect(got.distinct).toBeGreaterThanOrEqual(0.99 * FLOW);
      expect((await lab.cli(["remove-rule", id])).code).toBe(0);
    }, 40_000);
  });

  describe("kill -9 of a worker is repaired", () => {
    test("a data-plane worker: restarted within 5 s (new pid, restarts 1) with the rules, and relays again ≥ 99 %", async () => {
      const id = await lab.addRule(5001, [lab.output("sink", 6001)], "after-kill");
      const rules = await lab.json<unknown[]>(["list-rules"]);
      const victim = byRole(await lab.workers(), "data", 0)!;
      expect(victim.state).toBe("running");
      process.kill(victim.pid, "SIGKILL");
      const back = await eventually(
        "data worker 0 running again with a new pid",
        async () => {
          const w = byRole(await lab.workers(), "data", 0);
          return w !== undefined && w.state === "running" && w.pid !== victim.pid ? w : undefined;
        },
        { timeoutMs: RESTART_WITHIN_MS },
      );
      expect(back.restarts).toBe(victim.restarts + 1);
      expect(alive(victim.pid)).toBe(false);
      expect(await lab.json<unknown[]>(["list-rules"])).toEqual(rules);

      const N = 500;
      const seen = await lab.sink("sink", 6001, N, 300);
      // 16 flows, so PACKET_FANOUT's hash gives the new worker its share (all on the other worker: 2 in 65,536).
      expect(await lab.send(5001, N, 300, ["--flows", "16"])).toEqual([`sent ${N}`]);
      const got = await seen.done;
      expect(got.corrupt).toBe(0);
      expect(got.distinct).toBeGreaterThanOrEqual(0.99 * N);
      const stats = await lab.stats();
      expect(stats.workers.find((w) => w.pid === back.pid)?.matched ?? 0).toBeGreaterThan(0);
      expect((await lab.cli(["remove-rule", id])).code).toBe(0);
    }, 30_000);

    test("the control socket answers every ping and workers call while a data worker is killed again and again", async () => {
      const DURATION_MS = 5_000;
      const until = performance.now() + DURATION_MS;
      const killed: number[] = [];
      const killer = (async () => {
        while (performance.now() < until) {
          const w = byRole(await lab.workers(), "data", 1);
          if (w !== undefined && w.state === "running" && !killed.includes(w.pid)) {
            process.kill(w.pid, "SIGKILL");
            killed.push(w.pid);
          }
          await Bun.sleep(50); // pacing the polls, not ordering: the state is read again each time
        }
      })();
      const calls: { args: string; code: number; stderr: string }[] = [];
      const caller = async (args: string[]) => {
        while (performance.now() < until) {
          const r = await lab.cli([...args, "--json"]);
          calls.push({ args: args.join(" "), code: r.code, stderr: r.stderr });
        }
      };
      await Promise.all([killer, caller(["ping"]), caller(["workers"]), caller(["ping"])]);
      console.log(`${killed.length} kills, ${calls.length} calls answered meanwhile`);
      expect(killed.length).toBeGreaterThanOrEqual(3);
      expect(calls.length).toBeGreaterThanOrEqual(10);
      expect(calls.filter((c) => c.code !== 0)).toEqual([]);
      // Backoff by now: 250, 500, 1,000, 2,000 ms… — it comes back after the last one.
      const back = await eventually(
        "data worker 1 running again",
        async () => {
          const w = byRole(await lab.workers(), "data", 1);
          return w?.state === "running" && !killed.includes(w.pid) ? w : undefined;
        },
        { timeoutMs: 20_000, everyMs: 100 },
      );
      expect(back.restarts).toBe(killed.length);
      for (const pid of killed) expect(alive(pid)).toBe(false);
    }, 40_000);

    test("the control-plane worker: a new one within 5 s serving the same socket file, which the supervisor kept listening", async () => {
      const inode = statSync(lab.daemon.control).ino;
      const victim = byRole(await lab.workers(), "control", 0)!;
      expect(victim.state).toBe("running");
      process.kill(victim.pid, "SIGKILL");
      // Asked at once, while no control worker runs: the connection waits in the kept socket's backlog.
      const started = performance.now();
      const pong = await lab.json<{ pid: number }>(["ping"]);
      expect(pong.pid).toBe(lab.daemon.proc.pid);
      expect(performance.now() - started).toBeLessThan(RESTART_WITHIN_MS);
      const back = await eventually(
        "a new control worker running",
        async () => {
          const w = byRole(await lab.workers(), "control", 0);
          return w?.state === "running" && w.pid !== victim.pid ? w : undefined;
        },
        { timeoutMs: RESTART_WITHIN_MS },
      );
      expect(back.restarts).toBe(victim.restarts + 1);
      expect(alive(victim.pid)).toBe(false);
      expect(statSync(lab.daemon.control).ino).toBe(inode);
      expect((await lab.cli(["ping"])).code).toBe(0);
    }, 20_000);
  });

  test("a slow answer to a killed control worker's request never reaches its successor's client (request numbers restart per process)", async () => {
    const d = await lab.run("slow", ["--workers", "1", "--user", "nobody"]);
    try {
      const ws = await lab.json<WorkerRow[]>(["workers"], d); // request 1 of this control worker
      const control = byRole(ws, "control", 0)!;
      const data = byRole(ws, "data", 0)!;
      process.kill(data.pid, "SIGSTOP"); // its stats never come: get_stats waits its full STATS_TIMEOUT_MS (1 s)
      // Request 2, slow: sent from here (no CLI start-up), so it reaches this control worker before the kill.
      const a = supervisorRequest(d.control, { type: "get_stats" }, 10_000).then(
        (answer) => answer.type,
        (err: unknown) => (err instanceof StoaError ? err.code : String(err)),
      );
      await Bun.sleep(100);
      process.kill(control.pid, "SIGKILL");
      expect((await lab.cli(["ping"], d)).code).toBe(0); // request 1 of the new control worker
      const started = performance.now();
      const b = await lab.cli(["stats", "--json"], d); // request 2 of the new one: A's stale answer (id 2) comes back meanwhile
      const took = performance.now() - started;
      process.kill(data.pid, "SIGCONT");
      expect(b.code).toBe(0);
      // B's own answer waits for the stopped worker's stats as long as A's did: an early answer was A's.
      expect(took).toBeGreaterThanOrEqual(900);
      expect(await a).toBe("closed"); // A's connection died with its control worker
    } finally {
      d.proc.kill("SIGKILL");
    }
  }, 30_000);

  describe("stopping, and the CLI's errors", () => {
    test("SIGTERM: exit 0 within 5 s, no worker left, control socket and ready file removed", async () => {
      const term = await lab.run("term", ["--workers", "2", "--user", "nobody"]);
      try {
        const add = await lab.cli(["add-rule", "--input-interface", lab.relayIn, "--input-group", GROUP, "--input-port", "5900", "--output", lab.output("sink3", 6900)], term);
        expect(add.code).toBe(0);
        const workers = await lab.json<WorkerRow[]>(["workers"], term);
        expect(workers.map((w) => `${w.role}${w.index}:${w.state}`)).toEqual(["control0:running", "data0:running", "data1:running"]);
        expect(existsSync(term.control)).toBe(true);
        expect(existsSync(term.ready)).toBe(true);
        term.proc.kill("SIGTERM");
        const code = await Promise.race([term.proc.exited, Bun.sleep(5_000).then(() => "still running after 5 s")]);
        expect({ code, stderr: term.stderr() }).toEqual({ code: 0, stderr: expect.any(String) });
        expect(workers.filter((w) => alive(w.pid)).map((w) => w.pid)).toEqual([]);
        expect(existsSync(term.control)).toBe(false);
        expect(existsSync(term.ready)).toBe(false);
      } finally {
        term.proc.kill("SIGKILL");
      }
    }, 30_000);

    test("errors: no supervisor at the path, bad rules (one line per problem), an unknown rule id, an interface that does not exist", async () => {
      const rules = await lab.json<unknown[]>(["list-rules"]);
      const nobody = join(lab.dir, "nobody-serves.sock");
      const ping = await lab.net.exec("relay", [STOA, "supervisor", "ping", "--wait", "0", "--control", `unix:${nobody}`]);
      expect(ping.code).toBe(1);
      expect(ping.stderr).toContain(nobody);
      expect(ping.stderr).toContain("stoa supervisor run");

      const addRule = (input: string, port: string, group: string, outputs: string[]) =>
        lab.cli(["add-rule", "--input-interface", input, "--input-group", group, "--input-port", port, ...outputs.flatMap((o) => ["--output", o])]);
      const lines = (s: string) => s.trim().split("\n");

      const bad = await addRule(lab.relayIn, "70000", "239.1.2", [lab.output("sink", 0)]);
      expect(bad.code).toBe(2);
      expect(lines(bad.stderr)).toEqual([expect.stringMatching(/^--input-group: /), expect.stringMatching(/^--input-port: .*1-65535/), expect.stringMatching(/^--output 1 \(port\): .*1-65535/)]);

      const parts = await addRule(lab.relayIn, "5000", GROUP, [`${lab.sinkAddr()}:6000`]);
      expect(parts.code).toBe(2);
      expect(lines(parts.stderr)).toEqual([expect.stringContaining("expected GROUP:PORT:INTERFACE")]);

      const loop = await addRule(lab.relayIn, "5000", GROUP, [`${lab.sinkAddr()}:6000:${lab.relayIn}`]);
      expect(loop.code).toBe(2);
      expect(lines(loop.stderr)).toEqual([expect.stringContaining(`on the input interface ${lab.relayIn}`)]);

      const nosuch = await lab.cli(["remove-rule", "nosuch"]);
      expect(nosuch.code).toBe(1);
      expect(lines(nosuch.stderr)).toEqual([expect.stringContaining("no rule nosuch")]);

      const ghost = await addRule("ghost0", "5000", GROUP, [lab.output("sink", 6000)]);
      expect(ghost.code).toBe(2);
      expect(lines(ghost.stderr)).toEqual([expect.stringContaining("interface ghost0 does not exist")]);

      expect(await lab.json<unknown[]>(["list-rules"])).toEqual(rules);
    }, 30_000);
  });
});
