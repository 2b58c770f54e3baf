/**
 * compile.ts writes its flows canonical without parsing them, and a dump of them is read through
 * fast paths (flow-syntax.ts compiledMatch, canonicalActions): both must give exactly what the
 * general canonicalizer gives. Over many compiled shapes — tcp/udp, several services, unexposed
 * ones, remote services through mesh_port (peers' addresses as they send them), the mesh return
 * path, the table-1 default, reserved and large ofports — each emitted Flow deep-equals
 * parseFlowSpec(spec, the bridge's ports), and the dump line OVS would print for it reads back
 * as the same Flow.
 */
import { describe, expect, test } from "bun:test";
import { compile, ownedFlows, type DesiredFlow, type SwitchPort } from "../../src/flows/compile.ts";
import { parseState, type ServiceLocation, type State } from "../../src/flows/model.ts";
import { parseDumpFlows, parseFlowSpec, type Flow } from "../../src/flows/ofctl.ts";

/** A seeded generator, so a failure repeats. */
function random(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

interface Case {
  state: State;
  ports: Map<string, SwitchPort>;
  remote: ServiceLocation[];
}

/** A state of `n` containers on br0 (and some on br1) with 0-3 services each, a mesh port, and remote services. */
function makeCase(seed: number, n: number): Case {
  const r = random(seed);
  const pick = <T,>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  const ports = new Map<string, SwitchPort>();
  const usedOfports = new Set<number>();
  const ofport = (): number => {
    for (;;) {
      const p = pick([1 + Math.floor(r() * 50), 1 + Math.floor(r() * 65000), 65279, 9999]);
      if (!usedOfports.has(p)) {
        usedOfports.add(p);
        return p;
      }
    }
  };
  const containers = Array.from({ length: n }, (_, i) => {
    const bridge = r() < 0.8 ? "br0" : "br1";
    const veth = `v${seed}-${i}`;
    if (r() < 0.9) ports.set(veth, { bridge, ofport: ofport() });
    return {
      container_id: `c${seed}.${i}`,
      veth,
      bridge,
      ipv4_address: `10.${i >> 8}.${i & 255}.${Math.floor(r() * 256)}/${pick([8, 16, 24, 32])}`,
      services: Array.from({ length: Math.floor(r() * 4) }, (_, j) => ({ name: `s${seed}-${i}-${j}`, protocol: pick(["tcp", "udp"] as const), port: 1 + Math.floor(r() * 65535), exposed: r() < 0.85 })),
    };
  });
  const mesh = pick(["mesh0", "br0"]); // the bridge's own port as mesh_port: ofport 65534, LOCAL
  ports.set("mesh0", { bridge: "br0", ofport: ofport() });
  ports.set("br0", { bridge: "br0", ofport: 65534 });
  ports.set("warp0", { bridge: "br0", ofport: ofport() });
  const remote: ServiceLocation[] = Array.from({ length: 12 }, (_, i) => ({
    service: `remote-${i}`,
    container_id: `x${i}`,
    node: pick(["node2", "node3", "näme-ü"]),
    ip: pick([`172.16.${i}.${Math.floor(r() * 256)}`, `172.016.0.${i + 1}`, `172.17.0.0/255.255.0.0`, `172.18.${i}.0/24`, "0.0.0.0/0"]),
    port: 1 + Math.floor(r() * 65535),
    protocol: pick(["tcp", "udp"] as const),
  }));
  const state = parseState(
    { node: "node1", bridges: [{ name: "br0", flows: ["priority=100,in_port=mesh0,actions=output:warp0", "priority=10,actions=normal"] }, { name: "br1" }], containers, mesh_port: mesh },
    `case ${seed}`,
  );
  return { state, ports, remote };
}

function bridgePorts(ports: ReadonlyMap<string, SwitchPort>, bridge: string): Map<string, number> {
  return new Map([...ports].filter(([, p]) => p.bridge === bridge && p.ofport > 0).map(([name, p]) => [name, p.ofport]));
}

/** The line `ovs-ofctl --no-names dump-flows` prints for `f` (OpenFlow 1.0). */
function dumpLineOf(f: Flow): string {
  const timeouts = `${f.idleTimeout !== 0 ? `idle_timeout=${f.idleTimeout}, ` : ""}${f.hardTimeout !== 0 ? `hard_timeout=${f.hardTimeout}, ` : ""}`;
  const priority = f.priority === 32768 ? "" : `priority=${f.priority}`;
  const match = [priority, f.match].filter((x) => x !== "").join(",");
  return ` cookie=0x${f.cookie.toString(16)}, duration=3.5s, table=${f.table}, n_packets=7, n_bytes=420, ${timeouts}idle_age=3, ${match}${match === "" ? "" : " "}actions=${f.actions}`;
}

const compiledFlows = (c: Case): [string, DesiredFlow][] => [...compile(c.state, c.ports, c.remote).bridges].flatMap(([bridge, flows]) => flows.map((d) => [bridge, d] as [string, DesiredFlow]));

describe("compiled flows are canonical without a parse", () => {
  test("every emitted Flow deep-equals parseFlowSpec(spec, the bridge's ports), over many shapes", () => {
    let checked = 0;
    const shapes = new Set<string>();
    for (let seed = 1; seed <= 40; seed++) {
      const c = makeCase(seed, 30);
      for (const [bridge, d] of compiledFlows(c)) {
        if (d.flow === null) continue; // static: parsed by ownedFlows
        expect(d.flow).toEqual(parseFlowSpec(d.spec, bridgePorts(c.ports, bridge)));
        shapes.add(`${d.flow.table} ${d.flow.priority} ${d.flow.match.replace(/[0-9.]+/g, "N")} ${d.flow.actions.replace(/0x[0-9a-f]+|[0-9]+/g, "N")}`);
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(2000);
    // tcp/udp inbound (with and without an address), return paths (a number, LOCAL), the table-1 default.
    for (const want of ["tcp,nw_dst=N,tp_dst=N", "udp,nw_dst=N/N,tp_dst=N", "tcp,tp_dst=N", "in_port=N resubmit(,N)", "in_port=LOCAL", "1 0  NORMAL"]) {
      expect([...shapes].filter((s) => s.includes(want)).length > 0 ? want : [...shapes]).toBe(want);
    }
    expect([...shapes].some((s) => s.endsWith(",LOCAL"))).toBe(true);
  });

  test("the dump of each compiled flow reads back as that flow, through the fast paths and without them", () => {
    for (let seed = 100; seed < 120; seed++) {
      const c = makeCase(seed, 30);
      const flows = compiledFlows(c).map(([bridge, d]) => d.flow ?? parseFlowSpec(d.spec, bridgePorts(c.ports, bridge)));
      const dumped = parseDumpFlows(`NXST_FLOW reply (xid=0x4):\n${flows.map(dumpLineOf).join("\n")}\n`);
      expect(dumped.map(({ packets, bytes, durationS, ...f }) => f)).toEqual(flows);
      // The general canonicalizer (a spec with ports) maps each compiled match and action list to itself.
      for (const f of flows) {
        const again = parseFlowSpec(`table=${f.table},priority=${f.priority}${f.match === "" ? "" : `,${f.match}`},actions=${f.actions}`, new Map());
        expect([again.match, again.actions]).toEqual([f.match, f.actions]);
      }
    }
  });

  test("near misses of the compiled shapes in a dump go the general way and come out canonical", () => {
    const learn = (cookie: string, out: string) => `learn(table=1,hard_timeout=300,priority=110,delete_learned,cookie=${cookie},NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:NXM_OF_IN_PORT[]),${out}`;
    const lines = [
      ` cookie=0x1, duration=1s, table=0, n_packets=0, n_bytes=0, idle_age=1, priority=100,tcp,nw_dst=10.0.0.1,tp_dst=80 actions=${learn("0x0057", "output:65534")}`,
      ` cookie=0x1, duration=1s, table=0, n_packets=0, n_bytes=0, idle_age=1, priority=90,in_port=65534 actions=resubmit(,1)`,
      ` cookie=0x1, duration=1s, table=0, n_packets=0, n_bytes=0, idle_age=1, priority=100,tcp,nw_dst=10.0.0.1,tp_dst=080 actions=${learn("0x57", "output:3")}`,
      ` cookie=0x1, duration=1s, table=0, n_packets=0, n_bytes=0, idle_age=1, priority=100,tp_dst=80,tcp,nw_dst=10.0.0.1 actions=NORMAL`,
    ];
    const [a, b, c, d] = parseDumpFlows(`NXST_FLOW reply (xid=0x4):\n${lines.join("\n")}\n`);
    expect(a!.actions).toBe(learn("0x57", "LOCAL"));
    expect(b!.match).toBe("in_port=LOCAL");
    expect(c!.match).toBe("tcp,nw_dst=10.0.0.1,tp_dst=80");
    expect(d!.match).toBe("tcp,nw_dst=10.0.0.1,tp_dst=80");
  });

  test("a container unchanged gets the very same flows from the next compile; a changed one new ones", () => {
    const c = makeCase(7, 20);
    const first = compile(c.state, c.ports, c.remote).bridges.get("br0")!;
    const again = compile(structuredClone(c.state), c.ports, c.remote).bridges.get("br0")!;
    const containerFlows = (fs: DesiredFlow[]) => fs.filter((d) => d.owner.startsWith("container "));
    expect(containerFlows(again).every((d, i) => d.flow === containerFlows(first)[i]!.flow)).toBe(true);
    const changed = structuredClone(c.state);
    const target = changed.containers.find((x) => x.bridge === "br0" && c.ports.has(x.veth) && x.services.some((s) => s.exposed))!;
    target.services.find((s) => s.exposed)!.port = (target.services.find((s) => s.exposed)!.port % 65535) + 1;
    const after = containerFlows(compile(changed, c.ports, c.remote).bridges.get("br0")!);
    const mine = after.filter((d) => d.owner === `container ${target.container_id}`);
    expect(mine.every((d) => !containerFlows(first).some((f) => f.flow === d.flow))).toBe(true);
    for (const d of after) expect(d.flow).toEqual(parseFlowSpec(d.spec, bridgePorts(c.ports, "br0")));
    const moved = new Map(c.ports);
    moved.set(target.veth, { bridge: "br0", ofport: 4242 });
    const renumbered = containerFlows(compile(changed, moved, c.remote).bridges.get("br0")!).filter((d) => d.owner === `container ${target.container_id}`);
    expect(renumbered.some((d) => d.flow!.actions.endsWith("output:4242") || d.flow!.match === "in_port=4242")).toBe(true);
  });

  test("static flows are parsed by ownedFlows with the bridge's port names; a bad one names its bridge and owner", () => {
    const c = makeCase(3, 5);
    const desired = compile(c.state, c.ports, []).bridges.get("br0")!;
    const owned = ownedFlows("br0", desired, c.ports);
    expect(owned[0]!.flow.match).toBe(`in_port=${c.ports.get("mesh0")!.ofport}`);
    expect(owned[0]!.flow.actions).toBe(`output:${c.ports.get("warp0")!.ofport}`);
    const without = new Map(c.ports);
    without.delete("warp0");
    expect(() => ownedFlows("br0", desired, without)).toThrow(/^bridge br0: static flow 1 of br0: flow .*no port warp0 on the bridge/);
  });

  test("a peer's address that is not an IPv4 address fails the compile, naming the node and service", () => {
    const c = makeCase(5, 3);
    const bad = [{ service: "db", container_id: "7", node: "node2", ip: "not-an-ip", port: 5432, protocol: "tcp" as const }];
    expect(() => compile(c.state, c.ports, bad)).toThrow(/bridge br0: node node2: service db: nw_dst: "not-an-ip" is not an IPv4 address/);
  });
});
