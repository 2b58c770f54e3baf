/**
 * `stoa supervisor` end to end, as users run it: the compiled binary in network namespaces
 * (test/fixtures/supervisor-lab.ts: gen —veth— relay —veth— sink, sink2, sink3), a real supervisor
 * with its control worker and two data-plane workers dropped to nobody, rules added over the
 * control socket with the CLI, numbered datagrams sent to a multicast group from gen and checked
 * byte by byte in the sinks. Faults (kill -9, SIGTERM, random frames and packets) are in
 * supervisor-faults.test.ts.
 */
import { beforeEach, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { SupervisorLab, type Stats, labProblem, useLab } from "../fixtures/supervisor-lab.ts";
import { STOA } from "../helpers/stoa.ts";
import { eventually } from "../helpers/eventually.ts";
import { supervisorRequest } from "../../src/supervisor/control-client.ts";

const problem = labProblem("stoa supervisor's end-to-end tests");

const sum = (s: Stats, k: "received" | "matched" | "sent" | "filtered" | "no_match" | "buffer_exhausted" | "errors") => s.workers.reduce((a, w) => a + w[k], 0);

describe.skipIf(problem !== null)("stoa supervisor in namespaces: gen → relay → sinks", () => {
  const use = useLab({ workers: 2 });
  let lab: SupervisorLab;
  beforeEach(() => {
    lab = use();
  });

  test("ping, and the workers: one control, two data, all running as nobody without capabilities", async () => {
    const pong = await lab.json<{ pid: number; uptime_ms: number }>(["ping"]);
    expect(pong.pid).toBe(lab.daemon.proc.pid);
    const list = await lab.workers();
    expect(list.map((w) => `${w.role}${w.index}:${w.state}`)).toEqual(["control0:running", "data0:running", "data1:running"]);
    const nobody = readFileSync("/etc/passwd", "utf8").split("\n").find((l) => l.startsWith("nobody:"))!.split(":")[2];
    for (const w of list) {
      const status = readFileSync(`/proc/${w.pid}/status`, "utf8");
      expect(status).toMatch(new RegExp(`^Uid:\\s+${nobody}\\s+${nobody}\\s+${nobody}\\s+${nobody}$`, "m"));
      expect(status).toMatch(/^CapEff:\s+0+$/m);
      expect(status).toMatch(/^CapPrm:\s+0+$/m);
    }
    // The supervisor itself stays root: it opens every rule's sockets.
    expect(readFileSync(`/proc/${lab.daemon.proc.pid}/status`, "utf8")).toMatch(/^Uid:\s+0\s+0\s+0\s+0$/m);
  });

  test("1,000 × 1,400 B at 1,000 pps: ≥ 99 % relayed, every payload intact, counted once", async () => {
    const N = 1000;
    const SIZE = 1400;
    const before = await lab.stats();
    const id = await lab.addRule(5000, [lab.output("sink", 6000)]);
    expect(id).toMatch(/^r\d+$/);
    const seen = await lab.sink("sink", 6000, N, SIZE);
    await lab.send(5000, N, SIZE);
    const got = await seen.done;
    expect(got.corrupt).toBe(0);
    expect(got.distinct).toBe(got.received);
    expect(got.received).toBeGreaterThanOrEqual(0.99 * N);
    const stats = await lab.stats();
    expect(stats.workers.length).toBe(2);
    expect(sum(stats, "errors") - sum(before, "errors")).toBe(0);
    expect(sum(stats, "buffer_exhausted")).toBe(0);
    expect(sum(stats, "sent") - sum(before, "sent")).toBeGreaterThanOrEqual(got.received);
    expect(stats.rules.find((r) => r.rule_id === id)?.packets).toBe(sum(stats, "matched") - sum(before, "matched"));
    expect((await lab.cli(["remove-rule", id])).stdout.trim()).toBe(`removed ${id}`);
  }, 60_000);

  test("75,000 datagrams with sequence numbers and seeded payloads arrive intact: the SHA-256 of the payloads in order matches the sender's", async () => {
    const N = 75_000;
    const id = await lab.addRule(5001, [lab.output("sink", 6001)]);
    const seen = await lab.sink("sink", 6001, N, 0, ["--seeded"]);
    const lines = await lab.send(5001, N, 1024, ["--rate", "6000", "--seed", "20261201", "--flows", "4"]);
    expect(lines[0]).toBe(`sent ${N}`);
    const sha = lines[1]!.replace(/^sha256 /, "");
    const got = await seen.done;
    if (got.missing !== 0) console.log("lost datagrams: relay counters and the sink's UDP counters", JSON.stringify(await lab.stats()), (await lab.net.exec("sink", ["cat", "/proc/net/snmp"])).stdout);
    expect(got.corrupt).toBe(0);
    expect(got.missing).toBe(0);
    expect(got.received).toBe(N);
    expect(got.sha256).toBe(sha);
    await lab.cli(["remove-rule", id]);
  }, 120_000);

  test("1 → 3 fan-out: each of three sinks gets every datagram", async () => {
    const N = 500;
    const id = await lab.addRule(5002, [lab.output("sink", 6002), lab.output("sink2", 6002), lab.output("sink3", 6002)]);
    const sinks = await Promise.all(["sink", "sink2", "sink3"].map((s) => lab.sink(s, 6002, N, 200)));
    await lab.send(5002, N, 200, ["--rate", "2000"]);
    for (const s of sinks) {
      const got = await s.done;
      expect(got.corrupt).toBe(0);
      expect(got.distinct).toBe(got.received);
      expect(got.received).toBeGreaterThanOrEqual(0.99 * N);
    }
    const rule = (await lab.stats()).rules.find((r) => r.rule_id === id)!;
    expect(rule.packets).toBeGreaterThanOrEqual(0.99 * N);
    expect(rule.bytes).toBe(rule.packets * 200);
    await lab.cli(["remove-rule", id]);
  }, 60_000);

  test("a rule added and removed while traffic flows: no_match before, relayed while it exists, nothing after, no worker restarted", async () => {
    const N = 3000;
    // A relay reads only the interfaces its rules name: another rule on the input makes its packets seen (and counted no_match).
    const other = await lab.addRule(5999, [lab.output("sink2", 6999)]);
    const pids = (await lab.workers()).map((w) => w.pid);
    const before = await lab.stats();
    const seen = await lab.sink("sink", 6003, N, 100);
    const sending = lab.send(5003, N, 100); // 3 s at 1,000 pps
    await Bun.sleep(700);
    const early = await lab.stats();
    expect(sum(early, "no_match") - sum(before, "no_match")).toBeGreaterThan(100);
    const id = await lab.addRule(5003, [lab.output("sink", 6003)]);
    await Bun.sleep(1000);
    expect((await lab.cli(["remove-rule", id])).code).toBe(0);
    await sending;
    const got = await seen.done;
    expect(got.corrupt).toBe(0);
    expect(got.distinct).toBe(got.received);
    // Relayed only while the rule existed (~1 s of 3): some, far from all.
    expect(got.received).toBeGreaterThan(300);
    expect(got.received).toBeLessThan(0.8 * N);
    const after = await lab.stats();
    expect(sum(after, "no_match") - sum(early, "no_match")).toBeGreaterThan(500);
    expect(sum(after, "errors") - sum(before, "errors")).toBe(0);
    const now = await lab.workers();
    expect(now.map((w) => w.pid)).toEqual(pids);
    expect(now.every((w) => w.restarts === 0 && w.state === "running")).toBe(true);
    await lab.cli(["remove-rule", other]);
  }, 60_000);

  test("payload sizes 46, 64 and 1,472 (the largest in one 1,500-byte frame) relay intact", async () => {
    const id = await lab.addRule(5004, [lab.output("sink", 6004)]);
    for (const size of [46, 64, 1472]) {
      const seen = await lab.sink("sink", 6004, 300, size);
      await lab.send(5004, 300, size, ["--rate", "2000"]);
      const got = await seen.done;
      expect({ size, corrupt: got.corrupt }).toEqual({ size, corrupt: 0 });
      expect(got.distinct).toBe(got.received);
      expect(got.received).toBeGreaterThanOrEqual(297);
    }
    await lab.cli(["remove-rule", id]);
  }, 60_000);

  test("two data workers share the input by PACKET_FANOUT: both get flows, together they relay every datagram exactly once", async () => {
    const N = 4000;
    const before = await lab.stats();
    const id = await lab.addRule(5005, [lab.output("sink", 6005)]);
    const seen = await lab.sink("sink", 6005, N, 300);
    await lab.send(5005, N, 300, ["--rate", "4000", "--flows", "16"]);
    const got = await seen.done;
    const after = await lab.stats();
    expect(got.corrupt).toBe(0);
    expect(got.distinct).toBe(got.received); // no datagram twice: each frame reached one worker, outgoing copies were not read back
    expect(got.received).toBeGreaterThanOrEqual(0.99 * N);
    const byWorker = after.workers.map((w) => w.matched - (before.workers.find((b) => b.index === w.index)?.matched ?? 0));
    expect(byWorker.length).toBe(2);
    for (const n of byWorker) expect(n).toBeGreaterThan(0);
    expect(byWorker[0]! + byWorker[1]!).toBe(after.rules.find((r) => r.rule_id === id)!.packets);
    expect(byWorker[0]! + byWorker[1]!).toBeLessThanOrEqual(N);
    await lab.cli(["remove-rule", id]);
  }, 60_000);

  test("--rules FILE holds the rules as list-rules shows them, and a supervisor started on it has them again", async () => {
    const a = await lab.addRule(5006, [lab.output("sink", 6006)], "keep-me");
    const b = await lab.addRule(5007, [lab.output("sink2", 6007), lab.output("sink3", 6007)]);
    const listed = await lab.json<unknown[]>(["list-rules"]);
    const file = join(lab.dir, "rules.json");
    expect(JSON.parse(readFileSync(file, "utf8"))).toEqual(listed);
    const second = await lab.run("again", ["--workers", "1", "--user", "nobody", "--rules", file]);
    try {
      expect(await lab.json<unknown[]>(["list-rules"], second)).toEqual(listed);
      // The second one relays its copy of rule keep-me too (its own sockets, its own fanout group).
      const seen = await lab.sink("sink", 6006, 200, 64);
      await lab.send(5006, 200, 64);
      const got = await seen.done;
      // Two relays, one rule each: every datagram arrives twice.
      expect(got.corrupt).toBe(0);
      expect(got.distinct).toBeGreaterThanOrEqual(198);
      expect(got.received).toBeGreaterThanOrEqual(2 * 198);
    } finally {
      second.proc.kill("SIGTERM");
      expect(await second.proc.exited).toBe(0);
    }
    expect((await lab.cli(["remove-rule", a])).code).toBe(0);
    expect((await lab.cli(["remove-rule", b])).code).toBe(0);
    expect(JSON.parse(readFileSync(file, "utf8"))).toEqual(await lab.json<unknown[]>(["list-rules"]));
  }, 60_000);

  test("stoa status shows a supervisor whose control socket is in the run dir, its workers running; one that is gone is a problem", async () => {
    const runDir = join(lab.dir, "run");
    const d = await lab.run("status", ["--workers", "1", "--user", "nobody"], { control: join(runDir, "supervisor", "control.sock") });
    const status = async () => {
      const r = await lab.net.exec("relay", [STOA, "status", "--run-dir", runDir, "--json"]);
      return JSON.parse(r.stdout) as { healthy: boolean; problems: string[]; supervisor: { pid?: number; workers?: { role: string; state: string }[]; error?: string } | null };
    };
    const up = await status();
    expect(up.supervisor?.pid).toBe(d.proc.pid);
    expect(up.supervisor?.workers?.map((w) => `${w.role}:${w.state}`)).toEqual(["control:running", "data:running"]);
    expect(up.problems.filter((p) => p.includes("supervisor"))).toEqual([]);
    d.proc.kill("SIGKILL"); // its socket file stays behind, answering nothing
    await d.proc.exited;
    const gone = await status();
    expect(gone.supervisor?.error).toMatch(/no supervisor is running/);
    expect(gone.problems.some((p) => p.startsWith("supervisor: "))).toBe(true);
  }, 60_000);

  test("the control socket answers only once every data worker runs: the first answer a client gets already sees them all (an add-rule before would leave the next packet unread)", async () => {
    const control = join(lab.dir, "early.sock");
    const proc = lab.net.spawn("relay", [STOA, "supervisor", "run", "--workers", "2", "--user", "nobody", "--control", `unix:${control}`], { stdout: "ignore", stderr: "ignore", stdin: "ignore" });
    try {
      const first = await eventually("the first answer of a new supervisor", async () => {
        try {
          return await supervisorRequest(control, { type: "list_workers" }, 2_000);
        } catch {
          return undefined; // not serving yet
        }
      }, { everyMs: 2, timeoutMs: 20_000 });
      expect(first.workers.map((w) => `${w.role}:${w.state}`)).toEqual(["control:running", "data:running", "data:running"]);
    } finally {
      proc.kill("SIGTERM");
      await proc.exited;
    }
  }, 60_000);
});
