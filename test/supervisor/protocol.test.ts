import { describe, expect, test } from "bun:test";
import { StoaError } from "../../src/core/errors.ts";
import { MAX_CONTROL_FRAME_BYTES, NewRule, Rule, codecs, ruleProblems, type ControlAnswer, type ToWorker } from "../../src/supervisor/protocol.ts";

const rule = (over: Record<string, unknown> = {}) => ({
  rule_id: "r1",
  input_interface: "eth0",
  input_group: "239.1.1.1",
  input_port: 5000,
  outputs: [{ group: "239.2.2.2", port: 6000, interface: "eth1" }],
  ...over,
});
const problems = (value: unknown): string[] => {
  const parsed = Rule.safeParse(value);
  return parsed.success ? [] : parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`);
};

describe("rules", () => {
  test("a good rule passes; each bad field is named with what it should be", () => {
    expect(problems(rule())).toEqual([]);
    expect(problems(rule({ input_port: 0 }))).toEqual(["input_port: a port is 1-65535 (0 is no port)"]);
    expect(problems(rule({ input_interface: "an-interface-name-too-long" }))[0]).toStartWith("input_interface: an interface name: 1-15");
    expect(problems(rule({ input_group: "239.1.1" }))).toEqual(["input_group: an IPv4 address, e.g. 239.1.1.1"]);
    expect(problems(rule({ outputs: [] }))).toEqual(["outputs: a rule needs at least one output"]);
    expect(problems(rule({ outputs: [{ group: "239.2.2.2", port: 6000, interface: "eth0" }] }))).toEqual(["outputs.0.interface: output 0 is on the input interface eth0: it would relay its own packets back"]);
    const twice = { group: "239.2.2.2", port: 6000, interface: "eth1" };
    expect(problems(rule({ outputs: [twice, twice] }))).toEqual(["outputs.1: output 239.2.2.2:6000:eth1 is listed twice"]);
    expect(NewRule.safeParse({ ...rule(), rule_id: undefined }).success).toBe(true);
  });

  test("host checks: interfaces that are not there, an input another rule takes", () => {
    const r = Rule.parse(rule());
    expect(ruleProblems(r, { interfaceExists: (n) => n === "eth0", rules: [] })).toEqual(["interface eth1 does not exist on this host"]);
    const other = Rule.parse(rule({ rule_id: "r0" }));
    expect(ruleProblems(r, { interfaceExists: () => true, rules: [other, r] })).toEqual(["rule r0 already relays 239.1.1.1:5000 on eth0"]);
  });
});

describe("codecs", () => {
  test("every control request and answer round-trips", () => {
    const requests = [
      { type: "add_rule", rule: rule() },
      { type: "remove_rule", rule_id: "r1" },
      { type: "list_rules" },
      { type: "get_stats" },
      { type: "list_workers" },
      { type: "ping" },
      { type: "shutdown" },
    ] as const;
    for (const r of requests) expect(codecs.request.decode(codecs.request.encode(r))).toEqual(r);
    const counters = { received: 1, matched: 1, sent: 2, filtered: 0, no_match: 0, buffer_exhausted: 0, errors: 0 };
    const answers: ControlAnswer[] = [
      { type: "add_rule", rule_id: "r1" },
      { type: "list_rules", rules: [Rule.parse(rule())] },
      { type: "get_stats", workers: [{ ...counters, index: 0, pid: 42 }], rules: [{ rule_id: "r1", packets: 1, bytes: 100, pps: 1, bps: 800 }] },
      { type: "list_workers", workers: [{ index: 0, role: "data", pid: 42, state: "running", restarts: 0, since_ms: 10 }] },
      { type: "ping", pid: 1, uptime_ms: 5 },
      { type: "error", error: { code: "not_found", message: "no rule r9" } },
    ];
    for (const a of answers) expect(codecs.answer.decode(codecs.answer.encode(a))).toEqual(a);
    const toWorker: ToWorker = { type: "add_rule", rule: Rule.parse(rule()), fds: ["input", "output 0"] };
    expect(codecs.toWorker.decode(codecs.toWorker.encode(toWorker))).toEqual(toWorker);
    const hello = { type: "hello", role: "data", index: 1, pid: 7 } as const;
    expect(codecs.fromWorker.decode(codecs.fromWorker.encode(hello))).toEqual(hello);
  });

  test("what does not fit is a StoaError with a code, never a crash", () => {
    const bad = [new Uint8Array([0xff]), codecs.answer.encode({ type: "add_rule", rule_id: "r1" }), new Uint8Array(MAX_CONTROL_FRAME_BYTES + 1)];
    for (const bytes of bad) {
      const result = codecs.request.safeDecode(bytes);
      expect(result.ok).toBe(false);
      if (!result.ok) {
        expect(result.error).toBeInstanceOf(StoaError);
        expect(["decode", "schema", "too_large"]).toContain(result.error.code);
      }
    }
    expect(() => codecs.request.decode(codecs.request.encode({ type: "remove_rule", rule_id: "ok" }).subarray(0, 3))).toThrow(StoaError);
  });
});
