import { describe, expect, test } from "bun:test";
import { parseFlowSpec, type Flow } from "../../src/flows/ofctl.ts";
import { planBridge } from "../../src/flows/plan.ts";
import { cookieHex, cookieOf } from "../../src/flows/model.ts";

const c1 = cookieHex(cookieOf("container", "1"));
const c2 = cookieHex(cookieOf("container", "2"));
const learned = cookieHex(cookieOf("learnedContainer", "1"));
const flow = (spec: string): Flow => parseFlowSpec(spec);
const owned = (spec: string, owner = "container 1") => ({ flow: flow(spec), owner });

describe("planBridge: the cookie-scoped diff", () => {
  test("equal flows plan nothing, whatever the spelling", () => {
    const current = [flow(`cookie=${c1},priority=100,ip,nw_proto=6,nw_dst=10.0.0.1/32,tp_dst=80,actions=output:3`)];
    const plan = planBridge("br0", [owned(`cookie=${c1},table=0,priority=100,tcp,nw_dst=10.0.0.1,tp_dst=80,actions=output:3`)], current);
    expect(plan).toEqual({ bridge: "br0", adds: 0, modifies: 0, deletes: 0, mods: [] });
  });

  test("new → add; other actions → modify_strict; gone → delete_strict restricted to its cookie; deletes first", () => {
    const current = [flow(`cookie=${c1},priority=100,tcp,nw_dst=10.0.0.1,tp_dst=80,actions=output:3`), flow(`cookie=${c1},priority=90,in_port=3,actions=resubmit(,1)`)];
    const plan = planBridge("br0", [owned(`cookie=${c1},priority=100,tcp,nw_dst=10.0.0.1,tp_dst=80,actions=output:4`), owned(`cookie=${c1},priority=100,udp,nw_dst=10.0.0.1,tp_dst=53,actions=output:4`)], current);
    expect([plan.adds, plan.modifies, plan.deletes]).toEqual([1, 1, 1]);
    expect(plan.mods[0]).toStartWith(`delete_strict cookie=${c1}/-1,`);
    expect(plan.mods[0]).toContain("in_port=3");
    expect(plan.mods[1]).toStartWith("modify_strict ");
    expect(plan.mods[1]).toContain("output:4");
    expect(plan.mods[2]).toStartWith("add ");
    expect(plan.mods[2]).toContain("tp_dst=53");
  });

  test("another cookie or other timeouts at the same place: delete_strict + add in the same plan", () => {
    const current = [flow(`cookie=${c1},priority=100,tcp,nw_dst=10.0.0.1,tp_dst=80,actions=output:3`), flow(`cookie=${c1},idle_timeout=5,priority=7,arp,actions=NORMAL`)];
    const plan = planBridge("br0", [owned(`cookie=${c2},priority=100,tcp,nw_dst=10.0.0.1,tp_dst=80,actions=output:3`, "container 2"), owned(`cookie=${c1},priority=7,arp,actions=NORMAL`)], current);
    expect([plan.adds, plan.modifies, plan.deletes]).toEqual([2, 0, 2]);
    expect(plan.mods.filter((m) => m.startsWith("delete_strict")).length).toBe(2);
    expect(plan.mods.slice(2).every((m) => m.startsWith("add "))).toBe(true);
  });

  test("foreign and learned flows are never touched; a desired flow in a foreign flow's place is an error", () => {
    const current = [flow("cookie=0x0,priority=0,actions=NORMAL"), flow("cookie=0x99,priority=50,udp,tp_dst=9,actions=drop"), flow(`cookie=${learned},table=1,hard_timeout=300,priority=110,dl_dst=02:00:00:00:00:01,actions=output:3`)];
    expect(planBridge("br0", [], current).mods).toEqual([]);
    expect(() => planBridge("br0", [owned(`cookie=${c1},priority=50,udp,tp_dst=9,actions=output:1`)], current)).toThrow(/would replace a flow stoa does not own \(cookie 0x99/);
  });

  test("two desired flows at one place is an error naming both owners", () => {
    expect(() => planBridge("br0", [owned(`cookie=${c1},priority=5,ip,actions=drop`), owned(`cookie=${c2},priority=5,ip,actions=NORMAL`, "container 2")], [])).toThrow(/container 2 and container 1 both want the flow at table 0, priority 5/);
  });
});
