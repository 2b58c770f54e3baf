import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ipv4ToNumber } from "../../src/supervisor/packet-wire.ts";
import { MatchTable, RuleSet } from "../../src/supervisor/rules.ts";

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
const dir = (): string => {
  const d = mkdtempSync(join(tmpdir(), "stoa-rules-"));
  dirs.push(d);
  return d;
};
const here = (name: string) => ["eth0", "eth1", "eth2"].includes(name) || /^(eth8|in\d)$/.test(name);
const newRule = (over: Record<string, unknown> = {}) => ({ input_interface: "eth0", input_group: "239.1.1.1", input_port: 5000, outputs: [{ group: "239.2.2.2", port: 6000, interface: "eth1" }], ...over });

describe("RuleSet", () => {
  test("ids are made when not given, never reused; the file is rewritten on every change and read back at start", () => {
    const file = join(dir(), "rules.json");
    const set = new RuleSet({ file, interfaceExists: here });
    expect(set.add(newRule()).rule_id).toBe("r1");
    expect(set.add(newRule({ input_port: 5001 })).rule_id).toBe("r2");
    set.remove("r1");
    expect(set.add(newRule({ input_port: 5002 })).rule_id).toBe("r3");
    expect(set.add(newRule({ rule_id: "mine", input_port: 5003 })).rule_id).toBe("mine");
    expect((JSON.parse(readFileSync(file, "utf8")) as { rule_id: string }[]).map((r) => r.rule_id)).toEqual(["r2", "r3", "mine"]);
    const again = new RuleSet({ file, interfaceExists: here });
    expect(again.list().map((r) => r.rule_id)).toEqual(["r2", "r3", "mine"]);
    expect(again.add(newRule({ input_port: 5004 })).rule_id).toBe("r4");
  });

  test("every problem is one line: bad fields, missing interfaces, an input another rule has; unknown ids on remove", () => {
    const set = new RuleSet({ interfaceExists: here });
    set.add(newRule());
    expect(() => set.add(newRule({ input_port: 0, outputs: [{ group: "239.2.2.2", port: 6000, interface: "eth0" }] }))).toThrow(/input_port: a port is 1-65535/);
    expect(() => set.add(newRule({ input_port: 7000, outputs: [{ group: "239.2.2.2", port: 6000, interface: "eth9" }] }))).toThrow("interface eth9 does not exist on this host");
    expect(() => set.add(newRule())).toThrow("rule r1 already relays 239.1.1.1:5000 on eth0");
    expect(() => set.remove("nope")).toThrow(/no rule nope/);
    expect(set.list().length).toBe(1);
  });

  test("a rules file that is not a list of rules is refused at start, and left as it is", () => {
    const file = join(dir(), "rules.json");
    writeFileSync(file, '[{"rule_id": "x"}]');
    expect(() => new RuleSet({ file, interfaceExists: here })).toThrow(/is not a list of rules/);
    writeFileSync(file, "{");
    expect(() => new RuleSet({ file, interfaceExists: here })).toThrow(/is not JSON/);
    expect(readFileSync(file, "utf8")).toBe("{");
  });
});

describe("MatchTable", () => {
  test("a packet's (address, port) finds its rule; counters and rates per rule; replace and remove", () => {
    const table = new MatchTable();
    const set = new RuleSet({ interfaceExists: here });
    const r = set.add(newRule());
    table.set(r);
    const live = table.match("eth0", ipv4ToNumber("239.1.1.1"), 5000)!;
    expect(live.rule.rule_id).toBe("r1");
    expect(table.match("eth0", ipv4ToNumber("239.1.1.1"), 5001)).toBeUndefined();
    expect(table.stats(0)).toEqual([{ rule_id: "r1", packets: 0, bytes: 0, pps: 0, bps: 0 }]);
    live.packets += 100;
    live.bytes += 100_000;
    expect(table.stats(1000)).toEqual([{ rule_id: "r1", packets: 100, bytes: 100_000, pps: 100, bps: 800_000 }]);
    table.set({ ...r, input_port: 6001 });
    expect(table.match("eth0", ipv4ToNumber("239.1.1.1"), 5000)).toBeUndefined();
    expect(table.match("eth0", ipv4ToNumber("239.1.1.1"), 6001)?.packets).toBe(0);
    expect(table.remove("r1")).toBe(true);
    expect(table.remove("r1")).toBe(false);
    expect(table.size).toBe(0);
  });

  test("one group:port relayed from two interfaces by two rules: each packet finds the rule of the interface it came in on", () => {
    const table = new MatchTable();
    const set = new RuleSet({ interfaceExists: here });
    const a = set.add(newRule());
    const b = set.add({ ...newRule(), input_interface: "eth8", outputs: [{ group: "239.9.9.9", port: 9, interface: "eth0" }] });
    table.set(a);
    table.set(b);
    expect(table.match("eth0", ipv4ToNumber("239.1.1.1"), 5000)?.rule.rule_id).toBe(a.rule_id);
    expect(table.match("eth8", ipv4ToNumber("239.1.1.1"), 5000)?.rule.rule_id).toBe(b.rule_id);
    expect(table.match("eth5", ipv4ToNumber("239.1.1.1"), 5000)).toBeUndefined();
    table.remove(a.rule_id);
    expect(table.match("eth0", ipv4ToNumber("239.1.1.1"), 5000)).toBeUndefined();
    expect(table.match("eth8", ipv4ToNumber("239.1.1.1"), 5000)?.rule.rule_id).toBe(b.rule_id);
  });

  test("a fifth input interface is refused with the four in use named; a rule on one of them is fine", () => {
    const set = new RuleSet({ interfaceExists: here });
    for (let i = 0; i < 4; i++) set.add({ ...newRule(), input_interface: `in${i}`, input_port: 5000 + i });
    expect(() => set.add({ ...newRule(), input_interface: "in4" })).toThrow(/4 input interfaces already \(in0, in1, in2, in3\)/);
    expect(set.add({ ...newRule(), input_interface: "in2", input_port: 7000 }).input_interface).toBe("in2");
  });
});
