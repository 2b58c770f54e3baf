/**
 * src/flows/ofctl.ts against a real (private) Open vSwitch: a flow as users write it and the
 * same flow as `dump-flows` prints it canonicalize to one Flow; dumps parse whatever their
 * headers and OpenFlow version; bundles are all or nothing and never touch another cookie's flows.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  type DumpedFlow,
  type Flow,
  FlowSyntaxError,
  MAX_DUMP_LINE_CHARS,
  applyFlowMods,
  dumpFlows,
  flowKey,
  flowModLine,
  flowText,
  ofctlPath,
  parseDumpFlows,
  parseFlowSpec,
} from "../../src/flows/ofctl.ts";
import { type Ovs, ovsMissing, startOvs } from "../fixtures/ovs.ts";
import { CORPUS, PORT_NAMES } from "./ofctl-corpus.ts";

const missing = ovsMissing();
if (missing !== null) console.warn(`skipping the ovs-ofctl tests on a real switch: ${missing}`);

/** Start-up (~1.5 s) plus a few hundred ovs-ofctl runs, several times slower on a loaded machine. */
const OVS_TEST_TIMEOUT_MS = 120_000;
const ALL_COOKIES = { cookie: 0n, mask: 0n };


const flowPart = ({ cookie, table, priority, idleTimeout, hardTimeout, match, actions }: Flow): Flow => ({
  cookie,
  table,
  priority,
  idleTimeout,
  hardTimeout,
  match,
  actions,
});

describe.if(missing === null)("ovs-ofctl on a real switch", () => {
  let ovs: Ovs;
  const ports = new Map<string, number>();
  const env = (): NodeJS.ProcessEnv => ovs.env;
  const dumpAll = async (): Promise<DumpedFlow[]> => dumpFlows("br0", { ...ALL_COOKIES, env: env() });
  const clear = (): Promise<string> => ovs.ofctl("del-flows", "br0");

  beforeAll(async () => {
    ovs = await startOvs();
    await ovs.addBridge("br0");
    for (const name of PORT_NAMES) await ovs.vsctl("add-port", "br0", name, "--", "set", "Interface", name, "type=internal");
    for (const name of PORT_NAMES) ports.set(name, Number((await ovs.vsctl("get", "Interface", name, "ofport")).trim()));
    expect([...ports.values()].every((n) => n > 0)).toBe(true);
  }, OVS_TEST_TIMEOUT_MS);
  afterAll(async () => {
    await ovs?.stop();
  }, OVS_TEST_TIMEOUT_MS);

  describe("a flow as users write it and as dump-flows prints it are one Flow", () => {
    test(
      `for each of the ${CORPUS.length} specs of the corpus`,
      async () => {
        expect(CORPUS.length).toBeGreaterThanOrEqual(40);
        const mismatches: string[] = [];
        for (const spec of CORPUS) {
          await clear();
          await ovs.ofctl("add-flow", "br0", spec);
          const dumped = await dumpAll();
          expect(dumped).toHaveLength(1);
          const [flow] = dumped;
          const mine = parseFlowSpec(spec, ports);
          if (flow === undefined || JSON.stringify(flowPart(flow), big) !== JSON.stringify(mine, big)) {
            const raw = await ovs.ofctl("--no-names", "dump-flows", "br0");
            mismatches.push(`${spec}\n  ovs:  ${raw.split("\n")[1]?.trim()}\n  dump: ${flow && flowText(flow)}\n  spec: ${flowText(mine)}`);
          }
        }
        expect(mismatches).toEqual([]);
      },
      OVS_TEST_TIMEOUT_MS,
    );

    test("the canonical flow, sent back to OVS, is the same flow again", async () => {
      for (const spec of CORPUS) {
        const mine = parseFlowSpec(spec, ports);
        await clear();
        await applyFlowMods("br0", [flowModLine("add", mine)], { env: env() });
        const [again] = await dumpAll();
        expect(again && flowPart(again)).toEqual(mine);
      }
    }, OVS_TEST_TIMEOUT_MS);

    test("a port name the bridge does not have is refused, naming it", () => {
      expect(() => parseFlowSpec("priority=5,in_port=nosuch,actions=drop", ports)).toThrow("no port nosuch on the bridge");
      expect(() => parseFlowSpec("actions=output:nosuch", ports)).toThrow(FlowSyntaxError);
      expect(() => parseFlowSpec("actions=learn(in_port=nosuch)", ports)).toThrow("no port nosuch on the bridge");
      expect(() => parseFlowSpec("actions=output:vethA")).toThrow("no port vethA on the bridge");
    });
  });

  describe("dumps", () => {
    test(
      "the same flows dumped over OpenFlow 1.0 and 1.3 (flags such as reset_counts, set_field) are the same Flows",
      async () => {
        await clear();
        const specs = CORPUS.slice(0, 20).map((spec, i) => `cookie=0x${(i + 1).toString(16)},table=${i},${spec.replace(/(^|,)(table|cookie)=[^,]*/g, "")}`);
        await applyFlowMods("br0", specs.map((s) => flowModLine("add", parseFlowSpec(s, ports))), { env: env() });
        await ovs.ofctl("-O", "OpenFlow13", "add-flow", "br0", "reset_counts,send_flow_rem,table=100,priority=6,ip,actions=normal");
        const of10 = parseDumpFlows(await ovs.ofctl("--no-names", "dump-flows", "br0"));
        const of13Text = await ovs.ofctl("--no-names", "-O", "OpenFlow13", "dump-flows", "br0");
        expect(of13Text).toContain("reset_counts");
        const of13 = parseDumpFlows(of13Text);
        expect(of13).toHaveLength(21);
        expect(of13.map(flowPart).sort(byKey)).toEqual(of10.map(flowPart).sort(byKey));
      },
      OVS_TEST_TIMEOUT_MS,
    );

    test("a flow the compiler's learn action learned reads as learn describes it", async () => {
      await clear();
      const vethA = ports.get("vethA");
      const spec = "cookie=0x5,priority=100,tcp,nw_dst=10.0.0.3,tp_dst=6333,actions=learn(table=1,hard_timeout=300,priority=110,delete_learned,cookie=0x7,NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:NXM_OF_IN_PORT[]),output:p1";
      await applyFlowMods("br0", [flowModLine("add", parseFlowSpec(spec, ports))], { env: env() });
      // ofproto/trace -generate runs the actions as a packet would, learn included.
      const trace = Bun.spawnSync(
        ["ovs-appctl", "-t", `${ovs.dir}/ovs-vswitchd.ctl`, "ofproto/trace", "br0", `in_port=${vethA},tcp,dl_src=00:00:00:00:00:01,nw_dst=10.0.0.3,tp_dst=6333`, "-generate"],
        { env: env() },
      );
      expect(trace.exitCode).toBe(0);
      const learned = await dumpFlows("br0", { cookie: 0x7n, mask: 0xffff_ffff_ffff_ffffn, env: env() });
      expect(learned.map(flowPart)).toEqual([
        { cookie: 7n, table: 1, priority: 110, idleTimeout: 0, hardTimeout: 300, match: "dl_dst=00:00:00:00:00:01", actions: `output:${vethA}` },
      ]);
    });

    test("repeated reply headers and blank lines between flows are skipped", async () => {
      const text = await ovs.ofctl("--no-names", "dump-flows", "br0");
      const [header = "", ...lines] = text.trimEnd().split("\n");
      const repeated = [header, ...lines.slice(0, 5), "", header, "", ...lines.slice(5), "", "OFPST_FLOW reply (OF1.3) (xid=0x2):"].join("\n");
      expect(parseDumpFlows(repeated)).toEqual(parseDumpFlows(text));
      expect(parseDumpFlows(repeated.replaceAll("\n", "\r\n"))).toEqual(parseDumpFlows(text));
    });

    test("every field of a flow line is read: counters, duration, timeouts, ages", () => {
      const [flow] = parseDumpFlows(
        "NXST_FLOW reply (xid=0x4):\n cookie=0x5, duration=12.345s, table=3, n_packets=18446744073709551615, n_bytes=1234, idle_timeout=10, hard_timeout=20, idle_age=1, hard_age=2, priority=5,ip actions=NORMAL\n",
      );
      expect(flow).toEqual({
        cookie: 5n,
        table: 3,
        priority: 5,
        idleTimeout: 10,
        hardTimeout: 20,
        match: "ip",
        actions: "NORMAL",
        packets: 18446744073709551615n,
        bytes: 1234n,
        durationS: 12.345,
      });
      const [plain] = parseDumpFlows("NXST_FLOW reply (xid=0x4):\n cookie=0x0, duration=0.1s, table=0, n_packets=0, n_bytes=0, idle_age=0, actions=drop");
      expect(plain && flowPart(plain)).toEqual({ cookie: 0n, table: 0, priority: 32768, idleTimeout: 0, hardTimeout: 0, match: "", actions: "drop" });
    });

    test("a line it cannot read is a FlowSyntaxError naming the line", () => {
      const good = " cookie=0x0, duration=0.1s, table=0, n_packets=0, n_bytes=0, priority=1 actions=drop";
      const cases: [string, string][] = [
        [`NXST_FLOW reply (xid=0x4):\n${good}\n cookie=0x0, duration=0.1s, table=0 priority=1 actions=drop`, "line 3"],
        [`NXST_FLOW reply (xid=0x4):\nsomething else\n`, "line 2"],
        [`${good}\n`, "reply header"],
        [`NXST_FLOW reply (xid=0x4):\n cookie=0x0, duration=0.1s, table=0, n_packets=0, n_bytes=0, wat=1, priority=1 actions=drop`, "unknown field wat="],
        [`NXST_FLOW reply (xid=0x4):\n cookie=zz, duration=0.1s, table=0, n_packets=0, n_bytes=0 actions=drop`, "cookie"],
        [`NXST_FLOW reply (xid=0x4):\n cookie=0x0, duration=0.1s, table=999, n_packets=0, n_bytes=0 actions=drop`, "table"],
        [`NXST_FLOW reply (xid=0x4):\n ${"x".repeat(MAX_DUMP_LINE_CHARS + 1)}`, "longer than"],
      ];
      for (const [text, says] of cases) {
        expect(() => parseDumpFlows(text)).toThrow(FlowSyntaxError);
        expect(() => parseDumpFlows(text)).toThrow(says);
      }
    });
  });

  describe("applyFlowMods: one bundle, all or nothing, only our cookie", () => {
    const ours = 0x5n;
    const flow = (spec: string): Flow => parseFlowSpec(spec, ports);

    test(
      "add, modify_strict and delete_strict in one bundle",
      async () => {
        await clear();
        const keep = flow("cookie=0x5,priority=100,tcp,nw_dst=10.0.0.3,tp_dst=6333,actions=output:vethA");
        const change = flow("cookie=0x5,priority=90,in_port=vethA,actions=resubmit(,1)");
        const remove = flow("cookie=0x5,priority=80,udp,actions=drop");
        await applyFlowMods("br0", [keep, change, remove].map((f) => flowModLine("add", f)), { env: env() });
        const changed = { ...change, actions: "output:2" };
        const added = flow("cookie=0x5,table=1,priority=0,actions=NORMAL");
        await applyFlowMods(
          "br0",
          [flowModLine("modify_strict", changed), flowModLine("delete_strict", remove), flowModLine("add", added)],
          { env: env() },
        );
        const after = (await dumpAll()).map(flowPart).sort(byKey);
        expect(after).toEqual([keep, changed, added].sort(byKey));
      },
      OVS_TEST_TIMEOUT_MS,
    );

    test("a bundle with one invalid line changes nothing and says what OVS said", async () => {
      const before = await ovs.ofctl("--no-names", "--no-stats", "dump-flows", "br0");
      const lines = [
        flowModLine("add", flow("cookie=0x5,priority=300,ip,actions=drop")),
        flowModLine("delete_strict", flow("cookie=0x5,priority=100,tcp,nw_dst=10.0.0.3,tp_dst=6333,actions=drop")),
        "add cookie=0x5,priority=301,actions=output:p9",
      ];
      const err = await applyFlowMods("br0", lines, { env: env() }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(Error);
      expect(String(err)).toContain("p9: output to unknown port");
      expect(String(err)).toContain("line 3");
      expect(await ovs.ofctl("--no-names", "--no-stats", "dump-flows", "br0")).toBe(before);
    });

    test("a flow of another cookie with the same match is untouched by our delete_strict and modify_strict", async () => {
      await clear();
      const foreign = [
        flow("cookie=0x0,priority=100,ip,nw_dst=10.0.0.9,actions=NORMAL"),
        flow("cookie=0x77,priority=101,ip,nw_dst=10.0.0.9,actions=LOCAL"),
      ];
      await applyFlowMods("br0", foreign.map((f) => flowModLine("add", f)), { env: env() });
      const mods = foreign.flatMap((f) => [
        flowModLine("modify_strict", { ...f, cookie: ours, actions: "drop" }),
        flowModLine("delete_strict", { ...f, cookie: ours }),
      ]);
      await applyFlowMods("br0", mods, { env: env() });
      expect((await dumpAll()).map(flowPart).sort(byKey)).toEqual(foreign.sort(byKey));
    });

    test("dumpFlows with the cookie mask returns only ours", async () => {
      await applyFlowMods(
        "br0",
        [flowModLine("add", flow("cookie=0x5,priority=7,actions=drop")), flowModLine("add", flow("cookie=0x10005,priority=8,actions=drop"))],
        { env: env() },
      );
      const mine = await dumpFlows("br0", { cookie: ours, mask: 0xffffn, env: env() });
      expect(mine.map((f) => f.cookie).sort()).toEqual([0x5n, 0x10005n]);
      const exact = await dumpFlows("br0", { cookie: ours, mask: 0xffff_ffff_ffff_ffffn, env: env() });
      expect(exact.map(flowPart)).toEqual([flow("cookie=0x5,priority=7,actions=drop")]);
    });

    test("nothing is sent for no lines; a missing bridge or ovs-ofctl is an error that says so", async () => {
      await applyFlowMods("nosuchbr", [], { env: env() });
      await expect(dumpFlows("nosuchbr", { ...ALL_COOKIES, env: env() })).rejects.toThrow("nosuchbr");
      expect(ofctlPath({ PATH: "/nonexistent" })).toBeNull();
      expect(ofctlPath(env())).toEndWith("ovs-ofctl");
      await expect(dumpFlows("br0", { ...ALL_COOKIES, env: { ...env(), PATH: "/nonexistent" } })).rejects.toThrow(
        "ovs-ofctl not found: install openvswitch-switch",
      );
    });

    test(
      "20,000 flows are applied in one bundle, dumped and parsed",
      async () => {
        await clear();
        const flows: Flow[] = [];
        for (let i = 0; i < 20_000; i++) {
          const ip = `10.${(i >> 8) & 0xff}.${i & 0xff}.${1 + (i % 250)}`;
          flows.push(flow(`cookie=0x5,priority=100,tcp,nw_dst=${ip},tp_dst=${1000 + (i % 5000)},actions=output:vethA`));
        }
        const applyStart = performance.now();
        await applyFlowMods("br0", flows.map((f) => flowModLine("add", f)), { env: env() });
        const applied = performance.now();
        const text = await ovs.ofctl("--no-names", "dump-flows", "br0", "cookie=0x5/-1");
        const dumped = performance.now();
        const parsed = parseDumpFlows(text);
        const done = performance.now();
        console.log(
          `20,000 flows: bundle ${(applied - applyStart).toFixed(0)} ms, dump ${(dumped - applied).toFixed(0)} ms, parse ${(done - dumped).toFixed(0)} ms (${(text.length / 1e6).toFixed(1)} MB)`,
        );
        expect(parsed).toHaveLength(20_000);
        const want = new Set(flows.map((f) => `${flowKey(f)} ${f.actions}`));
        expect(parsed.every((f) => want.has(`${flowKey(f)} ${f.actions}`))).toBe(true);
      },
      OVS_TEST_TIMEOUT_MS,
    );
  });
});

describe("flow text for a plan and for ovs-ofctl", () => {
  const f = parseFlowSpec("cookie=0x5,priority=100,tcp,nw_dst=10.0.0.3,tp_dst=6333,idle_timeout=7,actions=output:3");
  test("flowText, flowKey and flowModLine", () => {
    expect(flowText(f)).toBe("cookie=0x5,table=0,priority=100,tcp,nw_dst=10.0.0.3,tp_dst=6333,idle_timeout=7 actions=output:3");
    expect(flowKey(f)).toBe("table=0,priority=100,tcp,nw_dst=10.0.0.3,tp_dst=6333");
    expect(flowModLine("add", f)).toBe("add cookie=0x5,table=0,priority=100,tcp,nw_dst=10.0.0.3,tp_dst=6333,idle_timeout=7,actions=output:3");
    expect(flowModLine("modify_strict", f)).toBe("modify_strict cookie=0x5/-1,table=0,priority=100,tcp,nw_dst=10.0.0.3,tp_dst=6333,actions=output:3");
    expect(flowModLine("delete_strict", f)).toBe("delete_strict cookie=0x5/-1,table=0,priority=100,tcp,nw_dst=10.0.0.3,tp_dst=6333");
  });

  test("what a dump cannot show is refused with the reason", () => {
    expect(() => parseFlowSpec("priority=1,actions=goto_table:2")).toThrow("resubmit(,TABLE)");
    expect(() => parseFlowSpec("send_flow_rem,priority=1,actions=drop")).toThrow("send_flow_rem is not supported");
    expect(() => parseFlowSpec("priority=1")).toThrow("no actions=");
    expect(() => parseFlowSpec("cookie=0x5/-1,actions=drop")).toThrow("cookie mask");
    expect(() => parseFlowSpec("actions=drop,normal")).toThrow("drop must be the only action");
    expect(() => parseFlowSpec("tcp,udp,actions=drop")).toThrow("contradicts");
    expect(() => parseFlowSpec("nw_dst=10.0.0.300,ip,actions=drop")).toThrow("not an IPv4 address");
  });

  test("IPv6 values as ovs-ofctl prints them (core/ipv6.ts's grammar, IPv4-mapped with its IPv4 tail)", () => {
    expect(parseFlowSpec("ipv6,ipv6_dst=0:0:0:0:0:FFFF:0A00:0001,actions=drop").match).toBe("ipv6,ipv6_dst=::ffff:10.0.0.1");
    expect(parseFlowSpec("ipv6,ipv6_src=2001:DB8::/ffff:ffff::,actions=drop").match).toBe("ipv6,ipv6_src=2001:db8::/32");
    expect(parseFlowSpec("ipv6,ipv6_src=2001:DB8::1/ffff::ffff:0:0,actions=drop").match).toBe("ipv6,ipv6_src=2001::/ffff::ffff:0:0");
    expect(() => parseFlowSpec("ipv6,ipv6_dst=::ffff:10.0.0.300,actions=drop")).toThrow('ipv6_dst: "10.0.0.300" is not an IPv4 address');
    // ovs-ofctl (inet_pton) refuses leading zeros in the IPv4 tail too.
    expect(() => parseFlowSpec("ipv6,ipv6_dst=::ffff:10.0.0.01,actions=drop")).toThrow('ipv6_dst: "::ffff:10.0.0.01" is not an IPv6 address');
    expect(() => parseFlowSpec("ipv6,ipv6_dst=1::2::3,actions=drop")).toThrow('ipv6_dst: "1::2::3" is not an IPv6 address');
  });
});

function big(_key: string, value: unknown): unknown {
  return typeof value === "bigint" ? `${value}n` : value;
}

function byKey(a: Flow, b: Flow): number {
  return flowKey(a) < flowKey(b) ? -1 : flowKey(a) > flowKey(b) ? 1 : 0;
}
